/**
 * DICOM Part 10 reading and writing (PS3.10 7.1, PS3.5 7): transfer syntaxes, a byte queue
 * over a streamed source, a bounded element parser for the header, and an element writer.
 *
 * Values stay as Buffer slices; nothing is decoded unless a caller asks. Malformed input
 * throws a GatewayError with the reason and the byte offset, never the bytes.
 */
import { GatewayError, tagString } from '../core/errors.js';
import { dictionary, isPrivateTag, isPrivateCreatorTag, ITEM, ITEM_DELIMITATION, SEQUENCE_DELIMITATION } from './dictionary.js';
import { LONG_LENGTH_VRS, padByte, vrFromCode, type VR } from './vr.js';

export interface Syntax {
  readonly explicit: boolean;
  readonly littleEndian: boolean;
}

export interface TransferSyntax extends Syntax {
  readonly uid: string;
  readonly deflated: boolean;
  /** Pixel data is encapsulated (compressed): fragments in items (PS3.5 A.4). */
  readonly encapsulated: boolean;
}

export const IMPLICIT_LE: Syntax = Object.freeze({ explicit: false, littleEndian: true });
export const EXPLICIT_LE: Syntax = Object.freeze({ explicit: true, littleEndian: true });

/** Resolves a Transfer Syntax UID, or throws DICOM_UNSUPPORTED_TRANSFER_SYNTAX (fail closed). */
export function transferSyntax(uidRaw: string): TransferSyntax {
  const uid = uidRaw.replace(/\0/g, '').trim();
  const ts = (explicit: boolean, littleEndian: boolean, deflated: boolean, encapsulated: boolean): TransferSyntax =>
    Object.freeze({ uid, explicit, littleEndian, deflated, encapsulated });
  switch (uid) {
    case '1.2.840.10008.1.2': return ts(false, true, false, false);
    case '1.2.840.10008.1.2.1': return ts(true, true, false, false);
    case '1.2.840.10008.1.2.1.98': return ts(true, true, false, true); // encapsulated uncompressed
    case '1.2.840.10008.1.2.1.99': return ts(true, true, true, false);
    case '1.2.840.10008.1.2.2': return ts(true, false, false, false);
    default:
      // JPEG family, JPEG-LS, JPEG 2000, HTJ2K, MPEG, HEVC (PS3.5 A.4.x: explicit VR LE,
      // encapsulated), RLE (A.4.2), deflated image frames (A.4.11).
      if (/^1\.2\.840\.10008\.1\.2\.(4\.\d+|5|8\.1)$/.test(uid)) return ts(true, true, false, true);
      throw new GatewayError('DICOM_UNSUPPORTED_TRANSFER_SYNTAX', `transfer syntax ${uid.slice(0, 64)} is not supported`);
  }
}

/** Raised inside the parser when the available bytes end before the element does. */
export class NeedMoreData extends Error {
  constructor() { super('need more data'); }
}

export interface RawElement {
  readonly tag: number;
  /** VR as encoded (explicit) or from the dictionary (implicit; UN when unknown). */
  readonly vr: VR;
  /** Value bytes in the syntax's byte order; null for sequences. */
  readonly value: Buffer | null;
  /** Items of a sequence (SQ, or UN/implicit of undefined length), else null. */
  readonly items: RawItem[] | null;
  /** Byte order and VR explicitness the value bytes are in (UN sequences nest implicit LE). */
  readonly syntax: Syntax;
}

export interface RawItem {
  readonly elements: RawElement[];
}

const UNDEFINED = 0xffffffff;

/** A queue of chunks from an async source with zero-copy reads where it can. */
export class ByteQueue {
  private chunks: Buffer[] = [];
  private headOffset = 0;
  private avail = 0;
  private ended = false;
  /** Absolute position of the next unread byte (for error messages). */
  position = 0;

  constructor(private readonly source: AsyncIterator<Uint8Array>) {}

  get available(): number { return this.avail; }
  get done(): boolean { return this.ended && this.avail === 0; }
  get sourceEnded(): boolean { return this.ended; }

  /** Pulls from the source until n bytes are available or it ends; returns whether they are. */
  async fill(n: number): Promise<boolean> {
    while (this.avail < n && !this.ended) {
      const r = await this.source.next();
      if (r.done) { this.ended = true; break; }
      const b = Buffer.isBuffer(r.value) ? r.value : Buffer.from(r.value.buffer, r.value.byteOffset, r.value.byteLength);
      if (b.length) { this.chunks.push(b); this.avail += b.length; }
    }
    return this.avail >= n;
  }

  /** The next n bytes, contiguous (copies only when they span chunks). Requires n ≤ available. */
  peek(n: number): Buffer {
    const first = this.chunks[0];
    if (!first || n > this.avail) throw new Error('peek beyond available');
    if (first.length - this.headOffset >= n) return first.subarray(this.headOffset, this.headOffset + n);
    // Merge the chunks that hold the range into one, so repeated peeks do not copy again.
    const parts: Buffer[] = [first.subarray(this.headOffset)];
    let have = parts[0]!.length;
    let k = 1;
    while (have < n) {
      const c = this.chunks[k++]!;
      parts.push(c);
      have += c.length;
    }
    const merged = Buffer.concat(parts, have);
    this.chunks.splice(0, k, merged);
    this.headOffset = 0;
    return merged.subarray(0, n);
  }

  consume(n: number): void {
    this.avail -= n;
    this.position += n;
    let left = n;
    while (left > 0) {
      const first = this.chunks[0]!;
      const inFirst = first.length - this.headOffset;
      if (inFirst > left) { this.headOffset += left; return; }
      left -= inFirst;
      this.chunks.shift();
      this.headOffset = 0;
    }
  }

  /** The rest of the first chunk, without copying (what can be parsed in place). */
  contiguous(): Buffer {
    const first = this.chunks[0];
    return first ? first.subarray(this.headOffset) : Buffer.alloc(0);
  }

  /** Up to max bytes from the first chunk, without copying. */
  takeSome(max: number): Buffer {
    const first = this.chunks[0]!;
    const n = Math.min(max, first.length - this.headOffset);
    const out = first.subarray(this.headOffset, this.headOffset + n);
    this.consume(n);
    return out;
  }

  /** What is left: buffered bytes, then the rest of the source. */
  async *rest(): AsyncGenerator<Buffer> {
    while (this.avail > 0) yield this.takeSome(this.avail);
    while (!this.ended) {
      const r = await this.source.next();
      if (r.done) { this.ended = true; break; }
      yield Buffer.from(r.value);
    }
  }
}

function malformed(reason: string, offset: number): GatewayError {
  return new GatewayError('DICOM_MALFORMED', `${reason} at byte ${offset}`);
}

/** Synchronous parser over one contiguous buffer (the header, or one element of it). */
/** Deepest nesting of sequences read (real objects stay far below; SR content trees nest most). */
export const MAX_SEQUENCE_DEPTH = 128;

export class ElementParser {
  /**
   * @param partial when true, running out of bytes throws NeedMoreData (more may come);
   *   when false, it is a truncated object.
   */
  constructor(private readonly buf: Buffer, private readonly base: number, private readonly partial: boolean) {}

  private u16(at: number, le: boolean): number { return le ? this.buf.readUInt16LE(at) : this.buf.readUInt16BE(at); }
  private u32(at: number, le: boolean): number { return le ? this.buf.readUInt32LE(at) : this.buf.readUInt32BE(at); }

  private need(at: number, n: number, end: number): void {
    if (at + n <= end) return;
    if (this.partial && end >= this.buf.length) throw new NeedMoreData();
    throw new GatewayError('DICOM_TRUNCATED', `object ends inside an element at byte ${this.base + at}`);
  }

  /** Reads the tag, VR and length of the element at `at`. */
  header(at: number, end: number, syntax: Syntax): { tag: number; vr: VR | null; length: number; headerLength: number } {
    this.need(at, 8, end);
    const le = syntax.littleEndian;
    const tag = ((this.u16(at, le) << 16) | this.u16(at + 2, le)) >>> 0;
    if (tag === ITEM || tag === ITEM_DELIMITATION || tag === SEQUENCE_DELIMITATION) {
      return { tag, vr: null, length: this.u32(at + 4, le), headerLength: 8 };
    }
    if (!syntax.explicit) {
      return { tag, vr: implicitVR(tag), length: this.u32(at + 4, le), headerLength: 8 };
    }
    const vrText = vrFromCode(this.buf.readUInt16BE(at + 4));
    if (vrText === undefined) throw malformed(`unknown VR in explicit syntax for ${tagString(tag)}`, this.base + at + 4);
    if (LONG_LENGTH_VRS.has(vrText)) {
      this.need(at, 12, end);
      return { tag, vr: vrText, length: this.u32(at + 8, le), headerLength: 12 };
    }
    return { tag, vr: vrText, length: this.u16(at + 6, le), headerLength: 8 };
  }

  /**
   * Parses elements from `at` until `end` (defined length) or an Item Delimitation Item
   * (undefined-length item). Returns the elements and the offset after what was read.
   */
  dataset(at: number, end: number, syntax: Syntax, untilDelimiter: boolean): { elements: RawElement[]; next: number } {
    const elements: RawElement[] = [];
    let pos = at;
    let lastTag = -1;
    for (;;) {
      if (!untilDelimiter && pos >= end) break;
      const h = this.header(pos, end, syntax);
      if (h.tag === ITEM_DELIMITATION) {
        if (!untilDelimiter) throw malformed('item delimiter in a defined-length item', this.base + pos);
        pos += 8;
        break;
      }
      if (h.tag === ITEM || h.tag === SEQUENCE_DELIMITATION) throw malformed(`unexpected ${tagString(h.tag)} in a data set`, this.base + pos);
      if (h.tag <= lastTag) throw malformed(`${tagString(h.tag)} out of ascending tag order`, this.base + pos);
      lastTag = h.tag;
      const { element, next } = this.element(pos, end, syntax, h);
      elements.push(element);
      pos = next;
    }
    return { elements, next: pos };
  }

  /** Parses one element whose header is `h`, at `at`. */
  element(at: number, end: number, syntax: Syntax, h = this.header(at, end, syntax)): { element: RawElement; next: number } {
    const vstart = at + h.headerLength;
    const vr = h.vr ?? 'UN';
    const isSeq = vr === 'SQ' || (h.length === UNDEFINED && (vr === 'UN' || !syntax.explicit));
    if (isSeq) {
      // A UN of undefined length holds a sequence in implicit VR LE (PS3.5 6.2.2 note 2).
      const inner = vr === 'UN' && syntax.explicit ? IMPLICIT_LE : syntax;
      const { items, next } = this.items(vstart, h.length === UNDEFINED ? end : vstart + h.length, inner, h.length === UNDEFINED, end);
      return { element: { tag: h.tag, vr: vr === 'UN' ? 'UN' : 'SQ', value: null, items, syntax: inner }, next };
    }
    if (h.length === UNDEFINED && PIXEL_DATA_TAGS.has(h.tag) && (vr === 'OB' || vr === 'OW')) {
      // Encapsulated pixel data inside a data set: an icon (Icon Image Sequence, which PS3.5 A.4
      // lets carry the file's compressed syntax). Its fragments are stepped over and not kept:
      // the value reads as empty (icons are removed by the table; nothing compressed is copied).
      let pos = vstart;
      for (;;) {
        this.need(pos, 8, end);
        const tag = ((this.u16(pos, true) << 16) | this.u16(pos + 2, true)) >>> 0;
        const len = this.u32(pos + 4, true);
        if (tag === SEQUENCE_DELIMITATION) { pos += 8; break; }
        if (tag !== ITEM || len === UNDEFINED) throw malformed(`bad fragment in the encapsulated ${tagString(h.tag)}`, this.base + pos);
        this.need(pos + 8, len, end);
        pos += 8 + len;
      }
      return { element: { tag: h.tag, vr, value: Buffer.alloc(0), items: null, syntax }, next: pos };
    }
    if (h.length === UNDEFINED) {
      throw malformed(`undefined length for ${tagString(h.tag)} (${vr})`, this.base + at);
    }
    this.need(vstart, h.length, end);
    return {
      element: { tag: h.tag, vr, value: this.buf.subarray(vstart, vstart + h.length), items: null, syntax },
      next: vstart + h.length,
    };
  }

  private depth = 0;

  private items(at: number, seqEnd: number, syntax: Syntax, undefinedLength: boolean, outerEnd: number): { items: RawItem[]; next: number } {
    // Sequences within sequences: a bounded depth, refused with a code beyond it (a crafted
    // or broken object must not exhaust the stack).
    if (this.depth >= MAX_SEQUENCE_DEPTH) throw malformed(`sequences nested deeper than ${MAX_SEQUENCE_DEPTH} levels`, this.base + at);
    this.depth++;
    try {
      return this.itemsAt(at, seqEnd, syntax, undefinedLength, outerEnd);
    } finally {
      this.depth--;
    }
  }

  private itemsAt(at: number, seqEnd: number, syntax: Syntax, undefinedLength: boolean, outerEnd: number): { items: RawItem[]; next: number } {
    if (!undefinedLength && seqEnd > outerEnd) {
      if (this.partial && outerEnd >= this.buf.length) throw new NeedMoreData();
      throw malformed('sequence longer than its container', this.base + at);
    }
    const items: RawItem[] = [];
    let pos = at;
    for (;;) {
      if (!undefinedLength && pos >= seqEnd) break;
      const h = this.header(pos, undefinedLength ? outerEnd : seqEnd, { ...syntax, explicit: false });
      if (h.tag === SEQUENCE_DELIMITATION) {
        if (!undefinedLength) throw malformed('sequence delimiter in a defined-length sequence', this.base + pos);
        pos += 8;
        break;
      }
      if (h.tag !== ITEM) throw malformed(`${tagString(h.tag)} where an item was expected`, this.base + pos);
      const istart = pos + 8;
      if (h.length === UNDEFINED) {
        const { elements, next } = this.dataset(istart, undefinedLength ? outerEnd : seqEnd, syntax, true);
        items.push({ elements });
        pos = next;
      } else {
        const iend = istart + h.length;
        this.need(istart, h.length, undefinedLength ? outerEnd : seqEnd);
        const { elements } = this.dataset(istart, iend, syntax, false);
        items.push({ elements });
        pos = iend;
      }
    }
    return { items, next: pos };
  }
}

/** VR of an element in implicit VR syntax: the dictionary's, LO for private creators, else UN. */
export function implicitVR(tag: number): VR {
  if (isPrivateTag(tag)) return isPrivateCreatorTag(tag) ? 'LO' : 'UN';
  if ((tag & 0xffff) === 0) return 'UL';
  return dictionary().lookup(tag)?.vr ?? 'UN';
}

// ---------------------------------------------------------------------------------------
// Writing

export interface OutElement {
  readonly tag: number;
  readonly vr: VR;
  /** Value bytes in the output syntax's byte order (already padded or not). */
  readonly value: Buffer | null;
  /** Items of a sequence. */
  readonly items: OutElement[][] | null;
}

function writeTag(out: Buffer, at: number, tag: number, le: boolean): void {
  if (le) { out.writeUInt16LE(tag >>> 16, at); out.writeUInt16LE(tag & 0xffff, at + 2); } else { out.writeUInt16BE(tag >>> 16, at); out.writeUInt16BE(tag & 0xffff, at + 2); }
}

function header(tag: number, vr: VR, length: number, syntax: Syntax): Buffer {
  const le = syntax.littleEndian;
  if (!syntax.explicit) {
    const b = Buffer.allocUnsafe(8);
    writeTag(b, 0, tag, le);
    if (le) b.writeUInt32LE(length, 4); else b.writeUInt32BE(length, 4);
    return b;
  }
  if (LONG_LENGTH_VRS.has(vr)) {
    const b = Buffer.allocUnsafe(12);
    writeTag(b, 0, tag, le);
    b.write(vr, 4, 'latin1');
    b.writeUInt16LE(0, 6);
    if (le) b.writeUInt32LE(length, 8); else b.writeUInt32BE(length, 8);
    return b;
  }
  if (length > 0xffff) throw new GatewayError('DICOM_MALFORMED', `value of ${tagString(tag)} too long for VR ${vr}`);
  const b = Buffer.allocUnsafe(8);
  writeTag(b, 0, tag, le);
  b.write(vr, 4, 'latin1');
  if (le) b.writeUInt16LE(length, 6); else b.writeUInt16BE(length, 6);
  return b;
}


function headerLength(vr: VR, syntax: Syntax): number {
  return syntax.explicit && LONG_LENGTH_VRS.has(vr) ? 12 : 8;
}

function encodedSize(elements: readonly OutElement[], syntax: Syntax): number {
  let n = 0;
  for (const el of elements) {
    if (el.items) {
      n += headerLength('SQ', syntax) + 8; // sequence header + sequence delimiter
      for (const item of el.items) n += 16 + encodedSize(item, syntax); // item + item delimiter
    } else {
      const len = el.value?.length ?? 0;
      n += headerLength(el.vr, syntax) + len + (len & 1);
    }
  }
  return n;
}

function writeHeaderAt(out: Buffer, at: number, tag: number, vr: VR, length: number, syntax: Syntax): number {
  const le = syntax.littleEndian;
  writeTag(out, at, tag, le);
  if (!syntax.explicit) {
    if (le) out.writeUInt32LE(length, at + 4); else out.writeUInt32BE(length, at + 4);
    return at + 8;
  }
  out.write(vr, at + 4, 'latin1');
  if (LONG_LENGTH_VRS.has(vr)) {
    out.writeUInt16LE(0, at + 6);
    if (le) out.writeUInt32LE(length, at + 8); else out.writeUInt32BE(length, at + 8);
    return at + 12;
  }
  if (length > 0xffff) throw new GatewayError('DICOM_MALFORMED', `value of ${tagString(tag)} too long for VR ${vr}`);
  if (le) out.writeUInt16LE(length, at + 6); else out.writeUInt16BE(length, at + 6);
  return at + 8;
}

function writeElementsAt(out: Buffer, at: number, elements: readonly OutElement[], syntax: Syntax): number {
  const le = syntax.littleEndian;
  for (const el of elements) {
    if (el.items) {
      at = writeHeaderAt(out, at, el.tag, 'SQ', UNDEFINED, syntax);
      for (const item of el.items) {
        writeTag(out, at, ITEM, le);
        out.writeUInt32LE(UNDEFINED, at + 4);
        at = writeElementsAt(out, at + 8, item, syntax);
        writeTag(out, at, ITEM_DELIMITATION, le);
        out.writeUInt32LE(0, at + 4);
        at += 8;
      }
      writeTag(out, at, SEQUENCE_DELIMITATION, le);
      out.writeUInt32LE(0, at + 4);
      at += 8;
      continue;
    }
    const v = el.value;
    const len = v?.length ?? 0;
    at = writeHeaderAt(out, at, el.tag, el.vr, len + (len & 1), syntax);
    if (v && len) { v.copy(out, at); at += len; }
    if (len & 1) out[at++] = padByte(el.vr);
  }
  return at;
}

/**
 * Encodes elements into one buffer. Sequences and items are written with undefined length
 * (PS3.5 7.5.2), valid in every transfer syntax, so no length needs computing after the fact;
 * the size is computed first so the output is one allocation, not a few per element.
 */
export function encodeToBuffer(elements: readonly OutElement[], syntax: Syntax): Buffer {
  const out = Buffer.allocUnsafe(encodedSize(elements, syntax));
  const end = writeElementsAt(out, 0, elements, syntax);
  if (end !== out.length) throw new GatewayError('INTERNAL', 'encoded size mismatch');
  return out;
}

/** A read element as one to write (sequences with their items), its value bytes as they were. */
export function rawToOut(e: RawElement): OutElement {
  return { tag: e.tag, vr: e.items ? 'SQ' : e.vr, value: e.value, items: e.items ? e.items.map((i) => i.elements.map(rawToOut)) : null };
}

/** A text element padded to even length (UI with NUL, other VRs with a space). */
export function textElement(tag: number, vr: VR, text: string): OutElement {
  const b = Buffer.from(text, 'latin1');
  return { tag, vr, value: b.length % 2 ? Buffer.concat([b, Buffer.from([vr === 'UI' ? 0 : 0x20])]) : b, items: null };
}

/**
 * The start of a Part 10 file: a zeroed 128-byte preamble, "DICM", the File Meta Information
 * Group Length and the given group 0002 elements (explicit VR little endian).
 */
export function encodeFileMeta(elements: readonly OutElement[]): Buffer {
  const body = encodeToBuffer(elements, EXPLICIT_LE);
  const gl = Buffer.alloc(12);
  gl.writeUInt16LE(0x0002, 0); gl.writeUInt16LE(0x0000, 2); gl.write('UL', 4, 'latin1'); gl.writeUInt16LE(4, 6); gl.writeUInt32LE(body.length, 8);
  const preamble = Buffer.alloc(132);
  preamble.write('DICM', 128, 'latin1');
  return Buffer.concat([preamble, gl, body]);
}

/** Encodes elements and appends the bytes to `parts` (see encodeToBuffer). */
export function encodeElements(elements: readonly OutElement[], syntax: Syntax, parts: Buffer[]): void {
  parts.push(encodeToBuffer(elements, syntax));
}

/** The header of an element written as-is (used for pixel data passed through). */
export function elementHeader(tag: number, vr: VR, length: number, syntax: Syntax): Buffer {
  return header(tag, vr, length, syntax);
}

export const PIXEL_DATA_TAGS: ReadonlySet<number> = new Set([0x7fe00010, 0x7fe00008, 0x7fe00009]);
export { UNDEFINED as UNDEFINED_LENGTH };

/** A whole Part 10 object's File Meta and header elements (everything before pixel data), read synchronously. */
export interface Part10Header {
  readonly meta: RawElement[];
  readonly transferSyntax: TransferSyntax;
  readonly elements: RawElement[];
  /** True when the reading stopped at the pixel data (the header is whole even if `buf` was only a prefix). */
  readonly reachedPixelData?: boolean;
}

/**
 * Reads the File Meta and the header of a Part 10 object held in memory (for previews and
 * tests; the gateway streams). `inflate` turns deflated data sets into plain bytes.
 */
export function readHeaderSync(buf: Buffer, inflate: (b: Buffer) => Buffer): Part10Header {
  if (buf.length < 132 || buf.toString('latin1', 128, 132) !== 'DICM') {
    throw new GatewayError('DICOM_NOT_PART10', 'no DICM prefix at byte 128 (PS3.10 7.1)');
  }
  const p = new ElementParser(buf, 0, false);
  const meta: RawElement[] = [];
  let pos = 132;
  while (pos + 2 <= buf.length && buf.readUInt16LE(pos) === 0x0002) {
    const { element, next } = p.element(pos, buf.length, EXPLICIT_LE);
    meta.push(element);
    pos = next;
  }
  const tsEl = meta.find((e) => e.tag === 0x00020010);
  if (!tsEl?.value) throw new GatewayError('DICOM_NOT_PART10', 'File Meta Information has no Transfer Syntax UID (0002,0010)');
  const ts = transferSyntax(tsEl.value.toString('latin1'));
  const body = ts.deflated ? inflate(buf.subarray(pos)) : buf.subarray(pos);
  const bp = new ElementParser(body, ts.deflated ? 0 : pos, false);
  const elements: RawElement[] = [];
  let at = 0;
  while (at < body.length) {
    const h = bp.header(at, body.length, ts);
    if (PIXEL_DATA_TAGS.has(h.tag)) return { meta, transferSyntax: ts, elements, reachedPixelData: true };
    const { element, next } = bp.element(at, body.length, ts, h);
    elements.push(element);
    at = next;
  }
  return { meta, transferSyntax: ts, elements };
}

/**
 * The header and the native pixel data of a Part 10 object held in memory (rendering).
 * `pixel` is null when the pixel data is encapsulated (compressed) or absent.
 */
export function readInstanceSync(buf: Buffer, inflate: (b: Buffer) => Buffer): Part10Header & { readonly pixel: Buffer | null } {
  const head = readHeaderSync(buf, inflate);
  const ts = head.transferSyntax;
  let pos = 132;
  while (pos + 2 <= buf.length && buf.readUInt16LE(pos) === 0x0002) pos = new ElementParser(buf, 0, false).element(pos, buf.length, EXPLICIT_LE).next;
  const body = ts.deflated ? inflate(buf.subarray(pos)) : buf.subarray(pos);
  const bp = new ElementParser(body, 0, false);
  let at = 0;
  while (at < body.length) {
    const h = bp.header(at, body.length, ts);
    if (h.tag === 0x7fe00010) {
      if (h.length === UNDEFINED) return { ...head, pixel: null };
      if (at + h.headerLength + h.length > body.length) throw new GatewayError('DICOM_TRUNCATED', 'the pixel data ends early');
      return { ...head, pixel: body.subarray(at + h.headerLength, at + h.headerLength + h.length) };
    }
    at = bp.element(at, body.length, ts, h).next;
  }
  return { ...head, pixel: null };
}
