/**
 * Load and fault benchmark (issue 7): two gateway replicas on one PostgreSQL, in front of a
 * real Orthanc, under QIDO and WADO-RS load at a fixed concurrency; one replica is SIGKILLed
 * mid-run.
 *
 *   npm run bench:load            (builds dist/ if needed)
 *   node --import tsx bench/load.ts
 *
 * Knobs: BENCH_LOAD_SECONDS (60), BENCH_LOAD_CONCURRENCY (64), BENCH_LOAD_KILL_AT (0.5: the
 * fraction of the run after which replica B is SIGKILLed; 0 = never).
 *
 * The load balancer is this process: requests alternate between the replicas; after the kill,
 * requests go to replica A only (as a load balancer's health check would do). Reported:
 *  - per route: requests, errors, p50/p99 latency;
 *  - errors before the kill (target 0), errors after it that were not in flight at B
 *    (target 0), and B's in-flight requests at the kill: each must have failed cleanly
 *    (a connection error or a problem+json, never a truncated 200 that parses as complete);
 * *  - replica A's RSS, sampled (flat: the last quarter's median within 20 % of the median soon after the kill, under the same load);
 *  - audit records == requests on A (after a graceful stop); on B, records ≥ responses it
 *    completed (a SIGKILL loses at most the requests in flight);
 *  - pseudonyms: every study UID B handed out before the kill resolves on A afterwards.
 * Writes bench/out/load.json.
 */
import { spawn, spawnSync } from 'node:child_process';
import { copyFileSync, existsSync, mkdirSync, mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { createHash } from 'node:crypto';
import { cpus, loadavg, tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { generateCohort } from '../test/fixtures/cohort.js';
import { generateCtSeries } from '../test/fixtures/generate.js';
import { freePort, startOrthanc } from '../test/helpers/orthanc.js';
import { postgresBin, startPostgres } from '../test/helpers/postgres.js';
import { projectRoot } from './common.js';

const SECONDS = Number(process.env.BENCH_LOAD_SECONDS ?? 60);
const CONCURRENCY = Number(process.env.BENCH_LOAD_CONCURRENCY ?? 64);
const KILL_AT = Number(process.env.BENCH_LOAD_KILL_AT ?? 0.5);
const TOKEN = 'bench-load-token-0123';
const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));
const root = projectRoot(import.meta.url);

function command(): string[] {
  const compiled = fileURLToPath(new URL('../src/cli/main.js', import.meta.url));
  if (import.meta.url.endsWith('.js') && existsSync(compiled)) return [compiled];
  return ['--import', 'tsx', join(root, 'src/cli/main.ts')];
}

interface Replica { name: string; url: string; pid: number; dir: string; kill(sig: NodeJS.Signals): void; exited: Promise<number | null> }

async function replica(name: string, dir: string, upstream: string, store: string): Promise<Replica> {
  const port = await freePort();
  writeFileSync(join(dir, 'gateway.yaml'), [
    `server: {host: 127.0.0.1, port: ${port}}`, `upstream: {url: "${upstream}"}`, `state: {dir: ./state, store: "${store}"}`,
    'clients:', '  - id: load', `    apiKeySha256: "${createHash('sha256').update(TOKEN).digest('hex')}"`, '',
  ].join('\n'));
  const proc = spawn(process.execPath, [...command(), 'serve', '--config', join(dir, 'gateway.yaml')], { cwd: root, stdio: ['ignore', 'ignore', 'pipe'] });
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
  return { name, url, pid: proc.pid!, dir, kill: (s) => proc.kill(s), exited };
}

function rss(pid: number): number {
  try { return Number(/VmRSS:\s+(\d+)/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'))?.[1] ?? 0) / 1024; } catch { return 0; }
}

const pct = (xs: number[], p: number): number => { const s = [...xs].sort((a, b) => a - b); return s.length ? s[Math.min(s.length - 1, Math.floor(p * s.length))]! : Number.NaN; };

async function main(): Promise<void> {
  if (!postgresBin()) throw new Error('bench:load needs PostgreSQL (apt-get install postgresql)');
  console.log(`bench:load: ${SECONDS} s at concurrency ${CONCURRENCY}, SIGKILL replica B at ${KILL_AT ? `${Math.round(KILL_AT * 100)} %` : 'never'}; ${cpus().length} cores, load ${loadavg().map((x) => x.toFixed(2)).join(' ')}`);
  const pg = await startPostgres();
  const orthanc = await startOrthanc();
  const work = mkdtempSync(join(tmpdir(), 'deid-load-'));
  const ct = await generateCtSeries(join(work, 'ct'), 40, { rows: 128, cols: 128 });
  await orthanc.upload([...generateCohort().files, ...ct.map((f) => readFileSync(f))]);
  const dirs = ['a', 'b'].map((n) => { const d = join(work, n); mkdirSync(join(d, 'state'), { recursive: true }); return d; });
  // One master key for both (a secret in production).
  writeFileSync(join(dirs[0]!, 'state', 'master.key'), `${createHash('sha256').update(`load ${Date.now()}`).digest('hex')}\n`, { mode: 0o600 });
  copyFileSync(join(dirs[0]!, 'state', 'master.key'), join(dirs[1]!, 'state', 'master.key'));
  const A = await replica('A', dirs[0]!, orthanc.dicomWebUrl, pg.url);
  const B = await replica('B', dirs[1]!, orthanc.dicomWebUrl, pg.url);
  const auth = { authorization: `Bearer ${TOKEN}` };
  const studies = (await (await fetch(`${A.url}/dicom-web/studies?limit=100`, { headers: auth })).json() as Record<string, { Value: string[] }>[]).map((r) => r['0020000D']!.Value[0]!);
  const routes = [
    (_s: string) => ['qido-studies', '/dicom-web/studies?limit=20'],
    (s: string) => ['qido-series', `/dicom-web/studies/${s}/series`],
    (s: string) => ['metadata', `/dicom-web/studies/${s}/metadata`],
    (s: string) => ['retrieve', `/dicom-web/studies/${s}`],
  ] as const;
  const lat = new Map<string, number[]>();
  const errs = new Map<string, number>();
  let before = 0, afterErrors = 0, inFlightAtKill = 0, inFlightFailedCleanly = 0, sent = 0;
  const fromB = new Set<string>();
  let killed = false;
  const counts = { A: 0, B: 0, Bcompleted: 0 };
  const inFlightB = new Set<number>();
  const rssA: number[] = [];
  const t0 = performance.now();
  const end = t0 + SECONDS * 1000;
  const sampler = setInterval(() => rssA.push(rss(A.pid)), 500);
  let seq = 0;
  async function worker(): Promise<void> {
    while (performance.now() < end) {
      const id = seq++;
      const target = killed || (id >> 2) % 2 === 0 ? A : B; // every route goes to both replicas
      const [route, path] = routes[id % routes.length]!(studies[id % studies.length]!) as [string, string];
      const started = performance.now();
      if (target === B) inFlightB.add(id);
      counts[target.name as 'A' | 'B']++;
      sent++;
      let ok = false;
      try {
        const r = await fetch(`${target.url}${path}`, { headers: { ...auth, accept: route === 'retrieve' ? 'multipart/related; type="application/dicom"' : 'application/dicom+json' } });
        const body = Buffer.from(await r.arrayBuffer());
        ok = r.status === 200 && (route === 'retrieve' ? body.includes(Buffer.from('--\r\n')) || body.toString('latin1').trimEnd().endsWith('--') : body.toString().trim().endsWith(']'));
        if (ok && target === B && route === 'qido-studies') for (const m of body.toString().matchAll(/"0020000D"[^\]]*?"(2\.25\.\d+)"/g)) fromB.add(m[1]!);
        if (ok && target === B) counts.Bcompleted++;
      } catch { ok = false; }
      const wasInFlightAtKill = target === B && killed && inFlightB.has(id);
      inFlightB.delete(id);
      if (ok) (lat.get(route) ?? lat.set(route, []).get(route)!).push(performance.now() - started);
      else {
        errs.set(route, (errs.get(route) ?? 0) + 1);
        if (wasInFlightAtKill) inFlightFailedCleanly++;
        else if (killed) afterErrors++;
        else before++;
      }
    }
  }
  const killer = KILL_AT > 0 ? (async () => {
    await sleep(SECONDS * 1000 * KILL_AT);
    inFlightAtKill = inFlightB.size;
    killed = true;
    B.kill('SIGKILL');
    console.log(`  t=${((performance.now() - t0) / 1000).toFixed(1)} s: SIGKILL replica B with ${inFlightAtKill} request(s) in flight`);
  })() : Promise.resolve();
  await Promise.all([...Array.from({ length: CONCURRENCY }, worker), killer]);
  clearInterval(sampler);
  // Pseudonyms B handed out resolve on A.
  let unresolved = 0;
  const checks = [...fromB].slice(0, 200);
  for (const u of checks) {
    const r = await fetch(`${A.url}/dicom-web/studies/${u}/series`, { headers: auth });
    await r.arrayBuffer();
    if (r.status !== 200) unresolved++;
  }
  A.kill('SIGTERM');
  await A.exited;
  await B.exited;
  const recs = (d: string): number => readFileSync(join(d, 'state', 'audit.log'), 'utf8').split('\n').filter((l) => l.includes('"type":"request"')).length;
  const auditA = recs(dirs[0]!);
  const auditB = recs(dirs[1]!);
  const q = (xs: number[]): number => pct(xs, 0.5);
  // Flat: compared under the same load. With a kill, A carries everything afterwards, so the
  // window just after the kill (once it settled) is compared with the last quarter.
  const k = KILL_AT > 0 ? KILL_AT : 0.25;
  const second = rssA.slice(Math.floor(rssA.length * (k + (1 - k) * 0.15)), Math.floor(rssA.length * (k + (1 - k) * 0.35)));
  const last = rssA.slice(Math.floor(rssA.length * 3 / 4));
  const flat = q(last) <= q(second) * 1.2;
  const rows = [...lat.keys()].map((r) => ({ route: r, ok: lat.get(r)!.length, errors: errs.get(r) ?? 0, p50: q(lat.get(r)!), p99: pct(lat.get(r)!, 0.99) }));
  console.log('\n| route | ok | errors | p50 ms | p99 ms |\n|---|---:|---:|---:|---:|');
  for (const r of rows) console.log(`| ${r.route} | ${r.ok} | ${r.errors} | ${r.p50.toFixed(1)} | ${r.p99.toFixed(1)} |`);
  const verdicts = {
    errorsBeforeKill: before, errorsAfterKillNotInFlight: afterErrors, inFlightAtKill, inFlightFailedCleanly,
    auditA: { records: auditA, requests: counts.A + checks.length + 1 /* the load, the pseudonym checks, the first list */, equal: auditA === counts.A + checks.length + 1 },
    auditB: { records: auditB, completedResponses: counts.Bcompleted },
    pseudonymsFromB: fromB.size, unresolvedOnA: unresolved,
    rssA: { settledMedianMiB: q(second), lastQuarterMedianMiB: q(last), maxMiB: Math.max(...rssA), flat },
  };
  console.log(`\nsent ${sent} requests in ${SECONDS} s (${(sent / SECONDS).toFixed(0)}/s)`);
  console.log(JSON.stringify(verdicts, null, 2));
  const okAll = before === 0 && afterErrors === 0 && unresolved === 0 && flat && auditB >= counts.Bcompleted && auditA === counts.A + checks.length + 1;
  console.log(okAll ? 'verdict: MET (no errors outside the killed replica\'s in-flight requests; nothing acknowledged lost; RSS flat)' : 'verdict: MISSED (see figures)');
  mkdirSync(join(root, 'bench/out'), { recursive: true });
  writeFileSync(join(root, 'bench/out/load.json'), JSON.stringify({ seconds: SECONDS, concurrency: CONCURRENCY, routes: rows, ...verdicts, loadavg: loadavg() }, null, 2));
  await orthanc.stop();
  pg.stop();
  spawnSync('rm', ['-rf', work]);
}

await main();
