/**
 * The mechanism both providers share (faces per series, text per instance): a decision is taken
 * from memory, then from the durable store, and only then made, once however many callers ask
 * at the same time. A made decision is stored and remembered, or only remembered for this
 * process, or neither (decided again next time), as its maker says.
 */
import type { DecisionStore } from './types.js';

export interface Made<T> {
  readonly verdict: T;
  /** store: durably and in memory; memory: in this process only; none: asked again next time. */
  readonly keep: 'store' | 'memory' | 'none';
}

export class Decisions<T> {
  private readonly memory = new Map<string, T>();
  private readonly running = new Map<string, Promise<T>>();

  constructor(private readonly store: DecisionStore<T> | undefined) {}

  /** A decision already known in this process. */
  known(key: string): T | undefined {
    return this.memory.get(key);
  }

  /** The decision of `key`: from memory, the store, or `make` (shared by concurrent callers). */
  get(key: string, make: () => Promise<Made<T>>): Promise<T> {
    const known = this.memory.get(key);
    if (known) return Promise.resolve(known);
    let run = this.running.get(key);
    if (!run) {
      run = (async () => {
        const stored = await this.store?.get(key);
        if (stored) { this.memory.set(key, stored); return stored; }
        const { verdict, keep } = await make();
        if (keep === 'store') await this.store?.put(key, verdict);
        if (keep !== 'none') this.memory.set(key, verdict);
        return verdict;
      })();
      this.running.set(key, run);
      void run.finally(() => this.running.delete(key)).catch(() => undefined);
    }
    return run;
  }
}
