/**
 * The LimitStore in SQLite (better-sqlite3): `<state.dir>/limits.sqlite`, mode 0600, WAL with
 * synchronous=NORMAL, so a committed counter survives SIGKILL. Each update is one statement
 * (an autocommit transaction). Old days' byte counters are kept for 40 days, then pruned.
 */
import Database from 'better-sqlite3';
import { chmodSync, closeSync, openSync } from 'node:fs';
import { join } from 'node:path';
import { GatewayError } from '../core/errors.js';
import { refill, type LimitStore } from './limits.js';

export const LIMITS_FILE = 'limits.sqlite';

export function openSqliteLimitStore(dir: string): LimitStore {
  const path = join(dir, LIMITS_FILE);
  let db: Database.Database;
  try {
    closeSync(openSync(path, 'a', 0o600));
    chmodSync(path, 0o600);
    db = new Database(path);
    db.pragma('journal_mode = WAL');
    db.pragma('synchronous = NORMAL');
    db.pragma('busy_timeout = 2000');
    db.exec(`CREATE TABLE IF NOT EXISTS buckets (client_id TEXT PRIMARY KEY, tokens REAL NOT NULL, at INTEGER NOT NULL) WITHOUT ROWID;
             CREATE TABLE IF NOT EXISTS day_bytes (client_id TEXT NOT NULL, day TEXT NOT NULL, bytes INTEGER NOT NULL, PRIMARY KEY (client_id, day)) WITHOUT ROWID;`);
    db.prepare("DELETE FROM day_bytes WHERE day < date('now', '-40 days')").run();
  } catch (cause) {
    throw new GatewayError('STATE_UNAVAILABLE', `limit counters ${path} cannot be opened (${(cause as { code?: string }).code ?? 'error'}); check that state.dir is writable`, { cause });
  }
  const getBucket = db.prepare<[string], { tokens: number; at: number }>('SELECT tokens, at FROM buckets WHERE client_id = ?');
  const putBucket = db.prepare<[string, number, number]>('INSERT INTO buckets (client_id, tokens, at) VALUES (?, ?, ?) ON CONFLICT(client_id) DO UPDATE SET tokens = excluded.tokens, at = excluded.at');
  const getBytes = db.prepare<[string, string], { bytes: number }>('SELECT bytes FROM day_bytes WHERE client_id = ? AND day = ?');
  const addBytes = db.prepare<[string, string, number]>('INSERT INTO day_bytes (client_id, day, bytes) VALUES (?, ?, ?) ON CONFLICT(client_id, day) DO UPDATE SET bytes = bytes + excluded.bytes');
  let open = true;
  return {
    take(c, cap, perMs, now) {
      const r = refill(getBucket.get(c), cap, perMs, now);
      putBucket.run(c, r.after, now);
      return r;
    },
    bytes: (c, d) => getBytes.get(c, d)?.bytes ?? 0,
    addBytes: (c, d, n) => { addBytes.run(c, d, n); },
    close: () => { if (open) { open = false; db.close(); } },
  };
}
