/**
 * Real DICOMweb clients through the gateway, in front of a real Orthanc (1.10 + DICOMweb 1.7):
 *
 * - dicomweb-client 0.11 (the JavaScript client OHIF and Slim use). It is written for browsers
 *   and calls `new XMLHttpRequest()`, which Node 20 does not have, so this file installs a
 *   minimal XMLHttpRequest over fetch (`NodeXhr` below, enough for what the client does: GET
 *   with request headers and responseType "json" / "arraybuffer"). Auth goes through its
 *   `headers` option.
 * - A second Orthanc acting as a DICOMweb *client* (its DicomWeb.Servers entry points at the
 *   gateway with an Authorization header): QIDO through /dicom-web/servers/gw/qido, metadata
 *   through /dicom-web/servers/gw/get, and a WADO-RS pull into its own storage through
 *   /dicom-web/servers/gw/retrieve.
 *
 * Every object either client receives must be de-identified (PatientIdentityRemoved YES, no
 * planted canary), and instances the pixel policy withholds (the burned-in ultrasound) must not
 * arrive.
 */
import { describe, test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import dcmjs from 'dcmjs';
import { api } from 'dicomweb-client';
import { createOpsLogger } from '../../src/audit/log.js';
import { validateConfig } from '../../src/config/schema.js';
import { buildParts, startGateway, tokenHash, type Gateway } from '../../src/main.js';
import { findCanaries, fixtures, type FixtureSet } from '../helpers/fixtures.js';
import { DICOMWEB_PLUGIN, ORTHANC_BIN, startOrthanc, type OrthancHandle } from '../helpers/orthanc.js';

type DicomJson = Record<string, { vr: string; Value?: unknown[]; BulkDataURI?: string; InlineBinary?: string }>;

const TOKEN = 'real-clients-token-0123456789';
const TAG = {
  StudyInstanceUID: '0020000D',
  SeriesInstanceUID: '0020000E',
  SOPInstanceUID: '00080018',
  Modality: '00080060',
  PatientIdentityRemoved: '00120062',
  Rows: '00280010',
  Columns: '00280011',
  SamplesPerPixel: '00280002',
} as const;

const str = (ds: DicomJson | undefined, tag: string): string | undefined => {
  const v = ds?.[tag]?.Value?.[0];
  return typeof v === 'string' ? v : typeof v === 'number' ? String(v) : undefined;
};

// ---------------------------------------------------------------------------
// A minimal XMLHttpRequest for Node, over fetch: what dicomweb-client 0.11 uses of it
// (open, setRequestHeader, responseType, send, readyState/status/response,
// getResponseHeader, getAllResponseHeaders, onreadystatechange, onprogress, onloadstart,
// onloadend). Asynchronous only; no upload events, no timeout, no synchronous mode.

interface XhrRecord { method: string; url: string; headers: Record<string, string>; status: number }

class NodeXhr {
  static readonly UNSENT = 0;
  static readonly OPENED = 1;
  static readonly HEADERS_RECEIVED = 2;
  static readonly LOADING = 3;
  static readonly DONE = 4;
  /** Every request any instance sent, in order (for assertions). */
  static readonly log: XhrRecord[] = [];

  readyState = 0;
  status = 0;
  statusText = '';
  responseType: '' | 'text' | 'json' | 'arraybuffer' = '';
  response: unknown = null;
  responseText = '';
  responseURL = '';
  withCredentials = false;
  onreadystatechange: (() => void) | null = null;
  onloadstart: (() => void) | null = null;
  onloadend: (() => void) | null = null;
  onload: (() => void) | null = null;
  onerror: ((e: unknown) => void) | null = null;
  onprogress: ((e: { lengthComputable: boolean; loaded: number; total: number }) => void) | null = null;

  private method = 'GET';
  private url = '';
  private readonly headers = new Headers();
  private responseHeaders: Headers | undefined;
  private readonly controller = new AbortController();

  open(method: string, url: string, async = true): void {
    if (!async) throw new Error('NodeXhr: synchronous requests are not supported');
    this.method = method.toUpperCase();
    this.url = url;
    this.readyState = NodeXhr.OPENED;
  }

  setRequestHeader(name: string, value: string): void {
    if (this.readyState !== NodeXhr.OPENED) throw new Error('NodeXhr: setRequestHeader before open()');
    this.headers.append(name, value);
  }

  getResponseHeader(name: string): string | null {
    return this.responseHeaders?.get(name) ?? null;
  }

  getAllResponseHeaders(): string {
    let s = '';
    for (const [k, v] of this.responseHeaders ?? []) s += `${k}: ${v}\r\n`;
    return s;
  }

  abort(): void {
    this.controller.abort();
  }

  send(body?: RequestInit['body']): void {
    void this.run(body);
  }

  /**
   * Exceptions thrown by event handlers, as a browser would report them: they do not reach
   * the caller, so a promise the handler was to settle stays pending.
   */
  static readonly handlerErrors: unknown[] = [];
  static onHandlerError: ((e: unknown) => void) | undefined;

  private fire(fn: (() => void) | null | undefined): void {
    try {
      fn?.();
    } catch (e) {
      NodeXhr.handlerErrors.push(e);
      NodeXhr.onHandlerError?.(e);
    }
  }

  private change(state: number): void {
    this.readyState = state;
    this.fire(this.onreadystatechange);
  }

  private async run(body: RequestInit['body']): Promise<void> {
    this.fire(this.onloadstart);
    const record: XhrRecord = { method: this.method, url: this.url, headers: Object.fromEntries(this.headers), status: 0 };
    NodeXhr.log.push(record);
    try {
      const r = await fetch(this.url, { method: this.method, headers: this.headers, signal: this.controller.signal, ...(body != null ? { body } : {}) });
      this.status = record.status = r.status;
      this.statusText = r.statusText;
      this.responseURL = r.url;
      this.responseHeaders = r.headers;
      this.change(NodeXhr.HEADERS_RECEIVED);
      const bytes = await r.arrayBuffer();
      const total = Number(r.headers.get('content-length') ?? bytes.byteLength);
      this.fire(() => this.onprogress?.({ lengthComputable: true, loaded: bytes.byteLength, total }));
      if (this.responseType === 'arraybuffer') {
        this.response = bytes;
      } else {
        const text = new TextDecoder().decode(bytes);
        if (this.responseType === 'json') {
          try { this.response = text === '' ? null : JSON.parse(text); } catch { this.response = null; }
        } else {
          this.responseText = text;
          this.response = text;
        }
      }
    } catch (e) {
      this.status = 0;
      this.change(NodeXhr.DONE);
      this.fire(() => this.onerror?.(e));
      this.fire(this.onloadend);
      return;
    }
    this.change(NodeXhr.DONE);
    this.fire(this.onload);
    this.fire(this.onloadend);
  }
}

// ---------------------------------------------------------------------------

/**
 * The part of dicomweb-client's API used here. Its bundled .d.ts (generated from JSDoc) marks
 * every option as required and types the searches as returning arrays rather than promises,
 * so the constructor is re-typed from its documentation and behaviour.
 */
interface DicomWebClient {
  searchForStudies(o?: { queryParams?: Record<string, string> }): Promise<unknown>;
  searchForSeries(o: { studyInstanceUID: string }): Promise<unknown>;
  retrieveStudyMetadata(o: { studyInstanceUID: string }): Promise<unknown>;
  retrieveSeriesMetadata(o: { studyInstanceUID: string; seriesInstanceUID: string }): Promise<unknown>;
  retrieveInstance(o: { studyInstanceUID: string; seriesInstanceUID: string; sopInstanceUID: string }): Promise<unknown>;
  retrieveStudy(o: { studyInstanceUID: string }): Promise<unknown>;
}
const DICOMwebClient = api.DICOMwebClient as unknown as new (o: { url: string; headers?: Record<string, string>; verbose?: boolean }) => DicomWebClient;

/** Reads a Part 10 object with dcmjs (independent of the product). */
function readPart10(ab: ArrayBuffer): DicomJson {
  const r = dcmjs.data.DicomMessage.readFile(ab, { ignoreErrors: false }) as { dict: DicomJson };
  return r.dict;
}

/** Awaits a dicomweb-client call; a failure says which URL answered what (the library only says "request failed"). */
async function call<T>(p: Promise<unknown>): Promise<T> {
  try {
    return (await p) as T;
  } catch (e) {
    const x = e as { status?: number; request?: NodeXhr; response?: unknown };
    if (x.request instanceof NodeXhr) {
      const body = x.response instanceof ArrayBuffer ? Buffer.from(x.response).toString('utf8', 0, 500) : JSON.stringify(x.response)?.slice(0, 500);
      throw Object.assign(new Error(`dicomweb-client: ${x.request.responseURL || '?'} answered ${x.status}: ${body}`), { status: x.status });
    }
    throw e;
  }
}

/**
 * Like call(), but also fails when one of the library's XHR handlers throws (in a browser the
 * exception is reported and the promise never settles; here the test says so at once).
 */
async function settle<T>(p: Promise<unknown>): Promise<T> {
  let off = (): void => {};
  const thrown = new Promise<never>((_, reject) => {
    NodeXhr.onHandlerError = (e) => reject(Object.assign(new Error(`dicomweb-client threw inside its XHR handler, so its promise would never settle: ${(e as Error).message}`), { cause: e }));
    off = () => { NodeXhr.onHandlerError = undefined; };
  });
  try {
    return await Promise.race([call<T>(p), thrown]);
  } finally {
    off();
  }
}

const toBuffer = (ab: ArrayBuffer | ArrayBufferView): Buffer => (ArrayBuffer.isView(ab) ? Buffer.from(ab.buffer, ab.byteOffset, ab.byteLength) : Buffer.from(ab));

describe('real DICOMweb clients through the gateway', { skip: existsSync(ORTHANC_BIN) && existsSync(DICOMWEB_PLUGIN) ? false : `${ORTHANC_BIN} or the DICOMweb plugin is not installed (apt-get install orthanc orthanc-dicomweb)` }, () => {
  let fx: FixtureSet;
  let pacs: OrthancHandle;
  let gw: Gateway;
  let stateDir: string;
  const hadXhr = 'XMLHttpRequest' in globalThis;

  const kindOf = (kind: string) => fx.files.find((f) => f.meta.kind === kind)!.meta;
  const studiesOf = (): string[] => [...new Set(fx.files.map((f) => f.meta.study))];

  before(async () => {
    fx = await fixtures();
    // The plugin is named here too, so this file does not depend on the helper's default list.
    pacs = await startOrthanc({ extra: { Plugins: [DICOMWEB_PLUGIN] } });
    await pacs.upload(fx.files.map((f) => f.bytes));
    stateDir = mkdtempSync(join(tmpdir(), 'deid-real-clients-'));
    const cfg = validateConfig({
      server: { host: '127.0.0.1', port: 0 },
      upstream: { url: pacs.dicomWebUrl },
      state: { dir: stateDir },
      clients: [{ id: 'viewer', apiKeySha256: tokenHash(TOKEN) }],
    }, join(stateDir, 'gateway.yaml'));
    gw = await startGateway(cfg, { ...buildParts(cfg), log: createOpsLogger('error') });
    if (!hadXhr) (globalThis as Record<string, unknown>).XMLHttpRequest = NodeXhr;
  });

  after(async () => {
    if (!hadXhr) delete (globalThis as Record<string, unknown>).XMLHttpRequest;
    await gw?.close();
    await pacs?.stop();
    if (stateDir) rmSync(stateDir, { recursive: true, force: true });
  });

  describe('dicomweb-client (JavaScript)', () => {
    const client = () => new DICOMwebClient({ url: `${gw.url}/dicom-web`, headers: { Authorization: `Bearer ${TOKEN}` }, verbose: false });

    test('without the token: the search is refused with 401', async () => {
      const anon = new DICOMwebClient({ url: `${gw.url}/dicom-web`, verbose: false });
      await assert.rejects(anon.searchForStudies(), (e: { status?: number }) => e.status === 401);
    });

    test('searchForStudies, searchForSeries, metadata, retrieveInstance and retrieveStudy: everything de-identified', async (t) => {
      const dw = client();
      const before = NodeXhr.log.length;
      const studies = await settle<DicomJson[]>(dw.searchForStudies());
      assert.equal(studies.length, studiesOf().length, 'one row per study');
      const originals = new Set(studiesOf());
      for (const s of studies) {
        const uid = str(s, TAG.StudyInstanceUID);
        assert.ok(uid && !originals.has(uid), `pseudonymous Study Instance UID (${uid})`);
      }
      assert.deepEqual(findCanaries(Buffer.from(JSON.stringify(studies)), fx.manifest), [], 'no canary in the study list');

      // The CT study: the one with a CT series.
      const ct = kindOf('ct');
      let study: string | undefined;
      let series: DicomJson[] = [];
      for (const s of studies) {
        const uid = str(s, TAG.StudyInstanceUID)!;
        const rows = await settle<DicomJson[]>(dw.searchForSeries({ studyInstanceUID: uid }));
        if (rows.some((r) => str(r, TAG.Modality) === 'CT')) { study = uid; series = rows; }
      }
      assert.ok(study, 'a study with a CT series');
      const inStudy = fx.files.filter((f) => f.meta.study === ct.study);
      assert.equal(series.length, new Set(inStudy.map((f) => f.meta.series)).size, 'every series of the CT study');
      assert.deepEqual(findCanaries(Buffer.from(JSON.stringify(series)), fx.manifest), []);

      const meta = await settle<DicomJson[]>(dw.retrieveStudyMetadata({ studyInstanceUID: study }));
      assert.equal(meta.length, inStudy.length, 'metadata of every instance');
      for (const m of meta) {
        assert.equal(str(m, TAG.PatientIdentityRemoved), 'YES');
        assert.equal(str(m, TAG.StudyInstanceUID), study);
      }
      assert.deepEqual(findCanaries(Buffer.from(JSON.stringify(meta)), fx.manifest), [], 'no canary in the study metadata');

      const ctSeries = series.find((r) => str(r, TAG.Modality) === 'CT')!;
      const seriesUid = str(ctSeries, TAG.SeriesInstanceUID)!;
      const seriesMeta = await settle<DicomJson[]>(dw.retrieveSeriesMetadata({ studyInstanceUID: study, seriesInstanceUID: seriesUid }));
      assert.ok(seriesMeta.length > 0, 'seriesMeta.length > 0');
      for (const m of seriesMeta) assert.equal(str(m, TAG.SeriesInstanceUID), seriesUid);

      const sop = str(seriesMeta[0], TAG.SOPInstanceUID)!;
      const instance = await settle<ArrayBuffer>(dw.retrieveInstance({ studyInstanceUID: study, seriesInstanceUID: seriesUid, sopInstanceUID: sop }));
      const ds = readPart10(instance);
      assert.equal(str(ds, TAG.SOPInstanceUID), sop, 'the instance asked for');
      assert.equal(str(ds, TAG.PatientIdentityRemoved), 'YES');
      assert.deepEqual(findCanaries(toBuffer(instance), fx.manifest), [], 'no canary in the retrieved instance');

      const whole = await settle<ArrayBuffer[]>(dw.retrieveStudy({ studyInstanceUID: study }));
      assert.equal(whole.length, inStudy.length, 'retrieveStudy: every instance of the study');
      const sops = new Set(meta.map((m) => str(m, TAG.SOPInstanceUID)));
      for (const part of whole) {
        const d = readPart10(part);
        assert.ok(sops.has(str(d, TAG.SOPInstanceUID)), 'a SOP Instance UID the metadata listed');
        assert.equal(str(d, TAG.PatientIdentityRemoved), 'YES');
        assert.deepEqual(findCanaries(toBuffer(part), fx.manifest), []);
      }

      // Every request went to the gateway with the token.
      const sent = NodeXhr.log.slice(before);
      assert.ok(sent.length >= 6, 'sent.length >= 6');
      for (const r of sent) {
        assert.ok(r.url.startsWith(`${gw.url}/dicom-web/`), r.url);
        assert.equal(r.headers.authorization, `Bearer ${TOKEN}`);
        assert.equal(r.method, 'GET');
      }
      t.diagnostic(`${sent.length} requests; study ${study}: ${whole.length} instances, ${whole.reduce((n, b) => n + b.byteLength, 0)} bytes`);
    });

    /** Every study's pseudonymous UID with the metadata the gateway serves for it. */
    async function allMetadata(dw: DicomWebClient): Promise<{ study: string; meta: DicomJson[] }[]> {
      const out: { study: string; meta: DicomJson[] }[] = [];
      for (const s of await settle<DicomJson[]>(dw.searchForStudies())) {
        const study = str(s, TAG.StudyInstanceUID)!;
        out.push({ study, meta: await settle<DicomJson[]>(dw.retrieveStudyMetadata({ studyInstanceUID: study })) });
      }
      return out;
    }
    const isBurnedInUs = (m: DicomJson): boolean => str(m, TAG.Modality) === 'US' && str(m, TAG.SamplesPerPixel) === '3' && str(m, TAG.Rows) === '48';

    test('the burned-in ultrasound: listed in metadata, refused alone (403), left out of retrieveStudy', async () => {
      const dw = client();
      const all = await allMetadata(dw);
      const holder = all.find((x) => x.meta.some(isBurnedInUs));
      assert.ok(holder, `the burned-in ultrasound (${kindOf('us-rgb-burned-in').sop}) appears in metadata`);
      const us = holder.meta.find(isBurnedInUs)!;
      const sop = str(us, TAG.SOPInstanceUID)!;
      await assert.rejects(
        settle(dw.retrieveInstance({ studyInstanceUID: holder.study, seriesInstanceUID: str(us, TAG.SeriesInstanceUID)!, sopInstanceUID: sop })),
        (e: { status?: number }) => e.status === 403,
      );
      // Its study also holds an instance the policy lets through: retrieveStudy returns that one only.
      assert.ok(holder.meta.length > 1, 'the ultrasound study has another instance');
      const parts = await settle<ArrayBuffer[]>(dw.retrieveStudy({ studyInstanceUID: holder.study }));
      assert.ok(parts.length >= 1 && parts.length < holder.meta.length, `${parts.length} of ${holder.meta.length} instances`);
      for (const part of parts) {
        const d = readPart10(part);
        assert.notEqual(str(d, TAG.SOPInstanceUID), sop, 'not the burned-in ultrasound');
        assert.equal(str(d, TAG.PatientIdentityRemoved), 'YES');
        assert.deepEqual(findCanaries(toBuffer(part), fx.manifest), []);
      }
    });

    test('retrieveStudy of a study whose every instance is withheld settles with a 403 (never an empty multipart)', async () => {
      const dw = client();
      const all = await allMetadata(dw);
      let target: string | undefined;
      for (const { study, meta } of all) {
        const r = await fetch(`${gw.url}/dicom-web/studies/${study}`, { headers: { Authorization: `Bearer ${TOKEN}`, Accept: 'multipart/related; type="application/dicom"' } });
        const text = Buffer.from(await r.arrayBuffer()).toString('latin1');
        void meta;
        if (r.status === 403 && /PIXELS_WITHHELD/.test(text)) { target = study; break; }
      }
      assert.ok(target, 'a study whose every instance the pixel policy withholds (e.g. the secondary capture)');
      try {
        const parts = await settle<ArrayBuffer[]>(dw.retrieveStudy({ studyInstanceUID: target }));
        assert.deepEqual(parts, []);
      } catch (e) {
        const status = (e as { status?: number }).status;
        assert.ok(status === 403 || status === 404 || status === 204, `an HTTP refusal, not a decoder failure: ${(e as Error).message}`);
      }
    });
  });

  describe('Orthanc as a DICOMweb client (DicomWeb.Servers → the gateway)', () => {
    let o2: OrthancHandle;
    /** The second Orthanc's REST API: JSON in, JSON out. */
    const rest = async <T>(method: 'GET' | 'POST', path: string, body?: unknown): Promise<T> => {
      const r = await fetch(`${o2.httpUrl}${path}`, { method, ...(body !== undefined ? { body: JSON.stringify(body) } : {}) });
      const text = await r.text();
      assert.equal(r.status, 200, `${method} ${path}: ${r.status} ${text.slice(0, 500)}`);
      return JSON.parse(text) as T;
    };

    before(async () => {
      // DICOMweb plugin 1.7, "DicomWeb.Servers": a named server is an object with Url and
      // optional Username/Password, HttpHeaders (sent with every request), Timeout…
      o2 = await startOrthanc({
        extra: {
          Name: 'deid-gateway-test-client',
          Plugins: [DICOMWEB_PLUGIN],
          DicomWeb: { Enable: true, Root: '/dicom-web/', Servers: { gw: { Url: `${gw.url}/dicom-web/`, HttpHeaders: { Authorization: `Bearer ${TOKEN}` } } } },
        },
      });
    });
    after(async () => {
      await o2?.stop();
    });

    test('the configured server is listed; QIDO and metadata through /servers/gw/qido and /servers/gw/get are de-identified', async () => {
      const servers = await rest<Record<string, { Url: string; HttpHeaders?: string[] }>>('GET', '/dicom-web/servers?expand');
      assert.equal(servers.gw?.Url, `${gw.url}/dicom-web/`);
      // /qido answers Orthanc's own "expanded" JSON (Name, Group, Element, vr, Value).
      const studies = await rest<Record<string, { Name?: string; Value?: unknown }>[]>('POST', '/dicom-web/servers/gw/qido', { Uri: '/studies' });
      assert.equal(studies.length, studiesOf().length);
      const originals = new Set(studiesOf());
      for (const s of studies) {
        const uid = s['0020000D']?.Value;
        assert.ok(typeof uid === 'string' && !originals.has(uid), `pseudonymous Study Instance UID (${String(uid)})`);
      }
      // /get relays the remote body as it came (DICOM JSON).
      const rows = await rest<DicomJson[]>('POST', '/dicom-web/servers/gw/get', { Uri: '/studies' });
      const ct = rows.find((r) => (r['00080061']?.Value ?? []).includes('CT'));
      assert.ok(ct, 'the CT study is listed with ModalitiesInStudy CT');
      const study = str(ct, TAG.StudyInstanceUID)!;
      const meta = await rest<DicomJson[]>('POST', '/dicom-web/servers/gw/get', { Uri: `/studies/${study}/metadata` });
      assert.equal(meta.length, fx.files.filter((f) => f.meta.study === kindOf('ct').study).length);
      for (const m of meta) assert.equal(str(m, TAG.PatientIdentityRemoved), 'YES');
      const leaks = findCanaries(Buffer.from(JSON.stringify([studies, rows, meta])), fx.manifest);
      assert.deepEqual(leaks, []);
    });

    test('/servers/gw/retrieve of every study: Orthanc stores de-identified instances, never the withheld ultrasound', async (t) => {
      const rows = await rest<DicomJson[]>('POST', '/dicom-web/servers/gw/get', { Uri: '/studies' });
      // The pseudonymous SOP Instance UIDs the gateway lists, and which one is the burned-in ultrasound.
      const listed = new Map<string, string>(); // SOP → its path below /dicom-web
      let burnedIn: string | undefined;
      for (const r of rows) {
        const meta = await rest<DicomJson[]>('POST', '/dicom-web/servers/gw/get', { Uri: `/studies/${str(r, TAG.StudyInstanceUID)}/metadata` });
        for (const m of meta) {
          listed.set(str(m, TAG.SOPInstanceUID)!, `/studies/${str(m, TAG.StudyInstanceUID)}/series/${str(m, TAG.SeriesInstanceUID)}/instances/${str(m, TAG.SOPInstanceUID)}`);
          if (str(m, TAG.Modality) === 'US' && str(m, TAG.SamplesPerPixel) === '3' && str(m, TAG.Rows) === '48') burnedIn = str(m, TAG.SOPInstanceUID);
        }
      }
      assert.equal(listed.size, fx.files.length, 'metadata lists every instance');
      assert.ok(burnedIn, 'the burned-in ultrasound is listed in metadata');

      let received = 0;
      let refused = 0;
      for (const r of rows) {
        const study = str(r, TAG.StudyInstanceUID)!;
        // A study whose every instance the pixel policy withholds is a 403 at the gateway (a
        // multipart needs at least one part); Orthanc then reports the pull as failed.
        const direct = await fetch(`${gw.url}/dicom-web/studies/${study}`, { headers: { Authorization: `Bearer ${TOKEN}` } });
        await direct.arrayBuffer();
        if (direct.status === 403) {
          refused++;
          const pulled = await fetch(`${o2.httpUrl}/dicom-web/servers/gw/retrieve`, { method: 'POST', body: JSON.stringify({ Resources: [{ Study: study }] }) });
          await pulled.text();
          assert.notEqual(pulled.status, 200, 'Orthanc does not report a withheld study as retrieved');
          continue;
        }
        const out = await rest<{ ReceivedInstancesCount?: string }>('POST', '/dicom-web/servers/gw/retrieve', { Resources: [{ Study: study }] });
        received += Number(out.ReceivedInstancesCount ?? 0);
      }
      assert.ok(refused >= 1, 'at least one study is withheld as a whole (the secondary capture)');
      const ids = await rest<string[]>('GET', '/instances');
      assert.equal(ids.length, received);
      const stored = new Set<string>();
      for (const id of ids) {
        const tags = await rest<Record<string, unknown>>('GET', `/instances/${id}/simplified-tags`);
        assert.equal(tags.PatientIdentityRemoved, 'YES', `instance ${id}`);
        const sop = String(tags.SOPInstanceUID);
        assert.ok(listed.has(sop), `a SOP Instance UID the gateway listed (${sop})`);
        stored.add(sop);
        const file = Buffer.from(await (await fetch(`${o2.httpUrl}/instances/${id}/file`)).arrayBuffer());
        assert.deepEqual(findCanaries(file, fx.manifest), [], `no canary in stored instance ${id}`);
        assert.deepEqual(findCanaries(Buffer.from(JSON.stringify(tags)), fx.manifest), []);
      }
      assert.ok(!stored.has(burnedIn), 'the burned-in ultrasound was not retrieved');
      // Everything else the gateway lists arrives: each instance that did not is one the
      // gateway refuses on its own as withheld (403), not one lost on the way.
      const missing = [...listed.keys()].filter((s) => !stored.has(s));
      assert.ok(missing.length < listed.size / 2, `withheld: ${missing.length} of ${listed.size}`);
      for (const sop of missing) {
        const r = await fetch(`${gw.url}/dicom-web${listed.get(sop)}`, { headers: { Authorization: `Bearer ${TOKEN}`, Accept: 'multipart/related; type="application/dicom"' } });
        const body = await r.text();
        assert.equal(r.status, 403, `${sop} is not in Orthanc: the gateway must refuse it as withheld (${body.slice(0, 200)})`);
        assert.match(body, /PIXELS_WITHHELD/);
      }
      t.diagnostic(`Orthanc retrieved ${stored.size} of ${listed.size} instances; ${missing.length} withheld by the pixel policy`);
    });
  });
});
