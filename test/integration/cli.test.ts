/**
 * The command line, as hospital IT runs it (contract: check-config, deid). Runs the real
 * entry point in a child process.
 */
import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { existsSync, mkdirSync, mkdtempSync, readFileSync, readdirSync, rmSync, statSync, writeFileSync, copyFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { inflateRawSync } from 'node:zlib';
import { findCanaries, fixtures } from '../helpers/fixtures.js';
import { readInstanceSync } from '../../src/dicom/part10.js';
import { checkDefaced, makeHeadPhantom } from '../fixtures/head-phantom.js';
import { makeTextPhantom } from '../fixtures/text-phantom.js';
import { encapsulatedPixelData, encodeDataset, encodePart10, type El } from '../helpers/dicom-builder.js';
import { nativeInstance } from '../../src/pixels/codec.js';

const ENTRY = new URL('../../src/cli/main.ts', import.meta.url).pathname;
const HASH = '5e884898da28047151d0e56f8dc6292773603d0d6aabbdd62a11ef721d1542d8';

function run(args: string[]): { status: number | null; stdout: string; stderr: string } {
  const r = spawnSync(process.execPath, ['--import', 'tsx', ENTRY, ...args], { encoding: 'utf8', cwd: new URL('../..', import.meta.url).pathname });
  return { status: r.status, stdout: r.stdout, stderr: r.stderr };
}

/** `client` and `top`: extra YAML under every client (e.g. `    pixels: …\n`) and at the top level. */
function config(dir: string, clients = ['vendor-a'], extra: { client?: string; top?: string } = {}): string {
  const p = join(dir, 'gateway.yaml');
  writeFileSync(p, `server: {host: 127.0.0.1, port: 8080}
upstream: {url: "http://127.0.0.1:8042/dicom-web"}
state: {dir: ./state}
clients:
${clients.map((id, i) => `  - id: ${id}\n    apiKeySha256: "${i}${HASH.slice(1)}"\n${extra.client ?? ''}`).join('')}${extra.top ?? ''}`);
  return p;
}

function files(dir: string): string[] {
  return readdirSync(dir).flatMap((n) => {
    const p = join(dir, n);
    return statSync(p).isDirectory() ? files(p) : [p];
  });
}

describe('deid-gateway command line', async () => {
  const fx = await fixtures();

  test('check-config: 0 and a summary for a valid file; 2 naming the key for an invalid one', () => {
    const dir = mkdtempSync(join(tmpdir(), 'deid-cli-'));
    const ok = run(['check-config', '--config', config(dir)]);
    assert.equal(ok.status, 0, ok.stderr);
    assert.match(ok.stdout, /valid; 1 client\(s\)\n {2}vendor-a: options \[\], plan sha256:[0-9a-f]{16}; scope: the whole PACS/);
    // A scoped client and an opt-out file: summarized by counts and names, never by list contents.
    writeFileSync(join(dir, 'opt.yaml'), 'patients: [{id: MRN-SECRET-9}]\n');
    const scoped = join(dir, 'scoped.yaml');
    writeFileSync(scoped, `${readFileSync(config(dir), 'utf8')}    scope: {studies: [1.2.3], modalities: [CT], validUntil: 2027-01-01}\n    limits: {requestsPerMinute: 60}\noptOut: {file: ./opt.yaml}\n`);
    const s = run(['check-config', '--config', scoped]);
    assert.equal(s.status, 0, s.stderr);
    assert.match(s.stdout, /scope: allow-list 1 inline; modalities CT; access … to 2027-01-01T00:00:00\.000Z; limits 60\/min/);
    assert.match(s.stdout, /opt-out: 0 patient\(s\) inline \+ .*opt\.yaml/);
    assert.ok(!s.stdout.includes('MRN-SECRET-9'), 'list contents are not printed');
    writeFileSync(join(dir, 'opt.yaml'), 'patients: [{id: }]\n');
    const broken = run(['check-config', '--config', scoped]);
    assert.equal(broken.status, 2);
    assert.match(broken.stderr, /optOut\.file: .*opt\.yaml: patients\[0\]\.id: expected string/);
    const bad = join(dir, 'bad.yaml');
    writeFileSync(bad, readFileSync(config(dir), 'utf8').replace('port: 8080', 'port: 8080, hots: x'));
    const r = run(['check-config', '--config', bad]);
    assert.equal(r.status, 2);
    assert.match(r.stderr, /server: unknown key "hots"; remove it or check the spelling/);
    assert.equal(run(['check-config']).status, 2);
    assert.equal(run(['frobnicate']).status, 2);
  });

  test('deid: every fixture de-identified into study/series/instance files, no canary in files or output', () => {
    const dir = mkdtempSync(join(tmpdir(), 'deid-cli-'));
    const out = join(dir, 'out');
    // Risky pixels (the burned-in ultrasound…) explicitly allowed: this test is about headers.
    const cfgAllow = config(dir, ['vendor-a'], { client: '    pixels: {risky: allow}\n' });
    const r = run(['deid', '--config', cfgAllow, '--client', 'vendor-a', fx.dir, '--out', out]);
    assert.equal(r.status, 0, r.stderr);
    const written = files(out);
    assert.equal(written.length, fx.files.length);
    for (const p of written) assert.match(p.slice(out.length), /^\/2\.25\.\d+\/2\.25\.\d+\/2\.25\.\d+\.dcm$/);
    assert.match(r.stderr, new RegExp(`${fx.files.length} de-identified, 0 refused, 1 skipped`)); // manifest.json
    const leaks = [...written.flatMap((p) => findCanaries(readFileSync(p), fx.manifest)), ...findCanaries(Buffer.from(r.stdout + r.stderr), fx.manifest)];
    assert.deepEqual(leaks, []);
    // The master secret was created 0600 and reused: a second run gives the same names.
    assert.equal(statSync(join(dir, 'state', 'master.key')).mode & 0o777, 0o600);
    const again = run(['deid', '--config', cfgAllow, '--client', 'vendor-a', fx.dir, '--out', join(dir, 'out2')]);
    assert.deepEqual(files(join(dir, 'out2')).map((p) => p.slice(dir.length + 5)).sort(), written.map((p) => p.slice(dir.length + 4)).sort());
    assert.equal(again.status, 0);
  });

  test('deid: an export is audited in state.dir/exports, read by audit query and verify; outside the access window nothing is written and the refusal is audited', () => {
    const dir = mkdtempSync(join(tmpdir(), 'deid-cli-'));
    const out = join(dir, 'out');
    const cfg = config(dir, ['vendor-a'], { client: '    pixels: {risky: allow}\n' });
    const r = run(['deid', '--config', cfg, '--client', 'vendor-a', fx.dir, '--out', out]);
    assert.equal(r.status, 0, r.stderr);
    const written = files(out);
    const studies = new Set(written.map((p) => p.slice(out.length + 1).split('/')[0]));
    const q = run(['audit', 'query', '--config', cfg, '--format', 'json']);
    assert.equal(q.status, 0, q.stderr);
    const reqs = q.stdout.split('\n').filter(Boolean).map((l) => JSON.parse(l) as Record<string, unknown>);
    assert.equal(reqs.length, written.length, 'one request record per file exported');
    assert.ok(reqs.every((x) => x.route === 'cli-deid' && x.client === 'vendor-a' && x.method === 'CLI' && x.outcome === 'ok' && x.instances === 1 && x.studies === 1 && /^cli:/.test(String(x.remote ?? 'cli:'))), 'each names the client, the route and one instance of one study');
    const st = run(['audit', 'query', '--config', cfg, '--type', 'study', '--format', 'json']);
    const srecs = st.stdout.split('\n').filter(Boolean).map((l) => JSON.parse(l) as { pseudonymous: string; patientRef?: string });
    assert.equal(srecs.length, written.length, 'a study record for each file written');
    assert.deepEqual(new Set(srecs.map((x) => x.pseudonymous)), studies, 'with its study\'s pseudonymous UID');
    assert.ok(srecs.every((x) => /^P-[0-9a-f]{24}$/.test(x.patientRef ?? '')), 'patients as keyed references');
    // The trail names original study UIDs by design (it stays in the hospital); nothing else planted.
    assert.deepEqual(findCanaries(Buffer.from(q.stdout + st.stdout), fx.manifest).filter((l) => !/^uids .*StudyInstanceUID\)$/.test(l)), [], 'no planted name, ID, date or text in the audit records');
    const v = run(['audit', 'verify', '--config', cfg]);
    assert.equal(v.status, 0, v.stdout + v.stderr);
    assert.ok(v.stdout.includes(`audit trail intact: ${2 * written.length} record(s) in 1 file(s) in ${join(dir, 'state', 'exports')}`), `the export trail is verified with the main one: ${v.stdout}`);
    // Removing the export trail's files does not make it vanish: its head still names its end.
    const exportLog = join(dir, 'state', 'exports', 'audit.log');
    const kept = readFileSync(exportLog);
    rmSync(exportLog);
    const gone = run(['audit', 'verify', '--config', cfg]);
    assert.equal(gone.status, 1, gone.stdout);
    assert.match(gone.stdout, /TAMPERED: .*removed from the end/);
    writeFileSync(exportLog, kept);
    // An export lock left behind is named, never taken over.
    writeFileSync(join(dir, 'state', 'exports', '.lock'), '999999');
    const locked = run(['deid', '--config', cfg, '--client', 'vendor-a', fx.dir, '--out', join(dir, 'out3')]);
    assert.equal(locked.status, 2);
    assert.match(locked.stderr, /\.lock is left by an export that is no longer running \(pid 999999\); remove it/);
    assert.ok(!existsSync(join(dir, 'out3')), 'nothing exported without its audit');
    // Outside the access window: refused before anything is read or written, and recorded.
    const late = join(dir, 'late');
    mkdirSync(late);
    const cfgLate = config(late, ['vendor-a'], { client: '    scope: {validUntil: 2020-01-01}\n' });
    const refused = run(['deid', '--config', cfgLate, '--client', 'vendor-a', fx.dir, '--out', join(late, 'out')]);
    assert.equal(refused.status, 1, refused.stderr);
    assert.match(refused.stderr, /ACCESS_WINDOW_CLOSED/);
    assert.ok(!existsSync(join(late, 'out')), 'nothing written');
    const denied = run(['audit', 'query', '--config', cfgLate, '--outcome', 'denied', '--format', 'json']);
    const d = denied.stdout.split('\n').filter(Boolean).map((l) => JSON.parse(l) as Record<string, unknown>);
    assert.deepEqual(d.map((x) => [x.route, x.reason]), [['cli-deid', 'access-window:expired']]);
  });

  test('deid: a malformed file is refused with its reason, exit 1, and nothing half-written is left', () => {
    const dir = mkdtempSync(join(tmpdir(), 'deid-cli-'));
    const src = fx.files.find((f) => f.meta.kind === 'ct')!;
    const truncated = join(dir, 'truncated.dcm');
    writeFileSync(truncated, src.bytes.subarray(0, 900));
    const good = join(dir, 'good.dcm');
    copyFileSync(src.path, good);
    const out = join(dir, 'out');
    const r = run(['deid', '--config', config(dir), '--client', 'vendor-a', truncated, good, '--out', out]);
    assert.equal(r.status, 1);
    assert.match(r.stderr, /refused: .*truncated\.dcm: DICOM_TRUNCATED: object ends inside/);
    assert.match(r.stderr, /1 de-identified, 1 refused/);
    const left = files(out);
    assert.equal(left.length, 1);
    assert.ok(!left.some((p) => p.endsWith('.part')), '!left.some((p) => p.endsWith(\'.part\'))');
  });

  test('deid admits inputs as the gateway does: risky pixels withheld by default, masked under a rule; an opted-out patient refused', () => {
    const dir = mkdtempSync(join(tmpdir(), 'deid-cli-'));
    const us = fx.files.find((f) => f.meta.kind === 'us-rgb-burned-in')!;
    const ct = fx.files.find((f) => f.meta.kind === 'ct')!;
    const band = fx.manifest.burnedIn;
    // Withheld by default: refused with the reason (no value of the file), nothing written, exit 1.
    const out = join(dir, 'out');
    const w = run(['deid', '--config', config(dir), '--client', 'vendor-a', us.path, ct.path, '--out', out]);
    assert.equal(w.status, 1, w.stderr);
    assert.match(w.stderr, /refused: .*\.dcm: PIXELS_WITHHELD: this instance is withheld by policy \(Burned In Annotation is not NO\)/);
    assert.match(w.stderr, /1 de-identified, 1 refused/);
    assert.equal(files(out).length, 1, 'only the CT is written');
    // A mask rule for the device and size: written masked, band zeroed, every other byte kept.
    const width = band.cols[1] - band.cols[0], height = band.rows[1] - band.rows[0];
    const maskCfg = config(dir, ['vendor-a'], { client: `    pixels: {risky: mask, masks: [{match: {manufacturer: ACME Ultrasound, model: Model 7, rows: 48, columns: 64}, regions: [{x: ${band.cols[0]}, y: ${band.rows[0]}, width: ${width}, height: ${height}}]}]}\n` });
    const m = run(['deid', '--config', maskCfg, '--client', 'vendor-a', us.path, '--out', join(dir, 'masked')]);
    assert.equal(m.status, 0, m.stderr);
    assert.match(m.stdout, /-> .*\.dcm \(pixels masked\)/);
    const [written] = files(join(dir, 'masked'));
    const before = readInstanceSync(us.bytes, inflateRawSync);
    const after = readInstanceSync(readFileSync(written!), inflateRawSync);
    const cols = 64;
    let changed = 0;
    for (let i = 0; i < before.pixel!.length; i++) {
      const p = Math.floor(i / 3), x = p % cols, y = Math.floor(p / cols);
      const inBand = x >= band.cols[0] && x < band.cols[1] && y >= band.rows[0] && y < band.rows[1];
      if (inBand) assert.equal(after.pixel![i], 0, `band byte ${i} is zeroed`);
      else if (after.pixel![i] !== before.pixel![i]) changed++;
    }
    assert.equal(changed, 0, 'no byte outside the band changed');
    assert.equal(after.elements.find((e) => e.tag === 0x00280301)?.value?.toString('latin1').trim(), 'NO');
    assert.ok(readFileSync(written!).includes('113101'), 'Clean Pixel Data in the method code sequence');
    // An opted-out patient is refused as out of scope, with the reason and without the ID.
    const ctHeader = readInstanceSync(ct.bytes, inflateRawSync);
    const patientId = ctHeader.elements.find((e) => e.tag === 0x00100020)!.value!.toString('latin1').replace(/[\0 ]+$/, '');
    const optCfg = config(dir, ['vendor-a'], { top: `optOut: {patients: [{id: "${patientId}"}]}\n` });
    const o = run(['deid', '--config', optCfg, '--client', 'vendor-a', ct.path, '--out', join(dir, 'opted')]);
    assert.equal(o.status, 1, o.stderr);
    assert.match(o.stderr, /refused: .*\.dcm: outside client vendor-a's scope \(opted-out\)/);
    assert.ok(!(o.stdout + o.stderr).includes(patientId), 'the patient ID is not printed');
    assert.ok(!existsSync(join(dir, 'opted')) || files(join(dir, 'opted')).length === 0, 'nothing written for the opted-out patient');
  });

  test('deid defaces head series (grouped by series, decided once into state.dir), releases a head with no face bit-exact, and honours faces: withhold', () => {
    const dir = mkdtempSync(join(tmpdir(), 'deid-cli-faces-'));
    const inDir = join(dir, 'in');
    mkdirSync(inDir);
    const head = makeHeadPhantom({ modality: 'CT', orientation: 'axial', rows: 90, columns: 80, pixelMm: 2.5, slices: 70, sliceMm: 3, uidRoot: '1.2.826.0.1.3680043.9.7433.11.700' });
    const vault = makeHeadPhantom({ modality: 'CT', orientation: 'axial', rows: 90, columns: 80, pixelMm: 2.5, slices: 25, sliceMm: 3, fromZ: 25, uidRoot: '1.2.826.0.1.3680043.9.7433.11.701' });
    for (const ph of [head, vault]) for (const f of ph.files) writeFileSync(join(inDir, `${f.sop}.dcm`), f.bytes);
    const r = run(['deid', '--config', config(dir), '--client', 'vendor-a', inDir, '--out', join(dir, 'out')]);
    assert.equal(r.status, 0, r.stderr);
    assert.equal((`${r.stdout}${r.stderr}`.match(/\(face removed\)/g) ?? []).length, head.files.length, 'every file of the head series is defaced');
    const out = files(join(dir, 'out')).map((p) => readInstanceSync(readFileSync(p), inflateRawSync));
    const instanceNo = (i: ReturnType<typeof readInstanceSync>): number => Number(i.elements.find((e) => e.tag === 0x00200013)!.value!.toString('latin1').trim());
    assert.equal(out.length, head.files.length + vault.files.length);
    // Defaced: the phantom's face gone, its brain bit-exact (frames in slice order by Instance Number).
    const headOut = out.filter((i) => i.elements.some((e) => e.tag === 0x00280302 && e.value!.toString('latin1').trim() === 'NO'));
    assert.equal(headOut.length, head.files.length);
    const frames = [...headOut].sort((a, b) => instanceNo(a) - instanceNo(b)).map((i) => new Uint16Array(i.pixel!.buffer.slice(i.pixel!.byteOffset, i.pixel!.byteOffset + i.pixel!.length)));
    const c = checkDefaced(head, frames);
    assert.ok(c.removedOk > 200 && c.removedBad === 0, `face voxels left: ${c.removedBad} ${JSON.stringify(c.left)}`);
    assert.ok(c.brainOk > 500 && c.brainBad === 0, `brain voxels changed: ${c.brainBad}`);
    // The head with no face in view: every pixel as it came.
    const vaultPixels = new Set(vault.files.map((f) => readInstanceSync(f.bytes, inflateRawSync).pixel!.toString('base64')));
    assert.equal(out.filter((i) => vaultPixels.has(i.pixel!.toString('base64'))).length, vault.files.length);
    assert.ok(existsSync(join(dir, 'state', 'faces.sqlite')), 'decisions stored with the gateway\'s state');
    // faces: withhold refuses the head's files with their reason, and writes the others.
    const strict = mkdtempSync(join(tmpdir(), 'deid-cli-faces-'));
    const w = run(['deid', '--config', config(strict, ['vendor-a'], { client: '    pixels: {faces: withhold}\n' }), '--client', 'vendor-a', inDir, '--out', join(strict, 'out')]);
    assert.equal(w.status, 1);
    assert.equal((w.stderr.match(/refused: .*PIXELS_WITHHELD: .*face/g) ?? []).length, head.files.length, w.stderr.slice(0, 500));
    assert.equal(files(join(strict, 'out')).length, vault.files.length);
  });

  const sharedHeads = new URL('../../../shared/corpus/heads/', import.meta.url).pathname;
  const faceCheck = new URL('../../../shared/tools/face-check', import.meta.url).pathname;
  test('cross-check: deid defaces the real heads of ../shared/corpus/heads so that face-check passes', { skip: !(existsSync(sharedHeads) && existsSync(faceCheck)) && 'no ../shared beside the checkout' }, () => {
    const dir = mkdtempSync(join(tmpdir(), 'deid-cli-heads-'));
    for (const h of readdirSync(sharedHeads)) {
      const out = join(dir, h);
      const r = run(['deid', '--config', config(dir), '--client', 'vendor-a', join(sharedHeads, h), '--out', out]);
      assert.equal(r.status, 0, r.stderr.slice(-500));
      const c = spawnSync('/usr/bin/python3', [faceCheck, join(sharedHeads, h), out], { encoding: 'utf8' });
      assert.equal(c.status, 0, `${h}: ${c.stdout}${c.stderr}`);
    }
  });

  test('deid under risky: detect: burned-in text masked (RLE decoded in-process), a clean image bit-exact, a screen refused; --diff lists the regions, --preview draws them, the audit names the boxes', () => {
    const dir = mkdtempSync(join(tmpdir(), 'deid-cli-text-'));
    const inDir = join(dir, 'in');
    mkdirSync(inDir);
    const us = makeTextPhantom({ rows: 200, columns: 300, photometric: 'PALETTE COLOR', rle: true, frames: 5, uidRoot: '1.2.826.0.1.3680043.9.7433.12.700', texts: [{ x: 6, y: 6, text: 'CARDIO LAB 3', scale: 2, color: 255 }, { x: 180, y: 180, text: 'DOE JOHN', scale: 1, color: 255, frames: [3] }] });
    const clean = makeTextPhantom({ rows: 120, columns: 160, photometric: 'RGB', texts: [], uidRoot: '1.2.826.0.1.3680043.9.7433.12.701' });
    const screen = makeTextPhantom({ rows: 240, columns: 320, photometric: 'RGB', sector: false, uidRoot: '1.2.826.0.1.3680043.9.7433.12.702', texts: Array.from({ length: 14 }, (_, i) => ({ x: 10, y: 8 + i * 16, text: 'PATIENT ID 4821377 NAME DOE', scale: 1, color: 230 })) });
    writeFileSync(join(inDir, 'us.dcm'), us.bytes);
    writeFileSync(join(inDir, 'clean.dcm'), clean.bytes);
    writeFileSync(join(inDir, 'screen.dcm'), screen.bytes);
    const cfg = config(dir, ['vendor-a'], { client: '    pixels: {risky: detect}\n' });
    const r = run(['deid', '--config', cfg, '--client', 'vendor-a', inDir, '--out', join(dir, 'out'), '--diff', '--preview', join(dir, 'preview')]);
    assert.equal(r.status, 1, 'one input refused');
    assert.match(r.stderr, /refused: .*screen\.dcm: PIXELS_WITHHELD: .*mostly text/);
    assert.match(r.stdout, /us\.dcm -> .* \(burned-in text masked: \d+ region\(s\)\)/);
    assert.match(r.stdout, /clean\.dcm -> .* \(no burned-in text found\)/);
    assert.match(r.stdout, /\(7FE0,0010\) PixelData  masked  \d+ text region\(s\), every frame/);
    const written = files(join(dir, 'out')).map((f) => readInstanceSync(readFileSync(f), inflateRawSync));
    assert.equal(written.length, 2);
    const outUs = written.find((i) => i.pixel!.length === 200 * 300 * 5)!;
    assert.equal(outUs.transferSyntax.uid, '1.2.840.10008.1.2.1', 'decoded and written natively');
    // Every glyph of every frame is inside a masked (changed) box: its pixels differ from the original.
    const original = readInstanceSync(nativeInstance(us.bytes, inflateRawSync), inflateRawSync).pixel!;
    for (const [f, boxes] of us.glyphs.entries()) {
      for (const g of boxes) {
        let same = 0;
        for (let y = g.y; y < g.y + g.height; y++) for (let x = g.x; x < g.x + g.width; x++) { const i = f * 60000 + y * 300 + x; if (outUs.pixel![i] === original[i]) same++; }
        assert.ok(same < 0.2 * g.width * g.height, `frame ${f}: glyph at ${g.x},${g.y} destroyed`);
      }
    }
    const outClean = written.find((i) => i.pixel!.length === 120 * 160 * 3)!;
    assert.deepEqual(outClean.pixel, readInstanceSync(clean.bytes, inflateRawSync).pixel, 'no text: bit-exact');
    const pngs = readdirSync(join(dir, 'preview'));
    assert.equal(pngs.length, 2, 'a preview per examined file');
    assert.ok(readFileSync(join(dir, 'preview', pngs[0]!)).subarray(1, 4).toString() === 'PNG');
    const q = run(['audit', 'query', '--config', cfg, '--format', 'json']);
    const recs = q.stdout.trim().split('\n').map((l) => JSON.parse(l) as Record<string, unknown>);
    assert.ok(recs.some((x) => typeof x.textRegions === 'number' && (x.textRegions as number) > 0 && Array.isArray(x.textBoxes)), 'the audit records the boxes');
    assert.ok(recs.some((x) => JSON.stringify(x.withheldBy ?? {}).includes('pixels-withheld:mostly-text')));
  });

  test('a dose screen stored as an RGB CT that says Burned In Annotation NO is checked anyway: withheld by default when text is found, masked under detect, released when clean', () => {
    const dir = mkdtempSync(join(tmpdir(), 'deid-cli-screen-'));
    const inDir = join(dir, 'in');
    mkdirSync(inDir);
    const dose = makeTextPhantom({ rows: 240, columns: 320, photometric: 'RGB', modality: 'CT', burnedInAnnotation: 'NO', uidRoot: '1.2.826.0.1.3680043.9.7433.16.80', texts: [{ x: 10, y: 10, text: 'DOSE REPORT 12/03/2026', scale: 2, color: 230 }, { x: 10, y: 40, text: 'STUDY ID 48213', scale: 2, color: 230 }] });
    const blank = makeTextPhantom({ rows: 240, columns: 320, photometric: 'RGB', modality: 'CT', burnedInAnnotation: 'NO', uidRoot: '1.2.826.0.1.3680043.9.7433.16.81', texts: [] });
    writeFileSync(join(inDir, 'dose.dcm'), dose.bytes);
    writeFileSync(join(inDir, 'blank.dcm'), blank.bytes);
    mkdirSync(join(dir, 's'));
    mkdirSync(join(dir, 'd'));
    const strict = run(['deid', '--config', config(join(dir, 's'), ['vendor-a'], { client: '    pixels: {faces: allow}\n' }), '--client', 'vendor-a', inDir, '--out', join(dir, 's', 'out')]);
    assert.equal(strict.status, 1, strict.stderr);
    assert.match(strict.stderr, /refused: .*dose\.dcm: PIXELS_WITHHELD: .*text was found on this screen-like image/);
    assert.equal(files(join(dir, 's', 'out')).length, 1, 'the clean one is written');
    const detect = run(['deid', '--config', config(join(dir, 'd'), ['vendor-a'], { client: '    pixels: {faces: allow, risky: detect}\n' }), '--client', 'vendor-a', inDir, '--out', join(dir, 'd', 'out')]);
    assert.equal(detect.status, 0, detect.stderr);
    assert.match(detect.stdout, /dose\.dcm -> .*\(burned-in text masked: \d+ region\(s\)\)/);
  });

  const sharedText = new URL('../../../shared/corpus/burned-in/', import.meta.url).pathname;
  const textCheck = new URL('../../../shared/tools/text-check', import.meta.url).pathname;
  test('cross-check: deid masks the real ultrasounds of ../shared/corpus/burned-in so that text-check passes, and refuses the screen', { skip: !(existsSync(sharedText) && existsSync(textCheck)) && 'no ../shared beside the checkout' }, () => {
    const dir = mkdtempSync(join(tmpdir(), 'deid-cli-burned-'));
    const cfg = config(dir, ['vendor-a'], { client: '    pixels: {risky: detect}\n' });
    for (const name of readdirSync(sharedText).sort()) {
      const out = join(dir, name);
      const r = run(['deid', '--config', cfg, '--client', 'vendor-a', join(sharedText, name), '--out', out]);
      if (name.startsWith('screen')) {
        assert.equal(r.status, 1);
        assert.match(r.stderr, /mostly text/);
        continue;
      }
      assert.equal(r.status, 0, `${name}: ${r.stderr.slice(-400)}`);
      const c = spawnSync('/usr/bin/python3', [textCheck, join(sharedText, name), files(out)[0]!], { encoding: 'utf8' });
      assert.equal(c.status, 0, `${name}: ${c.stdout}${c.stderr}`);
    }
  });

  test('deid: an unknown client is a usage error naming the configured ones', () => {
    const dir = mkdtempSync(join(tmpdir(), 'deid-cli-'));
    const r = run(['deid', '--config', config(dir), '--client', 'nobody', fx.dir, '--out', join(dir, 'o')]);
    assert.equal(r.status, 2);
    assert.match(r.stderr, /--client "nobody" is not configured; configured: vendor-a/);
  });

  test('deid --diff: attribute-by-attribute changes with rules, and no value printed', () => {
    const dir = mkdtempSync(join(tmpdir(), 'deid-cli-'));
    const sr = fx.files.find((f) => f.meta.kind === 'sr')!;
    const r = run(['deid', '--config', config(dir), '--client', 'vendor-a', sr.path, '--out', join(dir, 'o'), '--diff']);
    assert.equal(r.status, 0, r.stderr);
    assert.match(r.stdout, /\(0010,0010\) PatientName\s+replaced\s+E\.1-1 basic Z: keyed pseudonym/);
    assert.match(r.stdout, /\(0010,0030\) PatientBirthDate\s+emptied\s+E\.1-1 basic Z/);
    assert.match(r.stdout, /\(0012,0062\) PatientIdentityRemoved\s+added/);
    assert.match(r.stdout, /\(0040,A730\) ContentSequence\s+cleaned inside\s+E\.1-1 basic D/);
    assert.deepEqual(findCanaries(Buffer.from(r.stdout + r.stderr), fx.manifest), []);
  });

  test('deid --diff under Clean Descriptors: a cleaned text is shown as it leaves, its redactions marked; the client\'s own words kept', () => {
    const dir = mkdtempSync(join(tmpdir(), 'deid-cli-text-'));
    const file = join(dir, 'in.dcm');
    writeFileSync(file, encodePart10([
      { tag: 0x00080016, vr: 'UI', value: '1.2.840.10008.5.1.4.1.1.2' }, { tag: 0x00080018, vr: 'UI', value: '1.2.826.0.1.3680043.9.7433.13.1.3' },
      { tag: 0x00080060, vr: 'CS', value: 'CT' }, { tag: 0x00081030, vr: 'LO', value: 'MRI BRAIN W/WO - hx per Dr. Feldman' },
      { tag: 0x0008103e, vr: 'LO', value: 'Ax T2 FLAIR Lakeside (repeat, Jonathan moved)' },
      { tag: 0x00100010, vr: 'PN', value: 'Doe^Jane' }, { tag: 0x0020000d, vr: 'UI', value: '1.2.826.0.1.3680043.9.7433.13.1.1' },
      { tag: 0x0020000e, vr: 'UI', value: '1.2.826.0.1.3680043.9.7433.13.1.2' },
    ], { ts: 'explicitLE' }));
    const cfg = config(dir, ['vendor-a'], { client: '    profile: {options: [cleanDescriptors], freeText: {keep: [lakeside], remove: [flair]}}\n' });
    const r = run(['deid', '--config', cfg, '--client', 'vendor-a', file, '--out', join(dir, 'o'), '--diff']);
    assert.equal(r.status, 0, r.stderr);
    assert.match(r.stdout, /\(0008,1030\) StudyDescription\s+cleaned\s+.*\n\s+leaves as "MRI BRAIN W\/WO - hx per Dr\. \[REDACTED\]" \(1 redaction\)/);
    assert.match(r.stdout, /leaves as "Ax T2 \[REDACTED\] Lakeside \(repeat, \[REDACTED\] moved\)" \(2 redactions\)/, 'the client keeps "Lakeside" and removes "FLAIR"');
    assert.ok(!/Feldman|Jonathan/.test(r.stdout + r.stderr), 'no original value printed');
  });

  test('deid loses nothing: a second input with a SOP Instance UID already exported is refused with its reason, inputs with none are all written, a DICOMDIR is refused', () => {
    const dir = mkdtempSync(join(tmpdir(), 'deid-cli-names-'));
    const inDir = join(dir, 'in');
    mkdirSync(inDir);
    const ct = (sop: string | undefined, comment: string): Buffer => encodePart10([
      { tag: 0x00080016, vr: 'UI', value: '1.2.840.10008.5.1.4.1.1.2' }, ...(sop ? [{ tag: 0x00080018, vr: 'UI', value: sop }] : []),
      { tag: 0x00080060, vr: 'CS', value: 'CT' }, { tag: 0x00204000, vr: 'LT', value: comment },
      { tag: 0x0020000d, vr: 'UI', value: '1.2.826.0.1.3680043.9.7433.16.1' }, { tag: 0x0020000e, vr: 'UI', value: '1.2.826.0.1.3680043.9.7433.16.2' },
    ], { ts: 'explicitLE', meta: { sopInstanceUid: sop ?? '1.2.826.0.1.3680043.9.7433.16.99' } });
    writeFileSync(join(inDir, 'a.dcm'), ct('1.2.826.0.1.3680043.9.7433.16.3', 'first'));
    writeFileSync(join(inDir, 'b.dcm'), ct('1.2.826.0.1.3680043.9.7433.16.3', 'second'));
    writeFileSync(join(inDir, 'c.dcm'), ct(undefined, 'third'));
    writeFileSync(join(inDir, 'd.dcm'), ct(undefined, 'fourth'));
    const dicomdir = encodePart10([{ tag: 0x00041130, vr: 'CS', value: 'FILESET' }], { ts: 'explicitLE', meta: { sopClassUid: '1.2.840.10008.1.3.10', sopInstanceUid: '1.2.826.0.1.3680043.9.7433.16.98' } });
    writeFileSync(join(inDir, 'DICOMDIR'), dicomdir);
    // A DICOMDIR whose records cannot be read (cut short, as pydicom's DICOMDIR-nooffset) is still known by its File Meta.
    const records = Buffer.from([0x04, 0x00, 0x20, 0x12, 0x53, 0x51, 0, 0, 0xff, 0xff, 0xff, 0xff, 0xfe, 0xff, 0x00, 0xe0, 0xff, 0xff, 0xff, 0xff, 0x04, 0x00, 0x30, 0x14, 0x43, 0x53, 0x06, 0x00]);
    writeFileSync(join(inDir, 'DICOMDIR-cut'), Buffer.concat([dicomdir, records, Buffer.from('IMA')]));
    const r = run(['deid', '--config', config(dir), '--client', 'vendor-a', inDir, '--out', join(dir, 'out')]);
    assert.equal(r.status, 1, 'the DICOMDIRs and the duplicate are refused');
    assert.match(r.stderr, /refused: .*DICOMDIR: DICOM_DIRECTORY: a DICOMDIR \(media storage directory\) is not exported/);
    assert.match(r.stderr, /refused: .*DICOMDIR-cut: DICOM_DIRECTORY: /);
    assert.match(r.stderr, /refused: .*b\.dcm: DICOM_DUPLICATE: an earlier input \(.*a\.dcm\) has the same SOP Instance UID/);
    assert.match(r.stderr, /3 de-identified, 3 refused/);
    const out = files(join(dir, 'out'));
    assert.equal(out.length, 3, `a.dcm and both inputs without a SOP Instance UID written: ${out.join(', ')}`);
    assert.ok(out.some((f) => /unknown-2\.dcm$/.test(f)), 'the second input without a SOP Instance UID is numbered');
    for (const f of out) assert.ok(readInstanceSync(readFileSync(f), inflateRawSync).elements.length > 0, `${f} is a readable instance`);
  });

  test('deid reads the real-world framings DCMTK and pydicom read: no preamble, no File Meta (little or big endian), zero padding after the data set, a JPEG 2000 icon', () => {
    const dir = mkdtempSync(join(tmpdir(), 'deid-cli-framing-'));
    const inDir = join(dir, 'in');
    mkdirSync(inDir);
    const uid = (n: number): string => `1.2.826.0.1.3680043.9.7433.16.7${n}`;
    const els = (n: number): El[] => [
      { tag: 0x00080016, vr: 'UI', value: '1.2.840.10008.5.1.4.1.1.7' }, { tag: 0x00080018, vr: 'UI', value: uid(n) },
      { tag: 0x00080060, vr: 'CS', value: 'OT' }, { tag: 0x00100010, vr: 'PN', value: 'Doe^Jane' },
      { tag: 0x0020000d, vr: 'UI', value: uid(8) }, { tag: 0x0020000e, vr: 'UI', value: uid(9) },
    ];
    const whole = encodePart10(els(0), { ts: 'explicitLE', meta: { sopInstanceUid: uid(0) } });
    writeFileSync(join(inDir, 'nopreamble.dcm'), whole.subarray(128));
    writeFileSync(join(inDir, 'bare-implicit.dcm'), encodeDataset(els(1), 'implicitLE'));
    writeFileSync(join(inDir, 'bare-explicit.dcm'), encodeDataset(els(2), 'explicitLE'));
    writeFileSync(join(inDir, 'bare-big-endian'), encodeDataset(els(5), 'explicitBE')); // no .dcm: found by its first element
    writeFileSync(join(inDir, 'padded.dcm'), Buffer.concat([encodePart10(els(3), { ts: 'explicitLE', meta: { sopInstanceUid: uid(3) } }), Buffer.alloc(20)]));
    const icon: El = { tag: 0x00880200, vr: 'SQ', value: [[
      { tag: 0x00280002, vr: 'US', value: [1] }, { tag: 0x00280004, vr: 'CS', value: 'MONOCHROME2' }, { tag: 0x00280010, vr: 'US', value: [2] }, { tag: 0x00280011, vr: 'US', value: [2] },
      { tag: 0x00280100, vr: 'US', value: [8] }, encapsulatedPixelData([Buffer.from([0xff, 0x4f, 0xff, 0x51, 0, 0])]),
    ]] };
    writeFileSync(join(inDir, 'icon-j2k.dcm'), encodePart10([...els(4), icon, encapsulatedPixelData([Buffer.from([0xff, 0x4f, 0xff, 0x51, 0, 0])])].sort((x, y) => x.tag - y.tag), { ts: 'explicitLE', meta: { sopInstanceUid: uid(4), transferSyntaxUid: '1.2.840.10008.1.2.4.90' } }));
    const cfg = config(dir, ['vendor-a'], { client: '    pixels: {risky: allow}\n' });
    const r = run(['deid', '--config', cfg, '--client', 'vendor-a', inDir, '--out', join(dir, 'out')]);
    assert.equal(r.status, 0, r.stderr);
    assert.match(r.stderr, /6 de-identified, 0 refused, 0 skipped/);
    for (const f of files(join(dir, 'out'))) {
      const inst = readInstanceSync(readFileSync(f), inflateRawSync);
      const v = new Map(inst.elements.map((e) => [e.tag, e]));
      assert.ok(!v.has(0x00880200), 'no icon leaves');
      assert.ok(!readFileSync(f).includes(Buffer.from('Doe^Jane')), 'the name is gone');
    }
  });

  test('deid reads each file into a buffer given back once its output is written: a file after a larger one comes out as it does alone', () => {
    const dir = mkdtempSync(join(tmpdir(), 'deid-cli-'));
    const cfg = config(dir, ['vendor-a'], { client: '    pixels: {risky: allow}\n' });
    // The largest, the smallest and the second largest DICOM files of the fixture set, in that
    // order, two at a time: the second and third are read into buffers the others gave back.
    const dicom = files(fx.dir).filter((f) => { const b = readFileSync(f); return b.length > 132 && b.toString('latin1', 128, 132) === 'DICM'; })
      .sort((a, b) => statSync(b).size - statSync(a).size);
    assert.ok(dicom.length >= 3);
    const picked = [dicom[0]!, dicom.at(-1)!, dicom[1]!];
    const seq = join(dir, 'seq-in');
    mkdirSync(seq);
    picked.forEach((f, i) => copyFileSync(f, join(seq, `${i}.dcm`)));
    const hashes = (out: string): string[] => files(out).map((f) => createHash('sha256').update(readFileSync(f)).digest('hex')).sort();
    const together = run(['deid', '--config', cfg, '--client', 'vendor-a', '--jobs', '2', seq, '--out', join(dir, 'together')]);
    assert.equal(together.status, 0, together.stderr);
    const alone: string[] = [];
    picked.forEach((_, i) => {
      const r = run(['deid', '--config', cfg, '--client', 'vendor-a', join(seq, `${i}.dcm`), '--out', join(dir, `alone-${i}`)]);
      assert.equal(r.status, 0, r.stderr);
      alone.push(...hashes(join(dir, `alone-${i}`)));
    });
    assert.equal(alone.length, 3);
    assert.deepEqual(hashes(join(dir, 'together')), alone.sort(), 'the same bytes, together and alone');
  });

  test('deid --jobs: files processed at once give the same files and the same lines, in input order; a bad --jobs is a usage error', () => {
    const dir = mkdtempSync(join(tmpdir(), 'deid-cli-'));
    const cfg = config(dir, ['vendor-a'], { client: '    pixels: {risky: allow}\n' });
    const one = run(['deid', '--config', cfg, '--client', 'vendor-a', '--jobs', '1', fx.dir, '--out', join(dir, 'one')]);
    const many = run(['deid', '--config', cfg, '--client', 'vendor-a', '--jobs', '8', fx.dir, '--out', join(dir, 'many')]);
    assert.equal(one.status, many.status, one.stderr + many.stderr);
    const lines = (s: string, out: string): string[] => s.split('\n').filter(Boolean).map((l) => l.replace(out, 'OUT'));
    assert.ok(lines(one.stdout, 'one').length > 3, 'files were written');
    assert.deepEqual(lines(many.stdout, 'many'), lines(one.stdout, 'one'), 'the same lines in the same (input) order');
    assert.deepEqual(lines(many.stderr, 'many').slice(0, -1), lines(one.stderr, 'one').slice(0, -1), 'the same refusals in the same order');
    const a = files(join(dir, 'one')).map((p) => p.slice(join(dir, 'one').length)).sort();
    const b = files(join(dir, 'many')).map((p) => p.slice(join(dir, 'many').length)).sort();
    assert.deepEqual(b, a, 'the same files');
    for (const p of a) assert.ok(readFileSync(join(dir, 'one', p)).equals(readFileSync(join(dir, 'many', p))), `${p}: the same bytes`);
    assert.ok(!files(join(dir, 'many')).some((p) => p.endsWith('.part')), 'no temporary file left');
    for (const bad of ['0', '65', '2.5', 'x']) {
      const r = run(['deid', '--config', cfg, '--client', 'vendor-a', '--jobs', bad, fx.dir, '--out', join(dir, 'bad')]);
      assert.equal(r.status, 2, `--jobs ${bad}`);
      assert.match(r.stderr, /--jobs N takes a whole number from 1 to 64/);
    }
  });

  test('two clients get different pseudonyms for the same study', () => {
    const dir = mkdtempSync(join(tmpdir(), 'deid-cli-'));
    const cfg = config(dir, ['vendor-a', 'vendor-b']);
    const f = fx.files[0]!.path;
    run(['deid', '--config', cfg, '--client', 'vendor-a', f, '--out', join(dir, 'a')]);
    run(['deid', '--config', cfg, '--client', 'vendor-b', f, '--out', join(dir, 'b')]);
    const a = files(join(dir, 'a'))[0]!.slice(dir.length + 2);
    const b = files(join(dir, 'b'))[0]!.slice(dir.length + 2);
    assert.ok(existsSync(join(dir, 'a', a)) && a !== b, 'existsSync(join(dir, \'a\', a)) && a !== b');
  });

  test('serve: logs "listening on", SIGTERM drains and exits 0 with the audit flushed; invalid config exits 2', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'deid-cli-'));
    const cfg = config(dir).replace('gateway.yaml', 'serve.yaml');
    writeFileSync(cfg, readFileSync(config(dir), 'utf8').replace('port: 8080', 'port: 0').replace('8042', '9'));
    const child = (await import('node:child_process')).spawn(process.execPath, ['--import', 'tsx', ENTRY, 'serve', '--config', cfg], { stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    child.stdout.on('data', (d) => { out += String(d); });
    child.stderr.on('data', (d) => { out += String(d); });
    const url = await new Promise<string>((resolve, reject) => {
      const t = setTimeout(() => reject(new Error(`no listening line: ${out.slice(0, 300)}`)), 20_000);
      const check = (): void => { const m = /listening on (http:\/\/[0-9.]+:\d+)/.exec(out); if (m) { clearTimeout(t); resolve(m[1]!); } };
      child.stdout.on('data', check);
      child.stderr.on('data', check);
    });
    const health = await fetch(`${url}/healthz`);
    assert.equal(health.status, 200);
    const ready = await fetch(`${url}/readyz`);
    assert.equal(ready.status, 503, 'the upstream on port 9 is unreachable');
    assert.equal((await fetch(`${url}/dicom-web/studies`)).status, 401);
    const code = await new Promise<number | null>((resolve) => { child.on('exit', (c) => resolve(c)); child.kill('SIGTERM'); });
    assert.equal(code, 0);
    const audit = readFileSync(join(dir, 'state', 'audit.log'), 'utf8').trim().split('\n').map((l) => JSON.parse(l) as { type: string; status: number });
    assert.deepEqual(audit.map((a) => [a.type, a.status]), [['request', 401]], 'one record for the one DICOMweb request (probes are not audited), on disk before exit');
    const bad = join(dir, 'bad.yaml');
    writeFileSync(bad, 'server: {host: 127.0.0.1}\n');
    const r = run(['serve', '--config', bad]);
    assert.equal(r.status, 2);
    assert.match(r.stderr, /server\.port: required; add it/);
  });
});
