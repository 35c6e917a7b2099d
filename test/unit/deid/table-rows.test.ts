/**
 * Every row of PS3.15 Table E.1-1, for the Basic Profile and for each option on its own:
 * the kitchen-sink fixture plants a value in every attribute the table lists, and the
 * output must show the action the row prescribes (docs/deid-rules.md). The expectation is
 * derived here from the row's codes, independently of the plan compiler.
 */
import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { inflateRawSync } from 'node:zlib';
import { readHeaderSync } from '../../../src/dicom/part10.js';
import { toJsonModel, type JsonModel } from '../../../src/dicom/to-json.js';
import { deidentifyPart10Buffer } from '../../../src/deid/index.js';
import type { OptionName } from '../../../src/deid/table.js';
import { Pseudonymizer } from '../../../src/pseudonym/pseudonymizer.js';
import { engine, fixtures } from '../../helpers/fixtures.js';

interface Row { tag: string; keyword: string | null; basic: string; [col: string]: unknown }
const table = JSON.parse(readFileSync(new URL('../../../src/data/ps3.15-table-e1-1.json', import.meta.url), 'utf8')) as Row[];
const dict = JSON.parse(readFileSync(new URL('../../../src/data/dicom-dictionary.json', import.meta.url), 'utf8')) as Record<string, { vr: string | null }>;

const COLUMNS: Record<string, string> = {
  retainSafePrivate: 'rtnSafePriv', retainUIDs: 'rtnUIDs', retainDeviceIdentity: 'rtnDevId',
  retainInstitutionIdentity: 'rtnInstId', retainPatientCharacteristics: 'rtnPatChars',
  retainLongitudinalFullDates: 'rtnLongFullDates', retainLongitudinalModifiedDates: 'rtnLongModifDates',
  cleanDescriptors: 'cleanDesc', cleanStructuredContent: 'cleanStructCont', cleanGraphics: 'cleanGraph',
};

type Expect = 'absent' | 'empty' | 'dummy' | 'uid' | 'keep' | 'keepValid' | 'shift' | 'present' | 'pseudonym' | 'sequence';

/** The documented rules (docs/deid-rules.md), stated from the row's codes. */
function expected(row: Row, vr: string, options: string[]): Expect {
  if (row.tag === '(0010,0010)' || row.tag === '(0010,0020)') return 'pseudonym';
  const codes = options.map((o) => ({ o, c: row[COLUMNS[o]!] as string | null })).filter((x) => x.c);
  const c = codes.find((x) => x.c === 'C') ?? codes[0];
  if (c) {
    if (c.c === 'K') return vr === 'SQ' ? 'sequence' : 'keep';
    if (vr === 'SQ') return 'sequence';
    if (c.o === 'retainLongitudinalModifiedDates') return vr === 'DA' || vr === 'DT' ? 'shift' : vr === 'TM' || vr === 'SH' ? 'keepValid' : 'absent';
    if (['OB', 'OW', 'UN'].includes(vr) || vr.includes(' or ')) return 'absent';
    if (vr === 'PN' || vr === 'AE') return 'dummy';
    return 'present';
  }
  switch (row.basic) {
    case 'X': return 'absent';
    case 'Z': return 'empty';
    case 'X/Z': return vr === 'SQ' && row.tag !== '(0040,0555)' ? 'absent' : 'empty';
    case 'K': return vr === 'SQ' ? 'sequence' : 'keep';
    case 'U': return vr === 'UI' ? 'uid' : 'sequence';
    case 'X/Z/U*': return 'sequence';
    default: return vr === 'SQ' ? 'sequence' : vr === 'UI' ? 'uid' : 'dummy'; // D, Z/D, X/D, X/Z/D
  }
}

function text(attr: JsonModel[string] | undefined): string {
  return JSON.stringify(attr ?? null).toUpperCase();
}

function isEmpty(attr: JsonModel[string]): boolean {
  return attr.Value === undefined && attr.InlineBinary === undefined;
}

function addDays(da: string, days: number): string {
  const t = Date.UTC(+da.slice(0, 4), +da.slice(4, 6) - 1, +da.slice(6, 8)) + days * 86_400_000;
  const d = new Date(t);
  return `${d.getUTCFullYear()}${String(d.getUTCMonth() + 1).padStart(2, '0')}${String(d.getUTCDate()).padStart(2, '0')}`;
}

const ALL = Object.keys(COLUMNS) as OptionName[];
const PROFILES: OptionName[][] = [
  [], ...ALL.map((o) => [o]),
  ALL.filter((o) => o !== 'retainLongitudinalFullDates'),
  ALL.filter((o) => o !== 'retainLongitudinalModifiedDates'),
];

describe('Table E.1-1, row by row', async () => {
  const fx = await fixtures();
  const sink = fx.files.find((f) => f.meta.kind === 'kitchen-sink' || f.meta.file.startsWith('kitchen'));
  assert.ok(sink, 'the fixture set has a kitchen-sink instance');
  const patient = fx.manifest.patients.find((p) => p.studies.includes(sink.meta.study))!;
  const input = toJsonModel(readHeaderSync(sink.bytes, inflateRawSync).elements);

  for (const options of PROFILES) {
    test(`${options.length === 0 ? 'Basic Profile' : options.length === 1 ? options[0] : `${options.length} options together`}: every planted row gets its action`, async () => {
      const ctx = engine(options);
      const out = toJsonModel(readHeaderSync(await deidentifyPart10Buffer(sink.bytes, ctx), inflateRawSync).elements);
      const offset = ctx.pseudonymizer.dateOffsetDays(Pseudonymizer.patientKey(patient.id, patient.issuer, patient.name, sink.meta.study));
      const problems: string[] = [];
      let checked = 0;
      for (const row of table) {
        if (row.tag.includes('x') || row.tag.startsWith('(0002')) continue;
        const key = row.tag.replace(/[(),]/g, '').toUpperCase();
        const planted = fx.manifest.rows[row.tag];
        if (planted === undefined || !(key in input)) continue;
        const vr = dict[row.tag]?.vr ?? 'UN';
        const want = expected(row, vr, options);
        const got = out[key];
        checked++;
        const bad = (why: string): void => { problems.push(`${row.tag} ${row.keyword} [${row.basic}] expected ${want}: ${why}`); };
        switch (want) {
          case 'absent': if (got) bad('present'); break;
          case 'empty': if (!got) bad('absent'); else if (!isEmpty(got) && !(got.Value?.length === 0)) bad('not empty'); break;
          case 'dummy': case 'pseudonym':
            if (!got) bad('absent');
            else if (isEmpty(got)) bad('empty');
            else if (planted.length >= 4 && text(got).includes(planted.toUpperCase())) bad('still holds the planted value');
            break;
          case 'uid': {
            const v = got?.Value?.[0];
            if (typeof v !== 'string' || !/^2\.25\.\d+$/.test(v) || v === planted) bad(`not a mapped UID`);
            break;
          }
          case 'keep': if (!got || text(got) !== text(input[key])) bad('changed'); break;
          case 'keepValid': {
            // A time (HHMMSS.F) or a time-zone offset (+HHMM) is kept; anything else is emptied.
            const valid = vr === 'TM' ? /^\d{2,6}(\.\d+)?$/.test(planted) : /^[+-]\d{4}$/.test(planted);
            if (valid ? !got || text(got) !== text(input[key]) : !got || !isEmpty(got)) bad(valid ? 'changed' : 'not emptied');
            break;
          }
          case 'present': if (!got) bad('absent'); break;
          case 'sequence': if (!got || got.vr !== 'SQ') bad('sequence missing'); break;
          case 'shift': {
            const v = got?.Value?.[0];
            const orig = input[key]?.Value?.[0];
            if (typeof v !== 'string' || typeof orig !== 'string') { bad('no value'); break; }
            const want8 = addDays(orig.slice(0, 8), offset);
            if (v.slice(0, 8) !== want8 || v.slice(8) !== orig.slice(8)) bad('not shifted by the patient offset');
            break;
          }
        }
      }
      assert.ok(checked >= 600, `only ${checked} rows were planted and checked`);
      assert.deepEqual(problems, []);
    });
  }
});
