/**
 * `audit report` from a known log: the figures, the anomaly rules, and a page that escapes
 * everything and loads nothing from outside.
 */
import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { renderReport, reportData } from '../../../src/audit/report.js';
import type { AuditEntry } from '../../../src/audit/read.js';

const DAY = 86_400_000;
const T0 = Date.UTC(2026, 9, 1, 9);
let seq = 0;
const req = (t: number, o: Partial<AuditEntry> = {}): AuditEntry => ({ type: 'request', seq: ++seq, time: new Date(t).toISOString(), client: 'acme', route: 'retrieve', status: 200, outcome: 'ok', bytes: 0, instances: 0, ...o });
const study = (t: number, uid: string, instances: number, o: Partial<AuditEntry> = {}): AuditEntry => ({ type: 'study', seq: ++seq, time: new Date(t).toISOString(), client: 'acme', study: uid, patientRef: `P-${uid.slice(-1).repeat(24)}`, instances, ...o });

function knownLog(): AuditEntry[] {
  const e: AuditEntry[] = [];
  // Four ordinary days of 1 MB, then a day of 20 MB.
  for (let d = 0; d < 4; d++) { e.push(req(T0 + d * DAY, { bytes: 1_000_000, instances: 10 })); e.push(study(T0 + d * DAY, `1.2.3.${d}`, 10)); }
  e.push(req(T0 + 4 * DAY, { bytes: 20_000_000, instances: 200 }));
  e.push(study(T0 + 4 * DAY, '1.2.3.9', 200));
  // 25 "not found" in 25 seconds: enumeration.
  for (let i = 0; i < 25; i++) e.push(req(T0 + DAY + 3_600_000 + i * 1000, { status: 404, outcome: 'denied', code: 'NOT_FOUND', reason: 'out-of-scope:not-in-allow-list', route: 'metadata' }));
  // A QIDO with no match key returning 150 rows; a narrow one returning 3.
  e.push(req(T0 + 2 * DAY, { route: 'qido-studies', results: 150, query: { level: 'study', keys: [], wildcard: false } }));
  e.push(req(T0 + 2 * DAY, { route: 'qido-studies', results: 3, query: { level: 'study', keys: ['StudyDate'], wildcard: false } }));
  // After the agreement.
  e.push(req(T0 + 3 * DAY, { status: 403, outcome: 'denied', code: 'ACCESS_WINDOW_CLOSED', reason: 'access-window:expired', route: 'qido-studies' }));
  // Another client and an out-of-period record do not count.
  e.push(req(T0 + DAY, { client: 'other', bytes: 99_000_000 }));
  e.push(req(T0 - 30 * DAY, { bytes: 99_000_000 }));
  return e;
}

describe('audit report', () => {
  const opts = { client: 'acme', since: T0 - DAY, until: T0 + 10 * DAY, generatedAt: T0 + 10 * DAY };

  test('figures per day and in total, for one client and period', () => {
    const d = reportData(knownLog(), opts);
    assert.deepEqual(d.days.map((x) => [x.day, x.instances, x.studies]), [['2026-10-01', 10, 1], ['2026-10-02', 10, 1], ['2026-10-03', 10, 1], ['2026-10-04', 10, 1], ['2026-10-05', 200, 1]]);
    assert.equal(d.totals.bytes, 24_000_000);
    assert.equal(d.totals.studies, 5);
    assert.equal(d.totals.denied, 26);
    assert.deepEqual(d.denials, [{ reason: 'out-of-scope:not-in-allow-list', count: 25 }, { reason: 'access-window:expired', count: 1 }]);
    assert.equal(d.topStudies[0]!.study, '1.2.3.9');
  });

  test('anomalies: enumeration, sweeping query, volume, outside the agreement — and nothing else', () => {
    const kinds = reportData(knownLog(), opts).anomalies.map((a) => a.kind).sort();
    assert.deepEqual(kinds, ['enumeration', 'outside-agreement', 'sweeping-query', 'volume']);
    const quiet = knownLog().filter((e) => e.status !== 404 && e.results !== 150 && e.reason !== 'access-window:expired' && e.bytes !== 20_000_000);
    assert.deepEqual(reportData(quiet, opts).anomalies, [], 'an ordinary log flags nothing');
    assert.equal(reportData(knownLog(), { ...opts, burst404: 30 }).anomalies.filter((a) => a.kind === 'enumeration').length, 0, 'thresholds are options');
  });

  test('enumeration through QIDO: UID queries that find nothing count as "not found"', () => {
    const probe = (i: number, results: number, status = 200): AuditEntry => req(T0 + i * 1000, { route: 'qido-studies', status, results, query: { level: 'study', keys: ['StudyInstanceUID'], wildcard: false } });
    const window = { client: 'acme', since: T0 - DAY, until: T0 + DAY };
    const misses = Array.from({ length: 25 }, (_, i) => probe(i, 0));
    assert.deepEqual(reportData(misses, window).anomalies.map((a) => a.kind), ['enumeration']);
    const hits = Array.from({ length: 25 }, (_, i) => probe(i, 1));
    assert.deepEqual(reportData(hits, window).anomalies, [], 'UID queries that find their study are not probing');
    const failed = Array.from({ length: 25 }, (_, i) => probe(i, 0, 502));
    assert.deepEqual(reportData(failed, window).anomalies, [], 'queries the PACS failed found nothing because they failed, not because nothing was there');
    const dates = Array.from({ length: 25 }, (_, i) => req(T0 + i * 1000, { route: 'qido-studies', results: 0, query: { level: 'study', keys: ['StudyDate'], wildcard: false } }));
    assert.deepEqual(reportData(dates, window).anomalies, [], 'empty answers to other keys are not probing');
  });

  test('volume is judged against the client\'s usual: the days before the period count (baselineDays)', () => {
    // A two-day period: 1 MB, then 20 MB. Alone, it has too few days to say what is usual.
    const period = [req(T0, { bytes: 1_000_000 }), req(T0 + DAY, { bytes: 20_000_000 })];
    const two = { client: 'acme', since: T0, until: T0 + 2 * DAY };
    assert.deepEqual(reportData(period, two).anomalies, [], 'no history: nothing to compare with');
    const quietHistory = [1, 2, 3, 4, 5].map((k) => req(T0 - k * DAY, { bytes: 1_000_000 }));
    const flagged = reportData([...quietHistory, ...period], two).anomalies;
    assert.deepEqual(flagged.map((a) => [a.kind, a.time.slice(0, 10)]), [['volume', '2026-10-02']], 'above five quiet days before the period');
    assert.match(flagged[0]!.detail, /over 6 days with traffic/);
    const busyHistory = [1, 2, 3, 4, 5].map((k) => req(T0 - k * DAY, { bytes: 25_000_000 }));
    assert.deepEqual(reportData([...busyHistory, ...period], two).anomalies, [], 'usual for a client that always takes this much');
    assert.deepEqual(reportData([...quietHistory, ...period], { ...two, baselineDays: 0 }).anomalies, [], 'baselineDays: 0 looks at the period only');
  });

  test('the chart has a panel for studies, instances and bytes per day, each bar to its own scale', () => {
    const html = renderReport(reportData(knownLog(), opts), opts);
    for (const label of ['studies released per day', 'instances released per day', 'bytes sent per day']) {
      assert.match(html, new RegExp(`<svg[^>]+aria-label="${label}"`), label);
    }
    const heights = (figure: string): number[] => {
      const svg = new RegExp(`<svg[^>]+data-figure="${figure}"[^>]*>(.*?)</svg>`, 's').exec(html)?.[1] ?? '';
      return [...svg.matchAll(/<rect [^>]*height="(\d+)"/g)].map((m) => Number(m[1]));
    };
    const top = 160 - 2 * 34;
    assert.deepEqual(heights('studies'), [top, top, top, top, top], 'one study a day');
    assert.deepEqual(heights('instances'), [5, 5, 5, 5, top], '10, 10, 10, 10, 200 instances');
    assert.deepEqual(heights('bytes'), [5, 5, 5, 5, top], '1, 1, 1, 1, 20 MB');
  });

  test('the page is self-contained and escapes what it shows', () => {
    const log = knownLog();
    log.push(req(T0 + DAY, { status: 404, outcome: 'denied', reason: '<script>alert(1)</script>' }));
    const html = renderReport(reportData(log, opts), { ...opts, integrity: { ok: true, text: 'intact (3 records verified)' } });
    assert.ok(!html.includes('<script>'), 'no markup from the log');
    assert.match(html, /&lt;script&gt;alert\(1\)&lt;\/script&gt;/);
    assert.match(html, /Content-Security-Policy" content="default-src 'none'/);
    assert.ok(!/(src|href)="(https?:)?\/\//.test(html), 'no external resource');
    assert.match(html, /<rect /);
  });
});
