/**
 * Streamed replies are written in large pieces (issue 14): many small chunks leave in a few
 * system calls, byte-exact and in order; a client that stops reading stops the body (bounded
 * buffering); a client that goes away ends the body's generator; a body that stalls is still
 * sent within a few milliseconds (the gather timer).
 */
import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import http from 'node:http';
import type { AddressInfo, Socket } from 'node:net';
import { writeGathered } from '../../../src/http/write-gathered.js';

/** A server whose one reply is `body`, written by writeGathered; counts the socket's write calls. */
async function serve(body: () => AsyncGenerator<Buffer>): Promise<{ port: number; calls: () => number; done: Promise<unknown>; close: () => Promise<void> }> {
  let calls = 0;
  let settle!: (v: unknown) => void;
  const done = new Promise((r) => { settle = r; });
  const server = http.createServer((req, res) => {
    const s = res.socket as Socket & { _writev?: (...a: unknown[]) => void; _write: (...a: unknown[]) => void };
    const writev = s._writev!.bind(s);
    const write = s._write.bind(s);
    s._writev = (...a: unknown[]) => { calls++; writev(...a); };
    s._write = (...a: unknown[]) => { calls++; write(...a); };
    res.writeHead(200, { 'content-type': 'application/octet-stream' });
    writeGathered(res, body()).then(() => settle('ok'), (e: unknown) => settle(e));
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  return {
    port: (server.address() as AddressInfo).port, calls: () => calls, done,
    close: () => new Promise<void>((r) => { server.closeAllConnections(); server.close(() => r()); }),
  };
}

const chunkOf = (i: number, size: number): Buffer => Buffer.alloc(size, i & 0xff);

describe('writeGathered', () => {
  test('256 small chunks (4 MiB) leave in a few writes, byte-exact and in order', { timeout: 10_000 }, async () => {
    const srv = await serve(async function* () { for (let i = 0; i < 256; i++) yield chunkOf(i, 16 * 1024); });
    try {
      const got = await new Promise<Buffer>((resolve, reject) => {
        http.get({ port: srv.port, path: '/' }, (res) => { const parts: Buffer[] = []; res.on('data', (c: Buffer) => parts.push(c)); res.on('end', () => resolve(Buffer.concat(parts))); }).on('error', reject);
      });
      assert.equal(await srv.done, 'ok');
      assert.equal(got.length, 256 * 16 * 1024);
      for (let i = 0; i < 256; i++) assert.equal(got[i * 16 * 1024], i & 0xff, `chunk ${i} in its place`);
      // 4 MiB in pieces of at least 256 KiB: 16 gathered writes (one per 16 chunks), the status
      // line and the end. One write per chunk would be 256 or more.
      assert.ok(srv.calls() <= 24, `${srv.calls()} socket writes for 256 chunks`);
    } finally {
      await srv.close();
    }
  });

  test('a client that stops reading stops the body; one that goes away ends its generator (its finally runs) and the writer rejects', { timeout: 10_000 }, async () => {
    let pulled = 0;
    let finished = false;
    const srv = await serve(async function* () {
      try {
        for (let i = 0; i < 100_000; i++) { pulled++; yield chunkOf(i, 64 * 1024); }
      } finally {
        finished = true;
      }
    });
    try {
      const req = http.get({ port: srv.port, path: '/' });
      const res = await new Promise<http.IncomingMessage>((r) => req.on('response', r));
      res.pause();
      await new Promise((r) => setTimeout(r, 500));
      // Bounded: the socket buffers (about 1 MiB here, plus what the kernel holds) and stops.
      const atPause = pulled;
      assert.ok(atPause * 64 * 1024 < 64 * 1024 * 1024, `${atPause} chunks pulled while the client did not read`);
      await new Promise((r) => setTimeout(r, 300));
      assert.equal(pulled, atPause, 'nothing more is pulled while the client does not read');
      req.destroy();
      const outcome = await srv.done;
      assert.ok(outcome instanceof Error && (outcome as { code?: string }).code === 'ERR_STREAM_PREMATURE_CLOSE', String(outcome));
      await new Promise((r) => setTimeout(r, 50));
      assert.ok(finished, "the body's generator was closed");
    } finally {
      await srv.close();
    }
  });

  test('a body that stalls after a small chunk still sends it within a few milliseconds', { timeout: 10_000 }, async () => {
    let release!: () => void;
    const stalled = new Promise<void>((r) => { release = r; });
    const srv = await serve(async function* () { yield Buffer.from('first'); await stalled; yield Buffer.from('-last'); });
    try {
      const t0 = performance.now();
      const firstAt = await new Promise<number>((resolve, reject) => {
        http.get({ port: srv.port, path: '/' }, (res) => {
          let first = true;
          res.on('data', () => { if (first) { first = false; resolve(performance.now() - t0); release(); } });
          res.resume();
        }).on('error', reject);
      });
      assert.ok(firstAt < 200, `the first chunk arrived after ${firstAt.toFixed(1)} ms while the body stalled`);
      assert.equal(await srv.done, 'ok');
    } finally {
      await srv.close();
    }
  });
});
