/**
 * QIDO-RS query rules (PS3.18 8.3.4; issue 3 and 4). A match key reaches the PACS only when
 * the client's plan releases that attribute unchanged, or when the gateway can map the
 * client's value back (pseudonymous UIDs and Patient IDs). Anything else — unknown keys, and
 * identifying keys such as PatientName, PatientBirthDate or AccessionNumber, which would be
 * re-identification oracles — is refused with 400 naming the key. Orthanc ignores unknown
 * keys silently and matches nothing for backslash UID lists, so keys are resolved here and
 * UID lists are always sent comma-separated.
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

export interface MappedQuery {
  /** Parameters for the PACS. */
  readonly upstream: URLSearchParams;
  /** True when a mapped key matched nothing this client knows: answer [] without asking. */
  readonly empty: boolean;
  /** Warning header values for the client (PS3.18 8.3.4.4: fuzzy matching not supported). */
  readonly warnings: readonly string[];
}

const RESERVED = new Set(['limit', 'offset', 'fuzzymatching', 'includefield']);
const PATIENT_ID = 0x00100020;

function bad(message: string): GatewayError {
  return new GatewayError('BAD_QUERY', message);
}

export function mapQuery(params: URLSearchParams, plan: CompiledPlan, resolve: QueryResolver, maxLimit: number): MappedQuery {
  const out = new URLSearchParams();
  const warnings: string[] = [];
  let empty = false;
  let limit = maxLimit;
  for (const [rawKey, value] of params) {
    const key = rawKey.trim();
    if (RESERVED.has(key.toLowerCase())) {
      switch (key.toLowerCase()) {
        case 'limit': {
          if (!/^\d{1,9}$/.test(value)) throw bad('limit must be a whole number');
          const n = Number(value);
          limit = n === 0 ? maxLimit : Math.min(n, maxLimit); // Orthanc reads 0 as unlimited
          break;
        }
        case 'offset':
          if (!/^\d{1,9}$/.test(value)) throw bad('offset must be a whole number');
          out.set('offset', value);
          break;
        case 'fuzzymatching':
          if (!/^(true|false)$/i.test(value)) throw bad('fuzzymatching must be true or false');
          if (value.toLowerCase() === 'true') warnings.push('299 deid-gateway "The fuzzymatching parameter is not supported. Only literal matching has been performed."');
          break;
        case 'includefield':
          for (const f of value.split(',')) {
            const name = f.trim();
            if (name === '') continue;
            if (name.toLowerCase() === 'all') { out.append('includefield', 'all'); continue; }
            const tag = parseTag(name);
            if (tag === undefined || !dictionary().lookup(tag)) throw bad(`includefield ${name.slice(0, 64)} is not a DICOM attribute`);
            // Attributes the plan removes would come back empty anyway; do not ask for them.
            if (plan.lookup(tag).action.kind !== 'remove') out.append('includefield', tagHex(tag));
          }
          break;
      }
      continue;
    }
    const tag = parseTag(key);
    const entry = tag === undefined ? undefined : dictionary().lookup(tag);
    if (tag === undefined || !entry || entry.masked) throw bad(`match key ${key.slice(0, 64)} is not a DICOM attribute`);
    const action = plan.lookup(tag).action;
    const name = entry.keyword ?? tagHex(tag);
    if (action.kind === 'uid') {
      const originals = value.split(/[,\\]/).map((v) => v.trim()).filter(Boolean).map((v) => resolve.uid(v)).filter((v): v is string => v !== undefined);
      if (originals.length === 0) empty = true;
      else out.set(tagHex(tag), originals.join(','));
    } else if (tag === PATIENT_ID && action.kind === 'pseudonym') {
      if (/[*?]/.test(value)) throw bad('PatientID: wildcards are not allowed on a pseudonymous key');
      const original = resolve.patientId(value.trim());
      if (original === undefined) empty = true;
      else out.set(tagHex(tag), original);
    } else if (action.kind === 'keep') {
      out.set(tagHex(tag), value);
    } else {
      throw bad(`match key ${name} is not allowed: this client's policy does not release it unchanged (${plan.lookup(tag).rule})`);
    }
  }
  out.set('limit', String(limit));
  return { upstream: out, empty, warnings };
}
