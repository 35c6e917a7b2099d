/**
 * A fair share of the PACS per client (issue 15): each client may stream at most N retrieves
 * (and frames, bulk data, rendered images) at once; further ones wait their turn in order, or
 * until the client gives up. Queries, metadata and the gateway's own analyses are not counted:
 * they are short, and a retrieve may wait on them (a share over them could deadlock a client's
 * retrieves against its own face or fact queries). A client that opens forty retrieves and
 * reads none holds N PACS connections, not the whole pool, and the idle timeout on its
 * connection (server.clientIdleSeconds) releases even those.
 */
import { GatewayError } from '../core/errors.js';

class Slots {
  used = 0;
  private readonly waiting: { resolve: () => void; cancel: () => void }[] = [];

  constructor(private readonly size: number) {}

  /** Resolves when a slot is this caller's; rejects if `signal` aborts first. */
  acquire(signal: AbortSignal): Promise<void> {
    if (signal.aborted) return Promise.reject(new GatewayError('UPSTREAM_UNAVAILABLE', 'the request was aborted'));
    if (this.used < this.size) {
      this.used++;
      return Promise.resolve();
    }
    return new Promise((resolve, reject) => {
      const onAbort = (): void => {
        const i = this.waiting.indexOf(w);
        if (i >= 0) this.waiting.splice(i, 1);
        reject(new GatewayError('UPSTREAM_UNAVAILABLE', 'the request was aborted'));
      };
      const w = { resolve: () => { signal.removeEventListener('abort', onAbort); resolve(); }, cancel: onAbort };
      signal.addEventListener('abort', onAbort, { once: true });
      this.waiting.push(w);
    });
  }

  release(): void {
    const next = this.waiting.shift();
    if (next) next.resolve(); // the slot passes on
    else this.used = Math.max(0, this.used - 1);
  }
}

/** Per-client stream shares of `size` slots each. */
export class StreamShares {
  private readonly byClient = new Map<string, Slots>();

  constructor(private readonly size: number) {}

  /** Waits for one of the client's slots; the returned function gives it back (once). */
  async take(clientId: string, signal: AbortSignal): Promise<() => void> {
    let s = this.byClient.get(clientId);
    if (!s) this.byClient.set(clientId, s = new Slots(this.size));
    await s.acquire(signal);
    let done = false;
    return () => { if (!done) { done = true; s.release(); } };
  }

  /** Streams the client has open now (for tests and metrics). */
  open(clientId: string): number {
    return this.byClient.get(clientId)?.used ?? 0;
  }
}
