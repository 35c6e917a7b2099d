/**
 * `deid-gateway audit verify | query | report` (contract: verify exits 0 intact, 1 tampered).
 */
import { writeFileSync } from 'node:fs';
import type { Config } from '../config/schema.js';
import { readTrail, parseTimeBound, type AuditEntry } from '../audit/read.js';
import { renderReport, reportData } from '../audit/report.js';
import { auditKey, patientRef, verifyTrail } from '../audit/trail.js';
import { loadMasterSecret } from '../pseudonym/secret.js';

export async function verifyAuditCommand(cfg: Config): Promise<number> {
  const r = verifyTrail(cfg.state.dir, loadMasterSecret(cfg.state.dir));
  if (r.ok) {
    process.stdout.write(`audit trail intact: ${r.records} record(s) in ${r.files} file(s) in ${cfg.state.dir}\n`);
    if (r.note) process.stdout.write(`note: ${r.note}\n`);
    return 0;
  }
  const p = r.problem!;
  process.stdout.write(`audit trail TAMPERED: ${p.file} line ${p.line}${p.seq !== undefined ? ` (record ${p.seq})` : ''}: ${p.reason}\n`);
  return 1;
}

export interface QueryArgs {
  readonly client?: string | undefined;
  readonly since?: string | undefined;
  readonly until?: string | undefined;
  readonly study?: string | undefined;
  readonly patient?: string | undefined;
  readonly outcome?: string | undefined;
  readonly type?: string | undefined;
  readonly format?: string | undefined;
}

const COLUMNS: Record<'request' | 'study', (keyof AuditEntry)[]> = {
  request: ['time', 'requestId', 'client', 'route', 'status', 'outcome', 'code', 'reason', 'instances', 'bytes', 'studies'],
  study: ['time', 'requestId', 'client', 'route', 'outcome', 'study', 'pseudonymous', 'patientRef', 'instances'],
};

function cell(v: unknown): string {
  return v === undefined || v === null ? '' : typeof v === 'object' ? JSON.stringify(v) : String(v);
}

function csv(v: string): string {
  return /[",\n]/.test(v) ? `"${v.replace(/"/g, '""')}"` : v;
}

/** Prints matching records as a table, JSON lines or CSV; returns the exit code. */
export async function queryAuditCommand(cfg: Config, a: QueryArgs): Promise<number> {
  const outcomes = new Set(['ok', 'denied', 'failed', 'aborted']);
  if (a.outcome && !outcomes.has(a.outcome)) throw new Error(`--outcome must be one of ${[...outcomes].join(', ')}`);
  const format = a.format ?? 'table';
  if (!['table', 'json', 'csv'].includes(format)) throw new Error('--format must be table, json or csv');
  const type = (a.type ?? (a.study || a.patient ? 'study' : 'request')) as 'request' | 'study';
  if (type !== 'request' && type !== 'study') throw new Error('--type must be request or study');
  if (type === 'request' && (a.study || a.patient)) throw new Error('--study and --patient select study records; leave out --type or use --type study');
  const since = a.since === undefined ? -Infinity : parseTimeBound(a.since);
  const until = a.until === undefined ? Infinity : parseTimeBound(a.until);
  const ref = a.patient === undefined ? undefined : patientRef(auditKey(loadMasterSecret(cfg.state.dir)), a.patient);
  const rows: AuditEntry[] = [];
  for (const e of readTrail(cfg.state.dir)) {
    if (e.type !== type) continue;
    const t = Date.parse(e.time);
    if (!(t >= since && t < until)) continue;
    if (a.client !== undefined && e.client !== a.client) continue;
    if (a.outcome !== undefined && e.outcome !== a.outcome) continue;
    if (a.study !== undefined && e.study !== a.study) continue;
    if (ref !== undefined && e.patientRef !== ref) continue;
    rows.push(e);
  }
  const cols = COLUMNS[type];
  if (format === 'json') {
    for (const r of rows) process.stdout.write(`${JSON.stringify(r)}\n`);
  } else if (format === 'csv') {
    process.stdout.write(`${cols.join(',')}\n`);
    for (const r of rows) process.stdout.write(`${cols.map((c) => csv(cell(r[c]))).join(',')}\n`);
  } else {
    const table = [cols.map(String), ...rows.map((r) => cols.map((c) => cell(r[c])))];
    const widths = cols.map((_, i) => Math.max(...table.map((row) => row[i]!.length)));
    for (const row of table) process.stdout.write(`${row.map((v, i) => v.padEnd(widths[i]!)).join('  ').trimEnd()}\n`);
    process.stderr.write(`${rows.length} ${type} record(s)\n`);
  }
  return 0;
}

export interface ReportArgs {
  readonly client?: string | undefined;
  readonly since?: string | undefined;
  readonly until?: string | undefined;
  readonly out?: string | undefined;
}

/** Writes the HTML report of one client; returns the exit code. */
export async function reportAuditCommand(cfg: Config, a: ReportArgs): Promise<number> {
  if (!a.client) throw new Error('--client ID is required');
  if (!a.since) throw new Error('--since is required (an ISO date, or a duration such as 30d)');
  const now = Date.now();
  const since = parseTimeBound(a.since, now);
  const until = a.until === undefined ? now + 1 : parseTimeBound(a.until, now);
  const v = verifyTrail(cfg.state.dir, loadMasterSecret(cfg.state.dir));
  const integrity = v.ok ? { ok: true, text: `intact (${v.records} records verified)` } : { ok: false, text: `TAMPERED at ${v.problem!.file} line ${v.problem!.line}: ${v.problem!.reason}` };
  const opts = { client: a.client, since, until, generatedAt: now, integrity };
  const data = reportData(readTrail(cfg.state.dir), opts);
  const out = a.out ?? `audit-report-${a.client}-${new Date(now).toISOString().slice(0, 10)}.html`;
  writeFileSync(out, renderReport(data, opts), { mode: 0o600 });
  process.stdout.write(`wrote ${out}: ${data.totals.requests} request(s), ${data.totals.studies} stud(y/ies), ${data.anomalies.length} anomal(y/ies)\n`);
  return 0;
}
