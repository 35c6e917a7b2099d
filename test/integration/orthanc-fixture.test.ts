/**
 * The Orthanc fixture (test/helpers/orthanc.ts): a real Orthanc 1.10 + DICOMweb 1.7 starts on
 * loopback, stores the generated fixtures and answers QIDO-RS, metadata and WADO-RS with
 * plain fetch. It also pins the upstream behaviours that the gateway is designed around
 * (../shared/docs/FIELD-NOTES.md): if a new Orthanc changes them, these tests say so.
 * Finally, a test process that dies without stop() leaves no Orthanc behind.
 */
import { describe, test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { existsSync, rmSync } from 'node:fs';
import { request } from 'node:http';
import { fileURLToPath } from 'node:url';
import { dcmjsRead, fixtures, type FixtureSet } from '../helpers/fixtures.js';
import { ORTHANC_BIN, startOrthanc, type OrthancHandle } from '../helpers/orthanc.js';

type DicomJson = Record<string, { vr: string; Value?: unknown[]; BulkDataURI?: string; InlineBinary?: string }>;

const ROOT = fileURLToPath(new URL('../../', import.meta.url));
const HELPER_URL = new URL('../helpers/orthanc.ts', import.meta.url).href;

const str = (ds: DicomJson | undefined, tag: string): string | undefined => {
  const v = ds?.[tag]?.Value?.[0];
  return typeof v === 'string' ? v : undefined;
};

/** Splits a multipart/related body into parts (headers and bytes). */
function multipartParts(body: Buffer, contentType: string): { headers: Record<string, string>; body: Buffer }[] {
  const m = /boundary="?([^";]+)"?/i.exec(contentType);
  assert.ok(m, `a boundary in ${contentType}`);
  const delim = Buffer.from(`--${m[1]}`);
  const parts: { headers: Record<string, string>; body: Buffer }[] = [];
  let pos = body.indexOf(delim);
  assert.ok(pos >= 0, 'the body contains the boundary');
  for (;;) {
    const start = pos + delim.length;
    if (body.subarray(start, start + 2).toString('latin1') === '--') break; // close delimiter
    const headEnd = body.indexOf('\r\n\r\n', start);
    assert.ok(headEnd > 0, 'part headers end');
    const headers: Record<string, string> = {};
    for (const line of body.subarray(start, headEnd).toString('latin1').split('\r\n')) {
      const i = line.indexOf(':');
      if (i > 0) headers[line.slice(0, i).trim().toLowerCase()] = line.slice(i + 1).trim();
    }
    const next = body.indexOf(Buffer.concat([Buffer.from('\r\n'), delim]), headEnd + 4);
    assert.ok(next > 0, 'a part is followed by a delimiter');
    parts.push({ headers, body: body.subarray(headEnd + 4, next) });
    pos = next + 2;
  }
  return parts;
}

/** GET with full control of Host (fetch always sends one). */
function rawGet(url: string, headers: Record<string, string>, sendHost: boolean): Promise<{ status: number; body: string }> {
  const u = new URL(url);
  return new Promise((resolve, reject) => {
    const req = request({ host: u.hostname, port: u.port, path: u.pathname + u.search, headers, setHost: sendHost }, (res) => {
      let body = '';
      res.setEncoding('utf8');
      res.on('data', (d: string) => { body += d; });
      res.on('end', () => resolve({ status: res.statusCode ?? 0, body }));
    });
    req.on('error', reject);
    req.end();
  });
}

describe('Orthanc as a test fixture', { skip: existsSync(ORTHANC_BIN) ? false : `${ORTHANC_BIN} is not installed (apt-get install orthanc orthanc-dicomweb)` }, () => {
  let orthanc: OrthancHandle;
  let fx: FixtureSet;
  let ids: string[];
  const studies = (): string[] => [...new Set(fx.files.map((f) => f.meta.study))];

  before(async () => {
    fx = await fixtures();
    orthanc = await startOrthanc();
    ids = await orthanc.upload(fx.files.map((f) => f.bytes));
  });
  after(async () => {
    await orthanc?.stop();
  });

  test('listens on loopback and stores every fixture', async () => {
    assert.match(orthanc.httpUrl, /^http:\/\/127\.0\.0\.1:\d+$/);
    assert.equal(orthanc.dicomWebUrl, `${orthanc.httpUrl}/dicom-web`);
    assert.equal(ids.length, fx.files.length);
    assert.equal(new Set(ids).size, fx.files.length, 'one Orthanc instance per file');
    const r = await fetch(`${orthanc.httpUrl}/instances`);
    assert.deepEqual(((await r.json()) as string[]).sort(), [...ids].sort());
    const again = await orthanc.upload([fx.files[0]!.path]); // by path; already stored
    assert.equal(again[0], ids[0]);
  });

  test('QIDO-RS /studies: one JSON object per study', async () => {
    const r = await fetch(`${orthanc.dicomWebUrl}/studies`, { headers: { Accept: 'application/dicom+json' } });
    assert.equal(r.status, 200);
    assert.match(r.headers.get('content-type') ?? '', /^application\/dicom\+json/);
    const rows = (await r.json()) as DicomJson[];
    assert.equal(rows.length, studies().length);
    assert.deepEqual(rows.map((row) => str(row, '0020000D')).sort(), studies().sort());
  });

  test('metadata of a study: every instance, with the UIDs of the fixtures', async () => {
    const study = fx.files[0]!.meta.study;
    const r = await fetch(`${orthanc.dicomWebUrl}/studies/${study}/metadata`, { headers: { Accept: 'application/dicom+json' } });
    assert.equal(r.status, 200);
    assert.match(r.headers.get('content-type') ?? '', /^application\/dicom\+json/);
    const items = (await r.json()) as DicomJson[];
    const expected = fx.files.filter((f) => f.meta.study === study).map((f) => f.meta.sop).sort();
    assert.deepEqual(items.map((i) => str(i, '00080018')).sort(), expected);
    for (const i of items) assert.equal(str(i, '0020000D'), study);
  });

  test('WADO-RS retrieve of one instance: a multipart body with the Part 10 object', async () => {
    const f = fx.files[0]!.meta;
    const r = await fetch(`${orthanc.dicomWebUrl}/studies/${f.study}/series/${f.series}/instances/${f.sop}`, {
      headers: { Accept: 'multipart/related; type="application/dicom"' },
    });
    assert.equal(r.status, 200);
    const ct = r.headers.get('content-type') ?? '';
    assert.match(ct, /^multipart\/related/);
    assert.match(ct, /type="application\/dicom"/);
    const parts = multipartParts(Buffer.from(await r.arrayBuffer()), ct);
    assert.equal(parts.length, 1);
    const part = parts[0]!;
    assert.equal(part.headers['content-type'], 'application/dicom');
    assert.equal(part.body.toString('latin1', 128, 132), 'DICM');
    const { dict } = dcmjsRead(part.body);
    assert.equal(str(dict, '00080018'), f.sop);
  });

  test('WADO-RS of a whole study: every instance, one part each', async () => {
    const study = fx.files[0]!.meta.study;
    const r = await fetch(`${orthanc.dicomWebUrl}/studies/${study}`, { headers: { Accept: 'multipart/related; type="application/dicom"' } });
    assert.equal(r.status, 200);
    const parts = multipartParts(Buffer.from(await r.arrayBuffer()), r.headers.get('content-type') ?? '');
    assert.equal(parts.length, fx.files.filter((f) => f.meta.study === study).length);
  });

  describe('upstream behaviours the gateway relies on (FIELD-NOTES.md)', () => {
    const retrieveUrl = (body: string): string => {
      const rows = JSON.parse(body) as DicomJson[];
      const v = str(rows[0], '00081190');
      assert.ok(v, 'RetrieveURL present');
      return v;
    };

    test('RetrieveURL is absolute and built from the request Host; Forwarded overrides it; no Host gives localhost:8042', async (t) => {
      const url = `${orthanc.dicomWebUrl}/studies`;
      const own = retrieveUrl((await rawGet(url, {}, true)).body);
      assert.ok(own.startsWith(`${orthanc.httpUrl}/dicom-web/studies/`), own);
      const spoofed = retrieveUrl((await rawGet(url, { Host: 'evil.example:1234' }, true)).body);
      assert.ok(spoofed.startsWith('http://evil.example:1234/dicom-web/studies/'), spoofed);
      const fwd = retrieveUrl((await rawGet(url, { Forwarded: 'host=fw.example;proto=https' }, true)).body);
      assert.ok(fwd.startsWith('https://fw.example/dicom-web/studies/'), fwd);
      const xf = retrieveUrl((await rawGet(url, { 'X-Forwarded-Host': 'xf.example', 'X-Forwarded-Proto': 'https' }, true)).body);
      assert.ok(xf.startsWith(`${orthanc.httpUrl}/`), `X-Forwarded-* is ignored: ${xf}`);
      const none = retrieveUrl((await rawGet(url, {}, false)).body);
      assert.ok(none.startsWith('http://localhost:8042/dicom-web/studies/'), none);
      t.diagnostic(`RetrieveURL: own Host ${own}; spoofed ${spoofed}; Forwarded ${fwd}; X-Forwarded ${xf}; none ${none}`);
    });

    test('BulkDataURIs are absolute, per attribute, 1-based inside sequences; /bulk/00100010 returns the patient name', async (t) => {
      const k = fx.files.find((f) => f.meta.kind === 'kitchen-sink')!.meta;
      const r = await fetch(`${orthanc.dicomWebUrl}/studies/${k.study}/series/${k.series}/instances/${k.sop}/metadata`);
      const uris: string[] = [];
      const walk = (x: unknown): void => {
        if (Array.isArray(x)) x.forEach(walk);
        else if (x && typeof x === 'object') {
          for (const [key, v] of Object.entries(x)) {
            if (key === 'BulkDataURI') uris.push(String(v));
            else walk(v);
          }
        }
      };
      walk(await r.json());
      const prefix = `${orthanc.httpUrl}/dicom-web/studies/${k.study}/series/${k.series}/instances/${k.sop}/bulk/`;
      assert.ok(uris.length > 0, 'the kitchen sink has BulkDataURIs');
      for (const u of uris) assert.ok(u.startsWith(prefix), u);
      const tails = uris.map((u) => u.slice(prefix.length));
      assert.ok(tails.includes('7fe00010'), 'PixelData is bulk');
      assert.ok(tails.some((s) => /^[0-9a-f]{8}\/1\/[0-9a-f]{8}$/.test(s)), 'a 1-based path inside a sequence');
      t.diagnostic(`kitchen-sink BulkDataURI tails: ${tails.join(' ')}`);
      const f = fx.files[0]!.meta;
      const pn = await fetch(`${orthanc.dicomWebUrl}/studies/${f.study}/series/${f.series}/instances/${f.sop}/bulk/00100010`);
      assert.equal(pn.status, 200);
      const text = Buffer.from(await pn.arrayBuffer()).toString('latin1');
      assert.match(text, /ZQ[A-Z0-9]{8}\^/, 'the PatientName bytes come back through the bulk route');
    });

    test('QIDO: limit=0 is unlimited, unknown keys are ignored, no match is 200 [], comma lists match and backslash lists do not', async () => {
      const all = studies().length;
      const count = async (q: string): Promise<number> => {
        const r = await fetch(`${orthanc.dicomWebUrl}/studies?${q}`);
        assert.equal(r.status, 200, q);
        const t = await r.text();
        return t ? (JSON.parse(t) as unknown[]).length : 0;
      };
      assert.equal(await count('limit=0'), all);
      assert.equal(await count('limit=1'), 1);
      assert.equal(await count('PatinetID=nobody'), all, 'a misspelled key filters nothing');
      assert.equal(await count('PatientID=nobody'), 0);
      const [a, b] = studies();
      assert.equal(await count(`StudyInstanceUID=${a},${b}`), 2);
      assert.equal(await count(`StudyInstanceUID=${encodeURIComponent(`${a}\\${b}`)}`), 0);
      const fz = await fetch(`${orthanc.dicomWebUrl}/studies?fuzzymatching=true`);
      await fz.arrayBuffer();
      assert.equal(fz.headers.get('warning'), null, 'no Warning: 299 for fuzzymatching');
    });

    test('retrieve transcodes to Explicit VR Little Endian unless transfer-syntax=*', async () => {
      const be = fx.files.find((f) => f.meta.kind === 'mr-big-endian')!.meta;
      const url = `${orthanc.dicomWebUrl}/studies/${be.study}/series/${be.series}/instances/${be.sop}`;
      const tsOf = async (accept: string): Promise<string | undefined> => {
        const r = await fetch(url, { headers: { Accept: accept } });
        assert.equal(r.status, 200, accept);
        const [part] = multipartParts(Buffer.from(await r.arrayBuffer()), r.headers.get('content-type') ?? '');
        return str(dcmjsRead(part!.body).meta, '00020010');
      };
      assert.equal(await tsOf('multipart/related; type="application/dicom"'), '1.2.840.10008.1.2.1');
      assert.equal(await tsOf('multipart/related; type="application/dicom"; transfer-syntax=*'), '1.2.840.10008.1.2.2');
    });

    test('errors are Orthanc JSON with Details, Uri and OrthancError', async () => {
      const r = await fetch(`${orthanc.dicomWebUrl}/studies/1.2.3/metadata`);
      assert.equal(r.status, 404);
      assert.equal(r.headers.get('content-type'), null, 'error bodies come without a Content-Type');
      const body = (await r.json()) as Record<string, unknown>;
      for (const k of ['Details', 'Uri', 'OrthancError']) assert.ok(k in body, k);
    });
  });
});

describe('Orthanc does not outlive its test process', { skip: existsSync(ORTHANC_BIN) ? false : 'Orthanc is not installed' }, () => {
  /** Starts Orthanc in a child Node process, which then ends as `how` says; returns Orthanc's URL. */
  async function orphanAfter(how: 'exit' | 'SIGKILL' | 'SIGTERM'): Promise<{ url: string; dir: string }> {
    const script = `
      const { startOrthanc } = await import(${JSON.stringify(HELPER_URL)});
      const o = await startOrthanc();
      process.stdout.write('URL ' + o.httpUrl + ' ' + o.dir + '\\n');
      setInterval(() => {}, 1000);
      process.stdin.once('data', () => process.exit(3)); // 'exit': ends without stop()`;
    const child = spawn(process.execPath, ['--import', 'tsx', '--input-type=module', '-e', script], { cwd: ROOT, stdio: ['pipe', 'pipe', 'pipe'] });
    let err = '';
    child.stderr.on('data', (d: Buffer) => { err += d.toString(); });
    const exited = new Promise<void>((resolve) => child.on('exit', () => resolve()));
    const [url, dir] = await new Promise<[string, string]>((resolve, reject) => {
      let out = '';
      const timer = setTimeout(() => { child.kill('SIGKILL'); reject(new Error(`no Orthanc URL in 30 s: ${err.slice(-1000)}`)); }, 30_000);
      child.stdout.on('data', (d: Buffer) => {
        out += d.toString();
        const m = /URL (\S+) (\S+)\n/.exec(out);
        if (m) { clearTimeout(timer); resolve([m[1]!, m[2]!]); }
      });
      child.on('exit', () => { if (!/URL /.test(out)) { clearTimeout(timer); reject(new Error(`child exited early: ${err.slice(-1000)}`)); } });
    });
    assert.equal((await fetch(`${url}/system`)).status, 200, 'Orthanc is up while its parent lives');
    if (how === 'exit') child.stdin.write('go\n');
    else child.kill(how);
    await exited;
    return { url, dir };
  }

  async function isDown(url: string): Promise<boolean> {
    const deadline = Date.now() + 10_000;
    while (Date.now() < deadline) {
      try {
        const r = await fetch(`${url}/system`, { signal: AbortSignal.timeout(1000) });
        await r.arrayBuffer();
      } catch {
        return true;
      }
      await new Promise((r) => setTimeout(r, 100));
    }
    return false;
  }

  for (const how of ['exit', 'SIGTERM', 'SIGKILL'] as const) {
    test(`parent ends by ${how}: Orthanc is gone`, async () => {
      const { url, dir } = await orphanAfter(how);
      try {
        assert.ok(await isDown(url), `Orthanc at ${url} still answers after its parent ended by ${how}`);
        if (how !== 'SIGKILL') assert.equal(existsSync(dir), false, 'the exit hook removed the temp directory');
      } finally {
        rmSync(dir, { recursive: true, force: true }); // a SIGKILLed parent cannot clean up
      }
    });
  }

  test('stop() kills Orthanc and removes its directory; a bad config fails fast with the log tail', async () => {
    const o = await startOrthanc();
    await o.stop();
    await o.stop(); // idempotent
    assert.equal(existsSync(o.dir), false);
    assert.ok(await isDown(o.httpUrl), 'stopped Orthanc no longer answers');
    let bad: OrthancHandle | undefined;
    try {
      await assert.rejects(async () => { bad = await startOrthanc({ extra: { HttpPort: 'not-a-port' } }); }, /exited before answering[\s\S]*HttpPort/);
    } finally {
      await bad?.stop();
    }
  });
});
