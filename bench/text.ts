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
 * Prints a table and writes bench/out/text.json. Knobs: BENCH_RUNS (5), BENCH_CINE_FRAMES (100).
 */
import { spawn } from 'node:child_process';
import { closeSync, existsSync, mkdirSync, mkdtempSync, openSync, readFileSync, writeFileSync } from 'node:fs';
import { createHash } from 'node:crypto';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { Pool } from 'undici';
import { analyzeInstance } from '../src/pixels/text/analyze.js';
import { makeTextPhantom, type TextPhantomOptions } from '../test/fixtures/text-phantom.js';
import { freePort, startOrthanc } from '../test/helpers/orthanc.js';
import { projectRoot } from './common.js';

const RUNS = Number(process.env.BENCH_RUNS ?? '5') || 5;
const CINE_FRAMES = Number(process.env.BENCH_CINE_FRAMES ?? '100') || 100;
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

function gatewayCommand(root: string): string[] {
  const compiled = fileURLToPath(new URL('../src/cli/main.js', import.meta.url));
  if (import.meta.url.endsWith('.js') && existsSync(compiled)) return [compiled];
  return ['--import', 'tsx', join(root, 'src/cli/main.ts')];
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
    await orthanc.upload([cine.bytes]);
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
    const proc = spawn(process.execPath, [...gatewayCommand(root), 'serve', '--config', join(dir, 'gateway.yaml')], { cwd: dir, stdio: ['ignore', log, log] });
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
    const path = `/studies/${cine.study}/series/${cine.series}/instances/${cine.sop}`;
    const get = async (pool: Pool, p: string, token?: string): Promise<{ ms: number; bytes: number; cpuMs: number }> => {
      const c0 = cpuMs(proc.pid!);
      const t0 = now();
      const r = await pool.request({ method: 'GET', path: p, headers: { accept: ACCEPT, ...(token ? { authorization: `Bearer ${token}` } : {}) } });
      let bytes = 0;
      for await (const c of r.body) bytes += (c as Buffer).length;
      if (r.statusCode !== 200) throw new Error(`${p}: HTTP ${r.statusCode}`);
      return { ms: now() - t0, bytes, cpuMs: cpuMs(proc.pid!) - c0 };
    };
    const direct = (): ReturnType<typeof get> => get(pacs, `${pacsBase}${path}`);
    const allow = (): ReturnType<typeof get> => get(gw, `/dicom-web${path}`, `${TOKEN}-allow`);
    const detect = (): ReturnType<typeof get> => get(gw, `/dicom-web${path}`, `${TOKEN}-detect`);
    await direct(); await allow(); // warm-up: Orthanc's cache, the gateway's facts
    const runs = { direct: [] as number[], allow: [] as number[], allowCpu: [] as number[], later: [] as number[], laterCpu: [] as number[] };
    for (let i = 0; i < RUNS; i++) {
      runs.direct.push((await direct()).ms);
      const a = await allow();
      runs.allow.push(a.ms); runs.allowCpu.push(a.cpuMs);
    }
    const first = await detect();
    for (let i = 0; i < RUNS; i++) { const l = await detect(); runs.later.push(l.ms); runs.laterCpu.push(l.cpuMs); }
    const logged = readFileSync(join(dir, 'gateway.log'), 'utf8').split('\n').filter((l) => l.includes('text decision made')).map((l) => JSON.parse(l) as { analysisMs: number; framesRead: number; regions: number });
    const ref = med(runs.allow);
    const row = {
      frames: CINE_FRAMES, mb: Number((first.bytes / 1e6).toFixed(0)),
      directMs: Math.round(med(runs.direct)), allowMs: Math.round(ref), allowCpuMs: Math.round(med(runs.allowCpu)),
      firstMs: Math.round(first.ms), firstCpuMs: Math.round(first.cpuMs), firstRatio: Number((first.ms / ref).toFixed(2)),
      laterMs: Math.round(med(runs.later)), laterCpuMs: Math.round(med(runs.laterCpu)), laterRatio: Number((med(runs.later) / ref).toFixed(2)),
      analysisMs: logged[0]?.analysisMs, framesRead: logged[0]?.framesRead, regions: logged[0]?.regions,
    };
    result.cine = row;
    console.log(`(2) ${CINE_FRAMES}-frame 640 x 480 RGB cine (${row.mb} MB): direct ${row.directMs} ms; allow ${row.allowMs} ms (gateway CPU ${row.allowCpuMs} ms)`);
    console.log(`    first detect ${row.firstMs} ms (${row.firstRatio}x allow; CPU ${row.firstCpuMs} ms; fetching and reading the instance (overlapped) ${row.analysisMs} ms over ${row.framesRead} frames, ${row.regions} regions)`);
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
