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
import { mapUpstreamFailure, type Upstream, type UpstreamOptions } from './client.js';
import { upstreamHeaders } from './headers.js';

function timeoutError(message: string): Error {
  return Object.assign(new Error(message), { code: 'ETIMEDOUT' });
}

export function createNodeHttpUpstream(opts: UpstreamOptions): Upstream {
  const root = new URL(opts.url);
  const base = root.pathname.replace(/\/+$/, '');
  const mod = root.protocol === 'https:' ? https : http;
  const agent = new mod.Agent({ keepAlive: true, maxSockets: opts.connections ?? 32, scheduling: 'lifo' });

  function request(path: string, accept: string, signal?: AbortSignal): Promise<{ res: http.IncomingMessage; timedOut: () => boolean }> {
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
      req.once('response', (res) => resolve({ res, timedOut: () => timedOut }));
      req.once('error', (e) => reject(mapUpstreamFailure(e)));
      req.end();
    });
  }

  return {
    async get(r) {
      const qs = r.query && [...r.query.keys()].length ? `?${r.query.toString()}` : '';
      const { res, timedOut } = await request(`${base}${r.path}${qs}`, r.accept, r.signal);
      return {
        status: res.statusCode ?? 502,
        contentType: res.headers['content-type'] ?? '',
        body: (async function* () {
          try {
            for await (const c of res) yield c as Buffer;
            if (!res.complete) throw new GatewayError('UPSTREAM_UNAVAILABLE', 'the PACS closed the connection early');
          } catch (e) {
            // A stalled body is destroyed by the timeout; the stream reports it as "aborted".
            if (timedOut()) throw new GatewayError('UPSTREAM_TIMEOUT', 'the PACS did not answer in time', { cause: e });
            throw mapUpstreamFailure(e);
          }
        })(),
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
