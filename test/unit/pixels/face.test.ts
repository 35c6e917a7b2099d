/**
 * Faces (issue 11) on the repository's own head phantoms, through the product's provider
 * (reduced volume, analysis, stored decision) and the Part 10 engine (the cut as pixels
 * stream): every orientation, gantry tilt, pitched heads, multi-frame, CT in Hounsfield units
 * and MR; a head with no face in view and a body part that is not a head released bit-exact;
 * the decision stored once and reused; the policy's three values.
 */
import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { inflateRawSync } from 'node:zlib';
import { deidentifyPart10Buffer } from '../../../src/deid/part10.js';
import { readHeaderSync, readInstanceSync } from '../../../src/dicom/part10.js';
import { GatewayError } from '../../../src/core/errors.js';
import { FaceProvider, type SeriesSource } from '../../../src/pixels/face/provider.js';
import { warmUp } from '../../../src/pixels/face/runner.js';
import { openFaceStore } from '../../../src/pixels/store-sqlite.js';
import { rowSpans, faceCutTransformer } from '../../../src/pixels/face/cut.js';
import { cross, dot, readPixelFacts, type FrameGeometry, type PixelFactsFull, type Vec3 } from '../../../src/pixels/geometry.js';
import { buildVolume, reduceFrame, type ReducedFrame } from '../../../src/pixels/face/volume.js';
import { part10View, jsonView } from '../../../src/pixels/views.js';
import { admitPixels, DEFAULT_PIXEL_POLICY, pixelDecision, type FaceVerdict } from '../../../src/policy/pixels.js';
import { checkDefaced, makeHeadPhantom, type Phantom, type PhantomOptions } from '../../fixtures/head-phantom.js';
import { engine } from '../../helpers/fixtures.js';

const source = (ph: Phantom): SeriesSource & { fetched: number } => {
  const s = {
    fetched: 0,
    instances: async () => ph.files.map((f) => ({ sop: f.sop, view: part10View(readHeaderSync(f.bytes, inflateRawSync).elements) })),
    instance: async (sop: string) => { s.fetched++; return ph.files.find((f) => f.sop === sop)!.bytes; },
  };
  return s;
};

async function decide(ph: Phantom, provider = new FaceProvider(undefined)): Promise<FaceVerdict> {
  return provider.decide(ph.series, ph.options.modality, ph.files.map((f) => f.sop), source(ph));
}

/** The series through the engine with the verdict's cut, as the gateway and the deid command apply it. */
async function deliver(ph: Phantom, verdict: FaceVerdict): Promise<Uint16Array[]> {
  const out: Uint16Array[] = [];
  for (const f of ph.files) {
    const bytes = await deidentifyPart10Buffer(f.bytes, engine(), { admit: (attr) => admitPixels(attr, DEFAULT_PIXEL_POLICY, () => verdict) });
    const inst = readInstanceSync(bytes, inflateRawSync);
    const px = inst.pixel!;
    const per = ph.options.rows * ph.options.columns;
    for (let k = 0; k < f.frames; k++) {
      const a = new Uint16Array(per);
      for (let i = 0; i < per; i++) a[i] = px.readUInt16LE((k * per + i) * 2);
      out.push(a);
    }
  }
  return out;
}

const base = (o: Partial<PhantomOptions>): PhantomOptions => ({
  modality: 'MR', orientation: 'sagittal', rows: 120, columns: 120, pixelMm: 2.2, slices: 80, sliceMm: 2, uidRoot: '1.2.826.0.1.3680043.9.7433.11.1', ...o,
});

const CASES: [string, Partial<PhantomOptions>][] = [
  ['MR sagittal', {}],
  ['MR axial', { orientation: 'axial', slices: 130, sliceMm: 2, rows: 110, columns: 100 }],
  ['MR coronal', { orientation: 'coronal', slices: 110, rows: 130, columns: 90 }],
  ['MR oblique', { orientation: 'oblique', slices: 130, rows: 130, columns: 130, pixelMm: 2 }],
  ['CT axial in HU', { modality: 'CT', orientation: 'axial', slices: 100, sliceMm: 2.5, rows: 110, columns: 100 }],
  ['CT axial with 15° gantry tilt', { modality: 'CT', orientation: 'axial', slices: 100, sliceMm: 2.5, rows: 110, columns: 100, tiltDeg: 15 }],
  ['MR enhanced multi-frame, sagittal', { multiFrame: true }],
  ['CT enhanced multi-frame, coronal', { modality: 'CT', orientation: 'coronal', multiFrame: true, slices: 100, rows: 130, columns: 90 }],
  ['MR sagittal, chin up 15°', { pitchDeg: 15 }],
  ['MR sagittal, chin down 12°', { pitchDeg: -12 }],
  ['CT axial, chin down 25°', { modality: 'CT', orientation: 'axial', slices: 100, sliceMm: 2.5, rows: 110, columns: 100, pitchDeg: -25 }],
  ['MR sagittal, chin up 25°', { pitchDeg: 25 }],
  // A raised chin stands out more than the nose above it: the nose is the highest ridge that
  // stands out nearly as well, and the tip is not refined down onto the lip.
  ['MR axial, chin up 25°', { orientation: 'axial', slices: 130, rows: 110, columns: 100, pitchDeg: 25 }],
  ['CT axial in HU, chin up 25°', { modality: 'CT', orientation: 'axial', slices: 100, sliceMm: 2.5, rows: 110, columns: 100, pitchDeg: 25 }],
  ['MR sagittal 1.7 mm, chin up 25°', { sliceMm: 1.7, pitchDeg: 25 }],
  ['MR sagittal 2.2 mm, chin up 25°', { sliceMm: 2.2, slices: 75, pitchDeg: 25 }],
  ['MR axial, head off-centre', { orientation: 'axial', slices: 130, rows: 110, columns: 110, center: [20, -15, 40] }],
  // Diffusion and fMRI (echo-planar): the nasion lost to signal dropout; the cut is placed from the nose.
  ['MR sagittal, nasion lost to EPI signal dropout', { nasionDropout: true }],
  ['MR axial 3 mm, nasion lost to EPI signal dropout', { orientation: 'axial', slices: 45, sliceMm: 3, rows: 80, columns: 80, pixelMm: 3, nasionDropout: true }],
];

describe('faces on head phantoms', () => {
  for (const [name, o] of CASES) {
    test(`${name}: the face is removed, the brain is left exactly as it was`, async () => {
      const ph = makeHeadPhantom(base({ ...o, uidRoot: `1.2.826.0.1.3680043.9.7433.11.${CASES.findIndex(([n]) => n === name) + 2}` }));
      const verdict = await decide(ph);
      assert.equal(verdict.kind, 'deface', JSON.stringify(verdict));
      const c = checkDefaced(ph, await deliver(ph, verdict));
      assert.ok(c.removedOk > 500, `face voxels checked: ${c.removedOk}`);
      assert.equal(c.removedBad, 0, `${c.removedBad} face voxels left (of ${c.removedOk + c.removedBad}): ${JSON.stringify(c.left)}`);
      assert.ok(c.brainOk > 1000, `brain voxels checked: ${c.brainOk}`);
      assert.equal(c.brainBad, 0, `${c.brainBad} brain voxels changed`);
    });
  }

  test('a head with no face in view (brain-only) is released bit-exact', async () => {
    const ph = makeHeadPhantom(base({ modality: 'CT', orientation: 'axial', slices: 40, sliceMm: 2.5, rows: 110, columns: 100, fromZ: 25, center: [0, 0, 0], uidRoot: '1.2.826.0.1.3680043.9.7433.11.40' }));
    // Only slices above the eyes: the stack starts 25 mm above the head's centre.
    const verdict = await decide(ph);
    assert.equal(verdict.kind, 'no-face', JSON.stringify(verdict));
    for (const f of ph.files) {
      const out = await deidentifyPart10Buffer(f.bytes, engine(), { admit: (attr) => admitPixels(attr, DEFAULT_PIXEL_POLICY, () => verdict) });
      assert.deepEqual(readInstanceSync(out, inflateRawSync).pixel, readInstanceSync(f.bytes, inflateRawSync).pixel);
    }
  });

  test('a body part that is not a head (the neck below the chin: about round) is released bit-exact', async () => {
    const ph = makeHeadPhantom(base({ modality: 'CT', orientation: 'axial', slices: 40, sliceMm: 2.5, rows: 110, columns: 100, fovCenter: [0, 0, -150], uidRoot: '1.2.826.0.1.3680043.9.7433.11.41' }));
    const verdict = await decide(ph);
    assert.equal(verdict.kind, 'no-face', JSON.stringify(verdict));
  });

  test('a head held between the side plates of a holder is still a head: no face found is withheld, not released as no head', async () => {
    // The plates, tall and apart from the head, made its cross-sections as wide as they are deep
    // (not a head's) when a cross-section's width ran from plate to plate: a real tilted head CT
    // (GE HiSpeed) was released as "no head in view".
    const o = { modality: 'CT' as const, orientation: 'axial' as const, slices: 110, sliceMm: 2.5, rows: 110, columns: 120, pixelMm: 2, noFace: true, holder: true };
    const ph = makeHeadPhantom(base({ ...o, uidRoot: '1.2.826.0.1.3680043.9.7433.11.47' }));
    const verdict = await decide(ph);
    assert.equal(verdict.kind, 'uncertain', JSON.stringify(verdict));
    // With its face, the same head in the same holder is defaced.
    const withFace = makeHeadPhantom(base({ ...o, noFace: false, uidRoot: '1.2.826.0.1.3680043.9.7433.11.48' }));
    const v2 = await decide(withFace);
    assert.equal(v2.kind, 'deface', JSON.stringify(v2));
    const c = checkDefaced(withFace, await deliver(withFace, v2));
    assert.equal(c.removedBad, 0, `${c.removedBad} face voxels left: ${JSON.stringify(c.left)}`);
    assert.equal(c.brainBad, 0, `${c.brainBad} brain voxels changed`);
  });

  test('a slab above the nose (ASL, fMRI: the eyes or the brow at its lowest slice) is never cut into the brain', async () => {
    // A real XA30 ASL slab whose lowest slice lay 32 mm above the nose had its brow taken for a
    // nose by a version that preferred the highest ridge, and 78 cm³ of frontal lobe cut.
    for (const [i, fromZ] of [0, 5, 10, 15, 20].entries()) {
      for (const modality of ['MR', 'CT'] as const) {
        for (const sliceMm of [7.5, 3]) {
          const slices = Math.round(95 / sliceMm);
          const ph = makeHeadPhantom(base({ modality, orientation: 'axial', slices, sliceMm, rows: 64, columns: 64, pixelMm: 3.5, fromZ, fovCenter: [0, 0, fromZ + 45], uidRoot: `1.2.826.0.1.3680043.9.7433.11.6${i}${modality === 'MR' ? 1 : 2}${sliceMm === 3 ? 3 : 7}` }));
          const verdict = await decide(ph);
          if (verdict.kind !== 'deface') continue;
          const c = checkDefaced(ph, await deliver(ph, verdict));
          assert.equal(c.brainBad, 0, `slab from ${fromZ} mm (${modality}, ${sliceMm} mm): ${c.brainBad} brain voxels changed by ${JSON.stringify(verdict)}`);
        }
      }
    }
  });

  test('a bump on the forehead is not a nose: with the face in view the nose is still cut; with the face lost (EPI) the brain is never cut', async () => {
    // A real Canon diffusion series had its face below the eyes lost to distortion and a 15 mm
    // bump of its forehead taken for the nose: the cut took the frontal pole. On phantoms, bumps
    // standing 15–18 mm proud took 800–5,000 brain voxels, with or without the face in view.
    let solid = 0;
    let n = 0;
    const cases: [Partial<PhantomOptions>, number, number][] = [];
    for (const z of [20, 28, 36, 45]) for (const proud of [15, 18]) cases.push([{ orientation: 'axial', slices: 45, sliceMm: 3, rows: 80, columns: 80, pixelMm: 3 }, z, proud]);
    cases.push([{}, 28, 15], [{}, 20, 18]);
    for (const [o, z, proud] of cases) {
      for (const faceLost of [false, true]) {
        const ph = makeHeadPhantom(base({ ...o, faceLost, foreheadBump: { z, proud }, uidRoot: `1.2.826.0.1.3680043.9.7433.11.8${n++}` }));
        const verdict = await decide(ph);
        const what = `bump at ${z} mm, ${proud} mm proud, ${o.orientation ?? 'sagittal'}, face ${faceLost ? 'lost' : 'in view'}: ${JSON.stringify(verdict)}`;
        if (verdict.kind === 'uncertain' && verdict.why.includes('solid tissue behind')) solid++;
        if (!faceLost) assert.equal(verdict.kind, 'deface', what);
        if (verdict.kind !== 'deface') continue;
        const c = checkDefaced(ph, await deliver(ph, verdict));
        assert.equal(c.brainBad, 0, `${what}: ${c.brainBad} brain voxels changed`);
        if (!faceLost) assert.equal(c.removedBad, 0, `${what}: ${c.removedBad} face voxels left`);
      }
    }
    // The guard that stops most of the lost faces: what lies behind the ridge.
    assert.ok(solid >= 5, `withheld for solid tissue behind the ridge: ${solid}`);
  });

  test('a whole head whose face cannot be found (no nose, no nasion) is withheld, never cut', async () => {
    // The vault and the skull base in view down to the neck, but no face: landmarks cannot be trusted.
    const ph = makeHeadPhantom(base({ modality: 'MR', orientation: 'axial', slices: 110, sliceMm: 2.5, rows: 100, columns: 100, noFace: true, uidRoot: '1.2.826.0.1.3680043.9.7433.11.46' }));
    const verdict = await decide(ph);
    assert.equal(verdict.kind, 'uncertain', JSON.stringify(verdict));
    const d = pixelDecision({ modality: 'MR' }, DEFAULT_PIXEL_POLICY, { series: ph.series, lookup: () => verdict });
    assert.ok(!d.allow && d.auditReason === 'pixels-withheld:face', 'withheld with its reason');
  });

  test('a PET head is a candidate too: defaced with the brain intact, or withheld; never cut into the brain', async () => {
    const ph = makeHeadPhantom(base({ modality: 'PT', orientation: 'axial', slices: 60, sliceMm: 4, rows: 64, columns: 64, pixelMm: 4, uidRoot: '1.2.826.0.1.3680043.9.7433.11.47' }));
    const verdict = await decide(ph);
    assert.ok(verdict.kind === 'deface' || verdict.kind === 'uncertain', JSON.stringify(verdict));
    if (verdict.kind === 'deface') {
      const c = checkDefaced(ph, await deliver(ph, verdict));
      assert.equal(c.brainBad, 0, `brain voxels changed: ${c.brainBad}`);
    } else {
      assert.ok(!pixelDecision({ modality: 'PT' }, DEFAULT_PIXEL_POLICY, { series: ph.series, lookup: () => verdict }).allow);
    }
  });

  test('a header that names no head and a description that says nothing do not lower suspicion', async () => {
    const plain = makeHeadPhantom(base({ uidRoot: '1.2.826.0.1.3680043.9.7433.11.42' }));
    const named = makeHeadPhantom(base({ uidRoot: '1.2.826.0.1.3680043.9.7433.11.43', bodyPart: 'KNEE', seriesDescription: 'knee t1' }));
    assert.equal((await decide(plain)).kind, 'deface');
    assert.equal((await decide(named)).kind, 'deface'); // the pixels decide, not the header
  });

  test('one analysis per series: concurrent callers share it, the store keeps it across restarts, a changed series is decided again', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'faces-'));
    const ph = makeHeadPhantom(base({ uidRoot: '1.2.826.0.1.3680043.9.7433.11.44', slices: 60, sliceMm: 2.5 }));
    const store = openFaceStore(dir);
    const p1 = new FaceProvider(store);
    const src = source(ph);
    const sops = ph.files.map((f) => f.sop);
    const [a, b] = await Promise.all([p1.decide(ph.series, 'MR', sops, src), p1.decide(ph.series, 'MR', sops, src)]);
    assert.deepEqual(a, b);
    assert.equal(p1.stats.analyses, 1);
    // Sampling: a sagittal stack of 2.5 mm slices, every 2nd (5 mm apart, at most 7); each fetched once.
    assert.equal(src.fetched, Math.ceil(ph.files.length / 2));
    store.close();
    const store2 = openFaceStore(dir);
    const p2 = new FaceProvider(store2);
    const src2 = source(ph);
    assert.deepEqual(await p2.decide(ph.series, 'MR', sops, src2), a);
    assert.equal(p2.stats.analyses, 0);
    assert.equal(src2.fetched, 0, 'a stored decision fetches no pixels');
    assert.deepEqual(p2.decision(ph.series), a);
    // One instance fewer: another digest, decided again.
    await p2.decide(ph.series, 'MR', sops.slice(1), source(ph));
    assert.equal(p2.stats.analyses, 1);
    store2.close();
  });

  test('a thin-sliced series is analysed on every k-th slice (reduced volume): at most 7 mm apart across the face, 4.5 mm up and down it', async () => {
    for (const [i, orientation, every] of [[0, 'sagittal', 7], [1, 'axial', 5]] as const) {
      const ph = makeHeadPhantom(base({ uidRoot: `1.2.826.0.1.3680043.9.7433.11.45${i}`, orientation, slices: 160, sliceMm: 0.9, rows: 100, columns: 100, pixelMm: 2.5 }));
      const src = source(ph);
      const v = await new FaceProvider(undefined).decide(ph.series, 'MR', ph.files.map((f) => f.sop), src);
      assert.equal(v.kind, 'deface', `${orientation}: ${JSON.stringify(v)}`);
      const c = checkDefaced(ph, await deliver(ph, v));
      assert.equal(c.removedBad, 0, `${orientation}: ${c.removedBad} face voxels left`);
      assert.equal(c.brainBad, 0, `${orientation}: ${c.brainBad} brain voxels changed`);
      // 0.9 mm slices: sagittal every 7th (6.3 mm apart), 23 of 160; axial every 5th (4.5 mm), 32.
      assert.equal(src.fetched, Math.ceil(ph.files.length / every), `${orientation}: fetched ${src.fetched} of ${ph.files.length}`);
    }
  });

  test('the warm-up head is defaced: the warm-up runs every step of the analysis (one that stops early compiles nothing)', () => {
    assert.equal(warmUp(1), 'deface');
  });
});

describe('the reduced volume', () => {
  /**
   * reduceFrame has three block-sum kernels (unsigned and signed 16-bit cells read in place, and
   * a sample reader for everything else). Each is held to a plain reference: the mean of each
   * block of stored values (only the stored bits, sign-extended when signed), rescaled.
   */
  test('frames are box-averaged to the grid from their stored bits, whatever the cell size, sign, byte order or alignment', () => {
    const rows = 23, columns = 31; // blocks of 5 x 5 at 0.5 mm: 4 x 6 reduced pixels, the ragged edge dropped
    const g: FrameGeometry = { position: [0, 0, 0], rowDir: [1, 0, 0], colDir: [0, 1, 0], rowSpacing: 0.5, colSpacing: 0.5 };
    const cases: { name: string; bits: number; stored: number; signed: boolean; littleEndian: boolean; offset: number }[] = [
      { name: 'unsigned 16-bit, 12 stored, garbage above', bits: 16, stored: 12, signed: false, littleEndian: true, offset: 0 },
      { name: 'signed 16-bit, 12 stored', bits: 16, stored: 12, signed: true, littleEndian: true, offset: 0 },
      { name: 'signed 16-bit, 16 stored', bits: 16, stored: 16, signed: true, littleEndian: true, offset: 0 },
      { name: 'unsigned 16-bit at an odd byte offset', bits: 16, stored: 16, signed: false, littleEndian: true, offset: 1 },
      { name: 'signed 16-bit big endian', bits: 16, stored: 14, signed: true, littleEndian: false, offset: 0 },
      { name: 'unsigned 8-bit', bits: 8, stored: 8, signed: false, littleEndian: true, offset: 0 },
      { name: 'signed 8-bit', bits: 8, stored: 8, signed: true, littleEndian: true, offset: 0 },
      { name: 'unsigned 32-bit, 20 stored', bits: 32, stored: 20, signed: false, littleEndian: true, offset: 0 },
    ];
    for (const c of cases) {
      const bytesPer = c.bits / 8;
      const buf = Buffer.alloc(c.offset + rows * columns * bytesPer);
      const raw = (i: number): number => ((i * 2654435761) >>> 0) % 2 ** c.bits; // every bit pattern, garbage above the stored bits included
      for (let i = 0; i < rows * columns; i++) {
        const at = c.offset + i * bytesPer;
        if (c.bits === 8) buf[at] = raw(i);
        else if (c.bits === 16 && c.littleEndian) buf.writeUInt16LE(raw(i), at);
        else if (c.bits === 16) buf.writeUInt16BE(raw(i), at);
        else buf.writeUInt32LE(raw(i), at);
      }
      const storedValue = (i: number): number => {
        const v = raw(i) % 2 ** c.stored;
        return c.signed && v >= 2 ** (c.stored - 1) ? v - 2 ** c.stored : v;
      };
      const facts: PixelFactsFull = {
        modality: 'CT', sopClassUid: '', rows, columns, samplesPerPixel: 1, bitsAllocated: c.bits, bitsStored: c.stored, highBit: c.stored - 1,
        pixelRepresentation: c.signed ? 1 : 0, photometric: 'MONOCHROME2', planarConfiguration: 0, frames: 1, rescale: [{ slope: 2, intercept: -1024 }], geometry: [g],
      };
      const r = reduceFrame(buf.subarray(c.offset), facts, 0, c.littleEndian, 2.5)!;
      assert.equal(r.rows, 4, c.name);
      assert.equal(r.columns, 6, c.name);
      for (let y = 0; y < r.rows; y++) {
        for (let x = 0; x < r.columns; x++) {
          let sum = 0;
          for (let i = 0; i < 5; i++) for (let j = 0; j < 5; j++) sum += storedValue((y * 5 + i) * columns + x * 5 + j);
          assert.equal(r.data[y * r.columns + x], Math.fround((sum / 25) * 2 - 1024), `${c.name}: reduced pixel (${x}, ${y})`);
        }
      }
    }
  });

  /**
   * buildVolume walks lines of the grid in runs and finds each run's voxels by arithmetic. The
   * reference here tests every voxel against every frame: the nearest frame along the normal,
   * within half the largest gap plus half a voxel, inside it or within half a pixel of its edge,
   * and the nearest pixel. Voxels where the reference sits on a tie (two frames, a bound or a
   * pixel's half-way line within 1e-6) may go either way; every other voxel must agree.
   */
  function reference(stack: readonly ReducedFrame[], spacing: number, vol: { nx: number; ny: number; nz: number; origin: Vec3; spacing: number }): { data: Float64Array; ambiguous: Uint8Array } {
    const normal = cross(stack[0]!.geometry.rowDir, stack[0]!.geometry.colDir);
    const s = stack.map((f) => dot(normal, f.geometry.position));
    const sorted = [...s].sort((a, b) => a - b);
    let gap = 0;
    for (let i = 1; i < sorted.length; i++) gap = Math.max(gap, sorted[i]! - sorted[i - 1]!);
    const tol = gap / 2 + vol.spacing / 2;
    const n = vol.nx * vol.ny * vol.nz;
    const data = new Float64Array(n).fill(Number.NaN);
    const ambiguous = new Uint8Array(n);
    const E = 1e-6;
    const near = (a: number, b: number): boolean => Math.abs(a - b) < E;
    for (let z = 0; z < vol.nz; z++) for (let y = 0; y < vol.ny; y++) for (let x = 0; x < vol.nx; x++) {
      const i = (z * vol.ny + y) * vol.nx + x;
      const p: Vec3 = [vol.origin[0] + x * vol.spacing, vol.origin[1] + y * vol.spacing, vol.origin[2] + z * vol.spacing];
      const sv = dot(normal, p);
      const d = s.map((si) => Math.abs(si - sv));
      const best = Math.min(...d);
      const k = d.indexOf(best);
      if (d.some((di, j) => j !== k && near(di, best)) || near(best, tol)) ambiguous[i] = 1;
      if (best > tol) continue;
      const f = stack[k]!;
      const g: FrameGeometry = f.geometry;
      const rel: Vec3 = [p[0] - g.position[0], p[1] - g.position[1], p[2] - g.position[2]];
      const cf = dot(rel, g.rowDir) / g.colSpacing;
      const rf = dot(rel, g.colDir) / g.rowSpacing;
      if ([cf, rf].some((v) => near(v, -0.75) || near(v - Math.floor(v), 0.5)) || near(cf, f.columns - 0.25) || near(rf, f.rows - 0.25)) ambiguous[i] = 1;
      if (cf < -0.75 || rf < -0.75 || cf > f.columns - 0.25 || rf > f.rows - 0.25) continue;
      const c = Math.min(f.columns - 1, Math.max(0, Math.round(cf)));
      const r = Math.min(f.rows - 1, Math.max(0, Math.round(rf)));
      data[i] = f.data[r * f.columns + c]!;
    }
    void spacing;
    return { data, ambiguous };
  }

  const unit = (v: Vec3): Vec3 => { const l = Math.hypot(...v); return [v[0] / l, v[1] / l, v[2] / l]; };
  const rot = (v: Vec3, ax: number, ay: number): Vec3 => {
    const a: Vec3 = [v[0], v[1] * Math.cos(ax) - v[2] * Math.sin(ax), v[1] * Math.sin(ax) + v[2] * Math.cos(ax)];
    return [a[0] * Math.cos(ay) + a[2] * Math.sin(ay), a[1], -a[0] * Math.sin(ay) + a[2] * Math.cos(ay)];
  };
  const STACKS: [string, Vec3, Vec3, (k: number) => Vec3][] = [
    ['axial', [1, 0, 0], [0, 1, 0], (k) => [-30.3, -40.1, 2.9 * k - 20.2]],
    ['sagittal', [0, 1, 0], [0, 0, -1], (k) => [3.1 * k - 25.7, -50.2, 40.4]],
    ['coronal', [1, 0, 0], [0, 0, -1], (k) => [-40.6, 2.7 * k - 20.1, 45.3]],
    ['oblique', unit(rot([1, 0, 0], 0.31, 0.22)), unit(rot([0, 1, 0], 0.31, 0.22)), (k) => { const n = cross(unit(rot([1, 0, 0], 0.31, 0.22)), unit(rot([0, 1, 0], 0.31, 0.22))); return [-30 + 3.3 * k * n[0], -35 + 3.3 * k * n[1], -10 + 3.3 * k * n[2]]; }],
    // Gantry tilt: the planes lean (row direction x, column direction tilted), positions advance along z.
    ['axial with 17° gantry tilt', [1, 0, 0], unit([0, Math.cos(0.3), Math.sin(0.3)]), (k) => [-30.3, -40.1, 2.6 * k - 20.2]],
    ['sagittal, uneven gaps', [0, 1, 0], [0, 0, -1], (k) => [2.4 * k + (k > 9 ? 5.3 : 0) - 25.7, -50.2, 40.4]],
  ];
  for (const [name, rowDir, colDir, pos] of STACKS) {
    test(`${name}: every voxel takes the pixel a voxel-by-voxel search finds`, () => {
      const rows = 23;
      const columns = 29;
      const stack: ReducedFrame[] = Array.from({ length: 17 }, (_, k) => ({
        geometry: { position: pos(k), rowDir, colDir, rowSpacing: 2.3, colSpacing: 2.1 },
        rows,
        columns,
        data: Float32Array.from({ length: rows * columns }, (_, i) => k * 10000 + i),
      }));
      // Frames in another order than along the normal: the builder sorts them.
      const shuffled = [...stack.slice(9), ...stack.slice(0, 9)];
      const vol = buildVolume(shuffled, 2.5)!;
      const ref = reference(stack, 2.5, vol);
      let filled = 0;
      let differ = 0;
      for (let i = 0; i < ref.data.length; i++) {
        const a = vol.data[i]!;
        const b = ref.data[i]!;
        if (b === b) filled++;
        const same = (a !== a && b !== b) || a === b;
        if (!same && !ref.ambiguous[i]) differ++;
      }
      assert.ok(filled > ref.data.length / 4, `${filled} of ${ref.data.length} voxels filled`);
      assert.equal(differ, 0, `${differ} voxels differ from the reference`);
    });
  }
});

describe('face policy and markers', () => {
  const ph = makeHeadPhantom(base({ uidRoot: '1.2.826.0.1.3680043.9.7433.11.50', slices: 60, sliceMm: 2.5 }));
  const facts = { modality: 'MR', sopClassUid: '1.2.840.10008.5.1.4.1.1.4' };

  test('deface (the default) releases with the cut; withhold refuses; allow releases and says so; undecided is withheld', async () => {
    const verdict = await decide(ph);
    const lookup = { series: ph.series, lookup: () => verdict };
    const d = pixelDecision(facts, DEFAULT_PIXEL_POLICY, lookup);
    assert.ok(d.allow && d.face && d.face.length > 0);
    const w = pixelDecision(facts, { ...DEFAULT_PIXEL_POLICY, faces: 'withhold' }, lookup);
    assert.ok(!w.allow && w.auditReason === 'pixels-withheld:face');
    const a = pixelDecision(facts, { ...DEFAULT_PIXEL_POLICY, faces: 'allow' }, lookup);
    assert.ok(a.allow && !a.face && a.faceAllowed);
    const pending = pixelDecision(facts, DEFAULT_PIXEL_POLICY, { series: ph.series, lookup: () => undefined });
    assert.ok(!pending.allow && pending.auditReason === 'pixels-withheld:face-pending');
    const noSeries = pixelDecision(facts, DEFAULT_PIXEL_POLICY);
    assert.ok(!noSeries.allow, 'an MR instance with no face decision never leaves');
    const uncertain = pixelDecision(facts, DEFAULT_PIXEL_POLICY, { series: ph.series, lookup: () => ({ kind: 'uncertain', why: 'x' }) });
    assert.ok(!uncertain.allow && uncertain.auditReason === 'pixels-withheld:face');
    // Other modalities need no face decision.
    assert.ok(pixelDecision({ modality: 'CR' }, DEFAULT_PIXEL_POLICY).allow);
  });

  test('a head MR stating Recognizable Visual Features YES is released defaced under deface, withheld when no face is found or faces are withheld', async () => {
    const verdict = await decide(ph);
    const rvf = { ...facts, recognizableVisualFeatures: 'YES' };
    const d = pixelDecision(rvf, DEFAULT_PIXEL_POLICY, { series: ph.series, lookup: () => verdict });
    assert.ok(d.allow && d.face && d.face.length > 0, 'defaced');
    const none = pixelDecision(rvf, DEFAULT_PIXEL_POLICY, { series: ph.series, lookup: () => ({ kind: 'no-face' }) });
    assert.ok(!none.allow && none.auditReason === 'pixels-withheld:recognizable-visual-features', 'the header is not overruled by an analysis that finds nothing');
    const withheld = pixelDecision(rvf, { ...DEFAULT_PIXEL_POLICY, faces: 'withhold' }, { series: ph.series, lookup: () => verdict });
    assert.ok(!withheld.allow);
    // Other modalities keep the old rule: withheld unless allowed.
    assert.ok(!pixelDecision({ modality: 'XC', recognizableVisualFeatures: 'YES' }, DEFAULT_PIXEL_POLICY).allow);
  });

  test('a defaced instance says so: Recognizable Visual Features NO and 113102; other bytes of the header as the engine writes them', async () => {
    const verdict = await decide(ph);
    const out = await deidentifyPart10Buffer(ph.files[30]!.bytes, engine(), { admit: (attr) => admitPixels(attr, DEFAULT_PIXEL_POLICY, () => verdict) });
    const v = part10View(readHeaderSync(out, inflateRawSync).elements);
    assert.equal(v.str(0x00280302), 'NO');
    const codes = v.items(0x00120064).map((i) => i.str(0x00080100));
    assert.ok(codes.includes('113102'), codes.join(','));
    const plain = await deidentifyPart10Buffer(ph.files[30]!.bytes, engine(), { admit: (attr) => admitPixels(attr, { ...DEFAULT_PIXEL_POLICY, faces: 'allow' }, () => verdict) });
    const pv = part10View(readHeaderSync(plain, inflateRawSync).elements);
    assert.notEqual(pv.str(0x00280302), 'NO');
    assert.ok(!pv.items(0x00120064).map((i) => i.str(0x00080100)).includes('113102'));
  });

  test('compressed pixel data of a defaced series is withheld, never released as it came', async () => {
    const verdict = await decide(ph);
    const f = ph.files[30]!.bytes;
    // Relabel the same file as RLE with encapsulated pixel data: the engine cannot place the cut.
    const { encodePart10, encapsulatedPixelData } = await import('../../helpers/dicom-builder.js');
    const head = readHeaderSync(f, inflateRawSync);
    const els = head.elements.filter((e) => e.value && !e.items).map((e) => ({ tag: e.tag, vr: e.vr, value: e.value! }));
    const rle = encodePart10([...els, encapsulatedPixelData([Buffer.alloc(0), Buffer.alloc(64)])], { ts: 'explicitLE', meta: { transferSyntaxUid: '1.2.840.10008.1.2.5', sopClassUid: '1.2.840.10008.5.1.4.1.1.4', sopInstanceUid: `${ph.series}.999` } });
    await assert.rejects(deidentifyPart10Buffer(rle, engine(), { admit: (attr) => admitPixels(attr, DEFAULT_PIXEL_POLICY, () => verdict) }),
      (e: unknown) => e instanceof GatewayError && e.code === 'PIXELS_WITHHELD' && e.auditReason === 'pixels-withheld:compressed');
  });

  test('the cut streams at any chunk size with the same bytes, and writes into its input only when told it may', async () => {
    const verdict = await decide(ph);
    assert.equal(verdict.kind, 'deface');
    if (verdict.kind !== 'deface') return;
    const inst = readInstanceSync(ph.files[30]!.bytes, inflateRawSync);
    const facts = readPixelFacts(part10View(inst.elements));
    const whole = faceCutTransformer(facts, verdict.planes, true)(inst.pixel!);
    const copy = Buffer.from(inst.pixel!);
    for (const size of [1, 7, 4096]) {
      const t = faceCutTransformer(facts, verdict.planes, true);
      const parts: Buffer[] = [];
      for (let i = 0; i < copy.length; i += size) parts.push(t(copy.subarray(i, i + size)));
      assert.deepEqual(Buffer.concat(parts), whole);
    }
    assert.deepEqual(copy, inst.pixel!, 'input unchanged');
    // In place (the caller's buffers): the same bytes, written into the chunks it is given.
    assert.notDeepEqual(whole, copy, 'the slice cuts something');
    const t = faceCutTransformer(facts, verdict.planes, true, true);
    for (let i = 0; i < copy.length; i += 4096) {
      const chunk = copy.subarray(i, i + 4096);
      assert.equal(t(chunk), chunk, 'the chunk itself is answered');
    }
    assert.deepEqual(copy, whole, 'in place, the input holds the cut');
    // The spans agree with a per-pixel test of the planes.
    const g = facts.geometry[0]!;
    const s = rowSpans(verdict.planes, g, facts.rows, facts.columns);
    for (let r = 0; r < facts.rows; r += 7) for (let c = 0; c < facts.columns; c += 5) {
      const p = [0, 1, 2].map((k) => g.position[k]! + g.rowDir[k]! * c * g.colSpacing + g.colDir[k]! * r * g.rowSpacing);
      const removed: boolean = verdict.planes.every((pl) => pl.n[0] * p[0]! + pl.n[1] * p[1]! + pl.n[2] * p[2]! < pl.d);
      assert.equal(c >= s.from[r]! && c < s.to[r]!, removed, `row ${r} column ${c}`);
    }
  });

  test('geometry from DICOM JSON equals geometry from Part 10 (the metadata the provider reads)', () => {
    const inst = readInstanceSync(ph.files[3]!.bytes, inflateRawSync);
    const fromPart10 = readPixelFacts(part10View(inst.elements));
    const json: Record<string, unknown> = {
      '00080060': { vr: 'CS', Value: ['MR'] }, '00280010': { vr: 'US', Value: [fromPart10.rows] }, '00280011': { vr: 'US', Value: [fromPart10.columns] },
      '00280100': { vr: 'US', Value: [16] }, '00280101': { vr: 'US', Value: [16] }, '00280002': { vr: 'US', Value: [1] },
      '00200032': { vr: 'DS', Value: [...fromPart10.geometry[0]!.position] }, '00200037': { vr: 'DS', Value: [...fromPart10.geometry[0]!.rowDir, ...fromPart10.geometry[0]!.colDir] },
      '00280030': { vr: 'DS', Value: [fromPart10.geometry[0]!.rowSpacing, fromPart10.geometry[0]!.colSpacing] },
    };
    const fromJson = readPixelFacts(jsonView(json));
    assert.deepEqual(fromJson.geometry, fromPart10.geometry);
  });
});
