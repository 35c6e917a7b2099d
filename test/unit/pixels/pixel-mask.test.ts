/**
 * Masking as it streams: every frame, photometric interpretation, planar configuration, bit
 * depth and byte order, at any chunking, against a naive per-pixel reference; embedded overlay
 * bits; the Part 10 engine's use of it; the risk classification and per-client decision.
 */
import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { pixelMasker, type PixelGeometry, type Region } from '../../../src/deid/pixel-mask.js';
import { deidentifyPart10Buffer } from '../../../src/deid/part10.js';
import { readInstanceSync } from '../../../src/dicom/part10.js';
import { GatewayError } from '../../../src/core/errors.js';
import { admitPixels, DEFAULT_PIXEL_POLICY, pixelDecision, pixelRisk } from '../../../src/policy/pixels.js';
import { encodePart10, encapsulatedPixelData, type El } from '../../helpers/dicom-builder.js';
import { engine } from '../../helpers/fixtures.js';
import { mulberry32 } from '../../helpers/prng.js';
import { inflateRawSync } from 'node:zlib';
import { existsSync, readFileSync } from 'node:fs';

/** Reference: the value each (frame, row, column, sample) cell must have after masking. */
function reference(g: PixelGeometry, input: Buffer, regions: Region[]): Buffer {
  const out = Buffer.from(input);
  const bpp = g.bitsAllocated / 8;
  const chroma = g.photometric.startsWith('YBR') && g.samplesPerPixel === 3;
  for (let f = 0; f < g.frames; f++) for (let y = 0; y < g.rows; y++) for (let x = 0; x < g.columns; x++) {
    if (!regions.some((r) => x >= r.x && x < r.x + r.width && y >= r.y && y < r.y + r.height)) continue;
    for (let s = 0; s < g.samplesPerPixel; s++) {
      const cell = g.planarConfiguration === 1 && g.samplesPerPixel === 3
        ? f * g.rows * g.columns * 3 + s * g.rows * g.columns + y * g.columns + x
        : ((f * g.rows + y) * g.columns + x) * g.samplesPerPixel + s;
      const v = chroma && s > 0 ? 1 << (g.bitsAllocated - 1) : 0;
      const o = cell * bpp;
      if (bpp === 1) out[o] = v;
      else if (bpp === 2) { if (g.littleEndian) out.writeUInt16LE(v, o); else out.writeUInt16BE(v, o); }
      else if (g.littleEndian) out.writeUInt32LE(v, o);
      else out.writeUInt32BE(v, o);
    }
  }
  return out;
}

function run(g: PixelGeometry, input: Buffer, regions: Region[], overlayBits: number[], chunkSizes: () => number, inPlace = false): Buffer {
  const m = pixelMasker(g, { regions, overlayBits }, inPlace);
  const parts: Buffer[] = [];
  for (let at = 0; at < input.length;) {
    const n = Math.min(input.length - at, Math.max(1, chunkSizes()));
    parts.push(m(input.subarray(at, at + n)));
    at += n;
  }
  return Buffer.concat(parts);
}

const GEOMETRIES: [string, PixelGeometry][] = [
  ['MONOCHROME2 8-bit', { rows: 9, columns: 11, samplesPerPixel: 1, bitsAllocated: 8, planarConfiguration: 0, frames: 2, photometric: 'MONOCHROME2', littleEndian: true }],
  ['MONOCHROME1 16-bit LE', { rows: 7, columns: 13, samplesPerPixel: 1, bitsAllocated: 16, planarConfiguration: 0, frames: 3, photometric: 'MONOCHROME1', littleEndian: true }],
  ['MONOCHROME2 16-bit BE', { rows: 7, columns: 13, samplesPerPixel: 1, bitsAllocated: 16, planarConfiguration: 0, frames: 1, photometric: 'MONOCHROME2', littleEndian: false }],
  ['MONOCHROME2 32-bit', { rows: 5, columns: 6, samplesPerPixel: 1, bitsAllocated: 32, planarConfiguration: 0, frames: 2, photometric: 'MONOCHROME2', littleEndian: true }],
  ['RGB interleaved', { rows: 10, columns: 12, samplesPerPixel: 3, bitsAllocated: 8, planarConfiguration: 0, frames: 3, photometric: 'RGB', littleEndian: true }],
  ['RGB planar', { rows: 10, columns: 12, samplesPerPixel: 3, bitsAllocated: 8, planarConfiguration: 1, frames: 2, photometric: 'RGB', littleEndian: true }],
  ['YBR_FULL interleaved', { rows: 8, columns: 8, samplesPerPixel: 3, bitsAllocated: 8, planarConfiguration: 0, frames: 2, photometric: 'YBR_FULL', littleEndian: true }],
  ['YBR_FULL planar 16-bit', { rows: 8, columns: 8, samplesPerPixel: 3, bitsAllocated: 16, planarConfiguration: 1, frames: 1, photometric: 'YBR_FULL', littleEndian: true }],
  ['PALETTE COLOR', { rows: 6, columns: 9, samplesPerPixel: 1, bitsAllocated: 8, planarConfiguration: 0, frames: 1, photometric: 'PALETTE COLOR', littleEndian: true }],
];
const REGIONS: Region[] = [{ x: 0, y: 0, width: 5, height: 2 }, { x: 3, y: 1, width: 4, height: 3 }, { x: 100, y: 100, width: 5, height: 5 }];

describe('pixel masking', () => {
  for (const [name, g] of GEOMETRIES) {
    test(`${name}: regions blanked in every frame, every other byte unchanged, at any chunking`, () => {
      const rnd = mulberry32(7);
      const bytes = g.rows * g.columns * g.samplesPerPixel * (g.bitsAllocated / 8) * g.frames;
      const input = Buffer.from(Array.from({ length: bytes }, () => 1 + Math.floor(rnd() * 254)));
      const copy = Buffer.from(input);
      const want = reference(g, input, REGIONS);
      for (const [label, size] of [['whole', () => bytes], ['1-byte', () => 1], ['random', () => 1 + Math.floor(rnd() * 17)]] as const) {
        assert.ok(run(g, input, REGIONS, [], size).equals(want), `${label} chunks`);
      }
      assert.ok(input.equals(copy), 'the input buffers are never written');
      assert.ok(!want.equals(input), 'the regions changed something');
      // In place (the caller owns the chunks): the same bytes out, written into the input itself.
      const owned = Buffer.from(input);
      assert.ok(run(g, owned, REGIONS, [], () => 1 + Math.floor(rnd() * 17), true).equals(want), 'in place');
      assert.ok(owned.equals(want), 'the owned input holds the masked bytes');
    });
  }

  test('embedded overlay bits are cleared in every cell and nothing else changes', () => {
    for (const le of [true, false]) {
      const g: PixelGeometry = { rows: 4, columns: 5, samplesPerPixel: 1, bitsAllocated: 16, planarConfiguration: 0, frames: 2, photometric: 'MONOCHROME2', littleEndian: le };
      const input = Buffer.alloc(4 * 5 * 2 * 2);
      for (let i = 0; i < 40; i++) {
        const v = 0xf000 | ((i * 37) & 0x0fff);
        if (le) input.writeUInt16LE(v, i * 2); else input.writeUInt16BE(v, i * 2);
      }
      const out = run(g, input, [], [12, 14], () => 3);
      for (let i = 0; i < 40; i++) {
        const a = le ? input.readUInt16LE(i * 2) : input.readUInt16BE(i * 2);
        const b = le ? out.readUInt16LE(i * 2) : out.readUInt16BE(i * 2);
        assert.equal(b, a & ~((1 << 12) | (1 << 14)), `cell ${i} (${le ? 'LE' : 'BE'})`);
      }
    }
  });

  test('geometry that cannot be cleaned is refused', () => {
    const base: PixelGeometry = { rows: 4, columns: 4, samplesPerPixel: 1, bitsAllocated: 8, planarConfiguration: 0, frames: 1, photometric: 'MONOCHROME2', littleEndian: true };
    for (const g of [{ ...base, bitsAllocated: 1 }, { ...base, rows: Number.NaN }, { ...base, samplesPerPixel: 3, photometric: 'YBR_FULL_422' }]) {
      assert.throws(() => pixelMasker(g, { regions: REGIONS, overlayBits: [] }), (e) => e instanceof GatewayError && e.code === 'PIXELS_WITHHELD');
    }
  });
});

function usFile(opts: { encapsulated?: boolean; badLength?: boolean } = {}): { file: Buffer; pixels: Buffer } {
  const rows = 16, cols = 24, frames = 3;
  const pixels = Buffer.alloc(rows * cols * 3 * frames);
  for (let i = 0; i < pixels.length; i++) pixels[i] = 10 + (i % 200);
  const els: El[] = [
    { tag: 0x00080016, vr: 'UI', value: '1.2.840.10008.5.1.4.1.1.3.1' },
    { tag: 0x00080018, vr: 'UI', value: '1.2.3.4.5.6' },
    { tag: 0x00080060, vr: 'CS', value: 'US' },
    { tag: 0x00080070, vr: 'LO', value: 'ACME' },
    { tag: 0x00081090, vr: 'LO', value: 'SONO-1' },
    { tag: 0x00100010, vr: 'PN', value: 'BURNED^IN' },
    { tag: 0x0020000d, vr: 'UI', value: '1.2.3.4' },
    { tag: 0x0020000e, vr: 'UI', value: '1.2.3.4.5' },
    { tag: 0x00280002, vr: 'US', value: [3] },
    { tag: 0x00280004, vr: 'CS', value: 'RGB' },
    { tag: 0x00280006, vr: 'US', value: [0] },
    { tag: 0x00280008, vr: 'IS', value: String(frames) },
    { tag: 0x00280010, vr: 'US', value: [rows] },
    { tag: 0x00280011, vr: 'US', value: [cols] },
    { tag: 0x00280100, vr: 'US', value: [8] },
    { tag: 0x00280101, vr: 'US', value: [8] },
    { tag: 0x00280102, vr: 'US', value: [7] },
    { tag: 0x00280103, vr: 'US', value: [0] },
    { tag: 0x00280301, vr: 'CS', value: 'YES' },
    opts.encapsulated ? encapsulatedPixelData([Buffer.alloc(0), Buffer.alloc(100, 1)]) : { tag: 0x7fe00010, vr: 'OB', value: opts.badLength ? pixels.subarray(0, pixels.length - 2) : pixels },
  ];
  return { file: encodePart10(els, { ts: 'explicitLE', ...(opts.encapsulated ? { meta: { transferSyntaxUid: '1.2.840.10008.1.2.5' } } : {}) }), pixels };
}

describe('the Part 10 engine with a mask', () => {
  const band: Region[] = [{ x: 0, y: 0, width: 10, height: 3 }];

  test('the band is gone in every frame, the rest is bit-exact; Burned In Annotation NO and 113101', async () => {
    const { file, pixels } = usFile();
    const before = Buffer.from(file);
    const out = await deidentifyPart10Buffer(file, engine(), { admit: () => ({ mask: band }) });
    const inst = readInstanceSync(out, inflateRawSync);
    const g: PixelGeometry = { rows: 16, columns: 24, samplesPerPixel: 3, bitsAllocated: 8, planarConfiguration: 0, frames: 3, photometric: 'RGB', littleEndian: true };
    assert.ok(inst.pixel!.equals(reference(g, pixels, band)), 'exactly the band, in every frame');
    assert.ok(file.equals(before), 'the input is not written');
    // ownsInput: the same output, masked in the caller's own buffer.
    const owned = await deidentifyPart10Buffer(Buffer.from(file), engine(), { admit: () => ({ mask: band }), ownsInput: true });
    assert.ok(readInstanceSync(owned, inflateRawSync).pixel!.equals(inst.pixel!), 'masked in place, the same pixels');
    const text = out.toString('latin1');
    const bia = inst.elements.find((e) => e.tag === 0x00280301)!;
    assert.equal(bia.value!.toString('latin1').trim(), 'NO');
    assert.ok(text.includes('113101') && text.includes('Clean Pixel Data'), 'the method code sequence names Clean Pixel Data');
    const plain = await deidentifyPart10Buffer(file, engine(), { admit: () => undefined });
    assert.equal(readInstanceSync(plain, inflateRawSync).elements.find((e) => e.tag === 0x00280301)!.value!.toString('latin1').trim(), 'YES', 'without a mask, Burned In Annotation is not touched');
    assert.ok(!plain.toString('latin1').includes('113101'));
    assert.ok(readInstanceSync(plain, inflateRawSync).pixel!.equals(pixels), 'without a mask, pixels pass unchanged');
  });

  test('a separate Overlay Data element (even one too large to hold) is not mistaken for an embedded overlay', async () => {
    const rows = 64, cols = 64;
    const px = Buffer.alloc(rows * cols * 2);
    for (let i = 0; i < rows * cols; i++) px.writeUInt16LE((i * 7) & 0x0fff | 1, i * 2);
    const ov = Buffer.alloc(512 * 1024, 0xff); // larger than the engine holds: skipped, not parsed
    const f = encodePart10([
      { tag: 0x00080016, vr: 'UI', value: '1.2.840.10008.5.1.4.1.1.2' }, { tag: 0x00080018, vr: 'UI', value: '1.2.3.9' },
      { tag: 0x00280002, vr: 'US', value: [1] }, { tag: 0x00280004, vr: 'CS', value: 'MONOCHROME2' },
      { tag: 0x00280010, vr: 'US', value: [rows] }, { tag: 0x00280011, vr: 'US', value: [cols] },
      { tag: 0x00280100, vr: 'US', value: [16] }, { tag: 0x00280101, vr: 'US', value: [12] }, { tag: 0x00280102, vr: 'US', value: [11] },
      { tag: 0x60000100, vr: 'US', value: [1] }, { tag: 0x60000102, vr: 'US', value: [0] }, { tag: 0x60003000, vr: 'OW', value: ov },
      { tag: 0x7fe00010, vr: 'OW', value: px },
    ], { ts: 'explicitLE' });
    const out = readInstanceSync(await deidentifyPart10Buffer(f, engine()), inflateRawSync);
    assert.ok(out.pixel!.equals(px), 'no pixel bit changed');
    assert.ok(!out.elements.some((e) => e.tag >>> 16 === 0x6000), 'the overlay is removed');
  });

  test('an embedded overlay in compressed pixel data cannot be cleared: withheld', async () => {
    const els: El[] = [
      { tag: 0x00080016, vr: 'UI', value: '1.2.840.10008.5.1.4.1.1.2' }, { tag: 0x00080018, vr: 'UI', value: '1.2.3.8' },
      { tag: 0x00280100, vr: 'US', value: [16] }, { tag: 0x00280101, vr: 'US', value: [12] }, { tag: 0x00280102, vr: 'US', value: [11] },
      { tag: 0x60000100, vr: 'US', value: [16] }, { tag: 0x60000102, vr: 'US', value: [12] },
      encapsulatedPixelData([Buffer.alloc(64, 1)]),
    ];
    const f = encodePart10(els, { ts: 'explicitLE', meta: { transferSyntaxUid: '1.2.840.10008.1.2.5' } });
    await assert.rejects(deidentifyPart10Buffer(f, engine()), (e) => e instanceof GatewayError && e.code === 'PIXELS_WITHHELD');
  });

  test('a rule whose regions fall entirely outside the image covers nothing: withheld, never Burned In Annotation NO', async () => {
    const { file, pixels } = usFile();
    for (const outside of [[{ x: 24, y: 0, width: 10, height: 3 }], [{ x: 0, y: 16, width: 5, height: 5 }, { x: 100, y: 100, width: 5, height: 5 }]]) {
      await assert.rejects(deidentifyPart10Buffer(file, engine(), { admit: () => ({ mask: outside }) }),
        (e) => e instanceof GatewayError && e.code === 'PIXELS_WITHHELD' && e.auditReason === 'pixels-withheld:mask-covers-nothing', JSON.stringify(outside));
    }
    // A region partly inside the image is clipped: it covers something, so the instance is clean.
    const partly = [{ x: 20, y: 14, width: 10, height: 10 }];
    const out = await deidentifyPart10Buffer(file, engine(), { admit: () => ({ mask: partly }) });
    const inst = readInstanceSync(out, inflateRawSync);
    const g: PixelGeometry = { rows: 16, columns: 24, samplesPerPixel: 3, bitsAllocated: 8, planarConfiguration: 0, frames: 3, photometric: 'RGB', littleEndian: true };
    assert.ok(inst.pixel!.equals(reference(g, pixels, partly)), 'the clipped region is blanked');
    assert.equal(inst.elements.find((e) => e.tag === 0x00280301)!.value!.toString('latin1').trim(), 'NO');
    assert.ok(out.toString('latin1').includes('113101'), '113101 when something was covered');
  });

  test('compressed pixel data or a length that does not fit the geometry cannot be masked', async () => {
    for (const f of [usFile({ encapsulated: true }).file, usFile({ badLength: true }).file]) {
      await assert.rejects(deidentifyPart10Buffer(f, engine(), { admit: () => ({ mask: band }) }), (e) => e instanceof GatewayError && e.code === 'PIXELS_WITHHELD');
    }
  });
});

describe('cross-check: the shared public ultrasound (when ../shared is beside the checkout)', () => {
  const dir = new URL('../../../../shared/corpus/public/', import.meta.url);
  test('its manifest band is withheld by default, and masked exactly under a rule for its size: the band zeroed, no other byte changed', { skip: !existsSync(new URL('manifest.json', dir)) }, async () => {
    const manifest = JSON.parse(readFileSync(new URL('manifest.json', dir), 'utf8')) as { files: { file: string; sop: string }[]; burned_in: { sop: string; rows: [number, number]; cols: [number, number]; rgb: [number, number, number] } };
    const band = manifest.burned_in;
    const entry = manifest.files.find((f) => f.sop === band.sop);
    assert.ok(entry, 'the manifest names the file of the burned-in instance');
    const file = readFileSync(new URL(entry.file, dir));
    const before = readInstanceSync(file, inflateRawSync);
    const num = (tag: number): number => { const e = before.elements.find((x) => x.tag === tag); return e?.value ? e.value.readUInt16LE(0) : Number.NaN; };
    const rows = num(0x00280010), cols = num(0x00280011), spp = num(0x00280002), frames = before.pixel!.length / (rows * cols * spp);
    assert.equal(spp, 3, 'RGB');
    assert.equal(num(0x00280006), 0, 'interleaved');
    const inBand = (x: number, y: number): boolean => y >= band.rows[0] && y < band.rows[1] && x >= band.cols[0] && x < band.cols[1];
    // The band is in the input, in the manifest's colour.
    for (let y = band.rows[0]; y < band.rows[1]; y++) for (let x = band.cols[0]; x < band.cols[1]; x++) {
      assert.deepEqual([...before.pixel!.subarray((y * cols + x) * 3, (y * cols + x) * 3 + 3)], band.rgb, `input band pixel ${x},${y}`);
    }
    // The gateway's admission, on the instance's own header: withheld by default…
    await assert.rejects(deidentifyPart10Buffer(file, engine(), { admit: (attr) => admitPixels(attr, DEFAULT_PIXEL_POLICY) }),
      (e) => e instanceof GatewayError && e.code === 'PIXELS_WITHHELD' && e.auditReason === 'pixels-withheld:burned-in-annotation');
    // …masked under a rule for its image size.
    const rule = { match: { rows, columns: cols }, regions: [{ x: band.cols[0], y: band.rows[0], width: band.cols[1] - band.cols[0], height: band.rows[1] - band.rows[0] }] };
    const out = await deidentifyPart10Buffer(file, engine(), { admit: (attr) => admitPixels(attr, { risky: 'mask', masks: [rule] }) });
    const after = readInstanceSync(out, inflateRawSync);
    assert.equal(after.pixel!.length, before.pixel!.length);
    let zeroed = 0;
    for (let f = 0; f < frames; f++) for (let y = 0; y < rows; y++) for (let x = 0; x < cols; x++) for (let s = 0; s < 3; s++) {
      const i = ((f * rows + y) * cols + x) * 3 + s;
      if (inBand(x, y)) { assert.equal(after.pixel![i], 0, `band byte ${i}`); zeroed++; } else assert.equal(after.pixel![i], before.pixel![i], `byte ${i} outside the band`);
    }
    assert.equal(zeroed, frames * (band.rows[1] - band.rows[0]) * (band.cols[1] - band.cols[0]) * 3, 'the whole band');
    assert.equal(after.elements.find((e) => e.tag === 0x00280301)!.value!.toString('latin1').trim(), 'NO');
    assert.ok(out.toString('latin1').includes('113101'), 'Clean Pixel Data');
  });
});

describe('risk classification and per-client decision', () => {
  const cases: [string, Record<string, string>, string | undefined][] = [
    ['CT, Burned In Annotation absent', { modality: 'CT', sopClassUid: '1.2.840.10008.5.1.4.1.1.2' }, undefined],
    ['CT with Burned In Annotation YES', { modality: 'CT', burnedInAnnotation: 'YES' }, 'Burned In Annotation is not NO'],
    ['US without Burned In Annotation', { modality: 'US' }, 'modality US without Burned In Annotation = NO'],
    ['US stating NO', { modality: 'US', burnedInAnnotation: 'NO' }, undefined],
    ['recognizable visual features', { modality: 'CT', burnedInAnnotation: 'NO', recognizableVisualFeatures: 'YES' }, 'Recognizable Visual Features is YES'],
    ['encapsulated PDF', { sopClassUid: '1.2.840.10008.5.1.4.1.1.104.1', burnedInAnnotation: 'NO' }, 'encapsulated document'],
    ['secondary capture by SOP class', { sopClassUid: '1.2.840.10008.5.1.4.1.1.7' }, 'SOP class that may carry burned-in text'],
    ['derived secondary (dose screen)', { modality: 'CT', imageType: 'DERIVED\\SECONDARY\\SCREEN SAVE' }, 'secondary image without Burned In Annotation = NO'],
    ['SECONDARY whatever the first value (screen capture)', { modality: 'CT', imageType: 'ORIGINAL\\SECONDARY' }, 'secondary image without Burned In Annotation = NO'],
    ['ORIGINAL PRIMARY', { modality: 'CT', imageType: 'ORIGINAL\\PRIMARY\\AXIAL' }, undefined],
    ['SECONDARY stating NO', { modality: 'CT', imageType: 'DERIVED\\SECONDARY', burnedInAnnotation: 'NO' }, undefined],
    ['multi-frame true colour', { modality: 'XA', samplesPerPixel: '3', numberOfFrames: '20' }, 'multi-frame true colour without Burned In Annotation = NO'],
  ];
  for (const [name, f, want] of cases) test(`risk: ${name}`, () => { assert.equal(pixelRisk(f), want); });

  test('withhold (default), mask under a matching rule only, allow (with the risk named)', () => {
    const us = { modality: 'US', manufacturer: 'Acme ', model: 'SONO-1', rows: '16', columns: '24' };
    assert.equal(pixelDecision(us).allow, false);
    const rule = { match: { manufacturer: 'ACME', model: 'sono-1', rows: 16, columns: 24 }, regions: [{ x: 0, y: 0, width: 5, height: 5 }] };
    assert.deepEqual(pixelDecision(us, { risky: 'mask', masks: [rule] }), { allow: true, mask: rule.regions, risk: 'modality US without Burned In Annotation = NO' });
    const other = pixelDecision({ ...us, columns: '32' }, { risky: 'mask', masks: [rule] });
    assert.equal(other.allow, false, 'another image size is not covered');
    assert.match((other as { reason: string }).reason, /no mask rule covers this device and image size/);
    assert.deepEqual(pixelDecision(us, { risky: 'allow', masks: [] }), { allow: true, risk: 'modality US without Burned In Annotation = NO' });
    assert.equal(pixelDecision({ sopClassUid: '1.2.840.10008.5.1.4.1.1.104.1' }, { risky: 'mask', masks: [{ match: {}, regions: rule.regions }] }).allow, false, 'a document cannot be masked');
  });

  test('Recognizable Visual Features YES is never released by a region rule, only by an explicit allow', () => {
    const face = { modality: 'XC', burnedInAnnotation: 'NO', recognizableVisualFeatures: 'YES', manufacturer: 'ACME', rows: '16', columns: '24' };
    const everything = { risky: 'mask' as const, masks: [{ match: {}, regions: [{ x: 0, y: 0, width: 24, height: 16 }] }] };
    const d = pixelDecision(face, everything);
    assert.equal(d.allow, false, 'a rule covering the whole image does not release a face');
    assert.match((d as { reason: string }).reason, /Recognizable Visual Features/);
    assert.equal((d as { auditReason: string }).auditReason, 'pixels-withheld:recognizable-visual-features');
    assert.deepEqual(pixelDecision(face, { risky: 'allow', masks: [] }), { allow: true, risk: 'Recognizable Visual Features is YES' });
    assert.equal(pixelDecision(face).allow, false, 'withheld by default');
  });

  test('a denial carries a PHI-free audit reason naming the risk', () => {
    const reason = (f: Record<string, string>, policy?: Parameters<typeof pixelDecision>[1]): string | undefined => {
      const d = pixelDecision(f, policy);
      return d.allow ? undefined : d.auditReason;
    };
    assert.equal(reason({ modality: 'US' }), 'pixels-withheld:modality-us');
    assert.equal(reason({ modality: 'CT', burnedInAnnotation: 'YES' }), 'pixels-withheld:burned-in-annotation');
    assert.equal(reason({ sopClassUid: '1.2.840.10008.5.1.4.1.1.104.1' }, { risky: 'mask', masks: [] }), 'pixels-withheld:encapsulated-document');
    assert.equal(reason({ modality: 'CT', imageType: 'ORIGINAL\\SECONDARY' }, { risky: 'mask', masks: [] }), 'pixels-withheld:secondary-image');
    assert.equal(reason({ sopClassUid: '1.2.840.10008.5.1.4.1.1.7' }), 'pixels-withheld:sop-class');
    assert.equal(reason({ modality: 'XA', samplesPerPixel: '3', numberOfFrames: '2' }), 'pixels-withheld:multi-frame-colour');
    try {
      admitPixels((tag) => (tag === 0x00080060 ? 'US' : undefined), DEFAULT_PIXEL_POLICY);
      assert.fail('admitPixels withholds a US by default');
    } catch (e) {
      assert.ok(e instanceof GatewayError && e.code === 'PIXELS_WITHHELD' && e.auditReason === 'pixels-withheld:modality-us', `PIXELS_WITHHELD with its audit reason (${String(e)})`);
    }
  });
});
