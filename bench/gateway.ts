/**
 * End-to-end benchmark of the gateway in front of a real Orthanc (1.10 + DICOMweb 1.7).
 *
 *   npm run bench:gateway          (builds dist/ if needed; node --expose-gc dist/bench/gateway.js)
 *   node --import tsx bench/gateway.ts
 *
 * One run:
 *  - starts Orthanc (test/helpers/orthanc.ts) and uploads a generated 300-instance CT study
 *    (512 x 512 x 16 bit, generateCtSeries) and a ~1 GB study of multi-frame CT instances built
 *    from the same header (default 10 instances x 200 frames x 512 x 512 x 16 bit);
 *  - starts the gateway as a child process (`node dist/src/cli/main.js serve --config …`), so its
 *    memory can be read from /proc/<pid>/status (VmRSS sampled every 100 ms, VmHWM);
 *  - starts a pass-through HTTP proxy in Node (another child: no auth, no de-identification, no
 *    pre-flight query) as a reference for what any Node hop costs on the same machine, and
 *    nginx (Debian nginx-light, bench/nginx.ts: proxy_pass, 256 KiB buffers, keep-alive) as the
 *    reference for what a C hop costs, when it is installed;
 *  - (a) WADO-RS retrieve of the whole 300-instance study, body consumed as it arrives (never
 *    buffered), directly from Orthanc, through nginx, the reference proxy and the gateway:
 *    warm-up, then timed runs, interleaved; median, best, first byte; ratio gateway / direct;
 *    CPU per retrieve of each hop, and the gateway's over nginx's;
 *    plus the time Orthanc takes to answer the gateway's pre-flight query on its own;
 *  - (b) QIDO-RS `/studies?includefield=all` and `/studies/{uid}/series` at concurrency 16 for a
 *    few seconds each (and at concurrency 1 for 2 s), every path: median, p95, p99
 *    latency, throughput, each hop's CPU per request, overhead (and over nginx's);
 *  - (c) peak RSS of the gateway process while it streams the ~1 GB study (VmHWM reset first,
 *    RSS trace by tenths of the run). Run first, before (a) and (b), so the figure is the
 *    streaming's; the VmHWM over the whole run is reported too;
 *  - (d) head series (test/fixtures/head-phantom.ts): a 160-slice sagittal 512 x 460 MR and a
 *    400-slice axial 512 x 512 CT with faces. Per series: retrieves by a client with
 *    pixels.faces: allow (the reference), the first retrieve by a defacing client (the face
 *    analysis included), later retrieves from the stored decision; the gateway's CPU per
 *    retrieve, the analysis time it logs, and its peak RSS while it defaces the CT.
 *
 * Prints a table (figures next to targets) and writes bench/out/gateway.json. See bench/README.md.
 *
 * Environment knobs (defaults are the reported configuration):
 *   BENCH_INSTANCES (300)      CT instances in the study of (a) and (b)
 *   BENCH_RUNS (5), BENCH_WARMUPS (1)     timed and warm-up retrieves per path in (a)
 *   BENCH_QIDO_SECONDS (5), BENCH_QIDO_CONCURRENCY (16)
 *   BENCH_BIG_INSTANCES (10), BENCH_BIG_FRAMES (200)   the ~1 GB study of (c); frames=1 gives
 *                              single-frame instances (e.g. 2000 x 1 for 2000 ordinary slices)
 *   BENCH_SETUP_BUDGET_S (150) stop uploading the big study after this many seconds of setup
 *   BENCH_PHASES (a,b,c,d)     which measurements to run
 *   BENCH_HEAD_SCALE (1)       0.5: half-size head series (256 x 230 x 80 MR, 256 x 256 x 200 CT) for a quick run
 *   BENCH_HEAD_COPIES (9)      copies of each head series (d), at most 9: each gives one first defacing retrieve
 *   BENCH_HEADS (mr,ct)        which head series (d) uses
 *   BENCH_CPU_PROF (0)         1: run the gateway child with --cpu-prof and list its hottest functions
 *   BENCH_GATEWAY_METRICS (0)  1: the gateway with Prometheus metrics on (prom-client loaded)
 *   BENCH_TRANSPORT            the gateway's upstream.transport (default: the gateway's own default)
 *   BENCH_GATEWAY_NODE_FLAGS   extra node flags for the gateway child (e.g. "--trace-gc")
 *   BENCH_KEEP_LOG (0)         1: copy the gateway's log (stderr) to bench/out/gateway.log
 *   BENCH_GATEWAY_ENTRY        run another build's dist/src/cli/main.js as the gateway (a before/after)
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, openSync, closeSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { readFile } from 'node:fs/promises';
import { createHash } from 'node:crypto';
import { cpus, loadavg, tmpdir, totalmem } from 'node:os';
import { join } from 'node:path';
import { Pool } from 'undici';
import { generateCtSeries } from '../test/fixtures/generate.js';
import { makeHeadPhantom } from '../test/fixtures/head-phantom.js';
import { DICOMWEB_PLUGIN, freePort, startOrthanc, type OrthancHandle } from '../test/helpers/orthanc.js';
import { gatewayCommand, projectRoot, summarizeProfile } from './common.js';
import { nginxBinary, startNginx, type NginxHandle } from './nginx.js';

// ---------------------------------------------------------------------------
// Configuration

const INSTANCES = intEnv('BENCH_INSTANCES', 300);
const RUNS = intEnv('BENCH_RUNS', 5);
const WARMUPS = intEnv('BENCH_WARMUPS', 1, true);
const QIDO_SECONDS = intEnv('BENCH_QIDO_SECONDS', 5);
const QIDO_CONCURRENCY = intEnv('BENCH_QIDO_CONCURRENCY', 16);
const BIG_INSTANCES = intEnv('BENCH_BIG_INSTANCES', 10);
const BIG_FRAMES = intEnv('BENCH_BIG_FRAMES', 200);
const SETUP_BUDGET_S = intEnv('BENCH_SETUP_BUDGET_S', 150);
const HEAD_COPIES = Math.min(9, intEnv('BENCH_HEAD_COPIES', 9));
/**
 * Pairs of an allow and a later defacing retrieve in (d): as many as the copies' first pairs
 * (at least BENCH_RUNS). Five pairs gave medians from 0.87x to 1.32x on this VM for the same code.
 */
const LATER_PAIRS = Math.max(RUNS, HEAD_COPIES);
const HEADS = new Set((process.env.BENCH_HEADS ?? 'mr,ct').split(',').map((x) => x.trim().toLowerCase()));
const PHASES = new Set((process.env.BENCH_PHASES ?? 'a,b,c,d').split(',').map((s) => s.trim()));
const HEAD_SCALE = Number(process.env.BENCH_HEAD_SCALE ?? '1') || 1;
const TARGET_FACE_FIRST = 1.5;
const TARGET_FACE_LATER = 1.1;
const TARGET_FACE_RSS_MB = 250;
const CPU_PROF = process.env.BENCH_CPU_PROF === '1';
/** The gateway's upstream.transport; unset: the key is left out, so the gateway's default applies. */
const TRANSPORT = process.env.BENCH_TRANSPORT || undefined;
if (TRANSPORT !== undefined && !/^[a-z-]{1,32}$/.test(TRANSPORT)) throw new Error(`BENCH_TRANSPORT must be a transport name such as undici, got ${TRANSPORT}`);
const ROWS = 512;
const COLS = 512;
const SEED = 20240601;
const TOKEN = 'bench-gateway-token';
const SAMPLE_MS = 100;
const UPLOAD_CONCURRENCY = 4;
const ACCEPT_DICOM = 'multipart/related; type="application/dicom"';

const TARGET_RATIO = 1.15;
const TARGET_OVERHEAD_MS = 3;
const TARGET_RSS_MB = 150;
/** Issue 14: QIDO at concurrency 1 adds at most this to the median; at concurrency 16, at most nginx's addition plus TARGET_OVER_NGINX_MS. */
const TARGET_C1_MS = 1;
const TARGET_OVER_NGINX_MS = 2;
/** Issue 14: the gateway's CPU per retrieve at most this many times nginx's. */
const TARGET_HOP_CPU_OVER_NGINX = 3;

function intEnv(name: string, dflt: number, zeroOk = false): number {
  const v = process.env[name];
  if (v === undefined || v === '') return dflt;
  const n = Number(v);
  if (!Number.isInteger(n) || n < (zeroOk ? 0 : 1)) throw new Error(`${name} must be a ${zeroOk ? 'non-negative' : 'positive'} integer, got ${v}`);
  return n;
}

// ---------------------------------------------------------------------------
// Small helpers

const MB = 1e6;
const MiB = 2 ** 20;
const round = (x: number, d: number): number => Math.round(x * 10 ** d) / 10 ** d;
const fmt = (x: number, d: number): string => x.toFixed(d);
const now = (): number => performance.now();
const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

function quantile(sorted: readonly number[], q: number): number {
  if (sorted.length === 0) return NaN;
  const i = Math.min(sorted.length - 1, Math.max(0, Math.ceil(q * sorted.length) - 1));
  return sorted[i]!;
}
const median = (xs: readonly number[]): number => {
  const s = [...xs].sort((a, b) => a - b);
  if (s.length === 0) return NaN;
  const m = s.length >> 1;
  return s.length % 2 ? s[m]! : (s[m - 1]! + s[m]!) / 2;
};



// ---------------------------------------------------------------------------
// /proc readers for the gateway child (and Orthanc, for the CPU budget)

/** The pid of the process whose command line contains `needle` (Orthanc: its temp directory). */
function pidOf(needle: string): number | undefined {
  for (const e of readdirSync('/proc')) {
    if (!/^\d+$/.test(e)) continue;
    try {
      const cmd = readFileSync(`/proc/${e}/cmdline`, 'latin1');
      if (cmd.includes(needle) && /Orthanc/.test(cmd) && !cmd.startsWith('setpriv')) return Number(e);
    } catch { /* gone */ }
  }
  return undefined;
}

/** CPU time (ms) of this process: the benchmark's own client. */
const selfCpuMs = (): number => { const u = process.cpuUsage(); return (u.user + u.system) / 1000; };

interface ProcMem { rssKiB: number; hwmKiB: number }

function readMem(pid: number): ProcMem | undefined {
  try {
    const s = readFileSync(`/proc/${pid}/status`, 'utf8');
    const kib = (k: string): number => Number(new RegExp(`^${k}:\\s+(\\d+) kB`, 'm').exec(s)?.[1] ?? NaN);
    return { rssKiB: kib('VmRSS'), hwmKiB: kib('VmHWM') };
  } catch {
    return undefined;
  }
}

const CLK_TCK = 100; // Linux USER_HZ; /proc/<pid>/stat reports utime and stime in these ticks
/** User + system CPU time of a process, in ms. */
function cpuMs(pid: number): number {
  try {
    const s = readFileSync(`/proc/${pid}/stat`, 'utf8');
    const fields = s.slice(s.lastIndexOf(')') + 2).split(' ');
    return ((Number(fields[11]) + Number(fields[12])) * 1000) / CLK_TCK; // fields 14 and 15 of stat(5)
  } catch {
    return NaN;
  }
}

/** System (kernel) CPU time of a process, in ms: what its system calls cost (socket reads and writes). */
function sysCpuMs(pid: number): number {
  try {
    const s = readFileSync(`/proc/${pid}/stat`, 'utf8');
    return (Number(s.slice(s.lastIndexOf(')') + 2).split(' ')[12]) * 1000) / CLK_TCK;
  } catch {
    return NaN;
  }
}

/** Resets VmHWM to the current RSS (Linux ≥ 4.0, own child). */
function resetPeak(pid: number): boolean {
  try {
    writeFileSync(`/proc/${pid}/clear_refs`, '5');
    return true;
  } catch {
    return false;
  }
}

class RssSampler {
  private timer: NodeJS.Timeout | undefined;
  private t0 = 0;
  maxKiB = 0;
  samples = 0;
  /** [ms since start(), VmRSS KiB] */
  trace: [number, number][] = [];
  constructor(private readonly pid: number) {}
  start(): void {
    this.maxKiB = 0;
    this.samples = 0;
    this.trace = [];
    this.t0 = now();
    const tick = (): void => {
      const m = readMem(this.pid);
      if (m && Number.isFinite(m.rssKiB)) {
        this.samples++;
        this.trace.push([Math.round(now() - this.t0), m.rssKiB]);
        if (m.rssKiB > this.maxKiB) this.maxKiB = m.rssKiB;
      }
    };
    tick();
    this.timer = setInterval(tick, SAMPLE_MS);
  }
  stop(): void {
    clearInterval(this.timer);
    const m = readMem(this.pid);
    if (m && m.rssKiB > this.maxKiB) this.maxKiB = m.rssKiB;
  }
}

// ---------------------------------------------------------------------------
// Inputs

const EXPLICIT_LONG_VRS = new Set(['OB', 'OD', 'OF', 'OL', 'OV', 'OW', 'SQ', 'SV', 'UC', 'UN', 'UR', 'UT', 'UV']);

interface Template {
  /** Everything before the (7FE0,0010) element, Number of Frames inserted. */
  readonly head: Buffer;
  /** The (7FE0,0010) element header (12 bytes), length to be patched. */
  readonly pixelHead: Buffer;
  readonly study: string;
  readonly series: string;
  readonly sop: string;
}

/**
 * Splits a generated single-frame CT instance (Explicit VR LE, defined lengths) into the part
 * before the pixel data (with Number of Frames (0028,0008) inserted in tag order) and the pixel
 * element header, and reads its study, series and SOP instance UIDs.
 */
function template(instance: Buffer, frames: number): Template {
  if (instance.toString('latin1', 128, 132) !== 'DICM') throw new Error('generated instance: no DICM');
  let pos = 132;
  let insertAt = -1;
  const uids: Record<string, string> = {};
  for (;;) {
    if (pos + 8 > instance.length) throw new Error('generated instance: no (7FE0,0010)');
    const group = instance.readUInt16LE(pos);
    const tag = ((group << 16) | instance.readUInt16LE(pos + 2)) >>> 0;
    const vr = instance.toString('latin1', pos + 4, pos + 6);
    const long = EXPLICIT_LONG_VRS.has(vr);
    const len = long ? instance.readUInt32LE(pos + 8) : instance.readUInt16LE(pos + 6);
    const headLen = long ? 12 : 8;
    if (len === 0xffffffff) throw new Error(`generated instance: undefined length at ${pos}`);
    if (insertAt < 0 && group !== 0x0002 && tag >= 0x00280008) {
      if (tag === 0x00280008) throw new Error('generated instance already has Number of Frames');
      insertAt = pos;
    }
    if (tag === 0x0020000d || tag === 0x0020000e || tag === 0x00080018) {
      uids[tag.toString(16).padStart(8, '0')] = instance.toString('latin1', pos + headLen, pos + headLen + len).replace(/\0+$/, '');
    }
    if (tag === 0x7fe00010) {
      const value = String(frames).length % 2 ? `${frames} ` : String(frames);
      const el = Buffer.alloc(8 + value.length);
      el.writeUInt16LE(0x0028, 0);
      el.writeUInt16LE(0x0008, 2);
      el.write('IS', 4, 'latin1');
      el.writeUInt16LE(value.length, 6);
      el.write(value, 8, 'latin1');
      const head = Buffer.concat([instance.subarray(0, insertAt), el, instance.subarray(insertAt, pos)]);
      const study = uids['0020000d'], series = uids['0020000e'], sop = uids['00080018'];
      if (!study || !series || !sop) throw new Error('generated instance: missing a UID');
      return { head, pixelHead: Buffer.from(instance.subarray(pos, pos + headLen)), study, series, sop };
    }
    pos += headLen + len;
  }
}

/** A UID of the same length as `uid`: its last component replaced by `n` (same digit count). */
function sameLengthUid(uid: string, n: number): string {
  const i = uid.lastIndexOf('.');
  const width = uid.length - i - 1;
  const tail = `9${String(n).padStart(width - 1, '0')}`;
  if (tail.length !== width) throw new Error(`cannot number ${n} within ${width} digits`);
  return uid.slice(0, i + 1) + tail;
}

function replaceAll(buf: Buffer, from: string, to: string): void {
  if (from.length !== to.length) throw new Error('replacement must keep the length');
  const f = Buffer.from(from, 'latin1');
  for (let i = buf.indexOf(f); i >= 0; i = buf.indexOf(f, i + f.length)) buf.write(to, i, 'latin1');
}

/** Instance k of the big study: the template header with new study/series/SOP UIDs, then zero pixels. */
function bigInstance(t: Template, k: number, pixels: Buffer): Buffer {
  const head = Buffer.from(t.head);
  replaceAll(head, t.study, sameLengthUid(t.study, 1));
  replaceAll(head, t.series, sameLengthUid(t.series, 2));
  replaceAll(head, t.sop, sameLengthUid(t.sop, 1000 + k));
  const ph = Buffer.from(t.pixelHead);
  ph.writeUInt32LE(pixels.length, 8);
  return Buffer.concat([head, ph, pixels]);
}

async function uploadAll(orthanc: OrthancHandle, count: number, get: (i: number) => Promise<Buffer> | Buffer, deadline = Infinity): Promise<{ uploaded: number; bytes: number }> {
  let next = 0;
  let uploaded = 0;
  let bytes = 0;
  const worker = async (): Promise<void> => {
    while (next < count && now() < deadline) {
      const i = next++;
      const body = await get(i);
      const r = await fetch(`${orthanc.httpUrl}/instances`, { method: 'POST', headers: { 'Content-Type': 'application/dicom' }, body });
      const text = await r.text();
      if (!r.ok) throw new Error(`Orthanc refused instance ${i}: HTTP ${r.status} ${text.slice(0, 300)}`);
      uploaded++;
      bytes += body.length;
    }
  };
  await Promise.all(Array.from({ length: UPLOAD_CONCURRENCY }, worker));
  return { uploaded, bytes };
}

// ---------------------------------------------------------------------------
// The gateway child process

interface GatewayChild { url: string; pid: number; proc: ChildProcess; stop(): Promise<number | null>; logFile: string }

async function startGatewayChild(root: string, dir: string, upstream: string, profDir: string | undefined): Promise<GatewayChild> {
  const port = await freePort();
  const cfg = join(dir, 'gateway.yaml');
  const hash = createHash('sha256').update(TOKEN).digest('hex');
  writeFileSync(cfg, [
    `server: {host: 127.0.0.1, port: ${port}}`,
    `upstream: {url: "${upstream}"${TRANSPORT ? `, transport: ${TRANSPORT}` : ''}}`,
    'state: {dir: ./state}',
    'clients:',
    '  - id: bench',
    `    apiKeySha256: "${hash}"`,
    '  - id: bench-allow',
    `    apiKeySha256: "${createHash('sha256').update(`${TOKEN}-allow`).digest('hex')}"`,
    '    pixels: {faces: allow}',
    // BENCH_GATEWAY_METRICS=1: Prometheus metrics on (/metrics behind a token), which loads prom-client.
    ...(process.env.BENCH_GATEWAY_METRICS === '1' ? [`metrics: {apiKeySha256: "${createHash('sha256').update(`${TOKEN}-metrics`).digest('hex')}"}`] : []),
    '',
  ].join('\n'));
  const logFile = join(dir, 'gateway.log');
  const fd = openSync(logFile, 'a');
  const extra = (process.env.BENCH_GATEWAY_NODE_FLAGS ?? '').split(/\s+/).filter(Boolean);
  const args = [...extra, ...(profDir ? ['--cpu-prof', '--cpu-prof-dir', profDir] : []), ...gatewayCommand(import.meta.url, process.env.BENCH_GATEWAY_ENTRY), 'serve', '--config', cfg];
  const proc = spawn(process.execPath, args, { cwd: root, stdio: ['ignore', fd, fd] });
  closeSync(fd);
  const exited = new Promise<number | null>((resolve) => proc.once('exit', (code) => resolve(code)));
  process.once('exit', () => { try { proc.kill('SIGKILL'); } catch { /* gone */ } });
  const url = `http://127.0.0.1:${port}`;
  const deadline = now() + 20_000;
  for (;;) {
    if (proc.exitCode !== null) throw new Error(`the gateway exited (${proc.exitCode}): ${readFileSync(logFile, 'utf8').slice(-2000)}`);
    try {
      const r = await fetch(`${url}/healthz`);
      await r.arrayBuffer();
      if (r.ok) break;
    } catch { /* not yet */ }
    if (now() > deadline) throw new Error(`the gateway did not answer /healthz in 20 s: ${readFileSync(logFile, 'utf8').slice(-2000)}`);
    await sleep(100);
  }
  return {
    url, pid: proc.pid!, proc, logFile,
    async stop() {
      proc.kill('SIGTERM');
      const t = setTimeout(() => proc.kill('SIGKILL'), 15_000);
      const code = await exited;
      clearTimeout(t);
      return code;
    },
  };
}

// ---------------------------------------------------------------------------
// Reference: a pass-through HTTP proxy in Node (no authentication, no de-identification, no
// pre-flight query), the floor of what any Node hop in front of Orthanc costs on this machine.

const PROXY_SOURCE = `
const http = require('node:http');
const [upHost, upPort, port] = process.argv.slice(1);
const agent = new http.Agent({ keepAlive: true, maxSockets: 64 });
http.createServer((req, res) => {
  const up = http.request({ host: upHost, port: Number(upPort), path: req.url, method: 'GET', agent,
    headers: { accept: req.headers.accept || '*/*' } }, (u) => {
    res.writeHead(u.statusCode, { 'content-type': u.headers['content-type'] || 'application/octet-stream' });
    u.pipe(res);
  });
  up.on('error', () => res.destroy());
  req.on('close', () => { if (!res.writableFinished) up.destroy(); });
  up.end();
}).listen(Number(port), '127.0.0.1', () => process.stdout.write('ready\\n'));
`;

async function startProxyChild(upstreamOrigin: string): Promise<{ url: string; pid: number; stop(): Promise<void> }> {
  const port = await freePort();
  const u = new URL(upstreamOrigin);
  const proc = spawn(process.execPath, ['-e', PROXY_SOURCE, u.hostname, u.port, String(port)], { stdio: ['ignore', 'pipe', 'inherit'] });
  process.once('exit', () => { try { proc.kill('SIGKILL'); } catch { /* gone */ } });
  await new Promise<void>((resolve, reject) => {
    const t = setTimeout(() => reject(new Error('the pass-through proxy did not start in 10 s')), 10_000);
    proc.stdout!.once('data', () => { clearTimeout(t); resolve(); });
    proc.once('exit', (code) => { clearTimeout(t); reject(new Error(`the pass-through proxy exited (${code})`)); });
  });
  const exited = new Promise<void>((resolve) => proc.once('exit', () => resolve()));
  return { url: `http://127.0.0.1:${port}`, pid: proc.pid!, async stop() { proc.kill('SIGTERM'); await exited; } };
}

// ---------------------------------------------------------------------------
// HTTP measurements

interface Target { readonly name: 'direct' | 'nginx' | 'proxy' | 'gateway'; readonly pool: Pool; readonly base: string; readonly headers: Record<string, string> }

/** GET, body consumed chunk by chunk and counted (never buffered). */
async function getCounted(t: Target, path: string, accept: string): Promise<{ ms: number; ttfbMs: number; bytes: number; status: number }> {
  const t0 = now();
  const r = await t.pool.request({ method: 'GET', path: `${t.base}${path}`, headers: { ...t.headers, accept } });
  const ttfb = now() - t0;
  let bytes = 0;
  for await (const c of r.body) bytes += (c as Buffer).length;
  return { ms: now() - t0, ttfbMs: ttfb, bytes, status: r.statusCode };
}

async function getJson<T>(t: Target, path: string): Promise<T> {
  const r = await t.pool.request({ method: 'GET', path: `${t.base}${path}`, headers: { ...t.headers, accept: 'application/dicom+json' } });
  const text = await r.body.text();
  if (r.statusCode !== 200) throw new Error(`${t.name} GET ${path}: ${r.statusCode} ${text.slice(0, 300)}`);
  return JSON.parse(text) as T;
}

interface LoadResult { requests: number; errors: number; seconds: number; rps: number; p50: number; p95: number; p99: number; mean: number }

/** `concurrency` workers issuing GETs back to back for `seconds`; latency of every answered request. */
async function load(t: Target, path: string, concurrency: number, seconds: number): Promise<LoadResult> {
  const lat: number[] = [];
  let errors = 0;
  const start = now();
  const end = start + seconds * 1000;
  const worker = async (): Promise<void> => {
    while (now() < end) {
      const t0 = now();
      const r = await t.pool.request({ method: 'GET', path: `${t.base}${path}`, headers: { ...t.headers, accept: 'application/dicom+json' } });
      await r.body.arrayBuffer();
      if (r.statusCode === 200) lat.push(now() - t0);
      else errors++;
    }
  };
  await Promise.all(Array.from({ length: concurrency }, worker));
  const elapsed = (now() - start) / 1000;
  lat.sort((a, b) => a - b);
  return {
    requests: lat.length, errors, seconds: round(elapsed, 2), rps: round(lat.length / elapsed, 1),
    p50: round(quantile(lat, 0.5), 2), p95: round(quantile(lat, 0.95), 2), p99: round(quantile(lat, 0.99), 2),
    mean: round(lat.reduce((a, b) => a + b, 0) / Math.max(1, lat.length), 2),
  };
}

type Row = { '0020000D'?: { Value?: unknown[] }; '00201208'?: { Value?: unknown[] } };
const uidOf = (r: Row): string => String(r['0020000D']?.Value?.[0] ?? '');
const countOf = (r: Row): number => Number(r['00201208']?.Value?.[0] ?? NaN);

// ---------------------------------------------------------------------------

async function main(): Promise<void> {
  const root = projectRoot(import.meta.url);
  const tStart = now();
  const loadStart = loadavg().map((x) => round(x, 2));
  console.log('deid-gateway end-to-end benchmark (Orthanc → gateway → client)');
  console.log(`machine: ${cpus()[0]?.model ?? 'unknown'} (${cpus().length} logical CPUs, ${fmt(totalmem() / 2 ** 30, 1)} GiB), node ${process.version}`);
  console.log(`load average at start: ${loadStart.join(' ')} (1/5/15 min; other processes share the machine and skew every figure)`);

  const work = mkdtempSync(join(tmpdir(), 'deid-bench-gw-'));
  const outDir = join(root, 'bench', 'out');
  mkdirSync(outDir, { recursive: true });
  const profDir = CPU_PROF ? join(outDir, `prof-${Date.now()}`) : undefined;
  let orthanc: OrthancHandle | undefined;
  let orthancPid: number | undefined;
  let gw: GatewayChild | undefined;
  let proxy: Awaited<ReturnType<typeof startProxyChild>> | undefined;
  let nginx: NginxHandle | undefined;
  const pools: Pool[] = [];
  const result: Record<string, unknown> = {};
  try {
    // ---- setup
    const tSetup = now();
    orthanc = await startOrthanc({ extra: { Plugins: [DICOMWEB_PLUGIN], HttpThreadsCount: 16 } });
    orthancPid = pidOf(orthanc.dir);
    const ctDir = join(work, 'ct');
    const paths = await generateCtSeries(ctDir, INSTANCES, { rows: ROWS, cols: COLS, seed: SEED });
    const tGen = now();
    const ct = await uploadAll(orthanc, paths.length, (i) => readFile(paths[i]!));
    const tCt = now();
    console.log(`setup: Orthanc up; ${INSTANCES} CT instances generated in ${fmt((tGen - tSetup) / 1000, 1)} s, uploaded in ${fmt((tCt - tGen) / 1000, 1)} s (${fmt(ct.bytes / MB, 0)} MB)`);

    let big = { uploaded: 0, bytes: 0 };
    if (PHASES.has('c')) {
      const t = template(await readFile(paths[0]!), BIG_FRAMES);
      const pixels = Buffer.alloc(ROWS * COLS * 2 * BIG_FRAMES);
      big = await uploadAll(orthanc, BIG_INSTANCES, (k) => bigInstance(t, k, pixels), tSetup + SETUP_BUDGET_S * 1000);
      console.log(`setup: ~1 GB study: ${big.uploaded} of ${BIG_INSTANCES} instances x ${BIG_FRAMES} frames uploaded in ${fmt((now() - tCt) / 1000, 1)} s (${fmt(big.bytes / MB, 0)} MB)${big.uploaded < BIG_INSTANCES ? ' (setup budget reached)' : ''}`);
    }
    rmSync(ctDir, { recursive: true, force: true });

    const heads: { name: string; study: string; series: string; copies: string[]; instances: number; bytes: number; sops: string[] }[] = [];
    if (PHASES.has('d')) {
      const t = now();
      const s = HEAD_SCALE;
      const specs = [
        { name: `MR sagittal ${Math.round(512 * s)}x${Math.round(460 * s)}x${Math.round(160 * s)}`, o: { modality: 'MR' as const, orientation: 'sagittal' as const, rows: Math.round(512 * s), columns: Math.round(460 * s), pixelMm: 0.5 / s, slices: Math.round(160 * s), sliceMm: 1.1 / s, uidRoot: '1.2.826.0.1.3680043.9.7433.99.1', study: '1.2.826.0.1.3680043.9.7433.98.1' } },
        { name: `CT axial ${Math.round(512 * s)}x${Math.round(512 * s)}x${Math.round(400 * s)}`, o: { modality: 'CT' as const, orientation: 'axial' as const, rows: Math.round(512 * s), columns: Math.round(512 * s), pixelMm: 0.5 / s, slices: Math.round(400 * s), sliceMm: 0.625 / s, uidRoot: '1.2.826.0.1.3680043.9.7433.99.2', study: '1.2.826.0.1.3680043.9.7433.98.2' } },
      ];
      for (const spec of specs.filter((x) => HEADS.has(x.o.modality.toLowerCase()))) {
        const ph = makeHeadPhantom(spec.o);
        // HEAD_COPIES copies of the series in one study, each its own series (so that each has
        // its own first decision): the series UID prefix of every UID is replaced by one of the
        // same length, which leaves every element's length as it was.
        const from = Buffer.from(ph.series, 'latin1');
        const copies = Array.from({ length: HEAD_COPIES }, (_, c) => `${ph.series.slice(0, -1)}${c + 1}`);
        let bytes = 0;
        for (const series of copies) {
          const to = Buffer.from(series, 'latin1');
          const up = await uploadAll(orthanc, ph.files.length, (i) => {
            const b = Buffer.from(ph.files[i]!.bytes);
            for (let at = b.indexOf(from); at >= 0; at = b.indexOf(from, at + from.length)) to.copy(b, at);
            return b;
          });
          bytes = up.bytes;
        }
        heads.push({ name: spec.name, study: ph.study, series: copies[0]!, copies, instances: ph.files.length, bytes, sops: ph.files.map((f) => f.sop.replace(ph.series, copies[0]!)) });
      }
      console.log(`setup: head series ${heads.map((h) => `${h.name} (${fmt(h.bytes / MB, 0)} MB)`).join(', ')} generated and uploaded in ${fmt((now() - t) / 1000, 1)} s`);
    }

    gw = await startGatewayChild(root, work, orthanc.dicomWebUrl, profDir);
    const idle = readMem(gw.pid)!;
    console.log(`gateway: pid ${gw.pid}, ${gatewayCommand(import.meta.url, process.env.BENCH_GATEWAY_ENTRY).join(' ').replace(root + '/', '')}${profDir ? ' (--cpu-prof)' : ''}, upstream transport ${TRANSPORT ?? '(the default)'}; RSS at start ${fmt(idle.rssKiB / 1024, 1)} MiB`);
    console.log(`setup done in ${fmt((now() - tSetup) / 1000, 1)} s\n`);

    proxy = await startProxyChild(orthanc.httpUrl);
    // nginx, the C reference hop (Debian nginx-light): in the same run when it is installed.
    const nginxBin = nginxBinary();
    if (nginxBin) {
      const u = new URL(orthanc.httpUrl);
      nginx = await startNginx(nginxBin, join(work, 'nginx'), await freePort(), `${u.hostname}:${u.port}`);
      console.log(`nginx: ${nginxBin}, proxy_pass with 256 KiB buffers and keep-alive (bench/nginx.ts)`);
    } else console.log('nginx: not installed (apt-get install nginx-light): its reference column stays empty');
    // Orthanc answers `Keep-Alive: timeout=1`; undici's default keepAliveTimeoutThreshold (2 s)
    // would then open a new connection per request. The measuring client keeps its
    // connections (threshold 200 ms) so the direct baseline is what a good client gets.
    const poolOpts = { connections: 64, pipelining: 1, keepAliveTimeoutThreshold: 200 };
    const direct: Target = { name: 'direct', pool: new Pool(new URL(orthanc.httpUrl).origin, poolOpts), base: '/dicom-web', headers: {} };
    const passThrough: Target = { name: 'proxy', pool: new Pool(proxy.url, poolOpts), base: '/dicom-web', headers: {} };
    const gateway: Target = { name: 'gateway', pool: new Pool(gw.url, poolOpts), base: '/dicom-web', headers: { authorization: `Bearer ${TOKEN}` } };
    const viaNginx: Target | undefined = nginx ? { name: 'nginx', pool: new Pool(nginx.url, poolOpts), base: '/dicom-web', headers: {} } : undefined;
    pools.push(direct.pool, passThrough.pool, gateway.pool, ...(viaNginx ? [viaNginx.pool] : []));
    const all = [direct, ...(viaNginx ? [viaNginx] : []), passThrough, gateway];
    // CPU of a path's hop: the gateway's or the proxy's process, nginx's master and worker.
    const hopPids = (t: Target): number[] => (t.name === 'gateway' ? [gw!.pid] : t.name === 'proxy' ? (proxy ? [proxy.pid] : []) : t.name === 'nginx' ? (nginx?.pids() ?? []) : []);
    const hopCpu = (t: Target): number => hopPids(t).reduce((s, p) => s + cpuMs(p), 0);
    const hopSys = (t: Target): number => hopPids(t).reduce((s, p) => s + sysCpuMs(p), 0);

    // UIDs: the originals from Orthanc, the pseudonyms from the gateway (found by instance count).
    const dRows = await getJson<Row[]>(direct, '/studies');
    const gRows = await getJson<Row[]>(gateway, '/studies');
    const dCt = dRows.find((r) => countOf(r) === INSTANCES), gCt = gRows.find((r) => countOf(r) === INSTANCES);
    // (c) streams as the client with faces: allow: the big study's classic multi-frame CT instances
    // carry no per-frame position, so a defacing client has them withheld (docs/pixels.md, Faces).
    const bigClient: Target = { name: 'gateway', pool: gateway.pool, base: '/dicom-web', headers: { authorization: `Bearer ${TOKEN}-allow` } };
    const gBigRows = await getJson<Row[]>(bigClient, '/studies');
    const dBig = dRows.find((r) => countOf(r) === big.uploaded && r !== dCt), gBig = gBigRows.find((r) => countOf(r) === big.uploaded);
    if (!dCt || !gCt) throw new Error(`the ${INSTANCES}-instance study is not listed (direct ${dRows.map(countOf).join(',')}, gateway ${gRows.map(countOf).join(',')})`);
    const ctUid = (t: Target): string => uidOf(t === gateway ? gCt : dCt);
    const rssSampler = new RssSampler(gw.pid);

    // ---- (c) peak RSS while streaming the ~1 GB study: first, while the gateway has served
    // nothing but the study list, so the figure is the streaming's; the whole run's VmHWM is
    // reported at the end.
    if (PHASES.has('c') && dBig && gBig && big.uploaded > 0) {
      console.log(`(c) gateway RSS while streaming the ${fmt(big.bytes / MB, 0)} MB study (${big.uploaded} instances x ${BIG_FRAMES} frames), sampled every ${SAMPLE_MS} ms`);
      const dRun = await getCounted(direct, `/studies/${uidOf(dBig)}`, ACCEPT_DICOM);
      console.log(`    direct  ${fmt(dRun.ms, 0)} ms, ${fmt(dRun.bytes / MB, 0)} MB (${fmt(dRun.bytes / MB / (dRun.ms / 1000), 0)} MB/s)`);
      const before = readMem(gw.pid)!;
      const reset = resetPeak(gw.pid);
      rssSampler.start();
      const cpu0 = cpuMs(gw.pid);
      const gRun = await getCounted(bigClient, `/studies/${uidOf(gBig)}`, ACCEPT_DICOM);
      rssSampler.stop();
      const after = readMem(gw.pid)!;
      if (gRun.status !== 200) throw new Error(`gateway retrieve of the big study: HTTP ${gRun.status}`);
      console.log(`    gateway ${fmt(gRun.ms, 0)} ms, ${fmt(gRun.bytes / MB, 0)} MB (${fmt(gRun.bytes / MB / (gRun.ms / 1000), 0)} MB/s), gateway CPU ${fmt(cpuMs(gw.pid) - cpu0, 0)} ms`);
      console.log(`    RSS before ${fmt(before.rssKiB / 1024, 1)} MiB, sampled peak ${fmt(rssSampler.maxKiB / 1024, 1)} MiB (${rssSampler.samples} samples), VmHWM ${fmt(after.hwmKiB / 1024, 1)} MiB${reset ? ' (reset before the run)' : ' (since start: clear_refs not writable)'}, after ${fmt(after.rssKiB / 1024, 1)} MiB`);
      // The shape of the curve: RSS at each tenth of the run (flat = streaming; a ramp = something per instance).
      const tr = rssSampler.trace;
      const tenths = Array.from({ length: 11 }, (_, i) => tr[Math.min(tr.length - 1, Math.round((i * (tr.length - 1)) / 10))]?.[1] ?? NaN);
      console.log(`    RSS by tenths of the run (MiB): ${tenths.map((k) => fmt(k / 1024, 0)).join(' ')}`);
      const peakKiB = reset ? Math.max(after.hwmKiB, rssSampler.maxKiB) : rssSampler.maxKiB;
      result.rss = {
        study: { instances: big.uploaded, framesPerInstance: BIG_FRAMES, uploadedBytes: big.bytes },
        direct: { ms: round(dRun.ms, 0), bytes: dRun.bytes }, gateway: { ms: round(gRun.ms, 0), bytes: gRun.bytes },
        rssBeforeMiB: round(before.rssKiB / 1024, 1), sampledPeakMiB: round(rssSampler.maxKiB / 1024, 1), samples: rssSampler.samples,
        rssByTenthMiB: tenths.map((k) => round(k / 1024, 1)), trace: tr.map(([t, k]) => [t, round(k / 1024, 1)]),
        vmHwmMiB: round(after.hwmKiB / 1024, 1), vmHwmReset: reset, rssAfterMiB: round(after.rssKiB / 1024, 1), peakMiB: round(peakKiB / 1024, 1), peakMB: round((peakKiB * 1024) / MB, 1),
      };
      console.log();
    }

    // ---- (a) WADO-RS retrieve of the whole study, interleaved
    // ---- (d) head series: faces allowed (reference), first defacing retrieve (analysis), later ones
    if (PHASES.has('d') && heads.length) {
      const allow: Target = { name: 'gateway', pool: gateway.pool, base: '/dicom-web', headers: { authorization: `Bearer ${TOKEN}-allow` } };
      console.log(`(d) head series, ${HEAD_COPIES} copies of each: per copy, a retrieve with faces: allow and the first defacing retrieve (analysis included), interleaved; then ${LATER_PAIRS} pairs of allow and later defacing retrieves (stored decision)`);
      const rows: Record<string, unknown>[] = [];
      for (const h of heads) {
        // Each client sees its own pseudonyms: the copies are found through its own QIDO (any
        // order: the copies are alike, and each defacing copy is retrieved once undecided).
        const seriesOf = async (t: Target): Promise<string[]> => {
          const study = (await getJson<Row[]>(t, '/studies')).find((r) => countOf(r) === h.instances * HEAD_COPIES);
          if (!study) throw new Error(`${h.name}: not listed through the gateway`);
          const series = await getJson<Row[]>(t, `/studies/${uidOf(study)}/series`);
          return series.map((r) => `/studies/${uidOf(study)}/series/${String((r as Record<string, { Value?: unknown[] }>)['0020000E']?.Value?.[0])}`);
        };
        const allowPaths = await seriesOf(allow);
        const defacePaths = await seriesOf(gateway);
        if (allowPaths.length !== HEAD_COPIES || defacePaths.length !== HEAD_COPIES) throw new Error(`${h.name}: ${allowPaths.length}/${defacePaths.length} series listed, ${HEAD_COPIES} uploaded`);
        const timed = async (t: Target, path: string): Promise<{ ms: number; cpuMs: number; bytes: number }> => {
          const c0 = cpuMs(gw!.pid);
          const r = await getCounted(t, path, ACCEPT_DICOM);
          if (r.status !== 200) throw new Error(`${h.name}: HTTP ${r.status}`);
          return { ms: r.ms, cpuMs: cpuMs(gw!.pid) - c0, bytes: r.bytes };
        };
        // Warm-up: every copy once with faces: allow (the facts, the PACS's cache, the client's
        // pseudonyms), and the defacing client's pseudonyms by an instance query (which makes
        // no face decision), so that its first retrieves, like the allow ones, pay for the face
        // work and not for a client's first sight of 160 or 400 UIDs.
        const allowFirst = await timed(allow, allowPaths[0]!);
        for (const p of allowPaths.slice(1)) await timed(allow, p);
        for (const p of defacePaths) {
          const r = await gateway.pool.request({ method: 'GET', path: `${gateway.base}${p}/instances`, headers: { ...gateway.headers, accept: 'application/dicom+json' } });
          await r.body.text();
        }
        const logBefore = readFileSync(gw.logFile, 'utf8').length;
        // Pairs: an allow retrieve, then the first defacing retrieve of the next copy; the ratio
        // of each pair is taken, so that the machine's drift between pairs cancels.
        const firsts: { ms: number; cpuMs: number; ratio: number; allowMs: number }[] = [];
        let peakKiB = 0;
        // Peak RSS around each retrieve (VmHWM reset before it, and sampled): the first defacing
        // ones, and for comparison the allow retrieves and the later defacing ones (what the
        // analysis adds, and what streaming alone takes).
        let allowPeakKiB = 0;
        let laterPeakKiB = 0;
        const peakOf = async <T>(run: () => Promise<T>): Promise<{ r: T; kiB: number }> => {
          const reset = resetPeak(gw!.pid);
          rssSampler.start();
          const r = await run();
          rssSampler.stop();
          return { r, kiB: Math.max(rssSampler.maxKiB, reset ? readMem(gw!.pid)!.hwmKiB : 0) };
        };
        for (let c = 0; c < HEAD_COPIES; c++) {
          const pa = await peakOf(() => timed(allow, allowPaths[c % allowPaths.length]!));
          const a = pa.r;
          allowPeakKiB = Math.max(allowPeakKiB, pa.kiB);
          const pf = await peakOf(() => timed(gateway, defacePaths[c]!));
          const f = pf.r;
          peakKiB = Math.max(peakKiB, pf.kiB);
          firsts.push({ ms: f.ms, cpuMs: f.cpuMs, ratio: f.ms / a.ms, allowMs: a.ms });
        }
        const laters: { ms: number; cpuMs: number; ratio: number; allowMs: number; allowCpuMs: number }[] = [];
        for (let i = 0; i < LATER_PAIRS; i++) {
          const a = await timed(allow, allowPaths[i % allowPaths.length]!);
          const pl = await peakOf(() => timed(gateway, defacePaths[i % defacePaths.length]!));
          const l = pl.r;
          laterPeakKiB = Math.max(laterPeakKiB, pl.kiB);
          laters.push({ ms: l.ms, cpuMs: l.cpuMs, ratio: l.ms / a.ms, allowMs: a.ms, allowCpuMs: a.cpuMs });
        }
        const logged = readFileSync(gw.logFile, 'utf8').slice(logBefore).split('\n').filter((l) => l.includes('face decision made')).map((l) => JSON.parse(l) as { kind: string; analysisMs: number; fetchedInstances: number; totalMs: number });
        const med = (xs: number[]): number => quantile([...xs].sort((x, y) => x - y), 0.5);
        // The gateway's first decision since it started runs cold (the JIT has not compiled the
        // analysis yet): it is reported on its own, and the target is judged on the others.
        const warmFirsts = firsts.length > 1 ? firsts.slice(1) : firsts;
        const ref = med([...firsts.map((r) => r.allowMs), ...laters.map((r) => r.allowMs)]);
        // The floor of any analysis that reads the same instances: fetching them directly from
        // Orthanc (every k-th, four at a time, Explicit VR Little Endian), nothing else.
        const fetched = logged[0]?.fetchedInstances ?? 0;
        const step = fetched > 0 ? Math.max(1, Math.round(h.instances / fetched)) : 0;
        const sample = step ? h.sops.filter((_, i) => i % step === 0) : [];
        const tFetch = now();
        const queue = [...sample];
        await Promise.all(Array.from({ length: 4 }, async () => {
          for (let sop = queue.shift(); sop; sop = queue.shift()) {
            const r = await getCounted(direct, `/studies/${h.study}/series/${h.series}/instances/${sop}`, `${ACCEPT_DICOM}; transfer-syntax=1.2.840.10008.1.2.1`);
            if (r.status !== 200) throw new Error(`direct fetch of a sampled instance: HTTP ${r.status}`);
          }
        }));
        const sampleFetchMs = now() - tFetch;
        const row = {
          series: h.name, instances: h.instances, mb: round(h.bytes / MB, 0), copies: HEAD_COPIES,
          allowMs: round(ref, 0), allowCpuMs: round(med(laters.map((r) => r.allowCpuMs)), 0), allowFirstMs: round(allowFirst.ms, 0),
          firstMs: round(med(warmFirsts.map((r) => r.ms)), 0), firstCpuMs: round(med(warmFirsts.map((r) => r.cpuMs)), 0), firstRatio: round(med(warmFirsts.map((r) => r.ratio)), 2),
          coldFirstRatio: round(firsts[0]!.ratio, 2),
          firstRatios: firsts.map((r) => round(r.ratio, 2)),
          laterMs: round(med(laters.map((r) => r.ms)), 0), laterCpuMs: round(med(laters.map((r) => r.cpuMs)), 0), laterRatio: round(med(laters.map((r) => r.ratio)), 2),
          decision: logged[0]?.kind ?? 'none logged', decisions: logged.length,
          analysisMs: round(med(logged.map((l) => l.analysisMs)), 0), fetchedInstances: logged[0]?.fetchedInstances ?? NaN,
          totalDecisionMs: round(med(logged.map((l) => l.totalMs)), 0),
          directSampleFetchMs: round(sampleFetchMs, 0), floorRatio: round((ref + sampleFetchMs) / ref, 2),
          peakRssMiB: round(peakKiB / 1024, 1), peakRssMB: round((peakKiB * 1024) / MB, 1),
          allowPeakRssMB: round((allowPeakKiB * 1024) / MB, 1), laterPeakRssMB: round((laterPeakKiB * 1024) / MB, 1),
        };
        rows.push(row);
        console.log(`    ${h.name}: allow ${fmt(row.allowMs, 0)} ms (CPU ${fmt(row.allowCpuMs, 0)} ms; its first: ${fmt(row.allowFirstMs, 0)} ms); first defacing ${fmt(row.firstMs, 0)} ms (${fmt(row.firstRatio, 2)}x, median after the first of ${row.firstRatios.join(', ')}; CPU ${fmt(row.firstCpuMs, 0)} ms; ${row.decisions} decisions (${row.decision}) in ${fmt(row.totalDecisionMs, 0)} ms, of which reading and analysis ${fmt(row.analysisMs, 0)} ms, over ${row.fetchedInstances} fetched instances); later ${fmt(row.laterMs, 0)} ms (${fmt(row.laterRatio, 2)}x, CPU ${fmt(row.laterCpuMs, 0)} ms); peak RSS ${fmt(row.peakRssMB, 0)} MB (allow retrieves ${fmt(row.allowPeakRssMB, 0)} MB, later defacing ${fmt(row.laterPeakRssMB, 0)} MB)`);
        console.log(`    ${h.name}: the same ${sample.length} instances fetched directly from Orthanc take ${fmt(sampleFetchMs, 0)} ms: any analysis that reads them is at least ${fmt(row.floorRatio, 2)}x the allow retrieve on this machine`);
      }
      result.faces = rows;
      console.log();
    }

    if (PHASES.has('a')) {
      console.log(`(a) WADO-RS retrieve of the ${INSTANCES}-instance study: ${WARMUPS} warm-up + ${RUNS} timed runs per path, interleaved (proxy = pass-through reference)`);
      const runs: Record<Target['name'], { ms: number; ttfbMs: number; bytes: number }[]> = { direct: [], nginx: [], proxy: [], gateway: [] };
      // CPU of every process per timed retrieve, by path: what the two cores have to do.
      const cpuOf: Record<Target['name'], { orthanc: number; client: number; hop: number; hopSys: number }[]> = { direct: [], nginx: [], proxy: [], gateway: [] };
      const cpu0 = cpuMs(gw.pid);
      rssSampler.start();
      for (let i = 0; i < WARMUPS + RUNS; i++) {
        for (let j = 0; j < all.length; j++) {
          const t = all[(i + j) % all.length]!;
          const c0 = { orthanc: orthancPid ? cpuMs(orthancPid) : NaN, client: selfCpuMs(), hop: hopCpu(t), hopSys: hopSys(t) };
          const r = await getCounted(t, `/studies/${ctUid(t)}`, ACCEPT_DICOM);
          if (i >= WARMUPS) cpuOf[t.name].push({ orthanc: (orthancPid ? cpuMs(orthancPid) : NaN) - c0.orthanc, client: selfCpuMs() - c0.client, hop: hopCpu(t) - c0.hop, hopSys: hopSys(t) - c0.hopSys });
          if (r.status !== 200) throw new Error(`${t.name} retrieve: HTTP ${r.status}`);
          const warm = i < WARMUPS;
          console.log(`    ${warm ? 'warm-up' : `run ${i - WARMUPS + 1}  `} ${t.name.padEnd(7)} ${fmt(r.ms, 0).padStart(6)} ms  (first byte ${fmt(r.ttfbMs, 0)} ms, ${fmt(r.bytes / MB, 1)} MB, ${fmt(r.bytes / MB / (r.ms / 1000), 0)} MB/s)`);
          if (!warm) runs[t.name].push(r);
        }
      }
      rssSampler.stop();
      const gwCpu = cpuMs(gw.pid) - cpu0;
      // The gateway's pre-flight (src/http/dicomweb.ts pixelFacts): an instance-level QIDO with
      // the pixel-policy fields, answered by Orthanc before the retrieve starts.
      const preflight: number[] = [];
      for (let i = 0; i < 3; i++) {
        const r = await getCounted(direct, `/studies/${ctUid(direct)}/instances?includefield=00280301,00080060,00080016,00080008,00080018`, 'application/dicom+json');
        preflight.push(r.ms);
      }
      console.log(`    the gateway's pre-flight query (/studies/{uid}/instances?includefield=…) answered by Orthanc directly: ${preflight.map((x) => fmt(x, 0)).join(', ')} ms`);
      const summary = (rs: { ms: number; bytes: number; ttfbMs: number }[]) => ({
        runsMs: rs.map((r) => round(r.ms, 1)), medianMs: round(median(rs.map((r) => r.ms)), 1), bestMs: round(Math.min(...rs.map((r) => r.ms)), 1),
        medianTtfbMs: round(median(rs.map((r) => r.ttfbMs)), 1), bytes: rs[0]?.bytes ?? 0, medianMBps: round((rs[0]?.bytes ?? 0) / MB / (median(rs.map((r) => r.ms)) / 1000), 1),
      });
      const d = summary(runs.direct), x = summary(runs.proxy), g = summary(runs.gateway), n = runs.nginx.length ? summary(runs.nginx) : undefined;
      result.retrieve = {
        study: { instances: INSTANCES, rows: ROWS, cols: COLS }, direct: d, proxy: x, gateway: g, ...(n ? { nginx: n, nginxRatioMedian: round(n.medianMs / d.medianMs, 3) } : {}),
        ratioMedian: round(g.medianMs / d.medianMs, 3), ratioBest: round(g.bestMs / d.bestMs, 3), proxyRatioMedian: round(x.medianMs / d.medianMs, 3),
        preflightQidoMs: { runs: preflight.map((v) => round(v, 1)), median: round(median(preflight), 1) },
        gatewayCpuMsPerRetrieve: round(gwCpu / (WARMUPS + RUNS), 0), gatewayPeakRssMiB: round(rssSampler.maxKiB / 1024, 1),
      };
      console.log(`    gateway CPU ${fmt(gwCpu / (WARMUPS + RUNS), 0)} ms per retrieve; gateway RSS peak ${fmt(rssSampler.maxKiB / 1024, 1)} MiB (sampled)`);
      // The CPU budget: two cores run Orthanc, the client and (for proxy and gateway) the hop, so
      // a retrieve cannot take less wall time than their CPU time over 2. The ratio target leaves
      // the hop 2 x 1.15 x direct wall - (Orthanc + client CPU).
      const med = (k: Target['name'], f: 'orthanc' | 'client' | 'hop' | 'hopSys'): number => median(cpuOf[k].map((c) => c[f]));
      const budget: Record<string, unknown> = {};
      for (const k of ['direct', 'nginx', 'proxy', 'gateway'] as const) {
        if (!cpuOf[k].length) continue;
        const o = med(k, 'orthanc'), cl = med(k, 'client'), hop = med(k, 'hop'), sys = med(k, 'hopSys');
        budget[k] = { orthancCpuMs: round(o, 0), clientCpuMs: round(cl, 0), hopCpuMs: round(hop, 0), ...(k === 'direct' ? {} : { hopKernelCpuMs: round(sys, 0) }), floorMs: round((o + cl + hop) / 2, 0) };
        console.log(`    CPU per retrieve, ${k.padEnd(7)}: Orthanc ${fmt(o, 0)} ms + client ${fmt(cl, 0)} ms${k === 'direct' ? '' : ` + ${k} ${fmt(hop, 0)} ms (of which kernel ${fmt(sys, 0)} ms)`} = ${fmt(o + cl + hop, 0)} ms on 2 cores, so at least ${fmt((o + cl + hop) / 2, 0)} ms of wall time`);
      }
      const allowed = 2 * TARGET_RATIO * d.medianMs - (med('direct', 'orthanc') + med('direct', 'client'));
      budget.gatewayCpuAllowedMs = round(allowed, 0);
      (result.retrieve as Record<string, unknown>).cpuBudget = budget;
      console.log(`    ${TARGET_RATIO}x direct (${fmt(TARGET_RATIO * d.medianMs, 0)} ms) leaves a hop at most ${fmt(allowed, 0)} ms of CPU per retrieve on this machine; the reference proxy uses ${fmt(med('proxy', 'hop'), 0)} ms, the gateway ${fmt(med('gateway', 'hop'), 0)} ms${cpuOf.nginx.length ? `, nginx ${fmt(med('nginx', 'hop'), 0)} ms` : ''}\n`);
      if (cpuOf.nginx.length) {
        const ratio = med('gateway', 'hop') / med('nginx', 'hop');
        budget.gatewayHopCpuOverNginx = round(ratio, 2);
        console.log(`    hop CPU per retrieve, gateway / nginx: ${fmt(ratio, 1)}x (target <= ${TARGET_HOP_CPU_OVER_NGINX}x); retrieve time, nginx / direct: ${fmt(n!.medianMs / d.medianMs, 2)}x\n`);
      }
    }

    // ---- (b) QIDO latency under concurrency
    if (PHASES.has('b')) {
      console.log(`(b) QIDO-RS at concurrency ${QIDO_CONCURRENCY}, ${QIDO_SECONDS} s per path (after a 1 s warm-up); then concurrency 1 for 2 s per path`);
      const qido: Record<string, unknown> = {};
      const queries = [
        { key: 'studies', label: '/studies?includefield=all', path: () => '/studies?includefield=all' },
        { key: 'series', label: '/studies/{uid}/series', path: (t: Target) => `/studies/${ctUid(t)}/series` },
      ];
      for (const q of queries) {
        const per: Partial<Record<Target['name'], LoadResult>> = {};
        for (const t of all) {
          await load(t, q.path(t), QIDO_CONCURRENCY, 1);
          const c0 = { orthanc: orthancPid ? cpuMs(orthancPid) : NaN, client: selfCpuMs(), hop: hopCpu(t) };
          const r = per[t.name] = await load(t, q.path(t), QIDO_CONCURRENCY, QIDO_SECONDS);
          // CPU per request of every process: at concurrency 16 on 2 cores, p50 ~ 16 x (their sum) / 2.
          const perReq = { orthanc: ((orthancPid ? cpuMs(orthancPid) : NaN) - c0.orthanc) / r.requests, client: (selfCpuMs() - c0.client) / r.requests, hop: (hopCpu(t) - c0.hop) / r.requests };
          Object.assign(r, { cpuPerRequestMs: { orthanc: round(perReq.orthanc, 3), client: round(perReq.client, 3), hop: round(perReq.hop, 3) } });
          const cpu = `, CPU/request: Orthanc ${fmt(perReq.orthanc, 2)} + client ${fmt(perReq.client, 2)}${t === direct ? '' : ` + ${t.name} ${fmt(perReq.hop, 2)}`} ms`;
          console.log(`    ${q.label.padEnd(26)} ${t.name.padEnd(7)} ${String(r.requests).padStart(6)} requests, ${fmt(r.rps, 0).padStart(5)} req/s, p50 ${fmt(r.p50, 2)} ms, p95 ${fmt(r.p95, 2)} ms, p99 ${fmt(r.p99, 2)} ms${r.errors ? `, ${r.errors} errors` : ''}${cpu}`);
        }
        // One client at a time: the overhead without queueing, for reference.
        const solo: Partial<Record<Target['name'], LoadResult>> = {};
        for (const t of all) solo[t.name] = await load(t, q.path(t), 1, 2);
        console.log(`    ${q.label.padEnd(26)} concurrency 1: p50 direct ${fmt(solo.direct!.p50, 2)} ms,${solo.nginx ? ` nginx ${fmt(solo.nginx.p50, 2)} ms,` : ''} proxy ${fmt(solo.proxy!.p50, 2)} ms, gateway ${fmt(solo.gateway!.p50, 2)} ms`);
        // With every core busy, 16 requests in flight wait for each other's CPU (Little's law):
        // +3 ms of median leaves a hop about 3 x 2 cores / 16 of CPU per request.
        const hopOf = (r: LoadResult | undefined): number => (r as { cpuPerRequestMs?: { hop: number } } | undefined)?.cpuPerRequestMs?.hop ?? NaN;
        console.log(`    ${q.label.padEnd(26)} +${TARGET_OVERHEAD_MS} ms at concurrency ${QIDO_CONCURRENCY} on ${cpus().length} cores leaves a hop ~${fmt((TARGET_OVERHEAD_MS * cpus().length) / QIDO_CONCURRENCY, 2)} ms of CPU per request; the reference proxy uses ${fmt(hopOf(per.proxy), 2)} ms, the gateway ${fmt(hopOf(per.gateway), 2)} ms`);
        qido[q.key] = {
          path: q.label, concurrency: QIDO_CONCURRENCY, direct: per.direct, proxy: per.proxy, gateway: per.gateway, ...(per.nginx ? { nginx: per.nginx, nginxOverheadP50Ms: round(per.nginx.p50 - per.direct!.p50, 2) } : {}),
          overheadP50Ms: round(per.gateway!.p50 - per.direct!.p50, 2), overheadP95Ms: round(per.gateway!.p95 - per.direct!.p95, 2),
          proxyOverheadP50Ms: round(per.proxy!.p50 - per.direct!.p50, 2),
          concurrency1: { direct: solo.direct, nginx: solo.nginx, proxy: solo.proxy, gateway: solo.gateway, overheadP50Ms: round(solo.gateway!.p50 - solo.direct!.p50, 2), proxyOverheadP50Ms: round(solo.proxy!.p50 - solo.direct!.p50, 2) },
        };
      }
      result.qido = qido;
      console.log();
    }

    const end = readMem(gw.pid);
    if (end) {
      result.gatewayVmHwmWholeRunMiB = round(end.hwmKiB / 1024, 1);
      result.gatewayRssEndMiB = round(end.rssKiB / 1024, 1);
      console.log(`gateway memory over the whole run (VmHWM, since the reset before (c)): ${fmt(end.hwmKiB / 1024, 1)} MiB; RSS at the end ${fmt(end.rssKiB / 1024, 1)} MiB\n`);
    }
  } finally {
    for (const p of pools) await p.close();
    await proxy?.stop();
    await nginx?.stop();
    const code = await gw?.stop();
    if (gw && code !== 0) console.log(`note: the gateway exited with ${code}`);
    if (gw && process.env.BENCH_KEEP_LOG === '1') writeFileSync(join(outDir, 'gateway.log'), readFileSync(gw.logFile));
    await orthanc?.stop();
    rmSync(work, { recursive: true, force: true });
  }

  // ---- report
  const loadEnd = loadavg().map((x) => round(x, 2));
  type Timing = { medianMs: number; bestMs: number; medianTtfbMs: number };
  const a = result.retrieve as { ratioMedian: number; direct: Timing; nginx?: Timing; proxy: Timing; gateway: Timing; preflightQidoMs: { median: number }; cpuBudget?: Record<string, { hopCpuMs?: number }> & { gatewayHopCpuOverNginx?: number } } | undefined;
  const b = result.qido as Record<string, { direct: LoadResult; nginx?: LoadResult; proxy: LoadResult; gateway: LoadResult; overheadP50Ms: number; nginxOverheadP50Ms?: number; path: string; concurrency1: { direct: LoadResult; nginx?: LoadResult; proxy: LoadResult; gateway: LoadResult } }> | undefined;
  const c = result.rss as { peakMB: number; peakMiB: number; study: { uploadedBytes: number } } | undefined;
  const targets: Record<string, { value: number; target: string; met: boolean }> = {};
  const lines: string[][] = [['measurement', 'direct', 'nginx (ref.)', 'proxy (ref.)', 'gateway', 'figure', 'target', 'verdict']];
  const nx = (f: (x: NonNullable<typeof a>['direct']) => string, t?: Timing): string => (t ? f(t) : '');
  const ms0 = (x: number): string => `${fmt(x, 0)} ms`;
  const ms2 = (x: number): string => `${fmt(x, 2)} ms`;
  const plus = (x: number): string => `${x >= 0 ? '+' : ''}${fmt(x, 2)} ms`;
  if (a) {
    targets.retrieveRatio = { value: a.ratioMedian, target: `<= ${TARGET_RATIO}`, met: a.ratioMedian <= TARGET_RATIO };
    lines.push([`(a) WADO-RS study, ${INSTANCES} inst., median`, ms0(a.direct.medianMs), a.nginx ? `${ms0(a.nginx.medianMs)} (${fmt(a.nginx.medianMs / a.direct.medianMs, 2)}x)` : '', ms0(a.proxy.medianMs), ms0(a.gateway.medianMs), `${fmt(a.ratioMedian, 2)}x`, `<= ${TARGET_RATIO}x`, a.ratioMedian <= TARGET_RATIO ? 'MET' : 'MISSED']);
    lines.push(['    best', ms0(a.direct.bestMs), nx((t) => ms0(t.bestMs), a.nginx), ms0(a.proxy.bestMs), ms0(a.gateway.bestMs), `${fmt(a.gateway.bestMs / a.direct.bestMs, 2)}x`, '', '']);
    lines.push(['    first byte (median)', ms0(a.direct.medianTtfbMs), nx((t) => ms0(t.medianTtfbMs), a.nginx), ms0(a.proxy.medianTtfbMs), ms0(a.gateway.medianTtfbMs), '', '', '']);
    lines.push(['    pre-flight QIDO at Orthanc (median)', ms0(a.preflightQidoMs.median), '', '', '', '', '', '']);
    const cb = a.cpuBudget;
    if (cb?.gatewayHopCpuOverNginx !== undefined) {
      const over = cb.gatewayHopCpuOverNginx;
      targets.hopCpuOverNginx = { value: over, target: `<= ${TARGET_HOP_CPU_OVER_NGINX}`, met: over <= TARGET_HOP_CPU_OVER_NGINX };
      lines.push(['    hop CPU per retrieve (median)', '', ms0(cb.nginx?.hopCpuMs ?? NaN), ms0(cb.proxy?.hopCpuMs ?? NaN), ms0(cb.gateway?.hopCpuMs ?? NaN), `${fmt(over, 1)}x nginx`, `<= ${TARGET_HOP_CPU_OVER_NGINX}x`, over <= TARGET_HOP_CPU_OVER_NGINX ? 'MET' : 'MISSED']);
    }
  }
  if (b) {
    for (const [k, q] of Object.entries(b)) {
      targets[`qidoOverhead_${k}`] = { value: q.overheadP50Ms, target: `<= ${TARGET_OVERHEAD_MS} ms`, met: q.overheadP50Ms <= TARGET_OVERHEAD_MS };
      if (q.nginxOverheadP50Ms !== undefined) targets[`qidoOverheadOverNginx_${k}`] = { value: round(q.overheadP50Ms - q.nginxOverheadP50Ms, 2), target: `<= nginx's + ${TARGET_OVER_NGINX_MS} ms`, met: q.overheadP50Ms <= q.nginxOverheadP50Ms + TARGET_OVER_NGINX_MS };
      lines.push([`(b) QIDO ${q.path} c=${QIDO_CONCURRENCY} p50`, ms2(q.direct.p50), q.nginx ? ms2(q.nginx.p50) : '', ms2(q.proxy.p50), ms2(q.gateway.p50), plus(q.overheadP50Ms), `<= ${TARGET_OVERHEAD_MS} ms`, q.overheadP50Ms <= TARGET_OVERHEAD_MS ? 'MET' : 'MISSED']);
      lines.push(['    p95', ms2(q.direct.p95), q.nginx ? ms2(q.nginx.p95) : '', ms2(q.proxy.p95), ms2(q.gateway.p95), plus(q.gateway.p95 - q.direct.p95), '', '']);
      lines.push(['    throughput', `${fmt(q.direct.rps, 0)} req/s`, q.nginx ? `${fmt(q.nginx.rps, 0)} req/s` : '', `${fmt(q.proxy.rps, 0)} req/s`, `${fmt(q.gateway.rps, 0)} req/s`, '', '', '']);
      const c1 = q.concurrency1.gateway.p50 - q.concurrency1.direct.p50;
      targets[`qidoC1_${k}`] = { value: round(c1, 2), target: `<= +${TARGET_C1_MS} ms`, met: c1 <= TARGET_C1_MS };
      lines.push(['    c=1 p50', ms2(q.concurrency1.direct.p50), q.concurrency1.nginx ? ms2(q.concurrency1.nginx.p50) : '', ms2(q.concurrency1.proxy.p50), ms2(q.concurrency1.gateway.p50), plus(c1), `<= +${TARGET_C1_MS} ms`, c1 <= TARGET_C1_MS ? 'MET' : 'MISSED']);
      if (q.nginxOverheadP50Ms !== undefined) lines.push([`    c=${QIDO_CONCURRENCY} added over nginx's added`, '', plus(q.nginxOverheadP50Ms), '', '', plus(q.overheadP50Ms - q.nginxOverheadP50Ms), `<= +${TARGET_OVER_NGINX_MS} ms`, q.overheadP50Ms <= q.nginxOverheadP50Ms + TARGET_OVER_NGINX_MS ? 'MET' : 'MISSED']);
    }
  }
  if (c) {
    targets.peakRss = { value: c.peakMB, target: `< ${TARGET_RSS_MB} MB`, met: c.peakMB < TARGET_RSS_MB };
    lines.push([`(c) gateway peak RSS, ${fmt(c.study.uploadedBytes / MB, 0)} MB study`, '', '', '', `${fmt(c.peakMB, 0)} MB`, `${fmt(c.peakMiB, 0)} MiB`, `< ${TARGET_RSS_MB} MB`, c.peakMB < TARGET_RSS_MB ? 'MET' : 'MISSED']);
  }
  for (const f of (result.faces as { series: string; firstRatio: number; laterRatio: number; peakRssMB: number; analysisMs: number }[] | undefined) ?? []) {
    lines.push([`(d) ${f.series}: first defacing / allow`, '', '', '', `${fmt(f.firstRatio, 2)}x`, `analysis ${fmt(f.analysisMs, 0)} ms`, `<= ${TARGET_FACE_FIRST}x`, f.firstRatio <= TARGET_FACE_FIRST ? 'MET' : 'MISSED']);
    const ff = f as unknown as { floorRatio: number; coldFirstRatio: number; firstRatios: number[] };
    lines.push([`    each copy's first / allow (the first: cold)`, '', '', '', ff.firstRatios.map((x) => `${fmt(x, 2)}`).join(' '), '', '', '']);
    lines.push(['    floor: allow + direct fetch of the sampled instances', '', '', '', `${fmt(ff.floorRatio, 2)}x`, '', '', '']);
    lines.push(['    later (stored decision) / allow', '', '', '', `${fmt(f.laterRatio, 2)}x`, '', `<= ${TARGET_FACE_LATER}x`, f.laterRatio <= TARGET_FACE_LATER ? 'MET' : 'MISSED']);
    lines.push(['    peak RSS while defacing', '', '', '', `${fmt(f.peakRssMB, 0)} MB`, '', `< ${TARGET_FACE_RSS_MB} MB`, f.peakRssMB < TARGET_FACE_RSS_MB ? 'MET' : 'MISSED']);
    targets[`facesFirst ${f.series}`] = { value: f.firstRatio, target: `<= ${TARGET_FACE_FIRST}x`, met: f.firstRatio <= TARGET_FACE_FIRST };
    targets[`facesLater ${f.series}`] = { value: f.laterRatio, target: `<= ${TARGET_FACE_LATER}x`, met: f.laterRatio <= TARGET_FACE_LATER };
    targets[`facesPeakRss ${f.series}`] = { value: f.peakRssMB, target: `< ${TARGET_FACE_RSS_MB} MB`, met: f.peakRssMB < TARGET_FACE_RSS_MB };
  }
  const hwm = result.gatewayVmHwmWholeRunMiB as number | undefined;
  if (hwm !== undefined) lines.push(['    gateway VmHWM over the whole run', '', '', '', `${fmt((hwm * MiB) / MB, 0)} MB`, `${fmt(hwm, 0)} MiB`, '', '']);
  const widths = lines[0]!.map((_, i) => Math.max(...lines.map((l) => l[i]!.length)));
  const row = (l: string[]): string => `| ${l.map((x, i) => (i === 0 ? x.padEnd(widths[i]!) : x.padStart(widths[i]!))).join(' | ')} |`;
  console.log(row(lines[0]!));
  console.log(`|${widths.map((w, i) => (i === 0 ? `:${'-'.repeat(w + 1)}` : `${'-'.repeat(w + 1)}:`)).join('|')}|`);
  for (const l of lines.slice(1)) console.log(row(l));
  console.log(`\nload average: start ${loadStart.join(' ')}, end ${loadEnd.join(' ')}; total ${fmt((now() - tStart) / 1000, 0)} s`);

  let profile: ReturnType<typeof summarizeProfile> | undefined;
  if (profDir && existsSync(profDir)) {
    const file = readdirSync(profDir).find((f) => f.endsWith('.cpuprofile'));
    if (file) {
      profile = summarizeProfile(join(profDir, file));
      console.log(`\ngateway CPU profile (${join(profDir, file).replace(root + '/', '')}), top functions by self time (whole run):`);
      for (const p of profile) console.log(`  ${fmt(p.pct, 1).padStart(5)}%  ${fmt(p.selfMs, 0).padStart(7)} ms  ${p.fn}  ${p.where}`);
    }
  }

  const out = {
    machine: { cpu: cpus()[0]?.model ?? 'unknown', cpus: cpus().length, totalMemGiB: round(totalmem() / 2 ** 30, 1), node: process.version, loadavgStart: loadStart, loadavgEnd: loadEnd },
    config: { instances: INSTANCES, rows: ROWS, cols: COLS, runs: RUNS, warmups: WARMUPS, qidoSeconds: QIDO_SECONDS, qidoConcurrency: QIDO_CONCURRENCY, bigInstances: BIG_INSTANCES, bigFrames: BIG_FRAMES, sampleMs: SAMPLE_MS, phases: [...PHASES], cpuProfile: CPU_PROF, transport: TRANSPORT ?? 'default', mb: MB, mib: MiB },
    ...result,
    ...(profile ? { cpuProfileTop: profile } : {}),
    targets,
    totalSeconds: round((now() - tStart) / 1000, 1),
  };
  writeFileSync(join(outDir, 'gateway.json'), `${JSON.stringify(out, null, 2)}\n`);
  console.log(`\nwrote ${join(outDir, 'gateway.json').replace(root + '/', '')}`);
}

main().catch((err: unknown) => {
  console.error(err);
  process.exitCode = 1;
});
