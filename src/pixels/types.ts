/** The pixel stage's series-level results, shared by the policy, the engine and the providers. */

/** A cut plane in patient coordinates: a point p is removed when n·p < d for every plane. */
export interface FacePlane { readonly n: readonly [number, number, number]; readonly d: number }

/** The face decision stored for a series (src/pixels/face/provider.ts). */
export type FaceVerdict =
  | { readonly kind: 'no-face' }
  | { readonly kind: 'deface'; readonly planes: readonly FacePlane[] }
  | { readonly kind: 'uncertain'; readonly why: string };

/** Looks up the stored face decision of an original Series Instance UID (undefined: not decided yet). */
export type FaceLookup = (seriesUid: string) => FaceVerdict | undefined;

/** A rectangle in pixel coordinates: columns x .. x+width-1, rows y .. y+height-1. */
export interface TextBox {
  readonly x: number; readonly y: number; readonly width: number; readonly height: number;
  /**
   * The stored sample values the box is filled with (one per sample): a level that contrasts with
   * both the box's ground and its text, so that every word is destroyed, not only its strokes.
   */
  readonly fill?: readonly number[] | undefined;
}

/** The text decision stored for an instance (src/pixels/text/provider.ts). */
export type TextVerdict =
  | { readonly kind: 'clean' }
  | { readonly kind: 'mask'; readonly regions: readonly TextBox[] }
  | { readonly kind: 'withhold'; readonly code: 'mostly-text' | 'text-inseparable' | 'text-undecodable'; readonly why: string };

/** Looks up the stored text decision of an original SOP Instance UID (undefined: not decided yet). */
export type TextLookup = (sopInstanceUid: string) => TextVerdict | undefined;

/** Durable storage of a provider's decisions (SQLite in state.dir; PostgreSQL for replicas). */
export interface DecisionStore<T> {
  get(key: string): T | undefined | Promise<T | undefined>;
  put(key: string, verdict: T): void | Promise<void>;
}
