/**
 * Shared state on PostgreSQL (`state.store: postgres://…`), for several gateway replicas behind
 * one load balancer: the pseudonym reverse map and the rate and quota counters. Migrations run
 * at start, inside a transaction under an advisory lock (two replicas starting together do
 * not race), and are recorded in `deid_schema_version`; a database written by a newer version
 * is refused.
 *
 * - Pseudonyms: recorded in a pending batch (visible to this replica at once) and committed by
 *   flush() in one INSERT … ON CONFLICT DO NOTHING before a response's last byte, so another
 *   replica resolves every pseudonym a client has received. A bounded cache keeps lookups off
 *   the database; pseudonyms never change once written, so caching is safe.
 * - Rate buckets: read and updated under SELECT … FOR UPDATE in one transaction, so replicas
 *   share one bucket per client. Day bytes: an atomic upsert.
 *
 * Errors are STATE_UNAVAILABLE naming the database by host and name only (never the password
 * or a value).
 */
import { readFileSync } from 'node:fs';
import pg from 'pg';
import { GatewayError } from '../core/errors.js';
import type { GatewayPseudonymStore } from '../pseudonym/shared.js';
import type { PseudonymKind } from '../pseudonym/store.js';
import type { LimitStore } from '../policy/limits.js';
import type { Spool, SpoolBatch } from '../audit/syslog.js';
import type { FaceStore } from '../pixels/face/provider.js';
import type { DecisionStore, FaceVerdict, TextVerdict } from '../pixels/types.js';

export const PG_SCHEMA_VERSION = 4;

const MIGRATIONS: readonly string[] = [
  `CREATE TABLE deid_pseudonyms (
     client_id  TEXT NOT NULL,
     kind       TEXT NOT NULL CHECK (kind IN ('uid', 'patient')),
     pseudonym  TEXT NOT NULL,
     original   TEXT NOT NULL,
     created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
     PRIMARY KEY (client_id, kind, pseudonym));
   CREATE TABLE deid_limit_buckets (client_id TEXT PRIMARY KEY, tokens DOUBLE PRECISION NOT NULL, at BIGINT NOT NULL);
   CREATE TABLE deid_limit_day_bytes (client_id TEXT NOT NULL, day DATE NOT NULL, bytes BIGINT NOT NULL, PRIMARY KEY (client_id, day));`,
  `CREATE TABLE deid_audit_spool (id BIGSERIAL PRIMARY KEY, frame BYTEA NOT NULL, created_at TIMESTAMPTZ NOT NULL DEFAULT now(), sent_at TIMESTAMPTZ);
   CREATE INDEX deid_audit_spool_unsent ON deid_audit_spool (id) WHERE sent_at IS NULL;`,
  // Face decisions (src/pixels/face/provider.ts): one per series key, shared by the replicas.
  `CREATE TABLE deid_face_decisions (key TEXT PRIMARY KEY, verdict TEXT NOT NULL, decided_at TIMESTAMPTZ NOT NULL DEFAULT now());`,
  // Text decisions (src/pixels/text/provider.ts): one per instance key, shared by the replicas.
  `CREATE TABLE deid_text_decisions (key TEXT PRIMARY KEY, verdict TEXT NOT NULL, decided_at TIMESTAMPTZ NOT NULL DEFAULT now());`,
];

function where(url: string): string {
  try {
    const u = new URL(url);
    return `${u.hostname}${u.port ? `:${u.port}` : ''}/${u.pathname.replace(/^\//, '')}`;
  } catch {
    return 'the configured database';
  }
}

function unavailable(db: string, what: string, cause?: unknown): GatewayError {
  const code = (cause as { code?: string } | undefined)?.code;
  return new GatewayError('STATE_UNAVAILABLE', `PostgreSQL ${db}: ${what}${code ? ` (${code})` : ''}; check state.store, the server and the credentials`, cause === undefined ? undefined : { cause });
}

export interface PgState {
  readonly pseudonyms: GatewayPseudonymStore;
  readonly limits: LimitStore;
  /** The A.5 message spool every replica's sender drains. */
  readonly spool: Spool;
  /** Face decisions, decided once for all replicas. */
  readonly faces: FaceStore;
  /** Text decisions, decided once for all replicas. */
  readonly text: DecisionStore<TextVerdict>;
  /** Ends the pool (after the pseudonym store flushed). */
  close(): Promise<void>;
}

async function migrate(pool: pg.Pool, db: string): Promise<void> {
  const c = await pool.connect();
  try {
    await c.query('BEGIN');
    await c.query('SELECT pg_advisory_xact_lock(7433001)');
    await c.query('CREATE TABLE IF NOT EXISTS deid_schema_version (version INTEGER NOT NULL)');
    const r = await c.query<{ v: number | null }>('SELECT max(version) AS v FROM deid_schema_version');
    const current = r.rows[0]?.v ?? 0;
    if (current > PG_SCHEMA_VERSION) throw unavailable(db, `schema version ${current} is newer than this gateway supports (${PG_SCHEMA_VERSION}); upgrade the gateway`);
    for (let v = current; v < PG_SCHEMA_VERSION; v++) await c.query(MIGRATIONS[v]!);
    if (current < PG_SCHEMA_VERSION) {
      await c.query('DELETE FROM deid_schema_version');
      await c.query('INSERT INTO deid_schema_version (version) VALUES ($1)', [PG_SCHEMA_VERSION]);
    }
    await c.query('COMMIT');
  } catch (e) {
    await c.query('ROLLBACK').catch(() => undefined);
    throw e instanceof GatewayError ? e : unavailable(db, 'migration failed', e);
  } finally {
    c.release();
  }
}

/** A pg Client class that reads its password from a file for every new connection. */
function passwordFileClient(file: string): typeof pg.Client {
  const password = (): string => readFileSync(file, 'utf8').replace(/\r?\n$/, '');
  return class extends pg.Client {
    constructor(config?: pg.ClientConfig) {
      super(config);
      (this as unknown as { password: () => string }).password = password;
    }
  };
}

/** Connects, migrates, and returns the shared stores. */
export async function openPostgresState(url: string, opts: { cacheEntries?: number; max?: number; passwordFile?: string | undefined } = {}): Promise<PgState> {
  const db = where(url);
  // A mounted secret is read for every new connection, so a rotated password is picked up. (pg
  // lets a URL's empty password override a `password` option, so each client is given it.)
  if (opts.passwordFile !== undefined) {
    try {
      readFileSync(opts.passwordFile);
    } catch (e) {
      throw new GatewayError('STATE_UNAVAILABLE', `state.storePasswordFile: ${opts.passwordFile} cannot be read (${(e as NodeJS.ErrnoException).code ?? 'error'}); mount the database password there or fix the path`);
    }
  }
  const Client = opts.passwordFile === undefined ? undefined : passwordFileClient(opts.passwordFile);
  const pool = new pg.Pool({ connectionString: url, max: opts.max ?? 10, connectionTimeoutMillis: 5000, idleTimeoutMillis: 30_000, ...(Client ? { Client } : {}) });
  let healthy = true;
  pool.on('error', () => { healthy = false; }); // an idle client lost its connection; the next query reconnects
  try {
    await migrate(pool, db);
  } catch (e) {
    await pool.end().catch(() => undefined);
    throw e instanceof GatewayError ? e : unavailable(db, 'cannot connect', e);
  }
  const q = async <R extends pg.QueryResultRow>(text: string, values: unknown[]): Promise<pg.QueryResult<R>> => {
    try {
      const r = await pool.query<R>(text, values);
      healthy = true;
      return r;
    } catch (e) {
      healthy = false;
      throw unavailable(db, 'a query failed', e);
    }
  };
  const ping = setInterval(() => { pool.query('SELECT 1').then(() => { healthy = true; }, () => { healthy = false; }); }, 5000);
  ping.unref();

  const max = opts.cacheEntries ?? 100_000;
  const cache = new Map<string, string>();
  const remember = (k: string, v: string): void => {
    cache.delete(k);
    cache.set(k, v);
    if (cache.size > max) cache.delete(cache.keys().next().value!);
  };
  const key = (c: string, k: PseudonymKind, p: string): string => `${c}\0${k}\0${p}`;
  let pending = new Map<string, [string, PseudonymKind, string, string]>();
  let flushing: Promise<void> = Promise.resolve();

  const pseudonyms: GatewayPseudonymStore = {
    record(clientId, kind, pseudonym, original) {
      const k = key(clientId, kind, pseudonym);
      if (!pending.has(k) && !cache.has(k)) pending.set(k, [clientId, kind, pseudonym, original]);
    },
    async lookupMany(clientId, kind, ps) {
      const out = new Map<string, string>();
      const missing: string[] = [];
      for (const p of ps) {
        const k = key(clientId, kind, p);
        const v = pending.get(k)?.[3] ?? cache.get(k);
        if (v !== undefined) out.set(p, v); else missing.push(p);
      }
      if (missing.length) {
        const r = await q<{ pseudonym: string; original: string }>('SELECT pseudonym, original FROM deid_pseudonyms WHERE client_id = $1 AND kind = $2 AND pseudonym = ANY($3)', [clientId, kind, missing]);
        for (const row of r.rows) { out.set(row.pseudonym, row.original); remember(key(clientId, kind, row.pseudonym), row.original); }
      }
      return out;
    },
    flush() {
      // Serialized: each flush commits what was pending when it started, after the previous one.
      flushing = flushing.catch(() => undefined).then(async () => {
        if (pending.size === 0) return;
        const batch = pending;
        pending = new Map();
        const rows = [...batch.values()];
        try {
          await q('INSERT INTO deid_pseudonyms (client_id, kind, pseudonym, original) SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[]) ON CONFLICT DO NOTHING',
            [rows.map((r) => r[0]), rows.map((r) => r[1]), rows.map((r) => r[2]), rows.map((r) => r[3])]);
        } catch (e) {
          for (const [k, v] of batch) if (!pending.has(k)) pending.set(k, v); // retried by the next flush
          throw e;
        }
        for (const [k, r] of batch) remember(k, r[3]);
      });
      return flushing;
    },
    healthy: () => healthy,
    async close() { await pseudonyms.flush(); },
  };

  const limits: LimitStore = {
    async take(clientId, capacity, perMs, now) {
      const c = await pool.connect().catch((e: unknown) => { healthy = false; throw unavailable(db, 'cannot connect', e); });
      try {
        await c.query('BEGIN');
        await c.query('INSERT INTO deid_limit_buckets (client_id, tokens, at) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING', [clientId, capacity, now]);
        const r = await c.query<{ tokens: number; at: string }>('SELECT tokens, at FROM deid_limit_buckets WHERE client_id = $1 FOR UPDATE', [clientId]);
        const row = r.rows[0]!;
        const tokens = Math.min(capacity, row.tokens + Math.max(0, now - Number(row.at)) * perMs);
        const admitted = tokens >= 1;
        await c.query('UPDATE deid_limit_buckets SET tokens = $2, at = $3 WHERE client_id = $1', [clientId, admitted ? tokens - 1 : tokens, now]);
        await c.query('COMMIT');
        return { admitted, tokens };
      } catch (e) {
        await c.query('ROLLBACK').catch(() => undefined);
        throw e instanceof GatewayError ? e : unavailable(db, 'a limit update failed', e);
      } finally {
        c.release();
      }
    },
    async bytes(clientId, day) {
      const r = await q<{ bytes: string }>('SELECT bytes FROM deid_limit_day_bytes WHERE client_id = $1 AND day = $2', [clientId, day]);
      return Number(r.rows[0]?.bytes ?? 0);
    },
    async addBytes(clientId, day, n) {
      await q('INSERT INTO deid_limit_day_bytes (client_id, day, bytes) VALUES ($1, $2, $3) ON CONFLICT (client_id, day) DO UPDATE SET bytes = deid_limit_day_bytes.bytes + excluded.bytes', [clientId, day, n]);
    },
    close: () => undefined,
  };

  // A.5 spool: rows are taken with FOR UPDATE SKIP LOCKED inside a transaction held while the
  // frames are written to the repository, so two replicas never send the same rows at once,
  // and a replica that dies mid-send leaves its rows to the others (its transaction aborts).
  let pendingEstimate = 0;
  const spool: Spool = {
    async append(frames) {
      await q('INSERT INTO deid_audit_spool (frame) VALUES ($1)', [frames]);
      pendingEstimate += frames.length;
    },
    async take(): Promise<SpoolBatch | undefined> {
      const c = await pool.connect();
      try {
        await c.query('BEGIN');
        const r = await c.query<{ id: string; frame: Buffer }>('SELECT id, frame FROM deid_audit_spool WHERE sent_at IS NULL ORDER BY id LIMIT 200 FOR UPDATE SKIP LOCKED');
        if (r.rows.length === 0) {
          await c.query('COMMIT');
          c.release();
          pendingEstimate = 0;
          return undefined;
        }
        const ids = r.rows.map((x) => x.id);
        const data = Buffer.concat(r.rows.map((x) => x.frame));
        let done = false;
        const finish = async (sql: string): Promise<void> => {
          if (done) return;
          done = true;
          try { if (sql) await c.query(sql, [ids]); await c.query('COMMIT'); } catch { await c.query('ROLLBACK').catch(() => undefined); } finally { c.release(); }
        };
        return {
          data,
          sent: async () => { await finish('UPDATE deid_audit_spool SET sent_at = now() WHERE id = ANY($1::bigint[])'); pendingEstimate = Math.max(0, pendingEstimate - data.length); },
          release: () => finish(''),
        };
      } catch (e) {
        await c.query('ROLLBACK').catch(() => undefined);
        c.release();
        throw unavailable(db, 'the audit spool cannot be read', e);
      }
    },
    pending: () => pendingEstimate,
    close: () => undefined,
  };
  const prune = setInterval(() => { pool.query("DELETE FROM deid_audit_spool WHERE sent_at < now() - interval '7 days'").catch(() => undefined); }, 3_600_000);
  prune.unref();

  const decisions = <T>(table: string): DecisionStore<T> => ({
    async get(key) {
      const r = await q<{ verdict: string }>(`SELECT verdict FROM ${table} WHERE key = $1`, [key]);
      const text = r.rows[0]?.verdict;
      if (text === undefined) return undefined;
      try { return JSON.parse(text) as T; } catch { return undefined; }
    },
    async put(key, verdict) {
      // Two replicas deciding one series or instance at once write the same decision: the first one stays.
      await q(`INSERT INTO ${table} (key, verdict) VALUES ($1, $2) ON CONFLICT (key) DO NOTHING`, [key, JSON.stringify(verdict)]);
    },
  });
  const faces: FaceStore = decisions<FaceVerdict>('deid_face_decisions');
  const text = decisions<TextVerdict>('deid_text_decisions');

  return {
    pseudonyms,
    limits,
    spool,
    faces,
    text,
    async close() {
      clearInterval(prune);
      clearInterval(ping);
      await pseudonyms.close().catch(() => undefined);
      await pool.end();
    },
  };
}
