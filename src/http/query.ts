/**
 * QIDO-RS query rules (PS3.18 8.3.4; issues 3 and 4). A match key reaches the PACS only when
 * the client's plan releases that attribute unchanged, or when the gateway can map the
 * client's value back (pseudonymous UIDs and Patient IDs), or — for dates the plan shifts —
 * when the range can be widened upstream and matched exactly on the shifted values here.
 * Anything else — unknown keys, and identifying keys such as PatientName, PatientBirthDate or
 * AccessionNumber, which would be re-identification oracles — is refused with 400
 * QUERY_KEY_REFUSED naming the key; a client may further be limited to a list of keys.
 * Orthanc ignores unknown keys silently and matches nothing for backslash UID lists, so keys
 * are resolved here and UID lists are always sent comma-separated.
 */
import { GatewayError } from '../core/errors.js';
import { dictionary, parseTag, tagHex } from '../dicom/dictionary.js';
import type { CompiledPlan } from '../deid/plan.js';

export interface QueryResolver {
  /** Original UID of a pseudonymous one, or undefined when unknown to this client. */
  uid(pseudo: string): string | undefined;
  /** Original Patient ID of a pseudonymous one, or undefined. */
  patientId(pseudo: string): string | undefined;
}

/** An exact range test on a shifted date, applied to the de-identified value (YYYYMMDD, inclusive). */
export interface DateFilter {
  readonly tag: string;
  readonly from?: string | undefined;
  readonly until?: string | undefined;
}

export interface MappedQuery {
  /** Match keys and includefields for the PACS (no limit/offset: the caller pages). */
  readonly upstream: URLSearchParams;
  /** True when a mapped key matched nothing this client knows: answer [] without asking. */
  readonly empty: boolean;
  /** Warning header values for the client (PS3.18 8.3.4.4: fuzzy matching not supported). */
  readonly warnings: readonly string[];
  readonly limit: number;
  readonly offset: number;
  /** Shifted-date ranges to check on each de-identified result. */
  readonly dateFilters: readonly DateFilter[];
  /** Match keys the client gave (hex tags), so the caller does not override them. */
  readonly matchKeys: ReadonlySet<string>;
  /** Attributes the client asked for by name (hex), and whether it asked for all. */
  readonly included: ReadonlySet<string>;
  readonly includeAll: boolean;
}

export interface QueryOptions {
  readonly maxLimit: number;
  /** The client's allowed match keys; undefined: every key its plan permits. */
  readonly allowedKeys?: ReadonlySet<number> | undefined;
}

const RESERVED = new Set(['limit', 'offset', 'fuzzymatching', 'includefield']);
const PATIENT_ID = 0x00100020;

function bad(message: string): GatewayError {
  return new GatewayError('BAD_QUERY', message);
}

function refused(message: string): GatewayError {
  return new GatewayError('QUERY_KEY_REFUSED', message, { auditReason: 'query-key-refused' });
}

/** YYYYMMDD ± days. */
export function addDays(date: string, days: number): string {
  const t = Date.UTC(Number(date.slice(0, 4)), Number(date.slice(4, 6)) - 1, Number(date.slice(6, 8))) + days * 86_400_000;
  const d = new Date(t);
  return `${String(d.getUTCFullYear()).padStart(4, '0')}${String(d.getUTCMonth() + 1).padStart(2, '0')}${String(d.getUTCDate()).padStart(2, '0')}`;
}

function validDate(d: string): boolean {
  if (!/^\d{8}$/.test(d)) return false;
  const m = Number(d.slice(4, 6)), day = Number(d.slice(6, 8));
  return m >= 1 && m <= 12 && day >= 1 && day <= 31 && addDays(d, 0) === d;
}

/** A DA match value (PS3.4 C.2.2.2.5): single date or range, either end open. */
function parseDateRange(name: string, value: string): { from?: string; until?: string } {
  const v = value.trim();
  const m = /^(\d{8})?(-)?(\d{8})?$/.exec(v);
  if (!m || (!m[1] && !m[3]) || (!m[2] && m[3])) throw bad(`${name}: use a date YYYYMMDD or a range YYYYMMDD-YYYYMMDD (either end may be left open)`);
  const from = m[1], until = m[2] ? m[3] : m[1];
  for (const d of [from, until]) if (d !== undefined && !validDate(d)) throw bad(`${name}: ${d} is not a calendar date`);
  if (from && until && from > until) throw bad(`${name}: the range starts after it ends`);
  return { ...(from ? { from } : {}), ...(until ? { until } : {}) };
}

export function mapQuery(params: URLSearchParams, plan: CompiledPlan, resolve: QueryResolver, opts: QueryOptions): MappedQuery {
  const out = new URLSearchParams();
  const warnings: string[] = [];
  const dateFilters: DateFilter[] = [];
  const matchKeys = new Set<string>();
  const included = new Set<string>();
  let includeAll = false;
  let empty = false;
  let limit = opts.maxLimit;
  let offset = 0;
  for (const [rawKey, value] of params) {
    const key = rawKey.trim();
    if (RESERVED.has(key.toLowerCase())) {
      switch (key.toLowerCase()) {
        case 'limit': {
          if (!/^\d{1,9}$/.test(value)) throw bad('limit must be a whole number');
          const n = Number(value);
          limit = n === 0 ? opts.maxLimit : Math.min(n, opts.maxLimit); // Orthanc reads 0 as unlimited
          break;
        }
        case 'offset':
          if (!/^\d{1,9}$/.test(value)) throw bad('offset must be a whole number');
          offset = Number(value);
          break;
        case 'fuzzymatching':
          if (!/^(true|false)$/i.test(value)) throw bad('fuzzymatching must be true or false');
          if (value.toLowerCase() === 'true') warnings.push('299 deid-gateway "The fuzzymatching parameter is not supported. Only literal matching has been performed."');
          break;
        case 'includefield':
          for (const f of value.split(',')) {
            const name = f.trim();
            if (name === '') continue;
            if (name.toLowerCase() === 'all') { includeAll = true; out.append('includefield', 'all'); continue; }
            const tag = parseTag(name);
            if (tag === undefined || !dictionary().lookup(tag)) throw bad(`includefield ${name.slice(0, 64)} is not a DICOM attribute`);
            included.add(tagHex(tag));
            // Attributes the plan removes would come back empty anyway; do not ask for them.
            if (plan.lookup(tag).action.kind !== 'remove') out.append('includefield', tagHex(tag));
          }
          break;
      }
      continue;
    }
    const tag = parseTag(key);
    const entry = tag === undefined ? undefined : dictionary().lookup(tag);
    if (tag === undefined || !entry || entry.masked) throw refused(`match key ${key.slice(0, 64)} is not a DICOM attribute`);
    const name = entry.keyword ?? tagHex(tag);
    if (opts.allowedKeys && !opts.allowedKeys.has(tag)) throw refused(`match key ${name} is not among this client's allowed match keys`);
    if (matchKeys.has(tagHex(tag))) throw bad(`match key ${name} is given twice`);
    matchKeys.add(tagHex(tag));
    const action = plan.lookup(tag).action;
    if (action.kind === 'uid') {
      const originals = value.split(/[,\\]/).map((v) => v.trim()).filter(Boolean).map((v) => resolve.uid(v)).filter((v): v is string => v !== undefined);
      if (originals.length === 0) empty = true;
      else out.set(tagHex(tag), originals.join(','));
    } else if (tag === PATIENT_ID && action.kind === 'pseudonym') {
      if (/[*?]/.test(value)) throw refused('PatientID: wildcards are not allowed on a pseudonymous key');
      const original = resolve.patientId(value.trim());
      if (original === undefined) empty = true;
      else out.set(tagHex(tag), original);
    } else if (action.kind === 'shift' && entry.vr === 'DA') {
      // The client queries its own shifted time line. Original = shifted + |offset|, with
      // |offset| in [minDays, maxDays]: widen upstream by that, then match each result exactly.
      const r = parseDateRange(name, value);
      const up = `${r.from ? addDays(r.from, plan.dateShift.minDays) : ''}-${r.until ? addDays(r.until, plan.dateShift.maxDays) : ''}`;
      out.set(tagHex(tag), up);
      out.append('includefield', tagHex(tag));
      dateFilters.push({ tag: tagHex(tag), from: r.from, until: r.until });
    } else if (action.kind === 'shift') {
      throw refused(`match key ${name}: this client's dates are shifted; only DA keys (such as StudyDate) can be matched on shifted values`);
    } else if (action.kind === 'keep' && entry.vr === 'UI') {
      // UID list matching (PS3.4 C.2.2.2.2) in either form; Orthanc only understands commas.
      out.set(tagHex(tag), value.split(/[,\\]/).map((v) => v.trim()).filter(Boolean).join(','));
    } else if (action.kind === 'keep') {
      if (entry.vr === 'DA') parseDateRange(name, value);
      out.set(tagHex(tag), value);
    } else {
      throw refused(`match key ${name} is not allowed: this client's policy does not release it unchanged (${plan.lookup(tag).rule})`);
    }
  }
  return { upstream: out, empty, warnings, limit, offset, dateFilters, matchKeys, included, includeAll };
}

/** True when a de-identified result passes the shifted-date filters. */
export function passesDateFilters(filters: readonly DateFilter[], row: Readonly<Record<string, { Value?: unknown[] } | undefined>>): boolean {
  for (const f of filters) {
    const v = row[f.tag]?.Value?.[0];
    if (typeof v !== 'string' || !/^\d{8}$/.test(v)) return false;
    if (f.from !== undefined && v < f.from) return false;
    if (f.until !== undefined && v > f.until) return false;
  }
  return true;
}
