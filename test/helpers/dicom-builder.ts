/**
 * A small, exact DICOM Part 10 encoder used ONLY to build test fixtures.
 *
 * It is deliberately independent of `src/`: the fixtures it produces are the
 * oracle for the product's own parser, so sharing code would let one bug hide
 * another. Every rule below is taken from PS3.5 (Data Structures and Encoding)
 * and PS3.10 (Media Storage and File Format), cited inline.
 *
 * Conventions of this builder (documented because a test oracle must be
 * unambiguous):
 *  - Element values are given in "natural" form: strings, string arrays,
 *    number arrays, nested items. A `Buffer` value is taken as the value bytes
 *    in LITTLE-ENDIAN order; for Explicit VR Big Endian the builder swaps it
 *    per the VR's word size (PS3.5 7.3), so the same Buffer yields the same
 *    numbers in either byte order.
 *  - A group length element (gggg,0000) with no value is computed from the
 *    encoded elements that follow it in the same group (PS3.5 7.2).
 *  - `rawVR` is the two characters written in the explicit VR header instead
 *    of `vr`; the value is still encoded per `vr`, and the length field form
 *    (2 or 4 bytes) follows `rawVR`. It exists to build deliberately
 *    mislabelled elements.
 */
import { deflateRawSync } from 'node:zlib';

export type TS = 'implicitLE' | 'explicitLE' | 'explicitBE' | 'deflatedLE';

/** PS3.5 Annex A: A.1 Implicit VR LE, A.2 Explicit VR LE, A.3 Explicit VR BE (retired), A.5 Deflated. */
export const TS_UID: Record<TS, string> = {
  implicitLE: '1.2.840.10008.1.2',
  explicitLE: '1.2.840.10008.1.2.1',
  explicitBE: '1.2.840.10008.1.2.2',
  deflatedLE: '1.2.840.10008.1.2.1.99',
};

export interface El {
  /** 0xGGGGEEEE */
  tag: number;
  vr: string;
  /**
   * string | string[]: text VRs (joined with "\" per PS3.5 6.4);
   * number[]: binary numeric VRs, or IS/DS (formatted), or OB/UN bytes;
   * Buffer: raw value bytes (little-endian order, see header);
   * Item[]: SQ items;
   * Buffer[]: encapsulated pixel data fragments (first one is the Basic Offset Table), see encapsulatedPixelData().
   */
  value?: string | string[] | Buffer | number[] | Item[] | Buffer[];
  /** SQ / item / encapsulated pixel data: write 0xFFFFFFFF and delimiters (PS3.5 7.5.2). */
  undefinedLength?: boolean;
  /** Write as VR "UN" with a 4-byte length; value bytes encoded per `vr` in Implicit VR LE (PS3.5 6.2.2). */
  encodeAsUN?: boolean;
  /** Override the VR characters written in an explicit VR header (value still encoded per `vr`). */
  rawVR?: string;
}

export type Item = El[] | { elements: El[]; undefinedLength?: boolean };

export interface FileOptions {
  ts: TS;
  /** PS3.10 7.1: 128-byte File Preamble; zeros by default. */
  preamble?: Buffer;
  meta?: Partial<{
    sopClassUid: string;
    sopInstanceUid: string;
    sourceAET: string;
    implementationClassUid: string;
    implementationVersionName: string;
    /** Write this Transfer Syntax UID instead of TS_UID[ts] (e.g. an encapsulated syntax whose data set is Explicit VR LE). */
    transferSyntaxUid: string;
    /** Extra group 0002 elements; an element with the same tag as a default replaces it. */
    extra: El[];
  }>;
  /** Encodes text of the VRs affected by Specific Character Set (SH, LO, UC, ST, LT, UT, PN); default latin1. */
  charsetEncode?: (text: string, vr: string) => Buffer;
  /** Sort elements (and elements of items) by tag; default true (PS3.5 7.1: ascending order). */
  sortElements?: boolean;
}

export interface DatasetOptions {
  charsetEncode?: (text: string, vr: string) => Buffer;
  sortElements?: boolean;
}

/** Default implementation identity of this builder (not PHI; canary UIDs never use the `.0.` arc). */
export const BUILDER_IMPLEMENTATION_CLASS_UID = '1.2.826.0.1.3680043.9.7433.0.1';
export const BUILDER_IMPLEMENTATION_VERSION = 'DEID_TESTBLD_1';

// PS3.5 7.1.2, Table 7.1-1: these VRs have a 2-byte reserved field (00 00) and a 4-byte length.
const LONG_VRS = new Set(['OB', 'OD', 'OF', 'OL', 'OV', 'OW', 'SQ', 'UC', 'UN', 'UR', 'UT', 'SV', 'UV']);
// PS3.5 6.1.2.3 / 6.2: VRs whose text is subject to Specific Character Set (0008,0005).
const CHARSET_VRS = new Set(['SH', 'LO', 'UC', 'ST', 'LT', 'UT', 'PN']);
// Character-string VRs (PS3.5 6.2, Table 6.2-1). Values are padded with a trailing SPACE, UI with NUL.
const STRING_VRS = new Set([
  'AE', 'AS', 'CS', 'DA', 'DS', 'DT', 'IS', 'LO', 'LT', 'PN', 'SH', 'ST', 'TM', 'UC', 'UI', 'UR', 'UT',
]);
// Binary VRs and the size of the unit whose byte order changes in Big Endian (PS3.5 7.3).
// AT is a pair of 16-bit unsigned integers (group, element), so it swaps per 2 bytes.
const WORD_SIZE: Record<string, number> = {
  US: 2, SS: 2, OW: 2, AT: 2,
  UL: 4, SL: 4, FL: 4, OF: 4, OL: 4,
  FD: 8, OD: 8, SV: 8, UV: 8, OV: 8,
};

const ITEM_TAG = 0xfffee000; // PS3.5 7.5, Table 7.5-1
const ITEM_DELIM_TAG = 0xfffee00d; // Item Delimitation Item
const SEQ_DELIM_TAG = 0xfffee0dd; // Sequence Delimitation Item
const UNDEFINED = 0xffffffff;

interface Ctx {
  le: boolean;
  explicit: boolean;
  charsetEncode: (text: string, vr: string) => Buffer;
  sort: boolean;
}

const latin1 = (text: string): Buffer => Buffer.from(text, 'latin1');

function tagBytes(tag: number, le: boolean): Buffer {
  const b = Buffer.alloc(4);
  const group = (tag >>> 16) & 0xffff;
  const elem = tag & 0xffff;
  if (le) {
    b.writeUInt16LE(group, 0);
    b.writeUInt16LE(elem, 2);
  } else {
    b.writeUInt16BE(group, 0);
    b.writeUInt16BE(elem, 2);
  }
  return b;
}

function u32(n: number, le: boolean): Buffer {
  const b = Buffer.alloc(4);
  if (le) b.writeUInt32LE(n >>> 0, 0);
  else b.writeUInt32BE(n >>> 0, 0);
  return b;
}

function u16(n: number, le: boolean): Buffer {
  const b = Buffer.alloc(2);
  if (le) b.writeUInt16LE(n, 0);
  else b.writeUInt16BE(n, 0);
  return b;
}

/** PS3.5 7.1.1: every value field has even length. */
function padEven(buf: Buffer, padByte: number): Buffer {
  if (buf.length % 2 === 0) return buf;
  return Buffer.concat([buf, Buffer.from([padByte])]);
}

function swapWords(buf: Buffer, size: number): Buffer {
  if (size <= 1) return buf;
  if (buf.length % size !== 0) throw new Error(`value length ${buf.length} is not a multiple of ${size}`);
  const out = Buffer.from(buf); // copy: never mutate the caller's Buffer
  if (size === 2) out.swap16();
  else if (size === 4) out.swap32();
  else out.swap64();
  return out;
}

function isItemArray(v: unknown[]): boolean {
  const first = v[0];
  return Array.isArray(first) || (typeof first === 'object' && first !== null && !Buffer.isBuffer(first) && 'elements' in first);
}

/** Encodes binary numbers for a VR in the requested byte order. */
function encodeNumbers(vr: string, nums: number[], le: boolean): Buffer {
  if (vr === 'OB' || vr === 'UN') return Buffer.from(nums.map((n) => n & 0xff));
  if (vr === 'AT') {
    // PS3.5 6.2: AT is an ordered pair of 16-bit unsigned integers, group first.
    return Buffer.concat(nums.map((t) => tagBytes(t, le)));
  }
  const size = WORD_SIZE[vr];
  if (size === undefined) throw new Error(`number[] value not supported for VR ${vr}`);
  // DataView setters take the byte order as a flag, which keeps LE and BE on one code path.
  const b = Buffer.alloc(size * nums.length);
  const dv = new DataView(b.buffer, b.byteOffset, b.length);
  nums.forEach((n, i) => {
    const o = i * size;
    switch (vr) {
      case 'US': case 'OW': dv.setUint16(o, n, le); break;
      case 'SS': dv.setInt16(o, n, le); break;
      case 'UL': case 'OL': dv.setUint32(o, n, le); break;
      case 'SL': dv.setInt32(o, n, le); break;
      case 'FL': case 'OF': dv.setFloat32(o, n, le); break;
      case 'FD': case 'OD': dv.setFloat64(o, n, le); break;
      case 'SV': dv.setBigInt64(o, BigInt(n), le); break;
      case 'UV': case 'OV': dv.setBigUint64(o, BigInt(n), le); break;
      default: throw new Error(`unhandled numeric VR ${vr}`);
    }
  });
  return b;
}

/** Value field bytes of a non-SQ, non-fragment element, padded to even length (PS3.5 6.2, 7.1.1). */
function encodeValue(el: El, ctx: Ctx): Buffer {
  const { vr, value } = el;
  if (value === undefined) return Buffer.alloc(0);
  if (STRING_VRS.has(vr)) {
    const pad = vr === 'UI' ? 0x00 : 0x20; // PS3.5 6.2, Table 6.2-1 (UI: NUL; others: SPACE)
    if (Buffer.isBuffer(value)) return padEven(value, pad);
    let text: string;
    if (typeof value === 'string') text = value;
    else if (Array.isArray(value) && value.every((v) => typeof v === 'string' || typeof v === 'number')) {
      text = (value as (string | number)[]).map(String).join('\\'); // PS3.5 6.4: backslash separates values
    } else throw new Error(`bad value for ${vr} element ${hex(el.tag)}`);
    const bytes = CHARSET_VRS.has(vr) ? ctx.charsetEncode(text, vr) : latin1(text);
    return padEven(bytes, pad);
  }
  if (Buffer.isBuffer(value)) {
    const size = WORD_SIZE[vr];
    const bytes = !ctx.le && size !== undefined ? swapWords(value, size) : value;
    return padEven(bytes, 0x00); // OB/UN/unknown: NUL pad (PS3.5 6.2 Table 6.2-1, OB)
  }
  if (typeof value === 'string') {
    // Convenience for OB/UN (and unknown VRs): the bytes of a latin1 string. Numeric VRs need number[].
    if (WORD_SIZE[vr] !== undefined || vr === 'AT') throw new Error(`${vr} element ${hex(el.tag)} needs number[] or Buffer, not a string`);
    return padEven(latin1(value), 0x00);
  }
  if (Array.isArray(value) && value.every((v) => typeof v === 'number')) {
    return padEven(encodeNumbers(vr, value as number[], ctx.le), 0x00);
  }
  throw new Error(`bad value for ${vr} element ${hex(el.tag)}`);
}

function hex(tag: number): string {
  const t = (tag >>> 0).toString(16).toUpperCase().padStart(8, '0');
  return `(${t.slice(0, 4)},${t.slice(4)})`;
}

/**
 * Element header. PS3.5 7.1.2 (explicit: Table 7.1-1 for the 4-byte-length VRs,
 * Table 7.1-2 for the others) and 7.1.3 (implicit: Table 7.1-3, tag + 4-byte length).
 */
function header(tag: number, vr: string, length: number, ctx: Ctx): Buffer {
  const t = tagBytes(tag, ctx.le);
  if (!ctx.explicit) return Buffer.concat([t, u32(length, ctx.le)]);
  if (vr.length !== 2) throw new Error(`VR must be two characters, got "${vr}"`);
  const vrBytes = latin1(vr);
  if (LONG_VRS.has(vr)) return Buffer.concat([t, vrBytes, Buffer.from([0, 0]), u32(length, ctx.le)]);
  if (length === UNDEFINED) throw new Error(`VR ${vr} cannot have undefined length (${hex(tag)})`);
  if (length > 0xffff) throw new Error(`value of ${hex(tag)} (${vr}) is ${length} bytes; exceeds the 16-bit length field`);
  return Buffer.concat([t, vrBytes, u16(length, ctx.le)]);
}

/** PS3.5 7.5.1: an item is (FFFE,E000) + 4-byte length, never with a VR, in the syntax's byte order. */
function encodeItem(item: Item, ctx: Ctx): Buffer {
  const elements = Array.isArray(item) ? item : item.elements;
  const undef = !Array.isArray(item) && item.undefinedLength === true;
  const body = encodeElementList(elements, ctx);
  if (undef) {
    // Table 7.5-3: undefined length item ends with an Item Delimitation Item (FFFE,E00D) of length 0.
    return Buffer.concat([tagBytes(ITEM_TAG, ctx.le), u32(UNDEFINED, ctx.le), body, tagBytes(ITEM_DELIM_TAG, ctx.le), u32(0, ctx.le)]);
  }
  return Buffer.concat([tagBytes(ITEM_TAG, ctx.le), u32(body.length, ctx.le), body]);
}

function seqDelimiter(ctx: Ctx): Buffer {
  // PS3.5 7.5.2, Table 7.5-2/7.5-3: Sequence Delimitation Item (FFFE,E0DD) with length 0.
  return Buffer.concat([tagBytes(SEQ_DELIM_TAG, ctx.le), u32(0, ctx.le)]);
}

function encodeElement(el: El, ctx: Ctx): Buffer {
  // PS3.5 6.2.2: a UN element is written with the UN VR and a 4-byte length; its value keeps the
  // encoding of the original VR in Little Endian, and a sequence inside it is Implicit VR LE.
  if (el.encodeAsUN && ctx.explicit) {
    const inner: Ctx = { ...ctx, le: true, explicit: false };
    const valueBytes = contentBytes(el, inner);
    const undef = el.undefinedLength === true;
    const parts = [header(el.tag, 'UN', undef ? UNDEFINED : valueBytes.length, ctx), valueBytes];
    if (undef) parts.push(seqDelimiter(inner));
    return Buffer.concat(parts);
  }
  const writtenVR = el.rawVR ?? el.vr;
  const valueBytes = contentBytes(el, ctx);
  if (el.undefinedLength) {
    // PS3.5 7.1.2/7.5.2: undefined length is allowed for SQ, UN and encapsulated OB/OW pixel data;
    // the value is closed by a Sequence Delimitation Item.
    if (!['SQ', 'UN', 'OB', 'OW'].includes(el.vr)) throw new Error(`undefined length not allowed for ${el.vr} (${hex(el.tag)})`);
    return Buffer.concat([header(el.tag, writtenVR, UNDEFINED, ctx), valueBytes, seqDelimiter(ctx)]);
  }
  return Buffer.concat([header(el.tag, writtenVR, valueBytes.length, ctx), valueBytes]);
}

/** The bytes between the header and (for undefined length) the sequence delimiter. */
function contentBytes(el: El, ctx: Ctx): Buffer {
  const v = el.value;
  if (el.vr === 'SQ') {
    if (v === undefined) return Buffer.alloc(0); // zero items (PS3.5 7.5.1)
    if (!Array.isArray(v) || (v.length > 0 && !isItemArray(v as unknown[]))) throw new Error(`SQ ${hex(el.tag)} needs Item[]`);
    return Buffer.concat((v as Item[]).map((it) => encodeItem(it, ctx)));
  }
  if (Array.isArray(v) && v.length > 0 && Buffer.isBuffer(v[0])) {
    // Encapsulated format, PS3.5 A.4: each fragment is an Item (FFFE,E000) with an even length.
    if (!el.undefinedLength) throw new Error(`fragments of ${hex(el.tag)} require undefinedLength (PS3.5 A.4)`);
    return Buffer.concat(
      (v as Buffer[]).map((frag) => {
        const body = padEven(frag, 0x00);
        return Buffer.concat([tagBytes(ITEM_TAG, ctx.le), u32(body.length, ctx.le), body]);
      }),
    );
  }
  return encodeValue(el, ctx);
}

function sortByTag(elements: El[]): El[] {
  return [...elements].sort((a, b) => (a.tag >>> 0) - (b.tag >>> 0));
}

/** Encodes a list of elements (a data set or an item's content), filling in empty group lengths. */
function encodeElementList(elements: El[], ctx: Ctx): Buffer {
  const ordered = ctx.sort ? sortByTag(elements) : elements;
  const encoded = ordered.map((el) => (isComputedGroupLength(el) ? null : encodeElement(el, ctx)));
  // PS3.5 7.2: Group Length (gggg,0000) UL = number of bytes following it up to the end of the group.
  ordered.forEach((el, i) => {
    if (!isComputedGroupLength(el)) return;
    const group = el.tag >>> 16;
    let total = 0;
    for (let j = i + 1; j < ordered.length; j++) {
      const other = ordered[j];
      if (other === undefined || other.tag >>> 16 !== group) break;
      total += encoded[j]?.length ?? 0;
    }
    encoded[i] = encodeElement({ ...el, value: [total] }, ctx);
  });
  return Buffer.concat(encoded.map((b) => b ?? Buffer.alloc(0)));
}

function isComputedGroupLength(el: El): boolean {
  return (el.tag & 0xffff) === 0 && el.vr === 'UL' && el.value === undefined;
}

function makeCtx(ts: TS, opts?: DatasetOptions): Ctx {
  return {
    le: ts !== 'explicitBE',
    explicit: ts !== 'implicitLE',
    charsetEncode: opts?.charsetEncode ?? latin1,
    sort: opts?.sortElements ?? true,
  };
}

/** Encodes a data set (no preamble, no File Meta Information) in the given transfer syntax. */
export function encodeDataset(
  elements: El[],
  ts: Exclude<TS, 'deflatedLE'> | 'explicitLE',
  opts?: DatasetOptions,
): Buffer {
  return encodeElementList(elements, makeCtx(ts, opts));
}

function stringValue(elements: El[], tag: number): string | undefined {
  const el = elements.find((e) => e.tag === tag);
  if (el === undefined) return undefined;
  if (typeof el.value === 'string') return el.value;
  if (Array.isArray(el.value) && typeof el.value[0] === 'string') return el.value[0];
  return undefined;
}

/**
 * PS3.10 7.1: 128-byte preamble, "DICM", File Meta Information (group 0002, always
 * Explicit VR Little Endian, starting with its Group Length), then the data set in
 * the transfer syntax. For Deflated Explicit VR LE (PS3.5 A.5) the data set is
 * encoded as Explicit VR LE and deflated (raw RFC 1951, no zlib header).
 */
export function encodePart10(elements: El[], opts: FileOptions): Buffer {
  const preamble = opts.preamble ?? Buffer.alloc(128);
  if (preamble.length !== 128) throw new Error(`preamble must be 128 bytes, got ${preamble.length}`);
  if (elements.some((e) => e.tag >>> 16 === 0x0002)) {
    throw new Error('group 0002 elements belong in opts.meta.extra, not in the data set');
  }
  const meta = opts.meta ?? {};
  const sopClassUid = meta.sopClassUid ?? stringValue(elements, 0x00080016);
  const sopInstanceUid = meta.sopInstanceUid ?? stringValue(elements, 0x00080018);
  if (sopClassUid === undefined || sopInstanceUid === undefined) {
    throw new Error('SOP Class/Instance UID missing: put (0008,0016)/(0008,0018) in the data set or give meta.sopClassUid/sopInstanceUid');
  }
  const defaults: El[] = [
    { tag: 0x00020000, vr: 'UL' }, // computed (PS3.10 7.1, PS3.5 7.2)
    { tag: 0x00020001, vr: 'OB', value: Buffer.from([0x00, 0x01]) }, // File Meta Information Version
    { tag: 0x00020002, vr: 'UI', value: sopClassUid },
    { tag: 0x00020003, vr: 'UI', value: sopInstanceUid },
    { tag: 0x00020010, vr: 'UI', value: meta.transferSyntaxUid ?? TS_UID[opts.ts] },
    { tag: 0x00020012, vr: 'UI', value: meta.implementationClassUid ?? BUILDER_IMPLEMENTATION_CLASS_UID },
    { tag: 0x00020013, vr: 'SH', value: meta.implementationVersionName ?? BUILDER_IMPLEMENTATION_VERSION },
  ];
  if (meta.sourceAET !== undefined) defaults.push({ tag: 0x00020016, vr: 'AE', value: meta.sourceAET });
  const extra = meta.extra ?? [];
  for (const e of extra) {
    if (e.tag >>> 16 !== 0x0002) throw new Error(`meta.extra element ${hex(e.tag)} is not in group 0002`);
  }
  const metaEls = [...defaults.filter((d) => !extra.some((e) => e.tag === d.tag)), ...extra];
  // File Meta Information is always Explicit VR Little Endian and always sorted (PS3.10 7.1).
  const metaBytes = encodeElementList(metaEls, { le: true, explicit: true, charsetEncode: latin1, sort: true });

  const datasetTs = opts.ts === 'deflatedLE' ? 'explicitLE' : opts.ts;
  let body = encodeDataset(elements, datasetTs, {
    ...(opts.charsetEncode ? { charsetEncode: opts.charsetEncode } : {}),
    ...(opts.sortElements !== undefined ? { sortElements: opts.sortElements } : {}),
  });
  if (opts.ts === 'deflatedLE') {
    body = deflateRawSync(body);
    // PS3.5 A.5: an odd-length deflated stream gets one trailing NUL byte.
    if (body.length % 2 === 1) body = Buffer.concat([body, Buffer.from([0])]);
  }
  return Buffer.concat([preamble, Buffer.from('DICM', 'latin1'), metaBytes, body]);
}

/**
 * Encapsulated Pixel Data (PS3.5 A.4): undefined-length OB (7FE0,0010) holding an
 * empty Basic Offset Table item, then one item per fragment, then a Sequence
 * Delimitation Item. Only meaningful with an encapsulated transfer syntax UID in
 * the file meta (see FileOptions.meta.transferSyntaxUid); the data set itself is
 * Explicit VR Little Endian.
 */
export function encapsulatedPixelData(fragments: Buffer[]): El {
  return { tag: 0x7fe00010, vr: 'OB', undefinedLength: true, value: [Buffer.alloc(0), ...fragments] };
}
