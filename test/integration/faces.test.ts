/**
 * Faces (issue 11) against a real Orthanc: head phantoms the tests generate (a sagittal MR, an
 * enhanced multi-frame MR, an axial CT stored RLE-compressed, a brain-only CT) retrieved
 * through the gateway: the face gone and the brain bit-exact in study, series and instance
 * retrieves; frames, bulk pixel data and rendered images agree with the retrieve; metadata
 * says Recognizable Visual Features NO with 113102; a head with no face in view leaves
 * bit-exact; compressed heads are transcoded, or withheld when the client insists on the
 * compressed syntax; faces: withhold and faces: allow, audited. Cross-check: the two real heads
 * of ../shared/corpus/heads pass ../shared/tools/face-check through the gateway.
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
import { validateConfig } from '../../src/config/schema.js';
import { readInstanceSync } from '../../src/dicom/part10.js';
import { buildParts, startGateway, type Gateway } from '../../src/main.js';
import { part10View } from '../../src/pixels/views.js';
import type { Upstream } from '../../src/upstream/client.js';
import { checkDefaced, makeHeadPhantom, type Phantom } from '../fixtures/head-phantom.js';
import { startOrthanc, type OrthancHandle } from '../helpers/orthanc.js';
import { decodePng, splitMultipart } from '../helpers/multipart.js';

const sha = (t: string): string => createHash('sha256').update(t).digest('hex');
const tok = (id: string): string => `${id}-token-0123456789`;
const ROOT = '1.2.826.0.1.3680043.9.7433.11.900';
const SHARED_HEADS = new URL('../../../shared/corpus/heads/', import.meta.url).pathname;
const FACE_CHECK = new URL('../../../shared/tools/face-check', import.meta.url).pathname;

const small = { rows: 100, columns: 100, pixelMm: 2.5 } as const;
const mr = makeHeadPhantom({ modality: 'MR', orientation: 'sagittal', ...small, slices: 64, sliceMm: 2.4, uidRoot: `${ROOT}.1`, seriesNumber: 1 });
const multi = makeHeadPhantom({ modality: 'MR', orientation: 'coronal', rows: 100, columns: 70, pixelMm: 2.5, slices: 90, sliceMm: 2.5, multiFrame: true, uidRoot: `${ROOT}.2`, seriesNumber: 2 });
const rleCt = makeHeadPhantom({ modality: 'CT', orientation: 'axial', rows: 90, columns: 80, pixelMm: 2.5, slices: 80, sliceMm: 3, rle: true, tiltDeg: 10, uidRoot: `${ROOT}.3`, seriesNumber: 3 });
const brainOnly = makeHeadPhantom({ modality: 'CT', orientation: 'axial', rows: 90, columns: 80, pixelMm: 2.5, slices: 30, sliceMm: 3, fromZ: 25, uidRoot: `${ROOT}.4`, study: mr.study, seriesNumber: 4 });
const renderOnly = makeHeadPhantom({ modality: 'MR', orientation: 'axial', rows: 80, columns: 80, pixelMm: 3.2, slices: 80, sliceMm: 3, uidRoot: `${ROOT}.5`, seriesNumber: 5 });
const early = makeHeadPhantom({ modality: 'MR', orientation: 'sagittal', ...small, slices: 64, sliceMm: 2.4, uidRoot: `${ROOT}.6`, seriesNumber: 6 });
const PHANTOMS = [mr, multi, rleCt, brainOnly, renderOnly, early];

type Inst = ReturnType<typeof readInstanceSync>;

const frames16 = (inst: Inst, rows: number, columns: number): Uint16Array[] => {
  const n = rows * columns;
  const px = inst.pixel!;
  const out: Uint16Array[] = [];
  for (let k = 0; k * n * 2 < px.length - 1; k++) {
    const a = new Uint16Array(n);
    for (let i = 0; i < n; i++) a[i] = px.readUInt16LE((k * n + i) * 2);
    out.push(a);
  }
  return out;
};
const sopOf = (i: Inst): string => part10View(i.elements).str(0x00080018)!;
const instanceNumber = (i: Inst): number => Number(part10View(i.elements).str(0x00200013) ?? 0);

describe('faces through the gateway, against a real Orthanc', () => {
  let orthanc: OrthancHandle;
  let gw: Gateway;
  let dir: string;
  const upstreamAsked: { path: string; analysesDone: number }[] = [];
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
  const seriesPath = (ph: Phantom): string => `/dicom-web/studies/${ph.study}/series/${ph.series}`;
  /** The delivered frames of a series, in the phantom's slice order. */
  const deliveredFrames = (ph: Phantom, insts: Inst[]): Uint16Array[] =>
    [...insts].sort((a, b) => instanceNumber(a) - instanceNumber(b)).flatMap((i) => frames16(i, ph.options.rows, ph.options.columns));

  before(async () => {
    orthanc = await startOrthanc();
    await orthanc.upload(PHANTOMS.flatMap((p) => p.files.map((f) => f.bytes)));
    dir = mkdtempSync(join(tmpdir(), 'deid-faces-'));
    const cfg = validateConfig({
      server: { host: '127.0.0.1', port: 0 }, upstream: { url: orthanc.dicomWebUrl }, state: { dir },
      clients: [
        { id: 'vendor', apiKeySha256: sha(tok('vendor')), profile: { options: ['retainUIDs'] } },
        { id: 'strict', apiKeySha256: sha(tok('strict')), profile: { options: ['retainUIDs'] }, pixels: { faces: 'withhold' } },
        { id: 'research', apiKeySha256: sha(tok('research')), profile: { options: ['retainUIDs'] }, pixels: { faces: 'allow' } },
      ],
    }, join(dir, 'g.yaml'));
    const parts = buildParts(cfg);
    // Every request to the PACS, with how many analyses had finished when it was asked for.
    const inner = parts.upstream;
    const upstream: Upstream = { ...inner, get: (req) => { upstreamAsked.push({ path: req.path, analysesDone: gw?.faceStats.analyses ?? 0 }); return inner.get(req); } };
    gw = await startGateway(cfg, { ...parts, upstream, log: winston.createLogger({ transports: [new winston.transports.Console({ silent: true })] }) });
  });

  after(async () => {
    await gw?.close();
    await orthanc?.stop();
  });

  test('a head MR leaves defaced: the face is gone, the brain is bit-exact, and the instances say so', async () => {
    const insts = await retrieve(seriesPath(mr), 'vendor');
    assert.equal(insts.length, mr.files.length, 'delivered whole');
    const c = checkDefaced(mr, deliveredFrames(mr, insts));
    assert.ok(c.removedOk > 300 && c.removedBad === 0, `face voxels left: ${c.removedBad} of ${c.removedOk + c.removedBad} ${JSON.stringify(c.left)}`);
    assert.ok(c.brainOk > 1000 && c.brainBad === 0, `brain voxels changed: ${c.brainBad}`);
    for (const i of insts) {
      const v = part10View(i.elements);
      assert.equal(v.str(0x00280302), 'NO');
      assert.ok(v.items(0x00120064).some((it) => it.str(0x00080100) === '113102'), 'Clean Recognizable Visual Features in the method codes');
    }
    const rec = auditRecords().filter((x) => x.client === 'vendor' && x.route === 'retrieve').at(-1)!;
    assert.equal(rec.defaced, mr.files.length, 'the audit counts the defaced instances');
  });

  test('the study retrieve, instance retrieve, frames, bulk pixel data and rendered image of a slice through the nose agree', async () => {
    const study = await retrieve(`/dicom-web/studies/${mr.study}`, 'vendor');
    // The sagittal slice nearest the midline: the one through the nose.
    const mid = mr.files[Math.floor(mr.files.length / 2)]!;
    const fromStudy = study.find((i) => sopOf(i) === mid.sop)!;
    const one = (await retrieve(`${seriesPath(mr)}/instances/${mid.sop}`, 'vendor'))[0]!;
    assert.deepEqual(one.pixel, fromStudy.pixel);
    assert.notDeepEqual(one.pixel, readInstanceSync(mid.bytes, inflateRawSync).pixel, 'the slice through the nose is changed');
    const fr = await get(`${seriesPath(mr)}/instances/${mid.sop}/frames/1`, 'vendor');
    assert.equal(fr.status, 200);
    assert.deepEqual(splitMultipart(fr.body, fr.type)[0]!.body, one.pixel);
    const bulk = await get(`${seriesPath(mr)}/instances/${mid.sop}/bulk/7fe00010`, 'vendor');
    assert.equal(bulk.status, 200);
    assert.deepEqual(splitMultipart(bulk.body, bulk.type)[0]!.body, one.pixel);
    // Rendered (PNG, no viewport: one image pixel per pixel): every removed pixel is black.
    const png = await get(`${seriesPath(mr)}/instances/${mid.sop}/rendered`, 'vendor', 'image/png');
    assert.equal(png.status, 200);
    const img = decodePng(png.body, { anyFilter: true });
    assert.equal(img.width, mr.options.columns);
    const orig = frames16(readInstanceSync(mid.bytes, inflateRawSync), mr.options.rows, mr.options.columns)[0]!;
    const got = frames16(one, mr.options.rows, mr.options.columns)[0]!;
    let removed = 0;
    for (let i = 0; i < got.length; i++) {
      if (got[i] === orig[i]) continue;
      removed++;
      assert.equal(img.data[i * img.channels], 0, `rendered pixel ${i} of the removed face is black`);
    }
    assert.ok(removed > 100, `${removed} pixels removed in the slice through the nose`);
  });

  test('metadata and QIDO say what the retrieve does', async () => {
    const r = await get(`${seriesPath(mr)}/metadata`, 'vendor');
    assert.equal(r.status, 200);
    const rows = JSON.parse(r.body.toString()) as Record<string, { Value?: unknown[] }>[];
    assert.equal(rows.length, mr.files.length);
    for (const row of rows) {
      assert.deepEqual(row['00280302']?.Value, ['NO']);
      const codes = (row['00120064']?.Value ?? []) as Record<string, { Value?: unknown[] }>[];
      assert.ok(codes.some((c) => c['00080100']?.Value?.[0] === '113102'), 'metadata lists 113102');
    }
    // QIDO instance rows say the same once the series is decided.
    const q = await get(`${seriesPath(mr)}/instances?includefield=00280302`, 'vendor');
    const qrows = JSON.parse(q.body.toString()) as Record<string, { Value?: unknown[] }>[];
    assert.equal(qrows.length, mr.files.length);
    assert.ok(qrows.every((row) => row['00280302']?.Value?.[0] === 'NO'), 'QIDO rows say Recognizable Visual Features NO');
    // A rendered series and a series thumbnail are drawn from the defaced pixels too.
    const rs = await get(`${seriesPath(mr)}/rendered`, 'vendor', 'multipart/related; type="image/png"');
    assert.equal(rs.status, 200);
    assert.equal(splitMultipart(rs.body, rs.type).length, mr.files.length);
    const th = await get(`${seriesPath(mr)}/thumbnail`, 'vendor', 'image/png');
    assert.equal(th.status, 200);
    // A client whose policy allows faces sees no such marker.
    const raw = JSON.parse((await get(`${seriesPath(mr)}/metadata`, 'research')).body.toString()) as Record<string, { Value?: unknown[] }>[];
    assert.ok(raw.every((row) => row['00280302']?.Value?.[0] !== 'NO'));
  });

  test('an enhanced multi-frame head is defaced frame by frame, from its functional groups', async () => {
    const insts = await retrieve(seriesPath(multi), 'vendor');
    assert.equal(insts.length, 1);
    const c = checkDefaced(multi, deliveredFrames(multi, insts));
    assert.ok(c.removedOk > 300 && c.removedBad === 0, `face voxels left: ${c.removedBad} ${JSON.stringify(c.left)}`);
    assert.ok(c.brainOk > 1000 && c.brainBad === 0, `brain voxels changed: ${c.brainBad}`);
    // Frames of the multi-frame object agree with the retrieve.
    const fr = await get(`${seriesPath(multi)}/instances/${multi.files[0]!.sop}/frames/20,45`, 'vendor');
    assert.equal(fr.status, 200);
    const parts = splitMultipart(fr.body, fr.type);
    const n = multi.options.rows * multi.options.columns * 2;
    assert.deepEqual(parts[0]!.body, insts[0]!.pixel!.subarray(19 * n, 20 * n));
    assert.deepEqual(parts[1]!.body, insts[0]!.pixel!.subarray(44 * n, 45 * n));
  });

  test('a compressed (RLE) tilted CT head is obtained uncompressed and defaced; a client that insists on RLE gets it withheld', async () => {
    const insts = await retrieve(seriesPath(rleCt), 'vendor');
    assert.ok(insts.every((i) => i.transferSyntax.uid === '1.2.840.10008.1.2.1'));
    const c = checkDefaced(rleCt, deliveredFrames(rleCt, insts));
    assert.ok(c.removedOk > 200 && c.removedBad === 0, `face voxels left: ${c.removedBad} ${JSON.stringify(c.left)}`);
    assert.ok(c.brainBad === 0 && c.brainOk > 500);
    const rle = await get(seriesPath(rleCt), 'vendor', 'multipart/related; type="application/dicom"; transfer-syntax=1.2.840.10008.1.2.5');
    assert.equal(rle.status, 403, 'never released as it came');
    assert.equal((JSON.parse(rle.body.toString()) as { code: string }).code, 'PIXELS_WITHHELD');
    // transfer-syntax=* : the stored syntax where nothing is cut, native where a face is.
    const any = await retrieve(seriesPath(rleCt), 'vendor', 'multipart/related; type="application/dicom"; transfer-syntax=*');
    assert.ok(any.every((i) => i.transferSyntax.uid === '1.2.840.10008.1.2.1'));
  });

  test('a head with no face in view leaves bit-exact, in its stored syntax when asked', async () => {
    const insts = await retrieve(seriesPath(brainOnly), 'vendor');
    assert.equal(insts.length, brainOnly.files.length);
    for (const i of insts) {
      const orig = brainOnly.files.find((f) => f.sop === sopOf(i))!;
      assert.deepEqual(i.pixel, readInstanceSync(orig.bytes, inflateRawSync).pixel, 'bit-exact');
      assert.notEqual(part10View(i.elements).str(0x00280302), 'NO');
    }
  });

  test('a rendered series and a series thumbnail asked for first (nothing else decided the series) are drawn defaced', async () => {
    const rs = await get(`${seriesPath(renderOnly)}/rendered`, 'vendor', 'multipart/related; type="image/png"');
    assert.equal(rs.status, 200, rs.body.toString().slice(0, 200));
    assert.equal(rs.headers.get('warning'), null, 'nothing withheld');
    const images = splitMultipart(rs.body, rs.type).map((p) => decodePng(p.body, { anyFilter: true }));
    assert.equal(images.length, renderOnly.files.length);
    // Each image against the defaced retrieve of its instance: removed pixels are black.
    const insts = await retrieve(seriesPath(renderOnly), 'vendor');
    const bySop = new Map(insts.map((i) => [sopOf(i), i]));
    let removed = 0;
    // The parts come in SOP Instance UID order (docs/pixels.md).
    [...renderOnly.files].sort((a, b) => a.sop.localeCompare(b.sop)).forEach((f, k) => {
      const got = frames16(bySop.get(f.sop)!, 80, 80)[0]!;
      const orig = frames16(readInstanceSync(f.bytes, inflateRawSync), 80, 80)[0]!;
      const img = images[k]!;
      let darkest = 255;
      for (let i = 0; i < got.length; i++) darkest = Math.min(darkest, img.data[i * img.channels]!);
      // Removed pixels hold the background (0), drawn as the darkest grey of the image.
      for (let i = 0; i < got.length; i++) if (got[i] !== orig[i]) { removed++; assert.equal(img.data[i * img.channels], darkest, `image ${k} pixel ${i}`); }
    });
    assert.ok(removed > 200, `${removed} pixels removed across the series`);
    const th = await get(`${seriesPath(renderOnly)}/thumbnail`, 'vendor', 'image/png');
    assert.equal(th.status, 200);
  });

  test('faces: withhold refuses head series (audited pixels-withheld:face); faces: allow releases them unchanged, audited', async () => {
    const w = await get(seriesPath(mr), 'strict');
    assert.equal(w.status, 403);
    assert.equal(auditRecords().filter((x) => x.client === 'strict').at(-1)!.reason, 'pixels-withheld:face');
    const s = await get(`/dicom-web/studies/${mr.study}`, 'strict');
    assert.equal(s.status, 200, 'the study still serves what has no face');
    assert.match(s.headers.get('warning') ?? '', /299 deid-gateway/);
    const sent = splitMultipart(s.body, s.type).map((p) => readInstanceSync(p.body, inflateRawSync));
    assert.deepEqual(new Set(sent.map((i) => part10View(i.elements).str(0x0020000e))), new Set([brainOnly.series]));
    const a = await retrieve(seriesPath(mr), 'research');
    for (const i of a) assert.deepEqual(i.pixel, readInstanceSync(mr.files.find((f) => f.sop === sopOf(i))!.bytes, inflateRawSync).pixel);
    assert.equal(auditRecords().filter((x) => x.client === 'research' && x.route === 'retrieve').at(-1)!.facesAllowed, mr.files.length);
  });

  test('a series whose facts are known is asked for once its samples are in, while it is analysed, and leaves defaced and whole', async () => {
    // faces: allow first: the series' facts are then known, and its face decision is not.
    assert.equal((await retrieve(seriesPath(early), 'research')).length, early.files.length);
    const analysesBefore = gw.faceStats.analyses;
    const fetchedBefore = gw.faceStats.fetchedInstances;
    upstreamAsked.length = 0;
    const insts = await retrieve(seriesPath(early), 'vendor');
    assert.equal(gw.faceStats.analyses, analysesBefore + 1, 'the series was analysed by this request');
    const path = `/studies/${early.study}/series/${early.series}`;
    const asked = upstreamAsked.filter((a) => a.path === path);
    assert.equal(asked.length, 1, `the series retrieve asked for once: ${JSON.stringify(upstreamAsked.map((a) => a.path.split('/').length))}`);
    assert.equal(asked[0]!.analysesDone, analysesBefore, 'asked for before the analysis was done');
    // … and after every sampled instance (the PACS serves the analysis first).
    const samples = upstreamAsked.filter((a) => a.path.startsWith(`${path}/instances/`));
    assert.equal(samples.length, gw.faceStats.fetchedInstances - fetchedBefore);
    assert.ok(upstreamAsked.indexOf(asked[0]!) > upstreamAsked.indexOf(samples.at(-1)!), 'after the last sampled instance');
    assert.equal(insts.length, early.files.length, 'delivered whole');
    const c = checkDefaced(early, deliveredFrames(early, insts));
    assert.ok(c.removedOk > 300 && c.removedBad === 0, `face voxels left: ${c.removedBad}`);
    assert.ok(c.brainOk > 1000 && c.brainBad === 0, `brain voxels changed: ${c.brainBad}`);
  });

  test('each series is decided once and stored in state.dir', async () => {
    const db = readFileSync(join(dir, 'faces.sqlite'));
    assert.ok(db.length > 0);
    // The store holds decisions, not pixels: it stays small.
    assert.ok(db.length < 256 * 1024, `faces.sqlite is ${db.length} bytes`);
  });

  const shared = existsSync(SHARED_HEADS) && existsSync(FACE_CHECK);
  test('cross-check: the real heads of ../shared/corpus/heads pass face-check through the gateway', { skip: !shared && 'no ../shared beside the checkout' }, async () => {
    for (const head of readdirSync(SHARED_HEADS)) {
      const files = readdirSync(join(SHARED_HEADS, head)).map((f) => readFileSync(join(SHARED_HEADS, head, f)));
      await orthanc.upload(files);
      const v = part10View(readInstanceSync(files[0]!, inflateRawSync).elements);
      const path = `/dicom-web/studies/${v.str(0x0020000d)}/series/${v.str(0x0020000e)}`;
      const insts = await get(path, 'vendor');
      assert.equal(insts.status, 200, `${head}: ${insts.body.toString().slice(0, 200)}`);
      const out = join(dir, 'received', head);
      mkdirSync(out, { recursive: true });
      splitMultipart(insts.body, insts.type).forEach((p, k) => writeFileSync(join(out, `${k}.dcm`), p.body));
      const r = spawnSync('/usr/bin/python3', [FACE_CHECK, join(SHARED_HEADS, head), out], { encoding: 'utf8' });
      assert.equal(r.status, 0, `${head}: ${r.stdout}${r.stderr}`);
      // The frames of the middle slice (the one through the nose for a sagittal series, a middle
      // frame of a multi-frame one) agree with the retrieve.
      const parts = splitMultipart(insts.body, insts.type).map((p) => readInstanceSync(p.body, inflateRawSync));
      const mid = parts[Math.floor(parts.length / 2)]!;
      const v2 = part10View(mid.elements);
      const frames = Number(v2.str(0x00280008) ?? '1');
      const k = Math.ceil(frames / 2);
      const n = Number(v2.str(0x00280010)) * Number(v2.str(0x00280011)) * 2;
      const fr = await get(`${path}/instances/${v2.str(0x00080018)}/frames/${k}`, 'vendor');
      assert.equal(fr.status, 200);
      assert.deepEqual(splitMultipart(fr.body, fr.type)[0]!.body, mid.pixel!.subarray((k - 1) * n, k * n), `${head}: frame ${k} agrees with the retrieve`);
    }
  });
});
