/**
 * Streamed bodies leave in large pieces (what one turn of the event loop brings, together), with
 * back-pressure, and a client that goes away ends the body's generator.
 */
import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { createServer, request, type ServerResponse } from 'node:http';
import type { AddressInfo, Socket } from 'node:net';
import { writeBody } from '../../../src/http/write-body.js';

async function serve(handler: (res: ServerResponse) => Promise<void>): Promise<{ port: number; close(): Promise<void> }> {
  const server = createServer((_req, res) => { void handler(res).catch(() => undefined); });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  return { port: (server.address() as AddressInfo).port, close: () => new Promise<void>((r) => { server.closeAllConnections(); server.close(() => r()); }) };
}

function get(port: number, onData?: (n: number, req: ReturnType<typeof request>) => void): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    const req = request({ host: '127.0.0.1', port, path: '/' }, (res) => {
      const parts: Buffer[] = [];
      let n = 0;
      res.on('data', (c: Buffer) => { parts.push(c); n += c.length; onData?.(n, req); });
      let ended = false;
      res.on('end', () => { ended = true; resolve(Buffer.concat(parts)); });
      res.on('error', reject);
      res.on('close', () => { if (!ended) reject(new Error('the body was cut')); });
    });
    req.on('error', reject);
    req.end();
  });
}

/** Counts the writes that reach the socket (one call each, whatever it holds). */
function countWrites(socket: Socket): { calls: number } {
  const c = { calls: 0 };
  const s = socket as unknown as { _write: (...a: unknown[]) => unknown; _writev: (...a: unknown[]) => unknown };
  const w = s._write.bind(socket), wv = s._writev.bind(socket);
  s._write = (...a: unknown[]) => { c.calls++; return w(...a); };
  s._writev = (...a: unknown[]) => { c.calls++; return wv(...a); };
  return c;
}

describe('writeBody', () => {
  test('chunks that arrive within one turn leave together: far fewer socket writes than chunks, every byte in order', async () => {
    const chunks = Array.from({ length: 400 }, (_, i) => Buffer.alloc(4096, i & 0xff));
    let writes = { calls: 0 };
    const s = await serve(async (res) => {
      writes = countWrites(res.socket!);
      // Eight chunks per turn of the event loop, as several reads from the PACS would bring.
      await writeBody(res, (async function* () {
        for (let i = 0; i < chunks.length; i++) { if (i % 8 === 0) await new Promise((r) => setImmediate(r)); yield chunks[i]!; }
      })());
    });
    try {
      const body = await get(s.port);
      assert.ok(body.equals(Buffer.concat(chunks)), 'every byte, in order');
      assert.ok(writes.calls > 0 && writes.calls <= chunks.length / 4, `${writes.calls} socket writes for ${chunks.length} chunks`);
    } finally {
      await s.close();
    }
  });

  test('back-pressure: a client that does not read holds the body at about 256 KiB unsent', async () => {
    let produced = 0;
    let resolveStalled: () => void = () => undefined;
    const stalled = new Promise<void>((r) => { resolveStalled = r; });
    const s = await serve(async (res) => {
      await writeBody(res, (async function* () {
        for (let i = 0; i < 4000; i++) { produced += 65536; if (i === 3999) resolveStalled(); yield Buffer.alloc(65536); }
      })()).catch(() => undefined);
    });
    try {
      // A client that connects and never reads.
      const req = request({ host: '127.0.0.1', port: s.port, path: '/' }, (res) => res.pause());
      req.end();
      await Promise.race([stalled, new Promise((r) => setTimeout(r, 1500))]);
      assert.ok(produced < 64 * 1024 * 1024, `the body stopped at ${produced} bytes (socket buffers and 256 KiB unsent), not 262 MB`);
      req.destroy();
    } finally {
      await s.close();
    }
  });

  test('a client that goes away ends the body (its generator is returned) and the write rejects', async () => {
    let finished = false;
    let outcome: unknown;
    let settle: () => void = () => undefined;
    const settled = new Promise<void>((r) => { settle = r; });
    const s = await serve(async (res) => {
      try {
        await writeBody(res, (async function* () {
          try {
            for (;;) { await new Promise((r) => setImmediate(r)); yield Buffer.alloc(16384); }
          } finally {
            finished = true;
          }
        })());
        outcome = 'resolved';
      } catch (e) {
        outcome = e;
      }
      settle();
    });
    try {
      await get(s.port, (n, req) => { if (n > 200_000) req.destroy(); }).catch(() => undefined);
      await settled;
      assert.equal(finished, true, 'the generator was returned');
      assert.equal((outcome as { code?: string }).code, 'ERR_STREAM_PREMATURE_CLOSE');
    } finally {
      await s.close();
    }
  });

  test('a body that fails destroys the response: the client sees it cut, not complete', async () => {
    const s = await serve(async (res) => {
      await writeBody(res, (async function* () { yield Buffer.from('part one'); throw new Error('upstream failed'); })()).catch(() => undefined);
    });
    try {
      await assert.rejects(get(s.port));
    } finally {
      await s.close();
    }
  });
});
