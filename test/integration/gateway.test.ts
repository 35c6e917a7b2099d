/**
 * The gateway against a real Orthanc PACS loaded with the generated PHI studies, crawled the
 * way a buyer's client does: every QIDO level with includefield=all, metadata at every
 * level, retrieve, frames, bulk. No planted value may appear in any body, header or log line.
 */
import { describe, test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { mkdtempSync, readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Writable } from 'node:stream';
import { connect } from 'node:net';
import { inflateRawSync } from 'node:zlib';
import winston from 'winston';
import { validateConfig } from '../../src/config/schema.js';
import { readHeaderSync } from '../../src/dicom/part10.js';
import { toJsonModel, type JsonModel } from '../../src/dicom/to-json.js';
import { buildParts, startGateway, type Gateway } from '../../src/main.js';
import { verifyTrail } from '../../src/audit/trail.js';
import { loadOrCreateMasterSecret } from '../../src/pseudonym/secret.js';
import { findCanaries, fixtures, type FixtureSet } from '../helpers/fixtures.js';
import { startOrthanc, type OrthancHandle } from '../helpers/orthanc.js';
import { splitMultipart } from '../helpers/multipart.js';

const TOKENS = { strict: 'strict-token-0123456789', dates: 'dates-token-0123456789' };
const sha = (t: string): string => createHash('sha256').update(t).digest('hex');

interface Seen { url: string; status: number; headers: string; body: Buffer }


const first = (m: JsonModel, k: string): string | undefined => {
  const v = m[k]?.Value?.[0];
  return typeof v === 'string' ? v : undefined;
};

describe('gateway against a real Orthanc', () => {
  let orthanc: OrthancHandle;
  let gw: Gateway;
  let fx: FixtureSet;
  let stateDir: string;
  const logLines: string[] = [];
  const seen: Seen[] = [];

  async function get(path: string, opts: { token?: string | null; accept?: string; headers?: Record<string, string>; method?: string } = {}): Promise<Seen> {
    const headers: Record<string, string> = { ...(opts.headers ?? {}) };
    const token = opts.token === undefined ? TOKENS.strict : opts.token;
    if (token) headers.authorization = `Bearer ${token}`;
    if (opts.accept) headers.accept = opts.accept;
    const r = await fetch(`${gw.url}${path}`, { headers, method: opts.method ?? 'GET' });
    const s: Seen = { url: path, status: r.status, headers: [...r.headers].map(([k, v]) => `${k}: ${v}`).join('\n'), body: Buffer.from(await r.arrayBuffer()) };
    seen.push(s);
    return s;
  }
  const json = (s: Seen): JsonModel[] => JSON.parse(s.body.toString('utf8')) as JsonModel[];

  before(async () => {
    fx = await fixtures();
    orthanc = await startOrthanc();
    await orthanc.upload(fx.files.map((f) => f.bytes));
    stateDir = mkdtempSync(join(tmpdir(), 'deid-gw-'));
    const cfg = validateConfig({
      // 200 concurrent connections of one client below (a listener-leak test): above the default share.
      server: { host: '127.0.0.1', port: 0, publicBaseUrl: 'https://gw.example.org', connectionsPerClient: 256 },
      upstream: { url: orthanc.dicomWebUrl },
      state: { dir: stateDir },
      clients: [
        { id: 'strict', apiKeySha256: sha(TOKENS.strict) },
        { id: 'dates', apiKeySha256: sha(TOKENS.dates), profile: { options: ['retainLongitudinalModifiedDates', 'cleanDescriptors'] } },
      ],
    }, join(stateDir, 'test.yaml'));
    const parts = buildParts(cfg);
    const sink = new Writable({ write(chunk, _e, cb) { logLines.push(String(chunk)); cb(); } });
    const log = winston.createLogger({ level: 'debug', format: winston.format.json(), transports: [new winston.transports.Stream({ stream: sink })] });
    gw = await startGateway(cfg, { ...parts, log });
  });

  after(async () => {
    await gw?.close();
    await orthanc?.stop();
  });

  test('a buyer\'s crawl of every level leaks no planted value in any body, header or log line', async () => {
    const studies = json(await get('/dicom-web/studies?includefield=all'));
    assert.equal(studies.length, new Set(fx.files.map((f) => f.meta.study)).size);
    await get('/dicom-web/series?includefield=all');
    await get('/dicom-web/instances?includefield=all');
    let retrievedParts = 0;
    for (const st of studies) {
      const s = first(st, '0020000D')!;
      assert.match(s, /^2\.25\.\d+$/);
      assert.equal(first(st, '00081190'), `https://gw.example.org/dicom-web/studies/${s}`);
      await get(`/dicom-web/studies/${s}/metadata`);
      await get(`/dicom-web/studies/${s}/instances?includefield=all`);
      for (const se of json(await get(`/dicom-web/studies/${s}/series?includefield=all`))) {
        const e = first(se, '0020000E')!;
        await get(`/dicom-web/studies/${s}/series/${e}/metadata`);
        for (const inst of json(await get(`/dicom-web/studies/${s}/series/${e}/instances?includefield=all`))) {
          const i = first(inst, '00080018')!;
          const meta = json(await get(`/dicom-web/studies/${s}/series/${e}/instances/${i}/metadata`))[0]!;
          const r = await get(`/dicom-web/studies/${s}/series/${e}/instances/${i}/frames/1`);
          assert.ok([200, 403, 404].includes(r.status), `frames answered ${r.status}`);
          for (const a of Object.values(meta)) {
            if (a.vr !== 'SQ' && typeof (a as { BulkDataURI?: string }).BulkDataURI === 'string') {
              const uri = (a as unknown as { BulkDataURI: string }).BulkDataURI;
              assert.ok(uri.startsWith('https://gw.example.org/dicom-web/studies/'), 'bulk URIs point at the gateway');
              await get(uri.slice('https://gw.example.org'.length));
            }
          }
        }
      }
      const r = await get(`/dicom-web/studies/${s}`, { accept: 'multipart/related; type="application/dicom"' });
      if (r.status === 403) { // every instance withheld by the pixel policy: no empty multipart
        assert.equal(JSON.parse(r.body.toString()).code, 'PIXELS_WITHHELD');
        continue;
      }
      assert.equal(r.status, 200);
      const ct = /content-type: (.*)/.exec(r.headers)![1]!;
      for (const p of splitMultipart(r.body, ct)) {
        retrievedParts++;
        const h = toJsonModel(readHeaderSync(p.body, inflateRawSync).elements);
        assert.equal(first(h, '00120062'), 'YES');
        assert.equal(first(h, '0020000D'), s, 'the instance carries the same pseudonymous study UID as QIDO');
      }
    }
    assert.ok(retrievedParts >= 10, `retrieved ${retrievedParts} instances`);
    const leaks: string[] = [];
    for (const s of seen) leaks.push(...findCanaries(Buffer.concat([Buffer.from(s.headers), s.body]), fx.manifest).map((l) => `${s.url}: ${l}`));
    leaks.push(...findCanaries(Buffer.from(logLines.join('\n')), fx.manifest).map((l) => `log: ${l}`));
    // The audit log stays in the hospital and names original study UIDs, but never a name, ID or date.
    leaks.push(...findCanaries(readFileSync(join(stateDir, 'audit.log')), fx.manifest, ['strings', 'dates']).map((l) => `audit: ${l}`));
    assert.deepEqual(leaks, []);
    const port = new URL(orthanc.httpUrl).port;
    for (const s of seen) assert.ok(!s.body.includes(`:${port}/`) && !s.headers.includes(`:${port}`), `${s.url} names the PACS address`);
  });

  test('pixel policy: the burned-in ultrasound is withheld from a study retrieve (Warning 299) and refused directly (403)', async () => {
    const us = fx.files.find((f) => f.meta.sop === fx.manifest.burnedIn.sop)!;
    const studies = json(await get('/dicom-web/studies?ModalitiesInStudy=US'));
    assert.equal(studies.length, 1);
    const s = first(studies[0]!, '0020000D')!;
    const r = await get(`/dicom-web/studies/${s}`);
    assert.match(r.headers, /warning: 299 deid-gateway "\d+ instance\(s\) withheld by the pixel policy"/);
    const insts = json(await get(`/dicom-web/studies/${s}/instances?includefield=00280301`));
    const burned = insts.find((x) => first(x, '00280301') === 'YES')!;
    const path = `/dicom-web/studies/${s}/series/${first(burned, '0020000E')}/instances/${first(burned, '00080018')}`;
    for (const p of [path, `${path}/frames/1`, `${path}/bulk/7fe00010`]) {
      const d = await get(p);
      assert.equal(d.status, 403, p);
      assert.equal(JSON.parse(d.body.toString()).code, 'PIXELS_WITHHELD');
    }
    assert.equal(r.status, 200, 'the study also holds an ultrasound with Burned In Annotation NO');
    const ct = /content-type: (.*)/.exec(r.headers)![1]!;
    const got = splitMultipart(r.body, ct).map((p) => first(toJsonModel(readHeaderSync(p.body, inflateRawSync).elements), '00280301'));
    assert.deepEqual(got, ['NO'], 'only the instance with Burned In Annotation NO is sent');
    void us;
  });

  test('authentication: none or wrong → 401 problem with WWW-Authenticate; Basic with client id and token works', async () => {
    for (const token of [null, 'wrong-token']) {
      const r = await get('/dicom-web/studies', { token });
      assert.equal(r.status, 401);
      assert.match(r.headers, /www-authenticate: Bearer realm="deid-gateway", Basic realm="deid-gateway"/);
      assert.equal(JSON.parse(r.body.toString()).code, 'UNAUTHORIZED');
    }
    const basic = (id: string, t: string): string => `Basic ${Buffer.from(`${id}:${t}`).toString('base64')}`;
    assert.equal((await get('/dicom-web/studies', { token: null, headers: { authorization: basic('strict', TOKENS.strict) } })).status, 200);
    assert.equal((await get('/dicom-web/studies', { token: null, headers: { authorization: basic('dates', TOKENS.strict) } })).status, 401);
  });

  test('read-only: STOW-RS, PUT, DELETE and WADO-URI are 405 problems', async () => {
    for (const [method, path] of [['POST', '/dicom-web/studies'], ['PUT', '/dicom-web/studies/1.2.3'], ['DELETE', '/dicom-web/studies/1.2.3'], ['GET', '/wado?requestType=WADO']] as const) {
      const r = await get(path, { method });
      assert.equal(r.status, 405, `${method} ${path}`);
      assert.match(r.headers, /content-type: application\/problem\+json/);
      assert.match(r.headers, /allow: GET/);
    }
  });

  test('no MaxListenersExceededWarning under 200 concurrent connections (issue 15)', async () => {
    const warnings: string[] = [];
    const onWarning = (w: Error): void => { if (w.name === 'MaxListenersExceededWarning') warnings.push(w.message); };
    process.on('warning', onWarning);
    try {
      const st = json(await get('/dicom-web/studies?ModalitiesInStudy=CT'))[0]!;
      const study = first(st, '0020000D')!;
      const answers = await Promise.all(Array.from({ length: 200 }, (_, i) => get(i % 2 ? `/dicom-web/studies/${study}` : `/dicom-web/studies/${study}/metadata`, i % 2 ? { accept: 'multipart/related; type="application/dicom"' } : {})));
      assert.ok(answers.filter((a) => a.status === 200).length >= 100, 'most were served');
      await new Promise((r) => setImmediate(r));
    } finally {
      process.off('warning', onWarning);
    }
    assert.deepEqual(warnings, []);
  });

  test('a transfer syntax the PACS cannot provide is 406 with what the gateway serves, never 502 (issue 15)', async () => {
    const st = json(await get('/dicom-web/studies?ModalitiesInStudy=CT'))[0]!;
    const study = first(st, '0020000D')!;
    for (const ts of ['1.2.840.10008.1.2.4.50', '1.2.840.10008.1.2.4.90']) {
      const r = await get(`/dicom-web/studies/${study}`, { accept: `multipart/related; type="application/dicom"; transfer-syntax=${ts}` });
      assert.ok(r.status === 200 || r.status === 406, `${ts}: ${r.status} ${r.body.toString().slice(0, 200)}`);
      if (r.status === 406) {
        const p = JSON.parse(r.body.toString()) as { code: string; detail: string };
        assert.equal(p.code, 'NOT_ACCEPTABLE');
        assert.match(p.detail, /1\.2\.840\.10008\.1\.2\.1/);
      } else {
        assert.match(r.body.subarray(0, 4096).toString('latin1'), new RegExp(`transfer-syntax=${ts.replace(/\./g, '\\.')}`), 'served in the syntax asked for');
      }
    }
  });

  test('protocol edges (issue 15): HTTP/2.0 and a line with no version, or two Host headers, are 400 and closed; a refused request\'s trickled body holds nothing', async () => {
    const { port } = new URL(gw.url);
    /** Writes `head`, then optionally trickles, and resolves with what came back and whether the server closed. */
    const raw = (head: string, trickle = false): Promise<{ text: string; closedMs: number }> => new Promise((resolve, reject) => {
      const t0 = performance.now();
      const sock = connect(Number(port), '127.0.0.1');
      let text = '';
      let timer: NodeJS.Timeout | undefined;
      sock.setEncoding('latin1');
      sock.on('data', (c: string) => { text += c; });
      sock.on('error', () => undefined);
      sock.on('close', () => { clearInterval(timer); resolve({ text, closedMs: performance.now() - t0 }); });
      sock.write(head);
      if (trickle) timer = setInterval(() => { if (!sock.destroyed) sock.write('x'); }, 100);
      setTimeout(() => { clearInterval(timer); sock.destroy(); reject(new Error(`still open after 10 s: ${text.slice(0, 200)}`)); }, 10_000).unref();
    });
    for (const line of ['GET /healthz HTTP/2.0', 'GET /healthz']) {
      const r = await raw(`${line}\r\nHost: a\r\n\r\n`);
      assert.match(r.text, /^HTTP\/1\.1 400 /, `${line}: ${r.text.slice(0, 80)}`);
    }
    const two = await raw('GET /dicom-web/studies HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n');
    assert.match(two.text, /^HTTP\/1\.1 400 /);
    assert.match(two.text, /"code":"BAD_REQUEST"/);
    // STOW-RS with a body that trickles in: the 405 comes at once and the connection closes.
    const slow = await raw(`POST /dicom-web/studies HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer ${TOKENS.strict}\r\nContent-Type: application/dicom\r\nContent-Length: 1000000\r\n\r\n`, true);
    assert.match(slow.text, /^HTTP\/1\.1 405 /);
    assert.ok(slow.closedMs < 5000, `closed after ${Math.round(slow.closedMs)} ms`);
  });

  test('rendered and thumbnail are made by the gateway; /bulk of a removed attribute is 404', async () => {
    const st = json(await get('/dicom-web/studies?ModalitiesInStudy=CT'))[0]!;
    const s = first(st, '0020000D')!;
    const inst = json(await get(`/dicom-web/studies/${s}/instances`)).find((x) => first(x, '00080060') === 'CT')!;
    const base = `/dicom-web/studies/${s}/series/${first(inst, '0020000E')}/instances/${first(inst, '00080018')}`;
    const jpegImg = await get(`${base}/rendered`);
    assert.equal(jpegImg.status, 200);
    assert.match(jpegImg.headers, /content-type: image\/jpeg/);
    assert.equal(jpegImg.body.subarray(0, 2).toString('hex'), 'ffd8', 'a JPEG');
    const pngImg = await get(`${base}/frames/1/rendered`, { accept: 'image/png' });
    assert.equal(pngImg.status, 200);
    assert.equal(pngImg.body.subarray(1, 4).toString('latin1'), 'PNG');
    assert.equal((await get(`${base}/thumbnail`)).status, 200);
    assert.equal((await get(`/dicom-web/studies/${s}/thumbnail`)).status, 200, 'a study thumbnail shows a representative instance');
    // A rendered study (PS3.18): one image per instance the client may receive, in one multipart.
    const ctType = (x: Seen): string => /^content-type: (.*)$/m.exec(x.headers)?.[1] ?? '';
    const study = await get(`/dicom-web/studies/${s}/rendered`);
    assert.equal(study.status, 200, study.body.toString().slice(0, 200));
    assert.match(ctType(study), /^multipart\/related; type="image\/jpeg"; boundary=/);
    const jpegs = splitMultipart(study.body, ctType(study));
    const withPixels = json(await get(`/dicom-web/studies/${s}/metadata`)).filter((x) => x['7FE00010'] !== undefined).length;
    const withheld = Number(/"(\d+) instance\(s\) withheld/.exec(study.headers)?.[1] ?? 0);
    assert.ok(jpegs.length > 0 && jpegs.length === withPixels - withheld, `one part per instance with pixels the client may receive (${jpegs.length} parts, ${withPixels} with pixels, ${withheld} withheld)`);
    assert.ok(jpegs.every((x) => /content-type: image\/jpeg/i.test(x.headers) && x.body.subarray(0, 2).toString('hex') === 'ffd8'), 'each part a JPEG');
    const seriesPng = await get(`/dicom-web/studies/${s}/series/${first(inst, '0020000E')}/rendered`, { accept: 'multipart/related; type="image/png"' });
    assert.equal(seriesPng.status, 200);
    assert.ok(splitMultipart(seriesPng.body, ctType(seriesPng)).every((x) => x.body.subarray(1, 4).toString('latin1') === 'PNG'), 'a rendered series as PNG parts');
    assert.equal((await get(`/dicom-web/studies/${s}/rendered`, { accept: 'multipart/related; type="image/gif"' })).status, 406);
    assert.equal((await get(`${base}/rendered`, { accept: 'image/gif' })).status, 406);
    assert.equal((await get(`${base}/rendered?window=40`)).status, 400);
    assert.equal((await get(`${base}/bulk/00100010`)).status, 404); // the PACS would send PatientName
    assert.equal((await get(`${base}/bulk/7fe00010`)).status, 200);
  });

  test('UIDs in paths: originals and unknown pseudonyms are 404, and another client\'s pseudonyms are unknown', async () => {
    const original = fx.files[0]!.meta.study;
    assert.equal((await get(`/dicom-web/studies/${original}/metadata`)).status, 404);
    assert.equal((await get('/dicom-web/studies/2.25.1234567890/metadata')).status, 404);
    const mine = first(json(await get('/dicom-web/studies?ModalitiesInStudy=CT'))[0]!, '0020000D')!;
    const theirs = first(json(await get('/dicom-web/studies?ModalitiesInStudy=CT', { token: TOKENS.dates }))[0]!, '0020000D')!;
    assert.notEqual(mine, theirs);
    assert.equal((await get(`/dicom-web/studies/${mine}/metadata`, { token: TOKENS.dates })).status, 404);
    assert.equal((await get(`/dicom-web/studies/${theirs}/metadata`, { token: TOKENS.dates })).status, 200);
  });

  test('query rules: identifying and unknown keys refused, pseudonymous keys mapped, fuzzy matching warned', async () => {
    for (const q of ['PatientName=A*', 'PatientBirthDate=19270926', 'AccessionNumber=X', 'PatientNme=X', 'StudyDate=20240101']) {
      const r = await get(`/dicom-web/studies?${q}`);
      assert.equal(r.status, 400, q);
      assert.equal(JSON.parse(r.body.toString()).code, 'QUERY_KEY_REFUSED');
    }
    for (const q of ['limit=ten', 'offset=-1', 'fuzzymatching=maybe']) {
      const r = await get(`/dicom-web/studies?${q}`);
      assert.equal(r.status, 400, q);
      assert.equal(JSON.parse(r.body.toString()).code, 'BAD_QUERY', q);
    }
    const all = json(await get('/dicom-web/studies'));
    const [a, b] = all.map((x) => first(x, '0020000D')!);
    assert.equal(json(await get(`/dicom-web/studies?StudyInstanceUID=${a},${b}`)).length, 2);
    assert.equal(json(await get(`/dicom-web/studies?StudyInstanceUID=${a}%5C${b}`)).length, 2);
    assert.equal(json(await get('/dicom-web/studies?StudyInstanceUID=2.25.99')).length, 0);
    const patient = fx.manifest.patients.find((p) => p.studies.length >= 2)!;
    const row = all.find((x) => patient.studies.length && first(x, '00100020'));
    const pid = first(row!, '00100020')!;
    const byPid = json(await get(`/dicom-web/studies?PatientID=${pid}`));
    assert.ok(byPid.length >= 1 && byPid.every((x) => first(x, '00100020') === pid), 'byPid.length >= 1 && byPid.every((x) => first(x, \'00100020\') === pid)');
    const fuzzy = await get('/dicom-web/studies?fuzzymatching=true');
    assert.match(fuzzy.headers, /warning: 299 deid-gateway "The fuzzymatching parameter is not supported/);
  });

  test('retrieve honours the transfer-syntax parameter (default: the PACS transcodes to Explicit VR LE)', async () => {
    const be = fx.files.find((f) => f.meta.ts === 'explicitBE')!;
    const studies = json(await get('/dicom-web/studies?ModalitiesInStudy=MR'));
    const s = first(studies[0]!, '0020000D')!;
    const stored = await get(`/dicom-web/studies/${s}`, { accept: 'multipart/related; type="application/dicom"; transfer-syntax=*' });
    const def = await get(`/dicom-web/studies/${s}`, { accept: 'multipart/related; type="application/dicom"' });
    const syntaxes = (r: Seen): string[] => splitMultipart(r.body, /content-type: (.*)/.exec(r.headers)![1]!).map((p) => {
      const h = readHeaderSync(p.body, inflateRawSync);
      return h.meta.find((e) => e.tag === 0x00020010)!.value!.toString('latin1').replace(/\0+$/, '');
    });
    assert.ok(syntaxes(stored).includes('1.2.840.10008.1.2.2'), `stored syntaxes: ${syntaxes(stored).join(',')} (${be.meta.file})`);
    assert.ok(syntaxes(def).every((t) => t === '1.2.840.10008.1.2.1'), `default syntaxes: ${syntaxes(def).join(',')}`);
  });

  test('routing: HEAD, an absolute-form target, a trailing slash and letter case route as GET does; a malformed escape or an unknown path is a 404 problem, after authentication', async () => {
    const list = await get('/dicom-web/studies');
    assert.equal(list.status, 200);
    const length = /content-length: (\d+)/.exec(list.headers)?.[1];
    assert.ok(length && Number(length) === list.body.length && list.body.length > 2, 'the study list, whole');
    const head = await get('/dicom-web/studies', { method: 'HEAD' });
    assert.equal(head.status, 200);
    assert.match(head.headers, new RegExp(`content-length: ${length}`), 'HEAD: GET\'s headers');
    assert.equal(head.body.length, 0, 'HEAD: no body');
    // A streamed reply too: a study retrieve's HEAD has its headers and no body (a study the
    // pixel policy does not withhold whole, which GET says).
    const studies = json(list).map((row) => String((row['0020000D'] as { Value: string[] }).Value[0]));
    let study: string | undefined;
    for (const s of studies) if ((await get(`/dicom-web/studies/${s}`, { accept: 'multipart/related; type="application/dicom"' })).status === 200) { study = s; break; }
    assert.ok(study, 'a study that retrieves');
    const headRetrieve = await get(`/dicom-web/studies/${study}`, { method: 'HEAD', accept: 'multipart/related; type="application/dicom"' });
    assert.equal(headRetrieve.status, 200);
    assert.match(headRetrieve.headers, /content-type: multipart\/related; type="application\/dicom"/);
    assert.equal(headRetrieve.body.length, 0, 'HEAD of a retrieve: no body');
    for (const path of ['/dicom-web/studies/', '/DICOM-WEB/Studies']) {
      const r = await get(path);
      assert.equal(r.status, 200, path);
      assert.equal(r.body.length, list.body.length, `${path}: the same list`);
    }
    // An absolute-form request target (RFC 9112 3.2.2), as a proxy sends it.
    const { port } = new URL(gw.url);
    const text = await new Promise<string>((resolve, reject) => {
      const sock = connect(Number(port), '127.0.0.1');
      let t = '';
      sock.setEncoding('latin1');
      sock.on('data', (c: string) => { t += c; });
      sock.on('error', reject);
      sock.on('close', () => resolve(t));
      sock.write(`GET http://127.0.0.1:${port}/dicom-web/studies HTTP/1.1\r\nHost: 127.0.0.1:${port}\r\nAuthorization: Bearer ${TOKENS.strict}\r\nConnection: close\r\n\r\n`);
    });
    assert.match(text, /^HTTP\/1\.1 200 /);
    assert.match(text, new RegExp(`content-length: ${length}`, 'i'));
    for (const [path, token, status, code] of [
      ['/dicom-web/studies/%ZZ/metadata', TOKENS.strict, 404, 'NOT_FOUND'],
      ['/dicom-web/studies/%ZZ/metadata', null, 401, 'UNAUTHORIZED'],
      ['/dicom-web/%73tudies', TOKENS.strict, 404, 'NOT_FOUND'],
      ['/dicom-web/nothing', TOKENS.strict, 404, 'NOT_FOUND'],
      ['/dicom-web/nothing', null, 401, 'UNAUTHORIZED'],
      ['/elsewhere', null, 404, 'NOT_FOUND'],
    ] as const) {
      const r = await get(path, { token });
      assert.equal(r.status, status, path);
      assert.match(r.headers, /content-type: application\/problem\+json; charset=utf-8/, path);
      assert.equal((JSON.parse(r.body.toString('utf8')) as { code: string }).code, code, path);
      assert.ok(!r.body.toString('latin1').includes('%ZZ'), `${path}: the input is not echoed`);
    }
  });

  test('health: /healthz and /readyz need no token and reveal nothing', async () => {
    const h = await get('/healthz', { token: null });
    assert.equal(h.status, 200);
    const r = await get('/readyz', { token: null });
    assert.equal(r.status, 200);
    assert.deepEqual(JSON.parse(r.body.toString()), { status: 'ready', upstream: 'ok', state: 'ok', scope: 'ok', audit: 'ok' });
  });

  test('the dates client sees shifted dates; the strict client sees none', async () => {
    const strict = json(await get('/dicom-web/studies?includefield=00080020'));
    assert.ok(strict.every((x) => first(x, '00080020') === undefined), 'strict.every((x) => first(x, \'00080020\') === undefined)');
    const dated = json(await get('/dicom-web/studies?includefield=00080020', { token: TOKENS.dates }));
    const dates = dated.map((x) => first(x, '00080020')).filter(Boolean) as string[];
    assert.ok(dates.length >= 3, 'dates.length >= 3');
    const originals = new Set(fx.files.map((f) => f.meta.studyDate));
    assert.ok(dates.every((d) => !originals.has(d)), 'no original study date appears');
  });

  test('every request has exactly one audit record, with client, route, status and policy hash; the chain verifies', async () => {
    const lines = readFileSync(join(stateDir, 'audit.log'), 'utf8').trim().split('\n').map((l) => JSON.parse(l) as Record<string, unknown>);
    const requests = lines.filter((l) => l.type === 'request');
    const ids = requests.map((l) => l.requestId);
    assert.equal(new Set(ids).size, ids.length, 'one request record per request');
    const expected = seen.filter((x) => !/^\/(healthz|readyz)/.test(x.url)).map((x) => /x-request-id: (\S+)/.exec(x.headers)?.[1]);
    const missing = expected.filter((id) => !id || !ids.includes(id));
    assert.deepEqual(missing, [], `${expected.length} requests, ${requests.length} records`);
    const retrieve = requests.find((l) => l.route === 'retrieve' && l.status === 200 && (l.instances as number) > 0);
    assert.ok(retrieve && typeof retrieve.policyHash === 'string' && (retrieve.studies as number) > 0, 'a retrieve record with instances, studies and the policy hash');
    const released = lines.filter((l) => l.type === 'study' && l.requestId === retrieve.requestId);
    assert.ok(released.length > 0 && released.every((l) => typeof l.study === 'string' && /^P-[0-9a-f]{24}$/.test(String(l.patientRef)) && (l.instances as number) > 0), 'one study record per released study, with a keyed patient reference');
    assert.ok(requests.some((l) => l.status === 401 && l.outcome === 'denied' && l.client === null), 'an authentication failure is recorded');
    const v = verifyTrail(stateDir, loadOrCreateMasterSecret(stateDir));
    assert.ok(v.ok, `the trail verifies: ${JSON.stringify(v.problem)}`);
  });
});
