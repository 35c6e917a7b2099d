/**
 * Outputs are valid DICOM to independent tools (issue 2): every output re-reads cleanly
 * with dcmjs and with dcmdump (dcmtk), and dciodvfy (dicom3tools) reports no error on an
 * output that it did not report on the input. Deflated files are inflated with dcmconv
 * first, because dciodvfy cannot read Deflated Explicit VR Little Endian.
 */
import { describe, test, before } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync, spawnSync } from 'node:child_process';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { deidentifyPart10Buffer } from '../../src/deid/index.js';
import type { OptionName } from '../../src/deid/table.js';
import { dcmjsRead, engine, fixtures } from '../helpers/fixtures.js';

const PROFILES: Record<string, OptionName[]> = {
  basic: [],
  'dates shifted, text cleaned, safe private kept': ['retainLongitudinalModifiedDates', 'cleanDescriptors', 'cleanStructuredContent', 'cleanGraphics', 'retainSafePrivate', 'retainPatientCharacteristics'],
};

/** dciodvfy's error lines, with quoted values removed so inputs and outputs compare. */
function iodErrors(path: string, dir: string): Set<string> {
  let file = path;
  const head = execFileSync('dcmdump', ['-q', '-M', '+P', '0002,0010', path], { encoding: 'latin1' });
  if (head.includes('1.2.840.10008.1.2.1.99') || /Deflated/i.test(head)) {
    file = join(dir, `inflated-${Math.random().toString(36).slice(2)}.dcm`);
    execFileSync('dcmconv', ['+te', path, file]);
  }
  const r = spawnSync('dciodvfy', [file], { encoding: 'latin1' });
  const text = `${r.stdout}\n${r.stderr}`;
  return new Set(text.split('\n').filter((l) => l.startsWith('Error')).map((l) => l.replace(/<[^>]*>\s*for value/g, '<> for value')));
}

describe('outputs re-read with dcmjs, dcmdump and dciodvfy', async () => {
  const fx = await fixtures();
  const dir = mkdtempSync(join(tmpdir(), 'deid-dcmtk-'));
  before(() => {
    for (const bin of ['dcmdump', 'dciodvfy', 'dcmconv']) {
      assert.equal(spawnSync('sh', ['-c', `command -v ${bin}`]).status, 0, `${bin} is installed (npm test installs dcmtk and dicom3tools)`);
    }
  });
  for (const [name, options] of Object.entries(PROFILES)) {
    const ctx = engine(options);
    for (const f of fx.files) {
      test(`${name}: ${f.meta.file}`, async () => {
        const out = await deidentifyPart10Buffer(f.bytes, ctx);
        const path = join(dir, `${name.replace(/\W+/g, '_')}-${f.meta.file}`);
        writeFileSync(path, out);
        const dump = spawnSync('dcmdump', ['-q', path], { encoding: 'latin1' });
        assert.equal(dump.status, 0, `dcmdump exit status (stderr: ${dump.stderr.slice(0, 200)})`);
        assert.ok(!/^E: /m.test(`${dump.stdout}${dump.stderr}`), 'dcmdump reports no error');
        assert.doesNotThrow(() => dcmjsRead(out));
        if (f.meta.kind === 'kitchen-sink' || f.meta.file.startsWith('kitchen')) return; // not a valid IOD by design
        const before = iodErrors(f.path, dir);
        const after = iodErrors(path, dir);
        assert.deepEqual([...after].filter((e) => !before.has(e)), [], 'dciodvfy: no new errors');
      });
    }
  }
});
