/**
 * A face analysis worker (workers.ts): resamples and analyses reduced frames for the provider,
 * off the event loop. No I/O, no state between jobs.
 */
import { parentPort } from 'node:worker_threads';
import type { FaceAnalysis } from './analyze.js';
import { analyzeFrames, timed, warmUp } from './runner.js';
import type { ReducedFrame } from './volume.js';

export type FaceJob =
  | { readonly id: number; readonly op: 'analyze'; readonly frames: readonly ReducedFrame[]; readonly modality: string }
  | { readonly id: number; readonly op: 'warm' };

export type FaceReply =
  | { readonly id: number; readonly analysis: FaceAnalysis; readonly ms: number }
  | { readonly id: number; readonly warmed: FaceAnalysis['kind'] }
  | { readonly id: number; readonly error: { code?: string; message: string; auditReason?: string } };

parentPort?.on('message', (job: FaceJob) => {
  try {
    if (job.op === 'analyze') {
      const { value: analysis, ms } = timed(() => analyzeFrames(job.frames, job.modality));
      parentPort!.postMessage({ id: job.id, analysis, ms } satisfies FaceReply);
    } else {
      parentPort!.postMessage({ id: job.id, warmed: warmUp() } satisfies FaceReply);
    }
  } catch (e) {
    const err = e as { code?: string; message?: string; auditReason?: string };
    parentPort!.postMessage({ id: job.id, error: { code: err.code, message: err.message ?? String(e), auditReason: err.auditReason } } satisfies FaceReply);
  }
});
