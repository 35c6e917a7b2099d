/**
 * Checks the test-only Part 10 encoder (test/helpers/dicom-builder.ts) byte for byte,
 * then generates the fixture set and has two independent parsers (DCMTK's dcmdump and
 * dcmjs) read every file and agree with the manifest.
 */
import { test, before, after, describe } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { createRequire } from 'node:module';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { inflateRawSync } from 'node:zlib';
import {
  encodeDataset, encodePart10, encapsulatedPixelData, TS_UID, type El,
} from '../../helpers/dicom-builder.js';
import { encodeIso2022Ir87, generateCtSeries, generateFixtures, type Manifest } from '../../fixtures/generate.js';

// dcmjs ships no type declarations; load it untyped through require.
const require = createRequire(import.meta.url);
const dcmjs = require('dcmjs') as any; // eslint-disable-line @typescript-eslint/no-explicit-any
dcmjs.log.setLevel('silent');
dcmjs.log.getLogger('validation.dcmjs').setLevel('silent');

const hex = (b: Buffer): string => b.toString('hex');
const hasDcmdump = spawnSync('dcmdump', ['--version']).status === 0;
const hasDciodvfy = spawnSync('sh', ['-c', 'command -v dciodvfy']).status === 0;

function dcmdump(args: string[]): { status: number | null; out: string; err: string } {
  const r = spawnSync('dcmdump', args, { encoding: 'latin1' });
  return { status: r.status, out: r.stdout, err: r.stderr };
}

// ---------------------------------------------------------------------------
// Encoder, byte for byte (PS3.5 7.1, 7.5, 6.2)

describe('dicom-builder encoding', () => {
  test('explicit VR LE: 2-byte length for short VRs, 00 00 + 4-byte length for OB/SQ/UN/UT... (PS3.5 7.1.2)', () => {
    assert.equal(hex(encodeDataset([{ tag: 0x00280010, vr: 'US', value: [512] }], 'explicitLE')), '28001000' + '5553' + '0200' + '0002');
    assert.equal(hex(encodeDataset([{ tag: 0x00291010, vr: 'OB', value: Buffer.from([1, 2, 3]) }], 'explicitLE')),
      '29001010' + '4f42' + '0000' + '04000000' + '01020300');
    assert.equal(hex(encodeDataset([{ tag: 0x0040a160, vr: 'UT', value: 'abc' }], 'explicitLE')),
      '400060a1' + '5554' + '0000' + '04000000' + '61626320');
  });

  test('implicit VR LE: tag + 4-byte length, no VR (PS3.5 7.1.3)', () => {
    assert.equal(hex(encodeDataset([{ tag: 0x00100010, vr: 'PN', value: 'Doe^J' }], 'implicitLE')),
      '10001000' + '06000000' + Buffer.from('Doe^J ').toString('hex'));
  });

  test('explicit VR BE swaps tag, length and numeric values; Buffer values are given little-endian (PS3.5 7.3)', () => {
    assert.equal(hex(encodeDataset([{ tag: 0x00280010, vr: 'US', value: [512] }], 'explicitBE')), '00280010' + '5553' + '0002' + '0200');
    assert.equal(hex(encodeDataset([{ tag: 0x7fe00010, vr: 'OW', value: Buffer.from([0x01, 0x02, 0x03, 0x04]) }], 'explicitBE')),
      '7fe00010' + '4f57' + '0000' + '00000004' + '02010403');
    assert.equal(hex(encodeDataset([{ tag: 0x00209165, vr: 'AT', value: [0x00100020] }], 'explicitBE')), '00209165' + '4154' + '0004' + '00100020');
    assert.equal(hex(encodeDataset([{ tag: 0x00181150, vr: 'FD', value: [1] }], 'explicitBE')).slice(-16), '3ff0000000000000');
  });

  test('padding: text with SPACE, UI with NUL, OB with NUL; multiple values joined with "\\" (PS3.5 6.2, 6.4)', () => {
    assert.equal(encodeDataset([{ tag: 0x00080060, vr: 'CS', value: 'CTX' }], 'explicitLE').subarray(8).toString('latin1'), 'CTX ');
    assert.equal(hex(encodeDataset([{ tag: 0x00080018, vr: 'UI', value: '1.2.3' }], 'explicitLE').subarray(8)), Buffer.from('1.2.3\0').toString('hex'));
    assert.equal(encodeDataset([{ tag: 0x00080008, vr: 'CS', value: ['DERIVED', 'SECONDARY'] }], 'explicitLE').subarray(8).toString('latin1'), 'DERIVED\\SECONDARY ');
    assert.equal(encodeDataset([{ tag: 0x00280030, vr: 'DS', value: [0.5, 0.25] }], 'explicitLE').subarray(8).toString('latin1'), '0.5\\0.25');
  });

  test('SQ with defined and undefined lengths, items with defined and undefined lengths (PS3.5 7.5)', () => {
    const inner: El = { tag: 0x00081155, vr: 'UI', value: '1.2' }; // 8 + 4 bytes
    const defined = encodeDataset([{ tag: 0x00081110, vr: 'SQ', value: [[inner]] }], 'explicitLE');
    assert.equal(hex(defined), '08001011' + '5351' + '0000' + '14000000' + 'feff00e0' + '0c000000' + '08005511' + '5549' + '0400' + '312e3200');
    const undef = encodeDataset([{ tag: 0x00081110, vr: 'SQ', undefinedLength: true, value: [{ elements: [inner], undefinedLength: true }] }], 'explicitLE');
    assert.equal(hex(undef), '08001011' + '5351' + '0000' + 'ffffffff' + 'feff00e0' + 'ffffffff' + '08005511' + '5549' + '0400' + '312e3200'
      + 'feff0de0' + '00000000' + 'feffdde0' + '00000000');
    const empty = encodeDataset([{ tag: 0x00081110, vr: 'SQ', value: [] }], 'explicitLE');
    assert.equal(hex(empty), '08001011' + '5351' + '0000' + '00000000');
  });

  test('encodeAsUN: VR UN, 4-byte length, original value in LE; a UN sequence is Implicit VR LE inside (PS3.5 6.2.2)', () => {
    assert.equal(hex(encodeDataset([{ tag: 0x00102180, vr: 'SH', value: 'ABC', encodeAsUN: true }], 'explicitLE')),
      '10008021' + '554e' + '0000' + '04000000' + '41424320');
    const un = encodeDataset([{ tag: 0x00081110, vr: 'SQ', encodeAsUN: true, undefinedLength: true, value: [[{ tag: 0x00081155, vr: 'UI', value: '1.2' }]] }], 'explicitLE');
    assert.equal(hex(un), '08001011' + '554e' + '0000' + 'ffffffff' + 'feff00e0' + '0c000000' + '08005511' + '04000000' + '312e3200' + 'feffdde0' + '00000000');
  });

  test('group length (gggg,0000) without value is computed; elements are sorted unless sortElements is false (PS3.5 7.2, 7.1)', () => {
    const els: El[] = [
      { tag: 0x00080060, vr: 'CS', value: 'CT' }, // 10 bytes
      { tag: 0x00080000, vr: 'UL' },
      { tag: 0x00080016, vr: 'UI', value: '1.2' }, // 12 bytes
      { tag: 0x00100010, vr: 'PN', value: 'X' },
    ];
    const b = encodeDataset(els, 'explicitLE');
    assert.equal(hex(b.subarray(0, 12)), '08000000' + '554c' + '0400' + '16000000');
    assert.equal(b.readUInt16LE(12 + 2), 0x0016);
    const unsorted = encodeDataset(els, 'explicitLE', { sortElements: false });
    assert.equal(unsorted.readUInt16LE(2), 0x0060);
  });

  test('encapsulatedPixelData: empty Basic Offset Table item, one item per fragment, sequence delimiter (PS3.5 A.4)', () => {
    const b = encodeDataset([encapsulatedPixelData([Buffer.from([1, 2, 3])])], 'explicitLE');
    assert.equal(hex(b), 'e07f1000' + '4f42' + '0000' + 'ffffffff' + 'feff00e0' + '00000000' + 'feff00e0' + '04000000' + '01020300' + 'feffdde0' + '00000000');
  });

  test('Part 10: preamble, DICM, explicit LE meta with correct group length; deflated data set is raw deflate (PS3.10 7.1, PS3.5 A.5)', () => {
    const els: El[] = [
      { tag: 0x00080016, vr: 'UI', value: '1.2.840.10008.5.1.4.1.1.7' },
      { tag: 0x00080018, vr: 'UI', value: '1.2.3.4' },
      { tag: 0x00100010, vr: 'PN', value: 'Doe^Jane' },
    ];
    for (const ts of ['explicitLE', 'implicitLE', 'explicitBE', 'deflatedLE'] as const) {
      const preamble = Buffer.alloc(128, 0x41);
      const f = encodePart10(els, { ts, preamble, meta: { sourceAET: 'AET1' } });
      assert.ok(f.subarray(0, 128).equals(preamble), 'f.subarray(0, 128).equals(preamble)');
      assert.equal(f.subarray(128, 132).toString('latin1'), 'DICM');
      assert.equal(hex(f.subarray(132, 140)), '02000000' + '554c' + '0400');
      const metaEnd = 144 + f.readUInt32LE(140);
      const meta = f.subarray(144, metaEnd).toString('latin1');
      assert.ok(meta.includes(TS_UID[ts]), 'meta.includes(TS_UID[ts])');
      assert.ok(meta.includes('AET1'), 'meta.includes(\'AET1\')');
      const body = f.subarray(metaEnd);
      const expected = encodeDataset(els, ts === 'deflatedLE' ? 'explicitLE' : ts);
      if (ts === 'deflatedLE') {
        assert.equal(body.length % 2, 0);
        assert.ok(inflateRawSync(body).equals(expected), 'inflateRawSync(body).equals(expected)');
      } else {
        assert.ok(body.equals(expected), 'body.equals(expected)');
      }
    }
  });

  test('ISO 2022 IR 87: ESC $ B before JIS X 0208, ESC ( B before delimiters and at the end (PS3.5 6.1.2.5.3, Annex H)', () => {
    const pn = 'Yamada^Tarou=山田^太郎=やまだ^たろう';
    const b = encodeIso2022Ir87(pn);
    // "Yamada^Tarou=" is 13 ASCII bytes, then ESC $ B, 山 (JIS 0x3B33), 田 (JIS 0x4544).
    assert.equal(hex(b.subarray(13, 20)), '1b2442' + '3b33' + '4544');
    assert.ok(b.includes(Buffer.from('1b2842' + '5e' + '1b2442', 'hex'))); // back to ASCII before "^", then kanji again
    assert.equal(hex(b.subarray(-3)), '1b2842');
    assert.equal(new TextDecoder('iso-2022-jp').decode(b), pn);
  });
});

// ---------------------------------------------------------------------------
// Generated fixtures, read by DCMTK and dcmjs

describe('generated fixtures', () => {
  let dir = '';
  let manifest: Manifest;
  const path = (f: string): string => join(dir, f);
  const byKind = (kind: string): Manifest['files'][number] => {
    const f = manifest.files.find((x) => x.kind === kind);
    assert.ok(f, `no file of kind ${kind}`);
    return f;
  };

  before(async () => {
    dir = await mkdtemp(join(tmpdir(), 'deid-fixtures-'));
    manifest = await generateFixtures(dir, { seed: 7433 });
  });
  after(async () => {
    if (dir) await rm(dir, { recursive: true, force: true });
  });

  test('manifest on disk equals the returned manifest; generation is deterministic for a seed', async () => {
    const onDisk = JSON.parse(await readFile(path('manifest.json'), 'utf8')) as Manifest;
    assert.deepEqual(onDisk, manifest);
    const dir2 = await mkdtemp(join(tmpdir(), 'deid-fixtures-'));
    try {
      const m2 = await generateFixtures(dir2, { seed: 7433 });
      assert.deepEqual(m2, manifest);
      for (const f of manifest.files) {
        assert.ok((await readFile(join(dir2, f.file))).equals(await readFile(path(f.file))), `${f.file} differs between runs`);
      }
    } finally {
      await rm(dir2, { recursive: true, force: true });
    }
  });

  test('contents: kinds, transfer syntaxes, patients (one with two studies on different dates)', () => {
    const kinds = new Set(manifest.files.map((f) => f.kind));
    for (const k of ['ct', 'ct-implicit', 'mr-undefined-length', 'mr-big-endian', 'mr-deflated', 'iso2022-jp', 'utf8', 'us-rgb-burned-in', 'sr', 'sc', 'kitchen-sink', 'rle-encapsulated']) {
      assert.ok(kinds.has(k), `missing kind ${k}`);
    }
    assert.equal(manifest.files.filter((f) => f.kind === 'ct' || f.kind === 'ct-implicit').length, 6);
    assert.ok(manifest.patients.length >= 3, 'manifest.patients.length >= 3');
    const multi = manifest.patients.find((p) => p.studies.length >= 2);
    assert.ok(multi, 'multi');
    const dates = new Set(manifest.files.filter((f) => multi.studies.includes(f.study)).map((f) => f.studyDate));
    assert.ok(dates.size >= 2, 'studies of one patient must be on different dates');
    for (const t of Object.keys(manifest.canaries.strings)) assert.match(t, /^ZQ[A-Z0-9]{8}$/);
    for (const u of Object.keys(manifest.canaries.uids)) assert.ok(u.startsWith('1.2.826.0.1.3680043.9.7433.') && u.length <= 64, 'u.startsWith(\'1.2.826.0.1.3680043.9.7433.\') && u.length <= 64');
    for (const d of Object.keys(manifest.canaries.dates)) assert.match(d, /^19\d{2}(0[1-9]|1[0-2])(0[1-9]|1\d|2[0-8])$/);
  });

  test('every canary string, date and UID in the manifest is planted in some file', async () => {
    const blobs: string[] = [];
    for (const f of manifest.files) blobs.push(plainBytes(await readFile(path(f.file)), f.ts).toString('latin1'));
    const all = blobs.join('\n');
    const missing = [
      ...Object.keys(manifest.canaries.strings),
      ...Object.keys(manifest.canaries.dates),
      ...Object.keys(manifest.canaries.uids),
    ].filter((c) => !all.includes(c));
    assert.deepEqual(missing, []);
  });

  test('every file parses with dcmdump -q (exit 0, no E: lines)', { skip: !hasDcmdump && 'dcmdump not on PATH' }, () => {
    for (const f of manifest.files) {
      const r = dcmdump(['-q', path(f.file)]);
      assert.equal(r.status, 0, `${f.file}: ${r.err}`);
      assert.doesNotMatch(r.out + r.err, /^E:/m, f.file);
    }
  });

  test('dciodvfy finds no IOD errors except in the kitchen sink (deliberately invalid) and the deflated file (unsupported by dciodvfy)', { skip: !hasDciodvfy && 'dciodvfy not on PATH' }, () => {
    for (const f of manifest.files) {
      if (f.kind === 'kitchen-sink' || f.ts === 'deflatedLE') continue;
      const r = spawnSync('dciodvfy', [path(f.file)], { encoding: 'latin1' });
      const errors = (r.stdout + r.stderr).split('\n').filter((l) => /\bError\b/.test(l));
      assert.deepEqual(errors, [], f.file);
    }
  });

  test('every file parses with dcmjs (ISO 2022 multi-charset needs ignoreErrors: dcmjs limitation)', async () => {
    for (const f of manifest.files) {
      const b = await readFile(path(f.file));
      const ab = b.buffer.slice(b.byteOffset, b.byteOffset + b.length);
      const d = dcmjs.data.DicomMessage.readFile(ab, f.kind === 'iso2022-jp' ? { ignoreErrors: true } : undefined);
      const ds = dcmjs.data.DicomMetaDictionary.naturalizeDataset(d.dict);
      assert.equal(ds.SOPInstanceUID, f.sop, f.file);
      assert.equal(ds.StudyInstanceUID, f.study, f.file);
      assert.equal(d.meta['00020010'].Value[0], f.transferSyntaxUid, f.file);
    }
  });

  test('dcmdump decodes PatientName in explicit, implicit, big endian, deflated, undefined-length and UTF-8 files', { skip: !hasDcmdump && 'dcmdump not on PATH' }, () => {
    for (const kind of ['ct', 'ct-implicit', 'mr-undefined-length', 'mr-big-endian', 'mr-deflated', 'utf8', 'sr', 'kitchen-sink']) {
      const f = byKind(kind);
      const p = manifest.patients.find((x) => x.studies.includes(f.study));
      assert.ok(p, kind);
      const r = spawnSync('dcmdump', ['+U8', '+P', '0010,0010', path(f.file)], { encoding: 'utf8' });
      assert.equal(r.status, 0, r.stderr);
      const top = r.stdout.split('\n').find((l) => l.startsWith('(0010,0010)'));
      assert.ok(top, `${kind}: ${r.stdout}`);
      assert.ok(top.includes(`[${p.name}]`), `${kind}: ${top} vs ${p.name}`);
    }
  });

  test('big endian: numbers and OW pixel words are swapped correctly', { skip: !hasDcmdump && 'dcmdump not on PATH' }, () => {
    const be = dcmdump([path(byKind('mr-big-endian').file)]).out;
    assert.match(be, /Used TransferSyntax: Big Endian Explicit/);
    assert.match(be, /^\(0028,0010\) US 32 /m);
    // phantom16 pixel (0,0) of slice 1 is 24 + 1 = 0x0019.
    assert.match(be, /^\(7fe0,0010\) OW 0019\\/m);
  });

  test('undefined-length file really uses undefined lengths for every sequence and item', { skip: !hasDcmdump && 'dcmdump not on PATH' }, () => {
    const out = dcmdump([path(byKind('mr-undefined-length').file)]).out;
    const seqs = out.split('\n').filter((l) => / SQ \(Sequence/.test(l));
    assert.ok(seqs.length >= 5, 'seqs.length >= 5');
    for (const l of seqs) assert.match(l, /undefined length/, l);
    for (const l of out.split('\n').filter((x) => /\(fffe,e000\)/.test(x))) assert.match(l, /undefined length/, l);
  });

  test('ISO 2022 IR 87 PatientName: three component groups, escape sequences decode back to the original', async () => {
    const f = byKind('iso2022-jp');
    const p = manifest.patients.find((x) => x.studies.includes(f.study));
    assert.ok(p, 'p');
    assert.equal(f.charset, '\\ISO 2022 IR 87');
    const raw = await readFile(path(f.file));
    const at = raw.indexOf(Buffer.from([0x10, 0x00, 0x10, 0x00, 0x50, 0x4e])); // (0010,0010) "PN", explicit VR LE
    assert.ok(at > 0, 'at > 0');
    const len = raw.readUInt16LE(at + 6);
    const value = raw.subarray(at + 8, at + 8 + len);
    assert.ok(value.includes(Buffer.from([0x1b, 0x24, 0x42])), 'value.includes(Buffer.from([0x1b, 0x24, 0x42]))');
    assert.equal(new TextDecoder('iso-2022-jp').decode(value).replace(/ +$/, ''), p.name);
    assert.equal(p.name.split('=').length, 3);
    const d = dcmjs.data.DicomMessage.readFile(raw.buffer.slice(raw.byteOffset, raw.byteOffset + raw.length), { ignoreErrors: true });
    const ds = dcmjs.data.DicomMetaDictionary.naturalizeDataset(d.dict);
    assert.equal(ds.PatientName[0].Alphabetic, p.name.split('=')[0]);
  });

  test('ultrasound burned-in band: band pixels have the recorded colour, nothing else does', async () => {
    const f = manifest.files.find((x) => x.sop === manifest.burnedIn.sop);
    assert.ok(f, 'f');
    const b = await readFile(path(f.file));
    const ds = dcmjs.data.DicomMetaDictionary.naturalizeDataset(dcmjs.data.DicomMessage.readFile(b.buffer.slice(b.byteOffset, b.byteOffset + b.length)).dict);
    assert.equal(ds.PhotometricInterpretation, 'RGB');
    assert.equal(ds.BurnedInAnnotation, 'YES');
    const px = Buffer.from(ds.PixelData[0] as ArrayBuffer);
    const { rows: [r0, r1], cols: [c0, c1], rgb } = manifest.burnedIn;
    for (let y = 0; y < ds.Rows; y++) {
      for (let x = 0; x < ds.Columns; x++) {
        const o = (y * ds.Columns + x) * 3;
        const same = px[o] === rgb[0] && px[o + 1] === rgb[1] && px[o + 2] === rgb[2];
        assert.equal(same, y >= r0 && y < r1 && x >= c0 && x < c1, `pixel ${y},${x}`);
      }
    }
  });

  test('kitchen sink: every planted row is where the manifest says', { skip: !hasDcmdump && 'dcmdump not on PATH' }, () => {
    const f = byKind('kitchen-sink');
    const out = dcmdump(['+L', '-q', path(f.file)]).out;
    const lines = out.split('\n');
    const topLevel = new Map<string, string>();
    for (const l of lines) {
      const m = /^\(([0-9a-f]{4}),([0-9a-f]{4})\) (\w\w) (.*)$/.exec(l);
      if (m) topLevel.set(`(${m[1]},${m[2]})`.toUpperCase(), `${m[3]} ${m[4]}`);
    }
    let checked = 0;
    for (const [key, planted] of Object.entries(manifest.rows)) {
      if (!/^\([0-9A-F]{4},[0-9A-F]{4}\)$/.test(key) || key.startsWith('(0002,')) {
        assert.ok(out.includes(planted) || out.includes(toHex(planted)) || out.includes(toHexWords(planted)), `${key} ${planted}`);
        continue;
      }
      const line = topLevel.get(key);
      assert.ok(line, `row ${key} missing at top level`);
      if (/^(OB|UN|OW) /.test(line)) assert.ok(line.includes(toHex(planted)), `${key}: ${line}`);
      else if (line.startsWith('SQ ')) assert.ok(out.includes(planted) || out.includes(toHex(planted)), `${key} item canary`);
      else assert.ok(line.includes(planted), `${key}: ${line} lacks ${planted}`);
      checked++;
    }
    assert.ok(checked > 600, `only ${checked} rows checked`);
    assert.match(topLevel.get('(0010,2180)') ?? '', /^UN /, 'Occupation is encoded as UN');
    assert.match(topLevel.get('(0022,FFF0)') ?? '', /^LO /, 'unknown public tag present');
    assert.match(out, /^\(0033,0010\) LO \[ACME_PHI 1\.0\]/m);
    assert.match(out, /^\(0033,1010\) LO \[ZQ/m);
    // Trailing elements really follow Pixel Data.
    const order = lines.filter((l) => /^\((7fe0,0010|fffa,fffa|fffc,fffc)\)/.test(l)).map((l) => l.slice(1, 10));
    assert.deepEqual(order, ['7fe0,0010', 'fffa,fffa', 'fffc,fffc']);
  });

  test('kitchen sink: preamble and file meta Source AE Title carry canaries', async () => {
    const f = byKind('kitchen-sink');
    const b = await readFile(path(f.file));
    const pre = b.subarray(0, 128).toString('latin1');
    const metaEnd = 144 + b.readUInt32LE(140);
    const meta = b.subarray(132, metaEnd).toString('latin1');
    const where = (t: string): string => manifest.canaries.strings[t] ?? '';
    assert.ok(Object.keys(manifest.canaries.strings).some((t) => pre.includes(t) && where(t).includes('preamble')), 'Object.keys(manifest.canaries.strings).some((t) => pre.includes(t) && where(t).includes(\'preamble\'))');
    assert.ok(Object.keys(manifest.canaries.strings).some((t) => meta.includes(t) && where(t).includes('(0002,0016)')), 'Object.keys(manifest.canaries.strings).some((t) => meta.includes(t) && where(t).includes(\'(0002,0016)\'))');
  });

  test('CT: private blocks (unsafe creator, safe creator, orphan) and group length are present', { skip: !hasDcmdump && 'dcmdump not on PATH' }, () => {
    const out = dcmdump([path('ct-s1-i1.dcm')]).out;
    assert.match(out, /^\(0008,0000\) UL \d+/m);
    assert.match(out, /^\(0029,0010\) LO \[ACME_PHI 1\.0\]/m);
    assert.match(out, /^\(0029,1013\) SQ/m);
    assert.match(out, /^\(0031,1010\) LO \[ZQ/m);
    const sp = manifest.safePrivate;
    const line = (tag: string): string => out.split('\n').find((l) => l.startsWith(tag.toLowerCase())) ?? '';
    assert.ok(line(sp.creatorTag).includes(`LO [${sp.creator}]`), line(sp.creatorTag));
    assert.ok(line(sp.tag).includes(`${sp.vr} [${sp.value}]`), line(sp.tag));
    assert.match(out, /^\(0008,002a\) DT \[\d{14}\.\d{6}\+0100\]/m);
    const implicit = dcmdump([path('ct-s2-i1.dcm')]).out;
    assert.match(implicit, /Used TransferSyntax: Little Endian Implicit/);
  });

  test('RLE file: encapsulated pixel data with an empty offset table', { skip: !hasDcmdump && 'dcmdump not on PATH' }, () => {
    const out = dcmdump([path(byKind('rle-encapsulated').file)]).out;
    assert.match(out, /RLELossless/);
    assert.match(out, /\(7fe0,0010\) OB \(PixelSequence #=2\)/);
    assert.match(out, /\(fffe,e000\) pi \(no value available\)/);
  });

  test('generateCtSeries writes parseable CT instances', { skip: !hasDcmdump && 'dcmdump not on PATH' }, async () => {
    const ctDir = await mkdtemp(join(tmpdir(), 'deid-ct-'));
    try {
      const files = await generateCtSeries(ctDir, 3, { rows: 64, cols: 64, seed: 1 });
      assert.equal(files.length, 3);
      for (const file of files) {
        const r = dcmdump(['-q', file]);
        assert.equal(r.status, 0, r.err);
        assert.match(r.out, /^\(0029,0010\) LO \[SIEMENS CSA HEADER\]/m);
        assert.match(r.out, /^\(0028,0010\) US 64/m);
      }
    } finally {
      await rm(ctDir, { recursive: true, force: true });
    }
  });
});

/** Returns the file with a deflated data set inflated, so byte scans see every value. */
function plainBytes(file: Buffer, ts: string): Buffer {
  if (ts !== 'deflatedLE') return file;
  const metaEnd = 144 + file.readUInt32LE(140);
  return Buffer.concat([file.subarray(0, metaEnd), inflateRawSync(file.subarray(metaEnd))]);
}

/** dcmdump's rendering of OB bytes: lowercase hex joined with "\". */
function toHex(s: string): string {
  return [...Buffer.from(s, 'latin1')].map((b) => b.toString(16).padStart(2, '0')).join('\\');
}

/** dcmdump's rendering of OW data: 16-bit little-endian words as 4 hex digits joined with "\". */
function toHexWords(s: string): string {
  const b = Buffer.from(s.length % 2 ? s + '\0' : s, 'latin1');
  const words: string[] = [];
  for (let i = 0; i < b.length; i += 2) words.push(b.readUInt16LE(i).toString(16).padStart(4, '0'));
  return words.join('\\');
}
