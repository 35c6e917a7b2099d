/**
 * The Part 10 parser (src/dicom/part10.ts) and the streaming driver (src/deid/part10.ts).
 *
 * Inputs are built with test/helpers/dicom-builder.ts (independent of src/) or, for faults the
 * builder refuses to write, with the small raw element writer below. Expected bytes are computed
 * here from PS3.5/PS3.10 rules, never by calling the code under test.
 */
import { test, describe } from 'node:test';
import assert from 'node:assert/strict';
import { inflateRawSync } from 'node:zlib';
import { GatewayError, type ErrorCode } from '../../../src/core/errors.js';
import { createEngineContext } from '../../../src/deid/index.js';
import type { EngineContext } from '../../../src/deid/engine.js';
import { deidentifyPart10, deidentifyPart10Buffer, type Part10Options } from '../../../src/deid/part10.js';
import type { OptionName } from '../../../src/deid/table.js';
import {
  ByteQueue, ElementParser, EXPLICIT_LE, IMPLICIT_LE, NeedMoreData, readHeaderSync, transferSyntax,
  type RawElement, type Syntax,
} from '../../../src/dicom/part10.js';
import { encodeDataset, encodePart10, encapsulatedPixelData, TS_UID, type El, type TS } from '../../helpers/dicom-builder.js';
import { mulberry32 as prng } from '../../helpers/prng.js';

// ---------------------------------------------------------------------------------------------
// Fixtures and helpers

const MASTER = Buffer.alloc(32, 0x5a);
const JPEG_BASELINE = '1.2.840.10008.1.2.4.50';

function ctxFor(options: OptionName[] = [], clientId = 'client-a'): EngineContext {
  return createEngineContext({ clientId, profile: { options }, masterSecret: MASTER });
}

/** Planted values: none of them may appear in an error message or in the output. */
const CANARY = {
  name: 'Canaryname^Zelda',
  id: 'CANARYMRN7781',
  desc: 'CANARYDESC Zelda Xyzzyq',
  comment: 'CANARYCOMMENT',
  aet: 'CANARY_AE',
};
const SOP_CLASS = '1.2.840.10008.5.1.4.1.1.7'; // Secondary Capture Image Storage
const SOP = '1.2.826.0.1.3680043.9.7433.1.1.1';
const STUDY = '1.2.826.0.1.3680043.9.7433.1.1.2';
const SERIES = '1.2.826.0.1.3680043.9.7433.1.1.3';

function headerEls(extra: El[] = []): El[] {
  return [
    { tag: 0x00080016, vr: 'UI', value: SOP_CLASS },
    { tag: 0x00080018, vr: 'UI', value: SOP },
    { tag: 0x00080020, vr: 'DA', value: '20240229' },
    { tag: 0x00080060, vr: 'CS', value: 'OT' },
    { tag: 0x00100010, vr: 'PN', value: CANARY.name },
    { tag: 0x00100020, vr: 'LO', value: CANARY.id },
    { tag: 0x0020000d, vr: 'UI', value: STUDY },
    { tag: 0x0020000e, vr: 'UI', value: SERIES },
    { tag: 0x00280002, vr: 'US', value: [1] },
    { tag: 0x00280010, vr: 'US', value: [4] },
    { tag: 0x00280011, vr: 'US', value: [6] },
    { tag: 0x00280100, vr: 'US', value: [16] },
    ...extra,
  ];
}

/** 16-bit pixel words (little-endian bytes), with values that look like tags and delimiters. */
function pixelWordsLE(count: number): Buffer {
  const special = [0x0000, 0xffff, 0x7fe0, 0x0010, 0xfffe, 0xe0dd, 0xe000, 0x8000];
  const b = Buffer.alloc(count * 2);
  for (let i = 0; i < count; i++) b.writeUInt16LE(special[i % special.length]! ^ ((i * 40503) & 0x0ff0), i * 2);
  return b;
}

function nativePixel(words: Buffer): El {
  return { tag: 0x7fe00010, vr: 'OW', value: words };
}

function fragment(n: number, seed: number): Buffer {
  const b = Buffer.alloc(n);
  for (let i = 0; i < n; i++) b[i] = (i * 31 + seed * 17) & 0xff;
  // A JPEG-like start and end, and bytes that look like an item tag in the middle.
  b[0] = 0xff; b[1] = 0xd8; b[n - 2] = 0xff; b[n - 1] = 0xd9;
  b.writeUInt32LE(0xe000fffe, 8);
  return b;
}

/** Basic Offset Table (PS3.5 A.4): UL offset of each frame's first item, from the first fragment item. */
function basicOffsetTable(frags: Buffer[]): Buffer {
  const bot = Buffer.alloc(4 * frags.length);
  let off = 0;
  frags.forEach((f, i) => { bot.writeUInt32LE(off, i * 4); off += 8 + f.length; });
  return bot;
}


type Split = 'whole' | 'bytes' | { random: number; max: number } | { fixed: number };

async function* feed(input: Buffer, split: Split): AsyncGenerator<Uint8Array> {
  if (split === 'whole') { yield input; return; }
  const next = split === 'bytes' ? () => 1
    : 'fixed' in split ? () => split.fixed
    : (() => { const r = prng(split.random); return () => 1 + Math.floor(r() * split.max); })();
  for (let at = 0; at < input.length;) {
    const n = next();
    // A fresh copy, as a socket would hand out: the driver must not depend on one backing buffer.
    yield new Uint8Array(input.subarray(at, at + n));
    at += n;
  }
}

interface RunResult { chunks: Buffer[]; error: unknown }

/** Drives the streaming de-identifier, recording every chunk yielded before an error. */
async function run(input: Buffer, ctx: EngineContext, opts: Part10Options = {}, split: Split = 'whole'): Promise<RunResult> {
  const chunks: Buffer[] = [];
  try {
    for await (const c of deidentifyPart10(feed(input, split), ctx, opts)) chunks.push(Buffer.from(c));
    return { chunks, error: undefined };
  } catch (error) {
    return { chunks, error };
  }
}

async function deid(input: Buffer, ctx: EngineContext = ctxFor(), opts: Part10Options = {}, split: Split = 'whole'): Promise<Buffer> {
  const r = await run(input, ctx, opts, split);
  if (r.error) throw r.error;
  return Buffer.concat(r.chunks);
}

function assertGatewayError(error: unknown, code: ErrorCode, planted: readonly string[] = Object.values(CANARY)): void {
  assert.ok(error instanceof GatewayError, `GatewayError expected, got ${String(error)}`);
  assert.equal(error.code, code, `code (message: ${error.message})`);
  for (const p of planted) {
    for (const piece of p.split(/[\^ ]/)) {
      if (piece.length >= 4) assert.ok(!error.message.includes(piece), `message leaks "${piece}": ${error.message}`);
    }
  }
}

const UNDEF = 0xffffffff;
const LONG_VRS = new Set(['OB', 'OD', 'OF', 'OL', 'OV', 'OW', 'SQ', 'UC', 'UN', 'UR', 'UT', 'SV', 'UV']);

/** One raw element, written exactly as asked (PS3.5 7.1.2/7.1.3), whatever the rules say. */
function rawEl(tag: number, vr: string | null, length: number, value: Buffer = Buffer.alloc(0), le = true): Buffer {
  const t = Buffer.alloc(4);
  if (le) { t.writeUInt16LE(tag >>> 16, 0); t.writeUInt16LE(tag & 0xffff, 2); } else { t.writeUInt16BE(tag >>> 16, 0); t.writeUInt16BE(tag & 0xffff, 2); }
  const u32 = (n: number): Buffer => { const b = Buffer.alloc(4); if (le) b.writeUInt32LE(n >>> 0); else b.writeUInt32BE(n >>> 0); return b; };
  if (vr === null) return Buffer.concat([t, u32(length), value]);
  if (LONG_VRS.has(vr)) return Buffer.concat([t, Buffer.from(vr, 'latin1'), Buffer.alloc(2), u32(length), value]);
  const l = Buffer.alloc(2);
  if (le) l.writeUInt16LE(length & 0xffff); else l.writeUInt16BE(length & 0xffff);
  return Buffer.concat([t, Buffer.from(vr, 'latin1'), l, value]);
}

const ITEM = 0xfffee000;
const ITEM_DELIM = 0xfffee00d;
const SEQ_DELIM = 0xfffee0dd;

/** A Part 10 file: the builder's preamble, meta and first elements, then raw bytes appended. */
function part10With(elements: El[], tail: Buffer, ts: TS = 'explicitLE'): Buffer {
  return Buffer.concat([encodePart10(elements, { ts }), tail]);
}

/** Reads group 0002 independently: [tag, vr, value] in order, and where the data set starts. */
function walkMeta(out: Buffer): { els: Array<{ tag: number; vr: string; value: Buffer; at: number }>; end: number } {
  const els: Array<{ tag: number; vr: string; value: Buffer; at: number }> = [];
  let at = 132;
  while (at + 8 <= out.length && out.readUInt16LE(at) === 0x0002) {
    const tag = (out.readUInt16LE(at) << 16 | out.readUInt16LE(at + 2)) >>> 0;
    const vr = out.toString('latin1', at + 4, at + 6);
    const long = LONG_VRS.has(vr);
    const len = long ? out.readUInt32LE(at + 8) : out.readUInt16LE(at + 6);
    const start = at + (long ? 12 : 8);
    els.push({ tag, vr, value: out.subarray(start, start + len), at });
    at = start + len;
  }
  return { els, end: at };
}

function text(v: Buffer | null | undefined): string {
  return v ? v.toString('latin1').replace(/[\0 ]+$/, '') : '';
}

function find(elements: readonly RawElement[], tag: number): RawElement | undefined {
  return elements.find((e) => e.tag === tag);
}

/** The data set bytes of an output (inflated when the transfer syntax is deflated). */
function datasetOf(out: Buffer): Buffer {
  const { els, end } = walkMeta(out);
  const ts = text(els.find((e) => e.tag === 0x00020010)?.value);
  return ts === TS_UID.deflatedLE ? inflateRawSync(out.subarray(end)) : out.subarray(end);
}

function pixelHeader(syntax: Syntax, vr: 'OB' | 'OW', length: number): Buffer {
  return rawEl(0x7fe00010, syntax.explicit ? vr : null, length, Buffer.alloc(0), syntax.littleEndian);
}

const SYNTAX: Record<TS, Syntax> = {
  explicitLE: EXPLICIT_LE,
  implicitLE: IMPLICIT_LE,
  explicitBE: { explicit: true, littleEndian: false },
  deflatedLE: EXPLICIT_LE,
};

// ---------------------------------------------------------------------------------------------
// Fail closed

describe('part10 driver: malformed input is refused, with no byte out before the error', () => {
  const valid = (): Buffer => encodePart10(headerEls([nativePixel(pixelWordsLE(24))]), { ts: 'explicitLE' });
  const metaEls = (withTs: boolean): Buffer => encodeDataset([
    { tag: 0x00020000, vr: 'UL' },
    { tag: 0x00020001, vr: 'OB', value: Buffer.from([0, 1]) },
    { tag: 0x00020002, vr: 'UI', value: SOP_CLASS },
    { tag: 0x00020003, vr: 'UI', value: SOP },
    ...(withTs ? [{ tag: 0x00020010, vr: 'UI', value: TS_UID.explicitLE }] : []),
  ], 'explicitLE');

  // `alt`: a second code that is as correct (a structurally impossible length reads as a truncation too).
  const cases: Array<{ name: string; code: ErrorCode; alt?: ErrorCode; input: () => Buffer; options?: OptionName[] }> = [
    {
      name: 'no DICM prefix at byte 128',
      code: 'DICOM_NOT_PART10',
      input: () => { const b = Buffer.from(valid()); b.write('DICN', 128, 'latin1'); return b; },
    },
    {
      name: 'lower-case "dicm" prefix',
      code: 'DICOM_NOT_PART10',
      input: () => { const b = Buffer.from(valid()); b.write('dicm', 128, 'latin1'); return b; },
    },
    {
      name: 'a bare data set without preamble (DICM absent)',
      code: 'DICOM_NOT_PART10',
      input: () => encodeDataset(headerEls(), 'explicitLE'),
    },
    { name: 'file of 131 bytes (shorter than preamble + DICM)', code: 'DICOM_NOT_PART10', input: () => valid().subarray(0, 131) },
    { name: 'empty file', code: 'DICOM_NOT_PART10', input: () => Buffer.alloc(0) },
    {
      name: 'File Meta Information without Transfer Syntax UID',
      code: 'DICOM_NOT_PART10',
      input: () => Buffer.concat([Buffer.alloc(128), Buffer.from('DICM'), metaEls(false), encodeDataset(headerEls(), 'explicitLE')]),
    },
    {
      name: 'DICM and nothing after it',
      code: 'DICOM_NOT_PART10',
      input: () => Buffer.concat([Buffer.alloc(128), Buffer.from('DICM')]),
    },
    {
      name: 'file meta truncated inside an element',
      code: 'DICOM_TRUNCATED',
      input: () => valid().subarray(0, 132 + 12 + 8 + 1),
    },
    {
      name: 'unsupported transfer syntax: Philips private explicit',
      code: 'DICOM_UNSUPPORTED_TRANSFER_SYNTAX',
      input: () => encodePart10(headerEls(), { ts: 'explicitLE', meta: { transferSyntaxUid: '1.3.46.670589.33.1.4.1' } }),
    },
    {
      name: 'unsupported transfer syntax: GE private implicit big endian',
      code: 'DICOM_UNSUPPORTED_TRANSFER_SYNTAX',
      input: () => encodePart10(headerEls(), { ts: 'explicitLE', meta: { transferSyntaxUid: '1.2.840.113619.5.2' } }),
    },
    {
      name: 'unsupported transfer syntax: a UID that only starts like JPEG',
      code: 'DICOM_UNSUPPORTED_TRANSFER_SYNTAX',
      input: () => encodePart10(headerEls(), { ts: 'explicitLE', meta: { transferSyntaxUid: '1.2.840.10008.1.2.4.50.7' } }),
    },
    {
      name: 'element length runs past the end (explicit LE)',
      code: 'DICOM_TRUNCATED',
      input: () => part10With(headerEls(), rawEl(0x00321060, 'LO', 200, Buffer.from(`${CANARY.comment} and more`))),
    },
    {
      name: 'element length runs past the end (implicit LE)',
      code: 'DICOM_TRUNCATED',
      input: () => part10With(headerEls(), rawEl(0x00321060, null, 200, Buffer.from(`${CANARY.comment} and more`)), 'implicitLE'),
    },
    {
      // pydicom's DICOMDIR-nooffset: the records' items are not delimited, and the defined-length
      // sequence ends first (once an internal "need more data" that was refused as unexpected).
      name: 'an undelimited item ends with its defined-length sequence',
      code: 'DICOM_TRUNCATED',
      input: () => {
        const inner = rawEl(0x00041430, 'CS', 6, Buffer.from('IMAGE '));
        const item = Buffer.concat([rawEl(ITEM, null, 0xffffffff), inner]);
        return part10With(headerEls(), rawEl(0x00400275, 'SQ', item.length, item));
      },
    },
    {
      name: 'file ends inside an element header',
      code: 'DICOM_TRUNCATED',
      input: () => part10With(headerEls(), Buffer.from([0x20, 0x00, 0x00, 0x40, 0x4c])),
    },
    {
      name: 'unknown VR "QQ" in explicit VR',
      code: 'DICOM_MALFORMED',
      input: () => encodePart10(headerEls([{ tag: 0x00081030, vr: 'LO', rawVR: 'QQ', value: CANARY.desc }]), { ts: 'explicitLE' }),
    },
    {
      name: 'unknown VR in lower case "lo"',
      code: 'DICOM_MALFORMED',
      input: () => encodePart10(headerEls([{ tag: 0x00081030, vr: 'LO', rawVR: 'lo', value: CANARY.desc }]), { ts: 'explicitLE' }),
    },
    {
      name: 'undefined length on a LO element (implicit VR; explicit LO has a 2-byte length)',
      code: 'DICOM_MALFORMED',
      input: () => part10With(headerEls(), Buffer.concat([rawEl(0x00321060, null, UNDEF, Buffer.from(CANARY.comment)), rawEl(SEQ_DELIM, null, 0)]), 'implicitLE'),
    },
    {
      name: 'undefined length on an explicit UT element',
      code: 'DICOM_MALFORMED',
      input: () => part10With(headerEls(), Buffer.concat([rawEl(0x00321060, 'UT', UNDEF, Buffer.from(`${CANARY.comment}!`)), rawEl(SEQ_DELIM, null, 0)])),
    },
    {
      name: 'a data element where an item was expected (undefined-length SQ)',
      code: 'DICOM_MALFORMED',
      input: () => part10With(headerEls(), Buffer.concat([
        rawEl(0x00400275, 'SQ', UNDEF),
        rawEl(0x00081150, 'UI', 26, Buffer.from('1.2.840.10008.5.1.4.1.1.7\0')),
        rawEl(SEQ_DELIM, null, 0),
      ])),
    },
    {
      name: 'a data element where an item was expected (defined-length SQ)',
      code: 'DICOM_MALFORMED',
      input: () => { const inner = rawEl(0x00081150, 'UI', 26, Buffer.from('1.2.840.10008.5.1.4.1.1.7\0')); return part10With(headerEls(), Buffer.concat([rawEl(0x00400275, 'SQ', inner.length), inner])); },
    },
    {
      name: 'tags out of ascending order',
      code: 'DICOM_MALFORMED',
      input: () => {
        const els = headerEls();
        const i = els.findIndex((e) => e.tag === 0x00100020);
        const [pid] = els.splice(i, 1);
        els.splice(els.findIndex((e) => e.tag === 0x00100010), 0, pid!); // PatientID before PatientName
        return encodePart10(els, { ts: 'explicitLE', sortElements: false });
      },
    },
    {
      name: 'a repeated tag',
      code: 'DICOM_MALFORMED',
      input: () => encodePart10([...headerEls(), { tag: 0x00280100, vr: 'US', value: [16] }], { ts: 'explicitLE', sortElements: false }),
    },
    {
      name: 'tags out of order inside a sequence item',
      code: 'DICOM_MALFORMED',
      input: () => encodePart10(headerEls([{
        tag: 0x00081140, vr: 'SQ', value: [[
          { tag: 0x00081155, vr: 'UI', value: SOP },
          { tag: 0x00081150, vr: 'UI', value: SOP_CLASS },
        ]],
      }]), { ts: 'explicitLE', sortElements: false }),
    },
    {
      name: 'truncated inside an undefined-length sequence',
      code: 'DICOM_TRUNCATED',
      input: () => {
        const full = encodePart10(headerEls([{
          tag: 0x00400275, vr: 'SQ', undefinedLength: true,
          value: [{ undefinedLength: true, elements: [{ tag: 0x00321060, vr: 'LO', value: CANARY.desc }] }],
        }]), { ts: 'explicitLE' });
        return full.subarray(0, full.length - 12); // drops the item and sequence delimiters (and 4 more)
      },
    },
    {
      name: 'truncated right before the sequence delimiter',
      code: 'DICOM_TRUNCATED',
      input: () => {
        const full = encodePart10(headerEls([{
          tag: 0x00400275, vr: 'SQ', undefinedLength: true, value: [[{ tag: 0x00321060, vr: 'LO', value: CANARY.desc }]],
        }]), { ts: 'explicitLE' });
        return full.subarray(0, full.length - 8);
      },
    },
    {
      name: 'an item delimiter inside a defined-length item',
      code: 'DICOM_MALFORMED',
      input: () => {
        const item = Buffer.concat([rawEl(0x00321060, 'LO', 4, Buffer.from('ABCD')), rawEl(ITEM_DELIM, null, 0)]);
        const seq = Buffer.concat([rawEl(ITEM, null, item.length), item]);
        return part10With(headerEls(), Buffer.concat([rawEl(0x00400275, 'SQ', seq.length), seq]));
      },
    },
    {
      name: 'a defined-length item longer than its sequence',
      code: 'DICOM_MALFORMED',
      alt: 'DICOM_TRUNCATED',
      input: () => {
        const item = rawEl(0x00321060, 'LO', 4, Buffer.from('ABCD'));
        const seq = Buffer.concat([rawEl(ITEM, null, item.length + 40), item]);
        return part10With(headerEls(), Buffer.concat([rawEl(0x00400275, 'SQ', seq.length), seq, rawEl(0x00400280, 'ST', 40, Buffer.alloc(40, 0x41))]));
      },
    },
    {
      name: 'invalid UTF-8 in PatientName under ISO_IR 192 (cleanDescriptors decodes identifiers)',
      code: 'DICOM_CHARSET',
      options: ['cleanDescriptors'],
      input: () => encodePart10(headerEls([
        { tag: 0x00080005, vr: 'CS', value: 'ISO_IR 192' },
        { tag: 0x00081030, vr: 'LO', value: 'Study of the thorax' },
      ]).map((e) => (e.tag === 0x00100010 ? { ...e, value: Buffer.from([...Buffer.from('Zelda^'), 0xc3, 0x28, 0xff, 0x41]) } : e)), { ts: 'explicitLE' }),
    },
    {
      name: 'invalid UTF-8 in StudyDescription under ISO_IR 192 (cleanDescriptors cleans it)',
      code: 'DICOM_CHARSET',
      options: ['cleanDescriptors'],
      input: () => encodePart10(headerEls([
        { tag: 0x00080005, vr: 'CS', value: 'ISO_IR 192' },
        { tag: 0x00081030, vr: 'LO', value: Buffer.from([...Buffer.from('CANARYDESC '), 0xe2, 0x82]) },
      ]), { ts: 'explicitLE' }),
    },
    {
      name: 'unknown Specific Character Set term',
      code: 'DICOM_CHARSET',
      input: () => encodePart10(headerEls([{ tag: 0x00080005, vr: 'CS', value: 'ISO_IR 999' }]), { ts: 'explicitLE' }),
    },
  ];

  for (const c of cases) {
    test(`${c.name} → ${c.code}${c.alt ? ` or ${c.alt}` : ''}, nothing yielded`, async () => {
      const r = await run(c.input(), ctxFor(c.options ?? []));
      assertGatewayError(r.error, c.alt && r.error instanceof GatewayError && r.error.code === c.alt ? c.alt : c.code);
      assert.equal(r.chunks.length, 0, 'no output chunk may precede an error in the preamble, meta or header');
    });
  }

  test('the same faults are refused the same way when fed one byte at a time', async () => {
    for (const c of cases) {
      const r = await run(c.input(), ctxFor(c.options ?? []), {}, 'bytes');
      assertGatewayError(r.error, c.alt && r.error instanceof GatewayError && r.error.code === c.alt ? c.alt : c.code);
      assert.equal(r.chunks.length, 0, c.name);
    }
  });

  test('sequences nested deeper than the limit are refused with a code, not a stack overflow; real depths pass', async () => {
    const nested = (levels: number): Buffer => {
      let item: El[] = [{ tag: 0x0040a160, vr: 'UT', value: 'x' }];
      for (let i = 0; i < levels; i++) item = [{ tag: 0x0040a730, vr: 'SQ', value: [item] }];
      return encodePart10([{ tag: 0x00080016, vr: 'UI', value: '1.2.840.10008.5.1.4.1.1.88.11' }, { tag: 0x00080018, vr: 'UI', value: '1.2.3' }, ...item], { ts: 'explicitLE' });
    };
    await assert.rejects(deidentifyPart10Buffer(nested(300), ctxFor()), (e: unknown) => e instanceof GatewayError && e.code === 'DICOM_MALFORMED' && /nested deeper than 128/.test(e.message));
    assert.ok((await deidentifyPart10Buffer(nested(40), ctxFor())).length > 0, 'a deep SR content tree of 40 levels passes');
  });

  test('deidentifyPart10Buffer rejects with the same GatewayError', async () => {
    const b = Buffer.from(valid());
    b.write('XXXX', 128, 'latin1');
    await assert.rejects(deidentifyPart10Buffer(b, ctxFor()), (e: unknown) => e instanceof GatewayError && e.code === 'DICOM_NOT_PART10');
  });
});

describe('part10 driver: truncation inside the pixel data', () => {
  const cases: Array<{ name: string; input: () => Buffer; split: Split }> = [
    {
      name: 'native pixel data cut in the middle',
      input: () => { const f = encodePart10(headerEls([nativePixel(pixelWordsLE(500))]), { ts: 'explicitLE' }); return f.subarray(0, f.length - 400); },
      split: 'whole',
    },
    {
      name: 'native pixel data cut in the middle, streamed in 7-byte chunks',
      input: () => { const f = encodePart10(headerEls([nativePixel(pixelWordsLE(500))]), { ts: 'implicitLE' }); return f.subarray(0, f.length - 1); },
      split: { fixed: 7 },
    },
    {
      name: 'encapsulated fragment cut in the middle',
      input: () => {
        const f = encodePart10(headerEls([encapsulatedPixelData([fragment(300, 1), fragment(300, 2)])]), { ts: 'explicitLE', meta: { transferSyntaxUid: JPEG_BASELINE } });
        return f.subarray(0, f.length - 8 - 150);
      },
      split: 'whole',
    },
    {
      name: 'encapsulated pixel data without its sequence delimiter',
      input: () => {
        const f = encodePart10(headerEls([encapsulatedPixelData([fragment(300, 1)])]), { ts: 'explicitLE', meta: { transferSyntaxUid: JPEG_BASELINE } });
        return f.subarray(0, f.length - 8);
      },
      split: { random: 11, max: 64 },
    },
    {
      name: 'encapsulated pixel data cut inside a fragment item header',
      input: () => {
        const f = encodePart10(headerEls([encapsulatedPixelData([fragment(300, 1), fragment(64, 2)])]), { ts: 'explicitLE', meta: { transferSyntaxUid: JPEG_BASELINE } });
        return f.subarray(0, f.length - 8 - 64 - 4);
      },
      split: 'whole',
    },
  ];
  for (const c of cases) {
    test(`${c.name}: the header went out, then the consumer gets DICOM_TRUNCATED`, async () => {
      const r = await run(c.input(), ctxFor(), {}, c.split);
      assertGatewayError(r.error, 'DICOM_TRUNCATED');
      assert.ok(r.chunks.length > 0, 'the header is yielded before the pixel data is read');
      assert.equal(Buffer.concat(r.chunks).toString('latin1', 128, 132), 'DICM');
    });
  }

  test('a deflated object cut short is refused with a DICOM_* GatewayError, not a raw zlib error', async () => {
    const f = encodePart10(headerEls([nativePixel(pixelWordsLE(2000))]), { ts: 'deflatedLE' });
    const r = await run(f.subarray(0, f.length - Math.floor((f.length - 400) / 2)), ctxFor());
    assert.ok(r.error, 'an error is expected');
    assert.ok(r.error instanceof GatewayError, `GatewayError expected, got ${String(r.error)}`);
    assert.match(r.error.code, /^DICOM_(TRUNCATED|MALFORMED)$/);
  });

  test('a deflated object with corrupt deflate data is refused with a DICOM_* GatewayError', async () => {
    const f = Buffer.from(encodePart10(headerEls([nativePixel(pixelWordsLE(2000))]), { ts: 'deflatedLE' }));
    const metaEnd = walkMeta(f).end;
    for (let i = metaEnd; i < metaEnd + 16; i++) f[i] = 0xff; // invalid block type / lengths
    const r = await run(f, ctxFor());
    assert.ok(r.error, 'an error is expected');
    assert.ok(r.error instanceof GatewayError, `GatewayError expected, got ${String(r.error)}`);
    assert.match(r.error.code, /^DICOM_(TRUNCATED|MALFORMED)$/);
    assert.equal(r.chunks.length, 0, 'the header could not be read: nothing may be yielded');
  });
});

// ---------------------------------------------------------------------------------------------
// Streaming equivalence

describe('part10 driver: output does not depend on how the input is chunked', () => {
  const seqs: El[] = [
    {
      tag: 0x00081140, vr: 'SQ', undefinedLength: true, value: [
        { undefinedLength: true, elements: [{ tag: 0x00081150, vr: 'UI', value: SOP_CLASS }, { tag: 0x00081155, vr: 'UI', value: `${SOP}.9` }] },
        [{ tag: 0x00081150, vr: 'UI', value: SOP_CLASS }, { tag: 0x00081155, vr: 'UI', value: `${SOP}.10` }],
      ],
    },
    { tag: 0x00204000, vr: 'LT', value: `${CANARY.comment} ${'x'.repeat(700)}` },
  ];
  const inputs: Array<{ name: string; input: () => Buffer }> = [
    { name: 'explicit VR LE', input: () => encodePart10(headerEls([...seqs, nativePixel(pixelWordsLE(1500))]), { ts: 'explicitLE' }) },
    { name: 'implicit VR LE', input: () => encodePart10(headerEls([...seqs, nativePixel(pixelWordsLE(1500))]), { ts: 'implicitLE' }) },
    { name: 'explicit VR BE', input: () => encodePart10(headerEls([...seqs, nativePixel(pixelWordsLE(1500))]), { ts: 'explicitBE' }) },
    { name: 'deflated explicit VR LE', input: () => encodePart10(headerEls([...seqs, nativePixel(pixelWordsLE(1500))]), { ts: 'deflatedLE' }) },
    {
      name: 'encapsulated pixel data (JPEG baseline)',
      input: () => {
        const frags = [fragment(512, 1), fragment(1030, 2), fragment(98, 3)];
        return encodePart10(headerEls([...seqs, { tag: 0x7fe00010, vr: 'OB', undefinedLength: true, value: [basicOffsetTable(frags), ...frags] }]), {
          ts: 'explicitLE', meta: { transferSyntaxUid: JPEG_BASELINE },
        });
      },
    },
  ];
  const splits: Array<{ name: string; split: Split }> = [
    { name: '1-byte chunks', split: 'bytes' },
    { name: 'random chunks ≤ 13 bytes (seed 1)', split: { random: 1, max: 13 } },
    { name: 'random chunks ≤ 300 bytes (seed 42)', split: { random: 42, max: 300 } },
    { name: 'random chunks ≤ 5000 bytes (seed 7)', split: { random: 7, max: 5000 } },
  ];
  for (const { name, input } of inputs) {
    test(`${name}: one chunk, 1-byte chunks and random chunks give byte-identical output`, async () => {
      const bytes = input();
      const reference = await deid(bytes, ctxFor(), {}, 'whole');
      assert.ok(reference.length > 132 + 1000, 'reference output carries the pixel data');
      readHeaderSync(reference, inflateRawSync); // the reference itself is a readable Part 10 object
      for (const s of splits) {
        const out = await deid(bytes, ctxFor(), {}, s.split);
        assert.ok(out.equals(reference), `${s.name}: output differs (lengths ${out.length} vs ${reference.length})`);
      }
    });
  }
});

// ---------------------------------------------------------------------------------------------
// Pixel data and what follows it

describe('part10 driver: pixel data passes bit-exact', () => {
  for (const ts of ['explicitLE', 'implicitLE', 'explicitBE'] as const) {
    test(`native 16-bit OW pixel data (${ts}): the value bytes are unchanged`, async () => {
      const words = pixelWordsLE(4 * 6 * 3);
      const input = encodePart10(headerEls([nativePixel(words)]), { ts });
      const out = await deid(input, ctxFor(), {}, { random: 3, max: 50 });
      const hdr = pixelHeader(SYNTAX[ts], 'OW', words.length);
      const expected = ts === 'explicitBE' ? Buffer.from(words).swap16() : words; // PS3.5 7.3: OW swaps per 16-bit word
      const inAt = input.indexOf(hdr);
      const outAt = out.indexOf(hdr);
      assert.ok(inAt > 0 && outAt > 0, 'pixel data header found in input and output');
      assert.ok(input.subarray(inAt + hdr.length).equals(expected), 'oracle: builder placed the words where expected');
      assert.ok(out.subarray(outAt + hdr.length).equals(expected), 'pixel bytes unchanged and nothing after them');
    });
  }

  test('encapsulated: basic offset table and three fragments unchanged, delimiter kept', async () => {
    const frags = [fragment(1000, 4), fragment(16, 5).fill(0x7f), fragment(4096, 6)];
    const bot = basicOffsetTable(frags);
    const input = encodePart10(headerEls([{ tag: 0x7fe00010, vr: 'OB', undefinedLength: true, value: [bot, ...frags] }]), {
      ts: 'explicitLE', meta: { transferSyntaxUid: '1.2.840.10008.1.2.4.90' },
    });
    const out = await deid(input, ctxFor(), {}, { random: 9, max: 777 });
    const hdr = pixelHeader(EXPLICIT_LE, 'OB', UNDEF);
    const outAt = out.indexOf(hdr);
    assert.ok(outAt > 0, 'encapsulated pixel data header in output');
    // Expected from PS3.5 A.4: item(BOT), item per fragment, sequence delimiter; all LE.
    const expected = Buffer.concat([
      rawEl(ITEM, null, bot.length, bot),
      ...frags.map((f) => rawEl(ITEM, null, f.length, f)),
      rawEl(SEQ_DELIM, null, 0),
    ]);
    assert.ok(out.subarray(outAt + hdr.length).equals(expected), 'out.subarray(outAt + hdr.length).equals(expected)');
    const h = readHeaderSync(out, inflateRawSync);
    assert.equal(h.transferSyntax.uid, '1.2.840.10008.1.2.4.90');
  });

  test('encapsulated uncompressed (1.2.840.10008.1.2.1.98) passes as well', async () => {
    const frags = [pixelWordsLE(24)];
    const input = encodePart10(headerEls([encapsulatedPixelData(frags)]), { ts: 'explicitLE', meta: { transferSyntaxUid: '1.2.840.10008.1.2.1.98' } });
    const out = await deid(input);
    const hdr = pixelHeader(EXPLICIT_LE, 'OB', UNDEF);
    const expected = Buffer.concat([rawEl(ITEM, null, 0), rawEl(ITEM, null, 48, frags[0]), rawEl(SEQ_DELIM, null, 0)]);
    assert.ok(out.subarray(out.indexOf(hdr) + hdr.length).equals(expected), 'out.subarray(out.indexOf(hdr) + hdr.length).equals(expected)');
  });
});

describe('part10 driver: elements after the pixel data', () => {
  const trailing: El[] = [
    {
      tag: 0xfffafffa, vr: 'SQ', undefinedLength: true, value: [[
        { tag: 0x04000005, vr: 'US', value: [4] },
        { tag: 0x04000105, vr: 'DT', value: '20240229120000' },
        { tag: 0x04000120, vr: 'OB', value: Buffer.from(`SIGNATURE ${CANARY.comment}!`) },
      ]],
    },
    { tag: 0xfffcfffc, vr: 'OB', value: Buffer.alloc(64, 0x00) },
  ];
  for (const ts of ['explicitLE', 'implicitLE', 'explicitBE', 'deflatedLE'] as const) {
    test(`DigitalSignaturesSequence and DataSetTrailingPadding are removed (${ts})`, async () => {
      const words = pixelWordsLE(24);
      const input = encodePart10(headerEls([nativePixel(words), ...trailing]), { ts });
      const out = await deid(input);
      const ds = datasetOf(out);
      const hdr = pixelHeader(SYNTAX[ts], 'OW', words.length);
      const at = ds.indexOf(hdr);
      assert.ok(at > 0, 'pixel data present');
      assert.equal(ds.length, at + hdr.length + words.length, 'nothing follows the pixel data value');
      assert.ok(!out.includes(Buffer.from(CANARY.comment)) && !ds.includes(Buffer.from('SIGNATURE')), '!out.includes(Buffer.from(CANARY.comment)) && !ds.includes(Buffer.from(\'SIGNATURE\'))');
      const h = readHeaderSync(out, inflateRawSync);
      assert.equal(text(find(h.elements, 0x00080016)?.value), SOP_CLASS);
    });
  }

  test('trailing elements after encapsulated pixel data are removed', async () => {
    const frags = [fragment(100, 1)];
    const input = encodePart10(headerEls([encapsulatedPixelData(frags), ...trailing]), { ts: 'explicitLE', meta: { transferSyntaxUid: JPEG_BASELINE } });
    const out = await deid(input, ctxFor(), {}, 'bytes');
    const tail = Buffer.concat([rawEl(ITEM, null, frags[0]!.length, frags[0]), rawEl(SEQ_DELIM, null, 0)]);
    assert.ok(out.subarray(out.length - tail.length).equals(tail), 'output ends with the last fragment and the delimiter');
    readHeaderSync(out, inflateRawSync);
  });
});

// ---------------------------------------------------------------------------------------------
// File Meta Information

describe('part10 driver: File Meta Information is regenerated', () => {
  const TEXT_PREAMBLE = Buffer.alloc(128, 0x20);
  TEXT_PREAMBLE.write(`II*\0 TIFF ${CANARY.name} ${CANARY.id}`, 0, 'latin1');

  async function metaOf(opts: { ts: TS; options?: OptionName[]; metaSop?: string }): Promise<{ out: Buffer; meta: ReturnType<typeof walkMeta>; dsSop: string; dsClass: string }> {
    const input = encodePart10(headerEls([nativePixel(pixelWordsLE(24))]), {
      ts: opts.ts,
      preamble: TEXT_PREAMBLE,
      meta: {
        sourceAET: CANARY.aet,
        ...(opts.metaSop ? { sopInstanceUid: opts.metaSop } : {}),
        extra: [
          { tag: 0x00020100, vr: 'UI', value: '1.2.826.0.1.3680043.9.7433.1.9' },
          { tag: 0x00020102, vr: 'OB', value: Buffer.from(`${CANARY.comment}!`) },
        ],
      },
    });
    const out = await deid(input, ctxFor(opts.options ?? []));
    const h = readHeaderSync(out, inflateRawSync);
    return { out, meta: walkMeta(out), dsSop: text(find(h.elements, 0x00080018)?.value), dsClass: text(find(h.elements, 0x00080016)?.value) };
  }

  for (const ts of ['explicitLE', 'implicitLE', 'explicitBE', 'deflatedLE'] as const) {
    test(`group length, UIDs, no source AE, zero preamble (${ts})`, async () => {
      const { out, meta, dsSop, dsClass } = await metaOf({ ts });
      assert.ok(out.subarray(0, 128).equals(Buffer.alloc(128)), 'preamble is all zero');
      assert.equal(out.toString('latin1', 128, 132), 'DICM');
      const [gl, ...rest] = meta.els;
      assert.equal(gl?.tag, 0x00020000, 'first element is the group length');
      assert.equal(gl?.vr, 'UL');
      assert.equal(gl?.value.length, 4);
      assert.equal(gl?.value.readUInt32LE(0), meta.end - (132 + 12), 'group length = bytes of the rest of group 0002');
      const tags = rest.map((e) => e.tag);
      assert.deepEqual([...tags].sort((a, b) => a - b), tags, 'meta in ascending order');
      assert.ok(!tags.includes(0x00020016), 'no SourceApplicationEntityTitle');
      assert.ok(!tags.includes(0x00020102) && !tags.includes(0x00020100), 'no private information from the input meta');
      const get = (tag: number): string => text(rest.find((e) => e.tag === tag)?.value);
      assert.deepEqual([...(rest.find((e) => e.tag === 0x00020001)?.value ?? [])], [0, 1], 'File Meta Information Version 00 01');
      assert.equal(get(0x00020002), SOP_CLASS);
      assert.equal(get(0x00020002), dsClass);
      assert.notEqual(get(0x00020003), SOP, 'original SOP Instance UID not in the meta');
      assert.equal(get(0x00020003), dsSop, 'MediaStorageSOPInstanceUID = output SOPInstanceUID');
      assert.equal(get(0x00020010), TS_UID[ts]);
      assert.match(get(0x00020012), /^[0-9]+(\.[0-9]+)+$/);
      for (const e of rest) assert.equal(e.value.length % 2, 0, `even length of (0002,${e.tag.toString(16).slice(-4)})`);
      const all = out.toString('latin1');
      for (const c of Object.values(CANARY)) for (const p of c.split(/[\^ ]/)) if (p.length >= 4) assert.ok(!all.includes(p), `output carries "${p}"`);
    });
  }

  test('under retainUIDs the meta SOP Instance UID is the (kept) data set SOP Instance UID', async () => {
    const { meta, dsSop } = await metaOf({ ts: 'explicitLE', options: ['retainUIDs'] });
    assert.equal(dsSop, SOP, 'retainUIDs keeps the SOP Instance UID');
    assert.equal(text(meta.els.find((e) => e.tag === 0x00020003)?.value), dsSop);
  });

  test('when the input meta SOP Instance UID differs from the data set, the output meta still equals the output SOPInstanceUID', async () => {
    const { meta, dsSop } = await metaOf({ ts: 'explicitLE', metaSop: `${SOP}.777` });
    assert.equal(text(meta.els.find((e) => e.tag === 0x00020003)?.value), dsSop);
  });
});

// ---------------------------------------------------------------------------------------------
// Sequences

describe('part10 parser: sequences of every length form', () => {
  const items = (form: 'defined' | 'undefined'): El[] => [{
    tag: 0x00081140, vr: 'SQ', undefinedLength: form === 'undefined',
    value: [
      { undefinedLength: form === 'undefined', elements: [{ tag: 0x00081150, vr: 'UI', value: SOP_CLASS }, { tag: 0x00081155, vr: 'UI', value: `${SOP}.21` }] },
      { undefinedLength: form === 'undefined', elements: [{ tag: 0x00081150, vr: 'UI', value: SOP_CLASS }, { tag: 0x00081155, vr: 'UI', value: SOP }] },
      { undefinedLength: form === 'undefined', elements: [] },
    ],
  }];

  const cases: Array<{ name: string; els: El[]; ts: TS }> = [
    { name: 'defined-length SQ and items (explicit LE)', els: items('defined'), ts: 'explicitLE' },
    { name: 'undefined-length SQ and items (explicit LE)', els: items('undefined'), ts: 'explicitLE' },
    { name: 'defined-length SQ and items (implicit LE)', els: items('defined'), ts: 'implicitLE' },
    { name: 'undefined-length SQ and items (implicit LE)', els: items('undefined'), ts: 'implicitLE' },
    { name: 'defined-length SQ and items (explicit BE)', els: items('defined'), ts: 'explicitBE' },
    { name: 'undefined-length SQ and items (explicit BE)', els: items('undefined'), ts: 'explicitBE' },
    { name: 'UN of undefined length holding an implicit VR LE sequence (explicit LE)', els: items('undefined').map((e) => ({ ...e, encodeAsUN: true })), ts: 'explicitLE' },
    { name: 'UN of undefined length holding defined-length items (explicit LE)', els: items('defined').map((e) => ({ ...e, encodeAsUN: true, undefinedLength: true })), ts: 'explicitLE' },
    { name: 'UN of undefined length holding an implicit VR LE sequence (explicit BE)', els: items('undefined').map((e) => ({ ...e, encodeAsUN: true })), ts: 'explicitBE' },
  ];
  for (const c of cases) {
    test(`${c.name}: parsed, items de-identified, same UID → same pseudonym`, async () => {
      const input = encodePart10(headerEls([...c.els, nativePixel(pixelWordsLE(24))]), { ts: c.ts });
      const inHeader = readHeaderSync(input, inflateRawSync);
      const seqIn = find(inHeader.elements, 0x00081140);
      assert.equal(seqIn?.items?.length, 3, 'input sequence has three items');
      const out = await deid(input, ctxFor(), {}, { random: 5, max: 31 });
      const h = readHeaderSync(out, inflateRawSync);
      const seq = find(h.elements, 0x00081140);
      assert.ok(seq?.items, 'sequence present in output');
      assert.equal(seq.items.length, 3);
      const [a, b, empty] = seq.items;
      assert.equal(text(find(a!.elements, 0x00081150)?.value), SOP_CLASS, 'class UID kept');
      const refA = text(find(a!.elements, 0x00081155)?.value);
      const refB = text(find(b!.elements, 0x00081155)?.value);
      assert.match(refA, /^2\.25\.\d+$/);
      assert.notEqual(refA, refB);
      assert.equal(refB, text(find(h.elements, 0x00080018)?.value), 'a referenced SOP equal to this SOP maps to the same pseudonym');
      assert.equal(empty!.elements.length, 0);
    });
  }

  test('ElementParser: UN of undefined length yields items parsed in implicit VR LE', () => {
    const inner = encodeDataset([{ tag: 0x00081150, vr: 'UI', value: SOP_CLASS }], 'implicitLE');
    const buf = Buffer.concat([
      rawEl(0x00081140, 'UN', UNDEF),
      rawEl(ITEM, null, UNDEF), inner, rawEl(ITEM_DELIM, null, 0),
      rawEl(ITEM, null, inner.length), inner,
      rawEl(SEQ_DELIM, null, 0),
    ]);
    const { element, next } = new ElementParser(buf, 0, false).element(0, buf.length, EXPLICIT_LE);
    assert.equal(next, buf.length);
    assert.equal(element.vr, 'UN');
    assert.deepEqual(element.syntax, IMPLICIT_LE);
    assert.equal(element.items?.length, 2);
    for (const it of element.items ?? []) {
      assert.equal(it.elements.length, 1);
      assert.equal(it.elements[0]?.vr, 'UI', 'implicit VR resolved through the dictionary');
      assert.equal(text(it.elements[0]?.value), SOP_CLASS);
    }
  });

  test('ElementParser: partial buffer → NeedMoreData, complete buffer → DICOM_TRUNCATED', () => {
    const buf = Buffer.concat([rawEl(0x00400275, 'SQ', UNDEF), rawEl(ITEM, null, UNDEF), rawEl(0x00321060, 'LO', 4, Buffer.from('ABCD'))]);
    assert.throws(() => new ElementParser(buf, 0, true).element(0, buf.length, EXPLICIT_LE), NeedMoreData);
    assert.throws(() => new ElementParser(buf, 0, false).element(0, buf.length, EXPLICIT_LE), (e: unknown) => e instanceof GatewayError && e.code === 'DICOM_TRUNCATED');
  });

  test('ElementParser: error offsets are absolute (base + position)', () => {
    const buf = Buffer.concat([rawEl(0x00081030, 'LO', 4, Buffer.from('ABCD')), rawEl(0x00081031, 'QQ', 2, Buffer.from('AB'))]);
    assert.throws(() => new ElementParser(buf, 1000, false).dataset(0, buf.length, EXPLICIT_LE, false), (e: unknown) => {
      assert.ok(e instanceof GatewayError, 'e instanceof GatewayError');
      assert.equal(e.code, 'DICOM_MALFORMED');
      assert.match(e.message, /at byte 1016\b/); // VR field of the second element: 1000 + 12 + 4
      return true;
    });
  });
});

// ---------------------------------------------------------------------------------------------
// Large values and the header limit

describe('part10 driver: large private values and maxHeaderBytes', () => {
  const MARK = Buffer.from('PRIVATECANARY:');
  const big = (): Buffer => { const b = Buffer.alloc(2 * 1024 * 1024); for (let i = 0; i + MARK.length <= b.length; i += 4096) MARK.copy(b, i); return b; };
  const withPrivate = (ts: TS): Buffer => encodePart10(headerEls([
    { tag: 0x00090010, vr: 'LO', value: 'CANARY CREATOR' },
    { tag: 0x00091010, vr: 'OB', value: big() },
    nativePixel(pixelWordsLE(24)),
  ]), { ts });

  for (const ts of ['explicitLE', 'implicitLE', 'deflatedLE'] as const) {
    test(`a 2 MiB private OB is skipped and absent from the output (${ts})`, async () => {
      const input = withPrivate(ts);
      const out = await deid(input, ctxFor(), {}, { fixed: 65536 });
      assert.ok(out.length < 64 * 1024, `output is small (${out.length} bytes)`);
      assert.ok(!datasetOf(out).includes(MARK), 'private value absent');
      assert.ok(!out.includes(Buffer.from('CANARY CREATOR')), 'its creator is absent too');
      const h = readHeaderSync(out, inflateRawSync);
      assert.ok(h.elements.every((e) => ((e.tag >>> 16) & 1) === 0), 'no private element');
    });
  }

  test('a skipped 2 MiB private value does not count against maxHeaderBytes (it is never held)', async () => {
    const out = await deid(withPrivate('explicitLE'), ctxFor(), { maxHeaderBytes: 1024 * 1024 }, { fixed: 65536 });
    assert.ok(!out.includes(MARK), '!out.includes(MARK)');
  });

  test('a header larger than maxHeaderBytes → DICOM_HEADER_TOO_LARGE before any output', async () => {
    const input = encodePart10(headerEls([{ tag: 0x00204000, vr: 'LT', value: 'y'.repeat(10_000) }, nativePixel(pixelWordsLE(24))]), { ts: 'explicitLE' });
    const r = await run(input, ctxFor(), { maxHeaderBytes: 4096 });
    assertGatewayError(r.error, 'DICOM_HEADER_TOO_LARGE');
    assert.equal(r.chunks.length, 0);
  });

  test('a header of many small elements larger than maxHeaderBytes → DICOM_HEADER_TOO_LARGE', async () => {
    const many: El[] = Array.from({ length: 200 }, (_, i) => ({ tag: 0x00431000 + i, vr: 'LO', value: `value ${i}` }));
    const input = encodePart10(headerEls([{ tag: 0x00430010, vr: 'LO', value: 'X' }, ...many]), { ts: 'explicitLE' });
    const r = await run(input, ctxFor(), { maxHeaderBytes: 2048 });
    assertGatewayError(r.error, 'DICOM_HEADER_TOO_LARGE');
    assert.equal(r.chunks.length, 0);
  });

  test('a header under maxHeaderBytes passes (control)', async () => {
    const input = encodePart10(headerEls([{ tag: 0x00204000, vr: 'LT', value: 'y'.repeat(1000) }, nativePixel(pixelWordsLE(24))]), { ts: 'explicitLE' });
    const out = await deid(input, ctxFor(), { maxHeaderBytes: 4096 });
    readHeaderSync(out, inflateRawSync);
  });

  test('pixel data does not count against maxHeaderBytes', async () => {
    const input = encodePart10(headerEls([nativePixel(pixelWordsLE(50_000))]), { ts: 'explicitLE' });
    const out = await deid(input, ctxFor(), { maxHeaderBytes: 4096 });
    assert.ok(out.length > 100_000, 'out.length > 100_000');
  });

  test('an undefined-length sequence larger than maxHeaderBytes → DICOM_HEADER_TOO_LARGE', async () => {
    const items = Array.from({ length: 400 }, (_, i) => ({ undefinedLength: true, elements: [{ tag: 0x00081155, vr: 'UI', value: `${SOP}.${i}` }] as El[] }));
    // The sequence is the last header element: nothing after it triggers a later position check.
    const input = encodePart10(headerEls([{ tag: 0x00400275, vr: 'SQ', undefinedLength: true, value: items }, nativePixel(pixelWordsLE(24))]), { ts: 'explicitLE' });
    const r = await run(input, ctxFor(), { maxHeaderBytes: 4096 });
    assertGatewayError(r.error, 'DICOM_HEADER_TOO_LARGE');
    assert.equal(r.chunks.length, 0);
  });
});

// ---------------------------------------------------------------------------------------------
// Building blocks

describe('part10 building blocks', () => {
  const tsCases: Array<{ uid: string; explicit: boolean; littleEndian: boolean; deflated: boolean; encapsulated: boolean }> = [
    { uid: '1.2.840.10008.1.2', explicit: false, littleEndian: true, deflated: false, encapsulated: false },
    { uid: '1.2.840.10008.1.2.1', explicit: true, littleEndian: true, deflated: false, encapsulated: false },
    { uid: '1.2.840.10008.1.2.2', explicit: true, littleEndian: false, deflated: false, encapsulated: false },
    { uid: '1.2.840.10008.1.2.1.99', explicit: true, littleEndian: true, deflated: true, encapsulated: false },
    { uid: '1.2.840.10008.1.2.1.98', explicit: true, littleEndian: true, deflated: false, encapsulated: true },
    { uid: '1.2.840.10008.1.2.4.50', explicit: true, littleEndian: true, deflated: false, encapsulated: true },
    { uid: '1.2.840.10008.1.2.4.90', explicit: true, littleEndian: true, deflated: false, encapsulated: true },
    { uid: '1.2.840.10008.1.2.5', explicit: true, littleEndian: true, deflated: false, encapsulated: true },
  ];
  for (const c of tsCases) {
    test(`transferSyntax(${c.uid})`, () => {
      const ts = transferSyntax(`${c.uid}\0`); // UI values are NUL-padded
      assert.deepEqual({ uid: ts.uid, explicit: ts.explicit, littleEndian: ts.littleEndian, deflated: ts.deflated, encapsulated: ts.encapsulated }, c);
    });
  }

  test('transferSyntax refuses unknown UIDs', () => {
    for (const uid of ['', '1.2.840.10008.1.2.3', '1.2.840.10008.1.2.1.100', '1.2.840.10008.1.2.4', '1.2.840.113619.5.2']) {
      assert.throws(() => transferSyntax(uid), (e: unknown) => e instanceof GatewayError && e.code === 'DICOM_UNSUPPORTED_TRANSFER_SYNTAX', uid);
    }
  });

  test('ByteQueue: peek across chunks, consume, position and rest', async () => {
    const chunks = [Buffer.from('ab'), Buffer.from(''), Buffer.from('cde'), Buffer.from('f'), Buffer.from('ghij')];
    const q = new ByteQueue((async function* () { yield* chunks; })());
    assert.equal(await q.fill(4), true);
    assert.equal(q.peek(4).toString(), 'abcd');
    q.consume(3);
    assert.equal(q.position, 3);
    assert.equal(await q.fill(100), false);
    assert.equal(q.sourceEnded, true);
    assert.equal(q.available, 7);
    assert.equal(q.peek(5).toString(), 'defgh');
    const rest: Buffer[] = [];
    for await (const b of q.rest()) rest.push(b);
    assert.equal(Buffer.concat(rest).toString(), 'defghij');
    assert.equal(q.done, true);
  });
});
