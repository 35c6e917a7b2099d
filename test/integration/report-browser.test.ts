/**
 * The audit report looked at in a real browser: Debian `chromium`, headless, takes a
 * screenshot of a generated report; the page must render (not blank) with its chart. Skipped,
 * with the reason, where chromium is not installed (`npm test` installs it as root).
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, writeFileSync, existsSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { inflateSync } from 'node:zlib';
import { renderReport, reportData } from '../../src/audit/report.js';
import type { AuditEntry } from '../../src/audit/read.js';

const CHROMIUM = ['/usr/bin/chromium', '/usr/bin/chromium-browser'].find((p) => existsSync(p));

/** Width, height and the inflated image data of a PNG (enough to tell a blank page from a page). */
function png(buf: Buffer): { width: number; height: number; data: Buffer } {
  assert.equal(buf.subarray(1, 4).toString('latin1'), 'PNG', 'a PNG file');
  let at = 8;
  let width = 0, height = 0;
  const idat: Buffer[] = [];
  while (at < buf.length) {
    const len = buf.readUInt32BE(at);
    const type = buf.toString('latin1', at + 4, at + 8);
    const body = buf.subarray(at + 8, at + 8 + len);
    if (type === 'IHDR') { width = body.readUInt32BE(0); height = body.readUInt32BE(4); }
    if (type === 'IDAT') idat.push(body);
    at += 12 + len;
  }
  return { width, height, data: inflateSync(Buffer.concat(idat)) };
}

function shoot(html: string): { width: number; height: number; distinct: number } {
  const dir = mkdtempSync(join(tmpdir(), 'deid-shot-'));
  writeFileSync(join(dir, 'page.html'), html);
  const r = spawnSync(CHROMIUM!, ['--headless', '--no-sandbox', '--disable-gpu', '--hide-scrollbars', `--user-data-dir=${join(dir, 'profile')}`,
    `--screenshot=${join(dir, 'shot.png')}`, '--window-size=1000,1200', `file://${join(dir, 'page.html')}`], { encoding: 'utf8', timeout: 60_000 });
  assert.ok(existsSync(join(dir, 'shot.png')), `chromium wrote a screenshot (exit ${r.status}: ${r.stderr.slice(-300)})`);
  const p = png(readFileSync(join(dir, 'shot.png')));
  return { width: p.width, height: p.height, distinct: new Set(p.data).size };
}

test('the audit report renders in headless chromium', { skip: CHROMIUM ? false : 'chromium is not installed (apt-get install chromium)', timeout: 120_000 }, () => {
  const t0 = Date.UTC(2026, 9, 1, 9);
  const entries: AuditEntry[] = [];
  for (let d = 0; d < 7; d++) {
    entries.push({ type: 'request', seq: 2 * d + 1, time: new Date(t0 + d * 86_400_000).toISOString(), client: 'acme', route: 'retrieve', status: 200, outcome: 'ok', bytes: 1e6 * (d + 1), instances: 10 * (d + 1) });
    entries.push({ type: 'study', seq: 2 * d + 2, time: new Date(t0 + d * 86_400_000).toISOString(), client: 'acme', study: `1.2.3.${d}`, patientRef: 'P-000000000000000000000001', instances: 10 * (d + 1) });
  }
  const opts = { client: 'acme', since: t0 - 86_400_000, until: t0 + 8 * 86_400_000, integrity: { ok: true, text: 'intact' } };
  const page = shoot(renderReport(reportData(entries, opts), opts));
  const blank = shoot('<!doctype html><html><body></body></html>');
  assert.equal(page.width, 1000);
  assert.ok(page.distinct > 3 * Math.max(1, blank.distinct) && page.distinct > 40, `the report is drawn (${page.distinct} distinct byte values, blank page ${blank.distinct})`);
});
