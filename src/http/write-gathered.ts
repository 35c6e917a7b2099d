/**
 * Writing a streamed reply to the client in large pieces (issue 14).
 */
import type { ServerResponse } from 'node:http';

/** Bytes a streamed reply may hold in the socket's buffer before it waits for the client. */
const WRITE_BUFFER_BYTES = 1024 * 1024;
/** A streamed reply is written in pieces of at least this many bytes (nginx's proxy buffers: 256 KiB). */
const WRITE_GATHER_BYTES = 256 * 1024;
/** Bytes gathered but not yet written wait at most this long for more (ms). */
const WRITE_GATHER_MS = 1;

/**
 * Calls to make once a given chunk of a reply (and so every chunk before it) has been written
 * to the client's socket: the retrieve gives the PACS's read buffers back this way (recycle).
 * Keyed by the chunk object as the body yields it. At most MAX_HOOKS wait: the oldest is dropped
 * beyond that (a hook that is never called costs only the reuse, never correctness).
 */
export class WriteHooks {
  private readonly due = new Map<Buffer, () => void>();

  after(chunk: Buffer, fn: () => void): void {
    if (this.due.size >= MAX_HOOKS) this.due.delete(this.due.keys().next().value!);
    this.due.set(chunk, fn);
  }

  /** The hook for this chunk, if any (removed). */
  take(chunk: Buffer): (() => void) | undefined {
    if (this.due.size === 0) return undefined;
    const fn = this.due.get(chunk);
    if (fn) this.due.delete(chunk);
    return fn;
  }
}

const MAX_HOOKS = 8;

/**
 * Writes a body's chunks to the response, gathered: chunks are held until WRITE_GATHER_BYTES
 * have come (or WRITE_GATHER_MS has passed, or the body ends), then written with the socket
 * corked, so that they leave in one writev with their chunk framing. On loopback a write costs
 * about as much per call as per 64 KiB moved (it also wakes the reader): one call per 256 KiB
 * instead of one per read from the PACS is most of what a hop spends writing.
 * Back-pressure: once more than WRITE_BUFFER_BYTES wait in the socket's buffer, the body waits
 * for 'drain'. A client that goes away ends the body (the upstream request is released with
 * it); a body that fails destroys the response (the caller reports it).
 */
export async function writeGathered(res: ServerResponse, body: AsyncGenerator<Buffer>, hooks?: WriteHooks): Promise<void> {
  const batch: Buffer[] = [];
  let batchBytes = 0;
  // Hooks of chunks in the batch: called from the callback of the batch's last write, which
  // runs once that write, and so every earlier one, is done (and not when it fails).
  let batchHooks: (() => void)[] | undefined;
  // One timer for the whole reply, re-armed (refresh) when a batch starts and left armed when a
  // batch is written early: a Timeout made and cleared per batch (about 600 for a 158 MB study)
  // cost more CPU than the writes' own bookkeeping. When it fires after the batch it was armed
  // for has gone, it writes the batch begun since (at most 1 ms early), or nothing.
  let timer: NodeJS.Timeout | undefined;
  const flush = (): void => {
    if (!batch.length || res.destroyed) return;
    res.cork();
    const last = batch.length - 1;
    for (let i = 0; i < last; i++) res.write(batch[i]!);
    const hs = batchHooks;
    batchHooks = undefined;
    if (hs) res.write(batch[last]!, (err) => { if (!err) for (const h of hs) h(); });
    else res.write(batch[last]!);
    res.uncork();
    batch.length = 0;
    batchBytes = 0;
  };
  const premature = (): Error => Object.assign(new Error('the client closed the connection'), { code: 'ERR_STREAM_PREMATURE_CLOSE' });
  // Resolves true on `event`, false when the response closes first (the client went away, or
  // the idle timeout). A fresh promise each time, its listeners removed once it settles.
  const until = (event: 'drain' | 'finish'): Promise<boolean> => new Promise((resolve) => {
    const done = (ok: boolean): void => { res.off(event, onEvent); res.off('close', onClose); resolve(ok); };
    const onEvent = (): void => done(true);
    const onClose = (): void => done(false);
    res.on(event, onEvent);
    res.on('close', onClose);
  });
  const onError = (): void => undefined; // a socket error ends in 'close'; it is not thrown here
  res.on('error', onError);
  try {
    // A client that goes away aborts the upstream request (the handler's abort controller), so
    // a next() waiting on the PACS ends with an error then.
    for (let n = await body.next(); !n.done; n = await body.next()) {
      if (res.destroyed) throw premature();
      if (n.value.length === 0) continue;
      const hook = hooks?.take(n.value);
      if (hook) (batchHooks ??= []).push(hook);
      batch.push(n.value);
      batchBytes += n.value.length;
      if (batchBytes < WRITE_GATHER_BYTES) {
        if (batch.length === 1) { if (timer) timer.refresh(); else timer = setTimeout(flush, WRITE_GATHER_MS); }
        continue;
      }
      flush();
      if (res.writableLength >= WRITE_BUFFER_BYTES && !(await until('drain'))) throw premature();
    }
    flush();
    if (timer) { clearTimeout(timer); timer = undefined; }
    if (res.destroyed) throw premature();
    const finished = until('finish');
    res.end();
    if (!(await finished) && !res.writableFinished) throw premature();
  } catch (e) {
    if (timer) clearTimeout(timer);
    // The body's generators are closed (their finally blocks release the upstream request).
    body.return(undefined).catch(() => undefined);
    if (!res.destroyed) res.destroy();
    throw e;
  } finally {
    res.off('error', onError);
  }
}
