/**
 * One reader of an instance's pixel facts and geometry, for every route and provider.
 *
 * It reads a data set through `DatasetView` (implemented over Part 10 elements and over DICOM
 * JSON), so the gateway's streamed headers, the metadata the providers fetch and the offline
 * command's files all give the same facts: the pixel module (rows, columns, samples, bits,
 * photometric interpretation, planar configuration, frames, rescale) and, per frame, where the
 * frame lies in the patient (Image Position, Image Orientation, Pixel Spacing), from the
 * classic attributes or from the Shared and Per-frame Functional Groups of enhanced objects.
 */

/** Read access to a data set's top-level values and sequence items. */
export interface DatasetView {
  /** The text of a value (multiple values joined with "\\"), trimmed; undefined when absent or empty. */
  str(tag: number): string | undefined;
  /** The numbers of a numeric or decimal/integer-string value; undefined when absent or unreadable. */
  nums(tag: number): readonly number[] | undefined;
  /** The items of a sequence (empty when absent). */
  items(tag: number): readonly DatasetView[];
}

export type Vec3 = readonly [number, number, number];

/** Where one frame lies in the patient (LPS, millimetres). */
export interface FrameGeometry {
  /** The centre of the first transmitted pixel (row 0, column 0). */
  readonly position: Vec3;
  /** The direction of increasing column index (the first three values of Image Orientation). */
  readonly rowDir: Vec3;
  /** The direction of increasing row index (the last three values). */
  readonly colDir: Vec3;
  /** Distance between rows (along colDir) and between columns (along rowDir), mm. */
  readonly rowSpacing: number;
  readonly colSpacing: number;
}

export interface PixelFactsFull {
  readonly modality: string;
  readonly sopClassUid: string;
  readonly rows: number;
  readonly columns: number;
  readonly samplesPerPixel: number;
  readonly bitsAllocated: number;
  readonly bitsStored: number;
  readonly highBit: number;
  /** 0 unsigned, 1 two's complement. */
  readonly pixelRepresentation: number;
  readonly photometric: string;
  readonly planarConfiguration: number;
  readonly frames: number;
  /** Stored value × slope + intercept = modality value (HU for CT); per frame where enhanced. */
  readonly rescale: readonly { readonly slope: number; readonly intercept: number }[];
  /** Per frame; undefined when the frame's position in the patient cannot be read. */
  readonly geometry: readonly (FrameGeometry | undefined)[];
}

const T = {
  modality: 0x00080060, sopClass: 0x00080016, rows: 0x00280010, columns: 0x00280011, samples: 0x00280002, bitsAllocated: 0x00280100,
  bitsStored: 0x00280101, highBit: 0x00280102, pixelRepresentation: 0x00280103, photometric: 0x00280004, planar: 0x00280006,
  frames: 0x00280008, slope: 0x00281053, intercept: 0x00281052, position: 0x00200032, orientation: 0x00200037, spacing: 0x00280030,
  shared: 0x52009229, perFrame: 0x52009230, planePosition: 0x00209113, planeOrientation: 0x00209116, pixelMeasures: 0x00289110,
  transformation: 0x00289145, imagerPixelSpacing: 0x00181164,
} as const;

const num = (v: DatasetView, tag: number, dflt: number): number => {
  const n = v.nums(tag)?.[0];
  return n === undefined || !Number.isFinite(n) ? dflt : n;
};

const unit = (a: readonly number[]): Vec3 | undefined => {
  const l = Math.hypot(a[0]!, a[1]!, a[2]!);
  return l > 0.5 && l < 1.5 ? [a[0]! / l, a[1]! / l, a[2]! / l] : undefined;
};

function frameGeometry(position: readonly number[] | undefined, orientation: readonly number[] | undefined, spacing: readonly number[] | undefined): FrameGeometry | undefined {
  if (position?.length !== 3 || orientation?.length !== 6 || !spacing || spacing.length < 2) return undefined;
  if (![...position, ...orientation, ...spacing].every(Number.isFinite)) return undefined;
  const rowDir = unit(orientation.slice(0, 3));
  const colDir = unit(orientation.slice(3, 6));
  if (!rowDir || !colDir || !(spacing[0]! > 0 && spacing[1]! > 0)) return undefined;
  // The two directions must be (close to) perpendicular.
  if (Math.abs(rowDir[0] * colDir[0] + rowDir[1] * colDir[1] + rowDir[2] * colDir[2]) > 0.05) return undefined;
  return { position: [position[0]!, position[1]!, position[2]!], rowDir, colDir, rowSpacing: spacing[0]!, colSpacing: spacing[1]! };
}

/** The first item's view of a functional group macro, from the per-frame item or the shared one. */
function group(perFrame: DatasetView | undefined, shared: DatasetView | undefined, tag: number): DatasetView | undefined {
  return perFrame?.items(tag)[0] ?? shared?.items(tag)[0];
}

/** The pixel facts and per-frame geometry of an instance. */
export function readPixelFacts(v: DatasetView): PixelFactsFull {
  const frames = Math.max(1, Math.trunc(num(v, T.frames, 1)));
  const shared = v.items(T.shared)[0];
  const perFrame = v.items(T.perFrame);
  const enhanced = perFrame.length > 0 || shared !== undefined;
  const geometry: (FrameGeometry | undefined)[] = [];
  const rescale: { slope: number; intercept: number }[] = [];
  const topSlope = num(v, T.slope, 1) || 1;
  const topIntercept = num(v, T.intercept, 0);
  for (let f = 0; f < frames; f++) {
    if (enhanced) {
      const pf = perFrame[f];
      const pos = group(pf, shared, T.planePosition)?.nums(T.position);
      const ori = group(pf, shared, T.planeOrientation)?.nums(T.orientation);
      const sp = group(pf, shared, T.pixelMeasures)?.nums(T.spacing);
      geometry.push(frameGeometry(pos, ori, sp));
      const tr = group(pf, shared, T.transformation);
      rescale.push(tr ? { slope: num(tr, T.slope, 1) || 1, intercept: num(tr, T.intercept, 0) } : { slope: topSlope, intercept: topIntercept });
    } else {
      // A classic image has one position; a classic multi-frame (rare for CT/MR) has no
      // per-frame position, so its frames cannot be placed beyond the first.
      geometry.push(f === 0 ? frameGeometry(v.nums(T.position), v.nums(T.orientation), v.nums(T.spacing)) : undefined);
      rescale.push({ slope: topSlope, intercept: topIntercept });
    }
  }
  const bitsAllocated = Math.trunc(num(v, T.bitsAllocated, 0));
  const bitsStored = Math.trunc(num(v, T.bitsStored, bitsAllocated));
  return {
    modality: (v.str(T.modality) ?? '').toUpperCase(),
    sopClassUid: v.str(T.sopClass) ?? '',
    rows: Math.trunc(num(v, T.rows, 0)),
    columns: Math.trunc(num(v, T.columns, 0)),
    samplesPerPixel: Math.trunc(num(v, T.samples, 1)),
    bitsAllocated,
    bitsStored,
    highBit: Math.trunc(num(v, T.highBit, bitsStored - 1)),
    pixelRepresentation: Math.trunc(num(v, T.pixelRepresentation, 0)),
    photometric: (v.str(T.photometric) ?? '').toUpperCase(),
    planarConfiguration: Math.trunc(num(v, T.planar, 0)),
    frames,
    rescale,
    geometry,
  };
}

export const dot = (a: Vec3, b: Vec3): number => a[0] * b[0] + a[1] * b[1] + a[2] * b[2];
export const cross = (a: Vec3, b: Vec3): Vec3 => [a[1] * b[2] - a[2] * b[1], a[2] * b[0] - a[0] * b[2], a[0] * b[1] - a[1] * b[0]];

/** The frame's normal (row direction × column direction). */
export const frameNormal = (g: FrameGeometry): Vec3 => cross(g.rowDir, g.colDir);
