/**
 * Rendering made by the gateway: windowing, MONOCHROME1, colour models and planar
 * configuration, viewport fitting, and the PNG and JPEG encodings.
 */
import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { inflateRawSync } from 'node:zlib';
import jpeg from 'jpeg-js';
import { frameToRgb8, renderFrame } from '../../../src/render/render.js';
import { readInstanceSync } from '../../../src/dicom/part10.js';
import { encodePart10, type El } from '../../helpers/dicom-builder.js';
import { decodePng } from '../../helpers/multipart.js';

function instance(extra: El[], pixel: Buffer) {
  const els: El[] = [
    { tag: 0x00080016, vr: 'UI', value: '1.2.840.10008.5.1.4.1.1.7' },
    { tag: 0x00080018, vr: 'UI', value: '1.2.3' },
    ...extra,
    { tag: 0x7fe00010, vr: 'OW', value: pixel },
  ].sort((a, b) => a.tag - b.tag);
  const inst = readInstanceSync(encodePart10(els, { ts: 'explicitLE' }), inflateRawSync);
  return { elements: inst.elements, transferSyntax: inst.transferSyntax, pixel: inst.pixel! };
}
const geometry = (rows: number, cols: number, spp: number, bits: number, photometric: string, more: El[] = []): El[] => [
  { tag: 0x00280002, vr: 'US', value: [spp] }, { tag: 0x00280004, vr: 'CS', value: photometric },
  { tag: 0x00280010, vr: 'US', value: [rows] }, { tag: 0x00280011, vr: 'US', value: [cols] },
  { tag: 0x00280100, vr: 'US', value: [bits] }, { tag: 0x00280101, vr: 'US', value: [bits] }, { tag: 0x00280102, vr: 'US', value: [bits - 1] },
  { tag: 0x00280103, vr: 'US', value: [0] }, ...more,
];


describe('rendering', () => {
  test('16-bit monochrome: Modality LUT, the window of the header or of the request, linear VOI', () => {
    const px = Buffer.alloc(4 * 2);
    [0, 1000, 1040, 2000].forEach((v, i) => px.writeUInt16LE(v, i * 2));
    const src = instance(geometry(1, 4, 1, 16, 'MONOCHROME2', [
      { tag: 0x00281050, vr: 'DS', value: '40' }, { tag: 0x00281051, vr: 'DS', value: '400' },
      { tag: 0x00281052, vr: 'DS', value: '-1000' }, { tag: 0x00281053, vr: 'DS', value: '1' },
    ]), px);
    assert.deepEqual([...frameToRgb8(src, 1).data], [0, 102, 128, 255]);
    assert.deepEqual([...frameToRgb8(src, 1, { center: 0, width: 2 }).data], [0, 255, 255, 255]);
    assert.deepEqual([...frameToRgb8(src, 1, { center: 500, width: 2 }).data], [0, 0, 0, 255], 'a narrow window thresholds');
  });

  test('MONOCHROME1 is inverted; without a window the frame\'s range is used', () => {
    const src = instance(geometry(1, 3, 1, 8, 'MONOCHROME1'), Buffer.from([10, 20, 30, 0]));
    assert.deepEqual([...frameToRgb8(src, 1).data], [255, 127, 0]);
  });

  test('RGB planar, RGB interleaved and YBR_FULL come out as the same RGB', () => {
    const rgb = [255, 0, 0, 0, 255, 0, 0, 0, 255, 100, 100, 100];
    const inter = instance(geometry(2, 2, 3, 8, 'RGB', [{ tag: 0x00280006, vr: 'US', value: [0] }]), Buffer.from(rgb));
    const planarBytes = [0, 3, 6, 9, 1, 4, 7, 10, 2, 5, 8, 11].map((i) => rgb[i]!);
    const planar = instance(geometry(2, 2, 3, 8, 'RGB', [{ tag: 0x00280006, vr: 'US', value: [1] }]), Buffer.from(planarBytes));
    assert.deepEqual([...frameToRgb8(inter, 1).data], rgb);
    assert.deepEqual([...frameToRgb8(planar, 1).data], rgb);
    const ybr = instance(geometry(1, 2, 3, 8, 'YBR_FULL', [{ tag: 0x00280006, vr: 'US', value: [0] }]), Buffer.from([50, 128, 128, 200, 128, 128]));
    assert.deepEqual([...frameToRgb8(ybr, 1).data], [50, 50, 50, 200, 200, 200]);
  });

  test('PNG and JPEG; viewports shrink, never enlarge; frames past the end are not found', () => {
    const px = Buffer.alloc(20 * 10);
    for (let i = 0; i < px.length; i++) px[i] = i % 20 < 10 ? 0 : 255;
    const src = instance(geometry(10, 20, 1, 8, 'MONOCHROME2', [{ tag: 0x00281050, vr: 'DS', value: '127.5' }, { tag: 0x00281051, vr: 'DS', value: '256' }]), px);
    const png = decodePng(renderFrame(src, { frame: 1, format: 'png' }));
    assert.deepEqual([png.width, png.height, png.channels], [20, 10, 1]);
    assert.ok(png.data.equals(Buffer.from(frameToRgb8(src, 1).data)), 'the PNG holds exactly the rendered samples');
    const small = decodePng(renderFrame(src, { frame: 1, format: 'png', viewport: { width: 10, height: 10 } }));
    assert.deepEqual([small.width, small.height], [10, 5]);
    const big = decodePng(renderFrame(src, { frame: 1, format: 'png', viewport: { width: 100, height: 100 } }));
    assert.deepEqual([big.width, big.height], [20, 10]);
    const j = jpeg.decode(renderFrame(src, { frame: 1, format: 'jpeg', quality: 95 }), { useTArray: true });
    assert.deepEqual([j.width, j.height], [20, 10]);
    assert.ok(j.data[0]! < 30 && j.data[(20 - 1) * 4]! > 225, 'left dark, right bright');
    assert.throws(() => frameToRgb8(src, 2), /no such frame/);
  });
});
