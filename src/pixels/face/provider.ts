/**
 * Series-level face decisions, made once and stored (issue 11).
 *
 * A decision is keyed by the original Series Instance UID, a digest of the series' SOP
 * Instance UIDs (a series that gains or loses instances is decided again) and the algorithm
 * version. It is computed on a reduced volume: the provider asks its source for the series'
 * instances (geometry only), picks frames at most 4.5 mm apart along the largest stack, fetches
 * only the instances that hold them (uncompressed, four at a time), reduces each frame to
 * about 2.5 mm as it arrives, drops the full-resolution bytes, and resamples the reduced
 * frames onto the grid once all are in. Concurrent requests for one series share one analysis.
 */
import { createHash } from 'node:crypto';
import { GatewayError } from '../../core/errors.js';
import type { DecisionStore, FaceVerdict } from '../../pixels/types.js';
import { Decisions } from '../decisions.js';
import { dot, frameNormal, readPixelFacts, type DatasetView, type FrameGeometry } from '../geometry.js';
import { FACE_ALGORITHM } from './analyze.js';
import { analyzeFrames, reduceInstance, timed } from './runner.js';
import { largestStack, type ReducedFrame } from './volume.js';

/** Where a series comes from: the PACS (gateway) or files (offline command). */
export interface SeriesSource {
  /** Every instance of the series with a view of its header (geometry; metadata is enough). */
  instances(): Promise<readonly { readonly sop: string; readonly view: DatasetView }[]>;
  /** One whole instance as Part 10 bytes, with native (uncompressed) pixel data where possible. */
  instance(sop: string): Promise<Buffer>;
}

/** Durable storage of face decisions (SQLite in state.dir; PostgreSQL for replicas). */
export type FaceStore = DecisionStore<FaceVerdict>;

export interface FaceStats {
  analyses: number;
  /** Time spent reading and analysing (fetching excluded), seconds. */
  analysisSeconds: number;
  fetchedInstances: number;
}

/**
 * Frames are sampled at most this far apart along the stack (every k-th frame, the largest k
 * that keeps them so; the grid fills between them). Each sampled instance is one request to the
 * PACS, whose cost per request dominates: 40 of 160 instances at 1.1 mm instead of 54 at 4 mm.
 */
const SAMPLE_MM = 4.5;
/**
 * … and this far apart when the stack runs from left to right (sagittal slices): across the
 * face its surface changes slowly (the nose is 15–35 mm wide, its sides are read 12 and 22 mm
 * out), while up and down (axial slices) the tip, the lip and the nasion lie 10–45 mm apart.
 * 27 of 160 instances at 1.1 mm.
 */
const SAMPLE_MM_ACROSS = 7;
/** Instances fetched at once for an analysis. */
const FETCH_CONCURRENCY = 4;

export function seriesKey(series: string, sops: readonly string[]): string {
  const h = createHash('sha256');
  for (const s of [...sops].sort()) h.update(s).update('\0');
  return `${series}|${h.digest('hex').slice(0, 32)}|${FACE_ALGORITHM}`;
}

export class FaceProvider {
  private readonly decisions: Decisions<FaceVerdict>;
  private readonly latest = new Map<string, FaceVerdict>();
  /** Who waits to hear that a series' sampled instances are in (by original Series Instance UID). */
  private readonly sampledListeners = new Map<string, Set<() => void>>();
  readonly stats: FaceStats = { analyses: 0, analysisSeconds: 0, fetchedInstances: 0 };

  /**
   * `onAnalysis` hears of each analysis made (never of stored ones): its kind, the seconds of
   * reading and analysing (fetching excluded) and how many instances were fetched. PHI-free.
   */
  constructor(
    store: FaceStore | undefined,
    private readonly onAnalysis?: (a: { kind: FaceVerdict['kind']; seconds: number; fetched: number; frames: number; listMs: number; fetchMs: number; totalMs: number }) => void,
  ) {
    this.decisions = new Decisions(store);
  }

  /** The decision of a series already decided in this process (by original Series Instance UID). */
  decision(series: string): FaceVerdict | undefined {
    return this.latest.get(series);
  }

  /**
   * Calls `listener` once, when an analysis of this series has fetched its sampled instances
   * and is about to analyse them (never for a stored decision). The retrieve that waits for the
   * decision asks the PACS for the series then, so that the PACS prepares it while the gateway
   * analyses (the PACS is idle for those 30-80 ms). Returns the function that stops listening.
   */
  onSampled(series: string, listener: () => void): () => void {
    let set = this.sampledListeners.get(series);
    if (!set) this.sampledListeners.set(series, (set = new Set()));
    set.add(listener);
    return () => {
      set.delete(listener);
      if (!set.size && this.sampledListeners.get(series) === set) this.sampledListeners.delete(series);
    };
  }

  /**
   * The decision of a series: from memory, the store, or a new analysis (shared by concurrent
   * callers). `sops` are the series' SOP Instance UIDs (the digest).
   */
  async decide(series: string, modality: string, sops: readonly string[], source: SeriesSource): Promise<FaceVerdict> {
    const verdict = await this.decisions.get(seriesKey(series, sops), async () => {
      try {
        return { verdict: await this.analyze(series, modality, source), keep: 'store' };
      } catch (e) {
        // Pixels that cannot be read (compressed and not transcoded, no geometry): the series is
        // withheld whole, and decided again later (not stored: the PACS may transcode next time).
        if (e instanceof GatewayError && e.code === 'PIXELS_WITHHELD') return { verdict: { kind: 'uncertain', why: 'its pixels cannot be read' }, keep: 'none' };
        throw e;
      }
    });
    this.latest.set(series, verdict);
    return verdict;
  }

  private async analyze(series: string, modality: string, source: SeriesSource): Promise<FaceVerdict> {
    const started = performance.now();
    const list = await source.instances();
    const listMs = performance.now() - started;
    // Frames of every instance, with their geometry from the metadata.
    const frames: { sop: string; frame: number; geometry: FrameGeometry; rows: number; columns: number }[] = [];
    let unplaced = 0;
    for (const { sop, view } of list) {
      const f = readPixelFacts(view);
      if (f.samplesPerPixel !== 1) continue;
      f.geometry.forEach((g, frame) => { if (g) frames.push({ sop, frame, geometry: g, rows: f.rows, columns: f.columns }); else unplaced++; });
    }
    // A series of several volumes (fMRI, diffusion, perfusion) repeats each position: the first
    // frame at each position stands for it (the first volume, usually the most anatomical).
    const seenAt = new Set<string>();
    const stack = largestStack(frames).filter((f) => {
      const k = `${Math.round(f.geometry.position[0] * 10)},${Math.round(f.geometry.position[1] * 10)},${Math.round(f.geometry.position[2] * 10)}`;
      if (seenAt.has(k)) return false;
      seenAt.add(k);
      return true;
    });
    if (stack.length < 8) {
      // A stack of slices without positions could still be put together by their order: a
      // series of many unplaced frames is withheld, a few slices cannot show a face's surface.
      return unplaced >= 8 ? { kind: 'uncertain', why: 'its frames have no position in the patient' } : { kind: 'no-face' };
    }
    // Every k-th frame along the stack so that samples are at most SAMPLE_MM (SAMPLE_MM_ACROSS) apart.
    const n = frameNormal(stack[0]!.geometry);
    stack.sort((a, b) => dot(n, a.geometry.position) - dot(n, b.geometry.position));
    const span = dot(n, stack.at(-1)!.geometry.position) - dot(n, stack[0]!.geometry.position);
    if (span < 30) return { kind: 'no-face' }; // thinner than 3 cm: no surface to rebuild
    const step = Math.max(1, Math.floor((Math.abs(n[0]) >= 0.8 ? SAMPLE_MM_ACROSS : SAMPLE_MM) / (span / (stack.length - 1))));
    // The sampled frames, in order; per instance, which of them it holds.
    const sampled = stack.filter((_, i) => i % step === 0);
    const wanted = new Map<string, [number, number][]>();
    sampled.forEach((s, i) => (wanted.get(s.sop) ?? wanted.set(s.sop, []).get(s.sop)!).push([s.frame, i]));
    const reduced: (ReducedFrame | undefined)[] = new Array(sampled.length);
    let seconds = 0;
    let fetched = 0;
    // A few instances fetched at once (the PACS's latency per request dominates for slices);
    // each is reduced as it arrives (about 2.5 mm: a few kB per frame) and its full-resolution
    // bytes dropped. The frames' own headers place them (the metadata only chose them).
    const queue = [...wanted];
    const worker = async (): Promise<void> => {
      for (let next = queue.shift(); next; next = queue.shift()) {
        const bytes = await source.instance(next[0]);
        this.stats.fetchedInstances++;
        fetched++;
        const r = timed(() => reduceInstance(bytes, next[1]));
        for (const x of r.value) reduced[x.index] = x.frame;
        seconds += r.ms / 1000;
      }
    };
    await Promise.all(Array.from({ length: Math.min(FETCH_CONCURRENCY, queue.length) }, worker));
    const fetchMs = performance.now() - started - listMs;
    const got = reduced.filter((r): r is ReducedFrame => r !== undefined);
    const listeners = this.sampledListeners.get(series);
    if (listeners?.size) {
      this.sampledListeners.delete(series);
      for (const l of listeners) {
        try { l(); } catch { /* a listener's failure is its own */ }
      }
      // One turn of the event loop, so that what the listeners asked for is on its way before
      // the analysis holds the thread.
      await new Promise<void>((resolve) => setImmediate(resolve));
    }
    // Resampled onto the grid once every frame is in (a single pass over the voxels), and analysed.
    const { value: result, ms } = timed(() => analyzeFrames(got, modality));
    seconds += ms / 1000;
    this.stats.analyses++;
    this.stats.analysisSeconds += seconds;
    this.onAnalysis?.({ kind: result.kind, seconds, fetched, frames: got.length, listMs, fetchMs, totalMs: performance.now() - started });
    if (result.kind === 'deface') return { kind: 'deface', planes: result.planes.map((p) => ({ n: [p.n[0], p.n[1], p.n[2]] as const, d: p.d })) };
    if (result.kind === 'uncertain') return { kind: 'uncertain', why: result.why };
    return { kind: 'no-face' };
  }
}
