/**
 * The reduced volume a face decision is made on: frames box-averaged to about the grid's
 * spacing as they arrive (so a series is never held at full resolution), then resampled onto
 * a grid aligned with the patient axes (LPS: x to the patient's left, y posterior, z superior)
 * from each frame's own position and orientation. Axial, sagittal, coronal and oblique stacks,
 * gantry tilt (positions sheared along the slice) and enhanced multi-frame objects all land on
 * the same grid, so the analysis never needs to know how the series was acquired.
 */
import { endianness } from 'node:os';
import { cross, dot, type FrameGeometry, type PixelFactsFull, type Vec3 } from '../geometry.js';

/** One frame, reduced: modality values (HU for CT) on a coarser pixel grid. */
export interface ReducedFrame {
  readonly geometry: FrameGeometry;
  readonly rows: number;
  readonly columns: number;
  readonly data: Float32Array;
}

/** A volume on an LPS-aligned grid; NaN where no frame covers a voxel. */
export interface Volume {
  readonly nx: number;
  readonly ny: number;
  readonly nz: number;
  /** Patient position of voxel (0,0,0). */
  readonly origin: Vec3;
  /** Isotropic spacing in mm. */
  readonly spacing: number;
  readonly data: Float32Array;
}

/** Reads stored sample (i) of one grayscale frame as a modality value. */
function sampleReader(bytes: Buffer, f: PixelFactsFull, littleEndian: boolean): (i: number) => number {
  const bits = f.bitsStored;
  const signed = f.pixelRepresentation === 1;
  const shift = 32 - bits;
  if (f.bitsAllocated === 8) return signed ? (i) => (bytes[i]! << 24) >> 24 : (i) => bytes[i]!;
  if (f.bitsAllocated === 16) {
    const read = littleEndian ? (i: number) => bytes.readUInt16LE(i * 2) : (i: number) => bytes.readUInt16BE(i * 2);
    // Only the stored bits count (an overlay or garbage above them is ignored); signed values sign-extend.
    return signed ? (i) => ((read(i) << shift) >> shift) : (i) => (read(i) << shift) >>> shift;
  }
  const read32 = littleEndian ? (i: number) => bytes.readUInt32LE(i * 4) : (i: number) => bytes.readUInt32BE(i * 4);
  return signed ? (i) => ((read32(i) << shift) >> shift) : (i) => (bits === 32 ? read32(i) : (read32(i) << shift) >>> shift);
}

/**
 * 16-bit little-endian cells on an aligned buffer (the common CT and MR case), read in place:
 * only the stored bits count (an overlay or garbage above them is dropped; signed values
 * sign-extend). Otherwise undefined, and the general reader is used.
 */
function cells16(bytes: Buffer, f: PixelFactsFull, littleEndian: boolean): Uint16Array | undefined {
  if (f.bitsAllocated !== 16 || !littleEndian || endianness() !== 'LE' || bytes.byteOffset % 2 !== 0 || f.bitsStored < 1 || f.bitsStored > 16) return undefined;
  return new Uint16Array(bytes.buffer, bytes.byteOffset, bytes.length >> 1);
}

/*
 * The hot loops below are small top-level functions over typed arrays and numbers only. Inside
 * one large function with closures made per call, V8 optimised them on the stack (OSR) and
 * threw the code away again at the next call ("wrong map", "wrong call target"): a decision in
 * the gateway then resampled in the interpreter, boxing every double, at 35–180 ms and a dozen
 * scavenges, against 8–15 ms compiled. Called thousands of times a decision (once per reduced
 * row, once per grid line), with the same argument types every time, they are compiled once.
 */

/** Adds `fr` rows of unsigned 16-bit cells from `base`, `fc` columns to a block, into `sums`. */
function addBlocksU16(cells: Uint16Array, base: number, width: number, fr: number, fc: number, columns: number, keep: number, sums: Float64Array): void {
  for (let i = 0; i < fr; i++) {
    let at = base + i * width;
    for (let c = 0; c < columns; c++) {
      let s = 0;
      for (let j = 0; j < fc; j++, at++) s += cells[at]! & keep;
      sums[c] = sums[c]! + s;
    }
  }
}

/** addBlocksU16 for signed cells of 32 - shift stored bits (sign-extended). */
function addBlocksS16(cells: Uint16Array, base: number, width: number, fr: number, fc: number, columns: number, shift: number, sums: Float64Array): void {
  for (let i = 0; i < fr; i++) {
    let at = base + i * width;
    for (let c = 0; c < columns; c++) {
      let s = 0;
      for (let j = 0; j < fc; j++, at++) s += (cells[at]! << shift) >> shift;
      sums[c] = sums[c]! + s;
    }
  }
}

/** addBlocksU16 through a sample reader (8 and 32 bits, big-endian, unaligned buffers). */
function addBlocksRead(read: (i: number) => number, base: number, width: number, fr: number, fc: number, columns: number, sums: Float64Array): void {
  for (let i = 0; i < fr; i++) {
    const row = base + i * width;
    for (let c = 0; c < columns; c++) for (let j = 0; j < fc; j++) sums[c] = sums[c]! + read(row + c * fc + j);
  }
}

/** One reduced row: the mean of each block, in modality values. */
function meansRow(sums: Float64Array, n: number, slope: number, intercept: number, data: Float32Array, at: number, columns: number): void {
  for (let c = 0; c < columns; c++) data[at + c] = (sums[c]! / n) * slope + intercept;
}

/**
 * Box-averages one native grayscale frame to about `targetMm` per pixel, in modality values.
 * Returns undefined when the frame has no geometry.
 */
export function reduceFrame(bytes: Buffer, f: PixelFactsFull, frame: number, littleEndian: boolean, targetMm: number): ReducedFrame | undefined {
  const g = f.geometry[frame];
  if (!g || f.samplesPerPixel !== 1) return undefined;
  const { slope, intercept } = f.rescale[frame] ?? { slope: 1, intercept: 0 };
  const { fr, fc } = factors(g, targetMm);
  const { rows, columns, geometry } = reducedPlace(g, f.rows, f.columns, targetMm);
  const data = new Float32Array(rows * columns);
  const n = fr * fc;
  // Sums of blocks, row by row: one pass over the samples in memory order. Integer sums of at
  // most 65535 x n are exact in doubles, so the order of the additions does not matter.
  const sums = new Float64Array(columns);
  const cells = cells16(bytes, f, littleEndian);
  const read = cells ? undefined : sampleReader(bytes, f, littleEndian);
  const signed = f.pixelRepresentation === 1;
  const shift = 32 - f.bitsStored;
  const keep = f.bitsStored >= 16 ? 0xffff : (1 << f.bitsStored) - 1;
  const width = f.columns;
  for (let r = 0; r < rows; r++) {
    sums.fill(0);
    const base = r * fr * width;
    if (cells && signed) addBlocksS16(cells, base, width, fr, fc, columns, shift, sums);
    else if (cells) addBlocksU16(cells, base, width, fr, fc, columns, keep, sums);
    else addBlocksRead(read!, base, width, fr, fc, columns, sums);
    meansRow(sums, n, slope, intercept, data, r * columns, columns);
  }
  return { geometry, rows, columns, data };
}

/** Block sizes (rows, columns) that reduce a frame to about `targetMm` per pixel. */
function factors(g: FrameGeometry, targetMm: number): { fr: number; fc: number } {
  return { fr: Math.max(1, Math.floor(targetMm / g.rowSpacing)), fc: Math.max(1, Math.floor(targetMm / g.colSpacing)) };
}

/** Where a frame's reduced pixels lie. */
interface FramePlace {
  readonly geometry: FrameGeometry;
  readonly rows: number;
  readonly columns: number;
}

/** The place of a frame of rows x columns once reduced by reduceFrame to about `targetMm`. */
function reducedPlace(g: FrameGeometry, rows: number, columns: number, targetMm: number): FramePlace {
  const { fr, fc } = factors(g, targetMm);
  // The reduced pixel (0,0) is the centre of the first block.
  const oc = ((fc - 1) / 2) * g.colSpacing;
  const or = ((fr - 1) / 2) * g.rowSpacing;
  const position: Vec3 = [
    g.position[0] + g.rowDir[0] * oc + g.colDir[0] * or,
    g.position[1] + g.rowDir[1] * oc + g.colDir[1] * or,
    g.position[2] + g.rowDir[2] * oc + g.colDir[2] * or,
  ];
  return { geometry: { ...g, position, rowSpacing: g.rowSpacing * fr, colSpacing: g.colSpacing * fc }, rows: Math.floor(rows / fr), columns: Math.floor(columns / fc) };
}

/** Frames grouped by orientation; the largest group is the stack the volume is built from. */
export function largestStack<T extends { readonly geometry: FrameGeometry }>(frames: readonly T[]): T[] {
  const groups: { normal: Vec3; members: T[] }[] = [];
  for (const fr of frames) {
    const n = cross(fr.geometry.rowDir, fr.geometry.colDir);
    const gr = groups.find((x) => Math.abs(dot(x.normal, n)) > 0.99);
    if (gr) gr.members.push(fr);
    else groups.push({ normal: n, members: [fr] });
  }
  groups.sort((a, b) => b.members.length - a.members.length);
  return groups[0]?.members ?? [];
}

/** What every line of a resampling shares (one shape for every call of fillLine). */
interface Line {
  readonly out: Float32Array;
  /** Each frame's distance along the stack's normal, in order. */
  readonly s: Float64Array;
  /** Each frame's placement, K numbers (see buildVolume). */
  readonly place: Float64Array;
  readonly data: readonly Float32Array[];
  /** Voxels along a line, and their stride in out. */
  readonly len: number;
  readonly stride: number;
  /** Distance along the normal from one voxel of a line to the next. */
  readonly dS: number;
  /** Furthest a voxel may lie from its frame along the normal. */
  readonly tol: number;
  /** Offsets in a frame's placement of the column and row steps along the line's axis. */
  readonly dcAt: number;
  readonly drAt: number;
  readonly sp: number;
}

const K = 10;
const EPS = 1e-9;

/**
 * The lowest integer t, at least lo, with v0 + t * slope within [min, max]; with no slope,
 * lo when v0 is within, else Infinity (no t).
 */
function firstIn(lo: number, v0: number, slope: number, min: number, max: number): number {
  if (Math.abs(slope) < 1e-12) return v0 < min - EPS || v0 > max + EPS ? Infinity : lo;
  const a = (min - v0) / slope;
  const b = (max - v0) / slope;
  return Math.max(lo, Math.ceil((a < b ? a : b) - EPS));
}

/** The highest integer t, at most hi, with v0 + t * slope within [min, max] (no slope: hi, or -Infinity). */
function lastIn(hi: number, v0: number, slope: number, min: number, max: number): number {
  if (Math.abs(slope) < 1e-12) return v0 < min - EPS || v0 > max + EPS ? -Infinity : hi;
  const a = (min - v0) / slope;
  const b = (max - v0) / slope;
  return Math.min(hi, Math.floor((a < b ? b : a) + EPS));
}

/** Copies frame pixels into voxels lo..hi of a line (nearest pixel, clamped to the frame). */
function fillRun(out: Float32Array, at: number, stride: number, data: Float32Array, columns: number, rows: number, cf0: number, dc: number, rf0: number, dr: number, lo: number, hi: number): void {
  for (let q = lo; q <= hi; q++) {
    // Nearest pixel (adding 0.5 and truncating rounds; clamped to the frame).
    let c = (cf0 + q * dc + 0.5) | 0;
    let r = (rf0 + q * dr + 0.5) | 0;
    if (c < 0) c = 0; else if (c > columns - 1) c = columns - 1;
    if (r < 0) r = 0; else if (r > rows - 1) r = rows - 1;
    out[at + q * stride] = data[r * columns + c]!;
  }
}

/** Fills one line of the grid, from voxel (px, py, pz) at distance sv0 along the normal. */
function fillLine(L: Line, lineAt: number, px: number, py: number, pz: number, sv0: number): void {
  const s = L.s;
  const place = L.place;
  const last = s.length - 1;
  const len = L.len;
  const dS = L.dS;
  const tol = L.tol;
  // The nearest frame to the line's first voxel (binary search).
  let a = 0;
  let b = last;
  while (b - a > 1) {
    const m = (a + b) >> 1;
    if (s[m]! <= sv0) a = m; else b = m;
  }
  let k = Math.abs(s[a]! - sv0) <= Math.abs(s[b]! - sv0) ? a : b;
  for (let t = 0; t < len;) {
    // The run of frame k ends before the first voxel nearer to its neighbour (a tie stays).
    let end = len - 1;
    if (dS > 0 && k < last) end = Math.min(end, Math.floor(((s[k]! + s[k + 1]!) / 2 - sv0) / dS));
    else if (dS < 0 && k > 0) end = Math.min(end, Math.floor(((s[k - 1]! + s[k]!) / 2 - sv0) / dS));
    if (end < t) end = t; // rounding at a boundary: one voxel, then the walk moves on
    const o = k * K;
    const columns = place[o + 8]!;
    const rows = place[o + 9]!;
    const cf0 = px * place[o]! + py * place[o + 1]! + pz * place[o + 2]! - place[o + 3]!;
    const rf0 = px * place[o + 4]! + py * place[o + 5]! + pz * place[o + 6]! - place[o + 7]!;
    const dc = place[o + L.dcAt]! * L.sp;
    const dr = place[o + L.drAt]! * L.sp;
    // Within tolerance of the frame along the normal, and within the frame or within half a
    // pixel of its edge (the grid's own edges lie on them).
    const d0 = sv0 - s[k]!;
    const lo = firstIn(firstIn(firstIn(t, d0, dS, -tol, tol), cf0, dc, -0.75, columns - 0.25), rf0, dr, -0.75, rows - 0.25);
    const hi = lastIn(lastIn(lastIn(end, d0, dS, -tol, tol), cf0, dc, -0.75, columns - 0.25), rf0, dr, -0.75, rows - 0.25);
    if (lo <= hi) fillRun(L.out, lineAt, L.stride, L.data[k]!, columns, rows, cf0, dc, rf0, dr, lo, hi);
    t = end + 1;
    if (t < len) {
      // The nearest frame to the next voxel, from k.
      const sv = sv0 + t * dS;
      while (k < last && Math.abs(s[k + 1]! - sv) < Math.abs(s[k]! - sv)) k++;
      while (k > 0 && Math.abs(s[k - 1]! - sv) < Math.abs(s[k]! - sv)) k--;
    }
  }
}

const MAX_DIM = 160;

/**
 * Resamples a stack of reduced frames (one orientation) onto an LPS grid of about `spacing` mm:
 * each voxel takes the nearest pixel of the nearest frame along the stack, when that frame is
 * within half the largest gap between frames and the pixel within half a pixel of the frame.
 * Undefined when the frames do not make a volume (fewer than two, or all at one position).
 */
export function buildVolume(stack: readonly ReducedFrame[], spacing = 2): Volume | undefined {
  if (stack.length < 2) return undefined;
  const normal = cross(stack[0]!.geometry.rowDir, stack[0]!.geometry.colDir);
  const frames = [...stack].sort((a, b) => dot(normal, a.geometry.position) - dot(normal, b.geometry.position));
  const s = frames.map((f) => dot(normal, f.geometry.position));
  // Largest gap between neighbouring frames: a voxel further than half of it from any frame is outside.
  let gap = 0;
  for (let i = 1; i < s.length; i++) gap = Math.max(gap, s[i]! - s[i - 1]!);
  if (!(gap > 0)) return undefined;
  const lo = [Infinity, Infinity, Infinity];
  const hi = [-Infinity, -Infinity, -Infinity];
  for (const f of frames) {
    const g = f.geometry;
    for (const [r, c] of [[0, 0], [f.rows - 1, 0], [0, f.columns - 1], [f.rows - 1, f.columns - 1]] as const) {
      for (let k = 0; k < 3; k++) {
        const v = g.position[k]! + g.rowDir[k]! * c * g.colSpacing + g.colDir[k]! * r * g.rowSpacing;
        lo[k] = Math.min(lo[k]!, v);
        hi[k] = Math.max(hi[k]!, v);
      }
    }
  }
  const extent = Math.max(hi[0]! - lo[0]!, hi[1]! - lo[1]!, hi[2]! - lo[2]!);
  const sp = Math.max(spacing, extent / (MAX_DIM - 1));
  const nx = Math.floor((hi[0]! - lo[0]!) / sp) + 1;
  const ny = Math.floor((hi[1]! - lo[1]!) / sp) + 1;
  const nz = Math.floor((hi[2]! - lo[2]!) / sp) + 1;
  const origin: Vec3 = [lo[0]!, lo[1]!, lo[2]!];
  const tol = gap / 2 + sp / 2;
  // Each frame's placement, flat: for a point p, its column is (p·rowDir - position·rowDir) /
  // colSpacing and its row (p·colDir - position·colDir) / rowSpacing.
  const place = new Float64Array(frames.length * K);
  frames.forEach((f, i) => {
    const g = f.geometry;
    const o = i * K;
    place[o] = g.rowDir[0] / g.colSpacing; place[o + 1] = g.rowDir[1] / g.colSpacing; place[o + 2] = g.rowDir[2] / g.colSpacing;
    place[o + 3] = dot(g.position, g.rowDir) / g.colSpacing;
    place[o + 4] = g.colDir[0] / g.rowSpacing; place[o + 5] = g.colDir[1] / g.rowSpacing; place[o + 6] = g.colDir[2] / g.rowSpacing;
    place[o + 7] = dot(g.position, g.colDir) / g.rowSpacing;
    place[o + 8] = f.columns; place[o + 9] = f.rows;
  });
  // Which pixel of which frame each voxel takes. The grid is walked in lines along the axis
  // most nearly in the frames' plane (x for axial and coronal stacks, y for sagittal ones). A
  // line crosses the frames' slabs in runs (one run for a stack square to an axis): within a
  // run the nearest frame is one frame k, and the pixel's column and row in it are linear
  // along the line. Each run's voxels that lie within tolerance of the frame and inside it are
  // an interval found by arithmetic, so no voxel is tested one by one.
  const dims: readonly number[] = [nx, ny, nz];
  const strides: readonly number[] = [1, nx, nx * ny];
  const axis = [0, 1, 2].sort((p, q) => Math.abs(normal[p]!) - Math.abs(normal[q]!))[0]!;
  const [u, v] = [0, 1, 2].filter((i) => i !== axis) as [number, number];
  const line: Line = {
    out: new Float32Array(nx * ny * nz).fill(Number.NaN),
    s: Float64Array.from(s), place, data: frames.map((f) => f.data),
    len: dims[axis]!, stride: strides[axis]!, dS: normal[axis]! * sp, tol,
    dcAt: axis, drAt: 4 + axis, sp,
  };
  const n0 = normal[0], n1 = normal[1], n2 = normal[2];
  const p = [0, 0, 0];
  for (let j = 0; j < dims[v]!; j++) {
    for (let i = 0; i < dims[u]!; i++) {
      // The line's first voxel.
      p[axis] = origin[axis]!;
      p[u] = origin[u]! + i * sp;
      p[v] = origin[v]! + j * sp;
      fillLine(line, i * strides[u]! + j * strides[v]!, p[0]!, p[1]!, p[2]!, n0 * p[0]! + n1 * p[1]! + n2 * p[2]!);
    }
  }
  const out = line.out;
  return { nx, ny, nz, origin, spacing: sp, data: out };
}
