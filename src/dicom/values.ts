/**
 * Reading and writing element values in their VR, byte order and character set.
 */
import type { Charset } from './charset.js';
import { CHARSET_VRS, padByte, SINGLE_VALUE_TEXT_VRS, type VR } from './vr.js';

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
