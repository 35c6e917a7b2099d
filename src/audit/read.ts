/**
 * Reading the audit trail for reviewers (`audit query`, `audit report`): every record of every
 * file in chain order, filtered. Reading never modifies the trail.
 */
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { trailFiles } from './trail.js';

export interface AuditEntry {
  readonly type: 'request' | 'study' | 'checkpoint' | 'continue' | 'resume' | string;
  readonly seq: number;
  readonly time: string;
  readonly requestId?: string;
  readonly client?: string | null;
  readonly method?: string;
  readonly route?: string;
  readonly status?: number;
  readonly outcome?: string;
  readonly code?: string;
  readonly reason?: string;
  readonly bytes?: number;
  readonly durationMs?: number;
  readonly instances?: number;
  readonly withheld?: number;
  readonly withheldBy?: Readonly<Record<string, number>>;
  readonly outOfScope?: number;
  readonly results?: number;
  readonly query?: { readonly level: string; readonly keys: readonly string[]; readonly wildcard: boolean };
  readonly studies?: number;
  readonly study?: string;
  readonly pseudonymous?: string;
  readonly patientRef?: string;
  readonly policyHash?: string | null;
}

/** Every record, oldest first; lines that do not parse are skipped (`audit verify` reports them). */
export function* readTrail(dir: string): Generator<AuditEntry> {
  for (const file of trailFiles(dir)) {
    for (const line of readFileSync(join(dir, file), 'utf8').split('\n')) {
      if (!line) continue;
      try {
        yield JSON.parse(line) as AuditEntry;
      } catch { /* skipped */ }
    }
  }
}

/** A time bound: ISO date or date-time, or a duration back from now (30m, 24h, 7d). */
export function parseTimeBound(v: string, now = Date.now()): number {
  const rel = /^(\d+)\s*([mhd])$/.exec(v.trim());
  if (rel) return now - Number(rel[1]) * { m: 60_000, h: 3_600_000, d: 86_400_000 }[rel[2] as 'm' | 'h' | 'd'];
  const t = Date.parse(/^\d{4}-\d{2}-\d{2}$/.test(v.trim()) ? `${v.trim()}T00:00:00Z` : v.trim());
  if (Number.isNaN(t)) throw new Error(`"${v}" is not a time; use an ISO date (2026-11-01), a date-time, or a duration such as 24h or 7d`);
  return t;
}
