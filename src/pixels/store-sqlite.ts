/**
 * Decisions of the pixel stage stored in state.dir (mode 0600), one SQLite file per provider:
 * `faces.sqlite` (one row per series key: original series, digest of its instances, algorithm
 * version) and `text.sqlite` (one row per instance key: original SOP Instance UID and algorithm
 * version), each decision as JSON. No pixel content and no identifying value is stored: the
 * keys' UIDs are the PACS's own (like the pseudonym map's originals), and a decision is a kind
 * with cut planes or boxes.
 */
import { chmodSync, closeSync, constants, openSync, statSync } from 'node:fs';
import { join } from 'node:path';
import Database from 'better-sqlite3';
import { GatewayError } from '../core/errors.js';
import type { DecisionStore, FaceVerdict, TextVerdict } from './types.js';

export const FACE_STORE_FILE = 'faces.sqlite';
export const TEXT_STORE_FILE = 'text.sqlite';

function openDecisionStore<T>(stateDir: string, file: string, table: string): DecisionStore<T> & { close(): void } {
  const path = join(stateDir, file);
  let db: Database.Database;
  try {
    closeSync(openSync(path, constants.O_RDWR | constants.O_CREAT, 0o600));
    if ((statSync(path).mode & 0o077) !== 0) chmodSync(path, 0o600);
    db = new Database(path, { fileMustExist: true, timeout: 5000 });
    db.pragma('journal_mode = WAL');
    db.pragma('synchronous = NORMAL');
    db.exec(`CREATE TABLE IF NOT EXISTS ${table} (key TEXT PRIMARY KEY, verdict TEXT NOT NULL, decided_at TEXT NOT NULL)`);
  } catch (cause) {
    throw new GatewayError('STATE_UNAVAILABLE', `${file} in state.dir cannot be opened for writing: make state.dir writable by the gateway user`, { cause });
  }
  const get = db.prepare<[string], { verdict: string }>(`SELECT verdict FROM ${table} WHERE key = ?`);
  const put = db.prepare(`INSERT OR REPLACE INTO ${table} (key, verdict, decided_at) VALUES (?, ?, ?)`);
  return {
    get(key) {
      const row = get.get(key);
      if (!row) return undefined;
      try {
        return JSON.parse(row.verdict) as T;
      } catch {
        return undefined; // unreadable: decided again
      }
    },
    put(key, verdict) {
      put.run(key, JSON.stringify(verdict), new Date().toISOString());
    },
    close() { db.close(); },
  };
}

/** Face decisions, in state.dir/faces.sqlite. */
export function openFaceStore(stateDir: string): DecisionStore<FaceVerdict> & { close(): void } {
  return openDecisionStore<FaceVerdict>(stateDir, FACE_STORE_FILE, 'face_decisions');
}

/** Text decisions, in state.dir/text.sqlite. */
export function openTextStore(stateDir: string): DecisionStore<TextVerdict> & { close(): void } {
  return openDecisionStore<TextVerdict>(stateDir, TEXT_STORE_FILE, 'text_decisions');
}
