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
