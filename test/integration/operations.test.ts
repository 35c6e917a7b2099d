/**
 * Issue 7's operations, with certificates the tests make: an HTTPS listener, mutual TLS as
 * client authentication (certificate subject → client id), and configuration reload on SIGHUP
 * in the real `serve` process without dropping requests.
 */
import { describe, test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { request as httpsRequest } from 'node:https';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import winston from 'winston';
import { validateConfig } from '../../src/config/schema.js';
import { buildParts, startGateway } from '../../src/main.js';
import { freePort } from '../helpers/orthanc.js';
import { startFakeUpstream, type FakeUpstream } from '../helpers/fake-upstream.js';

const sha = (t: string): string => createHash('sha256').update(t).digest('hex');
const quiet = (): winston.Logger => winston.createLogger({ transports: [new winston.transports.Console({ silent: true })] });
const HAS_OPENSSL = spawnSync('openssl', ['version']).status === 0;

function ossl(dir: string, args: string[]): void {
  const r = spawnSync('openssl', args, { cwd: dir, encoding: 'utf8' });
  assert.equal(r.status, 0, r.stderr);
}

/** A CA, a server certificate for 127.0.0.1, a client certificate, and one from another CA. */
function makePki(dir: string): void {
  ossl(dir, ['req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-keyout', 'ca.key', '-out', 'ca.crt', '-days', '2', '-subj', '/CN=hospital-ca']);
  ossl(dir, ['req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-keyout', 'rogue-ca.key', '-out', 'rogue-ca.crt', '-days', '2', '-subj', '/CN=rogue-ca']);
  writeFileSync(join(dir, 'server.cnf'), 'subjectAltName=IP:127.0.0.1\n');
  const issue = (name: string, subj: string, ca: string, ext?: string): void => {
    ossl(dir, ['req', '-newkey', 'rsa:2048', '-nodes', '-keyout', `${name}.key`, '-out', `${name}.csr`, '-subj', subj]);
    ossl(dir, ['x509', '-req', '-in', `${name}.csr`, '-CA', `${ca}.crt`, '-CAkey', `${ca}.key`, '-CAcreateserial', '-out', `${name}.crt`, '-days', '2', ...(ext ? ['-extfile', ext] : [])]);
  };
  issue('server', '/CN=127.0.0.1', 'ca', 'server.cnf');
  issue('client', '/O=Acme AI/CN=acme-ai', 'ca');
  issue('rogue', '/O=Acme AI/CN=acme-ai', 'rogue-ca');
}

function get(url: string, dir: string, opts: { cert?: string; token?: string } = {}): Promise<{ status: number; body: string }> {
  return new Promise((resolve, reject) => {
    const req = httpsRequest(url, {
      ca: readFileSync(join(dir, 'ca.crt')),
      ...(opts.cert ? { cert: readFileSync(join(dir, `${opts.cert}.crt`)), key: readFileSync(join(dir, `${opts.cert}.key`)) } : {}),
      headers: opts.token ? { authorization: `Bearer ${opts.token}` } : {},
      agent: false,
    }, (res) => {
      let body = '';
      res.on('data', (d) => { body += String(d); });
      res.on('end', () => resolve({ status: res.statusCode ?? 0, body }));
    });
    req.on('error', reject);
    req.end();
  });
}

describe('operations: TLS, mutual TLS, reload', () => {
  let pki: string;
  before(() => {
    if (!HAS_OPENSSL) return;
    pki = mkdtempSync(join(tmpdir(), 'deid-pki-'));
    makePki(pki);
  });

  test('HTTPS, and a verified client certificate authenticates its client; a token still works; others are 401', { skip: HAS_OPENSSL ? false : 'openssl is not installed' }, async () => {
    const dir = mkdtempSync(join(tmpdir(), 'deid-tls-gw-'));
    const cfg = validateConfig({
      server: { host: '127.0.0.1', port: 0, tls: { certFile: join(pki, 'server.crt'), keyFile: join(pki, 'server.key'), caFile: join(pki, 'ca.crt'), clientCertificates: 'optional' } },
      upstream: { url: 'http://127.0.0.1:9/dicom-web', connectTimeoutMs: 200 },
      state: { dir },
      clients: [
        { id: 'acme-ai', certificateSubject: 'CN=acme-ai, O=Acme AI' },
        { id: 'token-client', apiKeySha256: sha('token-0123456789') },
      ],
    }, join(dir, 'g.yaml'));
    const gw = await startGateway(cfg, { ...buildParts(cfg), log: quiet() });
    try {
      assert.match(gw.url, /^https:\/\/127\.0\.0\.1:\d+$/);
      const path = `${gw.url}/dicom-web/studies/2.25.1/metadata`; // authenticated → 404; not → 401
      assert.equal((await get(path, pki, { cert: 'client' })).status, 404, 'the certificate authenticates acme-ai');
      assert.equal((await get(path, pki, { token: 'token-0123456789' })).status, 404, 'a token works over TLS');
      assert.equal((await get(path, pki, { cert: 'rogue' })).status, 401, 'the same subject from another CA is not trusted');
      assert.equal((await get(path, pki)).status, 401);
      await assert.rejects(fetch(`${gw.url.replace('https', 'http')}/healthz`), 'plain HTTP is not served on the TLS port');
      const audit = readFileSync(join(dir, 'audit.log'), 'utf8').trim().split('\n').map((l) => JSON.parse(l) as { type: string; client: string | null; status: number });
      assert.ok(audit.some((a) => a.type === 'request' && a.client === 'acme-ai' && a.status === 404), 'the audit names the certificate\'s client');
    } finally {
      await gw.close();
    }
  });

  test('clientCertificates: require refuses a connection without a trusted certificate', { skip: HAS_OPENSSL ? false : 'openssl is not installed' }, async () => {
    const dir = mkdtempSync(join(tmpdir(), 'deid-tls-req-'));
    const cfg = validateConfig({
      server: { host: '127.0.0.1', port: 0, tls: { certFile: join(pki, 'server.crt'), keyFile: join(pki, 'server.key'), caFile: join(pki, 'ca.crt'), clientCertificates: 'require' } },
      upstream: { url: 'http://127.0.0.1:9/dicom-web' }, state: { dir },
      audit: { syslog: { host: '127.0.0.1', port: await freePort() } }, // no repository: the messages stay in the spool
      clients: [{ id: 'acme-ai', certificateSubject: 'CN=acme-ai,O=Acme AI' }],
    }, join(dir, 'g.yaml'));
    const gw = await startGateway(cfg, { ...buildParts(cfg), log: quiet() });
    try {
      await assert.rejects(get(`${gw.url}/healthz`, pki), 'no certificate: the handshake fails');
      await assert.rejects(get(`${gw.url}/healthz`, pki, { cert: 'rogue' }), 'an untrusted certificate: the handshake fails');
      assert.equal((await get(`${gw.url}/healthz`, pki, { cert: 'client' })).status, 200);
      // Each refused handshake is audited: a trail record and, over syslog, a failed login and a
      // Security Alert (Node Authentication); the address and the TLS error code, nothing of the certificate.
      const deadline = Date.now() + 5000;
      const refused = (): { client: string | null; route: string; outcome: string; reason: string; remote: string }[] => readFileSync(join(dir, 'audit.log'), 'utf8').trim().split('\n').filter(Boolean)
        .map((l) => JSON.parse(l) as { client: string | null; route: string; outcome: string; reason: string; remote: string }).filter((r) => r.route === 'tls-handshake');
      while (refused().length < 2 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 50));
      const recs = refused();
      assert.equal(recs.length, 2, 'one record per refused handshake');
      for (const r of recs) {
        assert.equal(r.client, null);
        assert.equal(r.outcome, 'denied');
        assert.match(r.reason, /^tls-handshake:[A-Z0-9_]+$/);
        assert.match(r.remote, /127\.0\.0\.1/);
      }
      const spool = readFileSync(join(dir, 'audit-spool', 'spool.log'), 'utf8');
      assert.equal((spool.match(/csd-code="110113"[^>]*\/><EventTypeCode csd-code="110126"/g) ?? []).length, 2, 'a Security Alert (Node Authentication) per refused handshake');
      assert.equal((spool.match(/csd-code="110114"[^>]*\/><EventTypeCode csd-code="110122"[^>]*\/><EventOutcomeDescription>/g) ?? []).length, 2, 'a failed login per refused handshake');
      assert.ok(!/acme-ai|Acme AI|rogue/.test(spool + readFileSync(join(dir, 'audit.log'), 'utf8')), 'nothing of the certificate is audited');
    } finally {
      await gw.close();
    }
  });

  test('configuration: TLS and certificate subjects are validated with the key and the fix', () => {
    const base = { server: { host: '127.0.0.1', port: 0 }, upstream: { url: 'http://127.0.0.1:9/dicom-web' }, state: { dir: tmpdir() } };
    assert.throws(() => validateConfig({ ...base, clients: [{ id: 'a' }] }, '/x.yaml'), /clients\[0\]: give apiKeySha256 \(a token\) and\/or certificateSubject/);
    assert.throws(() => validateConfig({ ...base, clients: [{ id: 'a', certificateSubject: 'CN=a' }] }, '/x.yaml'), /certificateSubject: needs server\.tls with caFile/);
    assert.throws(() => validateConfig({ ...base, server: { ...base.server, tls: { certFile: '/nope.crt', keyFile: '/nope.key', clientCertificates: 'require' } }, clients: [{ id: 'a', apiKeySha256: sha('x') }] }, '/x.yaml'),
      /server\.tls\.certFile: \/nope\.crt cannot be read \(ENOENT\)[\s\S]*server\.tls\.caFile: client certificates need the CA/);
  });

  test('SIGHUP reloads clients without a restart; an invalid file leaves the running configuration', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'deid-hup-'));
    const port = await freePort();
    const conf = join(dir, 'gateway.yaml');
    const write = (clients: string): void => writeFileSync(conf, `server: {host: 127.0.0.1, port: ${port}}\nupstream: {url: "http://127.0.0.1:9/dicom-web"}\nstate: {dir: ./state}\nclients:\n${clients}`);
    write(`  - id: first\n    apiKeySha256: "${sha('first-token-01234')}"\n`);
    const child = spawn(process.execPath, ['--import', 'tsx', new URL('../../src/cli/main.ts', import.meta.url).pathname, 'serve', '--config', conf], { stdio: ['ignore', 'pipe', 'pipe'] });
    let log = '';
    child.stderr.on('data', (d) => { log += String(d); });
    child.stdout.on('data', (d) => { log += String(d); });
    const waitFor = async (re: RegExp): Promise<void> => { for (let i = 0; i < 200 && !re.test(log); i++) await new Promise((r) => setTimeout(r, 50)); assert.match(log, re); };
    const status = async (token: string): Promise<number> => (await fetch(`http://127.0.0.1:${port}/dicom-web/studies/2.25.1/metadata`, { headers: { authorization: `Bearer ${token}` } })).status;
    try {
      await waitFor(/listening on http/);
      assert.equal(await status('first-token-01234'), 404);
      assert.equal(await status('second-token-0123'), 401);
      write(`  - id: second\n    apiKeySha256: "${sha('second-token-0123')}"\n`);
      child.kill('SIGHUP');
      await waitFor(/configuration reloaded/);
      assert.equal(await status('second-token-0123'), 404, 'the new client works');
      assert.equal(await status('first-token-01234'), 401, 'the removed client is gone');
      writeFileSync(conf, readFileSync(conf, 'utf8').replace('port:', 'prot:'));
      child.kill('SIGHUP');
      await waitFor(/configuration not reloaded, the running one stays: .*server: unknown key \\?"prot\\?"/);
      assert.equal(await status('second-token-0123'), 404, 'still serving');
    } finally {
      const code = await new Promise<number | null>((resolve) => { child.on('exit', (c) => resolve(c)); child.kill('SIGTERM'); });
      assert.equal(code, 0);
    }
  });

  describe('requests in flight across SIGHUP and SIGTERM (a scripted PACS)', () => {
    let pacs: FakeUpstream;
    const ENTRY = new URL('../../src/cli/main.ts', import.meta.url).pathname;
    before(async () => {
      pacs = await startFakeUpstream();
      // QIDO answers at once, except a slow one (offset=7: 2.5 s) and one that never answers (offset=9).
      pacs.handle(async (req, res) => {
        const url = req.url ?? '';
        if (url.includes('offset=9')) return; // hangs
        if (url.includes('offset=7')) await new Promise((r) => setTimeout(r, 2500));
        if (!res.destroyed) res.writeHead(200, { 'content-type': 'application/dicom+json' }).end('[]');
      });
    });
    after(async () => { await pacs?.close(); });

    async function serve(extra = ''): Promise<{ url: string; conf: string; dir: string; log: () => string; kill: (sig: NodeJS.Signals) => void; exited: Promise<number | null>; write: (clients: string) => void }> {
      const dir = mkdtempSync(join(tmpdir(), 'deid-drain-'));
      const conf = join(dir, 'gateway.yaml');
      const port = await freePort();
      const write = (clients: string): void => writeFileSync(conf, `server: {host: 127.0.0.1, port: ${port}${extra}}\nupstream: {url: "${pacs.dicomWebUrl}"}\nstate: {dir: ./state}\nclients:\n${clients}`);
      write(`  - id: first\n    apiKeySha256: "${sha('first-token-01234')}"\n`);
      const child = spawn(process.execPath, ['--import', 'tsx', ENTRY, 'serve', '--config', conf], { stdio: ['ignore', 'pipe', 'pipe'] });
      let log = '';
      child.stderr.on('data', (d) => { log += String(d); });
      child.stdout.on('data', (d) => { log += String(d); });
      const exited = new Promise<number | null>((resolve) => child.on('exit', (c) => resolve(c)));
      for (let i = 0; i < 400 && !/listening on http/.test(log); i++) await new Promise((r) => setTimeout(r, 50));
      assert.match(log, /listening on http/);
      return { url: `http://127.0.0.1:${port}`, conf, dir, log: () => log, kill: (sig) => child.kill(sig), exited, write };
    }
    const records = (dir: string): { requestId: string; status: number; outcome: string; client: string | null }[] =>
      readFileSync(join(dir, 'state', 'audit.log'), 'utf8').trim().split('\n').map((l) => JSON.parse(l) as { type: string; requestId: string; status: number; outcome: string; client: string | null }).filter((r) => r.type === 'request');
    const qido = async (url: string, token: string, query = 'limit=1'): Promise<{ status: number; id: string; body: string }> => {
      const r = await fetch(`${url}/dicom-web/studies?${query}`, { headers: { authorization: `Bearer ${token}` } });
      return { status: r.status, id: r.headers.get('x-request-id') ?? '', body: await r.text() };
    };
    /** Requests in a loop on 4 connections until stopped; every outcome kept. */
    function loop(url: string, token: string): { stop: () => Promise<{ status: number; id: string }[]>; errors: string[] } {
      let running = true;
      const results: { status: number; id: string }[] = [];
      const errors: string[] = [];
      const workers = Array.from({ length: 4 }, async () => {
        while (running) {
          try { results.push(await qido(url, token)); } catch (e) { errors.push((e as Error).message); }
        }
      });
      return { errors, stop: async () => { running = false; await Promise.all(workers); return results; } };
    }

    test('SIGHUP with a request loop and a slow request in flight: zero failures; SIGTERM: the slow request completes and every request is audited', { timeout: 60_000 }, async () => {
      const gw = await serve();
      const l = loop(gw.url, 'first-token-01234');
      const slow = qido(gw.url, 'first-token-01234', 'limit=1&offset=7');
      await new Promise((r) => setTimeout(r, 300));
      gw.write(`  - id: first\n    apiKeySha256: "${sha('first-token-01234')}"\n  - id: second\n    apiKeySha256: "${sha('second-token-0123')}"\n`);
      gw.kill('SIGHUP');
      for (let i = 0; i < 100 && !/configuration reloaded/.test(gw.log()); i++) await new Promise((r) => setTimeout(r, 50));
      assert.match(gw.log(), /configuration reloaded/);
      assert.equal((await qido(gw.url, 'second-token-0123')).status, 200, 'the new client works');
      await new Promise((r) => setTimeout(r, 300));
      const results = await l.stop();
      assert.deepEqual(l.errors, [], 'no request failed across the reload');
      assert.ok(results.length > 20, `the loop ran (${results.length} requests)`);
      assert.deepEqual([...new Set(results.map((r) => r.status))], [200], 'every request of the loop answered 200');
      const s1 = await slow;
      assert.deepEqual([s1.status, s1.body], [200, '[]'], 'the slow request in flight across the reload completed');
      // SIGTERM with a slow request in flight: it completes, then the process exits 0.
      const slow2 = qido(gw.url, 'first-token-01234', 'limit=1&offset=7');
      await new Promise((r) => setTimeout(r, 300));
      const t0 = Date.now();
      gw.kill('SIGTERM');
      const s2 = await slow2;
      assert.deepEqual([s2.status, s2.body], [200, '[]'], 'the request in flight at SIGTERM completed');
      assert.equal(await gw.exited, 0);
      assert.ok(Date.now() - t0 >= 1500, 'the process waited for the request in flight');
      const recs = records(gw.dir);
      const ids = new Set(recs.map((r) => r.requestId));
      for (const r of [...results, s1, s2]) assert.ok(ids.has(r.id), `request ${r.id} is audited`);
      assert.equal(recs.length, results.length + 3, 'one record per request (the loop, the new client, two slow ones)');
      assert.ok(recs.every((r) => r.outcome === 'ok'), 'every record is complete (ok)');
      const v = spawnSync(process.execPath, ['--import', 'tsx', ENTRY, 'audit', 'verify', '--config', gw.conf], { encoding: 'utf8' });
      assert.equal(v.status, 0, v.stdout + v.stderr);
    });

    test('SIGTERM: after server.drainSeconds the connections still open are closed, their requests audited, and the process exits 0', { timeout: 60_000 }, async () => {
      const gw = await serve(', drainSeconds: 1');
      const hung = qido(gw.url, 'first-token-01234', 'limit=1&offset=9').then((r) => r.status, (e: Error) => e.message);
      await new Promise((r) => setTimeout(r, 300));
      const t0 = Date.now();
      gw.kill('SIGTERM');
      assert.equal(await gw.exited, 0);
      const took = Date.now() - t0;
      assert.ok(took >= 900 && took < 8000, `exited after the 1 s deadline (${took} ms)`);
      assert.equal(typeof await hung, 'string', 'the hung request\'s connection was closed');
      assert.match(gw.log(), /drain deadline reached after 1 s/);
      const recs = records(gw.dir);
      assert.equal(recs.length, 1, 'the hung request is audited');
      assert.equal(recs[0]!.outcome, 'aborted');
    });
  });
});
