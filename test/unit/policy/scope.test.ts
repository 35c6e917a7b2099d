/**
 * Scope rules, query mapping on shifted dates, limits and reloaded files, without a PACS.
 */
import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, renameSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { GatewayError } from '../../../src/core/errors.js';
import { compilePlan } from '../../../src/deid/plan.js';
import { addDays, mapQuery, passesDateFilters } from '../../../src/http/query.js';
import { Limiter, memoryLimitStore } from '../../../src/policy/limits.js';
import { checkWindow, jsonAttrs, OptOutList, recordDenial, TAG, type ScopeRules } from '../../../src/policy/scope.js';
import { WatchedFile } from '../../../src/policy/watched-file.js';
import { parseOptOutList } from '../../../src/config/lists.js';

const attrs = (o: Record<number, string>) => (tag: number): string | undefined => o[tag];
const code = (fn: () => unknown): string => {
  try { fn(); } catch (e) { assert.ok(e instanceof GatewayError, `a GatewayError, got ${String(e)}`); return e.code; }
  return 'none';
};

const acode = async (fn: () => Promise<unknown>): Promise<string> => {
  try { await fn(); } catch (e) { assert.ok(e instanceof GatewayError, `a GatewayError, got ${String(e)}`); return e.code; }
  return 'none';
};

describe('scope rules', () => {
  const rec = { [TAG.studyUid]: '1.2.3', [TAG.accession]: 'A7', [TAG.studyDate]: '20210305', [TAG.patientId]: 'P1', [TAG.issuer]: 'H1', [TAG.modality]: 'CT', [TAG.bodyPart]: 'CHEST', [TAG.sopClass]: '1.2.840.10008.5.1.4.1.1.2' };
  const none = new OptOutList([]);

  test('opt-out: by ID and issuer; an entry without issuer matches every issuer; a record without issuer matches', () => {
    const list = new OptOutList([{ id: 'P1', issuer: 'H1' }, { id: 'P9' }]);
    assert.equal(list.has('P1', 'H1'), true);
    assert.equal(list.has('P1', 'H2'), false, 'same ID, other issuer: another person');
    assert.equal(list.has('P1', undefined), true, 'no issuer on the record: might be the same person');
    assert.equal(list.has('P9', 'ANY'), true);
    assert.equal(list.has(' P9 ', undefined), true, 'padding is ignored');
    assert.equal(list.has('P2', 'H1'), false);
    assert.equal(recordDenial({}, list, attrs(rec)), 'opted-out');
  });

  test('opt-out: a record without a Patient ID is denied while the list has entries (fail closed)', () => {
    const list = new OptOutList([{ id: 'P1', issuer: 'H1' }]);
    assert.equal(list.has(undefined, undefined), true, 'no Patient ID: might be an opted-out patient');
    assert.equal(list.has(undefined, 'H2'), true, 'no Patient ID, whatever the issuer');
    assert.equal(list.has('  ', 'H1'), true, 'a blank Patient ID is no Patient ID');
    assert.equal(none.has(undefined, undefined), false, 'an empty list denies nothing');
    const bare = attrs({ [TAG.studyUid]: '1.2.3', [TAG.issuer]: 'H2' });
    assert.equal(recordDenial({}, list, bare), 'opted-out');
    assert.equal(recordDenial({}, none, bare), undefined);
  });

  test('the opt-out list wins over the allow-list', () => {
    assert.equal(recordDenial({ studies: new Set(['1.2.3']) }, new OptOutList([{ id: 'P1' }]), attrs(rec)), 'opted-out');
  });

  const cases: [string, ScopeRules, string | undefined][] = [
    ['no rules', {}, undefined],
    ['allow-list by UID', { studies: new Set(['1.2.3']), accessions: new Set() }, undefined],
    ['allow-list by accession', { studies: new Set(), accessions: new Set(['A7']) }, undefined],
    ['not on the allow-list', { studies: new Set(['1.2.4']), accessions: new Set(['A8']) }, 'not-in-allow-list'],
    ['an empty allow-list allows nothing', { studies: new Set(), accessions: new Set() }, 'not-in-allow-list'],
    ['date inside', { studyDate: { from: '20210305', until: '20210305' } }, undefined],
    ['date before', { studyDate: { from: '20210306' } }, 'study-date'],
    ['date after', { studyDate: { until: '20210304' } }, 'study-date'],
    ['modality', { modalities: new Set(['MR']) }, 'modality'],
    ['body part', { bodyParts: new Set(['HEAD']) }, 'body-part'],
    ['SOP class', { sopClasses: new Set(['1.2.840.10008.5.1.4.1.1.4']) }, 'sop-class'],
    ['all matching', { modalities: new Set(['CT', 'MR']), bodyParts: new Set(['CHEST']), sopClasses: new Set(['1.2.840.10008.5.1.4.1.1.2']) }, undefined],
  ];
  for (const [name, rules, want] of cases) {
    test(`verdict: ${name}`, () => { assert.equal(recordDenial(rules, none, attrs(rec)), want); });
  }

  test('a rule that needs an attribute the record lacks denies (fail closed)', () => {
    const bare = attrs({ [TAG.studyUid]: '1.2.3' });
    assert.equal(recordDenial({ studyDate: { from: '19000101' } }, none, bare), 'study-date');
    assert.equal(recordDenial({ modalities: new Set(['CT']) }, none, bare), 'modality');
    assert.equal(recordDenial({ sopClasses: new Set(['1.2']) }, none, bare), 'sop-class');
  });

  test('jsonAttrs reads DICOM JSON values, PN by its Alphabetic group, multiple values joined', () => {
    const a = jsonAttrs({ '00100010': { Value: [{ Alphabetic: 'DOE^J' }] }, '00080061': { Value: ['CT', 'SR'] }, '00100020': {} });
    assert.equal(a(0x00100010), 'DOE^J');
    assert.equal(a(0x00080061), 'CT\\SR');
    assert.equal(a(0x00100020), undefined);
    assert.equal(recordDenial({ modalities: new Set(['SR']) }, none, (t) => (t === TAG.modality ? 'CT\\SR' : rec[t as keyof typeof rec])), undefined);
  });

  test('access window: from inclusive, until exclusive', () => {
    assert.equal(code(() => checkWindow({ from: 1000 }, 999)), 'ACCESS_WINDOW_CLOSED');
    assert.equal(code(() => checkWindow({ from: 1000 }, 1000)), 'none');
    assert.equal(code(() => checkWindow({ until: 2000 }, 1999)), 'none');
    assert.equal(code(() => checkWindow({ until: 2000 }, 2000)), 'ACCESS_WINDOW_CLOSED');
  });
});

describe('query mapping', () => {
  const shifted = compilePlan({ options: ['retainLongitudinalModifiedDates'], dateShift: { minDays: 10, maxDays: 40 } });
  const basic = compilePlan({ options: [] });
  const resolver = { uid: (p: string) => (p === '2.25.1' ? '1.2.3' : undefined), patientId: () => undefined };
  const map = (q: string, plan = shifted, allowedKeys?: ReadonlySet<number>) => mapQuery(new URLSearchParams(q), plan, resolver, { maxLimit: 100, allowedKeys });

  test('a shifted date range is widened upstream by the shift range and matched exactly here', () => {
    const m = map('StudyDate=20200110-20200120');
    assert.equal(m.upstream.get('00080020'), `${addDays('20200110', 10)}-${addDays('20200120', 40)}`);
    assert.deepEqual(m.dateFilters, [{ tag: '00080020', from: '20200110', until: '20200120' }]);
    const row = (d: string) => ({ '00080020': { Value: [d] } });
    assert.equal(passesDateFilters(m.dateFilters, row('20200110')), true);
    assert.equal(passesDateFilters(m.dateFilters, row('20200120')), true);
    assert.equal(passesDateFilters(m.dateFilters, row('20200121')), false);
    assert.equal(passesDateFilters(m.dateFilters, row('20200109')), false);
    assert.equal(passesDateFilters(m.dateFilters, {}), false, 'no date: no match');
    assert.equal(map('StudyDate=20200110').upstream.get('00080020'), `${addDays('20200110', 10)}-${addDays('20200110', 40)}`);
    assert.equal(map('StudyDate=-20200110').upstream.get('00080020'), `-${addDays('20200110', 40)}`);
    assert.equal(map('StudyDate=20200110-').upstream.get('00080020'), `${addDays('20200110', 10)}-`);
  });

  test('malformed dates are BAD_QUERY; shifted times and other identifying keys QUERY_KEY_REFUSED', () => {
    for (const q of ['StudyDate=2020-01-10', 'StudyDate=20201310', 'StudyDate=20200230', 'StudyDate=20200120-20200110', 'StudyDate=-', 'limit=x']) {
      assert.equal(code(() => map(q)), 'BAD_QUERY', q);
    }
    for (const q of ['StudyTime=1010', 'PatientName=X', 'AccessionNumber=1', 'Foo=1']) assert.equal(code(() => map(q)), 'QUERY_KEY_REFUSED', q);
    assert.equal(code(() => map('StudyDate=20200101', basic)), 'QUERY_KEY_REFUSED', 'dates the plan empties cannot be matched');
  });

  test('allowed keys, limit cap, UID lists in both forms, unknown pseudonyms', () => {
    assert.equal(code(() => map('ModalitiesInStudy=CT', shifted, new Set([0x00080020]))), 'QUERY_KEY_REFUSED');
    assert.equal(code(() => map('StudyDate=20200101', shifted, new Set([0x00080020]))), 'none');
    assert.equal(map('limit=500').limit, 100);
    assert.equal(map('limit=0').limit, 100);
    assert.equal(map('offset=7').offset, 7);
    assert.equal(map('StudyInstanceUID=2.25.1%5C2.25.9').upstream.get('0020000D'), '1.2.3');
    assert.equal(map('StudyInstanceUID=2.25.9').empty, true);
    const keep = compilePlan({ options: ['retainUIDs'] });
    assert.equal(map('StudyInstanceUID=1.2%5C1.3,1.4', keep).upstream.get('0020000D'), '1.2,1.3,1.4');
  });
});

describe('limits', () => {
  test('rate: a minute\'s burst, then the steady rate; Retry-After until the next token', async () => {
    let now = 1_000_000;
    const l = new Limiter(memoryLimitStore(), () => ({ requestsPerMinute: 6 }), () => now);
    for (let i = 0; i < 6; i++) (await l.admit('c'))(0);
    try { await l.admit('c'); assert.fail('the 7th request in the same instant is refused'); } catch (e) {
      assert.ok(e instanceof GatewayError && e.code === 'RATE_LIMITED', 'RATE_LIMITED');
      assert.equal(e.retryAfter, 10, 'one token every 10 s');
    }
    now += 10_000;
    (await l.admit('c'))(0);
    assert.equal(await acode(() => l.admit('c')), 'RATE_LIMITED');
    assert.equal(await acode(() => l.admit('other')), 'none', 'limits are per client');
  });

  test('concurrency: in-flight requests, released once', async () => {
    const l = new Limiter(memoryLimitStore(), () => ({ concurrentRequests: 2 }));
    const a = await l.admit('c');
    const b = await l.admit('c');
    assert.equal(await acode(() => l.admit('c')), 'CONCURRENCY_LIMITED');
    a(0); a(0); // a double release frees one slot only
    const c = await l.admit('c');
    assert.equal(await acode(() => l.admit('c')), 'CONCURRENCY_LIMITED');
    b(0); c(0);
  });

  test('bytes per day: counted at the end of each response; refused until 00:00 UTC; persisted in the store', async () => {
    let now = Date.UTC(2026, 10, 25, 23, 0, 0);
    const store = memoryLimitStore();
    const l = new Limiter(store, () => ({ bytesPerDay: 1000 }), () => now);
    const first = await l.admit('c');
    first(600);
    (await l.admit('c'))(600); // admitted at 600 < 1000; completes and crosses the quota
    try { await l.admit('c'); assert.fail('quota reached'); } catch (e) {
      assert.ok(e instanceof GatewayError && e.code === 'QUOTA_EXCEEDED', 'QUOTA_EXCEEDED');
      assert.equal(e.retryAfter, 3600, 'until midnight UTC');
    }
    const again = new Limiter(store, () => ({ bytesPerDay: 1000 }), () => now);
    assert.equal(await acode(() => again.admit('c')), 'QUOTA_EXCEEDED', 'a new limiter on the same store (a restart) remembers');
    now += 3600_000;
    assert.equal(await acode(() => again.admit('c')), 'none', 'a new day');
  });
});

describe('reloaded list files', () => {
  test('changes are picked up; a broken file fails closed until fixed; a deleted file too', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'deid-watch-'));
    const p = join(dir, 'opt.yaml');
    writeFileSync(p, 'patients: [{id: A}]\n');
    const problems: (string | undefined)[] = [];
    const f = new WatchedFile(p, 'optOut.file', parseOptOutList, (m) => problems.push(m), 0);
    assert.deepEqual(f.value(), [{ id: 'A' }]);
    writeFileSync(join(dir, 'tmp.yaml'), 'patients: [{id: A}, {id: B, issuer: H}]\n');
    renameSync(join(dir, 'tmp.yaml'), p); // atomic replace, as editors and config management do
    assert.deepEqual(f.value(), [{ id: 'A' }, { id: 'B', issuer: 'H' }]);
    writeFileSync(p, 'patients: [{id: A, extra: 1}]\n');
    assert.equal(code(() => f.value()), 'SCOPE_UNAVAILABLE');
    assert.equal(f.status().ok, false);
    assert.match(problems.at(-1) ?? '', /optOut\.file: .*opt\.yaml: patients\[0\]: unknown key\(s\) "extra"/);
    rmSync(p);
    assert.equal(code(() => f.value()), 'SCOPE_UNAVAILABLE');
    assert.match(problems.at(-1) ?? '', /cannot be read \(ENOENT\)/);
    writeFileSync(p, 'patients: []\n');
    assert.deepEqual(f.value(), []);
    assert.equal(problems.at(-1), undefined, 'healthy again is reported');
    assert.throws(() => new WatchedFile(join(dir, 'none.yaml'), 'optOut.file', parseOptOutList), /optOut\.file: .*none\.yaml cannot be read/);
  });
});
