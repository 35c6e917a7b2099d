/**
 * Composition root: the only file that wires concrete parts together (ARCHITECTURE).
 */
import { createHash } from 'node:crypto';
import { EventEmitter } from 'node:events';
import type { Server } from 'node:http';
import type { Logger } from 'winston';
import type { Config } from './config/schema.js';
import { createOpsLogger } from './audit/log.js';
import { createAuditSink, type AuditSink } from './audit/sink.js';
import { AuditTrail, auditKey } from './audit/trail.js';
import { FactsCache } from './policy/facts-cache.js';
import { ClientScope, OptOutSource, type StudyListSource } from './policy/client-scope.js';
import { Limiter, type LimitStore } from './policy/limits.js';
import { openSqliteLimitStore } from './policy/limits-sqlite.js';
import type { OptOutEntry } from './policy/scope.js';
import { WatchedFile } from './policy/watched-file.js';
import { parseOptOutList, parseStudyList } from './config/lists.js';
import { createEngineContext } from './deid/index.js';
import { createApp } from './http/app.js';
import type { ClientRuntime } from './http/dicomweb.js';
import type { QueryResolver } from './http/query.js';
import { loadOrCreateMasterSecret } from './pseudonym/secret.js';
import { openSqliteStore, recorderFor, type PseudonymStore } from './pseudonym/store.js';
import { createUndiciUpstream, type Upstream } from './upstream/client.js';
import { createHttpProxyUpstream } from './upstream/http-proxy.js';
import { createNodeHttpUpstream } from './upstream/node-http.js';

export interface Gateway {
  readonly url: string;
  readonly server: Server;
  /** Stops accepting, drains in-flight requests, flushes pseudonyms and audit. */
  close(): Promise<void>;
}

export interface GatewayParts {
  readonly clients: readonly ClientRuntime[];
  readonly store: PseudonymStore;
  readonly upstream: Upstream;
  readonly audit: AuditSink;
  readonly log: Logger;
  readonly limits: LimitStore;
  /** 'file' (key, problem | undefined): a scope file became unusable, or usable again. */
  readonly scopeEvents: EventEmitter;
  /** Health of the scope files (allow-lists, opt-out list), for /readyz. */
  readonly scopeHealthy: () => boolean;
}

/** Original Patient ID from the patient key the pseudonymizer recorded ("id:ISSUER\ID"). */
function patientIdOf(key: string | undefined): string | undefined {
  if (!key?.startsWith('id:')) return undefined;
  const i = key.indexOf('\\');
  return i < 0 ? undefined : key.slice(i + 1);
}

export function buildParts(cfg: Config): GatewayParts {
  const master = loadOrCreateMasterSecret(cfg.state.dir);
  const store = openSqliteStore(cfg.state.dir);
  const log = createOpsLogger();
  // Scope files are re-read when they change; a broken file fails closed (503) and is logged
  // once, by the logger the gateway runs with (startGateway may be given another one).
  const scopeEvents = new EventEmitter();
  const fileProblem = (key: string) => (message: string | undefined): void => { scopeEvents.emit('file', key, message); };
  const optOutFile = cfg.optOut.file === undefined ? undefined
    : new WatchedFile<readonly OptOutEntry[]>(cfg.optOut.file, 'optOut.file', parseOptOutList, fileProblem('optOut.file'));
  const optOut = new OptOutSource(cfg.optOut.patients, optOutFile);
  const scopes: ClientScope[] = [];
  const clients: ClientRuntime[] = cfg.clients.map((c, i) => {
    const key = `clients[${i}].scope.studiesFile`;
    const file = c.scope.studiesFile === undefined ? undefined : new WatchedFile<StudyListSource>(c.scope.studiesFile, key, parseStudyList, fileProblem(key));
    const scope = new ClientScope(c.scope, optOut, file);
    scopes.push(scope);
    return {
    id: c.id,
    scope,
    allowedKeys: c.allowedKeys,
    maxResults: c.query?.maxResults,
    tokenHash: Buffer.from(c.apiKeySha256, 'hex'),
    ctx: createEngineContext({
      clientId: c.id, policyId: c.policyId ?? c.id, masterSecret: master, recorder: recorderFor(store, c.id),
      profile: { options: c.plan.options, overrides: c.profile.overrides, ...(c.profile.dateShift ? { dateShift: c.profile.dateShift } : {}) },
    }),
    };
  });
  const upstreamOpts = { url: cfg.upstream.url, connectTimeoutMs: cfg.upstream.connectTimeoutMs, responseTimeoutMs: cfg.upstream.responseTimeoutMs };
  const upstream = cfg.upstream.transport === 'http-proxy' ? createHttpProxyUpstream(upstreamOpts)
    : cfg.upstream.transport === 'undici' ? createUndiciUpstream(upstreamOpts) : createNodeHttpUpstream(upstreamOpts);
  const trail = new AuditTrail({ dir: cfg.state.dir, master, maxBytes: cfg.audit.maxFileBytes, rotateDaily: cfg.audit.rotateDaily });
  const audit = createAuditSink(trail, auditKey(master), [], (e) => log.error('audit forwarder failed', { error: (e as Error)?.name }));
  const limits = openSqliteLimitStore(cfg.state.dir);
  return { clients, store, upstream, audit, log, limits, scopeEvents, scopeHealthy: () => scopes.every((s) => s.status().ok) };
}

export async function startGateway(cfg: Config, parts: GatewayParts = buildParts(cfg)): Promise<Gateway> {
  const { clients, store, upstream, audit, log, limits } = parts;
  const onScopeFile = (key: string, message: string | undefined): void => {
    if (message) log.error(`scope file unusable: ${message}`, { key });
    else log.info('scope file reloaded and valid again', { key });
  };
  parts.scopeEvents.on('file', onScopeFile);
  const facts = new FactsCache();
  const limitsByClient = new Map(cfg.clients.map((c) => [c.id, c.limits]));
  const limiter = new Limiter(limits, (id) => limitsByClient.get(id));
  const resolverFor = (client: ClientRuntime): QueryResolver => {
    const retainUids = client.ctx.plan.lookup(0x0020000d).action.kind === 'keep';
    return {
      uid: (pseudo) => (retainUids ? pseudo : store.lookup(client.id, 'uid', pseudo)),
      patientId: (pseudo) => patientIdOf(store.lookup(client.id, 'patient', pseudo)),
    };
  };
  const app = createApp({
    clients, upstream, resolverFor, audit, log,
    flush: () => store.flush(),
    publicBaseUrl: cfg.server.publicBaseUrl,
    maxQueryLimit: cfg.server.maxQueryResults,
    maxQueryScan: cfg.server.maxQueryScan,
    limiter,
    scopeHealthy: parts.scopeHealthy,
    maxHeaderBytes: cfg.engine.maxHeaderBytes,
    stateHealthy: () => store.healthy(),
    facts,
  });
  const server = await new Promise<Server>((resolve, reject) => {
    const s = app.listen(cfg.server.port, cfg.server.host, () => resolve(s));
    s.once('error', reject);
  });
  server.keepAliveTimeout = 5000;
  const addr = server.address();
  const port = typeof addr === 'object' && addr ? addr.port : cfg.server.port;
  const host = cfg.server.host.includes(':') ? `[${cfg.server.host}]` : cfg.server.host;
  const url = `http://${host}:${port}`;
  log.info(`listening on ${url}`, { clients: clients.length, plans: clients.map((c) => ({ client: c.id, plan: c.ctx.plan.hash.slice(0, 16) })) });
  let closing: Promise<void> | undefined;
  return {
    url,
    server,
    close() {
      closing ??= (async () => {
        await new Promise<void>((resolve) => {
          server.close(() => resolve());
          server.closeIdleConnections();
        });
        store.flush();
        store.close();
        limits.close();
        parts.scopeEvents.off('file', onScopeFile);
        facts.close();
        await upstream.close();
        await audit.close();
      })();
      return closing;
    },
  };
}

/** SHA-256 of a token, as the configuration holds it. */
export function tokenHash(token: string): string {
  return createHash('sha256').update(token).digest('hex');
}
