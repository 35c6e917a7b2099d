/**
 * The pseudonym reverse map (src/pseudonym/store.ts): durable after flush() even under
 * SIGKILL, idempotent, isolated per client, cached, honest about its health, and refusing
 * (STATE_UNAVAILABLE, no values in messages) when the state directory is unusable.
 */
import { test, describe, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import { chmodSync, mkdirSync, mkdtempSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import Database from 'better-sqlite3';
import { GatewayError } from '../../../src/core/errors.js';
import { Pseudonymizer } from '../../../src/pseudonym/pseudonymizer.js';
import { FLUSH_AT, SCHEMA_VERSION, STORE_FILE, openSqliteStore, recorderFor, type PseudonymStore } from '../../../src/pseudonym/store.js';

const STORE_URL = new URL('../../../src/pseudonym/store.ts', import.meta.url);
const ROOT = fileURLToPath(new URL('../../../', import.meta.url));

let root: string;
let n = 0;
const freshDir = (): string => {
  const d = join(root, `state-${n++}`);
  mkdirSync(d, { mode: 0o700 });
  return d;
};
const mode = (p: string): number => statSync(p).mode & 0o777;
const uid = (i: number): string => `2.25.${(10n ** 37n + BigInt(i)).toString()}`;
const orig = (i: number): string => `1.2.826.0.1.3680043.99.${i}`;

before(() => {
  root = mkdtempSync(join(tmpdir(), 'deid-store-test-'));
  chmodSync(root, 0o755); // so an unprivileged child (read-only test) can reach its directory
});
after(() => { rmSync(root, { recursive: true, force: true }); });

const open = (dir: string, opts?: { cacheEntries?: number }): PseudonymStore => openSqliteStore(dir, opts);

/** Asserts a STATE_UNAVAILABLE refusal whose message names the store file and carries no value. */
function assertUnavailable(fn: () => unknown, secrets: string[] = []): GatewayError {
  let err: unknown;
  try { fn(); } catch (e) { err = e; }
  assert.ok(err instanceof GatewayError, `a GatewayError was thrown (got ${String(err)})`);
  assert.equal(err.code, 'STATE_UNAVAILABLE');
  assert.match(err.message, new RegExp(STORE_FILE.replace('.', '\\.')));
  for (const s of secrets) assert.ok(!err.message.includes(s), 'no value in the message');
  return err;
}

describe('pseudonym store: basics', () => {
  test('record → lookup before and after flush, and after reopening', () => {
    const dir = freshDir();
    const s = open(dir);
    s.record('a', 'uid', uid(1), orig(1));
    s.record('a', 'patient', 'ANONABCDEFGHIJKLMNOP', 'id:\\MRN-1');
    assert.equal(s.lookup('a', 'uid', uid(1)), orig(1), 'pending pairs are visible at once');
    s.flush();
    assert.equal(s.lookup('a', 'uid', uid(1)), orig(1));
    assert.equal(s.lookup('a', 'patient', 'ANONABCDEFGHIJKLMNOP'), 'id:\\MRN-1');
    assert.equal(s.lookup('a', 'uid', uid(2)), undefined, 'unknown pseudonyms are not guessed');
    assert.equal(s.lookup('a', 'patient', uid(1)), undefined, 'the kind is part of the key');
    s.close();
    const t = open(dir);
    assert.equal(t.lookup('a', 'uid', uid(1)), orig(1));
    assert.equal(t.lookup('a', 'patient', 'ANONABCDEFGHIJKLMNOP'), 'id:\\MRN-1');
    t.close();
  });

  test('idempotent: recording a pair again changes nothing; the first original wins', () => {
    const dir = freshDir();
    const s = open(dir);
    for (let i = 0; i < 3; i++) s.record('a', 'uid', uid(1), orig(1));
    s.flush();
    s.record('a', 'uid', uid(1), orig(1));
    s.record('a', 'uid', uid(1), orig(99)); // a collision can never overwrite the original
    s.flush();
    assert.equal(s.lookup('a', 'uid', uid(1)), orig(1));
    s.close();
    const db = new Database(join(dir, STORE_FILE), { readonly: true });
    const rows = db.prepare('SELECT client_id, kind, pseudonym, original FROM pseudonyms').all();
    db.close();
    assert.deepEqual(rows, [{ client_id: 'a', kind: 'uid', pseudonym: uid(1), original: orig(1) }]);
  });

  test('per-client isolation: client A\'s pseudonym is unknown to client B', () => {
    const dir = freshDir();
    const s = open(dir);
    s.record('client-a', 'uid', uid(7), orig(7));
    assert.equal(s.lookup('client-b', 'uid', uid(7)), undefined, 'pending');
    s.flush();
    assert.equal(s.lookup('client-a', 'uid', uid(7)), orig(7));
    assert.equal(s.lookup('client-b', 'uid', uid(7)), undefined, 'flushed and cached');
    s.close();
    const t = open(dir, { cacheEntries: 0 });
    assert.equal(t.lookup('client-b', 'uid', uid(7)), undefined, 'from the database');
    assert.equal(t.lookup('client-a', 'uid', uid(7)), orig(7));
    t.close();
  });

  test('recorderFor: the engine\'s pseudonyms for one client are resolvable for that client only', () => {
    const dir = freshDir();
    const s = open(dir);
    const p = new Pseudonymizer(Buffer.alloc(32, 1), { minDays: 1, maxDays: 10 }, recorderFor(s, 'site-1'));
    const out = p.uid('1.2.3.4.5');
    const pid = p.patientId('id:\\MRN-42');
    s.flush();
    assert.equal(s.lookup('site-1', 'uid', out), '1.2.3.4.5');
    assert.equal(s.lookup('site-1', 'patient', pid), 'id:\\MRN-42');
    assert.equal(s.lookup('site-2', 'uid', out), undefined);
    s.close();
  });

  test('a batch reaching FLUSH_AT pairs is committed without flush()', () => {
    const dir = freshDir();
    const s = open(dir);
    for (let i = 0; i < FLUSH_AT; i++) s.record('a', 'uid', uid(i), orig(i));
    s.record('a', 'uid', uid(FLUSH_AT), orig(FLUSH_AT)); // pending only
    const db = new Database(join(dir, STORE_FILE), { readonly: true });
    const count = (db.prepare('SELECT count(*) AS c FROM pseudonyms').get() as { c: number }).c;
    db.close();
    assert.equal(count, FLUSH_AT);
    s.close(); // close() flushes the rest
    const t = open(dir, { cacheEntries: 0 });
    assert.equal(t.lookup('a', 'uid', uid(FLUSH_AT)), orig(FLUSH_AT));
    t.close();
  });

  test('file mode 0600 (database, WAL and shared-memory files), WAL journal, schema version 1', (t) => {
    const prev = process.umask(0o022);
    t.after(() => process.umask(prev));
    const dir = freshDir();
    const s = open(dir);
    s.record('a', 'uid', uid(1), orig(1));
    s.flush();
    const file = join(dir, STORE_FILE);
    assert.equal(mode(file), 0o600);
    assert.equal(mode(`${file}-wal`), 0o600);
    assert.equal(mode(`${file}-shm`), 0o600);
    s.close();
    const db = new Database(file, { readonly: true });
    assert.equal(db.pragma('journal_mode', { simple: true }), 'wal');
    assert.deepEqual(db.prepare('SELECT version FROM schema_version').all(), [{ version: SCHEMA_VERSION }]);
    const ddl = (db.prepare("SELECT sql FROM sqlite_master WHERE name = 'pseudonyms'").get() as { sql: string }).sql;
    db.close();
    assert.match(ddl, /PRIMARY KEY \(client_id, kind, pseudonym\)/);
    assert.match(ddl, /WITHOUT ROWID/);
  });

  test('a file created 0644 by someone else is chmod-ed to 0600', () => {
    const dir = freshDir();
    const file = join(dir, STORE_FILE);
    writeFileSync(file, '');
    chmodSync(file, 0o644);
    open(dir).close();
    assert.equal(mode(file), 0o600);
  });
});

describe('pseudonym store: cache', () => {
  test('lookups are served from the cache, which is bounded (LRU)', () => {
    const dir = freshDir();
    const s = open(dir, { cacheEntries: 2 });
    for (let i = 1; i <= 4; i++) s.record('a', 'uid', uid(i), orig(i));
    s.flush(); // the flushed pairs enter the cache; with 2 entries, only 3 and 4 stay
    // Delete every row behind the store's back: only the cache can still answer.
    const other = new Database(join(dir, STORE_FILE));
    other.prepare('DELETE FROM pseudonyms').run();
    other.close();
    assert.equal(s.lookup('a', 'uid', uid(1)), undefined, 'evicted and gone from the database');
    assert.equal(s.lookup('a', 'uid', uid(3)), orig(3), 'cached');
    assert.equal(s.lookup('a', 'uid', uid(4)), orig(4), 'cached');
    // 3 was used less recently than 4; one more entry evicts 3, not 4.
    s.record('a', 'uid', uid(5), orig(5));
    s.flush();
    assert.equal(s.lookup('a', 'uid', uid(4)), orig(4));
    assert.equal(s.lookup('a', 'uid', uid(3)), undefined);
    s.close();
  });

  test('a database hit fills the cache', () => {
    const dir = freshDir();
    const w = open(dir);
    w.record('a', 'uid', uid(1), orig(1));
    w.close();
    const s = open(dir, { cacheEntries: 10 });
    assert.equal(s.lookup('a', 'uid', uid(1)), orig(1)); // from the database
    const other = new Database(join(dir, STORE_FILE));
    other.prepare('DELETE FROM pseudonyms').run();
    other.close();
    assert.equal(s.lookup('a', 'uid', uid(1)), orig(1), 'from the cache');
    s.close();
  });
});

describe('pseudonym store: health and refusals', () => {
  test('healthy() is true when open, false when closed, deleted or replaced', () => {
    const dir = freshDir();
    const s = open(dir);
    assert.equal(s.healthy(), true);
    s.record('a', 'uid', uid(1), orig(1));
    s.flush();
    assert.equal(s.healthy(), true);
    s.close();
    assert.equal(s.healthy(), false, 'closed');

    const t = open(dir);
    for (const suffix of ['', '-wal', '-shm']) rmSync(join(dir, STORE_FILE + suffix), { force: true });
    assert.equal(t.healthy(), false, 'the file was deleted under the store');
    t.close();
  });

  test('operations after close() refuse with STATE_UNAVAILABLE', () => {
    const s = open(freshDir());
    s.close();
    s.close(); // idempotent
    assertUnavailable(() => s.record('a', 'uid', uid(1), orig(1)));
    assertUnavailable(() => s.lookup('a', 'uid', uid(1)));
  });

  test('a missing state directory → STATE_UNAVAILABLE (not created)', () => {
    const dir = join(root, `missing-${n++}`, 'nested');
    assertUnavailable(() => openSqliteStore(dir));
    assert.throws(() => statSync(dir), /ENOENT/);
  });

  test('a state.dir that is a file → STATE_UNAVAILABLE', () => {
    const file = join(root, `file-${n++}`);
    writeFileSync(file, 'x');
    assertUnavailable(() => openSqliteStore(file));
  });

  test('a file that is not a database → STATE_UNAVAILABLE saying to restore it', () => {
    const dir = freshDir();
    writeFileSync(join(dir, STORE_FILE), Buffer.alloc(8192, 0x41));
    const e = assertUnavailable(() => openSqliteStore(dir));
    assert.match(e.message, /restore/);
  });

  test('a database from a newer schema version is refused', () => {
    const dir = freshDir();
    open(dir).close();
    const db = new Database(join(dir, STORE_FILE));
    db.prepare('UPDATE schema_version SET version = ?').run(SCHEMA_VERSION + 1);
    db.close();
    const e = assertUnavailable(() => openSqliteStore(dir));
    assert.match(e.message, /newer/);
  });

  test('a read-only state directory → STATE_UNAVAILABLE (as an unprivileged user)', () => {
    // root ignores permission bits (CAP_DAC_OVERRIDE), so as root the check runs in a child that
    // is still root, and so reads the checkout wherever it is (a mode-700 folder too), but has
    // lost the capabilities that override permission bits.
    const asRoot = process.getuid?.() === 0;
    const dirs = { empty: freshDir(), existing: freshDir() };
    const w = open(dirs.existing);
    w.record('a', 'uid', uid(1), orig(1));
    w.close();
    for (const d of Object.values(dirs)) chmodSync(d, 0o555);
    chmodSync(join(dirs.existing, STORE_FILE), 0o444);
    for (const [name, dir] of Object.entries(dirs)) {
      if (!asRoot) {
        assertUnavailable(() => openSqliteStore(dir), [uid(1), orig(1)]);
        continue;
      }
      const script = `
        const { openSqliteStore } = await import(${JSON.stringify(STORE_URL.href)});
        try { openSqliteStore(${JSON.stringify(dir)}); console.log('OPENED'); }
        catch (e) { console.log(JSON.stringify({ code: e.code, message: e.message })); }`;
      const r = spawnSync('setpriv', ['--bounding-set=-dac_override,-dac_read_search,-fowner', '--inh-caps=-all', process.execPath, '--import', 'tsx', '--input-type=module', '-e', script], { cwd: ROOT, encoding: 'utf8', timeout: 30_000 });
      assert.equal(r.status, 0, `child ran (${r.stderr.slice(0, 500)})`);
      const line = r.stdout.trim().split('\n').pop() ?? '';
      assert.notEqual(line, 'OPENED', `${name}: a read-only directory was accepted`);
      const out = JSON.parse(line) as { code: string; message: string };
      assert.equal(out.code, 'STATE_UNAVAILABLE', name);
      assert.match(out.message, /pseudonyms\.sqlite/);
      assert.ok(!out.message.includes(orig(1)) && !out.message.includes(uid(1)), 'no value in the message');
    }
  });

  test('healthy() is false when the database file becomes read-only (unprivileged user)', () => {
    const dir = freshDir();
    if (process.getuid?.() !== 0) {
      const s = open(dir);
      chmodSync(join(dir, STORE_FILE), 0o400);
      try {
        assert.equal(s.healthy(), false);
      } finally {
        chmodSync(join(dir, STORE_FILE), 0o600);
        s.close();
      }
      return;
    }
    // As root: in a child without the capabilities that override permission bits (see above).
    const script = `
      const { chmodSync } = await import('node:fs');
      const { openSqliteStore } = await import(${JSON.stringify(STORE_URL.href)});
      const s = openSqliteStore(${JSON.stringify(dir)});
      const before = s.healthy();
      chmodSync(${JSON.stringify(join(dir, STORE_FILE))}, 0o400);
      console.log(JSON.stringify({ before, after: s.healthy() }));
      chmodSync(${JSON.stringify(join(dir, STORE_FILE))}, 0o600);
      s.close();`;
    const r = spawnSync('setpriv', ['--bounding-set=-dac_override,-dac_read_search,-fowner', '--inh-caps=-all', process.execPath, '--import', 'tsx', '--input-type=module', '-e', script], { cwd: ROOT, encoding: 'utf8', timeout: 30_000 });
    assert.equal(r.status, 0, `child ran (${r.stderr.slice(0, 500)})`);
    assert.deepEqual(JSON.parse(r.stdout.trim().split('\n').pop() ?? ''), { before: true, after: false });
  });
});

describe('pseudonym store: crash safety and throughput', () => {
  test('after flush() returns, SIGKILL loses nothing', async () => {
    const dir = freshDir();
    const N = 2500; // crosses the automatic batch size twice, then an explicit flush
    const script = `
      const { openSqliteStore } = await import(${JSON.stringify(STORE_URL.href)});
      const s = openSqliteStore(${JSON.stringify(dir)});
      const uid = (i) => '2.25.' + (10n ** 37n + BigInt(i)).toString();
      for (let i = 0; i < ${N}; i++) s.record('crash', 'uid', uid(i), '1.2.826.0.1.3680043.99.' + i);
      s.flush();
      s.record('crash', 'uid', uid(${N}), 'never-flushed');
      process.stdout.write('flushed\\n');
      setInterval(() => {}, 1000);`;
    const child = spawn(process.execPath, ['--import', 'tsx', '--input-type=module', '-e', script], { cwd: ROOT, stdio: ['ignore', 'pipe', 'pipe'] });
    let stderr = '';
    child.stderr.on('data', (d: Buffer) => { stderr += d.toString(); });
    const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) => child.on('exit', (code, signal) => resolve({ code, signal })));
    await new Promise<void>((resolve, reject) => {
      let out = '';
      const timer = setTimeout(() => { child.kill('SIGKILL'); reject(new Error(`child did not flush in 30 s: ${stderr.slice(-500)}`)); }, 30_000);
      child.stdout.on('data', (d: Buffer) => {
        out += d.toString();
        if (out.includes('flushed\n')) {
          clearTimeout(timer);
          child.kill('SIGKILL'); // no exit handlers, no close(): only what flush() made durable
          resolve();
        }
      });
      child.on('exit', () => { clearTimeout(timer); if (!out.includes('flushed')) reject(new Error(`child exited early: ${stderr.slice(-500)}`)); });
    });
    assert.equal((await exited).signal, 'SIGKILL');
    const s = open(dir, { cacheEntries: 0 });
    try {
      for (let i = 0; i < N; i++) assert.equal(s.lookup('crash', 'uid', uid(i)), orig(i), `pair ${i} survived`);
      assert.equal(s.lookup('crash', 'uid', uid(N)), undefined, 'the unflushed pair was really lost (the kill was abrupt)');
    } finally {
      s.close();
    }
  });

  test('throughput: record + flush 100k pairs (reported, not asserted)', (t) => {
    const dir = freshDir();
    const s = open(dir);
    const N = 100_000;
    const t0 = process.hrtime.bigint();
    for (let i = 0; i < N; i++) s.record('bench', 'uid', uid(i), orig(i));
    s.flush();
    const ms = Number(process.hrtime.bigint() - t0) / 1e6;
    t.diagnostic(`record+flush ${N} pairs: ${ms.toFixed(0)} ms (${Math.round(N / (ms / 1000))} pairs/s)`);
    const t1 = process.hrtime.bigint();
    const r = open(dir, { cacheEntries: 0 });
    for (let i = 0; i < N; i += 1) assert.equal(r.lookup('bench', 'uid', uid(i)), orig(i));
    const ms2 = Number(process.hrtime.bigint() - t1) / 1e6;
    t.diagnostic(`lookup ${N} pairs from the database (no cache): ${ms2.toFixed(0)} ms (${Math.round(N / (ms2 / 1000))} lookups/s)`);
    r.close();
    s.close();
    const db = new Database(join(dir, STORE_FILE), { readonly: true });
    assert.equal((db.prepare('SELECT count(*) AS c FROM pseudonyms').get() as { c: number }).c, N);
    db.close();
  });
});
