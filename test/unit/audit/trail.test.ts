/**
 * The audit trail: hash chain, keyed head and checkpoints, rotation, tamper detection that
 * names the first bad record, durability under SIGKILL, and failing closed.
 */
import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { createHash, createHmac } from 'node:crypto';
import { mkdtempSync, readFileSync, readdirSync, renameSync, rmSync, symlinkSync, unlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { AuditTrail, patientRef, auditKey, verifyTrail, AUDIT_FILE } from '../../../src/audit/trail.js';
import { GatewayError } from '../../../src/core/errors.js';

const MASTER = Buffer.alloc(32, 7);
const dirOf = (): string => mkdtempSync(join(tmpdir(), 'deid-trail-'));

function fill(dir: string, n: number, opts: { maxBytes?: number; now?: () => number } = {}): AuditTrail {
  const t = new AuditTrail({ dir, master: MASTER, ...opts });
  for (let i = 0; i < n; i++) t.append({ type: 'request', time: new Date(Date.UTC(2026, 10, 1) + i * 1000).toISOString(), requestId: `r${i + 1}`, client: 'acme', status: 200 });
  return t;
}

const lines = (dir: string, file = AUDIT_FILE): string[] => readFileSync(join(dir, file), 'utf8').split('\n').filter(Boolean);
const write = (dir: string, ls: string[], file = AUDIT_FILE): void => writeFileSync(join(dir, file), ls.map((l) => `${l}\n`).join(''));

describe('audit trail', () => {
  test('an untouched trail verifies; records carry seq, prev and hash', () => {
    const dir = dirOf();
    fill(dir, 10).close();
    const r = verifyTrail(dir, MASTER);
    assert.equal(r.ok, true, JSON.stringify(r.problem));
    assert.equal(r.records, 10);
    const recs = lines(dir).map((l) => JSON.parse(l) as { seq: number; prev: string; hash: string });
    assert.deepEqual(recs.map((x) => x.seq), [1, 2, 3, 4, 5, 6, 7, 8, 9, 10]);
    assert.ok(recs.every((x, i) => i === 0 || x.prev === recs[i - 1]!.hash), 'each record carries the previous hash');
  });

  test('reopening continues the chain', () => {
    const dir = dirOf();
    fill(dir, 3).close();
    fill(dir, 2).close();
    assert.equal(verifyTrail(dir, MASTER).records, 5);
  });

  const tampers: [string, (ls: string[]) => string[], RegExp, number][] = [
    ['an edited value', (ls) => ls.map((l, i) => (i === 4 ? l.replace('"status":200', '"status":404') : l)), /record 5 altered/, 5],
    ['an edited value with a recomputed hash', (ls) => ls.map((l, i) => (i === 4 ? rehash(l.replace('"status":200', '"status":201')) : l)), /record 5 altered \(its hash was recomputed; record 6 no longer links to it\)/, 5],
    ['a removed record', (ls) => ls.filter((_, i) => i !== 3), /record 4 removed \(the next record found is 5\)/, 4],
    ['two removed records', (ls) => ls.filter((_, i) => i !== 3 && i !== 4), /record 4–5 removed/, 4],
    ['two records swapped', (ls) => [...ls.slice(0, 2), ls[3]!, ls[2]!, ...ls.slice(4)], /record 3 is out of order \(found 4 in its place; reordered\)/, 3],
    ['the last records cut off', (ls) => ls.slice(0, 7), /records 8–10 removed from the end \(truncated\)/, 8],
    ['a half line at the end', (ls) => [...ls.slice(0, 9), ls[9]!.slice(0, 40)], /line is incomplete|not a JSON record/, 0],
  ];
  for (const [name, change, re, seq] of tampers) {
    test(`detects ${name} and names the first bad record`, () => {
      const dir = dirOf();
      fill(dir, 10).close();
      const ls = lines(dir);
      const changed = change(ls);
      const text = changed.map((l) => `${l}\n`).join('');
      writeFileSync(join(dir, AUDIT_FILE), name === 'a half line at the end' ? text.slice(0, -1) : text);
      const r = verifyTrail(dir, MASTER);
      assert.equal(r.ok, false, 'tampering is detected');
      assert.match(r.problem!.reason, re);
      if (seq) assert.equal(r.problem!.seq, seq);
    });
  }

  test('rotation by size keeps one chain across files, with keyed checkpoints', () => {
    const dir = dirOf();
    fill(dir, 40, { maxBytes: 1500 }).close();
    const files = readdirSync(dir).filter((n) => n.startsWith('audit')).sort();
    assert.ok(files.filter((f) => /^audit-\d{12}\.log$/.test(f)).length >= 3, `rotated files: ${files.join(', ')}`);
    const r = verifyTrail(dir, MASTER);
    assert.equal(r.ok, true, JSON.stringify(r.problem));
    const rotated = files.find((f) => /^audit-\d{12}\.log$/.test(f))!;
    const last = JSON.parse(lines(dir, rotated).at(-1)!) as { type: string };
    assert.equal(last.type, 'checkpoint');
    assert.equal(verifyTrail(dir, Buffer.alloc(32, 8)).ok, false, 'another master key does not verify');
    // A forged checkpoint (valid hash chain, wrong key signature) is caught.
    const ls = lines(dir, rotated);
    ls[ls.length - 1] = rehash(ls.at(-1)!.replace(/"mac":"[0-9a-f]{64}"/, `"mac":"${'0'.repeat(64)}"`));
    write(dir, ls, rotated);
    assert.match(verifyTrail(dir, MASTER).problem!.reason, /checkpoint \d+ has an invalid key signature/);
  });

  test('a rotated file removed from the middle is detected', () => {
    const dir = dirOf();
    fill(dir, 40, { maxBytes: 1500 }).close();
    const rotated = readdirSync(dir).filter((f) => /^audit-\d{12}\.log$/.test(f)).sort();
    unlinkSync(join(dir, rotated[1]!));
    const r = verifyTrail(dir, MASTER);
    assert.equal(r.ok, false);
    assert.match(r.problem!.reason, /removed/);
  });

  test('the oldest files removed: verify names the records removed from the start until the gateway records the removal', () => {
    const dir = dirOf();
    fill(dir, 40, { maxBytes: 1500 }).close();
    assert.equal(verifyTrail(dir, MASTER).note, undefined, 'a whole trail has no note');
    const rotated = readdirSync(dir).filter((f) => /^audit-\d{12}\.log$/.test(f)).sort();
    unlinkSync(join(dir, rotated[0]!));
    unlinkSync(join(dir, rotated[1]!));
    const first = JSON.parse(lines(dir, rotated[2]!)[0]!) as { seq: number; type: string };
    assert.equal(first.type, 'continue');
    // Removed behind the gateway's back: the keyed head still says the trail starts at 1.
    const r = verifyTrail(dir, MASTER);
    assert.equal(r.ok, false, 'removal from the start is named');
    assert.deepEqual([r.problem!.file, r.problem!.line, r.problem!.seq, r.problem!.reason], [rotated[2], 1, 1, `records 1–${first.seq - 1} removed from the start (the keyed head says the trail starts at record 1)`]);
    // The next start of the gateway records the removal in the chain (retention), and then the
    // trail verifies, saying where it starts and which record holds the removal.
    const t = new AuditTrail({ dir, master: MASTER });
    t.close();
    const last = JSON.parse(lines(dir).at(-1)!) as { seq: number; type: string; previousStart: number; start: number };
    assert.deepEqual([last.type, last.previousStart, last.start], ['retention', 1, first.seq]);
    const after = verifyTrail(dir, MASTER);
    assert.equal(after.ok, true, JSON.stringify(after.problem));
    assert.equal(after.note, `the trail starts at record ${first.seq}; the removal of earlier records was recorded in record ${last.seq} (earlier files: verify them against their archive)`);
    // Forging the head's start without the key does not help.
    const head = JSON.parse(readFileSync(join(dir, 'audit.head'), 'utf8').trim()) as Record<string, unknown>;
    writeFileSync(join(dir, 'audit.head'), JSON.stringify({ ...head, start: 1 }));
    assert.equal(verifyTrail(dir, MASTER).ok, false, 'a start changed without the key is not believed');
    const { start: _, ...stripped } = head;
    writeFileSync(join(dir, 'audit.head'), JSON.stringify(stripped));
    assert.equal(verifyTrail(dir, MASTER).ok, false, 'nor a head with its start taken out (an older version\'s head cannot be made without the key)');
  });

  test('old rotated files removed while the gateway runs: recorded at its next rotation', () => {
    const dir = dirOf();
    const t = fill(dir, 30, { maxBytes: 1500 });
    const rotated = readdirSync(dir).filter((f) => /^audit-\d{12}\.log$/.test(f)).sort();
    unlinkSync(join(dir, rotated[0]!));
    const start = JSON.parse(lines(dir, rotated[1]!)[0]!) as { seq: number };
    assert.equal(verifyTrail(dir, MASTER).ok, false, 'until it is recorded, the removal is named');
    for (let i = 0; i < 15; i++) t.append({ type: 'request', time: new Date().toISOString(), requestId: `x${i}` });
    t.close();
    const all = readdirSync(dir).filter((f) => f.endsWith('.log')).sort().flatMap((f) => lines(dir, f).map((l) => JSON.parse(l) as { type: string; start?: number }));
    assert.ok(all.some((x) => x.type === 'retention' && x.start === start.seq), 'a retention record names the new start');
    const r = verifyTrail(dir, MASTER);
    assert.equal(r.ok, true, JSON.stringify(r.problem));
    assert.match(r.note ?? '', new RegExp(`^the trail starts at record ${start.seq}; the removal of earlier records was recorded in record \\d+`));
  });

  test('a head that is missing, forged or made from a checkpoint stops the gateway (fail closed), and verify names it', () => {
    const dir = dirOf();
    fill(dir, 30, { maxBytes: 1500 }).close();
    const headPath = join(dir, 'audit.head');
    const good = readFileSync(headPath);
    // A checkpoint's signature (seq and hash under the key) is not a head's: it cannot be reused.
    const rotated = readdirSync(dir).filter((f) => /^audit-\d{12}\.log$/.test(f)).sort();
    const cp = JSON.parse(lines(dir, rotated[0]!).at(-1)!) as { seq: number; prev: string; mac: string };
    for (const [what, head] of [['a checkpoint\'s signature', JSON.stringify({ seq: cp.seq - 1, hash: cp.prev, mac: cp.mac })], ['no start', JSON.stringify({ ...(JSON.parse(good.toString()) as object), start: undefined })]] as const) {
      writeFileSync(headPath, head);
      assert.match(verifyTrail(dir, MASTER).problem?.reason ?? '', /head file has an invalid key signature/, what);
      const t = new AuditTrail({ dir, master: MASTER });
      assert.equal(t.healthy(), false, `${what}: the gateway does not continue the trail`);
      assert.match(t.status().problem ?? '', /audit head .* is missing or its signature does not hold/);
      t.close();
    }
    unlinkSync(headPath);
    const t = new AuditTrail({ dir, master: MASTER });
    assert.equal(t.healthy(), false, 'a removed head too');
    t.close();
    writeFileSync(headPath, good);
    assert.equal(verifyTrail(dir, MASTER).ok, true, 'the real head verifies');
  });

  test('a crash after a retention record, before its head, still verifies', () => {
    const dir = dirOf();
    fill(dir, 40, { maxBytes: 1500 }).close();
    const rotated = readdirSync(dir).filter((f) => /^audit-\d{12}\.log$/.test(f)).sort();
    const headBefore = readFileSync(join(dir, 'audit.head'));
    unlinkSync(join(dir, rotated[0]!));
    new AuditTrail({ dir, master: MASTER }).close(); // writes the retention record and its head
    // As if the process died between the record's write and the head's.
    writeFileSync(join(dir, 'audit.head'), headBefore);
    const r = verifyTrail(dir, MASTER);
    assert.equal(r.ok, true, JSON.stringify(r.problem));
    assert.match(r.note ?? '', /removal of earlier records was recorded in record \d+.*not anchored by the head/);
  });

  test('files put back from an archive verify, with a note, before and after the gateway records them', () => {
    const dir = dirOf();
    fill(dir, 40, { maxBytes: 1500 }).close();
    const rotated = readdirSync(dir).filter((f) => /^audit-\d{12}\.log$/.test(f)).sort();
    const archived = readFileSync(join(dir, rotated[0]!));
    unlinkSync(join(dir, rotated[0]!));
    new AuditTrail({ dir, master: MASTER }).close(); // the retention is recorded
    writeFileSync(join(dir, rotated[0]!), archived); // put back to verify the archive
    const r = verifyTrail(dir, MASTER);
    assert.equal(r.ok, true, JSON.stringify(r.problem));
    assert.match(r.note ?? '', /^the trail holds records from 1, before its recorded start \(\d+\): files put back from an archive/);
    new AuditTrail({ dir, master: MASTER }).close(); // the next start records that it starts at 1 again
    assert.equal(verifyTrail(dir, MASTER).ok, true);
    const last = JSON.parse(lines(dir).at(-1)!) as { type: string; start: number };
    assert.deepEqual([last.type, last.start], ['retention', 1]);
  });

  test('rotation by UTC day', () => {
    const dir = dirOf();
    let now = Date.UTC(2026, 10, 1, 23, 59, 0);
    const t = new AuditTrail({ dir, master: MASTER, now: () => now });
    t.append({ type: 'request', time: new Date(now).toISOString() });
    now += 120_000;
    t.append({ type: 'request', time: new Date(now).toISOString() });
    t.close();
    assert.equal(readdirSync(dir).filter((f) => /^audit-\d{12}\.log$/.test(f)).length, 1);
    assert.equal(verifyTrail(dir, MASTER).ok, true);
  });

  test('an interrupted write leaves no half record: the tail is cut back and the repair recorded', () => {
    const dir = dirOf();
    fill(dir, 3).close();
    const path = join(dir, AUDIT_FILE);
    writeFileSync(path, `${readFileSync(path, 'utf8')}{"type":"request","seq":4,"prev":"ab`);
    const t = new AuditTrail({ dir, master: MASTER });
    assert.equal(t.healthy(), true, 'a torn tail does not stop the gateway');
    t.append({ type: 'request', requestId: 'after' });
    t.close();
    const recs = lines(dir).map((l) => JSON.parse(l) as { type: string; tornBytes?: number; seq: number });
    assert.equal(recs.at(-2)!.type, 'repaired');
    assert.ok((recs.at(-2)!.tornBytes ?? 0) > 0);
    assert.equal(verifyTrail(dir, MASTER).ok, true);
  });

  for (const when of ['before the rename', 'after the rename, before the continue record']) {
    test(`a rotation interrupted ${when} is finished at the next start; nothing is overwritten`, () => {
      const dir = dirOf();
      // Rotate once: audit-000000000001.log = [r1, checkpoint(2)], audit.log = [continue(3), r2(4)].
      const t = new AuditTrail({ dir, master: MASTER, maxBytes: 1 });
      t.append({ type: 'request', n: 1 });
      t.append({ type: 'request', n: 2 });
      t.close();
      const rotated = 'audit-000000000001.log';
      const checkpoint = JSON.parse(lines(dir, rotated).at(-1)!) as { seq: number; hash: string };
      // Back to the moment of the crash: the head names the checkpoint; the new file never existed.
      unlinkSync(join(dir, AUDIT_FILE));
      if (when === 'before the rename') renameSync(join(dir, rotated), join(dir, AUDIT_FILE));
      const mac = createHmac('sha256', auditKey(MASTER)).update(`audit-head\0${checkpoint.seq}\0${checkpoint.hash}\0${1}`).digest('hex');
      writeFileSync(join(dir, 'audit.head'), JSON.stringify({ seq: checkpoint.seq, hash: checkpoint.hash, start: 1, mac }));
      const again = new AuditTrail({ dir, master: MASTER, maxBytes: 1 << 20 });
      assert.equal(again.healthy(), true, again.status().problem);
      again.append({ type: 'request', n: 3 });
      again.close();
      const v = verifyTrail(dir, MASTER);
      assert.equal(v.ok, true, JSON.stringify(v.problem));
      assert.equal((JSON.parse(lines(dir)[0]!) as { type: string }).type, 'continue');
      assert.equal(lines(dir, rotated).length, 2, 'the rotated file kept its records');
    });
  }

  test('a rotation never overwrites an existing rotated file', () => {
    const dir = dirOf();
    fill(dir, 2).close();
    writeFileSync(join(dir, 'audit-000000000001.log'), 'evidence\n');
    const t = new AuditTrail({ dir, master: MASTER, maxBytes: 1 });
    assert.throws(() => t.append({ type: 'request' }), (e) => e instanceof GatewayError && e.code === 'AUDIT_UNAVAILABLE');
    assert.match(t.status().problem ?? '', /would overwrite audit-000000000001\.log/);
    t.close();
    assert.equal(readFileSync(join(dir, 'audit-000000000001.log'), 'utf8'), 'evidence\n');
  });

  test('a forged head is detected', () => {
    const dir = dirOf();
    fill(dir, 3).close();
    writeFileSync(join(dir, 'audit.head'), JSON.stringify({ seq: 3, hash: 'f'.repeat(64), mac: '0'.repeat(64) }));
    assert.match(verifyTrail(dir, MASTER).problem!.reason, /head file has an invalid key signature/);
  });

  test('SIGKILL loses nothing already written', async () => {
    const dir = dirOf();
    const script = `
      import { AuditTrail } from ${JSON.stringify(new URL('../../../src/audit/trail.ts', import.meta.url).pathname)};
      const t = new AuditTrail({ dir: ${JSON.stringify(dir)}, master: Buffer.alloc(32, 7) });
      let i = 0;
      const tick = () => { for (let k = 0; k < 50; k++) { t.append({ type: 'request', n: ++i }); } process.stdout.write(i + '\\n'); setImmediate(tick); };
      tick();`;
    const child = spawn(process.execPath, ['--import', 'tsx', '--input-type=module', '-e', script], { stdio: ['ignore', 'pipe', 'inherit'] });
    let acknowledged = 0;
    await new Promise<void>((resolve) => {
      child.stdout.on('data', (d: Buffer) => {
        const n = Number(String(d).trim().split('\n').at(-1));
        if (n) acknowledged = n;
        if (acknowledged >= 2000) { child.kill('SIGKILL'); resolve(); }
      });
    });
    await new Promise((r) => child.on('exit', r));
    const r = verifyTrail(dir, MASTER);
    assert.ok(r.records >= acknowledged, `${r.records} records on disk, ${acknowledged} acknowledged before the kill`);
    // At most the write in progress can be cut; the chain up to it verifies.
    if (!r.ok) assert.match(r.problem!.reason, /incomplete|removed from the end/);
    else assert.equal(r.ok, true);
  });

  test('a trail that cannot be written throws AUDIT_UNAVAILABLE, reports unhealthy, and recovers when it can', () => {
    const dir = dirOf();
    symlinkSync('/dev/full', join(dir, AUDIT_FILE)); // every write fails with ENOSPC
    const t = new AuditTrail({ dir, master: MASTER });
    assert.throws(() => t.append({ type: 'request' }), (e) => e instanceof GatewayError && e.code === 'AUDIT_UNAVAILABLE');
    assert.equal(t.healthy(), false);
    assert.match(t.status().problem ?? '', /cannot be written \(ENOSPC\)/);
    assert.equal(t.recover(), false, 'still failing');
    unlinkSync(join(dir, AUDIT_FILE));
    assert.equal(t.recover(), true, 'a writable file again');
    t.append({ type: 'request' });
    t.close();
    assert.equal(verifyTrail(dir, MASTER).ok, true);
    rmSync(dir, { recursive: true });
  });

  test('patient references are keyed and stable', () => {
    const k = auditKey(MASTER);
    assert.equal(patientRef(k, 'MRN-1'), patientRef(k, ' MRN-1 '));
    assert.notEqual(patientRef(k, 'MRN-1'), patientRef(k, 'MRN-2'));
    assert.notEqual(patientRef(k, 'MRN-1'), patientRef(auditKey(Buffer.alloc(32, 1)), 'MRN-1'));
    assert.match(patientRef(k, 'MRN-1'), /^P-[0-9a-f]{24}$/);
  });
});

/** Recomputes a line's own hash (an attacker without the key can do this). */
function rehash(line: string): string {
  const body = `${line.replace(/,"hash":"[0-9a-f]{64}"\}$/, '')}}`;
  return `${body.slice(0, -1)},"hash":"${createHash('sha256').update(body).digest('hex')}"}`;
}
