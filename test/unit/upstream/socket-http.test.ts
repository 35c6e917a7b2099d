/**
 * The gateway's own HTTP/1.1 client (upstream.transport: socket, the default for http://):
 * every framing (Content-Length, chunked split anywhere, until close), keep-alive reuse and its
 * retry when the PACS closed a kept connection, back-pressure on a consumer that stops, and
 * every failure as the GatewayError the other transports give (early close, timeout, a
 * malformed answer, an abort), against raw TCP servers that answer byte by byte as told.
 */
import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import net from 'node:net';
import { createSocketUpstream } from '../../../src/upstream/socket-http.js';
import { GatewayError } from '../../../src/core/errors.js';

/** A raw server: `answer` gets each request's head and the socket; answers how it likes. */
async function rawServer(answer: (head: string, socket: net.Socket, n: number) => void): Promise<{ url: string; connections: () => number; close: () => Promise<void> }> {
  let connections = 0;
  let n = 0;
  const sockets = new Set<net.Socket>();
  const server = net.createServer((s) => {
    connections++;
    sockets.add(s);
    s.on('close', () => sockets.delete(s));
    s.on('error', () => undefined);
    let buf = '';
    s.on('data', (d) => {
      buf += d.toString('latin1');
      for (let at = buf.indexOf('\r\n\r\n'); at >= 0; at = buf.indexOf('\r\n\r\n')) {
        const head = buf.slice(0, at);
        buf = buf.slice(at + 4);
        answer(head, s, n++);
      }
    });
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  const port = (server.address() as net.AddressInfo).port;
  return {
    url: `http://127.0.0.1:${port}/dicom-web`,
    connections: () => connections,
    close: async () => { for (const s of sockets) s.destroy(); await new Promise<void>((r) => server.close(() => r())); },
  };
}

async function readAll(body: AsyncIterable<Buffer>): Promise<Buffer> {
  const parts: Buffer[] = [];
  for await (const c of body) parts.push(Buffer.from(c));
  return Buffer.concat(parts);
}

const payload = Buffer.from(Array.from({ length: 300_000 }, (_, i) => (i * 7) & 0xff));

describe('upstream transport: socket', () => {
  test('Content-Length, chunked (split at every byte boundary kind) and close-delimited bodies arrive byte-exact; the request carries path, Host and Accept', async () => {
    const heads: string[] = [];
    const srv = await rawServer((head, s) => {
      heads.push(head);
      const path = head.split(' ')[1]!;
      if (path.endsWith('/length')) {
        s.write(`HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nContent-Length: ${payload.length}\r\n\r\n`);
        s.write(payload);
      } else if (path.endsWith('/chunked')) {
        // Chunks of odd sizes, with an extension and a trailer, written in pieces that split
        // size lines, CRLFs and data.
        let wire = 'HTTP/1.1 200 OK\r\nContent-Type: x/y\r\nTransfer-Encoding: chunked\r\n\r\n';
        const pieces: Buffer[] = [Buffer.from(wire, 'latin1')];
        for (let at = 0, k = 1; at < payload.length; k++) {
          const n = Math.min(payload.length - at, 1 + ((k * 7919) % 40_000));
          pieces.push(Buffer.from(`${n.toString(16)}${k % 3 ? '' : ';ext=1'}\r\n`, 'latin1'), payload.subarray(at, at + n), Buffer.from('\r\n'));
          at += n;
        }
        pieces.push(Buffer.from('0\r\nX-Trailer: yes\r\n\r\n', 'latin1'));
        const all = Buffer.concat(pieces);
        wire = '';
        let at = 0;
        const step = (): void => {
          if (at >= all.length) return;
          const n = 1 + ((at * 31) % 5000);
          s.write(all.subarray(at, at + n));
          at += n;
          setImmediate(step);
        };
        step();
      } else {
        s.write('HTTP/1.1 200 OK\r\nContent-Type: x/close\r\nConnection: close\r\n\r\n');
        s.end(payload);
      }
    });
    const up = createSocketUpstream({ url: srv.url, connectTimeoutMs: 2000, responseTimeoutMs: 5000 });
    try {
      for (const p of ['/length', '/chunked', '/close', '/chunked', '/length']) {
        const r = await up.get({ path: p, query: new URLSearchParams([['a', 'b c']]), accept: 'application/dicom+json' });
        assert.equal(r.status, 200);
        assert.ok(Buffer.compare(await readAll(r.body), payload) === 0, `${p}: the body is the bytes sent`);
      }
      assert.match(heads[0]!, /^GET \/dicom-web\/length\?a=b\+c HTTP\/1\.1\r\n/);
      assert.match(heads[0]!, /\r\nHost: 127\.0\.0\.1:\d+(\r\n|$)/i);
      assert.match(heads[0]!, /\r\naccept: application\/dicom\+json(\r\n|$)/i);
      assert.match(await (async () => { const r = await up.get({ path: '/length', accept: 'x' }); return r.contentType; })(), /octet-stream/);
    } finally {
      await up.close();
      await srv.close();
    }
  });

  test('a kept connection is reused; one the PACS closed while idle is asked again on a new one', async () => {
    const srv = await rawServer((head, s, n) => {
      s.write('HTTP/1.1 200 OK\r\nContent-Length: 2\r\nKeep-Alive: timeout=5\r\n\r\nok');
      if (n === 2) setImmediate(() => s.destroy()); // closes after its third answer, as a PACS's idle timer would
    });
    const up = createSocketUpstream({ url: srv.url, connectTimeoutMs: 2000, responseTimeoutMs: 5000 });
    try {
      for (let i = 0; i < 3; i++) assert.equal((await readAll((await up.get({ path: '/x', accept: '*/*' })).body)).toString(), 'ok');
      assert.equal(srv.connections(), 1, 'three answers on one connection');
      await new Promise((r) => setTimeout(r, 50));
      assert.equal((await readAll((await up.get({ path: '/x', accept: '*/*' })).body)).toString(), 'ok');
      assert.equal(srv.connections(), 2, 'the closed connection was replaced');
    } finally {
      await up.close();
      await srv.close();
    }
  });

  test('read buffers are reused only once the consumer has recycled past every body byte read into them, never without it, and the bytes stay exact', async () => {
    const size = 4 * 1024 * 1024;
    const big = Buffer.from(Array.from({ length: size }, (_, i) => (i * 31 + (i >> 13)) & 0xff));
    const srv = await rawServer((_head, s) => {
      s.write(`HTTP/1.1 200 OK\r\nContent-Length: ${size}\r\nKeep-Alive: timeout=5\r\n\r\n`);
      s.write(big);
    });
    const up = createSocketUpstream({ url: srv.url, connectTimeoutMs: 2000, responseTimeoutMs: 5000, connections: 1 });
    type Read = { recycle: (n: number) => void; chunks: { ab: ArrayBufferLike; end: number }[] };
    // `recycling`: the consumer says at once that it will give buffers back (recycle(0)), as the
    // retrieve does after its first instance; an exchange holds no buffer for reuse before that.
    const read = async (recycling = true): Promise<Read> => {
      const r = await up.get({ path: '/x', accept: '*/*' });
      const chunks: Read['chunks'] = [];
      const copies: Buffer[] = [];
      let at = 0;
      if (recycling) r.recycle!(0);
      for await (const c of r.body) {
        at += c.length;
        chunks.push({ ab: c.buffer, end: at });
        copies.push(Buffer.from(c));
      }
      assert.ok(Buffer.concat(copies).equals(big), 'the body arrives byte-exact');
      // A buffer is read into once at a time: its reads come in one run.
      const runs = chunks.filter((ch, i) => i === 0 || chunks[i - 1]!.ab !== ch.ab).map((ch) => ch.ab);
      assert.equal(new Set(runs).size, runs.length, 'a buffer was read into again while this body held it');
      assert.equal(typeof r.recycle, 'function');
      return { recycle: (n) => r.recycle!(n), chunks };
    };
    const buffers = (r: Read): Set<ArrayBufferLike> => new Set(r.chunks.map((c) => c.ab));
    // Buffers of `a` read into again by `b`. The buffer of a's last read goes on filling with the
    // next answer on the connection (its free end), which is not a reuse: it is left out.
    const shared = (a: Read, b: Read): ArrayBufferLike[] => {
      const mine = buffers(a);
      mine.delete(a.chunks[a.chunks.length - 1]!.ab);
      return [...buffers(b)].filter((x) => mine.has(x));
    };
    try {
      const a = await read(false);
      const b = await read();
      assert.equal(shared(a, b).length, 0, 'nothing is read into a buffer its consumer has not given back');
      a.recycle(size);
      const a2 = await read();
      assert.equal(shared(a, a2).length, 0, 'an exchange whose consumer had not recycled while it read holds nothing for reuse');
      const half = 2 * 1024 * 1024;
      b.recycle(half);
      const c = await read();
      const reused = shared(b, c);
      assert.ok(reused.length > 0, 'buffers given back are read into again');
      for (const ab of reused) {
        for (const ch of b.chunks.filter((x) => x.ab === ab)) assert.ok(ch.end <= half, `a reused buffer held a byte at ${ch.end - 1}, past the offset given back (${half})`);
      }
      // Given back twice, or past the end: no buffer is handed out to two reads at once.
      c.recycle(size);
      c.recycle(size);
      const d = await read();
      const e = await read();
      assert.equal(shared(d, e).length, 0, 'a buffer given back twice is not read into twice');
    } finally {
      await up.close();
      await srv.close();
    }
  });

  test('an interim answer (1xx) and the final one in the same read: the final answer is read', async () => {
    const srv = await rawServer((_head, s) => {
      s.write('HTTP/1.1 103 Early Hints\r\nLink: </x>; rel=preload\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok');
    });
    const up = createSocketUpstream({ url: srv.url, connectTimeoutMs: 2000, responseTimeoutMs: 2000 });
    try {
      const r = await up.get({ path: '/x', accept: '*/*' });
      assert.equal(r.status, 200);
      assert.equal((await readAll(r.body)).toString(), 'ok');
    } finally {
      await up.close();
      await srv.close();
    }
  });

  test('back-pressure: a consumer that stops reading stops the reads from the PACS (TCP pushes back), and the rest arrives when it reads again', async () => {
    let buffered = 0;
    const big = Buffer.alloc(64 * 1024 * 1024, 3);
    const srv = await rawServer((head, s) => {
      s.write(`HTTP/1.1 200 OK\r\nContent-Length: ${big.length}\r\n\r\n`);
      s.write(big);
      setTimeout(() => { buffered = s.writableLength; }, 400);
    });
    const up = createSocketUpstream({ url: srv.url, connectTimeoutMs: 2000, responseTimeoutMs: 5000 });
    try {
      const r = await up.get({ path: '/big', accept: '*/*' });
      const it = r.body[Symbol.asyncIterator]();
      await it.next(); // one chunk, then nothing for a while
      await new Promise((res) => setTimeout(res, 600));
      assert.ok(buffered > 32 * 1024 * 1024, `the PACS still holds ${buffered} bytes it could not send`);
      let n = 0;
      for (let x = await it.next(); !x.done; x = await it.next()) n += x.value.length;
      assert.ok(n > big.length - 300 * 1024 && n < big.length, `the rest arrived (${n})`);
    } finally {
      await up.close();
      await srv.close();
    }
  });

  test('failures are the GatewayErrors of every transport: an early close, no answer in time, a malformed answer, an abort; none names the PACS', async () => {
    const srv = await rawServer((head, s) => {
      const path = head.split(' ')[1]!;
      if (path.endsWith('/early')) { s.write('HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nshort'); s.destroy(); }
      else if (path.endsWith('/early-chunked')) { s.write('HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nab'); s.end(); }
      else if (path.endsWith('/silent')) { /* never answers */ }
      else if (path.endsWith('/garbage')) s.end('SMTP ready\r\n\r\n');
      else if (path.endsWith('/badchunk')) { s.write('HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n'); }
      else { s.write('HTTP/1.1 200 OK\r\nContent-Length: 1000000\r\n\r\n'); s.write(Buffer.alloc(300_000)); }
    });
    const up = createSocketUpstream({ url: srv.url, connectTimeoutMs: 2000, responseTimeoutMs: 300 });
    const failure = async (p: string, signal?: AbortSignal, onFirst?: () => void): Promise<GatewayError> => {
      const e = await (async () => {
        const r = await up.get({ path: p, accept: '*/*', ...(signal ? { signal } : {}) });
        for await (const _ of r.body) onFirst?.();
      })().then(() => undefined, (x: unknown) => x);
      assert.ok(e instanceof GatewayError, `${p}: ${String(e)}`);
      assert.ok(!/127\.0\.0\.1|:\d{4,5}\b/.test(e.message), e.message);
      return e;
    };
    try {
      assert.equal((await failure('/early')).code, 'UPSTREAM_UNAVAILABLE');
      assert.equal((await failure('/early-chunked')).code, 'UPSTREAM_UNAVAILABLE');
      assert.equal((await failure('/silent')).code, 'UPSTREAM_TIMEOUT');
      assert.equal((await failure('/garbage')).code, 'UPSTREAM_ERROR');
      assert.equal((await failure('/badchunk')).code, 'UPSTREAM_ERROR');
      const ac = new AbortController();
      const aborted = await failure('/slow', ac.signal, () => ac.abort());
      assert.match(aborted.message, /aborted/);
    } finally {
      await up.close();
      await srv.close();
    }
  });

  test('at most `connections` at once: further requests wait for one to be released', async () => {
    let open = 0;
    let most = 0;
    const srv = await rawServer((head, s) => {
      open++;
      most = Math.max(most, open);
      setTimeout(() => { open--; s.write('HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nk'); }, 20);
    });
    const up = createSocketUpstream({ url: srv.url, connectTimeoutMs: 2000, responseTimeoutMs: 5000, connections: 2 });
    try {
      const got = await Promise.all(Array.from({ length: 8 }, async () => (await readAll((await up.get({ path: '/q', accept: '*/*' })).body)).toString()));
      assert.deepEqual(got, Array(8).fill('k'));
      assert.equal(most, 2);
      assert.ok(srv.connections() <= 2, `${srv.connections()} connections`);
    } finally {
      await up.close();
      await srv.close();
    }
  });
});
