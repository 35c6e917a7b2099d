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
 * The samples as a typed array view where that reads them exactly: 16-bit little-endian cells
 * whose stored bits fill the cell, on an aligned buffer (the common CT and MR case). Otherwise
 * undefined, and the general reader is used.
 */
function typedSamples(bytes: Buffer, f: PixelFactsFull, littleEndian: boolean): Uint16Array | Int16Array | undefined {
  if (f.bitsAllocated !== 16 || !littleEndian || endianness() !== 'LE' || f.bitsStored !== 16 || bytes.byteOffset % 2 !== 0) return undefined;
  const n = bytes.length >> 1;
  return f.pixelRepresentation === 1 ? new Int16Array(bytes.buffer, bytes.byteOffset, n) : new Uint16Array(bytes.buffer, bytes.byteOffset, n);
}

/**
 * 16-bit little-endian cells with fewer stored bits (CT's 12): copied once into an Int32Array
 * with the bits above Bits Stored dropped (unsigned) or sign-extended (signed).
 */
function maskedSamples(bytes: Buffer, f: PixelFactsFull, littleEndian: boolean): Int32Array | undefined {
  if (f.bitsAllocated !== 16 || !littleEndian || endianness() !== 'LE' || bytes.byteOffset % 2 !== 0 || f.bitsStored < 1 || f.bitsStored > 16) return undefined;
  const src = new Uint16Array(bytes.buffer, bytes.byteOffset, bytes.length >> 1);
  const out = new Int32Array(src.length);
  const shift = 32 - f.bitsStored;
  if (f.pixelRepresentation === 1) for (let i = 0; i < src.length; i++) out[i] = (src[i]! << shift) >> shift;
  else { const m = f.bitsStored === 16 ? 0xffff : (1 << f.bitsStored) - 1; for (let i = 0; i < src.length; i++) out[i] = src[i]! & m; }
  return out;
}

/**
 * Box-averages one native grayscale frame to about `targetMm` per pixel, in modality values.
 * Returns undefined when the frame has no geometry.
 */
export function reduceFrame(bytes: Buffer, f: PixelFactsFull, frame: number, littleEndian: boolean, targetMm: number): ReducedFrame | undefined {
  const g = f.geometry[frame];
  if (!g || f.samplesPerPixel !== 1) return undefined;
  const { slope, intercept } = f.rescale[frame] ?? { slope: 1, intercept: 0 };
  const fr = Math.max(1, Math.floor(targetMm / g.rowSpacing));
  const fc = Math.max(1, Math.floor(targetMm / g.colSpacing));
  const rows = Math.floor(f.rows / fr);
  const columns = Math.floor(f.columns / fc);
  const data = new Float32Array(rows * columns);
  const n = fr * fc;
  // Sums of blocks, row by row: one pass over the samples in memory order.
  const sums = new Float64Array(columns);
  const samples = typedSamples(bytes, f, littleEndian) ?? maskedSamples(bytes, f, littleEndian);
  const read = samples ? undefined : sampleReader(bytes, f, littleEndian);
  for (let r = 0; r < rows; r++) {
    sums.fill(0);
    for (let i = 0; i < fr; i++) {
      const base = (r * fr + i) * f.columns;
      if (samples) {
        for (let c = 0; c < columns; c++) {
          let s = 0;
          const at = base + c * fc;
          for (let j = 0; j < fc; j++) s += samples[at + j]!;
          sums[c]! += s;
        }
      } else {
        for (let c = 0; c < columns; c++) for (let j = 0; j < fc; j++) sums[c]! += read!(base + c * fc + j);
      }
    }
    for (let c = 0; c < columns; c++) data[r * columns + c] = (sums[c]! / n) * slope + intercept;
  }
  // The reduced pixel (0,0) is the centre of the first block.
  const oc = ((fc - 1) / 2) * g.colSpacing;
  const or = ((fr - 1) / 2) * g.rowSpacing;
  const position: Vec3 = [
    g.position[0] + g.rowDir[0] * oc + g.colDir[0] * or,
    g.position[1] + g.rowDir[1] * oc + g.colDir[1] * or,
    g.position[2] + g.rowDir[2] * oc + g.colDir[2] * or,
  ];
  return { geometry: { ...g, position, rowSpacing: g.rowSpacing * fr, colSpacing: g.colSpacing * fc }, rows, columns, data };
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

const MAX_DIM = 160;

/** Resamples a stack of reduced frames (one orientation) onto an LPS grid of about `spacing` mm. */
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
  const data = new Float32Array(nx * ny * nz).fill(Number.NaN);
  const origin: Vec3 = [lo[0]!, lo[1]!, lo[2]!];
  const tol = gap / 2 + sp / 2;
  // Along a row of the grid (x increasing), the distance along the normal and each frame's
  // in-plane coordinates change by constant steps: the nearest frame is walked to, not searched.
  const dS = normal[0] * sp;
  const last = s.length - 1;
  for (let z = 0; z < nz; z++) {
    const pz = origin[2] + z * sp;
    for (let y = 0; y < ny; y++) {
      const py = origin[1] + y * sp;
      const rowAt = (z * ny + y) * nx;
      let sv = normal[0] * origin[0] + normal[1] * py + normal[2] * pz;
      // The nearest frame to the row's first voxel (binary search once per row).
      let a = 0;
      let b = last;
      while (b - a > 1) {
        const m = (a + b) >> 1;
        if (s[m]! <= sv) a = m; else b = m;
      }
      let k = Math.abs(s[a]! - sv) <= Math.abs(s[b]! - sv) ? a : b;
      for (let x = 0; x < nx; x++, sv += dS) {
        while (k < last && Math.abs(s[k + 1]! - sv) < Math.abs(s[k]! - sv)) k++;
        while (k > 0 && Math.abs(s[k - 1]! - sv) < Math.abs(s[k]! - sv)) k--;
        if (Math.abs(s[k]! - sv) > tol) continue;
        const f = frames[k]!;
        const g = f.geometry;
        const dx = origin[0] + x * sp - g.position[0];
        const dy = py - g.position[1];
        const dz = pz - g.position[2];
        const cf = (dx * g.rowDir[0] + dy * g.rowDir[1] + dz * g.rowDir[2]) / g.colSpacing;
        const rf = (dx * g.colDir[0] + dy * g.colDir[1] + dz * g.colDir[2]) / g.rowSpacing;
        // Within the frame, or within half a pixel of its edge (the grid's own edges lie on them).
        if (cf < -0.75 || rf < -0.75 || cf > f.columns - 0.25 || rf > f.rows - 0.25) continue;
        const c = Math.min(f.columns - 1, Math.max(0, Math.round(cf)));
        const r = Math.min(f.rows - 1, Math.max(0, Math.round(rf)));
        data[rowAt + x] = f.data[r * f.columns + c]!;
      }
    }
  }
  return { nx, ny, nz, origin, spacing: sp, data };
}
