import { test, describe } from 'node:test';
import assert from 'node:assert/strict';
import { TextDecoder } from 'node:util';
import { GatewayError } from '../../../src/core/errors.js';
import { charsetFor, DEFAULT_CHARSET, TEXT_VRS, type Charset } from '../../../src/dicom/charset.js';
import type { RawElement } from '../../../src/dicom/part10.js';
import { part10View } from '../../../src/pixels/views.js';

const ESC = 0x1b;

/** Builds bytes from ASCII strings, byte numbers and byte arrays. */
function bytes(...parts: Array<string | number | readonly number[]>): Buffer {
  const out: number[] = [];
  for (const p of parts) {
    if (typeof p === 'string') for (const ch of p) out.push(ch.charCodeAt(0));
    else if (typeof p === 'number') out.push(p);
    else out.push(...p);
  }
  return Buffer.from(out);
}

const hex = (b: Uint8Array | null): string | null => (b === null ? null : Buffer.from(b).toString('hex'));

function assertCharsetError(fn: () => unknown, secret: string, check?: RegExp): void {
  assert.throws(fn, (e: unknown) => {
    assert.ok(e instanceof GatewayError, 'GatewayError expected');
    assert.equal(e.code, 'DICOM_CHARSET');
    assert.ok(!e.message.includes(secret), `message must not contain the value: ${e.message}`);
    assert.match(e.message, /byte offset \d+/);
    if (check) assert.match(e.message, check);
    return true;
  });
}

// Escape sequences (PS3.3 Tables C.12-3/C.12-4)
const ESC_ASCII = [ESC, 0x28, 0x42]; // ESC ( B
const ESC_ROMAJI = [ESC, 0x28, 0x4a]; // ESC ( J
const ESC_JIS0208 = [ESC, 0x24, 0x42]; // ESC $ B
const ESC_JIS0212 = [ESC, 0x24, 0x28, 0x44]; // ESC $ ( D
const ESC_KSX1001 = [ESC, 0x24, 0x29, 0x43]; // ESC $ ) C
const ESC_GB2312 = [ESC, 0x24, 0x29, 0x41]; // ESC $ ) A
const ESC_LATIN1 = [ESC, 0x2d, 0x41]; // ESC - A
const ESC_CYRILLIC = [ESC, 0x2d, 0x4c]; // ESC - L

describe('charset: PS3.5 Annex H/I/J/K worked examples, byte for byte', () => {
  const cases: Array<{ name: string; spec: string; vr: string; text: string; encoded: Buffer; decodeOnly?: boolean }> = [
    {
      name: 'H.3.1 Japanese PN, value 1 empty, ISO 2022 IR 87',
      spec: '\\ISO 2022 IR 87',
      vr: 'PN',
      text: 'Yamada^Tarou=山田^太郎=やまだ^たろう',
      encoded: bytes(
        'Yamada^Tarou=',
        ESC_JIS0208, [0x3b, 0x33, 0x45, 0x44], ESC_ASCII, '^',
        ESC_JIS0208, [0x42, 0x40, 0x4f, 0x3a], ESC_ASCII, '=',
        ESC_JIS0208, [0x24, 0x64, 0x24, 0x5e, 0x24, 0x40], ESC_ASCII, '^',
        ESC_JIS0208, [0x24, 0x3f, 0x24, 0x6d, 0x24, 0x26], ESC_ASCII,
      ),
    },
    {
      name: 'H.3.2 Japanese PN, ISO 2022 IR 13 \\ ISO 2022 IR 87',
      spec: 'ISO 2022 IR 13\\ISO 2022 IR 87',
      vr: 'PN',
      text: 'ﾔﾏﾀﾞ^ﾀﾛｳ=山田^太郎=やまだ^たろう',
      encoded: bytes(
        [0xd4, 0xcf, 0xc0, 0xde], '^', [0xc0, 0xdb, 0xb3], '=',
        ESC_JIS0208, [0x3b, 0x33, 0x45, 0x44], ESC_ROMAJI, '^',
        ESC_JIS0208, [0x42, 0x40, 0x4f, 0x3a], ESC_ROMAJI, '=',
        ESC_JIS0208, [0x24, 0x64, 0x24, 0x5e, 0x24, 0x40], ESC_ROMAJI, '^',
        ESC_JIS0208, [0x24, 0x3f, 0x24, 0x6d, 0x24, 0x26], ESC_ROMAJI,
      ),
    },
    {
      name: 'I.2 Korean PN, ISO 2022 IR 149',
      spec: '\\ISO 2022 IR 149',
      vr: 'PN',
      text: 'Hong^Gildong=洪^吉洞=홍^길동',
      encoded: bytes(
        'Hong^Gildong=',
        ESC_KSX1001, [0xfb, 0xf3], '^',
        ESC_KSX1001, [0xd1, 0xce, 0xd4, 0xd7], '=',
        ESC_KSX1001, [0xc8, 0xab], '^',
        ESC_KSX1001, [0xb1, 0xe6, 0xb5, 0xbf],
      ),
    },
    {
      // The standard designates at the head of each line; our encoder designates just before the
      // first Hangul character (also valid), so this one is checked on decode only (see below).
      name: 'I.3 Korean LT, escape at the head of each line',
      spec: '\\ISO 2022 IR 149',
      vr: 'LT',
      text: 'The first line includes한글.\r\nThe second line includes한글, too.\r\nThe third line',
      encoded: bytes(
        ESC_KSX1001, 'The first line includes', [0xc7, 0xd1, 0xb1, 0xdb], '.\r\n',
        ESC_KSX1001, 'The second line includes', [0xc7, 0xd1, 0xb1, 0xdb], ', too.\r\n',
        'The third line',
      ),
      decodeOnly: true,
    },
    {
      name: 'J.1 Chinese PN, ISO_IR 192',
      spec: 'ISO_IR 192',
      vr: 'PN',
      text: 'Wang^XiaoDong=王^小東=',
      encoded: bytes('Wang^XiaoDong=', [0xe7, 0x8e, 0x8b], '^', [0xe5, 0xb0, 0x8f, 0xe6, 0x9d, 0xb1], '='),
    },
    {
      name: 'J.2 Chinese LT, ISO_IR 192',
      spec: 'ISO_IR 192',
      vr: 'LT',
      text: 'The first line includes中文.\r\nThe second line includes中文, too.\r\nThe third line.\r\n',
      encoded: bytes(
        'The first line includes', [0xe4, 0xb8, 0xad, 0xe6, 0x96, 0x87], '.\r\n',
        'The second line includes', [0xe4, 0xb8, 0xad, 0xe6, 0x96, 0x87], ', too.\r\n',
        'The third line.\r\n',
      ),
    },
    ...(['GB18030', 'GBK'] as const).flatMap((spec) => [
      {
        name: `J.3 Chinese PN, ${spec}`,
        spec,
        vr: 'PN',
        text: 'Wang^XiaoDong=王^小东=',
        encoded: bytes('Wang^XiaoDong=', [0xcd, 0xf5], '^', [0xd0, 0xa1, 0xb6, 0xab], '='),
      },
      {
        name: `J.4 Chinese LT, ${spec}`,
        spec,
        vr: 'LT',
        text: 'The first line includes中文.\r\nThe second line includes中文, too.\r\nThe third line.\r\n',
        encoded: bytes(
          'The first line includes', [0xd6, 0xd0, 0xce, 0xc4], '.\r\n',
          'The second line includes', [0xd6, 0xd0, 0xce, 0xc4], ', too.\r\n',
          'The third line.\r\n',
        ),
      },
    ]),
    {
      name: 'K.2 Chinese PN, ISO 2022 IR 58 (G1)',
      spec: '\\ISO 2022 IR 58',
      vr: 'PN',
      text: 'Zhang^XiaoDong=张^小东=',
      encoded: bytes('Zhang^XiaoDong=', ESC_GB2312, [0xd5, 0xc5], '^', ESC_GB2312, [0xd0, 0xa1, 0xb6, 0xab], '='),
    },
    {
      name: 'K.3 Chinese LT, ISO 2022 IR 58, G1 re-designated after each CR LF',
      spec: '\\ISO 2022 IR 58',
      vr: 'LT',
      text: '1.第一行文字。\r\n2.第二行文字。\r\n3.第三行文字。\r\n',
      encoded: bytes(
        '1.', ESC_GB2312, [0xb5, 0xda, 0xd2, 0xbb, 0xd0, 0xd0, 0xce, 0xc4, 0xd7, 0xd6, 0xa1, 0xa3], '\r\n',
        '2.', ESC_GB2312, [0xb5, 0xda, 0xb6, 0xfe, 0xd0, 0xd0, 0xce, 0xc4, 0xd7, 0xd6, 0xa1, 0xa3], '\r\n',
        '3.', ESC_GB2312, [0xb5, 0xda, 0xc8, 0xfd, 0xd0, 0xd0, 0xce, 0xc4, 0xd7, 0xd6, 0xa1, 0xa3], '\r\n',
      ),
    },
  ];

  for (const c of cases) {
    test(`${c.name}: decode`, () => {
      assert.equal(charsetFor(c.spec).decode(c.encoded, c.vr), c.text);
    });
    if (!c.decodeOnly) {
      test(`${c.name}: encode`, () => {
        assert.equal(hex(charsetFor(c.spec).encode(c.text, c.vr)), hex(c.encoded));
      });
    }
  }

  test('I.3 Korean LT: our encoding designates before the first Hangul and round-trips', () => {
    const cs = charsetFor('\\ISO 2022 IR 149');
    const text = 'The first line includes한글.\r\nThe second line includes한글, too.\r\nThe third line';
    const expected = bytes(
      'The first line includes', ESC_KSX1001, [0xc7, 0xd1, 0xb1, 0xdb], '.\r\n',
      'The second line includes', ESC_KSX1001, [0xc7, 0xd1, 0xb1, 0xdb], ', too.\r\n',
      'The third line',
    );
    assert.equal(hex(cs.encode(text, 'LT')), hex(expected));
    assert.equal(cs.decode(expected, 'LT'), text);
  });

  test('K.2 as printed in the standard ends with a padding space, which decode keeps', () => {
    const cs = charsetFor('\\ISO 2022 IR 58');
    const padded = bytes('Zhang^XiaoDong=', ESC_GB2312, [0xd5, 0xc5], '^', ESC_GB2312, [0xd0, 0xa1, 0xb6, 0xab], '=', 0x20);
    assert.equal(cs.decode(padded, 'PN'), 'Zhang^XiaoDong=张^小东= ');
  });
});

describe('charset: round trips for every supported term', () => {
  // [term(s), representative text, ICU label to cross-check the bytes (null: none)]
  const cases: Array<[string, string, string | null]> = [
    ['', 'DOE^JOHN^^DR', null],
    ['ISO_IR 6', 'DOE^JOHN', null],
    ['ISO_IR 100', 'Buc^Jérôme=Müller^Jürgen', 'latin1'],
    ['ISO_IR 101', 'Dvořák^Antonín Łukasz', 'iso-8859-2'],
    ['ISO_IR 109', 'Ħaġar Qim^Ġużè', 'iso-8859-3'],
    ['ISO_IR 110', 'Ķēniņš^Ģirts Ūdris', 'iso-8859-4'],
    ['ISO_IR 144', 'Иванов^Иван Сергеевич', 'iso-8859-5'],
    ['ISO_IR 127', 'قباني^لنزار', 'iso-8859-6'],
    ['ISO_IR 126', 'Διονυσιος^Νίκος', 'iso-8859-7'],
    ['ISO_IR 138', 'שרון^דבורה', 'iso-8859-8'],
    ['ISO_IR 148', 'Çavuşoğlu^Işıl', 'iso-8859-9'],
    ['ISO_IR 203', 'Œuvre^Šárka 5€', 'iso-8859-15'],
    ['ISO_IR 166', 'สมชาย^ใจดี', 'windows-874'],
    ['ISO_IR 13', 'ﾔﾏﾀﾞ^ﾀﾛｳ', null],
    ['ISO_IR 192', 'Ŝtefan^Ĉu=山田^太郎=😀', 'utf-8'],
    ['GB18030', '王^小东=€ 𠀀 😀 ḿ', 'gb18030'],
    ['GBK', '王^小东=中文', 'gbk'],
    ['ISO 2022 IR 6', 'DOE^JOHN', null],
    ['ISO 2022 IR 100', 'Buc^Jérôme', 'latin1'],
    ['ISO 2022 IR 101', 'Dvořák^Antonín', 'iso-8859-2'],
    ['ISO 2022 IR 109', 'Ħaġar^Ġużè', 'iso-8859-3'],
    ['ISO 2022 IR 110', 'Ķēniņš^Ģirts', 'iso-8859-4'],
    ['ISO 2022 IR 144', 'Иванов^Иван', 'iso-8859-5'],
    ['ISO 2022 IR 127', 'قباني^لنزار', 'iso-8859-6'],
    ['ISO 2022 IR 126', 'Διονυσιος', 'iso-8859-7'],
    ['ISO 2022 IR 138', 'שרון^דבורה', 'iso-8859-8'],
    ['ISO 2022 IR 148', 'Çavuşoğlu^Işıl', 'iso-8859-9'],
    ['ISO 2022 IR 203', 'Œuvre^Šárka', 'iso-8859-15'],
    ['ISO 2022 IR 166', 'สมชาย^ใจดี', 'windows-874'],
    ['ISO 2022 IR 13', 'ﾔﾏﾀﾞ^ﾀﾛｳ', null],
    ['\\ISO 2022 IR 87', '山田^太郎=やまだ ①', null],
    ['\\ISO 2022 IR 159', '丂^龥', null],
    ['\\ISO 2022 IR 87\\ISO 2022 IR 159', '山田丂^太郎', null],
    ['\\ISO 2022 IR 149', '홍^길동=洪^吉洞', null],
    ['\\ISO 2022 IR 58', '张^小东', null],
    ['ISO 2022 IR 100\\ISO 2022 IR 144', 'Müller^Иван=Jürgen', null],
    ['ISO 2022 IR 100\\ISO 2022 IR 87\\ISO 2022 IR 149', 'Müller^山田=홍 é', null],
  ];

  for (const [spec, text, label] of cases) {
    test(`${JSON.stringify(spec)}: ${text}`, () => {
      const cs = charsetFor(spec);
      for (const vr of ['PN', 'LO', 'LT']) {
        const enc = cs.encode(text, vr);
        assert.ok(enc, `${vr} encodable`);
        assert.equal(cs.decode(enc, vr), text, vr);
        if (label) assert.equal(new TextDecoder(label, { fatal: true }).decode(enc), text, `${vr} bytes agree with ICU ${label}`);
      }
      // Without code extensions a single-byte ISO 2022 term writes the same bytes as its ISO_IR twin.
      const twin = spec.replace(/^ISO 2022 IR (\d+)$/, 'ISO_IR $1');
      if (twin !== spec) assert.equal(hex(cs.encode(text, 'PN')), hex(charsetFor(twin).encode(text, 'PN')));
    });
  }

  test('spot bytes: latin1, cyrillic, JIS X 0201, latin9', () => {
    assert.equal(hex(charsetFor('ISO_IR 100').encode('Jérôme', 'PN')), '4ae972f46d65');
    assert.equal(hex(charsetFor('ISO_IR 144').encode('Иван', 'PN')), 'b8d2d0dd');
    assert.equal(hex(charsetFor('ISO_IR 13').encode('ﾔﾏﾀﾞ^ﾀﾛｳ', 'PN')), 'd4cfc0de5ec0dbb3');
    assert.equal(hex(charsetFor('ISO_IR 203').encode('€Œ', 'LO')), 'a4bc');
  });

  test('GB18030 four-byte codes (BMP and supplementary)', () => {
    const cs = charsetFor('GB18030');
    assert.equal(hex(cs.encode('\u0080', 'LO')), '81308130');
    assert.equal(hex(cs.encode('😀', 'LO')), '9439fc36');
    assert.equal(cs.decode(bytes([0x94, 0x39, 0xfc, 0x36]), 'LO'), '😀');
  });

  test('ISO 2022 JIS X 0212 bytes', () => {
    const cs = charsetFor('\\ISO 2022 IR 87\\ISO 2022 IR 159');
    // 山 is in JIS X 0208 (preferred), 丂 only in JIS X 0212 (row 16 col 1).
    assert.equal(hex(cs.encode('山丂', 'LO')), hex(bytes(ESC_JIS0208, [0x3b, 0x33], ESC_JIS0212, [0x30, 0x21], ESC_ASCII)));
  });

  test('G1 switched away from the value-1 set is restored before "^" and at the end (PS3.5 6.1.2.5.3)', () => {
    const cs = charsetFor('ISO 2022 IR 100\\ISO 2022 IR 144');
    const enc = cs.encode('Müller^Иван', 'PN');
    assert.equal(hex(enc), hex(bytes('M', 0xfc, 'ller^', ESC_CYRILLIC, [0xb8, 0xd2, 0xd0, 0xdd], ESC_LATIN1)));
  });

  test('every defined byte of each single-byte set round-trips', () => {
    for (const spec of ['ISO_IR 100', 'ISO_IR 101', 'ISO_IR 109', 'ISO_IR 110', 'ISO_IR 144', 'ISO_IR 127', 'ISO_IR 126',
      'ISO_IR 138', 'ISO_IR 148', 'ISO_IR 203', 'ISO_IR 166', 'ISO_IR 13']) {
      const cs = charsetFor(spec);
      let defined = 0;
      for (let b = 0; b < 256; b++) {
        if (b === ESC) continue;
        let text: string;
        try {
          text = cs.decode(Uint8Array.of(b), 'LT');
        } catch {
          continue;
        }
        defined++;
        assert.equal(hex(cs.encode(text, 'LT')), hex(Uint8Array.of(b)), `${spec} byte ${b}`);
      }
      assert.ok(defined > 160, `${spec}: ${defined} defined bytes`);
    }
  });

  test('every character of each 94x94 set survives decode -> encode -> decode', () => {
    const sets: Array<[string, number[], number, number]> = [
      ['\\ISO 2022 IR 87', ESC_JIS0208, 0x21, 6800],
      ['\\ISO 2022 IR 159', ESC_JIS0212, 0x21, 5800],
      ['\\ISO 2022 IR 149', ESC_KSX1001, 0xa1, 8200],
      ['\\ISO 2022 IR 58', ESC_GB2312, 0xa1, 7400],
    ];
    for (const [spec, esc, base, minimum] of sets) {
      const cs = charsetFor(spec);
      let text = '';
      for (let r = 0; r < 94; r++) {
        for (let c = 0; c < 94; c++) {
          try {
            text += cs.decode(bytes(esc, [base + r, base + c]), 'LT');
          } catch {
            /* undefined cell */
          }
        }
      }
      assert.ok([...text].length >= minimum, `${spec}: ${[...text].length} characters`);
      const enc = cs.encode(text, 'LT');
      assert.ok(enc, spec);
      assert.equal(cs.decode(enc, 'LT'), text, spec);
    }
  });
});

describe('charset: reset points and delimiters', () => {
  const jis = charsetFor('\\ISO 2022 IR 87');

  test('text VRs return to ASCII before CR LF, TAB, FF and at the end', () => {
    assert.equal(
      hex(jis.encode('山\r\n川\t田\f', 'LT')),
      hex(bytes(ESC_JIS0208, [0x3b, 0x33], ESC_ASCII, '\r\n', ESC_JIS0208, [0x40, 0x6e], ESC_ASCII, '\t',
        ESC_JIS0208, [0x45, 0x44], ESC_ASCII, '\f')),
    );
  });

  test('multi-valued VRs return to ASCII before each backslash; ST keeps a backslash as text', () => {
    const lo = bytes(ESC_JIS0208, [0x3b, 0x33], ESC_ASCII, '\\', ESC_JIS0208, [0x40, 0x6e], ESC_ASCII);
    assert.equal(hex(jis.encode('山\\川', 'LO')), hex(lo));
    assert.equal(jis.decode(lo, 'LO'), '山\\川');
    assert.equal(hex(jis.encode('山\\', 'ST')), hex(bytes(ESC_JIS0208, [0x3b, 0x33], ESC_ASCII, '\\')));
  });

  test('0x5C, 0x5E and 0x3D inside a double-byte character are not delimiters', () => {
    // Every JIS X 0208 cell with second byte 05/12, 05/14 or 03/13 in row 16.
    const euc = new TextDecoder('euc-jp');
    for (const second of [0x5c, 0x5e, 0x3d]) {
      const ch = euc.decode(Uint8Array.of(0xb0, second | 0x80));
      const enc = bytes(ESC_JIS0208, [0x30, second], ESC_ASCII, '\\x');
      assert.equal(jis.decode(enc, 'PN'), `${ch}\\x`);
      assert.equal(hex(jis.encode(`${ch}\\x`, 'PN')), hex(enc));
    }
    // GB18030/GBK trail bytes can be 05/12 and 05/14 too.
    const gb = charsetFor('GB18030');
    const ch = new TextDecoder('gb18030').decode(Uint8Array.of(0x81, 0x5c));
    assert.equal(gb.decode(bytes([0x81, 0x5c], '\\', [0x81, 0x5e]), 'LO').split('\\').length, 2);
    assert.equal(hex(gb.encode(`${ch}\\`, 'LO')), '815c5c');
  });

  test('ISO_IR 13: 05/12 is the value separator, 07/14 is OVERLINE; no ASCII tilde', () => {
    const cs = charsetFor('ISO_IR 13');
    assert.equal(cs.decode(bytes('A\\B~', 0xb1), 'LO'), 'A\\B\u203eｱ');
    assert.equal(hex(cs.encode('A\\B\u203eｱ', 'LO')), hex(bytes('A\\B~', 0xb1)));
    assert.equal(cs.encode('A~', 'LO'), null);
  });

  test('decoder: value-1 G1 is active again after "^"; an undesignated G1 is kept when value 1 has none', () => {
    const latin = charsetFor('ISO 2022 IR 100\\ISO 2022 IR 144');
    assert.equal(latin.decode(bytes(ESC_CYRILLIC, 0xb8, '^', 0xfc), 'PN'), 'И^ü');
    // Common in the field: ISO-IR 149 designated once for the whole value.
    const ko = charsetFor('\\ISO 2022 IR 149');
    assert.equal(ko.decode(bytes(ESC_KSX1001, [0xfb, 0xf3], '^', [0xd1, 0xce, 0xd4, 0xd7]), 'PN'), '洪^吉洞');
  });

  test('decoder: G0 returns to ASCII at a control character even without ESC ( B', () => {
    assert.equal(jis.decode(bytes(ESC_JIS0208, [0x3b, 0x33], '\r\nAB'), 'LT'), '山\r\nAB');
  });

  test('ESC $ ( B (long form of ESC $ B) is accepted when ISO 2022 IR 87 is declared', () => {
    assert.equal(jis.decode(bytes([ESC, 0x24, 0x28, 0x42], [0x3b, 0x33], ESC_ASCII), 'PN'), '山');
  });
});

describe('charset: unencodable text returns null', () => {
  const cases: Array<[string, string, string]> = [
    ['', 'é', 'PN'],
    ['ISO_IR 100', '山', 'PN'],
    ['ISO_IR 100', 'Ω', 'LO'],
    ['ISO_IR 144', 'é', 'LO'],
    ['ISO_IR 13', 'あ', 'PN'],
    ['\\ISO 2022 IR 87', 'ç', 'PN'],
    ['\\ISO 2022 IR 149', '😀', 'PN'],
    ['\\ISO 2022 IR 58', 'ß😀', 'PN'],
    ['ISO 2022 IR 13\\ISO 2022 IR 87', '~', 'PN'],
    ['GBK', '😀', 'LO'],
    ['ISO_IR 192', 'lone \ud800 surrogate', 'LO'],
    ['GB18030', 'lone \udc00', 'LO'],
    ['ISO_IR 192', 'has \x1b escape', 'LT'],
    ['ISO_IR 100', 'has \x1b escape', 'LT'],
    ['\\ISO 2022 IR 87', '\x1b$B', 'LT'],
    ['ISO_IR 192', 'Müller', 'CS'],
    ['ISO_IR 100', 'é', 'AE'],
  ];
  for (const [spec, text, vr] of cases) {
    test(`${JSON.stringify(spec)} ${vr} ${JSON.stringify(text)}`, () => {
      assert.equal(charsetFor(spec).encode(text, vr), null);
    });
  }
});

describe('charset: malformed input throws DICOM_CHARSET without the value', () => {
  const secret = 'SECRETNAME';
  const cases: Array<[string, string, string, Buffer, RegExp]> = [
    ['invalid UTF-8', 'ISO_IR 192', 'PN', bytes(secret, 0xff, 'X'), /UTF-8 at byte offset 10/],
    ['truncated UTF-8', 'ISO_IR 192', 'LO', bytes(secret, [0xe4, 0xb8]), /offset 10/],
    ['UTF-8 surrogate encoding', 'ISO_IR 192', 'LO', bytes(secret, [0xed, 0xa0, 0x80]), /offset 10/],
    ['unknown escape', '\\ISO 2022 IR 87', 'PN', bytes(secret, [ESC, 0x28, 0x5a], 'A'), /unknown escape sequence at byte offset 10/],
    ['escape of an undeclared set', '\\ISO 2022 IR 87', 'PN', bytes(secret, ESC_KSX1001, [0xb0, 0xa1]), /undeclared/],
    ['truncated escape', '\\ISO 2022 IR 87', 'PN', bytes(secret, [ESC, 0x24]), /malformed escape sequence/],
    ['G1 byte with no G1', '\\ISO 2022 IR 87', 'PN', bytes(secret, 0xe9), /outside the declared repertoire at byte offset 10/],
    ['incomplete double-byte char', '\\ISO 2022 IR 87', 'PN', bytes(secret, ESC_JIS0208, 0x3b), /incomplete/],
    ['undefined JIS X 0208 cell', '\\ISO 2022 IR 87', 'LO', bytes(secret, ESC_JIS0208, [0x29, 0x21]), /offset 13/],
    ['undefined KS X 1001 lead', '\\ISO 2022 IR 149', 'LO', bytes(secret, ESC_KSX1001, [0xff, 0xa1]), /offset 14/],
    ['escape in a set without code extensions', 'ISO_IR 100', 'LO', bytes(secret, ESC_JIS0208), /without code extensions/],
    ['escape in UTF-8', 'ISO_IR 192', 'LO', bytes(secret, ESC_JIS0208), /without code extensions/],
    ['undefined 8859-6 byte', 'ISO_IR 127', 'PN', bytes(secret, 0xa1), /offset 10/],
    ['undefined TIS 620 byte', 'ISO_IR 166', 'PN', bytes(secret, 0xdb), /offset 10/],
    ['undefined JIS X 0201 byte', 'ISO_IR 13', 'PN', bytes(secret, 0xe0), /offset 10/],
    ['high byte in the default repertoire', '', 'PN', bytes(secret, 0xe9), /ISO_IR 6.*offset 10/],
    ['high byte in a default-repertoire VR', 'ISO_IR 100', 'CS', bytes(secret, 0xe9), /default repertoire at byte offset 10/],
    ['GB18030 0xFF', 'GB18030', 'LO', bytes(secret, 0xff), /offset 10/],
    ['GB18030 truncated', 'GB18030', 'LO', bytes(secret, 0xcd), /offset 10/],
    ['GBK four-byte code', 'GBK', 'LO', bytes(secret, [0x81, 0x30, 0x81, 0x30]), /GBK.*offset 10/],
  ];
  for (const [name, spec, vr, input, check] of cases) {
    test(name, () => assertCharsetError(() => charsetFor(spec).decode(input, vr), secret, check));
  }
});

describe('charset: charsetFor', () => {
  test('default repertoire for undefined, empty and whitespace', () => {
    for (const spec of [undefined, '', [], [''], '  ', '\\']) {
      const cs = charsetFor(spec as string | string[] | undefined);
      assert.equal(cs, DEFAULT_CHARSET);
    }
    assert.deepEqual(DEFAULT_CHARSET.terms, []);
    assert.equal(DEFAULT_CHARSET.isSingleByte, true);
  });

  test('normalises, keeps a leading empty value and caches per term list', () => {
    const a = charsetFor(' iso_ir 100 ');
    assert.deepEqual(a.terms, ['ISO_IR 100']);
    assert.equal(a.isSingleByte, true);
    assert.equal(charsetFor(['ISO_IR 100']), a);
    const b = charsetFor('\\ISO 2022 IR 87 ');
    assert.deepEqual(b.terms, ['', 'ISO 2022 IR 87']);
    assert.equal(b.isSingleByte, false);
    assert.equal(charsetFor(['', 'ISO 2022 IR 87']), b);
    assert.equal(charsetFor('ISO_IR 192').isSingleByte, false);
    assert.equal(charsetFor('ISO_IR 13').isSingleByte, true);
  });

  test('ISO_IR n inside a multi-valued list is read as ISO 2022 IR n', () => {
    const cs = charsetFor('ISO_IR 13\\ISO 2022 IR 87');
    const text = 'ﾔﾏﾀﾞ^ﾀﾛｳ=山田';
    assert.equal(hex(cs.encode(text, 'PN')), hex(charsetFor('ISO 2022 IR 13\\ISO 2022 IR 87').encode(text, 'PN')));
  });

  test('unknown or invalid terms throw with the term named', () => {
    for (const spec of ['ISO_IR 999', 'UTF-8', 'ISO 2022 IR 192', 'ISO_IR 87', '\\ISO 2022 IR 999']) {
      assert.throws(
        () => charsetFor(spec),
        (e: unknown) => e instanceof GatewayError && e.code === 'DICOM_CHARSET' && /unknown Specific Character Set term "/.test(e.message),
        spec,
      );
    }
    assert.throws(() => charsetFor('ISO_IR 192\\ISO 2022 IR 87'), (e: unknown) => e instanceof GatewayError && e.code === 'DICOM_CHARSET');
  });

  test('TEXT_VRS', () => {
    assert.deepEqual([...TEXT_VRS].sort(), ['LO', 'LT', 'PN', 'SH', 'ST', 'UC', 'UT']);
  });

  test('other VRs always use the default repertoire', () => {
    const cs: Charset = charsetFor('\\ISO 2022 IR 87');
    assert.equal(cs.decode(bytes('1.2.840\0'), 'UI'), '1.2.840\0');
    assert.equal(hex(cs.encode('ORIGINAL\\PRIMARY', 'CS')), hex(bytes('ORIGINAL\\PRIMARY')));
    assert.equal(charsetFor('ISO_IR 13').decode(bytes('A~\\B'), 'CS'), 'A~\\B');
  });

  test('trailing padding is not stripped; plain Uint8Array input works', () => {
    assert.equal(charsetFor('ISO_IR 100').decode(new Uint8Array([0x41, 0xe9, 0x20]), 'SH'), 'Aé ');
    assert.equal(DEFAULT_CHARSET.decode(new Uint8Array([0x41, 0x20]).subarray(1), 'SH'), ' ');
  });
});

describe('views of Part 10 elements read the character set the data set declares (issue 16)', () => {
  const el = (tag: number, vr: string, value: Buffer): RawElement => ({ tag, vr: vr as RawElement['vr'], value, items: null, syntax: { littleEndian: true, explicit: true } });
  const name = Buffer.from('Klinik M\xfcnchen', 'latin1');

  test('declared ISO_IR 100: Latin-1 letters are read (a view made without a charset argument)', () => {
    const v = part10View([el(0x00080005, 'CS', Buffer.from('ISO_IR 100')), el(0x00080080, 'LO', name)]);
    assert.equal(v.str(0x00080080), 'Klinik München');
  });

  test('nothing declared: bytes beyond ASCII are read as Latin-1, as the engine reads them', () => {
    assert.equal(part10View([el(0x00080080, 'LO', name)]).str(0x00080080), 'Klinik München');
  });

  test('an item that declares its own character set is read in it; others inherit', () => {
    const utf8 = Buffer.from('Klinik München', 'utf8');
    const item = { elements: [el(0x00080005, 'CS', Buffer.from('ISO_IR 192')), el(0x00080080, 'LO', utf8)] };
    const plain = { elements: [el(0x00080080, 'LO', name)] };
    const seq: RawElement = { tag: 0x00400275, vr: 'SQ', value: null, items: [item, plain], syntax: { littleEndian: true, explicit: true } };
    const v = part10View([el(0x00080005, 'CS', Buffer.from('ISO_IR 100')), seq]);
    assert.deepEqual(v.items(0x00400275).map((i) => i.str(0x00080080)), ['Klinik München', 'Klinik München']);
  });

  test('a declared repertoire that the bytes break is still refused (fail closed)', () => {
    const v = part10View([el(0x00080005, 'CS', Buffer.from('ISO_IR 192')), el(0x00080080, 'LO', Buffer.from([0x4b, 0xff, 0xfe]))]);
    assert.throws(() => v.str(0x00080080), (e: unknown) => e instanceof GatewayError && e.code === 'DICOM_CHARSET');
  });
});
