/**
 * Streaming multipart/related (RFC 2046 §5.1, RFC 2387) as used by WADO-RS (PS3.18 8.7.1).
 *
 * The reader never holds a whole body or a whole part: part headers are read into one bounded
 * buffer, and part bodies are yielded as zero-copy subarrays of the chunks that arrive. The only
 * body bytes copied are a carry-over shorter than the delimiter, kept when a chunk ends with
 * bytes that could start "\r\n--" + boundary.
 *
 * Error messages name reasons and byte offsets only, never bytes of the body.
 */
import { randomBytes } from 'node:crypto';
import { GatewayError } from '../core/errors.js';

export interface PartHeaders {
  readonly [lowerCaseName: string]: string;
}

export interface Part {
  readonly headers: PartHeaders;
  readonly body: AsyncIterable<Buffer>;
  /**
   * The input offset at which this part's content starts (readMultipart): every input byte
   * before it has been read, and the reader never reads it again nor keeps a slice of it.
   */
  readonly start?: number;
}

export interface ReadMultipartOptions {
  /**
   * Take the boundary from the first non-empty line of the body when it starts with "--"
   * (falling back to the header's boundary otherwise). Some servers send a boundary in the body
   * that differs from the Content-Type header; dicomweb-client reads the body's line too.
   */
  readonly sniffBoundary?: boolean;
  /** Cap on one part's header block, including the blank line that ends it (default 16 KiB). */
  readonly maxHeaderBytes?: number;
}

export const DEFAULT_MAX_PART_HEADER_BYTES = 16 * 1024;

const CR = 0x0d;
const LF = 0x0a;
const DASH = 0x2d;
const SP = 0x20;
const HT = 0x09;
const EMPTY = Buffer.alloc(0);
const CRLF = Buffer.from('\r\n', 'latin1');
const HEADER_END = Buffer.from('\r\n\r\n', 'latin1');
/** RFC 2046 caps a boundary at 70 characters; accept longer ones from lenient servers. */
const MAX_BOUNDARY_LENGTH = 256;
/** Transport padding (spaces/tabs) allowed after a delimiter before its CRLF. */
const MAX_TRANSPORT_PADDING = 1024;
/** How far into the body the boundary sniffer looks for the first line. */
const SNIFF_LIMIT = 4096;

const TOKEN_RE = /^[!#$%&'*+.^_`|~0-9A-Za-z-]+$/;
const BOUNDARY_RE = /^[\x21-\x7e](?:[\x20-\x7e]*[\x21-\x7e])?$/;
const HEADER_VALUE_RE = /^[\t\x20-\x7e\x80-\xff]*$/;

function malformed(reason: string): GatewayError {
  return new GatewayError('DICOM_MALFORMED', reason);
}

function truncated(): GatewayError {
  return new GatewayError('DICOM_TRUNCATED', 'multipart body ends before its closing boundary');
}

function toBuffer(u: Uint8Array): Buffer {
  return Buffer.isBuffer(u) ? u : Buffer.from(u.buffer, u.byteOffset, u.byteLength);
}

function isValidBoundary(b: string): boolean {
  return b.length <= MAX_BOUNDARY_LENGTH && BOUNDARY_RE.test(b);
}

// ---------------------------------------------------------------------------------------------
// Content-Type

const isWs = (c: number): boolean => c === SP || c === HT;
const isTokenChar = (ch: string): boolean => TOKEN_RE.test(ch);

/**
 * Parses a Content-Type header (RFC 9110 §8.3.1): returns the media type (lower-case) and
 * parameters (names lower-cased, values unquoted, case kept). Lenient where servers are: spaces
 * around "=", empty parameters (";;", trailing ";"), and unquoted values with characters outside
 * the token set (e.g. `type=application/dicom`). Throws GatewayError('DICOM_MALFORMED') on a
 * missing type or subtype, a parameter without "=", an unterminated quoted string, a control
 * character, or a repeated parameter name (ambiguous boundaries are refused). The returned
 * `params` object has a null prototype.
 */
export function parseContentType(value: string): { type: string; params: Record<string, string> } {
  const n = value.length;
  let i = 0;
  const fail = (why: string): never => {
    throw malformed(`Content-Type cannot be parsed: ${why} at character ${i}`);
  };
  const skipWs = (): void => {
    while (i < n && isWs(value.charCodeAt(i))) i++;
  };
  const token = (what: string): string => {
    const s = i;
    while (i < n && isTokenChar(value.charAt(i))) i++;
    if (i === s) fail(`expected a ${what}`);
    return value.slice(s, i);
  };

  skipWs();
  const type = token('media type');
  if (value.charAt(i) !== '/') fail("expected '/'");
  i++;
  const subtype = token('media subtype');
  const params: Record<string, string> = Object.create(null) as Record<string, string>;
  skipWs();
  while (i < n) {
    if (value.charAt(i) !== ';') fail("expected ';'");
    i++;
    skipWs();
    if (i >= n || value.charAt(i) === ';') continue;
    const name = token('parameter name').toLowerCase();
    skipWs();
    if (value.charAt(i) !== '=') fail("expected '='");
    i++;
    skipWs();
    let v = '';
    if (value.charAt(i) === '"') {
      i++;
      for (;;) {
        if (i >= n) fail('unterminated quoted string');
        let c = value.charCodeAt(i);
        if (c === 0x22) {
          i++;
          break;
        }
        if (c === 0x5c) {
          i++;
          if (i >= n) fail('unterminated quoted string');
          c = value.charCodeAt(i);
        }
        if ((c < 0x20 && c !== HT) || c === 0x7f) fail('control character in a quoted string');
        v += value.charAt(i);
        i++;
      }
    } else {
      const s = i;
      for (; i < n; i++) {
        const c = value.charCodeAt(i);
        if (c === 0x3b || isWs(c)) break;
        if (c < 0x21 || c === 0x7f || c === 0x22) fail('invalid character in a parameter value');
      }
      if (i === s) fail('empty parameter value');
      v = value.slice(s, i);
    }
    if (Object.prototype.hasOwnProperty.call(params, name)) fail('repeated parameter');
    params[name] = v;
    skipWs();
  }
  return { type: `${type}/${subtype}`.toLowerCase(), params };
}

// ---------------------------------------------------------------------------------------------
// Part headers

const OWS_TRIM_RE = /^[ \t]+|[ \t]+$/g;
const BARE_CR_OR_LF_RE = /\r(?!\n)|(?<!\r)\n/;

/** Parses one header block (lines separated by CRLF, no terminating blank line). */
function parseHeaderBlock(text: string, at: number): PartHeaders {
  const out = Object.create(null) as Record<string, string>;
  if (text.length === 0) return out;
  if (BARE_CR_OR_LF_RE.test(text)) throw malformed(`multipart part headers contain a bare CR or LF (part headers at byte ${at})`);
  let last: string | undefined;
  for (const line of text.split('\r\n')) {
    const first = line.charCodeAt(0);
    if (first === SP || first === HT) {
      // RFC 5322 §2.2.3 unfolding: the CRLF goes, the whitespace stays.
      if (last === undefined) throw malformed(`multipart part headers start with a continuation line (part headers at byte ${at})`);
      out[last] = `${out[last] ?? ''}${line}`.replace(OWS_TRIM_RE, '');
      continue;
    }
    const colon = line.indexOf(':');
    const name = colon > 0 ? line.slice(0, colon).toLowerCase() : '';
    if (!TOKEN_RE.test(name)) throw malformed(`multipart part header line without a valid name (part headers at byte ${at})`);
    const v = line.slice(colon + 1).replace(OWS_TRIM_RE, '');
    const prev = out[name];
    out[name] = prev === undefined ? v : `${prev}, ${v}`;
    last = name;
  }
  return out;
}

// ---------------------------------------------------------------------------------------------
// Reader

/** Finds the longest proper prefix of `d` that ends `buf` and starts at or after `from`. */
function partialSuffix(buf: Buffer, from: number, d: Buffer): number {
  const len = buf.length;
  let p = buf.indexOf(CR, Math.max(from, len - (d.length - 1)));
  while (p !== -1) {
    if (buf.compare(d, 0, len - p, p, len) === 0) return len - p;
    p = buf.indexOf(CR, p + 1);
  }
  return 0;
}

interface PartState {
  stale: boolean;
  skipped: boolean;
}

class MultipartReader {
  private readonly it: AsyncIterator<Uint8Array>;
  private readonly hbuf: Buffer;
  private readonly maxHeaderBytes: number;
  /** Current chunk, read position in it, and the stream offset of its first byte. */
  private cur: Buffer = EMPTY;
  private pos = 0;
  private base = 0;
  private eof = false;
  /** "\r\n--" + boundary. */
  private delim: Buffer = EMPTY;
  /** Carry-over: a proper prefix of `delim` that ended the previous chunk. */
  private tail: Buffer = EMPTY;
  /** True between finding a delimiter and reading what follows it. */
  private atDelimiter = false;
  private busy = false;
  private failure: unknown = undefined;
  done = false;

  constructor(body: AsyncIterable<Uint8Array>, maxHeaderBytes: number) {
    this.it = body[Symbol.asyncIterator]();
    this.maxHeaderBytes = maxHeaderBytes;
    this.hbuf = Buffer.allocUnsafe(maxHeaderBytes + 2);
  }

  /** Runs one read operation; refuses overlapping ones and makes the first failure sticky. */
  async run<T>(op: () => Promise<T>): Promise<T> {
    if (this.busy) throw new GatewayError('INTERNAL', 'multipart reader used concurrently (a part body and the part iterator were read at the same time)');
    if (this.failure !== undefined) throw this.failure;
    this.busy = true;
    try {
      return await op();
    } catch (e) {
      this.failure = e;
      throw e;
    } finally {
      this.busy = false;
    }
  }

  private async pull(): Promise<boolean> {
    while (!this.eof) {
      const r = await this.it.next();
      if (r.done === true) {
        this.eof = true;
        break;
      }
      const c = toBuffer(r.value);
      if (c.length === 0) continue;
      this.base += this.cur.length;
      this.cur = c;
      this.pos = 0;
      return true;
    }
    this.base += this.cur.length;
    this.cur = EMPTY;
    this.pos = 0;
    return false;
  }

  at(): number {
    return this.base + this.pos;
  }

  async init(boundary: string | undefined, sniff: boolean): Promise<void> {
    let b = boundary;
    if (sniff) {
      const s = await this.sniff();
      if (s !== undefined && (boundary === undefined || s !== `${boundary}--`)) b = s;
    }
    if (b === undefined) throw malformed('multipart body without a boundary');
    if (!isValidBoundary(b)) throw malformed('multipart boundary is empty, too long or has invalid characters');
    this.delim = Buffer.from(`\r\n--${b}`, 'latin1');
    // A virtual CRLF before the body, so that a delimiter at byte 0 is found like any other.
    this.tail = Buffer.from(CRLF);
  }

  /** Reads the first non-empty line; returns its rest if it is "--something", and pushes every byte back. */
  private async sniff(): Promise<string | undefined> {
    const chunks: Buffer[] = [];
    let total = 0;
    let found: string | undefined;
    while (total < SNIFF_LIMIT && (await this.pull())) {
      chunks.push(this.cur);
      total += this.cur.length;
      const all = chunks.length === 1 ? this.cur : Buffer.concat(chunks, total);
      let s = 0;
      while (all[s] === CR && all[s + 1] === LF) s += 2;
      const e = all.indexOf(CRLF, s);
      if (e >= 0) {
        if (all[s] === DASH && all[s + 1] === DASH) {
          const candidate = all.toString('latin1', s + 2, e).replace(/[ \t]+$/, '');
          if (isValidBoundary(candidate)) found = candidate;
        }
        break;
      }
    }
    // Push the bytes back: reading starts again at stream offset 0.
    this.cur = chunks.length === 1 ? (chunks[0] ?? EMPTY) : Buffer.concat(chunks, total);
    this.pos = 0;
    this.base = 0;
    return found;
  }

  /**
   * The next run of bytes before the next delimiter, or null once the delimiter is reached.
   * Bytes come as subarrays of the input chunks, except the short carry-over.
   */
  async nextContent(): Promise<Buffer | null> {
    if (this.atDelimiter) return null;
    const d = this.delim;
    const dl = d.length;
    for (;;) {
      if (this.pos >= this.cur.length && !(await this.pull())) throw truncated();
      const cur = this.cur;
      const tail = this.tail;
      if (tail.length > 0) {
        // Does a delimiter start inside the carry-over? Look at it plus at most dl-1 new bytes.
        const take = Math.min(cur.length - this.pos, dl - 1);
        const join = Buffer.concat([tail, cur.subarray(this.pos, this.pos + take)], tail.length + take);
        const i = join.indexOf(d);
        if (i >= 0) {
          this.tail = EMPTY;
          this.pos += i + dl - tail.length;
          this.atDelimiter = true;
          return i > 0 ? join.subarray(0, i) : null;
        }
        if (take === dl - 1) {
          // No delimiter starts in the carry-over: it is content.
          this.tail = EMPTY;
          return tail;
        }
        // The chunk was too short to decide: carry the new suffix over.
        const k = partialSuffix(join, 0, d);
        this.tail = join.subarray(join.length - k);
        this.pos += take;
        if (join.length > k) return join.subarray(0, join.length - k);
        continue;
      }
      const s = this.pos;
      const i = cur.indexOf(d, s);
      if (i >= 0) {
        this.pos = i + dl;
        this.atDelimiter = true;
        return i > s ? cur.subarray(s, i) : null;
      }
      const k = partialSuffix(cur, s, d);
      const e = cur.length - k;
      if (k > 0) this.tail = Buffer.from(cur.subarray(e));
      this.pos = cur.length;
      if (e > s) return cur.subarray(s, e);
    }
  }

  private async byte(): Promise<number> {
    if (this.pos >= this.cur.length && !(await this.pull())) throw truncated();
    return this.cur[this.pos++] as number;
  }

  /** After a delimiter: true for the close delimiter ("--"), false for transport padding + CRLF. */
  async afterDelimiter(): Promise<boolean> {
    this.atDelimiter = false;
    let b = await this.byte();
    if (b === DASH) {
      if ((await this.byte()) !== DASH) throw malformed(`multipart boundary delimiter followed by unexpected bytes at byte ${this.at() - 1}`);
      return true;
    }
    for (let pad = 0; b === SP || b === HT; pad++) {
      if (pad >= MAX_TRANSPORT_PADDING) throw malformed(`multipart boundary delimiter followed by too much padding at byte ${this.at()}`);
      b = await this.byte();
    }
    if (b !== CR || (await this.byte()) !== LF) throw malformed(`multipart boundary delimiter followed by unexpected bytes at byte ${this.at() - 1}`);
    return false;
  }

  /** Reads one part's header block (bounded) and parses it. */
  async readHeaders(): Promise<PartHeaders> {
    const h = this.hbuf;
    const at = this.at();
    // Start with the delimiter line's CRLF, so an empty header block is just "\r\n\r\n".
    h[0] = CR;
    h[1] = LF;
    let len = 2;
    for (;;) {
      if (len === h.length) throw malformed(`multipart part headers exceed ${this.maxHeaderBytes} bytes (part headers at byte ${at})`);
      if (this.pos >= this.cur.length && !(await this.pull())) throw truncated();
      const n = Math.min(this.cur.length - this.pos, h.length - len);
      this.cur.copy(h, len, this.pos, this.pos + n);
      const from = Math.max(0, len - 3);
      len += n;
      const i = h.subarray(0, len).indexOf(HEADER_END, from);
      if (i >= 0) {
        this.pos += i + 4 - (len - n);
        return parseHeaderBlock(i > 2 ? h.toString('latin1', 2, i) : '', at);
      }
      this.pos += n;
    }
  }

  async drainEpilogue(): Promise<void> {
    this.pos = this.cur.length;
    while (await this.pull()) this.pos = this.cur.length;
  }

  async *partBody(state: PartState): AsyncGenerator<Buffer> {
    for (;;) {
      if (state.stale) {
        if (state.skipped) throw new GatewayError('INTERNAL', 'multipart part body read after the next part was pulled; its unread rest was discarded');
        return;
      }
      const c = await this.run(() => this.nextContent());
      if (c === null) return;
      yield c;
    }
  }

  async close(): Promise<void> {
    if (!this.eof) {
      this.eof = true;
      await this.it.return?.();
    }
  }
}

/**
 * Reads parts from a multipart body (RFC 2046 §5.1). Yields each part with its headers (names
 * lower-cased, folded lines unfolded, repeated names joined with ", "; null-prototype object) and
 * a body iterator.
 *
 * - The caller consumes a part's body before pulling the next part; pulling the next part drains
 *   the unread rest of the previous one, and reading that old body afterwards throws
 *   GatewayError('INTERNAL'). Reading a body and the part iterator at the same time throws
 *   GatewayError('INTERNAL') too.
 * - Memory is bounded: part headers are capped (`maxHeaderBytes`, default 16 KiB, including the
 *   blank line), and body bytes are yielded as they arrive as subarrays of the input chunks (no
 *   empty chunks). The input must not reuse a chunk's memory after yielding it.
 * - The delimiter "\r\n--" + boundary may span chunks; it is found with a carry-over shorter
 *   than itself. A delimiter must be followed by "--" (close) or by optional spaces/tabs and
 *   CRLF; anything else is GatewayError('DICOM_MALFORMED') (RFC 2046 forbids the delimiter inside
 *   a part, so a sender's boundary that occurs in its data is refused, not guessed around).
 * - The preamble and the epilogue are ignored (the epilogue is read to the end and discarded).
 * - A body that ends before the close delimiter: GatewayError('DICOM_TRUNCATED') from whichever
 *   iterator is being read. Errors are sticky: every later read rethrows the first one.
 * - Leaving the part loop early (break/return/throw) closes the input iterator.
 */
export async function* readMultipart(
  body: AsyncIterable<Uint8Array>,
  boundary: string | undefined,
  opts: ReadMultipartOptions = {},
): AsyncGenerator<Part> {
  const maxHeaderBytes = opts.maxHeaderBytes ?? DEFAULT_MAX_PART_HEADER_BYTES;
  if (!Number.isSafeInteger(maxHeaderBytes) || maxHeaderBytes < 2) throw new GatewayError('INTERNAL', 'readMultipart: maxHeaderBytes must be an integer >= 2');
  const r = new MultipartReader(body, maxHeaderBytes);
  try {
    await r.run(() => r.init(boundary, opts.sniffBoundary === true));
    // The preamble: everything before the first delimiter.
    while ((await r.run(() => r.nextContent())) !== null);
    for (;;) {
      if (await r.run(() => r.afterDelimiter())) {
        await r.run(() => r.drainEpilogue());
        return;
      }
      const headers = await r.run(() => r.readHeaders());
      const state: PartState = { stale: false, skipped: false };
      yield { headers, body: r.partBody(state), start: r.at() };
      state.stale = true;
      while ((await r.run(() => r.nextContent())) !== null) state.skipped = true;
    }
  } finally {
    await r.close();
  }
}

// ---------------------------------------------------------------------------------------------
// Writer

/** A fresh random boundary (128 bits from the CSPRNG, hex): a token, so it needs no quotes. */
export function newBoundary(): string {
  return randomBytes(16).toString('hex');
}

/**
 * Writes parts as a multipart body: "--b\r\nName: value\r\n\r\n" + body, each later part
 * preceded by "\r\n", and "\r\n--b--\r\n" at the end ("--b--\r\n" with no parts). Streams each
 * part body chunk by chunk as it comes (empty chunks are skipped). Header names must be tokens
 * and values latin1 without CR/LF, else GatewayError('INTERNAL'). The caller picks a boundary that
 * does not occur in the bodies (newBoundary(): 128 random bits).
 */
export async function* writeMultipart(
  parts: AsyncIterable<{ headers: Record<string, string>; body: AsyncIterable<Buffer> }>,
  boundary: string,
): AsyncGenerator<Buffer> {
  if (!isValidBoundary(boundary)) throw new GatewayError('INTERNAL', 'writeMultipart: invalid boundary');
  const dash = `--${boundary}`;
  let first = true;
  for await (const part of parts) {
    let head = first ? `${dash}\r\n` : `\r\n${dash}\r\n`;
    for (const [name, value] of Object.entries(part.headers)) {
      if (!TOKEN_RE.test(name)) throw new GatewayError('INTERNAL', 'writeMultipart: a header name is not a token');
      if (!HEADER_VALUE_RE.test(value)) throw new GatewayError('INTERNAL', `writeMultipart: the value of header ${name} has a control or non-latin1 character`);
      head += `${name}: ${value}\r\n`;
    }
    yield Buffer.from(`${head}\r\n`, 'latin1');
    first = false;
    for await (const chunk of part.body) if (chunk.length > 0) yield chunk;
  }
  yield Buffer.from(first ? `${dash}--\r\n` : `\r\n${dash}--\r\n`, 'latin1');
}
