/**
 * Throughput and memory benchmark of the Part 10 de-identification engine.
 *
 *   npm run bench                      (builds dist/ if needed, runs with --expose-gc)
 *   node --expose-gc --import tsx bench/engine.ts
 *
 * One run measures, on one JS thread:
 *  - throughput over a generated CT series (512 x 512 x 16 bit, realistic header with
 *    private tags), all files read into memory before timing, fed as 64 KiB chunks:
 *      engine       deidentifyPart10() streaming, output bytes counted
 *      dcmjs        naive DicomMessage.readFile -> edit dict -> DicomDict.write()
 *      copy stream  the same chunks through an async generator yielding Buffer.from(chunk)
 *      Buffer.copy  raw copy of every byte into one preallocated buffer (reference)
 *  - memory while the engine streams (i) one 512 x 512 single-frame instance and
 *    (ii) the same header with ~1 GB of pixel data streamed from one reused 64 KiB buffer.
 *
 * Figures go to stdout (a table) and to bench/out/engine.json. See bench/README.md.
 *
 * Environment knobs (for quick local runs; the defaults are the reported configuration):
 *   BENCH_INSTANCES (200), BENCH_REPS (3), BENCH_WARMUPS (1), BENCH_BIG_FRAMES (2000).
 */
import { spawnSync } from 'node:child_process';
import { mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { cpus, loadavg, tmpdir, totalmem } from 'node:os';
import { getHeapSpaceStatistics } from 'node:v8';
import { join } from 'node:path';
import { NODE_FLAGS } from '../src/core/node-version.js';
import { createEngineContext, deidentifyPart10, type EngineContext } from '../src/deid/index.js';
import { cleanFreeText } from '../src/deid/free-text.js';
import type { OptionName } from '../src/deid/table.js';
import { freeTextSet } from '../test/fixtures/free-text-set.js';
import { generateCtSeries } from '../test/fixtures/generate.js';
import { chunked, moduleCommand, projectRoot } from './common.js';

// ---------------------------------------------------------------------------
// Configuration

const CHUNK = 64 * 1024;
const INSTANCES = intEnv('BENCH_INSTANCES', 200);
const REPS = intEnv('BENCH_REPS', 3);
const WARMUPS = intEnv('BENCH_WARMUPS', 1);
const BIG_FRAMES = intEnv('BENCH_BIG_FRAMES', 2000);
const ROWS = 512;
const COLS = 512;
const SEED = 20240601;
const SAMPLE_MS = 50;

const TARGET_GBPS = 1;
const TARGET_VS_DCMJS = 10;
/** "Flat": peak growth for the ~1 GB instance within this many MB of the single-frame one. */
const TARGET_FLAT_MB = 5;
/** Per-instance header work in steady state, ms (issue 14): engine-steady.ts. */
const TARGET_STEADY_MS = 0.15;
/** Steady-state passes whose median is the figure (the last ones). */
const STEADY_TAIL = 10;
/** Throughput with Clean Descriptors on, over throughput without (issue 13). */
const TARGET_CLEAN_RATIO = 0.8;

function intEnv(name: string, dflt: number): number {
  const v = process.env[name];
  if (v === undefined || v === '') return dflt;
  const n = Number(v);
  if (!Number.isInteger(n) || n <= 0) throw new Error(`${name} must be a positive integer, got ${v}`);
  return n;
}

// ---------------------------------------------------------------------------
// Small helpers

const gc: () => void = (globalThis as { gc?: () => void }).gc ?? (() => { /* no --expose-gc */ });
const hasGc = typeof (globalThis as { gc?: unknown }).gc === 'function';


const MB = 1e6;
const mbps = (bytes: number, ns: bigint): number => bytes / MB / (Number(ns) / 1e9);
const ms = (ns: bigint): number => Number(ns) / 1e6;
const round = (x: number, digits = 1): number => Number(x.toFixed(digits));

function median(xs: readonly bigint[]): bigint {
  const s = [...xs].sort((a, b) => (a < b ? -1 : a > b ? 1 : 0));
  return s[Math.floor((s.length - 1) / 2)]!; // lower median for even counts
}

function newContext(options: OptionName[] = []): EngineContext {
  return createEngineContext({ clientId: 'bench', profile: { options }, masterSecret: Buffer.alloc(32, 7) });
}


// ---------------------------------------------------------------------------
// The measured paths (each returns the output byte count)

async function enginePass(inputs: readonly Buffer[], ctx: EngineContext): Promise<number> {
  let out = 0;
  for (const input of inputs) {
    for await (const c of deidentifyPart10(chunked(input, CHUNK), ctx)) out += c.length;
  }
  return out;
}

async function* copyThrough(source: AsyncIterable<Buffer>): AsyncGenerator<Buffer> {
  for await (const c of source) yield Buffer.from(c);
}

async function copyStreamPass(inputs: readonly Buffer[]): Promise<number> {
  let out = 0;
  for (const input of inputs) {
    for await (const c of copyThrough(chunked(input, CHUNK))) out += c.length;
  }
  return out;
}

function bufferCopyPass(inputs: readonly Buffer[], dest: Buffer): number {
  let off = 0;
  for (const input of inputs) off += input.copy(dest, off);
  return off;
}

/** The slice of dcmjs 0.49 used here (dcmjs ships no type declarations of its own). */
interface DcmjsDict {
  meta: Record<string, unknown>;
  dict: Record<string, { vr: string; Value?: unknown[] }>;
  write(options?: Record<string, unknown>): ArrayBuffer;
}
interface Dcmjs {
  data: {
    DicomMessage: { readFile(buffer: ArrayBuffer, options?: Record<string, unknown>): DcmjsDict };
    DicomDict: new (meta: Record<string, unknown>) => DcmjsDict;
  };
}

async function loadDcmjs(): Promise<Dcmjs> {
  // `import dcmjs from 'dcmjs'`, through a non-literal specifier so that this file type-checks
  // whether or not an ambient declaration of the module is in the program.
  const specifier: string = 'dcmjs';
  const mod = (await import(specifier)) as { default?: Dcmjs } & Partial<Dcmjs>;
  const dcmjs = mod.default ?? (mod as Dcmjs);
  if (!dcmjs.data?.DicomMessage || !dcmjs.data.DicomDict) throw new Error('dcmjs: data.DicomMessage / data.DicomDict not found');
  return dcmjs;
}

/** Tags the naive baseline deletes outright (besides all private tags). */
const DCMJS_DELETE = ['00100030', '00101040', '00080080', '00080081', '00080090', '00081010', '00080050', '00200010'];

function dcmjsPass(dcmjs: Dcmjs, inputs: readonly ArrayBuffer[]): number {
  let out = 0;
  for (const ab of inputs) {
    const file = dcmjs.data.DicomMessage.readFile(ab);
    const dict = file.dict;
    dict['00100010'] = { vr: 'PN', Value: [] }; // PatientName blanked
    dict['00100020'] = { vr: 'LO', Value: [] }; // PatientID blanked
    for (const t of DCMJS_DELETE) delete dict[t];
    for (const t of Object.keys(dict)) {
      if (parseInt(t.slice(0, 4), 16) % 2 === 1) delete dict[t]; // private (odd group)
    }
    const w = new dcmjs.data.DicomDict(file.meta);
    w.dict = dict;
    out += w.write().byteLength;
  }
  return out;
}

// ---------------------------------------------------------------------------
// Timing

interface Timing {
  readonly name: string;
  readonly inputBytes: number;
  readonly outputBytes: number;
  readonly runsNs: readonly bigint[];
  readonly bestNs: bigint;
  readonly medianNs: bigint;
}

async function timePath(name: string, inputBytes: number, prepare: () => void, run: () => Promise<number> | number): Promise<Timing> {
  for (let i = 0; i < WARMUPS; i++) {
    prepare();
    await run();
  }
  const runsNs: bigint[] = [];
  let outputBytes = 0;
  for (let i = 0; i < REPS; i++) {
    prepare();
    gc();
    const t0 = process.hrtime.bigint();
    outputBytes = await run();
    runsNs.push(process.hrtime.bigint() - t0);
  }
  const bestNs = runsNs.reduce((a, b) => (b < a ? b : a));
  return { name, inputBytes, outputBytes, runsNs, bestNs, medianNs: median(runsNs) };
}

/** Paths timed in alternation, run after run (each run gets a fresh context). */
async function timePaths(inputBytes: number, paths: readonly { name: string; run: () => Promise<number> }[]): Promise<Timing[]> {
  for (let i = 0; i < WARMUPS; i++) for (const p of paths) await p.run();
  const runs = paths.map(() => [] as bigint[]);
  const outputs = paths.map(() => 0);
  for (let i = 0; i < REPS; i++) {
    for (const [k, p] of paths.entries()) {
      gc();
      const t0 = process.hrtime.bigint();
      outputs[k] = await p.run();
      runs[k]!.push(process.hrtime.bigint() - t0);
    }
  }
  return paths.map((p, k) => ({ name: p.name, inputBytes, outputBytes: outputs[k]!, runsNs: runs[k]!, bestNs: runs[k]!.reduce((a, b) => (b < a ? b : a)), medianNs: median(runs[k]!) }));
}

// ---------------------------------------------------------------------------
// Memory

interface MemResult {
  readonly label: string;
  readonly inputBytes: number;
  readonly outputBytes: number;
  readonly seconds: number;
  readonly samples: number;
  readonly baseline: { rss: number; heapUsed: number; arrayBuffers: number };
  readonly peakRssGrowth: number;
  readonly peakHeapAbGrowth: number;
  readonly peakRss: number;
  /** heapUsed + arrayBuffers after the run and a full GC, minus the baseline: what the run left behind. */
  readonly retainedHeapAbGrowth: number;
  /** V8 new space (young generation) capacity at the end of the run: short-lived garbage lives here until a scavenge. */
  readonly youngGenBytes: number;
}

/**
 * Samples process.memoryUsage() every SAMPLE_MS, and also every SAMPLE_EVERY_CHUNKS source
 * chunks (1 MiB): at several GB/s a ~1 GB instance streams in well under a second, so the
 * 50 ms cadence alone would give a handful of samples. The engine over in-memory input runs
 * on microtasks only, so a setInterval timer would not fire until the run ends; the source
 * generator therefore calls tick() for every chunk. Start and end samples are taken too.
 * One sample costs ~10 us, so the memory runs are a little slower than the timed ones.
 */
const SAMPLE_EVERY_CHUNKS = 16;

class MemSampler {
  private readonly base = process.memoryUsage();
  private last = process.hrtime.bigint();
  private readonly periodNs = BigInt(SAMPLE_MS) * 1_000_000n;
  private chunks = 0;
  peakRss = this.base.rss;
  peakHeapAb = this.base.heapUsed + this.base.arrayBuffers;
  samples = 0;

  get baseline(): { rss: number; heapUsed: number; arrayBuffers: number } {
    return { rss: this.base.rss, heapUsed: this.base.heapUsed, arrayBuffers: this.base.arrayBuffers };
  }

  sample(): void {
    const m = process.memoryUsage();
    this.samples++;
    if (m.rss > this.peakRss) this.peakRss = m.rss;
    const h = m.heapUsed + m.arrayBuffers;
    if (h > this.peakHeapAb) this.peakHeapAb = h;
  }

  tick(): void {
    const now = process.hrtime.bigint();
    if (++this.chunks % SAMPLE_EVERY_CHUNKS === 0 || now - this.last >= this.periodNs) {
      this.last = now;
      this.sample();
    }
  }
}

async function measureMemory(label: string, inputBytes: number, source: (tick: () => void) => AsyncIterable<Buffer>): Promise<MemResult> {
  const ctx = newContext();
  gc();
  gc();
  const s = new MemSampler();
  const src = source(() => s.tick());
  // Backup sampler for whenever the event loop does get a turn (it rarely does here).
  const timer = setInterval(() => s.sample(), SAMPLE_MS);
  const t0 = process.hrtime.bigint();
  let out = 0;
  try {
    s.sample();
    for await (const c of deidentifyPart10(src, ctx)) out += c.length;
    s.sample();
  } finally {
    clearInterval(timer);
  }
  const seconds = Number(process.hrtime.bigint() - t0) / 1e9;
  const youngGenBytes = getHeapSpaceStatistics().find((x) => x.space_name === 'new_space')?.space_size ?? 0;
  gc();
  gc();
  const after = process.memoryUsage();
  const b = s.baseline;
  return {
    label, inputBytes, outputBytes: out, seconds, samples: s.samples, baseline: b,
    peakRss: s.peakRss,
    peakRssGrowth: s.peakRss - b.rss,
    peakHeapAbGrowth: s.peakHeapAb - (b.heapUsed + b.arrayBuffers),
    retainedHeapAbGrowth: after.heapUsed + after.arrayBuffers - (b.heapUsed + b.arrayBuffers),
    youngGenBytes,
  };
}

// ---------------------------------------------------------------------------
// The ~1 GB synthetic instance: a real CT header, patched

const EXPLICIT_LONG_VRS = new Set(['OB', 'OD', 'OF', 'OL', 'OV', 'OW', 'SQ', 'SV', 'UC', 'UN', 'UR', 'UT', 'UV']);

/**
 * From one generated single-frame CT instance (Explicit VR LE, defined lengths), builds the
 * header of a multi-frame instance: everything up to and including the (7FE0,0010) OW
 * element header, with Number of Frames (0028,0008) inserted and the pixel length set.
 * Also returns `probe`: the very same header bytes but with the original single-frame pixel
 * length and value, a small complete instance whose output size predicts the big one's.
 */
function bigHeader(instance: Buffer, frames: number, pixelBytes: number): { header: Buffer; probe: Buffer; probePixelBytes: number } {
  if (instance.toString('latin1', 128, 132) !== 'DICM') throw new Error('generated instance: no DICM');
  if (pixelBytes >= 0xffffffff || pixelBytes % 2) throw new Error(`pixel data of ${pixelBytes} bytes does not fit a defined 32-bit even length (lower BENCH_BIG_FRAMES)`);
  let pos = 132;
  let insertAt = -1;
  for (;;) {
    if (pos + 8 > instance.length) throw new Error('generated instance: no (7FE0,0010)');
    const group = instance.readUInt16LE(pos);
    const elem = instance.readUInt16LE(pos + 2);
    const tag = (group << 16 | elem) >>> 0;
    const vr = instance.toString('latin1', pos + 4, pos + 6);
    const long = EXPLICIT_LONG_VRS.has(vr);
    const len = long ? instance.readUInt32LE(pos + 8) : instance.readUInt16LE(pos + 6);
    const headLen = long ? 12 : 8;
    if (len === 0xffffffff) throw new Error(`generated instance: undefined length at ${pos}; cannot patch`);
    if (insertAt < 0 && group !== 0x0002 && tag > 0x00280008) {
      if (tag === 0x00280008) throw new Error('generated instance already has Number of Frames');
      insertAt = pos;
    }
    if (tag === 0x7fe00010) {
      if (vr !== 'OW' && vr !== 'OB') throw new Error(`pixel data VR ${vr}`);
      const frameEl = Buffer.alloc(8 + 4);
      frameEl.writeUInt16LE(0x0028, 0);
      frameEl.writeUInt16LE(0x0008, 2);
      frameEl.write('IS', 4, 'latin1');
      const frameValue = String(frames).length % 2 ? `${frames} ` : String(frames);
      frameEl.writeUInt16LE(frameValue.length, 6);
      const fv = Buffer.from(frameValue, 'latin1');
      const pxHead = Buffer.from(instance.subarray(pos, pos + headLen));
      pxHead.writeUInt32LE(pixelBytes, 8);
      const header = Buffer.concat([instance.subarray(0, insertAt), frameEl.subarray(0, 8), fv, instance.subarray(insertAt, pos), pxHead]);
      // The same header with the original one-frame pixel value: the oracle for the output size.
      const probeHead = Buffer.from(header);
      probeHead.writeUInt32LE(len, probeHead.length - 4);
      const probe = Buffer.concat([probeHead, instance.subarray(pos + headLen, pos + headLen + len)]);
      return { header, probe, probePixelBytes: len };
    }
    pos += headLen + len;
  }
}

/** The header, then `pixelBytes` of zeros, always yielding the same 64 KiB buffer. */
async function* bigSource(header: Buffer, pixelBytes: number, tick?: () => void): AsyncGenerator<Buffer> {
  tick?.();
  yield header;
  const zeros = Buffer.alloc(CHUNK);
  let left = pixelBytes;
  while (left >= CHUNK) {
    tick?.();
    yield zeros;
    left -= CHUNK;
  }
  if (left > 0) {
    tick?.();
    yield zeros.subarray(0, left);
  }
}

// ---------------------------------------------------------------------------
// Output

function table(head: readonly string[], rows: readonly (readonly string[])[]): string {
  const w = head.map((h, i) => Math.max(h.length, ...rows.map((r) => (r[i] ?? '').length)));
  const line = (cells: readonly string[]): string => cells.map((c, i) => (i === 0 ? c.padEnd(w[i]!) : c.padStart(w[i]!))).join('  ');
  return [line(head), w.map((n) => '-'.repeat(n)).join('  '), ...rows.map(line)].join('\n');
}

const fmt = (x: number, d = 1): string => x.toLocaleString('en-US', { minimumFractionDigits: d, maximumFractionDigits: d });
const fmtMB = (bytes: number): string => fmt(bytes / MB, 1);
const verdict = (ok: boolean): string => (ok ? 'MET' : 'MISSED');

// ---------------------------------------------------------------------------

async function main(): Promise<void> {
  const tStart = process.hrtime.bigint();
  const cpu = cpus()[0]?.model ?? 'unknown';
  console.log('deid-gateway engine benchmark');
  console.log(`machine: ${cpu} (${cpus().length} logical CPUs, ${fmt(totalmem() / 2 ** 30, 1)} GiB), node ${process.version}, ${process.platform}/${process.arch}`);
  const load = loadavg().map((x) => round(x, 2));
  console.log(`load average at start: ${load.join(' ')} (other processes on the machine skew every figure; rerun when it is near 0)`);
  if (!hasGc) console.log('warning: global.gc is not exposed (run with node --expose-gc); memory figures are less reliable');

  // Input: a generated CT series, read into memory.
  const dir = await mkdtemp(join(tmpdir(), 'deid-bench-'));
  let inputs: Buffer[];
  try {
    const tGen = process.hrtime.bigint();
    const paths = await generateCtSeries(dir, INSTANCES, { rows: ROWS, cols: COLS, seed: SEED });
    inputs = [];
    for (const p of paths) inputs.push(await readFile(p));
    console.log(`input: ${inputs.length} CT instances ${ROWS}x${COLS}x16 bit, generated and read in ${fmt(ms(process.hrtime.bigint() - tGen), 0)} ms`);
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
  const inputBytes = inputs.reduce((n, b) => n + b.length, 0);
  const first = inputs[0];
  if (!first) throw new Error('no instances generated');
  console.log(`        ${fmtMB(inputBytes)} MB in all (${fmt(first.length / 1024, 1)} KiB per instance), ${CHUNK / 1024} KiB chunks, ${REPS} timed runs after ${WARMUPS} warm-up${WARMUPS === 1 ? '' : 's'} per path\n`);

  // ---- Throughput
  // The engine with and without Clean Descriptors + Clean Structured Content (the safe-word
  // cleaner), their runs interleaved so that both see the same machine (GC, other processes).
  const CLEAN: OptionName[] = ['cleanDescriptors', 'cleanStructuredContent'];
  const [engine, cleaning] = await timePaths(inputBytes, [
    { name: 'engine (deidentifyPart10)', run: () => enginePass(inputs, newContext()) },
    { name: 'engine, Clean Descriptors + Structured Content', run: () => enginePass(inputs, newContext(CLEAN)) },
  ]) as [Timing, Timing];

  // The cleaner alone, on 420 different values (a fresh memo each round: nothing remembered).
  const marked = freeTextSet().map((v) => v.value);
  for (const v of marked) cleanFreeText(v, {});
  const tClean = process.hrtime.bigint();
  for (let r = 0; r < 5; r++) { const fresh = {}; for (const v of marked) cleanFreeText(v, fresh); }
  const cleanerUs = Number(process.hrtime.bigint() - tClean) / 1000 / (5 * marked.length);

  const dcmjs = await loadDcmjs();
  const arrayBuffers = inputs.map((b) => {
    const ab = new ArrayBuffer(b.length); // dcmjs reads an ArrayBuffer: one exact copy per instance, made before timing
    new Uint8Array(ab).set(b);
    return ab;
  });
  const naive = await timePath('dcmjs naive read/edit/write', inputBytes, () => { /* inputs prepared */ }, () => dcmjsPass(dcmjs, arrayBuffers));
  arrayBuffers.length = 0;

  const stream = await timePath('copy stream (Buffer.from)', inputBytes, () => { /* nothing */ }, () => copyStreamPass(inputs));
  let dest: Buffer | null = Buffer.alloc(inputBytes); // zero-filled: pages touched before timing
  const destRef = dest;
  const raw = await timePath('Buffer.copy (reference)', inputBytes, () => { /* nothing */ }, () => bufferCopyPass(inputs, destRef));
  dest = null;

  const timings = [engine, cleaning, naive, stream, raw];
  const medianMbps = (t: Timing): number => mbps(t.inputBytes, t.medianNs);
  const bestMbps = (t: Timing): number => mbps(t.inputBytes, t.bestNs);
  console.log(table(
    ['path', 'best ms', 'median ms', 'best MB/s', 'median MB/s', 'output MB', 'engine speed-up (median)'],
    timings.map((t) => [
      t.name, fmt(ms(t.bestNs), 1), fmt(ms(t.medianNs), 1), fmt(bestMbps(t), 0), fmt(medianMbps(t), 0), fmtMB(t.outputBytes),
      t === engine ? '-' : `${fmt(medianMbps(engine) / medianMbps(t), 2)}x`,
    ]),
  ));

  const engineGbpsBest = bestMbps(engine) / 1000;
  const engineGbpsMedian = medianMbps(engine) / 1000;
  const vsDcmjsBest = bestMbps(engine) / bestMbps(naive);
  const vsDcmjsMedian = medianMbps(engine) / medianMbps(naive);
  const vsCopyBest = bestMbps(engine) / bestMbps(stream);
  const vsCopyMedian = medianMbps(engine) / medianMbps(stream);
  const vsRawMedian = medianMbps(engine) / medianMbps(raw);
  console.log('');
  console.log(table(
    ['figure', 'best', 'median', 'target', ''],
    [
      ['engine GB/s', fmt(engineGbpsBest, 2), fmt(engineGbpsMedian, 2), `>= ${TARGET_GBPS}`, verdict(engineGbpsMedian >= TARGET_GBPS)],
      ['engine / dcmjs', `${fmt(vsDcmjsBest, 1)}x`, `${fmt(vsDcmjsMedian, 1)}x`, `>= ${TARGET_VS_DCMJS}x`, verdict(vsDcmjsMedian >= TARGET_VS_DCMJS)],
      ['engine / copy stream', `${fmt(vsCopyBest, 2)}x`, `${fmt(vsCopyMedian, 2)}x`, '(1.00x = as fast as copying)', ''],
      ['engine / Buffer.copy', `${fmt(bestMbps(engine) / bestMbps(raw), 3)}x`, `${fmt(vsRawMedian, 3)}x`, '(reference)', ''],
      ['engine ms / instance', fmt(ms(engine.bestNs) / inputs.length, 3), fmt(ms(engine.medianNs) / inputs.length, 3), '', ''],
      ['Clean Descriptors / without', `${fmt(bestMbps(cleaning) / bestMbps(engine), 2)}x`, `${fmt(medianMbps(cleaning) / medianMbps(engine), 2)}x`, `>= ${TARGET_CLEAN_RATIO}x`, verdict(medianMbps(cleaning) / medianMbps(engine) >= TARGET_CLEAN_RATIO)],
      ['cleaner µs / value (420 new values)', '', fmt(cleanerUs, 1), '', ''],
    ],
  ));

  // ---- Per-instance header work in steady state, as the gateway runs (engine-steady.ts): a
  // process of its own with the gateway's node flags, no forced collection, 25 passes.
  const sp = spawnSync(process.execPath, moduleCommand(import.meta.url, './engine-steady'), { cwd: projectRoot(import.meta.url), encoding: 'utf8', env: { ...process.env, BENCH_INSTANCES: String(INSTANCES) } });
  if (sp.status !== 0) throw new Error(`engine-steady failed (${sp.status}): ${sp.stderr.slice(-2000)}`);
  const steady = JSON.parse(sp.stdout.trim().split('\n').at(-1)!) as { instances: number; inputBytes: number; outputBytes: number; passes: number[] };
  const perInstance = (x: number): number => x / steady.instances;
  const tail = steady.passes.slice(-STEADY_TAIL);
  const steadyMedian = perInstance([...tail].sort((a, b) => a - b)[Math.floor(tail.length / 2)]!);
  const steadyBest = perInstance(Math.min(...steady.passes));
  console.log('');
  console.log(`header work per instance in steady state (${steady.passes.length} passes over the ${steady.instances} instances, ${NODE_FLAGS.join(' ')}, no forced GC; ms per pass: ${steady.passes.map((x) => fmt(x, 0)).join(' ')})`);
  console.log(table(
    ['figure', 'first pass', 'best', `median of the last ${tail.length}`, 'target', ''],
    [['engine ms / instance, steady', fmt(perInstance(steady.passes[0]!), 3), fmt(steadyBest, 3), fmt(steadyMedian, 3), `<= ${TARGET_STEADY_MS}`, verdict(steadyMedian <= TARGET_STEADY_MS)]],
  ));

  // ---- Memory: single frame vs ~1 GB, same header
  const pixelBytes = ROWS * COLS * 2 * BIG_FRAMES;
  const { header, probe, probePixelBytes } = bigHeader(first, BIG_FRAMES, pixelBytes);
  // Same header bytes, same UIDs: the outputs can differ by the pixel value length only.
  const probeOut = await enginePass([probe], newContext());
  const expectedBig = probeOut - probePixelBytes + pixelBytes;
  inputs = [first]; // drop the rest of the series before measuring memory
  gc();

  const small = await measureMemory(`(i) 1 frame, ${fmt(first.length / MB, 2)} MB`, first.length, (tick) => chunked(first, CHUNK, tick));
  // A half-size run in between shows whether the peak scales with the instance size (it is
  // large enough to fill the young generation, which the single frame is not).
  const midFrames = Math.max(1, Math.floor(BIG_FRAMES / 2));
  const midPixelBytes = ROWS * COLS * 2 * midFrames;
  const midHeader = bigHeader(first, midFrames, midPixelBytes).header;
  const mid = await measureMemory(`    ${midFrames} frames, ${fmt((midHeader.length + midPixelBytes) / MB, 0)} MB`, midHeader.length + midPixelBytes, (tick) => bigSource(midHeader, midPixelBytes, tick));
  const big = await measureMemory(`(ii) ${BIG_FRAMES} frames, ${fmt((header.length + pixelBytes) / MB, 0)} MB`, header.length + pixelBytes, (tick) => bigSource(header, pixelBytes, tick));
  const sizeOk = big.outputBytes === expectedBig;
  const flatHeap = big.peakHeapAbGrowth - small.peakHeapAbGrowth;
  const flatRss = big.peakRssGrowth - small.peakRssGrowth;
  // Memory is flat when the process does not grow with the instance (RSS), doubling the
  // instance adds nothing (big vs mid, both large enough to cycle the young generation), and
  // nothing is retained after GC. Peak heap+ArrayBuffers of the 1-frame run cannot serve as
  // the baseline: it never fills the young generation, so the difference to any large run is
  // just uncollected garbage (about half the young generation), not growth.
  const flatOk = flatRss <= TARGET_FLAT_MB * MB && (big.peakHeapAbGrowth - mid.peakHeapAbGrowth) <= TARGET_FLAT_MB * MB
    && big.retainedHeapAbGrowth <= TARGET_FLAT_MB * MB;
  const scaleHeap = big.peakHeapAbGrowth - mid.peakHeapAbGrowth;
  const scaleRss = big.peakRssGrowth - mid.peakRssGrowth;
  const scaleOk = scaleHeap <= TARGET_FLAT_MB * MB && scaleRss <= TARGET_FLAT_MB * MB;

  console.log('');
  console.log(table(
    ['engine memory', 'MB/s', 'samples', 'peak RSS MB', 'peak RSS growth MB', 'peak heap+AB growth MB', 'retained after GC MB', 'young gen MB'],
    [small, mid, big].map((m) => [
      m.label, fmt(m.inputBytes / MB / m.seconds, 0), String(m.samples),
      fmtMB(m.peakRss), fmtMB(m.peakRssGrowth), fmtMB(m.peakHeapAbGrowth), fmt(m.retainedHeapAbGrowth / MB, 2), fmtMB(m.youngGenBytes),
    ]),
  ));
  console.log(`peak growth, (ii) minus (i):       RSS ${fmtMB(flatRss)} MB, heap+AB ${fmtMB(flatHeap)} MB (young-generation garbage, see the code)`);
  console.log(`memory flat (RSS (ii)-(i), heap+AB (ii)-mid, retained after GC, each <= ${TARGET_FLAT_MB} MB): ${verdict(flatOk)}`);
  console.log(`peak growth, (ii) minus ${midFrames} frames: RSS ${fmtMB(scaleRss)} MB, heap+AB ${fmtMB(scaleHeap)} MB for ${fmt((header.length + pixelBytes) / (midHeader.length + midPixelBytes), 1)}x the bytes (${scaleOk ? 'within' : 'beyond'} the same ${TARGET_FLAT_MB} MB bound)`);
  console.log(`(ii) output: ${big.outputBytes.toLocaleString('en-US')} bytes, expected ${expectedBig.toLocaleString('en-US')}: ${sizeOk ? 'OK' : 'MISMATCH'}`);

  const totalSeconds = Number(process.hrtime.bigint() - tStart) / 1e9;
  console.log(`\ntotal ${fmt(totalSeconds, 1)} s`);

  // ---- JSON
  const t = (x: Timing): Record<string, unknown> => ({
    name: x.name, inputBytes: x.inputBytes, outputBytes: x.outputBytes, runsMs: x.runsNs.map((n) => round(ms(n), 3)),
    bestMs: round(ms(x.bestNs), 3), medianMs: round(ms(x.medianNs), 3), bestMBps: round(bestMbps(x)), medianMBps: round(medianMbps(x)),
  });
  const m = (x: MemResult): Record<string, unknown> => ({ ...x });
  const report = {
    date: new Date().toISOString(),
    machine: { cpu, logicalCpus: cpus().length, totalMemBytes: totalmem(), node: process.version, v8: process.versions.v8, platform: `${process.platform}/${process.arch}`, gcExposed: hasGc, loadAverageAtStart: load, loadAverageAtEnd: loadavg().map((x) => round(x, 2)) },
    config: { instances: INSTANCES, rows: ROWS, cols: COLS, bitsAllocated: 16, seed: SEED, chunkBytes: CHUNK, reps: REPS, warmups: WARMUPS, bigFrames: BIG_FRAMES, sampleMs: SAMPLE_MS, mb: MB },
    input: { instances: INSTANCES, bytes: inputBytes, bytesPerInstance: first.length },
    throughput: { engine: t(engine), dcmjs: t(naive), copyStream: t(stream), bufferCopy: t(raw) },
    ratios: {
      engineGBpsBest: round(engineGbpsBest, 3), engineGBpsMedian: round(engineGbpsMedian, 3),
      engineOverDcmjsBest: round(vsDcmjsBest, 2), engineOverDcmjsMedian: round(vsDcmjsMedian, 2),
      engineOverCopyStreamBest: round(vsCopyBest, 3), engineOverCopyStreamMedian: round(vsCopyMedian, 3),
      engineOverBufferCopyMedian: round(vsRawMedian, 4),
    },
    memory: {
      small: m(small), mid: m(mid), big: m(big),
      bigPixelBytes: pixelBytes, bigHeaderBytes: header.length,
      bigOutputBytes: big.outputBytes, bigExpectedOutputBytes: expectedBig, bigOutputSizeOk: sizeOk,
      growthDifferenceRssBytes: flatRss, growthDifferenceHeapAbBytes: flatHeap,
      growthBigMinusMidRssBytes: scaleRss, growthBigMinusMidHeapAbBytes: scaleHeap, bigMinusMidWithinBound: scaleOk,
    },
    targets: {
      engineGBps: { target: TARGET_GBPS, value: round(engineGbpsMedian, 3), met: engineGbpsMedian >= TARGET_GBPS },
      cleanDescriptorsRatio: { target: TARGET_CLEAN_RATIO, value: round(medianMbps(cleaning) / medianMbps(engine), 3), met: medianMbps(cleaning) / medianMbps(engine) >= TARGET_CLEAN_RATIO, cleanerMicrosecondsPerValue: round(cleanerUs, 1) },
      engineOverDcmjs: { target: TARGET_VS_DCMJS, value: round(vsDcmjsMedian, 2), met: vsDcmjsMedian >= TARGET_VS_DCMJS },
      memoryFlat: {
        targetMB: TARGET_FLAT_MB, met: flatOk,
        rssBigMinusSmallMB: round(flatRss / MB, 2), heapAbBigMinusMidMB: round(scaleHeap / MB, 2), retainedBigMB: round(big.retainedHeapAbGrowth / MB, 2),
        heapAbBigMinusSmallMB: round(flatHeap / MB, 2), // young-generation garbage, not part of the verdict
      },
      bigOutputSize: { met: sizeOk },
      steadyHeaderWork: { targetMs: TARGET_STEADY_MS, firstPassMs: round(perInstance(steady.passes[0]!), 4), bestMs: round(steadyBest, 4), medianOfLastMs: round(steadyMedian, 4), passesMs: steady.passes.map((x) => round(x, 2)), nodeFlags: NODE_FLAGS, met: steadyMedian <= TARGET_STEADY_MS },
    },
    totalSeconds: round(totalSeconds, 2),
  };
  const outDir = join(projectRoot(import.meta.url), 'bench', 'out');
  await mkdir(outDir, { recursive: true });
  const outFile = join(outDir, 'engine.json');
  await writeFile(outFile, JSON.stringify(report, null, 2) + '\n');
  console.log(`figures written to ${outFile}`);
  if (!sizeOk) process.exitCode = 1;
}

main().catch((err: unknown) => {
  console.error(err);
  process.exitCode = 1;
});
