/**
 * A scripted HTTP server standing in for the PACS, for fault injection only (not a DICOMweb
 * implementation). It listens on 127.0.0.1:0; each test sets the handler that answers the next
 * requests, usually with `script()`: a status, headers, and a body made of chunks, delays,
 * socket destruction or a hang. Every request is recorded (method, URL, headers, when its
 * connection closed), so tests can check what the gateway sent and when it gave up.
 */
import { createServer, type IncomingHttpHeaders, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo, Socket } from 'node:net';
import { setTimeout as sleep } from 'node:timers/promises';

export interface RecordedRequest {
  readonly method: string;
  /** Path and query as received, e.g. "/dicom-web/studies?limit=1000". */
  readonly url: string;
  readonly headers: IncomingHttpHeaders;
  /** Raw header names and values as received, in order. */
  readonly rawHeaders: readonly string[];
  readonly receivedAt: number;
  /** performance.now() when the response or its connection closed (undefined while open). */
  closedAt: number | undefined;
  /** True when the connection closed before the response was complete. */
  closedEarly: boolean;
  /** Settles once the response or its connection has closed. */
  readonly closed: Promise<void>;
}

export type Handler = (req: IncomingMessage, res: ServerResponse, rec: RecordedRequest) => void | Promise<void>;

/** One step of a scripted body. */
export type Step =
  | Buffer
  | string
  | { readonly delayMs: number }
  /** Destroys the socket (no terminating chunk: the peer sees a connection reset mid-body). */
  | { readonly destroy: true }
  /** Stops here and never answers more (the connection stays open until the server closes). */
  | { readonly hang: true }
  /** Produces chunks lazily (each awaited against back-pressure), e.g. for very large bodies. */
  | { readonly generate: () => Iterable<Buffer | string> | AsyncIterable<Buffer | string> };

export interface Script {
  readonly status?: number;
  readonly headers?: Record<string, string | readonly string[]>;
  /** Delay before the status line and headers. */
  readonly headerDelayMs?: number;
  /** Never send the status line (a PACS that accepts the connection and stays silent). */
  readonly silent?: boolean;
  readonly body?: readonly Step[];
}

export interface FakeUpstream {
  /** http://127.0.0.1:PORT */
  readonly origin: string;
  readonly port: number;
  /** The DICOMweb root the gateway should be configured with: origin + "/dicom-web". */
  readonly dicomWebUrl: string;
  readonly requests: RecordedRequest[];
  /** Sets the handler for the following requests (replacing the previous one). */
  handle(h: Handler): void;
  /** Forgets recorded requests. */
  reset(): void;
  /** Closes the server and destroys every open connection. */
  close(): Promise<void>;
}

async function write(res: ServerResponse, chunk: Buffer | string): Promise<void> {
  if (res.destroyed) throw new Error('fake upstream: response destroyed');
  if (!res.write(chunk)) {
    await new Promise<void>((resolve, reject) => {
      const done = (): void => { res.off('drain', done); res.off('close', closed); resolve(); };
      const closed = (): void => { res.off('drain', done); reject(new Error('fake upstream: connection closed while writing')); };
      res.on('drain', done);
      res.on('close', closed);
    });
  }
}

/** A handler that plays one script; write errors after the peer has gone are swallowed. */
export function script(s: Script): Handler {
  return async (_req, res) => {
    try {
      if (s.silent) return; // never answer
      if (s.headerDelayMs) await sleep(s.headerDelayMs);
      if (res.destroyed) return;
      res.statusCode = s.status ?? 200;
      for (const [k, v] of Object.entries(s.headers ?? {})) res.setHeader(k, v as string | string[]);
      res.flushHeaders();
      for (const step of s.body ?? []) {
        if (res.destroyed) return;
        if (typeof step === 'string' || Buffer.isBuffer(step)) {
          await write(res, step);
        } else if ('delayMs' in step) {
          await sleep(step.delayMs);
        } else if ('destroy' in step) {
          res.socket?.destroy();
          return;
        } else if ('hang' in step) {
          return;
        } else {
          for await (const c of step.generate()) {
            if (res.destroyed) return;
            await write(res, c);
          }
        }
      }
      res.end();
    } catch {
      // The gateway went away mid-body: that is what some tests provoke.
    }
  };
}

/** Routes by the request path (without query): first matching predicate wins, else 404. */
export function route(table: readonly (readonly [(path: string, req: IncomingMessage) => boolean, Handler])[]): Handler {
  return (req, res, rec) => {
    const path = (req.url ?? '/').split('?')[0] ?? '/';
    for (const [match, h] of table) if (match(path, req)) return h(req, res, rec);
    res.statusCode = 404;
    res.end();
  };
}

export async function startFakeUpstream(): Promise<FakeUpstream> {
  let handler: Handler = script({ status: 503, body: [] });
  const requests: RecordedRequest[] = [];
  const sockets = new Set<Socket>();
  const server: Server = createServer((req, res) => {
    let settle!: () => void;
    const closed = new Promise<void>((resolve) => { settle = resolve; });
    const rec: RecordedRequest = {
      method: req.method ?? '', url: req.url ?? '', headers: { ...req.headers }, rawHeaders: [...req.rawHeaders],
      receivedAt: performance.now(), closedAt: undefined, closedEarly: false, closed,
    };
    requests.push(rec);
    res.on('close', () => {
      rec.closedAt = performance.now();
      rec.closedEarly = !res.writableFinished;
      settle();
    });
    void Promise.resolve()
      .then(() => handler(req, res, rec))
      .catch(() => { res.destroy(); });
  });
  server.keepAliveTimeout = 60_000;
  server.on('connection', (s) => {
    sockets.add(s);
    s.on('close', () => sockets.delete(s));
  });
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => resolve());
  });
  const port = (server.address() as AddressInfo).port;
  const origin = `http://127.0.0.1:${port}`;
  return {
    origin,
    port,
    dicomWebUrl: `${origin}/dicom-web`,
    requests,
    handle(h) { handler = h; },
    reset() { requests.length = 0; },
    close() {
      return new Promise<void>((resolve) => {
        server.close(() => resolve());
        for (const s of sockets) s.destroy();
      });
    },
  };
}

/** A TCP port on 127.0.0.1 that nothing listens on (bound, then released). */
export async function deadPort(): Promise<number> {
  const s = createServer();
  await new Promise<void>((resolve) => s.listen(0, '127.0.0.1', () => resolve()));
  const port = (s.address() as AddressInfo).port;
  await new Promise<void>((resolve) => s.close(() => resolve()));
  return port;
}
