/**
 * One reader of embedded overlays for the engine and the gateway's facts: Part 10 and DICOM
 * JSON views of the same header give the same bits, Bits Stored and High Bit decide what is
 * embedded, and an overlay with its own Overlay Data or kept by the plan is not.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { inflateRawSync } from 'node:zlib';
import { readHeaderSync } from '../../../src/dicom/part10.js';
import { embeddedOverlayBits } from '../../../src/pixels/overlays.js';
import { jsonView, part10View } from '../../../src/pixels/views.js';
import { encodePart10, type El } from '../../helpers/dicom-builder.js';

function header(bitsStored: number, highBit: number, overlays: { group: number; bit: number; data?: boolean }[]): El[] {
  return [
    { tag: 0x00080016, vr: 'UI', value: '1.2.840.10008.5.1.4.1.1.2' },
    { tag: 0x00080018, vr: 'UI', value: '1.2.3.4' },
    { tag: 0x00280100, vr: 'US', value: [16] },
    { tag: 0x00280101, vr: 'US', value: [bitsStored] },
    { tag: 0x00280102, vr: 'US', value: [highBit] },
    ...overlays.flatMap((o) => [
      { tag: ((o.group << 16) | 0x0102) >>> 0, vr: 'US', value: [o.bit] } as El,
      ...(o.data ? [{ tag: ((o.group << 16) | 0x3000) >>> 0, vr: 'OW', value: Buffer.alloc(8) } as El] : []),
    ]),
  ].sort((a, b) => a.tag - b.tag);
}

const json = (els: El[]): Record<string, unknown> => Object.fromEntries(els.map((e) => [e.tag.toString(16).toUpperCase().padStart(8, '0'), e.vr === 'OW' ? { vr: 'OW', BulkDataURI: 'x' } : { vr: e.vr, Value: e.value }]));

const cases: [string, El[], number[]][] = [
  ['bit 12 above 12 stored bits is embedded', header(12, 11, [{ group: 0x6000, bit: 12 }]), [12]],
  ['bit 0 below high-aligned stored bits (15..4) is embedded', header(12, 15, [{ group: 0x6002, bit: 0 }]), [0]],
  ['a bit inside the stored range is the image\'s own', header(12, 11, [{ group: 0x6000, bit: 11 }]), []],
  ['an overlay with Overlay Data of its own is not embedded', header(12, 11, [{ group: 0x6000, bit: 12, data: true }, { group: 0x6004, bit: 13 }]), [13]],
];

for (const [name, els, want] of cases) {
  test(`${name}: Part 10 and DICOM JSON agree`, () => {
    const head = readHeaderSync(encodePart10(els, { ts: 'explicitLE' }), inflateRawSync);
    const fromPart10 = embeddedOverlayBits(part10View(head.elements), { hasData: (g) => head.elements.some((e) => e.tag === (((g << 16) | 0x3000) >>> 0)) });
    const j = json(els);
    const fromJson = embeddedOverlayBits(jsonView(j), { hasData: (g) => j[`${g.toString(16).toUpperCase()}3000`] !== undefined });
    assert.deepEqual(fromPart10, want);
    assert.deepEqual(fromJson, want);
  });
}

test('an overlay the plan keeps is not cleared', () => {
  const els = header(12, 11, [{ group: 0x6000, bit: 12 }]);
  const head = readHeaderSync(encodePart10(els, { ts: 'explicitLE' }), inflateRawSync);
  assert.deepEqual(embeddedOverlayBits(part10View(head.elements), { hasData: () => false, kept: (g) => g === 0x6000 }), []);
});
