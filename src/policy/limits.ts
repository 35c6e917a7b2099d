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

export interface LimitStore {
  bucket(clientId: string): { tokens: number; at: number } | undefined;
  saveBucket(clientId: string, tokens: number, at: number): void;
  bytes(clientId: string, day: string): number;
  addBytes(clientId: string, day: string, n: number): void;
  close(): void;
}

/** Call once when the request ends, with the bytes it sent. */
export type Release = (bytes: number) => void;

const DAY_MS = 86_400_000;
const utcDay = (t: number): string => new Date(t).toISOString().slice(0, 10);

export class Limiter {
  private readonly inFlight = new Map<string, number>();
  private readonly bytesMemo = new Map<string, { day: string; bytes: number }>();

  constructor(
    private readonly store: LimitStore,
    private readonly settings: (clientId: string) => LimitSettings | undefined,
    private readonly now: () => number = Date.now,
  ) {}

  /** Admits a request or throws 429 (RATE_LIMITED, CONCURRENCY_LIMITED, QUOTA_EXCEEDED). */
  admit(clientId: string): Release {
    const s = this.settings(clientId);
    if (!s || (s.requestsPerMinute === undefined && s.concurrentRequests === undefined && s.bytesPerDay === undefined)) return () => undefined;
    const now = this.now();
    const day = utcDay(now);
    if (s.bytesPerDay !== undefined && this.bytesToday(clientId, day) >= s.bytesPerDay) {
      const retry = Math.max(1, Math.ceil((Math.floor(now / DAY_MS) * DAY_MS + DAY_MS - now) / 1000));
      throw new GatewayError('QUOTA_EXCEEDED', `this client's daily transfer quota (${s.bytesPerDay} bytes) is used up; it resets at 00:00 UTC`, { auditReason: 'limit:bytes-per-day', retryAfter: retry });
    }
    const running = this.inFlight.get(clientId) ?? 0;
    if (s.concurrentRequests !== undefined && running >= s.concurrentRequests) {
      throw new GatewayError('CONCURRENCY_LIMITED', `this client may have at most ${s.concurrentRequests} requests in flight`, { auditReason: 'limit:concurrent-requests', retryAfter: 1 });
    }
    if (s.requestsPerMinute !== undefined) {
      const cap = s.requestsPerMinute;
      const rate = cap / 60_000; // tokens per ms
      const b = this.store.bucket(clientId);
      const tokens = b === undefined ? cap : Math.min(cap, b.tokens + Math.max(0, now - b.at) * rate);
      if (tokens < 1) {
        this.store.saveBucket(clientId, tokens, now);
        throw new GatewayError('RATE_LIMITED', `this client may make at most ${cap} requests per minute`, { auditReason: 'limit:requests-per-minute', retryAfter: Math.max(1, Math.ceil((1 - tokens) / rate / 1000)) });
      }
      this.store.saveBucket(clientId, tokens - 1, now);
    }
    this.inFlight.set(clientId, running + 1);
    let released = false;
    return (bytes) => {
      if (released) return;
      released = true;
      const n = (this.inFlight.get(clientId) ?? 1) - 1;
      if (n <= 0) this.inFlight.delete(clientId); else this.inFlight.set(clientId, n);
      if (s.bytesPerDay !== undefined && bytes > 0) {
        const d = utcDay(this.now());
        this.store.addBytes(clientId, d, bytes);
        const m = this.bytesMemo.get(clientId);
        if (m?.day === d) m.bytes += bytes; else this.bytesMemo.set(clientId, { day: d, bytes: this.store.bytes(clientId, d) });
      }
    };
  }

  private bytesToday(clientId: string, day: string): number {
    const m = this.bytesMemo.get(clientId);
    if (m?.day === day) return m.bytes;
    const bytes = this.store.bytes(clientId, day);
    this.bytesMemo.set(clientId, { day, bytes });
    return bytes;
  }
}

/** A LimitStore in memory (tests, and clients without limits never touch a store). */
export function memoryLimitStore(): LimitStore {
  const buckets = new Map<string, { tokens: number; at: number }>();
  const bytes = new Map<string, number>();
  return {
    bucket: (c) => buckets.get(c),
    saveBucket: (c, tokens, at) => { buckets.set(c, { tokens, at }); },
    bytes: (c, d) => bytes.get(`${c}\0${d}`) ?? 0,
    addBytes: (c, d, n) => { bytes.set(`${c}\0${d}`, (bytes.get(`${c}\0${d}`) ?? 0) + n); },
    close: () => undefined,
  };
}
