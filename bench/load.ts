/**
 * Load and fault benchmark (issue 7): two gateway replicas on one PostgreSQL, in front of a
 * real Orthanc, under QIDO and WADO-RS load at a fixed concurrency; one replica is SIGKILLed
 * mid-run.
 *
 *   npm run bench:load            (builds dist/ if needed)
 *   node --import tsx bench/load.ts
 *
 * Knobs: BENCH_LOAD_SECONDS (60), BENCH_LOAD_WARMUP_SECONDS (60: the same load before the
 * measured run, errors counted, not timed), BENCH_LOAD_CONCURRENCY (64), BENCH_LOAD_KILL_AT (0.5: the
 * fraction of the run after which replica B is SIGKILLed; 0 = never), BENCH_LOAD_PROBE_CLIENTS (50),
 * BENCH_LOAD_AUDIT_FILE_BYTES ("1 MiB": audit.maxFileBytes of both replicas).
 *
 * The load balancer is this process: requests alternate between the replicas; after the kill,
 * requests go to replica A only (as a load balancer's health check would do). Reported:
 *  - per route: requests, errors, p50/p99 latency (successful requests), and A's after the kill;
 *  - errors on A (target 0) and on B other than its in-flight requests at the kill (target 0);
 *    a 200 counts as a success only when its body is complete (JSON that parses as an array, a
 *    multipart that ends with its closing boundary);
 *  - B's in-flight requests at the kill, by class: clean = connection error, stream destroyed
 *    mid-body, or a problem+json; unclean = a 200 whose body is incomplete but ended normally, or
 *    any other status; completed = the response finished before the kill took effect. Target:
 *    zero unclean;
 *  - the survivor keeps serving: A's successes after the kill and the longest gap between two of
 *    its completed responses after the kill (target < 5 s);
 *  - RSS of both replicas (/proc VmRSS every 500 ms): start, peak, end; flat = in each phase of
 *    constant load (A before and after the kill, B before it) the median of the phase's last
 *    quarter is at most 20 % above the median of its second quarter (the first is warm-up);
 *  - audit: the trail (every rotated audit-*.log and audit.log; audit.maxFileBytes is 1 MiB here
 *    so that it rotates under load) on A holds exactly one request record per request sent to A
 *    (after a graceful stop), and B's holds the request id (x-request-id) of every response B
 *    completed; `audit verify` passes on both;
 *  - pseudonyms: replica B alone hands out series and instance pseudonyms that A never issued
 *    (QIDO instances on B for "probe" clients that never talk to A before the kill; pseudonyms
 *    are per client, so each first request of a client for a study issues new ones). Each one
 *    acknowledged by a completed response of B is checked after the kill: A resolves it (an
 *    instance metadata request on A naming it is 200, not 404) and its row is in deid_pseudonyms.
 * Writes bench/out/load.json.
 */
import { spawn, spawnSync } from 'node:child_process';
import { copyFileSync, mkdirSync, mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { createHash } from 'node:crypto';
import { cpus, loadavg, tmpdir } from 'node:os';
import { join } from 'node:path';
import pg from 'pg';
import { trailFiles } from '../src/audit/trail.js';
import { generateCohort } from '../test/fixtures/cohort.js';
import { generateCtSeries } from '../test/fixtures/generate.js';
import { freePort, startOrthanc } from '../test/helpers/orthanc.js';
import { postgresBin, startPostgres } from '../test/helpers/postgres.js';
import { gatewayCommand, projectRoot } from './common.js';

const SECONDS = Number(process.env.BENCH_LOAD_SECONDS ?? 60);
const CONCURRENCY = Number(process.env.BENCH_LOAD_CONCURRENCY ?? 64);
const KILL_AT = Number(process.env.BENCH_LOAD_KILL_AT ?? 0.5);
/** Load before the measured run (same routes, both replicas, errors counted): V8 grows its heap under the first minute of load, which is not growth with time. */
const WARMUP_SECONDS = Number(process.env.BENCH_LOAD_WARMUP_SECONDS ?? 60);
const TOKEN = 'bench-load-token-0123';
/** Clients that only replica B serves before the kill: their pseudonyms are B's alone. */
const PROBE_CLIENTS = Number(process.env.BENCH_LOAD_PROBE_CLIENTS ?? 50);
const probeToken = (i: number): string => `bench-probe-token-${i}-0123456789`;
const AUDIT_FILE_BYTES = process.env.BENCH_LOAD_AUDIT_FILE_BYTES ?? '1 MiB';
const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));
const root = projectRoot(import.meta.url);


interface Replica {
  name: 'A' | 'B'; url: string; metricsUrl: string; pid: number; dir: string; kill(sig: NodeJS.Signals): void; exited: Promise<number | null>;
  /** Requests sent, and the x-request-id of every response whose body was read completely. */
  sent: number; acked: Set<string>;
}

const sha = (t: string): string => createHash('sha256').update(t).digest('hex');

async function replica(name: 'A' | 'B', dir: string, upstream: string, store: string): Promise<Replica> {
  const port = await freePort();
  const metricsPort = await freePort();
  writeFileSync(join(dir, 'gateway.yaml'), [
    `server: {host: 127.0.0.1, port: ${port}}`, `upstream: {url: "${upstream}"}`, `state: {dir: ./state, store: "${store}"}`,
    `audit: {maxFileBytes: "${AUDIT_FILE_BYTES}"}`, `metrics: {host: 127.0.0.1, port: ${metricsPort}}`,
    'clients:', '  - id: load', `    apiKeySha256: "${sha(TOKEN)}"`,
    ...Array.from({ length: PROBE_CLIENTS }, (_, i) => [`  - id: probe-${i}`, `    apiKeySha256: "${sha(probeToken(i))}"`]).flat(), '',
  ].join('\n'));
  const proc = spawn(process.execPath, [...gatewayCommand(import.meta.url), 'serve', '--config', join(dir, 'gateway.yaml')], { cwd: root, stdio: ['ignore', 'ignore', 'pipe'] });
  let log = '';
  proc.stderr!.on('data', (d) => { log = (log + String(d)).slice(-4000); });
  const exited = new Promise<number | null>((r) => proc.once('exit', (c) => r(c)));
  process.once('exit', () => { try { proc.kill('SIGKILL'); } catch { /* gone */ } });
  const url = `http://127.0.0.1:${port}`;
  for (let i = 0; ; i++) {
    try { if ((await fetch(`${url}/healthz`)).ok) break; } catch { /* not yet */ }
    if (i > 300 || proc.exitCode !== null) throw new Error(`replica ${name} did not start: ${log}`);
    await sleep(100);
  }
  return { name, url, metricsUrl: `http://127.0.0.1:${metricsPort}/metrics`, pid: proc.pid!, dir, kill: (s) => proc.kill(s), exited, sent: 0, acked: new Set() };
}

function rss(pid: number): number {
  try { return Number(/VmRSS:\s+(\d+)/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'))?.[1] ?? 0) / 1024; } catch { return 0; }
}

const pct = (xs: number[], p: number): number => { const s = [...xs].sort((a, b) => a - b); return s.length ? s[Math.min(s.length - 1, Math.floor(p * s.length))]! : Number.NaN; };

/** How a request ended when it did not succeed; the first three are clean failures. */
type FailClass = 'connection-error' | 'stream-destroyed' | 'problem+json' | 'incomplete-200' | 'other-status';
const CLEAN: ReadonlySet<string> = new Set<FailClass>(['connection-error', 'stream-destroyed', 'problem+json']);
interface Outcome { ok: boolean; cls?: FailClass; status?: number; body?: Buffer; detail?: string }

const why = (e: unknown): string => {
  const c = (e as { cause?: { code?: string; message?: string } }).cause;
  return c?.code ?? c?.message ?? (e as Error)?.message ?? String(e);
};

function jsonArray(body: Buffer): Record<string, { Value?: unknown[] }>[] | undefined {
  try {
    const v: unknown = JSON.parse(body.toString('utf8'));
    return Array.isArray(v) ? v as Record<string, { Value?: unknown[] }>[] : undefined;
  } catch { return undefined; }
}

/** A multipart/related body is complete when it has a part and ends with its closing delimiter. */
function multipartComplete(type: string, body: Buffer): boolean {
  const b = /boundary="?([^";]+)"?/i.exec(type)?.[1];
  if (!b) return false;
  let end = body.length;
  if (body[end - 2] === 0x0d && body[end - 1] === 0x0a) end -= 2;
  return body.includes(`--${b}\r\n`) && body.subarray(0, end).toString('latin1').endsWith(`\r\n--${b}--`);
}

/**
 * One request, judged: a success is a 200 with a complete body. A response is acknowledged
 * (its x-request-id kept) when its body was read completely: a success or a problem+json.
 */
async function call(rep: Replica, path: string, token: string, kind: 'json' | 'multipart'): Promise<Outcome> {
  rep.sent++;
  let r: Response;
  try {
    r = await fetch(`${rep.url}${path}`, { headers: { authorization: `Bearer ${token}`, accept: kind === 'multipart' ? 'multipart/related; type="application/dicom"' : 'application/dicom+json' } });
  } catch (e) { return { ok: false, cls: 'connection-error', detail: why(e) }; }
  let body: Buffer;
  try { body = Buffer.from(await r.arrayBuffer()); } catch (e) { return { ok: false, cls: 'stream-destroyed', status: r.status, detail: why(e) }; }
  const type = r.headers.get('content-type') ?? '';
  const id = r.headers.get('x-request-id');
  if (r.status !== 200) {
    let problem = false;
    if (/^application\/problem\+json/i.test(type)) {
      try { problem = typeof (JSON.parse(body.toString('utf8')) as { status?: unknown }).status === 'number'; } catch { /* not whole */ }
    }
    if (problem && id) rep.acked.add(id);
    return { ok: false, cls: problem ? 'problem+json' : 'other-status', status: r.status, detail: `${r.status} ${type} ${body.toString('utf8', 0, 200)}` };
  }
  const complete = kind === 'multipart' ? multipartComplete(type, body) : jsonArray(body) !== undefined;
  if (!complete) return { ok: false, cls: 'incomplete-200', status: 200, detail: `${body.length} bytes of ${type}` };
  if (id) rep.acked.add(id);
  return { ok: true, status: 200, body };
}

const firstValue = (row: Record<string, { Value?: unknown[] }>, tag: string): string | undefined => {
  const v = row[tag]?.Value?.[0];
  return typeof v === 'string' ? v : undefined;
};

/** A study a probe client listed on B, with the series and instance pseudonyms B gave it. */
interface Probe { client: number; study: string; series: Map<string, string[]>; at: number }

/** V8 heap used (MiB) from the replica's Prometheus metrics (its own listener, not audited), or undefined. */
async function heapUsed(rep: Replica): Promise<number | undefined> {
  try {
    const text = await (await fetch(rep.metricsUrl, { signal: AbortSignal.timeout(2000) })).text();
    const m = /^deid_gateway_nodejs_heap_size_used_bytes\s+([\d.e+]+)/m.exec(text);
    return m ? Number(m[1]) / 1048576 : undefined;
  } catch { return undefined; }
}

function median(xs: number[]): number { return pct(xs, 0.5); }

/** Flat: the last quarter's median RSS at most 20 % above the second quarter's (the first is warm-up). */
function flatness(xs: number[]): { samples: number; secondQuarterMedianMiB: number; lastQuarterMedianMiB: number; flat: boolean } {
  const n = xs.length;
  const q2 = median(xs.slice(Math.floor(n / 4), Math.max(Math.floor(n / 2), Math.floor(n / 4) + 1)));
  const q4 = median(xs.slice(Math.floor(n * 3 / 4)));
  return { samples: n, secondQuarterMedianMiB: Math.round(q2), lastQuarterMedianMiB: Math.round(q4), flat: n >= 8 && q4 <= q2 * 1.2 };
}

function readTrail(dir: string): { files: number; records: number; ids: Set<string>; unreadableLines: number } {
  const state = join(dir, 'state');
  const files = trailFiles(state);
  let records = 0, unreadableLines = 0;
  const ids = new Set<string>();
  for (const f of files) {
    for (const line of readFileSync(join(state, f), 'utf8').split('\n')) {
      if (!line) continue;
      try {
        const r = JSON.parse(line) as { type?: string; requestId?: string };
        if (r.type === 'request') { records++; if (r.requestId) ids.add(r.requestId); }
      } catch { unreadableLines++; }
    }
  }
  return { files: files.length, records, ids, unreadableLines };
}

function verifyTrail(dir: string): { exit: number | null; output: string } {
  const r = spawnSync(process.execPath, [...gatewayCommand(import.meta.url), 'audit', 'verify', '--config', join(dir, 'gateway.yaml')], { cwd: root, encoding: 'utf8' });
  return { exit: r.status, output: `${r.stdout}${r.stderr}`.trim().slice(-300) };
}

async function main(): Promise<void> {
  if (!postgresBin()) throw new Error('bench:load needs PostgreSQL (apt-get install postgresql)');
  const loadStart = loadavg();
  console.log(`bench:load: ${SECONDS} s at concurrency ${CONCURRENCY}, SIGKILL replica B at ${KILL_AT ? `${Math.round(KILL_AT * 100)} %` : 'never'}; ${cpus().length} cores, load ${loadStart.map((x) => x.toFixed(2)).join(' ')}`);
  const pgh = await startPostgres();
  const orthanc = await startOrthanc();
  const work = mkdtempSync(join(tmpdir(), 'deid-load-'));
  const ct = await generateCtSeries(join(work, 'ct'), 40, { rows: 128, cols: 128 });
  await orthanc.upload([...generateCohort().files, ...ct.map((f) => readFileSync(f))]);
  const dirs = ['a', 'b'].map((n) => { const d = join(work, n); mkdirSync(join(d, 'state'), { recursive: true }); return d; });
  // One master key for both (a secret in production).
  writeFileSync(join(dirs[0]!, 'state', 'master.key'), `${createHash('sha256').update(`load ${Date.now()}`).digest('hex')}\n`, { mode: 0o600 });
  copyFileSync(join(dirs[0]!, 'state', 'master.key'), join(dirs[1]!, 'state', 'master.key'));
  const A = await replica('A', dirs[0]!, orthanc.dicomWebUrl, pgh.url);
  const B = await replica('B', dirs[1]!, orthanc.dicomWebUrl, pgh.url);
  const listed = await call(A, '/dicom-web/studies?limit=100', TOKEN, 'json');
  if (!listed.ok) throw new Error(`listing studies on A failed: ${listed.detail}`);
  const studies = jsonArray(listed.body!)!.map((r) => firstValue(r, '0020000D')!);
  // The probe clients list their studies on B only: their study pseudonyms are B's alone.
  const probeStudies: string[][] = [];
  for (let i = 0; i < PROBE_CLIENTS; i++) {
    const o = await call(B, '/dicom-web/studies?limit=100', probeToken(i), 'json');
    if (!o.ok) throw new Error(`probe client ${i}: listing studies on B failed: ${o.detail}`);
    probeStudies.push(jsonArray(o.body!)!.map((r) => firstValue(r, '0020000D')!));
  }
  const ROUTES = ['qido-studies', 'qido-series', 'metadata', 'retrieve', 'qido-instances'] as const;
  const pathOf = (route: typeof ROUTES[number], s: string): string => ({
    'qido-studies': '/dicom-web/studies?limit=20',
    'qido-series': `/dicom-web/studies/${s}/series`,
    'metadata': `/dicom-web/studies/${s}/metadata`,
    'retrieve': `/dicom-web/studies/${s}`,
    'qido-instances': `/dicom-web/studies/${s}/instances`,
  })[route];
  const lat = new Map<string, number[]>();
  const errs = new Map<string, number>();
  const errors = { A: 0, B: 0 }; // B: other than its requests in flight at the kill
  const errorSamples: string[] = [];
  const inFlightClasses: Record<string, number> = {};
  const latAAfterKill: number[] = [];
  const completionsAAfterKill: number[] = [];
  const acked = new Map<string, Probe>();
  let killed = false, killAt = Number.POSITIVE_INFINITY, inFlightAtKill = 0, probeSeq = 0, seq = 0;
  const inFlightB = new Set<number>();
  if (WARMUP_SECONDS > 0) {
    // Warm-up: the same load for WARMUP_SECONDS, not timed; its errors count like any other.
    const wEnd = performance.now() + WARMUP_SECONDS * 1000;
    let w = 0;
    await Promise.all(Array.from({ length: CONCURRENCY }, async () => {
      while (performance.now() < wEnd) {
        const id = w++;
        const target = (id >> 2) % 2 === 0 ? A : B;
        const route = ROUTES[id % ROUTES.length]!;
        const o = await call(target, pathOf(route, studies[id % studies.length]!), TOKEN, route === 'retrieve' ? 'multipart' : 'json');
        if (!o.ok) {
          errors[target.name]++;
          if (errorSamples.length < 20) errorSamples.push(`${target.name} ${route} (warm-up) ${o.cls}: ${o.detail}`);
        }
      }
    }));
    console.log(`  warm-up: ${w} requests in ${WARMUP_SECONDS} s at concurrency ${CONCURRENCY} (not timed; RSS is judged from here on)`);
  }
  const samples: { t: number; a: number; b: number }[] = [];
  const t0 = performance.now();
  const end = t0 + SECONDS * 1000;
  const sample = (): void => { samples.push({ t: performance.now() - t0, a: rss(A.pid), b: killed ? 0 : rss(B.pid) }); };
  sample();
  const sampler = setInterval(sample, 500);
  // Heap used, every 2 s: tells a growing heap (a leak would show here) from memory the allocator keeps.
  const heaps: { t: number; name: 'A' | 'B'; mib: number }[] = [];
  const heapSampler = setInterval(() => {
    for (const rep of killed ? [A] : [A, B]) void heapUsed(rep).then((mib) => { if (mib !== undefined) heaps.push({ t: performance.now() - t0, name: rep.name, mib }); });
  }, 2000);
  async function worker(): Promise<void> {
    while (performance.now() < end) {
      const id = seq++;
      const target = killed || (id >> 2) % 2 === 0 ? A : B; // every route goes to both replicas
      const route = ROUTES[id % ROUTES.length]!;
      let path = pathOf(route, studies[id % studies.length]!);
      let token = TOKEN;
      let probe: { client: number; study: string } | undefined;
      if (route === 'qido-instances' && target === B) {
        // A probe client's first request for a study: B issues its series and instance pseudonyms.
        const p = probeSeq++;
        const client = p % PROBE_CLIENTS;
        const list = probeStudies[client]!;
        probe = { client, study: list[Math.floor(p / PROBE_CLIENTS) % list.length]! };
        path = pathOf(route, probe.study);
        token = probeToken(client);
      }
      const started = performance.now();
      if (target === B) inFlightB.add(id);
      const o = await call(target, path, token, route === 'retrieve' ? 'multipart' : 'json');
      const done = performance.now();
      const wasInFlightAtKill = target === B && killed && inFlightB.has(id);
      inFlightB.delete(id);
      if (wasInFlightAtKill) { const k = o.ok ? 'completed' : o.cls!; inFlightClasses[k] = (inFlightClasses[k] ?? 0) + 1; }
      if (o.ok) {
        (lat.get(route) ?? lat.set(route, []).get(route)!).push(done - started);
        if (target === A && killed) { completionsAAfterKill.push(done); if (started >= killAt) latAAfterKill.push(done - started); }
        if (probe && !acked.has(`${probe.client} ${probe.study}`)) {
          const series = new Map<string, string[]>();
          for (const row of jsonArray(o.body!)!) {
            const se = firstValue(row, '0020000E'), sop = firstValue(row, '00080018');
            if (se && sop) (series.get(se) ?? series.set(se, []).get(se)!).push(sop);
          }
          acked.set(`${probe.client} ${probe.study}`, { ...probe, series, at: done });
        }
      } else {
        errs.set(route, (errs.get(route) ?? 0) + 1);
        if (!wasInFlightAtKill) {
          errors[target.name]++;
          if (errorSamples.length < 20) errorSamples.push(`${target.name} ${route} ${o.cls}: ${o.detail}`);
        }
      }
    }
  }
  const killer = KILL_AT > 0 ? (async () => {
    await sleep(SECONDS * 1000 * KILL_AT);
    inFlightAtKill = inFlightB.size;
    killed = true;
    killAt = performance.now();
    B.kill('SIGKILL');
    console.log(`  t=${((killAt - t0) / 1000).toFixed(1)} s: SIGKILL replica B with ${inFlightAtKill} request(s) in flight`);
  })() : Promise.resolve();
  await Promise.all([...Array.from({ length: CONCURRENCY }, worker), killer]);
  clearInterval(sampler);
  clearInterval(heapSampler);
  sample();
  const sent = A.sent + B.sent; // the load and the listings before it; A.sent grows with the checks below

  // Pseudonyms B acknowledged, checked after the kill. First in the table (A's own checks below
  // would write the same rows), then through A.
  const ackedUids: { client: number; uid: string }[] = [];
  for (const p of acked.values()) {
    ackedUids.push({ client: p.client, uid: p.study });
    for (const [se, sops] of p.series) { ackedUids.push({ client: p.client, uid: se }); for (const sop of sops) ackedUids.push({ client: p.client, uid: sop }); }
  }
  const db = new pg.Client({ connectionString: pgh.url });
  await db.connect();
  const rows = (await db.query<{ client_id: string; pseudonym: string }>("SELECT client_id, pseudonym FROM deid_pseudonyms WHERE kind = 'uid' AND client_id LIKE 'probe-%'")).rows;
  await db.end();
  const inTable = new Set(rows.map((r) => `${r.client_id} ${r.pseudonym}`));
  const missingInTable = ackedUids.filter((u) => !inTable.has(`probe-${u.client} ${u.uid}`)).length;
  const checks: { client: number; path: string }[] = [];
  for (const p of acked.values()) for (const [se, sops] of p.series) for (const sop of sops) checks.push({ client: p.client, path: `/dicom-web/studies/${p.study}/series/${se}/instances/${sop}/metadata` });
  const checkStatus: Record<string, number> = {};
  let next = 0;
  await Promise.all(Array.from({ length: 16 }, async () => {
    while (next < checks.length) {
      const c = checks[next++]!;
      const o = await call(A, c.path, probeToken(c.client), 'json');
      const k = o.ok ? '200' : String(o.status ?? o.cls);
      checkStatus[k] = (checkStatus[k] ?? 0) + 1;
    }
  }));
  const resolvedOnA = checkStatus['200'] ?? 0;
  const ackedLast2s = [...acked.values()].filter((p) => p.at <= killAt && p.at > killAt - 2000).length;

  A.kill('SIGTERM');
  if (!killed) B.kill('SIGTERM');
  await A.exited;
  await B.exited;
  const trailA = readTrail(dirs[0]!), trailB = readTrail(dirs[1]!);
  const verifyA = verifyTrail(dirs[0]!), verifyB = verifyTrail(dirs[1]!);
  const notInTrailA = [...A.acked].filter((id) => !trailA.ids.has(id)).length;
  const notInTrailB = [...B.acked].filter((id) => !trailB.ids.has(id)).length;

  const killRel = killAt - t0;
  const memory = (xs: number[]): { startMiB: number; peakMiB: number; endMiB: number } =>
    ({ startMiB: Math.round(xs[0] ?? 0), peakMiB: Math.round(Math.max(...xs)), endMiB: Math.round(xs.at(-1) ?? 0) });
  const aAll = samples.map((x) => x.a).filter((x) => x > 0);
  const bAll = samples.filter((x) => x.t < killRel).map((x) => x.b).filter((x) => x > 0);
  const rssPhases = {
    aBeforeKill: flatness(samples.filter((x) => x.t < killRel).map((x) => x.a)),
    ...(killed ? { aAfterKill: flatness(samples.filter((x) => x.t >= killRel).map((x) => x.a)) } : {}),
    bBeforeKill: flatness(bAll),
  };
  // Reported, not judged: the same quarters of the heap used (V8), per phase.
  const heapOf = (name: 'A' | 'B', after: boolean): number[] => heaps.filter((h) => h.name === name && (after ? h.t >= killRel : h.t < killRel)).map((h) => h.mib);
  const heapPhases = {
    aBeforeKill: flatness(heapOf('A', false)),
    ...(killed ? { aAfterKill: flatness(heapOf('A', true)) } : {}),
    bBeforeKill: flatness(heapOf('B', false)),
  };
  const flat = Object.values(rssPhases).every((p) => p.flat);
  const points = [killAt, ...completionsAAfterKill.sort((x, y) => x - y)];
  let maxGap = 0;
  for (let i = 1; i < points.length; i++) maxGap = Math.max(maxGap, points[i]! - points[i - 1]!);
  if (killed) maxGap = Math.max(maxGap, end - (points.at(-1) ?? killAt));
  const unclean = Object.entries(inFlightClasses).filter(([k]) => k !== 'completed' && !CLEAN.has(k)).reduce((n, [, v]) => n + v, 0);
  const rowsOut = [...ROUTES].map((r) => ({ route: r, ok: lat.get(r)?.length ?? 0, errors: errs.get(r) ?? 0, p50: median(lat.get(r) ?? []), p99: pct(lat.get(r) ?? [], 0.99) }));
  console.log('\n| route | ok | errors | p50 ms | p99 ms |\n|---|---:|---:|---:|---:|');
  for (const r of rowsOut) console.log(`| ${r.route} | ${r.ok} | ${r.errors} | ${r.p50.toFixed(1)} | ${r.p99.toFixed(1)} |`);
  const verdicts = {
    requests: { sent, toA: A.sent, toB: B.sent, perSecond: Math.round(sent / SECONDS) },
    errorsOnA: errors.A, errorsOnBOtherThanInFlightAtKill: errors.B, errorSamples,
    inFlightAtKill, inFlightByClass: inFlightClasses, uncleanInFlight: unclean,
    survivor: killed ? { okAfterKill: completionsAAfterKill.length, p50AfterKill: median(latAAfterKill), p99AfterKill: pct(latAAfterKill, 0.99), maxGapMs: Math.round(maxGap) } : undefined,
    pseudonyms: {
      probeStudiesAcknowledgedByB: acked.size, acknowledgedInLast2sBeforeKill: ackedLast2s, uidsAcknowledged: ackedUids.length,
      missingInDeidPseudonyms: missingInTable, instanceChecksOnA: checks.length, checkStatusOnA: checkStatus, resolvedOnA,
    },
    audit: {
      A: { files: trailA.files, requestRecords: trailA.records, requests: A.sent, equal: trailA.records === A.sent, responsesNotInTrail: notInTrailA, unreadableLines: trailA.unreadableLines, verifyExit: verifyA.exit },
      B: { files: trailB.files, requestRecords: trailB.records, requestsSent: B.sent, acknowledgedResponses: B.acked.size, acknowledgedNotInTrail: notInTrailB, unreadableLines: trailB.unreadableLines, verifyExit: verifyB.exit },
    },
    rss: { A: memory(aAll), B: memory(bAll), phases: rssPhases, flat },
    heapUsed: heapPhases,
  };
  console.log(`\nsent ${sent} requests in ${SECONDS} s (${(sent / SECONDS).toFixed(0)}/s)`);
  console.log(JSON.stringify(verdicts, null, 2));
  if (verifyA.exit !== 0) console.log(`audit verify A: ${verifyA.output}`);
  if (verifyB.exit !== 0) console.log(`audit verify B: ${verifyB.output}`);
  const okAll = errors.A === 0 && errors.B === 0 && unclean === 0
    && (!killed || (completionsAAfterKill.length > 0 && maxGap < 5000))
    && acked.size > 0 && missingInTable === 0 && resolvedOnA === checks.length
    && trailA.records === A.sent && notInTrailA === 0 && notInTrailB === 0 && trailB.records <= B.sent
    && verifyA.exit === 0 && verifyB.exit === 0 && flat;
  const loadEnd = loadavg();
  console.log(`load average at the end: ${loadEnd.map((x) => x.toFixed(2)).join(' ')}`);
  console.log(okAll ? 'verdict: MET (no errors outside the killed replica\'s in-flight requests, all of which failed cleanly; the survivor kept serving; every acknowledged pseudonym and audit record survived; RSS flat)' : 'verdict: MISSED (see figures)');
  mkdirSync(join(root, 'bench/out'), { recursive: true });
  writeFileSync(join(root, 'bench/out/load.json'), JSON.stringify({ seconds: SECONDS, concurrency: CONCURRENCY, killAt: KILL_AT, routes: rowsOut, ...verdicts, met: okAll,
    rssEvery5s: samples.filter((_, i) => i % 10 === 0).map((x) => ({ s: Math.round(x.t / 1000), A: Math.round(x.a), B: Math.round(x.b) })), loadavg: { start: loadStart, end: loadEnd } }, null, 2));
  await orthanc.stop();
  pgh.stop();
  spawnSync('rm', ['-rf', work]);
}

await main();
