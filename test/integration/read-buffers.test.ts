/**
 * The PACS's read buffers are reused during a retrieve (issue 14, session 15): once an
 * instance's last byte has been written to the client, the upstream buffers that held it are
 * read into again. A buffer given back too early would put another instance's bytes (a raw,
 * not de-identified header among them) into a reply. Against a real Orthanc: two retrieves of a
 * large CT study at once, one read quickly and one read slowly (its writes wait in the
 * gateway's and the kernel's buffers while the PACS's answer goes on arriving), each instance's
 * pixel data compared with what was stored.
 */
import { describe, test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { request } from 'node:http';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Writable } from 'node:stream';
import winston from 'winston';
import { validateConfig } from '../../src/config/schema.js';
import { buildParts, startGateway, type Gateway } from '../../src/main.js';
import { generateCtSeries } from '../fixtures/generate.js';
import { startOrthanc, type OrthancHandle } from '../helpers/orthanc.js';
import { splitMultipart } from '../helpers/multipart.js';
import { slabCounts } from '../../src/upstream/socket-http.js';

const TOKEN = 'reader-token-0123456789';
const sha = (t: string): string => createHash('sha256').update(t).digest('hex');
const MULTIPART = 'multipart/related; type="application/dicom"';
const ROWS = 512;
const COLS = 512;
const COUNT = 40;
const PIXEL_BYTES = ROWS * COLS * 2;
const digest = (b: Buffer): string => createHash('sha256').update(b).digest('hex');

describe('read buffers reused during a retrieve, against a real Orthanc', () => {
  let orthanc: OrthancHandle;
  let gw: Gateway;
  let dir: string;
  /** The stored instances' pixel data (each file ends with it), by digest, counted. */
  const stored = new Map<string, number>();
  const logLines: string[] = [];

  before(async () => {
    dir = mkdtempSync(join(tmpdir(), 'deid-reuse-'));
    // 40 CT instances of 512 x 512 (about 21 MB): many 1 MiB read buffers per retrieve.
    const files = (await generateCtSeries(join(dir, 'ct'), COUNT, { rows: ROWS, cols: COLS, seed: 41 })).map((f) => readFileSync(f));
    for (const f of files) {
      const d = digest(f.subarray(f.length - PIXEL_BYTES));
      stored.set(d, (stored.get(d) ?? 0) + 1);
    }
    orthanc = await startOrthanc();
    await orthanc.upload(files);
    const cfg = validateConfig({
      server: { host: '127.0.0.1', port: 0 },
      upstream: { url: orthanc.dicomWebUrl },
      state: { dir: join(dir, 'state') },
      // No face analysis: a chest CT has no face, and this test is about the bytes.
      clients: [{ id: 'reader', apiKeySha256: sha(TOKEN), pixels: { faces: 'allow' } }],
    }, join(dir, 'test.yaml'));
    const sink = new Writable({ write(chunk, _e, cb) { logLines.push(String(chunk)); cb(); } });
    const log = winston.createLogger({ level: 'info', format: winston.format.json(), transports: [new winston.transports.Stream({ stream: sink })] });
    gw = await startGateway(cfg, { ...buildParts(cfg), log });
  });

  after(async () => {
    await gw?.close();
    await orthanc?.stop();
    if (dir) rmSync(dir, { recursive: true, force: true });
  });

  /** GET through the gateway; `slow`: the client stops for a few ms after every 64 KiB. */
  const retrieve = (path: string, slow: boolean): Promise<{ status: number; contentType: string; body: Buffer }> => new Promise((resolve, reject) => {
    const req = request(`${gw.url}${path}`, { headers: { authorization: `Bearer ${TOKEN}`, accept: MULTIPART } }, (res) => {
      const chunks: Buffer[] = [];
      let since = 0;
      res.on('data', (c: Buffer) => {
        chunks.push(c);
        since += c.length;
        if (slow && since >= 64 * 1024) {
          since = 0;
          res.pause();
          setTimeout(() => res.resume(), 4);
        }
      });
      res.on('end', () => resolve({ status: res.statusCode ?? 0, contentType: String(res.headers['content-type']), body: Buffer.concat(chunks) }));
      res.on('error', reject);
    });
    req.on('error', reject);
    req.end();
  });

  test('every instance of two concurrent retrieves (one read slowly) carries exactly its stored pixel data, three rounds', { timeout: 180_000 }, async () => {
    const q = await fetch(`${gw.url}/dicom-web/studies`, { headers: { authorization: `Bearer ${TOKEN}`, accept: 'application/dicom+json' } });
    const rows = await q.json() as { '0020000D': { Value: string[] } }[];
    assert.equal(rows.length, 1);
    const study = rows[0]!['0020000D'].Value[0]!;
    const reusedBefore = slabCounts.reused;
    for (let round = 0; round < 3; round++) {
      const [fast, slow] = await Promise.all([retrieve(`/dicom-web/studies/${study}`, false), retrieve(`/dicom-web/studies/${study}`, true)]);
      for (const [name, r] of [['fast', fast], ['slow', slow]] as const) {
        assert.equal(r.status, 200, `${name} retrieve, round ${round}`);
        const parts = splitMultipart(r.body, r.contentType);
        assert.equal(parts.length, COUNT, `${name} retrieve, round ${round}: instances`);
        const seen = new Map<string, number>();
        for (const p of parts) {
          const d = digest(p.body.subarray(p.body.length - PIXEL_BYTES));
          seen.set(d, (seen.get(d) ?? 0) + 1);
        }
        const wrong = [...seen].filter(([d, n]) => stored.get(d) !== n).length;
        assert.equal(wrong, 0, `${name} retrieve, round ${round}: ${wrong} instance(s) whose pixel data is not what was stored`);
      }
    }
    // The buffers were reused (not merely never given back): six retrieves of 21 MB read most
    // of their bytes into slabs taken from the pool.
    const reused = slabCounts.reused - reusedBefore;
    assert.ok(reused >= 60, `only ${reused} read buffers were reused`);
    assert.ok(!logLines.some((l) => /"level":"error"/.test(l)), 'no error was logged');
  });
});
