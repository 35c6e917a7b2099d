/**
 * A response body written in large pieces, with back-pressure (issue 14: "writing in large
 * pieces"). Used by every streamed reply (src/http/app.ts `send`), in place of
 * pipeline(Readable.from(body), res): one stream layer less per chunk, and what one turn of the
 * event loop brings leaves in one writev. (Measured: Node's own socket buffering already joins
 * the writes of one turn while a write is in flight; the hop's CPU per retrieve moved by under
 * 5 %, within this machine's noise. bench/README.md.)
 */
import type { ServerResponse } from 'node:http';

/** Bytes a response may hold unsent before the body waits for the client to read. */
const BODY_HIGH_WATER = 256 * 1024;

/**
 * Writes a body to the response in large pieces: the socket is corked while chunks arrive and
 * uncorked once per turn of the event loop (setImmediate), so that what one turn brings (several
 * reads from the PACS, a part's header and its slices) leaves in one writev, not one write per
 * chunk. Back-pressure: past BODY_HIGH_WATER unsent bytes, the body waits for 'drain'. A client
 * that goes away ends the body (its generator is returned, which cancels the upstream request);
 * a body that fails destroys the response.
 */
export async function writeBody(res: ServerResponse, body: AsyncGenerator<Buffer>): Promise<void> {
  let closed = res.destroyed;
  let wake: (() => void) | undefined;
  const onClose = (): void => { closed = true; wake?.(); };
  const onDrain = (): void => { wake?.(); };
  res.on('close', onClose);
  res.on('drain', onDrain);
  let corked = false;
  const uncork = (): void => {
    if (!corked) return;
    corked = false;
    if (!res.destroyed) res.uncork();
  };
  try {
    for await (const c of body) {
      if (closed) break;
      if (!corked) { corked = true; res.cork(); setImmediate(uncork); }
      res.write(c);
      if (res.writableLength >= BODY_HIGH_WATER) {
        uncork();
        while (!closed && res.writableLength >= BODY_HIGH_WATER) await new Promise<void>((resolve) => { wake = resolve; });
        wake = undefined;
        if (closed) break;
      }
    }
    uncork();
    if (closed) throw Object.assign(new Error('the client closed the connection'), { code: 'ERR_STREAM_PREMATURE_CLOSE' });
    await new Promise<void>((resolve, reject) => {
      res.once('finish', resolve);
      res.once('close', () => (res.writableFinished ? resolve() : reject(Object.assign(new Error('the client closed the connection'), { code: 'ERR_STREAM_PREMATURE_CLOSE' }))));
      res.end();
    });
  } catch (e) {
    uncork();
    if (!res.destroyed) res.destroy(e as Error);
    throw e;
  } finally {
    res.off('close', onClose);
    res.off('drain', onDrain);
  }
}
