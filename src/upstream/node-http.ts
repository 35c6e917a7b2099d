/**
 * The PACS client over Node's own http/https modules with a keep-alive Agent: the default
 * transport. undici 7 (the only line that runs on Node 20) crashes the process with an
 * uncatchable AssertionError when a server closes the connection while a response body is
 * paused by back-pressure (nodejs/undici#5360, fixed only in undici 8): Orthanc closes after
 * every study retrieve and a slow client pauses the body, so that is an ordinary event here.
 */
import http from 'node:http';
import https from 'node:https';
import { GatewayError } from '../core/errors.js';
import { keptAliveMs, mapUpstreamFailure, requestPath, retryOnce, timeoutError, type Upstream, type UpstreamOptions } from './client.js';
import { upstreamHeaders } from './headers.js';

/** The server's Keep-Alive hint of the last response on each socket. */
const hints = new WeakMap<object, string>();

/**
 * Node 20's Agent drops every socket whose server hints `Keep-Alive: timeout=1` (it keeps a
 * 1 s safety margin), and Orthanc always says timeout=1: without this, every request to the
 * PACS opened a new TCP connection (10 % of the gateway's CPU on QIDO). Sockets are kept for
 * a little less than the server announces; a request that meets a socket the server closed
 * at that very moment is retried once (GET is idempotent).
 */
function pacsAgent(mod: typeof http | typeof https, maxSockets: number): http.Agent {
  const Base = mod.Agent as typeof http.Agent;
  class PacsAgent extends Base {
    override keepSocketAlive(socket: import('node:net').Socket): boolean {
      socket.setKeepAlive(true, 1000);
      socket.unref();
      socket.setTimeout(keptAliveMs(hints.get(socket)));
      return true;
    }
  }
  return new PacsAgent({ keepAlive: true, maxSockets, scheduling: 'lifo' });
}

/** A response body as chunks; an early close or a failure becomes the mapped GatewayError. */
export async function* responseBody(res: http.IncomingMessage, timedOut: () => boolean = () => false): AsyncGenerator<Buffer> {
  try {
    for await (const c of res) yield c as Buffer;
    if (!res.complete) throw new GatewayError('UPSTREAM_UNAVAILABLE', 'the PACS closed the connection early');
  } catch (e) {
    // A stalled body is destroyed by the timeout; the stream reports it as "aborted".
    if (timedOut()) throw new GatewayError('UPSTREAM_TIMEOUT', 'the PACS did not answer in time', { cause: e });
    throw mapUpstreamFailure(e);
  }
}

export function createNodeHttpUpstream(opts: UpstreamOptions): Upstream {
  const root = new URL(opts.url);
  const base = root.pathname.replace(/\/+$/, '');
  const mod = root.protocol === 'https:' ? https : http;
  const agent = pacsAgent(mod, opts.connections ?? 32);

  const request = (path: string, accept: string, signal?: AbortSignal): Promise<{ res: http.IncomingMessage; timedOut: () => boolean }> => retryOnce(() => attempt(path, accept, signal));

  function attempt(path: string, accept: string, signal?: AbortSignal): Promise<{ res: http.IncomingMessage; timedOut: () => boolean }> {
    let timedOut = false;
    return new Promise((resolve, reject) => {
      const req = mod.request({
        protocol: root.protocol, hostname: root.hostname, port: root.port || undefined, path, method: 'GET',
        headers: upstreamHeaders(accept), agent, ...(signal ? { signal } : {}),
      });
      // Connect timeout: a fresh socket that does not connect in time.
      req.on('socket', (socket) => {
        if (!socket.connecting) return;
        const t = setTimeout(() => req.destroy(timeoutError('connect timeout')), opts.connectTimeoutMs);
        socket.once('connect', () => clearTimeout(t));
        socket.once('close', () => clearTimeout(t));
      });
      // Response timeout: no byte for this long, headers or body.
      req.setTimeout(opts.responseTimeoutMs, () => { timedOut = true; req.destroy(timeoutError('response timeout')); });
      req.once('response', (res) => {
        const hint = res.headers['keep-alive'];
        if (req.socket && hint) hints.set(req.socket, String(hint));
        resolve({ res, timedOut: () => timedOut });
      });
      req.once('error', (e) => {
        const code = (e as { code?: string }).code;
        // The server closed a kept-alive socket just as it was reused: nothing was answered.
        if (req.reusedSocket && (code === 'ECONNRESET' || code === 'EPIPE') && !signal?.aborted) reject(Object.assign(mapUpstreamFailure(e), { retryable: true }));
        else reject(mapUpstreamFailure(e));
      });
      req.end();
    });
  }

  return {
    async get(r) {
      const { res, timedOut } = await request(requestPath(base, r), r.accept, r.signal);
      return {
        status: res.statusCode ?? 502,
        contentType: res.headers['content-type'] ?? '',
        body: responseBody(res, timedOut),
        dump: async () => { res.destroy(); },
      };
    },
    async ping(signal) {
      try {
        const { res } = await request(`${base}/studies?limit=1`, 'application/dicom+json', signal);
        res.resume();
        return (res.statusCode ?? 500) < 500;
      } catch {
        return false;
      }
    },
    async close() {
      agent.destroy();
    },
  };
}
