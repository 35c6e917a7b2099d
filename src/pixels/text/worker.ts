/**
 * A text detection worker (workers.ts): reads a range of frames of pixel data shared with the
 * main thread and answers the union of their lines. No I/O, no state between jobs.
 */
import { parentPort } from 'node:worker_threads';
import { detectFrames } from './analyze.js';
import type { PlaneFacts } from './planes.js';

export interface FramesJob {
  readonly id: number;
  readonly pixels: SharedArrayBuffer;
  readonly offset: number;
  readonly length: number;
  readonly facts: PlaneFacts;
  readonly from: number;
  readonly to: number;
}

parentPort?.on('message', (job: FramesJob) => {
  try {
    const r = detectFrames(new Uint8Array(job.pixels, job.offset, job.length), job.facts, job.from, job.to);
    parentPort!.postMessage({ id: job.id, boxes: r.boxes, framesRead: r.framesRead });
  } catch (e) {
    const err = e as { code?: string; message?: string; auditReason?: string };
    parentPort!.postMessage({ id: job.id, error: { code: err.code, message: err.message ?? String(e), auditReason: err.auditReason } });
  }
});
