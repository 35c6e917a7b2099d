/**
 * Per-client limits (issue 4): request rate, concurrent requests, bytes per UTC day.
 * Answered with 429 and Retry-After (GatewayError.retryAfter).
 *
 * - Rate: a token bucket of `requestsPerMinute` tokens refilled continuously (a burst of a
 *   minute's worth, then a steady rate), so no window boundary lets twice the rate through.
 * - Concurrency: requests in flight, in memory (they die with the process anyway).
 * - Bytes per day: response bytes counted when each response ends; once the day's total
 *   reaches the quota, new requests are refused until 00:00 UTC. A response in flight when
 *   the quota is crossed completes: a transfer is never cut for quota.
 * Rate and bytes live in a LimitStore so that they survive a restart (SQLite in the state
 * directory; written synchronously, a few tens of microseconds per request).
 */
import { GatewayError } from '../core/errors.js';

export interface LimitSettings {
  readonly requestsPerMinute?: number | undefined;
  readonly concurrentRequests?: number | undefined;
  readonly bytesPerDay?: number | undefined;
}

/**
 * Where the counters live: SQLite in the state directory (one gateway), or PostgreSQL
 * (replicas share them; take() is atomic across replicas there).
 */
export interface LimitStore {
  /** Refills the bucket to `now` (capacity, tokens per ms) and takes one token if there is one. */
  take(clientId: string, capacity: number, perMs: number, now: number): { admitted: boolean; tokens: number } | Promise<{ admitted: boolean; tokens: number }>;
  bytes(clientId: string, day: string): number | Promise<number>;
  addBytes(clientId: string, day: string, n: number): void | Promise<void>;
  close(): void;
}

/** The token bucket step, for stores that keep (tokens, at) per client. */
export function refill(b: { tokens: number; at: number } | undefined, capacity: number, perMs: number, now: number): { admitted: boolean; tokens: number; after: number } {
  const tokens = b === undefined ? capacity : Math.min(capacity, b.tokens + Math.max(0, now - b.at) * perMs);
  const admitted = tokens >= 1;
  return { admitted, tokens, after: admitted ? tokens - 1 : tokens };
}

/** Call once when the request ends, with the bytes it sent. */
export type Release = (bytes: number) => void;

const DAY_MS = 86_400_000;
const utcDay = (t: number): string => new Date(t).toISOString().slice(0, 10);

export class Limiter {
  private readonly inFlight = new Map<string, number>();
  private readonly bytesMemo = new Map<string, { day: string; bytes: number; read: number }>();

  constructor(
    private readonly store: LimitStore,
    private readonly settings: (clientId: string) => LimitSettings | undefined,
    private readonly now: () => number = Date.now,
    private readonly onError: (e: unknown) => void = () => undefined,
  ) {}

  /** Admits a request or throws 429 (RATE_LIMITED, CONCURRENCY_LIMITED, QUOTA_EXCEEDED). */
  async admit(clientId: string): Promise<Release> {
    const s = this.settings(clientId);
    if (!s || (s.requestsPerMinute === undefined && s.concurrentRequests === undefined && s.bytesPerDay === undefined)) return () => undefined;
    const now = this.now();
    const day = utcDay(now);
    if (s.bytesPerDay !== undefined && (await this.bytesToday(clientId, day)) >= s.bytesPerDay) {
      const retry = Math.max(1, Math.ceil((Math.floor(now / DAY_MS) * DAY_MS + DAY_MS - now) / 1000));
      throw new GatewayError('QUOTA_EXCEEDED', `this client's daily transfer quota (${s.bytesPerDay} bytes) is used up; it resets at 00:00 UTC`, { auditReason: 'limit:bytes-per-day', retryAfter: retry });
    }
    const running = this.inFlight.get(clientId) ?? 0;
    if (s.concurrentRequests !== undefined && running >= s.concurrentRequests) {
      throw new GatewayError('CONCURRENCY_LIMITED', `this client may have at most ${s.concurrentRequests} requests in flight`, { auditReason: 'limit:concurrent-requests', retryAfter: 1 });
    }
    this.inFlight.set(clientId, running + 1); // held while the bucket is asked, so a burst cannot pass the cap
    if (s.requestsPerMinute !== undefined) {
      const cap = s.requestsPerMinute;
      const rate = cap / 60_000; // tokens per ms
      let r: { admitted: boolean; tokens: number };
      try {
        r = await this.store.take(clientId, cap, rate, now);
      } catch (e) {
        this.leave(clientId);
        throw e;
      }
      if (!r.admitted) {
        this.leave(clientId);
        throw new GatewayError('RATE_LIMITED', `this client may make at most ${cap} requests per minute`, { auditReason: 'limit:requests-per-minute', retryAfter: Math.max(1, Math.ceil((1 - r.tokens) / rate / 1000)) });
      }
    }
    let released = false;
    return (bytes) => {
      if (released) return;
      released = true;
      this.leave(clientId);
      if (s.bytesPerDay !== undefined && bytes > 0) {
        const d = utcDay(this.now());
        const m = this.bytesMemo.get(clientId);
        if (m?.day === d) m.bytes += bytes;
        Promise.resolve(this.store.addBytes(clientId, d, bytes)).catch(this.onError);
      }
    };
  }

  private leave(clientId: string): void {
    const n = (this.inFlight.get(clientId) ?? 1) - 1;
    if (n <= 0) this.inFlight.delete(clientId); else this.inFlight.set(clientId, n);
  }

  /**
   * The day's bytes: read from the store once a day per client and then kept up to date
   * locally; with a shared store, re-read at most every 10 s so other replicas' bytes count.
   */
  private async bytesToday(clientId: string, day: string): Promise<number> {
    const m = this.bytesMemo.get(clientId);
    const now = this.now();
    if (m?.day === day && now - m.read < 10_000) return m.bytes;
    const bytes = await this.store.bytes(clientId, day);
    this.bytesMemo.set(clientId, { day, bytes, read: now });
    return bytes;
  }
}

/** A LimitStore in memory (tests, and clients without limits never touch a store). */
export function memoryLimitStore(): LimitStore {
  const buckets = new Map<string, { tokens: number; at: number }>();
  const bytes = new Map<string, number>();
  return {
    take(c, cap, perMs, now) {
      const r = refill(buckets.get(c), cap, perMs, now);
      buckets.set(c, { tokens: r.after, at: now });
      return r;
    },
    bytes: (c, d) => bytes.get(`${c}\0${d}`) ?? 0,
    addBytes: (c, d, n) => { bytes.set(`${c}\0${d}`, (bytes.get(`${c}\0${d}`) ?? 0) + n); },
    close: () => undefined,
  };
}
