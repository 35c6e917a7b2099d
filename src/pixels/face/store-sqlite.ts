/**
 * Face decisions stored in `<state.dir>/faces.sqlite` (mode 0600): one row per series key
 * (original series, digest of its instances, algorithm version) with the decision as JSON.
 * No pixel content and no identifying value is stored: the key's series UID is the PACS's own
 * (like the pseudonym map's originals), and the decision is a kind and cut planes.
 */
import { chmodSync, closeSync, constants, openSync, statSync } from 'node:fs';
import { join } from 'node:path';
import Database from 'better-sqlite3';
import { GatewayError } from '../../core/errors.js';
import type { FaceVerdict } from '../../pixels/types.js';
import type { FaceStore } from './provider.js';

export const FACE_STORE_FILE = 'faces.sqlite';

export function openFaceStore(stateDir: string): FaceStore & { close(): void } {
  const path = join(stateDir, FACE_STORE_FILE);
  let db: Database.Database;
  try {
    closeSync(openSync(path, constants.O_RDWR | constants.O_CREAT, 0o600));
    if ((statSync(path).mode & 0o077) !== 0) chmodSync(path, 0o600);
    db = new Database(path, { fileMustExist: true, timeout: 5000 });
    db.pragma('journal_mode = WAL');
    db.pragma('synchronous = NORMAL');
    db.exec('CREATE TABLE IF NOT EXISTS face_decisions (key TEXT PRIMARY KEY, verdict TEXT NOT NULL, decided_at TEXT NOT NULL)');
  } catch (cause) {
    throw new GatewayError('STATE_UNAVAILABLE', `${FACE_STORE_FILE} in state.dir cannot be opened for writing: make state.dir writable by the gateway user`, { cause });
  }
  const get = db.prepare<[string], { verdict: string }>('SELECT verdict FROM face_decisions WHERE key = ?');
  const put = db.prepare('INSERT OR REPLACE INTO face_decisions (key, verdict, decided_at) VALUES (?, ?, ?)');
  return {
    get(key) {
      const row = get.get(key);
      if (!row) return undefined;
      try {
        return JSON.parse(row.verdict) as FaceVerdict;
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
