/**
 * The four upstream transports (the gateway's own socket client, the default for http://;
 * node:http, the default for https://; undici and http-proxy, loaded only when chosen) answer
 * one interface: a GET with its query and Accept, the body streamed, a 404 as
 * its status, readiness, and an unreachable PACS as UPSTREAM_UNAVAILABLE-class errors.
 */
import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { createServer } from 'node:http';
import type { AddressInfo } from 'node:net';
import { createUndiciUpstream, type Upstream, type UpstreamOptions } from '../../../src/upstream/client.js';
import { createHttpProxyUpstream } from '../../../src/upstream/http-proxy.js';
import { createNodeHttpUpstream } from '../../../src/upstream/node-http.js';
import { createSocketUpstream } from '../../../src/upstream/socket-http.js';
import { GatewayError } from '../../../src/core/errors.js';

const TRANSPORTS: [string, (o: UpstreamOptions) => Upstream][] = [
  ['socket', createSocketUpstream],
  ['node:http', createNodeHttpUpstream],
  ['undici', createUndiciUpstream],
  ['http-proxy', createHttpProxyUpstream],
];

describe('upstream transports', async () => {
  const seen: { url: string; accept: string | undefined }[] = [];
  const server = createServer((req, res) => {
    seen.push({ url: req.url ?? '', accept: req.headers.accept });
    if (req.url?.startsWith('/dicom-web/missing')) { res.writeHead(404).end(); return; }
    res.writeHead(200, { 'content-type': 'application/dicom+json' });
    res.write('[{"0020000D":');
    setTimeout(() => res.end('{"vr":"UI","Value":["1.2.3"]}}]'), 5);
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  const url = `http://127.0.0.1:${(server.address() as AddressInfo).port}/dicom-web`;

  for (const [name, make] of TRANSPORTS) {
    test(`${name}: a GET with its query and Accept, streamed; 404 as a status; ping; close`, async () => {
      const up = make({ url, connectTimeoutMs: 2000, responseTimeoutMs: 5000 });
      try {
        const r = await up.get({ path: '/studies', query: new URLSearchParams([['limit', '1']]), accept: 'application/dicom+json' });
        assert.equal(r.status, 200);
        assert.equal(r.contentType, 'application/dicom+json');
        const parts: Buffer[] = [];
        for await (const c of r.body) parts.push(Buffer.from(c));
        assert.deepEqual(JSON.parse(Buffer.concat(parts).toString()), [{ '0020000D': { vr: 'UI', Value: ['1.2.3'] } }]);
        const last = seen.at(-1)!;
        assert.equal(last.url, '/dicom-web/studies?limit=1');
        assert.equal(last.accept, 'application/dicom+json');
        const missing = await up.get({ path: '/missing', accept: 'application/dicom+json' });
        assert.equal(missing.status, 404);
        await missing.dump();
        assert.equal(await up.ping(), true);
      } finally {
        await up.close();
      }
    });

    test(`${name}: a PACS that cannot be reached is a GatewayError, naming no host or port`, async () => {
      const up = make({ url: 'http://127.0.0.1:9/dicom-web', connectTimeoutMs: 1000, responseTimeoutMs: 2000 });
      try {
        const e = await up.get({ path: '/studies', accept: 'application/dicom+json' }).then(() => undefined, (x: unknown) => x);
        assert.ok(e instanceof GatewayError, String(e));
        assert.match(e.code, /^UPSTREAM_/);
        assert.ok(!/127\.0\.0\.1|:9\b/.test(e.message), e.message);
        assert.equal(await up.ping(), false);
      } finally {
        await up.close();
      }
    });
  }

  test('done', () => { server.close(); });
});
