/**
 * Applying a face cut to one frame: the planes meet the frame's plane in lines, so the removed
 * pixels of each row are one interval of columns. Removed pixels take the background value of
 * the modality (air, -1000 HU, for CT; 0 for MR and PET), written as a stored value clamped to
 * the stored range. Every other byte stays as it came.
 */
import { GatewayError } from '../../core/errors.js';
import type { FrameGeometry, PixelFactsFull } from '../geometry.js';
import type { CutPlane } from './analyze.js';

/** Removed columns [from, to) of each row; rows with nothing removed have from >= to. */
export interface RowSpans {
  readonly from: Int32Array;
  readonly to: Int32Array;
}

/** The columns of each row in front of every plane. */
export function rowSpans(planes: readonly CutPlane[], g: FrameGeometry, rows: number, columns: number): RowSpans {
  const from = new Int32Array(rows);
  const to = new Int32Array(rows);
  // f(c) = n·(P + c·Δc·rowDir + r·Δr·colDir) - d < 0 is linear in c and in r: per plane, its
  // value at (0, 0), its step down a row and its step along a row, computed once.
  const k = planes.length;
  const at0 = new Float64Array(k);
  const down = new Float64Array(k);
  const along = new Float64Array(k);
  for (let i = 0; i < k; i++) {
    const n = planes[i]!.n;
    at0[i] = n[0] * g.position[0] + n[1] * g.position[1] + n[2] * g.position[2] - planes[i]!.d;
    down[i] = (n[0] * g.colDir[0] + n[1] * g.colDir[1] + n[2] * g.colDir[2]) * g.rowSpacing;
    along[i] = (n[0] * g.rowDir[0] + n[1] * g.rowDir[1] + n[2] * g.rowDir[2]) * g.colSpacing;
  }
  for (let r = 0; r < rows; r++) {
    let lo = 0;
    let hi = columns; // [lo, hi)
    for (let i = 0; i < k; i++) {
      const base = at0[i]! + r * down[i]!;
      const slope = along[i]!;
      if (Math.abs(slope) < 1e-12) {
        if (base >= 0) { lo = 0; hi = 0; }
        continue;
      }
      const c0 = -base / slope; // f(c0) = 0
      if (slope > 0) hi = Math.min(hi, Math.ceil(c0)); // f < 0 for c < c0
      else lo = Math.max(lo, Math.floor(c0) + 1); // f < 0 for c > c0
    }
    from[r] = Math.max(0, lo);
    to[r] = Math.max(Math.max(0, lo), Math.min(columns, hi));
  }
  return { from, to };
}

/** The stored value of the modality's background for a frame, clamped to the stored range. */
export function backgroundStored(f: PixelFactsFull, frame: number): number {
  const { slope, intercept } = f.rescale[frame] ?? { slope: 1, intercept: 0 };
  const value = f.modality === 'CT' ? -1000 : 0;
  const stored = Math.round((value - intercept) / (slope || 1));
  const bits = f.bitsStored;
  const min = f.pixelRepresentation === 1 ? -(2 ** (bits - 1)) : 0;
  const max = f.pixelRepresentation === 1 ? 2 ** (bits - 1) - 1 : 2 ** bits - 1;
  return Math.max(min, Math.min(max, stored));
}

/**
 * The bytes of one stored value in a cell of `bitsAllocated`, in the given byte order (the
 * value in two's complement where signed; bits above Bits Stored as the sign extends).
 */
export function cellBytes(value: number, bitsAllocated: number, littleEndian: boolean): Buffer {
  const b = Buffer.alloc(bitsAllocated / 8);
  if (bitsAllocated === 8) b.writeUInt8(value & 0xff, 0);
  else if (bitsAllocated === 16) {
    if (littleEndian) b.writeUInt16LE(value & 0xffff, 0); else b.writeUInt16BE(value & 0xffff, 0);
  } else if (littleEndian) {
    b.writeUInt32LE(value >>> 0, 0);
  } else {
    b.writeUInt32BE(value >>> 0, 0);
  }
  return b;
}

/**
 * A transformer of native pixel data bytes (offset 0 = first byte of the value), applied chunk
 * by chunk: the pixels of each frame in front of the cut take the background value. Chunks
 * that touch no removed pixel pass as they are; others are copied before they are changed,
 * unless `inPlace` says the chunks are the caller's to change (written where they are: a
 * 400-slice CT's retrieve then copies no 256 KiB chunk per slice through the face).
 * Throws PIXELS_WITHHELD (`face-geometry`) when a frame cannot be placed in the patient.
 */
export function faceCutTransformer(f: PixelFactsFull, planes: readonly CutPlane[], littleEndian: boolean, inPlace = false): (chunk: Buffer) => Buffer {
  if (f.samplesPerPixel !== 1 || ![8, 16, 32].includes(f.bitsAllocated)) {
    throw new GatewayError('PIXELS_WITHHELD', 'a face cut needs grayscale pixel data of 8, 16 or 32 bits', { auditReason: 'pixels-withheld:face-geometry' });
  }
  const bpp = f.bitsAllocated / 8;
  const frameBytes = f.rows * f.columns * bpp;
  const starts: number[] = [];
  const ends: number[] = [];
  const fills: Buffer[] = [];
  for (let k = 0; k < f.frames; k++) {
    const g = f.geometry[k];
    if (!g) throw new GatewayError('PIXELS_WITHHELD', `frame ${k + 1} of this instance has no position in the patient, so the face cut cannot be placed`, { auditReason: 'pixels-withheld:face-geometry' });
    const spans = rowSpans(planes, g, f.rows, f.columns);
    const cell = cellBytes(backgroundStored(f, k), f.bitsAllocated, littleEndian);
    const fill = Buffer.alloc(f.columns * bpp, cell); // the cell repeated along a row
    for (let r = 0; r < f.rows; r++) {
      const a = spans.from[r]!;
      const b = spans.to[r]!;
      if (b <= a) continue;
      starts.push(k * frameBytes + (r * f.columns + a) * bpp);
      ends.push(k * frameBytes + (r * f.columns + b) * bpp);
      fills.push(fill);
    }
  }
  let offset = 0;
  let ri = 0;
  return (chunk: Buffer): Buffer => {
    const start = offset;
    const end = start + chunk.length;
    offset = end;
    while (ri < starts.length && ends[ri]! <= start) ri++;
    if (ri >= starts.length || starts[ri]! >= end) return chunk;
    const out = inPlace ? chunk : Buffer.from(chunk); // the input's buffers are written only when they are ours
    for (let k = ri; k < starts.length && starts[k]! < end; k++) {
      const a = Math.max(starts[k]!, start);
      const b = Math.min(ends[k]!, end);
      // The fill row is cell-aligned from the range's start.
      fills[k]!.copy(out, a - start, a - starts[k]!, b - starts[k]!);
    }
    return out;
  };
}
