/**
 * Composition root: the only file that wires concrete parts together (ARCHITECTURE).
 */
import { createHash, randomUUID } from 'node:crypto';
import { EventEmitter } from 'node:events';
import type { IncomingMessage, Server, ServerResponse } from 'node:http';
import type { Logger } from 'winston';
import { connectionsPerClient, type Config } from './config/schema.js';
import { createOpsLogger } from './audit/log.js';
import { createAuditSink, type AuditSink } from './audit/sink.js';
import { AuditTrail, auditKey } from './audit/trail.js';
import { TLS_ROUTE } from './audit/atna.js';
import { GatewayMetrics } from './audit/metrics.js';
import { FileSpool, SyslogForwarder, type Spool } from './audit/syslog.js';
import { readFileSync } from 'node:fs';
import { createServer } from 'node:http';
import { createServer as createHttpsServer } from 'node:https';
import { join } from 'node:path';
import { FactsCache } from './policy/facts-cache.js';
import { FaceProvider, type FaceStats, type FaceStore } from './pixels/face/provider.js';
import { openFaceStore, openTextStore } from './pixels/store-sqlite.js';
import { TextProvider, type TextStats, type TextStore } from './pixels/text/provider.js';
import { TextWorkers } from './pixels/text/workers.js';
import { warmUp } from './pixels/face/runner.js';
import { DEFAULT_PIXEL_POLICY } from './policy/pixels.js';
import type { ClientScope } from './policy/client-scope.js';
import { scopesFromConfig } from './policy/configured-scope.js';
import { Limiter, type LimitStore } from './policy/limits.js';
import { GatewayError } from './core/errors.js';
import { openSqliteLimitStore } from './policy/limits-sqlite.js';
import { createEngineContext } from './deid/index.js';
import { createApp } from './http/app.js';
import type { ClientRuntime } from './http/dicomweb.js';
import type { QueryResolver } from './http/query.js';
import { loadOrCreateMasterSecret } from './pseudonym/secret.js';
import { openSqliteStore } from './pseudonym/store.js';
import { fromSqlite, type GatewayPseudonymStore } from './pseudonym/shared.js';
import { createUndiciUpstream, type Upstream } from './upstream/client.js';
import { createHttpProxyUpstream } from './upstream/http-proxy.js';
import { createNodeHttpUpstream } from './upstream/node-http.js';
import { createSocketUpstream } from './upstream/socket-http.js';

export interface Gateway {
  readonly url: string;
  readonly server: Server;
  /** Applies a new configuration's clients and opt-out list; returns what needs a restart. */
  reload(next: Config): string[];
  /** The separate metrics listener's URL, when configured. */
  readonly metricsUrl?: string | undefined;
  /** Face analyses this gateway made (not decisions it found stored). */
  readonly faceStats: FaceStats;
  /** Text analyses this gateway made (not decisions it found stored). */
  readonly textStats: TextStats;
  /** Stops accepting, drains in-flight requests, flushes pseudonyms and audit. */
  close(): Promise<void>;
}

export interface GatewayParts {
  readonly clients: readonly ClientRuntime[];
  readonly store: GatewayPseudonymStore;
  /** Releases what the parts hold beyond the store and limits (the PostgreSQL pool). */
  readonly closeState?: (() => Promise<void>) | undefined;
  /** Face decisions shared by replicas (PostgreSQL); without it, state.dir/faces.sqlite. */
  readonly faceStore?: FaceStore | undefined;
  /** Text decisions shared by replicas (PostgreSQL); without it, state.dir/text.sqlite. */
  readonly textStore?: TextStore | undefined;
  readonly upstream: Upstream;
  readonly audit: AuditSink;
  readonly log: Logger;
  readonly limits: LimitStore;
  readonly metrics?: GatewayMetrics | undefined;
  readonly syslog?: SyslogForwarder | undefined;
  /** 'file' (key, problem | undefined): a scope file became unusable, or usable again. */
  readonly scopeEvents: EventEmitter;
  readonly scopes: readonly ClientScope[];
  readonly master: Buffer;
  /** Health of the scope files (allow-lists, opt-out list), for /readyz. */
  readonly scopeHealthy: () => boolean;
}

/** Original Patient ID from the patient key the pseudonymizer recorded ("id:ISSUER\ID"). */
function patientIdOf(key: string | undefined): string | undefined {
  if (!key?.startsWith('id:')) return undefined;
  const i = key.indexOf('\\');
  return i < 0 ? undefined : key.slice(i + 1);
}

/** The parts with the embedded state (SQLite in state.dir). */
export function buildParts(cfg: Config): GatewayParts {
  if (cfg.state.store) throw new GatewayError('CONFIG_INVALID', 'state.store names a PostgreSQL database: build the parts with buildPartsAsync');
  loadOrCreateMasterSecret(cfg.state.dir); // creates state.dir (0700) and the key before the stores
  return assemble(cfg, fromSqlite(openSqliteStore(cfg.state.dir)), openSqliteLimitStore(cfg.state.dir), cfg.audit.syslog ? new FileSpool(join(cfg.state.dir, 'audit-spool')) : undefined);
}

/** The parts with whichever state the configuration names (PostgreSQL: connected and migrated). */
export async function buildPartsAsync(cfg: Config): Promise<GatewayParts> {
  if (!cfg.state.store) return buildParts(cfg);
  loadOrCreateMasterSecret(cfg.state.dir);
  // Loaded only for a PostgreSQL state store (pg and its parsers: about 8 MB resident).
  const { openPostgresState } = await import('./state/postgres.js');
  const pg = await openPostgresState(cfg.state.store, { passwordFile: cfg.state.storePasswordFile });
  return { ...assemble(cfg, pg.pseudonyms, pg.limits, pg.spool), closeState: () => pg.close(), faceStore: pg.faces, textStore: pg.text };
}

function assemble(cfg: Config, store: GatewayPseudonymStore, limits: LimitStore, spool: Spool | undefined): GatewayParts {
  const master = loadOrCreateMasterSecret(cfg.state.dir);
  const log = createOpsLogger();
  // Scope files are re-read when they change; a broken file fails closed (503) and is logged
  // once, by the logger the gateway runs with (startGateway may be given another one).
  const scopeEvents = new EventEmitter();
  const { clients, scopes } = buildClients(cfg, master, store, scopeEvents);
  const upstreamOpts = { url: cfg.upstream.url, connectTimeoutMs: cfg.upstream.connectTimeoutMs, responseTimeoutMs: cfg.upstream.responseTimeoutMs, connections: cfg.upstream.connections };
  const transport = cfg.upstream.transport ?? (new URL(cfg.upstream.url).protocol === 'http:' ? 'socket' : 'node');
  const upstream = transport === 'http-proxy' ? createHttpProxyUpstream(upstreamOpts)
    : transport === 'undici' ? createUndiciUpstream(upstreamOpts)
      : transport === 'socket' ? createSocketUpstream(upstreamOpts) : createNodeHttpUpstream(upstreamOpts);
  const trail = new AuditTrail({ dir: cfg.state.dir, master, maxBytes: cfg.audit.maxFileBytes, rotateDaily: cfg.audit.rotateDaily });
  const sl = cfg.audit.syslog;
  const syslog = sl === undefined || spool === undefined ? undefined : new SyslogForwarder({
    host: sl.host, port: sl.port, appName: sl.appName, spool,
    ...(sl.tls ? { tls: { ca: sl.tls.caFile ? readFileSync(sl.tls.caFile) : undefined, cert: sl.tls.certFile ? readFileSync(sl.tls.certFile) : undefined, key: sl.tls.keyFile ? readFileSync(sl.tls.keyFile) : undefined, rejectUnauthorized: sl.tls.rejectUnauthorized } } : {}),
    onState: (state) => log[state === 'connected' ? 'info' : 'warn'](`audit record repository ${state}`, { host: sl.host, port: sl.port }),
  });
  const metrics = cfg.metrics === undefined ? undefined : new GatewayMetrics({ auditHealthy: () => trail.healthy() && (syslog?.healthy() ?? true), spoolPending: syslog ? () => syslog.pending() : undefined });
  const forwarders = [...(syslog ? [syslog] : []), ...(metrics ? [metrics] : [])];
  const audit = createAuditSink(trail, auditKey(master), forwarders, (e) => log.error('audit forwarder failed', { error: (e as Error)?.name }));
  return { clients, scopes, master, store, upstream, audit, log, limits, scopeEvents, metrics, syslog, scopeHealthy: () => scopes.every((s) => s.status().ok) };
}

/** The runtime form of every configured client (engine context, scope, pixel policy). */
function buildClients(cfg: Config, master: Buffer, store: GatewayPseudonymStore, scopeEvents: EventEmitter): { clients: ClientRuntime[]; scopes: ClientScope[] } {
  const { scopeOf } = scopesFromConfig(cfg, (key, message) => { scopeEvents.emit('file', key, message); });
  const scopes: ClientScope[] = [];
  const clients: ClientRuntime[] = cfg.clients.map((c, i) => {
    const scope = scopeOf(i);
    scopes.push(scope);
    return {
      id: c.id,
      scope,
      allowedKeys: c.allowedKeys,
      maxResults: c.query?.maxResults,
      pixels: c.pixels ?? DEFAULT_PIXEL_POLICY,
      tokenHash: c.apiKeySha256 === undefined ? undefined : Buffer.from(c.apiKeySha256, 'hex'),
      certificateSubject: c.certificateSubject,
      ctx: createEngineContext({
        clientId: c.id, policyId: c.policyId ?? c.id, masterSecret: master, recorder: { record: (kind, pseudonym, original) => store.record(c.id, kind, pseudonym, original) },
        profile: { options: c.plan.options, overrides: c.profile.overrides, ...(c.profile.dateShift ? { dateShift: c.profile.dateShift } : {}), ...(c.profile.freeText ? { freeText: c.profile.freeText } : {}) },
      }),
    };
  });
  return { clients, scopes };
}

/** Keys that only a restart applies (listeners, state, PACS, audit, metrics, engine limits). */
const RESTART_KEYS = ['server', 'upstream', 'state', 'audit', 'metrics', 'engine'] as const;

/** How a gateway starts beyond its configuration. */
export interface StartOptions {
  /**
   * Run the pixel analyses now on synthetic pixels (the face analysis on the event loop, the
   * text workers on theirs), so that the first real decision runs compiled code (serve does; an
   * embedded gateway, as in tests, compiles them on its first decision).
   */
  readonly warm?: boolean;
}

export async function startGateway(cfg: Config, given?: GatewayParts, options: StartOptions = {}): Promise<Gateway> {
  const parts = given ?? await buildPartsAsync(cfg);
  const { store, upstream, audit, log, limits } = parts;
  let current = { clients: parts.clients, scopes: parts.scopes, cfg };
  const onScopeFile = (key: string, message: string | undefined): void => {
    if (message) log.error(`scope file unusable: ${message}`, { key });
    else log.info('scope file reloaded and valid again', { key });
  };
  parts.scopeEvents.on('file', onScopeFile);
  const facts = new FactsCache();
  const localFaces = parts.faceStore ? undefined : openFaceStore(cfg.state.dir);
  const localText = parts.textStore ? undefined : openTextStore(cfg.state.dir);
  const textWorkers = new TextWorkers();
  // A client that detects text: the workers start now and compile their code on a small frame.
  if (options.warm && cfg.clients.some((c) => c.pixels?.risky === 'detect')) textWorkers.warm().catch(() => undefined);
  // The face analysis compiled before the first request (about 0.6 s of start-up).
  if (options.warm && cfg.clients.some((c) => (c.pixels?.faces ?? 'deface') !== 'allow')) warmUp();
  const text = new TextProvider(parts.textStore ?? localText, (a) => log.info('text decision made', { kind: a.kind, analysisMs: Math.round(a.ms), frames: a.frames, framesRead: a.framesRead, regions: a.regions }), textWorkers);
  const faces = new FaceProvider(parts.faceStore ?? localFaces, (a) => log.info('face decision made', { kind: a.kind, analysisMs: Math.round(a.seconds * 1000), fetchedInstances: a.fetched, frames: a.frames, listMs: Math.round(a.listMs), fetchMs: Math.round(a.fetchMs), totalMs: Math.round(a.totalMs) }));
  const limiter = new Limiter(limits, (id) => current.cfg.clients.find((c) => c.id === id)?.limits, Date.now, (e) => log.error('limit counter not updated', { error: (e as Error)?.name }));
  const resolverFor = async (client: ClientRuntime, names: { uids: string[]; patientIds: string[] }): Promise<QueryResolver> => {
    const retainUids = client.ctx.plan.lookup(0x0020000d).action.kind === 'keep';
    const [uids, patients] = await Promise.all([
      retainUids || names.uids.length === 0 ? new Map<string, string>() : store.lookupMany(client.id, 'uid', names.uids),
      names.patientIds.length === 0 ? new Map<string, string>() : store.lookupMany(client.id, 'patient', names.patientIds),
    ]);
    return {
      uid: (pseudo) => (retainUids ? pseudo : uids.get(pseudo)),
      patientId: (pseudo) => patientIdOf(patients.get(pseudo)),
    };
  };
  // The PACS's latency per client: one timed view of the upstream per client id.
  const timed = new Map<string, Upstream>();
  const upstreamFor = parts.metrics === undefined ? undefined : (clientId: string): Upstream => {
    let u = timed.get(clientId);
    if (!u) timed.set(clientId, u = timedUpstream(upstream, parts.metrics!, clientId));
    return u;
  };
  const app = createApp({
    clients: () => current.clients, upstream, upstreamFor, resolverFor, audit, log,
    flush: () => store.flush(),
    publicBaseUrl: cfg.server.publicBaseUrl,
    maxQueryLimit: cfg.server.maxQueryResults,
    maxQueryScan: cfg.server.maxQueryScan,
    limiter,
    scopeHealthy: () => current.scopes.every((x) => x.status().ok),
    metrics: parts.metrics && {
      observeDeid: (kind: 'json' | 'part10', seconds: number, client: string) => parts.metrics!.deid.observe({ client, kind }, seconds),
      render: async () => ({ contentType: parts.metrics!.registry.contentType, body: await parts.metrics!.registry.metrics() }),
      tokenHash: cfg.metrics?.apiKeySha256 ? Buffer.from(cfg.metrics.apiKeySha256, 'hex') : undefined,
    },
    maxHeaderBytes: cfg.engine.maxHeaderBytes,
    maxRenderBytes: cfg.engine.maxRenderBytes,
    stateHealthy: () => store.healthy(),
    facts,
    faces,
    text,
    faceWaitMs: cfg.engine.faceWaitSeconds * 1000,
    clientIdleMs: cfg.server.clientIdleSeconds * 1000,
    streamsPerClient: cfg.server.streamsPerClient,
    connectionsPerClient: connectionsPerClient(cfg.server),
  });
  const server = await new Promise<Server>((resolve, reject) => {
    // HTTPS when server.tls is set; client certificates are requested (and, with `require`,
    // demanded) and verified against server.tls.caFile for mutual TLS authentication.
    const t = cfg.server.tls;
    const s: Server = t
      ? createHttpsServer({
        cert: readFileSync(t.certFile), key: readFileSync(t.keyFile), ...(t.caFile ? { ca: readFileSync(t.caFile) } : {}),
        requestCert: t.clientCertificates !== 'none', rejectUnauthorized: t.clientCertificates === 'require', minVersion: 'TLSv1.2',
      }, app)
      : createServer(app);
    s.listen(cfg.server.port, cfg.server.host, () => resolve(s));
    s.once('error', reject);
  });
  server.keepAliveTimeout = 5000;
  // Connection hygiene (issue 15): a request is its headers (the gateway serves GET), so they
  // must come promptly; a client cannot hold connections open by trickling, nor open unboundedly many.
  server.headersTimeout = 20_000;
  server.requestTimeout = 30_000;
  server.maxConnections = cfg.server.maxConnections;
  // Responses not yet closed: shutdown waits for their audit records before closing the trail.
  const inflight = new Set<ServerResponse>();
  server.on('request', (_req: IncomingMessage, res: ServerResponse) => { inflight.add(res); res.once('close', () => inflight.delete(res)); });
  if (cfg.server.tls?.clientCertificates === 'require') {
    // A handshake refused for want of a trusted client certificate is a failed authentication:
    // audited (trail record, A.5 login failure and security alert) with the peer's address and
    // the TLS error code only; no certificate content.
    // The peer's address, taken when the TCP connection arrives: a socket whose handshake failed may have lost it.
    const remotes = new WeakMap<object, string>();
    server.on('connection', (raw: import('node:net').Socket) => { if (raw.remoteAddress) remotes.set(raw, raw.remoteAddress); });
    server.on('tlsClientError', (err: NodeJS.ErrnoException, socket: import('node:tls').TLSSocket) => {
      const parent = (socket as unknown as { _parent?: object })._parent;
      const remote = socket.remoteAddress ?? (parent ? remotes.get(parent) : undefined);
      const code = typeof err.code === 'string' && /^[A-Z0-9_]{1,80}$/.test(err.code) ? err.code : 'error';
      try {
        void Promise.resolve(audit.record({
          time: new Date().toISOString(), requestId: randomUUID(), client: null, method: '-', route: TLS_ROUTE, status: 0, outcome: 'denied',
          reason: `tls-handshake:${code}`, bytes: 0, durationMs: 0, instances: 0, withheld: 0, outOfScope: 0, results: 0, studies: [], policyHash: null, remote,
        })).catch(() => undefined);
      } catch { /* the audit is failing: admission refuses requests and /readyz says why */ }
      log.warn('TLS handshake refused', { code, remote });
    });
  }
  // Metrics on their own listener (for a Prometheus inside the hospital), when configured.
  let metricsServer: Server | undefined;
  let metricsUrl: string | undefined;
  if (parts.metrics && cfg.metrics?.port !== undefined) {
    const registry = parts.metrics.registry;
    metricsServer = createServer((req, res) => {
      if (req.method !== 'GET' || (req.url ?? '').split('?')[0] !== '/metrics') { res.writeHead(404, { 'content-type': 'text/plain' }).end('not found\n'); return; }
      registry.metrics().then((body) => res.writeHead(200, { 'content-type': registry.contentType, 'cache-control': 'no-store' }).end(body), () => res.writeHead(500).end());
    });
    await new Promise<void>((resolve, reject) => { metricsServer!.listen(cfg.metrics!.port, cfg.metrics!.host, resolve); metricsServer!.once('error', reject); });
    const a = metricsServer.address();
    metricsUrl = `http://${cfg.metrics.host.includes(':') ? `[${cfg.metrics.host}]` : cfg.metrics.host}:${typeof a === 'object' && a ? a.port : cfg.metrics.port}/metrics`;
    log.info(`metrics on ${metricsUrl}`);
  }
  const addr = server.address();
  const port = typeof addr === 'object' && addr ? addr.port : cfg.server.port;
  const host = cfg.server.host.includes(':') ? `[${cfg.server.host}]` : cfg.server.host;
  const url = `${cfg.server.tls ? 'https' : 'http'}://${host}:${port}`;
  log.info(`listening on ${url}`, { clients: parts.clients.length, plans: parts.clients.map((c) => ({ client: c.id, plan: c.ctx.plan.hash.slice(0, 16) })) });
  let closing: Promise<void> | undefined;
  return {
    url,
    server,
    metricsUrl,
    faceStats: faces.stats,
    textStats: text.stats,
    reload(next: Config): string[] {
      // Clients, their policies, scopes, limits and pixel rules, and the opt-out list change at
      // once for new requests; requests in flight finish under the client they started with.
      const warnings = RESTART_KEYS.filter((k) => JSON.stringify(next[k]) !== JSON.stringify(current.cfg[k])).map((k) => `${k}: changed, applied at the next restart`);
      const built = buildClients(next, parts.master, store, parts.scopeEvents);
      current = { clients: built.clients, scopes: built.scopes, cfg: { ...next, ...Object.fromEntries(RESTART_KEYS.map((k) => [k, current.cfg[k]])) } as Config };
      log.info('configuration reloaded', { clients: built.clients.length, plans: built.clients.map((c) => ({ client: c.id, plan: c.ctx.plan.hash.slice(0, 16) })) });
      for (const w of warnings) log.warn(`configuration reload: ${w}`);
      return warnings;
    },
    close() {
      closing ??= (async () => {
        // Drain: in-flight requests finish, up to server.drainSeconds; then the connections
        // still open are closed (their requests are audited as aborted) and shutdown goes on.
        await new Promise<void>((resolve) => {
          const deadline = setTimeout(() => {
            log.warn(`drain deadline reached after ${cfg.server.drainSeconds} s: closing the connections still open`);
            server.closeAllConnections();
          }, cfg.server.drainSeconds * 1000);
          deadline.unref();
          server.close(() => { clearTimeout(deadline); resolve(); });
          server.closeIdleConnections();
        });
        // Connections closed at the deadline: their requests record themselves (aborted) as their responses close.
        for (const until = Date.now() + 2000; inflight.size > 0 && Date.now() < until;) await new Promise((r) => setTimeout(r, 10));
        if (metricsServer) await new Promise<void>((resolve) => { metricsServer!.close(() => resolve()); metricsServer!.closeAllConnections(); });
        await store.flush().catch((e: unknown) => log.error('pseudonyms could not be flushed at shutdown', { error: (e as Error)?.name }));
        await store.close().catch(() => undefined);
        limits.close();
        await parts.closeState?.();
        parts.scopeEvents.off('file', onScopeFile);
        facts.close();
        localFaces?.close();
        localText?.close();
        await textWorkers.close();
        await upstream.close();
        await audit.close();
      })();
      return closing;
    },
  };
}

/** The upstream with its latency observed (time to response headers), by client and kind of request. */
function timedUpstream(up: Upstream, metrics: GatewayMetrics, client: string): Upstream {
  const kind = (path: string): string => (/\/metadata$/.test(path) ? 'metadata' : /\/frames\//.test(path) ? 'frames' : /\/bulk\//.test(path) ? 'bulk'
    : /\/(studies|series|instances)$/.test(path) ? 'qido' : 'retrieve');
  return {
    async get(req) {
      const t0 = performance.now();
      try {
        const r = await up.get(req);
        metrics.upstream.observe({ client, kind: kind(req.path), status: String(r.status) }, (performance.now() - t0) / 1000);
        return r;
      } catch (e) {
        metrics.upstream.observe({ client, kind: kind(req.path), status: 'error' }, (performance.now() - t0) / 1000);
        throw e;
      }
    },
    ping: (signal) => up.ping(signal),
    close: () => up.close(),
  };
}

/** SHA-256 of a token, as the configuration holds it. */
export function tokenHash(token: string): string {
  return createHash('sha256').update(token).digest('hex');
}
