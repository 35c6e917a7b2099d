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
import { renderReport, reportData } from '../../src/audit/report.js';
import type { AuditEntry } from '../../src/audit/read.js';
import { decodePng } from '../helpers/multipart.js';

const CHROMIUM = ['/usr/bin/chromium', '/usr/bin/chromium-browser'].find((p) => existsSync(p));

/** Pixels of one colour (within a small tolerance for antialiasing): count and the columns they fill. */
function colourIn(img: { width: number; height: number; channels: number; data: Buffer }, hex: string): { count: number; columns: Map<number, number> } {
  const [r, g, b] = [1, 3, 5].map((i) => Number.parseInt(hex.slice(i, i + 2), 16));
  const columns = new Map<number, number>();
  let count = 0;
  for (let y = 0; y < img.height; y++) {
    for (let x = 0; x < img.width; x++) {
      const o = (y * img.width + x) * img.channels;
      if (Math.abs(img.data[o]! - r!) <= 3 && Math.abs(img.data[o + 1]! - g!) <= 3 && Math.abs(img.data[o + 2]! - b!) <= 3) {
        count++;
        columns.set(x, (columns.get(x) ?? 0) + 1);
      }
    }
  }
  return { count, columns };
}

function shoot(html: string): ReturnType<typeof decodePng> & { distinct: number } {
  const dir = mkdtempSync(join(tmpdir(), 'deid-shot-'));
  writeFileSync(join(dir, 'page.html'), html);
  const r = spawnSync(CHROMIUM!, ['--headless', '--no-sandbox', '--disable-gpu', '--hide-scrollbars', '--disable-background-networking', '--disable-component-update', '--no-first-run', `--user-data-dir=${join(dir, 'profile')}`,
    `--screenshot=${join(dir, 'shot.png')}`, '--window-size=1000,1400', `file://${join(dir, 'page.html')}`], { encoding: 'utf8', timeout: 60_000 });
  assert.ok(existsSync(join(dir, 'shot.png')), `chromium wrote a screenshot (exit ${r.status}: ${r.stderr.slice(-300)})`);
  const p = decodePng(readFileSync(join(dir, 'shot.png')), { anyFilter: true });
  return { ...p, distinct: new Set(p.data).size };
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
  // The chart, as drawn: one panel per figure in its colour; instances and bytes grow day by
  // day (10..70 instances, 1..7 MB), so the bars of those panels are taller from left to right.
  for (const [figure, colour, grows] of [['studies', '#2f6fb3', false], ['instances', '#6b3fa0', true], ['bytes', '#b35c00', true]] as const) {
    const { count, columns } = colourIn(page, colour);
    assert.ok(count > 500, `the ${figure} panel's bars are on the screen (${count} pixels of ${colour})`);
    assert.equal(colourIn(blank, colour).count, 0, `${colour} is not on a blank page`);
    // Bars are runs of adjacent columns; their heights in screen order.
    const xs = [...columns.keys()].sort((a, b) => a - b);
    const bars: number[] = [];
    xs.forEach((x, i) => { if (i === 0 || x !== xs[i - 1]! + 1) bars.push(0); bars[bars.length - 1] = Math.max(bars[bars.length - 1]!, columns.get(x)!); });
    assert.equal(bars.length, 7, `${figure}: seven bars, one per day (${bars.join(', ')})`);
    if (grows) assert.ok(bars.every((h, i) => i === 0 || h > bars[i - 1]!), `${figure}: each day's bar is taller than the day before (${bars.join(', ')})`);
    else assert.ok(bars.every((h) => Math.abs(h - bars[0]!) <= 1), `${figure}: one study a day, bars of one height (${bars.join(', ')})`);
  }
});
