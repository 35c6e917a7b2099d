/**
 * Issue 7's shared state on a real PostgreSQL (Debian package, started by the test on
 * loopback): two gateway replicas on one database resolve each other's pseudonyms and share
 * rate limits; state survives restarts; migrations are recorded and a newer schema refused.
 */
import { describe, test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { copyFileSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { spawnSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import winston from 'winston';
import { validateConfig, type Config } from '../../src/config/schema.js';
import { buildPartsAsync, startGateway, type Gateway } from '../../src/main.js';
import { loadOrCreateMasterSecret } from '../../src/pseudonym/secret.js';
import { generateCohort, type Cohort } from '../fixtures/cohort.js';
import { freePort, startOrthanc, type OrthancHandle } from '../helpers/orthanc.js';
import { createServer, type Socket } from 'node:net';
import { postgresBin, startPostgres, type PostgresHandle } from '../helpers/postgres.js';
import { makeTextPhantom } from '../fixtures/text-phantom.js';
import { splitMultipart } from '../helpers/multipart.js';
import { makeHeadPhantom } from '../fixtures/head-phantom.js';
import { PG_SCHEMA_VERSION } from '../../src/state/postgres.js';

const sha = (t: string): string => createHash('sha256').update(t).digest('hex');
const tok = (id: string): string => `${id}-token-0123456789`;
const quiet = (): winston.Logger => winston.createLogger({ transports: [new winston.transports.Console({ silent: true })] });

describe('shared state on PostgreSQL: two replicas', { skip: postgresBin() ? false : 'PostgreSQL is not installed (apt-get install postgresql)' }, () => {
  let pg: PostgresHandle;
  let orthanc: OrthancHandle;
  let cohort: Cohort;
  const dirs: string[] = [];
  const cfgs: Config[] = [];
  let a: Gateway;
  let b: Gateway;
  let syslogPort: number;

  const start = async (i: number): Promise<Gateway> => startGateway(cfgs[i]!, { ...(await buildPartsAsync(cfgs[i]!)), log: quiet() });
  const get = async (gw: Gateway, path: string, client = 'vendor'): Promise<{ status: number; body: string }> => {
    const r = await fetch(`${gw.url}${path}`, { headers: { authorization: `Bearer ${tok(client)}` } });
    return { status: r.status, body: await r.text() };
  };

  before(async () => {
    pg = await startPostgres();
    syslogPort = await freePort(); // the repository is down until the spool test starts it
    cohort = generateCohort();
    orthanc = await startOrthanc();
    await orthanc.upload([...cohort.files]);
    // Replicas share the master key (a secret in production) and the database; each has its own
    // state.dir for the audit trail.
    for (let i = 0; i < 2; i++) {
      const dir = mkdtempSync(join(tmpdir(), `deid-replica${i}-`));
      dirs.push(dir);
      if (i === 0) loadOrCreateMasterSecret(dir);
      else { mkdirSync(dir, { recursive: true }); copyFileSync(join(dirs[0]!, 'master.key'), join(dir, 'master.key')); }
      cfgs.push(validateConfig({
        server: { host: '127.0.0.1', port: 0 }, upstream: { url: orthanc.dicomWebUrl }, state: { dir, store: pg.url },
        audit: { syslog: { host: '127.0.0.1', port: syslogPort } },
        clients: [
          { id: 'vendor', apiKeySha256: sha(tok('vendor')) },
          { id: 'limited', apiKeySha256: sha(tok('limited')), limits: { requestsPerMinute: 4 } },
          { id: 'sono', apiKeySha256: sha(tok('sono')), profile: { options: ['retainUIDs'] }, pixels: { risky: 'detect' } },
        ],
      }, join(dir, 'g.yaml')));
    }
    a = await start(0);
    b = await start(1);
  });

  after(async () => {
    await a?.close();
    await b?.close();
    await orthanc?.stop();
    pg?.stop();
  });

  test('migrations ran once and are recorded', () => {
    assert.equal(pg.psql('SELECT version FROM deid_schema_version').trim(), '4');
    assert.match(pg.psql("SELECT string_agg(tablename, ',' ORDER BY tablename) FROM pg_tables WHERE tablename LIKE 'deid_%'"), /deid_audit_spool,deid_face_decisions,deid_limit_buckets,deid_limit_day_bytes,deid_pseudonyms,deid_schema_version,deid_text_decisions/);
  });

  test('a head series is analysed once for all replicas: the other replica uses the stored face decision', async () => {
    const head = makeHeadPhantom({ modality: 'MR', orientation: 'sagittal', rows: 80, columns: 80, pixelMm: 3, slices: 50, sliceMm: 3, uidRoot: '1.2.826.0.1.3680043.9.7433.11.800' });
    await orthanc.upload(head.files.map((f) => f.bytes));
    const before = { a: a.faceStats.analyses, b: b.faceStats.analyses };
    // The vendor's pseudonyms are the same on both replicas (one master key), so one path serves both.
    const pseudo = async (gw: Gateway): Promise<string> => {
      const rows = await (await fetch(`${gw.url}/dicom-web/studies?includefield=00201208&limit=1000`, { headers: { authorization: `Bearer ${tok('vendor')}` } })).json() as Record<string, { Value?: unknown[] }>[];
      const study = String(rows.find((r) => Number(r['00201208']?.Value?.[0]) === head.files.length)?.['0020000D']?.Value?.[0]);
      const series = await (await fetch(`${gw.url}/dicom-web/studies/${study}/series`, { headers: { authorization: `Bearer ${tok('vendor')}` } })).json() as Record<string, { Value?: unknown[] }>[];
      return `${gw.url}/dicom-web/studies/${study}/series/${String(series[0]?.['0020000E']?.Value?.[0])}`;
    };
    const rowsBefore = Number(pg.psql('SELECT count(*) FROM deid_face_decisions').trim());
    const ra = await fetch(await pseudo(a), { headers: { authorization: `Bearer ${tok('vendor')}` } });
    assert.equal(ra.status, 200);
    await ra.arrayBuffer();
    assert.equal(a.faceStats.analyses, before.a + 1);
    assert.equal(Number(pg.psql('SELECT count(*) FROM deid_face_decisions').trim()), rowsBefore + 1);
    const rb = await fetch(await pseudo(b), { headers: { authorization: `Bearer ${tok('vendor')}` } });
    assert.equal(rb.status, 200);
    await rb.arrayBuffer();
    assert.equal(b.faceStats.analyses, before.b, 'replica B made no analysis of its own');
  });

  test('an ultrasound\'s burned-in text is looked for once for all replicas: the other replica uses the stored text decision', async () => {
    const us = makeTextPhantom({ rows: 120, columns: 160, photometric: 'RGB', uidRoot: '1.2.826.0.1.3680043.9.7433.12.800', texts: [{ x: 6, y: 6, text: 'ST MARY 12/03/2026', scale: 1, color: 255 }] });
    await orthanc.upload([us.bytes]);
    const path = `/dicom-web/studies/${us.study}/series/${us.series}/instances/${us.sop}`;
    const rowsBefore = Number(pg.psql('SELECT count(*) FROM deid_text_decisions').trim());
    const ra = await fetch(`${a.url}${path}`, { headers: { authorization: `Bearer ${tok('sono')}` } });
    assert.equal(ra.status, 200);
    const bodyA = Buffer.from(await ra.arrayBuffer());
    assert.equal(a.textStats.analyses, 1);
    assert.equal(Number(pg.psql('SELECT count(*) FROM deid_text_decisions').trim()), rowsBefore + 1);
    const rb = await fetch(`${b.url}${path}`, { headers: { authorization: `Bearer ${tok('sono')}` } });
    assert.equal(rb.status, 200);
    const bodyB = Buffer.from(await rb.arrayBuffer());
    assert.equal(b.textStats.analyses, 0, 'replica B made no analysis of its own');
    assert.deepEqual(splitMultipart(bodyB, rb.headers.get('content-type')!)[0]!.body, splitMultipart(bodyA, ra.headers.get('content-type')!)[0]!.body, 'both replicas mask the same regions');
  });

  test('a replica resolves the pseudonyms another replica issued', async () => {
    const list = await get(a, '/dicom-web/studies?limit=3');
    assert.equal(list.status, 200);
    const uids = (JSON.parse(list.body) as Record<string, { Value: string[] }>[]).map((r) => r['0020000D']!.Value[0]!);
    assert.equal(uids.length, 3);
    for (const u of uids) {
      assert.match(u, /^2\.25\.\d+$/);
      const meta = await get(b, `/dicom-web/studies/${u}/metadata`);
      assert.equal(meta.status, 200, `replica B resolves ${u}`);
      const series = (JSON.parse(meta.body) as Record<string, { Value: string[] }>[])[0]!['0020000E']!.Value[0]!;
      assert.equal((await get(a, `/dicom-web/studies/${u}/series/${series}/metadata`)).status, 200, 'and A resolves what B issued');
    }
    assert.equal((await get(b, '/dicom-web/studies/2.25.42/metadata')).status, 404, 'unknown pseudonyms stay unknown');
    assert.ok(Number(pg.psql("SELECT count(*) FROM deid_pseudonyms WHERE client_id = 'vendor'")) >= 6, 'the pairs are in the shared table');
  });

  test('rate limits are shared by the replicas, and survive a restart of both', async () => {
    for (const [gw, n] of [[a, 2], [b, 2]] as const) for (let i = 0; i < n; i++) assert.equal((await get(gw, '/dicom-web/studies?limit=1', 'limited')).status, 200);
    assert.equal((await get(a, '/dicom-web/studies?limit=1', 'limited')).status, 429, 'the fifth request, on either replica, is over the shared limit');
    assert.equal((await get(b, '/dicom-web/studies?limit=1', 'limited')).status, 429);
    await a.close();
    await b.close();
    a = await start(0);
    b = await start(1);
    assert.equal((await get(b, '/dicom-web/studies?limit=1', 'limited')).status, 429, 'the bucket is in the database');
    const list = await get(a, '/dicom-web/studies?limit=1');
    const uid = (JSON.parse(list.body) as Record<string, { Value: string[] }>[])[0]!['0020000D']!.Value[0]!;
    assert.equal((await get(b, `/dicom-web/studies/${uid}/metadata`)).status, 200, 'pseudonyms survive the restart');
  });

  test('A.5 messages spooled by a replica that is gone are sent by the other one (shared spool)', async () => {
    await get(b, '/dicom-web/studies?limit=2');
    await get(b, '/dicom-web/studies', 'nobody-at-all');
    const spooled = Number(pg.psql('SELECT count(*) FROM deid_audit_spool WHERE sent_at IS NULL'));
    assert.ok(spooled >= 2, `messages wait in the shared spool (${spooled})`);
    await b.close(); // B is gone; its messages are still in the database
    const got: string[] = [];
    const sockets = new Set<Socket>();
    const server = createServer((s) => { sockets.add(s); s.on('data', (d) => got.push(String(d))); });
    await new Promise<void>((r) => server.listen(syslogPort, '127.0.0.1', () => r()));
    try {
      for (let i = 0; i < 300 && Number(pg.psql('SELECT count(*) FROM deid_audit_spool WHERE sent_at IS NULL')) > 0; i++) await new Promise((r) => setTimeout(r, 100));
      assert.equal(pg.psql('SELECT count(*) FROM deid_audit_spool WHERE sent_at IS NULL').trim(), '0', 'replica A sent everything');
      assert.match(got.join(''), /csd-code="110114"[\s\S]*EventOutcomeIndicator="4"|EventOutcomeIndicator="4"[\s\S]*csd-code="110114"/, 'B\'s authentication failure reached the repository');
    } finally {
      for (const s of sockets) s.destroy();
      await new Promise<void>((r) => server.close(() => r()));
      b = await start(1);
    }
  });

  test('a database written by a newer version is refused at start, with the reason', async () => {
    pg.psql('UPDATE deid_schema_version SET version = 99');
    try {
      await assert.rejects(buildPartsAsync(cfgs[0]!), new RegExp(String.raw`PostgreSQL 127\.0\.0\.1:\d+\/deid: schema version 99 is newer than this gateway supports \(${PG_SCHEMA_VERSION}\); upgrade the gateway`));
    } finally {
      pg.psql(`UPDATE deid_schema_version SET version = ${PG_SCHEMA_VERSION}`);
    }
  });

  test('state.storePasswordFile: the password comes from a mounted file, not the URL; a wrong one is refused without it', async () => {
    const url = pg.passwordRole('deid_pw', 'pw-from-a-secret-file');
    const dir = mkdtempSync(join(tmpdir(), 'deid-pwfile-'));
    copyFileSync(join(dirs[0]!, 'master.key'), join(dir, 'master.key'));
    const secret = join(dir, 'pg-password');
    const cfg = (): Config => validateConfig({
      server: { host: '127.0.0.1', port: 0 }, upstream: { url: orthanc.dicomWebUrl }, state: { dir, store: url, storePasswordFile: 'pg-password' },
      clients: [{ id: 'vendor', apiKeySha256: sha(tok('vendor')) }],
    }, join(dir, 'g.yaml'));
    try {
      writeFileSync(secret, 'not-the-password\n');
      await assert.rejects(buildPartsAsync(cfg()), (e: Error) => /cannot connect|password|STATE_UNAVAILABLE/i.test(`${(e as { code?: string }).code} ${e.message}`) && !e.message.includes('not-the-password'), 'a wrong password is refused, and not quoted');
      writeFileSync(secret, 'pw-from-a-secret-file\n'); // as `docker secret` and Kubernetes write it, with a newline
      const g = await startGateway(cfg(), { ...(await buildPartsAsync(cfg())), log: quiet() });
      try {
        const list = await get(g, '/dicom-web/studies?limit=1');
        assert.equal(list.status, 200, 'served with state on PostgreSQL as the password role');
        const u = (JSON.parse(list.body) as Record<string, { Value: string[] }>[])[0]!['0020000D']!.Value[0]!;
        assert.equal((await get(a, `/dicom-web/studies/${u}/metadata`)).status, 200, 'the same shared table as the other replicas');
      } finally {
        await g.close();
      }
      rmSync(secret);
      await assert.rejects(buildPartsAsync(cfg()), /state\.storePasswordFile: .*pg-password cannot be read \(ENOENT\); mount the database password there/);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  test('audit verify, query and report read every replica\'s trail with --trail', async () => {
    const idsOf = async (gw: Gateway): Promise<string> => {
      const r = await fetch(`${gw.url}/dicom-web/studies?limit=1`, { headers: { authorization: `Bearer ${tok('vendor')}` } });
      await r.arrayBuffer();
      return r.headers.get('x-request-id')!;
    };
    const fromA = await idsOf(a);
    const fromB = await idsOf(b);
    const conf = join(dirs[0]!, 'cli.yaml');
    writeFileSync(conf, `server: {host: 127.0.0.1, port: 8080}\nupstream: {url: "${orthanc.dicomWebUrl}"}\nstate: {dir: ${dirs[0]}, store: "${pg.url}"}\nclients:\n  - id: vendor\n    apiKeySha256: "${sha(tok('vendor'))}"\n`);
    const cli = (args: string[]): { status: number | null; stdout: string; stderr: string } => {
      const r = spawnSync(process.execPath, ['--import', 'tsx', fileURLToPath(new URL('../../src/cli/main.ts', import.meta.url)), ...args], { encoding: 'utf8' });
      return { status: r.status, stdout: r.stdout, stderr: r.stderr };
    };
    const ids = (args: string[]): string[] => {
      const r = cli(['audit', 'query', '--config', conf, '--client', 'vendor', '--format', 'json', ...args]);
      assert.equal(r.status, 0, r.stderr);
      return r.stdout.split('\n').filter(Boolean).map((l) => (JSON.parse(l) as { requestId: string }).requestId);
    };
    const own = ids([]);
    assert.ok(own.includes(fromA) && !own.includes(fromB), 'alone, the query reads this replica\'s trail');
    const both = cli(['audit', 'query', '--config', conf, '--client', 'vendor', '--format', 'json', '--trail', dirs[1]!]);
    const rows = both.stdout.split('\n').filter(Boolean).map((l) => JSON.parse(l) as { requestId: string; time: string });
    assert.ok(rows.some((r) => r.requestId === fromA) && rows.some((r) => r.requestId === fromB), 'with --trail, both replicas\' records');
    assert.ok(rows.every((r, i) => i === 0 || rows[i - 1]!.time <= r.time), 'merged in time order');
    const v = cli(['audit', 'verify', '--config', conf, '--trail', dirs[1]!]);
    assert.equal(v.status, 0, v.stdout + v.stderr);
    assert.equal((v.stdout.match(/audit trail intact/g) ?? []).length, 2, 'each trail verified');
    const out = join(dirs[0]!, 'report.html');
    const rep = cli(['audit', 'report', '--config', conf, '--client', 'vendor', '--since', '1d', '--out', out, '--trail', dirs[1]!]);
    assert.equal(rep.status, 0, rep.stderr);
    assert.match(readFileSync(out, 'utf8'), /intact \(\d+ records verified in 2 trails\)/);
    const missing = cli(['audit', 'query', '--config', conf, '--trail', join(dirs[1]!, 'nope')]);
    assert.equal(missing.status, 2, 'a trail that is not there is a usage error');
    assert.match(missing.stderr, /--trail .*nope: no such directory/);
  });

  test('an unreachable database is a clear error, without the credentials', async () => {
    const c = validateConfig({
      server: { host: '127.0.0.1', port: 0 }, upstream: { url: orthanc.dicomWebUrl },
      state: { dir: dirs[0]!, store: 'postgres://gw:s3cret-pw@127.0.0.1:9/deid' }, clients: [{ id: 'v', apiKeySha256: sha('x') }],
    }, join(dirs[0]!, 'h.yaml'));
    await assert.rejects(buildPartsAsync(c), (e: Error) => /STATE_UNAVAILABLE|PostgreSQL 127\.0\.0\.1:9\/deid: cannot connect/.test(`${(e as { code?: string }).code} ${e.message}`) && !e.message.includes('s3cret'));
  });
});
