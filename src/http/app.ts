/**
 * The gateway's request listener: routes of PS3.18 below /dicom-web (./router.ts),
 * authentication, problem+json errors, audit.
 *
 * A reply's first body chunk is pulled before the status line is written, so an upstream
 * failure or a refused first instance is still a clean problem+json; after that, an error
 * destroys the connection, so the client sees a broken transfer, never a truncated-but-valid
 * body (fastify reply.js).
 */
import { createHash, randomUUID, timingSafeEqual } from 'node:crypto';
import type { IncomingMessage, RequestListener, ServerResponse } from 'node:http';
import type { Logger } from 'winston';
import { StreamShares } from './shares.js';
import { writeGathered } from './write-gathered.js';
import { GatewayError, isGatewayError } from '../core/errors.js';
import type { AuditSink } from '../audit/sink.js';
import type { Upstream } from '../upstream/client.js';
import type { FactsCache } from '../policy/facts-cache.js';
import type { FaceProvider } from '../pixels/face/provider.js';
import type { TextProvider } from '../pixels/text/provider.js';
import type { Limiter } from '../policy/limits.js';
import { checkWindow } from '../policy/scope.js';
import { authenticate, authenticateCertificate, normalizeSubject } from './auth.js';
import { bulk, frames, metadata, qido, rendered, retrieve, type ClientRuntime, type Reply, type RequestContext, type RequestNote } from './dicomweb.js';
import { toProblem } from './problem.js';
import type { QueryResolver } from './query.js';
import { pathOf, Router, under, type Params } from './router.js';

/** A request with the parameters its route matched. */
type Request = IncomingMessage & { params: Params; url: string; method: string };
type Response = ServerResponse;

export interface AppDeps {
  /** The current clients (a configuration reload replaces them). */
  readonly clients: () => readonly ClientRuntime[];
  readonly upstream: Upstream;
  /** The upstream a client's requests use (its latency observed under the client's label), when metrics are on. */
  readonly upstreamFor?: ((clientId: string) => Upstream) | undefined;
  /** A resolver for the pseudonyms a request names (looked up in one batch before the handler runs). */
  readonly resolverFor: (client: ClientRuntime, names: { uids: string[]; patientIds: string[] }) => Promise<QueryResolver>;
  readonly flush: () => Promise<void>;
  readonly audit: AuditSink;
  readonly log: Logger;
  readonly publicBaseUrl?: string | undefined;
  readonly maxQueryLimit: number;
  readonly maxQueryScan: number;
  readonly maxHeaderBytes: number;
  readonly maxRenderBytes: number;
  /** Readiness beyond the upstream: state writable, audit writable. */
  readonly stateHealthy: () => boolean;
  /** Readiness: every scope file (allow-lists, opt-out) readable and valid. */
  readonly scopeHealthy: () => boolean;
  readonly limiter: Limiter;
  /** Prometheus metrics: observed de-identification time, and /metrics behind an admin token. */
  readonly metrics?: { readonly observeDeid: (kind: 'json' | 'part10', seconds: number, client: string) => void; readonly render: () => Promise<{ contentType: string; body: string }>; readonly tokenHash?: Buffer | undefined } | undefined;
  readonly facts: FactsCache;
  /** Series-level face decisions, and how long a request waits for one (ms). */
  readonly faces: FaceProvider;
  readonly text: TextProvider;
  readonly faceWaitMs: number;
  /** A streamed response whose client reads nothing for this long is closed (default 30 s). */
  readonly clientIdleMs?: number;
  /** Retrieves, frames, bulk data and rendered images one client may stream at once (default 8). */
  readonly streamsPerClient?: number;
  /** Open connections one client may hold (server.connectionsPerClient); unlimited when absent. */
  readonly connectionsPerClient?: number;
}

interface Locals {
  requestId: string;
  client?: ClientRuntime;
  note: RequestNote;
  route: string;
  started: number;
  bytes: number;
  code?: string;
  /** The real reason of a denial, for the audit record only. */
  reason?: string;
  /**
   * Writes this request's audit records once (later calls do nothing); throws AUDIT_UNAVAILABLE.
   * Called before the last byte of a body, before a problem is sent, or when the connection closes.
   */
  audit: (broken?: boolean) => void | Promise<void>;
}

const READ_ONLY = 'GET';

const localsOf = new WeakMap<Response, Locals>();

function locals(res: Response): Locals {
  return localsOf.get(res)!;
}

/** Sets a status and headers (as express's res.status().set() did). */
function head(res: Response, status: number, headers: Record<string, string>): void {
  res.statusCode = status;
  for (const [k, v] of Object.entries(headers)) res.setHeader(k, v);
}

/**
 * Ends a response with a text body, with Content-Length and `charset=utf-8` added to its type,
 * byte for byte as express's res.send(string) did.
 */
function sendText(res: Response, status: number, headers: Record<string, string>, text: string): void {
  const body = Buffer.from(text, 'utf8');
  const type = headers['content-type'];
  head(res, status, { ...headers, ...(type && !/;\s*charset=/i.test(type) ? { 'content-type': `${type}; charset=utf-8` } : {}), 'content-length': String(body.length) });
  res.end(body);
}

function sendProblem(res: Response, e: unknown): void {
  const l = locals(res);
  const p = toProblem(e, l.requestId);
  l.code = p.code;
  if (isGatewayError(e) && e.auditReason) l.reason = e.auditReason;
  if (res.headersSent) {
    res.destroy(e instanceof Error ? e : new Error(p.code));
    return;
  }
  res.statusCode = p.status;
  // The answer leaves only once its audit records (trail and A.5 spool) are written. When they
  // cannot be, the client gets AUDIT_UNAVAILABLE instead (it carries no data); admission refuses
  // the next requests until the audit can be written again.
  const reply = (q: typeof p, err: unknown): void => {
    const headers: Record<string, string> = { 'content-type': 'application/problem+json', 'cache-control': 'no-store' };
    if (q.status === 401) headers['www-authenticate'] = 'Bearer realm="deid-gateway", Basic realm="deid-gateway"';
    if (q.status === 405) headers.allow = READ_ONLY;
    if (isGatewayError(err) && err.retryAfter !== undefined) headers['retry-after'] = String(err.retryAfter);
    if (!res.destroyed) sendText(res, q.status, headers, JSON.stringify(q));
  };
  const unavailable = (): void => {
    const u = new GatewayError('AUDIT_UNAVAILABLE', 'the audit trail cannot be written; nothing is served until it can', { retryAfter: 30 });
    reply(toProblem(u, l.requestId), u);
  };
  let audited: void | Promise<void>;
  try {
    audited = l.audit();
  } catch {
    unavailable();
    return;
  }
  if (audited instanceof Promise) audited.then(() => reply(p, e), unavailable);
  else reply(p, e);
}

/** UIDs in the path and in query values, and Patient ID match values: what the resolver must know. */
function pseudonymsOf(req: Request): { uids: string[]; patientIds: string[] } {
  const uids = new Set<string>();
  for (const v of Object.values(req.params as Record<string, string | string[]>)) {
    for (const x of Array.isArray(v) ? v : [v]) if (typeof x === 'string' && /^[0-9.]{1,64}$/.test(x)) uids.add(x);
  }
  const patientIds: string[] = [];
  const qs = req.url.includes('?') ? new URLSearchParams(req.url.slice(req.url.indexOf('?') + 1)) : undefined;
  for (const [k, v] of qs ?? []) {
    if (/^(PatientID|00100020)$/i.test(k.trim())) { patientIds.push(v.trim()); continue; }
    for (const x of v.split(/[,\\]/)) if (/^[0-9.]{1,64}$/.test(x.trim())) uids.add(x.trim());
    if (uids.size > 2000) break;
  }
  return { uids: [...uids], patientIds };
}

function baseUrl(req: Request, deps: AppDeps): string {
  if (deps.publicBaseUrl) return `${deps.publicBaseUrl.replace(/\/+$/, '')}/dicom-web`;
  // Only a syntactically plain host:port from the request; anything else falls back to loopback.
  const host = /^[A-Za-z0-9.-]{1,253}(:\d{1,5})?$|^\[[0-9A-Fa-f:]+\](:\d{1,5})?$/.test(req.headers.host ?? '') ? req.headers.host : '127.0.0.1';
  const protocol = (req.socket as import('node:tls').TLSSocket).encrypted ? 'https' : 'http';
  return `${protocol}://${host}/dicom-web`;
}

/**
 * A JSON or image body that ends within this many bytes is sent whole, with Content-Length, in
 * one write (QIDO pages, metadata, rendered images); a longer one streams chunked.
 * On this machine a loopback socket write costs ~0.3 ms of CPU (mostly waking the reader),
 * and a chunked reply takes two (headers and body, then the terminator): see docs/decisions.md.
 */
const WHOLE_BODY_BYTES = 256 * 1024;

async function send(res: Response, reply: Reply, idleMs = 30_000): Promise<void> {
  const it = reply.body[Symbol.asyncIterator]();
  const l = locals(res);
  const writeHead = (): void => head(res, reply.status, { ...reply.headers, 'cache-control': 'no-store', 'x-content-type-options': 'nosniff' });
  // JSON and images are made as fast as the PACS answers: up to WHOLE_BODY_BYTES of them are
  // pulled before the status line (errors until then are still a clean problem+json), and a
  // body that ends there leaves in one write. Other bodies (instances, frames, bulk data) pull
  // only their first chunk, so a slow PACS never delays the first byte of a retrieve.
  const whole = /^(application\/(dicom\+)?json|image\/)/i.test(reply.headers['content-type'] ?? '');
  const early: Buffer[] = [];
  let size = 0;
  let n = await it.next();
  while (!n.done) {
    early.push(n.value);
    size += n.value.length;
    if (!whole || size > WHOLE_BODY_BYTES) break;
    n = await it.next();
  }
  if (n.done) {
    const body = early.length === 1 ? early[0]! : Buffer.concat(early, size);
    writeHead();
    res.setHeader('content-length', String(size));
    l.bytes += size;
    try {
      await l.audit(); // the trail record is written before the body leaves (fail closed)
    } catch (e) {
      for (const k of [...Object.keys(reply.headers), 'content-length']) res.removeHeader(k);
      throw e;
    }
    res.end(body);
    return;
  }
  writeHead();
  async function* rest(): AsyncGenerator<Buffer> {
    // One chunk is held back: the audit record is written before the body's last byte, and a
    // failing trail destroys the response instead of completing it (fail closed).
    let held: Buffer | undefined;
    for (const c of early) {
      if (held) { l.bytes += held.length; yield held; }
      held = c;
    }
    for (;;) {
      const m = await it.next();
      if (m.done) break;
      if (held) { l.bytes += held.length; yield held; }
      held = m.value;
    }
    if (held) l.bytes += held.length;
    await l.audit();
    if (held) yield held;
  }
  // The handler's abort controller (res 'close') cancels the upstream request when the client
  // goes away. A client that stops reading is gone too: once nothing has moved on its
  // connection for idleMs, the response is closed, and with it the upstream request and the
  // client's share of the PACS (issue 15).
  res.setTimeout(idleMs, () => res.destroy());
  await writeGathered(res, rest(), reply.writeHooks);
}

/**
 * A refusal whose request body is not read: the connection closes once the answer is out, so a
 * client that sends (or trickles) a body after it holds nothing.
 */
function closeAfter(req: Request, res: Response): void {
  res.setHeader('connection', 'close');
  res.once('finish', () => { if (!req.complete) req.socket.destroy(); });
}

/** A route's handler: the request (with its parameters) and the response. */
type Handler = (req: Request, res: Response) => void | Promise<void>;

/**
 * The request listener. Every request gets its locals and audit first, then, in this order: the
 * protocol edges, the probes (`/healthz`, `/readyz`, `/metrics`), the read-only and WADO-URI
 * refusals, and below `/dicom-web` admission (audit writable, authentication, the agreement's
 * window, connections and limits) before its route; anything else is not found. express did
 * this until session 14 (docs/decisions.md: its routing cost about 7 % of a QIDO's CPU).
 */
export function createApp(deps: AppDeps): RequestListener {
  const begin = (req: Request, res: Response): void => {
    let audited = false;
    const l: Locals = {
      requestId: randomUUID(), note: { instances: 0, withheld: 0, outOfScope: 0, masked: 0, riskyAllowed: 0, results: 0, studies: new Map() }, route: 'other', started: performance.now(), bytes: 0,
      audit: (broken = false) => {
        // Probes and metrics touch no data and are not audited; a refused metrics token is (an authentication failure).
        if (audited || l.route === 'healthz' || l.route === 'readyz' || (l.route === 'metrics' && res.statusCode < 400)) return undefined;
        audited = true;
        const client = l.client;
        const status = res.statusCode;
        return deps.audit.record({
          time: new Date().toISOString(), requestId: l.requestId, client: client?.id ?? null, method: req.method, route: l.route,
          status, outcome: broken ? (l.code ? 'failed' : 'aborted') : status < 400 ? 'ok' : status < 500 ? 'denied' : 'failed',
          code: l.code, reason: l.reason, bytes: l.bytes, durationMs: Math.round(performance.now() - l.started),
          instances: l.note.instances, withheld: l.note.withheld, ...(l.note.withheldBy ? { withheldBy: { ...l.note.withheldBy } } : {}), masked: l.note.masked, riskyAllowed: l.note.riskyAllowed, ...(l.note.defaced ? { defaced: l.note.defaced } : {}), ...(l.note.facesAllowed ? { facesAllowed: l.note.facesAllowed } : {}), ...(l.note.textRegions !== undefined ? { textRegions: l.note.textRegions, textBoxes: l.note.textBoxes ?? [] } : {}), outOfScope: l.note.outOfScope, results: l.note.results, query: l.note.query,
          studies: [...l.note.studies].map(([study, n]) => ({ study, pseudonymous: n.pseudonymous, patientId: n.patientId, instances: n.instances })),
          policyHash: client?.ctx.plan.hash ?? null, remote: req.socket.remoteAddress, url: (req.url ?? '').slice(0, 4096),
        });
      },
    };
    localsOf.set(res, l);
    // A response has a fixed set of 'close' listeners, not a growing one: the audit, the limiter,
    // the abort of the upstream request, shutdown's in-flight set and the stream pipeline's own
    // (eos) take about ten; Node warns at ten, once per response (a flood of
    // MaxListenersExceededWarning lines that is no leak).
    res.setMaxListeners(32);
    res.setHeader('x-request-id', l.requestId);
    res.on('close', () => {
      try {
        void Promise.resolve(l.audit(!res.writableFinished)).catch(() => undefined); // aborted or failed mid-body: recorded now
      } catch {
        deps.log.error('audit record could not be written', { requestId: l.requestId });
      }
      deps.log.info('request', { requestId: l.requestId, client: l.client?.id, route: l.route, status: res.statusCode, ms: Math.round(performance.now() - l.started), bytes: l.bytes, ...(l.code ? { code: l.code } : {}) });
    });
  };

  // Protocol edges: only HTTP/1.x, with one Host (two are how requests are smuggled past a proxy
  // that reads the other). Refused, and the connection closed.
  const protocolRefused = (req: Request, res: Response): boolean => {
    let hosts = 0;
    for (let i = 0; i < req.rawHeaders.length; i += 2) if (req.rawHeaders[i]!.toLowerCase() === 'host') hosts++;
    if (req.httpVersionMajor === 1 && hosts <= 1) return false;
    closeAfter(req, res);
    sendProblem(res, new GatewayError('BAD_REQUEST', hosts > 1 ? 'a request carries one Host header' : 'only HTTP/1.0 and HTTP/1.1 are served'));
    return true;
  };

  const probes = new Router<Handler>();
  probes.add('/healthz', (_req, res) => {
    locals(res).route = 'healthz';
    sendText(res, 200, { 'content-type': 'application/json', 'cache-control': 'no-store' }, JSON.stringify({ status: 'ok' }));
  });
  probes.add('/readyz', async (_req, res) => {
    locals(res).route = 'readyz';
    const upstream = await deps.upstream.ping(AbortSignal.timeout(3000));
    const state = deps.stateHealthy();
    const scope = deps.scopeHealthy();
    const audit = deps.audit.healthy() || deps.audit.recover();
    const ready = upstream && state && scope && audit;
    sendText(res, ready ? 200 : 503, { 'content-type': 'application/json', 'cache-control': 'no-store' }, JSON.stringify({
      status: ready ? 'ready' : 'not ready', upstream: upstream ? 'ok' : 'unreachable', state: state ? 'ok' : 'unavailable', scope: scope ? 'ok' : 'unavailable',
      audit: audit ? 'ok' : 'unavailable', ...(audit ? {} : { auditProblem: deps.audit.problem() }),
    }));
  });

  const metricsHash = deps.metrics?.tokenHash;
  if (deps.metrics && metricsHash) {
    const m = deps.metrics;
    probes.add('/metrics', async (req, res) => {
      locals(res).route = 'metrics';
      const token = /^Bearer\s+(.+)$/i.exec(req.headers.authorization ?? '')?.[1];
      const given = createHash('sha256').update(token ?? '').digest();
      if (!token || !timingSafeEqual(given, metricsHash)) {
        const l = locals(res);
        l.code = 'UNAUTHORIZED';
        l.reason = 'metrics-token';
        res.statusCode = 401;
        try {
          await l.audit(); // recorded like any authentication failure (trail, A.5 login failure and Security Alert)
        } catch { /* the trail is failing: /readyz says so; a 401 carries no data */ }
        sendText(res, 401, { 'content-type': 'application/problem+json', 'www-authenticate': 'Bearer realm="deid-gateway-metrics"', 'cache-control': 'no-store' },
          JSON.stringify(toProblem(new GatewayError('UNAUTHORIZED', 'the metrics admin token is required'), l.requestId)));
        return;
      }
      const out = await m.render();
      sendText(res, 200, { 'content-type': out.contentType, 'cache-control': 'no-store' }, out.body);
    });
  }

  /** The client a request authenticates as: a certificate the listener verified names it; otherwise a token. */
  const clientOf = (req: Request): ClientRuntime | undefined => {
    const tls = req.socket as import('node:tls').TLSSocket;
    const peer = tls.encrypted && tls.authorized ? tls.getPeerCertificate() : undefined;
    return (peer && peer.subject ? authenticateCertificate(normalizeSubject(peer.subject as unknown as Record<string, string>), deps.clients()) : undefined)
      ?? authenticate(req.headers.authorization, deps.clients());
  };

  // WADO-URI is not served, whatever the method.
  const wadoUri = new Router<true>();
  wadoUri.add('/wado', true);
  wadoUri.add('/dicom-web/wado', true);

  // A connection is its client's from its first authenticated request until it closes: one
  // client may hold at most connectionsPerClient of them (the listener's maxConnections is the
  // total), so that no client can take every connection (issue 15). A request on one more is
  // refused, and that connection closed, before any other work.
  const connectionOwner = new WeakMap<object, string>();
  const connectionsOf = new Map<string, number>();
  const holdConnection = (req: Request, res: Response, clientId: string): void => {
    const cap = deps.connectionsPerClient;
    const socket = req.socket;
    if (cap === undefined || connectionOwner.has(socket)) return;
    const n = connectionsOf.get(clientId) ?? 0;
    if (n >= cap) {
      closeAfter(req, res);
      throw new GatewayError('CONNECTIONS_LIMITED', `this client may hold at most ${cap} open connections; reuse them (keep-alive) or close some`, { auditReason: 'limit:connections', retryAfter: 1 });
    }
    connectionOwner.set(socket, clientId);
    connectionsOf.set(clientId, n + 1);
    socket.once('close', () => {
      const left = (connectionsOf.get(clientId) ?? 1) - 1;
      if (left > 0) connectionsOf.set(clientId, left); else connectionsOf.delete(clientId);
    });
  };

  /** Admission below /dicom-web; false when the request was refused (and answered). */
  const admitted = async (req: Request, res: Response): Promise<boolean> => {
    // Fail closed: nothing is served while the audit trail cannot be written.
    if (!deps.audit.healthy() && !deps.audit.recover()) {
      locals(res).route = 'admission';
      sendProblem(res, new GatewayError('AUDIT_UNAVAILABLE', 'the audit trail cannot be written; nothing is served until it can', { auditReason: 'audit-unavailable', retryAfter: 30 }));
      return false;
    }
    // Mutual TLS: a certificate the listener verified names its client; otherwise a token.
    const client = clientOf(req);
    if (!client) {
      locals(res).route = 'auth';
      sendProblem(res, new GatewayError('UNAUTHORIZED', 'a valid Bearer token (or Basic client id and token) is required'));
      return false;
    }
    locals(res).client = client;
    // The agreement's window, then the client's limits; each refusal is audited with its reason.
    try {
      checkWindow(client.scope.window);
      holdConnection(req, res, client.id);
      const release = await deps.limiter.admit(client.id);
      res.on('close', () => release(locals(res).bytes));
    } catch (e) {
      locals(res).route = 'admission';
      sendProblem(res, e);
      return false;
    }
    return true;
  };

  const shares = new StreamShares(deps.streamsPerClient ?? 8);
  const STREAMS = new Set(['retrieve', 'frames', 'bulk', 'rendered', 'thumbnail']);

  function handle(route: string, fn: (rc: RequestContext, req: Request) => Promise<Reply>) {
    return async (req: Request, res: Response): Promise<void> => {
      const l = locals(res);
      l.route = route;
      const abort = new AbortController();
      res.on('close', () => { if (!res.writableFinished) abort.abort(); });
      const client = l.client!;
      if (STREAMS.has(route)) {
        // The client's share of the PACS: beyond it, a stream waits its turn (issue 15).
        try {
          const give = await shares.take(client.id, abort.signal);
          res.once('close', give);
        } catch {
          return; // the client went away while waiting
        }
      }
      let resolver: QueryResolver;
      try {
        // Every pseudonym the request names (path and query), resolved in one batch.
        resolver = await deps.resolverFor(client, pseudonymsOf(req));
      } catch (e) {
        sendProblem(res, e);
        return;
      }
      const rc: RequestContext = {
        client, upstream: deps.upstreamFor?.(client.id) ?? deps.upstream, resolver, dicomWebBase: baseUrl(req, deps),
        signal: abort.signal, note: l.note, observeDeid: deps.metrics && ((kind, seconds) => deps.metrics!.observeDeid(kind, seconds, client.id)), maxQueryLimit: deps.maxQueryLimit, maxQueryScan: deps.maxQueryScan, maxHeaderBytes: deps.maxHeaderBytes, maxRenderBytes: deps.maxRenderBytes, flush: deps.flush, facts: deps.facts, faces: deps.faces, text: deps.text, faceWaitMs: deps.faceWaitMs,
      };
      try {
        await send(res, await fn(rc, req), deps.clientIdleMs);
      } catch (e) {
        // A client that went away is not an error: said once, at info (the audit record says
        // "aborted"), whatever the stream threw on its way down.
        if (abort.signal.aborted) {
          deps.log.info('request aborted by the client', { requestId: l.requestId, route });
          if (res.headersSent) res.destroy();
          return;
        }
        // Only the error's class: messages of errors the gateway did not raise may quote data.
        if (!isGatewayError(e)) deps.log.error('unexpected error', { requestId: l.requestId, error: (e as Error)?.name ?? typeof e });
        sendProblem(res, e);
      }
    };
  }

  const q = (req: Request): URLSearchParams => new URLSearchParams(req.url.includes('?') ? req.url.slice(req.url.indexOf('?') + 1) : '');
  const p = (req: Request, k: string): string => req.params[k] ?? '';

  const routes = new Router<Handler>();
  const get = (pattern: string, h: Handler): void => routes.add(pattern, h);

  // QIDO-RS (PS3.18 10.6)
  get('/dicom-web/studies', handle('qido-studies', (rc, req) => qido(rc, 'study', {}, q(req))));
  get('/dicom-web/series', handle('qido-series', (rc, req) => qido(rc, 'series', {}, q(req))));
  get('/dicom-web/instances', handle('qido-instances', (rc, req) => qido(rc, 'instance', {}, q(req))));
  get('/dicom-web/studies/:study/series', handle('qido-series', (rc, req) => qido(rc, 'series', { study: p(req, 'study') }, q(req))));
  get('/dicom-web/studies/:study/instances', handle('qido-instances', (rc, req) => qido(rc, 'instance', { study: p(req, 'study') }, q(req))));
  get('/dicom-web/studies/:study/series/:series/instances', handle('qido-instances', (rc, req) => qido(rc, 'instance', { study: p(req, 'study'), series: p(req, 'series') }, q(req))));

  // WADO-RS metadata (PS3.18 10.4)
  get('/dicom-web/studies/:study/metadata', handle('metadata', (rc, req) => metadata(rc, { study: p(req, 'study') })));
  get('/dicom-web/studies/:study/series/:series/metadata', handle('metadata', (rc, req) => metadata(rc, { study: p(req, 'study'), series: p(req, 'series') })));
  get('/dicom-web/studies/:study/series/:series/instances/:instance/metadata', handle('metadata', (rc, req) => metadata(rc, { study: p(req, 'study'), series: p(req, 'series'), instance: p(req, 'instance') })));

  // Rendered and thumbnails (PS3.18 8.3.5): made by the gateway from the de-identified,
  // masked pixels; never the PACS's rendering, which shows whatever is in the pixels.
  for (const kind of ['rendered', 'thumbnail'] as const) {
    const t = kind === 'thumbnail';
    const r = (rc: RequestContext, req: Request, at: { study: string; series?: string; instance?: string; frame?: string }): Promise<Reply> => rendered(rc, at, req.headers.accept, q(req), t);
    get(`/dicom-web/studies/:study/${kind}`, handle(kind, (rc, req) => r(rc, req, { study: p(req, 'study') })));
    get(`/dicom-web/studies/:study/series/:series/${kind}`, handle(kind, (rc, req) => r(rc, req, { study: p(req, 'study'), series: p(req, 'series') })));
    get(`/dicom-web/studies/:study/series/:series/instances/:instance/${kind}`, handle(kind, (rc, req) => r(rc, req, { study: p(req, 'study'), series: p(req, 'series'), instance: p(req, 'instance') })));
    get(`/dicom-web/studies/:study/series/:series/instances/:instance/frames/:frames/${kind}`, handle(kind, (rc, req) => r(rc, req, { study: p(req, 'study'), series: p(req, 'series'), instance: p(req, 'instance'), frame: p(req, 'frames') })));
  }

  // WADO-RS retrieve, frames, bulk data (PS3.18 10.4)
  get('/dicom-web/studies/:study', handle('retrieve', (rc, req) => retrieve(rc, { study: p(req, 'study') }, req.headers.accept)));
  get('/dicom-web/studies/:study/series/:series', handle('retrieve', (rc, req) => retrieve(rc, { study: p(req, 'study'), series: p(req, 'series') }, req.headers.accept)));
  get('/dicom-web/studies/:study/series/:series/instances/:instance', handle('retrieve', (rc, req) => retrieve(rc, { study: p(req, 'study'), series: p(req, 'series'), instance: p(req, 'instance') }, req.headers.accept)));
  get('/dicom-web/studies/:study/series/:series/instances/:instance/frames/:frames', handle('frames', (rc, req) => frames(rc, { study: p(req, 'study'), series: p(req, 'series'), instance: p(req, 'instance'), frames: p(req, 'frames') }, req.headers.accept)));
  get('/dicom-web/studies/:study/series/:series/instances/:instance/bulk/*path', handle('bulk', (rc, req) => bulk(rc, { study: p(req, 'study'), series: p(req, 'series'), instance: p(req, 'instance'), path: p(req, 'path') }, req.headers.accept)));

  const notFound = (res: Response): void => sendProblem(res, new GatewayError('NOT_FOUND', 'no such resource'));

  const dispatch = async (req: Request, res: Response): Promise<void> => {
    if (protocolRefused(req, res)) return;
    const path = pathOf(req.url ?? '');
    if (path === undefined) { notFound(res); return; }
    const read = req.method === 'GET' || req.method === 'HEAD';
    const probe = read ? probes.match(path) : undefined;
    if (probe) { await probe.handler(req, res); return; }
    // Read-only: everything but GET (and HEAD, answered as GET without its body) is refused,
    // for every caller; a valid credential only names the client in the audit record.
    if (!read && under(path, '/dicom-web')) {
      const client = clientOf(req);
      if (client) locals(res).client = client;
      locals(res).route = 'write';
      closeAfter(req, res); // its body, sent or trickling, is not read
      sendProblem(res, new GatewayError('METHOD_NOT_ALLOWED', `${req.method} is not served: the gateway is read-only (no STOW-RS, PUT or DELETE)`));
      return;
    }
    if (wadoUri.match(path)) {
      locals(res).route = 'wado-uri';
      closeAfter(req, res);
      sendProblem(res, new GatewayError('METHOD_NOT_ALLOWED', 'WADO-URI is not served; use WADO-RS'));
      return;
    }
    if (!under(path, '/dicom-web')) { notFound(res); return; }
    if (!(await admitted(req, res))) return;
    const route = routes.match(path); // a malformed escape in a parameter throws: not found
    if (!route) { notFound(res); return; }
    req.params = route.params;
    await route.handler(req, res);
  };

  return (incoming, res) => {
    const req = incoming as Request;
    req.params = {};
    begin(req, res);
    dispatch(req, res).catch(() => {
      // An error no step answered (a malformed escape in the path): never echo the input.
      try {
        notFound(res);
      } catch {
        res.destroy();
      }
    });
  };
}
