/**
 * The frames of a large instance (a cine loop) read on worker threads, a contiguous range each,
 * so that a first analysis uses every core the machine has (the PACS and the event loop are
 * idle while it runs). The pixel data is copied once into shared memory; each worker answers
 * the union of its frames' lines; the verdict (mostly text, fills) is made on the calling thread.
 * Small instances are read on the calling thread: a worker's round trip would cost more.
 */
import { availableParallelism } from 'node:os';
import { Worker } from 'node:worker_threads';
import { GatewayError } from '../../core/errors.js';
import type { Box } from './detect.js';
import { mergeBoxes } from './detect.js';
import { detectFrames, frameCount, pixelValueAt, verdictOf, type TextAnalysis } from './analyze.js';
import { checkPlaneFacts, frameLength, type PlaneFacts } from './planes.js';
import type { FramesJob } from './worker.js';

/** Frames sent to a worker at once while an object streams in. */
const STREAM_BATCH = 4;

/** Pixels below which an instance is read on the calling thread (about 20 frames of 640 × 480). */
const MIN_PARALLEL_PIXELS = 6_000_000;

type Reply = { id: number; boxes: Box[]; framesRead: number } | { id: number; error: { code?: string; message: string; auditReason?: string } };

/**
 * One worker. Compiled, it runs worker.js; under tsx (tests, development) worker.ts, after
 * registering tsx's loader in the worker itself (a worker does not inherit --import).
 */
function startWorker(): Worker {
  if (!import.meta.url.endsWith('.ts')) return new Worker(new URL('./worker.js', import.meta.url));
  const api = import.meta.resolve('tsx/esm/api');
  const entry = new URL('./worker.ts', import.meta.url).href;
  return new Worker(`(async () => { (await import(${JSON.stringify(api)})).register(); await import(${JSON.stringify(entry)}); })();`, { eval: true });
}

/** A Buffer of `length` bytes in shared memory, which the workers read without a copy. */
export function sharedBuffer(length: number): Buffer {
  return Buffer.from(new SharedArrayBuffer(length));
}

export class TextWorkers {
  private readonly workers: Worker[] = [];
  private readonly pending = new Map<number, { resolve: (r: { boxes: Box[]; framesRead: number }) => void; reject: (e: Error) => void }>();
  private nextId = 0;
  private closed = false;

  constructor(readonly size = Math.max(1, Math.min(4, availableParallelism()))) {}

  private spawn(): Worker[] {
    if (this.workers.length) return this.workers;
    for (let i = 0; i < this.size; i++) {
      const w = startWorker();
      w.unref();
      w.on('message', (m: Reply) => {
        const p = this.pending.get(m.id);
        if (!p) return;
        this.pending.delete(m.id);
        if ('error' in m) p.reject(new GatewayError(m.error.code === 'PIXELS_WITHHELD' ? 'PIXELS_WITHHELD' : 'INTERNAL', m.error.message, m.error.auditReason ? { auditReason: m.error.auditReason } : undefined));
        else p.resolve({ boxes: m.boxes, framesRead: m.framesRead });
      });
      w.on('error', (e) => { for (const [, p] of this.pending) p.reject(e); this.pending.clear(); });
      this.workers.push(w);
    }
    return this.workers;
  }

  /** Analyses native pixel data, on the workers when it is large enough to pay. */
  async analyze(pixel: Uint8Array, f: PlaneFacts, frames: number): Promise<TextAnalysis> {
    const count = frameCount(pixel, f, frames);
    const pixels = f.rows * f.columns * count;
    if (this.closed || this.size < 2 || count < 2 || pixels < MIN_PARALLEL_PIXELS) {
      const { boxes, framesRead } = detectFrames(pixel, f, 0, count);
      return verdictOf(pixel, f, count, boxes, framesRead);
    }
    const length = count * frameLength(f);
    // Pixel data in shared memory already (sharedBuffer) is read where it is; else copied once.
    let shared: SharedArrayBuffer, offset = 0;
    if (pixel.buffer instanceof SharedArrayBuffer) { shared = pixel.buffer; offset = pixel.byteOffset; } else {
      shared = new SharedArrayBuffer(length);
      new Uint8Array(shared).set(pixel.subarray(0, length));
    }
    const workers = this.spawn();
    const per = Math.ceil(count / workers.length);
    const results = await Promise.all(workers.map((w, i) => {
      const from = i * per, to = Math.min(count, from + per);
      if (from >= to) return { boxes: [], framesRead: 0 };
      const id = this.nextId++;
      const job: FramesJob = { id, pixels: shared, offset, length, facts: f, from, to };
      return new Promise<{ boxes: Box[]; framesRead: number }>((resolve, reject) => {
        this.pending.set(id, { resolve, reject });
        w.postMessage(job);
      });
    }));
    const boxes = mergeBoxes(results.flatMap((r) => r.boxes));
    return verdictOf(new Uint8Array(shared, offset, length), f, count, boxes, results.reduce((s, r) => s + r.framesRead, 0));
  }

  /**
   * Analyses a Part 10 object as it arrives: its bytes are gathered into shared memory, and each
   * batch of frames goes to a worker as soon as it is complete, so that reading the PACS's answer
   * and reading the frames overlap. Answers the analysis and the whole object's bytes (for a
   * caller that serves them). An object whose pixel data must be read whole first (compressed,
   * deflated) is gathered and analysed as `whole` says, after decoding.
   */
  async analyzeStream(chunks: AsyncIterable<Buffer>, whole: (bytes: Buffer) => Promise<TextAnalysis>): Promise<{ analysis: TextAnalysis; bytes: Buffer }> {
    const head: Buffer[] = [];
    let headLength = 0;
    let tryAt = 16 * 1024;
    let at: Exclude<ReturnType<typeof pixelValueAt>, 'whole' | undefined> | undefined;
    let gathered: Buffer[] | undefined; // the 'whole' path
    let buf: Buffer | undefined;
    let filled = 0;
    const rest: Buffer[] = [];
    let per = 0, count = 0, dispatched = 0, turn = 0;
    const jobs: Promise<{ boxes: Box[]; framesRead: number }>[] = [];
    const workers = this.closed || this.size < 2 ? [] : this.spawn();
    const dispatch = (upTo: number): void => {
      for (; dispatched < upTo;) {
        const from = dispatched, to = Math.min(upTo, from + STREAM_BATCH);
        dispatched = to;
        if (!workers.length) { jobs.push(Promise.resolve(detectFrames(new Uint8Array(buf!.buffer, buf!.byteOffset + at!.start, count * per), at!.facts, from, to))); continue; }
        const w = workers[turn++ % workers.length]!;
        const id = this.nextId++;
        const job: FramesJob = { id, pixels: buf!.buffer as SharedArrayBuffer, offset: buf!.byteOffset + at!.start, length: count * per, facts: at!.facts, from, to };
        jobs.push(new Promise((resolve, reject) => { this.pending.set(id, { resolve, reject }); w.postMessage(job); }));
      }
    };
    for await (const c of chunks) {
      if (gathered) { gathered.push(Buffer.from(c)); continue; }
      if (!buf) {
        head.push(Buffer.from(c));
        headLength += c.length;
        if (headLength < tryAt) continue;
        tryAt = headLength * 2;
        const prefix = Buffer.concat(head);
        head.length = 0;
        head.push(prefix);
        const found = pixelValueAt(prefix);
        if (found === undefined) continue;
        if (found === 'whole') { gathered = [prefix]; continue; }
        at = found;
        per = frameLength(at.facts);
        checkPlaneFacts(at.facts); // throws PIXELS_WITHHELD
        count = Math.min(at.facts.frames, Math.floor(at.length / per));
        if (count < 1) throw new GatewayError('PIXELS_WITHHELD', 'the pixel data is shorter than one frame', { auditReason: 'pixels-withheld:text-undecodable' });
        buf = sharedBuffer(at.start + at.length);
        filled = Math.min(prefix.length, buf.length);
        prefix.copy(buf, 0, 0, filled);
        if (prefix.length > filled) rest.push(prefix.subarray(filled));
      } else if (filled < buf.length) {
        const n = Math.min(c.length, buf.length - filled);
        c.copy(buf, filled, 0, n);
        filled += n;
        if (n < c.length) rest.push(Buffer.from(c.subarray(n)));
      } else {
        rest.push(Buffer.from(c));
      }
      const complete = Math.min(count, Math.floor(Math.max(0, filled - at!.start) / per));
      if (complete - dispatched >= STREAM_BATCH) dispatch(complete - ((complete - dispatched) % STREAM_BATCH));
    }
    if (gathered || !buf) {
      const bytes = Buffer.concat(gathered ?? head);
      return { analysis: await whole(bytes), bytes };
    }
    if (filled < at!.start + count * per) throw new GatewayError('DICOM_TRUNCATED', 'the pixel data ends early');
    dispatch(count);
    const results = await Promise.all(jobs);
    const boxes = mergeBoxes(results.flatMap((r) => r.boxes));
    const pixel = new Uint8Array(buf.buffer, buf.byteOffset + at!.start, count * per);
    const analysis = verdictOf(pixel, at!.facts, count, boxes, results.reduce((s, r) => s + r.framesRead, 0));
    return { analysis, bytes: rest.length ? Buffer.concat([buf, ...rest]) : buf };
  }

  /**
   * Starts the workers and runs each over a small synthetic cine (a dark ground with strokes and
   * speckle), so that the first real analysis runs compiled code, not the interpreter's.
   */
  async warm(): Promise<void> {
    if (this.closed || this.size < 2) return;
    const rows = 240, columns = 320, frames = 4 * this.size;
    const f: PlaneFacts = { rows, columns, samplesPerPixel: 3, bitsAllocated: 8, bitsStored: 8, pixelRepresentation: 0, photometric: 'RGB', planarConfiguration: 0, littleEndian: true };
    const per = rows * columns * 3;
    const shared = new SharedArrayBuffer(per * frames);
    const px = new Uint8Array(shared);
    let seed = 12345;
    for (let i = 0; i < px.length; i += 3) {
      seed = (seed * 1103515245 + 12345) >>> 0;
      const p = i / 3, x = p % columns, y = Math.floor(p / columns) % rows;
      // Speckle below, and rows of H-shaped glyphs (light, then dark on a light band) above.
      let v = y > 120 ? (seed >>> 24) & 0x7f : y > 60 && y < 90 ? 200 : 0;
      const gx = x % 10, gy = y % 30;
      const ink = gy >= 8 && gy < 20 && x < 300 && (gx === 1 || gx === 6 || (gy === 13 && gx > 1 && gx < 6));
      if (ink && y <= 120) v = v === 200 ? 10 : 230;
      px[i] = px[i + 1] = px[i + 2] = v;
    }
    const workers = this.spawn();
    for (let round = 0; round < 3; round++) {
      await Promise.all(workers.map((w, i) => new Promise<void>((resolve) => {
      const id = this.nextId++;
      this.pending.set(id, { resolve: () => resolve(), reject: () => resolve() });
      const job: FramesJob = { id, pixels: shared, offset: 0, length: per * frames, facts: f, from: (i * frames) / workers.length, to: ((i + 1) * frames) / workers.length };
      w.postMessage(job);
      })));
    }
  }

  async close(): Promise<void> {
    this.closed = true;
    const ws = this.workers.splice(0);
    await Promise.all(ws.map((w) => w.terminate()));
  }
}
