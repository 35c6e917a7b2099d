/**
 * Issue 5 against a real Orthanc: audit records == requests under concurrent load; A.5
 * messages over syslog (TCP, and TLS with certificates made here) delivered after the
 * repository was down and after a gateway restart; `audit verify | query | report` on the
 * gateway's own trail; Prometheus metrics on a separate listener and behind an admin token;
 * failing closed when the trail cannot be written.
 */
import { describe, test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { mkdirSync, mkdtempSync, readFileSync, rmSync, symlinkSync, unlinkSync, writeFileSync, existsSync } from 'node:fs';
import { createServer as createTcpServer, type Server as TcpServer, type Socket } from 'node:net';
import { createServer as createTlsServer } from 'node:tls';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import winston from 'winston';
import { validateConfig, type Config } from '../../src/config/schema.js';
import { buildParts, startGateway, type Gateway, type GatewayParts } from '../../src/main.js';
import { generateCohort, type Cohort } from '../fixtures/cohort.js';
import { freePort, startOrthanc, type OrthancHandle } from '../helpers/orthanc.js';

const ENTRY = new URL('../../src/cli/main.ts', import.meta.url).pathname;
const sha = (t: string): string => createHash('sha256').update(t).digest('hex');
const tok = (id: string): string => `${id}-token-0123456789`;
const ADMIN = 'metrics-admin-token-0123';
const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));
const quiet = (): winston.Logger => winston.createLogger({ level: 'error', transports: [new winston.transports.Console({ silent: true })] });

function cli(args: string[]): { status: number | null; stdout: string; stderr: string } {
  const r = spawnSync(process.execPath, ['--import', 'tsx', ENTRY, ...args], { encoding: 'utf8' });
  return { status: r.status, stdout: r.stdout, stderr: r.stderr };
}

/** A syslog receiver (RFC 6587 octet counting) on TCP or TLS; collects whole messages. */
function receiver(port: number, tls?: { key: Buffer; cert: Buffer }): Promise<{ messages: string[]; close: () => Promise<void> }> {
  const messages: string[] = [];
  const sockets = new Set<Socket>();
  const onSocket = (s: Socket): void => {
    sockets.add(s);
    let buf = Buffer.alloc(0);
    s.on('data', (d: Buffer) => {
      buf = Buffer.concat([buf, d]);
      for (;;) {
        const sp = buf.indexOf(0x20);
        if (sp < 0) break;
        const len = Number(buf.toString('ascii', 0, sp));
        assert.ok(Number.isInteger(len) && len > 0, `a frame starts with its length (got ${buf.toString('latin1', 0, Math.min(20, sp))})`);
        if (buf.length < sp + 1 + len) break;
        messages.push(buf.toString('utf8', sp + 1, sp + 1 + len));
        buf = buf.subarray(sp + 1 + len);
      }
    });
    s.on('close', () => sockets.delete(s));
    s.on('error', () => undefined);
  };
  const server: TcpServer = tls ? createTlsServer({ key: tls.key, cert: tls.cert }, onSocket) : createTcpServer(onSocket);
  return new Promise((resolve) => server.listen(port, '127.0.0.1', () => resolve({
    messages,
    close: () => new Promise<void>((r) => { for (const s of sockets) s.destroy(); server.close(() => r()); }),
  })));
}

async function until(what: string, fn: () => boolean, ms = 15_000): Promise<void> {
  const end = Date.now() + ms;
  while (!fn()) {
    if (Date.now() > end) assert.fail(`timed out waiting for ${what}`);
    await sleep(50);
  }
}

describe('audit trail, A.5 messages, reviewer tools and metrics against a real Orthanc', () => {
  let orthanc: OrthancHandle;
  let cohort: Cohort;
  let dir: string;
  let syslogPort: number;
  let metricsPort: number;
  let cfg: Config;
  let parts: GatewayParts;
  let gw: Gateway;

  function config(): Config {
    return validateConfig({
      // 120 requests at once below, 72 of one client on as many connections: above the default share.
      server: { host: '127.0.0.1', port: 0, connectionsPerClient: 256 },
      upstream: { url: orthanc.dicomWebUrl },
      state: { dir },
      audit: { syslog: { host: '127.0.0.1', port: syslogPort, appName: 'deid-gw-test' } },
      metrics: { port: metricsPort, apiKeySha256: sha(ADMIN) },
      clients: [
        { id: 'vendor', apiKeySha256: sha(tok('vendor')), profile: { options: ['retainUIDs'] } },
        { id: 'scoped', apiKeySha256: sha(tok('scoped')), profile: { options: ['retainUIDs'] }, scope: { modalities: ['MR'] } },
      ],
    }, join(dir, 'gateway.yaml'));
  }
  async function start(): Promise<void> {
    parts = buildParts(cfg);
    gw = await startGateway(cfg, { ...parts, log: quiet() });
  }
  const get = (path: string, client: string | null = 'vendor', base?: string): Promise<Response> =>
    fetch(`${base ?? gw.url}${path}`, { headers: client ? { authorization: `Bearer ${tok(client)}` } : {} });
  const spooled = (): string[] => {
    const b = readFileSync(join(dir, 'audit-spool', 'spool.log'));
    const out: string[] = [];
    for (let at = 0; at < b.length;) {
      const sp = b.indexOf(0x20, at);
      const len = Number(b.toString('ascii', at, sp));
      out.push(b.toString('utf8', sp + 1, sp + 1 + len));
      at = sp + 1 + len;
    }
    return out;
  };
  const records = (): Record<string, unknown>[] => readFileSync(join(dir, 'audit.log'), 'utf8').split('\n').filter(Boolean).map((l) => JSON.parse(l) as Record<string, unknown>);

  before(async () => {
    cohort = generateCohort();
    orthanc = await startOrthanc();
    await orthanc.upload([...cohort.files]);
    dir = mkdtempSync(join(tmpdir(), 'deid-audit-'));
    syslogPort = await freePort();
    metricsPort = await freePort();
    cfg = config();
    await start();
  });

  after(async () => {
    await gw?.close();
    await orthanc?.stop();
  });

  test('records == requests under concurrent load, each written before its response completed', async () => {
    const before = new Set(records().filter((r) => r.type === 'request').map((r) => r.requestId));
    const S = cohort.studies;
    const paths = Array.from({ length: 120 }, (_, i) => [
      ['/dicom-web/studies?limit=5', 'vendor'], [`/dicom-web/studies/${S[i % S.length]!.uid}/metadata`, 'vendor'],
      ['/dicom-web/studies/1.2.3.4/metadata', 'vendor'], ['/dicom-web/studies', null], [`/dicom-web/studies/${S[0]!.uid}/metadata`, 'scoped'],
    ][i % 5] as [string, string | null]);
    const ids = await Promise.all(paths.map(async ([p, c]) => {
      const r = await get(p, c);
      await r.arrayBuffer();
      // The record is on disk when the client has the whole response.
      const id = r.headers.get('x-request-id')!;
      return id;
    }));
    const after = records().filter((r) => r.type === 'request' && !before.has(r.requestId));
    assert.equal(after.length, paths.length, 'one record per request');
    assert.deepEqual(new Set(after.map((r) => r.requestId)), new Set(ids));
    const released = records().filter((r) => r.type === 'study' && ids.includes(String(r.requestId)));
    // 24 QIDO pages of min(5, studies) rows and 24 metadata responses of one study each; the
    // scoped client's 24 requests are out of scope, and the others release nothing.
    assert.equal(released.length, 24 * Math.min(5, S.length) + 24, 'a study record for each QIDO row and each metadata response');
    const perRequest = new Map<string, number>();
    for (const r of released) perRequest.set(String(r.requestId), (perRequest.get(String(r.requestId)) ?? 0) + 1);
    for (const r of after) assert.equal(perRequest.get(String(r.requestId)) ?? 0, r.studies, 'each request record counts its study records');
  });

  test('A.5 messages reach the repository after it was down, and after a gateway restart, over TCP', async () => {
    const S = cohort.studies;
    // The repository is down: everything is spooled.
    await (await get('/dicom-web/studies?PatientID=x')).arrayBuffer(); // refused key: Security Alert
    for (const s of [S[0]!, S[2]!]) await (await fetch(`${gw.url}/dicom-web/studies/${s.uid}`, { headers: { authorization: `Bearer ${tok('vendor')}`, accept: 'multipart/related; type="application/dicom"' } })).arrayBuffer();
    const mid = spooled().length;
    assert.ok(mid > 0, 'messages are spooled while the repository is down');
    await gw.close();
    await start(); // a restart with the repository still down: the spool survives
    await (await get('/dicom-web/studies', 'scoped')).arrayBuffer();
    await (await get(`/dicom-web/studies/${S[0]!.uid}/metadata`, 'scoped')).arrayBuffer(); // out of scope
    const total = spooled().length;
    const arr = await receiver(syslogPort);
    try {
      await until(`all ${total} spooled messages`, () => arr.messages.length >= total, 40_000);
      const ids = new Set(spooled().map((m) => /<EventID csd-code="(\d+)"/.exec(m)?.[1]));
      for (const id of ['110112', '110102', '110104', '110106', '110113', '110114']) assert.ok(ids.has(id), `event ${id} was sent`);
      const got = new Set(arr.messages);
      for (const m of spooled()) assert.ok(got.has(m), 'every spooled message was delivered');
      for (const m of arr.messages) {
        assert.match(m, /^<85>1 \d{4}-\d\d-\d\dT[0-9:.]+Z \S+ deid-gw-test \d+ IHE\+RFC-3881 - \uFEFF<\?xml version="1\.0" encoding="UTF-8"\?><AuditMessage>/, 'RFC 5424 header, BOM, XML');
        assert.ok((m.match(/ParticipantObjectTypeCode="1" ParticipantObjectTypeCodeRole="1"/g) ?? []).length <= 1, 'one patient per message');
        assert.ok(m.endsWith('</AuditMessage>'), 'a whole message');
      }
      const exports = arr.messages.filter((m) => m.includes('csd-code="110106"'));
      assert.ok(exports.some((m) => m.includes(`ParticipantObjectID="${S[0]!.patientId}"`) && m.includes(`ParticipantObjectID="${S[0]!.uid}"`)), 'Export names the study and its patient');
      assert.ok(arr.messages.some((m) => m.includes('csd-code="110114"') && m.includes('EventOutcomeIndicator="0"')), 'a successful login');
      assert.ok(arr.messages.some((m) => m.includes('csd-code="110113"') && m.includes('out-of-scope:')), 'a Security Alert for the scope violation');
      // Live: a new request goes straight through.
      await (await get('/dicom-web/studies', null)).arrayBuffer();
      await until('the live authentication failure', () => arr.messages.some((m) => m.includes('csd-code="110114"') && m.includes('EventOutcomeIndicator="4"') && m.includes('UNAUTHORIZED')));
      await until('its Security Alert', () => arr.messages.some((m) => m.includes('csd-code="110113"') && m.includes('csd-code="110132"') && m.includes('UNAUTHORIZED')));
    } finally {
      await arr.close();
    }
  });

  test('A.5 messages over TLS, with a certificate authority made here', async (t) => {
    const tdir = mkdtempSync(join(tmpdir(), 'deid-tls-'));
    const ossl = (args: string[]): void => { const r = spawnSync('openssl', args, { cwd: tdir, encoding: 'utf8' }); assert.equal(r.status, 0, r.stderr); };
    if (spawnSync('openssl', ['version']).status !== 0) { t.skip('openssl is not installed'); return; }
    ossl(['req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-keyout', 'ca.key', '-out', 'ca.crt', '-days', '2', '-subj', '/CN=test-ca']);
    ossl(['req', '-newkey', 'rsa:2048', '-nodes', '-keyout', 'arr.key', '-out', 'arr.csr', '-subj', '/CN=127.0.0.1']);
    writeFileSync(join(tdir, 'ext.cnf'), 'subjectAltName=IP:127.0.0.1\n');
    ossl(['x509', '-req', '-in', 'arr.csr', '-CA', 'ca.crt', '-CAkey', 'ca.key', '-CAcreateserial', '-out', 'arr.crt', '-days', '2', '-extfile', 'ext.cnf']);
    const port = await freePort();
    const sdir = mkdtempSync(join(tmpdir(), 'deid-audit-tls-'));
    const c = validateConfig({
      server: { host: '127.0.0.1', port: 0 }, upstream: { url: orthanc.dicomWebUrl }, state: { dir: sdir },
      audit: { syslog: { host: '127.0.0.1', port, tls: { caFile: join(tdir, 'ca.crt') } } },
      clients: [{ id: 'vendor', apiKeySha256: sha(tok('vendor')) }],
    }, join(sdir, 'gateway.yaml'));
    const arr = await receiver(port, { key: readFileSync(join(tdir, 'arr.key')), cert: readFileSync(join(tdir, 'arr.crt')) });
    const g = await startGateway(c, { ...buildParts(c), log: quiet() });
    try {
      await (await get('/dicom-web/studies', null, g.url)).arrayBuffer();
      await until('a message over TLS', () => arr.messages.some((m) => m.includes('csd-code="110114"')));
    } finally {
      await g.close();
      await arr.close();
      rmSync(tdir, { recursive: true, force: true });
    }
  });

  test('metrics: a separate listener, and /metrics behind the admin token', async () => {
    assert.ok(gw.metricsUrl, 'the metrics listener is up');
    await (await get(`/dicom-web/studies/${cohort.studies[0]!.uid}/metadata`)).arrayBuffer();
    await (await get(`/dicom-web/studies/${cohort.studies[0]!.uid}/metadata`, 'scoped')).arrayBuffer();
    const text = await (await fetch(gw.metricsUrl!)).text();
    for (const re of [/deid_gateway_requests_total\{client="vendor",route="metadata",status="200",outcome="ok"\} \d+/, /deid_gateway_denials_total\{client="scoped",reason="out-of-scope:modality"\} \d+/,
      /deid_gateway_instances_total\{client="vendor"\} \d+/, /deid_gateway_deidentification_seconds_count\{client="vendor",kind="json"\} [1-9]/,
      /deid_gateway_upstream_duration_seconds_count\{client="vendor",kind="metadata",status="200"\} [1-9]/, /deid_gateway_upstream_duration_seconds_count\{client="scoped",kind="\w+",status="200"\} [1-9]/,
      /deid_gateway_request_duration_seconds_count\{client="vendor",route="metadata"\} [1-9]/, /deid_gateway_request_duration_seconds_count\{client="scoped",route="metadata"\} [1-9]/,
      /deid_gateway_audit_healthy 1/, /deid_gateway_audit_spool_pending_bytes \d+/]) {
      assert.match(text, re);
    }
    assert.ok(!/1\.2\.826\.0\.1\.3680043/.test(text), 'no UID in the metrics');
    const metricsRecords = (): Record<string, unknown>[] => records().filter((r) => r.type === 'request' && r.route === 'metrics');
    const before = metricsRecords().length;
    const none = await fetch(`${gw.url}/metrics`);
    assert.equal(none.status, 401);
    const wrong = await fetch(`${gw.url}/metrics`, { headers: { authorization: `Bearer ${tok('vendor')}` } });
    assert.equal(wrong.status, 401, 'a client token is not the admin token');
    // Refused admin tokens are authentication failures: recorded like the others; served metrics are not.
    const refused = metricsRecords().slice(before);
    assert.deepEqual(refused.map((r) => [r.requestId, r.status, r.outcome, r.code, r.reason]), [
      [none.headers.get('x-request-id'), 401, 'denied', 'UNAUTHORIZED', 'metrics-token'],
      [wrong.headers.get('x-request-id'), 401, 'denied', 'UNAUTHORIZED', 'metrics-token'],
    ]);
    const admin = await fetch(`${gw.url}/metrics`, { headers: { authorization: `Bearer ${ADMIN}` } });
    assert.equal(admin.status, 200);
    assert.match(await admin.text(), /deid_gateway_requests_total/);
    assert.equal(metricsRecords().length, before + 2, 'metrics served to the admin token are not audited');
  });

  test('audit verify, query and report on the gateway\'s own trail', async () => {
    const conf = join(dir, 'gateway.yaml');
    writeFileSync(conf, `server: {host: 127.0.0.1, port: 8080}\nupstream: {url: "${orthanc.dicomWebUrl}"}\nstate: {dir: ${dir}}\nclients:\n  - id: vendor\n    apiKeySha256: "${sha(tok('vendor'))}"\n`);
    const v = cli(['audit', 'verify', '--config', conf]);
    assert.equal(v.status, 0, v.stdout + v.stderr);
    assert.match(v.stdout, /audit trail intact: \d+ record\(s\)/);
    // Query: by original Patient ID (the trail holds only a keyed reference), by study, by outcome.
    const S = cohort.studies;
    const byPatient = cli(['audit', 'query', '--config', conf, '--patient', S[0]!.patientId, '--format', 'json']);
    assert.equal(byPatient.status, 0, byPatient.stderr);
    const rows = byPatient.stdout.trim().split('\n').map((l) => JSON.parse(l) as { study: string; client: string });
    assert.ok(rows.length > 0 && rows.every((r) => S.some((s) => s.uid === r.study && s.patientId === S[0]!.patientId)), 'only that patient\'s studies');
    assert.ok(rows.some((r) => r.study === S[0]!.uid), 'the patient\'s retrieved study is found');
    const byStudy = cli(['audit', 'query', '--config', conf, '--study', S[2]!.uid, '--format', 'csv']);
    assert.match(byStudy.stdout, /^time,requestId,client,route,outcome,study,pseudonymous,patientRef,instances\n/);
    assert.ok(byStudy.stdout.split('\n').slice(1).filter(Boolean).every((l) => l.includes(S[2]!.uid)), 'CSV rows are of that study');
    const denied = cli(['audit', 'query', '--config', conf, '--client', 'scoped', '--outcome', 'denied']);
    assert.equal(denied.status, 0);
    assert.match(denied.stdout, /out-of-scope:modality/);
    assert.match(denied.stderr, /\d+ request record\(s\)/);
    assert.equal(cli(['audit', 'query', '--config', conf, '--since', 'yesterday']).status, 2, 'a bad time is a usage error');
    // --since / --until on the real trail: a half-open interval, split at a request in the middle.
    const reqs = records().filter((r) => r.type === 'request');
    const mid = String(reqs[Math.floor(reqs.length / 2)]!.time);
    const n = (args: string[]): number => { const r = cli(['audit', 'query', '--config', conf, ...args, '--format', 'json']); assert.equal(r.status, 0, r.stderr); return r.stdout.split('\n').filter(Boolean).length; };
    const since = n(['--since', mid]);
    const untilMid = n(['--until', mid]);
    assert.equal(since, reqs.filter((r) => String(r.time) >= mid).length, '--since keeps records at or after T');
    assert.equal(untilMid, reqs.filter((r) => String(r.time) < mid).length, '--until keeps records before T');
    assert.equal(since + untilMid, reqs.length, 'together, every request record once');
    assert.ok(since > 0 && untilMid > 0, 'both sides of the split hold records');
    assert.equal(n(['--since', mid, '--until', mid]), 0, 'an empty interval');
    // The default table: a header, one aligned row per record, the count on stderr.
    const table = cli(['audit', 'query', '--config', conf, '--client', 'vendor', '--since', mid]);
    assert.equal(table.status, 0, table.stderr);
    const tl = table.stdout.split('\n').filter(Boolean);
    assert.match(tl[0]!, /^time {2,}requestId {2,}client {2,}route {2,}status {2,}outcome {2,}code {2,}reason {2,}instances {2,}bytes {2,}studies$/);
    const vendorSince = reqs.filter((r) => String(r.time) >= mid && r.client === 'vendor');
    assert.equal(tl.length - 1, vendorSince.length, 'one row per record');
    assert.match(table.stderr, new RegExp(`^${vendorSince.length} request record\\(s\\)`));
    const col = tl[0]!.indexOf('requestId');
    for (const [i, r] of vendorSince.entries()) {
      assert.ok(tl[i + 1]!.startsWith(String(r.time)), 'rows in trail order, starting with the time');
      assert.equal(tl[i + 1]!.slice(col, col + 36), r.requestId, 'columns aligned under the header');
    }
    // Report: a self-contained page.
    const out = join(dir, 'report.html');
    const rep = cli(['audit', 'report', '--config', conf, '--client', 'vendor', '--since', '1d', '--out', out]);
    assert.equal(rep.status, 0, rep.stderr);
    const html = readFileSync(out, 'utf8');
    assert.match(html, /<h1>Audit report: vendor<\/h1>/);
    assert.match(html, /Audit trail integrity: intact/);
    assert.match(html, /<svg[^>]+aria-label="instances released per day"/);
    assert.ok(!/(src|href)="(https?:)?\/\//.test(html), 'no external resource');
    assert.ok(!cohort.studies.some((s) => html.includes(s.patientId) || html.includes(s.patientName)), 'no Patient ID or name in the report');
    // Tampering: edit one record → verify fails and names it.
    const lines = readFileSync(join(dir, 'audit.log'), 'utf8').split('\n');
    lines[3] = lines[3]!.replace('"client":"vendor"', '"client":"vendoR"');
    writeFileSync(join(dir, 'audit.log'), lines.join('\n'));
    const bad = cli(['audit', 'verify', '--config', conf]);
    assert.equal(bad.status, 1);
    assert.match(bad.stdout, /TAMPERED: audit\.log line 4 \(record 4\): record 4 altered/);
    const report2 = cli(['audit', 'report', '--config', conf, '--client', 'vendor', '--since', '1d', '--out', out]);
    assert.equal(report2.status, 0);
    assert.match(readFileSync(out, 'utf8'), /class="bad">Audit trail integrity: TAMPERED at audit\.log line 4/);
  });

  test('fails closed when the trail cannot be written, and says why on /readyz', async () => {
    const fdir = mkdtempSync(join(tmpdir(), 'deid-audit-full-'));
    symlinkSync('/dev/full', join(fdir, 'audit.log')); // every write fails with ENOSPC
    const c = validateConfig({ server: { host: '127.0.0.1', port: 0 }, upstream: { url: orthanc.dicomWebUrl }, state: { dir: fdir }, clients: [{ id: 'vendor', apiKeySha256: sha(tok('vendor')) }] }, join(fdir, 'g.yaml'));
    const g = await startGateway(c, { ...buildParts(c), log: quiet() });
    try {
      let first: { status: number; body: string };
      try {
        const r = await get('/dicom-web/studies', 'vendor', g.url);
        first = { status: r.status, body: await r.text() };
      } catch (e) {
        first = { status: 0, body: (e as Error).message };
      }
      assert.ok(first.status === 0 || first.body.length === 0 || !first.body.endsWith(']'), 'the first response is not completed without its record');
      const refused = await get('/dicom-web/studies', 'vendor', g.url);
      assert.equal(refused.status, 503);
      assert.equal((await refused.json() as { code: string }).code, 'AUDIT_UNAVAILABLE');
      const ready = await fetch(`${g.url}/readyz`);
      assert.equal(ready.status, 503);
      const body = await ready.json() as { audit: string; auditProblem: string };
      assert.equal(body.audit, 'unavailable');
      assert.match(body.auditProblem, /cannot be written \(ENOSPC\)/);
      unlinkSync(join(fdir, 'audit.log'));
      const ok = await get('/dicom-web/studies', 'vendor', g.url);
      assert.equal(ok.status, 200, 'serving again once the trail can be written');
      await ok.arrayBuffer();
      assert.ok(existsSync(join(fdir, 'audit.log')) && readFileSync(join(fdir, 'audit.log'), 'utf8').includes('"type":"resume"'), 'the trail records that it resumed');
    } finally {
      await g.close();
      rmSync(fdir, { recursive: true, force: true });
    }
  });
});

describe('the A.5 spool is part of the audit (no PACS needed)', () => {
  const base = (dir: string, syslogPort: number): Config => validateConfig({
    server: { host: '127.0.0.1', port: 0 }, upstream: { url: 'http://127.0.0.1:9/dicom-web', connectTimeoutMs: 200 }, state: { dir },
    audit: { syslog: { host: '127.0.0.1', port: syslogPort } },
    clients: [{ id: 'vendor', apiKeySha256: sha(tok('vendor')) }],
  }, join(dir, 'g.yaml'));
  const get = (g: Gateway, path: string, client: string | null = 'vendor'): Promise<Response> =>
    fetch(`${g.url}${path}`, { headers: client ? { authorization: `Bearer ${tok(client)}` } : {} });

  test('a spool that cannot be written fails closed like the trail: AUDIT_UNAVAILABLE, /readyz says why, nothing lost once it can', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'deid-spool-full-'));
    const c = base(dir, await freePort()); // no repository listening: everything stays in the spool
    mkdirSync(join(dir, 'audit-spool'), { recursive: true });
    symlinkSync('/dev/full', join(dir, 'audit-spool', 'spool.log')); // every append fails with ENOSPC
    const g = await startGateway(c, { ...buildParts(c), log: quiet() });
    try {
      const first = await get(g, '/dicom-web/studies/2.25.1/metadata'); // a 404 problem: its A.5 messages cannot be spooled
      assert.equal(first.status, 503, 'the problem is not sent without its A.5 messages');
      assert.equal((await first.json() as { code: string }).code, 'AUDIT_UNAVAILABLE');
      const refused = await get(g, '/dicom-web/studies/2.25.1/metadata');
      assert.equal(refused.status, 503);
      assert.equal(refused.headers.get('retry-after'), '30');
      assert.equal((await refused.json() as { code: string }).code, 'AUDIT_UNAVAILABLE');
      const ready = await fetch(`${g.url}/readyz`);
      assert.equal(ready.status, 503);
      const body = await ready.json() as { audit: string; auditProblem: string };
      assert.equal(body.audit, 'unavailable');
      assert.match(body.auditProblem, /A\.5 audit spool cannot be written \(ENOSPC\)/);
      unlinkSync(join(dir, 'audit-spool', 'spool.log'));
      const ok = await get(g, '/dicom-web/studies/2.25.1/metadata');
      assert.equal(ok.status, 404, 'served again once the spool can be written');
      await ok.arrayBuffer();
      const spool = readFileSync(join(dir, 'audit-spool', 'spool.log'), 'utf8');
      assert.equal((spool.match(/csd-code="110114"/g) ?? []).length, 1, 'the first request\'s login message, kept while the spool failed, is spooled');
      assert.equal((await fetch(`${g.url}/readyz`).then((r) => r.json()) as { audit: string }).audit, 'ok');
    } finally {
      await g.close();
      rmSync(dir, { recursive: true, force: true });
    }
  });

  test('an authentication failure is a User Authentication failure and one Security Alert; a write attempt names its client', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'deid-spool-auth-'));
    const c = base(dir, await freePort());
    const g = await startGateway(c, { ...buildParts(c), log: quiet() });
    const frames = (): string[] => readFileSync(join(dir, 'audit-spool', 'spool.log'), 'utf8').split(/\d+ <85>1 /).filter(Boolean);
    try {
      const r = await fetch(`${g.url}/dicom-web/studies`, { headers: { authorization: 'Bearer wrong-token-0123456789' } });
      assert.equal(r.status, 401);
      await r.arrayBuffer();
      const m = frames();
      assert.equal(m.length, 2, 'two events, two messages');
      assert.ok(/csd-code="110114"[^>]*\/><EventTypeCode csd-code="110122"/.test(m[0]!) && m[0]!.includes('EventOutcomeIndicator="4"'), 'User Authentication, Login, failure');
      assert.ok(/csd-code="110113"[^>]*\/><EventTypeCode csd-code="110132"/.test(m[1]!) && m[1]!.includes('EventOutcomeIndicator="4"') && m[1]!.includes('UNAUTHORIZED'), 'one Security Alert for the refused credential');
      assert.ok(!m.join('').includes('wrong-token'), 'the token is never audited');
      // Writes are refused for everyone, and the record names the client whose token was valid.
      for (const [client, expected] of [['vendor', 'vendor'], [null, null]] as const) {
        const w = await fetch(`${g.url}/dicom-web/studies`, { method: 'POST', headers: client ? { authorization: `Bearer ${tok(client)}`, 'content-type': 'application/dicom' } : { 'content-type': 'application/dicom' }, body: 'x' });
        assert.equal(w.status, 405);
        assert.equal(w.headers.get('allow'), 'GET');
        const id = w.headers.get('x-request-id');
        await w.arrayBuffer();
        const rec = readFileSync(join(dir, 'audit.log'), 'utf8').split('\n').filter(Boolean).map((l) => JSON.parse(l) as { requestId: string; client: string | null; route: string; status: number }).find((x) => x.requestId === id);
        assert.deepEqual(rec && [rec.client, rec.route, rec.status], [expected, 'write', 405]);
      }
    } finally {
      await g.close();
      rmSync(dir, { recursive: true, force: true });
    }
  });

  test('a problem reply leaves only after its audit records are written (a slow shared spool)', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'deid-spool-slow-'));
    const c = base(dir, await freePort());
    const parts = buildParts(c);
    const written: string[] = [];
    const audit = { ...parts.audit, record: (r: Parameters<typeof parts.audit.record>[0]) => {
      const done = parts.audit.record(r);
      return sleep(300).then(() => done).then(() => { written.push(r.requestId); });
    } };
    const g = await startGateway(c, { ...parts, audit, log: quiet() });
    try {
      for (const [path, client, status] of [['/dicom-web/studies', null, 401], ['/dicom-web/studies/2.25.1/metadata', 'vendor', 404], ['/dicom-web/studies', 'vendor', 405]] as const) {
        const r = await fetch(`${g.url}${path}`, { method: status === 405 ? 'POST' : 'GET', headers: client ? { authorization: `Bearer ${tok(client)}` } : {} });
        assert.equal(r.status, status);
        assert.ok(written.includes(r.headers.get('x-request-id')!), `the ${status} arrived after its audit records were written`);
        await r.arrayBuffer();
      }
    } finally {
      await g.close();
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
