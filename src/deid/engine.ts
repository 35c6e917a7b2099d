/**
 * The one de-identification algorithm, written once over an adapter so that the DICOM JSON
 * model and Part 10 elements go through the same decisions, the same pseudonyms and the
 * same dates (ARCHITECTURE rule 3). Adapters only read values and encode outputs.
 */
import { isPrivateTag, isPrivateCreatorTag } from '../dicom/dictionary.js';
import { STRING_VRS, MAX_CHARS, type VR } from '../dicom/vr.js';
import { Pseudonymizer } from '../pseudonym/pseudonymizer.js';
import { A, FREE_TEXT_VRS, PRODUCT_VERSION, WRITTEN_TAGS, type Action, type CompiledPlan, type SequenceMode } from './plan.js';
import { dateForms, identifierPieces, scrubberFor, type Scrubber } from './scrub.js';
import { freeTextVersion } from './free-text.js';
import { capAge, dummyString, shiftDA, shiftDT } from './values.js';
import { METHOD_CODES } from './table.js';

/** Reads one representation and builds its output. E: element, D: data set, O: output element. */
export interface Adapter<E, D, O> {
  elements(ds: D): readonly E[];
  tag(e: E): number;
  /** Effective VR (a public element encoded as UN is resolved through the dictionary). */
  vr(e: E, ds: D): VR;
  /** Decoded values (PN as "Alpha=Ideo=Phon"); null when the value is not inline (bulk). */
  strings(e: E, ds: D): string[] | null;
  items(e: E, ds: D): readonly D[];
  keep(e: E, ds: D): O;
  /** Encodes values in the data set's character set; null when they cannot be encoded. */
  setStrings(tag: number, vr: VR, values: readonly string[], ds: D): O | null;
  setEmpty(tag: number, vr: VR): O;
  setZeros(tag: number, vr: VR): O;
  setSequence(tag: number, items: O[][]): O;
  outTag(o: O): number;
}

/** Who asked, and how their data is named in the De-identification Method. */
export interface EngineContext {
  readonly plan: CompiledPlan;
  readonly pseudonymizer: Pseudonymizer;
  readonly policyId: string;
}

export interface ApplyOptions {
  /** Write Patient Identity Removed, the method and its codes (instances, metadata); not for QIDO rows. */
  readonly writeMarkers: boolean;
  /** Further De-identification Method codes (e.g. 113101 Clean Pixel Data when regions were blanked). */
  readonly extraMethodCodes?: readonly { readonly code: string; readonly meaning: string }[];
}

const TAG = {
  PatientName: 0x00100010,
  PatientID: 0x00100020,
  IssuerOfPatientID: 0x00100021,
  PatientBirthDate: 0x00100030,
  StudyInstanceUID: 0x0020000d,
  CodeValue: 0x00080100,
  CodingSchemeDesignator: 0x00080102,
  CodeMeaning: 0x00080104,
} as const;

/** Coding schemes whose code meanings are the standard's (or a published terminology's) words. */
const STANDARD_SCHEMES = new Set(['DCM', 'SCT', 'SRT', 'SNM3', 'LN', 'UMLS', 'RADLEX', 'RADLEX', 'NCIT', 'NCIt', 'ACR', 'FMA', 'UCUM', 'I10', 'ICD10', 'I9C', 'ICD9CM', 'ICD10CM', 'I10P', 'MDC', 'RXNORM', 'NDC', 'HL7', 'ISO3166_1', 'ISO639_1', 'ISO639_2', 'CDCREC', 'NEU', 'BARI', 'DC', 'NCDR', 'MSH', 'MEDDRA', 'C4', 'C5', 'CPT', 'ITIS_TSN', 'PUBCHEM_CID', 'NBD', 'NBDB', 'CD2', 'CTV3', 'LNC', 'RFC5646', 'SCTUSX', 'SRT-US', 'DCMUID', 'IBSI', 'RRID', 'ORPHA']);

function standardScheme<E, D, O>(ad: Adapter<E, D, O>, ds: D): boolean {
  const el = ad.elements(ds).find((x) => ad.tag(x) === TAG.CodingSchemeDesignator);
  const scheme = el ? (ad.strings(el, ds)?.[0] ?? '').trim().toUpperCase() : '';
  return STANDARD_SCHEMES.has(scheme) || STANDARD_SCHEMES.has(scheme.replace(/[-_ ]/g, ''));
}

/** Per-data-set state: the patient's pseudonym and date offset, the identifiers to scrub. */
class DatasetState<E, D, O> {
  private scrubberCache: Scrubber | undefined;
  readonly patientKey: string;
  private offset: number | undefined;
  cleaned = false;

  constructor(private readonly ad: Adapter<E, D, O>, private readonly root: D, readonly ctx: EngineContext) {
    const get = (tag: number): string => {
      const el = ad.elements(root).find((x) => ad.tag(x) === tag);
      return el ? (ad.strings(el, root)?.[0] ?? '').trim() : '';
    };
    this.patientKey = Pseudonymizer.patientKey(get(TAG.PatientID), get(TAG.IssuerOfPatientID), get(TAG.PatientName), get(TAG.StudyInstanceUID));
  }

  get dateOffset(): number {
    this.offset ??= this.ctx.pseudonymizer.dateOffsetDays(this.patientKey);
    return this.offset;
  }

  /** Identifiers of this data set, at every depth (FIELD-NOTES leak 1: nested sequences). */
  scrubber(): Scrubber {
    if (this.scrubberCache) return this.scrubberCache;
    const values: string[] = [];
    const dates: string[] = [];
    const walk = (ds: D): void => {
      for (const el of this.ad.elements(ds)) {
        const tag = this.ad.tag(el);
        const vr = this.ad.vr(el, ds);
        if (vr === 'SQ') {
          for (const item of this.ad.items(el, ds)) walk(item);
        } else if (vr === 'PN' || this.ctx.plan.identifierTags.has(tag)) {
          values.push(...(this.ad.strings(el, ds) ?? []));
        } else if (tag === TAG.PatientBirthDate) {
          dates.push(...(this.ad.strings(el, ds) ?? []));
        }
      }
    };
    walk(this.root);
    const plan = this.ctx.plan;
    this.scrubberCache = scrubberFor([...identifierPieces(values), ...dates.flatMap(dateForms)].sort(), plan.freeText, plan.hash);
    return this.scrubberCache;
  }
}

/** The forms a kept time or time-zone offset may take (PS3.5 Table 6.2-1; ACR-NEMA HH:MM:SS). */
const VALID_FORM: Partial<Record<VR, RegExp>> = {
  TM: /^(?:\d{2}(?:\d{2}(?:\d{2}(?:\.\d{1,6})?)?)?|\d{2}:\d{2}(?::\d{2}(?:\.\d{1,6})?)?)$/,
  SH: /^[+-](?:0\d|1[0-4])[0-5]\d$/,
};

function truncateTo(vr: VR, s: string): string {
  const max = MAX_CHARS[vr];
  return max !== undefined && s.length > max ? s.slice(0, max) : s;
}

/**
 * De-identifies one data set (a Part 10 instance, a metadata object or a QIDO row).
 * Returns the output elements in tag order.
 */
export function deidentify<E, D, O>(ad: Adapter<E, D, O>, root: D, ctx: EngineContext, opts: ApplyOptions): O[] {
  const state = new DatasetState(ad, root, ctx);
  const out = processDataset(ad, root, 'inherit', state);
  if (opts.writeMarkers) {
    out.push(...markers(ad, root, state, opts.extraMethodCodes ?? []));
    out.sort((a, b) => ad.outTag(a) - ad.outTag(b));
  }
  return out;
}

function processDataset<E, D, O>(ad: Adapter<E, D, O>, ds: D, mode: SequenceMode, state: DatasetState<E, D, O>): O[] {
  const plan = state.ctx.plan;
  const out: (O | null)[] = [];
  // Private blocks: creator value per (group, block); a creator is written only when an
  // element of its block is (PS3.5 7.8.1), so we hold its slot until the data set ends.
  let creators: Map<number, { value: string; slot: number; el: E; kept: boolean }> | undefined;
  for (const el of ad.elements(ds)) {
    const tag = ad.tag(el);
    if (isPrivateTag(tag)) {
      const element = tag & 0xffff;
      const group = tag >>> 16;
      if (isPrivateCreatorTag(tag)) {
        creators ??= new Map();
        const value = (ad.strings(el, ds)?.[0] ?? '').trim();
        creators.set((group << 8) | element, { value, slot: out.length, el, kept: false });
        out.push(null);
        continue;
      }
      if (element < 0x1000) continue; // (gggg,0000-0FFF) without a block: not valid private data
      const c = creators?.get((group << 8) | (element >>> 8));
      const entry = plan.privateEntry(tag, c?.value);
      if (entry.action.kind === 'keep' && c) {
        c.kept = true;
        out.push(ad.keep(el, ds));
      }
      continue;
    }
    const entry = plan.lookup(tag);
    let action: Action = entry.action;
    const vr = ad.vr(el, ds);
    // Inside a sequence the plan dummies or cleans (e.g. an SR Content Sequence, D in the
    // Basic Profile), free text the table does not list is dummied or cleaned as well.
    if (!entry.listed && mode !== 'inherit' && FREE_TEXT_VRS.has(vr) && !plan.isCodeMacro(tag)) {
      action = mode === 'dummy' || vr === 'PN' ? A.dummy : A.clean;
    }
    // A code meaning of a local coding scheme is free text someone typed, not the standard's
    // words: in a cleaned sequence it is cleaned like any other text (Clean Structured Content).
    if (mode === 'clean' && tag === TAG.CodeMeaning && action.kind === 'keep' && !standardScheme(ad, ds)) action = A.clean;
    const o = applyAction(ad, el, ds, tag, vr, action, mode, state);
    if (o !== null) out.push(o);
  }
  if (creators) {
    for (const c of creators.values()) if (c.kept) out[c.slot] = ad.keep(c.el, ds);
  }
  return out.filter((o): o is O => o !== null);
}

function mapStrings<E, D, O>(ad: Adapter<E, D, O>, el: E, ds: D, tag: number, vr: VR, f: (v: string) => string | null): O | null {
  const values = ad.strings(el, ds);
  if (values === null) return null; // not inline: cannot inspect, so it does not leave
  if (values.length === 0) return ad.keep(el, ds);
  let changed = false;
  const next: string[] = [];
  for (const v of values) {
    const r = f(v);
    const value = r === null ? '' : truncateTo(vr, r);
    if (value !== v) changed = true;
    next.push(value);
  }
  if (!changed) return ad.keep(el, ds);
  return ad.setStrings(tag, vr, next, ds) ?? ad.setEmpty(tag, vr);
}

function applyAction<E, D, O>(
  ad: Adapter<E, D, O>, el: E, ds: D, tag: number, vr: VR, action: Action, mode: SequenceMode, state: DatasetState<E, D, O>,
): O | null {
  const ctx = state.ctx;
  switch (action.kind) {
    case 'keep':
      return vr === 'SQ' ? applyAction(ad, el, ds, tag, vr, A.seqInherit, mode, state) : ad.keep(el, ds);
    case 'remove':
      return null;
    case 'empty':
      return vr === 'SQ' ? ad.setSequence(tag, []) : ad.setEmpty(tag, vr);
    case 'dummy': {
      if (vr === 'SQ') return applyAction(ad, el, ds, tag, vr, A.seqDummy, mode, state);
      if (vr === 'UI') return applyAction(ad, el, ds, tag, vr, A.uid, mode, state);
      const d = dummyString(vr);
      if (d === undefined) return ad.setZeros(tag, vr);
      return ad.setStrings(tag, vr, [d], ds) ?? ad.setEmpty(tag, vr);
    }
    case 'uid':
      if (vr !== 'UI') return applyAction(ad, el, ds, tag, vr, A.dummy, mode, state);
      return mapStrings(ad, el, ds, tag, vr, (v) => {
        const u = v.replace(/\0/g, '').trim();
        return u === '' ? '' : ctx.pseudonymizer.uid(u);
      });
    case 'clean': {
      if (!STRING_VRS.has(vr)) return null; // binary cannot be cleaned: removed
      const scrubber = state.scrubber();
      state.cleaned = true;
      if (vr === 'CS') {
        return mapStrings(ad, el, ds, tag, vr, (v) => (scrubber.scrub(v) === v ? v : 'ANONYMIZED'));
      }
      return mapStrings(ad, el, ds, tag, vr, (v) => scrubber.scrub(v));
    }
    case 'shift':
      if (vr === 'DA') return mapStrings(ad, el, ds, tag, vr, (v) => shiftDA(v, state.dateOffset));
      if (vr === 'DT') return mapStrings(ad, el, ds, tag, vr, (v) => shiftDT(v, state.dateOffset));
      if (vr === 'TM') return ad.keep(el, ds);
      return null;
    case 'age':
      return vr === 'AS' ? mapStrings(ad, el, ds, tag, vr, capAge) : null;
    case 'keep-valid':
      return mapStrings(ad, el, ds, tag, vr, (v) => (VALID_FORM[vr]?.test(v.trim()) ?? true ? v : ''));
    case 'pseudonym': {
      if (action.scope === 'patient-id' || action.scope === 'patient-name') {
        const p = ctx.pseudonymizer.patientId(state.patientKey);
        return ad.setStrings(tag, vr, [p], ds) ?? ad.setEmpty(tag, vr);
      }
      if (!STRING_VRS.has(vr)) return null;
      const max = MAX_CHARS[vr] ?? 64;
      return mapStrings(ad, el, ds, tag, vr, (v) => (v.trim() === '' ? '' : ctx.pseudonymizer.token(`${tag}`, v.trim(), Math.min(max, 16))));
    }
    case 'sequence': {
      if (vr !== 'SQ') {
        // A table row for a sequence met a non-sequence encoding: treat by the mode.
        return action.mode === 'inherit' ? ad.keep(el, ds) : applyAction(ad, el, ds, tag, vr, A.dummy, mode, state);
      }
      const next = action.mode === 'inherit' ? mode : action.mode;
      const items = ad.items(el, ds).map((item) => processDataset(ad, item, next, state));
      return ad.setSequence(tag, items);
    }
  }
}

/** PS3.15 E.1.1 items 6–7 and C.12.1.1.7 (PS3.3): what was done, by whom, under which policy. */
function markers<E, D, O>(ad: Adapter<E, D, O>, ds: D, state: DatasetState<E, D, O>, extra: readonly { readonly code: string; readonly meaning: string }[]): O[] {
  const plan = state.ctx.plan;
  const set = (tag: number, vr: VR, values: string[], where: D = ds): O => ad.setStrings(tag, vr, values, where) ?? ad.setEmpty(tag, vr);
  const method = [
    `deid-gateway ${PRODUCT_VERSION}`,
    `policy ${state.ctx.policyId}`.slice(0, 64),
    `plan sha256:${plan.hash.slice(0, 16)}`,
  ];
  if (plan.options.includes('cleanDescriptors') || plan.options.includes('cleanStructuredContent')) {
    method.push(`text: ${freeTextVersion()}`.slice(0, 64));
  }
  const codes = [METHOD_CODES.basic, ...plan.options.map((o) => METHOD_CODES[o]), ...extra];
  const items = codes.map((c) => [
    set(TAG.CodeValue, 'SH', [c.code]),
    set(TAG.CodingSchemeDesignator, 'SH', ['DCM']),
    set(TAG.CodeMeaning, 'LO', [c.meaning]),
  ]);
  return [
    set(WRITTEN_TAGS.PatientIdentityRemoved, 'CS', ['YES']),
    set(WRITTEN_TAGS.DeidentificationMethod, 'LO', method),
    ad.setSequence(WRITTEN_TAGS.DeidentificationMethodCodeSequence, items),
    set(WRITTEN_TAGS.LongitudinalTemporalInformationModified, 'CS', [
      plan.dateMode === 'shift' ? 'MODIFIED' : plan.dateMode === 'full' ? 'UNMODIFIED' : 'REMOVED',
    ]),
  ];
}
