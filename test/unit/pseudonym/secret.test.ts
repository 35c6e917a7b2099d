/**
 * The master secret (src/pseudonym/secret.ts): created once with private permissions, read back
 * unchanged, refused (never replaced) when corrupt; per-client keys derived with HKDF.
 */
import { test, describe, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { hkdfSync } from 'node:crypto';
import { chmodSync, chownSync, mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { GatewayError } from '../../../src/core/errors.js';
import { deriveClientKey, loadOrCreateMasterSecret, secureKeyFile } from '../../../src/pseudonym/secret.js';

let root: string;
let n = 0;
/** A state directory path that does not exist yet, in a fresh temp root. */
const freshDir = (): string => join(root, `state-${n++}`, 'nested');

before(() => { root = mkdtempSync(join(tmpdir(), 'deid-secret-test-')); });
after(() => { rmSync(root, { recursive: true, force: true }); });

const mode = (p: string): number => statSync(p).mode & 0o777;

describe('master secret: creation and reuse', () => {
  test('created in a fresh directory: 32 bytes, key file 0600, directory 0700', (t) => {
    const dir = freshDir();
    const prev = process.umask(0o022); // the usual umask; the modes must not depend on a lax one
    t.after(() => process.umask(prev));
    const key = loadOrCreateMasterSecret(dir);
    assert.equal(key.length, 32);
    assert.equal(mode(join(dir, 'master.key')), 0o600);
    assert.equal(mode(dir), 0o700);
    const onDisk = readFileSync(join(dir, 'master.key'), 'utf8').trim();
    assert.match(onDisk, /^[0-9a-f]{64}$/);
    assert.equal(onDisk, key.toString('hex'));
  });

  test('the second call reads the same key and leaves the file unchanged', () => {
    const dir = freshDir();
    const first = loadOrCreateMasterSecret(dir);
    const file = join(dir, 'master.key');
    const bytes = readFileSync(file);
    const mtime = statSync(file).mtimeMs;
    const second = loadOrCreateMasterSecret(dir);
    assert.ok(second.equals(first), 'second.equals(first)');
    assert.ok(readFileSync(file).equals(bytes), 'readFileSync(file).equals(bytes)');
    assert.equal(statSync(file).mtimeMs, mtime);
  });

  test('two fresh directories get different keys (random, not derived from the path)', () => {
    const a = loadOrCreateMasterSecret(freshDir());
    const b = loadOrCreateMasterSecret(freshDir());
    assert.ok(!a.equals(b), '!a.equals(b)');
    assert.ok(!a.equals(Buffer.alloc(32)), '!a.equals(Buffer.alloc(32))');
  });

  test('an existing valid key file (written by an operator) is used as is', () => {
    const dir = freshDir();
    loadOrCreateMasterSecret(dir); // creates the directory
    const hex = 'ab'.repeat(32);
    writeFileSync(join(dir, 'master.key'), `${hex}\n`, { mode: 0o600 });
    assert.equal(loadOrCreateMasterSecret(dir).toString('hex'), hex);
  });

  test('a key file readable by others (0644) is chmod-ed to 0600 and still read', () => {
    const dir = freshDir();
    const key = loadOrCreateMasterSecret(dir);
    const file = join(dir, 'master.key');
    chmodSync(file, 0o644);
    assert.equal(mode(file), 0o644, 'precondition');
    assert.ok(loadOrCreateMasterSecret(dir).equals(key), 'loadOrCreateMasterSecret(dir).equals(key)');
    assert.equal(mode(file), 0o600);
  });
});

describe('master secret: a mounted key (read-only, another owner, group access)', () => {
  const me = { uid: 1000, gids: [1000, 2000] };
  const erofs = (): never => { throw Object.assign(new Error('read-only file system'), { code: 'EROFS' }); };
  const refused = (re: RegExp) => (e: unknown): boolean => {
    assert.ok(e instanceof GatewayError, 'a GatewayError');
    assert.equal(e.code, 'STATE_UNAVAILABLE');
    assert.match(e.message, re);
    return true;
  };

  test('Kubernetes secret volume: root-owned 0440 with the fsGroup, read-only → accepted, never chmod-ed', () => {
    const calls: number[] = [];
    secureKeyFile('/k', { mode: 0o100440, uid: 0, gid: 2000 }, me, (_p, m) => { calls.push(m); erofs(); });
    assert.deepEqual(calls, [], 'a file the process does not own is never chmod-ed');
  });

  test('compose read-only bind mount: own 0440 file, chmod fails (EROFS) → accepted; 0400 needs no chmod', () => {
    const calls: number[] = [];
    secureKeyFile('/k', { mode: 0o100440, uid: 1000, gid: 1000 }, me, (_p, m) => { calls.push(m); erofs(); });
    assert.deepEqual(calls, [0o400], 'tightening was tried once, and its failure ignored');
    secureKeyFile('/k', { mode: 0o100400, uid: 1000, gid: 1000 }, me, () => assert.fail('0400 is left alone'));
  });

  test('world-readable: tightened when owned; refused when the chmod fails or the file is not ours', () => {
    const calls: number[] = [];
    secureKeyFile('/k', { mode: 0o100644, uid: 1000, gid: 1000 }, me, (_p, m) => { calls.push(m); });
    assert.deepEqual(calls, [0o600]);
    assert.throws(() => secureKeyFile('/k', { mode: 0o100644, uid: 1000, gid: 1000 }, me, erofs), refused(/mode 0644 \(readable by others\) and cannot be tightened \(EROFS\); run chmod 0400/));
    assert.throws(() => secureKeyFile('/k', { mode: 0o100444, uid: 0, gid: 2000 }, me, () => assert.fail('not ours: never chmod-ed')),
      refused(/mode 0444 \(readable by others\) and belongs to another user \(uid 0\); chown it to the gateway's user \(uid 1000\) and chmod 0400/));
  });

  test('group-readable by a group the process is not in: refused unless the process owns it and can tighten it', () => {
    assert.throws(() => secureKeyFile('/k', { mode: 0o100440, uid: 0, gid: 3000 }, me, () => assert.fail('not ours')), refused(/readable by a group the gateway is not in/));
    assert.throws(() => secureKeyFile('/k', { mode: 0o100640, uid: 1000, gid: 3000 }, me, erofs), refused(/readable by a group the gateway is not in\) and cannot be tightened/));
    const calls: number[] = [];
    secureKeyFile('/k', { mode: 0o100640, uid: 1000, gid: 3000 }, me, (_p, m) => { calls.push(m); });
    assert.deepEqual(calls, [0o600]);
  });

  test('on disk: another owner with the process\'s group (0440) is read and left unchanged; a foreign group is refused', { skip: process.getuid?.() === 0 ? false : 'needs root to chown' }, () => {
    const dir = freshDir();
    const key = loadOrCreateMasterSecret(dir);
    const file = join(dir, 'master.key');
    chownSync(file, 4242, process.getgid!());
    chmodSync(file, 0o440);
    assert.ok(loadOrCreateMasterSecret(dir).equals(key), 'the key is read');
    assert.equal(mode(file), 0o440, 'a file the process does not own keeps its mode');
    chownSync(file, 4242, 4243);
    assert.throws(() => loadOrCreateMasterSecret(dir), refused(/readable by a group the gateway is not in/));
    assert.equal(mode(file), 0o440, 'still untouched');
  });
});

describe('master secret: a corrupt key file is refused, never replaced', () => {
  const corrupt: Array<{ name: string; content: string }> = [
    { name: 'empty', content: '' },
    { name: 'too short', content: 'ab'.repeat(31) },
    { name: 'too long', content: 'ab'.repeat(33) },
    { name: 'not hex', content: 'zz'.repeat(32) },
    { name: 'upper-case hex with garbage', content: `${'AB'.repeat(32)}!` },
    { name: 'binary bytes', content: '\u0000\u0001\u0002'.repeat(20) },
  ];
  for (const c of corrupt) {
    test(`${c.name} → STATE_UNAVAILABLE, message says restore from backup, file untouched`, () => {
      const dir = freshDir();
      loadOrCreateMasterSecret(dir);
      const file = join(dir, 'master.key');
      writeFileSync(file, c.content, { mode: 0o600 });
      assert.throws(() => loadOrCreateMasterSecret(dir), (e: unknown) => {
        assert.ok(e instanceof GatewayError, 'e instanceof GatewayError');
        assert.equal(e.code, 'STATE_UNAVAILABLE');
        assert.match(e.message, /restore .*from backup/i);
        if (c.content.length >= 8) assert.ok(!e.message.includes(c.content.slice(0, 8)), 'no key material in the message');
        return true;
      });
      assert.equal(readFileSync(file, 'utf8'), c.content, 'a corrupt key is never overwritten');
    });
  }

  test('a state.dir path that is a file → STATE_UNAVAILABLE', () => {
    const dir = freshDir();
    loadOrCreateMasterSecret(dir);
    const asFile = join(dir, 'master.key'); // a regular file, used as a directory
    assert.throws(() => loadOrCreateMasterSecret(asFile), (e: unknown) => e instanceof GatewayError && e.code === 'STATE_UNAVAILABLE');
  });
});

describe('client keys', () => {
  const master = Buffer.from('00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff', 'hex');

  test('32 bytes, deterministic, different per client id and per master', () => {
    const a = deriveClientKey(master, 'client-a');
    assert.equal(a.length, 32);
    assert.ok(deriveClientKey(master, 'client-a').equals(a), 'deriveClientKey(master, \'client-a\').equals(a)');
    assert.ok(!deriveClientKey(master, 'client-b').equals(a), '!deriveClientKey(master, \'client-b\').equals(a)');
    assert.ok(!deriveClientKey(master, 'client-a ').equals(a), '!deriveClientKey(master, \'client-a \').equals(a)');
    const other = Buffer.from(master);
    other[0] = other[0]! ^ 1;
    assert.ok(!deriveClientKey(other, 'client-a').equals(a), '!deriveClientKey(other, \'client-a\').equals(a)');
    assert.ok(!a.equals(master), 'never the master itself');
  });

  test('is HKDF-SHA-256 as documented (salt "deid-gateway/v1", info "client:<id>")', () => {
    // Recomputed here from RFC 5869 via node:crypto, so a silent change of the derivation (which
    // would change every pseudonym of every client) fails this test.
    const expected = Buffer.from(hkdfSync('sha256', master, 'deid-gateway/v1', 'client:hospital-7', 32));
    assert.ok(deriveClientKey(master, 'hospital-7').equals(expected), 'deriveClientKey(master, \'hospital-7\').equals(expected)');
  });
});
