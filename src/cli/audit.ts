/**
 * `deid-gateway audit verify | query | report` (contract: verify exits 0 intact, 1 tampered).
 */
import { existsSync, writeFileSync } from 'node:fs';
import { join, resolve } from 'node:path';
import type { Config } from '../config/schema.js';
import { readTrail, parseTimeBound, type AuditEntry } from '../audit/read.js';
import { renderReport, reportData } from '../audit/report.js';
import { HEAD_FILE, auditKey, patientRef, trailFiles, verifyTrail } from '../audit/trail.js';
import { EXPORT_TRAIL } from './deid.js';
import { loadMasterSecret } from '../pseudonym/secret.js';

/**
 * The trails to read: this configuration's state.dir, and the state.dir of other replicas given
 * with --trail (replicas share the master key, so one key checks and searches them all).
 */
function trailDirs(cfg: Config, extra: readonly string[] | undefined): string[] {
  const dirs = [cfg.state.dir, ...(extra ?? []).map((d) => resolve(d))];
  for (const d of dirs.slice(1)) if (!existsSync(d)) throw new Error(`--trail ${d}: no such directory (give the state.dir of another replica)`);
  // Each state.dir's export trail (`deid-gateway deid`, its own chain) is read with it.
  // (Its head alone is enough: an export trail whose files were removed must fail verify, not vanish.)
  const hasTrail = (x: string): boolean => trailFiles(x).length > 0 || existsSync(join(x, HEAD_FILE));
  return [...new Set(dirs.flatMap((d) => (hasTrail(join(d, EXPORT_TRAIL)) ? [d, join(d, EXPORT_TRAIL)] : [d])))];
}

/** The records of several trails merged in time order, read lazily (each trail is in order already). */
function* readTrails(dirs: readonly string[]): Generator<AuditEntry> {
  const its = dirs.map((d) => readTrail(d)[Symbol.iterator]());
  const heads = its.map((it) => it.next());
  for (;;) {
    let k = -1;
    for (let i = 0; i < heads.length; i++) {
      const h = heads[i]!;
      if (!h.done && (k < 0 || (h.value.time ?? '') < ((heads[k] as IteratorYieldResult<AuditEntry>).value.time ?? ''))) k = i;
    }
    if (k < 0) return;
    yield (heads[k] as IteratorYieldResult<AuditEntry>).value;
    heads[k] = its[k]!.next();
  }
}

export async function verifyAuditCommand(cfg: Config, a: { trail?: readonly string[] | undefined } = {}): Promise<number> {
  const key = loadMasterSecret(cfg.state.dir);
  let exit = 0;
  for (const dir of trailDirs(cfg, a.trail)) {
    const r = verifyTrail(dir, key);
    if (r.ok) {
      process.stdout.write(`audit trail intact: ${r.records} record(s) in ${r.files} file(s) in ${dir}\n`);
      if (r.note) process.stdout.write(`note: ${r.note}\n`);
      continue;
    }
    const p = r.problem!;
    process.stdout.write(`audit trail TAMPERED: ${p.file} line ${p.line}${p.seq !== undefined ? ` (record ${p.seq})` : ''}: ${p.reason}\n`);
    exit = 1;
  }
  return exit;
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
  readonly trail?: readonly string[] | undefined;
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
  for (const e of readTrails(trailDirs(cfg, a.trail))) {
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
  readonly trail?: readonly string[] | undefined;
}

/** Writes the HTML report of one client; returns the exit code. */
export async function reportAuditCommand(cfg: Config, a: ReportArgs): Promise<number> {
  if (!a.client) throw new Error('--client ID is required');
  if (!a.since) throw new Error('--since is required (an ISO date, or a duration such as 30d)');
  const now = Date.now();
  const since = parseTimeBound(a.since, now);
  const until = a.until === undefined ? now + 1 : parseTimeBound(a.until, now);
  const dirs = trailDirs(cfg, a.trail);
  const key = loadMasterSecret(cfg.state.dir);
  const checks = dirs.map((d) => verifyTrail(d, key));
  const bad = checks.find((v) => !v.ok);
  const records = checks.reduce((n, v) => n + v.records, 0);
  const integrity = !bad ? { ok: true, text: `intact (${records} records verified${dirs.length > 1 ? ` in ${dirs.length} trails` : ''})` } : { ok: false, text: `TAMPERED at ${bad.problem!.file} line ${bad.problem!.line}: ${bad.problem!.reason}` };
  const opts = { client: a.client, since, until, generatedAt: now, integrity };
  const data = reportData(readTrails(dirs), opts);
  const out = a.out ?? `audit-report-${a.client}-${new Date(now).toISOString().slice(0, 10)}.html`;
  writeFileSync(out, renderReport(data, opts), { mode: 0o600 });
  process.stdout.write(`wrote ${out}: ${data.totals.requests} request(s), ${data.totals.studies} stud(y/ies), ${data.anomalies.length} anomal(y/ies)\n`);
  return 0;
}
