/**
 * Keyed pseudonyms (src/pseudonym/pseudonymizer.ts): UID syntax (PS3.5 9.1, B.2), determinism
 * per client key, unlinkability across clients, date offsets and the recorder hook.
 */
import { test, describe } from 'node:test';
import assert from 'node:assert/strict';
import { Pseudonymizer, type PseudonymRecorder } from '../../../src/pseudonym/pseudonymizer.js';
import { deriveClientKey } from '../../../src/pseudonym/secret.js';
import type { DateShiftRange } from '../../../src/deid/plan.js';

const MASTER = Buffer.from('00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff', 'hex');
const RANGE: DateShiftRange = { minDays: 365, maxDays: 3650 };

function pz(clientId = 'client-a', range: DateShiftRange = RANGE, recorder?: PseudonymRecorder): Pseudonymizer {
  return new Pseudonymizer(deriveClientKey(MASTER, clientId), range, recorder);
}

const UID_RE = /^2\.25\.(0|[1-9]\d*)$/;
const ORIGINAL_UIDS = [
  '1.2.840.113619.2.55.3.604688119.969.1268071029.320',
  '1.2.826.0.1.3680043.9.7433.1.1.1',
  '1.3.6.1.4.1.14519.5.2.1.6279.6001.100225287222365663678666836860',
  '2.25.329800735698586629295641978511506172918',
  '1',
  '1.2.3\0', // a NUL-padded value is a different string; still a valid output
];

describe('pseudonymizer: UIDs', () => {
  test('every UID is "2.25." + a decimal without leading zeros, ≤ 64 chars, the number < 2^128', () => {
    const p = pz();
    const inputs = [...ORIGINAL_UIDS, ...Array.from({ length: 2000 }, (_, i) => `1.2.826.0.1.3680043.9.7433.${i}`)];
    for (const u of inputs) {
      const out = p.uid(u);
      assert.match(out, UID_RE, `${u} → ${out}`);
      assert.ok(out.length <= 64, `${out} is ${out.length} chars`);
      const n = BigInt(out.slice(5));
      assert.ok(n < 2n ** 128n, `${out} exceeds 2^128`);
      // PS3.5 9.1: each component is digits only, no leading zero except "0" itself.
      for (const comp of out.split('.')) assert.match(comp, /^(0|[1-9]\d*)$/);
    }
  });

  test('the numbers use the whole 128-bit range (not a truncated hash)', () => {
    const p = pz();
    let max = 0n;
    for (let i = 0; i < 500; i++) {
      const n = BigInt(p.uid(`1.2.3.${i}`).slice(5));
      if (n > max) max = n;
    }
    // With 500 draws the largest is above 2^127 with probability 1 - 2^-500.
    assert.ok(max >= 2n ** 127n, `largest value ${max} too small for 128 bits`);
  });

  test('deterministic for the same key: two instances agree, every occurrence agrees', () => {
    const a = pz('client-a');
    const b = pz('client-a');
    for (const u of ORIGINAL_UIDS) {
      const first = a.uid(u);
      assert.equal(a.uid(u), first, 'second occurrence, same instance');
      assert.equal(b.uid(u), first, 'another instance with the same derived key');
    }
  });

  test('the same pseudonym after the memo has been cleared (200 000+ other UIDs in between)', () => {
    const p = pz();
    const target = ORIGINAL_UIDS[0]!;
    const first = p.uid(target);
    for (let i = 0; i < 200_001; i++) p.uid(`9.9.${i}`);
    assert.equal(p.uid(target), first);
  });

  test('different for another client key (derived from the same master)', () => {
    const a = pz('client-a');
    const b = pz('client-b');
    for (const u of ORIGINAL_UIDS) assert.notEqual(a.uid(u), b.uid(u), u);
  });

  test('different originals give different pseudonyms, and no original passes through', () => {
    const p = pz();
    const seen = new Map<string, string>();
    for (let i = 0; i < 5000; i++) {
      const u = `1.2.840.10008.9.${i}`;
      const out = p.uid(u);
      assert.notEqual(out, u);
      const prev = seen.get(out);
      assert.equal(prev, undefined, `collision: ${prev} and ${u}`);
      seen.set(out, u);
    }
  });

  test('the date-shift range does not influence UIDs', () => {
    assert.equal(pz('client-a', { minDays: 1, maxDays: 2 }).uid('1.2.3'), pz('client-a', RANGE).uid('1.2.3'));
  });
});

describe('pseudonymizer: date offsets', () => {
  const ranges: DateShiftRange[] = [RANGE, { minDays: 1, maxDays: 1 }, { minDays: 1, maxDays: 10 }, { minDays: 30, maxDays: 36500 }];
  for (const range of ranges) {
    test(`offset within [-${range.maxDays}, -${range.minDays}] for many keys`, () => {
      const p = pz('client-a', range);
      for (let i = 0; i < 3000; i++) {
        const d = p.dateOffsetDays(`id:ISSUER\\MRN${i}`);
        assert.ok(Number.isInteger(d), `${d} is a whole number of days`);
        assert.ok(d <= -range.minDays && d >= -range.maxDays, `${d} outside the range`);
      }
    });
  }

  test('the same patient key gives the same offset (same instance, another instance)', () => {
    const a = pz();
    const b = pz();
    for (const key of ['id:\\MRN1', 'id:HOSP\\MRN1', 'name:DOE^JANE', 'study:1.2.3']) {
      assert.equal(a.dateOffsetDays(key), a.dateOffsetDays(key));
      assert.equal(a.dateOffsetDays(key), b.dateOffsetDays(key));
    }
  });

  test('the distribution spans the range: every value of a 10-day range, both ends of the default', () => {
    const small = pz('client-a', { minDays: 1, maxDays: 10 });
    const seen = new Set<number>();
    for (let i = 0; i < 1000; i++) seen.add(small.dateOffsetDays(`id:\\P${i}`));
    assert.deepEqual([...seen].sort((x, y) => x - y), [-10, -9, -8, -7, -6, -5, -4, -3, -2, -1]);

    const p = pz();
    const offsets = Array.from({ length: 4000 }, (_, i) => p.dateOffsetDays(`id:\\P${i}`));
    const width = RANGE.maxDays - RANGE.minDays;
    assert.ok(Math.min(...offsets) < -(RANGE.maxDays - width * 0.02), 'reaches the far end');
    assert.ok(Math.max(...offsets) > -(RANGE.minDays + width * 0.02), 'reaches the near end');
    // Ten equal bins each hold 10 % ± 3 % of the draws (a uniform draw misses this with p < 1e-6).
    const bins = new Array<number>(10).fill(0);
    for (const o of offsets) bins[Math.min(9, Math.floor(((-o - RANGE.minDays) / (width + 1)) * 10))]! += 1;
    for (const n of bins) assert.ok(n > 280 && n < 520, `bin counts ${bins.join(',')}`);
  });

  test('another client key gives unrelated offsets for the same patient', () => {
    const a = pz('client-a');
    const b = pz('client-b');
    let same = 0;
    for (let i = 0; i < 200; i++) if (a.dateOffsetDays(`id:\\P${i}`) === b.dateOffsetDays(`id:\\P${i}`)) same++;
    assert.ok(same < 5, `${same} of 200 offsets coincide`);
  });
});

describe('pseudonymizer: patient IDs and tokens', () => {
  test('patientKey: ID (with issuer) first, then name, then study', () => {
    const cases: Array<[[string, string, string, string], string]> = [
      [['MRN1', 'HOSP', 'DOE^JANE', '1.2.3'], 'id:HOSP\\MRN1'],
      [['MRN1', '', 'DOE^JANE', '1.2.3'], 'id:\\MRN1'],
      [['', 'HOSP', 'DOE^JANE', '1.2.3'], 'name:DOE^JANE'],
      [['', '', '', '1.2.3'], 'study:1.2.3'],
    ];
    for (const [args, expected] of cases) assert.equal(Pseudonymizer.patientKey(...args), expected);
    assert.notEqual(Pseudonymizer.patientKey('MRN1', 'A', '', ''), Pseudonymizer.patientKey('MRN1', 'B', '', ''), 'issuer separates patients');
  });

  test('patientId: "ANON" + 16 base32 characters, deterministic, keyed', () => {
    const a = pz('client-a');
    const b = pz('client-b');
    const ids = new Set<string>();
    for (let i = 0; i < 1000; i++) {
      const key = `id:\\MRN${i}`;
      const id = a.patientId(key);
      assert.match(id, /^ANON[A-Z2-7]{16}$/);
      assert.ok(id.length <= 64, 'fits LO');
      assert.equal(a.patientId(key), id);
      assert.equal(pz('client-a').patientId(key), id);
      assert.notEqual(b.patientId(key), id);
      assert.ok(!id.includes(`MRN${i}`), '!id.includes(`MRN${i}`)');
      ids.add(id);
    }
    assert.equal(ids.size, 1000, 'no collisions');
  });

  const lengths = [1, 2, 4, 8, 15, 16, 17, 52, 64, 100];
  for (const max of lengths) {
    test(`token(maxChars=${max}) is at most ${max} characters`, () => {
      const p = pz();
      for (const v of ['AE_TITLE_1', 'STATION9', 'x']) {
        const t = p.token('ae', v, max);
        assert.ok(t.length >= 1 && t.length <= max, `"${t}" has ${t.length} characters`);
        assert.match(t, /^[A-Z2-7]+$/);
        assert.equal(p.token('ae', v, max), t);
      }
    });
  }

  test('token: the full requested length up to the entropy available, keyed by domain and client', () => {
    const p = pz();
    assert.equal(p.token('ae', 'STATION9', 16).length, 16);
    assert.equal(p.token('ae', 'STATION9', 8).length, 8);
    assert.notEqual(p.token('ae', 'STATION9', 16), p.token('other', 'STATION9', 16));
    assert.notEqual(p.token('ae', 'STATION9', 16), pz('client-b').token('ae', 'STATION9', 16));
    assert.notEqual(p.token('ae', 'STATION9', 16), p.token('ae', 'STATION8', 16));
  });
});

describe('pseudonymizer: recorder hook', () => {
  function recording(): { calls: Array<[string, string, string]>; rec: PseudonymRecorder } {
    const calls: Array<[string, string, string]> = [];
    return { calls, rec: { record: (kind, pseudonym, original) => { calls.push([kind, pseudonym, original]); } } };
  }

  test('receives (kind, pseudonym, original) once per new UID', () => {
    const { calls, rec } = recording();
    const p = pz('client-a', RANGE, rec);
    const u1 = p.uid('1.2.3.4');
    p.uid('1.2.3.4');
    const u2 = p.uid('1.2.3.5');
    p.uid('1.2.3.4');
    assert.deepEqual(calls, [['uid', u1, '1.2.3.4'], ['uid', u2, '1.2.3.5']]);
  });

  test('receives (kind, pseudonym, patient key) once per new patient', () => {
    const { calls, rec } = recording();
    const p = pz('client-a', RANGE, rec);
    const id = p.patientId('id:HOSP\\MRN1');
    p.patientId('id:HOSP\\MRN1');
    assert.deepEqual(calls, [['patient', id, 'id:HOSP\\MRN1']]);
  });

  test('what it records agrees with a pseudonymizer without a recorder', () => {
    const { calls, rec } = recording();
    const p = pz('client-a', RANGE, rec);
    const plain = pz('client-a');
    for (const u of ORIGINAL_UIDS) p.uid(u);
    assert.equal(calls.length, ORIGINAL_UIDS.length);
    for (const [kind, pseudonym, original] of calls) {
      assert.equal(kind, 'uid');
      assert.equal(pseudonym, plain.uid(original));
    }
  });

  test('date offsets and tokens are not recorded (no reverse map needed)', () => {
    const { calls, rec } = recording();
    const p = pz('client-a', RANGE, rec);
    p.dateOffsetDays('id:\\MRN1');
    p.token('ae', 'STATION9', 16);
    assert.deepEqual(calls, []);
  });
});
