/**
 * Value-level transforms shared by every representation (JSON and Part 10): they take and
 * return DICOM string forms, so the same original becomes the same output everywhere.
 */
import type { VR } from '../dicom/vr.js';

/** Dummy values for D (PS3.15 Table E.1-1a: non-zero length, consistent with the VR). */
export function dummyString(vr: VR): string | undefined {
  switch (vr) {
    case 'AE': case 'CS': case 'LO': case 'SH': case 'ST': case 'LT': case 'UT': case 'UC': case 'PN':
      return 'ANONYMIZED';
    case 'AS': return '000Y';
    case 'DA': return '19000101';
    case 'DT': return '19000101000000';
    case 'TM': return '000000';
    case 'DS': case 'IS': return '0';
    case 'UR': return 'urn:deid:removed';
    default: return undefined; // UI is mapped, binary VRs become zeros
  }
}

const DAY_MS = 86_400_000;

function pad(n: number, w: number): string {
  return String(n).padStart(w, '0');
}

function addDays(y: number, m: number, d: number, days: number): [number, number, number] | null {
  if (m < 1 || m > 12 || d < 1 || d > 31) return null;
  // setUTCFullYear, not Date.UTC: Date.UTC reads years 0–99 as 1900–1999.
  const check = new Date(0);
  check.setUTCFullYear(y, m - 1, d);
  const t = check.getTime();
  if (check.getUTCDate() !== d || check.getUTCMonth() !== m - 1) return null; // 20230231
  const s = new Date(t + days * DAY_MS);
  const yy = s.getUTCFullYear();
  if (yy < 1 || yy > 9999) return null;
  return [yy, s.getUTCMonth() + 1, s.getUTCDate()];
}

/**
 * Shifts a DA value by whole days. Accepts YYYYMMDD and the ACR-NEMA form YYYY.MM.DD
 * (PS3.5 6.2 note); returns null when the value is not a date (the caller then empties it).
 */
export function shiftDA(value: string, days: number): string | null {
  const v = value.trim();
  if (v === '') return '';
  const m = /^(\d{4})\.?(\d{2})\.?(\d{2})$/.exec(v);
  if (!m) return null;
  const r = addDays(+m[1]!, +m[2]!, +m[3]!, days);
  return r ? `${pad(r[0], 4)}${pad(r[1], 2)}${pad(r[2], 2)}` : null;
}

/**
 * Shifts a DT value (YYYY[MM[DD[HH[MM[SS[.F]]]]]][&ZZXX], PS3.5 Table 6.2-1) by whole days,
 * keeping its precision, its time and its time-zone suffix. Reduced precision (YYYY or
 * YYYYMM) shifts the first day of the period and keeps the reduced precision.
 */
export function shiftDT(value: string, days: number): string | null {
  const v = value.trim();
  if (v === '') return '';
  const m = /^(\d{4})(\d{2})?(\d{2})?(\d{2}(?:\d{2}(?:\d{2}(?:\.\d{1,6})?)?)?)?([+-]\d{4})?$/.exec(v);
  if (!m) return null;
  const [, y, mo, d, time = '', tz = ''] = m;
  if (d === undefined && time !== '') return null;
  const r = addDays(+y!, mo ? +mo : 1, d ? +d : 1, days);
  if (!r) return null;
  let out = pad(r[0], 4);
  if (mo) out += pad(r[1], 2);
  if (d) out += pad(r[2], 2);
  return out + time + tz;
}

/**
 * Patient's Age under Retain Patient Characteristics: ages above 89 years are reported as
 * 090Y (HIPAA Safe Harbor §164.514(b)(2)(i)(C); PS3.15 E.3.5 lets the age be kept).
 */
export function capAge(value: string): string | null {
  const v = value.trim();
  if (v === '') return '';
  const m = /^(\d{3})([DWMY])$/.exec(v);
  if (!m) return null;
  const n = +m[1]!;
  const years = m[2] === 'Y' ? n : m[2] === 'M' ? n / 12 : m[2] === 'W' ? n / 52.1775 : n / 365.25;
  return years > 89 ? '090Y' : v;
}
