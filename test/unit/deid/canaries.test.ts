/**
 * The rule of the canary corpus: under the Basic Profile no planted value (name, ID, text,
 * date, UID) survives in any byte, in either encoding; under the dates option dates appear
 * only shifted, a patient's intervals survive exactly; pseudonyms are consistent within a
 * client and unlinkable across clients.
 */
import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync, readFileSync, readdirSync } from 'node:fs';
import { inflateRawSync } from 'node:zlib';
import { readHeaderSync } from '../../../src/dicom/part10.js';
import { toJsonModel, type JsonModel } from '../../../src/dicom/to-json.js';
import { deidentifyJson, deidentifyPart10Buffer } from '../../../src/deid/index.js';
import { Pseudonymizer } from '../../../src/pseudonym/pseudonymizer.js';
import { dcmjsRead, engine, findCanaries, fixtures, normalizeJson } from '../../helpers/fixtures.js';
import { encodePart10 } from '../../helpers/dicom-builder.js';

const first = (m: JsonModel, key: string): unknown => m[key]?.Value?.[0];
const header = (b: Buffer): JsonModel => toJsonModel(readHeaderSync(b, inflateRawSync).elements);

function addDays(da: string, n: number): string {
  const d = new Date(Date.UTC(+da.slice(0, 4), +da.slice(4, 6) - 1, +da.slice(6, 8)) + n * 86_400_000);
  return `${d.getUTCFullYear()}${String(d.getUTCMonth() + 1).padStart(2, '0')}${String(d.getUTCDate()).padStart(2, '0')}`;
}

function days(da: string): number {
  return Date.UTC(+da.slice(0, 4), +da.slice(4, 6) - 1, +da.slice(6, 8)) / 86_400_000;
}

describe('canaries', async () => {
  const fx = await fixtures();

  test('Basic Profile: no planted string, date or UID in any Part 10 output byte', async () => {
    const ctx = engine([]);
    const leaks: string[] = [];
    for (const f of fx.files) {
      const out = await deidentifyPart10Buffer(f.bytes, ctx);
      leaks.push(...findCanaries(out, fx.manifest).map((l) => `${f.meta.file}: ${l}`));
    }
    assert.deepEqual(leaks, []);
  });

  test('Basic Profile: no planted value in the de-identified DICOM JSON either', async () => {
    const ctx = engine([]);
    const leaks: string[] = [];
    for (const f of fx.files) {
      const json = deidentifyJson(normalizeJson(dcmjsRead(f.bytes).dict), ctx, { writeMarkers: true });
      leaks.push(...findCanaries(Buffer.from(JSON.stringify(json)), fx.manifest).map((l) => `${f.meta.file}: ${l}`));
    }
    assert.deepEqual(leaks, []);
  });

  test('the scan itself finds the canaries in the inputs (it can fail)', () => {
    const found = new Set(fx.files.flatMap((f) => findCanaries(f.bytes, fx.manifest)));
    const total = Object.keys(fx.manifest.canaries.strings).length + Object.keys(fx.manifest.canaries.dates).length + Object.keys(fx.manifest.canaries.uids).length;
    assert.equal(found.size, total);
  });

  test('modified dates: no planted date survives, and a patient\'s study interval is exact', async () => {
    const ctx = engine(['retainLongitudinalModifiedDates']);
    const leaks: string[] = [];
    const studyDates = new Map<string, { original: string; shifted: string }>();
    for (const f of fx.files) {
      const out = await deidentifyPart10Buffer(f.bytes, ctx);
      // A planted date may legitimately reappear when another date of this instance, shifted
      // by the patient's offset, lands on it; only those exact coincidences are excused.
      const p = fx.manifest.patients.find((x) => x.id === f.meta.patientId);
      const offset = p ? ctx.pseudonymizer.dateOffsetDays(Pseudonymizer.patientKey(p.id, p.issuer, p.name, f.meta.study)) : 0;
      const inputDates = new Set<string>();
      const walk = (m: JsonModel): void => {
        for (const a of Object.values(m)) {
          if (a.vr === 'SQ') for (const i of (a.Value ?? []) as JsonModel[]) walk(i);
          else if (a.vr === 'DA' || a.vr === 'DT') for (const v of a.Value ?? []) if (typeof v === 'string' && /^\d{8}/.test(v)) inputDates.add(v.slice(0, 8));
        }
      };
      walk(header(f.bytes));
      const coincidences = new Set([...inputDates].map((d) => addDays(d, offset)));
      leaks.push(...findCanaries(out, fx.manifest, ['strings', 'dates', 'uids'], coincidences).map((l) => `${f.meta.file}: ${l}`));
      const shifted = first(header(out), '00080020');
      if (typeof shifted === 'string' && f.meta.studyDate) studyDates.set(`${f.meta.patientId}|${f.meta.study}`, { original: f.meta.studyDate, shifted });
    }
    assert.deepEqual(leaks, []);
    const multi = fx.manifest.patients.find((p) => p.studies.length >= 2);
    assert.ok(multi, 'a patient with two studies');
    const [a, b] = multi.studies.map((s) => studyDates.get(`${multi.id}|${s}`)!);
    assert.ok(a && b, 'both studies have a shifted Study Date');
    assert.notEqual(a.shifted, a.original);
    assert.equal(days(b.shifted) - days(a.shifted), days(b.original) - days(a.original));
    const offset = days(a.shifted) - days(a.original);
    assert.ok(offset <= -365 && offset >= -3650, `offset ${offset} within the default range`);
  });

  test('full dates: dates are kept as they were', async () => {
    const ctx = engine(['retainLongitudinalFullDates']);
    const f = fx.files.find((x) => x.meta.studyDate)!;
    assert.equal(first(header(await deidentifyPart10Buffer(f.bytes, ctx)), '00080020'), f.meta.studyDate);
  });

  test('UIDs: consistent within a client (references stay intact), unlinkable across clients', async () => {
    const a = engine([], 'vendor-a');
    const b = engine([], 'vendor-b');
    const outA = new Map<string, JsonModel>();
    const outB = new Map<string, JsonModel>();
    for (const f of fx.files) {
      outA.set(f.meta.sop, header(await deidentifyPart10Buffer(f.bytes, a)));
      outB.set(f.meta.sop, header(await deidentifyPart10Buffer(f.bytes, b)));
    }
    // Same study → same pseudonymous Study Instance UID in every instance.
    for (const f of fx.files) {
      const siblings = fx.files.filter((x) => x.meta.study === f.meta.study).map((x) => first(outA.get(x.meta.sop)!, '0020000D'));
      assert.equal(new Set(siblings).size, 1, `one pseudonymous study UID for ${f.meta.file}`);
    }
    // A reference inside a sequence equals the referenced instance's new SOP Instance UID.
    const newSops = new Set([...outA.values()].map((m) => first(m, '00080018')));
    let refs = 0;
    for (const m of outA.values()) {
      for (const item of (m['00082112']?.Value ?? []) as JsonModel[]) {
        const ref = first(item, '00081155');
        if (fx.files.some(() => true) && typeof ref === 'string') { refs++; assert.ok(newSops.has(ref) || /^2\.25\./.test(ref)); }
      }
    }
    assert.ok(refs > 0, 'fixtures carry Source Image Sequence references');
    // Two clients never share a pseudonym.
    const uidsA = new Set([...outA.values()].flatMap((m) => ['0020000D', '0020000E', '00080018', '00100020'].map((k) => JSON.stringify(first(m, k)))));
    for (const m of outB.values()) {
      for (const k of ['0020000D', '0020000E', '00080018', '00100020']) assert.ok(!uidsA.has(JSON.stringify(first(m, k))), `${k} differs across clients`);
    }
  });

  test('cross-check: the shared public corpus (when ../shared is beside the checkout)', { skip: !existsSync(new URL('../../../../shared/corpus/public/manifest.json', import.meta.url)) }, async () => {
    const dir = new URL('../../../../shared/corpus/public/', import.meta.url);
    const manifest = JSON.parse(readFileSync(new URL('manifest.json', dir), 'utf8'));
    const ctx = engine([]);
    const leaks: string[] = [];
    for (const name of readdirSync(dir).filter((n) => n.endsWith('.dcm'))) {
      const out = await deidentifyPart10Buffer(readFileSync(new URL(name, dir)), ctx);
      leaks.push(...findCanaries(out, manifest).map((l) => `${name}: ${l}`));
    }
    assert.deepEqual(leaks, []);
  });
});

describe('gap rules: issuers of identifiers (issue 16)', () => {
  // The HL7 v2 Hierarchic Designator Macro (Local Namespace / Universal Entity ID) and the issuer
  // sequences that carry it are not in Table E.1-1; they name the hospital's namespaces.
  const els = (): Parameters<typeof encodePart10>[0] => [
    { tag: 0x00080016, vr: 'UI', value: '1.2.840.10008.5.1.4.1.1.7' },
    { tag: 0x00080018, vr: 'UI', value: '1.2.826.0.1.3680043.9.7433.77.1' },
    { tag: 0x00080050, vr: 'SH', value: 'ACC12345' },
    { tag: 0x00080051, vr: 'SQ', value: [[{ tag: 0x00400031, vr: 'UT', value: 'STMARYS-RIS' }, { tag: 0x00400032, vr: 'UT', value: 'http://stmarys.example/accessions' }, { tag: 0x00400033, vr: 'CS', value: 'URI' }]] },
    { tag: 0x00100020, vr: 'LO', value: 'MRN0042' },
    { tag: 0x00100024, vr: 'SQ', value: [[{ tag: 0x00400032, vr: 'UT', value: 'http://test.org/mrns' }, { tag: 0x00400033, vr: 'CS', value: 'URI' }]] },
    { tag: 0x0020000d, vr: 'UI', value: '1.2.826.0.1.3680043.9.7433.77.2' },
    { tag: 0x0020000e, vr: 'UI', value: '1.2.826.0.1.3680043.9.7433.77.3' },
    { tag: 0x00400036, vr: 'SQ', value: [[{ tag: 0x00400031, vr: 'UT', value: 'STMARYS-WARD7' }]] },
  ];
  const planted = ['STMARYS-RIS', 'http://stmarys.example/accessions', 'http://test.org/mrns', 'STMARYS-WARD7'];

  test('the Basic Profile removes them (no planted namespace in any output byte)', async () => {
    const out = (await deidentifyPart10Buffer(encodePart10(els(), { ts: 'explicitLE' }), engine([]))).toString('latin1');
    assert.deepEqual(planted.filter((p) => out.includes(p)), []);
    const m = header(Buffer.from(out, 'latin1'));
    for (const k of ['00080051', '00100024', '00400036']) assert.equal(m[k], undefined, k);
  });

  test('Retain Institution Identity keeps them, as it keeps the institution\'s name', async () => {
    const out = (await deidentifyPart10Buffer(encodePart10(els(), { ts: 'explicitLE' }), engine(['retainInstitutionIdentity']))).toString('latin1');
    assert.deepEqual(planted.filter((p) => !out.includes(p)), []);
  });
});
