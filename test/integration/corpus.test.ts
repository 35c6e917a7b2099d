/**
 * The corpus runner (bench/corpus.ts, `npm run corpus`, issue 16): it counts what the offline
 * command did with each file, reads every output with dcmdump, compares dciodvfy's errors, and
 * scans outputs for values the profile must not let out. Run here on the generated fixtures
 * with a duplicate and a file that is not DICOM; the scanner is shown to find a leak when
 * there is one.
 */
import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { copyFileSync, mkdirSync, mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fixtures, engine } from '../helpers/fixtures.js';
import { leaksOf, needles, outputText } from '../../bench/corpus-scan.js';

const ROOT = new URL('../..', import.meta.url).pathname;
const RUNNER = new URL('../../bench/corpus.ts', import.meta.url).pathname;
const HAVE_DCMTK = spawnSync('dcmdump', ['--version']).status === 0;

interface Row { client: string; mb: number; seconds: number; filesIn: number; written: number; skipped: number; refused: number; refusedByCode: Record<string, number>; unreadable: number | null; newDciodvfyErrors: number | null; dciodvfyChecked: number; needles: number; leaks: number; mbPerSecond: number }

describe('the corpus runner', async () => {
  const fx = await fixtures();
  // Files every client receives under the default policy: CT and MR slices and an SR.
  const plain = fx.files.filter((f) => ['ct', 'sr', 'mr-undefined-length'].includes(f.meta.kind));

  test('counts files in, written, refused by code and skipped; dcmdump reads every output; no value leaks', { timeout: 300_000 }, () => {
    assert.ok(plain.length >= 2, 'fixtures with plain pixels');
    const dir = mkdtempSync(join(tmpdir(), 'deid-corpus-test-'));
    const input = join(dir, 'in');
    mkdirSync(input);
    plain.forEach((f, i) => copyFileSync(f.path, join(input, `${i}.dcm`)));
    copyFileSync(plain[0]!.path, join(input, 'z-again.dcm')); // the same SOP Instance UID twice
    writeFileSync(join(input, 'notes.txt'), 'not DICOM');
    const json = join(dir, 'corpus.json');
    const r = spawnSync(process.execPath, ['--import', 'tsx', RUNNER, '--clients', 'basic,options', '--dciodvfy', '2', '--json', json, input], { cwd: ROOT, encoding: 'utf8', timeout: 280_000 });
    assert.equal(r.status, 0, `${r.stdout}\n${r.stderr}`);
    const rows = (JSON.parse(readFileSync(json, 'utf8')) as { rows: Row[] }).rows;
    assert.deepEqual(rows.map((x) => x.client), ['basic', 'options']);
    for (const row of rows) {
      assert.equal(row.filesIn, plain.length + 2, row.client);
      assert.equal(row.written, plain.length, row.client);
      assert.deepEqual(row.refusedByCode, { DICOM_DUPLICATE: 1 }, row.client);
      assert.equal(row.skipped, 1, row.client);
      if (HAVE_DCMTK) assert.equal(row.unreadable, 0, row.client);
      assert.ok(row.needles > 20, `${row.client}: ${row.needles} values looked for`);
      assert.equal(row.leaks, 0, row.client);
      assert.ok(row.mb >= 0.01 && row.seconds > 0 && row.mbPerSecond > 0, `${row.mb} MB in ${row.seconds} s`);
    }
    assert.match(r.stdout, /\| in \| basic \| \d+ \| \d+ \| 1 \(DICOM_DUPLICATE 1\) \| 1 \|/);
  });

  test('the leak scan finds the values of an input that was not de-identified (it can fail)', () => {
    const f = plain[0]!;
    const ctx = engine([]);
    const values = needles(f.bytes, ctx);
    assert.ok(values.length > 5, values.length.toString());
    const scan = leaksOf([[f.path, f.path]], ctx, true);
    assert.equal(scan.leaks.length, scan.needles);
    assert.ok(values.every((v) => outputText(f.bytes).includes(v.toUpperCase())));
  });
});
