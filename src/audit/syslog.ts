/**
 * The A.5 audit messages to the hospital's Audit Record Repository over syslog: RFC 5424
 * messages, framed by octet counting (RFC 6587 3.4.1) over TCP, or over TLS (RFC 5425).
 *
 * Nothing is lost: every message is first appended to a spool in the request's own audit step —
 * a file in the state directory (FileSpool: synchronous), or with shared state a PostgreSQL
 * table that every replica's sender drains (so a replica that dies leaves nothing behind) — and
 * a sender copies whole frames from the spool to the connection and marks them sent once the
 * socket has taken them.
 * While the repository is unreachable the spool grows and the sender retries with backoff
 * (0.5 s doubling to 30 s); after a restart it resumes from the recorded offset. Delivery is
 * at-least-once: frames written just before a connection broke are sent again. A fully sent
 * spool is truncated when it passes 1 MiB.
 */
import { closeSync, existsSync, fdatasyncSync, fstatSync, mkdirSync, openSync, readFileSync, readSync, writeFileSync, writeSync, ftruncateSync, renameSync } from 'node:fs';
import { connect as netConnect, type Socket } from 'node:net';
import { connect as tlsConnect } from 'node:tls';
import { hostname } from 'node:os';
import { join } from 'node:path';
import { GatewayError } from '../core/errors.js';
import type { AuditForwarder, RequestAudit } from './sink.js';
import { atnaMessages, type AtnaContext } from './atna.js';

export interface SyslogOptions {
  readonly host: string;
  readonly port: number;
  readonly tls?: { readonly ca?: Buffer | undefined; readonly cert?: Buffer | undefined; readonly key?: Buffer | undefined; readonly rejectUnauthorized?: boolean | undefined } | undefined;
  readonly appName?: string | undefined;
  /** Where frames wait: a file in the state directory, or a table replicas share (state/postgres.ts). */
  readonly spool: Spool;
  /** Syslog facility (default 10, security/authorization) and severity (default 5, notice). */
  readonly facility?: number | undefined;
  readonly severity?: number | undefined;
  readonly onState?: ((state: 'connected' | 'disconnected', detail?: string) => void) | undefined;
}

const MAX_BATCH = 256 * 1024;
const COMPACT_AT = 1024 * 1024;

/** A batch of whole frames taken from a spool: sent() marks them delivered, release() puts them back. */
export interface SpoolBatch {
  readonly data: Buffer;
  sent(): Promise<void> | void;
  release(): Promise<void> | void;
}

export interface Spool {
  /** Appends whole frames; durable when it returns (or resolves). */
  append(frames: Buffer): void | Promise<void>;
  /** The next frames to send, or undefined when nothing waits. */
  take(): Promise<SpoolBatch | undefined>;
  /** Bytes waiting (for the metrics); may be an estimate. */
  pending(): number;
  close(): Promise<void> | void;
}

/** The spool in a file (`spool.log`) with the offset sent so far (`spool.offset`). */
export class FileSpool implements Spool {
  private readonly spoolPath: string;
  private readonly offsetPath: string;
  private fd: number;
  private offset: number;
  private taken = false;
  /** The last append failed: the next one reopens the file first (it may have been replaced or freed). */
  private broken = false;

  constructor(dir: string) {
    mkdirSync(dir, { recursive: true, mode: 0o700 });
    this.spoolPath = join(dir, 'spool.log');
    this.offsetPath = join(dir, 'spool.offset');
    this.fd = openSync(this.spoolPath, 'a+', 0o600);
    const size = fstatSync(this.fd).size;
    const saved = existsSync(this.offsetPath) ? Number(readFileSync(this.offsetPath, 'utf8').trim()) : 0;
    this.offset = Number.isInteger(saved) && saved >= 0 && saved <= size ? saved : 0;
  }

  /**
   * Appends and fdatasyncs (about 0.15 ms on the 2-core VM's disk, docs/audit.md), so a message
   * is on disk before the response it describes completes. A failed write is cut back, so the
   * spool never keeps half a frame; the error goes to the caller (the request fails closed).
   */
  append(buf: Buffer): void {
    if (this.broken) {
      if (this.fd >= 0) try { closeSync(this.fd); } catch { /* closed */ }
      this.fd = -1;
      this.fd = openSync(this.spoolPath, 'a+', 0o600);
      this.offset = Math.min(this.offset, fstatSync(this.fd).size);
      this.broken = false;
    }
    const size = fstatSync(this.fd).size;
    try {
      let off = 0;
      while (off < buf.length) off += writeSync(this.fd, buf, off, buf.length - off);
      fdatasyncSync(this.fd);
    } catch (e) {
      try { ftruncateSync(this.fd, size); } catch { /* the frame reader stops at a torn frame */ }
      this.broken = true;
      throw e;
    }
  }

  pending(): number {
    return this.fd < 0 ? 0 : fstatSync(this.fd).size - this.offset;
  }

  async take(): Promise<SpoolBatch | undefined> {
    if (this.taken) return undefined;
    const data = this.nextBatch();
    if (!data) { this.compact(); return undefined; }
    this.taken = true;
    return {
      data,
      sent: () => { this.taken = false; this.offset += data.length; this.saveOffset(); },
      release: () => { this.taken = false; },
    };
  }

  /** Whole frames from the spool at `offset`, up to MAX_BATCH bytes (at least one frame). */
  private nextBatch(): Buffer | undefined {
    if (this.fd < 0) return undefined;
    const size = fstatSync(this.fd).size;
    if (this.offset >= size) return undefined;
    const want = Math.min(size - this.offset, MAX_BATCH);
    const buf = Buffer.alloc(want);
    const n = readSync(this.fd, buf, 0, want, this.offset);
    let end = 0;
    for (;;) {
      const sp = buf.indexOf(0x20, end);
      if (sp < 0 || sp - end > 10) break;
      const len = Number(buf.toString('ascii', end, sp));
      if (!Number.isInteger(len) || sp + 1 + len > n) {
        if (end === 0 && Number.isInteger(len) && sp + 1 + len <= size - this.offset) {
          const big = Buffer.alloc(sp + 1 + len); // one frame larger than a batch: read it whole
          readSync(this.fd, big, 0, big.length, this.offset);
          return big;
        }
        break;
      }
      end = sp + 1 + len;
    }
    return end > 0 ? buf.subarray(0, end) : undefined;
  }

  private saveOffset(): void {
    const tmp = `${this.offsetPath}.tmp`;
    writeFileSync(tmp, `${this.offset}\n`, { mode: 0o600 });
    renameSync(tmp, this.offsetPath);
  }

  private compact(): void {
    if (this.fd < 0) return;
    const size = fstatSync(this.fd).size;
    if (this.offset === size && size >= COMPACT_AT) {
      ftruncateSync(this.fd, 0);
      this.offset = 0;
      this.saveOffset();
    }
  }

  close(): void {
    if (this.fd >= 0) closeSync(this.fd);
    this.fd = -1;
  }
}

export class SyslogForwarder implements AuditForwarder {
  private socket: Socket | undefined;
  private connected = false;
  private writing = false;
  private closed = false;
  private backoff = 500;
  private retry: NodeJS.Timeout | undefined;
  private poll: NodeJS.Timeout;
  private readonly seen = new Set<string>();
  /** Frames whose spool append failed: kept in order and appended first on the next try. */
  private failed: Buffer | undefined;
  private problem: string | undefined;
  private retrying = false;
  private readonly ctx: AtnaContext;
  private readonly hostName = hostname();

  constructor(private readonly opts: SyslogOptions) {
    this.ctx = { sourceId: `${opts.appName ?? 'deid-gateway'}@${this.hostName}`, host: this.hostName, pid: process.pid };
    // A shared spool also fills from other replicas: look for work now and then.
    this.poll = setInterval(() => this.pump(), 1000);
    this.poll.unref();
    this.connect();
  }

  /** Bytes spooled and not yet handed to the repository. */
  pending(): number {
    return this.opts.spool.pending();
  }

  forward(r: RequestAudit): void | Promise<void> {
    const firstLogin = r.client !== null && r.status !== 401 && !this.seen.has(r.client);
    if (firstLogin && r.client) this.seen.add(r.client);
    const pri = (this.opts.facility ?? 10) * 8 + (this.opts.severity ?? 5);
    const frames = atnaMessages(this.ctx, r, { firstLogin }).map((m) => {
      const msg = Buffer.from(`<${pri}>1 ${new Date().toISOString()} ${this.hostName} ${this.opts.appName ?? 'deid-gateway'} ${process.pid} IHE+RFC-3881 - \uFEFF${m.xml}`, 'utf8');
      return Buffer.concat([Buffer.from(`${msg.length} `, 'ascii'), msg]);
    });
    if (!frames.length) return undefined;
    return this.append(Buffer.concat(frames));
  }

  /**
   * Appends to the spool (after any frames that failed before, in order). A failure keeps the
   * frames in memory, marks the forwarder unhealthy (the gateway then refuses new requests with
   * AUDIT_UNAVAILABLE and says why on /readyz) and throws AUDIT_UNAVAILABLE to the request.
   */
  private append(frames: Buffer | undefined): void | Promise<void> {
    const carried = this.failed;
    const data = carried && frames ? Buffer.concat([carried, frames]) : carried ?? frames;
    if (!data) return undefined;
    const done = (): void => {
      if (this.failed === carried) this.failed = undefined; // else a concurrent append failed after this one started
      if (this.failed === undefined) this.problem = undefined;
      this.pump();
    };
    const fail = (e: unknown): never => {
      this.failed = this.failed === carried ? data : this.failed && frames ? Buffer.concat([this.failed, frames]) : this.failed ?? frames;
      this.problem = `the A.5 audit spool cannot be written (${(e as NodeJS.ErrnoException)?.code ?? (e as Error)?.name ?? 'error'}); free space or fix permissions in state.dir, or check the database`;
      throw new GatewayError('AUDIT_UNAVAILABLE', 'the audit trail cannot be written; nothing is served until it can', { auditReason: 'audit-unavailable', retryAfter: 30, cause: e });
    };
    let appended: void | Promise<void>;
    try { appended = this.opts.spool.append(data); } catch (e) { return fail(e); }
    if (appended instanceof Promise) return appended.then(done, fail);
    done();
    return undefined;
  }

  /** False while the spool cannot be written (then nothing is served). */
  healthy(): boolean {
    return this.problem === undefined;
  }

  problemText(): string | undefined {
    return this.problem;
  }

  /**
   * Tries the spool again with the frames that failed. A file spool answers at once; a shared
   * (asynchronous) spool answers false now and becomes healthy when its append succeeds.
   */
  recover(): boolean {
    if (this.problem === undefined) return true;
    if (this.retrying) return false;
    try {
      const r = this.append(undefined);
      if (r instanceof Promise) {
        this.retrying = true;
        r.catch(() => undefined).finally(() => { this.retrying = false; });
        return false;
      }
      return true;
    } catch {
      return false;
    }
  }

  private connect(): void {
    if (this.closed || this.socket) return;
    const { host, port, tls } = this.opts;
    const s = tls
      ? tlsConnect({ host, port, ...(tls.ca ? { ca: tls.ca } : {}), ...(tls.cert ? { cert: tls.cert } : {}), ...(tls.key ? { key: tls.key } : {}), rejectUnauthorized: tls.rejectUnauthorized ?? true, servername: host })
      : netConnect({ host, port });
    this.socket = s;
    s.setNoDelay(true);
    s.once(tls ? 'secureConnect' : 'connect', () => {
      this.connected = true;
      this.backoff = 500;
      this.opts.onState?.('connected');
      this.pump();
    });
    s.on('error', () => { /* 'close' follows */ });
    s.once('close', () => {
      const was = this.connected;
      this.connected = false;
      this.socket = undefined;
      if (was) this.opts.onState?.('disconnected');
      if (this.closed) return;
      this.retry = setTimeout(() => { this.retry = undefined; this.connect(); }, this.backoff);
      this.retry.unref();
      this.backoff = Math.min(30_000, this.backoff * 2);
    });
  }

  private pump(): void {
    if (!this.connected || this.writing || !this.socket) return;
    this.writing = true;
    const s = this.socket;
    void (async () => {
      let batch: SpoolBatch | undefined;
      try {
        batch = await this.opts.spool.take();
      } catch {
        this.writing = false; // the spool is unavailable: the poll tries again
        return;
      }
      if (!batch) { this.writing = false; return; }
      if (s !== this.socket || !this.connected) { await batch.release(); this.writing = false; return; }
      s.write(batch.data, (err) => {
        void (async () => {
          try {
            if (err || s !== this.socket) await batch.release(); // resent after reconnecting
            else await batch.sent();
          } catch { /* a shared spool marks it on the next try */ }
          this.writing = false;
          if (!err) this.pump();
        })();
      });
    })();
  }

  /** Gives the sender up to `ms` to drain, then closes; the spool keeps the rest. */
  async close(ms = 2000): Promise<void> {
    const until = Date.now() + ms;
    while (this.connected && this.pending() > 0 && Date.now() < until) await new Promise((r) => setTimeout(r, 20));
    this.closed = true;
    clearInterval(this.poll);
    if (this.retry) clearTimeout(this.retry);
    while (this.writing && Date.now() < until + 1000) await new Promise((r) => setTimeout(r, 10));
    this.socket?.end();
    this.socket?.destroy();
    await this.opts.spool.close();
  }
}
