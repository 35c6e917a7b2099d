/**
 * Streaming de-identification of one DICOM Part 10 object.
 *
 * The header (everything before the pixel data) is read into Buffer slices, checked and
 * de-identified as a whole, because PS3.15 decisions need the whole header (the date
 * offset is keyed on the Patient ID, which follows the study dates; free text is cleaned
 * of names that come later). Nothing is emitted before the header has been de-identified,
 * so a malformed header is refused with no byte out. Pixel data (native or encapsulated)
 * then flows through without being copied into JS objects; memory is bounded by
 * `maxHeaderBytes`, never by the size of the pixel data.
 */
import { createHash } from 'node:crypto';
import { PassThrough, Readable, pipeline } from 'node:stream';
import { createDeflateRaw, createInflateRaw } from 'node:zlib';
import { GatewayError, tagString } from '../core/errors.js';
import { DEFAULT_CHARSET, type Charset } from '../dicom/charset.js';
import { dictionary, isPrivateTag, ITEM, SEQUENCE_DELIMITATION } from '../dicom/dictionary.js';
import {
  ByteQueue, ElementParser, encodeElements, encodeFileMeta, encodeToBuffer, rawToOut, textElement, NeedMoreData, PIXEL_DATA_TAGS, transferSyntax, UNDEFINED_LENGTH,
  EXPLICIT_LE, type OutElement, type RawElement, type Syntax, type TransferSyntax,
} from '../dicom/part10.js';
import { declaredCharset, decodeStringsAsRead, encodeStrings } from '../dicom/values.js';
import { NUMERIC_SIZES, STRING_VRS, type VR } from '../dicom/vr.js';
import { deidentify, type Adapter, type EngineContext } from './engine.js';
import { checkGeometry, frameBytes, pixelMasker, regionsCover, type PixelGeometry, type Region } from './pixel-mask.js';
import { faceCutTransformer } from '../pixels/face/cut.js';
import { readPixelFacts } from '../pixels/geometry.js';
import { part10View } from '../pixels/views.js';
import { embeddedOverlayBits } from '../pixels/overlays.js';
import type { FacePlane } from '../pixels/types.js';

/** PS3.16 CID 7050: the pixel data was cleaned of burned-in identification. */
export const CLEAN_PIXEL_DATA = { code: '113101', meaning: 'Clean Pixel Data Option' } as const;
/** PS3.16 CID 7050: recognizable visual features (a face) were removed from the pixels. */
export const CLEAN_RECOGNIZABLE_VISUAL_FEATURES = { code: '113102', meaning: 'Clean Recognizable Visual Features Option' } as const;
import { PRODUCT_VERSION } from './plan.js';

export interface BinaryDataset {
  readonly elements: readonly RawElement[];
  readonly charset: Charset;
}

/** The Part 10 side of the engine's adapter. */
export const binaryAdapter: Adapter<RawElement, BinaryDataset, OutElement> = {
  elements: (ds) => ds.elements,
  tag: (e) => e.tag,
  vr(e) {
    if (e.items) return 'SQ';
    if (e.vr === 'UN' && !isPrivateTag(e.tag)) return dictionary().lookup(e.tag)?.vr ?? 'UN';
    return e.vr;
  },
  strings(e, ds) {
    if (!e.value) return null;
    const vr = binaryAdapter.vr(e, ds);
    if (!STRING_VRS.has(vr)) return null;
    // Undeclared bytes beyond ASCII are read as Latin-1 so that the value can be cleaned; a
    // cleaned value that still holds such letters cannot be written in the default repertoire,
    // and is emptied.
    return decodeStringsAsRead(e.value, vr, ds.charset);
  },
  items(e, ds) {
    return (e.items ?? []).map((it) => ({ elements: it.elements, charset: declaredCharset(it.elements) ?? ds.charset }));
  },
  keep: (e) => rawToOut(e),
  setStrings(tag, vr, values, ds) {
    const value = encodeStrings(values, vr, ds.charset);
    return value ? { tag, vr, value, items: null } : null;
  },
  setEmpty: (tag, vr) => ({ tag, vr, value: Buffer.alloc(0), items: null }),
  setZeros: (tag, vr) => ({ tag, vr, value: Buffer.alloc(Math.max(2, NUMERIC_SIZES[vr] ?? 2)), items: null }),
  setSequence: (tag, items) => ({ tag, vr: 'SQ', value: null, items }),
  outTag: (o) => o.tag,
};

/** What the caller may log or audit about an instance: UIDs only, original and pseudonymous. */
export interface InstanceInfo {
  readonly transferSyntax: string;
  readonly sopClassUid: string;
  readonly original: { readonly study: string; readonly series: string; readonly sop: string };
  readonly pseudonymous: { readonly study: string; readonly series: string; readonly sop: string };
  /** Time spent de-identifying the header (parsing excluded), in seconds. */
  readonly deidSeconds: number;
}

export interface Part10Options {
  /** Cap on the bytes held for the header (everything before pixel data). Default 64 MiB. */
  readonly maxHeaderBytes?: number;
  /**
   * The source's buffers are the caller's to change, and it does not read them again: pixel
   * masks are written into them instead of into copies (a 92 MB cine held in memory is not
   * copied to be masked).
   */
  readonly ownsInput?: boolean;
  /** Called once the header is de-identified, before any output. */
  readonly onInstance?: (info: InstanceInfo) => void;
  /**
   * Decides, from the original header, whether this instance may leave at all, before any
   * output: it reads top-level attributes through `attr` (decoded in the data set's character
   * set, values joined with "\\", padding trimmed; undefined when absent or empty) and throws
   * (a GatewayError such as PIXELS_WITHHELD) to refuse the instance.
   */
  readonly admit?: (attr: (tag: number) => string | undefined) => void | {
    readonly mask?: readonly Region[] | undefined;
    /** Under risky: detect, the detected text lines (the mask): the pixels are clean once masked. */
    readonly detected?: readonly Region[] | undefined;
    /** A face cut (planes in patient coordinates) to apply to every frame. */
    readonly face?: readonly FacePlane[] | undefined;
  };
  /**
   * Emit only the (cleaned) value bytes of native Pixel Data (7FE0,0010), nothing else: bulk
   * pixel data and frames of instances whose pixels must be cleaned. Compressed or absent
   * pixel data is refused (PIXELS_WITHHELD).
   */
  readonly pixelsOnly?: boolean;
}

/** Values larger than this that the plan removes are skipped, not buffered. */
const SKIP_THRESHOLD = 256 * 1024;
const META_LIMIT = 64 * 1024;

let implementationUid: string | undefined;
function implementationClassUid(): string {
  implementationUid ??= `2.25.${BigInt(`0x${createHash('sha256').update('deid-gateway implementation class').digest('hex').slice(0, 32)}`).toString(10)}`;
  return implementationUid;
}

function notPart10(reason: string): GatewayError {
  return new GatewayError('DICOM_NOT_PART10', reason);
}

function truncated(where: string, at: number): GatewayError {
  return new GatewayError('DICOM_TRUNCATED', `object ends inside ${where} at byte ${at}`);
}

function tooLarge(limit: number, tag: number): GatewayError {
  return new GatewayError('DICOM_HEADER_TOO_LARGE', `header larger than the ${limit}-byte limit at ${tagString(tag)}`);
}

/**
 * Reads one element at the queue's head, buffering it whole; parses sequences too.
 * `room` caps the bytes it may hold (the header limit less what is held already).
 */
async function readElement(q: ByteQueue, syntax: Syntax, room = Number.MAX_SAFE_INTEGER, limit = room, known?: ElementHeader): Promise<RawElement> {
  const at = q.position;
  const h = known ?? await peekHeader(q, syntax);
  if (!h) throw truncated('an element header', at);
  if (h.length !== UNDEFINED_LENGTH) {
    const total = h.headerLength + h.length;
    if (total > room) throw tooLarge(limit, h.tag);
    if (q.available < total && !(await q.fill(total))) throw truncated(`the value of ${tagString(h.tag)}`, at);
    const { element } = new ElementParser(q.peek(total), at, false).element(0, total, syntax);
    q.consume(total);
    return element;
  }
  // Undefined length: parse what is there; on running out, wait for twice as much (so
  // the retries cost O(n) in all).
  let want = Math.max(q.available, 4096);
  for (;;) {
    try {
      const { element, next } = new ElementParser(q.peek(q.available), at, true).element(0, q.available, syntax);
      if (next > room) throw tooLarge(limit, h.tag);
      q.consume(next);
      return element;
    } catch (e) {
      if (!(e instanceof NeedMoreData)) throw e;
      if (q.sourceEnded) throw truncated(`the sequence ${tagString(h.tag)}`, at);
      if (q.available >= room) throw tooLarge(limit, h.tag);
      want = Math.min(want * 2, room);
      await q.fill(want);
    }
  }
}

type ElementHeader = { tag: number; vr: VR | null; length: number; headerLength: number };

/** The next element's header when its bytes are already buffered (no promise on the hot path). */
function headerNow(q: ByteQueue, syntax: Syntax): ElementHeader | undefined {
  if (q.available < 12) return undefined;
  return new ElementParser(q.peek(12), q.position, true).header(0, 12, syntax);
}

/** A defined-length element whose bytes are all buffered, parsed without awaiting. */
function elementNow(q: ByteQueue, syntax: Syntax, h: ElementHeader, room: number, limit: number): RawElement | undefined {
  if (h.length === UNDEFINED_LENGTH) return undefined;
  const total = h.headerLength + h.length;
  if (total > room) throw tooLarge(limit, h.tag);
  if (q.available < total) return undefined;
  const { element } = new ElementParser(q.peek(total), q.position, false).element(0, total, syntax);
  q.consume(total);
  return element;
}

/** Peeks the next tag and the header of the element, without consuming. */
/**
 * True (and the bytes consumed) when what is left of the object is zero bytes only: padding that
 * some writers put after the last element (real files; DCMTK and pydicom read past it). A zero
 * tag followed by anything else is not padding, and is left for the element reader to refuse.
 */
async function zeroPaddingToEnd(q: ByteQueue): Promise<boolean> {
  if (q.available < 4 && !q.sourceEnded) await q.fill(4);
  if (q.available < 4 || q.peek(4).readUInt32LE(0) !== 0) return false;
  // A zero tag: read on, a bounded piece at a time, while it stays zero.
  for (;;) {
    if (q.available === 0 && !(await q.fill(1))) return true;
    const n = Math.min(q.available, 64 * 1024);
    const b = q.peek(n);
    for (let i = 0; i < n; i++) if (b[i] !== 0) throw new GatewayError('DICOM_MALFORMED', `an element with tag (0000,0000) at byte ${q.position + i}: not padding`);
    q.consume(n);
  }
}

async function peekHeader(q: ByteQueue, syntax: Syntax): Promise<ElementHeader | null> {
  // Await only when the bytes are not there yet: each await costs a microtask per element.
  if (q.available < 12 && !q.sourceEnded) await q.fill(12);
  if (q.available < 8) {
    if (q.available === 0) return null;
    throw truncated('an element header', q.position);
  }
  try {
    return new ElementParser(q.peek(Math.min(12, q.available)), q.position, true).header(0, Math.min(12, q.available), syntax);
  } catch (e) {
    if (e instanceof NeedMoreData) throw truncated('an element header', q.position);
    throw e;
  }
}

async function* passBytes(q: ByteQueue, n: number, emit: boolean, what: string): AsyncGenerator<Buffer> {
  let left = n;
  while (left > 0) {
    if (!(await q.fill(1))) throw truncated(what, q.position);
    const b = q.takeSome(left);
    left -= b.length;
    if (emit) yield b;
  }
}

/** Pixel data: native (defined length) or encapsulated fragments (PS3.5 A.4), as they are. */
async function* passPixelData(q: ByteQueue, syntax: Syntax, h: { tag: number; length: number; headerLength: number }, emit: boolean): AsyncGenerator<Buffer> {
  if (emit) yield Buffer.from(q.peek(h.headerLength));
  q.consume(h.headerLength);
  if (h.length !== UNDEFINED_LENGTH) {
    yield* passBytes(q, h.length, emit, 'the pixel data');
    return;
  }
  const le = syntax.littleEndian;
  for (;;) {
    if (!(await q.fill(8))) throw truncated('the encapsulated pixel data', q.position);
    const b = q.peek(8);
    const tag = ((le ? b.readUInt16LE(0) : b.readUInt16BE(0)) << 16 | (le ? b.readUInt16LE(2) : b.readUInt16BE(2))) >>> 0;
    const len = le ? b.readUInt32LE(4) : b.readUInt32BE(4);
    if (tag === SEQUENCE_DELIMITATION) {
      if (emit) yield Buffer.from(b);
      q.consume(8);
      return;
    }
    if (tag !== ITEM || len === UNDEFINED_LENGTH) throw new GatewayError('DICOM_MALFORMED', `bad fragment item in encapsulated pixel data at byte ${q.position}`);
    if (emit) yield Buffer.from(b);
    q.consume(8);
    yield* passBytes(q, len, emit, 'a pixel data fragment');
  }
}

function firstString(elements: readonly RawElement[], tag: number): string {
  const el = elements.find((e) => e.tag === tag);
  return el?.value ? el.value.toString('latin1').replace(/[\0 ]+$/, '').split('\\')[0] ?? '' : '';
}

function pipeThrough(source: AsyncIterable<Buffer>, transform: NodeJS.ReadWriteStream): AsyncIterable<Buffer> {
  const out = new PassThrough();
  pipeline(Readable.from(source), transform, out, () => { /* errors surface through `out` */ });
  return out;
}

/** Inflates a Deflated Explicit VR LE data set (PS3.5 A.5); zlib failures are refusals. */
async function* inflated(source: AsyncIterable<Buffer>): AsyncGenerator<Buffer> {
  try {
    for await (const c of pipeThrough(source, createInflateRaw())) yield c as Buffer;
  } catch (e) {
    if (e instanceof GatewayError) throw e;
    const code = (e as { code?: string }).code;
    if (code === 'Z_BUF_ERROR') throw new GatewayError('DICOM_TRUNCATED', 'deflated data set ends early', { cause: e });
    throw new GatewayError('DICOM_MALFORMED', `deflated data set cannot be inflated (${code ?? 'zlib error'})`, { cause: e });
  }
}

function encodeMeta(sopClass: string, sopInstance: string, ts: TransferSyntax): Buffer {
  const version = `DEIDGW_${PRODUCT_VERSION.replace(/\./g, '_')}`.slice(0, 16);
  // The original preamble may hold anything (TIFF headers, text): the new one is zeroed.
  return encodeFileMeta([
    { tag: 0x00020001, vr: 'OB', value: Buffer.from([0, 1]), items: null },
    textElement(0x00020002, 'UI', sopClass),
    textElement(0x00020003, 'UI', sopInstance),
    textElement(0x00020010, 'UI', ts.uid),
    textElement(0x00020012, 'UI', implementationClassUid()),
    textElement(0x00020013, 'SH', version),
  ]);
}

/**
 * De-identifies one Part 10 object from `source`, yielding the output in order.
 * Throws GatewayError (DICOM_*) for malformed input; before the first yield when the
 * problem is in the preamble, the File Meta or the header.
 */
export async function* deidentifyPart10(source: AsyncIterable<Uint8Array>, ctx: EngineContext, opts: Part10Options = {}): AsyncGenerator<Buffer> {
  const maxHeader = opts.maxHeaderBytes ?? 64 * 1024 * 1024;
  const q = new ByteQueue(source[Symbol.asyncIterator]());
  if (!(await q.fill(132))) throw notPart10('shorter than the 128-byte preamble and DICM prefix');
  if (q.peek(132).toString('latin1', 128, 132) !== 'DICM') throw notPart10('no DICM prefix at byte 128 (PS3.10 7.1)');
  q.consume(132);

  // File Meta Information: always explicit VR little endian (PS3.10 7.1).
  const meta: RawElement[] = [];
  for (;;) {
    if (!(await q.fill(2))) break;
    if (q.peek(2).readUInt16LE(0) !== 0x0002) break;
    if (q.position > META_LIMIT) throw new GatewayError('DICOM_MALFORMED', 'File Meta Information longer than 64 KiB');
    meta.push(await readElement(q, EXPLICIT_LE));
  }
  const tsUid = firstString(meta, 0x00020010);
  if (!tsUid) throw notPart10('File Meta Information has no Transfer Syntax UID (0002,0010)');
  const ts = transferSyntax(tsUid);

  let dq = q;
  if (ts.deflated) dq = new ByteQueue(inflated(q.rest())[Symbol.asyncIterator]());

  // Header: every top-level element before the pixel data.
  const header: RawElement[] = [];
  let pixel: { tag: number; length: number; headerLength: number } | null = null;
  let lastTag = -1;
  let held = 0; // bytes of header held in memory (skipped values do not count)
  const skipped = new Set<number>(); // large removed values not held (e.g. Overlay Data)
  for (;;) {
    // Fast path: every whole, ordinary element already in the first buffered chunk, parsed
    // with one parser and consumed at once. Anything else takes the element-by-element path.
    if (dq.available >= 12) {
      const span = dq.contiguous();
      const p = new ElementParser(span, dq.position, true);
      let at = 0;
      while (at + 12 <= span.length) {
        if (span.readUInt32LE(at) === 0) break; // a zero tag: padding to the end, or malformed (below)
        const h = p.header(at, span.length, ts);
        if (PIXEL_DATA_TAGS.has(h.tag) || h.length === UNDEFINED_LENGTH || h.length > SKIP_THRESHOLD) break;
        const total = h.headerLength + h.length;
        if (at + total > span.length) break;
        if (h.tag <= lastTag) throw new GatewayError('DICOM_MALFORMED', `${tagString(h.tag)} out of ascending tag order at byte ${dq.position + at}`);
        if (total > maxHeader - held) throw tooLarge(maxHeader, h.tag);
        // The element fits the span whole, so running out inside it (an item that claims more than
        // its sequence holds) is not a wait for more bytes: the element reader below refuses it.
        let el: RawElement;
        try {
          el = p.element(at, at + total, ts, h).element;
        } catch (e) {
          if (e instanceof NeedMoreData) break;
          throw e;
        }
        header.push(el);
        lastTag = h.tag;
        held += total;
        at += total;
      }
      if (at > 0) { dq.consume(at); continue; }
    }
    if (header.length > 0 && await zeroPaddingToEnd(dq)) break;
    const h = headerNow(dq, ts) ?? await peekHeader(dq, ts);
    if (!h) break;
    if (h.tag <= lastTag) throw new GatewayError('DICOM_MALFORMED', `${tagString(h.tag)} out of ascending tag order at byte ${dq.position}`);
    lastTag = h.tag;
    if (PIXEL_DATA_TAGS.has(h.tag)) { pixel = h; break; }
    if (h.length !== UNDEFINED_LENGTH && h.length > SKIP_THRESHOLD && isPrivateTag(h.tag) && !ctx.plan.retainSafePrivate) {
      for await (const _ of passBytes(dq, h.headerLength + h.length, false, `the value of ${tagString(h.tag)}`)) { /* skipped */ }
      continue;
    }
    if (h.length !== UNDEFINED_LENGTH && h.length > SKIP_THRESHOLD && !isPrivateTag(h.tag) && ctx.plan.lookup(h.tag).action.kind === 'remove') {
      skipped.add(h.tag);
      for await (const _ of passBytes(dq, h.headerLength + h.length, false, `the value of ${tagString(h.tag)}`)) { /* skipped */ }
      continue;
    }
    const before = dq.position;
    header.push(elementNow(dq, ts, h, maxHeader - held, maxHeader) ?? await readElement(dq, ts, maxHeader - held, maxHeader, h));
    held += dq.position - before;
  }

  const charset = declaredCharset(header) ?? DEFAULT_CHARSET;
  const ds: BinaryDataset = { elements: header, charset };
  // One reader of the header's values (src/pixels/views.ts) for the admission, the overlays and
  // the face cut; the SOP Class UID falls back to the File Meta's when the data set has none.
  const headerView = part10View(header, charset);
  const attr = (tag: number): string | undefined =>
    (tag === 0x00080016 && !header.some((e) => e.tag === tag) ? part10View(meta).str(0x00020002) : headerView.str(tag));
  const admitted = opts.admit?.(attr);
  const mask = admitted ? admitted.mask : undefined;
  const face = admitted ? admitted.face : undefined;
  // Overlays embedded in unused bits of the pixel cells (no Overlay Data of their own) are
  // cleared from the pixels when the plan removes the overlay (PS3.15 E.1-1, Clean Graphics).
  const overlayBits = embeddedOverlayBits(headerView, {
    hasData: (g) => { const data = ((g << 16) | 0x3000) >>> 0; return header.some((x) => x.tag === data) || skipped.has(data); },
    kept: (g) => ctx.plan.lookup(((g << 16) | 0x0102) >>> 0).action.kind === 'keep',
  });
  let masker: ((chunk: Buffer) => Buffer) | undefined;
  if (opts.pixelsOnly && (!pixel || pixel.tag !== 0x7fe00010 || pixel.length === UNDEFINED_LENGTH)) {
    throw new GatewayError('PIXELS_WITHHELD', 'this instance\'s pixels must be cleaned and have no native pixel data to clean', { auditReason: 'pixels-withheld:cannot-clean' });
  }
  if ((mask?.length || overlayBits.length) && pixel) {
    if (pixel.tag !== 0x7fe00010) throw new GatewayError('PIXELS_WITHHELD', 'float pixel data cannot be cleaned', { auditReason: 'pixels-withheld:cannot-clean' });
    if (pixel.length === UNDEFINED_LENGTH) {
      // Neither regions nor embedded overlay bits can be located in compressed pixel data.
      throw new GatewayError('PIXELS_WITHHELD', 'compressed pixel data cannot be masked or have its overlay bits cleared; ask for an uncompressed transfer syntax', { auditReason: 'pixels-withheld:compressed' });
    } else {
      const n = (tag: number, dflt?: number): number => { const v = attr(tag); return v === undefined ? (dflt ?? Number.NaN) : Number(v.split('\\')[0]); };
      const g: PixelGeometry = {
        rows: n(0x00280010), columns: n(0x00280011), samplesPerPixel: n(0x00280002, 1), bitsAllocated: n(0x00280100),
        planarConfiguration: n(0x00280006, 0), frames: n(0x00280008, 1), photometric: (attr(0x00280004) ?? '').toUpperCase(), littleEndian: ts.littleEndian,
      };
      checkGeometry(g);
      // A rule whose regions all fall outside the image blanks nothing: the instance is not made
      // safe by it, so it is withheld (never marked Burned In Annotation NO).
      if (mask?.length && !admitted?.detected && !regionsCover(g, mask)) throw new GatewayError('PIXELS_WITHHELD', 'the mask rule\'s regions fall outside this image and cover nothing', { auditReason: 'pixels-withheld:mask-covers-nothing' });
      const want = frameBytes(g) * g.frames;
      if (pixel.length !== want && pixel.length !== want + 1) throw new GatewayError('PIXELS_WITHHELD', 'the pixel data length does not match its geometry, so regions cannot be located', { auditReason: 'pixels-withheld:cannot-clean' });
      masker = pixelMasker(g, { regions: mask ?? [], overlayBits }, opts.ownsInput);
    }
  }
  let defaced = false;
  if (face?.length && pixel && ctx.plan.lookup(pixel.tag).action.kind === 'keep') {
    // The face cut (a series-level decision) applied to every frame, in patient coordinates.
    if (pixel.tag !== 0x7fe00010) throw new GatewayError('PIXELS_WITHHELD', 'float pixel data cannot be defaced', { auditReason: 'pixels-withheld:face-geometry' });
    if (pixel.length === UNDEFINED_LENGTH) throw new GatewayError('PIXELS_WITHHELD', 'compressed pixel data cannot be defaced; ask for an uncompressed transfer syntax', { auditReason: 'pixels-withheld:compressed' });
    const facts = readPixelFacts(headerView);
    const want = facts.rows * facts.columns * (facts.bitsAllocated / 8) * facts.frames;
    if (pixel.length !== want && pixel.length !== want + 1) throw new GatewayError('PIXELS_WITHHELD', 'the pixel data length does not match its geometry, so the face cut cannot be placed', { auditReason: 'pixels-withheld:face-geometry' });
    const cut = faceCutTransformer(facts, face, ts.littleEndian, opts.ownsInput);
    const before = masker;
    masker = before ? (c) => cut(before(c)) : cut;
    defaced = true;
  }
  const t0 = performance.now();
  // Burned In Annotation NO and 113101 only when a rule's regions actually blanked pixels, or
  // when the text detector examined the pixels (and masked what it found, if anything).
  const cleaned = (!!mask?.length && !!masker) || !!admitted?.detected;
  const extraMethodCodes = [...(cleaned ? [CLEAN_PIXEL_DATA] : []), ...(defaced ? [CLEAN_RECOGNIZABLE_VISUAL_FEATURES] : [])];
  let out = deidentify(binaryAdapter, { elements: header, charset }, ctx, { writeMarkers: true, ...(extraMethodCodes.length ? { extraMethodCodes } : {}) });
  if (cleaned || defaced) {
    // The regions a rule names are blanked: the burned-in text is gone (PS3.15 E.3.1); the
    // face is cut away: no recognizable visual features are left.
    const set: [number, string][] = [...(cleaned ? [[0x00280301, 'NO'] as [number, string]] : []), ...(defaced ? [[0x00280302, 'NO'] as [number, string]] : [])];
    out = out.filter((e) => !set.some(([t]) => t === e.tag));
    for (const [t, v] of set) out.push(binaryAdapter.setStrings(t, 'CS', [v], ds)!);
    out.sort((a, b) => a.tag - b.tag);
  }
  const deidSeconds = (performance.now() - t0) / 1000;

  const sopClass = firstString(meta, 0x00020002) || firstString(header, 0x00080016);
  const uid = (tag: number): [string, string] => {
    const o = firstString(header, tag);
    const p = out.find((x) => x.tag === tag);
    return [o, p?.value ? p.value.toString('latin1').replace(/\0+$/, '') : ''];
  };
  const [study, pStudy] = uid(0x0020000d);
  const [series, pSeries] = uid(0x0020000e);
  const [sop, pSop] = uid(0x00080018);
  opts.onInstance?.({
    transferSyntax: ts.uid, sopClassUid: sopClass,
    original: { study, series, sop }, pseudonymous: { study: pStudy, series: pSeries, sop: pSop }, deidSeconds,
  });

  // Media Storage SOP Instance UID is the output's SOP Instance UID (PS3.10 7.1), so the two
  // agree even when the input's did not; without one, the meta value maps like a U row.
  if (opts.pixelsOnly) {
    // Only the value of the pixel data: skip to it, clean it, and stop.
    dq.consume(pixel!.headerLength);
    for await (const c of passBytes(dq, pixel!.length, true, 'the pixel data')) yield masker ? masker(c) : c;
    return;
  }
  const metaSop = firstString(meta, 0x00020003);
  const outSop = pSop || (metaSop && ctx.plan.lookup(0x00020003).action.kind !== 'keep' ? ctx.pseudonymizer.uid(metaSop) : metaSop);
  yield encodeMeta(sopClass, outSop, ts);
  const body = datasetBody(dq, ts, out, pixel, lastTag, ctx, masker);
  if (ts.deflated) {
    yield* pipeThrough(body, createDeflateRaw());
  } else {
    yield* body;
  }
}

async function* datasetBody(
  q: ByteQueue, ts: TransferSyntax, header: OutElement[], firstPixel: { tag: number; length: number; headerLength: number } | null,
  lastTagIn: number, ctx: EngineContext, masker?: (chunk: Buffer) => Buffer,
): AsyncGenerator<Buffer> {
  yield encodeToBuffer(header, ts);
  let pixel = firstPixel;
  let lastTag = lastTagIn;
  // Pixel data, then whatever follows it (padding, signatures, private groups above 7FE0):
  // each trailing element is kept only when the plan keeps it as it is; sequences and
  // private data there are removed (fail closed, docs/deid-rules.md).
  for (;;) {
    if (pixel) {
      const emit = ctx.plan.lookup(pixel.tag).action.kind === 'keep';
      if (masker && emit && pixel.length !== UNDEFINED_LENGTH) {
        yield Buffer.from(q.peek(pixel.headerLength));
        q.consume(pixel.headerLength);
        for await (const c of passBytes(q, pixel.length, true, 'the pixel data')) yield masker(c);
      } else {
        yield* passPixelData(q, ts, pixel, emit);
      }
      pixel = null;
    }
    if (await zeroPaddingToEnd(q)) return;
    const h = await peekHeader(q, ts);
    if (!h) return;
    if (h.tag <= lastTag) throw new GatewayError('DICOM_MALFORMED', `${tagString(h.tag)} out of ascending tag order at byte ${q.position}`);
    lastTag = h.tag;
    if (PIXEL_DATA_TAGS.has(h.tag)) { pixel = h; continue; }
    const keep = !isPrivateTag(h.tag) && h.vr !== 'SQ' && h.length !== UNDEFINED_LENGTH && ctx.plan.lookup(h.tag).action.kind === 'keep';
    if (!keep) {
      if (h.length === UNDEFINED_LENGTH) await readElement(q, ts, Number.MAX_SAFE_INTEGER, Number.MAX_SAFE_INTEGER, h);
      else for await (const _ of passBytes(q, h.headerLength + h.length, false, `the value of ${tagString(h.tag)}`)) { /* dropped */ }
      continue;
    }
    const el = await readElement(q, ts, Number.MAX_SAFE_INTEGER, Number.MAX_SAFE_INTEGER, h);
    const p: Buffer[] = [];
    encodeElements([rawToOut(el)], ts, p);
    yield Buffer.concat(p);
  }
}

/** De-identifies a whole Part 10 object held in memory (tests, the offline command). */
export async function deidentifyPart10Buffer(input: Buffer, ctx: EngineContext, opts: Part10Options = {}): Promise<Buffer> {
  const chunks: Buffer[] = [];
  for await (const c of deidentifyPart10((async function* () { yield input; })(), ctx, opts)) chunks.push(c);
  return Buffer.concat(chunks);
}

