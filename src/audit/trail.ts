/**
 * The audit trail (issue 5): tamper-evident, durable JSON lines in `state.dir`.
 *
 * - **Durable:** each record is written with one synchronous write(2) on an O_APPEND file
 *   before the response it describes completes; a process crash (SIGKILL) loses nothing that
 *   was written. The data is fdatasync'ed at most once a second (an OS crash may lose up to a
 *   second). A failed write marks the trail unhealthy: the gateway then refuses to serve
 *   (fail closed) until a write succeeds again.
 * - **Hash chain:** every line is `{…record, "seq": N, "prev": H(N-1), "hash": H(N)}` where
 *   H(N) = SHA-256 of the line's bytes up to (excluding) `,"hash":…` plus the closing brace,
 *   so verification works on the exact bytes, not on a re-serialization.
 * - **Keyed anchors:** `audit.head` holds the last record's seq and hash with an HMAC
 *   (key derived from the master secret), rewritten in place after every append, so removing
 *   records at the end of the file (truncation) is detected too. At rotation, the old file
 *   ends with a `checkpoint` record carrying an HMAC of its predecessor's seq and hash, and the
 *   chain continues in the new file.
 * - **Rotation:** by size (default 64 MiB) and by UTC day. Rotated files are
 *   `audit-<first seq, 12 digits>.log`; the current file is `audit.log`.
 *
 * Records hold UIDs, codes, counts, and keyed references to patients (`patientRef`, see
 * patientRef()): no name, ID, date or other value of a data set.
 */
import { closeSync, fdatasync, fdatasyncSync, fstatSync, ftruncateSync, openSync, readdirSync, readFileSync, readSync, renameSync, statSync, writeSync, existsSync } from 'node:fs';
import { createHash, createHmac, hkdfSync, timingSafeEqual } from 'node:crypto';
import { join } from 'node:path';
import { GatewayError } from '../core/errors.js';

export const AUDIT_FILE = 'audit.log';
export const HEAD_FILE = 'audit.head';
const HEAD_SIZE = 512;
const ZERO = '0'.repeat(64);
const HASH_SUFFIX = /,"hash":"([0-9a-f]{64})"\}$/;

export interface TrailOptions {
  readonly dir: string;
  /** The master secret; the trail derives its own HMAC key from it. */
  readonly master: Buffer;
  readonly maxBytes?: number;
  readonly rotateDaily?: boolean;
  readonly now?: () => number;
}

/** The HMAC key of checkpoints and the head, and of patient references. */
export function auditKey(master: Buffer): Buffer {
  return Buffer.from(hkdfSync('sha256', master, 'deid-gateway/v1', 'audit', 32));
}

/**
 * A stable, keyed reference to a patient (Issuer + Patient ID): lets `audit query --patient`
 * find a patient's records by original ID without the log holding the ID.
 */
export function patientRef(key: Buffer, patientId: string, issuer = ''): string {
  return `P-${createHmac('sha256', key).update(`patient\0${issuer.trim()}\0${patientId.trim()}`).digest('hex').slice(0, 24)}`;
}

function sha256(s: string): string {
  return createHash('sha256').update(s).digest('hex');
}

function mac(key: Buffer, seq: number, hash: string): string {
  return createHmac('sha256', key).update(`audit-anchor\0${seq}\0${hash}`).digest('hex');
}

/**
 * The head's signature: the last record (seq, hash) and the first record of the retained trail
 * (start), so that removing the oldest files shows. Its own domain ("audit-head"): a checkpoint's
 * signature ("audit-anchor") is never a valid head.
 */
function headMac(key: Buffer, seq: number, hash: string, start: number): string {
  return createHmac('sha256', key).update(`audit-head\0${seq}\0${hash}\0${start}`).digest('hex');
}

interface Head { readonly seq: number; readonly hash: string; readonly start: number }

/** The head file when its signature holds; undefined when absent, unreadable or forged. */
function readHead(key: Buffer, path: string): Head | undefined {
  try {
    const h = JSON.parse(readFileSync(path, 'utf8').trim()) as { seq?: unknown; hash?: unknown; start?: unknown; mac?: unknown };
    if (typeof h.seq !== 'number' || typeof h.hash !== 'string' || typeof h.start !== 'number' || typeof h.mac !== 'string') return undefined;
    const want = headMac(key, h.seq, h.hash, h.start);
    return h.mac.length === want.length && timingSafeEqual(Buffer.from(h.mac), Buffer.from(want)) ? { seq: h.seq, hash: h.hash, start: h.start } : undefined;
  } catch {
    return undefined;
  }
}

/** The first line of a file, reading no more than it needs (records are a few kB; at most 1 MiB). */
function firstLineOf(path: string): string | undefined {
  const fd = openSync(path, 'r');
  try {
    const buf = Buffer.alloc(1 << 20);
    let n = 0;
    for (;;) {
      const r = readSync(fd, buf, n, Math.min(64 * 1024, buf.length - n), n);
      const nl = buf.subarray(n, n + r).indexOf(0x0a);
      if (nl >= 0) return buf.toString('utf8', 0, n + nl);
      n += r;
      if (r === 0 || n >= buf.length) return n ? buf.toString('utf8', 0, n) : undefined;
    }
  } finally {
    closeSync(fd);
  }
}

/** The seq of the first record of the oldest trail file present (undefined: no records). */
function firstSeqPresent(dir: string, currentText?: string): number | undefined {
  for (const f of trailFiles(dir)) {
    if (!(f === AUDIT_FILE && currentText !== undefined) && !statSync(join(dir, f)).isFile()) return undefined; // never read a device or a pipe
    const first = f === AUDIT_FILE && currentText !== undefined ? currentText.split('\n', 1)[0] : firstLineOf(join(dir, f));
    if (!first) continue;
    try {
      const seq = (JSON.parse(first) as { seq?: unknown }).seq;
      if (typeof seq === 'number') return seq;
    } catch { /* damaged: verify names it */ }
    return undefined;
  }
  return undefined;
}

/** The chain's record of a moved start: the oldest files removed (retention) or put back. */
function retentionRecord(time: string, previousStart: number, start: number): Record<string, unknown> {
  return {
    type: 'retention', time, previousStart, start,
    note: previousStart < start ? `records ${previousStart}–${start - 1} are no longer in state.dir` : `the trail now starts at record ${start} (files restored)`,
  };
}

const utcDay = (t: number): string => new Date(t).toISOString().slice(0, 10);

/** Rotated files in chain order, then the current file. */
export function trailFiles(dir: string): string[] {
  const rotated = existsSync(dir) ? readdirSync(dir).filter((n) => /^audit-\d{12}\.log$/.test(n)).sort() : [];
  return [...rotated, ...(existsSync(join(dir, AUDIT_FILE)) ? [AUDIT_FILE] : [])];
}

/** The last well-formed line of a file (for resuming the chain), or undefined. */
function lastLine(path: string): string | undefined {
  if (!statSync(path).isFile()) return undefined; // never read a device or a pipe
  return lastLineOf(readFileSync(path, 'utf8'));
}

function lastLineOf(text: string): string | undefined {
  return text.split('\n').filter(Boolean).at(-1);
}

export class AuditTrail {
  private fd = -1;
  private seq = 0;
  private prev = ZERO;
  private bytes = 0;
  private day: string;
  private firstSeqOfFile = 1;
  private headFd = -1;
  /** The first record of the retained trail, stated (keyed) in the head. */
  private start = 1;
  private dirty = false;
  private problem: string | undefined;
  private readonly key: Buffer;
  private readonly timer: NodeJS.Timeout;
  private readonly maxBytes: number;
  private readonly now: () => number;

  constructor(private readonly opts: TrailOptions) {
    this.key = auditKey(opts.master);
    this.maxBytes = opts.maxBytes ?? 64 * 1024 * 1024;
    this.now = opts.now ?? Date.now;
    this.day = utcDay(this.now());
    this.open();
    this.timer = setInterval(() => this.sync(), 1000);
    this.timer.unref();
  }

  private path(): string {
    return join(this.opts.dir, AUDIT_FILE);
  }

  private open(): void {
    try {
      const dir = this.opts.dir;
      // A torn tail (a crash or a full disk in the middle of a write) is cut back to the last
      // whole record; the repair is recorded in the chain below, so a reviewer sees it.
      // The current file is read once: for its torn tail, its last record and its first seq.
      let torn = 0;
      let current: string | undefined;
      if (existsSync(this.path()) && statSync(this.path()).isFile()) {
        const text = readFileSync(this.path());
        const end = text.lastIndexOf(0x0a) + 1;
        if (end < text.length) {
          torn = text.length - end;
          const fd = openSync(this.path(), 'r+');
          try { ftruncateSync(fd, end); } finally { closeSync(fd); }
        }
        current = text.toString('utf8', 0, end);
      }
      // Resume the chain from the last record of the newest file that has one.
      const files = trailFiles(dir);
      let last: { rec: { seq?: number; type?: string; rotatedTo?: string }; hash: string; file: string } | undefined;
      for (const f of [...files].reverse()) {
        const line = f === AUDIT_FILE ? lastLineOf(current ?? '') : lastLine(join(dir, f));
        if (!line) continue;
        const m = HASH_SUFFIX.exec(line);
        const rec = JSON.parse(line) as { seq?: number; type?: string; rotatedTo?: string };
        if (!m || typeof rec.seq !== 'number') throw Object.assign(new Error('damaged'), { code: 'EDAMAGED' });
        last = { rec, hash: m[1]!, file: f };
        break;
      }
      if (last) { this.seq = last.rec.seq!; this.prev = last.hash; }
      // A rotation interrupted after its checkpoint: finish it (rename, then `continue`).
      let finishRotation: string | undefined;
      if (last?.rec.type === 'checkpoint' && typeof last.rec.rotatedTo === 'string' && /^audit-\d{12}\.log$/.test(last.rec.rotatedTo)) {
        if (last.file === AUDIT_FILE) {
          if (existsSync(join(dir, last.rec.rotatedTo))) throw Object.assign(new Error('exists'), { code: 'EEXIST' });
          renameSync(this.path(), join(dir, last.rec.rotatedTo)); // stopped before the rename
          current = undefined;
        }
        finishRotation = last.rec.rotatedTo; // stopped before the `continue` record
      }
      this.fd = openSync(this.path(), 'a', 0o600);
      const st = fstatSync(this.fd);
      this.bytes = st.size;
      this.day = st.size > 0 ? utcDay(st.mtimeMs) : utcDay(this.now());
      this.firstSeqOfFile = this.seq + 1;
      if (st.size > 0 && current) {
        const first = current.split('\n', 1)[0];
        const s = first ? (JSON.parse(first) as { seq?: number }).seq : undefined;
        if (typeof s === 'number') this.firstSeqOfFile = s;
      }
      // Where the retained trail starts: the head's keyed start, checked against the files present.
      const headPath = join(dir, HEAD_FILE);
      const head = existsSync(headPath) ? readHead(this.key, headPath) : undefined;
      // The head anchors both ends of the chain: without it (removed, altered, another key) the
      // trail cannot be continued as evidence.
      if (last && !head) throw Object.assign(new Error('head'), { code: 'EHEAD' });
      const stated = head?.start;
      const present = firstSeqPresent(dir, current);
      this.start = present ?? this.seq + 1;
      this.headFd = openSync(headPath, existsSync(headPath) ? 'r+' : 'w+', 0o600);
      this.problem = undefined;
      const time = new Date(this.now()).toISOString();
      if (finishRotation) this.write([{ type: 'continue', time, previousFile: finishRotation }]);
      if (torn) this.write([{ type: 'repaired', time, tornBytes: torn, note: 'an incomplete record at the end of audit.log (an interrupted write) was removed' }]);
      // Records removed from the start while the gateway was stopped are recorded in the chain:
      // a reviewer sees when and which; removed while it runs, verify names them (the head's start).
      if (last && stated !== undefined && stated !== this.start) this.write([retentionRecord(time, stated, this.start)]);
    } catch (e) {
      const code = (e as NodeJS.ErrnoException).code;
      this.problem = code === 'EHEAD'
        ? `the audit head in ${this.opts.dir} is missing or its signature does not hold (removed, altered, or another master key); run \`deid-gateway audit verify\`, keep the files as evidence, and move them aside to start a new trail`
        : code === 'EDAMAGED'
        ? `the audit log in ${this.opts.dir} ends with a damaged record; run \`deid-gateway audit verify\`, keep the files as evidence, and move them aside to start a new trail`
        : code === 'EEXIST'
          ? `an interrupted rotation in ${this.opts.dir} would overwrite an existing rotated file; keep both files and move audit.log aside`
          : `the audit log in ${this.opts.dir} cannot be opened (${code ?? 'error'}); check that state.dir is writable and has space`;
    }
  }

  /** True when the last write succeeded (for /readyz and admission). */
  healthy(): boolean {
    return this.problem === undefined;
  }

  status(): { ok: boolean; problem?: string } {
    return this.problem === undefined ? { ok: true } : { ok: false, problem: this.problem };
  }

  /** Tries to become healthy again (an admission calls this before refusing). */
  recover(): boolean {
    if (this.problem === undefined) return true;
    // Reopen: the file may have been replaced (disk freed, file restored).
    for (const fd of [this.fd, this.headFd]) if (fd >= 0) try { closeSync(fd); } catch { /* closed */ }
    this.fd = -1;
    this.headFd = -1;
    this.open();
    if (this.fd < 0) return false;
    try {
      this.append({ type: 'resume', time: new Date(this.now()).toISOString() });
      return true;
    } catch {
      return false;
    }
  }

  /**
   * Appends one record, synchronously; returns its seq. Throws AUDIT_UNAVAILABLE (and marks the
   * trail unhealthy) when it cannot be written.
   */
  append(record: Readonly<Record<string, unknown>>): number {
    return this.appendAll([record]);
  }

  /** Appends records in one write (one request's records); returns the last seq. */
  appendAll(records: readonly Readonly<Record<string, unknown>>[]): number {
    if (this.fd < 0) throw this.unavailable();
    const t = this.now();
    if (this.bytes >= this.maxBytes || ((this.opts.rotateDaily ?? true) && utcDay(t) !== this.day && this.bytes > 0)) this.rotate(t);
    return this.write(records);
  }

  private write(records: readonly Readonly<Record<string, unknown>>[]): number {
    let seq = this.seq;
    let hash = this.prev;
    const lines: string[] = [];
    for (const record of records) {
      seq++;
      const body = JSON.stringify({ ...record, seq, prev: hash });
      hash = sha256(body);
      lines.push(`${body.slice(0, -1)},"hash":"${hash}"}\n`);
    }
    const buf = Buffer.from(lines.join(''), 'utf8');
    try {
      let off = 0;
      while (off < buf.length) off += writeSync(this.fd, buf, off, buf.length - off);
      const head = Buffer.alloc(HEAD_SIZE, 0x20);
      head.write(JSON.stringify({ seq, hash, start: this.start, mac: headMac(this.key, seq, hash, this.start) }), 'utf8');
      head[HEAD_SIZE - 1] = 0x0a;
      writeSync(this.headFd, head, 0, HEAD_SIZE, 0);
    } catch (e) {
      // Cut back anything this write left, so the file never keeps half a record.
      try { ftruncateSync(this.fd, this.bytes); } catch { /* the next open repairs the tail */ }
      this.problem = `the audit log cannot be written (${(e as NodeJS.ErrnoException).code ?? 'error'}); free space or fix permissions in state.dir`;
      throw this.unavailable();
    }
    this.seq = seq;
    this.prev = hash;
    this.bytes += buf.length;
    this.dirty = true;
    this.problem = undefined;
    return seq;
  }

  private unavailable(): GatewayError {
    return new GatewayError('AUDIT_UNAVAILABLE', 'the audit trail cannot be written; nothing is served until it can', { auditReason: 'audit-unavailable', retryAfter: 30 });
  }

  private rotate(t: number): void {
    // The old file ends with a keyed checkpoint of its last record; the chain goes on.
    const rotated = `audit-${String(this.firstSeqOfFile).padStart(12, '0')}.log`;
    if (existsSync(join(this.opts.dir, rotated))) {
      this.problem = `rotating the audit log would overwrite ${rotated}; keep both files and move audit.log aside`;
      throw this.unavailable(); // never overwrite evidence
    }
    this.write([{ type: 'checkpoint', time: new Date(t).toISOString(), next: AUDIT_FILE, rotatedTo: rotated, mac: mac(this.key, this.seq, this.prev) }]);
    try {
      fdatasyncSync(this.fd);
      closeSync(this.fd);
      renameSync(this.path(), join(this.opts.dir, rotated));
      this.fd = openSync(this.path(), 'a', 0o600);
    } catch (e) {
      this.fd = -1;
      this.problem = `the audit log cannot be rotated (${(e as NodeJS.ErrnoException).code ?? 'error'}); check state.dir`;
      throw this.unavailable();
    }
    this.bytes = 0;
    this.day = utcDay(t);
    this.firstSeqOfFile = this.seq + 1;
    this.write([{ type: 'continue', time: new Date(t).toISOString(), previousFile: rotated }]);
    // Old rotated files removed while running (retention) are recorded at the next rotation.
    let present: number | undefined;
    try { present = firstSeqPresent(this.opts.dir); } catch { present = undefined; } // a file removed meanwhile: the next rotation sees it
    if (present !== undefined && present !== this.start) {
      const previousStart = this.start;
      this.start = present;
      this.write([retentionRecord(new Date(t).toISOString(), previousStart, present)]);
    }
  }

  /**
   * Makes every record written so far durable now (fdatasync), for a writer that must know it is
   * before it acts on them (the offline export renames its files into place after this); throws
   * AUDIT_UNAVAILABLE, and marks the trail unhealthy, when it cannot.
   */
  async syncNow(): Promise<void> {
    if (this.fd < 0) throw this.unavailable();
    if (!this.dirty) return;
    // Off the event loop (the thread pool), so that other work goes on meanwhile; a record
    // written during it is synced by the next call.
    this.dirty = false;
    try {
      await new Promise<void>((resolve, reject) => fdatasync(this.fd, (e) => (e ? reject(e) : resolve())));
    } catch (e) {
      this.dirty = true;
      this.problem = `the audit log cannot be synced to disk (${(e as NodeJS.ErrnoException).code ?? 'error'}); check state.dir`;
      throw this.unavailable();
    }
  }

  /** Forces the data to disk (also done once a second when there were writes). */
  sync(): void {
    if (!this.dirty || this.fd < 0) return;
    this.dirty = false;
    try { fdatasyncSync(this.fd); } catch { /* the next write reports the problem */ }
  }

  close(): void {
    clearInterval(this.timer);
    this.sync();
    for (const fd of [this.fd, this.headFd]) if (fd >= 0) try { closeSync(fd); } catch { /* closed */ }
    this.fd = -1;
    this.headFd = -1;
  }
}

// ---------------------------------------------------------------------------------------------
// Verification

export interface VerifyResult {
  readonly ok: boolean;
  readonly records: number;
  readonly files: number;
  /** Something a reviewer should know although the trail verifies. */
  readonly note?: string;
  /** The first problem: file, line (1-based), seq where known, and what is wrong. */
  readonly problem?: { readonly file: string; readonly line: number; readonly seq?: number | undefined; readonly reason: string };
}

/** Checks every file of the trail in chain order, the checkpoints and the head. */
export function verifyTrail(dir: string, master: Buffer): VerifyResult {
  const key = auditKey(master);
  const files = trailFiles(dir);
  let prev = ZERO;
  let expected = 1;
  let records = 0;
  let lastFileLines = 0;
  let beforeLast = ZERO;
  let started = false;
  let firstSeq: number | undefined;
  let lastRetention: { seq: number; start: number; previousStart: number } | undefined;
  let lastSeq = 0;
  const fail = (file: string, line: number, reason: string, seq?: number): VerifyResult => ({ ok: false, records, files: files.length, problem: { file, line, seq, reason } });
  for (const [fi, file] of files.entries()) {
    const lines = readFileSync(join(dir, file), 'utf8').split('\n');
    if (lines.at(-1) === '') lines.pop();
    else if (lines.length) return fail(file, lines.length, 'the last line is incomplete (the file was cut or edited)');
    lastFileLines = lines.length;
    const seqs = lines.map((l) => { try { return (JSON.parse(l) as { seq?: unknown }).seq; } catch { return undefined; } });
    for (let i = 0; i < lines.length; i++) {
      const line = lines[i]!;
      const m = HASH_SUFFIX.exec(line);
      let rec: Record<string, unknown>;
      try { rec = JSON.parse(line) as Record<string, unknown>; } catch { return fail(file, i + 1, 'not a JSON record (altered)'); }
      const seq = typeof rec.seq === 'number' ? rec.seq : undefined;
      if (!m || seq === undefined) return fail(file, i + 1, 'the record has no seq or hash (altered)', seq);
      if (rec.type === 'retention') lastRetention = { seq, start: Number(rec.start), previousStart: Number(rec.previousStart) };
      lastSeq = seq;
      if (!started) {
        // The oldest file may have been removed by retention; its successor starts with `continue`.
        started = true;
        firstSeq = seq;
        if (seq !== 1 && rec.type !== 'continue') return fail(file, i + 1, `the trail starts at record ${seq}, not 1 (records before it were removed)`, seq);
        if (seq !== 1) {
          expected = seq;
          prev = String(rec.prev);
        }
      }
      if (seq !== expected) {
        const later = seqs.indexOf(expected, i + 1);
        if (seq < expected || later >= 0) return fail(file, i + 1, `record ${expected} is out of order (found ${seq} in its place; reordered)`, expected);
        return fail(file, i + 1, `record ${expected}${seq - expected > 1 ? `–${seq - 1}` : ''} removed (the next record found is ${seq})`, expected);
      }
      const body = `${line.slice(0, line.length - m[0].length)}}`;
      if (sha256(body) !== m[1]) return fail(file, i + 1, `record ${seq} altered (its hash does not match its content)`, seq);
      // A record whose own hash is consistent but whose successor does not link to it was
      // rewritten with a recomputed hash: the altered record is the previous one.
      if (rec.prev !== prev) return fail(i > 0 ? file : files[fi - 1] ?? file, i, `record ${seq - 1} altered (its hash was recomputed; record ${seq} no longer links to it)`, seq - 1);
      if (rec.type === 'checkpoint') {
        const want = mac(key, seq - 1, prev);
        if (typeof rec.mac !== 'string' || rec.mac.length !== want.length || !timingSafeEqual(Buffer.from(rec.mac), Buffer.from(want))) {
          return fail(file, i + 1, `checkpoint ${seq} has an invalid key signature (forged, or another master key)`, seq);
        }
        if (i !== lines.length - 1) return fail(file, i + 2, `records after the checkpoint ${seq} in a rotated file (appended later)`, seq + 1);
        if (fi === files.length - 1) return fail(file, i + 1, 'the trail ends with a checkpoint but the next file is missing', seq);
      } else if (fi < files.length - 1 && i === lines.length - 1) {
        return fail(file, i + 1, `rotated file ${file} does not end with a checkpoint (records removed at its end)`, seq);
      }
      beforeLast = prev;
      prev = m[1]!;
      expected = seq + 1;
      records++;
    }
  }
  // The keyed head names the last record written (anything removed at the end shows) and where
  // the retained trail starts (the oldest files removed without the gateway recording it show).
  const headPath = join(dir, HEAD_FILE);
  if (!existsSync(headPath)) return records > 0 ? fail(HEAD_FILE, 0, 'the head file is missing') : { ok: true, records, files: files.length };
  try { JSON.parse(readFileSync(headPath, 'utf8').trim()); } catch { return fail(HEAD_FILE, 1, 'the head file is not readable (altered)'); }
  const head = readHead(key, headPath);
  if (!head) return fail(HEAD_FILE, 1, 'the head file has an invalid key signature (forged, altered, or another master key)');
  // A crash between the record's write and the head's leaves the head one record behind.
  const crashGap = head.seq === expected - 2 && head.hash === beforeLast;
  if (!crashGap && (head.seq !== expected - 1 || head.hash !== prev)) {
    const last = files.at(-1) ?? AUDIT_FILE;
    return fail(last, lastFileLines + 1, head.seq > expected - 1 ? `records ${expected}–${head.seq} removed from the end (truncated)` : `the trail does not end where the head says (record ${head.seq})`, expected);
  }
  // The record the head missed may be the retention record that moved the start.
  const start = crashGap && lastRetention?.seq === lastSeq && lastRetention.previousStart === head.start ? lastRetention.start : head.start;
  const notes: string[] = [];
  if (firstSeq !== undefined && firstSeq > start) {
    return fail(files[0]!, 1, `records ${start}–${firstSeq - 1} removed from the start (the keyed head says the trail starts at record ${start})`, start);
  }
  if (firstSeq !== undefined && firstSeq < start) {
    notes.push(`the trail holds records from ${firstSeq}, before its recorded start (${start}): files put back from an archive, and they chain to the rest`);
  } else if (start > 1) {
    notes.push(`the trail starts at record ${start}${lastRetention ? `; the removal of earlier records was recorded in record ${lastRetention.seq}` : ''} (earlier files: verify them against their archive)`);
  }
  if (crashGap) notes.push(`the last record (${expected - 1}) is not anchored by the head: the gateway stopped between writing it and the head (a crash); it cannot be told from a record appended later`);
  return { ok: true, records, files: files.length, ...(notes.length ? { note: notes.join('; ') } : {}) };
}
