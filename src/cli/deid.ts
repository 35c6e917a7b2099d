/**
 * `deid-gateway deid`: the gateway's engine and pseudonyms, offline. Previews exactly what
 * a client would receive, or exports a batch. Outputs are written to a temporary file and
 * renamed only when complete, so a refused input leaves nothing behind.
 *
 * Each input is admitted as the gateway admits an instance for that client: outside its scope
 * (allow-list, filters, the opt-out list) or withheld by its pixel policy, it is refused with
 * the reason; masked under a region rule, it is written masked. Outside the client's access
 * window nothing is written.
 *
 * An export is data leaving for that client, so it is audited like requests: per input file a
 * `request` record (route `cli-deid`, the operator's user name as the remote; refusals with their
 * reason) and a `study` record for what was written, before the output file appears, in a
 * hash-chained trail of its own, `state.dir/exports/` (the gateway is the one writer of the main
 * trail). `audit verify|query|report` read it with the main trail.
 */
import { randomBytes, randomUUID } from 'node:crypto';
import { stat, unlink } from 'node:fs/promises';
import { close as fsClose, closeSync, createReadStream, fstatSync, createWriteStream, mkdirSync, open as fsOpen, openSync, readFileSync, readSync, readdirSync, renameSync, statSync, unlinkSync, writeFileSync, writev as fsWritev } from 'node:fs';
import { join, relative } from 'node:path';
import { userInfo } from 'node:os';
import { pipeline } from 'node:stream/promises';
import { inflateRawSync } from 'node:zlib';
import { GatewayError, isGatewayError } from '../core/errors.js';
import type { Config } from '../config/schema.js';
import { encodeFileMeta, readHeaderSync, readInstanceSync, textElement } from '../dicom/part10.js';
import { isVR, LONG_LENGTH_VRS } from '../dicom/vr.js';
import { diffHeaders, formatDiff } from '../deid/diff.js';
import { createEngineContext, deidentifyPart10, type InstanceInfo } from '../deid/index.js';
import { loadOrCreateMasterSecret } from '../pseudonym/secret.js';
import { admitInstance } from '../policy/client-scope.js';
import { FaceProvider } from '../pixels/face/provider.js';
import { openFaceStore, openTextStore } from '../pixels/store-sqlite.js';
import { TextProvider } from '../pixels/text/provider.js';
import { TextWorkers } from '../pixels/text/workers.js';
import { nativeInstance } from '../pixels/codec.js';
import type { TextBox } from '../pixels/types.js';
import { encodePng } from '../render/render.js';
import { planeFactsOf } from '../pixels/text/analyze.js';
import { frameRgb } from '../pixels/text/planes.js';
import { Readable } from 'node:stream';
import type { DatasetView } from '../pixels/geometry.js';
import { part10View } from '../pixels/views.js';
import { scopesFromConfig } from '../policy/configured-scope.js';
import { DEFAULT_PIXEL_POLICY, headerPixelFacts, needsFaceDecision, needsTextDecision, type PixelPolicy } from '../policy/pixels.js';
import { checkWindow } from '../policy/scope.js';
import { createAuditSink, noteTextBoxes, type StudyRelease } from '../audit/sink.js';
import { AuditTrail, auditKey } from '../audit/trail.js';
import { GroupCommit } from './group-commit.js';

/** True when a file found in a folder looks like DICOM (DICM prefix, or a .dcm name). */
function looksLikeDicom(path: string): boolean {
  if (/\.dcm$/i.test(path)) return true;
  let fd: number | undefined;
  try {
    fd = openSync(path, 'r');
    const b = Buffer.alloc(132);
    const n = readSync(fd, b, 0, 132, 0);
    if ((n === 132 && b.toString('latin1', 128, 132) === 'DICM') || (n >= 4 && b.toString('latin1', 0, 4) === 'DICM')) return true;
    // A bare data set (no preamble, no File Meta), as some archives keep them: its first element
    // is in group 0008 with a small element number, in explicit or implicit VR Little Endian.
    if (n < 12) return false;
    if (b.readUInt16BE(0) === 0x0008 && b.readUInt16BE(2) <= 0x0018) return isVR(b.toString('latin1', 4, 6)); // explicit VR big endian
    if (b.readUInt16LE(0) !== 0x0008 || b.readUInt16LE(2) > 0x0018) return false;
    return isVR(b.toString('latin1', 4, 6)) || b.readUInt32LE(4) < 1024;
  } catch {
    return false;
  } finally {
    if (fd !== undefined) closeSync(fd);
  }
}


/**
 * A file that is a Part 10 object but for its framing, made whole (real files: issue 16), or
 * undefined when it needs nothing (or cannot be helped, and the engine refuses it):
 *  - "DICM" at byte 0 (the 128-byte preamble left out): the preamble is put back;
 *  - no File Meta Information at all (a bare data set, as some archives store them): a File
 *    Meta is written for it, with the transfer syntax read off its first element (explicit VR
 *    when bytes 4–5 are a VR, in big endian when its group reads 0008 that way, else implicit VR
 *    Little Endian, the PS3.5 default) and the SOP
 *    Class and Instance UIDs of the data set.
 */
function reframe(file: string): Buffer | undefined {
  let head: Buffer;
  try {
    const fd = openSync(file, 'r');
    try { head = Buffer.alloc(132); readSync(fd, head, 0, 132, 0); } finally { closeSync(fd); }
  } catch {
    return undefined;
  }
  return needsReframe(head) ? reframeBytes(readFileSync(file)) : undefined;
}

/** Whether a file's first 132 bytes say it lacks its preamble or its File Meta (reframeBytes may help). */
function needsReframe(head: Buffer): boolean {
  if (head.length < 6) return false;
  if (head.length >= 132 && head.toString('latin1', 128, 132) === 'DICM') return false;
  if (head.toString('latin1', 0, 4) === 'DICM') return true;
  // A bare data set starts with a group 0008 (or 0002) element: in little endian, explicit or
  // implicit VR, or in explicit VR big endian (a retired syntax some archives still hold).
  const group = head.readUInt16LE(0);
  const bigEndian = head.readUInt16BE(0) === 0x0008 && isVR(head.toString('latin1', 4, 6));
  return group === 0x0008 || group === 0x0002 || bigEndian;
}

/** reframe() on a whole file's bytes. */
function reframeBytes(body: Buffer): Buffer | undefined {
  if (!needsReframe(body.subarray(0, 132))) return undefined;
  if (body.toString('latin1', 0, 4) === 'DICM') return Buffer.concat([Buffer.alloc(128), body]);
  const bigEndian = body.readUInt16BE(0) === 0x0008 && isVR(body.toString('latin1', 4, 6));
  const explicit = isVR(body.toString('latin1', 4, 6));
  const tsUid = bigEndian ? '1.2.840.10008.1.2.2' : explicit ? '1.2.840.10008.1.2.1' : '1.2.840.10008.1.2';
  let view: DatasetView;
  try {
    const probe = Buffer.concat([encodeFileMeta([textElement(0x00020010, 'UI', tsUid)]), body]);
    view = part10View(readHeaderSync(probe, (b) => inflateRawSync(b)).elements);
  } catch {
    return undefined;
  }
  const sopClass = view.str(0x00080016), sop = view.str(0x00080018);
  if (!sopClass || !sop) return undefined;
  return Buffer.concat([encodeFileMeta([
    { tag: 0x00020001, vr: 'OB', value: Buffer.from([0, 1]), items: null },
    textElement(0x00020002, 'UI', sopClass), textElement(0x00020003, 'UI', sop), textElement(0x00020010, 'UI', tsUid),
  ]), body]);
}

/** A file's bytes as a whole Part 10 object (reframed when it needs it). */
function partBytes(file: string): Buffer {
  return reframe(file) ?? readFileSync(file);
}


/**
 * Files named on the command line are always processed (and refused if not DICOM);
 * files found in folders are processed when they look like DICOM, else reported as skipped.
 */
function* walk(path: string, named: boolean): Generator<{ file: string; skip: boolean }> {
  const st = statSync(path);
  if (st.isDirectory()) {
    for (const name of readdirSync(path).sort()) yield* walk(join(path, name), false);
  } else if (st.isFile()) {
    yield { file: path, skip: !named && !looksLikeDicom(path) };
  }
}

function safeName(uid: string): string {
  return /^[0-9.]+$/.test(uid) ? uid : 'unknown';
}

/**
 * The header of a file, read from a prefix that grows until the header is whole (64 KiB, then
 * four times more each time, then the whole file): the pixel data is neither read nor kept for
 * every input of a large export. Undefined when it cannot be read.
 */
function headerOf(file: string): ReturnType<typeof readHeaderSync> | undefined {
  let fd: number | undefined;
  try {
    fd = openSync(file, 'r'); // one open for the framing check and the header
    const size = fstatSync(fd).size;
    for (let want = 64 * 1024; ; want *= 4) {
      const buf = Buffer.allocUnsafe(Math.min(size, want));
      const n = readSync(fd, buf, 0, buf.length, 0);
      const head = buf.subarray(0, n);
      // A file without its preamble or File Meta is read as it will be exported (reframe).
      if (want === 64 * 1024 && needsReframe(head.subarray(0, 132))) {
        const framed = reframeBytes(n >= size ? head : readFileSync(file));
        if (framed) {
          try { return readHeaderSync(framed, (b) => inflateRawSync(b)); } catch { return undefined; }
        }
      }
      try {
        const h = readHeaderSync(head, (b) => inflateRawSync(b));
        // A prefix may end between two elements: only a header read up to the pixel data, or
        // the whole file, is whole.
        if (h.reachedPixelData || n >= size) return h;
      } catch (e) {
        if (n >= size) throw e; // the whole file and still unreadable
      }
    }
  } catch {
    return undefined;
  } finally {
    if (fd !== undefined) closeSync(fd);
  }
}

/** Groups the inputs by series and makes the face decision of each series whose modality may show a face. */
async function decideFaces(inputs: readonly string[], pixels: PixelPolicy, faces: FaceProvider): Promise<void> {
  if ((pixels.faces ?? 'deface') === 'allow') return;
  const series = new Map<string, { modality: string; files: Map<string, string>; views: Map<string, DatasetView> }>();
  for (const input of inputs) {
    let files: { file: string; skip: boolean }[];
    try { files = [...walk(input, true)]; } catch { continue; }
    for (const { file, skip } of files) {
      if (skip) continue;
      const head = headerOf(file);
      if (!head) continue; // refused later, with its reason
      const view = part10View(head.elements);
      const modality = view.str(0x00080060)?.toUpperCase();
      const uid = view.str(0x0020000e);
      const sop = view.str(0x00080018);
      if (!uid || !sop || !needsFaceDecision(modality, pixels)) continue;
      const e = series.get(uid) ?? series.set(uid, { modality: modality!, files: new Map(), views: new Map() }).get(uid)!;
      e.files.set(sop, file);
      e.views.set(sop, view);
    }
  }
  for (const [uid, e] of series) {
    await faces.decide(uid, e.modality, [...e.files.keys()], {
      instances: async () => [...e.views].map(([sop, view]) => ({ sop, view })),
      instance: async (sop) => partBytes(e.files.get(sop)!),
    });
  }
}

/** What the admission of one file noted for its output line and record. */
interface FileNote { pixelNote: string; patientOf: string | undefined; detected: readonly TextBox[] | undefined }

/** One input read, de-identified and written to a temporary file (or refused, with the error). */
interface Prepared { file: string; started: number; tmp: string; bytes: number; note: FileNote; info?: InstanceInfo; error?: unknown }

/** Files read, de-identified and written at once by default (their I/O and the engine overlap). */
export const DEFAULT_JOBS = 4;
/** Files whose records are made durable together, at most (group commit). */
const COMMIT_BATCH = 64;
/** The longest a written file waits for its batch to be made durable, ms. */
const COMMIT_MS = 100;
/** Files up to this size are read whole (one read, masks in place, one write); larger ones stream. */
const WHOLE_FILE_MAX = 64 * 1024 * 1024;

/**
 * Reads one input, de-identifies it for the client and writes it to a temporary file in the
 * output folder. A refusal is answered (not thrown), with nothing left behind.
 */
async function prepare(file: string, admission: () => { admit: NonNullable<Parameters<typeof deidentifyPart10>[2]>['admit']; note: FileNote },
  env: { ctx: ReturnType<typeof createEngineContext>; pixels: PixelPolicy; text: TextProvider; out: string; maxHeaderBytes: number }): Promise<Prepared> {
  const started = performance.now();
  const tmp = join(env.out, `.deid-${randomBytes(6).toString('hex')}.part`);
  const { admit, note } = admission();
  let info: InstanceInfo | undefined;
  let pooled: Buffer | undefined;
  const opts = { maxHeaderBytes: env.maxHeaderBytes, admit, onInstance: (i: InstanceInfo) => { info = i; } };
  try {
    const size = statSync(file).size;
    let bytes: number;
    if (size <= WHOLE_FILE_MAX) {
      // Read once: the checks, the text decision and the engine work on these bytes, which are
      // this export's own (masks are written into them). A synchronous read: from the page cache
      // it costs less than a trip through the thread pool. Into a buffer of the pool, given back
      // once the output is written (below).
      const read = readPooled(file);
      pooled = read.pool;
      const raw = read.bytes;
      const framed = reframeBytes(raw) ?? raw;
      let head: ReturnType<typeof readHeaderSync> | undefined;
      try { head = readHeaderSync(framed, (b) => inflateRawSync(b)); } catch { head = undefined; }
      // A media directory (DICOMDIR) lists every patient's name in its records, with byte
      // offsets into itself: it is not an image to de-identify, and it is regenerated from
      // the exported files, not copied.
      if (isDicomdir(head, file)) throw dicomdirError();
      // Detected text is masked in native pixels: a compressed file (RLE, JPEG baseline) is
      // decoded in-process first; one that cannot be is refused by the engine.
      const decoded = await detectText(() => framed, head, env.pixels, env.text);
      const chunks: Buffer[] = [];
      for await (const c of deidentifyPart10((async function* () { yield decoded ?? framed; })(), env.ctx, { ...opts, ownsInput: true })) chunks.push(c);
      bytes = await writeAll(tmp, chunks);
    } else {
      const head = headerOf(file); // read once for the checks below
      if (isDicomdir(head, file)) throw dicomdirError();
      const decoded = await detectText(() => partBytes(file), head, env.pixels, env.text);
      const framed = decoded ? undefined : reframe(file);
      await pipeline(
        decoded ? Readable.from([decoded]) : framed ? Readable.from([framed]) : createReadStream(file),
        (source: AsyncIterable<Buffer>) => deidentifyPart10(source, env.ctx, opts),
        createWriteStream(tmp, { mode: 0o640 }),
      );
      bytes = (await stat(tmp)).size;
    }
    return { file, started, tmp, bytes, note, info };
  } catch (e) {
    try { await unlink(tmp); } catch { /* not created */ }
    return { file, started, tmp, bytes: 0, note, error: e };
  } finally {
    // The output is written, or given up: nothing refers to these bytes any more.
    if (pooled) givePooled(pooled);
  }
}

/** Read buffers given back by finished files, for the next ones. */
const readPool: Buffer[] = [];
/** Buffers the pool keeps (a few more than the files read at once) … */
const READ_POOL_MAX = 8;
/** … each of at most this size: a larger file is read into its own buffer (at most 64 MiB kept). */
const READ_POOL_BUFFER_MAX = 8 * 1024 * 1024;

function givePooled(b: Buffer): void {
  if (readPool.length < READ_POOL_MAX) readPool.push(b);
}

/**
 * A whole file, read into a buffer of the pool (the first one large enough, or a new one
 * rounded up to 1 MiB). Fresh buffers for a 322 MB export cost page faults on every read and
 * a garbage collection every 64 MB of them. `pool` is the buffer to give back once nothing
 * refers to the bytes; undefined when the file grew while it was read (then read on its own).
 * The invariant: nothing that outlives `prepare` keeps a slice of these bytes (the engine's
 * output is written before `prepare` returns; the header, text and admission results are
 * strings, numbers and copies). A slice kept past it would show the next file's bytes; the
 * CLI test "a file after a larger one comes out as it does alone" fails then.
 */
function readPooled(file: string): { bytes: Buffer; pool?: Buffer } {
  const fd = openSync(file, 'r');
  try {
    const size = fstatSync(fd).size;
    if (size >= READ_POOL_BUFFER_MAX) return { bytes: readFileSync(fd) };
    const i = readPool.findIndex((b) => b.length > size);
    const buf = i >= 0 ? readPool.splice(i, 1)[0]! : Buffer.allocUnsafeSlow(Math.ceil((size + 1) / (1 << 20)) * (1 << 20));
    let n = 0;
    for (let r = -1; r !== 0 && n < buf.length; n += r) r = readSync(fd, buf, n, buf.length - n, n);
    // The buffer is longer than the file was: filling it means the file grew meanwhile.
    if (n >= buf.length) { givePooled(buf); return { bytes: readFileSync(file) }; }
    return { bytes: buf.subarray(0, n), pool: buf };
  } finally {
    closeSync(fd);
  }
}

function dicomdirError(): GatewayError {
  return new GatewayError('DICOM_DIRECTORY', 'a DICOMDIR (media storage directory) is not exported: its records list patients and point into the original files; build a new one from the exported files', { auditReason: 'dicomdir' });
}

/**
 * Writes buffers to a new file (mode 0640) with one writev where the system allows, on the
 * thread pool: creating and filling a new file costs the kernel more than the engine's work on
 * it (about 1.5 ms per 0.5 MB file here), and this way it runs on the other core meanwhile.
 * Answers the bytes written.
 */
async function writeAll(path: string, chunks: readonly Buffer[]): Promise<number> {
  const call = <T>(f: (cb: (e: NodeJS.ErrnoException | null, v: T) => void) => void): Promise<T> => new Promise((resolve, reject) => f((e, v) => (e ? reject(e) : resolve(v))));
  const fd = await call<number>((cb) => fsOpen(path, 'w', 0o640, cb));
  let total = 0;
  try {
    let left = chunks.filter((c) => c.length > 0);
    while (left.length) {
      const n0 = await call<number>((cb) => fsWritev(fd, left.slice(0, 1024), cb));
      total += n0;
      // A short write (rare for files): what is left is written next.
      let n = n0;
      while (left.length && n >= left[0]!.length) { n -= left[0]!.length; left = left.slice(1); }
      if (n > 0) left = [left[0]!.subarray(n), ...left.slice(1)];
    }
  } finally {
    await call<void>((cb) => fsClose(fd, (e) => cb(e, undefined)));
  }
  return total;
}

export async function runDeid(cfg: Config, args: { clientId: string; inputs: string[]; out: string; diff: boolean; preview?: string | undefined; jobs?: number | undefined }): Promise<number> {
  const index = cfg.clients.findIndex((c) => c.id === args.clientId);
  const client = cfg.clients[index];
  if (!client) {
    process.stderr.write(`deid-gateway: --client "${args.clientId}" is not configured; configured: ${cfg.clients.map((c) => c.id).join(', ')}\n`);
    return 2;
  }
  const master = loadOrCreateMasterSecret(cfg.state.dir);
  const ctx = createEngineContext({
    clientId: client.id, policyId: client.policyId ?? client.id, masterSecret: master,
    profile: { options: client.plan.options, overrides: client.profile.overrides, ...(client.profile.dateShift ? { dateShift: client.profile.dateShift } : {}), ...(client.profile.freeText ? { freeText: client.profile.freeText } : {}) },
  });
  // The client's scope and pixel policy, built and applied as the gateway does.
  const scope = scopesFromConfig(cfg).scopeOf(index);
  const pixels = client.pixels ?? DEFAULT_PIXEL_POLICY;
  /** Per file: the admission, as the gateway's, and what it noted for the file's output line. */
  const admission = (): { admit: (attr: (tag: number) => string | undefined) => ReturnType<typeof admitInstance>; note: FileNote } => {
    const note: FileNote = { pixelNote: '', patientOf: undefined, detected: undefined };
    return {
      note,
      admit: (attr) => {
        note.patientOf = attr(0x00100020);
        const r = admitInstance(scope, pixels, attr, (s) => faces.decision(s), (s) => text.decision(s));
        note.detected = r?.detected;
        note.pixelNote = r?.detected ? (r.detected.length ? ` (burned-in text masked: ${r.detected.length} region(s))` : ' (no burned-in text found)')
          : r?.mask ? ' (pixels masked)' : r?.risk ? ' (risky pixels allowed by policy)' : '';
        if (r?.face) note.pixelNote += ' (face removed)';
        else if (r?.faceAllowed) note.pixelNote += ' (face allowed by policy)';
        return r;
      },
    };
  };
  let exports: ReturnType<typeof openExportTrail>;
  try {
    exports = openExportTrail(cfg, master);
  } catch (e) {
    process.stderr.write(`deid-gateway: ${(e as Error).message}\n`);
    return 2;
  }
  // Every output is recorded before it appears under --out, and every refusal with its reason:
  // one `request` record per input file (fail closed: a record that cannot be written stops the run).
  const record = (o: { started: number; status: number; outcome: 'ok' | 'denied' | 'failed'; code?: string | undefined; reason?: string | undefined; bytes?: number; study?: StudyRelease; withheldBy?: string; outOfScope?: boolean; text?: readonly TextBox[] | undefined }): void => {
    const boxes: { textRegions?: number; textBoxes?: [number, number, number, number][] } = {};
    if (o.text) noteTextBoxes(boxes, o.text);
    exports.audit.record({
      ...boxes,
      time: new Date().toISOString(), requestId: randomUUID(), client: client.id, method: 'CLI', route: 'cli-deid', status: o.status, outcome: o.outcome,
      code: o.code, reason: o.reason, bytes: o.bytes ?? 0, durationMs: Math.round(performance.now() - o.started), instances: o.study ? 1 : 0,
      withheld: o.withheldBy ? 1 : 0, ...(o.withheldBy ? { withheldBy: { [o.withheldBy]: 1 } } : {}), outOfScope: o.outOfScope ? 1 : 0, results: 0,
      studies: o.study ? [o.study] : [], policyHash: ctx.plan.hash, remote: `cli:${safeUser()}`,
    });
  };
  if (!exports.healthy()) {
    process.stderr.write(`deid-gateway: nothing exported: ${exports.problem() ?? 'the export audit trail cannot be written'}\n`);
    exports.close();
    return 1;
  }
  try {
    checkWindow(client.scope.window);
  } catch (e) {
    const w = e as GatewayError; // checkWindow throws ACCESS_WINDOW_CLOSED only
    process.stderr.write(`refused: every input: ${w.code}: ${w.message}\n`);
    try {
      record({ started: performance.now(), status: 403, outcome: 'denied', code: w.code, reason: w.auditReason });
    } catch (r) {
      process.stderr.write(`deid-gateway: nothing exported: ${(r as Error).message}\n`);
    }
    exports.close();
    return 1;
  }
  mkdirSync(args.out, { recursive: true });
  // Faces: inputs grouped by series; each head series is decided once (stored in state.dir,
  // shared with the gateway) before any of its files is written.
  const faceStore = openFaceStore(cfg.state.dir);
  const faces = new FaceProvider(faceStore);
  // Burned-in text (risky: detect): each risky file is read once, decided, and stored in
  // state.dir/text.sqlite, shared with the gateway.
  const textStore = openTextStore(cfg.state.dir);
  const textWorkers = new TextWorkers();
  const text = new TextProvider(textStore, undefined, textWorkers);
  try {
    await decideFaces(args.inputs, pixels, faces);
  } catch (e) {
    process.stderr.write(`deid-gateway: face decisions could not be made: ${(e as Error).message}\n`);
  }
  let done = 0;
  let refused = 0;
  let skipped = 0;
  try {
    const written = new Map<string, string>(); // output → the input it came from
    // Every input in order: files found in folders, named files, and inputs that cannot be read.
    type Item = { kind: 'unreadable'; input: string } | { kind: 'skip'; file: string } | { kind: 'file'; file: string };
    const items: Item[] = [];
    for (const input of args.inputs) {
      try {
        items.push(...[...walk(input, true)].map(({ file, skip }): Item => (skip ? { kind: 'skip', file } : { kind: 'file', file })));
      } catch {
        items.push({ kind: 'unreadable', input });
      }
    }
    // Files are read, de-identified and written to temporary files `jobs` at a time; they are
    // then taken in input order. Group commit: the records of a batch of written files are made
    // durable (fdatasync) before its files are renamed into place, so that a record is on disk
    // before the file it describes appears, with one fdatasync per batch, not per file.
    const jobs = Math.max(1, args.jobs ?? DEFAULT_JOBS);
    const pending: (Promise<Prepared> | undefined)[] = [];
    const dirs = new Set<string>();
    let next = 0;
    const startAhead = (upTo: number): void => {
      for (; next < items.length && next < upTo; next++) {
        const it = items[next]!;
        if (it.kind !== 'file') continue;
        pending[next] = prepare(it.file, admission, { ctx, pixels, text, out: args.out, maxHeaderBytes: cfg.engine.maxHeaderBytes });
      }
    };
    const commit = new GroupCommit<Prepared & { dest: string }>({
      maxItems: COMMIT_BATCH, maxMs: COMMIT_MS,
      sync: () => exports.sync(),
      drop: (b, e) => {
        try { unlinkSync(b.tmp); } catch { /* gone */ }
        refused++;
        process.stderr.write(`refused: ${b.file}: AUDIT_UNAVAILABLE: the export could not be recorded durably; nothing more is exported (${exports.problem() ?? (e as Error).message})\n`);
      },
      place: (b) => {
        renameSync(b.tmp, b.dest);
        done++;
        process.stdout.write(`${b.file} -> ${relative(process.cwd(), b.dest) || b.dest}${b.note.pixelNote}\n`);
        if (args.diff) {
          const inflate = (x: Buffer): Buffer => inflateRawSync(x);
          const before = readHeaderSync(readFileSync(b.file), inflate);
          const after = readHeaderSync(readFileSync(b.dest), inflate);
          process.stdout.write(`${formatDiff(diffHeaders(before.elements, after.elements, ctx.plan))}\n`);
          if (b.note.detected) process.stdout.write(`${formatRegions(b.note.detected)}\n`);
        }
        if (args.preview && b.note.detected) {
          mkdirSync(args.preview, { recursive: true });
          const png = join(args.preview, `${safeName(b.info!.pseudonymous.sop)}.png`);
          try {
            writeFileSync(png, previewPng(readFileSync(b.dest), b.note.detected), { mode: 0o640 });
            process.stdout.write(`  preview: ${relative(process.cwd(), png) || png}\n`);
          } catch (e) {
            process.stdout.write(`  preview: not written (${(e as Error).message})\n`);
          }
        }
      },
    });
    const flush = async (): Promise<void> => { await commit.flush(); };
    try {
      for (let i = 0; i < items.length && !commit.stopped; i++) {
        startAhead(i + jobs);
        const it = items[i]!;
        if (it.kind !== 'file') {
          await flush(); // lines stay in input order
          if (it.kind === 'skip') {
            skipped++;
            process.stderr.write(`skipped: ${it.file}: not DICOM Part 10 (no DICM prefix)\n`);
          } else {
            process.stderr.write(`refused: ${it.input}: cannot be read\n`);
            refused++;
          }
          continue;
        }
        const r = await pending[i]!;
        pending[i] = undefined;
        const file = r.file;
        if (r.error !== undefined) {
          await flush();
          const e = r.error;
          refused++;
          const outOfScope = isGatewayError(e) && e.auditReason?.startsWith('out-of-scope:') ? e.auditReason.slice('out-of-scope:'.length) : undefined;
          const withheld = isGatewayError(e) && e.code === 'PIXELS_WITHHELD' ? e.auditReason ?? 'pixels-withheld:unknown' : undefined;
          const reason = outOfScope !== undefined ? `outside client ${client.id}'s scope (${outOfScope})`
            : isGatewayError(e) ? `${e.code}: ${e.message}` : `unexpected error (${(e as Error).name})`;
          process.stderr.write(`refused: ${file}: ${reason}\n`);
          // The reason as the gateway audits it: a code and a PHI-free reason, never the message.
          record({ started: r.started, status: outOfScope !== undefined ? 404 : withheld ? 403 : 422, outcome: 'denied', code: isGatewayError(e) ? e.code : 'INTERNAL', reason: isGatewayError(e) ? e.auditReason : undefined, outOfScope: outOfScope !== undefined, ...(withheld ? { withheldBy: withheld } : {}) });
          continue;
        }
        const p = r.info!.pseudonymous;
        const o = r.info!.original;
        const dir = join(args.out, safeName(p.study), safeName(p.series));
        if (!dirs.has(dir)) { mkdirSync(dir, { recursive: true }); dirs.add(dir); }
        // Output names never collide. A second input with the same SOP Instance UID as an earlier
        // one of this run is refused with its reason; inputs without one (no identity) get
        // numbered names. A file left by an earlier run is replaced.
        let dest = join(dir, `${safeName(p.sop)}.dcm`);
        if (written.has(dest) && safeName(p.sop) !== 'unknown') {
          await flush();
          try { unlinkSync(r.tmp); } catch { /* gone */ }
          refused++;
          const first = written.get(dest)!;
          process.stderr.write(`refused: ${file}: DICOM_DUPLICATE: an earlier input (${first}) has the same SOP Instance UID and was exported under it\n`);
          record({ started: r.started, status: 422, outcome: 'denied', code: 'DICOM_DUPLICATE', reason: 'duplicate-sop-instance' });
          continue;
        }
        for (let n = 2; written.has(dest); n++) dest = join(dir, `${safeName(p.sop)}-${n}.dcm`);
        written.set(dest, file);
        try {
          record({ started: r.started, status: 200, outcome: 'ok', bytes: r.bytes, study: { study: o.study, pseudonymous: p.study, patientId: r.note.patientOf, instances: 1 }, text: r.note.detected });
        } catch (e) {
          await flush();
          try { unlinkSync(r.tmp); } catch { /* gone */ }
          refused++;
          process.stderr.write(`refused: ${file}: AUDIT_UNAVAILABLE: the export could not be recorded; nothing more is exported (${exports.problem() ?? (e as Error).message})\n`);
          break;
        }
        // Put in place once its batch's records are durable (full, or its first file waited COMMIT_MS).
        await commit.add({ ...r, dest });
      }
      await flush();
    } finally {
      // Files prepared ahead of a stop are not exported: their temporary files go.
      for (const left of pending) {
        if (!left) continue;
        const r = await left;
        if (r.error === undefined) { try { unlinkSync(r.tmp); } catch { /* gone */ } }
      }
    }
  } finally {
    exports.close();
    faceStore.close();
    textStore.close();
    await textWorkers.close();
  }
  process.stderr.write(`${done} de-identified, ${refused} refused, ${skipped} skipped (client ${client.id}, plan sha256:${ctx.plan.hash.slice(0, 16)}; recorded in ${join(cfg.state.dir, EXPORT_TRAIL)})\n`);
  return refused > 0 ? 1 : 0;
}

/**
 * Under risky: detect, the text decision of a risky file (made once, stored); returns the file's
 * bytes with native pixel data when they had to be decoded to be masked.
 */
async function detectText(load: () => Buffer, head: ReturnType<typeof headerOf>, pixels: PixelPolicy, text: TextProvider): Promise<Buffer | undefined> {
  if (pixels.risky === 'allow' || !head) return undefined; // refused by the engine, with its reason
  const view = part10View(head.elements);
  const metaView = part10View(head.meta);
  const attr = (tag: number): string | undefined => (tag === 0x00080016 ? view.str(tag) ?? metaView.str(0x00020002) : view.str(tag));
  const sop = view.str(0x00080018);
  if (!sop || !needsTextDecision(headerPixelFacts(attr), pixels)) return undefined;
  const bytes = load();
  const v = await text.decide(sop, async () => bytes);
  if (v.kind !== 'mask' || !head.transferSyntax.encapsulated) return undefined;
  try {
    return nativeInstance(bytes, (b) => inflateRawSync(b));
  } catch {
    return undefined; // the engine refuses to mask compressed pixel data, with its reason
  }
}

/** True when the file is a media storage directory (Media Storage SOP Class 1.2.840.10008.1.3.10). */
function isDicomdir(head: ReturnType<typeof headerOf>, file: string): boolean {
  const cls = head ? part10View(head.meta).str(0x00020002) ?? part10View(head.elements).str(0x00080016) : metaClass(file);
  return cls === '1.2.840.10008.1.3.10';
}

/** The Media Storage SOP Class UID of a file whose header cannot be read whole (its File Meta may be). */
function metaClass(file: string): string | undefined {
  try {
    const fd = openSync(file, 'r');
    const b = Buffer.alloc(4096);
    let n: number;
    try { n = readSync(fd, b, 0, b.length, 0); } finally { closeSync(fd); }
    if (n < 144 || b.toString('latin1', 128, 132) !== 'DICM') return undefined;
    // Up to the end of group 0002 (explicit VR little endian, PS3.10 7.1).
    const meta = readHeaderSync(b.subarray(0, metaEnd(b, n)), (x) => inflateRawSync(x));
    return part10View(meta.meta).str(0x00020002);
  } catch {
    return undefined;
  }
}

/** Where group 0002 ends in the first n bytes (its elements' lengths added up). */
function metaEnd(b: Buffer, n: number): number {
  let at = 132;
  while (at + 8 <= n && b.readUInt16LE(at) === 0x0002) {
    const vr = b.toString('latin1', at + 4, at + 6);
    at += isVR(vr) && LONG_LENGTH_VRS.has(vr) ? 12 + b.readUInt32LE(at + 8) : 8 + b.readUInt16LE(at + 6);
  }
  return Math.min(at, n);
}

/** The --diff lines of the text regions masked in the pixel data. */
function formatRegions(boxes: readonly TextBox[]): string {
  if (!boxes.length) return '(7FE0,0010) PixelData  examined  no burned-in text found';
  return [`(7FE0,0010) PixelData  masked  ${boxes.length} text region(s), every frame (x,y width×height):`,
    ...boxes.map((b) => `    ${b.x},${b.y} ${b.width}×${b.height}`)].join('\n');
}

/**
 * A PNG of the first frame as it was written (masked), with each masked region outlined, for a
 * reviewer to check a device once. Written only with --preview.
 */
function previewPng(written: Buffer, boxes: readonly TextBox[]): Buffer {
  const inst = readInstanceSync(written, (b) => inflateRawSync(b));
  if (!inst.pixel) throw new Error('the written file has no native pixel data to preview');
  const f = planeFactsOf(inst.elements, inst.transferSyntax.littleEndian);
  const rgb = frameRgb(inst.pixel, f, 0);
  const dot = (x: number, y: number): void => {
    if (x < 0 || y < 0 || x >= f.columns || y >= f.rows) return;
    const o = (y * f.columns + x) * 3;
    rgb[o] = 255; rgb[o + 1] = 0; rgb[o + 2] = 255;
  };
  for (const b of boxes) {
    for (let x = b.x; x < b.x + b.width; x++) { dot(x, b.y); dot(x, b.y + b.height - 1); }
    for (let y = b.y; y < b.y + b.height; y++) { dot(b.x, y); dot(b.x + b.width - 1, y); }
  }
  return encodePng({ width: f.columns, height: f.rows, channels: 3, data: rgb });
}

/** The export trail's directory below state.dir. */
export const EXPORT_TRAIL = 'exports';

let user: string | undefined;
/** The operator's user name, made safe for a record (read once: it opens the password database). */
const safeUser = (): string => { if (user === undefined) { try { user = userInfo().username.replace(/[^A-Za-z0-9._-]/g, '_').slice(0, 64) || 'unknown'; } catch { user = 'unknown'; } } return user; };

/**
 * Opens state.dir/exports/ for one export run: a lock file (one writer per hash chain), the
 * trail, and a sink over it.
 */
function openExportTrail(cfg: Config, master: Buffer): { audit: ReturnType<typeof createAuditSink>; healthy(): boolean; problem(): string | undefined; sync(): Promise<void>; close(): void } {
  const dir = join(cfg.state.dir, EXPORT_TRAIL);
  mkdirSync(dir, { recursive: true, mode: 0o700 });
  const lock = join(dir, '.lock');
  try {
    writeFileSync(lock, String(process.pid), { flag: 'wx', mode: 0o600 });
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code !== 'EEXIST') throw new Error(`the export audit trail in ${dir} cannot be locked (${(e as NodeJS.ErrnoException).code ?? 'error'})`);
    // Never taken over automatically: two exports that both took a stale lock would both write
    // one hash chain. A lock whose process is gone is removed by hand.
    const pid = Number(readFileSync(lock, 'utf8'));
    let alive = false;
    try { alive = Number.isInteger(pid) && pid > 0 && pid !== process.pid && process.kill(pid, 0); } catch (k) { alive = (k as NodeJS.ErrnoException).code === 'EPERM'; }
    throw new Error(alive ? `another deid export (pid ${pid}) is writing ${dir}; wait for it to finish`
      : `${lock} is left by an export that is no longer running (pid ${pid || 'unknown'}); remove it if no other export runs, then try again`);
  }
  const trail = new AuditTrail({ dir, master, maxBytes: cfg.audit.maxFileBytes, rotateDaily: cfg.audit.rotateDaily });
  return {
    audit: createAuditSink(trail, auditKey(master)),
    healthy: () => trail.healthy(),
    problem: () => trail.status().problem,
    sync: () => trail.syncNow(),
    close: () => { trail.close(); try { unlinkSync(lock); } catch { /* gone */ } },
  };
}
