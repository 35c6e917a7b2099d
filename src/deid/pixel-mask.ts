/**
 * Cleaning pixel data as it streams (issue 6): rectangular regions blanked in every frame,
 * for every photometric interpretation and planar configuration of native (uncompressed)
 * pixel data, and overlay bits embedded in otherwise unused bits of the pixel cells cleared.
 * Bytes outside the regions and those bits are passed bit-exact; a chunk that touches a region
 * is copied before it is changed (the input buffers are never written).
 *
 * Fill: 0 in every sample, except the chroma samples of YBR_* photometric interpretations,
 * which get the middle of their range (so the region is black, not green).
 */
import { GatewayError } from '../core/errors.js';

/** A rectangle in pixel coordinates: columns x .. x+width-1, rows y .. y+height-1. */
export interface Region {
  readonly x: number;
  readonly y: number;
  readonly width: number;
  readonly height: number;
}

export interface PixelGeometry {
  readonly rows: number;
  readonly columns: number;
  readonly samplesPerPixel: number;
  readonly bitsAllocated: number;
  /** 0: interleaved (R1G1B1R2…), 1: planar (R1R2…G1G2…B1B2…). */
  readonly planarConfiguration: number;
  readonly frames: number;
  readonly photometric: string;
  readonly littleEndian: boolean;
}

export interface MaskPlan {
  readonly regions: readonly Region[];
  /** Bit positions (0 = least significant) of embedded overlays to clear in every cell. */
  readonly overlayBits: readonly number[];
}

function bad(reason: string): GatewayError {
  return new GatewayError('PIXELS_WITHHELD', reason, { auditReason: 'pixels-withheld:cannot-clean' });
}

/** Bytes of one frame of native pixel data. */
export function frameBytes(g: PixelGeometry): number {
  return g.rows * g.columns * g.samplesPerPixel * (g.bitsAllocated / 8);
}

/** Checks that the geometry can be masked; throws PIXELS_WITHHELD with the reason otherwise. */
export function checkGeometry(g: PixelGeometry): void {
  if (![8, 16, 32].includes(g.bitsAllocated)) throw bad(`pixel data with Bits Allocated ${g.bitsAllocated} cannot be cleaned`);
  if (!(g.rows > 0 && g.columns > 0 && g.frames > 0 && (g.samplesPerPixel === 1 || g.samplesPerPixel === 3))) throw bad('pixel data whose geometry (rows, columns, samples, frames) cannot be read cannot be cleaned');
  if (g.samplesPerPixel === 3 && g.planarConfiguration !== 0 && g.planarConfiguration !== 1) throw bad('unknown planar configuration');
  if (/^YBR_(FULL|PARTIAL)_42[02]$/.test(g.photometric)) throw bad(`${g.photometric} (subsampled chroma) cannot be cleaned natively`);
}

/** True when at least one region, clipped to the image, covers at least one pixel. */
export function regionsCover(g: Pick<PixelGeometry, 'rows' | 'columns'>, regions: readonly Region[]): boolean {
  return regions.some((r) => Math.min(g.columns, r.x + r.width) > Math.max(0, r.x) && Math.min(g.rows, r.y + r.height) > Math.max(0, r.y));
}

/** Sorted, merged byte ranges [start, end) of the regions in the whole pixel data, with each range's fill byte. */
export function maskRanges(g: PixelGeometry, regions: readonly Region[]): { start: number; end: number; fill: number }[] {
  const bpp = g.bitsAllocated / 8;
  const per = frameBytes(g);
  const out: { start: number; end: number; fill: number }[] = [];
  const chroma = /^YBR/.test(g.photometric) && g.samplesPerPixel === 3;
  const mid = 1 << (g.bitsAllocated - 1);
  const fillOf = (s: number): number => (chroma && s > 0 ? mid : 0);
  for (let f = 0; f < g.frames; f++) {
    for (const r of regions) {
      const x0 = Math.max(0, Math.min(g.columns, r.x));
      const x1 = Math.max(0, Math.min(g.columns, r.x + r.width));
      const y0 = Math.max(0, Math.min(g.rows, r.y));
      const y1 = Math.max(0, Math.min(g.rows, r.y + r.height));
      if (x1 <= x0 || y1 <= y0) continue;
      for (let y = y0; y < y1; y++) {
        if (g.samplesPerPixel === 1 || g.planarConfiguration === 0) {
          const rowStart = f * per + (y * g.columns) * g.samplesPerPixel * bpp;
          if (chroma) {
            for (let x = x0; x < x1; x++) for (let s = 0; s < 3; s++) {
              const o = rowStart + (x * 3 + s) * bpp;
              out.push({ start: o, end: o + bpp, fill: fillOf(s) });
            }
          } else {
            out.push({ start: rowStart + x0 * g.samplesPerPixel * bpp, end: rowStart + x1 * g.samplesPerPixel * bpp, fill: 0 });
          }
        } else {
          for (let s = 0; s < g.samplesPerPixel; s++) {
            const planeStart = f * per + s * g.rows * g.columns * bpp + y * g.columns * bpp;
            out.push({ start: planeStart + x0 * bpp, end: planeStart + x1 * bpp, fill: fillOf(s) });
          }
        }
      }
    }
  }
  out.sort((a, b) => a.start - b.start);
  // Merge touching ranges with the same fill (overlapping regions are filled once).
  const merged: { start: number; end: number; fill: number }[] = [];
  for (const r of out) {
    const last = merged.at(-1);
    if (last && r.start <= last.end && r.fill === last.fill) last.end = Math.max(last.end, r.end);
    else if (last && r.start < last.end) merged.push({ start: last.end, end: Math.max(last.end, r.end), fill: r.fill });
    else merged.push({ ...r });
  }
  return merged.filter((r) => r.end > r.start);
}

/**
 * A transformer of the pixel data's bytes (offset 0 = the first byte of the value), applied
 * chunk by chunk as they stream.
 */
export function pixelMasker(g: PixelGeometry, plan: MaskPlan): (chunk: Buffer) => Buffer {
  checkGeometry(g);
  const ranges = maskRanges(g, plan.regions);
  const bpp = g.bitsAllocated / 8;
  // Which byte of a cell holds bit p, and the mask that clears it.
  const clears = plan.overlayBits.filter((p) => p >= 0 && p < g.bitsAllocated).map((p) => {
    const byteLe = p >> 3;
    return { byte: g.littleEndian ? byteLe : bpp - 1 - byteLe, keep: ~(1 << (p & 7)) & 0xff };
  });
  const fillMid = (r: { start: number; fill: number }, buf: Buffer, from: number, to: number, absFrom: number): void => {
    if (r.fill === 0) { buf.fill(0, from, to); return; }
    for (let i = from; i < to; i++) {
      const within = (absFrom + (i - from) - r.start) % bpp; // byte within the cell
      const big = g.littleEndian ? within === bpp - 1 : within === 0;
      buf[i] = big ? (r.fill >> ((bpp - 1) * 8)) & 0xff : 0;
    }
  };
  let offset = 0;
  let ri = 0;
  return (chunk: Buffer): Buffer => {
    const start = offset;
    const end = start + chunk.length;
    offset = end;
    while (ri < ranges.length && ranges[ri]!.end <= start) ri++;
    const touches = ri < ranges.length && ranges[ri]!.start < end;
    if (!touches && clears.length === 0) return chunk;
    const out = Buffer.from(chunk); // never write into the input's buffers
    for (let k = ri; k < ranges.length && ranges[k]!.start < end; k++) {
      const r = ranges[k]!;
      const a = Math.max(r.start, start) - start;
      const b = Math.min(r.end, end) - start;
      fillMid(r, out, a, b, Math.max(r.start, start));
    }
    for (const c of clears) {
      let i = (c.byte - (start % bpp) + bpp) % bpp;
      for (; i < out.length; i += bpp) out[i]! &= c.keep;
    }
    return out;
  };
}
