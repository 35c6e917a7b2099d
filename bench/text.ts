/**
 * Burned-in text benchmark (issue 12), in one run on this machine:
 *
 *  - (1) the detector alone: a 640 x 480 RGB ultrasound (test/fixtures/text-phantom.ts) with six
 *    text lines, 30 frames whose sector changes every frame; milliseconds per frame read
 *    (target <= 30 ms);
 *  - (2) a 100-frame 640 x 480 RGB cine loop (92 MB, text fixed and a timer that changes every
 *    frame) in a real Orthanc, retrieved through the gateway (a child process) by a client with
 *    `risky: allow` (the reference), the first retrieve by a client with `risky: detect` (the
 *    detection included: the instance is fetched, every frame read, the decision stored), and
 *    later retrieves (stored decision); directly from Orthanc too. Medians of BENCH_RUNS;
 *    ratios to the allow retrieve (target <= 1.5x).
 *
 * Prints a table and writes bench/out/text.json. Knobs: BENCH_RUNS (5), BENCH_CINE_FRAMES (100),
 * BENCH_CPU_PROF (0; 1: the gateway child serves the first detect alone under --cpu-prof, and
 * its hottest functions, workers included, are listed instead of the table).
 */
import { spawn } from 'node:child_process';
import { closeSync, mkdirSync, mkdtempSync, openSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { createHash } from 'node:crypto';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Pool } from 'undici';
import { analyzeInstance } from '../src/pixels/text/analyze.js';
import { makeTextPhantom, type TextPhantomOptions } from '../test/fixtures/text-phantom.js';
import { freePort, startOrthanc } from '../test/helpers/orthanc.js';
import { gatewayCommand, projectRoot, summarizeProfile } from './common.js';

const RUNS = Number(process.env.BENCH_RUNS ?? '5') || 5;
const CINE_FRAMES = Number(process.env.BENCH_CINE_FRAMES ?? '100') || 100;
const CPU_PROF = process.env.BENCH_CPU_PROF === '1';
const TARGET_MS_PER_FRAME = 30;
const TARGET_RATIO = 1.5;
const TOKEN = 'bench-text-token';
const ACCEPT = 'multipart/related; type="application/dicom"';

const TEXTS = (frames: number): TextPhantomOptions['texts'] => [
  { x: 10, y: 8, text: 'ST MARY HOSPITAL CARDIOLOGY', scale: 2, color: 255 },
  { x: 10, y: 32, text: 'DOE JOHN 12/03/2026', scale: 2, color: [255, 255, 0] },
  { x: 10, y: 56, text: 'MRN 4821377 ACC 99812', scale: 1, color: 230 },
  { x: 470, y: 8, text: '4.5MHZ 16CM', scale: 2, color: 255 },
  { x: 470, y: 450, text: 'TIS 0.5 MI 1.2', scale: 1, color: 255 },
  ...Array.from({ length: frames }, (_, f) => ({ x: 20, y: 450, text: `0:03:${String(f % 60).padStart(2, '0')}`, scale: 2, color: 255, frames: [f] })),
];

const now = (): number => performance.now();
const med = (xs: readonly number[]): number => { const s = [...xs].sort((a, b) => a - b); return s[Math.floor(s.length / 2)]!; };
const cpuMs = (pid: number): number => {
  const f = readFileSync(`/proc/${pid}/stat`, 'utf8').split(') ')[1]!.split(' ');
  return (Number(f[11]) + Number(f[12])) * 10;
};


/** Part 10 bytes with every occurrence of one UID replaced by another of the same length. */
function withSop(bytes: Buffer, from: string, to: string): { bytes: Buffer; sop: string } {
  if (from.length !== to.length) throw new Error('the UIDs must have one length');
  const out = Buffer.from(bytes);
  const a = Buffer.from(from, 'latin1'), b = Buffer.from(to, 'latin1');
  for (let i = out.indexOf(a); i >= 0; i = out.indexOf(a, i + a.length)) b.copy(out, i);
  return { bytes: out, sop: to };
}

async function main(): Promise<void> {
  const root = projectRoot(import.meta.url);
  const result: Record<string, unknown> = { date: new Date().toISOString() };

  // ---- (1) the detector alone
  const still = makeTextPhantom({ rows: 480, columns: 640, photometric: 'RGB', frames: 30, texts: TEXTS(30), uidRoot: '1.2.826.0.1.3680043.9.7433.12.990' });
  analyzeInstance(still.bytes); // warm-up (JIT)
  const perFrame: number[] = [];
  for (let i = 0; i < 3; i++) {
    const t0 = now();
    const a = analyzeInstance(still.bytes);
    perFrame.push((now() - t0) / a.framesRead);
  }
  const msPerFrame = med(perFrame);
  console.log(`(1) detector: ${msPerFrame.toFixed(1)} ms per 640 x 480 RGB frame (target <= ${TARGET_MS_PER_FRAME} ms)`);
  result.detector = { msPerFrame: Number(msPerFrame.toFixed(2)), target: TARGET_MS_PER_FRAME };

  // ---- (2) a cine loop through the gateway
  const cine = makeTextPhantom({ rows: 480, columns: 640, photometric: 'RGB', frames: CINE_FRAMES, texts: TEXTS(CINE_FRAMES), uidRoot: '1.2.826.0.1.3680043.9.7433.12.991' });
  const orthanc = await startOrthanc();
  const dir = mkdtempSync(join(tmpdir(), 'bench-text-'));
  try {
    // One copy per run for the first retrieves (the same pixels under SOP Instance UIDs that end
    // in .4, .5, ...: each is decided for the first time), so that the first retrieve is a median too.
    const copies = Array.from({ length: Math.min(RUNS, 6) }, (_, i) => withSop(cine.bytes, cine.sop, `${cine.sop.slice(0, -1)}${4 + i}`));
    await orthanc.upload([cine.bytes, ...copies.map((c) => c.bytes)]);
    const port = await freePort();
    const hash = (t: string): string => createHash('sha256').update(t).digest('hex');
    writeFileSync(join(dir, 'gateway.yaml'), [
      `server: {host: 127.0.0.1, port: ${port}}`,
      `upstream: {url: "${orthanc.dicomWebUrl}"}`,
      'state: {dir: ./state}',
      'clients:',
      `  - {id: allow, apiKeySha256: "${hash(`${TOKEN}-allow`)}", profile: {options: [retainUIDs]}, pixels: {risky: allow}}`,
      `  - {id: detect, apiKeySha256: "${hash(`${TOKEN}-detect`)}", profile: {options: [retainUIDs]}, pixels: {risky: detect}}`,
      '',
    ].join('\n'));
    const log = openSync(join(dir, 'gateway.log'), 'a');
    const profDir = join(dir, 'prof');
    const proc = spawn(process.execPath, [...(CPU_PROF ? ['--cpu-prof', '--cpu-prof-dir', profDir] : []), ...gatewayCommand(import.meta.url), 'serve', '--config', join(dir, 'gateway.yaml')], { cwd: dir, stdio: ['ignore', log, log] });
    closeSync(log);
    process.once('exit', () => { try { proc.kill('SIGKILL'); } catch { /* gone */ } });
    const gwUrl = `http://127.0.0.1:${port}`;
    for (let t = now(); ; await new Promise((r) => setTimeout(r, 100))) {
      try { const r = await fetch(`${gwUrl}/healthz`); await r.arrayBuffer(); if (r.ok) break; } catch { /* not yet */ }
      if (now() - t > 20_000) throw new Error(`the gateway did not start: ${readFileSync(join(dir, 'gateway.log'), 'utf8').slice(-1000)}`);
    }
    const gw = new Pool(gwUrl, { connections: 4 });
    const pacs = new Pool(new URL(orthanc.dicomWebUrl).origin, { connections: 4 });
    const pacsBase = new URL(orthanc.dicomWebUrl).pathname;
    const pathOf = (sop: string): string => `/studies/${cine.study}/series/${cine.series}/instances/${sop}`;
    const path = pathOf(cine.sop);
    const get = async (pool: Pool, p: string, token?: string): Promise<{ ms: number; bytes: number; cpuMs: number }> => {
      const c0 = cpuMs(proc.pid!);
      const t0 = now();
      const r = await pool.request({ method: 'GET', path: p, headers: { accept: ACCEPT, ...(token ? { authorization: `Bearer ${token}` } : {}) } });
      let bytes = 0;
      for await (const c of r.body) bytes += (c as Buffer).length;
      if (r.statusCode !== 200) throw new Error(`${p}: HTTP ${r.statusCode}`);
      return { ms: now() - t0, bytes, cpuMs: cpuMs(proc.pid!) - c0 };
    };
    const direct = (p = path): ReturnType<typeof get> => get(pacs, `${pacsBase}${p}`);
    const allow = (p = path): ReturnType<typeof get> => get(gw, `/dicom-web${p}`, `${TOKEN}-allow`);
    const detect = (p = path): ReturnType<typeof get> => get(gw, `/dicom-web${p}`, `${TOKEN}-detect`);
    if (CPU_PROF) {
      await direct(); // Orthanc's cache
      const first = await detect();
      console.log(`(2) first detect under --cpu-prof: ${Math.round(first.ms)} ms, gateway CPU ${first.cpuMs} ms`);
      await gw.close();
      await pacs.close();
      proc.kill('SIGTERM');
      await new Promise((r) => proc.once('exit', r));
      for (const f of readdirSync(profDir).filter((n) => n.endsWith('.cpuprofile'))) {
        console.log(`\n${f}:`);
        for (const e of summarizeProfile(join(profDir, f), 15)) console.log(`  ${String(e.selfMs).padStart(8)} ms ${String(e.pct).padStart(5)} %  ${e.fn}  ${e.where}`);
      }
      return;
    }
    await direct(); await allow(); // warm-up: Orthanc's cache, the gateway's facts
    const runs = { direct: [] as number[], allow: [] as number[], allowCpu: [] as number[], first: [] as number[], firstCpu: [] as number[], later: [] as number[], laterCpu: [] as number[] };
    // Alternating, on one copy per run: direct, allow (which also caches the instance's facts, as
    // any earlier request would), then its first retrieve under detect.
    for (let i = 0; i < RUNS; i++) {
      const p = pathOf(copies[i % copies.length]!.sop);
      runs.direct.push((await direct(p)).ms);
      const a = await allow(p);
      runs.allow.push(a.ms); runs.allowCpu.push(a.cpuMs);
      if (i >= copies.length) continue;
      const f = await detect(p);
      runs.first.push(f.ms); runs.firstCpu.push(f.cpuMs);
    }
    const first = { ms: med(runs.first), cpuMs: med(runs.firstCpu), bytes: (await detect()).bytes };
    for (let i = 0; i < RUNS; i++) { const l = await detect(); runs.later.push(l.ms); runs.laterCpu.push(l.cpuMs); }
    const logged = readFileSync(join(dir, 'gateway.log'), 'utf8').split('\n').filter((l) => l.includes('text decision made')).map((l) => JSON.parse(l) as { analysisMs: number; framesRead: number; regions: number });
    const ref = med(runs.allow);
    const row = {
      frames: CINE_FRAMES, mb: Number((first.bytes / 1e6).toFixed(0)),
      directMs: Math.round(med(runs.direct)), allowMs: Math.round(ref), allowCpuMs: Math.round(med(runs.allowCpu)),
      firstMs: Math.round(first.ms), firstCpuMs: Math.round(first.cpuMs), firstRatio: Number((first.ms / ref).toFixed(2)),
      laterMs: Math.round(med(runs.later)), laterCpuMs: Math.round(med(runs.laterCpu)), laterRatio: Number((med(runs.later) / ref).toFixed(2)),
      firstRuns: runs.first.map(Math.round), allowRuns: runs.allow.map(Math.round),
      analysisMs: med(logged.slice(0, runs.first.length).map((l) => l.analysisMs)), framesRead: logged[0]?.framesRead, regions: logged[0]?.regions,
    };
    result.cine = row;
    console.log(`(2) ${CINE_FRAMES}-frame 640 x 480 RGB cine (${row.mb} MB): direct ${row.directMs} ms; allow ${row.allowMs} ms (gateway CPU ${row.allowCpuMs} ms)`);
    console.log(`    first detect ${row.firstMs} ms (${row.firstRatio}x allow, median of ${runs.first.length} instances decided for the first time: ${row.firstRuns.join(', ')} ms against allow ${row.allowRuns.join(', ')} ms;`);
    console.log(`      CPU ${row.firstCpuMs} ms; fetching and reading the instance (overlapped) ${Math.round(row.analysisMs ?? 0)} ms over ${row.framesRead} frames, ${row.regions} regions)`);
    console.log(`    later detect ${row.laterMs} ms (${row.laterRatio}x allow; CPU ${row.laterCpuMs} ms)`);
    console.log();
    console.log('| measure | figure | target | |');
    console.log('|---|---|---|---|');
    console.log(`| detection per 640x480 frame | ${msPerFrame.toFixed(1)} ms | <= ${TARGET_MS_PER_FRAME} ms | ${msPerFrame <= TARGET_MS_PER_FRAME ? 'MET' : 'MISSED'} |`);
    console.log(`| cine, first detect / allow | ${row.firstRatio}x | <= ${TARGET_RATIO}x | ${row.firstRatio <= TARGET_RATIO ? 'MET' : 'MISSED'} |`);
    console.log(`| cine, later detect / allow | ${row.laterRatio}x | <= ${TARGET_RATIO}x | ${row.laterRatio <= TARGET_RATIO ? 'MET' : 'MISSED'} |`);
    await gw.close();
    await pacs.close();
    proc.kill('SIGTERM');
  } finally {
    await orthanc.stop();
  }
  mkdirSync(join(root, 'bench/out'), { recursive: true });
  writeFileSync(join(root, 'bench/out/text.json'), `${JSON.stringify(result, null, 2)}\n`);
}

main().catch((e: unknown) => { console.error(e); process.exit(1); });
