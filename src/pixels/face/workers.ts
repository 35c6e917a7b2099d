/**
 * The face runner on a worker thread: the resampling and analysis of a decision (40 to 200 ms
 * of CPU) run off the event loop, which keeps serving other requests meanwhile, in code the
 * worker compiled on a synthetic head at start (warm). Only reduced frames cross to it (about
 * 1.5 MB per decision): the full-resolution instances are reduced on the calling thread as
 * they arrive, so the worker's heap stays small. One worker: concurrent decisions queue on it.
 * A worker that fails takes its jobs with it (they reject: the decision fails and nothing is
 * released); the next job starts a new one.
 */
import type { Worker } from 'node:worker_threads';
import { GatewayError } from '../../core/errors.js';
import { startPixelWorker } from '../worker-start.js';
import type { FaceAnalysis } from './analyze.js';
import type { FaceRunner } from './runner.js';
import type { ReducedFrame } from './volume.js';
import type { FaceJob, FaceReply } from './worker.js';

type Job = { op: 'analyze'; frames: readonly ReducedFrame[]; modality: string } | { op: 'warm' };

export class FaceWorker implements FaceRunner {
  private worker: Worker | undefined;
  private readonly pending = new Map<number, { resolve: (r: FaceReply) => void; reject: (e: Error) => void }>();
  private nextId = 0;
  private closed = false;

  private spawn(): Worker {
    if (this.worker) return this.worker;
    const w = startPixelWorker(import.meta.url, 'worker');
    w.unref();
    const fail = (e: Error): void => {
      if (this.worker === w) this.worker = undefined;
      for (const [, p] of this.pending) p.reject(e);
      this.pending.clear();
    };
    w.on('message', (m: FaceReply) => {
      const p = this.pending.get(m.id);
      if (!p) return;
      this.pending.delete(m.id);
      if ('error' in m) p.reject(new GatewayError(m.error.code === 'PIXELS_WITHHELD' ? 'PIXELS_WITHHELD' : 'INTERNAL', m.error.message, m.error.auditReason ? { auditReason: m.error.auditReason } : undefined));
      else p.resolve(m);
    });
    w.on('error', (e) => fail(new GatewayError('INTERNAL', 'the face analysis worker failed', { cause: e })));
    w.on('exit', () => fail(new GatewayError('INTERNAL', 'the face analysis worker stopped')));
    this.worker = w;
    return w;
  }

  private run(job: Job): Promise<FaceReply> {
    if (this.closed) return Promise.reject(new GatewayError('INTERNAL', 'the face analysis worker is closed'));
    const w = this.spawn();
    const id = this.nextId++;
    return new Promise<FaceReply>((resolve, reject) => {
      this.pending.set(id, { resolve, reject });
      w.postMessage({ id, ...job } as FaceJob);
    });
  }

  async analyze(frames: readonly ReducedFrame[], modality: string): Promise<{ analysis: FaceAnalysis; ms: number }> {
    const r = await this.run({ op: 'analyze', frames, modality });
    if (!('analysis' in r)) throw new GatewayError('INTERNAL', 'the face analysis worker answered out of turn');
    return r;
  }

  /** Starts the worker and runs the analysis on a synthetic head (runner.ts warmUp); answers its verdict. */
  async warm(): Promise<FaceAnalysis['kind']> {
    const r = await this.run({ op: 'warm' });
    if (!('warmed' in r)) throw new GatewayError('INTERNAL', 'the face analysis worker answered out of turn');
    return r.warmed;
  }

  async close(): Promise<void> {
    this.closed = true;
    const w = this.worker;
    this.worker = undefined;
    await w?.terminate();
  }
}
