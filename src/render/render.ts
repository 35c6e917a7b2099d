/**
 * Rendered images and thumbnails made by the gateway (issue 6), never by the PACS: from the
 * DE-IDENTIFIED (and masked) instance, with windowing from its de-identified header.
 *
 * Native pixel data only: MONOCHROME1/2 (8/16/32 bit, signed or not; Modality LUT by Rescale
 * Slope/Intercept; VOI window from the request, else Window Center/Width, else the frame's
 * range; MONOCHROME1 inverted), RGB and YBR_FULL (8 or 16 bit, interleaved or planar).
 * Output PNG (own encoder, zlib) or JPEG (jpeg-js), optionally fitted into a viewport.
 */
import { crc32, deflateSync } from 'node:zlib';
import jpeg from 'jpeg-js';
import { GatewayError } from '../core/errors.js';
import type { RawElement, TransferSyntax } from '../dicom/part10.js';
import { decodeNumbers, decodeStrings } from '../dicom/values.js';
import { NUMERIC_SIZES, STRING_VRS } from '../dicom/vr.js';
import { DEFAULT_CHARSET } from '../dicom/charset.js';

export interface RenderSource {
  readonly elements: readonly RawElement[];
  readonly transferSyntax: TransferSyntax;
  readonly pixel: Buffer;
}

export interface RenderOptions {
  /** 1-based frame number. */
  readonly frame: number;
  readonly format: 'png' | 'jpeg';
  /** VOI window from the request (PS3.18 8.3.5.1.3): center, width. */
  readonly window?: { readonly center: number; readonly width: number } | undefined;
  /** Fit into this many columns × rows (aspect kept, never enlarged). */
  readonly viewport?: { readonly width: number; readonly height: number } | undefined;
  readonly quality?: number | undefined;
}

function unrenderable(reason: string): GatewayError {
  return new GatewayError('RENDERING_UNAVAILABLE', reason);
}

function values(elements: readonly RawElement[], tag: number): string[] {
  const el = elements.find((e) => e.tag === tag);
  if (!el?.value) return [];
  if (STRING_VRS.has(el.vr)) return decodeStrings(el.value, el.vr, DEFAULT_CHARSET);
  if (NUMERIC_SIZES[el.vr] !== undefined) return decodeNumbers(el.value, el.vr, el.syntax.littleEndian).map(String);
  return [];
}

const num = (els: readonly RawElement[], tag: number, dflt?: number): number => {
  const v = values(els, tag)[0];
  const n = v === undefined || v.trim() === '' ? Number.NaN : Number(v);
  if (Number.isFinite(n)) return n;
  if (dflt !== undefined) return dflt;
  throw unrenderable(`the attribute ${tag.toString(16)} needed for rendering is missing`);
};

/** 8-bit samples (grey: 1 per pixel, colour: RGB) of one frame. */
export function frameToRgb8(src: RenderSource, frame: number, window?: { center: number; width: number }): { width: number; height: number; channels: 1 | 3; data: Uint8Array } {
  const e = src.elements;
  const rows = num(e, 0x00280010);
  const cols = num(e, 0x00280011);
  const spp = num(e, 0x00280002, 1);
  const bits = num(e, 0x00280100);
  const stored = num(e, 0x00280101, bits);
  const signed = num(e, 0x00280103, 0) === 1;
  const planar = num(e, 0x00280006, 0);
  const frames = num(e, 0x00280008, 1);
  const photometric = (values(e, 0x00280004)[0] ?? '').trim().toUpperCase();
  if (![8, 16, 32].includes(bits)) throw unrenderable(`Bits Allocated ${bits} is not rendered`);
  if (frame < 1 || frame > frames) throw new GatewayError('NOT_FOUND', 'no such frame');
  const bpp = bits / 8;
  const per = rows * cols * spp * bpp;
  if (src.pixel.length < per * frames) throw unrenderable('the pixel data is shorter than its geometry');
  const f = src.pixel.subarray((frame - 1) * per, frame * per);
  const le = src.transferSyntax.littleEndian;
  const read = (i: number): number => {
    const o = i * bpp;
    let v = bpp === 1 ? f[o]! : bpp === 2 ? (le ? f.readUInt16LE(o) : f.readUInt16BE(o)) : (le ? f.readUInt32LE(o) : f.readUInt32BE(o));
    if (stored < bits) v &= stored >= 32 ? 0xffffffff : (2 ** stored - 1);
    if (signed && v >= 2 ** (stored - 1)) v -= 2 ** stored;
    return v;
  };
  if (spp === 1) {
    if (!/^MONOCHROME[12]$/.test(photometric)) throw unrenderable(`${photometric || 'an unknown photometric interpretation'} is not rendered`);
    const slope = num(e, 0x00281053, 1);
    const intercept = num(e, 0x00281052, 0);
    const n = rows * cols;
    const out = new Uint8Array(n);
    let center = window?.center ?? Number(values(e, 0x00281050)[0]);
    let width = window?.width ?? Number(values(e, 0x00281051)[0]);
    if (!Number.isFinite(center) || !Number.isFinite(width) || width < 1) {
      let lo = Infinity, hi = -Infinity;
      for (let i = 0; i < n; i++) { const v = read(i) * slope + intercept; if (v < lo) lo = v; if (v > hi) hi = v; }
      // The range maps onto 0–255 exactly under the linear function below.
      center = (lo + hi) / 2 + 0.5;
      width = Math.max(2, hi - lo + 1);
    }
    const invert = photometric === 'MONOCHROME1';
    for (let i = 0; i < n; i++) {
      const v = read(i) * slope + intercept;
      // PS3.3 C.11.2.1.2.1 linear VOI function.
      let y = v <= center - 0.5 - (width - 1) / 2 ? 0 : v > center - 0.5 + (width - 1) / 2 ? 255 : ((v - (center - 0.5)) / (width - 1) + 0.5) * 255;
      y = Math.round(y);
      out[i] = invert ? 255 - y : y;
    }
    return { width: cols, height: rows, channels: 1, data: out };
  }
  if (spp !== 3 || !/^(RGB|YBR_FULL)$/.test(photometric)) throw unrenderable(`${photometric || 'this photometric interpretation'} with ${spp} samples is not rendered`);
  const n = rows * cols;
  const out = new Uint8Array(n * 3);
  const shift = Math.max(0, stored - 8);
  const sample = (p: number, s: number): number => (read(planar === 1 ? s * n + p : p * 3 + s) >> shift) & 0xff;
  for (let p = 0; p < n; p++) {
    let r = sample(p, 0), g = sample(p, 1), b = sample(p, 2);
    if (photometric === 'YBR_FULL') {
      const y = r, cb = g - 128, cr = b - 128;
      r = y + 1.402 * cr; g = y - 0.344136 * cb - 0.714136 * cr; b = y + 1.772 * cb;
    }
    out[p * 3] = Math.max(0, Math.min(255, Math.round(r)));
    out[p * 3 + 1] = Math.max(0, Math.min(255, Math.round(g)));
    out[p * 3 + 2] = Math.max(0, Math.min(255, Math.round(b)));
  }
  return { width: cols, height: rows, channels: 3, data: out };
}

/** Nearest-neighbour fit into a viewport (aspect kept, never enlarged). */
function fit(img: { width: number; height: number; channels: 1 | 3; data: Uint8Array }, vp?: { width: number; height: number }): typeof img {
  if (!vp) return img;
  const scale = Math.min(1, vp.width / img.width, vp.height / img.height);
  if (scale >= 1) return img;
  const w = Math.max(1, Math.round(img.width * scale));
  const h = Math.max(1, Math.round(img.height * scale));
  const c = img.channels;
  const out = new Uint8Array(w * h * c);
  for (let y = 0; y < h; y++) {
    const sy = Math.min(img.height - 1, Math.floor(y / scale));
    for (let x = 0; x < w; x++) {
      const sx = Math.min(img.width - 1, Math.floor(x / scale));
      for (let k = 0; k < c; k++) out[(y * w + x) * c + k] = img.data[(sy * img.width + sx) * c + k]!;
    }
  }
  return { width: w, height: h, channels: c, data: out };
}

function chunk(type: string, data: Buffer): Buffer {
  const len = Buffer.alloc(4);
  len.writeUInt32BE(data.length);
  const td = Buffer.concat([Buffer.from(type, 'latin1'), data]);
  const crc = Buffer.alloc(4);
  crc.writeUInt32BE(crc32(td) >>> 0);
  return Buffer.concat([len, td, crc]);
}

/** PNG, 8-bit grey or RGB, filter 0 on every row. */
export function encodePng(img: { width: number; height: number; channels: 1 | 3; data: Uint8Array }): Buffer {
  const ihdr = Buffer.alloc(13);
  ihdr.writeUInt32BE(img.width, 0);
  ihdr.writeUInt32BE(img.height, 4);
  ihdr[8] = 8;
  ihdr[9] = img.channels === 1 ? 0 : 2;
  const stride = img.width * img.channels;
  const raw = Buffer.alloc((stride + 1) * img.height);
  for (let y = 0; y < img.height; y++) Buffer.from(img.data.buffer, img.data.byteOffset + y * stride, stride).copy(raw, y * (stride + 1) + 1);
  return Buffer.concat([Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]), chunk('IHDR', ihdr), chunk('IDAT', deflateSync(raw)), chunk('IEND', Buffer.alloc(0))]);
}

function encodeJpeg(img: { width: number; height: number; channels: 1 | 3; data: Uint8Array }, quality: number): Buffer {
  const rgba = Buffer.alloc(img.width * img.height * 4);
  for (let i = 0; i < img.width * img.height; i++) {
    const c = img.channels;
    rgba[i * 4] = img.data[i * c]!;
    rgba[i * 4 + 1] = img.data[i * c + (c === 3 ? 1 : 0)]!;
    rgba[i * 4 + 2] = img.data[i * c + (c === 3 ? 2 : 0)]!;
    rgba[i * 4 + 3] = 255;
  }
  return Buffer.from(jpeg.encode({ data: rgba, width: img.width, height: img.height }, quality).data);
}

/** One frame as PNG or JPEG. */
export function renderFrame(src: RenderSource, o: RenderOptions): Buffer {
  const img = fit(frameToRgb8(src, o.frame, o.window), o.viewport);
  return o.format === 'png' ? encodePng(img) : encodeJpeg(img, o.quality ?? 90);
}
