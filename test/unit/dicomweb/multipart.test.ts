import { test, describe } from 'node:test';
import assert from 'node:assert/strict';
import { Readable } from 'node:stream';
import { GatewayError, type ErrorCode } from '../../../src/core/errors.js';
import { newBoundary, parseContentType, readMultipart, writeMultipart, type Part } from '../../../src/dicomweb/multipart.js';
import { mulberry32 as rng } from '../../helpers/prng.js';

// ---------------------------------------------------------------------------------------------
// helpers

const SECRET = 'DOE^JANE-1970';


const bin = (s: string): Buffer => Buffer.from(s, 'latin1');

/** Yields `buf` cut at the given offsets; each chunk is a fresh copy, like data off a socket. */
async function* cut(buf: Buffer, offsets: readonly number[]): AsyncGenerator<Buffer> {
  let prev = 0;
  for (const o of [...offsets, buf.length]) {
    if (o < prev) continue;
    yield Buffer.from(buf.subarray(prev, o));
    prev = o;
  }
}

type Chunking = { name: string; offsets: (len: number) => number[] };

const CHUNKINGS: Chunking[] = [
  { name: 'whole', offsets: () => [] },
  { name: '1-byte', offsets: (len) => Array.from({ length: len }, (_, i) => i + 1) },
  { name: '7-byte', offsets: (len) => Array.from({ length: Math.ceil(len / 7) }, (_, i) => (i + 1) * 7) },
  ...[1, 2, 3, 42].map((seed) => ({
    name: `random sizes, seed ${seed}`,
    offsets: (len: number) => {
      const r = rng(seed);
      const out: number[] = [];
      for (let o = 0; o < len; ) out.push((o += 1 + Math.floor(r() * 97)));
      return out;
    },
  })),
];

type OutPart = { headers: Record<string, string>; body: AsyncIterable<Buffer> };

interface ReadPart {
  headers: Record<string, string>;
  body: Buffer;
}

async function readAll(parts: AsyncIterable<Part>): Promise<ReadPart[]> {
  const out: ReadPart[] = [];
  for await (const p of parts) {
    const chunks: Buffer[] = [];
    for await (const c of p.body) {
      assert.ok(c.length > 0, 'no empty body chunks');
      chunks.push(c);
    }
    out.push({ headers: { ...p.headers }, body: Buffer.concat(chunks) });
  }
  return out;
}

async function collect(gen: AsyncIterable<Buffer>): Promise<Buffer> {
  const chunks: Buffer[] = [];
  for await (const c of gen) chunks.push(c);
  return Buffer.concat(chunks);
}

async function* fromArray<T>(xs: readonly T[]): AsyncGenerator<T> {
  for (const x of xs) yield x;
}

async function assertGatewayError(p: Promise<unknown>, code: ErrorCode, message?: RegExp): Promise<void> {
  await assert.rejects(p, (e: unknown) => {
    assert.ok(e instanceof GatewayError, `GatewayError expected, got ${String(e)}`);
    assert.equal(e.code, code, e.message);
    if (message) assert.match(e.message, message);
    assert.ok(!e.message.includes(SECRET), 'messages never carry payload bytes');
    assert.ok(!e.message.includes('DOE'), 'messages never carry payload bytes');
    return true;
  });
}

const B = 'Bnd-0123456789';

/** The body writeMultipart would produce, built by hand. */
function manual(boundary: string, parts: ReadonlyArray<{ head: string; body: string | Buffer }>, preamble = '', epilogue = ''): Buffer {
  const out: Buffer[] = [bin(preamble)];
  parts.forEach((p, i) => {
    out.push(bin(`${i === 0 && preamble === '' ? '' : '\r\n'}--${boundary}\r\n${p.head}\r\n`));
    out.push(typeof p.body === 'string' ? bin(p.body) : p.body);
  });
  out.push(bin(`\r\n--${boundary}--${epilogue}`));
  return Buffer.concat(out);
}

// Part bodies chosen to sit on the edges of the delimiter "\r\n--" + B.
const TRICKY_BODIES: ReadonlyArray<[string, Buffer]> = [
  ['empty', Buffer.alloc(0)],
  ['plain', bin(`hello ${SECRET}`)],
  ['"--boundary" without the leading CRLF', bin(`x--${B}\r\nx--${B}--\r\n`)],
  ['"\\r\\n--boundary" minus its last character', bin(`a\r\n--${B.slice(0, -1)}b`)],
  ['ends with a delimiter prefix', bin(`abc\r\n--${B.slice(0, -1)}`)],
  ['ends with CR', bin('abc\r')],
  ['ends with CRLF', bin('abc\r\n')],
  ['ends with CRLF-', bin('abc\r\n-')],
  ['ends with CRLF--', bin('abc\r\n--')],
  ['starts with CRLF--', bin(`\r\n--x\r\n--${B.slice(0, 3)}`)],
  ['only CR and LF', bin('\r\n\r\n\r\r\n\n\r')],
  ['blank line inside', bin('a\r\n\r\nb')],
  ['repeated prefixes', bin(`\r\n-\r\n--\r\n--B\r\n--Bnd\r\n--${B.slice(0, -2)}\r\n`)],
  ['binary', Buffer.from(Array.from({ length: 600 }, (_, i) => (i * 37 + 11) & 0xff))],
];

// ---------------------------------------------------------------------------------------------

describe('parseContentType', () => {
  const ok: Array<[string, string, Record<string, string>]> = [
    ['multipart/related; type="application/dicom"; boundary=abc', 'multipart/related', { type: 'application/dicom', boundary: 'abc' }],
    [
      'multipart/related; type="application/dicom"; transfer-syntax=1.2.840.10008.1.2.1; boundary=xyz',
      'multipart/related',
      { type: 'application/dicom', 'transfer-syntax': '1.2.840.10008.1.2.1', boundary: 'xyz' },
    ],
    [
      `Multipart/Related; TYPE="application/dicom"; Boundary="a:b,c d=e?f/g'h(i)+_-.;j"`,
      'multipart/related',
      { type: 'application/dicom', boundary: "a:b,c d=e?f/g'h(i)+_-.;j" },
    ],
    ['multipart/related; boundary="q\\"uo\\\\te"', 'multipart/related', { boundary: 'q"uo\\te' }],
    ['multipart/related;type=application/dicom;boundary=ab==', 'multipart/related', { type: 'application/dicom', boundary: 'ab==' }],
    ['  multipart/related ; boundary = abc ; ', 'multipart/related', { boundary: 'abc' }],
    ['multipart/related;; boundary=abc;', 'multipart/related', { boundary: 'abc' }],
    ['application/dicom+json', 'application/dicom+json', {}],
    ['application/DICOM; charset=UTF-8', 'application/dicom', { charset: 'UTF-8' }],
    ['multipart/related; boundary=""', 'multipart/related', { boundary: '' }],
  ];
  for (const [value, type, params] of ok) {
    test(`parses ${JSON.stringify(value)}`, () => {
      const r = parseContentType(value);
      assert.equal(r.type, type);
      assert.deepEqual({ ...r.params }, params);
    });
  }

  test('params has no prototype keys', () => {
    const r = parseContentType('multipart/related; boundary=abc');
    assert.equal(r.params['constructor'], undefined);
    assert.equal(r.params['toString'], undefined);
  });

  const bad: Array<[string, RegExp]> = [
    ['', /expected a media type/],
    ['multipart', /expected '\/'/],
    ['multipart/', /expected a media subtype/],
    ['multipart/related boundary=abc', /expected ';'/],
    ['multipart/related; boundary', /expected '='/],
    ['multipart/related; boundary=', /empty parameter value/],
    ['multipart/related; boundary="abc', /unterminated quoted string/],
    ['multipart/related; boundary="abc\\', /unterminated quoted string/],
    ['multipart/related; boundary=a; Boundary=b', /repeated parameter/],
    ['multipart/related; boundary="a\r\nb"', /control character/],
    ['multipart/related; boundary=a"b', /invalid character/],
    ['multipart/related; =abc', /expected a parameter name/],
  ];
  for (const [value, why] of bad) {
    test(`refuses ${JSON.stringify(value)}`, () => {
      assert.throws(
        () => parseContentType(value),
        (e: unknown) => e instanceof GatewayError && e.code === 'DICOM_MALFORMED' && why.test(e.message),
      );
    });
  }
});

describe('readMultipart: round trips with writeMultipart', () => {
  const r = rng(7);
  const many = Array.from({ length: 40 }, (_, i) => {
    const n = i % 5 === 0 ? 0 : Math.floor(r() * 3000);
    return { headers: { 'Content-Type': 'application/dicom', 'Content-Location': `/p/${i}` }, body: Buffer.from(Array.from({ length: n }, () => Math.floor(r() * 256))) };
  });
  const tricky = TRICKY_BODIES.map(([, body], i) => ({ headers: { 'Content-Type': `application/octet-stream; n=${i}` }, body }));

  for (const [setName, parts] of [
    ['40 random parts, some empty', many],
    ['tricky bodies', tricky],
    ['one empty part', [{ headers: {}, body: Buffer.alloc(0) }]],
    ['no parts', []],
  ] as const) {
    for (const ch of CHUNKINGS) {
      test(`${setName}, ${ch.name} chunks`, async () => {
        const wire = await collect(writeMultipart(fromArray(parts.map((p) => ({ headers: p.headers, body: fromArray(p.body.length ? [p.body] : []) }))), B));
        const got = await readAll(readMultipart(cut(wire, ch.offsets(wire.length)), B));
        assert.equal(got.length, parts.length);
        got.forEach((g, i) => {
          const want = parts[i];
          assert.ok(want, 'want');
          assert.deepEqual(g.headers, Object.fromEntries(Object.entries(want.headers).map(([k, v]) => [k.toLowerCase(), v])));
          assert.ok(g.body.equals(want.body), `part ${i} body`);
        });
      });
    }
  }

  test('every split into two and three chunks of a body with tricky parts', async () => {
    const parts = TRICKY_BODIES.slice(2, 8).map(([, body]) => ({ head: 'A: 1\r\n', body }));
    const wire = manual(B, parts, 'pre\r\n', '\r\nepi');
    // Every first cut, with a second cut at the same place (a two-way split) or up to a
    // delimiter's length later (a short middle chunk, e.g. inside "\r\n--" + boundary).
    const reach = `\r\n--${B}\r\n`.length + 1;
    for (let i = 1; i < wire.length; i++) {
      for (let j = i; j < Math.min(wire.length, i + reach); j++) {
        const got = await readAll(readMultipart(cut(wire, [i, j]), B));
        assert.equal(got.length, parts.length, `split at ${i},${j}`);
        got.forEach((g, k) => assert.ok(g.body.equals(parts[k]?.body as Buffer), `split at ${i},${j}, part ${k}`));
      }
    }
  });

  test('body chunks are zero-copy views of the input', async () => {
    const payload = Buffer.alloc(100_000, 0x41);
    const wire = manual(B, [{ head: '', body: payload }]);
    let seen = 0;
    for await (const p of readMultipart(fromArray([wire]), B)) {
      for await (const c of p.body) {
        assert.equal(c.buffer, wire.buffer, 'same memory as the input chunk');
        seen += c.length;
      }
    }
    assert.equal(seen, payload.length);
  });

  test('accepts plain Uint8Array chunks and a Readable stream', async () => {
    const wire = manual(B, [{ head: 'Content-Type: application/dicom\r\n', body: 'abc' }]);
    const u8 = fromArray([new Uint8Array(wire.buffer, wire.byteOffset, 10), new Uint8Array(wire.subarray(10))]);
    assert.equal((await readAll(readMultipart(u8, B)))[0]?.body.toString(), 'abc');
    assert.equal((await readAll(readMultipart(Readable.from([wire.subarray(0, 5), wire.subarray(5)]), B)))[0]?.body.toString(), 'abc');
  });

  test('boundaries made of unusual but legal characters', async () => {
    for (const b of ['-', 'a', '---', "'()+_,-./:=?", 'with space inside', 'x'.repeat(70)]) {
      const parts = [{ head: '', body: `--${b}-- \r\n-${b}` }, { head: '', body: '' }];
      const wire = manual(b, parts);
      for (const ch of CHUNKINGS.slice(0, 3)) {
        const got = await readAll(readMultipart(cut(wire, ch.offsets(wire.length)), b));
        assert.deepEqual(
          got.map((g) => g.body.toString('latin1')),
          parts.map((p) => p.body),
          `boundary ${JSON.stringify(b)}, ${ch.name}`,
        );
      }
    }
  });
});

describe('readMultipart: framing', () => {
  test('preamble and epilogue are ignored, and the epilogue is read to the end', async () => {
    const wire = manual(B, [{ head: '', body: 'one' }, { head: '', body: 'two' }], `preamble --${B} not at line start\r\n\r\n`, `\r\n--${B}\r\nepilogue ${SECRET}`);
    let pulled = 0;
    let finished = false;
    async function* source(): AsyncGenerator<Buffer> {
      for (const c of [wire.subarray(0, 20), wire.subarray(20, wire.length - 5), wire.subarray(wire.length - 5)]) {
        pulled++;
        yield c;
      }
      finished = true;
    }
    const got = await readAll(readMultipart(source(), B));
    assert.deepEqual(got.map((g) => g.body.toString()), ['one', 'two']);
    assert.equal(pulled, 3);
    assert.ok(finished, 'finished');
  });

  test('the first delimiter may start the body or follow a CRLF', async () => {
    for (const wire of [bin(`--${B}\r\n\r\nx\r\n--${B}--`), bin(`\r\n--${B}\r\n\r\nx\r\n--${B}--`), bin(`\r\n\r\n--${B}\r\n\r\nx\r\n--${B}--\r\n`)]) {
      assert.deepEqual((await readAll(readMultipart(fromArray([wire]), B))).map((g) => g.body.toString()), ['x']);
    }
  });

  test('transport padding after a delimiter is allowed', async () => {
    const wire = bin(`--${B} \t \r\n\r\nx\r\n--${B}\t\r\n\r\ny\r\n--${B}--`);
    for (const ch of CHUNKINGS.slice(0, 2)) {
      assert.deepEqual((await readAll(readMultipart(cut(wire, ch.offsets(wire.length)), B))).map((g) => g.body.toString()), ['x', 'y']);
    }
  });

  const malformed: Array<[string, Buffer, RegExp]> = [
    ['endless transport padding', bin(`--${B}${' '.repeat(5000)}\r\n\r\nx\r\n--${B}--`), /too much padding/],
    ['delimiter followed by other bytes (boundary occurs in the data)', bin(`--${B}\r\n\r\n${SECRET}\r\n--${B}X${SECRET}\r\n--${B}--`), /followed by unexpected bytes at byte \d+/],
    ['close delimiter with one dash', bin(`--${B}\r\n\r\nx\r\n--${B}-x`), /followed by unexpected bytes/],
    ['delimiter followed by CR without LF', bin(`--${B}\r\rx\r\n--${B}--`), /followed by unexpected bytes/],
    ['header line without a colon', bin(`--${B}\r\nContent-Type application/dicom ${SECRET}\r\n\r\nx\r\n--${B}--`), /header line without a valid name/],
    ['header line with an empty name', bin(`--${B}\r\n: ${SECRET}\r\n\r\nx\r\n--${B}--`), /header line without a valid name/],
    ['header name with a space', bin(`--${B}\r\nContent Type: ${SECRET}\r\n\r\nx\r\n--${B}--`), /header line without a valid name/],
    ['continuation line first', bin(`--${B}\r\n  ${SECRET}\r\n\r\nx\r\n--${B}--`), /continuation line/],
    ['bare LF in headers', bin(`--${B}\r\nA: 1\nB: ${SECRET}\r\n\r\nx\r\n--${B}--`), /bare CR or LF/],
  ];
  for (const [name, wire, why] of malformed) {
    for (const ch of CHUNKINGS.slice(0, 2)) {
      test(`DICOM_MALFORMED: ${name}, ${ch.name}`, async () => {
        await assertGatewayError(readAll(readMultipart(cut(wire, ch.offsets(wire.length)), B)), 'DICOM_MALFORMED', why);
      });
    }
  }

  const truncatedCases: Array<[string, string]> = [
    ['an empty body', ''],
    ['only a preamble', `preamble ${SECRET}\r\n`],
    ['inside the first delimiter', `--${B.slice(0, 4)}`],
    ['right after a delimiter', `--${B}`],
    ['inside transport padding', `--${B}  `],
    ['after the delimiter CR', `--${B}\r`],
    ['inside part headers', `--${B}\r\nContent-Type: appl`],
    ['after the last header line', `--${B}\r\nContent-Type: application/dicom\r\n`],
    ['inside a part body', `--${B}\r\n\r\n${SECRET}`],
    ['inside the next delimiter', `--${B}\r\n\r\nabc\r\n--${B.slice(0, 5)}`],
    ['without the close delimiter', `--${B}\r\n\r\nabc\r\n--${B}\r\n\r\ndef\r\n`],
    ['close delimiter missing its second dash', `--${B}\r\n\r\nabc\r\n--${B}-`],
  ];
  for (const [name, text] of truncatedCases) {
    for (const ch of CHUNKINGS.slice(0, 3)) {
      test(`DICOM_TRUNCATED: ends ${name}, ${ch.name}`, async () => {
        const wire = bin(text);
        await assertGatewayError(readAll(readMultipart(cut(wire, ch.offsets(wire.length)), B)), 'DICOM_TRUNCATED', /^multipart body ends before its closing boundary$/);
      });
    }
  }

  test('truncation is thrown from the body iterator when a body is being read', async () => {
    const parts = readMultipart(fromArray([bin(`--${B}\r\n\r\nabc`), bin('def')]), B);
    const first = await parts.next();
    assert.equal(first.done, false);
    const it = first.value.body[Symbol.asyncIterator]();
    assert.equal((await it.next()).value?.toString(), 'abc');
    assert.equal((await it.next()).value?.toString(), 'def');
    await assertGatewayError(it.next(), 'DICOM_TRUNCATED');
    // Sticky: the part iterator reports the same failure.
    await assertGatewayError(parts.next(), 'DICOM_TRUNCATED');
  });

  test('truncation is thrown from the part iterator when it drains an unread body', async () => {
    const parts = readMultipart(fromArray([bin(`--${B}\r\n\r\nabc`)]), B);
    assert.equal((await parts.next()).done, false);
    await assertGatewayError(parts.next(), 'DICOM_TRUNCATED');
  });

  test('errors from the input propagate unchanged', async () => {
    const boom = new Error('socket reset');
    async function* failing(): AsyncGenerator<Buffer> {
      yield bin(`--${B}\r\n\r\nabc`);
      throw boom;
    }
    await assert.rejects(readAll(readMultipart(failing(), B)), (e) => e === boom);
  });

  test('a failure is sticky: the part iterator rethrows what the body iterator threw', async () => {
    const boom = new Error('socket reset');
    async function* failing(): AsyncGenerator<Buffer> {
      yield bin(`--${B}\r\n\r\nabc`);
      throw boom;
    }
    const parts = readMultipart(failing(), B);
    const first = await parts.next();
    assert.equal(first.done, false);
    await assert.rejects(collect(first.value.body), (e) => e === boom);
    await assert.rejects(parts.next(), (e) => e === boom);
  });

  test('leaving the part loop early closes the input', async () => {
    let closed = false;
    async function* source(): AsyncGenerator<Buffer> {
      try {
        yield bin(`--${B}\r\n\r\nabc\r\n--${B}\r\n`);
        yield bin(`\r\nmore`);
        yield bin(`\r\n--${B}--`);
      } finally {
        closed = true;
      }
    }
    for await (const p of readMultipart(source(), B)) {
      for await (const _c of p.body);
      break;
    }
    assert.ok(closed, 'closed');
  });
});

describe('readMultipart: part headers', () => {
  test('names are lower-cased, values trimmed, folded lines unfolded, repeats joined', async () => {
    const head =
      'Content-Type: multipart/related;\r\n\ttype="application/dicom";\r\n  boundary="a b;c"\r\n' +
      'CONTENT-LOCATION:/studies/1.2.3  \r\n' +
      'X-Dup: one\r\n' +
      'x-dup: two\r\n' +
      'X-Empty:\r\n';
    const wire = manual(B, [{ head, body: 'x' }]);
    for (const ch of CHUNKINGS) {
      const [p] = await readAll(readMultipart(cut(wire, ch.offsets(wire.length)), B));
      assert.deepEqual(p?.headers, {
        'content-type': 'multipart/related;\ttype="application/dicom";  boundary="a b;c"',
        'content-location': '/studies/1.2.3',
        'x-dup': 'one, two',
        'x-empty': '',
      });
      const ct = parseContentType(p.headers['content-type'] ?? '');
      assert.deepEqual({ ...ct.params }, { type: 'application/dicom', boundary: 'a b;c' });
    }
  });

  test('a part without headers has an empty header object', async () => {
    const [p] = await readAll(readMultipart(fromArray([manual(B, [{ head: '', body: 'x' }])]), B));
    assert.deepEqual(p?.headers, {});
  });

  test('the header cap: exactly maxHeaderBytes passes, one more byte fails', async () => {
    // The header block counts its lines and the blank line that ends it.
    const max = 64;
    const headerBlockOf = (n: number): string => `X: ${'v'.repeat(n - 7)}\r\n`; // + "\r\n" = n bytes
    const exact = headerBlockOf(max);
    assert.equal(exact.length + 2, max);
    const okWire = manual(B, [{ head: exact, body: 'x' }]);
    for (const ch of CHUNKINGS.slice(0, 2)) {
      const [p] = await readAll(readMultipart(cut(okWire, ch.offsets(okWire.length)), B, { maxHeaderBytes: max }));
      assert.equal(p?.headers['x']?.length, max - 7);
      const overWire = manual(B, [{ head: headerBlockOf(max + 1), body: 'x' }]);
      await assertGatewayError(readAll(readMultipart(cut(overWire, ch.offsets(overWire.length)), B, { maxHeaderBytes: max })), 'DICOM_MALFORMED', /part headers exceed 64 bytes/);
    }
  });

  test('the default header cap is 16 KiB', async () => {
    const small = manual(B, [{ head: `X: ${'v'.repeat(16 * 1024 - 9)}\r\n`, body: 'x' }]);
    assert.equal((await readAll(readMultipart(fromArray([small]), B))).length, 1);
    const big = manual(B, [{ head: `X: ${SECRET}${'v'.repeat(16 * 1024)}\r\n`, body: 'x' }]);
    await assertGatewayError(readAll(readMultipart(fromArray([big]), B)), 'DICOM_MALFORMED', /exceed 16384 bytes/);
  });

  test('endless headers fail at the cap without reading the whole input', async () => {
    let pulled = 0;
    async function* endless(): AsyncGenerator<Buffer> {
      yield bin(`--${B}\r\nX: `);
      for (;;) {
        pulled++;
        yield Buffer.alloc(1024, 0x61);
      }
    }
    await assertGatewayError(readAll(readMultipart(endless(), B)), 'DICOM_MALFORMED', /exceed/);
    assert.ok(pulled <= 17, `pulled ${pulled} chunks`);
  });
});

describe('readMultipart: boundary from the body', () => {
  const bodyBoundary = 'body-boundary-42';
  const wire = manual(bodyBoundary, [{ head: 'Content-Type: application/dicom\r\n', body: 'one' }, { head: '', body: 'two' }]);

  test('without sniffing, a header boundary that differs from the body fails', async () => {
    await assert.rejects(readAll(readMultipart(fromArray([wire]), 'header-boundary')), GatewayError);
  });

  for (const ch of CHUNKINGS.slice(0, 3)) {
    test(`sniffBoundary takes the body's first line, ${ch.name} chunks`, async () => {
      for (const hb of ['header-boundary', undefined, bodyBoundary]) {
        const got = await readAll(readMultipart(cut(wire, ch.offsets(wire.length)), hb, { sniffBoundary: true }));
        assert.deepEqual(got.map((g) => g.body.toString()), ['one', 'two'], `header boundary ${String(hb)}`);
      }
    });
  }

  test('sniffing skips leading blank lines (dicomweb-client writes a CRLF first)', async () => {
    const w = Buffer.concat([bin('\r\n\r\n'), wire]);
    for (const ch of CHUNKINGS.slice(0, 2)) {
      const got = await readAll(readMultipart(cut(w, ch.offsets(w.length)), 'other', { sniffBoundary: true }));
      assert.deepEqual(got.map((g) => g.body.toString()), ['one', 'two']);
    }
  });

  test('sniffing falls back to the header boundary when the first line is not a delimiter', async () => {
    const w = manual(B, [{ head: '', body: 'x' }], 'a preamble line\r\n');
    assert.deepEqual((await readAll(readMultipart(fromArray([w]), B, { sniffBoundary: true }))).map((g) => g.body.toString()), ['x']);
    await assertGatewayError(readAll(readMultipart(fromArray([w]), undefined, { sniffBoundary: true })), 'DICOM_MALFORMED', /without a boundary/);
  });

  test('a body with no parts ("--b--" first) keeps the header boundary', async () => {
    const w = bin(`--${B}--\r\n`);
    assert.deepEqual(await readAll(readMultipart(fromArray([w]), B, { sniffBoundary: true })), []);
  });

  test('no boundary at all, or an invalid one, is DICOM_MALFORMED', async () => {
    await assertGatewayError(readAll(readMultipart(fromArray([wire]), undefined)), 'DICOM_MALFORMED', /without a boundary/);
    for (const b of ['', 'has\r\nCRLF', 'x'.repeat(257), 'trailing space ']) {
      await assertGatewayError(readAll(readMultipart(fromArray([wire]), b)), 'DICOM_MALFORMED', /boundary is empty, too long or has invalid characters/);
    }
  });
});

describe('readMultipart: consuming parts in order', () => {
  const wire = manual(B, [
    { head: 'N: 1\r\n', body: 'first body' },
    { head: 'N: 2\r\n', body: 'second body' },
    { head: 'N: 3\r\n', body: 'third' },
  ]);
  const chunked = (): AsyncGenerator<Buffer> => cut(wire, Array.from({ length: wire.length }, (_, i) => i + 1));

  test('pulling the next part drains the unread rest of the previous one', async () => {
    const seen: string[] = [];
    let i = 0;
    for await (const p of readMultipart(chunked(), B)) {
      if (i++ === 1) {
        // read only part of the second body
        const it = p.body[Symbol.asyncIterator]();
        await it.next();
      }
      seen.push(p.headers['n'] ?? '?');
    }
    assert.deepEqual(seen, ['1', '2', '3']);
  });

  test('reading a skipped body after pulling the next part throws INTERNAL', async () => {
    const parts = readMultipart(chunked(), B);
    const first = await parts.next();
    assert.equal(first.done, false);
    const second = await parts.next();
    assert.equal(second.done, false);
    assert.equal(second.value.headers['n'], '2');
    await assertGatewayError(collect(first.value.body), 'INTERNAL', /after the next part was pulled/);
    assert.equal((await collect(second.value.body)).toString(), 'second body');
  });

  test('a fully read body stays ended after the next part is pulled', async () => {
    const parts = readMultipart(chunked(), B);
    const first = await parts.next();
    assert.equal(first.done, false);
    assert.equal((await collect(first.value.body)).toString(), 'first body');
    await parts.next();
    assert.equal((await collect(first.value.body)).length, 0);
  });

  test('reading a body and the part iterator at the same time throws INTERNAL', async () => {
    const parts = readMultipart(chunked(), B);
    const first = await parts.next();
    assert.equal(first.done, false);
    const it = first.value.body[Symbol.asyncIterator]();
    const pending = it.next();
    await assertGatewayError(parts.next(), 'INTERNAL', /concurrently/);
    assert.equal((await pending).done, false);
  });
});

describe('writeMultipart', () => {
  test('writes the exact framing', async () => {
    const out = await collect(
      writeMultipart(
        fromArray<OutPart>([
          { headers: { 'Content-Type': 'application/dicom', 'Content-Location': '/a' }, body: fromArray([bin('AB'), Buffer.alloc(0), bin('C')]) },
          { headers: {}, body: fromArray<Buffer>([]) },
        ]),
        'b1',
      ),
    );
    assert.equal(out.toString('latin1'), '--b1\r\nContent-Type: application/dicom\r\nContent-Location: /a\r\n\r\nABC\r\n--b1\r\n\r\n\r\n--b1--\r\n');
  });

  test('never yields empty chunks', async () => {
    const body = fromArray([Buffer.alloc(0), bin('x'), Buffer.alloc(0)]);
    for await (const c of writeMultipart(fromArray([{ headers: {}, body }]), 'b')) assert.ok(c.length > 0, 'c.length > 0');
  });

  test('no parts: only the close delimiter', async () => {
    assert.equal((await collect(writeMultipart(fromArray([]), 'b1'))).toString('latin1'), '--b1--\r\n');
  });

  test('streams: a body chunk is written before the part body produces the next one', async () => {
    const events: string[] = [];
    async function* body(): AsyncGenerator<Buffer> {
      events.push('produce 1');
      yield bin('one');
      events.push('produce 2');
      yield bin('two');
    }
    for await (const c of writeMultipart(fromArray([{ headers: {}, body: body() }]), 'b')) events.push(`write ${c.toString('latin1')}`);
    assert.deepEqual(events.slice(0, 4), ['write --b\r\n\r\n', 'produce 1', 'write one', 'produce 2']);
  });

  test('refuses header names and values that would break the framing', async () => {
    for (const headers of [{ 'Bad Name': 'x' }, { 'X-A': `v\r\nInjected: ${SECRET}` }, { 'X-A': 'snowman ☃' }, { '': 'x' }] as Array<Record<string, string>>) {
      await assertGatewayError(collect(writeMultipart(fromArray([{ headers, body: fromArray<Buffer>([]) }]), 'b')), 'INTERNAL');
    }
    await assertGatewayError(collect(writeMultipart(fromArray([]), 'bad\r\nboundary')), 'INTERNAL');
  });
});

describe('newBoundary', () => {
  test('is a random token usable unquoted in a Content-Type', () => {
    const seen = new Set<string>();
    for (let i = 0; i < 100; i++) {
      const b = newBoundary();
      assert.match(b, /^[0-9a-f]{32}$/);
      assert.equal(parseContentType(`multipart/related; type="application/dicom"; boundary=${b}`).params['boundary'], b);
      seen.add(b);
    }
    assert.equal(seen.size, 100);
  });
});
