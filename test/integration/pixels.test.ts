/**
 * Issue 6 against a real Orthanc: instances with a known burned-in band (multi-frame RGB,
 * planar RGB, RLE-compressed), an instance of a device no rule covers, and a CT with an overlay
 * embedded in unused pixel bits. Withheld by default; masked exactly under a rule (the band
 * gone, every other byte unchanged) in retrieves, frames, bulk data and rendered images;
 * compressed inputs negotiated to native or withheld; explicitly allowed and audited.
 */
import { describe, test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { mkdtempSync, readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { inflateRawSync } from 'node:zlib';
import jpeg from 'jpeg-js';
import winston from 'winston';
import { validateConfig } from '../../src/config/schema.js';
import { readInstanceSync } from '../../src/dicom/part10.js';
import { buildParts, startGateway, type Gateway } from '../../src/main.js';
import { encodePart10, encapsulatedPixelData, type El } from '../helpers/dicom-builder.js';
import { startOrthanc, type OrthancHandle } from '../helpers/orthanc.js';
import { decodePng, splitMultipart } from '../helpers/multipart.js';

const sha = (t: string): string => createHash('sha256').update(t).digest('hex');
const tok = (id: string): string => `${id}-token-0123456789`;
const ROOT = '1.2.826.0.1.3680043.9.7433.6.';
const STUDY = `${ROOT}1`;
const ROWS = 32, COLS = 48;
const BAND = { x: 0, y: 0, width: 24, height: 4 };
const BAND_RGB = [196, 78, 167];

interface Fixture { sop: string; series: string; file: Buffer; pixels: Buffer; frames: number; planar: number }

const inBand = (x: number, y: number): boolean => x >= BAND.x && x < BAND.x + BAND.width && y >= BAND.y && y < BAND.y + BAND.height;

/**
 * What the banded fixtures share: their SOP, the device a mask rule covers, the planted patient,
 * the study and series, and the image's size and bits; each adds its own elements (sorted here).
 */
function bandedFile(k: number, o: { sopClass: string; modality: string; model?: string; samples: number; photometric: string; bits: number; own: El[]; ts?: Parameters<typeof encodePart10>[1] }): { series: string; sop: string; file: Buffer } {
  const series = `${STUDY}.${k}`;
  const sop = `${series}.1`;
  const els: El[] = [
    { tag: 0x00080016, vr: 'UI', value: o.sopClass },
    { tag: 0x00080018, vr: 'UI', value: sop },
    { tag: 0x00080060, vr: 'CS', value: o.modality },
    { tag: 0x00080070, vr: 'LO', value: 'ACME' },
    { tag: 0x00081090, vr: 'LO', value: o.model ?? 'SONO-1' },
    { tag: 0x00100010, vr: 'PN', value: 'BANDED^PATIENT' },
    { tag: 0x00100020, vr: 'LO', value: 'MRN-BAND-1' },
    { tag: 0x0020000d, vr: 'UI', value: STUDY },
    { tag: 0x0020000e, vr: 'UI', value: series },
    { tag: 0x00200011, vr: 'IS', value: String(k) },
    { tag: 0x00280002, vr: 'US', value: [o.samples] },
    { tag: 0x00280004, vr: 'CS', value: o.photometric },
    { tag: 0x00280010, vr: 'US', value: [ROWS] },
    { tag: 0x00280011, vr: 'US', value: [COLS] },
    { tag: 0x00280100, vr: 'US', value: [o.bits] },
    { tag: 0x00280101, vr: 'US', value: [o.bits] },
    { tag: 0x00280102, vr: 'US', value: [o.bits - 1] },
    { tag: 0x00280103, vr: 'US', value: [0] },
    ...o.own,
  ].sort((a, b) => a.tag - b.tag);
  return { series, sop, file: encodePart10(els, o.ts ?? { ts: 'explicitLE' }) };
}

/** RGB pixels: a gradient, with the burned-in band in every frame. */
function rgbPixels(frames: number, planar: number): Buffer {
  const n = ROWS * COLS;
  const out = Buffer.alloc(n * 3 * frames);
  for (let f = 0; f < frames; f++) for (let y = 0; y < ROWS; y++) for (let x = 0; x < COLS; x++) {
    const rgb = inBand(x, y) ? BAND_RGB : [(x * 5 + f * 7) % 256 || 1, (y * 7 + 3) % 256 || 1, (x + y + f * 11) % 256 || 1];
    for (let s = 0; s < 3; s++) out[f * n * 3 + (planar ? s * n + y * COLS + x : (y * COLS + x) * 3 + s)] = rgb[s]!;
  }
  return out;
}

/** The expected output: the band's samples 0, everything else as it was. */
function masked(pixels: Buffer, frames: number, planar: number): Buffer {
  const out = Buffer.from(pixels);
  const n = ROWS * COLS;
  for (let f = 0; f < frames; f++) for (let y = BAND.y; y < BAND.y + BAND.height; y++) for (let x = BAND.x; x < BAND.x + BAND.width; x++) {
    for (let s = 0; s < 3; s++) out[f * n * 3 + (planar ? s * n + y * COLS + x : (y * COLS + x) * 3 + s)] = 0;
  }
  return out;
}

/** PS3.5 Annex G RLE of one 8-bit RGB frame: three byte planes, literal runs only. */
function rle(frame: Buffer): Buffer {
  const n = ROWS * COLS;
  const segs = [0, 1, 2].map((s) => {
    const plane = Buffer.alloc(n);
    for (let i = 0; i < n; i++) plane[i] = frame[i * 3 + s]!;
    const parts: Buffer[] = [];
    for (let at = 0; at < n; at += 128) { const len = Math.min(128, n - at); parts.push(Buffer.from([len - 1]), plane.subarray(at, at + len)); }
    const seg = Buffer.concat(parts);
    return seg.length % 2 ? Buffer.concat([seg, Buffer.from([0])]) : seg;
  });
  const header = Buffer.alloc(64);
  header.writeUInt32LE(3, 0);
  let off = 64;
  segs.forEach((seg, i) => { header.writeUInt32LE(off, 4 + i * 4); off += seg.length; });
  return Buffer.concat([header, ...segs]);
}

function usInstance(k: number, opts: { frames: number; planar: number; model?: string; rle?: boolean }): Fixture {
  const pixels = rgbPixels(opts.frames, opts.planar);
  const { series, sop, file } = bandedFile(k, {
    sopClass: opts.frames > 1 ? '1.2.840.10008.5.1.4.1.1.3.1' : '1.2.840.10008.5.1.4.1.1.6.1', modality: 'US', ...(opts.model ? { model: opts.model } : {}),
    samples: 3, photometric: 'RGB', bits: 8,
    own: [
      { tag: 0x00080005, vr: 'CS', value: 'ISO_IR 100' },
      { tag: 0x00080020, vr: 'DA', value: '20240102' },
      { tag: 0x00280006, vr: 'US', value: [opts.planar] },
      ...(opts.frames > 1 ? [{ tag: 0x00280008, vr: 'IS', value: String(opts.frames) } as El] : []),
      { tag: 0x00280301, vr: 'CS', value: 'YES' },
      opts.rle ? encapsulatedPixelData([rle(pixels)]) : { tag: 0x7fe00010, vr: 'OB', value: pixels },
    ],
    ts: { ts: 'explicitLE', ...(opts.rle ? { meta: { transferSyntaxUid: '1.2.840.10008.1.2.5' } } : {}) },
  });
  return { sop, series, file, pixels, frames: opts.frames, planar: opts.planar };
}

/** A CT whose overlay lives in bit 12 of 16-bit cells (BitsStored 12): no Overlay Data element. */
function ctWithEmbeddedOverlay(): Fixture & { overlayBit: number } {
  const series = `${STUDY}.9`;
  const sop = `${series}.1`;
  const pixels = Buffer.alloc(ROWS * COLS * 2);
  for (let i = 0; i < ROWS * COLS; i++) pixels.writeUInt16LE((i * 13) % 4096 | (i % 7 === 0 ? 1 << 12 : 0), i * 2);
  const els: El[] = [
    { tag: 0x00080016, vr: 'UI', value: '1.2.840.10008.5.1.4.1.1.2' },
    { tag: 0x00080018, vr: 'UI', value: sop },
    { tag: 0x00080060, vr: 'CS', value: 'CT' },
    { tag: 0x00100010, vr: 'PN', value: 'BANDED^PATIENT' },
    { tag: 0x00100020, vr: 'LO', value: 'MRN-BAND-1' },
    { tag: 0x0020000d, vr: 'UI', value: STUDY },
    { tag: 0x0020000e, vr: 'UI', value: series },
    { tag: 0x00280002, vr: 'US', value: [1] },
    { tag: 0x00280004, vr: 'CS', value: 'MONOCHROME2' },
    { tag: 0x00280010, vr: 'US', value: [ROWS] },
    { tag: 0x00280011, vr: 'US', value: [COLS] },
    { tag: 0x00280100, vr: 'US', value: [16] },
    { tag: 0x00280101, vr: 'US', value: [12] },
    { tag: 0x00280102, vr: 'US', value: [11] },
    { tag: 0x00280103, vr: 'US', value: [0] },
    { tag: 0x00280301, vr: 'CS', value: 'NO' },
    { tag: 0x60000010, vr: 'US', value: [ROWS] },
    { tag: 0x60000011, vr: 'US', value: [COLS] },
    { tag: 0x60000040, vr: 'CS', value: 'G' },
    { tag: 0x60000050, vr: 'SS', value: [1, 1] },
    { tag: 0x60000100, vr: 'US', value: [16] },
    { tag: 0x60000102, vr: 'US', value: [12] },
    { tag: 0x7fe00010, vr: 'OW', value: pixels },
  ];
  return { sop, series, file: encodePart10(els, { ts: 'explicitLE' }), pixels, frames: 1, planar: 0, overlayBit: 12 };
}

/** A 16-bit two-frame MONOCHROME2 screen (modality OT) of the covered device: the band is 0x0FFF with high bytes set elsewhere. */
function mono16Instance(k: number): Fixture {
  const frames = 2;
  const pixels = Buffer.alloc(ROWS * COLS * 2 * frames);
  for (let f = 0; f < frames; f++) for (let y = 0; y < ROWS; y++) for (let x = 0; x < COLS; x++) {
    pixels.writeUInt16LE(inBand(x, y) ? 0x0fff : 0x0100 + ((x * 37 + y * 11 + f * 101) % 3000), ((f * ROWS + y) * COLS + x) * 2);
  }
  const { series, sop, file } = bandedFile(k, {
    sopClass: '1.2.840.10008.5.1.4.1.1.7.3', modality: 'OT', samples: 1, photometric: 'MONOCHROME2', bits: 16,
    own: [
      { tag: 0x00280008, vr: 'IS', value: String(frames) },
      { tag: 0x7fe00010, vr: 'OW', value: pixels },
    ],
  });
  return { sop, series, file, pixels, frames, planar: 0 };
}

/** The expected 16-bit output: the band's cells 0 in every frame, every other byte as it was. */
function masked16(pixels: Buffer, frames: number): Buffer {
  const out = Buffer.from(pixels);
  for (let f = 0; f < frames; f++) for (let y = BAND.y; y < BAND.y + BAND.height; y++) for (let x = BAND.x; x < BAND.x + BAND.width; x++) {
    out.writeUInt16LE(0, ((f * ROWS + y) * COLS + x) * 2);
  }
  return out;
}

describe('pixel safety against a real Orthanc', () => {
  let orthanc: OrthancHandle;
  let gw: Gateway;
  let dir: string;
  const multi = usInstance(1, { frames: 3, planar: 0 });
  const planar = usInstance(2, { frames: 1, planar: 1 });
  const uncovered = usInstance(3, { frames: 1, planar: 0, model: 'OTHER-9' });
  const compressed = usInstance(4, { frames: 1, planar: 0, rle: true });
  const ct = ctWithEmbeddedOverlay();
  const mono16 = mono16Instance(5);
  const ALL = [multi, planar, uncovered, compressed, ct, mono16];
  const auditRecords = (): Record<string, unknown>[] => readFileSync(join(dir, 'audit.log'), 'utf8').trim().split('\n').map((l) => JSON.parse(l) as Record<string, unknown>)
    .filter((x) => x.type === 'request');

  const get = async (path: string, client: string, accept?: string): Promise<{ status: number; type: string; warning: string | null; body: Buffer }> => {
    const r = await fetch(`${gw.url}${path}`, { headers: { authorization: `Bearer ${tok(client)}`, ...(accept ? { accept } : {}) } });
    return { status: r.status, type: r.headers.get('content-type') ?? '', warning: r.headers.get('warning'), body: Buffer.from(await r.arrayBuffer()) };
  };
  const inst = (f: Fixture): string => `/dicom-web/studies/${STUDY}/series/${f.series}/instances/${f.sop}`;
  const retrieved = async (path: string, client: string, accept = 'multipart/related; type="application/dicom"') => {
    const r = await get(path, client, accept);
    assert.equal(r.status, 200, `${path} as ${client}: ${r.body.toString('utf8').slice(0, 200)}`);
    return { ...r, instances: splitMultipart(r.body, r.type).map((p) => readInstanceSync(p.body, inflateRawSync)) };
  };
  const sopOf = (i: ReturnType<typeof readInstanceSync>): string => i.elements.find((e) => e.tag === 0x00080018)!.value!.toString('latin1').replace(/\0/g, '');
  const str = (i: ReturnType<typeof readInstanceSync>, tag: number): string | undefined => i.elements.find((e) => e.tag === tag)?.value?.toString('latin1').trim();

  before(async () => {
    orthanc = await startOrthanc();
    await orthanc.upload(ALL.map((f) => f.file));
    dir = mkdtempSync(join(tmpdir(), 'deid-pixels-'));
    const rule = { match: { manufacturer: 'ACME', model: 'SONO-1', rows: ROWS, columns: COLS }, regions: [BAND] };
    const cfg = validateConfig({
      server: { host: '127.0.0.1', port: 0 }, upstream: { url: orthanc.dicomWebUrl }, state: { dir },
      clients: [
        { id: 'withholder', apiKeySha256: sha(tok('withholder')), profile: { options: ['retainUIDs'] } },
        { id: 'masker', apiKeySha256: sha(tok('masker')), profile: { options: ['retainUIDs'] }, pixels: { risky: 'mask', masks: [rule] } },
        { id: 'allower', apiKeySha256: sha(tok('allower')), profile: { options: ['retainUIDs'] }, pixels: { risky: 'allow' } },
      ],
    }, join(dir, 'g.yaml'));
    gw = await startGateway(cfg, { ...buildParts(cfg), log: winston.createLogger({ transports: [new winston.transports.Console({ silent: true })] }) });
  });

  after(async () => {
    await gw?.close();
    await orthanc?.stop();
  });

  test('withheld by default: left out of the study (Warning), and 403 on the instance, its frames, bulk data and rendering', async () => {
    const r = await retrieved(`/dicom-web/studies/${STUDY}`, 'withholder');
    assert.deepEqual(r.instances.map(sopOf), [ct.sop]);
    assert.match(r.warning ?? '', /299 deid-gateway "5 instance\(s\) withheld by the pixel policy"/);
    const seriesOnly = `/dicom-web/studies/${STUDY}/series/${multi.series}`;
    const denied = [inst(multi), `${inst(multi)}/frames/1`, `${inst(multi)}/bulk/7fe00010`, `${inst(multi)}/rendered`, `${inst(multi)}/thumbnail`, seriesOnly];
    for (const path of denied) {
      const x = await get(path, 'withholder');
      assert.equal(x.status, 403, path);
      assert.equal((JSON.parse(x.body.toString()) as { code: string }).code, 'PIXELS_WITHHELD');
    }
    // Every denial is audited with the risk (Burned In Annotation YES here), never with a value.
    const recs = auditRecords().filter((x) => x.client === 'withholder' && x.status === 403);
    assert.equal(recs.length, denied.length, 'one record per denial');
    for (const x of recs) assert.equal(x.reason, 'pixels-withheld:burned-in-annotation', `${String(x.route)}: the audit reason`);
    const mono = await get(`${inst(mono16)}/frames/1`, 'withholder');
    assert.equal(mono.status, 403);
    assert.equal(auditRecords().at(-1)!.reason, 'pixels-withheld:modality-ot', 'the risk is named: modality OT without Burned In Annotation');
    // A rendered study: the instances the policy releases, one image each; the others left out.
    const rs = await get(`/dicom-web/studies/${STUDY}/rendered`, 'withholder');
    assert.equal(rs.status, 200);
    assert.match(rs.warning ?? '', /299 deid-gateway "5 instance\(s\) withheld by the pixel policy"/);
    assert.equal(splitMultipart(rs.body, rs.type).length, 1, 'only the CT is rendered');
    const study = auditRecords().find((x) => x.client === 'withholder' && x.status === 200 && x.withheld === 5);
    assert.ok(study, 'the study retrieve counts the 5 instances it left out');
    const by = (study as { withheldBy?: Record<string, number> }).withheldBy ?? {};
    assert.equal(Object.values(by).reduce((a, b) => a + b, 0), 5, `each withheld instance has its reason (${JSON.stringify(by)})`);
    assert.ok(Object.keys(by).every((k) => /^pixels-withheld:[a-z0-9-]+$/.test(k)) && (by['pixels-withheld:burned-in-annotation'] ?? 0) > 0, `reasons are risks, never values (${JSON.stringify(by)})`);
  });

  test('metadata says what a retrieve releases: masked instances Burned In Annotation NO and 113101; withheld ones as the PACS states', async () => {
    type Obj = Record<string, { Value?: unknown[] }>;
    const methodCodes = (o: Obj): unknown[] => ((o['00120064']?.Value ?? []) as Obj[]).map((i) => i['00080100']?.Value?.[0]);
    const meta = async (path: string, client: string): Promise<Obj[]> => {
      const r = await get(path, client);
      assert.equal(r.status, 200, `${path}: ${r.body.toString().slice(0, 200)}`);
      return JSON.parse(r.body.toString()) as Obj[];
    };
    const [m] = await meta(`${inst(multi)}/metadata`, 'masker');
    assert.deepEqual(m!['00280301']?.Value, ['NO'], 'Burned In Annotation NO, as in the retrieve');
    assert.ok(methodCodes(m!).includes('113101'), `113101 in the method codes: ${JSON.stringify(methodCodes(m!))}`);
    const retrievedOne = (await retrieved(inst(multi), 'masker')).instances[0]!;
    assert.equal(str(retrievedOne, 0x00280301), 'NO');
    // The whole study: covered instances NO + 113101; the uncovered one and the CT as the PACS says.
    const all = await meta(`/dicom-web/studies/${STUDY}/metadata`, 'masker');
    const bySop = new Map(all.map((o) => [o['00080018']!.Value![0] as string, o]));
    for (const f of [multi, planar, compressed, mono16]) {
      assert.deepEqual(bySop.get(f.sop)?.['00280301']?.Value, ['NO'], `${f.sop}: NO`);
      assert.ok(methodCodes(bySop.get(f.sop)!).includes('113101'), `${f.sop}: 113101`);
    }
    assert.deepEqual(bySop.get(uncovered.sop)?.['00280301']?.Value, ['YES'], 'withheld (no rule covers it): as the PACS states');
    assert.ok(!methodCodes(bySop.get(uncovered.sop)!).includes('113101'), 'no Clean Pixel Data for the withheld one');
    assert.ok(!methodCodes(bySop.get(ct.sop)!).includes('113101'), 'no Clean Pixel Data for an instance that needs no mask');
    // Withheld for another client: its header is served, and says nothing was cleaned.
    const [w] = await meta(`${inst(multi)}/metadata`, 'withholder');
    assert.deepEqual(w!['00280301']?.Value, ['YES']);
    assert.ok(!methodCodes(w!).includes('113101'), 'no 113101 for a withheld instance');
    // QIDO rows that include Burned In Annotation agree.
    const rows = JSON.parse((await get(`/dicom-web/studies/${STUDY}/series/${multi.series}/instances?includefield=00280301`, 'masker')).body.toString()) as Obj[];
    assert.deepEqual(rows[0]?.['00280301']?.Value, ['NO'], 'the QIDO row of the masked instance');
    const wrows = JSON.parse((await get(`/dicom-web/studies/${STUDY}/series/${multi.series}/instances?includefield=00280301`, 'withholder')).body.toString()) as Obj[];
    assert.deepEqual(wrows[0]?.['00280301']?.Value, ['YES'], 'the QIDO row of the withheld instance');
  });

  test('16-bit MONOCHROME2, two frames: masked exactly in the retrieve and the frames, every other byte unchanged', async () => {
    const r = await retrieved(inst(mono16), 'masker');
    const i = r.instances[0]!;
    const want = masked16(mono16.pixels, mono16.frames);
    assert.ok(!want.equals(mono16.pixels), 'the band is in the input');
    assert.ok(i.pixel!.equals(want), 'exactly the band blanked in both frames, high bytes elsewhere untouched');
    assert.equal(str(i, 0x00280301), 'NO');
    const f2 = await get(`${inst(mono16)}/frames/2`, 'masker');
    assert.equal(f2.status, 200);
    const per = ROWS * COLS * 2;
    assert.ok(splitMultipart(f2.body, f2.type)[0]!.body.equals(want.subarray(per, 2 * per)), 'frame 2 masked');
  });

  test('masked exactly under a rule: the band gone in every frame, every other byte unchanged; Burned In Annotation NO, 113101', async () => {
    const r = await retrieved(`/dicom-web/studies/${STUDY}`, 'masker');
    const bySop = new Map(r.instances.map((i) => [sopOf(i), i]));
    assert.ok(!bySop.has(uncovered.sop), 'a device no rule covers is withheld');
    assert.ok(bySop.has(mono16.sop), 'the 16-bit instance is served masked');
    assert.match(r.warning ?? '', /"1 instance\(s\) withheld/);
    for (const f of [multi, planar, compressed]) {
      const i = bySop.get(f.sop);
      assert.ok(i, `${f.sop} is served masked`);
      assert.ok(i.pixel!.equals(masked(f.pixels, f.frames, f.planar)), `${f.sop}: exactly the band blanked`);
      assert.equal(str(i, 0x00280301), 'NO');
      assert.ok(i.elements.some((e) => e.tag === 0x00120064), 'a method code sequence');
    }
    assert.equal(bySop.get(compressed.sop)!.transferSyntax.uid, '1.2.840.10008.1.2.1', 'the RLE instance was asked for natively');
    const raw = Buffer.concat(splitMultipart(r.body, r.type).map((p) => p.body)).toString('latin1');
    assert.ok(raw.includes('113101'), 'Clean Pixel Data is recorded');
    assert.ok(!raw.includes('BANDED'), 'the name is gone');
  });

  test('frames and bulk pixel data obey the same decision and the same mask', async () => {
    const frame2 = await get(`${inst(multi)}/frames/2`, 'masker');
    assert.equal(frame2.status, 200);
    const per = ROWS * COLS * 3;
    assert.ok(splitMultipart(frame2.body, frame2.type)[0]!.body.equals(masked(multi.pixels, 3, 0).subarray(per, 2 * per)), 'frame 2 is masked');
    const bulk = await get(`${inst(planar)}/bulk/7fe00010`, 'masker');
    assert.equal(bulk.status, 200);
    assert.ok(splitMultipart(bulk.body, bulk.type)[0]!.body.equals(masked(planar.pixels, 1, 1)), 'bulk pixel data is masked (planar)');
    assert.equal((await get(`${inst(uncovered)}/frames/1`, 'masker')).status, 403);
    // An instance stored compressed: its bulk pixel data and frames are cut from the engine's
    // native, masked output, never taken from the PACS's compressed bytes.
    const rleBulk = await get(`${inst(compressed)}/bulk/7fe00010`, 'masker');
    assert.equal(rleBulk.status, 200);
    assert.ok(splitMultipart(rleBulk.body, rleBulk.type)[0]!.body.equals(masked(compressed.pixels, 1, 0)), 'bulk pixel data of the RLE instance is native and masked');
    const rleFrame = await get(`${inst(compressed)}/frames/1`, 'masker');
    assert.ok(splitMultipart(rleFrame.body, rleFrame.type)[0]!.body.equals(masked(compressed.pixels, 1, 0)), 'its frame too');
    const two = await get(`${inst(multi)}/frames/3,1`, 'masker');
    const got = splitMultipart(two.body, two.type).map((x) => x.body);
    const all = masked(multi.pixels, 3, 0);
    assert.ok(got.length === 2 && got[0]!.equals(all.subarray(2 * per, 3 * per)) && got[1]!.equals(all.subarray(0, per)), 'frames in the order asked');
    assert.equal((await get(`${inst(multi)}/frames/4`, 'masker')).status, 404);
  });

  test('rendered images are drawn from the masked pixels: the band is black, the rest is the image', async () => {
    for (const f of [multi, planar]) {
      const r = await get(`${inst(f)}/rendered`, 'masker', 'image/png');
      assert.equal(r.status, 200);
      const png = decodePng(r.body);
      assert.deepEqual([png.width, png.height], [COLS, ROWS]);
      const want = masked(f.pixels, 1, f.planar);
      const n = ROWS * COLS;
      for (let p = 0; p < n; p++) {
        for (let s = 0; s < 3; s++) {
          const v = want[f.planar ? s * n + p : p * 3 + s]!;
          assert.equal(png.data[p * 3 + s], v, `pixel ${p} sample ${s}`);
        }
      }
    }
    // JPEG (lossy): decoded, the band is dark and uniform, the rest close to the masked original.
    for (const path of [`${inst(multi)}/frames/3/thumbnail`, `${inst(multi)}/frames/3/rendered?quality=95`]) {
      const jpg = await get(path, 'masker');
      assert.equal(jpg.status, 200);
      assert.equal(jpg.type, 'image/jpeg');
      const img = jpeg.decode(jpg.body, { useTArray: true, formatAsRGBA: true });
      assert.deepEqual([img.width, img.height], [COLS, ROWS], path);
      const want = masked(multi.pixels, 3, 0).subarray(2 * ROWS * COLS * 3);
      const band: number[] = [];
      let diff = 0, rest = 0;
      for (let y = 0; y < ROWS; y++) for (let x = 0; x < COLS; x++) {
        const p = y * COLS + x;
        for (let s = 0; s < 3; s++) {
          const v = img.data[p * 4 + s]!;
          if (inBand(x, y)) band.push(v);
          else { diff += Math.abs(v - want[p * 3 + s]!); rest++; }
        }
      }
      const mean = band.reduce((a, b) => a + b, 0) / band.length;
      assert.ok(mean < 12, `${path}: the band is dark (mean ${mean.toFixed(1)}; it was ${BAND_RGB.join(',')})`);
      assert.ok(Math.max(...band) - Math.min(...band) < 60, `${path}: the band is uniform (spread ${Math.max(...band) - Math.min(...band)})`);
      assert.ok(diff / rest < 8, `${path}: the rest is close to the original (mean difference ${(diff / rest).toFixed(2)})`);
    }
  });

  test('compressed inputs: asked for natively when the client accepts any syntax, withheld when it insists on a compressed one', async () => {
    const any = await retrieved(inst(compressed), 'masker', 'multipart/related; type="application/dicom"; transfer-syntax=*');
    assert.ok(any.instances[0]!.pixel!.equals(masked(compressed.pixels, 1, 0)));
    const rleOnly = await get(inst(compressed), 'masker', 'multipart/related; type="application/dicom"; transfer-syntax=1.2.840.10008.1.2.5');
    assert.equal(rleOnly.status, 403);
    assert.equal((JSON.parse(rleOnly.body.toString()) as { code: string }).code, 'PIXELS_WITHHELD');
  });

  test('an overlay embedded in unused pixel bits is cleared with the overlay; the image bits are untouched', async () => {
    const r = await retrieved(inst(ct), 'withholder');
    const out = r.instances[0]!;
    assert.ok(!out.elements.some((e) => e.tag >>> 16 === 0x6000), 'the overlay group is removed');
    for (let i = 0; i < ROWS * COLS; i++) {
      const a = ct.pixels.readUInt16LE(i * 2);
      assert.equal(out.pixel!.readUInt16LE(i * 2), a & ~(1 << ct.overlayBit), `cell ${i}`);
    }
    const frame = await get(`${inst(ct)}/frames/1`, 'withholder');
    assert.equal(frame.status, 200);
    const fb = splitMultipart(frame.body, frame.type)[0]!.body;
    assert.ok([...Array(ROWS * COLS).keys()].every((i) => (fb.readUInt16LE(i * 2) & (1 << 12)) === 0), 'the frames endpoint clears it too');
  });

  test('explicitly allowed risky pixels pass unchanged, and the audit trail says so', async () => {
    const r = await retrieved(inst(multi), 'allower');
    assert.ok(r.instances[0]!.pixel!.equals(multi.pixels), 'allowed: unchanged');
    assert.equal(str(r.instances[0]!, 0x00280301), 'YES');
    const recs = auditRecords();
    assert.ok(recs.some((x) => x.type === 'request' && x.client === 'allower' && (x.riskyAllowed as number) > 0), 'riskyAllowed is audited');
    assert.ok(recs.some((x) => x.type === 'request' && x.client === 'masker' && (x.masked as number) > 0), 'masked instances are audited');
  });
});
