/**
 * PS3.15 Table E.1-1 (2026d) and Table E.3.10-1 (safe private attributes), as data.
 * Source notes: src/data/*.SOURCE.md.
 */
import { readFileSync } from 'node:fs';

export type TableCode = 'X' | 'Z' | 'D' | 'K' | 'C' | 'U' | 'Z/D' | 'X/Z' | 'X/D' | 'X/Z/D' | 'X/Z/U*';
export type OptionCode = 'K' | 'C';

export const OPTION_COLUMNS = {
  retainSafePrivate: 'rtnSafePriv',
  retainUIDs: 'rtnUIDs',
  retainDeviceIdentity: 'rtnDevId',
  retainInstitutionIdentity: 'rtnInstId',
  retainPatientCharacteristics: 'rtnPatChars',
  retainLongitudinalFullDates: 'rtnLongFullDates',
  retainLongitudinalModifiedDates: 'rtnLongModifDates',
  cleanDescriptors: 'cleanDesc',
  cleanStructuredContent: 'cleanStructCont',
  cleanGraphics: 'cleanGraph',
} as const;

export type OptionName = keyof typeof OPTION_COLUMNS;
export type OptionColumn = (typeof OPTION_COLUMNS)[OptionName];
export const OPTION_NAMES = Object.keys(OPTION_COLUMNS) as OptionName[];

/** De-identification Method codes, CID 7050 (PS3.16), one per profile and option. */
export const METHOD_CODES: Readonly<Record<'basic' | OptionName, { code: string; meaning: string }>> = {
  basic: { code: '113100', meaning: 'Basic Application Confidentiality Profile' },
  cleanGraphics: { code: '113103', meaning: 'Clean Graphics Option' },
  cleanStructuredContent: { code: '113104', meaning: 'Clean Structured Content Option' },
  cleanDescriptors: { code: '113105', meaning: 'Clean Descriptors Option' },
  retainLongitudinalFullDates: { code: '113106', meaning: 'Retain Longitudinal Temporal Information Full Dates Option' },
  retainLongitudinalModifiedDates: { code: '113107', meaning: 'Retain Longitudinal Temporal Information Modified Dates Option' },
  retainPatientCharacteristics: { code: '113108', meaning: 'Retain Patient Characteristics Option' },
  retainDeviceIdentity: { code: '113109', meaning: 'Retain Device Identity Option' },
  retainUIDs: { code: '113110', meaning: 'Retain UIDs Option' },
  retainSafePrivate: { code: '113111', meaning: 'Retain Safe Private Option' },
  retainInstitutionIdentity: { code: '113112', meaning: 'Retain Institution Identity Option' },
};

export interface TableRow {
  readonly tag: string;
  readonly name: string;
  readonly keyword: string | null;
  readonly retired: boolean;
  readonly inStdCompIOD: boolean;
  readonly basic: TableCode;
  readonly rtnSafePriv: OptionCode | null;
  readonly rtnUIDs: OptionCode | null;
  readonly rtnDevId: OptionCode | null;
  readonly rtnInstId: OptionCode | null;
  readonly rtnPatChars: OptionCode | null;
  readonly rtnLongFullDates: OptionCode | null;
  readonly rtnLongModifDates: OptionCode | null;
  readonly cleanDesc: OptionCode | null;
  readonly cleanStructCont: OptionCode | null;
  readonly cleanGraph: OptionCode | null;
}

export interface SafePrivateRow {
  readonly tag: string;
  readonly privateCreator: string;
  readonly vr: string | null;
  readonly vm: string;
  readonly meaning: string | null;
}

let table: readonly TableRow[] | undefined;
let safe: readonly SafePrivateRow[] | undefined;

function load<T>(file: string): T {
  return JSON.parse(readFileSync(new URL(`../data/${file}`, import.meta.url), 'utf8')) as T;
}

/** Table E.1-1, 657 rows, in the standard's order. */
export function confidentialityTable(): readonly TableRow[] {
  table ??= Object.freeze(load<TableRow[]>('ps3.15-table-e1-1.json'));
  return table;
}

/** Table E.3.10-1, 479 rows. */
export function safePrivateTable(): readonly SafePrivateRow[] {
  safe ??= Object.freeze(load<SafePrivateRow[]>('ps3.15-safe-private.json'));
  return safe;
}
