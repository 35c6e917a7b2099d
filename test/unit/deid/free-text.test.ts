/**
 * The safe-word cleaner (issue 13, src/deid/free-text.ts and its use by the scrubber and the
 * engine): names, places and numbers that identify are removed, clinical words stay. Measured on
 * a marked test set of 420 values (test/fixtures/free-text-set.ts): recall (identifying spans
 * removed) and utility (clinical words kept); cross-checked on ../shared/corpus/free-text.md.
 */
import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync, readFileSync } from 'node:fs';
import { inflateRawSync } from 'node:zlib';
import { cleanFreeText, freeTextVersion, REDACTED_WORD } from '../../../src/deid/free-text.js';
import { identifierPieces, scrubberFor } from '../../../src/deid/scrub.js';
import { deidentifyPart10Buffer } from '../../../src/deid/part10.js';
import { readInstanceSync } from '../../../src/dicom/part10.js';
import { part10View } from '../../../src/pixels/views.js';
import { createEngineContext } from '../../../src/deid/index.js';
import { deidentifyJson } from '../../../src/deid/json.js';
import { encodePart10, type El } from '../../helpers/dicom-builder.js';
import { freeTextSet, type MarkedValue } from '../../fixtures/free-text-set.js';

const SHARED = new URL('../../../../shared/corpus/free-text.md', import.meta.url).pathname;
const words = (x: string): string[] => x.split(/[^\p{L}\p{N}]+/u).filter(Boolean).map((w) => w.toLowerCase());

/** Recall and utility of a cleaner over marked values; the misses, for messages. */
function measure(values: readonly MarkedValue[], clean: (v: string) => string): { recall: number; utility: number; leaks: string[]; lost: string[] } {
  let spans = 0, removed = 0, clinical = 0, kept = 0;
  const leaks: string[] = [], lost: string[] = [];
  for (const v of values) {
    const out = clean(v.value);
    const left = new Set(words(out));
    for (const s of v.spans) {
      spans++;
      // A span is gone when none of its words is left; a phrase span ("§Dr Young": the first of
      // two occurrences) when the phrase is.
      const gone = s.startsWith('§') ? !out.includes(s.slice(1)) : !out.toLowerCase().includes(s.toLowerCase()) && words(s).filter((w) => w.length > 1).every((w) => !left.has(w));
      if (gone) removed++; else leaks.push(`${v.value} -> ${out} [${s}]`);
    }
    for (const w of v.clinical) {
      clinical++;
      if (left.has(w.toLowerCase())) kept++; else lost.push(`${w} in ${v.value} -> ${out}`);
    }
  }
  return { recall: removed / spans, utility: kept / clinical, leaks, lost };
}

describe('free text: keep what is known to be safe, remove the rest', () => {
  const scrub = scrubberFor([]);

  test('the marked test set: every identifying span removed, at least 90 % of clinical words kept', (t) => {
    const set = freeTextSet();
    assert.ok(set.length >= 400);
    const m = measure(set, (v) => scrub.scrub(v));
    t.diagnostic(`recall ${(100 * m.recall).toFixed(1)} %, utility ${(100 * m.utility).toFixed(1)} % over ${set.length} values`);
    assert.deepEqual(m.leaks, [], 'every identifying span removed');
    assert.ok(m.utility >= 0.9, `utility ${m.utility}: ${m.lost.slice(0, 10).join('; ')}`);
  });

  test('cross-check: ../shared/corpus/free-text.md', { skip: !existsSync(SHARED) && 'no ../shared beside the checkout' }, (t) => {
    const rows = readFileSync(SHARED, 'utf8').split('\n').filter((l) => l.startsWith('| ') && !/^\| (attribute|---)/.test(l)).map((l) => l.split('|').map((x) => x.trim()));
    assert.ok(rows.length >= 15);
    const values: MarkedValue[] = rows.map(([, attribute, value, marked]) => {
      // "Young (the first; the second is a word)", "Rose (both)", "(none: …)": the spans before any bracket.
      let spans = marked!.startsWith('(') ? [] : marked!.replace(/\s*\(.*$/, '').split(/,\s*/).filter(Boolean);
      // "Young (the first; the second is a word)": the first occurrence, with the word before it.
      if (/the first/.test(marked!)) spans = spans.map((sp) => { const at = value!.indexOf(sp); return `§${value!.slice(0, at + sp.length).split(/\s+/).slice(-2).join(' ')}`; });
      const clinical = words(value!).filter((w) => /\p{L}{2,}/u.test(w) && !spans.some((s) => words(s).includes(w)));
      return { attribute: attribute!, value: value!, spans, clinical };
    });
    const m = measure(values, (v) => scrub.scrub(v));
    t.diagnostic(`recall ${(100 * m.recall).toFixed(1)} %, utility ${(100 * m.utility).toFixed(1)} % over ${values.length} values`);
    assert.deepEqual(m.leaks, []);
    assert.ok(m.utility >= 0.9, m.lost.join('; '));
    // The words the corpus says to keep.
    assert.match(scrub.scrub("Dr Young reviewed; Young's modulus phantom"), /Young's modulus phantom$/);
    assert.equal(scrub.scrub("Jehovah's Witness - no blood products"), "Jehovah's Witness - no blood products");
    assert.equal(scrub.scrub('BX PROSTATE - Gleason 3+4 per path'), 'BX PROSTATE - Gleason 3+4 per path');
    assert.match(scrub.scrub('Parkinson protocol, DaTscan, per Dr. Hernandez-Ruiz'), /^Parkinson protocol, DaTscan, per Dr\. \[REDACTED\]$/);
  });

  test('names that are also words go where the context makes them a name, and stay where they are words', () => {
    const cases: [string, string[], string[]][] = [
      ['Cor reformat 3mm - f/u for Grace Hall', ['Grace', 'Hall'], ['Cor reformat 3mm', 'f/u for']],
      ['Head CT - Rose protocol (Dr Rose, neuro)', ['Rose'], ['Head CT', 'protocol', 'neuro']],
      ['gray matter T2 hyperintensity', [], ['gray matter T2 hyperintensity']],
      ['Bell palsy follow-up', [], ['Bell palsy follow-up']],
      ['ordered by Bishop', ['Bishop'], ['ordered by']],
      ['fell at home, wife Carol reports LOC', ['Carol'], ['fell at home', 'reports LOC']],
      ['Pt: Hope. CT HEAD', ['Hope'], ['CT HEAD']],
      ['Referring SMITH^JOHN', ['SMITH', 'JOHN'], ['Referring']],
      ['CT chest - Grace Young Memorial', ['Grace', 'Young', 'Memorial'], ['CT chest']],
      ['seen by Dr van Dijk', ['van', 'Dijk'], ['seen by Dr']],
      ['Per radiologist (A. Kumar)', ['Kumar', 'A.'], ['Per radiologist']],
      // Forms real files carry (issue 16): a Siemens exam tree, a weekday with a day.month date.
      ['HEAD^Harms', ['Harms'], ['HEAD^']],
      ['BORJAN GAGOSKI^Normal Volunteer Protocol', ['BORJAN', 'GAGOSKI'], ['Normal Volunteer Protocol']],
      ['THURSDAY 4.12', ['THURSDAY', '4.12'], []],
      // Vendors' protocol names keep their words: compounds of safe parts, counts with their word.
      ['Ax fMRI HB8 72sl int asc', [], ['Ax fMRI HB8 72sl int asc']],
      ['DWI_dir80_AP_TRACEW', [], ['DWI_dir80_AP_TRACEW']],
      ['relCBF (PCASL)', [], ['relCBF (PCASL)']],
      ['epiRT IntAsc GD33', [], ['epiRT IntAsc GD33']],
      ['(JohnSmith) room 412B', ['JohnSmith', '412B'], ['room']],
    ];
    for (const [text, gone, kept] of cases) {
      const out = scrub.scrub(text);
      for (const g of gone) assert.ok(!new RegExp(`(?<![\\p{L}])${g.replace('.', '\\.')}(?![\\p{L}])`, 'u').test(out), `"${g}" left in ${JSON.stringify(out)}`);
      for (const k of kept) assert.ok(out.includes(k), `"${k}" lost from ${JSON.stringify(out)}`);
    }
  });

  test('real forms (issue 16): a name hidden in the Patient ID that reappears in a descriptor; UIDs in SR text go whole', () => {
    const scrub = scrubberFor(identifierPieces(['12343@hucheng']));
    assert.equal(scrub.scrub('Cheng test'), `${REDACTED_WORD} test`);
    assert.equal(scrub.scrub('hucheng 12343'), REDACTED_WORD);
    const uid = '1.3.12.2.1107.5.2.43.66044.2019120314422358624730876.0.0.0';
    for (const t of [`Series UID: ${uid}`, `(${uid})`, `UID=${uid}.`, `Source: ${uid}, done`]) {
      const out = cleanFreeText(t);
      assert.ok(!/\d{3,}/.test(out), `a piece of the UID (the scanner's serial 66044) left in ${JSON.stringify(out)}`);
    }
  });

  test('numbers: measurements, parameters and scores stay; records, rooms, accounts, years and phones go', () => {
    for (const t of ['slice 2.5 mm, 120 kV', 'TR 2000 TE 90', 'DWI b=1000 s/mm2', 'BI-RADS 4A', 'Gleason 3+4', 'Series 3 of 12', 'Lesion 1.2 x 0.8 cm', 'L4-L5 disc', 'GCS 14', '18F-FDG 350 MBq']) {
      assert.equal(scrub.scrub(t), t, t);
    }
    for (const [t, gone] of [['room 412B', '412B'], ['acct 55102877', '55102877'], ['Hodgkin lymphoma 2009, s/p ABVD', '2009'], ['bed 14', '14'], ['call 617 555 0199', '0199'], ['MRN 4821377', '4821377'], ['DOB 3/4/1950', '1950']] as const) {
      assert.ok(!scrub.scrub(t).includes(gone), `${t} -> ${scrub.scrub(t)}`);
    }
  });

  test('no over-redaction of clinical words and decimals (issue 16): a station named "CT", "3.000000"', () => {
    assert.equal(scrubberFor(['000000', 'CT', 'Doe']).scrub('CT CHEST/PLAN 3.000000 Doe'), `CT CHEST/PLAN 3.000000 ${REDACTED_WORD}`);
    // A decimal's trailing zeros are not digits of an identifier, beside a unit too; a long number still is.
    assert.equal(cleanFreeText('slice 3.000000 mm'), 'slice 3.000000 mm');
    assert.equal(cleanFreeText('slice 12345678.5 mm'), `slice ${REDACTED_WORD} mm`);
  });

  test('a run of redacted words is one marker; what separates kept words is kept', () => {
    assert.equal(cleanFreeText('pt Jonathan Reyes c/o headache'), `pt ${REDACTED_WORD} c/o headache`);
    assert.equal(cleanFreeText('(Okafor) CT'), `(${REDACTED_WORD}) CT`);
  });

  test('hospital IT extends the lists: extra words kept, and words always removed', () => {
    assert.match(cleanFreeText('Thorax p.a. und seitlich'), /REDACTED/, 'German is not on the shipped lists');
    assert.equal(cleanFreeText('Thorax p.a. und seitlich', { keep: new Set(['p.a', 'und', 'seitlich']) }), 'Thorax p.a. und seitlich');
    assert.equal(cleanFreeText('CT HEAD Lakeside protocol', { remove: new Set(['lakeside']) }), `CT HEAD ${REDACTED_WORD} protocol`);
    assert.equal(cleanFreeText('CT HEAD routine', { remove: new Set(['routine']) }), `CT HEAD ${REDACTED_WORD}`);
  });

  test('the De-identification Method names the cleaner and the versions of its lists', () => {
    assert.match(freeTextVersion(), /^safe-words-1 \(clinical-2\+cid-2026\+scowl50\+names-1\)$/);
  });

  test('the engine: every C text attribute and SR text under the options; local code meanings cleaned, standard ones kept', async () => {
    const ctx = createEngineContext({ clientId: 'c', profile: { options: ['cleanDescriptors', 'cleanStructuredContent'], freeText: { keep: ['lakeside'] } }, masterSecret: Buffer.alloc(32, 7) });
    const item = (scheme: string, meaning: string, text?: string): El[] => [
      { tag: 0x0040a043, vr: 'SQ', value: [[
        { tag: 0x00080100, vr: 'SH', value: 'X1' }, { tag: 0x00080102, vr: 'SH', value: scheme }, { tag: 0x00080104, vr: 'LO', value: meaning },
      ]] },
      ...(text ? [{ tag: 0x0040a160, vr: 'UT', value: text } as El] : []),
    ];
    const els: El[] = [
      { tag: 0x00080016, vr: 'UI', value: '1.2.840.10008.5.1.4.1.1.88.11' },
      { tag: 0x00080018, vr: 'UI', value: '1.2.3.4' },
      { tag: 0x00081030, vr: 'LO', value: 'MRI BRAIN W/WO - hx per Dr. Feldman' },
      { tag: 0x0008103e, vr: 'LO', value: 'Ax T2 FLAIR (repeat, Jonathan moved) Lakeside' },
      { tag: 0x00104000, vr: 'LT', value: 'daughter Lucia 617 555 0199' },
      { tag: 0x0020000d, vr: 'UI', value: '1.2.3' },
      { tag: 0x0020000e, vr: 'UI', value: '1.2.3.1' },
      { tag: 0x0040a730, vr: 'SQ', value: [item('DCM', 'Finding'), item('99LOCAL', 'Reviewed by Thornton', 'Nodule 6 mm, f/u per Dr Okafor')] },
    ];
    const out = readInstanceSync(await deidentifyPart10Buffer(encodePart10(els.sort((a, b) => a.tag - b.tag), { ts: 'explicitLE' }), ctx), inflateRawSync);
    const v = part10View(out.elements);
    assert.equal(v.str(0x00081030), `MRI BRAIN W/WO - hx per Dr. ${REDACTED_WORD}`);
    assert.equal(v.str(0x0008103e), `Ax T2 FLAIR (repeat, ${REDACTED_WORD} moved) Lakeside`, 'the client keeps "Lakeside"');
    assert.ok(!/Lucia|0199/.test(v.str(0x00104000) ?? ''), v.str(0x00104000));
    const [first, second] = v.items(0x0040a730);
    assert.equal(first!.items(0x0040a043)[0]!.str(0x00080104), 'Finding', 'a DCM code meaning is kept');
    assert.equal(second!.items(0x0040a043)[0]!.str(0x00080104), `Reviewed by ${REDACTED_WORD}`, 'a local code meaning is cleaned');
    assert.equal(second!.str(0x0040a160), `Nodule 6 mm, f/u per Dr ${REDACTED_WORD}`, 'SR text cleaned');
    assert.ok(v.str(0x00120063)!.includes(freeTextVersion()), 'the method names the cleaner');
    // Latin-1 text with no Specific Character Set (real files from many scanners, issue 16):
    // read as Latin-1 and cleaned, not refused; what cannot be written back in ASCII is emptied.
    const latin = readInstanceSync(await deidentifyPart10Buffer(encodePart10([
      { tag: 0x00080016, vr: 'UI', value: '1.2.840.10008.5.1.4.1.1.2' }, { tag: 0x00080018, vr: 'UI', value: '1.2.3.5' },
      { tag: 0x00081030, vr: 'LO', value: Buffer.from('CT THORAX - per Dr. M\u00fcller', 'latin1') },
      { tag: 0x0008103e, vr: 'LO', value: Buffer.from('Thoraxr\u00f6ntgen', 'latin1') },
      { tag: 0x0020000d, vr: 'UI', value: '1.2.3' }, { tag: 0x0020000e, vr: 'UI', value: '1.2.3.1' },
    ], { ts: 'explicitLE' }), ctx), inflateRawSync);
    const lv = part10View(latin.elements);
    assert.equal(lv.str(0x00081030), `CT THORAX - per Dr. ${REDACTED_WORD}`);
    assert.ok(!/ntgen/.test(lv.str(0x0008103e) ?? ''), lv.str(0x0008103e));
    // The DICOM JSON path (metadata, QIDO rows) cleans the same way.
    const json = deidentifyJson({
      '00081030': { vr: 'LO', Value: ['MRI BRAIN W/WO - hx per Dr. Feldman'] },
      '0008103E': { vr: 'LO', Value: ['Ax T2 FLAIR (repeat, Jonathan moved) Lakeside'] },
      '0020000D': { vr: 'UI', Value: ['1.2.3'] },
    }, ctx, { writeMarkers: false });
    assert.deepEqual(json['00081030']?.Value, [v.str(0x00081030)]);
    assert.deepEqual(json['0008103E']?.Value, [v.str(0x0008103e)]);
  });
});
