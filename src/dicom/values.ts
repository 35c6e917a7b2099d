/**
 * Reading and writing element values in their VR, byte order and character set.
 */
import { GatewayError } from '../core/errors.js';
import { charsetFor, DEFAULT_CHARSET, type Charset } from './charset.js';
import type { RawElement } from './part10.js';
import { CHARSET_VRS, padByte, SINGLE_VALUE_TEXT_VRS, type VR } from './vr.js';

/** The Specific Character Set (0008,0005) a data set or an item declares, if it declares one. */
export function declaredCharset(elements: readonly RawElement[]): Charset | undefined {
  const el = elements.find((e) => e.tag === 0x00080005);
  return el?.value ? charsetFor(el.value.toString('latin1').replace(/[\0 ]+$/, '').split('\\').map((t) => t.trim())) : undefined;
}

/**
 * decodeStrings as real files are read: where no Specific Character Set is declared, bytes
 * beyond ASCII are read as Latin-1, as DCMTK and pydicom read them. A declared set that the
 * bytes break is still refused (DICOM_CHARSET).
 */
export function decodeStringsAsRead(value: Buffer, vr: VR, charset: Charset): string[] {
  try {
    return decodeStrings(value, vr, charset);
  } catch (err) {
    if (charset === DEFAULT_CHARSET && err instanceof GatewayError && err.code === 'DICOM_CHARSET') return decodeStrings(value, vr, charsetFor('ISO_IR 100'));
    throw err;
  }
}

/** Values of a string VR: padding removed, split at backslashes (not for LT, ST, UT, UR). */
export function decodeStrings(value: Buffer, vr: VR, charset: Charset): string[] {
  if (value.length === 0) return [];
  let text = CHARSET_VRS.has(vr) ? charset.decode(value, vr) : value.toString('latin1');
  text = text.replace(vr === 'UI' ? /\0+$/ : /[\0 ]+$/, '');
  if (text === '') return [];
  return SINGLE_VALUE_TEXT_VRS.has(vr) ? [text] : text.split('\\');
}

/** Encodes values of a string VR, padded to even length; null when they cannot be encoded. */
export function encodeStrings(values: readonly string[], vr: VR, charset: Charset): Buffer | null {
  const text = SINGLE_VALUE_TEXT_VRS.has(vr) ? values.join('') : values.join('\\');
  let b: Buffer | null;
  if (CHARSET_VRS.has(vr)) {
    b = charset.encode(text, vr);
  } else {
    // Default repertoire only (PS3.5 6.1.2.3); anything else cannot be written here.
    b = /^[\x20-\x7e]*$/.test(text) ? Buffer.from(text, 'latin1') : null;
  }
  if (b && b.length % 2 === 1) b = Buffer.concat([b, Buffer.from([padByte(vr)])]);
  return b;
}

/** Binary numbers of a VR (US, SS, UL, SL, FL, FD, SV, UV) in the given byte order. */
export function decodeNumbers(value: Buffer, vr: VR, littleEndian: boolean): (number | bigint)[] {
  const out: (number | bigint)[] = [];
  const le = littleEndian;
  const step = { US: 2, SS: 2, UL: 4, SL: 4, FL: 4, FD: 8, SV: 8, UV: 8 }[vr as 'US'];
  if (!step) return out;
  for (let i = 0; i + step <= value.length; i += step) {
    switch (vr) {
      case 'US': out.push(le ? value.readUInt16LE(i) : value.readUInt16BE(i)); break;
      case 'SS': out.push(le ? value.readInt16LE(i) : value.readInt16BE(i)); break;
      case 'UL': out.push(le ? value.readUInt32LE(i) : value.readUInt32BE(i)); break;
      case 'SL': out.push(le ? value.readInt32LE(i) : value.readInt32BE(i)); break;
      case 'FL': out.push(le ? value.readFloatLE(i) : value.readFloatBE(i)); break;
      case 'FD': out.push(le ? value.readDoubleLE(i) : value.readDoubleBE(i)); break;
      case 'SV': out.push(le ? value.readBigInt64LE(i) : value.readBigInt64BE(i)); break;
      case 'UV': out.push(le ? value.readBigUInt64LE(i) : value.readBigUInt64BE(i)); break;
    }
  }
  return out;
}
export { padByte };
