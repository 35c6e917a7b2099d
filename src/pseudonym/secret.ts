/**
 * The master secret: 32 random bytes generated on first start into the state directory
 * (mode 0600, directory 0700). Per-client keys are derived from it with HKDF-SHA-256
 * (RFC 5869), so two clients' pseudonyms can never be linked and losing one client's
 * data reveals nothing about another's.
 */
import { randomBytes, hkdfSync } from 'node:crypto';
import { chmodSync, mkdirSync, openSync, readFileSync, statSync, writeSync, closeSync, constants } from 'node:fs';
import { join } from 'node:path';
import { GatewayError } from '../core/errors.js';

const FILE = 'master.key';

/** Reads the master secret, creating it atomically (O_EXCL) when absent. */
export function loadOrCreateMasterSecret(stateDir: string): Buffer {
  try {
    mkdirSync(stateDir, { recursive: true, mode: 0o700 });
  } catch (cause) {
    throw new GatewayError('STATE_UNAVAILABLE', 'state.dir cannot be created; check the path and its permissions', { cause });
  }
  const path = join(stateDir, FILE);
  try {
    const fd = openSync(path, constants.O_WRONLY | constants.O_CREAT | constants.O_EXCL, 0o600);
    try {
      writeSync(fd, randomBytes(32).toString('hex') + '\n');
    } finally {
      closeSync(fd);
    }
  } catch (cause) {
    if ((cause as NodeJS.ErrnoException).code !== 'EEXIST') {
      throw new GatewayError('STATE_UNAVAILABLE', `state.dir is not writable: cannot create ${FILE}`, { cause });
    }
  }
  let text: string;
  try {
    const st = statSync(path);
    if ((st.mode & 0o077) !== 0) chmodSync(path, 0o600); // never leave the key readable by others
    text = readFileSync(path, 'utf8').trim();
  } catch (cause) {
    throw new GatewayError('STATE_UNAVAILABLE', `state.dir: ${FILE} cannot be read`, { cause });
  }
  if (!/^[0-9a-f]{64}$/.test(text)) {
    throw new GatewayError('STATE_UNAVAILABLE', `state.dir: ${FILE} is not 64 hex digits; restore it from backup (a new key would change every pseudonym)`);
  }
  return Buffer.from(text, 'hex');
}

/** Reads an existing master secret; never creates one (audit verification, reports). */
export function loadMasterSecret(stateDir: string): Buffer {
  let text: string;
  try {
    text = readFileSync(join(stateDir, FILE), 'utf8').trim();
  } catch (cause) {
    throw new GatewayError('STATE_UNAVAILABLE', `state.dir: ${FILE} cannot be read (${(cause as NodeJS.ErrnoException).code ?? 'error'}); point --config at the gateway's configuration`, { cause });
  }
  if (!/^[0-9a-f]{64}$/.test(text)) throw new GatewayError('STATE_UNAVAILABLE', `state.dir: ${FILE} is not 64 hex digits; restore it from backup`);
  return Buffer.from(text, 'hex');
}

/** HKDF-SHA-256(master, salt, "client:" + id) → 32-byte client key. */
export function deriveClientKey(master: Buffer, clientId: string): Buffer {
  return Buffer.from(hkdfSync('sha256', master, 'deid-gateway/v1', `client:${clientId}`, 32));
}
