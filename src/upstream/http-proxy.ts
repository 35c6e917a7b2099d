/**
 * The same Upstream interface over http-proxy (the design card's package), kept so the two
 * transports can be measured against each other on the gateway benchmark (docs/decisions.md).
 * http-proxy is built to pipe an incoming request to a target; here it is driven with a
 * synthetic request and `selfHandleResponse`, so the gateway still reads the response itself.
 */
import http from 'node:http';
import { PassThrough } from 'node:stream';
import { createRequire } from 'node:module';
import type HttpProxy from 'http-proxy';
import { GatewayError } from '../core/errors.js';
import { mapUpstreamFailure, requestPath, type Upstream, type UpstreamOptions } from './client.js';
import { upstreamHeaders } from './headers.js';
import { responseBody } from './node-http.js';

interface Pending {
  resolve: (r: http.IncomingMessage) => void;
  reject: (e: unknown) => void;
}

export function createHttpProxyUpstream(opts: UpstreamOptions): Upstream {
  // Loaded only when this transport is chosen (see createUndiciUpstream).
  const httpProxy = createRequire(import.meta.url)('http-proxy') as typeof HttpProxy;
  const root = new URL(opts.url);
  const base = root.pathname.replace(/\/+$/, '');
  const agent = new http.Agent({ keepAlive: true, maxSockets: opts.connections ?? 32 });
  const proxy = httpProxy.createProxyServer({ selfHandleResponse: true, agent, changeOrigin: true, xfwd: false, ignorePath: true, proxyTimeout: opts.responseTimeoutMs });
  const pending = new WeakMap<object, Pending>();
  proxy.on('proxyRes', (proxyRes, req) => {
    pending.get(req)?.resolve(proxyRes);
  });

  function request(path: string, accept: string, signal?: AbortSignal): Promise<http.IncomingMessage> {
    const req = Object.assign(new PassThrough(), {
      url: path, method: 'GET', headers: upstreamHeaders(accept), socket: { destroyed: false },
    });
    req.end();
    const res = Object.assign(new PassThrough(), { headersSent: false, finished: false });
    return new Promise((resolve, reject) => {
      pending.set(req, { resolve, reject });
      const onAbort = (): void => { req.emit('aborted'); reject(new GatewayError('UPSTREAM_UNAVAILABLE', 'the request was aborted')); };
      signal?.addEventListener('abort', onAbort, { once: true });
      proxy.web(req as unknown as http.IncomingMessage, res as unknown as http.ServerResponse, { target: `${root.origin}${path}` }, (err) => reject(mapUpstreamFailure(err)));
    });
  }

  return {
    async get(req) {
      const r = await request(requestPath(base, req), req.accept, req.signal);
      const abort = (): void => { r.destroy(); };
      req.signal?.addEventListener('abort', abort, { once: true });
      return {
        status: r.statusCode ?? 502,
        contentType: r.headers['content-type'] ?? '',
        body: responseBody(r),
        dump: async () => { r.resume(); },
      };
    },
    async ping(signal) {
      try {
        const r = await request(`${base}/studies?limit=1`, 'application/dicom+json', signal);
        r.resume();
        return (r.statusCode ?? 500) < 500;
      } catch {
        return false;
      }
    },
    async close() {
      proxy.close();
      agent.destroy();
    },
  };
}
