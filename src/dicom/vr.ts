/**
 * Value Representations (PS3.5 Table 6.2-1) and their encoding rules.
 */

export const VRS = [
  'AE', 'AS', 'AT', 'CS', 'DA', 'DS', 'DT', 'FD', 'FL', 'IS', 'LO', 'LT', 'OB', 'OD', 'OF', 'OL',
  'OV', 'OW', 'PN', 'SH', 'SL', 'SQ', 'SS', 'ST', 'SV', 'TM', 'UC', 'UI', 'UL', 'UN', 'UR', 'US',
  'UT', 'UV',
] as const;
export type VR = (typeof VRS)[number];

const VR_SET: ReadonlySet<string> = new Set(VRS);

/** VR by its two bytes read as a big-endian 16-bit number (no string made on the hot path). */
const VR_BY_CODE: ReadonlyMap<number, VR> = new Map(VRS.map((v) => [(v.charCodeAt(0) << 8) | v.charCodeAt(1), v]));

export function vrFromCode(code: number): VR | undefined {
  return VR_BY_CODE.get(code);
}
export function isVR(s: string): s is VR {
  return VR_SET.has(s);
}

/** VRs with a 2-byte reserved field and a 4-byte length in explicit VR (PS3.5 7.1.2). */
export const LONG_LENGTH_VRS: ReadonlySet<VR> = new Set<VR>([
  'OB', 'OD', 'OF', 'OL', 'OV', 'OW', 'SQ', 'UC', 'UN', 'UR', 'UT', 'SV', 'UV',
]);

/** VRs whose values are character strings (PS3.5 6.2). */
export const STRING_VRS: ReadonlySet<VR> = new Set<VR>([
  'AE', 'AS', 'CS', 'DA', 'DS', 'DT', 'IS', 'LO', 'LT', 'PN', 'SH', 'ST', 'TM', 'UC', 'UI', 'UR', 'UT',
]);

/** String VRs that use the Specific Character Set; the rest are default repertoire (PS3.5 6.1.2.3). */
export const CHARSET_VRS: ReadonlySet<VR> = new Set<VR>(['LO', 'LT', 'PN', 'SH', 'ST', 'UC', 'UT']);

/** String VRs that are single-valued: a backslash is part of the text (PS3.5 6.4). */
export const SINGLE_VALUE_TEXT_VRS: ReadonlySet<VR> = new Set<VR>(['LT', 'ST', 'UT', 'UR']);

/** Binary numeric VRs and the size of one value in bytes. */
export const NUMERIC_SIZES: Readonly<Partial<Record<VR, number>>> = {
  US: 2, SS: 2, UL: 4, SL: 4, FL: 4, FD: 8, AT: 4, SV: 8, UV: 8,
  OW: 2, OF: 4, OD: 8, OL: 4, OV: 8, OB: 1, UN: 1,
};

/** Byte-swapping unit for big endian (PS3.5 7.3): 1 means no swapping. */
export function swapUnit(vr: VR): number {
  switch (vr) {
    case 'AT': return 2;
    case 'OB': case 'UN': return 1;
    default: return NUMERIC_SIZES[vr] ?? 1;
  }
}

/** Maximum length in characters of one value (PS3.5 Table 6.2-1), where the VR limits it. */
export const MAX_CHARS: Readonly<Partial<Record<VR, number>>> = {
  AE: 16, AS: 4, CS: 16, DA: 8, DS: 16, DT: 26, IS: 12, LO: 64, LT: 10240, PN: 64, SH: 16,
  ST: 1024, TM: 14, UI: 64,
};

/** Padding byte for string VRs: NUL for UI, space otherwise; NUL for binary. */
export function padByte(vr: VR): number {
  return vr === 'UI' || !STRING_VRS.has(vr) ? 0x00 : 0x20;
}
