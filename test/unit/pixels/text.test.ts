/**
 * Burned-in text (issue 12): the detector on images the tests draw with text at known places,
 * in every photometric interpretation, planar configuration and bit depth, at several sizes,
 * bold or thin, sharp or smoothed, in colour, dark on a light panel and over the imaging
 * sector, across the frames of a cine loop. Each image is masked by the engine from the
 * detector's decision, and checked: every glyph box is masked, no pixel outside the padded
 * boxes changes, an image with no text comes out unchanged, a screen of text is withheld.
 * Also: the in-process RLE and JPEG decoders (codec.ts), the provider's stored decisions, and
 * the policy (region rules first, pending and withheld reasons).
 */
import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { inflateRawSync } from 'node:zlib';
import jpeg from 'jpeg-js';
import { deidentifyPart10Buffer } from '../../../src/deid/part10.js';
import { readInstanceSync } from '../../../src/dicom/part10.js';
import { decodableHere, decodeJpegFrame, decodeRleFrame, nativeInstance } from '../../../src/pixels/codec.js';
import { analyzeFrames, analyzeInstance, instancePixels } from '../../../src/pixels/text/analyze.js';
import { TextWorkers } from '../../../src/pixels/text/workers.js';
import { expandSegments } from '../../../src/pixels/text/planes.js';
import { TextProvider } from '../../../src/pixels/text/provider.js';
import { openTextStore } from '../../../src/pixels/store-sqlite.js';
import { part10View } from '../../../src/pixels/views.js';
import { admitPixels, needsTextDecision, pixelDecision, type PixelPolicy } from '../../../src/policy/pixels.js';
import type { TextBox, TextVerdict } from '../../../src/pixels/types.js';
import { engine } from '../../helpers/fixtures.js';
import { makeTextPhantom, type Box, type TextPhantom, type TextPhantomOptions } from '../../fixtures/text-phantom.js';

const inside = (g: Box, r: TextBox): boolean => g.x >= r.x && g.y >= r.y && g.x + g.width <= r.x + r.width && g.y + g.height <= r.y + r.height;

const LINES: TextPhantomOptions['texts'] = [
  { x: 8, y: 6, text: 'ST MARY HOSPITAL', scale: 2, color: 255 },
  { x: 8, y: 28, text: 'DOE JOHN 12/03/2026', scale: 1, color: [255, 255, 0] },
  { x: 8, y: 42, text: 'MRN 4821377', scale: 1, bold: true, smooth: true, color: [0, 200, 255] },
  { x: 250, y: 8, text: '14:22:07', scale: 2, bold: true, color: 200 },
  { x: 240, y: 214, text: 'TIS 0.5 MI 1.2', scale: 1, color: 255 }, // runs off the right edge
  // Dark text on a light panel, and light text over the sector itself.
  { x: 20, y: 200, text: 'OPER KB', scale: 2, color: 0, panel: 230 },
  { x: 130, y: 120, text: 'LV APEX', scale: 2, smooth: true, color: 255 },
];

/** Masks a phantom through the engine, as the gateway and the offline command do. */
async function masked(ph: TextPhantom, regions: readonly TextBox[]): Promise<ReturnType<typeof readInstanceSync>> {
  const native = nativeInstance(ph.bytes, inflateRawSync);
  const out = await deidentifyPart10Buffer(native, engine(), { admit: () => ({ mask: regions, detected: regions }) });
  return readInstanceSync(out, inflateRawSync);
}

/** Asserts every glyph is in a box, and no stored byte outside the boxes changed. */
function checkMasked(ph: TextPhantom, regions: readonly TextBox[], out: ReturnType<typeof readInstanceSync>): void {
  for (const [f, boxes] of ph.glyphs.entries()) {
    for (const g of boxes) assert.ok(regions.some((r) => inside(g, r)), `frame ${f}: glyph at ${g.x},${g.y} ${g.width}×${g.height} is not masked (${JSON.stringify(regions)})`);
  }
  const before = readInstanceSync(nativeInstance(ph.bytes, inflateRawSync), inflateRawSync).pixel!;
  const after = out.pixel!;
  assert.equal(after.length, before.length);
  const o = ph.options;
  const spp = o.photometric === 'RGB' || o.photometric === 'YBR_FULL' ? 3 : 1;
  const bpp = (o.bits ?? 8) / 8;
  const n = o.rows * o.columns;
  const planar = spp === 3 && o.planar === 1 && !o.rle;
  let changedOutside = 0, unchangedInGlyph = 0;
  for (let b = 0; b < before.length; b++) {
    const cell = Math.floor(b / bpp);
    const pixelIndex = planar ? cell % (n * 3) % n : Math.floor(cell / spp) % n;
    const x = pixelIndex % o.columns, y = Math.floor(pixelIndex / o.columns);
    const inBox = regions.some((r) => x >= r.x && x < r.x + r.width && y >= r.y && y < r.y + r.height);
    if (!inBox && before[b] !== after[b]) changedOutside++;
  }
  // Inside a box, every pixel holds the box's fill (the glyph strokes and the ground between them).
  for (const r of regions) {
    const fill = r.fill ?? [0];
    for (let y = r.y; y < r.y + r.height; y++) for (let x = r.x; x < r.x + r.width; x++) {
      const i = y * o.columns + x;
      const v = bpp === 2 ? after.readUInt16LE((planar ? i : i * spp) * 2) : after[planar ? i : i * spp]!;
      if (v !== fill[0]) unchangedInGlyph++;
    }
  }
  assert.equal(changedOutside, 0, 'no byte outside the padded boxes changes');
  assert.equal(unchangedInGlyph, 0, 'every pixel in a box holds the fill');
}

describe('burned-in text: detection and masking', () => {
  const variants: { name: string; o: Omit<TextPhantomOptions, 'texts' | 'uidRoot'> }[] = [
    { name: 'RGB, interleaved', o: { rows: 240, columns: 320, photometric: 'RGB', planar: 0 } },
    { name: 'RGB, planar', o: { rows: 240, columns: 320, photometric: 'RGB', planar: 1 } },
    { name: 'YBR_FULL', o: { rows: 240, columns: 320, photometric: 'YBR_FULL', planar: 0 } },
    { name: 'MONOCHROME2, 8-bit', o: { rows: 240, columns: 320, photometric: 'MONOCHROME2' } },
    { name: 'MONOCHROME1, 16-bit', o: { rows: 240, columns: 320, photometric: 'MONOCHROME1', bits: 16 } },
    { name: 'PALETTE COLOR, RLE, 4 frames', o: { rows: 240, columns: 320, photometric: 'PALETTE COLOR', rle: true, frames: 4 } },
  ];
  for (const [k, v] of variants.entries()) {
    test(`${v.name}: every glyph is masked, nothing outside the padded boxes changes`, async () => {
      const ph = makeTextPhantom({ ...v.o, texts: LINES, uidRoot: `1.2.826.0.1.3680043.9.7433.12.${k + 1}` });
      const a = analyzeInstance(nativeInstance(ph.bytes, inflateRawSync));
      assert.equal(a.verdict.kind, 'mask', JSON.stringify(a));
      const regions = a.verdict.kind === 'mask' ? a.verdict.regions : [];
      const out = await masked(ph, regions);
      checkMasked(ph, regions, out);
      const view = part10View(out.elements);
      assert.equal(view.str(0x00280301), 'NO');
      assert.ok(view.items(0x00120064).some((it) => it.str(0x00080100) === '113101'), 'Clean Pixel Data in the method codes');
      // The picture is mostly kept: the boxes are the text's, not the sector's.
      const area = regions.reduce((s, r) => s + r.width * r.height, 0);
      assert.ok(area < 0.45 * ph.options.rows * ph.options.columns, `boxes cover ${area} pixels`);
    });
  }

  test('an ultrasound with no text is found clean and comes out unchanged (pixels bit-exact)', async () => {
    for (const [k, photometric] of (['RGB', 'MONOCHROME2', 'PALETTE COLOR', 'YBR_FULL'] as const).entries()) {
      const ph = makeTextPhantom({ rows: 240, columns: 320, photometric, frames: 3, texts: [], uidRoot: `1.2.826.0.1.3680043.9.7433.12.2${k}` });
      const a = analyzeInstance(ph.bytes);
      assert.deepEqual(a.verdict, { kind: 'clean' }, photometric);
      const out = await deidentifyPart10Buffer(ph.bytes, engine(), { admit: () => ({ mask: [], detected: [] }) });
      const inst = readInstanceSync(out, inflateRawSync);
      assert.deepEqual(inst.pixel, readInstanceSync(ph.bytes, inflateRawSync).pixel, `${photometric}: pixels unchanged`);
      assert.equal(part10View(inst.elements).str(0x00280301), 'NO', 'examined: Burned In Annotation NO');
    }
  });

  test('a cine loop: text that changes, or appears in one frame only, is masked in the union of every frame', async () => {
    const frames = 12;
    const ph = makeTextPhantom({
      rows: 240, columns: 320, photometric: 'RGB', frames, uidRoot: '1.2.826.0.1.3680043.9.7433.12.30',
      texts: [
        { x: 8, y: 6, text: 'CARDIO LAB 3', scale: 2, color: 255 },
        ...Array.from({ length: frames }, (_, f) => ({ x: 200, y: 220, text: `0:03:${String(10 + f)}`, scale: 1, color: 255, frames: [f] })),
        { x: 200, y: 60, text: 'PT WALSH', scale: 1, color: [255, 255, 0] as const, frames: [7] },
      ],
    });
    const a = analyzeInstance(ph.bytes);
    assert.equal(a.verdict.kind, 'mask');
    const regions = a.verdict.kind === 'mask' ? a.verdict.regions : [];
    checkMasked(ph, regions, await masked(ph, regions));
    assert.equal(a.framesRead, frames, 'every frame was read');
  });

  test('a large cine read on worker threads gives the same decision as one thread', async () => {
    const frames = 24;
    const ph = makeTextPhantom({
      rows: 480, columns: 640, photometric: 'RGB', frames, uidRoot: '1.2.826.0.1.3680043.9.7433.12.31',
      texts: [{ x: 8, y: 6, text: 'CARDIO LAB 3', scale: 2, color: 255 }, ...Array.from({ length: frames }, (_, f) => ({ x: 400, y: 460, text: `0:03:${String(10 + f)}`, scale: 1, color: 255, frames: [f] })), { x: 300, y: 60, text: 'PT WALSH', scale: 1, color: 255, frames: [19] }],
    });
    const { pixel, facts } = instancePixels(ph.bytes);
    const one = analyzeFrames(pixel, facts, facts.frames);
    const pool = new TextWorkers(2);
    try {
      const many = await pool.analyze(pixel, facts, facts.frames);
      assert.deepEqual(many.verdict, one.verdict);
      assert.equal(many.framesRead, frames);
      const regions = many.verdict.kind === 'mask' ? many.verdict.regions : [];
      for (const [f, boxes] of ph.glyphs.entries()) for (const g of boxes) assert.ok(regions.some((r) => inside(g, r)), `frame ${f}: glyph at ${g.x},${g.y}`);
    } finally {
      await pool.close();
    }
  });

  test('an instance streamed in small pieces is read frame by frame as it arrives, with the same decision; a compressed one is read whole', async () => {
    const ph = makeTextPhantom({ rows: 240, columns: 320, photometric: 'RGB', frames: 10, texts: LINES.slice(0, 3), uidRoot: '1.2.826.0.1.3680043.9.7433.12.32' });
    const pieces = async function* (b: Buffer, size: number): AsyncGenerator<Buffer> { for (let i = 0; i < b.length; i += size) yield b.subarray(i, i + size); };
    const one = analyzeInstance(ph.bytes);
    const pool = new TextWorkers(2);
    try {
      for (const size of [1000, 65536, 1 << 20]) {
        const r = await pool.analyzeStream(pieces(ph.bytes, size), async () => { throw new Error('read whole'); });
        assert.deepEqual(r.analysis.verdict, one.verdict, `pieces of ${size}`);
        assert.deepEqual(r.bytes, ph.bytes, 'the whole object is given back');
      }
      const rle = makeTextPhantom({ ...ph.options, rle: true });
      let whole = 0;
      const r = await pool.analyzeStream(pieces(rle.bytes, 4096), async (b) => { whole++; return analyzeInstance(nativeInstance(b, inflateRawSync)); });
      assert.equal(whole, 1, 'compressed pixel data is read whole');
      assert.deepEqual(r.analysis.verdict, one.verdict);
    } finally {
      await pool.close();
    }
  });

  test('a screen of text (patient information) is withheld as mostly text', () => {
    const texts = Array.from({ length: 14 }, (_, i) => ({ x: 10, y: 8 + i * 16, text: i % 2 ? 'PATIENT ID 4821377' : 'DATE OF BIRTH 12/03/1961', scale: 1, color: 230 }));
    const ph = makeTextPhantom({ rows: 240, columns: 320, photometric: 'RGB', sector: false, texts: [...texts, ...texts.map((t) => ({ ...t, x: 180, text: 'NAME DOE' }))], uidRoot: '1.2.826.0.1.3680043.9.7433.12.40' });
    const a = analyzeInstance(ph.bytes);
    assert.equal(a.verdict.kind, 'withhold', JSON.stringify(a));
    assert.equal(a.verdict.kind === 'withhold' && a.verdict.code, 'mostly-text');
  });

  test('JPEG Baseline ultrasound (YBR_FULL_422, lossy): decoded in-process, every glyph found and masked', async () => {
    const ph = makeTextPhantom({ rows: 240, columns: 320, photometric: 'RGB', jpeg: true, frames: 2, texts: LINES.slice(0, 5), uidRoot: '1.2.826.0.1.3680043.9.7433.12.55' });
    const native = nativeInstance(ph.bytes, inflateRawSync);
    const v = part10View(readInstanceSync(native, inflateRawSync).elements);
    assert.equal(v.str(0x00280004), 'RGB', 'decoded to RGB');
    const a = analyzeInstance(native);
    assert.equal(a.verdict.kind, 'mask');
    const regions = a.verdict.kind === 'mask' ? a.verdict.regions : [];
    for (const g of ph.glyphs[0]!) assert.ok(regions.some((r) => inside(g, r)), `glyph at ${g.x},${g.y} masked: ${JSON.stringify(regions)}`);
    const out = await deidentifyPart10Buffer(native, engine(), { admit: () => ({ mask: regions, detected: regions }) });
    const inst = readInstanceSync(out, inflateRawSync);
    assert.equal(inst.transferSyntax.uid, '1.2.840.10008.1.2.1');
    assert.equal(part10View(inst.elements).str(0x00282110), '01', 'still said to be lossy');
  });

  test('RLE and JPEG baseline are decoded in-process; other compressed syntaxes are refused', () => {
    const native = makeTextPhantom({ rows: 60, columns: 80, photometric: 'RGB', planar: 1, texts: LINES.slice(0, 1), uidRoot: '1.2.826.0.1.3680043.9.7433.12.50' });
    const rle = makeTextPhantom({ ...native.options, rle: true });
    const a = readInstanceSync(nativeInstance(rle.bytes, inflateRawSync), inflateRawSync);
    const b = readInstanceSync(native.bytes, inflateRawSync);
    // The RLE decoder writes interleaved samples (Planar Configuration 0).
    const n = 60 * 80;
    const interleaved = Buffer.alloc(n * 3);
    for (let i = 0; i < n; i++) for (let c = 0; c < 3; c++) interleaved[i * 3 + c] = b.pixel![c * n + i]!;
    assert.deepEqual(a.pixel, interleaved);
    assert.equal(part10View(a.elements).str(0x00280006), '0');
    assert.throws(() => decodeRleFrame(Buffer.alloc(70), 60, 80, 3, 8), /RLE/);
    // JPEG baseline through jpeg-js (grey and colour).
    const rgba = Buffer.alloc(n * 4, 255);
    for (let i = 0; i < n; i++) { rgba[i * 4] = i % 80 < 40 ? 250 : 10; rgba[i * 4 + 1] = 120; rgba[i * 4 + 2] = 10; }
    const jpg = jpeg.encode({ width: 80, height: 60, data: rgba }, 95).data;
    const dec = decodeJpegFrame(Buffer.from(jpg), 60, 80, 3);
    assert.equal(dec.length, n * 3);
    assert.ok(Math.abs(dec[0]! - 250) < 12 && Math.abs(dec[(79) * 3]! - 10) < 12, 'decoded colours match');
    assert.throws(() => decodeJpegFrame(Buffer.from(jpg), 61, 80, 3), /size/);
  });

  test('segmented palette tables (discrete, linear and indirect segments) expand as PS3.3 C.7.9.2 defines', () => {
    const words = [0, 3, 10, 20, 30, /* linear to 60 over 3 */ 1, 3, 60, /* replay the first segment (byte offset 0) */ 2, 1, 0, 0];
    const data = Buffer.alloc(words.length * 2);
    words.forEach((v, i) => data.writeUInt16LE(v, i * 2));
    const out = expandSegments(data, 9, true)!;
    assert.deepEqual(Array.from({ length: 9 }, (_, i) => out.readUInt16LE(i * 2)), [10, 20, 30, 40, 50, 60, 10, 20, 30]);
    assert.equal(expandSegments(data.subarray(0, 6), 9, true), undefined, 'short data is refused, not guessed');
  });

  test('the provider decides once, stores the decision, and a new process finds it stored', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'deid-text-'));
    const ph = makeTextPhantom({ rows: 120, columns: 160, photometric: 'RGB', texts: LINES.slice(0, 2), uidRoot: '1.2.826.0.1.3680043.9.7433.12.60' });
    const store = openTextStore(dir);
    const p = new TextProvider(store);
    let fetched = 0;
    const fetch = async (): Promise<Buffer> => { fetched++; return ph.bytes; };
    const [v1, v2] = await Promise.all([p.decide(ph.sop, fetch), p.decide(ph.sop, fetch)]);
    assert.equal(fetched, 1, 'concurrent callers share one analysis');
    assert.deepEqual(v1, v2);
    assert.equal(v1.kind, 'mask');
    store.close();
    const again = new TextProvider(openTextStore(dir));
    assert.deepEqual(await again.decide(ph.sop, async () => { throw new Error('must not fetch'); }), v1);
    assert.equal(again.stats.analyses, 0);
    // Pixels that cannot be read are withheld with their reason (and not stored).
    await assert.rejects(new TextProvider(undefined).decide('1.2.3', async () => Buffer.from('not dicom')), /DICM/);
    assert.equal(decodableHere('1.2.840.10008.1.2.4.90'), false, 'JPEG 2000 is left to the PACS');
  });

  test('a screen that says it has no burned-in text is checked anyway (an RGB CT, a secondary capture), under every policy but allow', () => {
    const screen = { modality: 'CT', sopClassUid: '1.2.840.10008.5.1.4.1.1.2', burnedInAnnotation: 'NO', samplesPerPixel: '3', rows: '480', columns: '640' };
    const grey = { ...screen, samplesPerPixel: '1' };
    // (faces: allow, so that the CT's face decision does not stand in the way here)
    const withhold: PixelPolicy = { risky: 'withhold', masks: [], faces: 'allow' };
    const detect: PixelPolicy = { risky: 'detect', masks: [], faces: 'allow' };
    const boxes = [{ x: 1, y: 2, width: 30, height: 10 }];
    const at = (v: TextVerdict | undefined): { sop: string; lookup: () => TextVerdict | undefined } => ({ sop: '1.2.3', lookup: () => v });
    assert.ok(needsTextDecision(screen, withhold) && needsTextDecision(screen, detect) && !needsTextDecision(screen, { risky: 'allow', masks: [] }));
    assert.ok(!needsTextDecision(grey, withhold), 'a grey CT saying NO is trusted');
    assert.ok(needsTextDecision({ ...grey, imageType: 'DERIVED\\SECONDARY\\SCREEN' }, withhold), 'a SECONDARY image saying NO is not');
    const pending = pixelDecision(screen, withhold, undefined, at(undefined));
    assert.ok(!pending.allow && pending.auditReason === 'pixels-withheld:text-pending');
    assert.deepEqual(pixelDecision(screen, withhold, undefined, at({ kind: 'clean' })), { allow: true });
    const found = pixelDecision(screen, withhold, undefined, at({ kind: 'mask', regions: boxes }));
    assert.ok(!found.allow && found.auditReason === 'pixels-withheld:screen-text', 'text found: withheld under withhold');
    const masked = pixelDecision(screen, detect, undefined, at({ kind: 'mask', regions: boxes }));
    assert.ok(masked.allow && masked.detected === boxes, 'text found: masked under detect');
  });

  test('policy: region rules apply first; no decision yet is withheld as pending; withheld verdicts carry their reason', () => {
    const facts = { modality: 'US', sopClassUid: '1.2.840.10008.5.1.4.1.1.6.1', manufacturer: 'ACME', rows: '240', columns: '320' };
    const rule = { match: { manufacturer: 'ACME' }, regions: [{ x: 0, y: 0, width: 320, height: 30 }] };
    const policy: PixelPolicy = { risky: 'detect', masks: [rule] };
    const lookup = (): undefined => undefined;
    const d1 = pixelDecision(facts, policy, undefined, { sop: '1.2.3', lookup });
    assert.ok(d1.allow && d1.mask === rule.regions && !d1.detected, 'the rule applies first');
    const noRule: PixelPolicy = { risky: 'detect', masks: [] };
    const d2 = pixelDecision(facts, noRule, undefined, { sop: '1.2.3', lookup });
    assert.ok(!d2.allow && d2.auditReason === 'pixels-withheld:text-pending');
    const d3 = pixelDecision(facts, noRule, undefined, { sop: '1.2.3', lookup: () => ({ kind: 'withhold', code: 'mostly-text', why: 'the image is mostly text' }) });
    assert.ok(!d3.allow && d3.auditReason === 'pixels-withheld:mostly-text');
    const boxes = [{ x: 1, y: 2, width: 30, height: 10 }];
    const d4 = pixelDecision(facts, noRule, undefined, { sop: '1.2.3', lookup: () => ({ kind: 'mask', regions: boxes }) });
    assert.ok(d4.allow && d4.detected === boxes && d4.mask === boxes);
    // Documents and Recognizable Visual Features are never released by detection.
    const doc = pixelDecision({ ...facts, sopClassUid: '1.2.840.10008.5.1.4.1.1.104.1' }, noRule, undefined, { sop: '1.2.3', lookup: () => ({ kind: 'clean' }) });
    assert.ok(!doc.allow);
    // admitPixels reads the SOP Instance UID from the header.
    const attr = (t: number): string | undefined => ({ 0x00080060: 'US', 0x00080018: '9.9.9', 0x00280010: '240', 0x00280011: '320' } as Record<number, string>)[t];
    assert.deepEqual(admitPixels(attr, noRule, undefined, (s) => (s === '9.9.9' ? { kind: 'clean' } : undefined))?.detected, []);
  });
});
