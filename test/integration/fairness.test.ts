/**
 * Issue 15, the starving client, against a real Orthanc: a client that opens many large
 * retrieves and reads none of them must neither hold the PACS's connections nor slow another
 * client down, and what it holds is given back once it has read nothing for
 * server.clientIdleSeconds. (test/integration/faults.test.ts has the same attack on a PACS
 * that never answers: fault injection.)
 */
import { describe, test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { connect, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Writable } from 'node:stream';
import winston from 'winston';
import { validateConfig } from '../../src/config/schema.js';
import { buildParts, startGateway, type Gateway } from '../../src/main.js';
import { generateCtSeries } from '../fixtures/generate.js';
import { startOrthanc, type OrthancHandle } from '../helpers/orthanc.js';

const TOKENS = { greedy: 'greedy-token-0123456789', other: 'other-token-0123456789' };
const sha = (t: string): string => createHash('sha256').update(t).digest('hex');
const MULTIPART = 'multipart/related; type="application/dicom"';
/** The gateway's connections to the PACS, and how many streams one client may hold. */
const CONNECTIONS = 4;
const STREAMS = 2;
const IDLE_SECONDS = 2;
/** Retrieves the greedy client opens and never reads: more than the gateway has connections. */
const HELD = 10;
/** Open connections one client may hold. */
const PER_CLIENT = 12;

describe('no client can starve another, against a real Orthanc (issue 15)', () => {
  let orthanc: OrthancHandle;
  let gw: Gateway;
  let dir: string;
  let study = '';
  const logLines: string[] = [];

  const get = async (token: string, path: string, accept = 'application/dicom+json'): Promise<{ status: number; body: Buffer; ms: number }> => {
    const t0 = performance.now();
    const r = await fetch(`${gw.url}${path}`, { headers: { authorization: `Bearer ${token}`, accept } });
    const body = Buffer.from(await r.arrayBuffer());
    return { status: r.status, body, ms: performance.now() - t0 };
  };

  before(async () => {
    dir = mkdtempSync(join(tmpdir(), 'deid-fair-'));
    // 60 CT instances of 512 x 512 (about 32 MB): far more than the sockets between the
    // gateway and a client that reads nothing can hold.
    const files = await generateCtSeries(join(dir, 'ct'), 60, { rows: 512, cols: 512, seed: 15 });
    orthanc = await startOrthanc();
    await orthanc.upload(files.map((f) => readFileSync(f)));
    const cfg = validateConfig({
      server: { host: '127.0.0.1', port: 0, streamsPerClient: STREAMS, clientIdleSeconds: IDLE_SECONDS, connectionsPerClient: PER_CLIENT },
      upstream: { url: orthanc.dicomWebUrl, connections: CONNECTIONS },
      state: { dir: join(dir, 'state') },
      clients: [
        { id: 'greedy', apiKeySha256: sha(TOKENS.greedy), pixels: { faces: 'allow' } },
        { id: 'other', apiKeySha256: sha(TOKENS.other), pixels: { faces: 'allow' } },
      ],
    }, join(dir, 'test.yaml'));
    const parts = buildParts(cfg);
    const sink = new Writable({ write(chunk, _e, cb) { logLines.push(String(chunk)); cb(); } });
    const log = winston.createLogger({ level: 'info', format: winston.format.json(), transports: [new winston.transports.Stream({ stream: sink })] });
    gw = await startGateway(cfg, { ...parts, log });
  });

  after(async () => {
    await gw?.close();
    await orthanc?.stop();
    if (dir) rmSync(dir, { recursive: true, force: true });
  });

  test(`${HELD} unread retrieves of one client hold ${STREAMS} of ${CONNECTIONS} PACS connections; the other client is served at once, and the held ones are closed after clientIdleSeconds`, { timeout: 120_000 }, async () => {
    // Each client sees the study under its own pseudonymous UID.
    const studyOf = async (token: string): Promise<string> => {
      const r = await get(token, '/dicom-web/studies');
      assert.equal(r.status, 200);
      const rows = JSON.parse(r.body.toString('utf8')) as { '0020000D': { Value: string[] } }[];
      assert.equal(rows.length, 1);
      return rows[0]!['0020000D'].Value[0]!;
    };
    study = await studyOf(TOKENS.greedy);
    const otherStudy = await studyOf(TOKENS.other);
    // A whole retrieve by the other client, before the attack: what it costs unhindered.
    const alone = await get(TOKENS.other, `/dicom-web/studies/${otherStudy}`, MULTIPART);
    assert.equal(alone.status, 200);
    assert.ok(alone.body.length > 30e6, `the study is ${alone.body.length} bytes`);

    // The attack: raw connections that send a retrieve and never read a byte of the answer.
    const held: Socket[] = [];
    for (let i = 0; i < HELD; i++) {
      const socket = connect(Number(new URL(gw.url).port), '127.0.0.1');
      socket.on('error', () => { /* closed by the gateway */ });
      await new Promise<void>((resolve) => socket.once('connect', () => resolve()));
      socket.pause(); // nothing is read: the kernel's buffers fill, then the gateway's stream stalls
      socket.write(`GET /dicom-web/studies/${study} HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer ${TOKENS.greedy}\r\nAccept: ${MULTIPART}\r\n\r\n`);
      held.push(socket);
    }
    try {
      await new Promise((r) => setTimeout(r, 1000)); // the first retrieves reach the PACS and stall
      // The other client, meanwhile: queries and a whole retrieve, as fast as without the attack
      // (give or take the machine): they need the PACS connections the greedy one does not hold.
      const queries: number[] = [];
      for (let i = 0; i < 10; i++) {
        const q = await get(TOKENS.other, `/dicom-web/studies/${otherStudy}/series`);
        assert.equal(q.status, 200);
        queries.push(q.ms);
      }
      // Within the greedy client's idle timeout: a starved query waits for it (2 s and more).
      assert.ok(Math.max(...queries) < 1000, `the other client's queries took ${queries.map((x) => Math.round(x)).join(', ')} ms (one over 1 s: starved)`);
      const during = await get(TOKENS.other, `/dicom-web/studies/${otherStudy}`, MULTIPART);
      assert.equal(during.status, 200);
      assert.equal(during.body.length, alone.body.length);
      assert.ok(during.ms < Math.max(5_000, alone.ms * 5), `the other client's retrieve took ${Math.round(during.ms)} ms under attack, ${Math.round(alone.ms)} ms alone`);

      // The greedy client's streams have read nothing for longer than clientIdleSeconds: the ones
      // that were streaming are closed by the gateway. Read what each socket holds now: a closed
      // one ends without the last chunk of its answer; one that was still waiting its turn
      // streams its whole answer once read (it ends with the terminating chunk).
      await new Promise((r) => setTimeout(r, (IDLE_SECONDS + 2) * 1000));
      const ends = await Promise.all(held.map((socket) => new Promise<'cut' | 'whole' | 'open'>((resolve) => {
        let tail = Buffer.alloc(0);
        const timer = setTimeout(() => resolve('open'), 15_000);
        socket.on('data', (d: Buffer) => {
          tail = Buffer.concat([tail, d]).subarray(-16);
          if (tail.toString('latin1').endsWith('\r\n0\r\n\r\n')) { clearTimeout(timer); resolve('whole'); }
        });
        socket.once('close', () => { clearTimeout(timer); resolve('cut'); });
        socket.resume();
      })));
      const cut = ends.filter((e) => e === 'cut').length;
      assert.ok(cut >= STREAMS, `streams closed for reading nothing: ${cut} of ${HELD} (${ends.join(', ')})`);
      assert.ok(!ends.includes('open'), `every held connection either ended or was served: ${ends.join(', ')}`);
    } finally {
      for (const h of held) h.destroy();
    }
    // Everything the greedy client held is given back: the other client can use every PACS
    // connection at once.
    const started = performance.now();
    const all = await Promise.all(Array.from({ length: CONNECTIONS }, () => get(TOKENS.other, `/dicom-web/studies/${otherStudy}`, MULTIPART)));
    for (const r of all) {
      assert.equal(r.status, 200);
      assert.equal(r.body.length, alone.body.length);
    }
    assert.ok(performance.now() - started < Math.max(15_000, alone.ms * CONNECTIONS * 5), 'the connections were given back');
    // The held retrieves are recorded as aborted, and a client's abort is not an error.
    await new Promise((r) => setTimeout(r, 300));
    assert.ok(!logLines.some((l) => /"level":"error"/.test(l)), `no error-level line: ${logLines.filter((l) => /"level":"error"/.test(l)).slice(0, 3).join(' | ')}`);
  });

  test(`one client holds at most ${PER_CLIENT} open connections: a request on one more is 429 CONNECTIONS_LIMITED and closed; the other client is served; a connection given back can be used again`, { timeout: 60_000 }, async () => {
    const port = Number(new URL(gw.url).port);
    /** A kept-alive connection that sends one query; resolves with its status line and whether the gateway closes it. */
    const open = async (token: string): Promise<{ socket: Socket; status: number; code: string; closing: boolean; closed: Promise<void> }> => {
      const socket = connect(port, '127.0.0.1');
      socket.on('error', () => { /* closed by the gateway */ });
      const closed = new Promise<void>((resolve) => socket.once('close', () => resolve()));
      await new Promise<void>((resolve) => socket.once('connect', () => resolve()));
      let got = '';
      const answered = new Promise<string>((resolve) => {
        socket.on('data', (d: Buffer) => {
          got += d.toString('latin1');
          const head = got.indexOf('\r\n\r\n');
          const len = /content-length: (\d+)/i.exec(got);
          if (head >= 0 && len && got.length >= head + 4 + Number(len[1])) resolve(got);
        });
      });
      socket.write(`GET /dicom-web/studies HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer ${token}\r\nAccept: application/dicom+json\r\n\r\n`);
      const text = await answered;
      const status = Number(/^HTTP\/1\.1 (\d{3})/.exec(text)?.[1]);
      const code = /"code":"([A-Z_]+)"/.exec(text)?.[1] ?? '';
      return { socket, status, code, closing: /\r\nconnection: close\r\n/i.test(text), closed };
    };
    const kept: Socket[] = [];
    try {
      for (let i = 0; i < PER_CLIENT; i++) {
        const c = await open(TOKENS.greedy);
        assert.equal(c.status, 200, `connection ${i + 1}`);
        assert.equal(c.closing, false);
        kept.push(c.socket);
      }
      // One more: refused with its reason, and closed.
      const extra = await open(TOKENS.greedy);
      assert.equal(extra.status, 429);
      assert.equal(extra.code, 'CONNECTIONS_LIMITED');
      assert.ok(extra.closing, 'the refused connection is closed');
      await Promise.race([extra.closed, new Promise((_, reject) => setTimeout(() => reject(new Error('the refused connection stays open')), 5_000))]);
      // The kept ones still serve their client, and another client is not affected.
      const again = await new Promise<string>((resolve) => {
        let got = '';
        kept[0]!.removeAllListeners('data');
        kept[0]!.on('data', (d: Buffer) => { got += d.toString('latin1'); if (/\r\n\r\n/.test(got)) resolve(got); });
        kept[0]!.write(`GET /dicom-web/studies HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer ${TOKENS.greedy}\r\nAccept: application/dicom+json\r\n\r\n`);
      });
      assert.match(again, /^HTTP\/1\.1 200/);
      const other = await open(TOKENS.other);
      assert.equal(other.status, 200);
      other.socket.destroy();
      // A connection given back makes room for a new one.
      const gone = kept.pop()!;
      gone.destroy();
      await new Promise((r) => setTimeout(r, 200));
      const room = await open(TOKENS.greedy);
      assert.equal(room.status, 200);
      kept.push(room.socket);
    } finally {
      for (const k of kept) k.destroy();
    }
  });
});
