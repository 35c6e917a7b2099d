/**
 * Per-client access scope (issue 4): which studies, series and instances a client may see.
 *
 * A scope is evaluated on ORIGINAL attribute values, at three levels, each on the attributes
 * that level has:
 *   - study:    opt-out list (Patient ID + Issuer), allow-list (Study Instance UIDs or
 *               Accession Numbers), study date range;
 *   - series:   modalities, body parts;
 *   - instance: SOP classes.
 * A study is visible when it passes the study rules and (if series or instance rules exist)
 * has at least one visible series; a series likewise needs a visible instance when instance
 * rules exist. The gateway answers anything not visible exactly as if it did not exist.
 *
 * The opt-out list wins over everything: a patient on it is never served to any client.
 * An opt-out entry without an issuer matches that Patient ID under every issuer; an entry
 * with an issuer also matches a record that has no issuer (it might be the same person). While
 * the list is not empty, a record without a Patient ID is treated as opted out (fail closed).
 */
import { GatewayError } from '../core/errors.js';

/** Tags the rules read (original values). */
export const TAG = {
  studyUid: 0x0020000d,
  seriesUid: 0x0020000e,
  sopUid: 0x00080018,
  accession: 0x00080050,
  studyDate: 0x00080020,
  patientId: 0x00100020,
  issuer: 0x00100021,
  modality: 0x00080060,
  bodyPart: 0x00180015,
  sopClass: 0x00080016,
} as const;

/** Attribute values of one record (QIDO row, metadata object or Part 10 header), original. */
export type Attrs = (tag: number) => string | undefined;

export interface OptOutEntry {
  readonly id: string;
  readonly issuer?: string | undefined;
}

export interface ScopeRules {
  /** Study Instance UIDs of the allow-list; undefined: no allow-list. */
  readonly studies?: ReadonlySet<string> | undefined;
  /** Accession Numbers of the allow-list (a study matches by UID or by accession). */
  readonly accessions?: ReadonlySet<string> | undefined;
  /** Inclusive YYYYMMDD bounds on the original Study Date. */
  readonly studyDate?: { readonly from?: string | undefined; readonly until?: string | undefined } | undefined;
  readonly modalities?: ReadonlySet<string> | undefined;
  readonly bodyParts?: ReadonlySet<string> | undefined;
  readonly sopClasses?: ReadonlySet<string> | undefined;
}

/** Why something is not visible (audit only: the client always sees "not found"). */
export type Denial = 'opted-out' | 'not-in-allow-list' | 'study-date' | 'modality' | 'body-part' | 'sop-class';

export class OptOutList {
  private readonly ids = new Map<string, (string | undefined)[]>();

  constructor(entries: readonly OptOutEntry[]) {
    for (const e of entries) {
      const id = e.id.trim();
      const list = this.ids.get(id) ?? [];
      list.push(e.issuer?.trim() || undefined);
      this.ids.set(id, list);
    }
  }

  get size(): number {
    return this.ids.size;
  }

  /**
   * Whether a record with this Patient ID and Issuer may belong to a patient on the list. A record
   * without a Patient ID cannot be told apart from an opted-out patient's: while the list has
   * entries, it counts as on it (fail closed).
   */
  has(patientId: string | undefined, issuer: string | undefined): boolean {
    const id = patientId?.trim();
    if (!id) return this.ids.size > 0;
    const issuers = this.ids.get(id);
    if (!issuers) return false;
    const i = issuer?.trim();
    return issuers.some((x) => x === undefined || !i || x === i);
  }
}

const multi = (v: string | undefined): string[] => (v === undefined ? [] : v.split('\\').map((s) => s.trim().toUpperCase()).filter(Boolean));

/** Study-level verdict on a record that carries study and patient attributes. */
export function studyDenial(rules: ScopeRules, optOut: OptOutList, a: Attrs): Denial | undefined {
  if (optOut.has(a(TAG.patientId), a(TAG.issuer))) return 'opted-out';
  if (rules.studies !== undefined || rules.accessions !== undefined) {
    const uid = a(TAG.studyUid);
    const acc = a(TAG.accession);
    const listed = (uid !== undefined && rules.studies?.has(uid)) || (acc !== undefined && rules.accessions?.has(acc.trim()));
    if (!listed) return 'not-in-allow-list';
  }
  if (rules.studyDate) {
    const d = a(TAG.studyDate)?.trim();
    if (!d || !/^\d{8}$/.test(d)) return 'study-date';
    if (rules.studyDate.from !== undefined && d < rules.studyDate.from) return 'study-date';
    if (rules.studyDate.until !== undefined && d > rules.studyDate.until) return 'study-date';
  }
  return undefined;
}

/** Series-level verdict (Modality, Body Part Examined of a series or instance record). */
export function seriesDenial(rules: ScopeRules, a: Attrs): Denial | undefined {
  if (rules.modalities && !multi(a(TAG.modality)).some((m) => rules.modalities!.has(m))) return 'modality';
  if (rules.bodyParts && !multi(a(TAG.bodyPart)).some((b) => rules.bodyParts!.has(b))) return 'body-part';
  return undefined;
}

/** Instance-level verdict (SOP Class UID). */
export function instanceDenial(rules: ScopeRules, a: Attrs): Denial | undefined {
  if (rules.sopClasses) {
    const c = a(TAG.sopClass)?.trim();
    if (!c || !rules.sopClasses.has(c)) return 'sop-class';
  }
  return undefined;
}

/** Every level at once, for a record that carries all of them (an instance). */
export function recordDenial(rules: ScopeRules, optOut: OptOutList, a: Attrs): Denial | undefined {
  return studyDenial(rules, optOut, a) ?? seriesDenial(rules, a) ?? instanceDenial(rules, a);
}

export const hasSeriesRules = (r: ScopeRules): boolean => r.modalities !== undefined || r.bodyParts !== undefined;
export const hasInstanceRules = (r: ScopeRules): boolean => r.sopClasses !== undefined;
export const hasStudyRules = (r: ScopeRules): boolean => r.studies !== undefined || r.accessions !== undefined || r.studyDate !== undefined;

/** The error for anything out of scope: indistinguishable from a resource that does not exist. */
export function notVisible(denial: Denial): GatewayError {
  return new GatewayError('NOT_FOUND', 'no such resource', { auditReason: `out-of-scope:${denial}` });
}

/** Access window: validFrom inclusive, validUntil exclusive (epoch ms). */
export function checkWindow(window: { readonly from?: number | undefined; readonly until?: number | undefined }, now = Date.now()): void {
  if (window.from !== undefined && now < window.from) {
    throw new GatewayError('ACCESS_WINDOW_CLOSED', 'this client\'s access has not started yet', { auditReason: 'access-window:not-yet-valid' });
  }
  if (window.until !== undefined && now >= window.until) {
    throw new GatewayError('ACCESS_WINDOW_CLOSED', 'this client\'s access window has ended', { auditReason: 'access-window:expired' });
  }
}

/** Attrs over a DICOM JSON object (PS3.18 F.2): values joined with "\\"; PN by Alphabetic. */
export function jsonAttrs(o: Readonly<Record<string, { Value?: unknown[] } | undefined>>): Attrs {
  return (tag) => {
    const v = o[tag.toString(16).toUpperCase().padStart(8, '0')]?.Value;
    if (!Array.isArray(v) || v.length === 0) return undefined;
    const s = v.map((x) => (x && typeof x === 'object' ? String((x as { Alphabetic?: unknown }).Alphabetic ?? '') : String(x ?? ''))).join('\\').trim();
    return s === '' ? undefined : s;
  };
}
