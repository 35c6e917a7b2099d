/**
 * The durable reverse map of pseudonyms: for each client, pseudonym → original, so the
 * gateway can translate the pseudonymous UIDs and patient IDs that clients send back.
 *
 * SQLite (better-sqlite3) in `<state.dir>/pseudonyms.sqlite`, mode 0600, WAL journal with
 * synchronous=NORMAL: a committed transaction survives the process being killed (SIGKILL);
 * only an OS crash or power loss can lose the last commits. Pairs are batched: record()
 * appends to a pending list (visible to lookup() at once), flush() commits the batch in one
 * transaction, and a batch that reaches FLUSH_AT pairs is committed immediately. Callers
 * must flush() before the response that carries a new pseudonym completes.
 *
 * Lookups read the pending pairs, then a bounded LRU map, then the database. The cache is a
 * Map rather than node-cache because the engine layers may not import cache packages
 * (eslint.config.js, docs/architecture.md). Unknown pseudonyms are never guessed.
 *
 * Errors are GatewayError('STATE_UNAVAILABLE') naming the file and the fix; they never carry
 * a pseudonym or an original (PHI).
 */
import Database from 'better-sqlite3';
import { accessSync, chmodSync, closeSync, constants, openSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { GatewayError } from '../core/errors.js';
import type { PseudonymRecorder } from './pseudonymizer.js';

export type PseudonymKind = 'uid' | 'patient';

export interface PseudonymStore {
  /** Records a pair for a client; idempotent (the first original recorded wins); durable once flush() returns. */
  record(clientId: string, kind: PseudonymKind, pseudonym: string, original: string): void;
  /** The original for a client's pseudonym, or undefined (unknown pseudonyms are never guessed). */
  lookup(clientId: string, kind: PseudonymKind, pseudonym: string): string | undefined;
  /** Makes every recorded pair durable (commits the pending batch in one transaction). */
  flush(): void;
  /** True when the database answers and is writable (for /readyz). Never throws. */
  healthy(): boolean;
  /** Flushes, then closes the database. Idempotent. */
  close(): void;
}

export const STORE_FILE = 'pseudonyms.sqlite';
/** The schema version this code writes; older databases are migrated at open. */
export const SCHEMA_VERSION = 1;
/** A pending batch of this many pairs is committed at once, without waiting for flush(). */
export const FLUSH_AT = 1000;
const DEFAULT_CACHE_ENTRIES = 100_000;

/** Migrations from version i to i + 1, indexed by i. Each runs inside one transaction. */
const MIGRATIONS: readonly ((db: Database.Database) => void)[] = [
  (db) => {
    db.exec(`CREATE TABLE pseudonyms (
      client_id  TEXT NOT NULL,
      kind       TEXT NOT NULL CHECK (kind IN ('uid', 'patient')),
      pseudonym  TEXT NOT NULL,
      original   TEXT NOT NULL,
      created_at INTEGER NOT NULL,
      PRIMARY KEY (client_id, kind, pseudonym)
    ) WITHOUT ROWID`);
  },
];

function sqliteCode(cause: unknown): string {
  const code = (cause as { code?: unknown } | null)?.code;
  return typeof code === 'string' ? code : 'unknown error';
}

function unavailable(path: string, what: string, fix: string, cause?: unknown): GatewayError {
  const code = cause === undefined ? '' : ` (${sqliteCode(cause)})`;
  return new GatewayError('STATE_UNAVAILABLE', `pseudonym store ${path}: ${what}${code}; ${fix}`, cause === undefined ? undefined : { cause });
}

/**
 * Brings a database to SCHEMA_VERSION: creates the version table, runs the missing
 * migrations in one transaction, and refuses a database written by a newer version.
 */
export function migrate(db: Database.Database, path = db.name): void {
  db.exec('CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)');
  const run = db.transaction(() => {
    const row = db.prepare('SELECT max(version) AS v FROM schema_version').get() as { v: number | null } | undefined;
    const current = row?.v ?? 0;
    if (current > SCHEMA_VERSION) {
      throw unavailable(path, `schema version ${current} is newer than this gateway supports (${SCHEMA_VERSION})`, 'upgrade the gateway or restore a backup made by this version');
    }
    for (let v = current; v < SCHEMA_VERSION; v++) {
      const step = MIGRATIONS[v];
      if (!step) throw unavailable(path, `no migration from schema version ${v}`, 'upgrade the gateway');
      step(db);
    }
    if (current < SCHEMA_VERSION) {
      db.prepare('DELETE FROM schema_version').run();
      db.prepare('INSERT INTO schema_version (version) VALUES (?)').run(SCHEMA_VERSION);
    }
  });
  run.immediate();
}

/** A Map used as an LRU: a hit moves the entry to the end, an overflow evicts the oldest. */
class Lru {
  private readonly map = new Map<string, string>();
  constructor(private readonly max: number) {}
  get(k: string): string | undefined {
    const v = this.map.get(k);
    if (v !== undefined) {
      this.map.delete(k);
      this.map.set(k, v);
    }
    return v;
  }
  set(k: string, v: string): void {
    if (this.max <= 0) return;
    this.map.delete(k);
    this.map.set(k, v);
    if (this.map.size > this.max) {
      const oldest = this.map.keys().next();
      if (!oldest.done) this.map.delete(oldest.value);
    }
  }
  clear(): void { this.map.clear(); }
}

interface Pair { clientId: string; kind: PseudonymKind; pseudonym: string; original: string; at: number }

const keyOf = (clientId: string, kind: PseudonymKind, pseudonym: string): string => `${clientId}\0${kind}\0${pseudonym}`;

class SqliteStore implements PseudonymStore {
  private readonly pending = new Map<string, Pair>();
  private readonly cache: Lru;
  private readonly insert: Database.Statement<[string, string, string, string, number]>;
  private readonly select: Database.Statement<[string, string, string], { original: string }>;
  private readonly insertBatch: (pairs: readonly Pair[]) => void;
  private readonly ino: number;
  private failed = false;
  private closed = false;

  constructor(private readonly db: Database.Database, private readonly path: string, private readonly dir: string, cacheEntries: number) {
    this.cache = new Lru(cacheEntries);
    this.insert = db.prepare('INSERT OR IGNORE INTO pseudonyms (client_id, kind, pseudonym, original, created_at) VALUES (?, ?, ?, ?, ?)');
    this.select = db.prepare('SELECT original FROM pseudonyms WHERE client_id = ? AND kind = ? AND pseudonym = ?');
    this.insertBatch = db.transaction((pairs: readonly Pair[]) => {
      for (const p of pairs) this.insert.run(p.clientId, p.kind, p.pseudonym, p.original, p.at);
    });
    this.ino = statSync(path).ino;
  }

  private checkOpen(): void {
    if (this.closed) throw unavailable(this.path, 'the store is closed', 'this is a bug: the store was used after shutdown');
  }

  record(clientId: string, kind: PseudonymKind, pseudonym: string, original: string): void {
    this.checkOpen();
    const k = keyOf(clientId, kind, pseudonym);
    if (this.pending.has(k)) return; // idempotent; the first original wins, as INSERT OR IGNORE does
    this.pending.set(k, { clientId, kind, pseudonym, original, at: Date.now() });
    if (this.pending.size >= FLUSH_AT) this.flush();
  }

  lookup(clientId: string, kind: PseudonymKind, pseudonym: string): string | undefined {
    this.checkOpen();
    const k = keyOf(clientId, kind, pseudonym);
    const p = this.pending.get(k);
    if (p) return p.original;
    const hit = this.cache.get(k);
    if (hit !== undefined) return hit;
    let row: { original: string } | undefined;
    try {
      row = this.select.get(clientId, kind, pseudonym);
    } catch (cause) {
      throw unavailable(this.path, 'cannot be read', 'check the file, its directory and the disk, then restart the gateway', cause);
    }
    if (row === undefined) return undefined;
    this.cache.set(k, row.original);
    return row.original;
  }

  flush(): void {
    this.checkOpen();
    if (this.pending.size === 0) return;
    const batch = [...this.pending.values()];
    try {
      this.insertBatch(batch);
    } catch (cause) {
      this.failed = true; // the batch stays pending and is retried by the next flush()
      throw unavailable(this.path, 'cannot be written', 'check free disk space and that state.dir is writable by the gateway', cause);
    }
    this.failed = false;
    this.pending.clear();
    for (const p of batch) this.cache.set(keyOf(p.clientId, p.kind, p.pseudonym), p.original);
  }

  healthy(): boolean {
    if (this.closed || !this.db.open || this.failed) return false;
    try {
      if (statSync(this.path).ino !== this.ino) return false; // the file was deleted or replaced
      accessSync(this.dir, constants.W_OK);
      accessSync(this.path, constants.R_OK | constants.W_OK);
      this.db.prepare('SELECT version FROM schema_version').get();
      // Takes (and releases) the write lock without writing: fails on a read-only database.
      const timeout = this.db.pragma('busy_timeout', { simple: true }) as number;
      this.db.pragma('busy_timeout = 250');
      try {
        this.db.exec('BEGIN IMMEDIATE');
        this.db.exec('ROLLBACK');
      } finally {
        this.db.pragma(`busy_timeout = ${Number(timeout) | 0}`);
      }
      return true;
    } catch {
      if (this.db.inTransaction) {
        try { this.db.exec('ROLLBACK'); } catch { /* nothing more to do */ }
      }
      return false;
    }
  }

  close(): void {
    if (this.closed) return;
    try {
      this.flush();
    } finally {
      this.closed = true;
      this.cache.clear();
      this.db.close();
    }
  }
}

/**
 * Opens (creating if needed) `<stateDir>/pseudonyms.sqlite`. The state directory must exist
 * (the master secret is created there first) and be writable.
 */
export function openSqliteStore(stateDir: string, opts: { cacheEntries?: number } = {}): PseudonymStore {
  const path = join(stateDir, STORE_FILE);
  try {
    if (!statSync(stateDir).isDirectory()) throw Object.assign(new Error('not a directory'), { code: 'ENOTDIR' });
  } catch (cause) {
    throw unavailable(path, 'state.dir does not exist or is not a directory', 'create it (the gateway creates it with the master key at start) or fix state.dir in the configuration', cause);
  }
  try {
    // Create the file with mode 0600 before SQLite does (SQLite would use 0644 & ~umask);
    // SQLite gives the -wal and -shm files the mode of the database file.
    closeSync(openSync(path, constants.O_RDWR | constants.O_CREAT, 0o600));
    if ((statSync(path).mode & 0o077) !== 0) chmodSync(path, 0o600);
  } catch (cause) {
    throw unavailable(path, 'cannot be created or opened for writing', 'make state.dir and the file writable by the gateway user (the file must be mode 0600)', cause);
  }
  let db: Database.Database;
  try {
    db = new Database(path, { fileMustExist: true, timeout: 5000 });
  } catch (cause) {
    throw unavailable(path, 'cannot be opened', 'make state.dir and the file writable by the gateway user', cause);
  }
  try {
    const mode = db.pragma('journal_mode = WAL', { simple: true });
    if (String(mode).toLowerCase() !== 'wal') throw Object.assign(new Error('WAL refused'), { code: 'SQLITE_CANTOPEN' });
    db.pragma('synchronous = NORMAL');
    db.pragma('foreign_keys = ON');
    migrate(db, path);
    return new SqliteStore(db, path, stateDir, opts.cacheEntries ?? DEFAULT_CACHE_ENTRIES);
  } catch (cause) {
    db.close();
    if (cause instanceof GatewayError) throw cause;
    const code = sqliteCode(cause);
    if (code === 'SQLITE_NOTADB' || code === 'SQLITE_CORRUPT') {
      throw unavailable(path, 'is not a valid SQLite database', 'restore it from backup (pseudonyms issued earlier cannot be resolved without it)', cause);
    }
    throw unavailable(path, 'cannot be opened for writing', 'make state.dir and the file writable by the gateway user, and check free disk space', cause);
  }
}

/** Adapts a store to the engine's recorder for one client. */
export function recorderFor(store: PseudonymStore, clientId: string): PseudonymRecorder {
  return { record: (kind, pseudonym, original) => store.record(clientId, kind, pseudonym, original) };
}
