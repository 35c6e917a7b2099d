/**
 * Streaming split of a top-level JSON array (RFC 8259) into its elements' raw JSON text, for
 * QIDO-RS and WADO-RS metadata responses (PS3.18 F.2: an array of DICOM JSON objects).
 *
 * The scanner works on bytes: every structural character of JSON is ASCII and no byte of a
 * multi-byte UTF-8 sequence is below 0x80, so strings, escapes and nesting are tracked without
 * decoding. Each element's bytes are decoded once, as a whole, when the element ends (so a
 * character split across chunks decodes correctly); bytes that are not UTF-8 are refused.
 * Elements are not validated beyond their structure; the consumer parses each one.
 *
 * Error messages name reasons, element indexes and byte offsets only, never body bytes.
 */
import { TextDecoder } from 'node:util';
import { GatewayError } from '../core/errors.js';

export interface SplitJsonArrayOptions {
  /** Cap on one element's bytes (default 64 MiB). */
  readonly maxElementBytes?: number;
  /** Refuse elements that are not objects (default true: every DICOM JSON element is one). */
  readonly objectsOnly?: boolean;
}

export const DEFAULT_MAX_ELEMENT_BYTES = 64 * 1024 * 1024;
/** Cap on nesting depth, counting the top-level array as 1. */
export const MAX_JSON_DEPTH = 100;

const QUOTE = 0x22;
const BACKSLASH = 0x5c;
const OPEN_BRACE = 0x7b;
const OPEN_BRACKET = 0x5b;
const CLOSE_BRACE = 0x7d;
const CLOSE_BRACKET = 0x5d;
const COMMA = 0x2c;
const BOM = [0xef, 0xbb, 0xbf] as const;

const isWs = (b: number): boolean => b === 0x20 || b === 0x0a || b === 0x0d || b === 0x09;
/** A byte that ends a number or literal. */
const endsScalar = (b: number): boolean =>
  isWs(b) || b === COMMA || b === CLOSE_BRACKET || b === CLOSE_BRACE || b === OPEN_BRACKET || b === OPEN_BRACE || b === QUOTE || b === 0x3a;
const SCALAR_RE = /^(?:-?(?:0|[1-9]\d*)(?:\.\d+)?(?:[eE][+-]?\d+)?|true|false|null)$/;

function malformed(reason: string, at: number): GatewayError {
  return new GatewayError('DICOM_JSON_MALFORMED', `DICOM JSON array: ${reason} at byte ${at}`);
}

function toBuffer(u: Uint8Array): Buffer {
  return Buffer.isBuffer(u) ? u : Buffer.from(u.buffer, u.byteOffset, u.byteLength);
}

const enum State {
  BeforeArray,
  /** After "[": an element or "]". */
  First,
  /** After ",": an element. */
  Next,
  /** Inside an object, array or string element. */
  InElement,
  /** Inside a number or literal element (objectsOnly: false). */
  InScalar,
  AfterElement,
  Done,
}

const EMPTY = Buffer.alloc(0);

/**
 * The synchronous state machine behind splitJsonArray: feed() a chunk, then call next() until
 * it returns null (the chunk is used up), and end() after the last chunk. Kept out of the async
 * generator so the hot loops are plain, optimizable methods.
 */
class Splitter {
  private readonly maxElementBytes: number;
  private readonly objectsOnly: boolean;
  private readonly decoder = new TextDecoder('utf-8', { fatal: true, ignoreBOM: true });
  private state = State.BeforeArray;
  /** The current chunk, the read position in it, and the stream offset of its first byte. */
  private c: Buffer = EMPTY;
  private p = 0;
  private base = 0;
  /** BOM bytes matched at the very start. */
  private bom = 0;
  /** Index of the current (or next) element, and the stream offset where it starts. */
  private index = 0;
  private elementAt = 0;
  /** Earlier chunks' bytes of the current element (views, not copies), and their total. */
  private pieces: Buffer[] = [];
  private pieceBytes = 0;
  /** The current element's first byte in the current chunk. */
  private start = 0;
  /** Inside the element: open brackets/braces (the top-level array is not on this stack). */
  private readonly stack = new Uint8Array(MAX_JSON_DEPTH);
  private depth = 0;
  private inString = false;
  /** The previous chunk ended on a backslash inside a string. */
  private escaped = false;

  constructor(maxElementBytes: number, objectsOnly: boolean) {
    this.maxElementBytes = maxElementBytes;
    this.objectsOnly = objectsOnly;
  }

  feed(c: Buffer): void {
    this.base += this.c.length;
    this.c = c;
    this.p = 0;
  }

  private fail(reason: string, at = this.base + this.p): GatewayError {
    return malformed(reason, at);
  }

  private tooLarge(): GatewayError {
    return this.fail(`element ${this.index} exceeds ${this.maxElementBytes} bytes`, this.elementAt);
  }

  /** From p inside a string: the index of its closing quote, or -1 (and whether a backslash ended the chunk). */
  private stringEnd(c: Buffer, p: number): number {
    const len = c.length;
    for (; p < len; p++) {
      const b = c[p] as number;
      if (b === QUOTE) return p;
      if (b === BACKSLASH) p++;
    }
    this.escaped = p > len;
    return -1;
  }

  /** Scans the element from p: the index just past its end, or -1 when the chunk ends inside it. */
  private scan(c: Buffer, p: number): number {
    const len = c.length;
    const stack = this.stack;
    const maxDepth = MAX_JSON_DEPTH - 1;
    let depth = this.depth;
    if (this.inString) {
      if (this.escaped) {
        this.escaped = false;
        p++;
      }
      const q = this.stringEnd(c, p);
      if (q < 0) return -1;
      this.inString = false;
      p = q + 1;
      if (depth === 0) return p; // a string element
    }
    for (; p < len; p++) {
      const b = c[p] as number;
      if (b === QUOTE) {
        const q = this.stringEnd(c, p + 1);
        if (q < 0) {
          this.inString = true;
          this.depth = depth;
          return -1;
        }
        p = q;
      } else if (b === OPEN_BRACE || b === OPEN_BRACKET) {
        if (depth >= maxDepth) throw this.fail(`element ${this.index} nests deeper than ${MAX_JSON_DEPTH} levels`, this.base + p);
        stack[depth++] = b;
      } else if (b === CLOSE_BRACE || b === CLOSE_BRACKET) {
        // '{'+2 is '}' and '['+2 is ']'.
        if (depth === 0 || stack[depth - 1] !== b - 2) throw this.fail(`element ${this.index} has a mismatched closing bracket`, this.base + p);
        if (--depth === 0) {
          this.depth = 0;
          return p + 1;
        }
      }
    }
    this.depth = depth;
    return -1;
  }

  /** The element's text, ending at `end` in the current chunk. */
  private finish(end: number): string {
    const c = this.c;
    const total = this.pieceBytes + end - this.start;
    if (total > this.maxElementBytes) throw this.tooLarge();
    const bytes = this.pieces.length === 0 ? c.subarray(this.start, end) : Buffer.concat([...this.pieces, c.subarray(0, end)], total);
    this.pieces = [];
    this.pieceBytes = 0;
    this.p = end;
    this.state = State.AfterElement;
    const index = this.index++;
    try {
      return this.decoder.decode(bytes);
    } catch {
      throw this.fail(`element ${index} is not valid UTF-8`, this.elementAt);
    }
  }

  /** The next element of the current chunk, or null once the chunk is used up. */
  next(): string | null {
    const c = this.c;
    const len = c.length;
    while (this.p < len) {
      const p = this.p;
      switch (this.state) {
        case State.InElement: {
          const end = this.scan(c, p);
          if (end >= 0) return this.finish(end);
          this.p = len;
          break;
        }
        case State.InScalar: {
          let e = p;
          while (e < len && !endsScalar(c[e] as number)) e++;
          if (e === len) {
            this.p = len;
            break;
          }
          const at = this.index;
          const text = this.finish(e);
          if (!SCALAR_RE.test(text)) throw this.fail(`element ${at} is not a valid JSON value`, this.elementAt);
          return text;
        }
        case State.BeforeArray: {
          const b = c[p] as number;
          const bom = this.bom;
          if (this.base + p === bom && bom < 3 && b === BOM[bom]) this.bom++;
          else if (bom !== 0 && bom !== 3) throw this.fail('the top level is not an array');
          else if (b === OPEN_BRACKET) this.state = State.First;
          else if (!isWs(b)) throw this.fail('the top level is not an array');
          this.p++;
          break;
        }
        case State.First:
        case State.Next: {
          const b = c[p] as number;
          if (isWs(b)) {
            this.p++;
          } else if (b === CLOSE_BRACKET) {
            if (this.state === State.Next) throw this.fail(`trailing comma after element ${this.index - 1}`);
            this.state = State.Done;
            this.p++;
          } else {
            this.startElement(b);
          }
          break;
        }
        case State.AfterElement: {
          const b = c[p] as number;
          if (b === COMMA) this.state = State.Next;
          else if (b === CLOSE_BRACKET) this.state = State.Done;
          else if (!isWs(b)) throw this.fail(`expected ',' or ']' after element ${this.index - 1}`);
          this.p++;
          break;
        }
        case State.Done: {
          if (!isWs(c[p] as number)) throw this.fail('trailing bytes after the array');
          this.p++;
          break;
        }
      }
    }
    if (this.state === State.InElement || this.state === State.InScalar) {
      // Keep this chunk's part of the element, within the cap.
      this.pieceBytes += len - this.start;
      if (this.pieceBytes > this.maxElementBytes) throw this.tooLarge();
      this.pieces.push(this.start === 0 ? c : c.subarray(this.start));
      this.start = 0;
    }
    return null;
  }

  private startElement(b: number): void {
    this.start = this.p;
    this.elementAt = this.base + this.p;
    if (b === OPEN_BRACE || (b === OPEN_BRACKET && !this.objectsOnly)) {
      this.state = State.InElement; // scan() pushes the bracket itself
    } else if (this.objectsOnly) {
      throw this.fail(`element ${this.index} is not an object`);
    } else if (b === QUOTE) {
      this.inString = true;
      this.state = State.InElement;
      this.p++;
    } else if (b === 0x2d || (b >= 0x30 && b <= 0x39) || b === 0x74 || b === 0x66 || b === 0x6e) {
      this.state = State.InScalar;
    } else {
      throw this.fail(`element ${this.index} does not start a JSON value`);
    }
  }

  end(): void {
    const at = this.base + this.c.length;
    switch (this.state) {
      case State.Done:
        return;
      case State.BeforeArray:
        throw this.fail(at === 0 ? 'the body is empty' : 'the top level is not an array', at);
      case State.InElement:
        throw this.fail(this.inString ? `unterminated string in element ${this.index}` : `unterminated element ${this.index}`, at);
      default:
        throw this.fail('unterminated array', at);
    }
  }
}

/**
 * Splits a streamed JSON array into its top-level elements, yielding each element's raw JSON
 * text (decoded as a whole, so UTF-8 split across chunks is fine) without parsing the array.
 * Whitespace between elements is skipped; a leading UTF-8 BOM is ignored (RFC 8259 §8.1).
 *
 * GatewayError('DICOM_JSON_MALFORMED') for: an empty body, a top level that is not an array,
 * trailing bytes after the array, an unterminated array or string, a missing or trailing comma,
 * mismatched brackets, an element that is not an object (when `objectsOnly`, the default) or
 * not a valid number/literal, bytes that are not UTF-8, an element over `maxElementBytes`
 * (default 64 MiB; memory held is bounded by it plus one chunk), and nesting deeper than
 * MAX_JSON_DEPTH (100, counting the array). "[]" yields nothing. The input must not reuse a
 * chunk's memory after yielding it.
 */
export async function* splitJsonArray(body: AsyncIterable<Uint8Array>, opts: SplitJsonArrayOptions = {}): AsyncGenerator<string> {
  const maxElementBytes = opts.maxElementBytes ?? DEFAULT_MAX_ELEMENT_BYTES;
  if (!Number.isSafeInteger(maxElementBytes) || maxElementBytes < 1) throw new GatewayError('INTERNAL', 'splitJsonArray: maxElementBytes must be a positive integer');
  const s = new Splitter(maxElementBytes, opts.objectsOnly ?? true);
  for await (const u of body) {
    if (u.length === 0) continue;
    s.feed(toBuffer(u));
    for (let e = s.next(); e !== null; e = s.next()) yield e;
  }
  s.end();
}

/** Writes "[" + elements joined by "," + "]" as a stream (one chunk per element, UTF-8). */
export async function* writeJsonArray(elements: AsyncIterable<string>): AsyncGenerator<Buffer> {
  let first = true;
  for await (const e of elements) {
    yield Buffer.from(first ? `[${e}` : `,${e}`, 'utf8');
    first = false;
  }
  yield Buffer.from(first ? '[]' : ']', 'utf8');
}

/**
 * One object of a DICOM JSON array, parsed. JSON.parse's own error message quotes the input
 * (PHI), so a failure is reported as DICOM_JSON_MALFORMED without it.
 */
export function parseJsonObject<T extends object = Record<string, unknown>>(text: string): T {
  try {
    const o = JSON.parse(text) as unknown;
    if (typeof o !== 'object' || o === null || Array.isArray(o)) throw new Error('not an object');
    return o as T;
  } catch {
    throw new GatewayError('DICOM_JSON_MALFORMED', 'an object of the PACS response is not valid DICOM JSON');
  }
}
