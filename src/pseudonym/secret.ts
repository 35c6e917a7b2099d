/**
 * The master secret: 32 random bytes generated on first start into the state directory
 * (mode 0600, directory 0700). Per-client keys are derived from it with HKDF-SHA-256
 * (RFC 5869), so two clients' pseudonyms can never be linked and losing one client's
 * data reveals nothing about another's.
 */
import { randomBytes, hkdfSync } from 'node:crypto';
import { chmodSync, mkdirSync, openSync, readFileSync, statSync, writeSync, closeSync, constants, type Stats } from 'node:fs';
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
  let st: Stats;
  try {
    st = statSync(path);
  } catch (cause) {
    throw new GatewayError('STATE_UNAVAILABLE', `state.dir: ${FILE} cannot be read`, { cause });
  }
  secureKeyFile(path, st);
  try {
    text = readFileSync(path, 'utf8').trim();
  } catch (cause) {
    throw new GatewayError('STATE_UNAVAILABLE', `state.dir: ${FILE} cannot be read`, { cause });
  }
  if (!/^[0-9a-f]{64}$/.test(text)) {
    throw new GatewayError('STATE_UNAVAILABLE', `state.dir: ${FILE} is not 64 hex digits; restore it from backup (a new key would change every pseudonym)`);
  }
  return Buffer.from(text, 'hex');
}

/** Who the process is: its user and every group it belongs to (primary and supplementary). */
export interface ProcessIdentity { readonly uid: number; readonly gids: readonly number[] }

function processIdentity(): ProcessIdentity | undefined {
  if (typeof process.getuid !== 'function' || typeof process.getgid !== 'function') return undefined; // not POSIX
  return { uid: process.getuid(), gids: [process.getgid(), ...(process.getgroups?.() ?? [])] };
}

/**
 * The key file's permissions. Acceptable: no access for others (world), and group access only
 * for a group the process itself belongs to. So a Kubernetes secret volume (root-owned, mode
 * 0440 through `defaultMode: 0400` and `fsGroup`, on a read-only file system) and a read-only
 * bind mount of a 0400 file owned by the gateway's user are both accepted as they are.
 * Otherwise the key is tightened to owner-only, but only when the process owns the file; when
 * it cannot be (another owner, a read-only mount), the gateway refuses to start and says how to
 * fix it. An acceptable mode with group access is tightened too when the process owns the file;
 * a failure there (a read-only mount) is ignored. Exported for tests (`me`, `chmod` stubbed).
 */
export function secureKeyFile(path: string, st: { readonly mode: number; readonly uid: number; readonly gid: number },
  me: ProcessIdentity | undefined = processIdentity(), chmod: (p: string, mode: number) => void = chmodSync): void {
  const perm = st.mode & 0o777;
  if ((perm & 0o077) === 0 || me === undefined) return;
  const worldAccess = (perm & 0o007) !== 0;
  const foreignGroup = (perm & 0o070) !== 0 && !me.gids.includes(st.gid);
  const owned = st.uid === me.uid;
  const acceptable = !worldAccess && !foreignGroup;
  if (owned) {
    try {
      chmod(path, perm & 0o700);
      return;
    } catch (cause) {
      if (acceptable) return; // e.g. a read-only mount: the mode is fine as it is
      throw new GatewayError('STATE_UNAVAILABLE', `state.dir: ${FILE} has mode ${perm.toString(8).padStart(4, '0')} (${worldAccess ? 'readable by others' : 'readable by a group the gateway is not in'}) and cannot be tightened (${(cause as NodeJS.ErrnoException).code ?? 'error'}); run chmod 0400 on it (and chown it to the gateway's user)`, { cause });
    }
  }
  if (acceptable) return; // not ours to change (a secret volume): its group is the gateway's own
  throw new GatewayError('STATE_UNAVAILABLE', `state.dir: ${FILE} has mode ${perm.toString(8).padStart(4, '0')} (${worldAccess ? 'readable by others' : 'readable by a group the gateway is not in'}) and belongs to another user (uid ${st.uid}); chown it to the gateway's user (uid ${me.uid}) and chmod 0400 it, or give it no access for others`);
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
