/**
 * Offline export benchmark (issue 14): `deid-gateway deid` on a folder of CT files, against
 * gdcmanon (GDCM's PS3.15 E.1.1 de-identifier, Debian `libgdcm-tools`) and a plain copy of the
 * folder (`cp -r`, the floor of reading and writing the bytes), in one run on this machine.
 *
 *   npm run bench:offline
 *   BENCH_OFFLINE_FILES=600 BENCH_RUNS=3 npm run bench:offline
 *
 * The files are generated (512 x 512 x 16-bit CT with a realistic header and planted PHI).
 * Each tool runs BENCH_RUNS times, alternating, into a fresh output folder; the medians of wall
 * time and of CPU (user + system of the child and its threads) are compared. gdcmanon -e
 * encrypts the original attributes into each file with a self-signed certificate made here
 * (openssl). Writes bench/out/offline.json. The deid command uses the default worker count
 * (BENCH_OFFLINE_JOBS sets `--jobs`). BENCH_OFFLINE_BASELINE names another build's
 * dist/src/cli/main.js, run alongside (a before/after in one run).
 */
import { spawn, spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, readdirSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { createHash } from 'node:crypto';
import { cpus, loadavg, tmpdir } from 'node:os';
import { join } from 'node:path';
import { generateCtSeries } from '../test/fixtures/generate.js';
import { gatewayCommand, projectRoot } from './common.js';

const FILES = Number(process.env.BENCH_OFFLINE_FILES ?? '600') || 600;
const RUNS = Number(process.env.BENCH_RUNS ?? '3') || 3;
const JOBS = process.env.BENCH_OFFLINE_JOBS;
const BASELINE = process.env.BENCH_OFFLINE_BASELINE;
/** Pause after each deleted output folder, ms (BENCH_OFFLINE_SETTLE_MS). */
const SETTLE_MS = Number(process.env.BENCH_OFFLINE_SETTLE_MS ?? '6000');
const TARGET = 1.0;

const med = (xs: readonly number[]): number => { const s = [...xs].sort((a, b) => a - b); return s[Math.floor(s.length / 2)]!; };

/** Runs a command; wall time and the CPU of the child (and its threads), from wait4's rusage via /usr/bin/time. */
async function timed(cmd: string, args: string[], cwd: string): Promise<{ ms: number; cpuMs: number; code: number; stderr: string }> {
  const t0 = performance.now();
  const timeFile = join(cwd, `.time-${process.pid}`);
  const useTime = existsSync('/usr/bin/time');
  const child = useTime ? spawn('/usr/bin/time', ['-f', '%U %S', '-o', timeFile, cmd, ...args], { cwd, stdio: ['ignore', 'ignore', 'pipe'] }) : spawn(cmd, args, { cwd, stdio: ['ignore', 'ignore', 'pipe'] });
  let stderr = '';
  child.stderr.on('data', (c: Buffer) => { if (stderr.length < 100_000) stderr += c.toString(); });
  const code = await new Promise<number>((resolve) => child.on('close', (c) => resolve(c ?? -1)));
  const ms = performance.now() - t0;
  let cpuMs = Number.NaN;
  if (useTime && existsSync(timeFile)) {
    const [u, s] = (await import('node:fs')).readFileSync(timeFile, 'utf8').trim().split('\n').at(-1)!.split(' ').map(Number);
    cpuMs = ((u ?? 0) + (s ?? 0)) * 1000;
    rmSync(timeFile);
  }
  return { ms, cpuMs, code, stderr };
}

function countFiles(dir: string): number {
  let n = 0;
  for (const e of readdirSync(dir, { withFileTypes: true })) n += e.isDirectory() ? countFiles(join(dir, e.name)) : e.name.startsWith('.') ? 0 : 1;
  return n;
}

/**
 * After an output folder is deleted: the deletion flushed (`sync`) and a pause, so that the next
 * tool does not run while the disk is still freeing (and, mounted with `discard`, trimming) the
 * last one's 322 MB. Without it, the face pass's header reads of the next run took 290 ms
 * instead of 31 in a CPU profile; with 2 s, `cp -r` still took 724–1141 ms; with 6 s, 536–601
 * ms, as on a quiet disk.
 */
async function settle(): Promise<void> {
  spawnSync('sync');
  await new Promise((resolve) => setTimeout(resolve, SETTLE_MS));
}

async function main(): Promise<void> {
  const root = projectRoot(import.meta.url);
  const work = mkdtempSync(join(tmpdir(), 'bench-offline-'));
  console.log(`offline export benchmark: ${FILES} CT files, ${RUNS} runs each, alternating; ${cpus().length} CPUs, load average ${loadavg().map((x) => x.toFixed(2)).join(' ')}`);
  try {
    const input = join(work, 'in');
    await generateCtSeries(input, FILES, { rows: 512, cols: 512, seed: 14 });
    const bytes = readdirSync(input).reduce((s, f) => s + statSync(join(input, f)).size, 0);
    const hash = createHash('sha256').update('bench-offline').digest('hex');
    writeFileSync(join(work, 'gateway.yaml'), [
      'server: {host: 127.0.0.1, port: 8080}',
      'upstream: {url: "http://127.0.0.1:9/dicom-web"}',
      'state: {dir: ./state}',
      'clients:',
      `  - {id: basic, apiKeySha256: "${hash}"}`,
      '',
    ].join('\n'));
    const entry = gatewayCommand(import.meta.url);
    const gdcm = spawnSync('which', ['gdcmanon']).status === 0 && spawnSync('which', ['openssl']).status === 0;
    if (gdcm) {
      const r = spawnSync('openssl', ['req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-keyout', join(work, 'key.pem'), '-out', join(work, 'cert.pem'), '-days', '1', '-subj', '/CN=bench'], { stdio: 'ignore' });
      if (r.status !== 0) throw new Error('openssl could not make a certificate');
    }
    const tools: { name: string; run: (out: string) => Promise<Awaited<ReturnType<typeof timed>>> }[] = [
      { name: 'cp -r (floor)', run: (out) => timed('cp', ['-r', input, out], work) },
      { name: 'deid-gateway deid', run: (out) => timed(process.execPath, [...entry, 'deid', '--config', join(work, 'gateway.yaml'), '--client', 'basic', ...(JOBS ? ['--jobs', JOBS] : []), input, '--out', out], work) },
      // Another build of the command (an earlier commit's dist/src/cli/main.js), for a before/after in one run.
      ...(BASELINE ? [{ name: 'baseline deid', run: (out: string) => timed(process.execPath, [...gatewayCommand(import.meta.url, BASELINE), 'deid', '--config', join(work, 'gateway.yaml'), '--client', 'basic', input, '--out', out], work) }] : []),
      ...(gdcm ? [{ name: 'gdcmanon -e', run: (out: string) => timed('gdcmanon', ['-e', '-c', join(work, 'cert.pem'), '--continue', '-r', '-i', input, '-o', out], work) }] : []),
    ];
    const results = new Map<string, { ms: number[]; cpuMs: number[]; files: number }>();
    // A warm-up of each (page cache, the gateway's state folder and secret).
    for (const t of tools) { const out = join(work, 'warm'); await t.run(out); rmSync(out, { recursive: true, force: true }); await settle(); }
    for (let r = 0; r < RUNS; r++) {
      for (const t of tools) {
        const out = join(work, `out-${r}`);
        const x = await t.run(out);
        if (x.code !== 0) throw new Error(`${t.name} exited with ${x.code}: ${x.stderr.slice(-2000)}`);
        const e = results.get(t.name) ?? results.set(t.name, { ms: [], cpuMs: [], files: 0 }).get(t.name)!;
        e.ms.push(x.ms); e.cpuMs.push(x.cpuMs); e.files = countFiles(out);
        rmSync(out, { recursive: true, force: true });
        await settle();
      }
    }
    const deid = results.get('deid-gateway deid')!;
    const ref = results.get('gdcmanon -e');
    console.log(`\n${FILES} files, ${(bytes / 1e6).toFixed(0)} MB\n`);
    console.log('| tool | wall (median) | MB/s | CPU (median) | files out | ÷ gdcmanon |');
    console.log('|---|---|---|---|---|---|');
    for (const [name, e] of results) {
      const ratio = ref ? (med(e.ms) / med(ref.ms)).toFixed(2) + 'x' : '—';
      console.log(`| ${name} | ${med(e.ms).toFixed(0)} ms (${e.ms.map((m) => m.toFixed(0)).join(', ')}) | ${(bytes / 1e3 / med(e.ms)).toFixed(0)} | ${med(e.cpuMs).toFixed(0)} ms | ${e.files} | ${ratio} |`);
    }
    const ratio = ref ? med(deid.ms) / med(ref.ms) : undefined;
    console.log(`\n| measure | figure | target | |\n|---|---|---|---|\n| offline deid ÷ gdcmanon -e, ${FILES} CT files | ${ratio === undefined ? 'gdcmanon not installed' : `${ratio.toFixed(2)}x`} | <= ${TARGET}x | ${ratio === undefined ? '—' : ratio <= TARGET ? 'MET' : 'MISSED'} |`);
    mkdirSync(join(root, 'bench/out'), { recursive: true });
    writeFileSync(join(root, 'bench/out/offline.json'), `${JSON.stringify({ date: new Date().toISOString(), files: FILES, bytes, runs: RUNS, jobs: JOBS ?? 'default', results: Object.fromEntries([...results].map(([k, v]) => [k, { ...v, medianMs: med(v.ms), medianCpuMs: med(v.cpuMs) }])), ratio, target: TARGET }, null, 2)}\n`);
  } finally {
    rmSync(work, { recursive: true, force: true });
  }
}

main().catch((e: unknown) => { console.error(e); process.exit(1); });
