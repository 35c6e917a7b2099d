/**
 * Burned-in text (issue 12) against a real Orthanc: ultrasound images the tests draw with text
 * at known places (RGB; palette colour stored RLE with 12 frames whose text changes; one with no
 * text; a screen of text) retrieved through the gateway by a client with `risky: detect`: every
 * glyph masked and every other pixel kept in study, series and instance retrieves; frames, bulk
 * pixel data and metadata agree; the screen withheld with its reason; decisions made once and
 * stored (a restarted gateway analyses nothing again); the audit names the boxes. Cross-check:
 * the real images of ../shared/corpus/burned-in pass ../shared/tools/text-check through the
 * gateway, and the screen is withheld.
 */
import { describe, test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { inflateRawSync } from 'node:zlib';
import winston from 'winston';
import { validateConfig, type Config } from '../../src/config/schema.js';
import { readInstanceSync } from '../../src/dicom/part10.js';
import { pixelMasker } from '../../src/deid/pixel-mask.js';
import { buildParts, startGateway, type Gateway } from '../../src/main.js';
import { nativeInstance } from '../../src/pixels/codec.js';
import { analyzeInstance } from '../../src/pixels/text/analyze.js';
import { part10View } from '../../src/pixels/views.js';
import { makeTextPhantom, type TextPhantom } from '../fixtures/text-phantom.js';
import { startOrthanc, type OrthancHandle } from '../helpers/orthanc.js';
import { decodePng, splitMultipart } from '../helpers/multipart.js';

const sha = (t: string): string => createHash('sha256').update(t).digest('hex');
const tok = (id: string): string => `${id}-token-0123456789`;
const ROOT = '1.2.826.0.1.3680043.9.7433.12.900';
const SHARED = new URL('../../../shared/corpus/burned-in/', import.meta.url).pathname;
const TEXT_CHECK = new URL('../../../shared/tools/text-check', import.meta.url).pathname;

const rgb = makeTextPhantom({
  rows: 240, columns: 320, photometric: 'RGB', uidRoot: `${ROOT}.1`,
  texts: [
    { x: 8, y: 6, text: 'ST MARY HOSPITAL', scale: 2, color: 255 },
    { x: 8, y: 28, text: 'DOE JOHN 12/03/2026', scale: 1, color: [255, 255, 0] },
    { x: 240, y: 220, text: 'MRN 4821377', scale: 1, bold: true, smooth: true, color: 230 },
    { x: 130, y: 120, text: 'LV APEX', scale: 2, color: 255 },
  ],
});
const cine = makeTextPhantom({
  rows: 200, columns: 300, photometric: 'PALETTE COLOR', rle: true, frames: 12, uidRoot: `${ROOT}.2`,
  texts: [
    { x: 6, y: 6, text: 'CARDIO LAB 3', scale: 2, color: 255 },
    ...Array.from({ length: 12 }, (_, f) => ({ x: 200, y: 184, text: `0:03:${10 + f}`, scale: 1, color: 255, frames: [f] })),
    { x: 200, y: 60, text: 'PT WALSH', scale: 1, color: 255, frames: [7] },
  ],
});
const clean = makeTextPhantom({ rows: 240, columns: 320, photometric: 'RGB', texts: [], uidRoot: `${ROOT}.3` });
const screen = makeTextPhantom({
  rows: 240, columns: 320, photometric: 'RGB', sector: false, modality: 'OT', uidRoot: `${ROOT}.4`,
  texts: Array.from({ length: 14 }, (_, i) => ({ x: 10, y: 8 + i * 16, text: i % 2 ? 'PATIENT ID 4821377   NAME DOE' : 'DATE OF BIRTH 12/03/1961', scale: 1, color: 230 })),
});
const jpg = makeTextPhantom({
  rows: 240, columns: 320, photometric: 'RGB', jpeg: true, uidRoot: `${ROOT}.5`,
  texts: [{ x: 8, y: 6, text: 'ST MARY HOSPITAL', scale: 2, color: 255 }, { x: 8, y: 28, text: 'DOE JOHN 12/03/2026', scale: 1, color: [255, 255, 0] }],
});
const PHANTOMS = [rgb, cine, clean, screen, jpg];

type Inst = ReturnType<typeof readInstanceSync>;

/** The original's native pixel data with the detector's regions masked, as the engine masks them. */
function expectedPixels(ph: TextPhantom): Buffer {
  const native = readInstanceSync(nativeInstance(ph.bytes, inflateRawSync), inflateRawSync);
  const a = analyzeInstance(nativeInstance(ph.bytes, inflateRawSync));
  const regions = a.verdict.kind === 'mask' ? a.verdict.regions : [];
  const v = part10View(native.elements);
  const mask = pixelMasker({
    rows: Number(v.str(0x00280010)), columns: Number(v.str(0x00280011)), samplesPerPixel: Number(v.str(0x00280002)), bitsAllocated: Number(v.str(0x00280100)),
    planarConfiguration: Number(v.str(0x00280006) ?? 0), frames: Number(v.str(0x00280008) ?? 1), photometric: v.str(0x00280004)!, littleEndian: true,
  }, { regions, overlayBits: [] });
  return mask(native.pixel!);
}

describe('burned-in text through the gateway, against a real Orthanc', () => {
  let orthanc: OrthancHandle;
  let gw: Gateway;
  let dir: string;
  let cfg: Config;
  const quiet = (): winston.Logger => winston.createLogger({ transports: [new winston.transports.Console({ silent: true })] });
  const auditRecords = (): Record<string, unknown>[] => readFileSync(join(dir, 'audit.log'), 'utf8').trim().split('\n').map((l) => JSON.parse(l) as Record<string, unknown>)
    .filter((x) => x.type === 'request');
  const get = async (path: string, client: string, accept?: string): Promise<{ status: number; type: string; headers: Headers; body: Buffer }> => {
    const r = await fetch(`${gw.url}${path}`, { headers: { authorization: `Bearer ${tok(client)}`, ...(accept ? { accept } : {}) } });
    return { status: r.status, type: r.headers.get('content-type') ?? '', headers: r.headers, body: Buffer.from(await r.arrayBuffer()) };
  };
  const retrieve = async (path: string, client: string, accept = 'multipart/related; type="application/dicom"'): Promise<Inst[]> => {
    const r = await get(path, client, accept);
    assert.equal(r.status, 200, `${path} as ${client}: ${r.body.toString('utf8').slice(0, 300)}`);
    return splitMultipart(r.body, r.type).map((p) => readInstanceSync(p.body, inflateRawSync));
  };
  const instPath = (ph: TextPhantom): string => `/dicom-web/studies/${ph.study}/series/${ph.series}/instances/${ph.sop}`;

  before(async () => {
    orthanc = await startOrthanc();
    await orthanc.upload(PHANTOMS.map((p) => p.bytes));
    dir = mkdtempSync(join(tmpdir(), 'deid-text-'));
    cfg = validateConfig({
      server: { host: '127.0.0.1', port: 0 }, upstream: { url: orthanc.dicomWebUrl }, state: { dir },
      clients: [
        { id: 'vendor', apiKeySha256: sha(tok('vendor')), profile: { options: ['retainUIDs'] }, pixels: { risky: 'detect' } },
        { id: 'strict', apiKeySha256: sha(tok('strict')), profile: { options: ['retainUIDs'] } },
      ],
    }, join(dir, 'g.yaml'));
    gw = await startGateway(cfg, { ...buildParts(cfg), log: quiet() });
  });

  after(async () => {
    await gw?.close();
    await orthanc?.stop();
  });

  test('an RGB ultrasound leaves with every text line masked and every other pixel kept, marked and audited', async () => {
    const [inst] = await retrieve(`/dicom-web/studies/${rgb.study}`, 'vendor');
    assert.ok(inst);
    assert.deepEqual(inst.pixel, expectedPixels(rgb), 'masked exactly as detected');
    const a = analyzeInstance(rgb.bytes);
    assert.equal(a.verdict.kind, 'mask');
    const regions = a.verdict.kind === 'mask' ? a.verdict.regions : [];
    for (const g of rgb.glyphs[0]!) assert.ok(regions.some((r) => g.x >= r.x && g.y >= r.y && g.x + g.width <= r.x + r.width && g.y + g.height <= r.y + r.height), `glyph at ${g.x},${g.y} masked`);
    const v = part10View(inst.elements);
    assert.equal(v.str(0x00280301), 'NO');
    assert.ok(v.items(0x00120064).some((it) => it.str(0x00080100) === '113101'), 'Clean Pixel Data in the method codes');
    const rec = auditRecords().filter((x) => x.client === 'vendor' && x.route === 'retrieve').at(-1)!;
    assert.equal(rec.textRegions, regions.length, 'the audit counts the regions');
    assert.deepEqual(rec.textBoxes, regions.map((r) => [r.x, r.y, r.width, r.height]), 'and lists their boxes');
    // The default policy still withholds the same instance.
    const strict = await get(instPath(rgb), 'strict');
    assert.equal(strict.status, 403);
  });

  test('the instance retrieve, frames, bulk pixel data and metadata agree with the study retrieve', async () => {
    const [one] = await retrieve(instPath(rgb), 'vendor');
    const expected = expectedPixels(rgb);
    assert.deepEqual(one!.pixel, expected);
    const fr = await get(`${instPath(rgb)}/frames/1`, 'vendor');
    assert.equal(fr.status, 200, fr.body.toString().slice(0, 200));
    assert.deepEqual(splitMultipart(fr.body, fr.type)[0]!.body, expected);
    const bulk = await get(`${instPath(rgb)}/bulk/7fe00010`, 'vendor');
    assert.equal(bulk.status, 200);
    assert.deepEqual(splitMultipart(bulk.body, bulk.type)[0]!.body, expected);
    // The rendered image (PNG, one image pixel per pixel) shows the fill over every glyph.
    const png = await get(`${instPath(rgb)}/rendered`, 'vendor', 'image/png');
    assert.equal(png.status, 200, png.body.toString().slice(0, 200));
    const img = decodePng(png.body, { anyFilter: true });
    assert.equal(img.width, 320);
    for (const g of rgb.glyphs[0]!) {
      for (let y = g.y; y < g.y + g.height; y++) for (let x = g.x; x < g.x + g.width; x++) {
        const at: number = (y * img.width + x) * img.channels;
        const e = (y * 320 + x) * 3;
        assert.deepEqual([img.data[at], img.data[at + 1], img.data[at + 2]], [expected[e], expected[e + 1], expected[e + 2]], `rendered pixel ${x},${y} is masked`);
      }
    }
    const md = await get(`${instPath(rgb)}/metadata`, 'vendor', 'application/dicom+json');
    assert.equal(md.status, 200);
    const o = (JSON.parse(md.body.toString()) as Record<string, { Value?: unknown[] }>[])[0]!;
    assert.deepEqual(o['00280301']?.Value, ['NO']);
    assert.ok(JSON.stringify(o['00120064']).includes('113101'));
  });

  test('a palette-colour cine loop stored RLE: every frame read, the union masked in every frame, the rest kept', async () => {
    const [inst] = await retrieve(`/dicom-web/studies/${cine.study}/series/${cine.series}`, 'vendor', 'multipart/related; type="application/dicom"; transfer-syntax=*');
    assert.equal(inst!.transferSyntax.uid, '1.2.840.10008.1.2.1', 'masked pixels leave native');
    assert.deepEqual(inst!.pixel, expectedPixels(cine));
    const a = analyzeInstance(nativeInstance(cine.bytes, inflateRawSync));
    const regions = a.verdict.kind === 'mask' ? a.verdict.regions : [];
    for (const [f, boxes] of cine.glyphs.entries()) {
      for (const g of boxes) assert.ok(regions.some((r) => g.x >= r.x && g.y >= r.y && g.x + g.width <= r.x + r.width && g.y + g.height <= r.y + r.height), `frame ${f}: glyph at ${g.x},${g.y} masked`);
    }
  });

  test('a JPEG Baseline ultrasound is asked for uncompressed: the PACS decodes it, every glyph is masked, the header says lossy', async () => {
    const [inst] = await retrieve(instPath(jpg), 'vendor', 'multipart/related; type="application/dicom"; transfer-syntax=*');
    assert.equal(inst!.transferSyntax.uid, '1.2.840.10008.1.2.1');
    const v = part10View(inst!.elements);
    assert.equal(v.str(0x00280301), 'NO');
    assert.equal(v.str(0x00282110), '01');
    const px = inst!.pixel!;
    const planar = Number(v.str(0x00280006) ?? 0) === 1;
    const at = (x: number, y: number, c: number): number => px[planar ? c * 240 * 320 + y * 320 + x : (y * 320 + x) * 3 + c]!;
    for (const g of jpg.glyphs[0]!) {
      const f = [0, 1, 2].map((c) => at(g.x, g.y, c));
      let same = 0;
      for (let y = g.y; y < g.y + g.height; y++) for (let x = g.x; x < g.x + g.width; x++) if ([0, 1, 2].every((c) => at(x, y, c) === f[c])) same++;
      assert.equal(same, g.width * g.height, `glyph at ${g.x},${g.y} is one filled box`);
    }
  });

  test('an ultrasound with no text leaves bit-exact; a screen of text is withheld with its reason', async () => {
    const [inst] = await retrieve(instPath(clean), 'vendor');
    assert.deepEqual(inst!.pixel, readInstanceSync(clean.bytes, inflateRawSync).pixel);
    assert.equal(part10View(inst!.elements).str(0x00280301), 'NO');
    const s = await get(instPath(screen), 'vendor');
    assert.equal(s.status, 403);
    assert.match(s.body.toString(), /mostly text/);
    const rec = auditRecords().filter((x) => x.client === 'vendor' && x.status === 403).at(-1)!;
    assert.deepEqual(rec.withheldBy, { 'pixels-withheld:mostly-text': 1 });
  });

  test('decisions are made once and stored: a second retrieve and a restarted gateway analyse nothing again', async () => {
    const before = gw.textStats.analyses;
    await retrieve(`/dicom-web/studies/${rgb.study}`, 'vendor');
    assert.equal(gw.textStats.analyses, before, 'the second retrieve reuses the decision');
    assert.ok(existsSync(join(dir, 'text.sqlite')));
    await gw.close();
    gw = await startGateway(cfg, { ...buildParts(cfg), log: quiet() });
    const [inst] = await retrieve(instPath(rgb), 'vendor');
    assert.deepEqual(inst!.pixel, expectedPixels(rgb));
    assert.equal(gw.textStats.analyses, 0, 'the restarted gateway found the decision stored');
  });

  const shared = existsSync(SHARED) && existsSync(TEXT_CHECK);
  test('cross-check: the real images of ../shared/corpus/burned-in pass text-check through the gateway; the screen is withheld', { skip: !shared && 'no ../shared beside the checkout' }, async () => {
    const out = join(dir, 'received');
    mkdirSync(out, { recursive: true });
    for (const name of readdirSync(SHARED).sort()) {
      const bytes = readFileSync(join(SHARED, name));
      await orthanc.upload([bytes]);
      const h = part10View(readInstanceSync(bytes, inflateRawSync).elements);
      const path = `/dicom-web/studies/${h.str(0x0020000d)}/series/${h.str(0x0020000e)}/instances/${h.str(0x00080018)}`;
      const r = await get(path, 'vendor');
      if (name.startsWith('screen')) {
        assert.equal(r.status, 403, `${name} is withheld`);
        continue;
      }
      assert.equal(r.status, 200, `${name}: ${r.body.toString().slice(0, 200)}`);
      const file = join(out, name);
      writeFileSync(file, splitMultipart(r.body, r.type)[0]!.body);
      const c = spawnSync('/usr/bin/python3', [TEXT_CHECK, join(SHARED, name), file], { encoding: 'utf8' });
      assert.equal(c.status, 0, `${name}: ${c.stdout}${c.stderr}`);
    }
  });
});
