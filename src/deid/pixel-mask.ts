/**
 * Cleaning pixel data as it streams (issue 6): rectangular regions blanked in every frame,
 * for every photometric interpretation and planar configuration of native (uncompressed)
 * pixel data, and overlay bits embedded in otherwise unused bits of the pixel cells cleared.
 * Bytes outside the regions and those bits are passed bit-exact; a chunk that touches a region
 * is copied before it is changed (the input buffers are never written).
 *
 * Fill: the region's own sample values when it names them (detected text: a contrasting level),
 * else 0 in every sample, except the chroma samples of YBR_* photometric interpretations, which
 * get the middle of their range (so the region is black, not green).
 */
import { GatewayError } from '../core/errors.js';

/** A rectangle in pixel coordinates: columns x .. x+width-1, rows y .. y+height-1. */
export interface Region {
  readonly x: number;
  readonly y: number;
  readonly width: number;
  readonly height: number;
  /** Stored sample values to fill with, one per sample (default: 0, and mid-range chroma for YBR). */
  readonly fill?: readonly number[] | undefined;
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

/** A byte range [start, end) of the whole pixel data and the bytes that repeat over it from `origin`. */
export interface MaskRange { start: number; end: number; origin: number; pattern: Uint8Array }

/** The bytes of one cell holding `v` (bits allocated 8, 16 or 32, in the data's byte order). */
function cellBytes(v: number, bpp: number, littleEndian: boolean): number[] {
  const out: number[] = [];
  for (let k = 0; k < bpp; k++) out.push(Math.floor(v / 2 ** (8 * k)) & 0xff);
  return littleEndian ? out : out.reverse();
}

/** Sorted byte ranges of the regions in the whole pixel data, each with its fill pattern; overlaps are cut so that each byte is in one range. */
export function maskRanges(g: PixelGeometry, regions: readonly Region[]): MaskRange[] {
  const bpp = g.bitsAllocated / 8;
  const per = frameBytes(g);
  const out: MaskRange[] = [];
  const chroma = /^YBR/.test(g.photometric) && g.samplesPerPixel === 3;
  const mid = 2 ** (g.bitsAllocated - 1);
  for (const r of regions) {
    const x0 = Math.max(0, Math.min(g.columns, r.x));
    const x1 = Math.max(0, Math.min(g.columns, r.x + r.width));
    const y0 = Math.max(0, Math.min(g.rows, r.y));
    const y1 = Math.max(0, Math.min(g.rows, r.y + r.height));
    if (x1 <= x0 || y1 <= y0) continue;
    const sample = (s: number): number => r.fill?.[s] ?? (chroma && s > 0 ? mid : 0);
    const interleaved = g.samplesPerPixel === 1 || g.planarConfiguration === 0;
    // One pattern per region: a whole pixel (interleaved) or one cell per sample plane (planar).
    const pixelPattern = Uint8Array.from(Array.from({ length: g.samplesPerPixel }, (_, s) => cellBytes(sample(s), bpp, g.littleEndian)).flat());
    const planePatterns = Array.from({ length: g.samplesPerPixel }, (_, s) => Uint8Array.from(cellBytes(sample(s), bpp, g.littleEndian)));
    for (let f = 0; f < g.frames; f++) {
      for (let y = y0; y < y1; y++) {
        if (interleaved) {
          const rowStart = f * per + (y * g.columns) * g.samplesPerPixel * bpp;
          const start = rowStart + x0 * g.samplesPerPixel * bpp;
          out.push({ start, end: rowStart + x1 * g.samplesPerPixel * bpp, origin: start, pattern: pixelPattern });
        } else {
          for (let s = 0; s < g.samplesPerPixel; s++) {
            const start = f * per + s * g.rows * g.columns * bpp + y * g.columns * bpp + x0 * bpp;
            out.push({ start, end: start + (x1 - x0) * bpp, origin: start, pattern: planePatterns[s]! });
          }
        }
      }
    }
  }
  out.sort((a, b) => a.start - b.start);
  // Overlapping regions: the earlier range keeps its bytes, the later one is cut to what follows.
  const merged: MaskRange[] = [];
  for (const r of out) {
    const last = merged.at(-1);
    if (last && r.start < last.end) {
      if (r.end > last.end) merged.push({ ...r, start: last.end });
    } else merged.push({ ...r });
  }
  return merged;
}

/**
 * A transformer of the pixel data's bytes (offset 0 = the first byte of the value), applied
 * chunk by chunk as they stream.
 */
/** `inPlace`: the chunks are the caller's to change (it owns them): masks are written into them, not into copies. */
export function pixelMasker(g: PixelGeometry, plan: MaskPlan, inPlace = false): (chunk: Buffer) => Buffer {
  checkGeometry(g);
  const ranges = maskRanges(g, plan.regions);
  const bpp = g.bitsAllocated / 8;
  // Which byte of a cell holds bit p, and the mask that clears it.
  const clears = plan.overlayBits.filter((p) => p >= 0 && p < g.bitsAllocated).map((p) => {
    const byteLe = p >> 3;
    return { byte: g.littleEndian ? byteLe : bpp - 1 - byteLe, keep: ~(1 << (p & 7)) & 0xff };
  });
  const fill = (r: MaskRange, buf: Buffer, from: number, to: number, absFrom: number): void => {
    const p = r.pattern;
    if (p.every((b) => b === p[0])) { buf.fill(p[0]!, from, to); return; }
    for (let i = from, k = (absFrom - r.origin) % p.length; i < to; i++, k = k + 1 === p.length ? 0 : k + 1) buf[i] = p[k]!;
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
    const out = inPlace ? chunk : Buffer.from(chunk); // else never write into the input's buffers
    for (let k = ri; k < ranges.length && ranges[k]!.start < end; k++) {
      const r = ranges[k]!;
      const a = Math.max(r.start, start) - start;
      const b = Math.min(r.end, end) - start;
      fill(r, out, a, b, Math.max(r.start, start));
    }
    for (const c of clears) {
      let i = (c.byte - (start % bpp) + bpp) % bpp;
      for (; i < out.length; i += bpp) out[i]! &= c.keep;
    }
    return out;
  };
}
