/**
 * The gateway's own HTTP/1.1 client for a plain-HTTP PACS (issue 14): GET only, keep-alive,
 * one request per connection at a time, behind the same Upstream interface as node:http.
 *
 * Why: node:http reads the PACS's answer 64 KiB at a time into a fresh buffer, runs it through
 * its parser and a Readable stream, and an async iterator over that stream; for a 158 MB study
 * that is about 2 600 chunks and 200–450 ms of CPU. Here each read lands in the next free
 * region of a 1 MiB slab (net's `onread`, up to 256 KiB per read), the body is framed by a small
 * parser of our own (Content-Length, chunked, or until close), and its chunks are handed to the
 * consumer as subarrays of the slab: about 600–850 reads and 80–170 ms for the same bytes.
 * A slab is never written again once a region of it is handed out, unless the body's consumer
 * says it is done with every byte read into it (`recycle`, below): otherwise it is freed by the
 * garbage collector when the last subarray of it goes, so nothing downstream can see its bytes
 * change. 1 MiB, not more: a slab lives as long as any slice of it, and with 4 MiB slabs the
 * peak resident memory while streaming a 1 GB study rose by about 20 MB.
 *
 * Recycling (session 15). Every slab freed by the collector had been mapped, faulted in and
 * zeroed by the kernel, and counted as external memory, which makes V8 run a full collection per
 * 64 MB read: together about a fifth of the hop's CPU on a 158 MB study. A slab is reused only
 * when (1) it was started and retired (left for a new one) during one exchange, so it holds
 * that exchange's head and body bytes and nobody else's, and (2) that exchange's consumer has
 * called `recycle(offset)` with an offset at or past the last body byte handed out from it.
 * Reused slabs wait in a small pool shared by the connections (at most POOL_SLABS). An exchange
 * starts holding its retired slabs (its 4 latest) at its consumer's first `recycle`, so a
 * consumer that never calls it (every route but the retrieve) gets the old behaviour and keeps
 * nothing alive through it.
 * Measured (bench:gateway (a), 300-instance CT, three alternating runs of each): gateway CPU
 * per retrieve 700–950 ms (median 910) with node:http, 710–820 (750) with this client; the
 * measuring client's own CPU 246–273 and 179–188 ms.
 *
 * Back-pressure: once more than 1 MiB of a body waits for its consumer, the socket stops
 * reading (TCP pushes back on the PACS) until the consumer has taken half of it.
 * Timeouts as in node-http.ts: connect, and no byte for responseTimeoutMs (head or body).
 * A kept-alive socket the PACS closed just as it was reused (no byte of an answer) is retried
 * once on a new connection (GET is idempotent). An abort destroys the connection.
 */
import net from 'node:net';
import { GatewayError } from '../core/errors.js';
import { keptAliveMs, mapUpstreamFailure, requestPath, retryOnce, timeoutError, type Upstream, type UpstreamOptions, type UpstreamResponse } from './client.js';
import { upstreamHeaders } from './headers.js';

const SLAB_BYTES = 1024 * 1024;
const READ_BYTES = 256 * 1024;
/** A response head larger than this is refused. */
const MAX_HEAD_BYTES = 64 * 1024;
/** A chunk-size line (with extensions) or trailer line longer than this is refused. */
const MAX_LINE_BYTES = 4096;
/** Body bytes waiting for the consumer before the socket stops reading. */
const HIGH_WATER = 1024 * 1024;
/** A body the consumer has drained below this resumes reading. */
const LOW_WATER = 512 * 1024;

const CRLF2 = Buffer.from('\r\n\r\n', 'latin1');

/** Slabs given back by consumers (recycle), waiting to be read into again; at most this many. */
const POOL_SLABS = 8;
/** Retired slabs one exchange holds for recycling, at most (the latest). */
const RETIRED_KEPT = 4;
const pool: Buffer[] = [];

/** Slabs taken fresh and from the pool since the process started (tests, diagnostics). */
export const slabCounts = { fresh: 0, reused: 0 };

function newSlab(): Buffer {
  const reused = pool.pop();
  if (reused) { slabCounts.reused++; return reused; }
  slabCounts.fresh++;
  return Buffer.allocUnsafeSlow(SLAB_BYTES);
}

/**
 * The slabs one exchange started and retired, each with the body offset reached when it was
 * retired (every body byte read into it lies before that offset). `recycle` pools those the
 * consumer is done with. At most RETIRED_KEPT are held, the latest: an instance of 100 MB must
 * not keep its 100 slabs alive until its end (the 1 GB study's peak rose by 100 MB when every
 * one was held, and by 35 MB when they were held through WeakRefs, which the young generation's
 * collections treat as strong). Slabs dropped from the list are freed by the collector as before.
 */
class Retired {
  private readonly slabs: { slab: Buffer; end: number }[] = [];
  /** Body bytes handed to the consumer so far. */
  bodyBytes = 0;
  /**
   * Set by the consumer's first `recycle`: until then no slab is held (a consumer that never
   * recycles, every route but the retrieve, keeps nothing alive through this list).
   */
  private active = false;

  retire(slab: Buffer): void {
    if (!this.active) return;
    if (this.slabs.length >= RETIRED_KEPT) this.slabs.shift();
    this.slabs.push({ slab, end: this.bodyBytes });
  }

  recycle(offset: number): void {
    this.active = true;
    let n = 0;
    while (n < this.slabs.length && this.slabs[n]!.end <= offset) {
      if (pool.length < POOL_SLABS) pool.push(this.slabs[n]!.slab);
      n++;
    }
    if (n) this.slabs.splice(0, n);
  }
}

function protocolError(message: string): GatewayError {
  return new GatewayError('UPSTREAM_ERROR', `the PACS answered with ${message}`);
}

/** A body as an async iterable of chunks, filled by the connection, with back-pressure. */
class Body implements AsyncIterable<Buffer> {
  private readonly queue: Buffer[] = [];
  private queued = 0;
  private ended = false;
  private failure: Error | undefined;
  private waiter: (() => void) | undefined;

  constructor(private readonly pause: () => void, private readonly resume: () => void) {}

  push(chunk: Buffer): void {
    if (this.ended || this.failure) return;
    this.queue.push(chunk);
    this.queued += chunk.length;
    if (this.queued > HIGH_WATER) this.pause();
    this.wake();
  }

  end(): void {
    this.ended = true;
    this.wake();
  }

  fail(e: Error): void {
    if (this.ended) return;
    this.failure ??= e;
    this.wake();
  }

  private wake(): void {
    const w = this.waiter;
    this.waiter = undefined;
    w?.();
  }

  async *[Symbol.asyncIterator](): AsyncGenerator<Buffer> {
    for (;;) {
      const c = this.queue.shift();
      if (c) {
        this.queued -= c.length;
        if (this.queued < LOW_WATER) this.resume();
        yield c;
        continue;
      }
      if (this.failure) throw this.failure;
      if (this.ended) return;
      await new Promise<void>((resolve) => { this.waiter = resolve; });
    }
  }
}

interface Head {
  readonly status: number;
  readonly headers: Map<string, string>;
  readonly keepAlive: boolean;
}

/** Parses a response head (status line and header lines, without the blank line). */
function parseHead(text: string): Head {
  const lines = text.split('\r\n');
  const m = /^HTTP\/1\.([01]) (\d{3})(?: .*)?$/.exec(lines[0] ?? '');
  if (!m) throw protocolError('a malformed status line');
  const headers = new Map<string, string>();
  for (const line of lines.slice(1)) {
    const colon = line.indexOf(':');
    if (colon <= 0 || /[\s]/.test(line.slice(0, colon))) throw protocolError('a malformed header line');
    const name = line.slice(0, colon).toLowerCase();
    const value = line.slice(colon + 1).trim();
    const prev = headers.get(name);
    headers.set(name, prev === undefined ? value : `${prev}, ${value}`);
  }
  const connection = (headers.get('connection') ?? '').toLowerCase();
  const keepAlive = m[1] === '1' ? !/\bclose\b/.test(connection) : /\bkeep-alive\b/.test(connection);
  return { status: Number(m[2]), headers, keepAlive };
}

/** How a body ends: after `length` bytes, after the last chunk, or when the connection closes. */
type Framing = { kind: 'length'; left: number } | { kind: 'chunked' } | { kind: 'close' } | { kind: 'none' };

function framingOf(head: Head): Framing {
  if (head.status === 204 || head.status === 304 || (head.status >= 100 && head.status < 200)) return { kind: 'none' };
  const te = head.headers.get('transfer-encoding');
  if (te !== undefined) {
    if (te.toLowerCase().split(',').map((s) => s.trim()).at(-1) !== 'chunked') return { kind: 'close' };
    return { kind: 'chunked' };
  }
  const cl = head.headers.get('content-length');
  if (cl !== undefined) {
    if (!/^\d{1,15}$/.test(cl)) throw protocolError('an invalid Content-Length');
    const left = Number(cl);
    return left === 0 ? { kind: 'none' } : { kind: 'length', left };
  }
  return { kind: 'close' };
}

/** Decodes a chunked body incrementally (RFC 9112 7.1); data comes out as subarrays of the input. */
class Dechunker {
  private state: 'size' | 'data' | 'data-crlf' | 'trailer' | 'done' = 'size';
  private left = 0;
  private line = '';

  get done(): boolean { return this.state === 'done'; }

  /** Feeds bytes; calls `out` with each run of data; answers how many input bytes were used. */
  feed(buf: Buffer, out: (data: Buffer) => void): number {
    let i = 0;
    while (i < buf.length && this.state !== 'done') {
      if (this.state === 'data') {
        const n = Math.min(this.left, buf.length - i);
        out(buf.subarray(i, i + n));
        i += n;
        this.left -= n;
        if (this.left === 0) this.state = 'data-crlf';
        continue;
      }
      // Line states: read up to LF.
      const lf = buf.indexOf(0x0a, i);
      const end = lf < 0 ? buf.length : lf;
      this.line += buf.toString('latin1', i, end);
      if (this.line.length > MAX_LINE_BYTES) throw protocolError('a chunk line that is too long');
      i = end;
      if (lf < 0) break;
      i++; // the LF
      const line = this.line.endsWith('\r') ? this.line.slice(0, -1) : this.line;
      this.line = '';
      if (this.state === 'data-crlf') {
        if (line !== '') throw protocolError('chunk data longer than its size');
        this.state = 'size';
      } else if (this.state === 'size') {
        const m = /^([0-9a-fA-F]{1,12})[ \t]*(?:;.*)?$/.exec(line);
        if (!m) throw protocolError('an invalid chunk size');
        this.left = parseInt(m[1]!, 16);
        this.state = this.left === 0 ? 'trailer' : 'data';
      } else if (line === '') {
        this.state = 'done'; // the blank line after the trailers
      }
    }
    return i;
  }
}

/** One connection to the PACS and the exchange on it, if any. */
class Connection {
  readonly socket: net.Socket;
  private slab = newSlab();
  private used = 0;
  /** The exchange under way, for the slabs it starts and retires (undefined while idle). */
  exchange: Retired | undefined;
  /** The exchange during which the current slab was started, if any. */
  private slabOf: Retired | undefined;
  /** Receives each read while an exchange is under way; undefined while idle. */
  onData: ((chunk: Buffer) => void) | undefined;
  onGone: ((e: Error | undefined) => void) | undefined;
  paused = false;
  closed = false;
  /** Called when no byte has come for the socket's timeout (set per exchange). */
  onTimeout: (() => void) | undefined;
  /** Counted among the pool's open connections (uncounted once, when it is dropped). */
  counted = true;
  idleMs = 4750;
  private idleTimer: NodeJS.Timeout | undefined;

  constructor(host: string, port: number, connectTimeoutMs: number, onConnectFail: (e: Error) => void) {
    this.socket = net.connect({
      host, port, noDelay: true,
      onread: {
        buffer: () => this.region(),
        callback: (n: number, buf: Uint8Array): boolean => {
          this.used += n;
          const chunk = Buffer.from(buf.buffer, buf.byteOffset, n);
          if (this.onData) this.onData(chunk);
          else this.destroy(); // bytes on an idle connection: not an answer to anything
          return !this.paused;
        },
      },
    });
    const t = setTimeout(() => { this.socket.destroy(timeoutError('connect timeout')); }, connectTimeoutMs);
    let connected = false;
    this.socket.once('connect', () => {
      connected = true;
      clearTimeout(t);
      // Flowing, so that the end of the PACS's side is seen ('end'); the data comes by onread.
      this.socket.resume();
    });
    this.socket.on('error', (e) => { clearTimeout(t); if (!connected) onConnectFail(e); else this.onGone?.(e); });
    this.socket.on('timeout', () => this.onTimeout?.());
    this.socket.on('end', () => { this.closed = true; this.onGone?.(undefined); });
    this.socket.once('close', () => { clearTimeout(t); this.closed = true; this.clearIdle(); this.onGone?.(undefined); });
  }

  /** The next free region of the slab (a new slab when too little is left). */
  private region(): Buffer {
    if (SLAB_BYTES - this.used < READ_BYTES) {
      // Every read into the old slab has been handed out (its callback ran before this call).
      if (this.slabOf !== undefined && this.slabOf === this.exchange) this.slabOf.retire(this.slab);
      this.slab = newSlab();
      this.slabOf = this.exchange;
      this.used = 0;
    }
    return this.slab.subarray(this.used, this.used + READ_BYTES);
  }

  pause(): void { this.paused = true; }

  resume(): void {
    if (!this.paused) return;
    this.paused = false;
    if (!this.closed) this.socket.resume();
  }

  idle(ms: number, onExpire: () => void): void {
    this.onData = undefined;
    this.onTimeout = undefined;
    this.onGone = () => onExpire();
    this.socket.setTimeout(0);
    this.socket.unref();
    this.idleTimer = setTimeout(onExpire, ms);
    this.idleTimer.unref();
  }

  clearIdle(): void {
    if (this.idleTimer) clearTimeout(this.idleTimer);
    this.idleTimer = undefined;
  }

  destroy(e?: Error): void {
    this.closed = true;
    this.clearIdle();
    this.socket.destroy(e);
  }
}

export function createSocketUpstream(opts: UpstreamOptions): Upstream {
  const root = new URL(opts.url);
  if (root.protocol !== 'http:') throw new GatewayError('CONFIG_INVALID', 'upstream.transport socket serves an http:// PACS only; use node for https');
  const base = root.pathname.replace(/\/+$/, '');
  const host = root.hostname.replace(/^\[|\]$/g, '');
  const port = Number(root.port || 80);
  const hostHeader = root.host;
  const max = opts.connections ?? 32;
  const idle: Connection[] = [];
  const waiting: ((c: Connection | Error) => void)[] = [];
  let open = 0;
  let closing = false;

  /** A connection leaves the pool for good: destroyed, its slot given to the next waiter. */
  const drop = (c: Connection): void => {
    const i = idle.indexOf(c);
    if (i >= 0) idle.splice(i, 1);
    if (!c.closed) c.destroy();
    if (!c.counted) return;
    c.counted = false;
    open--;
    next();
  };

  /** A connection: a kept one (last kept first), a new one, or the next one released. */
  function acquire(): Promise<{ conn: Connection; reused: boolean }> {
    for (let c = idle.pop(); c; c = idle.pop()) {
      if (c.closed) { drop(c); continue; }
      c.clearIdle();
      c.socket.ref();
      return Promise.resolve({ conn: c, reused: true });
    }
    if (closing) return Promise.reject(new GatewayError('UPSTREAM_UNAVAILABLE', 'the gateway is shutting down'));
    if (open < max) {
      open++;
      return new Promise((resolve, reject) => {
        const c: Connection = new Connection(host, port, opts.connectTimeoutMs, (e) => { drop(c); reject(e); });
        c.socket.once('connect', () => resolve({ conn: c, reused: false }));
      });
    }
    return new Promise((resolve, reject) => {
      waiting.push((c) => (c instanceof Error ? reject(c) : resolve({ conn: c, reused: true })));
    });
  }

  /** Hands a connection slot to the next waiter, if any (a kept connection, or a new one). */
  function next(): void {
    if (!waiting.length || (open >= max && !idle.length)) return;
    const w = waiting.shift()!;
    acquire().then(({ conn }) => w(conn), (e: Error) => w(e));
  }

  function release(c: Connection, keep: boolean): void {
    c.onData = undefined;
    c.onGone = undefined;
    c.onTimeout = undefined;
    c.socket.setTimeout(0);
    if (!keep || c.closed || closing) { drop(c); return; }
    c.resume(); // a body that ended while its consumer was behind paused the connection, not the next answer
    const w = waiting.shift();
    if (w) { w(c); return; }
    c.idle(c.idleMs, () => drop(c));
    idle.push(c);
  }

  function exchange(path: string, accept: string, signal: AbortSignal | undefined): Promise<UpstreamResponse> {
    return acquire().then(({ conn, reused }) => new Promise<UpstreamResponse>((resolve, reject) => {
      let settled = false;
      let headBytes: Buffer[] = [];
      let headLength = 0;
      let framing: Framing | undefined;
      let dechunker: Dechunker | undefined;
      let body: Body | undefined;
      let finished = false;
      let gotBytes = false;
      let keep = false;
      const retired = new Retired();
      conn.exchange = retired;
      const finish = (ok: boolean): void => {
        if (finished) return;
        finished = true;
        if (conn.exchange === retired) conn.exchange = undefined;
        signal?.removeEventListener('abort', onAbort);
        release(conn, ok && keep);
      };
      const fail = (e: Error): void => {
        const mapped = e instanceof GatewayError ? e : mapUpstreamFailure(e);
        if (!settled) {
          settled = true;
          // Nothing of an answer came on a kept connection the PACS had closed: ask again.
          reject(reused && !gotBytes && !signal?.aborted && !(e as { code?: string }).code?.startsWith('ETIMEDOUT') ? Object.assign(mapped, { retryable: true }) : mapped);
        } else body?.fail(mapped);
        finish(false);
      };
      const onAbort = (): void => {
        const e = Object.assign(new Error('the request was aborted'), { name: 'AbortError' });
        conn.destroy();
        fail(e);
      };
      if (signal?.aborted) { conn.exchange = undefined; release(conn, false); reject(mapUpstreamFailure(Object.assign(new Error('aborted'), { name: 'AbortError' }))); return; }
      signal?.addEventListener('abort', onAbort, { once: true });
      conn.onTimeout = () => { conn.destroy(); fail(timeoutError('response timeout')); };
      conn.socket.setTimeout(opts.responseTimeoutMs);
      // Every body byte reaches the consumer here, counted for the slabs it retires.
      const push = (chunk: Buffer): void => {
        retired.bodyBytes += chunk.length;
        body!.push(chunk);
      };
      const bodyBytes = (chunk: Buffer): void => {
        if (!framing || !body) return;
        if (framing.kind === 'length') {
          if (chunk.length > framing.left) { fail(protocolError('more bytes than its Content-Length')); return; }
          framing.left -= chunk.length;
          push(chunk);
          if (framing.left === 0) { body.end(); finish(true); }
        } else if (framing.kind === 'chunked') {
          const used = dechunker!.feed(chunk, push);
          if (dechunker!.done) {
            if (used < chunk.length) { keep = false; }
            body.end();
            finish(true);
          }
        } else {
          push(chunk);
        }
      };
      conn.onData = (chunk) => {
        gotBytes = true;
        try {
          if (framing) { bodyBytes(chunk); return; }
          // The head: gathered until the blank line (copied: heads are small).
          headBytes.push(chunk);
          headLength += chunk.length;
          const all = headBytes.length === 1 ? chunk : Buffer.concat(headBytes, headLength);
          const at = all.indexOf(CRLF2, Math.max(0, headLength - chunk.length - 3));
          if (at < 0) {
            if (headLength > MAX_HEAD_BYTES) throw protocolError('a response head that is too long');
            headBytes = [Buffer.from(all)];
            return;
          }
          const head = parseHead(all.toString('latin1', 0, at));
          const rest = all.subarray(at + 4);
          headBytes = [];
          // An interim answer (1xx): the final head follows, perhaps in the same read (its bytes are
          // fed again, counted from 0).
          if (head.status >= 100 && head.status < 200) { headLength = 0; if (rest.length) conn.onData!(Buffer.from(rest)); return; }
          conn.idleMs = keptAliveMs(head.headers.get('keep-alive'));
          framing = framingOf(head);
          if (framing.kind === 'chunked') dechunker = new Dechunker();
          keep = head.keepAlive && framing.kind !== 'close';
          // Once this answer is complete the connection may serve another: it no longer pauses it.
          body = new Body(() => { if (!finished) conn.pause(); }, () => { if (!finished) conn.resume(); });
          settled = true;
          const b = body;
          resolve({
            status: head.status,
            contentType: head.headers.get('content-type') ?? '',
            body: b,
            dump: async () => { if (!finished) { conn.destroy(); finish(false); } },
            recycle: (offset: number) => retired.recycle(offset),
          });
          if (framing.kind === 'none') { b.end(); finish(rest.length === 0); return; }
          if (rest.length) bodyBytes(rest);
        } catch (e) {
          conn.destroy();
          fail(e as Error);
        }
      };
      conn.onGone = (e) => {
        if (finished) return;
        if (e) { fail(e); return; }
        // The PACS closed the connection: the end of a close-delimited body, or too early.
        if (framing?.kind === 'close' && body) { body.end(); finish(false); return; }
        fail(settled ? new GatewayError('UPSTREAM_UNAVAILABLE', 'the PACS closed the connection early') : Object.assign(new Error('socket hang up'), { code: 'ECONNRESET' }));
      };
      conn.socket.write(`GET ${path} HTTP/1.1\r\nHost: ${hostHeader}\r\n${Object.entries(upstreamHeaders(accept)).map(([k, v]) => `${k}: ${v}\r\n`).join('')}\r\n`, 'latin1');
    }), (e: Error) => { throw mapUpstreamFailure(e); });
  }

  const request = (path: string, accept: string, signal?: AbortSignal): Promise<UpstreamResponse> => retryOnce(() => exchange(path, accept, signal));

  return {
    get(r) {
      return request(requestPath(base, r), r.accept, r.signal);
    },
    async ping(signal) {
      try {
        const res = await request(`${base}/studies?limit=1`, 'application/dicom+json', signal);
        await res.dump();
        return res.status < 500;
      } catch {
        return false;
      }
    },
    async close() {
      closing = true;
      for (const w of waiting.splice(0)) w(new GatewayError('UPSTREAM_UNAVAILABLE', 'the gateway is shutting down'));
      for (const c of [...idle]) drop(c);
    },
  };
}
