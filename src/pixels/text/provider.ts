/**
 * Instance-level text decisions, made once and stored (issue 12).
 *
 * A decision is keyed by the original SOP Instance UID and the detector's version. The provider
 * asks its source for the instance (the gateway: from the PACS in Explicit VR Little Endian; the
 * offline command: the file), decodes RLE or JPEG baseline in-process when the bytes are still
 * compressed (codec.ts), reads every frame and stores the verdict. Concurrent requests for one
 * instance share one analysis. An instance whose pixels cannot be read is withheld and decided
 * again next time (not stored: the PACS may transcode next time).
 */
import { inflateRawSync } from 'node:zlib';
import { GatewayError } from '../../core/errors.js';
import type { DecisionStore, TextVerdict } from '../types.js';
import { nativeInstance } from '../codec.js';
import { analyzeInstance, instancePixels, TEXT_ALGORITHM, type TextAnalysis } from './analyze.js';
import type { TextWorkers } from './workers.js';

export type TextStore = DecisionStore<TextVerdict>;

export interface TextStats {
  analyses: number;
  /** Seconds spent decoding and reading frames (fetching excluded). */
  analysisSeconds: number;
  frames: number;
}

export function textKey(sop: string): string {
  return `${sop}|${TEXT_ALGORITHM}`;
}

export class TextProvider {
  private readonly memory = new Map<string, TextVerdict>();
  private readonly running = new Map<string, Promise<TextVerdict>>();
  readonly stats: TextStats = { analyses: 0, analysisSeconds: 0, frames: 0 };

  /** `onAnalysis` hears of each analysis made (never of stored ones), PHI-free. */
  /** `workers`: a pool that reads the frames of large instances in parallel (else this thread). */
  constructor(private readonly store: TextStore | undefined, private readonly onAnalysis?: (a: { kind: TextVerdict['kind']; ms: number; fetchMs: number; frames: number; framesRead: number; regions: number }) => void, private readonly workers?: TextWorkers) {}

  /** The decision of an instance already decided in this process (by original SOP Instance UID). */
  decision(sop: string): TextVerdict | undefined {
    return this.memory.get(textKey(sop));
  }

  /** The decision of an instance: from memory, the store, or a new analysis of the bytes `fetch` gives. */
  async decide(sop: string, fetch: () => Promise<Buffer>): Promise<TextVerdict> {
    const key = textKey(sop);
    const known = this.memory.get(key);
    if (known) return known;
    let run = this.running.get(key);
    if (!run) {
      run = (async () => {
        const stored = await this.store?.get(key);
        if (stored) { this.memory.set(key, stored); return stored; }
        let a: TextAnalysis;
        try {
          const t0 = performance.now();
          const bytes = await fetch();
          a = await this.analyze(bytes, performance.now() - t0);
        } catch (e) {
          if (e instanceof GatewayError && e.code === 'PIXELS_WITHHELD') {
            const v: TextVerdict = { kind: 'withhold', code: 'text-undecodable', why: `its pixels cannot be read for text (${e.message})` };
            this.memory.set(key, v); // for this process only: asked again after a restart
            return v;
          }
          throw e;
        }
        await this.store?.put(key, a.verdict);
        this.memory.set(key, a.verdict);
        return a.verdict;
      })();
      this.running.set(key, run);
      void run.finally(() => this.running.delete(key)).catch(() => undefined);
    }
    return run;
  }

  private async analyze(bytes: Buffer, fetchMs: number): Promise<TextAnalysis> {
    const t0 = performance.now();
    const native = nativeInstance(bytes, (b) => inflateRawSync(b));
    let a: TextAnalysis;
    if (this.workers) {
      const { pixel, facts } = instancePixels(native);
      a = await this.workers.analyze(pixel, facts, facts.frames);
    } else {
      a = analyzeInstance(native);
    }
    const ms = performance.now() - t0;
    this.stats.analyses++;
    this.stats.analysisSeconds += ms / 1000;
    this.stats.frames += a.framesRead;
    this.onAnalysis?.({ kind: a.verdict.kind, ms, fetchMs, frames: a.frames, framesRead: a.framesRead, regions: a.verdict.kind === 'mask' ? a.verdict.regions.length : 0 });
    return a;
  }
}
