/**
 * Free-text cleaning (src/deid/scrub.ts) for Clean Descriptors / Clean Structured Content
 * (PS3.15 E.3.2, E.3.3): a data set's own identifiers, common identifying patterns and every
 * word no safe list knows are redacted; ordinary clinical text is left exactly as it was. Text
 * in another language than English is redacted unless the client's lists keep its words
 * (German "Thorax p.a. und seitlich" loses "und seitlich").
 */
import { test, describe } from 'node:test';
import assert from 'node:assert/strict';
import { dateForms, identifierPieces, REDACTED, scrubberFor, type Scrubber } from '../../../src/deid/scrub.js';

function scrubberOf(values: string[], birthDate?: string): Scrubber {
  return scrubberFor([...identifierPieces(values), ...(birthDate ? dateForms(birthDate) : [])].sort());
}

const NO_IDS = scrubberFor([]);

describe('scrub: the data set\'s identifiers', () => {
  const s = scrubberOf(['Doe^Jane^Mary Ann^Dr.^PhD', 'van der Berg^Pieter', 'MRN-004711', "O'Brien^Seán", 'Li^Wei', 'ACC20240001']);

  // Each identifier word is gone, and the words around it stay.
  const cases: Array<{ text: string; gone: string[]; kept: string[]; why: string }> = [
    { text: 'Jane Doe, follow-up', gone: ['Jane', 'Doe'], kept: [', follow-up'], why: 'PN components as words' },
    { text: 'JANE DOE follow-up', gone: ['JANE', 'DOE'], kept: ['follow-up'], why: 'upper case' },
    { text: 'jane doe follow-up', gone: ['jane', 'doe'], kept: ['follow-up'], why: 'lower case' },
    { text: 'pt li^wei', gone: ['li', 'wei'], kept: ['pt '], why: 'the whole PN value, any case' },
    { text: 'pt doe^jane^mary ann', gone: ['doe', 'jane', 'mary', 'ann'], kept: ['pt '], why: 'every component of a PN-shaped text' },
    { text: 'Mary Ann was seen', gone: ['Mary', 'Ann'], kept: [' was seen'], why: 'a multi-word component' },
    { text: 'seen: mary', gone: ['mary'], kept: ['seen: '], why: 'one word of a multi-word component' },
    { text: 'Mr Pieter van der Berg', gone: ['Pieter', 'van', 'der', 'Berg'], kept: ['Mr '], why: 'multi-word family name after a title' },
    { text: 'family Berg', gone: ['Berg'], kept: ['family '], why: 'one word of a multi-word family name' },
    { text: "O'BRIEN report", gone: ["O'BRIEN", 'BRIEN'], kept: [' report'], why: 'apostrophe in the name' },
    { text: 'SEÁN, 3rd visit', gone: ['SEÁN'], kept: [', 3rd visit'], why: 'non-ASCII letters, case-insensitive' },
    { text: 'ref MRN-004711.', gone: ['MRN', '004711'], kept: ['ref '], why: 'patient ID with punctuation' },
    { text: 'mrn-004711', gone: ['mrn', '004711'], kept: [], why: 'patient ID, lower case' },
    { text: 'Acc ACC20240001 done', gone: ['ACC20240001'], kept: [' done'], why: 'accession number' },
    { text: 'Wei Li', gone: ['Wei', 'Li'], kept: [], why: 'two-letter family name as a word' },
  ];
  for (const c of cases) {
    test(`${c.why}: ${JSON.stringify(c.text)}`, () => {
      const out = s.scrub(c.text);
      assert.ok(out.includes(REDACTED), out);
      for (const g of c.gone) assert.ok(!out.includes(g), `"${g}" left in ${JSON.stringify(out)}`);
      for (const k of c.kept) assert.ok(out.includes(k), `"${k}" lost from ${JSON.stringify(out)}`);
    });
  }

  const untouched: Array<{ text: string; why: string }> = [
    { text: 'Liver lesion, 2 cm', why: '"Li" inside "Liver"' },
    { text: 'CT CHEST WITH CONTRAST', why: 'no identifier' },
    { text: 'Annual screening', why: '"Ann" inside "Annual"' },
    { text: 'Doesn\'t apply', why: '"Doe" inside "Doesn\'t"' },
    { text: 'Weight 70 kg', why: '"Wei" inside "Weight"' },
  ];
  for (const c of untouched) {
    test(`not inside longer words — ${c.why}`, () => {
      assert.equal(s.scrub(c.text), c.text);
    });
  }

  test('words known to no safe list go too, identifiers of this data set or not (Bergamo, Janet, MRN-004711A)', () => {
    for (const t of ['Bergamo protocol', 'Janet', 'MRN-004711A']) {
      const out = s.scrub(t);
      assert.ok(out.includes(REDACTED) && !/Bergamo|Janet|004711/.test(out), out);
    }
    assert.equal(s.scrub('Bergamo protocol'), `${REDACTED} protocol`);
  });

  test('identifierPieces: whole values, PN components, words of 3+ letters, nothing shorter than 2', () => {
    const pieces = new Set(identifierPieces(['Doe^Jane^Mary Ann', 'Li^X', ' AB ']));
    for (const p of ['Doe^Jane^Mary Ann', 'Doe', 'Jane', 'Mary Ann', 'Mary', 'Ann', 'Li', 'AB']) assert.ok(pieces.has(p), `has "${p}"`);
    assert.ok(!pieces.has('X'), 'one-letter pieces would redact ordinary text');
    assert.ok(![...pieces].some((p) => p.trim() !== p || p === ''), 'pieces are trimmed and non-empty');
  });

  test('identifierPieces: the three component groups of a PN (alphabetic=ideographic=phonetic)', () => {
    const pieces = new Set(identifierPieces(['Yamada^Tarou=山田^太郎=やまだ^たろう']));
    for (const p of ['Yamada', 'Tarou', '山田', '太郎', 'やまだ', 'たろう']) assert.ok(pieces.has(p), `has "${p}"`);
    const out = scrubberFor([...pieces].sort()).scrub('患者 山田 太郎');
    assert.ok(!out.includes('山田') && !out.includes('太郎'), out);
  });

  test('regular-expression characters in identifiers are literal', () => {
    const t = scrubberOf(['A.B*C^(x)+', 'ID[1]']);
    // "AXB" is no identifier (the dot is literal): it goes only because no safe list knows it.
    assert.equal(t.scrub('AXB*C'), `${REDACTED}*C`);
    assert.equal(t.scrub('A.B*C here'), `${REDACTED} here`);
    assert.ok(!t.scrub('see ID[1]').includes('ID[1]'));
  });
});

describe('scrub: patterns, whatever the identifiers', () => {
  const cases: Array<{ text: string; gone: string[]; why: string }> = [
    { text: 'contact jane.doe+ct@example-hospital.org today', gone: ['jane.doe', 'example-hospital'], why: 'e-mail' },
    { text: 'mail: Ünal.Öz@klinik.de', gone: ['Ünal', 'klinik'], why: 'e-mail with non-ASCII letters' },
    { text: 'call +1 555 0100 22 after', gone: ['555', '0100'], why: 'international phone with spaces' },
    { text: 'tel (030) 1234-5678.', gone: ['030', '1234', '5678'], why: 'phone with area code in parentheses' },
    { text: 'phone 030/12345678', gone: ['12345678'], why: 'phone with slash' },
    { text: 'on 2024-03-01 done', gone: ['2024-03-01'], why: 'ISO date' },
    { text: 'on 2024/3/1 done', gone: ['2024/3/1'], why: 'year-first date with slashes' },
    { text: 'on 01/03/2024 done', gone: ['01/03/2024'], why: 'day/month/year' },
    { text: 'on 1.3.24 done', gone: ['1.3.24'], why: 'short dotted date' },
    { text: 'on 01-03-2024 done', gone: ['01-03-2024'], why: 'dashed date' },
    { text: 'on 20240301 done', gone: ['20240301'], why: 'DA form' },
    { text: 'on 1 March 2024 done', gone: ['March 2024'], why: 'day month-name year' },
    { text: 'on 3 Mar. 24 done', gone: ['Mar. 24'], why: 'abbreviated month with a dot' },
    { text: 'on March 1, 2024 done', gone: ['March 1', '2024'], why: 'month-name day, year' },
    { text: 'seen by Dr. Smith today', gone: ['Smith'], why: '"Dr. Name"' },
    { text: 'seen by Dr Smith today', gone: ['Smith'], why: '"Dr Name" without the dot' },
    { text: 'cc Prof. Müller-Lüdenscheidt', gone: ['Müller'], why: 'Prof. with a hyphenated non-ASCII name' },
    { text: 'ref. Mrs. Johnson Smythe', gone: ['Johnson', 'Smythe'], why: 'title and two names' },
    { text: 'record 123456789 attached', gone: ['123456789'], why: 'long digit run' },
  ];
  for (const c of cases) {
    test(`${c.why}: ${JSON.stringify(c.text)}`, () => {
      const out = NO_IDS.scrub(c.text);
      assert.ok(out.includes(REDACTED), `nothing redacted in ${JSON.stringify(out)}`);
      for (const g of c.gone) assert.ok(!out.includes(g), `"${g}" left in ${JSON.stringify(out)}`);
      // The text around the pattern survives (when a safe list knows it).
      if (!['mail:'].includes(c.text.split(' ')[0]!)) assert.equal(out.split(' ')[0], c.text.split(' ')[0]);
    });
  }

  test('the same text with and without identifiers redacts the same patterns', () => {
    const t = 'Dr. Smith, 2024-03-01, +1 555 0100 22';
    assert.equal(scrubberOf(['Nobody^Here']).scrub(t), NO_IDS.scrub(t));
  });
});

describe('scrub: ordinary clinical text is left unchanged', () => {
  const clinical = [
    'slice 2.5 mm, 120 kV, 10.50 mAs',
    'T1 3D',
    'C2-C3',
    'L4-L5 disc protrusion',
    'T2 FLAIR AX 5mm',
    'CT ABDOMEN/PELVIS W/O CONTRAST',
    'BP 120/80',
    'matrix 512 x 512, FOV 350 mm',
    'contrast 100 ml at 3.5 ml/s',
    'Series 3 of 12',
    'DWI b=1000 s/mm2',
    'TR 2000 TE 90',
    'Lesion 1.2 x 0.8 cm (prior 1.0 x 0.7 cm)',
    'BI-RADS 4A',
    'PET/CT 18F-FDG 350 MBq',
    'Dose 12.5 mGy, DLP 455.3 mGy*cm',
    'Ser 1001 Img 45',
  ];
  // Thin-slice reconstruction notation and table positions: decimals whose digits add up to 7+.
  const overRedacted = ['Axial 3.75/1.875', 'recon kernel B30f 1.25/0.625', 'Loc -123.45 +67.89 12.5'];
  for (const t of [...clinical, ...overRedacted]) {
    test(JSON.stringify(t), () => {
      assert.equal(NO_IDS.scrub(t), t);
      assert.equal(scrubberOf(['Doe^Jane', 'MRN-004711']).scrub(t), t);
    });
  }
});

describe('scrub: dateForms of a birth date', () => {
  test('the forms people type for 1980-07-04', () => {
    const forms = new Set(dateForms('19800704'));
    const expected = ['19800704', '1980-07-04', '1980/07/04', '1980.07.04', '04/07/1980', '07/04/1980', '04.07.1980', '04-07-1980', '4/7/1980', '7/4/1980'];
    for (const f of expected) assert.ok(forms.has(f), `has ${f}`);
  });

  test('not a DA value → no forms', () => {
    for (const v of ['', '1980-07-04', '198007', '1980070', 'abcdefgh']) assert.deepEqual(dateForms(v), [], v);
  });

  test('a birth date is removed in every form, including forms the generic patterns miss', () => {
    const s = scrubberOf(['Doe^Jane'], '19800704');
    for (const form of ['19800704', '1980-07-04', '04/07/1980', '7/4/1980', '04.07.1980']) {
      const out = s.scrub(`born ${form}, seen`);
      assert.equal(out, `born ${REDACTED}, seen`, form);
    }
  });

  test('other numbers next to the birth date survive', () => {
    const s = scrubberOf([], '19800704');
    assert.equal(s.scrub('dose 1980 mGy'), 'dose 1980 mGy');
  });
});

describe('scrub: the scrubber cache', () => {
  test('same identifiers → same behaviour; different identifiers → a different scrubber', () => {
    const a = scrubberFor(['Alpha']);
    const b = scrubberFor(['Beta']);
    assert.equal(a.scrub('Alpha Beta'), `${REDACTED} Beta`);
    assert.equal(b.scrub('Alpha Beta'), `Alpha ${REDACTED}`);
    assert.equal(scrubberFor(['Alpha']).scrub('Alpha Beta'), `${REDACTED} Beta`);
  });

  test('more than 256 distinct scrubbers still behave correctly', () => {
    for (let i = 0; i < 300; i++) assert.equal(scrubberFor([`Name${i}x`]).scrub(`a Name${i}x b`), `a ${REDACTED} b`);
  });
});
