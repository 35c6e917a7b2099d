/**
 * The PACS client, behind one small interface so the transport can change (docs/decisions.md):
 * node:http (default, node-http.ts), undici Pool (here) and http-proxy (http-proxy.ts).
 * Keep-alive, connect and response timeouts, and a client abort cancels the upstream request.
 */
import { createRequire } from 'node:module';
import type { Pool as UndiciPool } from 'undici';
import { GatewayError } from '../core/errors.js';
import { upstreamHeaders } from './headers.js';

export interface UpstreamRequest {
  /** Path below the upstream DICOMweb root, starting with "/" (e.g. "/studies"). */
  readonly path: string;
  readonly query?: URLSearchParams;
  readonly accept: string;
  readonly signal?: AbortSignal;
}

export interface UpstreamResponse {
  readonly status: number;
  readonly contentType: string;
  readonly body: AsyncIterable<Buffer>;
  /** Discards the body (for error responses; never forwarded). */
  dump(): Promise<void>;
  /**
   * Optional (the socket transport): the consumer promises that no byte of the body before
   * `bodyOffset` (counted from the body's first byte) is referenced or read again, by it or by
   * anything it handed them to (a socket write included: call this from the write's callback).
   * The memory those bytes were read into may then be reused for later reads. A consumer that
   * never calls it loses nothing but the reuse.
   */
  recycle?(bodyOffset: number): void;
}

export interface Upstream {
  get(req: UpstreamRequest): Promise<UpstreamResponse>;
  /** True when the PACS answers at all (for /readyz). */
  ping(signal?: AbortSignal): Promise<boolean>;
  close(): Promise<void>;
}

export interface UpstreamOptions {
  readonly url: string;
  readonly connectTimeoutMs: number;
  readonly responseTimeoutMs: number;
  readonly connections?: number;
}

/** The path and query of a request below the upstream root path `base`. */
export function requestPath(base: string, req: UpstreamRequest): string {
  return `${base}${req.path}${req.query && [...req.query.keys()].length ? `?${req.query.toString()}` : ''}`;
}

/** A timeout as a transport error (mapUpstreamFailure: UPSTREAM_TIMEOUT). */
export function timeoutError(message: string): Error {
  return Object.assign(new Error(message), { code: 'ETIMEDOUT' });
}

/**
 * How long a kept-alive connection to the PACS may stay idle, from the server's Keep-Alive
 * header (`timeout=N` seconds; 5 s when it says nothing): a little less than it announces, so
 * that the gateway never reuses a socket the PACS is closing.
 */
export function keptAliveMs(keepAlive: string | undefined): number {
  const m = /timeout=(\d+)/.exec(keepAlive ?? '');
  return Math.max(100, Math.min((m ? Number(m[1]) * 1000 : 5000) - 250, 30_000));
}

/** Runs a request, and once more when it failed with `retryable` (a kept connection the PACS had just closed). */
export async function retryOnce<T>(attempt: () => Promise<T>): Promise<T> {
  try {
    return await attempt();
  } catch (e) {
    if ((e as { retryable?: boolean }).retryable) return attempt();
    throw e;
  }
}

/**
 * One table maps transport failures to client-facing errors (ARCHITECTURE rule 6). The
 * messages name no host, port, path or upstream body.
 */
export function mapUpstreamFailure(e: unknown): GatewayError {
  if (e instanceof GatewayError) return e;
  const code = (e as { code?: string })?.code ?? '';
  const name = (e as { name?: string })?.name ?? '';
  if (name === 'AbortError' || code === 'UND_ERR_ABORTED' || code === 'ABORT_ERR') {
    return new GatewayError('UPSTREAM_UNAVAILABLE', 'the request was aborted', { cause: e });
  }
  if (code === 'UND_ERR_CONNECT_TIMEOUT' || code === 'UND_ERR_HEADERS_TIMEOUT' || code === 'UND_ERR_BODY_TIMEOUT' || code === 'ETIMEDOUT') {
    return new GatewayError('UPSTREAM_TIMEOUT', 'the PACS did not answer in time', { cause: e });
  }
  return new GatewayError('UPSTREAM_UNAVAILABLE', 'the PACS cannot be reached', { cause: e });
}

/** Maps an upstream HTTP status that is not a success to the error the client sees. */
export function mapUpstreamStatus(status: number): GatewayError {
  if (status === 404) return new GatewayError('NOT_FOUND', 'no such resource');
  if (status === 406) return new GatewayError('NOT_ACCEPTABLE', 'the PACS cannot provide the requested media type');
  if (status === 400) return new GatewayError('UPSTREAM_REJECTED', 'the PACS rejected the request');
  if (status === 401 || status === 403) return new GatewayError('UPSTREAM_ERROR', 'the PACS refused the gateway');
  return new GatewayError('UPSTREAM_ERROR', `the PACS answered ${status >= 500 ? 'with a server error' : 'unexpectedly'}`);
}

/** An undici Pool to the PACS origin. */
export function createUndiciUpstream(opts: UpstreamOptions): Upstream {
  // Loaded only when this transport is chosen: a gateway on the default one does not carry it
  // (about 10 MB of resident memory).
  const { Pool } = createRequire(import.meta.url)('undici') as { Pool: typeof UndiciPool };
  const root = new URL(opts.url);
  const base = root.pathname.replace(/\/+$/, '');
  const pool = new Pool(root.origin, {
    connections: opts.connections ?? 32,
    connectTimeout: opts.connectTimeoutMs,
    headersTimeout: opts.responseTimeoutMs,
    bodyTimeout: opts.responseTimeoutMs,
    keepAliveTimeout: 30_000,
    // Orthanc answers Keep-Alive: timeout=1; with undici's default 2 s threshold no connection
    // would ever be reused.
    keepAliveTimeoutThreshold: 100,
    pipelining: 1,
  });
  return {
    async get(req) {
      try {
        const r = await pool.request({
          method: 'GET', path: requestPath(base, req), headers: upstreamHeaders(req.accept),
          ...(req.signal ? { signal: req.signal } : {}),
        });
        const ct = r.headers['content-type'];
        const body = r.body as unknown as AsyncIterable<Buffer>;
        return {
          status: r.statusCode,
          contentType: (Array.isArray(ct) ? ct[0] : ct) ?? '',
          body: (async function* () {
            try {
              for await (const c of body) yield c;
            } catch (e) {
              throw mapUpstreamFailure(e);
            }
          })(),
          dump: async () => { try { await r.body.dump(); } catch { /* ignore */ } },
        };
      } catch (e) {
        throw mapUpstreamFailure(e);
      }
    },
    async ping(signal) {
      try {
        const r = await pool.request({ method: 'GET', path: `${base}/studies?limit=1`, headers: upstreamHeaders('application/dicom+json'), ...(signal ? { signal } : {}) });
        await r.body.dump();
        return r.statusCode < 500;
      } catch {
        return false;
      }
    },
    async close() {
      await pool.close();
    },
  };
}
