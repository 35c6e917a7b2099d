import { test, describe } from 'node:test';
import assert from 'node:assert/strict';
import { GatewayError } from '../../../src/core/errors.js';
import { DEFAULT_MAX_ELEMENT_BYTES, MAX_JSON_DEPTH, splitJsonArray, writeJsonArray, type SplitJsonArrayOptions } from '../../../src/dicomweb/json-array.js';
import { mulberry32 as rng } from '../../helpers/prng.js';

// ---------------------------------------------------------------------------------------------
// helpers

const SECRET = 'DOE^JANE';


/** Yields `buf` cut at the given offsets; each chunk is a fresh copy, like data off a socket. */
async function* cut(buf: Buffer, offsets: readonly number[]): AsyncGenerator<Uint8Array> {
  let prev = 0;
  for (const o of [...offsets, buf.length]) {
    if (o < prev) continue;
    yield new Uint8Array(buf.subarray(prev, o));
    prev = o;
  }
}

const CHUNKINGS: Array<{ name: string; offsets: (len: number) => number[] }> = [
  { name: 'whole', offsets: () => [] },
  { name: '1-byte', offsets: (len) => Array.from({ length: len }, (_, i) => i + 1) },
  ...[1, 2, 3].map((seed) => ({
    name: `random sizes, seed ${seed}`,
    offsets: (len: number) => {
      const r = rng(seed);
      const out: number[] = [];
      for (let o = 0; o < len; ) out.push((o += 1 + Math.floor(r() * 13)));
      return out;
    },
  })),
];

async function split(input: Buffer | string, offsets: readonly number[] = [], opts?: SplitJsonArrayOptions): Promise<string[]> {
  const buf = typeof input === 'string' ? Buffer.from(input, 'utf8') : input;
  const out: string[] = [];
  for await (const e of splitJsonArray(cut(buf, offsets), opts)) out.push(e);
  return out;
}

async function* strings(xs: readonly string[]): AsyncGenerator<string> {
  for (const x of xs) yield x;
}

async function collect(gen: AsyncIterable<Buffer>): Promise<string> {
  const chunks: Buffer[] = [];
  for await (const c of gen) chunks.push(c);
  return Buffer.concat(chunks).toString('utf8');
}

/** Rejects with DICOM_JSON_MALFORMED matching `why`; returns the message. */
async function malformed(p: Promise<unknown>, why: RegExp): Promise<string> {
  let message = '';
  await assert.rejects(p, (e: unknown) => {
    assert.ok(e instanceof GatewayError, `GatewayError expected, got ${String(e)}`);
    assert.equal(e.code, 'DICOM_JSON_MALFORMED', e.message);
    assert.match(e.message, why);
    assert.match(e.message, /at byte \d+$/);
    assert.ok(!e.message.includes(SECRET) && !e.message.includes('DOE'), 'messages never carry payload bytes');
    message = e.message;
    return true;
  });
  return message;
}

// A PS3.18 F.2-shaped response: two instances with a sequence, PN groups, numbers, bulk data.
const DICOM_JSON = `[
  {
    "00080005": { "vr": "CS", "Value": ["ISO_IR 192"] },
    "00100010": { "vr": "PN", "Value": [ { "Alphabetic": "${SECRET}", "Ideographic": "山田^太郎", "Phonetic": "やまだ^たろう" } ] },
    "00081030": { "vr": "LO", "Value": ["CT {thorax} [contrast] \\"with\\" a \\\\ backslash, and ]}"] },
    "00200032": { "vr": "DS", "Value": [-125.5, 1e3, 0] },
    "00400275": { "vr": "SQ", "Value": [ { "00321060": { "vr": "LO", "Value": ["req"] } }, {} ] },
    "00291010": { "vr": "OB", "InlineBinary": "AAEC/w==" },
    "7FE00010": { "vr": "OW", "BulkDataURI": "http://pacs/bulk/1?x=[1]" }
  },\r\n\t{"00080018":{"vr":"UI","Value":["1.2.3.4"]},"00100020":{"vr":"LO"}}
]
`;

// ---------------------------------------------------------------------------------------------

describe('splitJsonArray: valid arrays', () => {
  const cases: Array<[string, string]> = [
    ['empty array', '[]'],
    ['empty array with whitespace and newlines', ' \r\n\t[ \n\r\t]\n '],
    ['one empty object', '[{}]'],
    ['nested objects and arrays', '[{"a":{"b":[1,[2,[3,{}]],{"c":null}]}},{"d":[]}]'],
    ['strings with brackets, braces, commas and colons', '[{"s":"]}[{,:\\"\\"]"},{"t":"}"}]'],
    ['escaped quotes and backslashes', '[{"a":"\\"","b":"\\\\","c":"\\\\\\"","d":"x\\\\\\\\"},{"e":"\\\\"}]'],
    ['escapes of every kind', '[{"a":"\\/\\b\\f\\n\\r\\t\\u0041\\u00e9\\ud83d\\ude00"}]'],
    ['multi-byte UTF-8 (2, 3 and 4 bytes, surrogate pairs)', '[{"n":"Müller^Ølse"},{"n":"山田^太郎"},{"e":"😀🩻𝄞"},{"k":"é"}]'],
    ['whitespace everywhere between tokens', '[ { "a" : [ 1 , 2 ] } ,\n\n { } \t]'],
    ['a leading UTF-8 BOM', '\ufeff[{"a":1}]'],
    ['BOM inside a string is kept', '[{"a":"\ufeffx"}]'],
    ['DICOM JSON with sequences', DICOM_JSON],
  ];
  for (const [name, input] of cases) {
    const expected = (JSON.parse(input.replace(/^\ufeff/, '')) as unknown[]).map((v) => JSON.stringify(v));
    for (const ch of CHUNKINGS) {
      test(`${name}, ${ch.name} chunks`, async () => {
        const buf = Buffer.from(input, 'utf8');
        const got = await split(buf, ch.offsets(buf.length));
        assert.equal(got.length, expected.length);
        got.forEach((text, i) => assert.equal(JSON.stringify(JSON.parse(text)), expected[i], `element ${i}`));
      });
    }
  }

  test('elements are the raw text between the separators', async () => {
    assert.deepEqual(await split('[ {"a" : 1 }\n,{ }]'), ['{"a" : 1 }', '{ }']);
    assert.deepEqual(await split(DICOM_JSON), [DICOM_JSON.slice(DICOM_JSON.indexOf('{'), DICOM_JSON.indexOf('},\r\n') + 1), '{"00080018":{"vr":"UI","Value":["1.2.3.4"]},"00100020":{"vr":"LO"}}']);
  });

  test('every split into two and three chunks (inside escapes and multi-byte characters)', async () => {
    const input = Buffer.from('[{"a":"\\\\\\"é山😀"},{"b":["\\\\",{"c":"}"}]}]', 'utf8');
    const expected = ['{"a":"\\\\\\"é山😀"}', '{"b":["\\\\",{"c":"}"}]}'];
    for (let i = 0; i <= input.length; i++) {
      for (let j = i; j <= Math.min(input.length, i + 6); j++) {
        assert.deepEqual(await split(input, [i, j]), expected, `cut at ${i},${j}`);
      }
    }
  });

  test('a large array in 64 KiB chunks', async () => {
    const elements = Array.from({ length: 2000 }, (_, i) => JSON.stringify({ '00200013': { vr: 'IS', Value: [i] }, '00100010': { vr: 'PN', Value: [{ Alphabetic: `Nåme^${'x'.repeat(i % 300)}` }] } }));
    const buf = Buffer.from(`[${elements.join(',')}]`);
    const offsets = Array.from({ length: Math.ceil(buf.length / 65536) }, (_, i) => (i + 1) * 65536);
    assert.deepEqual(await split(buf, offsets), elements);
  });
});

describe('splitJsonArray: objectsOnly: false', () => {
  test('scalars, strings and arrays are elements too', async () => {
    const input = '[1, -2.5e+3 ,"s\\"]" , true,false,null,[1,[2]],{"a":1},0,"",[]]';
    for (const ch of CHUNKINGS) {
      const buf = Buffer.from(input);
      assert.deepEqual(await split(buf, ch.offsets(buf.length), { objectsOnly: false }), ['1', '-2.5e+3', '"s\\"]"', 'true', 'false', 'null', '[1,[2]]', '{"a":1}', '0', '""', '[]'], ch.name);
    }
  });

  const bad: Array<[string, RegExp]> = [
    ['[tru]', /element 0 is not a valid JSON value/],
    ['[01]', /element 0 is not a valid JSON value/],
    ['[1.]', /element 0 is not a valid JSON value/],
    ['[{}, nul]', /element 1 is not a valid JSON value/],
    ['[+1]', /element 0 does not start a JSON value/],
    ['[1 2]', /expected ',' or ']' after element 0/],
    ['["a" "b"]', /expected ',' or ']' after element 0/],
  ];
  for (const [input, why] of bad) {
    test(`refuses ${input}`, async () => {
      await malformed(split(input, [], { objectsOnly: false }), why);
    });
  }
});

describe('splitJsonArray: malformed input', () => {
  const cases: Array<[string, string | Buffer, RegExp]> = [
    ['empty body', '', /the body is empty at byte 0$/],
    ['only whitespace', ' \n ', /the top level is not an array/],
    ['top-level object', `{"a":"${SECRET}"}`, /the top level is not an array at byte 0$/],
    ['top-level string', `"${SECRET}"`, /the top level is not an array/],
    ['half a BOM', Buffer.from([0xef, 0xbb, 0x5b, 0x5d]), /the top level is not an array at byte 2$/],
    ['BOM after whitespace', Buffer.concat([Buffer.from(' '), Buffer.from([0xef, 0xbb, 0xbf]), Buffer.from('[]')]), /the top level is not an array at byte 1$/],
    ['unterminated array', '[', /unterminated array at byte 1$/],
    ['unterminated after an element', `[{"a":"${SECRET}"}`, /unterminated array/],
    ['unterminated after a comma', '[{},', /unterminated array/],
    ['unterminated element', `[{"a":["${SECRET}"]`, /unterminated element 0/],
    ['unterminated string', `[{"a":"${SECRET}`, /unterminated string in element 0/],
    ['string ends on an escaped quote', '[{"a":"\\"]', /unterminated string in element 0/],
    ['mismatched brackets', `[{"a":["${SECRET}"}]`, /element 0 has a mismatched closing bracket at byte 17$/],
    ['mismatched brace', '[{"a":1]', /element 0 has a mismatched closing bracket at byte 7$/],
    ['trailing bytes', `[{}] ${SECRET}`, /trailing bytes after the array at byte 5$/],
    ['two arrays', '[][]', /trailing bytes after the array at byte 2$/],
    ['trailing comma', '[{},]', /trailing comma after element 0 at byte 4$/],
    ['leading comma', '[,{}]', /element 0 is not an object at byte 1$/],
    ['missing comma', '[{} {}]', /expected ',' or ']' after element 0 at byte 4$/],
    ['extra closing brace', '[{"a":1}}]', /expected ',' or ']' after element 0 at byte 8$/],
    ['number element', '[{}, 1]', /element 1 is not an object at byte 5$/],
    ['string element', `["${SECRET}"]`, /element 0 is not an object/],
    ['array element', '[[{}]]', /element 0 is not an object/],
    ['null element', '[null]', /element 0 is not an object/],
    ['invalid UTF-8', Buffer.concat([Buffer.from('[{},{"a":"DOE'), Buffer.from([0xc3, 0x28]), Buffer.from('"}]')]), /element 1 is not valid UTF-8 at byte 4$/],
    ['truncated UTF-8', Buffer.concat([Buffer.from('[{"a":"'), Buffer.from([0xe5, 0xb1]), Buffer.from('"}]')]), /element 0 is not valid UTF-8/],
    ['UTF-16 surrogate encoded in UTF-8', Buffer.concat([Buffer.from('[{"a":"'), Buffer.from([0xed, 0xa0, 0x80]), Buffer.from('"}]')]), /element 0 is not valid UTF-8/],
  ];
  for (const [name, input, why] of cases) {
    test(`${name}: the same error whatever the chunking`, async () => {
      const buf = typeof input === 'string' ? Buffer.from(input, 'utf8') : input;
      const messages = new Set<string>();
      for (const ch of CHUNKINGS) messages.add(await malformed(split(buf, ch.offsets(buf.length)), why));
      assert.equal(messages.size, 1, [...messages].join(' | '));
    });
  }

  test('elements before the fault are yielded first', async () => {
    const got: string[] = [];
    await malformed(
      (async () => {
        for await (const e of splitJsonArray(cut(Buffer.from('[{"a":1},{"b":2}, x]'), []))) got.push(e);
      })(),
      /element 2 is not an object/,
    );
    assert.deepEqual(got, ['{"a":1}', '{"b":2}']);
  });
});

describe('splitJsonArray: caps', () => {
  test('maxElementBytes: an element of exactly the cap passes, one byte more fails', async () => {
    const el = (n: number): string => `{"a":"${'x'.repeat(n - 8)}"}`;
    assert.equal(el(100).length, 100);
    for (const ch of CHUNKINGS.slice(0, 3)) {
      const ok = Buffer.from(`[${el(10)}, ${el(100)}]`);
      assert.deepEqual(await split(ok, ch.offsets(ok.length), { maxElementBytes: 100 }), [el(10), el(100)]);
      const over = Buffer.from(`[${el(10)}, ${el(101)}]`);
      await malformed(split(over, ch.offsets(over.length), { maxElementBytes: 100 }), /element 1 exceeds 100 bytes at byte 13$/);
    }
  });

  test('the default element cap is 64 MiB', () => {
    assert.equal(DEFAULT_MAX_ELEMENT_BYTES, 64 * 1024 * 1024);
  });

  test('an endless element fails at the cap without reading the whole input', async () => {
    let pulled = 0;
    async function* endless(): AsyncGenerator<Buffer> {
      yield Buffer.from('[{"a":"');
      for (;;) {
        pulled++;
        yield Buffer.alloc(1024, 0x78);
      }
    }
    await malformed(
      (async () => {
        for await (const _e of splitJsonArray(endless(), { maxElementBytes: 10_000 }));
      })(),
      /element 0 exceeds 10000 bytes/,
    );
    assert.ok(pulled <= 10, `pulled ${pulled} chunks`);
  });

  test(`nesting: ${MAX_JSON_DEPTH} levels (counting the array) pass, ${MAX_JSON_DEPTH + 1} fail`, async () => {
    const nested = (levels: number): string => `${'{"a":'.repeat(1)}${'['.repeat(levels - 2)}${']'.repeat(levels - 2)}}`;
    const ok = `[${nested(MAX_JSON_DEPTH)}]`;
    for (const ch of CHUNKINGS.slice(0, 2)) {
      const buf = Buffer.from(ok);
      assert.equal((await split(buf, ch.offsets(buf.length))).length, 1);
      const deep = Buffer.from(`[${nested(MAX_JSON_DEPTH + 1)}]`);
      await malformed(split(deep, ch.offsets(deep.length)), new RegExp(`element 0 nests deeper than ${MAX_JSON_DEPTH} levels at byte ${MAX_JSON_DEPTH + 4}$`));
    }
  });

  test('brackets inside strings do not count towards the depth', async () => {
    const s = `[{"a":"${'['.repeat(500)}${'{'.repeat(500)}"}]`;
    assert.deepEqual(await split(s), [s.slice(1, -1)]);
  });
});

describe('writeJsonArray', () => {
  const cases: Array<[string[], string]> = [
    [[], '[]'],
    [['{}'], '[{}]'],
    [['{"a":1}', '{"b":"山田 😀"}', '{}'], '[{"a":1},{"b":"山田 😀"},{}]'],
  ];
  for (const [elements, expected] of cases) {
    test(`writes ${expected}`, async () => {
      assert.equal(await collect(writeJsonArray(strings(elements))), expected);
    });
  }

  test('streams one chunk per element', async () => {
    const chunks: string[] = [];
    for await (const c of writeJsonArray(strings(['{"a":1}', '{"b":2}']))) chunks.push(c.toString());
    assert.deepEqual(chunks, ['[{"a":1}', ',{"b":2}', ']']);
  });

  test('round trip: split then write gives the compact array back', async () => {
    const buf = Buffer.from(DICOM_JSON);
    const out = await collect(writeJsonArray(splitJsonArray(cut(buf, CHUNKINGS[2]?.offsets(buf.length) ?? []))));
    assert.deepEqual(JSON.parse(out), JSON.parse(DICOM_JSON));
  });
});
