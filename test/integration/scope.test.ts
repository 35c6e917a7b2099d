/**
 * Issue 4 against a real Orthanc: per-client scope (allow-lists inline and in a reloaded file,
 * modality / body part / SOP class / study date filters), the opt-out list (inline and in a
 * reloaded file), access windows, the 404-not-403 rule on every route, pagination over a
 * filtered view, date ranges on shifted dates, allowed match keys and result caps, rate and
 * quota limits that survive a restart, and the audit reason of every denial.
 */
import { describe, test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { createServer, request as httpRequest, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import winston from 'winston';
import { Writable } from 'node:stream';
import { validateConfig, type Config } from '../../src/config/schema.js';
import { buildParts, startGateway, type Gateway, type GatewayParts } from '../../src/main.js';
import { encodeInstance, generateCohort, SOP_CT, SOP_MR, SOP_SR, type Cohort, type CohortStudy } from '../fixtures/cohort.js';
import { encodePart10, type El } from '../helpers/dicom-builder.js';
import { startOrthanc, type OrthancHandle } from '../helpers/orthanc.js';

const sha = (t: string): string => createHash('sha256').update(t).digest('hex');
const tok = (id: string): string => `${id}-token-0123456789`;
type Row = Record<string, { vr: string; Value?: unknown[] }>;
const val = (r: Row, tag: string): unknown => r[tag]?.Value?.[0];
const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

interface Res { status: number; headers: Headers; text: string; json: () => unknown }

/**
 * A transparent HTTP proxy between the gateway and Orthanc: records every upstream request
 * (path and query) and can hold requests back, to see the pages a filtered QIDO asks for and to
 * keep a request in flight.
 */
/**
 * `addToStudyRows`: attributes added to every study-level QIDO row, as a PACS that computes them
 * would send them (Orthanc 1.10 sends no SOPClassesInStudy or patient-level counts).
 */
/** `answers`: each JSON answer of the PACS, with the request it answered, in order. */
interface Proxy { readonly url: string; readonly seen: string[]; readonly answers: { url: string; body: string }[]; delayMs: number; addToStudyRows?: Record<string, unknown> | undefined; close(): Promise<void> }
async function startProxy(target: string): Promise<Proxy> {
  const t = new URL(target);
  const seen: string[] = [];
  const answers: { url: string; body: string }[] = [];
  const state: { delayMs: number; add?: Record<string, unknown> | undefined } = { delayMs: 0 };
  const hop = new Set(['connection', 'keep-alive', 'transfer-encoding']);
  const server: Server = createServer((req, res) => {
    seen.push(req.url ?? '');
    const go = (): void => {
      const up = httpRequest({ host: t.hostname, port: t.port, path: req.url, method: req.method, headers: { ...req.headers, host: t.host } }, (r) => {
        const headers = Object.fromEntries(Object.entries(r.headers).filter(([k]) => !hop.has(k)));
        if (state.add && /\/studies(\?|$)/.test(req.url ?? '') && /json/.test(String(r.headers['content-type'] ?? ''))) {
          const chunks: Buffer[] = [];
          r.on('data', (c: Buffer) => chunks.push(c));
          r.on('end', () => {
            const rows = (JSON.parse(Buffer.concat(chunks).toString('utf8') || '[]') as Record<string, unknown>[]).map((row) => ({ ...row, ...state.add }));
            const body = Buffer.from(JSON.stringify(rows));
            delete headers['content-length'];
            res.writeHead(r.statusCode ?? 502, { ...headers, 'content-length': String(body.length) });
            res.end(body);
          });
          return;
        }
        res.writeHead(r.statusCode ?? 502, headers);
        if (/json/.test(String(r.headers['content-type'] ?? ''))) {
          const answer = { url: req.url ?? '', body: '' };
          answers.push(answer);
          r.on('data', (c: Buffer) => { answer.body += c.toString('latin1'); });
        }
        r.pipe(res);
      });
      up.on('error', () => res.destroy());
      res.on('close', () => up.destroy());
      req.pipe(up);
    };
    if (state.delayMs > 0) setTimeout(go, state.delayMs); else go();
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  const { port } = server.address() as AddressInfo;
  return {
    url: `http://127.0.0.1:${port}${t.pathname}`,
    seen,
    answers,
    get delayMs() { return state.delayMs; },
    set delayMs(v: number) { state.delayMs = v; },
    get addToStudyRows() { return state.add; },
    set addToStudyRows(v: Record<string, unknown> | undefined) { state.add = v; },
    close: () => new Promise<void>((r) => { server.closeAllConnections(); server.close(() => r()); }),
  };
}

/** A CT study whose instances have no Patient ID (an Issuer only): nothing can show it is not an opted-out patient's. */
function studyWithoutPatientId(): { uid: string; series: string; instances: string[]; name: string; files: Buffer[] } {
  const uid = '1.2.826.0.1.3680043.9.7433.4.900';
  const series = `${uid}.1`;
  const instances = [`${series}.1`, `${series}.2`];
  const name = 'NOPID^NORA';
  const files = instances.map((sop, n) => {
    const els: El[] = [
      { tag: 0x00080005, vr: 'CS', value: 'ISO_IR 100' }, { tag: 0x00080008, vr: 'CS', value: ['ORIGINAL', 'PRIMARY', 'AXIAL'] },
      { tag: 0x00080016, vr: 'UI', value: SOP_CT }, { tag: 0x00080018, vr: 'UI', value: sop },
      { tag: 0x00080020, vr: 'DA', value: '20190401' }, { tag: 0x00080050, vr: 'SH', value: 'ACC89900' },
      { tag: 0x00080060, vr: 'CS', value: 'CT' }, { tag: 0x00100010, vr: 'PN', value: name },
      { tag: 0x00100021, vr: 'LO', value: 'HOSP-B' }, { tag: 0x00180015, vr: 'CS', value: 'PELVIS' },
      { tag: 0x0020000d, vr: 'UI', value: uid }, { tag: 0x0020000e, vr: 'UI', value: series },
      { tag: 0x00200010, vr: 'SH', value: 'S1' }, { tag: 0x00200011, vr: 'IS', value: '1' }, { tag: 0x00200013, vr: 'IS', value: String(n + 1) },
      { tag: 0x00280002, vr: 'US', value: [1] }, { tag: 0x00280004, vr: 'CS', value: 'MONOCHROME2' },
      { tag: 0x00280010, vr: 'US', value: [8] }, { tag: 0x00280011, vr: 'US', value: [8] },
      { tag: 0x00280100, vr: 'US', value: [16] }, { tag: 0x00280101, vr: 'US', value: [12] }, { tag: 0x00280102, vr: 'US', value: [11] },
      { tag: 0x00280103, vr: 'US', value: [0] }, { tag: 0x00280301, vr: 'CS', value: 'NO' },
      { tag: 0x7fe00010, vr: 'OW', value: Buffer.alloc(8 * 8 * 2, n + 1) },
    ];
    return encodePart10(els.sort((x, y) => x.tag - y.tag), { ts: 'explicitLE' });
  });
  return { uid, series, instances, name, files };
}

describe('per-client scope and query semantics against a real Orthanc', () => {
  let orthanc: OrthancHandle;
  let cohort: Cohort;
  let S: CohortStudy[];
  let dir: string;
  let cfg: Config;
  let parts: GatewayParts;
  let gw: Gateway;
  let proxy: Proxy;
  const bodies: string[] = [];
  const logLines: string[] = [];

  async function get(path: string, client: string, accept?: string, base = gw.url): Promise<Res> {
    const r = await fetch(`${base}${path}`, { headers: { authorization: `Bearer ${tok(client)}`, ...(accept ? { accept } : {}) } });
    const buf = Buffer.from(await r.arrayBuffer());
    const text = buf.toString('latin1');
    bodies.push(text);
    return { status: r.status, headers: r.headers, text, json: () => JSON.parse(buf.toString('utf8')) };
  }
  const rows = async (path: string, client: string): Promise<Row[]> => {
    const r = await get(path, client);
    assert.equal(r.status, 200, `${path} as ${client}: ${r.text.slice(0, 200)}`);
    return r.json() as Row[];
  };
  const studyUids = async (path: string, client: string): Promise<string[]> => (await rows(path, client)).map((r) => String(val(r, '0020000D'))).sort();
  const original = async (client: string, pseudo: string): Promise<string> => (await parts.store.lookupMany(client, 'uid', [pseudo])).get(pseudo) ?? `unknown:${pseudo}`;
  const problem = (r: Res): Record<string, unknown> => { const p = r.json() as Record<string, unknown>; delete p.requestId; return p; };
  async function auditLines(): Promise<Record<string, unknown>[]> {
    await sleep(150); // winston writes the file asynchronously
    return readFileSync(join(dir, 'audit.log'), 'utf8').trim().split('\n').map((l) => JSON.parse(l) as Record<string, unknown>);
  }
  /** Parts of a multipart body (independent of the product's reader): SOP Instance UIDs found in each. */
  function partCount(r: Res): number {
    const m = /boundary=("?)([^";]+)\1/.exec(r.headers.get('content-type') ?? '');
    assert.ok(m, 'multipart response names its boundary');
    return r.text.split(`--${m[2]}`).length - 2;
  }

  /** What 'two-parts' may see: series of the CHEST or the ABDOMEN, and the studies that have one, but the opted-out patient's (S3). */
  const shown = (x: { bodyPart: string }): boolean => x.bodyPart === 'CHEST' || x.bodyPart === 'ABDOMEN';
  const twoPartsStudies = (): CohortStudy[] => S.filter((s) => s !== S[3] && s.series.some(shown));

  const CLIENTS = ['cohort-a', 'cohort-b', 'cohort-c', 'cohort-d', 'by-accession', 'by-uid', 'shifted-list', 'sr-only', 'expired', 'future', 'limited', 'quota', 'serial', 'paged', 'two-parts', 'chest-ct-images'];

  function config(extra: { maxQueryScan?: number } = {}): Config {
    return validateConfig({
      server: { host: '127.0.0.1', port: 0, ...(extra.maxQueryScan ? { maxQueryScan: extra.maxQueryScan } : {}) },
      upstream: { url: proxy.url },
      state: { dir },
      optOut: { patients: [{ id: 'MRN-70003', issuer: 'HOSP-B' }], file: 'opt-out.yaml' },
      clients: CLIENTS.map((id) => {
        const c: Record<string, unknown> = { id, apiKeySha256: sha(tok(id)), profile: { options: ['retainUIDs'] } };
        if (id === 'cohort-a') c.scope = { studies: [S[0]!.uid, S[2]!.uid, S[1]!.uid], studiesFile: 'cohort-a.yaml', modalities: ['CT'] };
        if (id === 'cohort-b') {
          c.profile = { options: ['retainLongitudinalModifiedDates'], dateShift: { minDays: 10, maxDays: 40 } };
          c.scope = { studyDate: { from: '2020-01-01', until: '2020-12-31' }, bodyParts: ['CHEST'] };
          c.query = { allowedKeys: ['StudyDate', 'StudyInstanceUID', 'SeriesDate'], maxResults: 4 };
        }
        // cohort-b's scope with original UIDs, so that out-of-scope studies can be named in paths.
        if (id === 'cohort-d') c.scope = { studyDate: { from: '2020-01-01', until: '2020-12-31' }, bodyParts: ['CHEST'] };
        // An allow-list of accession numbers only: pushed down to the PACS as one comma list.
        if (id === 'by-accession') c.scope = { accessionNumbers: [S[0]!.accession, S[3]!.accession, S[5]!.accession] };
        if (id === 'by-uid') c.scope = { studies: [S[0]!.uid, S[5]!.uid] };
        // Shifted dates and an allow-list that names the opted-out patient's study (S3).
        if (id === 'shifted-list') {
          c.profile = { options: ['retainLongitudinalModifiedDates'], dateShift: { minDays: 10, maxDays: 400 } };
          c.scope = { studies: [S[0]!.uid, S[2]!.uid, S[3]!.uid, S[5]!.uid] };
        }
        if (id === 'sr-only') c.scope = { sopClasses: [SOP_SR] };
        // cohort-d's view through an allow-list of every study: the PACS returns the listed studies
        // of 2020 and the gateway filters them by body part after the fact (paging through the PACS).
        if (id === 'paged') c.scope = { studies: S.map((x) => x.uid), studyDate: { from: '2020-01-01', until: '2020-12-31' }, bodyParts: ['CHEST'] };
        // Filters the PACS cannot match exactly (two body parts), and the opted-out patient's study among them.
        if (id === 'two-parts') c.scope = { bodyParts: ['CHEST', 'ABDOMEN'] };
        // Series rules and instance rules together.
        if (id === 'chest-ct-images') c.scope = { bodyParts: ['CHEST'], sopClasses: [SOP_CT] };
        if (id === 'expired') c.scope = { validUntil: '2020-01-01' };
        if (id === 'future') c.scope = { validFrom: '2099-01-01T00:00:00Z' };
        if (id === 'limited') c.limits = { requestsPerMinute: 3 };
        if (id === 'quota') c.limits = { bytesPerDay: '1.5 kB' };
        if (id === 'serial') c.limits = { concurrentRequests: 1 };
        return c;
      }),
    }, join(dir, 'gateway.yaml'));
  }

  async function start(c: Config): Promise<{ gw: Gateway; parts: GatewayParts }> {
    const p = buildParts(c);
    const sink = new Writable({ write(chunk, _e, cb) { logLines.push(String(chunk)); cb(); } });
    const log = winston.createLogger({ level: 'debug', format: winston.format.json(), transports: [new winston.transports.Stream({ stream: sink })] });
    return { gw: await startGateway(c, { ...p, log }), parts: p };
  }

  before(async () => {
    cohort = generateCohort();
    S = [...cohort.studies];
    orthanc = await startOrthanc();
    await orthanc.upload([...cohort.files]);
    proxy = await startProxy(orthanc.dicomWebUrl);
    dir = mkdtempSync(join(tmpdir(), 'deid-scope-'));
    writeFileSync(join(dir, 'opt-out.yaml'), 'patients: []\n');
    // The opted-out patient's study is on cohort-a's list: the opt-out must still win.
    writeFileSync(join(dir, 'cohort-a.yaml'), `accessionNumbers: [${S[3]!.accession}]\n`);
    cfg = config();
    ({ gw, parts } = await start(cfg));
  });

  after(async () => {
    await gw?.close();
    await proxy?.close();
    await orthanc?.stop();
  });

  test('QIDO at every level shows exactly the client\'s cohort', async () => {
    // cohort-a: S0 and S2 by UID (S1 is listed but MR, filtered by modality), S3 by accession but opted out.
    assert.deepEqual(await studyUids('/dicom-web/studies', 'cohort-a'), [S[0]!.uid, S[2]!.uid].sort());
    const series = await rows('/dicom-web/series', 'cohort-a');
    assert.deepEqual(series.map((r) => val(r, '0020000E')).sort(), [S[0]!.series[0]!.uid, S[2]!.series[0]!.uid].sort());
    const instances = await rows('/dicom-web/instances', 'cohort-a');
    assert.deepEqual(instances.map((r) => val(r, '00080018')).sort(), [...S[0]!.series[0]!.instances, ...S[2]!.series[0]!.instances].sort());
    assert.deepEqual((await rows(`/dicom-web/studies/${S[2]!.uid}/series`, 'cohort-a')).map((r) => val(r, '00080060')), ['CT']);
    // cohort-c: everything but the opted-out patient (the same Patient ID under another issuer stays).
    const all = await studyUids('/dicom-web/studies', 'cohort-c');
    assert.deepEqual(all, S.filter((s) => s !== S[3]).map((s) => s.uid).sort());
    assert.ok(all.includes(S[4]!.uid), 'MRN-70003 of HOSP-A is another person and stays visible');
    // sr-only: only the study with an SR series, and only that series and instance.
    assert.deepEqual(await studyUids('/dicom-web/studies', 'sr-only'), [S[2]!.uid]);
    assert.deepEqual((await rows('/dicom-web/instances', 'sr-only')).map((r) => val(r, '00080018')), [S[2]!.series[1]!.instances[0]]);
    assert.deepEqual((await rows(`/dicom-web/studies/${S[2]!.uid}/series`, 'sr-only')).map((r) => val(r, '0020000E')), [S[2]!.series[1]!.uid]);
  });

  test('study and series rows count only what the client may see', async () => {
    const [a] = await rows(`/dicom-web/studies?StudyInstanceUID=${S[2]!.uid}`, 'cohort-a');
    assert.ok(a, 'the mixed study is listed for cohort-a');
    assert.equal(val(a, '00201206'), 1, 'one visible series');
    assert.equal(val(a, '00201208'), 2, 'two visible instances');
    assert.deepEqual(a['00080061']?.Value, ['CT']);
    const [c] = await rows(`/dicom-web/studies?StudyInstanceUID=${S[2]!.uid}`, 'cohort-c');
    assert.equal(val(c!, '00201206'), 2, 'an unrestricted client sees both series');
    assert.deepEqual(c!['00080061']?.Value, ['CT', 'SR']);
    const [sr] = await rows(`/dicom-web/studies?StudyInstanceUID=${S[2]!.uid}`, 'sr-only');
    assert.equal(val(sr!, '00201208'), 1);
    assert.deepEqual(sr!['00080061']?.Value, ['SR']);
  });

  test('a study-level key that aggregates over series matches only the series the client may see', async () => {
    // The mixed study has a CT and an SR series; cohort-a sees CT only, sr-only sees SR only.
    assert.deepEqual(await rows('/dicom-web/studies?ModalitiesInStudy=SR', 'cohort-a'), [], 'the hidden SR series is not detectable');
    assert.deepEqual(await rows('/dicom-web/studies?ModalitiesInStudy=S*', 'cohort-a'), [], 'nor through a wildcard');
    const all = await studyUids('/dicom-web/studies', 'cohort-a');
    assert.ok(all.includes(S[2]!.uid), 'the mixed study is in cohort-a\'s view');
    assert.deepEqual(await studyUids('/dicom-web/studies?ModalitiesInStudy=CT', 'cohort-a'), all, 'CT matches every study cohort-a sees');
    assert.deepEqual(await studyUids('/dicom-web/studies?ModalitiesInStudy=SR,CT', 'cohort-a'), all, 'a list matches when one value does');
    assert.deepEqual(await rows('/dicom-web/studies?ModalitiesInStudy=CT', 'sr-only'), [], 'instance rules hide the CT series of the mixed study too');
    assert.equal((await rows('/dicom-web/studies?ModalitiesInStudy=SR', 'sr-only')).length, 1, 'and its SR series matches');
    assert.ok((await rows('/dicom-web/studies?ModalitiesInStudy=SR', 'cohort-c')).length >= 1, 'a client that sees whole studies finds the mixed study by its SR series');
    // Aggregates a PACS computes over what a scoped client may not see are not returned: the
    // study's SOP classes where some series are hidden, and the patient's counts (other studies).
    proxy.addToStudyRows = {
      '00080062': { vr: 'UI', Value: [SOP_CT, SOP_SR] },
      '00201200': { vr: 'IS', Value: [3] }, '00201202': { vr: 'IS', Value: [4] }, '00201204': { vr: 'IS', Value: [9] },
    };
    try {
      const [mixed] = await rows(`/dicom-web/studies?StudyInstanceUID=${S[2]!.uid}`, 'cohort-a');
      assert.ok(mixed, 'the mixed study is listed');
      for (const t of ['00080062', '00201200', '00201202', '00201204']) assert.equal(mixed[t], undefined, `${t} is not returned to a client that sees part of the study`);
      const [optedOutOnly] = await rows(`/dicom-web/studies?StudyInstanceUID=${S[2]!.uid}`, 'cohort-c');
      assert.deepEqual(optedOutOnly?.['00080062']?.Value, [SOP_CT, SOP_SR], 'a client that sees whole studies gets their SOP classes');
      for (const t of ['00201200', '00201202', '00201204']) assert.equal(optedOutOnly?.[t], undefined, `${t}: the patient may have studies out of any scoped client's view`);
    } finally {
      proxy.addToStudyRows = undefined;
    }
    const refused = await get(`/dicom-web/studies?SOPClassesInStudy=${SOP_SR}`, 'cohort-a');
    assert.equal(refused.status, 400, 'SOPClassesInStudy cannot be matched on the visible part of a study: refused');
    assert.equal((refused.json() as { code: string }).code, 'QUERY_KEY_REFUSED');
  });

  test('out of scope answers exactly like "does not exist" on every route (404, same problem)', async () => {
    const i = (s: CohortStudy, k = 0, n = 0): string => `/dicom-web/studies/${s.uid}/series/${s.series[k]!.uid}/instances/${s.series[k]!.instances[n]}`;
    const routes = (s: CohortStudy, k = 0): string[] => [
      `/dicom-web/studies/${s.uid}`, `/dicom-web/studies/${s.uid}/metadata`, `/dicom-web/studies/${s.uid}/series`, `/dicom-web/studies/${s.uid}/instances`,
      `/dicom-web/studies/${s.uid}/series/${s.series[k]!.uid}`, `/dicom-web/studies/${s.uid}/series/${s.series[k]!.uid}/metadata`,
      `/dicom-web/studies/${s.uid}/series/${s.series[k]!.uid}/instances`,
      i(s, k), `${i(s, k)}/metadata`, `${i(s, k)}/frames/1`, `${i(s, k)}/bulk/7fe00010`, `${i(s, k)}/bulk/00080060`,
      `${i(s, k)}/rendered`, `${i(s, k)}/thumbnail`, `/dicom-web/studies/${s.uid}/thumbnail`,
    ];
    const ghost: CohortStudy = { ...S[0]!, uid: '1.2.3.999', series: [{ ...S[0]!.series[0]!, uid: '1.2.3.999.1', instances: ['1.2.3.999.1.1'] }] };
    const cases: [string, CohortStudy, number][] = [
      ['cohort-a', S[1]!, 0], // listed, but MR: modality filter
      ['cohort-a', S[3]!, 0], // on the allow-list file, but opted out
      ['cohort-a', S[5]!, 0], // not on the list
      ['cohort-c', S[3]!, 0], // opted out for every client
      ['sr-only', S[0]!, 0], // no SR in this study
      ['cohort-d', S[0]!, 0], // CHEST, but 2021: study date filter
      ['cohort-d', S[5]!, 0], // 2020, but HEAD: body part filter
    ];
    for (const [client, s, k] of cases) {
      const want = routes(ghost, k);
      const got = routes(s, k);
      for (let n = 0; n < got.length; n++) {
        const r = await get(got[n]!, client);
        const g = await get(want[n]!, client);
        assert.equal(r.status, 404, `${client} ${got[n]}: ${r.status}`);
        assert.equal(g.status, 404, `${client} ${want[n]} (does not exist): ${g.status}`);
        assert.deepEqual(problem(r), problem(g), `${client} ${got[n]}: same problem as for a resource that does not exist`);
      }
    }
    // Inside a visible study, an invisible series or instance is 404 too (cohort-a: the SR series of S2).
    for (const path of [`/dicom-web/studies/${S[2]!.uid}/series/${S[2]!.series[1]!.uid}/metadata`, `${i(S[2]!, 1)}`, `${i(S[2]!, 1)}/metadata`, `/dicom-web/studies/${S[2]!.uid}/series/${S[2]!.series[1]!.uid}`]) {
      assert.equal((await get(path, 'cohort-a')).status, 404, path);
    }
    // ... and the same paths are served to a client whose scope covers them.
    assert.equal((await get(`${i(S[2]!, 1)}/metadata`, 'sr-only')).status, 200);
    assert.equal((await get(`${i(S[0]!)}/frames/1`, 'cohort-a')).status, 200);
  });

  test('retrieve and metadata of a partly visible study carry only the visible instances, with no Warning', async () => {
    const r = await get(`/dicom-web/studies/${S[2]!.uid}`, 'cohort-a', 'multipart/related; type="application/dicom"');
    assert.equal(r.status, 200);
    assert.equal(partCount(r), 2);
    assert.equal(r.headers.get('warning'), null, 'out-of-scope instances are not announced');
    assert.ok(!r.text.includes(S[2]!.series[1]!.instances[0]!), 'the SR instance is not in the body');
    const meta = (await get(`/dicom-web/studies/${S[2]!.uid}/metadata`, 'cohort-a')).json() as Row[];
    assert.deepEqual(meta.map((m) => val(m, '00080060')), ['CT', 'CT']);
    const sr = await get(`/dicom-web/studies/${S[2]!.uid}`, 'sr-only', 'multipart/related; type="application/dicom"');
    assert.equal(sr.status, 200);
    assert.equal(partCount(sr), 1);
  });

  test('the opt-out file and the allow-list file are reloaded without restart; a broken file fails closed', async () => {
    const optOut = join(dir, 'opt-out.yaml');
    writeFileSync(optOut, `patients:\n  - id: ${S[0]!.patientId}\n    issuer: ${S[0]!.issuer}\n`);
    await sleep(400);
    let seen = await studyUids('/dicom-web/studies', 'cohort-c');
    assert.ok(!seen.includes(S[0]!.uid) && !seen.includes(S[1]!.uid), 'the newly opted-out patient is gone');
    assert.equal((await get(`/dicom-web/studies/${S[0]!.uid}/metadata`, 'cohort-a')).status, 404);
    writeFileSync(optOut, 'patients: [ {id: }\n');
    await sleep(400);
    const broken = await get('/dicom-web/studies', 'cohort-c');
    assert.equal(broken.status, 503);
    assert.equal((broken.json() as { code: string }).code, 'SCOPE_UNAVAILABLE');
    assert.ok(broken.headers.get('retry-after'), 'a 503 says when to retry');
    assert.equal((await fetch(`${gw.url}/readyz`)).status, 503);
    assert.ok(logLines.some((l) => l.includes('optOut.file') && l.includes('not valid YAML')), 'the ops log names the key and the problem');
    writeFileSync(optOut, 'patients: []\n');
    await sleep(400);
    seen = await studyUids('/dicom-web/studies', 'cohort-c');
    assert.ok(seen.includes(S[0]!.uid), 'the patient is back once removed from the list');
    assert.equal((await fetch(`${gw.url}/readyz`)).status, 200);
    // Allow-list file: add S4 by accession.
    writeFileSync(join(dir, 'cohort-a.yaml'), `accessionNumbers: [${S[3]!.accession}, ${S[4]!.accession}]\n`);
    await sleep(400);
    assert.deepEqual(await studyUids('/dicom-web/studies', 'cohort-a'), [S[0]!.uid, S[2]!.uid, S[4]!.uid].sort());
    writeFileSync(join(dir, 'cohort-a.yaml'), `accessionNumbers: [${S[3]!.accession}]\n`);
    await sleep(400);
    assert.deepEqual(await studyUids('/dicom-web/studies', 'cohort-a'), [S[0]!.uid, S[2]!.uid].sort());
  });

  test('pagination applies limit and offset to the filtered view', async () => {
    // cohort-b: 2020 and CHEST: six of patient 4's twelve studies (and none of the 2021+ CHEST studies).
    const expected = S.filter((s) => s.date.startsWith('2020') && s.series[0]!.bodyPart === 'CHEST').map((s) => s.uid).sort();
    assert.equal(expected.length, 6);
    const pages: string[][] = [];
    for (let offset = 0; offset <= 6; offset += 2) {
      pages.push(await Promise.all((await rows(`/dicom-web/studies?limit=2&offset=${offset}`, 'cohort-b')).map((r) => original('cohort-b', String(val(r, '0020000D'))))));
    }
    assert.deepEqual(pages.map((p) => p.length), [2, 2, 2, 0]);
    assert.deepEqual(pages.flat().sort(), expected);
    // The client's cap (query.maxResults: 4) bounds limit, and no limit means the cap.
    assert.equal((await rows('/dicom-web/studies?limit=50', 'cohort-b')).length, 4);
    assert.equal((await rows('/dicom-web/studies', 'cohort-b')).length, 4);
    assert.equal((await rows('/dicom-web/studies?offset=4', 'cohort-b')).length, 2);
  });

  test('a shifted client queries dates in its own time line and gets exactly the matching studies', async () => {
    const all: { uid: string; shifted: string }[] = [];
    for (let offset = 0; offset < 6; offset += 4) {
      for (const r of await rows(`/dicom-web/studies?offset=${offset}`, 'cohort-b')) all.push({ uid: await original('cohort-b', String(val(r, '0020000D'))), shifted: String(val(r, '00080020')) });
    }
    assert.equal(all.length, 6);
    const byOrig = new Map(S.map((s) => [s.uid, s.date]));
    for (const x of all) assert.ok(x.shifted < byOrig.get(x.uid)!, 'dates are shifted into the past');
    all.sort((a, b) => a.shifted.localeCompare(b.shifted));
    const lo = all[1]!.shifted;
    const hi = all[3]!.shifted;
    const got = async (range: string): Promise<string[]> => (await rows(`/dicom-web/studies?StudyDate=${range}`, 'cohort-b')).map((r) => String(val(r, '00080020'))).sort();
    assert.deepEqual(await got(`${lo}-${hi}`), [all[1]!.shifted, all[2]!.shifted, all[3]!.shifted]);
    const dayBefore = (d: string): string => { const t = new Date(Date.UTC(+d.slice(0, 4), +d.slice(4, 6) - 1, +d.slice(6, 8)) - 86_400_000); return t.toISOString().slice(0, 10).replace(/-/g, ''); };
    assert.deepEqual(await got(`${lo}-${dayBefore(hi)}`), [all[1]!.shifted, all[2]!.shifted], 'the upper bound is exact');
    assert.deepEqual(await got(lo), [lo], 'a single date matches that shifted date only');
    assert.deepEqual(await got(`-${dayBefore(lo)}`), [all[0]!.shifted], 'open start');
    // The original date of a study, which the client should not know, matches nothing on its own.
    const origOfLo = byOrig.get(all[1]!.uid)!;
    assert.ok(!(await got(origOfLo)).includes(lo), 'original dates are not matched as such');
    const bad = await get('/dicom-web/studies?StudyDate=2020-01-01', 'cohort-b');
    assert.equal(bad.status, 400);
    assert.equal((bad.json() as { code: string }).code, 'BAD_QUERY');
  });

  test('one pseudonymous Patient ID and one shifted date per patient and client on every route (QIDO at each level, metadata, retrieve)', async () => {
    // The cohort's patients have an Issuer of Patient ID, which is part of the patient's key.
    const studies = await rows('/dicom-web/studies?includefield=00100020', 'cohort-b');
    assert.ok(studies.length >= 4);
    const pids = new Set<string>();
    for (const st of studies) {
      const uid = String(val(st, '0020000D'));
      const pid = String(val(st, '00100020'));
      const date = String(val(st, '00080020'));
      pids.add(pid);
      const meta = (await get(`/dicom-web/studies/${uid}/metadata`, 'cohort-b')).json() as Row[];
      assert.ok(meta.length > 0);
      for (const m of meta) {
        assert.equal(String(val(m, '00100020')), pid, `metadata of ${uid}: the Patient ID of the study row`);
        assert.equal(String(val(m, '00080020')), date, `metadata of ${uid}: the shifted Study Date of the study row`);
      }
      for (const se of await rows(`/dicom-web/studies/${uid}/series`, 'cohort-b')) {
        const seriesUid = String(val(se, '0020000E'));
        for (const i of await rows(`/dicom-web/studies/${uid}/series/${seriesUid}/instances`, 'cohort-b')) {
          if (val(i, '00100020') !== undefined) assert.equal(String(val(i, '00100020')), pid, 'instance row');
        }
      }
      const r = await get(`/dicom-web/studies/${uid}`, 'cohort-b', 'multipart/related; type="application/dicom"');
      assert.equal(r.status, 200);
      const part10 = Buffer.from(r.text, 'latin1');
      assert.ok(part10.includes(Buffer.from(pid, 'latin1')), `the retrieve of ${uid} carries the Patient ID of the study row`);
    }
    assert.ok(pids.size >= 1);
  });

  test('shifted dates of an allow-listed client: the PACS is asked the same whatever the date, so timing cannot locate original dates', async () => {
    const mine = (await rows('/dicom-web/studies', 'shifted-list')).map((r) => ({ pseudo: String(val(r, '0020000D')), shifted: String(val(r, '00080020')) }));
    assert.equal(mine.length, 3, 'S0, S2 and S5 (S3 is opted out)');
    const asked: string[][] = [];
    for (const x of mine) {
      const mark = proxy.seen.length;
      const got = (await rows(`/dicom-web/studies?StudyDate=${x.shifted}`, 'shifted-list')).map((r) => String(val(r, '0020000D')));
      assert.deepEqual(got, mine.filter((m) => m.shifted === x.shifted).map((m) => m.pseudo), `StudyDate=${x.shifted}: exactly the studies of that shifted date`);
      asked.push(proxy.seen.slice(mark).filter((u) => u.startsWith('/dicom-web/studies?')));
    }
    // Dates with no study of the client's, before, between and after: the same PACS query again.
    // (The shifts come from this run's key, so a window that happens to hold a shifted date is skipped.)
    const holds = (x: string): boolean => { const [from, until] = x.includes('-') ? x.split('-') : [x, x]; return mine.some((m) => (!from || m.shifted >= from) && (!until || m.shifted <= until)); };
    for (const x of ['19900101', '20200615-20200620', '20190301-20190305', '-20000101', '20300101-'].filter((d) => !holds(d))) {
      const mark = proxy.seen.length;
      assert.deepEqual(await rows(`/dicom-web/studies?StudyDate=${x}`, 'shifted-list'), []);
      asked.push(proxy.seen.slice(mark).filter((u) => u.startsWith('/dicom-web/studies?')));
    }
    const first = JSON.stringify(asked[0]);
    for (const a of asked) assert.equal(JSON.stringify(a), first, 'one and the same upstream query for every date asked');
    assert.ok(!new URL(asked[0]![0]!, 'http://x').searchParams.has('00080020'), 'no date window derived from the client\'s value reaches the PACS');
    // The series level too (the attack's /series?Modality=…&StudyDate=x).
    const s1 = proxy.seen.length;
    await rows(`/dicom-web/series?Modality=CT&StudyDate=${mine[0]!.shifted}`, 'shifted-list');
    const s2 = proxy.seen.length;
    await rows('/dicom-web/series?Modality=CT&StudyDate=19900101', 'shifted-list');
    const q1 = proxy.seen.slice(s1, s2).filter((u) => u.startsWith('/dicom-web/series?'));
    const q2 = proxy.seen.slice(s2).filter((u) => u.startsWith('/dicom-web/series?'));
    assert.deepEqual(q2, q1, 'series queries ask the PACS the same whatever the date');
  });

  test('shifted dates of a client scoped by filters are matched on its date index: no window from the asked date reaches the PACS', async () => {
    const all: { pseudo: string; shifted: string }[] = [];
    for (let offset = 0; offset < 6; offset += 4) {
      for (const r of await rows(`/dicom-web/studies?offset=${offset}`, 'cohort-b')) all.push({ pseudo: String(val(r, '0020000D')), shifted: String(val(r, '00080020')) });
    }
    const asked: { x: string; up: string[]; found: number }[] = [];
    for (const x of [all[0]!.shifted, all[2]!.shifted, '19900101', '20200615-20200620', `-${all[1]!.shifted}`]) {
      const m = proxy.seen.length;
      const got = (await rows(`/dicom-web/studies?StudyDate=${x}`, 'cohort-b')).map((r) => String(val(r, '00080020'))).sort();
      const [from, until] = x.includes('-') ? x.split('-') : [x, x];
      assert.deepEqual(got, all.map((a) => a.shifted).filter((d) => (!from || d >= from) && (!until || d <= until)).sort(), `StudyDate=${x}`);
      asked.push({ x, found: got.length, up: proxy.seen.slice(m).filter((u) => /^\/dicom-web\/studies\?/.test(u)) });
    }
    assert.ok(asked.some((a) => a.found > 0) && asked.some((a) => a.found === 0), 'dates with and without studies were asked');
    // Each date query asks for its matching studies by UID; a request without a UID list is the
    // date index's scan of the scope, made at most once here (it is reused for a minute).
    let scans = 0;
    for (const a of asked) {
      for (const u of a.up) {
        const sp = new URL(u, 'http://x').searchParams;
        assert.equal(sp.get('00080020'), '20200101-20201231', `StudyDate=${a.x}: only the scope's own range reaches the PACS, never a window from the asked date`);
        if (!sp.has('0020000D')) scans++;
      }
      // Matching studies are asked for by UID; a date no visible study has is answered from the index alone.
      assert.equal(a.up.some((u) => new URL(u, 'http://x').searchParams.has('0020000D')), a.found > 0, `StudyDate=${a.x}`);
    }
    assert.ok(scans <= 1, `the scope was scanned ${scans} times for the index`);
  });

  test('other shifted date keys (SeriesDate) of a client scoped by filters: no window from the asked date reaches the PACS', async () => {
    const all: string[] = [];
    for (let offset = 0; offset < 40; offset += 4) {
      const page = await rows(`/dicom-web/series?includefield=SeriesDate&offset=${offset}`, 'cohort-b');
      for (const r of page) all.push(String(val(r, '00080021')));
      if (page.length < 4) break;
    }
    assert.ok(all.length >= 2 && all.every((d) => /^\d{8}$/.test(d)), `series with shifted dates: ${all.join(' ')}`);
    const asked: { x: string; up: string[]; found: number }[] = [];
    for (const x of [all[0]!, '19900101', '20200615-20200620', `-${all[0]!}`]) {
      const got: string[] = [];
      const m = proxy.seen.length;
      for (let offset = 0; offset < 40; offset += 4) {
        const page = await rows(`/dicom-web/series?SeriesDate=${x}&offset=${offset}`, 'cohort-b');
        for (const r of page) got.push(String(val(r, '00080021')));
        if (page.length < 4) break;
      }
      const [from, until] = x.includes('-') ? x.split('-') : [x, x];
      assert.deepEqual(got.sort(), all.filter((d) => (!from || d >= from) && (!until || d <= until)).sort(), `SeriesDate=${x}: exactly the series of those shifted dates`);
      asked.push({ x, found: got.length, up: proxy.seen.slice(m).filter((u) => u.startsWith('/dicom-web/series?')) });
    }
    assert.ok(asked.some((a) => a.found > 0) && asked.some((a) => a.found === 0), 'dates with and without series were asked');
    for (const a of asked) {
      for (const u of a.up) assert.ok(!new URL(u, 'http://x').searchParams.has('00080021'), `SeriesDate=${a.x}: ${u} carries a date window`);
    }
    // The first page's upstream query is the same whatever the date asked.
    const firsts = asked.map((a) => a.up[0]);
    for (const f of firsts) assert.equal(f, firsts[0], 'one and the same upstream query for every date asked');
  });

  test('allowed match keys per client; identifying keys refused with a stable code', async () => {
    const r = await get('/dicom-web/studies?ModalitiesInStudy=CT', 'cohort-b');
    assert.equal(r.status, 400);
    assert.equal((r.json() as { code: string }).code, 'QUERY_KEY_REFUSED');
    assert.match((r.json() as { detail: string }).detail, /ModalitiesInStudy is not among this client's allowed match keys/);
    for (const q of ['PatientName=COHORT*', 'AccessionNumber=ACC81000', 'PatientBirthDate=19600101']) {
      const x = await get(`/dicom-web/studies?${q}`, 'cohort-c');
      assert.equal(x.status, 400, q);
      assert.equal((x.json() as { code: string }).code, 'QUERY_KEY_REFUSED', q);
    }
    // UID lists in both forms, intersected with the scope.
    const both = `${S[0]!.uid}\\${S[1]!.uid}`;
    assert.deepEqual(await studyUids(`/dicom-web/studies?StudyInstanceUID=${encodeURIComponent(both)}`, 'cohort-a'), [S[0]!.uid], 'backslash list');
    assert.deepEqual(await studyUids(`/dicom-web/studies?StudyInstanceUID=${S[0]!.uid},${S[1]!.uid}`, 'cohort-a'), [S[0]!.uid], 'comma list');
  });

  test('a QIDO that would scan more than server.maxQueryScan records stops with a Warning', async () => {
    const other = await start(config({ maxQueryScan: 5 }));
    try {
      const r = await get('/dicom-web/instances?limit=100', 'cohort-a', undefined, other.gw.url);
      assert.equal(r.status, 200);
      // cohort-a's mixed list (UIDs and a file of accession numbers) cannot be pushed down: its
      // queries are bounded by its cohort index, which the budget cuts.
      assert.match(r.headers.get('warning') ?? '', /^299 deid-gateway "(The query stopped after examining 5 records|Only the first \d+ studies in scope were searched \(server.maxQueryScan\)); results may be incomplete/);
      assert.ok((r.json() as Row[]).length <= 5, 'no more rows than were examined');
      // Within the budget, no Warning.
      const small = await get(`/dicom-web/studies/${S[0]!.uid}/instances`, 'cohort-a', undefined, other.gw.url);
      assert.equal(small.status, 200);
      assert.equal(small.headers.get('warning'), null);
    } finally {
      await other.gw.close();
    }
  });

  test('access windows: before validFrom and after validUntil every route is 403', async () => {
    for (const client of ['expired', 'future']) {
      for (const path of ['/dicom-web/studies', `/dicom-web/studies/${S[0]!.uid}/metadata`, `/dicom-web/studies/${S[0]!.uid}`]) {
        const r = await get(path, client);
        assert.equal(r.status, 403, `${client} ${path}`);
        assert.equal((r.json() as { code: string }).code, 'ACCESS_WINDOW_CLOSED');
      }
    }
  });

  test('rate and quota limits answer 429 with Retry-After, and survive a restart', async () => {
    for (let n = 0; n < 3; n++) assert.equal((await get('/dicom-web/studies?limit=1', 'limited')).status, 200, `request ${n + 1} of 3`);
    const limited = await get('/dicom-web/studies?limit=1', 'limited');
    assert.equal(limited.status, 429);
    assert.equal((limited.json() as { code: string }).code, 'RATE_LIMITED');
    const retry = Number(limited.headers.get('retry-after'));
    assert.ok(retry >= 1 && retry <= 60, `Retry-After ${retry} is within the minute`);
    // Quota: 1.5 kB a day; one QIDO of the whole cohort is more than that.
    assert.equal((await get('/dicom-web/studies', 'quota')).status, 200);
    const quota = await get('/dicom-web/studies?limit=1', 'quota');
    assert.equal(quota.status, 429);
    assert.equal((quota.json() as { code: string }).code, 'QUOTA_EXCEEDED');
    assert.ok(Number(quota.headers.get('retry-after')) <= 86_400, 'quota Retry-After is at most a day');
    // Restart on the same state directory: the counters are still there.
    await gw.close();
    ({ gw, parts } = await start(cfg));
    assert.equal((await get('/dicom-web/studies?limit=1', 'limited')).status, 429, 'the rate bucket survived the restart');
    assert.equal((await get('/dicom-web/studies?limit=1', 'quota')).status, 429, 'the day\'s bytes survived the restart');
    assert.equal((await get('/dicom-web/studies?limit=1', 'cohort-c')).status, 200, 'other clients are not affected');
  });

  test('pagination pages through the PACS: several upstream pages, exactly the right rows', async () => {
    // What the gateway asks the PACS for 'paged' (its list, within the scope's date range), in the PACS's own order; CHEST ones visible.
    const res = await fetch(`${orthanc.dicomWebUrl}/studies?StudyDate=20200101-20201231&limit=100`, { headers: { accept: 'application/dicom+json' } });
    const direct = ((await res.json()) as Row[]).map((r) => String(val(r, '0020000D')));
    assert.equal(direct.length, 12);
    const bodyPart = new Map(S.map((s) => [s.uid, s.series[0]!.bodyPart]));
    const visible = direct.filter((u) => bodyPart.get(u) === 'CHEST');
    assert.equal(visible.length, 6);
    const pagesSince = (mark: number): [number, number][] => proxy.seen.slice(mark).filter((u) => u.startsWith('/dicom-web/studies?')).map((u) => {
      const q = new URL(u, 'http://x').searchParams;
      return [Number(q.get('limit')), Number(q.get('offset') ?? 0)];
    });
    for (const [offset, limit] of [[0, 4], [1, 3], [3, 2], [4, 4], [5, 1], [6, 2], [0, 100]] as const) {
      const mark = proxy.seen.length;
      const got = (await rows(`/dicom-web/studies?offset=${offset}&limit=${limit}`, 'paged')).map((r) => String(val(r, '0020000D')));
      assert.deepEqual(got, visible.slice(offset, offset + limit), `offset=${offset} limit=${limit}: the visible rows in the PACS's order`);
      const pages = pagesSince(mark);
      for (let n = 1; n < pages.length; n++) assert.equal(pages[n]![1], pages[n - 1]![0] + pages[n - 1]![1], `offset=${offset} limit=${limit}: each page starts where the last ended`);
      if (offset + limit > visible.length && limit < 100) {
        // More rows wanted than are visible: every PACS row is examined, over several pages.
        assert.ok(pages.length >= 2, `offset=${offset} limit=${limit}: ${JSON.stringify(pages)} is more than one page`);
      }
    }
    const mark = proxy.seen.length;
    await rows('/dicom-web/studies?offset=4&limit=4', 'paged');
    assert.deepEqual(pagesSince(mark), [[10, 0], [20, 10]], 'a first page of 10 rows, then twice as many');
  });

  test('an accession-number allow-list is pushed down to the PACS as one list and matched there', async () => {
    const mark = proxy.seen.length;
    // S3 is on the list but opted out.
    assert.deepEqual(await studyUids('/dicom-web/studies', 'by-accession'), [S[0]!.uid, S[5]!.uid].sort());
    const up = proxy.seen.slice(mark).filter((u) => u.startsWith('/dicom-web/studies?'));
    assert.equal(up.length, 1, 'one PACS query');
    const sent = new URL(up[0]!, 'http://x').searchParams.get('00080050');
    assert.deepEqual(sent?.split(',').sort(), [S[0]!.accession, S[3]!.accession, S[5]!.accession].sort(), 'the accession numbers reach the PACS');
    assert.deepEqual((await rows('/dicom-web/series', 'by-accession')).map((r) => val(r, '0020000E')).sort(), [S[0]!.series[0]!.uid, S[5]!.series[0]!.uid].sort());
    assert.equal((await get(`/dicom-web/studies/${S[5]!.uid}/metadata`, 'by-accession')).status, 200);
    assert.equal((await get(`/dicom-web/studies/${S[1]!.uid}/metadata`, 'by-accession')).status, 404);
    assert.equal((await get(`/dicom-web/studies/${S[3]!.uid}/metadata`, 'by-accession')).status, 404);
  });

  test('below study level the allow-list is pushed down too: hidden studies are neither fetched nor examined, so no Warning counts them', async () => {
    // 30 instances in the PACS, 4 of them in the client's two studies; a budget of 6 records.
    const total = S.reduce((n, s) => n + s.series.reduce((m, x) => m + x.instances.length, 0), 0);
    assert.ok(total > 12, `the PACS holds ${total} instances`);
    const other = await start(config({ maxQueryScan: 6 }));
    try {
      for (const [client, key, listed] of [['by-uid', '0020000D', [S[0]!.uid, S[5]!.uid]], ['by-accession', '00080050', [S[0]!.accession, S[3]!.accession, S[5]!.accession]]] as const) {
        for (const level of ['instances', 'series'] as const) {
          const mark = proxy.seen.length;
          const r = await get(`/dicom-web/${level}?limit=100`, client, undefined, other.gw.url);
          assert.equal(r.status, 200, r.text);
          assert.equal(r.headers.get('warning'), null, `${client} /${level}: nothing hidden was examined, so no truncation`);
          const want = level === 'instances'
            ? [S[0]!, S[5]!].flatMap((s) => s.series.flatMap((x) => x.instances)).sort()
            : [S[0]!, S[5]!].flatMap((s) => s.series.map((x) => x.uid)).sort();
          assert.deepEqual((r.json() as Row[]).map((x) => val(x, level === 'instances' ? '00080018' : '0020000E')).sort(), want);
          const up = proxy.seen.slice(mark).filter((u) => u.startsWith(`/dicom-web/${level}?`));
          assert.ok(up.length >= 1, 'the PACS was asked');
          for (const u of up) assert.deepEqual(new URL(u, 'http://x').searchParams.get(key)?.split(',').sort(), [...listed].sort(), `${client} /${level}: the allow-list reaches the PACS`);
        }
      }
    } finally {
      await other.gw.close();
    }
  });

  test('a client scoped by filters the PACS cannot match asks it only for its own studies at every level (its cohort index): hidden and opted-out studies are never fetched for its queries', async () => {
    // two-parts: CHEST or ABDOMEN (two body parts: not a key the PACS matches as a list); S3 is the opted-out patient's.
    const visible = twoPartsStudies();
    const hidden = S.filter((s) => !visible.includes(s));
    assert.ok(hidden.length >= 5 && hidden.includes(S[3]!) && visible.length >= 5, `${visible.length} visible, ${hidden.length} hidden`);
    await rows('/dicom-web/studies?limit=1', 'two-parts'); // the index is read (at most once a minute)
    for (const level of ['studies', 'series', 'instances'] as const) {
      const mark = proxy.seen.length;
      const got = (await rows(`/dicom-web/${level}?limit=100`, 'two-parts')).map((r) => String(val(r, level === 'studies' ? '0020000D' : level === 'series' ? '0020000E' : '00080018'))).sort();
      const want = level === 'studies' ? visible.map((s) => s.uid)
        : level === 'series' ? visible.flatMap((s) => s.series.filter(shown).map((x) => x.uid))
          : visible.flatMap((s) => s.series.filter(shown).flatMap((x) => x.instances));
      assert.deepEqual(got, want.sort(), `/${level}: exactly the client's view`);
      const up = proxy.seen.slice(mark).filter((u) => u.startsWith(`/dicom-web/${level}?`));
      assert.ok(up.length >= 1, 'the PACS was asked');
      // Series and instances are asked for by the series the client may see in its own studies
      // (listed from its own studies first): a hidden series of a visible study (a HEAD series
      // for a CHEST and ABDOMEN client) is never fetched.
      // (The series lists, read once per index, name the client's own studies.)
      const ownStudies = visible.map((s) => s.uid).sort();
      const isList = (u: string): boolean => level === 'series' && new URL(u, 'http://x').searchParams.get('0020000E') === null;
      for (const u of up.filter(isList)) assert.deepEqual(new URL(u, 'http://x').searchParams.get('0020000D')?.split(',').sort(), ownStudies, "the series lists read the client's own studies");
      const [key, own] = level === 'studies' ? ['0020000D', ownStudies] : ['0020000E', visible.flatMap((s) => s.series.filter(shown).map((x) => x.uid)).sort()];
      assert.ok(up.some((u) => !isList(u)), `/${level}: queried`);
      for (const u of up.filter((x) => !isList(x))) assert.deepEqual(new URL(u, 'http://x').searchParams.get(key)?.split(',').sort(), own, `/${level}: only the client's own studies (visible series) are asked for`);
      for (const x of visible.flatMap((s) => s.series.filter((y) => !shown(y)))) assert.ok(!up.some((u) => u.includes(x.uid)), `/${level}: hidden series ${x.uid} of a visible study was never asked for`);
      for (const h of hidden) assert.ok(!proxy.seen.slice(mark).some((u) => u.includes(h.uid)), `/${level}: hidden study ${h.uid} was never asked for`);
    }
    // An instance-level key (SOP Class UID) from a client with series rules: the instances are
    // asked for by the series it may see (so that the hidden series of a visible study are not
    // fetched), whose list is kept with the index: asked again, the series are not listed again.
    for (const sopClass of [SOP_MR, SOP_CT, '1.2.840.10008.5.1.4.1.1.12.1']) {
      for (const round of [1, 2]) {
        const mark = proxy.seen.length;
        const got = (await rows(`/dicom-web/instances?SOPClassUID=${sopClass}&limit=100`, 'two-parts')).map((r) => String(val(r, '00080018'))).sort();
        assert.deepEqual(got, visible.flatMap((s) => s.series.filter((x) => shown(x) && x.sopClass === sopClass).flatMap((x) => x.instances)).sort(), `instances?SOPClassUID=${sopClass}: exactly the client's view`);
        const asked = proxy.seen.slice(mark);
        const instanceQueries = asked.filter((u) => u.startsWith('/dicom-web/instances?'));
        assert.ok(instanceQueries.length >= 1);
        for (const u of instanceQueries) {
          const sp = new URL(u, 'http://x').searchParams;
          assert.deepEqual(sp.get('0020000E')?.split(',').sort(), visible.flatMap((s) => s.series.filter(shown).map((x) => x.uid)).sort(), `instances?SOPClassUID=${sopClass}: asked by the client's own visible series`);
          assert.equal(sp.get('0020000D'), null, 'not by study');
          assert.equal(sp.get('00080016'), sopClass, 'the SOP class is matched by the PACS within those series');
        }
        if (round === 2) assert.equal(asked.filter((u) => u.startsWith('/dicom-web/series?')).length, 0, `instances?SOPClassUID=${sopClass} asked again: the series list is reused`);
        for (const h of hidden) assert.ok(!asked.some((u) => u.includes(h.uid)), `instances?SOPClassUID=${sopClass}: hidden study ${h.uid} was never asked for`);
      }
    }
    // Instances of one modality: the index's studies are asked for their series of it, then the
    // instances of those series only (the PACS matches a series-level key on every instance that
    // has it otherwise, hidden ones included). A modality only hidden series have is [] after
    // the series query alone.
    const modalities = [...new Set(S.flatMap((s) => s.series.map((x) => x.modality)))];
    const bodyParts = [...new Set(S.flatMap((s) => s.series.map((x) => x.bodyPart)))];
    const asks: [string, string, (x: CohortStudy['series'][number]) => boolean][] = [
      ...[...modalities, 'XA'].map((m): [string, string, (x: CohortStudy['series'][number]) => boolean] => ['Modality', m, (x) => x.modality === m]),
      ...bodyParts.map((b): [string, string, (x: CohortStudy['series'][number]) => boolean] => ['BodyPartExamined', b, (x) => x.bodyPart === b]),
    ];
    for (const [key, value, has] of asks) {
      const modality = `${value} (${key})`;
      const mark = proxy.seen.length;
      const got = (await rows(`/dicom-web/instances?${key}=${value}&limit=100`, 'two-parts')).map((r) => String(val(r, '00080018'))).sort();
      const ownOfIt = visible.flatMap((s) => s.series.filter((x) => shown(x) && has(x)));
      assert.deepEqual(got, ownOfIt.flatMap((x) => x.instances).sort(), `instances?${key}=${value}: exactly the client's view`);
      const asked = proxy.seen.slice(mark);
      const seriesQueries = asked.filter((u) => u.startsWith('/dicom-web/series?'));
      assert.ok(seriesQueries.length >= 1, `instances?Modality=${modality}: its series are asked for first`);
      for (const u of seriesQueries) assert.deepEqual(new URL(u, 'http://x').searchParams.get('0020000D')?.split(',').sort(), visible.map((s) => s.uid).sort());
      const instanceQueries = asked.filter((u) => u.startsWith('/dicom-web/instances?'));
      const mySeries = visible.flatMap((s) => s.series.filter((x) => shown(x) && has(x)).map((x) => x.uid)).sort();
      if (!mySeries.length) assert.deepEqual(instanceQueries, [], `instances?Modality=${modality}: no own series of it, no instance query`);
      for (const u of instanceQueries) {
        const sp = new URL(u, 'http://x').searchParams;
        assert.deepEqual(sp.get('0020000E')?.split(',').sort(), mySeries, `instances?Modality=${modality}: asked by the client's own series of it`);
        assert.equal(sp.get('00080060') ?? sp.get('00180015'), null, 'the series-level key is not matched on instances');
      }
      for (const h of hidden) assert.ok(!asked.some((u) => u.includes(h.uid)), `instances?Modality=${modality}: hidden study ${h.uid} was never asked for`);
    }
    // The opted-out patient's study named by UID answers exactly as a UID the PACS does not have,
    // and neither reaches the PACS: nothing to time.
    for (const uid of [S[3]!.uid, '1.2.826.0.1.3680043.9.7433.99.1']) {
      for (const level of ['studies', 'series', 'instances']) {
        const mark = proxy.seen.length;
        const r = await get(`/dicom-web/${level}?StudyInstanceUID=${uid}`, 'two-parts');
        assert.equal(r.status, 200);
        assert.equal(r.text, '[]', `${level}?StudyInstanceUID=${uid}`);
        assert.deepEqual(proxy.seen.slice(mark).filter((u) => /^\/dicom-web\/(studies|series|instances)\?/.test(u)), [], `${level}?StudyInstanceUID=${uid}: the PACS is not asked`);
      }
    }
  });

  test('a hidden series of a visible study (a HEAD series in a CHEST study) is never fetched for a client scoped by series rules: series and instances are asked for by the series it may see', async () => {
    // S0 is a CHEST study that two-parts sees; a HEAD series is added to it for this test.
    const s0 = S[0]!;
    const hiddenSeries = `${s0.uid}.66`;
    const hiddenSops = [1, 2].map((n) => `${hiddenSeries}.${n}`);
    await orthanc.upload(hiddenSops.map((sop, i) => encodeInstance({ p: { id: s0.patientId, issuer: s0.issuer, name: s0.patientName }, studyUid: s0.uid, accession: s0.accession, date: s0.date, seriesUid: hiddenSeries, seriesNumber: 66, modality: 'CT', bodyPart: 'HEAD', sopClass: SOP_CT, sop, number: i + 1 })));
    // A gateway of its own: its index and series lists are read with the HEAD series in the PACS.
    const other = await start(config());
    try {
      const visible = twoPartsStudies();
      const shownSeries = visible.flatMap((s) => s.series.filter(shown).map((x) => x.uid)).sort();
      for (const [level, tag, want] of [
        ['series', '0020000E', shownSeries],
        ['instances', '00080018', visible.flatMap((s) => s.series.filter(shown).flatMap((x) => x.instances)).sort()],
      ] as const) {
        const mark = proxy.seen.length;
        const r = await get(`/dicom-web/${level}?limit=100`, 'two-parts', undefined, other.gw.url);
        assert.equal(r.status, 200, r.text);
        assert.deepEqual((r.json() as Row[]).map((x) => String(val(x, tag))).sort(), want, `/${level}: exactly the client's view`);
        const asked = proxy.seen.slice(mark).filter((u) => u.startsWith(`/dicom-web/${level}?`)).map((u) => new URL(u, 'http://x').searchParams);
        // The series lists (read once per index, from the client's own studies) name studies;
        // every query names the series the client may see, never a study (the PACS would then
        // return the hidden series of S0 too).
        const queries = asked.filter((sp) => sp.get('0020000D') === null);
        assert.ok(queries.length >= 1, `/${level}: the PACS was asked`);
        for (const sp of queries) assert.deepEqual(sp.get('0020000E')?.split(',').sort(), shownSeries, `/${level}: by the series the client may see`);
        for (const sp of asked.filter((x) => x.get('0020000D') !== null)) {
          assert.equal(level, 'series', 'only series are listed by study');
          assert.deepEqual(sp.get('0020000D')?.split(',').sort(), visible.map((x) => x.uid).sort(), "the series lists are read from the client's own studies");
        }
      }
      // Series and instance rules together: the study's row counts read the allowed instances of
      // its visible series only, never the HEAD series (whose instances have the allowed class).
      {
        const mark = proxy.seen.length;
        const r = await get(`/dicom-web/studies?StudyInstanceUID=${s0.uid}&includefield=00201208`, 'chest-ct-images', undefined, other.gw.url);
        assert.equal(r.status, 200, r.text);
        const chest = s0.series.filter((x) => x.bodyPart === 'CHEST' && x.sopClass === SOP_CT);
        assert.deepEqual((r.json() as Row[]).map((x) => Number(val(x, '00201208'))), [chest.flatMap((x) => x.instances).length], 'the visible instances counted');
        const reads = proxy.seen.slice(mark).filter((u) => /\/instances$/.test(u.split('?')[0]!));
        assert.ok(reads.length >= 1, 'instances were read');
        for (const u of reads) assert.ok(!u.includes(hiddenSeries) && !u.startsWith(`/dicom-web/studies/${s0.uid}/instances`), `the HEAD series is not read: ${u}`);
      }
      // Inside the study (its UID in the path), with and without a Modality the HEAD series has
      // too: the PACS is asked for S0's visible series by UID, never for the whole study.
      const s0Shown = s0.series.filter(shown);
      for (const [level, tag, want] of [
        ['series', '0020000E', s0Shown.map((x) => x.uid).sort()],
        ['instances', '00080018', s0Shown.flatMap((x) => x.instances).sort()],
      ] as const) {
        for (const key of ['', '&Modality=CT']) {
          const mark = proxy.seen.length;
          const r = await get(`/dicom-web/studies/${s0.uid}/${level}?limit=100${key}`, 'two-parts', undefined, other.gw.url);
          assert.equal(r.status, 200, r.text);
          assert.deepEqual((r.json() as Row[]).map((x) => String(val(x, tag))).sort(), want, `/studies/{S0}/${level}${key}: exactly the client's view`);
          const asked = proxy.seen.slice(mark).filter((u) => u.startsWith(`/dicom-web/studies/${s0.uid}/${level}?`)).map((u) => new URL(u, 'http://x').searchParams);
          assert.ok(asked.length >= 1, `/studies/{S0}/${level}${key}: the PACS was asked`);
          for (const sp of asked) assert.deepEqual(sp.get('0020000E')?.split(',').sort(), s0Shown.map((x) => x.uid).sort(), `/studies/{S0}/${level}${key}: by S0's visible series`);
        }
      }
    } finally {
      await other.gw.close();
      // Gone again for the other tests.
      const found = await (await fetch(`${orthanc.httpUrl}/tools/lookup`, { method: 'POST', body: hiddenSeries })).json() as { ID: string; Type: string }[];
      for (const f of found) if (f.Type === 'Series') await fetch(`${orthanc.httpUrl}/series/${f.ID}`, { method: 'DELETE' });
    }
  });

  test('a Modality or SOPClassUID the scope hides is never sent to the PACS: the values both allow are asked for, or nothing', async () => {
    // cohort-a: an allow-list (S0, S2, S1) and CT only; S1 is an MR study on its list.
    const ctOf = (ids: number[]): string[] => ids.flatMap((i) => S[i]!.series.filter((x) => x.modality === 'CT').flatMap((x) => x.instances)).sort();
    const cases: [string, string, string[], string, string | null][] = [
      ['cohort-a', 'instances?Modality=MR', [], '00080060', null],
      ['cohort-a', 'series?Modality=MR', [], '00080060', null],
      ['cohort-a', 'instances?Modality=C*', ctOf([0, 2, 1]), '00080060', 'CT'],
      // sr-only: SR documents only.
      ['sr-only', `instances?SOPClassUID=${SOP_CT}`, [], '00080016', null],
      ['sr-only', `instances?SOPClassUID=${SOP_CT},${SOP_SR}`, S.flatMap((x) => x.series.filter((y) => y.sopClass === SOP_SR).flatMap((y) => y.instances)).filter((u) => !u.startsWith(S[3]!.uid)).sort(), '00080016', SOP_SR],
    ];
    for (const [client, query, want, tag, sent] of cases) {
      const mark = proxy.seen.length;
      const r = await get(`/dicom-web/${query}${query.includes('?') ? '&' : '?'}limit=100`, client);
      assert.equal(r.status, 200, r.text);
      const tagOf = query.startsWith('series') ? '0020000E' : '00080018';
      assert.deepEqual((r.json() as Row[]).map((x) => String(val(x, tagOf))).sort(), want, `${client} ${query}: exactly the client's view`);
      const asked = proxy.seen.slice(mark).filter((u) => /^\/dicom-web\/(series|instances)\?/.test(u)).map((u) => new URL(u, 'http://x').searchParams.get(tag));
      // (Queries without the key: the index's series lists, instances named by series UID.)
      for (const v of asked) assert.ok(v === null || v === sent, `${client} ${query}: the PACS was asked for ${v}`);
      if (sent !== null) assert.ok(asked.includes(sent), `${client} ${query}: the PACS is asked for ${sent}`);
    }
  });

  test('instance rules: the PACS is asked for the allowed SOP classes only, so the instances a client may not see are neither fetched nor examined', async () => {
    // S2 holds a CT series (2 instances) and an SR series (1); sr-only sees SR documents only.
    // A gateway of its own: nothing cached, every check reads the PACS.
    const other = await start(config());
    try {
      const s2 = S[2]!;
      const [ct, sr] = [s2.series[0]!, s2.series[1]!];
      const mark = proxy.seen.length;
      const json = async (path: string): Promise<Row[]> => { const r = await get(path, 'sr-only', undefined, other.gw.url); assert.equal(r.status, 200, `${path}: ${r.text}`); return r.json() as Row[]; };
      assert.deepEqual((await json(`/dicom-web/studies/${s2.uid}/series`)).map((x) => val(x, '0020000E')), [sr.uid]);
      const srSeries = (await json('/dicom-web/series')).map((x) => String(val(x, '0020000E')));
      assert.ok(srSeries.includes(sr.uid) && !srSeries.includes(ct.uid), 'the SR series, not the CT series');
      assert.deepEqual((await json(`/dicom-web/studies?StudyInstanceUID=${s2.uid}`)).map((x) => val(x, '00201208')), [1], 'the study counts its visible instance');
      for (const path of [`/dicom-web/studies/${s2.uid}/series/${ct.uid}/metadata`, `/dicom-web/studies/${s2.uid}/series/${ct.uid}/instances/${ct.instances[0]}/metadata`]) {
        assert.equal((await get(path, 'sr-only', undefined, other.gw.url)).status, 404, path);
      }
      assert.equal((await get(`/dicom-web/studies/${s2.uid}/series/${sr.uid}/instances/${sr.instances[0]}/metadata`, 'sr-only', undefined, other.gw.url)).status, 200);
      // Every instance query the checks made names the SR class (or one instance by its UID).
      const asked = proxy.seen.slice(mark).filter((u) => /\/instances$/.test(u.split('?')[0]!)).map((u) => new URL(u, 'http://x').searchParams);
      assert.ok(asked.length >= 1, 'the PACS was asked for instances');
      for (const sp of asked) assert.ok(sp.get('00080016') === SOP_SR || sp.get('SOPInstanceUID') !== null, `an instance query without the allowed class: ${sp.toString()}`);
    } finally {
      await other.gw.close();
    }
  });

  test('a cohort index cut short by server.maxQueryScan is not used to answer other queries: a study beyond it is still found', async () => {
    const visible = twoPartsStudies();
    const other = await start(config({ maxQueryScan: 4 }));
    try {
      for (const s of visible) {
        const r = await get(`/dicom-web/studies?StudyInstanceUID=${s.uid}`, 'two-parts', undefined, other.gw.url);
        assert.equal(r.status, 200, r.text);
        assert.deepEqual((r.json() as Row[]).map((x) => val(x, '0020000D')), [s.uid], `${s.uid} is found by UID although the index holds only the first studies`);
      }
    } finally {
      await other.gw.close();
    }
  });

  test('the records the scope checks read count against server.maxQueryScan', async () => {
    // paged: the 12 listed studies of 2020 reach the gateway; each row's body part check reads the
    // study's series list (one series each). offset=4&limit=4 wants 8 of the 6 visible studies, so
    // every row is examined: 12 rows and 12 series records.
    for (const [budget, warned] of [[15, true], [30, false]] as const) {
      const other = await start(config({ maxQueryScan: budget }));
      try {
        // The second time, the series lists come from the cache: they count the same.
        for (let n = 0; n < 2; n++) {
          const r = await get('/dicom-web/studies?offset=4&limit=4', 'paged', undefined, other.gw.url);
          assert.equal(r.status, 200);
          const warning = r.headers.get('warning');
          if (warned) {
            const m = /^299 deid-gateway "The query stopped after examining (\d+) records; results may be incomplete/.exec(warning ?? '');
            assert.ok(m, `budget ${budget}, run ${n + 1}: a truncation Warning (got ${warning})`);
            assert.ok(Number(m[1]) >= budget && Number(m[1]) <= budget + 1, `budget ${budget}: stopped at ${m[1]} records`);
          } else {
            assert.equal(warning, null, `budget ${budget}, run ${n + 1}: 24 records fit`);
            assert.equal((r.json() as Row[]).length, 2);
          }
        }
      } finally {
        await other.gw.close();
      }
    }
  });

  test('a client whose only scope is the opt-out list: no query makes the PACS return an opted-out patient\'s rows, at any level', async () => {
    // cohort-c has no scope rules; MRN-70003 of HOSP-B (S3, a CT of the CHEST like many others)
    // is opted out. Before, its rows came back from the PACS and were dropped here, so the time a
    // query took told what opted-out patients hold (bench:timing: +215 ms for 300 instances).
    const s3 = S[3]!;
    await rows('/dicom-web/studies?limit=1', 'cohort-c'); // the client's cohort index, read once a minute
    const mark = proxy.answers.length;
    const queries = ['studies?ModalitiesInStudy=CT', 'series?Modality=CT', 'series?BodyPartExamined=CHEST', 'instances?Modality=CT', `instances?SOPClassUID=${SOP_CT}`, 'instances?InstanceNumber=1', 'series'];
    for (const q of queries) {
      const got = await rows(`/dicom-web/${q}${q.includes('?') ? '&' : '?'}limit=1000`, 'cohort-c');
      assert.ok(got.length > 0, `${q}: the client's own records are found`);
      assert.ok(!got.some((r) => val(r, '0020000D') === s3.uid), `${q}: not the opted-out study`);
    }
    // (The index itself reads every study once a minute, whatever is asked, and drops the
    // opted-out ones: should its minute end during this test, that read is not an answer to a query.)
    const isIndexRead = (url: string): boolean => url.startsWith('/dicom-web/studies?') && [...new URL(url, 'http://x').searchParams.keys()].every((k) => ['includefield', 'limit', 'offset'].includes(k));
    const answers = proxy.answers.slice(mark).filter((a) => !isIndexRead(a.url));
    assert.ok(answers.length >= queries.length, 'the PACS was asked');
    for (const a of answers) assert.ok(!a.body.includes(s3.uid), `the PACS returned the opted-out study's rows for ${a.url.split('?')[0]}`);
  });

  test('with an opt-out list, a record without a Patient ID is never served (fail closed)', async () => {
    const x = studyWithoutPatientId();
    await orthanc.upload(x.files);
    const res = await fetch(`${orthanc.dicomWebUrl}/series?StudyInstanceUID=${x.uid}`, { headers: { accept: 'application/dicom+json' } });
    const direct = (await res.json()) as Row[];
    assert.equal(direct.length, 1, 'the PACS has the study');
    assert.equal(val(direct[0]!, '00100020'), undefined, 'and no Patient ID for it');
    // cohort-c: its only scope is the opt-out list.
    const mark = proxy.seen.length;
    const has = (list: Row[], tag: string, v: string): boolean => list.some((r) => val(r, tag) === v);
    assert.ok(!(await studyUids('/dicom-web/studies', 'cohort-c')).includes(x.uid), '/studies');
    const series = await rows('/dicom-web/series', 'cohort-c');
    assert.ok(series.length > 0 && !has(series, '0020000E', x.series), '/series lists others, not this one');
    const instances = await rows('/dicom-web/instances', 'cohort-c');
    assert.ok(instances.length > 0 && !x.instances.some((i) => has(instances, '00080018', i)), '/instances lists others, not these');
    for (const level of ['studies', 'series', 'instances']) {
      assert.deepEqual(await rows(`/dicom-web/${level}?StudyInstanceUID=${x.uid}`, 'cohort-c'), [], `/${level} asked for it`);
    }
    const inst = `/dicom-web/studies/${x.uid}/series/${x.series}/instances/${x.instances[0]}`;
    for (const path of [`/dicom-web/studies/${x.uid}/series`, `/dicom-web/studies/${x.uid}/instances`, `/dicom-web/studies/${x.uid}/series/${x.series}/instances`,
      `/dicom-web/studies/${x.uid}/metadata`, `/dicom-web/studies/${x.uid}`, `/dicom-web/studies/${x.uid}/series/${x.series}`, inst, `${inst}/metadata`, `${inst}/frames/1`, `${inst}/rendered`]) {
      const r = await get(path, 'cohort-c');
      assert.equal(r.status, 404, `${path}: ${r.status}`);
      assert.equal((r.json() as { code: string }).code, 'NOT_FOUND', path);
    }
    for (const b of bodies) assert.ok(!b.includes('NOPID'), 'no body carries the planted name');
    // The check does not rely on the PACS returning Patient ID by default: every list query asks for it.
    const lists = proxy.seen.slice(mark).filter((u) => /^\/dicom-web\/(studies|series|instances)\?/.test(u));
    // (cohort-c's queries name the studies of its cohort index, which does not hold this one: the
    // queries by its UID are answered without the PACS.)
    assert.ok(lists.some((u) => u.startsWith('/dicom-web/series?')) && lists.some((u) => u.startsWith('/dicom-web/instances?')), 'the series and instance lists were asked for');
    for (const u of lists) assert.ok(new URL(u, 'http://x').searchParams.getAll('includefield').includes('00100020'), `${u.split('?')[0]} asks for Patient ID`);
  });

  test('concurrent requests beyond the limit answer 429 with Retry-After', async () => {
    const mark = proxy.seen.length;
    proxy.delayMs = 1000; // holds the first request at the PACS
    let first: Promise<Res> | undefined;
    try {
      first = get('/dicom-web/studies?limit=1', 'serial');
      for (let n = 0; n < 200 && proxy.seen.length === mark; n++) await sleep(10);
      assert.ok(proxy.seen.length > mark, 'the first request is at the PACS');
      const second = await get('/dicom-web/studies?limit=1', 'serial');
      assert.equal(second.status, 429);
      assert.equal((second.json() as { code: string }).code, 'CONCURRENCY_LIMITED');
      assert.equal(second.headers.get('retry-after'), '1');
      assert.equal((await get('/dicom-web/studies?limit=1', 'cohort-c')).status, 200, 'other clients are not affected');
    } finally {
      proxy.delayMs = 0;
    }
    assert.equal((await first).status, 200, 'the first request completes');
    assert.equal((await get('/dicom-web/studies?limit=1', 'serial')).status, 200, 'once it has, the next one is admitted');
  });

  test('every denial is audited with its reason; no planted name or ID in any body', async () => {
    const lines = await auditLines();
    const reasons = new Set(lines.map((l) => l.reason).filter(Boolean));
    // Every reason of docs/scope.md#audit-of-denials that these tests provoke (all of them).
    for (const want of ['out-of-scope:not-in-allow-list', 'out-of-scope:study-date', 'out-of-scope:modality', 'out-of-scope:body-part', 'out-of-scope:sop-class',
      'out-of-scope:opted-out', 'not-found', 'access-window:expired', 'access-window:not-yet-valid',
      'limit:requests-per-minute', 'limit:concurrent-requests', 'limit:bytes-per-day', 'query-key-refused', 'scope-file-broken']) {
      assert.ok(reasons.has(want), `an audit record with reason ${want} (have ${[...reasons].join(', ')})`);
    }
    const filtered = lines.filter((l) => typeof l.outOfScope === 'number' && (l.outOfScope as number) > 0);
    assert.ok(filtered.length > 0, 'records left out of responses are counted');
    const planted = [...new Set(S.flatMap((s) => [s.patientName, s.patientId, s.accession, s.patientName.split('^')[0]!]))];
    for (const b of bodies) for (const p of planted) assert.ok(!b.includes(p), `a response body carries ${p}`);
  });
});
