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
import { Decisions } from '../decisions.js';

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
  private readonly decisions: Decisions<TextVerdict>;
  readonly stats: TextStats = { analyses: 0, analysisSeconds: 0, frames: 0 };

  /**
   * `onAnalysis` hears of each analysis made (never of stored ones), PHI-free: `ms` counts the
   * reading of the object and of its frames, which overlap when it is streamed.
   */
  /** `workers`: a pool that reads the frames of large instances in parallel (else this thread). */
  constructor(store: TextStore | undefined, private readonly onAnalysis?: (a: { kind: TextVerdict['kind']; ms: number; frames: number; framesRead: number; regions: number }) => void, private readonly workers?: TextWorkers) {
    this.decisions = new Decisions(store);
  }

  /** The decision of an instance already decided in this process (by original SOP Instance UID). */
  decision(sop: string): TextVerdict | undefined {
    return this.decisions.known(textKey(sop));
  }

  /**
   * The decision of an instance: from memory, the store, or a new analysis of the bytes `fetch`
   * gives (whole, or as a stream that is analysed as it arrives). `onBytes` receives the whole
   * object's bytes when they were fetched for a new analysis.
   */
  async decide(sop: string, fetch: () => Promise<Buffer | AsyncIterable<Buffer>>, onBytes?: (bytes: Buffer) => void): Promise<TextVerdict> {
    return this.decisions.get(textKey(sop), async () => {
      try {
        return { verdict: (await this.analyze(await fetch(), onBytes)).verdict, keep: 'store' };
      } catch (e) {
        // Pixels that cannot be read: withheld, for this process only (asked again after a restart).
        if (e instanceof GatewayError && e.code === 'PIXELS_WITHHELD') return { verdict: { kind: 'withhold', code: 'text-undecodable', why: `its pixels cannot be read for text (${e.message})` }, keep: 'memory' };
        throw e;
      }
    });
  }

  private async analyze(source: Buffer | AsyncIterable<Buffer>, onBytes?: (bytes: Buffer) => void): Promise<TextAnalysis> {
    const t0 = performance.now();
    const whole = async (bytes: Buffer): Promise<TextAnalysis> => {
      const native = nativeInstance(bytes, (b) => inflateRawSync(b));
      if (!this.workers) return analyzeInstance(native);
      const { pixel, facts } = instancePixels(native);
      return this.workers.analyze(pixel, facts, facts.frames);
    };
    let a: TextAnalysis;
    if (Buffer.isBuffer(source)) {
      a = await whole(source);
      onBytes?.(source);
    } else if (this.workers) {
      const r = await this.workers.analyzeStream(source, whole);
      a = r.analysis;
      onBytes?.(r.bytes);
    } else {
      const chunks: Buffer[] = [];
      for await (const c of source) chunks.push(Buffer.from(c));
      const bytes = Buffer.concat(chunks);
      a = await whole(bytes);
      onBytes?.(bytes);
    }
    const ms = performance.now() - t0;
    this.stats.analyses++;
    this.stats.analysisSeconds += ms / 1000;
    this.stats.frames += a.framesRead;
    this.onAnalysis?.({ kind: a.verdict.kind, ms, frames: a.frames, framesRead: a.framesRead, regions: a.verdict.kind === 'mask' ? a.verdict.regions.length : 0 });
    return a;
  }
}
