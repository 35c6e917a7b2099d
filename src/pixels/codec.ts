/**
 * The codec seam of the pixel stage: compressed pixel data decoded in-process where that is
 * sound, so that an offline file (which has no PACS to transcode it) can be examined and masked.
 *
 *  - RLE Lossless (PS3.5 Annex G), the usual syntax of echo cine loops: exact.
 *  - JPEG Baseline 8-bit (1.2.840.10008.1.2.4.50), the usual syntax of ultrasound: decoded with
 *    jpeg-js into RGB (or grey), as every viewer shows it.
 *
 * Anything else (JPEG 2000, JPEG-LS, lossless JPEG, video) is not decoded here: the gateway asks
 * the PACS for Explicit VR Little Endian instead, and the offline command withholds it.
 *
 * `nativeInstance` rewrites a whole Part 10 object with native pixel data in Explicit VR Little
 * Endian: the data set's other elements are written as they were, with Photometric
 * Interpretation and Planar Configuration set to what the decoded bytes are.
 */
import jpeg from 'jpeg-js';
import { GatewayError } from '../core/errors.js';
import { ElementParser, EXPLICIT_LE, encodeFileMeta, encodeToBuffer, rawToOut, readHeaderSync, textElement, UNDEFINED_LENGTH, type OutElement, type RawElement } from '../dicom/part10.js';
import { readPixelFacts } from './geometry.js';
import { part10View } from './views.js';

export const RLE_LOSSLESS = '1.2.840.10008.1.2.5';
export const JPEG_BASELINE = '1.2.840.10008.1.2.4.50';
const EXPLICIT_LE_UID = '1.2.840.10008.1.2.1';

/** True when this transfer syntax's pixel data can be decoded here. */
export function decodableHere(uid: string): boolean {
  return uid === RLE_LOSSLESS || uid === JPEG_BASELINE;
}

function undecodable(why: string): GatewayError {
  return new GatewayError('PIXELS_WITHHELD', why, { auditReason: 'pixels-withheld:compressed' });
}

/** The fragments of encapsulated pixel data grouped into frames (PS3.5 A.4). */
export function encapsulatedFrames(value: Buffer, frames: number): Buffer[] {
  const items: Buffer[] = [];
  for (let at = 0; at + 8 <= value.length;) {
    const tag = value.readUInt32LE(at);
    const len = value.readUInt32LE(at + 4);
    if (tag === 0xe0ddfffe) break; // sequence delimiter
    if (tag !== 0xe000fffe || len === UNDEFINED_LENGTH || at + 8 + len > value.length) throw undecodable('the encapsulated pixel data is malformed');
    items.push(value.subarray(at + 8, at + 8 + len));
    at += 8 + len;
  }
  const [bot, ...fragments] = items;
  if (!bot || fragments.length === 0) throw undecodable('the encapsulated pixel data has no fragments');
  if (fragments.length === frames) return fragments;
  if (frames === 1) return [Buffer.concat(fragments)];
  if (bot.length >= frames * 4) {
    // Offsets into the fragment items (from the first fragment's item tag).
    const starts: number[] = [];
    let off = 0;
    for (const f of fragments) { starts.push(off); off += 8 + f.length; }
    const out: Buffer[] = [];
    for (let k = 0; k < frames; k++) {
      const a = bot.readUInt32LE(k * 4);
      const b = k + 1 < frames ? bot.readUInt32LE((k + 1) * 4) : off;
      const parts = fragments.filter((_, i) => starts[i]! >= a && starts[i]! < b);
      if (!parts.length) throw undecodable('the basic offset table does not match the fragments');
      out.push(Buffer.concat(parts));
    }
    return out;
  }
  throw undecodable('the frames of the encapsulated pixel data cannot be told apart');
}

/** Decodes one RLE frame (PS3.5 G.3) into native little-endian bytes, interleaved samples. */
export function decodeRleFrame(frame: Buffer, rows: number, columns: number, samples: number, bitsAllocated: number): Buffer {
  const bytes = bitsAllocated / 8;
  const n = rows * columns;
  if (frame.length < 64) throw undecodable('an RLE frame has no header');
  const segments = frame.readUInt32LE(0);
  if (segments !== samples * bytes || segments > 15) throw undecodable('the RLE segments do not match the pixel module');
  const out = Buffer.alloc(n * samples * bytes);
  for (let s = 0; s < segments; s++) {
    const start = frame.readUInt32LE(4 + s * 4);
    const end = s + 1 < segments ? frame.readUInt32LE(8 + s * 4) : frame.length;
    if (start < 64 || end > frame.length || end < start) throw undecodable('an RLE segment offset is out of range');
    // Segment order: sample by sample, most significant byte first.
    const sample = Math.floor(s / bytes);
    const byteInCell = bytes - 1 - (s % bytes); // little-endian position of this byte
    const stride = samples * bytes;
    let o = sample * bytes + byteInCell;
    let written = 0;
    for (let i = start; i < end && written < n;) {
      const c = frame.readInt8(i++);
      if (c >= 0) {
        for (let j = 0; j <= c && written < n && i < end; j++, written++, o += stride) out[o] = frame[i++]!;
      } else if (c !== -128) {
        const v = frame[i++]!;
        for (let j = 0; j < 1 - c && written < n; j++, written++, o += stride) out[o] = v;
      }
    }
    if (written < n) throw undecodable('an RLE segment is shorter than its frame');
  }
  return out;
}

/** Decodes one JPEG baseline frame into 8-bit native bytes: RGB interleaved (3 components) or grey. */
export function decodeJpegFrame(frame: Buffer, rows: number, columns: number, samples: number): Buffer {
  let img: { width: number; height: number; data: Uint8Array };
  try {
    img = jpeg.decode(frame, { useTArray: true, formatAsRGBA: false, tolerantDecoding: false, maxMemoryUsageInMB: 512 });
  } catch (cause) {
    throw new GatewayError('PIXELS_WITHHELD', 'a JPEG frame cannot be decoded', { auditReason: 'pixels-withheld:compressed', cause });
  }
  if (img.width !== columns || img.height !== rows) throw undecodable('a JPEG frame does not have the image\'s size');
  const n = rows * columns;
  if (samples === 3) return Buffer.from(img.data.buffer, img.data.byteOffset, n * 3);
  // Grey JPEG: jpeg-js gives three equal samples.
  const out = Buffer.alloc(n);
  for (let i = 0; i < n; i++) out[i] = img.data[i * 3]!;
  return out;
}

const us = (tag: number, v: number): OutElement => { const b = Buffer.alloc(2); b.writeUInt16LE(v); return { tag, vr: 'US', value: b, items: null }; };

/**
 * The Part 10 object with its pixel data decoded (RLE, JPEG baseline) and written natively in
 * Explicit VR Little Endian; the same buffer when the pixel data is native already. Throws
 * PIXELS_WITHHELD (pixels-withheld:compressed) when it cannot be decoded here.
 */
export function nativeInstance(buf: Buffer, inflate: (b: Buffer) => Buffer): Buffer {
  const head = readHeaderSync(buf, inflate);
  const ts = head.transferSyntax;
  if (!ts.encapsulated) return buf;
  if (!decodableHere(ts.uid)) throw undecodable(`pixel data in transfer syntax ${ts.uid} cannot be decoded here`);
  const facts = readPixelFacts(part10View(head.elements));
  // Find the pixel data element (encapsulated syntaxes are explicit little endian, never deflated).
  let pos = 132;
  const metaParser = new ElementParser(buf, 0, false);
  while (pos + 2 <= buf.length && buf.readUInt16LE(pos) === 0x0002) pos = metaParser.element(pos, buf.length, EXPLICIT_LE).next;
  const p = new ElementParser(buf, 0, false);
  let value: Buffer | undefined;
  const trailing: RawElement[] = [];
  for (let at = pos; at < buf.length;) {
    const h = p.header(at, buf.length, ts);
    if (h.tag === 0x7fe00010) {
      if (h.length !== UNDEFINED_LENGTH) return buf;
      // The value runs to the sequence delimiter; read items by hand.
      let end = at + h.headerLength;
      for (;;) {
        if (end + 8 > buf.length) throw undecodable('the encapsulated pixel data ends early');
        const tag = buf.readUInt32LE(end);
        const len = buf.readUInt32LE(end + 4);
        end += 8;
        if (tag === 0xe0ddfffe) break;
        end += len;
      }
      value = buf.subarray(at + h.headerLength, end);
      at = end;
      continue;
    }
    const { element, next } = p.element(at, buf.length, ts, h);
    if (value) trailing.push(element);
    at = next;
  }
  if (!value) throw undecodable('no pixel data');
  const { rows, columns, samplesPerPixel: samples, bitsAllocated, frames } = facts;
  const fragments = encapsulatedFrames(value, frames);
  const decoded: Buffer[] = [];
  let photometric = facts.photometric;
  for (const f of fragments) {
    if (ts.uid === RLE_LOSSLESS) decoded.push(decodeRleFrame(f, rows, columns, samples, bitsAllocated));
    else {
      if (bitsAllocated !== 8) throw undecodable('JPEG baseline pixel data with more than 8 bits allocated');
      decoded.push(decodeJpegFrame(f, rows, columns, samples));
      if (samples === 3) photometric = 'RGB';
    }
  }
  const pixel = Buffer.concat(decoded);
  const replaced = new Map<number, OutElement>([[0x00280004, textElement(0x00280004, 'CS', photometric)]]);
  if (samples === 3) replaced.set(0x00280006, us(0x00280006, 0));
  // Pixels that went through JPEG baseline stay lossy (PS3.3 C.7.6.1.1.5): say so when the header does not.
  if (ts.uid === JPEG_BASELINE && part10View(head.elements).str(0x00282110) !== '01') replaced.set(0x00282110, textElement(0x00282110, 'CS', '01'));
  const elements: OutElement[] = head.elements.map((e) => replaced.get(e.tag) ?? rawToOut(e));
  for (const [tag, el] of replaced) if (!head.elements.some((e) => e.tag === tag)) elements.push(el);
  elements.sort((a, b) => a.tag - b.tag);
  const pixelEl: OutElement = { tag: 0x7fe00010, vr: bitsAllocated > 8 ? 'OW' : 'OB', value: pixel, items: null };
  const meta = head.meta.filter((e) => e.tag !== 0x00020000).map((e) => (e.tag === 0x00020010 ? textElement(0x00020010, 'UI', EXPLICIT_LE_UID) : rawToOut(e)));
  return Buffer.concat([encodeFileMeta(meta), encodeToBuffer([...elements, pixelEl, ...trailing.map(rawToOut)], EXPLICIT_LE)]);
}
