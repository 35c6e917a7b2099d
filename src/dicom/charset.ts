import { isAscii } from 'node:buffer';
import { TextDecoder } from 'node:util';
import { GatewayError } from '../core/errors.js';

/** VRs whose values use the Specific Character Set (PS3.5 6.1.2.3); all others are default repertoire. */
export const TEXT_VRS: ReadonlySet<string> = new Set(['SH', 'LO', 'ST', 'LT', 'UC', 'UT', 'PN']);

// VRs where 05/12 separates values (PS3.5 6.2); in ST/LT/UT a backslash is an ordinary character.
const MULTI_VALUED_TEXT_VRS: ReadonlySet<string> = new Set(['SH', 'LO', 'PN', 'UC']);

/** A decoder/encoder for one Specific Character Set (0008,0005) value list. */
export interface Charset {
  /** The defined terms as given (trimmed, upper-case), [] for the default repertoire. */
  readonly terms: readonly string[];
  /** True if decode/encode are plain ASCII/latin1 fast paths (no non-ASCII bytes possible beyond the declared single-byte set). */
  readonly isSingleByte: boolean;
  /**
   * Decode one whole attribute value (all its backslash-separated values together, as stored) of VR `vr`.
   * Throws GatewayError('DICOM_CHARSET', ...) naming the term and byte offset only (never the value).
   * Trailing padding is not stripped.
   */
  decode(bytes: Uint8Array, vr: string): string;
  /**
   * Encode text of VR `vr`; null when some character cannot be represented. ISO 2022 sets emit the
   * needed escape sequences and return to the initial state at the end and before each reset point.
   */
  encode(text: string, vr: string): Buffer | null;
}

// ---------------------------------------------------------------------------------------------
// helpers

const ESC = 0x1b;
// Text that every ASCII-G0 encoder writes byte-for-byte: ASCII without ESC.
const PLAIN_ASCII_RE = /^[\x00-\x1a\x1c-\x7f]*$/;
const PLAIN_LATIN1_RE = /^[\x00-\x1a\x1c-\xff]*$/;
const ASCII_RE = /^[\x00-\x7f]*$/;
// With the u flag a surrogate class only matches unpaired surrogates.
const LONE_SURROGATE_RE = /[\ud800-\udfff]/u;

function asBuffer(bytes: Uint8Array): Buffer {
  return Buffer.isBuffer(bytes) ? bytes : Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength);
}

function latin1(bytes: Uint8Array): string {
  return asBuffer(bytes).toString('latin1');
}

function fromUnits(units: Uint16Array, length: number): string {
  let s = '';
  for (let i = 0; i < length; i += 8192) {
    s += String.fromCharCode(...units.subarray(i, Math.min(length, i + 8192)));
  }
  return s;
}

function isPua(cp: number): boolean {
  return cp >= 0xe000 && cp <= 0xf8ff;
}

function isControl(cp: number): boolean {
  return cp < 0x20 || (cp >= 0x7f && cp <= 0x9f);
}

function lazy<T>(build: () => T): () => T {
  let value: T | undefined;
  return () => (value ??= build());
}

// Decodes `bytes` with a fatal decoder; returns the single UTF-16 code unit or -1.
function decodeOne(decoder: TextDecoder, bytes: Uint8Array): number {
  try {
    const s = decoder.decode(bytes);
    return s.length === 1 ? s.charCodeAt(0) : -1;
  } catch {
    return -1;
  }
}

function charsetError(label: string, vr: string, reason: string, offset: number): GatewayError {
  return new GatewayError(
    'DICOM_CHARSET',
    `cannot decode ${vr} value with Specific Character Set "${label}": ${reason} at byte offset ${offset}`,
  );
}

function decodeAscii(bytes: Uint8Array, vr: string, label: string): string {
  if (isAscii(bytes)) return latin1(bytes);
  let i = 0;
  while (i < bytes.length && bytes[i]! < 0x80) i++;
  throw charsetError(label, vr, 'byte outside the default repertoire', i);
}

function encodeAscii(text: string): Buffer | null {
  return ASCII_RE.test(text) ? Buffer.from(text, 'latin1') : null;
}

// ---------------------------------------------------------------------------------------------
// graphic character sets (PS3.3 Tables C.12-3/C.12-4; escape = bytes after ESC)

interface SingleByteSet {
  readonly width: 1;
  readonly name: string;
  readonly slot: 0 | 1;
  readonly esc: string;
  // G0: code point per byte 0x00-0x7F; G1: per byte 0x80-0xFF (index byte-0x80). -1 = undefined.
  readonly table: () => Int32Array;
  // code point -> byte (graphic characters only, G1 bytes with the high bit set).
  readonly reverse: () => ReadonlyMap<number, number>;
}

interface DoubleByteSet {
  readonly width: 2;
  readonly name: string;
  readonly slot: 0 | 1;
  readonly esc: string;
  // code point per 94x94 cell ((row-1)*94 + (col-1)); -1 = undefined.
  readonly table: () => Int32Array;
  // code point -> cell index, first (lowest) cell wins.
  readonly reverse: () => ReadonlyMap<number, number>;
}

type GraphicSet = SingleByteSet | DoubleByteSet;

function reverseOf(table: Int32Array, from: number, to: number, offset: number): Map<number, number> {
  const rev = new Map<number, number>();
  for (let i = from; i <= to; i++) {
    const cp = table[i]!;
    if (cp >= 0 && !rev.has(cp)) rev.set(cp, i + offset);
  }
  return rev;
}

function g0Set(name: string, esc: string, build: () => Int32Array): SingleByteSet {
  const table = lazy(build);
  return { width: 1, name, slot: 0, esc, table, reverse: lazy(() => reverseOf(table(), 0x20, 0x7e, 0)) };
}

function g1Set(name: string, esc: string, build: () => Int32Array): SingleByteSet {
  const table = lazy(build);
  return { width: 1, name, slot: 1, esc, table, reverse: lazy(() => reverseOf(table(), 0x20, 0x7f, 0x80)) };
}

const ASCII = g0Set('ISO-IR 6', '(B', () => Int32Array.from({ length: 128 }, (_, i) => i));

// JIS X 0201 romaji: 07/14 is OVERLINE; 05/12 stays the DICOM value separator (PS3.5 6.1.2.3 note).
const ROMAJI = g0Set('ISO-IR 14', '(J', () => Int32Array.from({ length: 128 }, (_, i) => (i === 0x7e ? 0x203e : i)));

// 8-bit code (PS3.5 6.1.2.5.1): 08/00-09/15 is the C1 control area whatever G1 holds.
function c1Table(): Int32Array {
  const t = new Int32Array(128).fill(-1);
  for (let i = 0; i < 0x20; i++) t[i] = 0x80 + i;
  return t;
}

const KATAKANA = g1Set('ISO-IR 13', ')I', () => {
  const t = c1Table();
  for (let b = 0xa1; b <= 0xdf; b++) t[b - 0x80] = 0xff61 + (b - 0xa1);
  return t;
});

// An ISO 8859 right half decoded via ICU; windows-1254/874 agree with 8859-9/TIS 620 on A0-FF once PUA is dropped.
function isoG1(name: string, final: string, label: string): SingleByteSet {
  return g1Set(name, `-${final}`, () => {
    const t = c1Table();
    if (label === 'latin1') {
      for (let b = 0xa0; b <= 0xff; b++) t[b - 0x80] = b;
      return t;
    }
    const decoder = new TextDecoder(label, { fatal: true });
    const one = new Uint8Array(1);
    for (let b = 0xa0; b <= 0xff; b++) {
      one[0] = b;
      const cp = decodeOne(decoder, one);
      t[b - 0x80] = cp >= 0 && !isPua(cp) ? cp : -1;
    }
    return t;
  });
}

const LATIN1 = isoG1('ISO-IR 100', 'A', 'latin1');

// A 94x94 set decoded via an ICU EUC-style decoder (row/col | 0x80, optional prefix byte).
function doubleByteSet(name: string, slot: 0 | 1, esc: string, label: string, prefix: number[]): DoubleByteSet {
  const table = lazy(() => {
    const decoder = new TextDecoder(label, { fatal: true });
    const seq = new Uint8Array(prefix.length + 2);
    seq.set(prefix);
    const t = new Int32Array(94 * 94).fill(-1);
    for (let r = 0; r < 94; r++) {
      for (let c = 0; c < 94; c++) {
        seq[prefix.length] = 0xa1 + r;
        seq[prefix.length + 1] = 0xa1 + c;
        const cp = decodeOne(decoder, seq);
        // PUA results are GBK user-defined areas, not GB 2312 / KS X 1001 characters.
        if (cp >= 0 && cp !== 0xfffd && !isPua(cp)) t[r * 94 + c] = cp;
      }
    }
    return t;
  });
  return { width: 2, name, slot, esc, table, reverse: lazy(() => reverseOf(table(), 0, 94 * 94 - 1, 0)) };
}

const JIS_X_0208 = doubleByteSet('ISO-IR 87', 0, '$B', 'euc-jp', []);
const JIS_X_0212 = doubleByteSet('ISO-IR 159', 0, '$(D', 'euc-jp', [0x8f]);
const KS_X_1001 = doubleByteSet('ISO-IR 149', 1, '$)C', 'euc-kr', []);
const GB_2312 = doubleByteSet('ISO-IR 58', 1, '$)A', 'gb18030', []);

interface SingleByteTerm {
  readonly g0: SingleByteSet;
  readonly g1: SingleByteSet | null;
}

// Keyed by ISO-IR number; the same sets back "ISO_IR n" and "ISO 2022 IR n" (PS3.3 Tables C.12-2/C.12-3).
const SINGLE_BYTE: ReadonlyMap<string, SingleByteTerm> = new Map<string, SingleByteTerm>([
  ['6', { g0: ASCII, g1: null }],
  ['100', { g0: ASCII, g1: LATIN1 }],
  ['101', { g0: ASCII, g1: isoG1('ISO-IR 101', 'B', 'iso-8859-2') }],
  ['109', { g0: ASCII, g1: isoG1('ISO-IR 109', 'C', 'iso-8859-3') }],
  ['110', { g0: ASCII, g1: isoG1('ISO-IR 110', 'D', 'iso-8859-4') }],
  ['144', { g0: ASCII, g1: isoG1('ISO-IR 144', 'L', 'iso-8859-5') }],
  ['127', { g0: ASCII, g1: isoG1('ISO-IR 127', 'G', 'iso-8859-6') }],
  ['126', { g0: ASCII, g1: isoG1('ISO-IR 126', 'F', 'iso-8859-7') }],
  ['138', { g0: ASCII, g1: isoG1('ISO-IR 138', 'H', 'iso-8859-8') }],
  ['148', { g0: ASCII, g1: isoG1('ISO-IR 148', 'M', 'windows-1254') }],
  ['203', { g0: ASCII, g1: isoG1('ISO-IR 203', 'b', 'iso-8859-15') }],
  ['166', { g0: ASCII, g1: isoG1('ISO-IR 166', 'T', 'windows-874') }],
  ['13', { g0: ROMAJI, g1: KATAKANA }],
]);

// PS3.3 Table C.12-4: multi-byte sets usable only with code extensions.
const MULTI_BYTE_2022: ReadonlyMap<string, DoubleByteSet> = new Map([
  ['ISO 2022 IR 87', JIS_X_0208],
  ['ISO 2022 IR 159', JIS_X_0212],
  ['ISO 2022 IR 149', KS_X_1001],
  ['ISO 2022 IR 58', GB_2312],
]);

const ALL_SETS: readonly GraphicSet[] = [
  ASCII,
  ROMAJI,
  KATAKANA,
  ...[...SINGLE_BYTE.values()].flatMap((t) => (t.g1 ? [t.g1] : [])),
  ...MULTI_BYTE_2022.values(),
];
const KNOWN_ESCAPES: ReadonlySet<string> = new Set([...ALL_SETS.map((s) => s.esc), '$(B']);

// ---------------------------------------------------------------------------------------------
// single-byte sets without code extensions (PS3.5 6.1.2.5.1 a/b)

class SingleByteCharset implements Charset {
  readonly isSingleByte = true;
  private readonly plainLatin1: boolean;
  private readonly asciiG0: boolean;
  private readonly table256 = lazy(() => {
    const t = new Int32Array(256).fill(-1);
    t.set(this.g0.table(), 0);
    if (this.g1) t.set(this.g1.table(), 128);
    return t;
  });
  private readonly reverse256 = lazy(() => {
    const t = this.table256();
    const rev = new Map<number, number>();
    for (let b = 0; b < 256; b++) {
      const cp = t[b]!;
      if (cp >= 0 && b !== ESC && !rev.has(cp)) rev.set(cp, b);
    }
    return rev;
  });

  constructor(
    readonly terms: readonly string[],
    private readonly label: string,
    private readonly g0: SingleByteSet,
    private readonly g1: SingleByteSet | null,
  ) {
    this.plainLatin1 = g1 === LATIN1;
    this.asciiG0 = g0 === ASCII;
  }

  decode(bytes: Uint8Array, vr: string): string {
    if (!TEXT_VRS.has(vr)) return decodeAscii(bytes, vr, this.label);
    const esc = bytes.indexOf(ESC);
    if (esc >= 0) throw charsetError(this.label, vr, 'escape sequence without code extensions', esc);
    if (this.plainLatin1 || (this.asciiG0 && isAscii(bytes))) return latin1(bytes);
    const t = this.table256();
    const out = new Uint16Array(bytes.length);
    for (let i = 0; i < bytes.length; i++) {
      const cp = t[bytes[i]!]!;
      if (cp < 0) throw charsetError(this.label, vr, 'byte outside the declared repertoire', i);
      out[i] = cp;
    }
    return fromUnits(out, bytes.length);
  }

  encode(text: string, vr: string): Buffer | null {
    if (!TEXT_VRS.has(vr)) return encodeAscii(text);
    if (this.asciiG0 && (this.plainLatin1 ? PLAIN_LATIN1_RE : PLAIN_ASCII_RE).test(text)) {
      return Buffer.from(text, 'latin1');
    }
    const rev = this.reverse256();
    const out = Buffer.allocUnsafe(text.length);
    let o = 0;
    for (const ch of text) {
      const b = rev.get(ch.codePointAt(0)!);
      if (b === undefined) return null;
      out[o++] = b;
    }
    return out.subarray(0, o);
  }
}

// ---------------------------------------------------------------------------------------------
// ISO 2022 code extensions (PS3.5 6.1.2.5, PS3.3 C.12.1.1.2)

class Iso2022Charset implements Charset {
  readonly isSingleByte = false;
  private readonly asciiInitial: boolean;

  constructor(
    readonly terms: readonly string[],
    private readonly label: string,
    private readonly g0: GraphicSet,
    private readonly g1: GraphicSet | null,
    // escape (bytes after ESC) -> set, for every declared set.
    private readonly designations: ReadonlyMap<string, GraphicSet>,
    // declared sets in preference order for encoding: initial G0, initial G1, then by term order.
    private readonly encodeOrder: readonly GraphicSet[],
  ) {
    this.asciiInitial = g0 === ASCII;
  }

  decode(bytes: Uint8Array, vr: string): string {
    if (!TEXT_VRS.has(vr)) return decodeAscii(bytes, vr, this.label);
    if (this.asciiInitial && isAscii(bytes) && bytes.indexOf(ESC) < 0) return latin1(bytes);
    const multi = MULTI_VALUED_TEXT_VRS.has(vr);
    const pn = vr === 'PN';
    const n = bytes.length;
    const out = new Uint16Array(n);
    let o = 0;
    let g0 = this.g0;
    let g1 = this.g1;
    // PS3.5 6.1.2.5.3: the value-1 sets are active again after each reset point. When value 1 has no
    // G1 we keep the last designated G1: encoders often designate it only once, and no other reading exists.
    const reset = (): void => {
      g0 = this.g0;
      if (this.g1) g1 = this.g1;
    };
    const fail = (reason: string, at: number): GatewayError => charsetError(this.label, vr, reason, at);
    let i = 0;
    while (i < n) {
      const b = bytes[i]!;
      if (b === ESC) {
        // ISO 2022: ESC, intermediates 02/00-02/15, final 03/00-07/14.
        let j = i + 1;
        while (j < n && bytes[j]! >= 0x20 && bytes[j]! <= 0x2f) j++;
        if (j === i + 1 || j >= n || bytes[j]! < 0x30 || bytes[j]! > 0x7e) throw fail('malformed escape sequence', i);
        const key = latin1(bytes.subarray(i + 1, j + 1));
        const set = this.designations.get(key);
        if (!set) {
          throw fail(KNOWN_ESCAPES.has(key) ? 'escape sequence for an undeclared character set' : 'unknown escape sequence', i);
        }
        if (set.slot === 0) g0 = set;
        else g1 = set;
        i = j + 1;
        continue;
      }
      if (isControl(b)) {
        out[o++] = b;
        i++;
        reset();
        continue;
      }
      if (b < 0x80) {
        if (g0.width === 1) {
          out[o++] = g0.table()[b]!;
          i++;
          if ((b === 0x5c && multi) || (pn && (b === 0x5e || b === 0x3d))) reset();
          continue;
        }
        if (b === 0x20) {
          out[o++] = 0x20;
          i++;
          continue;
        }
        const b2 = i + 1 < n ? bytes[i + 1]! : -1;
        if (b2 < 0x21 || b2 > 0x7e) throw fail('incomplete double-byte character', i);
        const cp = g0.table()[(b - 0x21) * 94 + (b2 - 0x21)]!;
        if (cp < 0) throw fail('byte outside the declared repertoire', i);
        out[o++] = cp;
        i += 2;
        continue;
      }
      if (!g1) throw fail('byte outside the declared repertoire', i);
      if (g1.width === 1) {
        const cp = g1.table()[b - 0x80]!;
        if (cp < 0) throw fail('byte outside the declared repertoire', i);
        out[o++] = cp;
        i++;
        continue;
      }
      const b2 = i + 1 < n ? bytes[i + 1]! : -1;
      if (b < 0xa1 || b > 0xfe) throw fail('byte outside the declared repertoire', i);
      if (b2 < 0xa1 || b2 > 0xfe) throw fail('incomplete double-byte character', i);
      const cp = g1.table()[(b - 0xa1) * 94 + (b2 - 0xa1)]!;
      if (cp < 0) throw fail('byte outside the declared repertoire', i);
      out[o++] = cp;
      i += 2;
    }
    return fromUnits(out, o);
  }

  encode(text: string, vr: string): Buffer | null {
    if (!TEXT_VRS.has(vr)) return encodeAscii(text);
    if (this.asciiInitial && PLAIN_ASCII_RE.test(text)) return Buffer.from(text, 'latin1');
    const multi = MULTI_VALUED_TEXT_VRS.has(vr);
    const pn = vr === 'PN';
    const out: number[] = [];
    let g0 = this.g0;
    let g1 = this.g1;
    const designate = (s: GraphicSet): void => {
      out.push(ESC);
      for (let k = 0; k < s.esc.length; k++) out.push(s.esc.charCodeAt(k));
    };
    // PS3.5 6.1.2.5.3: value-1 sets active again before CR/LF/FF/TAB/other controls, '\', PN '^'/'=' and the end.
    // A G1 that value 1 lacks cannot be undesignated; forget it so the next component designates it afresh.
    const reset = (): void => {
      if (g0 !== this.g0) designate((g0 = this.g0));
      if (this.g1) {
        if (g1 !== this.g1) designate((g1 = this.g1));
      } else {
        g1 = null;
      }
    };
    const put = (s: GraphicSet, code: number): void => {
      if (s.width === 1) out.push(code);
      else {
        const hi = s.slot === 0 ? 0x21 : 0xa1;
        out.push(hi + Math.floor(code / 94), hi + (code % 94));
      }
    };
    for (const ch of text) {
      const cp = ch.codePointAt(0)!;
      if (cp === ESC) return null;
      if (isControl(cp)) {
        reset();
        out.push(cp);
        continue;
      }
      if ((cp === 0x5c && multi) || (pn && (cp === 0x5e || cp === 0x3d))) {
        reset();
        out.push(cp); // same byte in ISO-IR 6 and ISO-IR 14
        continue;
      }
      let code = g0.reverse().get(cp);
      if (code !== undefined) {
        put(g0, code);
        continue;
      }
      if (g1) {
        code = g1.reverse().get(cp);
        if (code !== undefined) {
          put(g1, code);
          continue;
        }
      }
      let done = false;
      for (const s of this.encodeOrder) {
        if (s === g0 || s === g1) continue;
        code = s.reverse().get(cp);
        if (code === undefined) continue;
        designate(s);
        if (s.slot === 0) g0 = s;
        else g1 = s;
        put(s, code);
        done = true;
        break;
      }
      if (!done) return null;
    }
    reset();
    return Buffer.from(out);
  }
}

// ---------------------------------------------------------------------------------------------
// multi-byte sets without code extensions (PS3.5 6.1.2.5.1 d)

function utf8ErrorOffset(bytes: Uint8Array): number {
  const n = bytes.length;
  let i = 0;
  while (i < n) {
    const b = bytes[i]!;
    if (b < 0x80) {
      i++;
      continue;
    }
    let need: number;
    let lo = 0x80;
    let hi = 0xbf;
    if (b >= 0xc2 && b <= 0xdf) need = 1;
    else if (b >= 0xe0 && b <= 0xef) {
      need = 2;
      if (b === 0xe0) lo = 0xa0;
      if (b === 0xed) hi = 0x9f;
    } else if (b >= 0xf0 && b <= 0xf4) {
      need = 3;
      if (b === 0xf0) lo = 0x90;
      if (b === 0xf4) hi = 0x8f;
    } else return i;
    for (let k = 1; k <= need; k++) {
      const c = i + k < n ? bytes[i + k]! : -1;
      if (c < (k === 1 ? lo : 0x80) || c > (k === 1 ? hi : 0xbf)) return i;
    }
    i += need + 1;
  }
  return 0;
}

class Utf8Charset implements Charset {
  readonly isSingleByte = false;
  private readonly decoder = new TextDecoder('utf-8', { fatal: true, ignoreBOM: true });
  constructor(readonly terms: readonly string[]) {}

  decode(bytes: Uint8Array, vr: string): string {
    if (!TEXT_VRS.has(vr)) return decodeAscii(bytes, vr, 'ISO_IR 192');
    const esc = bytes.indexOf(ESC);
    if (esc >= 0) throw charsetError('ISO_IR 192', vr, 'escape sequence without code extensions', esc);
    if (isAscii(bytes)) return latin1(bytes);
    try {
      return this.decoder.decode(bytes);
    } catch {
      throw charsetError('ISO_IR 192', vr, 'invalid UTF-8', utf8ErrorOffset(bytes));
    }
  }

  encode(text: string, vr: string): Buffer | null {
    if (!TEXT_VRS.has(vr)) return encodeAscii(text);
    if (text.includes('\x1b') || LONE_SURROGATE_RE.test(text)) return null;
    return Buffer.from(text, 'utf8');
  }
}

// GB18030 two-byte codes: lead 81-FE, trail 40-7E/80-FE; four-byte: 81-FE 30-39 81-FE 30-39.
const gbDecoder = lazy(() => new TextDecoder('gb18030', { fatal: true }));

const gbTwoByte = lazy(() => {
  const decoder = gbDecoder();
  const seq = new Uint8Array(2);
  const rev = new Map<number, number>();
  for (let lead = 0x81; lead <= 0xfe; lead++) {
    for (let trail = 0x40; trail <= 0xfe; trail++) {
      if (trail === 0x7f) continue;
      seq[0] = lead;
      seq[1] = trail;
      const cp = decodeOne(decoder, seq);
      if (cp >= 0 && !rev.has(cp)) rev.set(cp, (lead << 8) | trail);
    }
  }
  return rev;
});

// Four-byte BMP codes are linear pointers 0..39419 (GB 18030 ranges); beyond U+FFFF it is arithmetic.
const GB_BMP_POINTERS = 39420;
const GB_SUPPLEMENTARY_BASE = 189000;

function gbFourBytes(pointer: number, out: number[]): void {
  const b4 = pointer % 10;
  let p = Math.floor(pointer / 10);
  const b3 = p % 126;
  p = Math.floor(p / 126);
  const b2 = p % 10;
  out.push(Math.floor(p / 10) + 0x81, b2 + 0x30, b3 + 0x81, b4 + 0x30);
}

const gbFourByte = lazy(() => {
  const decoder = gbDecoder();
  const rev = new Map<number, number>();
  const seq: number[] = [];
  for (let p = 0; p < GB_BMP_POINTERS; p++) {
    seq.length = 0;
    gbFourBytes(p, seq);
    const cp = decodeOne(decoder, Uint8Array.from(seq));
    if (cp >= 0 && !rev.has(cp)) rev.set(cp, p);
  }
  return rev;
});

// Offset of the first undecodable GB18030/GBK sequence, or -1.
function gbErrorOffset(bytes: Uint8Array, allowFourByte: boolean): number {
  const decoder = gbDecoder();
  const n = bytes.length;
  let i = 0;
  while (i < n) {
    const b = bytes[i]!;
    if (b <= 0x80) {
      i++; // 0x80 is the euro sign in the WHATWG/ICU decoder
      continue;
    }
    if (b === 0xff || i + 1 >= n) return i;
    const b2 = bytes[i + 1]!;
    if (b2 >= 0x30 && b2 <= 0x39) {
      if (!allowFourByte || i + 3 >= n) return i;
      if (decodeOne(decoder, bytes.subarray(i, i + 4)) < 0 && decodeSurrogatePair(decoder, bytes.subarray(i, i + 4)) < 0) {
        return i;
      }
      i += 4;
      continue;
    }
    if (b2 < 0x40 || b2 === 0x7f || b2 === 0xff) return i;
    i += 2;
  }
  return -1;
}

function decodeSurrogatePair(decoder: TextDecoder, seq: Uint8Array): number {
  try {
    const s = decoder.decode(seq);
    return s.length === 2 ? s.codePointAt(0)! : -1;
  } catch {
    return -1;
  }
}

class GbCharset implements Charset {
  readonly isSingleByte = false;
  constructor(
    readonly terms: readonly string[],
    private readonly label: 'GB18030' | 'GBK',
  ) {}

  decode(bytes: Uint8Array, vr: string): string {
    if (!TEXT_VRS.has(vr)) return decodeAscii(bytes, vr, this.label);
    const esc = bytes.indexOf(ESC);
    if (esc >= 0) throw charsetError(this.label, vr, 'escape sequence without code extensions', esc);
    if (isAscii(bytes)) return latin1(bytes);
    const gbk = this.label === 'GBK';
    if (gbk) {
      // GBK has no four-byte codes; ICU's gbk decoder would accept them.
      const bad = gbErrorOffset(bytes, false);
      if (bad >= 0) throw charsetError(this.label, vr, 'invalid GBK sequence', bad);
    }
    try {
      return gbDecoder().decode(bytes);
    } catch {
      throw charsetError(this.label, vr, `invalid ${this.label} sequence`, Math.max(0, gbErrorOffset(bytes, !gbk)));
    }
  }

  encode(text: string, vr: string): Buffer | null {
    if (!TEXT_VRS.has(vr)) return encodeAscii(text);
    if (PLAIN_ASCII_RE.test(text)) return Buffer.from(text, 'latin1');
    const gbk = this.label === 'GBK';
    const out: number[] = [];
    for (const ch of text) {
      const cp = ch.codePointAt(0)!;
      if (cp < 0x80) {
        if (cp === ESC) return null;
        out.push(cp);
        continue;
      }
      const two = gbTwoByte().get(cp);
      if (two !== undefined) {
        out.push(two >> 8, two & 0xff);
        continue;
      }
      if (gbk) return null;
      if (cp >= 0x10000) {
        gbFourBytes(cp - 0x10000 + GB_SUPPLEMENTARY_BASE, out);
        continue;
      }
      const four = gbFourByte().get(cp);
      if (four === undefined) return null;
      gbFourBytes(four, out);
    }
    return Buffer.from(out);
  }
}

// ---------------------------------------------------------------------------------------------
// factory

/** The default repertoire (ISO-IR 6, PS3.5 6.1.2.5.1 a). */
export const DEFAULT_CHARSET: Charset = new SingleByteCharset([], 'ISO_IR 6', ASCII, null);

const NON_EXTENSION_MULTI_BYTE = new Set(['ISO_IR 192', 'GB18030', 'GBK']);
const SB_TERM_RE = /^ISO(?:_IR| 2022 IR) (\d+)$/;

function unknownTerm(term: string): GatewayError {
  // Terms are not PHI, but keep the message printable and bounded.
  const shown = term.replace(/[^\x20-\x7e]/g, '?').slice(0, 64);
  return new GatewayError('DICOM_CHARSET', `unknown Specific Character Set term "${shown}"`);
}

function normalizeTerms(spec: string | readonly string[] | undefined): string[] {
  if (spec === undefined) return [];
  const raw = typeof spec === 'string' ? spec.split('\\') : spec.flatMap((s) => s.split('\\'));
  const terms = raw.map((t) => t.trim().toUpperCase());
  while (terms.length > 0 && terms[terms.length - 1] === '') terms.pop();
  return terms;
}

function build(terms: readonly string[]): Charset {
  if (terms.length === 0) return DEFAULT_CHARSET;
  const label = terms.join('\\');
  const first = terms[0]!;
  if (terms.length === 1) {
    if (first === 'ISO_IR 192') return new Utf8Charset(terms);
    if (first === 'GB18030' || first === 'GBK') return new GbCharset(terms, first);
    if (first.startsWith('ISO_IR ')) {
      const sb = SINGLE_BYTE.get(first.slice('ISO_IR '.length));
      if (!sb) throw unknownTerm(first);
      return new SingleByteCharset(terms, label, sb.g0, sb.g1);
    }
  }
  // Code extensions. "ISO_IR n" inside a multi-valued list is read as "ISO 2022 IR n" (common in the field).
  const declared: GraphicSet[] = [];
  let g0: GraphicSet = ASCII;
  let g1: GraphicSet | null = null;
  let asciiDeclared = first === '';
  for (let index = 0; index < terms.length; index++) {
    const term = terms[index]!;
    if (term === '') continue;
    if (NON_EXTENSION_MULTI_BYTE.has(term)) {
      throw new GatewayError(
        'DICOM_CHARSET',
        `Specific Character Set term "${term}" cannot be combined with other terms (PS3.3 C.12.1.1.2)`,
      );
    }
    const mb = MULTI_BYTE_2022.get(term);
    if (mb) {
      declared.push(mb);
      if (index === 0) asciiDeclared = true; // not a valid value 1: fall back to the ISO-IR 6 G0
      continue;
    }
    const m = SB_TERM_RE.exec(term);
    const sb = m ? SINGLE_BYTE.get(m[1]!) : undefined;
    if (!sb) throw unknownTerm(term);
    if (index === 0) {
      g0 = sb.g0;
      g1 = sb.g1;
    }
    if (sb.g0 === ASCII) asciiDeclared = true;
    else declared.push(sb.g0);
    if (sb.g1) declared.push(sb.g1);
  }
  const order: GraphicSet[] = [];
  for (const s of [g0, ...(g1 ? [g1] : []), ...(asciiDeclared ? [ASCII] : []), ...declared]) {
    if (!order.includes(s)) order.push(s);
  }
  const designations = new Map<string, GraphicSet>([['(B', ASCII]]); // ESC ( B always returns to ISO-IR 6
  for (const s of order) designations.set(s.esc, s);
  if (order.includes(JIS_X_0208)) designations.set('$(B', JIS_X_0208); // long form of ESC $ B (ISO 2022 6.3.2)
  return new Iso2022Charset(terms, label, g0, g1, designations, order);
}

const cache = new Map<string, Charset>();
const CACHE_LIMIT = 256;

/**
 * The codec for a Specific Character Set (0008,0005) value: undefined, '' or [] for the default repertoire,
 * a string possibly holding backslash-separated terms, or an array of terms. Instances are cached per term list.
 * Throws GatewayError('DICOM_CHARSET') for an unsupported term.
 */
export function charsetFor(spec: string | readonly string[] | undefined): Charset {
  const terms = normalizeTerms(spec);
  if (terms.length === 0) return DEFAULT_CHARSET;
  const key = terms.join('\\');
  let cs = cache.get(key);
  if (!cs) {
    cs = build(terms);
    if (cache.size >= CACHE_LIMIT) cache.clear();
    cache.set(key, cs);
  }
  return cs;
}
