/**
 * The de-identification plan: PS3.15 Table E.1-1 + the client's options + overrides,
 * compiled once per client into an immutable map from tag to action.
 *
 * The resolution rules are written down in docs/deid-rules.md; each entry carries the rule
 * that produced it (for `deid --diff` and for review). Anything the plan does not know is
 * removed (fail closed): unknown public tags, private tags not on the safe list, private
 * elements whose block has no creator.
 */
import { createHash } from 'node:crypto';
import { GatewayError } from '../core/errors.js';
import { dictionary, isPrivateTag, parseTagKey, tagHex, type DictEntry } from '../dicom/dictionary.js';
import type { VR } from '../dicom/vr.js';
import {
  confidentialityTable, OPTION_COLUMNS, OPTION_NAMES, safePrivateTable, type OptionCode,
  type OptionColumn, type OptionName, type TableCode, type TableRow,
} from './table.js';

/** Inside a dummied or cleaned sequence, free text the table does not list is dummied or cleaned too. */
export type SequenceMode = 'inherit' | 'dummy' | 'clean';

export type Action =
  | { readonly kind: 'keep' }
  | { readonly kind: 'remove' }
  | { readonly kind: 'empty' }
  | { readonly kind: 'dummy' }
  | { readonly kind: 'uid' }
  | { readonly kind: 'clean' }
  | { readonly kind: 'shift' }
  | { readonly kind: 'age' }
  /** Kept only when the value has its VR's form (TM, or a ±HHMM time-zone offset); else emptied. */
  | { readonly kind: 'keep-valid' }
  | { readonly kind: 'pseudonym'; readonly scope: 'patient-id' | 'patient-name' | 'value' }
  | { readonly kind: 'sequence'; readonly mode: SequenceMode };

export type ActionKind = Action['kind'];

export const A = {
  keep: { kind: 'keep' },
  remove: { kind: 'remove' },
  empty: { kind: 'empty' },
  dummy: { kind: 'dummy' },
  uid: { kind: 'uid' },
  clean: { kind: 'clean' },
  shift: { kind: 'shift' },
  age: { kind: 'age' },
  keepValid: { kind: 'keep-valid' },
  patientId: { kind: 'pseudonym', scope: 'patient-id' },
  patientName: { kind: 'pseudonym', scope: 'patient-name' },
  valuePseudonym: { kind: 'pseudonym', scope: 'value' },
  seqInherit: { kind: 'sequence', mode: 'inherit' },
  seqDummy: { kind: 'sequence', mode: 'dummy' },
  seqClean: { kind: 'sequence', mode: 'clean' },
} as const satisfies Record<string, Action>;

export interface PlanEntry {
  readonly action: Action;
  /** Why: "E.1-1 basic X/Z/D→D", "retainUIDs K", "not in E.1-1: kept", "override"… */
  readonly rule: string;
  /** True when the tag is listed in Table E.1-1 or overridden (false: a gap rule decided). */
  readonly listed: boolean;
}

export type OverrideAction = 'keep' | 'remove' | 'empty' | 'dummy' | 'pseudonym' | 'shift';

export interface DateShiftRange {
  /** Smallest shift back in time, in days (≥ 1). */
  readonly minDays: number;
  /** Largest shift back in time, in days. */
  readonly maxDays: number;
}

export interface ProfileSpec {
  readonly options: readonly OptionName[];
  /** Tag (keyword or "(GGGG,EEEE)") → action. */
  readonly overrides?: Readonly<Record<string, OverrideAction>>;
  readonly dateShift?: DateShiftRange;
  /** The client's own free-text words: extra words kept, and words always removed (Clean Descriptors, Clean Structured Content). */
  readonly freeText?: { readonly keep?: readonly string[]; readonly remove?: readonly string[] };
}

export const DEFAULT_DATE_SHIFT: DateShiftRange = { minDays: 365, maxDays: 3650 };

/** Attributes the engine writes itself (PS3.15 E.1.1 item 6); any input value is dropped. */
export const WRITTEN_TAGS = {
  PatientIdentityRemoved: 0x00120062,
  DeidentificationMethod: 0x00120063,
  DeidentificationMethodCodeSequence: 0x00120064,
  LongitudinalTemporalInformationModified: 0x00280303,
} as const;

/** Code Sequence Macro attributes (PS3.3 Table 8.8-1): coded concepts, not free text. */
const CODE_MACRO_TAGS: ReadonlySet<number> = new Set([
  0x00080100, 0x00080102, 0x00080103, 0x00080104, 0x00080105, 0x00080106, 0x00080107, 0x0008010b,
  0x0008010d, 0x0008010f, 0x00080117, 0x00080118, 0x00080119, 0x00080120, 0x00080122, 0x00080123,
  0x00080124, 0x00080125, 0x00080121, 0x0040db00, 0x0040a040, 0x0040a010, 0x0040a050,
]);

/** Free-text VRs that a dummied/cleaned sequence dummies/cleans even when not listed. */
export const FREE_TEXT_VRS: ReadonlySet<VR> = new Set<VR>(['LO', 'SH', 'ST', 'LT', 'UT', 'UC', 'PN']);

/**
 * Issuers of identifiers the table does not list (the HL7 v2 Hierarchic Designator Macro and
 * the sequences that carry it): they name the institution's identifier namespace (an OID, or a
 * URL such as http://hospital.example/mrns), so they leave with the institution's identity.
 */
const ISSUER_GAP_KEYWORDS: ReadonlySet<string> = new Set([
  'LocalNamespaceEntityID', 'UniversalEntityID', 'IssuerOfAccessionNumberSequence', 'IssuerOfPatientIDQualifiersSequence',
  'AssigningFacilitySequence', 'AssigningJurisdictionCodeSequence', 'AssigningAgencyOrDepartmentCodeSequence',
  'ItineraryIDAssigningAuthority', 'RouteIDAssigningAuthority', 'CarrierIDAssigningAuthority',
]);

/** UI attributes outside Table E.1-1 that name kinds (classes, syntaxes, schemes), not instances. */
const KIND_UID_KEYWORD = /(ClassUID|ClassesInStudy|ClassesInSeries|ClassesSupported|SOPClassUIDInFile|TransferSyntaxUID|SyntaxUIDInFile|CodingSchemeUID|ContextUID|MappingResourceUID|ContextGroupExtensionCreatorUID|CreatorVersionUID|SegmentationTemplateUID)$/;

const PRODUCT_VERSION = '0.1.0';

export interface CompiledPlan {
  readonly options: readonly OptionName[];
  readonly dateMode: 'remove' | 'full' | 'shift';
  readonly dateShift: DateShiftRange;
  readonly retainSafePrivate: boolean;
  /** sha256 over the resolved plan; names the plan in De-identification Method and audit. */
  readonly hash: string;
  /** Entry for a public (even group) tag. */
  lookup(tag: number): PlanEntry;
  /** Entry for a private data element, given its block's creator (undefined: none). */
  privateEntry(tag: number, creator: string | undefined): PlanEntry;
  isCodeMacro(tag: number): boolean;
  /** Tags whose values are identifiers to scrub from free text (cleanDescriptors/cleanStructuredContent). */
  readonly identifierTags: ReadonlySet<number>;
  /** The client's free-text words (lowercase): kept, and always removed. */
  readonly freeText: { readonly keep: ReadonlySet<string>; readonly remove: ReadonlySet<string> };
  /** Every resolved concrete entry, for documentation and tests. */
  entries(): IterableIterator<[number, PlanEntry]>;
}

const e = (action: Action, rule: string, listed = true): PlanEntry => Object.freeze({ action, rule, listed });

const REMOVE_UNKNOWN = e(A.remove, 'not in the dictionary: removed', false);
const REMOVE_GROUP_LENGTH = e(A.remove, 'group length: removed (recomputed where required)', false);
const REMOVE_COMMAND_OR_META = e(A.remove, 'command/file meta group inside a data set: removed', false);
const REMOVE_CURVE = e(A.remove, 'E.1-1 (50xx,xxxx) Curve Data X', true);
const REMOVE_OVERLAY = e(A.remove, 'overlay group: removed with (60xx,3000) Overlay Data (E.1-1 X; Clean Graphics cannot clean bitmaps)', true);
const REMOVE_PRIVATE = e(A.remove, 'E.1-1 private attributes X', true);
const REMOVE_ORPHAN_PRIVATE = e(A.remove, 'private element without a creator: removed', true);
const KEEP_SAFE_PRIVATE = e(A.keep, 'E.3.10-1 safe private, retainSafePrivate C', true);

function isDateVR(vr: VR | null): boolean {
  return vr === 'DA' || vr === 'DT';
}

/**
 * Resolves a compound or simple Basic Profile code to one action for an attribute whose IOD
 * type is unknown: keep a present attribute present (Type 1 → D, Type 2 → Z), so
 * Z/D and X/D and X/Z/D → D, X/Z → Z, X/Z/U* → U (PS3.15 E.1.1, Table E.1-1a).
 */
function resolveBasic(code: TableCode, vr: VR | null, tag: number): { action: Action; chosen: string } {
  // X/Z on a sequence: an empty sequence is valid only where the attribute is Type 2; the
  // two X/Z sequences of 2026d are Type 3 (Referenced Study Sequence, General Study) or
  // Type 2 (Acquisition Context Sequence, Acquisition Context module, PS3.3 C.7.6.14).
  if (code === 'X/Z' && vr === 'SQ') {
    return TYPE2_SEQUENCES.has(tag) ? { action: A.empty, chosen: 'Z' } : { action: A.remove, chosen: 'X' };
  }
  const chosen = code === 'X/Z' ? 'Z' : code === 'X/Z/U*' ? 'U' : code.includes('D') ? 'D' : code;
  let action: Action;
  switch (chosen) {
    case 'X': action = A.remove; break;
    case 'Z': action = A.empty; break; // a sequence becomes an empty sequence
    case 'D': action = vr === 'SQ' ? A.seqDummy : A.dummy; break;
    case 'K': action = vr === 'SQ' ? A.seqInherit : A.keep; break;
    case 'U': action = vr === 'SQ' ? A.seqInherit : vr === 'UI' ? A.uid : A.dummy; break;
    case 'C': action = vr === 'SQ' ? A.seqClean : A.clean; break;
    default: throw new GatewayError('DEID_PLAN_INVALID', `unknown Table E.1-1 code ${code}`);
  }
  return { action, chosen };
}

/** Sequences that are Type 2 in the module that defines them (an empty value is valid). */
const TYPE2_SEQUENCES: ReadonlySet<number> = new Set([0x00400555]);

/** C ("clean") depends on the option column and the VR (PS3.15 E.3.x). */
function resolveClean(column: OptionColumn, vr: VR | null): Action {
  if (vr === 'SQ') return A.seqClean;
  if (column === 'rtnLongModifDates') {
    // E.3.6: dates are shifted; times and offsets carry no date and are kept.
    if (isDateVR(vr)) return A.shift;
    if (vr === 'TM' || vr === 'SH') return A.keepValid; // free text hiding there is emptied
    return A.remove; // binary timestamps (OB) cannot be shifted: fail closed
  }
  switch (vr) {
    case 'LO': case 'SH': case 'ST': case 'LT': case 'UT': case 'UC': case 'CS': return A.clean;
    case 'PN': return A.dummy;
    case 'AE': return A.valuePseudonym; // E.3.4: AE titles replaced by consistent non-identifying ones
    case 'OB': case 'OW': case 'UN': case null: return A.remove; // cannot clean binary
    default: return A.keep;
  }
}

function resolveRow(row: TableRow, vr: VR | null, options: ReadonlySet<OptionName>): PlanEntry {
  // Options in force that speak for this row. Most protective wins: C over K (docs/deid-rules.md).
  let best: { name: OptionName; code: OptionCode } | undefined;
  for (const name of OPTION_NAMES) {
    if (!options.has(name)) continue;
    const code = row[OPTION_COLUMNS[name]];
    if (!code) continue;
    if (!best || (best.code === 'K' && code === 'C')) best = { name, code };
  }
  if (best) {
    const column = OPTION_COLUMNS[best.name];
    if (best.code === 'K') {
      const action = vr === 'SQ' ? A.seqInherit : vr === 'AS' && best.name === 'retainPatientCharacteristics' ? A.age : A.keep;
      return e(action, `${best.name} K`);
    }
    return e(resolveClean(column, vr), `${best.name} C`);
  }
  const { action, chosen } = resolveBasic(row.basic, vr, parseTagKey(row.tag).value);
  return e(action, row.basic === chosen ? `E.1-1 basic ${row.basic}` : `E.1-1 basic ${row.basic}→${chosen}`);
}

/** Attributes in the dictionary but not in Table E.1-1 (docs/deid-rules.md "gap rules"). */
function gapEntry(d: DictEntry, dateMode: CompiledPlan['dateMode'], keepInstitution: boolean): PlanEntry {
  const vr = d.vr;
  if (d.keyword && ISSUER_GAP_KEYWORDS.has(d.keyword)) {
    return keepInstitution
      ? e(vr === 'SQ' ? A.seqInherit : A.keep, 'not in E.1-1, issuer of identifiers: kept (retainInstitutionIdentity)', false)
      : e(A.remove, 'not in E.1-1, issuer of identifiers (names the institution\'s namespace): removed', false);
  }
  switch (vr) {
    case 'PN':
      return e(A.remove, 'not in E.1-1, person name: removed', false);
    case 'DA': case 'DT':
      if (dateMode === 'full') return e(A.keep, 'not in E.1-1, date: kept (full dates)', false);
      if (dateMode === 'shift') return e(A.shift, 'not in E.1-1, date: shifted', false);
      return e(A.remove, 'not in E.1-1, date: removed', false);
    case 'TM':
      if (dateMode !== 'remove') return e(A.keepValid, 'not in E.1-1, time: kept when a valid time (dates retained)', false);
      return e(A.remove, 'not in E.1-1, time: removed', false);
    case 'UI':
      if (d.keyword && KIND_UID_KEYWORD.test(d.keyword)) return e(A.keep, 'not in E.1-1, class/syntax UID: kept', false);
      return e(A.uid, 'not in E.1-1, instance UID: mapped', false);
    case 'UR':
      // Coded concepts (URN Code Value, Coding Scheme URL) name terminology, not instances.
      if (CODE_MACRO_TAGS.has(d.tag) || d.keyword === 'CodingSchemeURL') return e(A.keep, 'not in E.1-1, code URL: kept', false);
      // Retrieve URL / URI and the like embed original UIDs and internal host names
      // (FIELD-NOTES: Orthanc writes them from the request's Host).
      return e(A.remove, 'not in E.1-1, URL: removed', false);
    case 'SQ':
      return e(A.seqInherit, 'not in E.1-1: kept, items de-identified', false);
    default:
      return e(A.keep, 'not in E.1-1: kept', false);
  }
}

function overrideEntry(action: OverrideAction, vr: VR | null, key: string): PlanEntry {
  switch (action) {
    case 'keep': return e(vr === 'SQ' ? A.seqInherit : A.keep, 'override keep');
    case 'remove': return e(A.remove, 'override remove');
    case 'empty': return e(A.empty, 'override empty');
    case 'dummy': return e(vr === 'SQ' ? A.seqDummy : A.dummy, 'override dummy');
    case 'pseudonym':
      if (vr === 'SQ') throw new GatewayError('DEID_PLAN_INVALID', `overrides.${key}: a sequence cannot be pseudonymized; use keep, remove, empty or dummy`);
      return e(vr === 'UI' ? A.uid : A.valuePseudonym, 'override pseudonym');
    case 'shift':
      if (!isDateVR(vr)) throw new GatewayError('DEID_PLAN_INVALID', `overrides.${key}: shift applies to DA and DT attributes only (this one is ${vr ?? 'no VR'})`);
      return e(A.shift, 'override shift');
  }
}

function safeKey(creator: string, group: number, low: number): string {
  return `${creator.trim().toUpperCase()}|${group}|${low}`;
}

let safeKeys: ReadonlySet<string> | undefined;
function safePrivateKeys(): ReadonlySet<string> {
  if (!safeKeys) {
    const s = new Set<string>();
    for (const r of safePrivateTable()) {
      // "(7053,xx00)": group, then the element's low byte; xx is the block the creator reserves.
      const m = /^\(([0-9A-Fa-f]{4}),xx([0-9A-Fa-f]{2})\)$/i.exec(r.tag);
      if (m) s.add(safeKey(r.privateCreator, parseInt(m[1]!, 16), parseInt(m[2]!, 16)));
    }
    safeKeys = s;
  }
  return safeKeys;
}

/** Compiles a client's profile. Throws GatewayError(DEID_PLAN_INVALID) naming the key and the fix. */
export function compilePlan(spec: ProfileSpec): CompiledPlan {
  const options = new Set(spec.options);
  for (const o of options) {
    if (!OPTION_NAMES.includes(o)) {
      throw new GatewayError('DEID_PLAN_INVALID', `options: unknown option "${o}"; use one of ${OPTION_NAMES.join(', ')}`);
    }
  }
  if (options.has('retainLongitudinalFullDates') && options.has('retainLongitudinalModifiedDates')) {
    throw new GatewayError('DEID_PLAN_INVALID', 'options: retainLongitudinalFullDates and retainLongitudinalModifiedDates exclude each other; keep one');
  }
  const dateShift = spec.dateShift ?? DEFAULT_DATE_SHIFT;
  if (!Number.isInteger(dateShift.minDays) || !Number.isInteger(dateShift.maxDays) || dateShift.minDays < 1 || dateShift.maxDays < dateShift.minDays || dateShift.maxDays > 36500) {
    throw new GatewayError('DEID_PLAN_INVALID', 'dateShift: minDays and maxDays must be whole days with 1 ≤ minDays ≤ maxDays ≤ 36500');
  }
  const dateMode: CompiledPlan['dateMode'] = options.has('retainLongitudinalFullDates') ? 'full'
    : options.has('retainLongitudinalModifiedDates') ? 'shift' : 'remove';
  const keepInstitution = options.has('retainInstitutionIdentity');
  const dict = dictionary();
  const exact = new Map<number, PlanEntry>();

  for (const d of dict.entries()) {
    if (d.masked || isPrivateTag(d.tag)) continue;
    exact.set(d.tag, gapEntry(d, dateMode, keepInstitution));
  }
  // Signatures, MACs and encrypted copies of earlier values (group 0400, MAC Parameters) that
  // the table does not list: de-identification invalidates signatures, and Encrypted
  // Attributes carry the original values (PS3.15 E.1.1 item 5; FIELD-NOTES leak 11).
  for (const tag of exact.keys()) {
    if ((tag >>> 16) === 0x0400 || tag === 0x4ffe0001) exact.set(tag, e(A.remove, 'signature/encryption/earlier-values attribute not in E.1-1: removed', false));
  }
  const identifierTags = new Set<number>();
  for (const row of confidentialityTable()) {
    if (row.tag.includes('x') || !row.keyword) continue; // patterns are handled in lookup()
    const { value: tag } = parseTagKey(row.tag);
    const vr = dict.lookup(tag)?.vr ?? null;
    exact.set(tag, resolveRow(row, vr, options));
    if (row.basic !== 'K' && !row.cleanDesc && (vr === 'PN' || vr === 'LO' || vr === 'SH')) identifierTags.add(tag);
  }
  // Product rules on top of the table (docs/deid-rules.md): keyed pseudonyms keep a patient's
  // studies together for the buyer (a non-empty dummy satisfies Z and D, PS3.15 Table E.1-1a).
  exact.set(0x00100020, e(A.patientId, 'E.1-1 basic Z/D→D: keyed pseudonym'));
  exact.set(0x00100010, e(A.patientName, 'E.1-1 basic Z: keyed pseudonym'));
  for (const tag of Object.values(WRITTEN_TAGS)) exact.set(tag, e(A.remove, 'written by the engine', false));

  for (const [key, action] of Object.entries(spec.overrides ?? {})) {
    const tag = parseTagStrict(key);
    if (isPrivateTag(tag)) {
      throw new GatewayError('DEID_PLAN_INVALID', `overrides.${key}: private tags cannot be overridden; use the retainSafePrivate option`);
    }
    const d = dict.lookup(tag);
    if (!d || d.masked) throw new GatewayError('DEID_PLAN_INVALID', `overrides.${key}: not a tag of the DICOM dictionary; use a keyword such as StudyDescription or a tag such as (0008,1030)`);
    exact.set(tag, overrideEntry(action, d.vr, key));
  }
  const retainSafePrivate = options.has('retainSafePrivate');
  const safe = retainSafePrivate ? safePrivateKeys() : new Set<string>();
  const maskedCache = new Map<number, PlanEntry>();

  const hash = createHash('sha256');
  hash.update(`deid-gateway ${PRODUCT_VERSION}\n${[...options].sort().join(',')}\n${dateShift.minDays}-${dateShift.maxDays}\n`);
  const words = (l: readonly string[] | undefined): Set<string> => new Set((l ?? []).map((w) => w.trim().toLowerCase()).filter(Boolean));
  const freeText = { keep: words(spec.freeText?.keep), remove: words(spec.freeText?.remove) };
  if (freeText.keep.size || freeText.remove.size) hash.update(`free-text keep:${[...freeText.keep].sort().join(',')} remove:${[...freeText.remove].sort().join(',')}\n`);
  for (const [tag, entry] of [...exact].sort((a, b) => a[0] - b[0])) {
    const a = entry.action;
    hash.update(`${tagHex(tag)}:${a.kind}${a.kind === 'sequence' ? `:${a.mode}` : a.kind === 'pseudonym' ? `:${a.scope}` : ''}\n`);
  }
  const planHash = hash.digest('hex');

  const plan: CompiledPlan = {
    options: Object.freeze([...options]),
    dateMode,
    dateShift: Object.freeze({ ...dateShift }),
    retainSafePrivate,
    hash: planHash,
    identifierTags,
    freeText,
    lookup(tag: number): PlanEntry {
      const hit = exact.get(tag);
      if (hit) return hit;
      if ((tag & 0xffff) === 0) return REMOVE_GROUP_LENGTH;
      const group = tag >>> 16;
      if (group === 0x0000 || group === 0x0002) return REMOVE_COMMAND_OR_META;
      if ((group & 0xff01) === 0x5000) return REMOVE_CURVE;
      if ((group & 0xff01) === 0x6000) return REMOVE_OVERLAY;
      const cached = maskedCache.get(tag);
      if (cached) return cached;
      const d = dict.lookup(tag);
      const entry = d ? gapEntry(d, dateMode, keepInstitution) : REMOVE_UNKNOWN;
      if (maskedCache.size < 65536) maskedCache.set(tag, entry);
      return entry;
    },
    privateEntry(tag: number, creator: string | undefined): PlanEntry {
      if (creator === undefined) return REMOVE_ORPHAN_PRIVATE;
      if (retainSafePrivate && safe.has(safeKey(creator, tag >>> 16, tag & 0xff))) return KEEP_SAFE_PRIVATE;
      return REMOVE_PRIVATE;
    },
    isCodeMacro: (tag) => CODE_MACRO_TAGS.has(tag),
    entries: () => exact.entries(),
  };
  return Object.freeze(plan);
}

function parseTagStrict(key: string): number {
  const m = /^\(?([0-9A-Fa-f]{4}),?([0-9A-Fa-f]{4})\)?$/.exec(key.trim());
  if (m) return parseInt(`${m[1]}${m[2]}`, 16) >>> 0;
  const d = dictionary().byKeywordOrUndefined(key.trim());
  if (!d) throw new GatewayError('DEID_PLAN_INVALID', `overrides.${key}: unknown keyword; use a PS3.6 keyword such as StudyDescription or a tag such as (0008,1030)`);
  return d.tag;
}

export { PRODUCT_VERSION };
