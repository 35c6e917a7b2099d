/**
 * Fault injection between the gateway and its upstream PACS (test/helpers/fake-upstream.ts):
 * the upstream down, slow, failing, lying about its content, sending malformed DICOM or JSON,
 * dropping the connection mid-body; the client aborting; header hygiene both ways; and no
 * PHI or upstream detail in any error, header or log line.
 *
 * Every error is checked for its status, `application/problem+json`, its stable code, the
 * absence of upstream detail (URL, host/port, body text, header values) and the audit
 * record of the request. Failures after the status line must break the transfer, never
 * produce a truncated-but-valid body (ARCHITECTURE rule 1).
 */
import { describe, test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { request as httpRequest, type IncomingHttpHeaders } from 'node:http';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Writable } from 'node:stream';
import { setTimeout as sleep } from 'node:timers/promises';
import winston from 'winston';
import { validateConfig } from '../../src/config/schema.js';
import { buildParts, startGateway, tokenHash, type Gateway } from '../../src/main.js';
import type { RequestAudit as AuditRecord } from '../../src/audit/sink.js';
import { findCanaries, fixtures, type FixtureSet } from '../helpers/fixtures.js';
import { makeHeadPhantom } from '../fixtures/head-phantom.js';
import { connect } from 'node:net';
import { deadPort, route, script, startFakeUpstream, type FakeUpstream, type Handler, type RecordedRequest, type Step } from '../helpers/fake-upstream.js';

const TOKEN = 'faults-test-token-7f3a9c';
const AUTH = { authorization: `Bearer ${TOKEN}` };
const SENTINEL = 'SENTINEL-UPSTREAM-DETAIL-93QX';
const DICOM_JSON = 'application/dicom+json';
const MULTIPART_ACCEPT = 'multipart/related; type="application/dicom"';
const UP_BOUNDARY = 'UPSTREAMBOUNDARY4242';
/** The codes a Part 10 object refused by the engine may carry. */
const PART10_CODES: readonly string[] = ['DICOM_MALFORMED', 'DICOM_NOT_PART10', 'DICOM_TRUNCATED'];

// ---------------------------------------------------------------------------------------------
// Harness: a gateway wired with an in-memory audit sink and a winston logger into an array.

interface Harness {
  readonly gw: Gateway;
  readonly audit: AuditRecord[];
  readonly logs: string[];
  readonly dir: string;
}

const OTHER_TOKEN = 'faults-other-token-2b8e41';

async function startHarness(upstreamUrl: string, responseTimeoutMs: number, faces: 'allow' | 'deface' = 'allow', share?: { connections: number; streamsPerClient: number; clientIdleSeconds: number }): Promise<Harness> {
  const dir = mkdtempSync(join(tmpdir(), 'deid-faults-'));
  const cfg = validateConfig({
    server: { host: '127.0.0.1', port: 0, maxQueryResults: 10_000, ...(share ? { streamsPerClient: share.streamsPerClient, clientIdleSeconds: share.clientIdleSeconds } : {}) }, // the most the schema allows (one audit record itemizes that many studies)
    upstream: { url: upstreamUrl, connectTimeoutMs: 1000, responseTimeoutMs, ...(share ? { connections: share.connections } : {}) },
    state: { dir },
    engine: { faceWaitSeconds: 1 },
    // Transport faults: the scripted PACS answers only what each test scripts, so faces are
    // allowed (the face stage runs against Orthanc in faces.test.ts), except in the harness that
    // tests a slow face analysis.
    clients: [{ id: 'faults', apiKeySha256: tokenHash(TOKEN), pixels: { faces } }, ...(share ? [{ id: 'other', apiKeySha256: tokenHash(OTHER_TOKEN), pixels: { faces } }] : [])],
  }, join(dir, 'config.yaml'));
  const base = buildParts(cfg);
  await base.audit.close(); // replaced by the in-memory sink below
  const audit: AuditRecord[] = [];
  const logs: string[] = [];
  const log = winston.createLogger({
    level: 'debug',
    format: winston.format.combine(winston.format.timestamp(), winston.format.json()),
    transports: [new winston.transports.Stream({ stream: new Writable({ write(c: Buffer, _e, cb) { logs.push(c.toString('utf8')); cb(); } }) })],
  });
  const sink = { record: (r: AuditRecord) => { audit.push(r); }, healthy: () => true, recover: () => true, problem: () => undefined, close: async () => {} };
  const gw = await startGateway(cfg, { ...base, audit: sink, log });
  return { gw, audit, logs, dir };
}

async function stopHarness(h: Harness | undefined): Promise<void> {
  if (!h) return;
  await h.gw.close();
  rmSync(h.dir, { recursive: true, force: true });
}

/** The audit record of a request, once the gateway has written it (on the response's close). */
async function auditOf(h: Harness, requestId: string | null): Promise<AuditRecord> {
  assert.ok(requestId, 'the response carries x-request-id');
  for (let i = 0; i < 200; i++) {
    const r = h.audit.find((a) => a.requestId === requestId);
    if (r) return r;
    await sleep(10);
  }
  assert.fail(`no audit record for request ${requestId}`);
}

function get(h: Harness, path: string, headers: Record<string, string> = {}, signal?: AbortSignal): Promise<Response> {
  return fetch(`${h.gw.url}${path}`, { headers: { ...AUTH, ...headers }, ...(signal ? { signal } : {}) });
}

function headerText(headers: Headers | IncomingHttpHeaders): string {
  const out: string[] = [];
  if (headers instanceof Headers) headers.forEach((v, k) => out.push(`${k}: ${v}`));
  else for (const [k, v] of Object.entries(headers)) out.push(`${k}: ${Array.isArray(v) ? v.join(', ') : String(v)}`);
  return out.join('\n');
}

/** Strings that must never reach the client: upstream address, URLs and the sentinel. */
function upstreamDetail(port: number, extra: readonly string[] = []): string[] {
  return [SENTINEL, SENTINEL.toLowerCase(), `:${port}`, '127.0.0.1', 'localhost', '/dicom-web/studies/', 'orthanc', ...extra];
}

function assertClean(what: string, text: string, forbidden: readonly string[]): void {
  const lower = text.toLowerCase();
  for (const f of forbidden) assert.ok(!lower.includes(f.toLowerCase()), `${what} must not contain ${JSON.stringify(f)}: ${text.slice(0, 600)}`);
}

interface Problem { type: string; title: string; status: number; detail: string; code: string; requestId: string }

/** Asserts a clean problem+json answer; returns the problem and the request's audit record. */
async function expectProblem(h: Harness, r: Response, status: number, codes: string | readonly string[], forbidden: readonly string[]): Promise<{ problem: Problem; audit: AuditRecord; text: string }> {
  const text = await r.text();
  const allowed = typeof codes === 'string' ? [codes] : codes;
  assert.equal(r.status, status, `status (body: ${text.slice(0, 300)})`);
  assert.match(r.headers.get('content-type') ?? '', /^application\/problem\+json/);
  assert.equal(r.headers.get('cache-control'), 'no-store');
  const problem = JSON.parse(text) as Problem;
  assert.ok(allowed.includes(problem.code), `code ${problem.code} is one of ${allowed.join(', ')}`);
  assert.equal(problem.status, status);
  assert.equal(problem.requestId, r.headers.get('x-request-id'));
  assertClean('the problem body', text, forbidden);
  assertClean('the problem headers', headerText(r.headers), forbidden);
  const audit = await auditOf(h, r.headers.get('x-request-id'));
  assert.equal(audit.status, status);
  assert.equal(audit.code, problem.code);
  assert.equal(audit.outcome, status >= 500 ? 'failed' : 'denied');
  assert.equal(audit.client, 'faults');
  return { problem, audit, text };
}

/** Reads a body to its end, or to the point where the transfer breaks. */
async function readAll(r: Response): Promise<{ bytes: Buffer; error: unknown }> {
  const chunks: Buffer[] = [];
  let error: unknown;
  try {
    for await (const c of r.body as unknown as AsyncIterable<Uint8Array>) chunks.push(Buffer.from(c));
  } catch (e) {
    error = e;
  }
  return { bytes: Buffer.concat(chunks), error };
}

function boundaryOf(contentType: string | null): string {
  const m = /boundary="?([^";]+)"?/i.exec(contentType ?? '');
  assert.ok(m?.[1], `a boundary in ${contentType}`);
  return m[1];
}

/** A transfer the client can tell is broken: the read fails, or the close delimiter is missing. */
function assertBroken(bytes: Buffer, error: unknown, boundary: string): void {
  const closed = bytes.toString('latin1').trimEnd().endsWith(`--${boundary}--`);
  assert.ok(error !== undefined || !closed, 'the client must see a broken transfer, not a complete multipart');
  assert.ok(!closed, `the body must not end with the close delimiter --${boundary}--`);
}

/**
 * The audit record of a transfer the gateway broke after the status line: never "ok", and it
 * names the error. (Today such a record says "aborted", like a client abort; only `code`
 * tells the two apart.)
 */
function assertBrokenAudit(a: AuditRecord): void {
  assert.equal(a.status, 200);
  assert.ok(a.outcome === 'aborted' || a.outcome === 'failed', `outcome ${a.outcome} for a broken transfer`);
  assert.ok(a.code, 'the audit names why the transfer broke');
}

// ---------------------------------------------------------------------------------------------
// Upstream scripts

function studyRow(studyUid: string, extra: Record<string, unknown> = {}): Record<string, unknown> {
  return {
    '00080020': { vr: 'DA', Value: ['20190301'] },
    '00080061': { vr: 'CS', Value: ['CT'] },
    '00100010': { vr: 'PN', Value: [{ Alphabetic: 'FAULTS^PATIENT' }] },
    '00100020': { vr: 'LO', Value: ['FAULTS-PID-1'] },
    '0020000D': { vr: 'UI', Value: [studyUid] },
    ...extra,
  };
}

const jsonReply = (body: unknown, headers: Record<string, string> = {}): Handler =>
  script({ status: 200, headers: { 'content-type': DICOM_JSON, ...headers }, body: [JSON.stringify(body)] });

const partHead = (first: boolean, type = 'application/dicom'): string => `${first ? '' : '\r\n'}--${UP_BOUNDARY}\r\nContent-Type: ${type}\r\n\r\n`;
const closeDelimiter = `\r\n--${UP_BOUNDARY}--\r\n`;
const MULTIPART_CT = `multipart/related; type="application/dicom"; boundary=${UP_BOUNDARY}`;

/** Answers the pixel-facts QIDO of a retrieve with `[]` and the retrieve itself with `h`. */
function retrieveRoutes(originalStudy: string, h: Handler): Handler {
  return route([
    [(p) => p === `/dicom-web/studies/${originalStudy}/instances`, jsonReply([])],
    [(p) => p === `/dicom-web/studies/${originalStudy}`, h],
  ]);
}

/** Collects a streamed body while scanning for markers across chunk boundaries. */
async function scanStream(r: Response, markers: readonly string[], onChunk: () => void): Promise<{ bytes: number; counts: number[]; first: string; last: string }> {
  const counts = markers.map(() => 0);
  const keep = Math.max(...markers.map((m) => m.length)) - 1;
  let carry = '';
  let bytes = 0;
  let first = '';
  for await (const c of r.body as unknown as AsyncIterable<Uint8Array>) {
    const s = Buffer.from(c).toString('latin1');
    bytes += c.length;
    if (!first) first = s.slice(0, 1);
    const text = carry + s;
    markers.forEach((m, i) => {
      for (let at = text.indexOf(m); at >= 0; at = text.indexOf(m, at + 1)) if (at + m.length > carry.length) counts[i]!++;
    });
    carry = text.slice(-keep);
    onChunk();
  }
  return { bytes, counts, first, last: carry.trimEnd().slice(-1) };
}

// ---------------------------------------------------------------------------------------------

describe('faults between the gateway and its upstream', () => {
  let up: FakeUpstream;
  let h: Harness; // responseTimeoutMs 5000
  let hFast: Harness; // responseTimeoutMs 300
  let hFaces: Harness; // faces: deface, engine.faceWaitSeconds 1
  let hDead: Harness; // an upstream port nothing listens on
  let fx: FixtureSet;
  let deadUpstreamPort: number;
  let forbidden: string[];

  before(async () => {
    fx = await fixtures();
    up = await startFakeUpstream();
    forbidden = upstreamDetail(up.port);
    h = await startHarness(up.dicomWebUrl, 5000);
    hFast = await startHarness(up.dicomWebUrl, 300);
    hFaces = await startHarness(up.dicomWebUrl, 5000, 'deface');
    deadUpstreamPort = await deadPort();
    hDead = await startHarness(`http://127.0.0.1:${deadUpstreamPort}/dicom-web`, 300);
  });
  after(async () => {
    await stopHarness(h);
    await stopHarness(hFaces);
    await stopHarness(hFast);
    await stopHarness(hDead);
    await up?.close();
  });

  const fixture = (name: string): FixtureSet['files'][number] => {
    const f = fx.files.find((x) => x.meta.file === name);
    assert.ok(f, `fixture ${name}`);
    return f;
  };

  /** Makes the gateway show the client a study (QIDO), and returns its pseudonymous UID. */
  async function showStudy(harness: Harness, originalStudy: string): Promise<string> {
    up.handle(route([[(p) => p === '/dicom-web/studies', jsonReply([studyRow(originalStudy)])]]));
    const r = await get(harness, '/dicom-web/studies?ModalitiesInStudy=CT', { accept: DICOM_JSON });
    assert.equal(r.status, 200);
    const rows = (await r.json()) as Record<string, { Value?: unknown[] }>[];
    assert.equal(rows.length, 1);
    const pseudo = rows[0]?.['0020000D']?.Value?.[0];
    assert.equal(typeof pseudo, 'string');
    assert.notEqual(pseudo, originalStudy, 'the client sees a pseudonymous study UID');
    return pseudo as string;
  }

  // Regression: nodejs/undici#5360. The PACS answers a retrieve and closes the connection
  // (Orthanc sends Connection: close) while the gateway has not read the body yet (it waits for
  // the pixel facts, or a slow client holds it back). undici 7 crashes the process there with
  // an uncatchable assertion, so the default transport is node:http.
  test('a retrieve the PACS ends with Connection: close while its body waits unread: served whole, the gateway lives', async () => {
    const ct = fixture('ct-s1-i1.dcm');
    const pseudo = await showStudy(h, ct.meta.study);
    const parts = 12; // more than the body stream's 64 KiB high-water mark, so the parser pauses
    up.handle(route([
      [(p) => p === `/dicom-web/studies/${ct.meta.study}/instances`, async (req, res, rec) => {
        await new Promise((resolve) => setTimeout(resolve, 600)); // the facts come late
        await jsonReply([])(req, res, rec);
      }],
      [(p) => p === `/dicom-web/studies/${ct.meta.study}`, (_req, res) => {
        // As Orthanc does for a study: no Content-Length, no chunking, the body ends at EOF.
        const socket = res.socket!;
        socket.write(`HTTP/1.1 200 OK\r\nContent-Type: ${MULTIPART_CT}\r\nConnection: close\r\n\r\n`);
        for (let i = 0; i < parts; i++) { socket.write(partHead(i === 0)); socket.write(ct.bytes); }
        socket.end(closeDelimiter);
      }],
    ]));
    const r = await fetch(`${h.gw.url}/dicom-web/studies/${pseudo}`, { headers: { authorization: `Bearer ${TOKEN}` } });
    assert.equal(r.status, 200);
    await new Promise((resolve) => setTimeout(resolve, 300)); // and the client is slow too
    const body = Buffer.from(await r.arrayBuffer()).toString('latin1');
    const boundary = /boundary=([^;]+)/.exec(r.headers.get('content-type') ?? '')?.[1] ?? '';
    assert.equal(body.split(`--${boundary}\r\n`).length - 1, parts, 'every part arrived');
    assert.ok(body.endsWith(`--${boundary}--\r\n`), 'the multipart is closed');
    assert.equal((await fetch(`${h.gw.url}/healthz`)).status, 200);
  });

  // Regression: Node 20's Agent drops sockets whose server hints Keep-Alive: timeout=1, as
  // Orthanc always does; the gateway must still reuse its connections to the PACS.
  test('connections to a PACS that hints Keep-Alive: timeout=1 are reused', async () => {
    const ports = new Set<number>();
    up.handle((req, res) => {
      ports.add(req.socket.remotePort ?? 0);
      res.writeHead(200, { 'content-type': DICOM_JSON, 'keep-alive': 'timeout=1' });
      res.end('[]');
    });
    for (let i = 0; i < 10; i++) {
      const r = await get(h, '/dicom-web/studies', { accept: DICOM_JSON });
      assert.equal(r.status, 200);
      await r.arrayBuffer();
    }
    assert.ok(ports.size <= 2, `10 sequential requests used ${ports.size} connections`);
  });

  // 1 ------------------------------------------------------------------------------------------
  test('1. upstream down: 502 UPSTREAM_UNAVAILABLE; /readyz 503 upstream unreachable; /healthz 200', async () => {
    const forbiddenDead = upstreamDetail(deadUpstreamPort, ['ECONNREFUSED', 'UND_ERR']);
    const t0 = performance.now();
    const r = await get(hDead, '/dicom-web/studies', { accept: DICOM_JSON });
    const { problem } = await expectProblem(hDead, r, 502, 'UPSTREAM_UNAVAILABLE', forbiddenDead);
    assert.equal(problem.type, 'urn:deid-gateway:problem:upstream-unavailable');
    assert.ok(performance.now() - t0 < 5000, 'a refused connection fails fast');

    const ready = await fetch(`${hDead.gw.url}/readyz`);
    assert.equal(ready.status, 503);
    const readyText = await ready.text();
    assert.equal((JSON.parse(readyText) as { upstream: string }).upstream, 'unreachable');
    assertClean('the /readyz body', readyText, forbiddenDead);
    assert.equal(ready.headers.get('cache-control'), 'no-store');

    const health = await fetch(`${hDead.gw.url}/healthz`);
    assert.equal(health.status, 200);
    assert.deepEqual(await health.json(), { status: 'ok' });
  });

  test('1b. upstream resets the connection before answering: 502 UPSTREAM_UNAVAILABLE', async () => {
    up.handle((_req, res) => { res.socket?.destroy(); });
    const r = await get(h, '/dicom-web/studies', { accept: DICOM_JSON });
    await expectProblem(h, r, 502, 'UPSTREAM_UNAVAILABLE', [...forbidden, 'ECONNRESET', 'UND_ERR', 'socket']);
  });

  // 2 ------------------------------------------------------------------------------------------
  test('2. upstream slow (no headers within responseTimeoutMs = 300): 504 UPSTREAM_TIMEOUT, promptly', async () => {
    up.handle(script({ silent: true }));
    const t0 = performance.now();
    const r = await get(hFast, '/dicom-web/studies', { accept: DICOM_JSON });
    await expectProblem(hFast, r, 504, 'UPSTREAM_TIMEOUT', forbidden);
    const ms = performance.now() - t0;
    assert.ok(ms >= 250, `waited for the timeout (${Math.round(ms)} ms)`);
    assert.ok(ms < 3000, `answered well within the test timeout (${Math.round(ms)} ms)`);
  });

  test('2b. upstream sends headers, then no body within responseTimeoutMs: 504 UPSTREAM_TIMEOUT', async () => {
    up.handle(script({ status: 200, headers: { 'content-type': DICOM_JSON }, body: [{ hang: true }] }));
    const t0 = performance.now();
    const r = await get(hFast, '/dicom-web/studies', { accept: DICOM_JSON });
    await expectProblem(hFast, r, 504, 'UPSTREAM_TIMEOUT', forbidden);
    assert.ok(performance.now() - t0 < 3000, `answered promptly (${Math.round(performance.now() - t0)} ms)`);
  });

  // 3 ------------------------------------------------------------------------------------------
  test('3. upstream 500 with an Orthanc-style error body: 502 UPSTREAM_ERROR, no sentinel anywhere', async () => {
    const orthancError = {
      Details: `Cannot open ${SENTINEL} on /var/lib/orthanc/db`,
      HttpError: 'Internal Server Error',
      HttpStatus: 500,
      Message: `Internal error ${SENTINEL}`,
      Method: 'GET',
      OrthancError: 'Internal error',
      OrthancStatus: 1,
      Uri: `/dicom-web/studies?${SENTINEL}`,
    };
    const pseudo = await showStudy(h, '1.2.826.0.1.3680043.9.7433.99.3');
    up.handle(script({ status: 500, headers: { 'content-type': 'application/json', 'x-orthanc-detail': SENTINEL, server: `Orthanc ${SENTINEL}` }, body: [JSON.stringify(orthancError)] }));
    const q = await get(h, '/dicom-web/studies', { accept: DICOM_JSON });
    await expectProblem(h, q, 502, 'UPSTREAM_ERROR', forbidden);
    const m = await get(h, `/dicom-web/studies/${pseudo}/metadata`, { accept: DICOM_JSON });
    await expectProblem(h, m, 502, 'UPSTREAM_ERROR', [...forbidden, '1.2.826.0.1.3680043.9.7433.99.3']);
    const w = await get(h, `/dicom-web/studies/${pseudo}`, { accept: MULTIPART_ACCEPT });
    await expectProblem(h, w, 502, 'UPSTREAM_ERROR', [...forbidden, '1.2.826.0.1.3680043.9.7433.99.3']);
  });

  // 4 ------------------------------------------------------------------------------------------
  test('4. upstream 404 → 404 NOT_FOUND; upstream 400 → 400 UPSTREAM_REJECTED', async () => {
    const original = '1.2.826.0.1.3680043.9.7433.99.4';
    const pseudo = await showStudy(h, original);
    up.handle(script({ status: 404, headers: { 'content-type': 'text/plain' }, body: [`Unknown resource ${SENTINEL}`] }));
    const nf = await get(h, `/dicom-web/studies/${pseudo}`, { accept: MULTIPART_ACCEPT });
    await expectProblem(h, nf, 404, 'NOT_FOUND', [...forbidden, original]);
    const nfm = await get(h, `/dicom-web/studies/${pseudo}/metadata`, { accept: DICOM_JSON });
    await expectProblem(h, nfm, 404, 'NOT_FOUND', [...forbidden, original]);

    up.handle(script({ status: 400, headers: { 'content-type': 'application/json' }, body: [JSON.stringify({ HttpStatus: 400, Message: `Bad request ${SENTINEL}` })] }));
    const bad = await get(h, '/dicom-web/studies?ModalitiesInStudy=CT', { accept: DICOM_JSON });
    await expectProblem(h, bad, 400, 'UPSTREAM_REJECTED', forbidden);
  });

  // 5 ------------------------------------------------------------------------------------------
  describe('5. malformed Part 10 as the first part of a retrieve: a clean 502, nothing of the part passed on', () => {
    const original = '1.2.826.0.1.3680043.9.7433.99.5';
    const cases: [string, () => Buffer][] = [
      ['not Part 10 at all (HTML)', () => Buffer.from(`<html><body>${SENTINEL} ${'x'.repeat(400)}</body></html>`)],
      ['a DICM prefix but no meta information', () => Buffer.concat([Buffer.alloc(128), Buffer.from(`DICM${SENTINEL}`), Buffer.alloc(64, 0xff)])],
      ['a CT header cut inside its elements', () => {
        const ct = fixture('ct-s1-i1.dcm').bytes;
        return Buffer.concat([ct.subarray(0, 700), Buffer.from(SENTINEL)]);
      }],
    ];
    for (const [name, body] of cases) {
      test(name, async () => {
        const pseudo = await showStudy(h, original);
        up.handle(retrieveRoutes(original, script({ status: 200, headers: { 'content-type': MULTIPART_CT }, body: [partHead(true), body(), closeDelimiter] })));
        const r = await get(h, `/dicom-web/studies/${pseudo}`, { accept: MULTIPART_ACCEPT });
        await expectProblem(h, r, 502, PART10_CODES, [...forbidden, original, UP_BOUNDARY, '<html', 'xxxx']);
      });
    }
  });

  // 6 ------------------------------------------------------------------------------------------
  test('6. a good first part, then a malformed second part: the transfer breaks', async () => {
    const ct = fixture('ct-s1-i1.dcm');
    const pseudo = await showStudy(h, ct.meta.study);
    up.handle(retrieveRoutes(ct.meta.study, script({
      status: 200,
      headers: { 'content-type': MULTIPART_CT },
      body: [partHead(true), ct.bytes, { delayMs: 50 }, partHead(false), Buffer.from(`not dicom ${SENTINEL} ${'y'.repeat(300)}`), closeDelimiter],
    })));
    const r = await get(h, `/dicom-web/studies/${pseudo}`, { accept: MULTIPART_ACCEPT });
    assert.equal(r.status, 200, 'the first part was on its way when the second failed');
    const boundary = boundaryOf(r.headers.get('content-type'));
    const { bytes, error } = await readAll(r);
    assertBroken(bytes, error, boundary);
    assert.ok(bytes.toString('latin1').startsWith(`--${boundary}\r\n`), 'the first part had started');
    assertClean('the broken body', bytes.toString('latin1'), [SENTINEL, 'not dicom']);
    const a = await auditOf(h, r.headers.get('x-request-id'));
    assertBrokenAudit(a);
    assert.ok(a.code && PART10_CODES.includes(a.code), `audit code ${a.code}`);
  });

  // 7 ------------------------------------------------------------------------------------------
  test('7. the upstream drops the connection after the first part: the transfer breaks', async () => {
    const ct = fixture('ct-s1-i2.dcm');
    const pseudo = await showStudy(h, ct.meta.study);
    up.handle(retrieveRoutes(ct.meta.study, script({
      status: 200,
      headers: { 'content-type': MULTIPART_CT },
      body: [partHead(true), ct.bytes, partHead(false), ct.bytes.subarray(0, 200), { delayMs: 150 }, { destroy: true }],
    })));
    const r = await get(h, `/dicom-web/studies/${pseudo}`, { accept: MULTIPART_ACCEPT });
    assert.equal(r.status, 200);
    const boundary = boundaryOf(r.headers.get('content-type'));
    const { bytes, error } = await readAll(r);
    assertBroken(bytes, error, boundary);
    const a = await auditOf(h, r.headers.get('x-request-id'));
    assertBrokenAudit(a);
    assert.equal(a.code, 'UPSTREAM_UNAVAILABLE');
  });

  // 8 ------------------------------------------------------------------------------------------
  test('8. the upstream answers a retrieve with text/html: 502 UPSTREAM_RESPONSE_INVALID', async () => {
    const original = '1.2.826.0.1.3680043.9.7433.99.8';
    const pseudo = await showStudy(h, original);
    up.handle(retrieveRoutes(original, script({ status: 200, headers: { 'content-type': 'text/html; charset=utf-8' }, body: [`<html><title>${SENTINEL}</title></html>`] })));
    const r = await get(h, `/dicom-web/studies/${pseudo}`, { accept: MULTIPART_ACCEPT });
    await expectProblem(h, r, 502, 'UPSTREAM_RESPONSE_INVALID', [...forbidden, original, '<html', '<title']);
  });

  test('8b. the upstream\'s media type is not echoed in the problem (it is upstream detail)', async () => {
    const original = '1.2.826.0.1.3680043.9.7433.99.81';
    const pseudo = await showStudy(h, original);
    up.handle(retrieveRoutes(original, script({ status: 200, headers: { 'content-type': 'application/x-sentinel-pacs01.radiology.internal' }, body: ['x'] })));
    const r = await get(h, `/dicom-web/studies/${pseudo}`, { accept: MULTIPART_ACCEPT });
    await expectProblem(h, r, 502, 'UPSTREAM_RESPONSE_INVALID', [...forbidden, 'sentinel', 'pacs01', 'radiology.internal']);
  });

  // 9 ------------------------------------------------------------------------------------------
  describe('9. QIDO: malformed and huge JSON', () => {
    const bad: [string, Step[]][] = [
      ['an object, not an array', [JSON.stringify({ error: SENTINEL })]],
      ['truncated inside the first object', [`[{"0020000D":{"vr":"UI","Value":["1.2.3.${SENTINEL}`]],
      ['truncated after a whole object', [JSON.stringify([studyRow('1.2.826.0.1.3680043.9.7433.99.9')]).slice(0, -1), { delayMs: 20 }, `,{"00100010":{"vr":"PN","Value":[{"Alphabetic":"${SENTINEL}`]],
      ['not JSON at all', [`<html>${SENTINEL}</html>`]],
    ];
    for (const [name, body] of bad) {
      test(`${name} → 502 DICOM_JSON_MALFORMED before any body`, async () => {
        up.handle(script({ status: 200, headers: { 'content-type': DICOM_JSON }, body }));
        const r = await get(h, '/dicom-web/studies?ModalitiesInStudy=CT', { accept: DICOM_JSON });
        await expectProblem(h, r, 502, 'DICOM_JSON_MALFORMED', [...forbidden, '1.2.826.0.1.3680043.9.7433.99.9', 'FAULTS^PATIENT']);
      });
    }

    test('truncated after a few rows, before the body has begun (a short JSON is sent whole) → a clean 502, no rows', async () => {
      const rows = [1, 2, 3].map((i) => JSON.stringify(studyRow(`1.2.826.0.1.3680043.9.7433.99.8${i}`)));
      up.handle(script({ status: 200, headers: { 'content-type': DICOM_JSON }, body: [`[${rows.join(',')}`, { delayMs: 100 }, `,{"00100010":{"vr":"PN","Value":[{"Alphabetic":"${SENTINEL}`] }));
      const r = await get(h, '/dicom-web/studies?ModalitiesInStudy=CT', { accept: DICOM_JSON });
      await expectProblem(h, r, 502, 'DICOM_JSON_MALFORMED', [...forbidden]);
    });

    test('truncated after many rows, once the body has begun → a broken transfer, never a valid-looking array', async () => {
      // More than the 256 KiB a JSON reply may be held to be sent whole: the rows are on their way.
      const rows = Array.from({ length: 3000 }, (_, i) => JSON.stringify(studyRow(`1.2.826.0.1.3680043.9.7433.99.9${i}`)));
      up.handle(script({ status: 200, headers: { 'content-type': DICOM_JSON }, body: [`[${rows.join(',')}`, { delayMs: 100 }, `,{"00100010":{"vr":"PN","Value":[{"Alphabetic":"${SENTINEL}`] }));
      const r = await get(h, '/dicom-web/studies?ModalitiesInStudy=CT', { accept: DICOM_JSON });
      assert.equal(r.status, 200, 'rows were on their way when the JSON broke');
      const { bytes, error } = await readAll(r);
      const text = bytes.toString('utf8');
      assert.ok(error !== undefined || !text.trimEnd().endsWith(']'), 'the client sees a broken transfer');
      assert.ok(!text.trimEnd().endsWith(']'), 'the array is not closed');
      assert.throws(() => JSON.parse(text), 'what arrived is not a valid JSON document');
      assertClean('the broken body', text, [SENTINEL]);
      const a = await auditOf(h, r.headers.get('x-request-id'));
      assertBrokenAudit(a);
      assert.equal(a.code, 'DICOM_JSON_MALFORMED');
    });

    test('a huge response (10,000 rows, tens of MB, chunked) is de-identified and streamed back whole with bounded memory', async (t) => {
      const ROWS = 10_000; // server.maxQueryResults at its maximum
      const PER_CHUNK = 250;
      const PHI_NAME = 'HUGEPHI^CANARYNAME';
      const description = `${SENTINEL} `.repeat(80); // StudyDescription: removed by the basic profile
      let upstreamBytes = 0;
      let rowsSent = 0;
      // The upstream pauses after a quarter of its rows (megabytes, far beyond any buffer that
      // is sent whole) until the client has its first byte. A gateway that streams delivers
      // bytes during the pause; one that buffers would not, and the pause would run out.
      let gotFirstByte!: () => void;
      const firstByte = new Promise<void>((resolve) => { gotFirstByte = resolve; });
      let pauseRanOut = false;
      up.handle(script({
        status: 200,
        headers: { 'content-type': DICOM_JSON },
        body: [{
          generate: async function* () {
            yield '[';
            for (let i = 0; i < ROWS; i += PER_CHUNK) {
              const rows: string[] = [];
              for (let j = i; j < Math.min(ROWS, i + PER_CHUNK); j++) {
                rows.push(JSON.stringify(studyRow(`1.2.826.0.1.3680043.9.7433.77.${j % 500}`, {
                  '00081030': { vr: 'LO', Value: [description] },
                  '00100010': { vr: 'PN', Value: [{ Alphabetic: PHI_NAME }] },
                  '00080050': { vr: 'SH', Value: [`ACC${j}`] },
                })));
              }
              const chunk = (i === 0 ? '' : ',') + rows.join(',');
              upstreamBytes += chunk.length;
              rowsSent += rows.length;
              yield chunk;
              if (rowsSent === ROWS / 4) {
                pauseRanOut = await Promise.race([firstByte.then(() => false), sleep(10_000).then(() => true)]);
              }
            }
            yield ']';
          },
        }],
      }));
      const baseline = process.memoryUsage().rss;
      let peak = baseline;
      let rowsSentAtFirstByte = -1;
      const sample = (): void => {
        if (rowsSentAtFirstByte < 0) { rowsSentAtFirstByte = rowsSent; gotFirstByte(); }
        peak = Math.max(peak, process.memoryUsage().rss);
      };
      const timer = setInterval(() => { peak = Math.max(peak, process.memoryUsage().rss); }, 20);
      try {
        const r = await get(h, '/dicom-web/studies?ModalitiesInStudy=CT', { accept: DICOM_JSON });
        assert.equal(r.status, 200);
        assert.match(r.headers.get('content-type') ?? '', /^application\/dicom\+json/);
        const s = await scanStream(r, ['"0020000D"', PHI_NAME, SENTINEL, 'ACC1'], sample);
        assert.ok(upstreamBytes > 20 * 1024 * 1024, `the upstream sent tens of MB (${upstreamBytes} bytes)`);
        assert.equal(s.counts[0], ROWS, 'every row came back');
        assert.equal(s.counts[1], 0, 'PatientName was de-identified');
        assert.equal(s.counts[2], 0, 'StudyDescription was removed');
        assert.equal(s.counts[3], 0, 'AccessionNumber was de-identified');
        assert.equal(s.first, '[');
        assert.equal(s.last, ']');
        assert.ok(!pauseRanOut && rowsSentAtFirstByte <= ROWS / 4, `the client had bytes while the upstream waited after a quarter of its rows (first byte after ${rowsSentAtFirstByte} of ${ROWS}): streamed, not buffered`);
      } finally {
        clearInterval(timer);
      }
      const growth = (peak - baseline) / (1024 * 1024);
      t.diagnostic(`RSS growth ${growth.toFixed(1)} MB for ${(upstreamBytes / 1048576).toFixed(1)} MB upstream; first byte after ${rowsSentAtFirstByte} rows`);
      assert.ok(growth < 150, `RSS grew by ${growth.toFixed(0)} MB (< 150 MB) while streaming`);
    });
  });

  // 10 -----------------------------------------------------------------------------------------
  describe('10. client abort cancels the upstream request', () => {
    const closedWithin = async (rec: RecordedRequest, ms: number): Promise<boolean> => {
      const t = sleep(ms).then(() => false);
      return Promise.race([rec.closed.then(() => true), t]);
    };

    test('mid-body: aborting a slow streaming retrieve closes the upstream request', async () => {
      const ct = fixture('ct-s1-i3.dcm');
      const pseudo = await showStudy(h, ct.meta.study);
      up.reset();
      // The whole header and a bit of pixel data at once, then the rest 16 bytes per 100 ms.
      const headLen = ct.bytes.length - 8000;
      const trickle: Step[] = [];
      for (let at = headLen; at < ct.bytes.length; at += 16) trickle.push({ delayMs: 100 }, ct.bytes.subarray(at, at + 16));
      up.handle(retrieveRoutes(ct.meta.study, script({ status: 200, headers: { 'content-type': MULTIPART_CT }, body: [partHead(true), ct.bytes.subarray(0, headLen), ...trickle, closeDelimiter] })));
      const ac = new AbortController();
      const r = await get(h, `/dicom-web/studies/${pseudo}`, { accept: MULTIPART_ACCEPT }, ac.signal);
      assert.equal(r.status, 200);
      const reader = r.body!.getReader();
      const firstRead = await reader.read();
      assert.ok(!firstRead.done && firstRead.value.length > 0, 'streaming had begun');
      const rec = up.requests.find((x) => x.url === `/dicom-web/studies/${ct.meta.study}`);
      assert.ok(rec, 'the upstream saw the retrieve');
      assert.equal(rec.closedAt, undefined, 'the upstream response is still in flight');
      const t0 = performance.now();
      ac.abort();
      await reader.cancel().catch(() => {});
      assert.ok(await closedWithin(rec, 3000), 'the upstream request was closed after the client aborted');
      assert.ok(rec.closedEarly, 'closed before the upstream finished its body');
      assert.ok(rec.closedAt! - t0 < 2000, `closed ${Math.round(rec.closedAt! - t0)} ms after the abort`);
      const a = await auditOf(h, r.headers.get('x-request-id'));
      assert.equal(a.outcome, 'aborted');
      await sleep(100);
      const lines = h.logs.filter((l) => l.includes(a.requestId));
      assert.ok(!lines.some((l) => /"level":"error"/.test(l)), `a client abort is not an error: ${lines.join(' | ')}`);
    });

    test('before headers: aborting while the upstream is silent closes the upstream request', async () => {
      const original = '1.2.826.0.1.3680043.9.7433.99.10';
      const pseudo = await showStudy(h, original);
      up.reset();
      up.handle(retrieveRoutes(original, script({ silent: true })));
      const auditBefore = h.audit.length;
      const ac = new AbortController();
      const pending = get(h, `/dicom-web/studies/${pseudo}`, { accept: MULTIPART_ACCEPT }, ac.signal);
      let rec: RecordedRequest | undefined;
      for (let i = 0; i < 200 && !rec; i++) {
        rec = up.requests.find((x) => x.url === `/dicom-web/studies/${original}`);
        if (!rec) await sleep(10);
      }
      assert.ok(rec, 'the upstream saw the retrieve');
      const t0 = performance.now();
      ac.abort();
      await assert.rejects(pending);
      assert.ok(await closedWithin(rec, 3000), 'the upstream request was closed after the client aborted');
      assert.ok(rec.closedAt! - t0 < 2000, `closed ${Math.round(rec.closedAt! - t0)} ms after the abort`);
      let a: AuditRecord | undefined;
      for (let i = 0; i < 200 && !a; i++) {
        a = h.audit.slice(auditBefore).find((x) => x.route === 'retrieve');
        if (!a) await sleep(10);
      }
      assert.ok(a, 'the aborted retrieve is audited');
      assert.equal(a.outcome, 'aborted');
      await sleep(100);
      const lines = h.logs.filter((l) => l.includes(a.requestId));
      assert.ok(!lines.some((l) => /"level":"error"/.test(l)), `a client abort is not an error: ${lines.join(' | ')}`);
    });
  });

  // 10b ----------------------------------------------------------------------------------------
  describe('10b. no client can starve another (issue 15)', () => {
    const closedWithin = async (rec: RecordedRequest, ms: number): Promise<boolean> => {
      const t = sleep(ms).then(() => false);
      return Promise.race([rec.closed.then(() => true), t]);
    };

    test('a client holding six retrieves the PACS never answers uses its two streams; another client is served at once', async () => {
      const hs = await startHarness(up.dicomWebUrl, 30_000, 'allow', { connections: 4, streamsPerClient: 2, clientIdleSeconds: 2 });
      const acs: AbortController[] = [];
      try {
        const original = '1.2.826.0.1.3680043.9.7433.99.20';
        const pseudo = await showStudy(hs, original);
        up.reset();
        up.handle(route([
          [(p) => p === `/dicom-web/studies/${original}/instances`, jsonReply([])],
          [(p) => p === `/dicom-web/studies/${original}`, script({ silent: true })],
          [(p) => p === '/dicom-web/studies', jsonReply([])],
        ]));
        const pending = Array.from({ length: 6 }, () => {
          const ac = new AbortController();
          acs.push(ac);
          return get(hs, `/dicom-web/studies/${pseudo}`, { accept: MULTIPART_ACCEPT }, ac.signal).catch(() => undefined);
        });
        await sleep(500);
        const held = up.requests.filter((x) => x.url === `/dicom-web/studies/${original}`).length;
        assert.equal(held, 2, `the client's retrieves at the PACS: ${held}`);
        const t0 = performance.now();
        const r = await fetch(`${hs.gw.url}/dicom-web/studies`, { headers: { authorization: `Bearer ${OTHER_TOKEN}`, accept: DICOM_JSON } });
        await r.text();
        const ms = performance.now() - t0;
        assert.equal(r.status, 200);
        assert.ok(ms < 1500, `the other client waited ${Math.round(ms)} ms`);
        for (const ac of acs) ac.abort();
        await Promise.all(pending);
      } finally {
        for (const ac of acs) ac.abort();
        await stopHarness(hs);
      }
    });

    test('a client that stops reading is cut off after server.clientIdleSeconds, and its PACS request closed', async () => {
      const hs = await startHarness(up.dicomWebUrl, 30_000, 'allow', { connections: 4, streamsPerClient: 2, clientIdleSeconds: 2 });
      try {
        const ct = fixture('ct-s1-i2.dcm');
        const pseudo = await showStudy(hs, ct.meta.study);
        up.reset();
        // 8 000 copies of the instance (about 87 MB): far more than the sockets between hold.
        const body: (string | Buffer)[] = [];
        for (let i = 0; i < 8000; i++) body.push(partHead(i === 0), ct.bytes);
        body.push(closeDelimiter);
        up.handle(retrieveRoutes(ct.meta.study, script({ status: 200, headers: { 'content-type': MULTIPART_CT }, body })));
        // A raw connection that reads the status line and then nothing (paused).
        const { port } = new URL(hs.gw.url);
        const sock = connect(Number(port), '127.0.0.1');
        sock.write(`GET /dicom-web/studies/${pseudo} HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer ${TOKEN}\r\nAccept: ${MULTIPART_ACCEPT}\r\n\r\n`);
        const status = await new Promise<string>((resolve) => sock.once('data', (c: Buffer) => { sock.pause(); resolve(c.toString('latin1').split('\r\n')[0] ?? ''); }));
        assert.match(status, /^HTTP\/1\.1 200/);
        const rec = up.requests.find((x) => x.url === `/dicom-web/studies/${ct.meta.study}`);
        assert.ok(rec, 'the PACS saw the retrieve');
        assert.ok(await closedWithin(rec, 8000), 'the PACS request was closed once the client had read nothing for 2 s');
        assert.ok(rec.closedEarly, 'closed before the PACS had sent its whole body (the gateway holds no more than its buffers)');
        sock.destroy();
      } finally {
        await stopHarness(hs);
      }
    });
  });

  // 11 -----------------------------------------------------------------------------------------
  describe('11. header hygiene', () => {
    const clientHeaders = {
      host: 'evil.example',
      authorization: `Bearer ${TOKEN}`,
      cookie: `session=${SENTINEL}`,
      forwarded: 'for=203.0.113.9;host=evil.example;proto=https',
      'x-forwarded-for': '203.0.113.9',
      'x-forwarded-host': 'evil.example',
      'x-forwarded-proto': 'https',
      'x-forwarded-port': '8443',
      'x-forwarded-prefix': '/evil',
      'x-real-ip': '203.0.113.9',
      'proxy-authorization': `Basic ${SENTINEL}`,
    };
    const upstreamResponseHeaders = {
      etag: `"${SENTINEL}"`,
      'last-modified': 'Wed, 01 Jan 2020 00:00:00 GMT',
      server: `Orthanc ${SENTINEL}`,
      'set-cookie': `pacs=${SENTINEL}; Path=/`,
      'x-powered-by': SENTINEL,
      'content-location': `http://pacs.internal/${SENTINEL}`,
      'access-control-allow-origin': '*',
    };

    /** A GET with full control of Host (fetch would not send evil.example). */
    function rawGet(path: string, headers: Record<string, string>): Promise<{ status: number; headers: IncomingHttpHeaders; body: Buffer }> {
      const u = new URL(`${h.gw.url}${path}`);
      return new Promise((resolve, reject) => {
        const req = httpRequest({ host: u.hostname, port: u.port, path: u.pathname + u.search, headers, setHost: false }, (res) => {
          const chunks: Buffer[] = [];
          res.on('data', (d: Buffer) => chunks.push(d));
          res.on('end', () => resolve({ status: res.statusCode ?? 0, headers: res.headers, body: Buffer.concat(chunks) }));
          res.on('error', reject);
        });
        req.on('error', reject);
        req.end();
      });
    }

    function assertUpstreamRequestClean(recs: readonly RecordedRequest[]): void {
      assert.ok(recs.length > 0, 'the upstream was asked');
      for (const rec of recs) {
        assert.equal(rec.headers.host, `127.0.0.1:${up.port}`, `Host to the upstream is its own (${rec.url})`);
        for (const name of ['forwarded', 'x-forwarded-for', 'x-forwarded-host', 'x-forwarded-proto', 'x-forwarded-port', 'x-forwarded-prefix', 'x-real-ip', 'authorization', 'proxy-authorization', 'cookie']) {
          assert.equal(rec.headers[name], undefined, `${name} is not forwarded (${rec.url})`);
        }
        assertClean('the upstream request headers', headerText(rec.headers), ['evil.example', SENTINEL, TOKEN, '203.0.113.9']);
      }
    }

    function assertDownstreamClean(res: { headers: IncomingHttpHeaders; body: Buffer }, upstreamLength: number | undefined): void {
      assert.equal(res.headers['cache-control'], 'no-store');
      for (const name of ['etag', 'last-modified', 'server', 'set-cookie', 'x-powered-by', 'content-location', 'access-control-allow-origin']) {
        assert.equal(res.headers[name], undefined, `no ${name} in the gateway's response`);
      }
      const cl = res.headers['content-length'];
      if (cl !== undefined) {
        assert.equal(Number(cl), res.body.length, 'a content-length, if any, is the gateway\'s own');
        if (upstreamLength !== undefined) assert.notEqual(Number(cl), upstreamLength, 'not the upstream\'s content-length');
      }
      assertClean('the gateway\'s response headers', headerText(res.headers), [SENTINEL, `:${up.port}`]);
    }

    test('QIDO: nothing of the client reaches the upstream; nothing of the upstream\'s headers comes back', async () => {
      const body = JSON.stringify([studyRow('1.2.826.0.1.3680043.9.7433.99.11')]);
      up.reset();
      up.handle(script({ status: 200, headers: { 'content-type': DICOM_JSON, 'content-length': String(Buffer.byteLength(body)), ...upstreamResponseHeaders }, body: [body] }));
      const res = await rawGet('/dicom-web/studies?ModalitiesInStudy=CT', { ...clientHeaders, accept: DICOM_JSON });
      assert.equal(res.status, 200);
      assertUpstreamRequestClean(up.requests);
      assertDownstreamClean(res, Buffer.byteLength(body));
      assert.ok(!res.body.toString('latin1').includes(SENTINEL), '!res.body.toString(\'latin1\').includes(SENTINEL)');
    });

    test('retrieve: the same for a multipart body', async () => {
      const ct = fixture('ct-s1-i1.dcm');
      const pseudo = await showStudy(h, ct.meta.study);
      const body = Buffer.concat([Buffer.from(partHead(true)), ct.bytes, Buffer.from(closeDelimiter)]);
      up.reset();
      up.handle(retrieveRoutes(ct.meta.study, script({ status: 200, headers: { 'content-type': MULTIPART_CT, 'content-length': String(body.length), ...upstreamResponseHeaders }, body: [body] })));
      const res = await rawGet(`/dicom-web/studies/${pseudo}`, { ...clientHeaders, accept: MULTIPART_ACCEPT });
      assert.equal(res.status, 200, res.body.toString('latin1').slice(0, 300));
      assertUpstreamRequestClean(up.requests);
      assertDownstreamClean(res, body.length);
      const boundary = boundaryOf(res.headers['content-type'] ?? null);
      assert.notEqual(boundary, UP_BOUNDARY, 'a fresh boundary');
      assert.ok(res.body.toString('latin1').trimEnd().endsWith(`--${boundary}--`), 'a complete multipart');
    });

    test('problems: no upstream header comes back either', async () => {
      up.reset();
      up.handle(script({ status: 503, headers: { 'content-type': 'text/plain', ...upstreamResponseHeaders }, body: [SENTINEL] }));
      const res = await rawGet('/dicom-web/studies', { ...clientHeaders, accept: DICOM_JSON });
      assert.equal(res.status, 502);
      assertUpstreamRequestClean(up.requests);
      assertDownstreamClean(res, undefined);
      assert.match(String(res.headers['content-type']), /^application\/problem\+json/);
      assertClean('the problem', res.body.toString('utf8'), forbidden);
    });
  });

  // 12 -----------------------------------------------------------------------------------------
  test('12. no PHI in errors: a canary-laden fixture cut inside its header', async () => {
    const ks = fixture('kitchen-sink.dcm');
    const cut = ks.bytes.subarray(0, Math.floor(ks.bytes.length / 2));
    assert.ok(findCanaries(cut, fx.manifest).length > 5, 'the part the upstream sends is full of canaries');
    h.logs.length = 0;
    const pseudo = await showStudy(h, ks.meta.study);
    up.handle(retrieveRoutes(ks.meta.study, script({ status: 200, headers: { 'content-type': MULTIPART_CT }, body: [partHead(true), cut, closeDelimiter] })));
    const r = await get(h, `/dicom-web/studies/${pseudo}`, { accept: MULTIPART_ACCEPT });
    const { text } = await expectProblem(h, r, 502, ['DICOM_TRUNCATED', 'DICOM_MALFORMED'], forbidden);
    assert.deepEqual(findCanaries(Buffer.from(text), fx.manifest), [], 'no canary in the problem body');
    assert.deepEqual(findCanaries(Buffer.from(headerText(r.headers)), fx.manifest), [], 'no canary in the problem headers');
    await sleep(20);
    assert.ok(h.logs.length > 0, 'the gateway logged the requests');
    assert.deepEqual(findCanaries(Buffer.from(h.logs.join('\n')), fx.manifest), [], 'no canary (value or original UID) in the gateway log');
    assertClean('the gateway log', h.logs.join('\n'), [`:${up.port}`, '/dicom-web/studies/']);
  });

  test('12b. malformed JSON in the pixel-facts query of a retrieve: 502 DICOM_JSON_MALFORMED, no body text in the log', async () => {
    const canary = Object.keys(fx.manifest.canaries.strings)[0]!;
    const original = '1.2.826.0.1.3680043.9.7433.99.12';
    const pseudo = await showStudy(h, original);
    h.logs.length = 0;
    // Structurally a JSON array of objects (the splitter passes it), but not valid JSON: an unquoted value.
    const element = `{"00080018":{"vr":"UI","Value":["1.2.3"]},"00100010":{"vr":"PN","Value":[{"Alphabetic":${canary}^PATIENT}]}}`;
    up.handle(route([[(p) => p === `/dicom-web/studies/${original}/instances`, script({ status: 200, headers: { 'content-type': DICOM_JSON }, body: [`[${element}]`] })]]));
    const r = await get(h, `/dicom-web/studies/${pseudo}`, { accept: MULTIPART_ACCEPT });
    const text = await r.clone().text();
    await sleep(20);
    assert.deepEqual(findCanaries(Buffer.from(h.logs.join('\n')), fx.manifest, ['strings']), [], 'no upstream body text in the gateway log');
    assert.ok(!text.includes(canary), '!text.includes(canary)');
    await expectProblem(h, r, 502, 'DICOM_JSON_MALFORMED', [...forbidden, original, canary]);
  });
  /**
   * A 40-slice CT head behind a slow PACS for the faces harness: its facts come at once, each
   * sampled instance after `delayMs`, and its study retrieve is one instance. Counts the
   * instances fetched and the study retrieves asked for.
   */
  async function slowFaceStudy(n: number, delayMs: number): Promise<{ pseudo: string; counts: { fetched: number; retrieves: number } }> {
    const ph = makeHeadPhantom({ modality: 'CT', orientation: 'axial', rows: 40, columns: 40, pixelMm: 6, slices: 40, sliceMm: 6, uidRoot: `1.2.826.0.1.3680043.9.7433.99.${n}` });
    const pseudo = await showStudy(hFaces, ph.study);
    const json = (v: number[] | string[], vr: string): { vr: string; Value: (number | string)[] } => ({ vr, Value: v });
    const rows = ph.files.map((f, k) => ({
      '00080018': json([f.sop], 'UI'), '00080060': json(['CT'], 'CS'), '0020000D': json([ph.study], 'UI'), '0020000E': json([ph.series], 'UI'),
      '00280010': json([40], 'US'), '00280011': json([40], 'US'), '00280002': json([1], 'US'), '00280100': json([16], 'US'),
      '00200032': json([...ph.frames[k]!.position], 'DS'), '00200037': json([...ph.frames[k]!.rowDir, ...ph.frames[k]!.colDir], 'DS'), '00280030': json([6, 6], 'DS'),
    }));
    const counts = { fetched: 0, retrieves: 0 };
    up.handle(route([
      [(p) => p.startsWith(`/dicom-web/studies/${ph.study}/series/${ph.series}/instances`) || p.startsWith(`/dicom-web/studies/${ph.study}/instances`), async (req, res, rec) => {
        const sop = req.url!.split('?')[0]!.split('/').at(-1)!;
        const f = ph.files.find((x) => x.sop === sop);
        if (!f) { await jsonReply(rows)(req, res, rec); return; }
        counts.fetched++;
        await sleep(delayMs);
        res.writeHead(200, { 'content-type': MULTIPART_CT });
        res.end(Buffer.concat([Buffer.from(partHead(true)), f.bytes, Buffer.from(closeDelimiter)]));
      }],
      [(p) => p === `/dicom-web/studies/${ph.study}`, (req, res, rec) => { counts.retrieves++; return script({ status: 200, headers: { 'content-type': MULTIPART_CT }, body: [partHead(true), ph.files[0]!.bytes, closeDelimiter] })(req, res, rec); }],
    ]));
    return { pseudo, counts };
  }

  test('13. a face analysis slower than engine.faceWaitSeconds: 503 PIXELS_PENDING with Retry-After, nothing sent; the retry finds the series decided', async () => {
    // A slow PACS: 40 instances, 4 at a time, take about 2 s: longer than faceWaitSeconds.
    const { pseudo, counts } = await slowFaceStudy(13, 200);
    const t0 = performance.now();
    const r = await get(hFaces, `/dicom-web/studies/${pseudo}`, { accept: MULTIPART_ACCEPT });
    await expectProblem(hFaces, r, 503, 'PIXELS_PENDING', forbidden);
    assert.equal(r.headers.get('retry-after'), '1');
    assert.ok(performance.now() - t0 < 2500, 'answered after about faceWaitSeconds');
    const a = await auditOf(hFaces, r.headers.get('x-request-id'));
    assert.equal(a.reason, 'pixels-pending:face');
    // The analysis went on: once it is done, the retry is served (defaced).
    for (let i = 0; i < 100 && hFaces.gw.faceStats.analyses === 0; i++) await sleep(50);
    assert.equal(hFaces.gw.faceStats.analyses, 1, `the analysis finished (${counts.fetched} instances fetched)`);
    const again = await get(hFaces, `/dicom-web/studies/${pseudo}`, { accept: MULTIPART_ACCEPT });
    assert.equal(again.status, 200);
    const body = Buffer.from(await again.arrayBuffer()).toString('latin1');
    assert.ok(body.includes('DICM'), 'the instance came back once its series was decided');
  });
  test('14. a request that waits on an analysis already under way and gives up (503) leaves no retrieve behind it', async () => {
    // About 3 s for the samples: longer than faceWaitSeconds, twice.
    const { pseudo, counts } = await slowFaceStudy(14, 300);
    const analyses = hFaces.gw.faceStats.analyses;
    // The first request knows no facts yet: its retrieve goes out at once, and is dropped by its 503.
    const first = await get(hFaces, `/dicom-web/studies/${pseudo}`, { accept: MULTIPART_ACCEPT });
    await expectProblem(hFaces, first, 503, 'PIXELS_PENDING', forbidden);
    assert.equal(counts.retrieves, 1);
    // The second knows the facts and waits for the same analysis, which outlasts its wait too.
    const second = await get(hFaces, `/dicom-web/studies/${pseudo}`, { accept: MULTIPART_ACCEPT });
    await expectProblem(hFaces, second, 503, 'PIXELS_PENDING', forbidden);
    for (let i = 0; i < 100 && hFaces.gw.faceStats.analyses === analyses; i++) await sleep(50);
    assert.equal(hFaces.gw.faceStats.analyses, analyses + 1, 'the analysis finished');
    await sleep(100);
    assert.equal(counts.retrieves, 1, 'the samples came in after the second request had given up: nothing asked for the study on its behalf');
    const again = await get(hFaces, `/dicom-web/studies/${pseudo}`, { accept: MULTIPART_ACCEPT });
    assert.equal(again.status, 200);
    await again.arrayBuffer();
    assert.equal(counts.retrieves, 2);
  });
});
