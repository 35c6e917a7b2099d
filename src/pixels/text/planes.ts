/**
 * One frame of native pixel data as the 8-bit plane the text detector reads. Every photometric
 * interpretation: MONOCHROME1/2 (any bit depth, scaled by the frame's range; MONOCHROME1
 * inverted), PALETTE COLOR (through its lookup tables), RGB and YBR_FULL (either planar
 * configuration). For colour the plane is the brightest sample of each pixel, so that white,
 * yellow, cyan or red text stands out on a dark ground alike, and dark text on a light one.
 */
import { GatewayError } from '../../core/errors.js';

export interface PlaneFacts {
  readonly rows: number;
  readonly columns: number;
  readonly samplesPerPixel: number;
  readonly bitsAllocated: number;
  readonly bitsStored: number;
  readonly pixelRepresentation: number;
  readonly photometric: string;
  readonly planarConfiguration: number;
  readonly littleEndian: boolean;
  /** The pixels went through lossy compression (Lossy Image Compression 01, or a lossy syntax). */
  readonly lossy?: boolean | undefined;
  /** PALETTE COLOR: the red, green and blue tables scaled to 8 bits, and the first value mapped. */
  readonly palette?: { readonly red: Uint8Array; readonly green: Uint8Array; readonly blue: Uint8Array; readonly first: number } | undefined;
}

function withheld(why: string): GatewayError {
  return new GatewayError('PIXELS_WITHHELD', why, { auditReason: 'pixels-withheld:text-undecodable' });
}

/** Checks that the detector can read pixels of these facts; throws PIXELS_WITHHELD otherwise. */
export function checkPlaneFacts(f: PlaneFacts): void {
  if (!(f.rows > 0 && f.columns > 0)) throw withheld('the image size cannot be read');
  if (f.samplesPerPixel === 3) {
    if (f.bitsAllocated !== 8 && f.bitsAllocated !== 16) throw withheld(`colour pixels of ${f.bitsAllocated} bits cannot be read for text`);
    if (!/^(RGB|YBR_FULL|YBR_ICT|YBR_RCT)$/.test(f.photometric)) throw withheld(`${f.photometric} pixels cannot be read for text`);
  } else if (f.samplesPerPixel === 1) {
    if (f.bitsAllocated !== 8 && f.bitsAllocated !== 16 && f.bitsAllocated !== 32) throw withheld(`pixels of ${f.bitsAllocated} bits cannot be read for text`);
    if (f.photometric === 'PALETTE COLOR' && !f.palette) throw withheld('palette colour without readable lookup tables');
    if (!/^(MONOCHROME1|MONOCHROME2|PALETTE COLOR)$/.test(f.photometric)) throw withheld(`${f.photometric} pixels cannot be read for text`);
  } else {
    throw withheld(`${f.samplesPerPixel} samples per pixel cannot be read for text`);
  }
}

export function frameLength(f: PlaneFacts): number {
  return f.rows * f.columns * f.samplesPerPixel * (f.bitsAllocated / 8);
}

/**
 * The plane of frame `k` (0-based) of native pixel data. For colour, `tint` (when given) gets
 * each pixel's hue signature, (green − blue) / 2 + 128 for RGB and palette, Cr for YBR: text is
 * drawn in one colour, a colour-flow map is not.
 */
export function framePlane(pixel: Uint8Array, f: PlaneFacts, k: number, tint?: Uint8Array): Uint8Array {
  const n = f.rows * f.columns;
  const per = frameLength(f);
  if ((k + 1) * per > pixel.length) throw withheld('the pixel data is shorter than its frames');
  const plane = new Uint8Array(n);
  const base = k * per;
  if (f.samplesPerPixel === 3) {
    const bps = f.bitsAllocated / 8;
    const hiByte = bps === 2 ? (f.littleEndian ? 1 : 0) : 0; // 16-bit colour: the high byte is enough
    const ybr = f.photometric.startsWith('YBR');
    const at = f.planarConfiguration === 1
      ? (i: number, s: number): number => pixel[base + (s * n + i) * bps + hiByte]!
      : (i: number, s: number): number => pixel[base + (i * 3 + s) * bps + hiByte]!;
    if (ybr) { for (let i = 0; i < n; i++) { plane[i] = at(i, 0); if (tint) tint[i] = at(i, 2); } return plane; }
    if (bps === 1 && f.planarConfiguration !== 1) {
      for (let i = 0, o = base; i < n; i++, o += 3) {
        const r = pixel[o]!, g = pixel[o + 1]!, b = pixel[o + 2]!;
        plane[i] = r > g ? (r > b ? r : b) : (g > b ? g : b);
        if (tint) tint[i] = (g - b + 256) >> 1;
      }
      return plane;
    }
    for (let i = 0; i < n; i++) {
      const r = at(i, 0), g = at(i, 1), b = at(i, 2);
      plane[i] = r > g ? (r > b ? r : b) : (g > b ? g : b);
      if (tint) tint[i] = (g - b + 256) >> 1;
    }
    return plane;
  }
  // One sample: read the stored values, then map them to 8 bits.
  const values = new Float64Array(n);
  const bytes = f.bitsAllocated / 8;
  const view = new DataView(pixel.buffer, pixel.byteOffset + base, per);
  const signed = f.pixelRepresentation === 1;
  const shift = 32 - Math.min(32, Math.max(1, f.bitsStored));
  for (let i = 0; i < n; i++) {
    let v: number;
    if (bytes === 1) v = view.getUint8(i);
    else if (bytes === 2) v = view.getUint16(i * 2, f.littleEndian);
    else v = view.getUint32(i * 4, f.littleEndian);
    // Only Bits Stored count (overlay bits above are not image); sign-extend when signed.
    v = signed ? ((v << shift) >> shift) : ((v << shift) >>> shift);
    values[i] = v;
  }
  if (f.photometric === 'PALETTE COLOR') {
    const p = f.palette!;
    const last = p.red.length - 1;
    for (let i = 0; i < n; i++) {
      const j = Math.max(0, Math.min(last, values[i]! - p.first));
      const r = p.red[j]!, g = p.green[j]!, b = p.blue[j]!;
      plane[i] = r > g ? (r > b ? r : b) : (g > b ? g : b);
      if (tint) tint[i] = (g - b + 256) >> 1;
    }
    return plane;
  }
  let lo = Infinity, hi = -Infinity;
  for (let i = 0; i < n; i++) { const v = values[i]!; if (v < lo) lo = v; if (v > hi) hi = v; }
  const scale = hi > lo ? 255 / (hi - lo) : 0;
  const invert = f.photometric === 'MONOCHROME1';
  for (let i = 0; i < n; i++) {
    const v = Math.round((values[i]! - lo) * scale);
    plane[i] = invert ? 255 - v : v;
  }
  return plane;
}

/**
 * The palette of a PALETTE COLOR image from its descriptors (0028,1101–1103: entries, first
 * value mapped, bits per entry) and data (0028,1201–1203), as 8-bit tables; undefined when absent.
 */
export function readPalette(value: (tag: number) => Buffer | undefined, descriptor: (tag: number) => readonly number[] | undefined, littleEndian: boolean): PlaneFacts['palette'] {
  const tables: Uint8Array[] = [];
  let first = 0;
  for (const [d, t, seg] of [[0x00281101, 0x00281201, 0x00281221], [0x00281102, 0x00281202, 0x00281222], [0x00281103, 0x00281203, 0x00281223]] as const) {
    const desc = descriptor(d);
    if (!desc || desc.length < 3) return undefined;
    const entries = desc[0] === 0 ? 65536 : desc[0]!;
    first = desc[1]!;
    const bits = desc[2]!;
    const plain = value(t);
    const segmented = plain ? undefined : value(seg);
    const data = plain ?? (segmented ? expandSegments(segmented, entries, littleEndian) : undefined);
    if (!data) return undefined;
    const le = plain ? littleEndian : true;
    const out = new Uint8Array(entries);
    if (bits === 8 && data.length >= entries && data.length < entries * 2) {
      for (let i = 0; i < entries; i++) out[i] = data[i]!;
    } else {
      if (data.length < entries * 2) return undefined;
      // 16-bit entries (8-bit ones stored in 16-bit words use the low byte's range).
      let max = 0;
      for (let i = 0; i < entries; i++) max = Math.max(max, le ? data.readUInt16LE(i * 2) : data.readUInt16BE(i * 2));
      const div = bits === 8 || max < 256 ? 1 : 256;
      for (let i = 0; i < entries; i++) out[i] = Math.min(255, Math.floor((le ? data.readUInt16LE(i * 2) : data.readUInt16BE(i * 2)) / div));
    }
    tables.push(out);
  }
  return { red: tables[0]!, green: tables[1]!, blue: tables[2]!, first };
}

/**
 * Segmented Palette Color Lookup Table Data (PS3.3 C.7.9.2) expanded into plain 16-bit entries
 * (little endian): discrete segments (opcode 0), linear segments (1) from the last value, and
 * indirect segments (2) that replay earlier ones. Undefined when malformed.
 */
export function expandSegments(data: Buffer, entries: number, littleEndian: boolean): Buffer | undefined {
  const words = Math.floor(data.length / 2);
  const word = (i: number): number => (littleEndian ? data.readUInt16LE(i * 2) : data.readUInt16BE(i * 2));
  const out: number[] = [];
  const run = (from: number, to: number, depth: number): boolean => {
    for (let i = from; i < to && out.length < entries;) {
      if (i + 1 >= words) return false;
      const op = word(i), n = word(i + 1);
      if (op === 0) {
        if (i + 2 + n > words) return false;
        for (let k = 0; k < n; k++) out.push(word(i + 2 + k));
        i += 2 + n;
      } else if (op === 1) {
        if (i + 2 >= words || out.length === 0) return false;
        const y0 = out.at(-1)!, y1 = word(i + 2);
        for (let k = 1; k <= n; k++) out.push(Math.round(y0 + ((y1 - y0) * k) / n));
        i += 3;
      } else if (op === 2) {
        if (i + 3 >= words || depth > 0) return false;
        // The offset is in bytes from the start of the data, in two words, least significant first.
        const offset = (word(i + 2) | (word(i + 3) << 16)) / 2;
        let at = offset;
        for (let k = 0; k < n; k++) {
          if (at + 1 >= words) return false;
          const op2 = word(at), n2 = word(at + 1);
          const len = op2 === 0 ? 2 + n2 : op2 === 1 ? 3 : 4;
          if (!run(at, at + len, depth + 1)) return false;
          at += len;
        }
        i += 4;
      } else {
        return false;
      }
    }
    return true;
  };
  if (!run(0, words, 0) || out.length < entries) return undefined;
  const buf = Buffer.alloc(entries * 2);
  for (let i = 0; i < entries; i++) buf.writeUInt16LE(Math.max(0, Math.min(65535, out[i]!)), i * 2);
  return buf;
}

/** Frame `k` as 8-bit RGB (previews): colour as stored, palette through its tables, grey scaled like the plane. */
export function frameRgb(pixel: Uint8Array, f: PlaneFacts, k: number): Uint8Array {
  const n = f.rows * f.columns;
  const out = new Uint8Array(n * 3);
  if (f.samplesPerPixel === 3 && !f.photometric.startsWith('YBR')) {
    const bps = f.bitsAllocated / 8;
    const hiByte = bps === 2 ? (f.littleEndian ? 1 : 0) : 0;
    const base = k * frameLength(f);
    for (let i = 0; i < n; i++) for (let s = 0; s < 3; s++) out[i * 3 + s] = pixel[base + (f.planarConfiguration === 1 ? s * n + i : i * 3 + s) * bps + hiByte]!;
    return out;
  }
  if (f.photometric === 'PALETTE COLOR' && f.palette) {
    const p = f.palette;
    const per = frameLength(f);
    const view = new DataView(pixel.buffer, pixel.byteOffset + k * per, per);
    for (let i = 0; i < n; i++) {
      const v = f.bitsAllocated === 8 ? view.getUint8(i) : view.getUint16(i * 2, f.littleEndian);
      const j = Math.max(0, Math.min(p.red.length - 1, v - p.first));
      out[i * 3] = p.red[j]!; out[i * 3 + 1] = p.green[j]!; out[i * 3 + 2] = p.blue[j]!;
    }
    return out;
  }
  const plane = framePlane(pixel, f, k); // grey, and YBR's luma
  for (let i = 0; i < n; i++) out[i * 3] = out[i * 3 + 1] = out[i * 3 + 2] = plane[i]!;
  return out;
}

/**
 * The stored sample values that show as `level` (0–255 on the detector's plane) in frame `k`:
 * grey for RGB, luma with neutral chroma for YBR, the frame's range for monochrome, and for
 * PALETTE COLOR the greyest entry of that brightness.
 */
export function fillSamples(pixel: Uint8Array, f: PlaneFacts, k: number, level: number): number[] {
  const maxOf = (bits: number): number => 2 ** bits - 1;
  if (f.samplesPerPixel === 3) {
    const v = Math.round(level / 255 * maxOf(f.bitsAllocated));
    return f.photometric.startsWith('YBR') ? [v, 2 ** (f.bitsAllocated - 1), 2 ** (f.bitsAllocated - 1)] : [v, v, v];
  }
  if (f.photometric === 'PALETTE COLOR' && f.palette) {
    const p = f.palette;
    let best = 0, cost = Infinity;
    for (let j = 0; j < p.red.length; j++) {
      const r = p.red[j]!, g = p.green[j]!, b = p.blue[j]!;
      const hi = Math.max(r, g, b), lo = Math.min(r, g, b);
      const c = Math.abs(hi - level) + (hi - lo);
      if (c < cost) { cost = c; best = j; }
    }
    return [best + p.first];
  }
  // Monochrome: the level on the frame's own range of stored values (as framePlane scaled it).
  const per = frameLength(f);
  const view = new DataView(pixel.buffer, pixel.byteOffset + k * per, per);
  const bytes = f.bitsAllocated / 8;
  const shift = 32 - Math.min(32, Math.max(1, f.bitsStored));
  let lo = Infinity, hi = -Infinity;
  for (let i = 0; i < f.rows * f.columns; i++) {
    let v = bytes === 1 ? view.getUint8(i) : bytes === 2 ? view.getUint16(i * 2, f.littleEndian) : view.getUint32(i * 4, f.littleEndian);
    v = f.pixelRepresentation === 1 ? ((v << shift) >> shift) : ((v << shift) >>> shift);
    if (v < lo) lo = v; if (v > hi) hi = v;
  }
  const t = f.photometric === 'MONOCHROME1' ? 1 - level / 255 : level / 255;
  let v = Math.round(lo + t * (hi - lo));
  // Stored as the cell's bits: two's complement for signed values.
  if (v < 0) v += 2 ** f.bitsAllocated;
  return [v];
}
