/**
 * The text decision of one instance (issue 12): every frame is read (a cine loop's text is
 * usually fixed, but each frame is checked and the union of its lines is masked; a frame whose
 * bytes equal the previous one's is not read twice), for light text and for dark text.
 *
 * The result is:
 *  - `clean`: no text line was found; the pixels leave unchanged;
 *  - `mask`: the padded boxes of every line found, masked in every frame;
 *  - `withhold`: the image is mostly text (a patient-information screen, a form, a dose sheet),
 *    or text lines cover so much of the picture that it cannot be told apart from the image.
 */
import { inflateRawSync } from 'node:zlib';
import { ElementParser, EXPLICIT_LE, PIXEL_DATA_TAGS, readHeaderSync, readInstanceSync, UNDEFINED_LENGTH } from '../../dicom/part10.js';
import type { TextVerdict } from '../types.js';
import { readPixelFacts } from '../geometry.js';
import { part10View } from '../views.js';
import { detectPlane, mergeBoxes, type Box, type Tiles } from './detect.js';
import { checkPlaneFacts, fillSamples, framePlane, frameLength, readPalette, type PlaneFacts } from './planes.js';
import { GatewayError } from '../../core/errors.js';

/** Version of the detector: stored decisions of another version are made again. */
export const TEXT_ALGORITHM = 'text-lines-1';

/** Padded text boxes covering this share of the image or more: mostly text when little else is there. */
const MOSTLY_TEXT_AREA = 0.12;
/** Picture outside the text boxes (pixels away from the ground) under this share of the image: mostly text. */
const MOSTLY_TEXT_PICTURE = 0.12;
/** Text boxes covering this share of the image or more: text cannot be told apart from the picture. */
const INSEPARABLE_AREA = 0.45;

export interface TextAnalysis {
  readonly verdict: TextVerdict;
  readonly frames: number;
  /** Frames read (frames equal to the previous one are not). */
  readonly framesRead: number;
  readonly textArea: number;
  readonly pictureOutside: number;
}

/** Frames in native pixel data of these facts (throws PIXELS_WITHHELD when not one whole frame). */
export function frameCount(pixel: Uint8Array, f: PlaneFacts, frames: number): number {
  checkPlaneFacts(f);
  const count = Math.min(frames, Math.floor(pixel.length / frameLength(f)));
  if (count < 1) throw new GatewayError('PIXELS_WITHHELD', 'the pixel data is shorter than one frame', { auditReason: 'pixels-withheld:text-undecodable' });
  return count;
}

/**
 * The union of the text lines of frames [from, to): every frame is read, except one whose bytes
 * equal the frame before it (whatever range that one is in); after the first frame, only the
 * tiles that changed since the frame before, and their surroundings.
 */
export function detectFrames(pixel: Uint8Array, f: PlaneFacts, from: number, to: number): { boxes: Box[]; framesRead: number } {
  const w = f.columns, h = f.rows, n = w * h;
  const colour = f.samplesPerPixel === 3 || f.photometric === 'PALETTE COLOR';
  const tint = colour ? new Uint8Array(n) : undefined;
  let boxes: Box[] = [];
  let framesRead = 0;
  for (let k = from; k < to; k++) {
    // After the first frame, only what changed since the frame before (and around it) is read:
    // a line whose pixels and surroundings did not change was found in an earlier frame.
    const only = k > 0 ? changedTiles(pixel, f, k) : undefined;
    if (only === 'none') continue;
    framesRead++;
    const plane = framePlane(pixel, f, k, tint);
    const a = detectPlane(plane, w, h, tint, f.lossy, only);
    if (a.lines.length) boxes = mergeBoxes([...boxes, ...a.lines]);
  }
  return { boxes, framesRead };
}

/** Tile side for the comparison of a frame with the one before it, px. */
const TILE = 32;
/** Tiles read around a changed one: a stroke's ground (6 px), a glyph's margin (16 px) and its neighbours on a line. */
const AROUND = 1;

/**
 * The tiles of frame k whose stored bytes differ from frame k - 1's, widened by AROUND tiles;
 * 'none' when the frames are equal, undefined when every tile is to be read.
 */
export function changedTiles(pixel: Uint8Array, f: PlaneFacts, k: number): Tiles | 'none' | undefined {
  const per = frameLength(f);
  const cur = pixel.subarray(k * per, (k + 1) * per);
  const prev = pixel.subarray((k - 1) * per, k * per);
  if (Buffer.compare(cur, prev) === 0) return 'none';
  const across = Math.ceil(f.columns / TILE), down = Math.ceil(f.rows / TILE);
  const changed = new Uint8Array(across * down);
  const cell = f.bitsAllocated / 8;
  // Byte runs of one tile row: whole pixels when interleaved (or one sample), one plane at a time when planar.
  const planes = f.samplesPerPixel === 3 && f.planarConfiguration === 1 ? 3 : 1;
  const pixelBytes = planes === 3 ? cell : cell * f.samplesPerPixel;
  const planeBytes = f.rows * f.columns * pixelBytes;
  for (let s = 0; s < planes; s++) {
    for (let y = 0; y < f.rows; y++) {
      const row = s * planeBytes + y * f.columns * pixelBytes;
      const ty = Math.floor(y / TILE) * across;
      for (let t = 0; t < across; t++) {
        if (changed[ty + t]) continue;
        const a = row + t * TILE * pixelBytes, b = row + Math.min(f.columns, (t + 1) * TILE) * pixelBytes;
        if (Buffer.compare(cur.subarray(a, b), prev.subarray(a, b)) !== 0) changed[ty + t] = 1;
      }
    }
  }
  const dirty = new Uint8Array(across * down);
  let count = 0;
  for (let ty = 0; ty < down; ty++) for (let tx = 0; tx < across; tx++) {
    let hit = 0;
    for (let dy = -AROUND; dy <= AROUND && !hit; dy++) for (let dx = -AROUND; dx <= AROUND && !hit; dx++) {
      const y = ty + dy, x = tx + dx;
      if (y >= 0 && y < down && x >= 0 && x < across && changed[y * across + x]) hit = 1;
    }
    dirty[ty * across + tx] = hit;
    count += hit;
  }
  return count === across * down ? undefined : { size: TILE, dirty };
}

/** The verdict on the union of the lines found: clean, mostly text, inseparable, or the masks with their fills. */
export function verdictOf(pixel: Uint8Array, f: PlaneFacts, count: number, boxes: readonly Box[], framesRead: number): TextAnalysis {
  const w = f.columns, n = w * f.rows;
  const first = framePlane(pixel, f, 0);
  // How much of the image is text, and how much picture is there besides.
  const inText = new Uint8Array(n);
  for (const b of boxes) for (let y = b.y; y < b.y + b.height; y++) inText.fill(1, y * w + b.x, y * w + b.x + b.width);
  let textPixels = 0;
  for (let i = 0; i < n; i++) textPixels += inText[i]!;
  const hist = new Uint32Array(256);
  for (let i = 0; i < n; i++) hist[first[i]!]!++;
  let ground = 0;
  for (let v = 1; v < 256; v++) if (hist[v]! > hist[ground]!) ground = v;
  let picture = 0;
  for (let i = 0; i < n; i++) if (!inText[i] && Math.abs(first[i]! - ground) > 24) picture++;
  const textArea = textPixels / n;
  const pictureOutside = picture / n;
  const base = { frames: count, framesRead, textArea, pictureOutside };
  if (boxes.length === 0) return { ...base, verdict: { kind: 'clean' } };
  if (textArea >= MOSTLY_TEXT_AREA && pictureOutside < MOSTLY_TEXT_PICTURE) return { ...base, verdict: { kind: 'withhold', code: 'mostly-text', why: 'the image is mostly text' } };
  if (textArea >= INSEPARABLE_AREA) return { ...base, verdict: { kind: 'withhold', code: 'text-inseparable', why: 'text covers so much of the image that it cannot be told apart from the picture' } };
  return { ...base, verdict: { kind: 'mask', regions: boxes.map((b) => ({ ...b, fill: fillSamples(pixel, f, 0, contrastLevel(first, w, b)) })) } };
}

/** Analyses native pixel data of the given facts, on this thread. */
export function analyzeFrames(pixel: Uint8Array, f: PlaneFacts, frames: number): TextAnalysis {
  const count = frameCount(pixel, f, frames);
  const { boxes, framesRead } = detectFrames(pixel, f, 0, count);
  return verdictOf(pixel, f, count, boxes, framesRead);
}

/**
 * A fill level for a box that differs as much as it can from both the box's ground (its most
 * common level) and its text (the level farthest from the ground), like Presidio's "contrast"
 * fill: every pixel of a word changes, the strokes and the ground between them.
 */
function contrastLevel(plane: Uint8Array, w: number, b: Box): number {
  const hist = new Uint32Array(256);
  for (let y = b.y; y < b.y + b.height; y++) for (let x = b.x; x < b.x + b.width; x++) hist[plane[y * w + x]!]!++;
  let ground = 0;
  for (let v = 1; v < 256; v++) if (hist[v]! > hist[ground]!) ground = v;
  let text = ground;
  for (let v = 0; v < 256; v++) if (hist[v]! > 0 && Math.abs(v - ground) > Math.abs(text - ground)) text = v;
  let best = 0, score = -1;
  for (const c of [0, 255, Math.round((ground + text) / 2)]) {
    const s = Math.min(Math.abs(c - ground), Math.abs(c - text));
    if (s > score) { score = s; best = c; }
  }
  return best;
}

/** The plane facts of a Part 10 header (with its palette, when PALETTE COLOR). */
export function planeFactsOf(elements: Parameters<typeof part10View>[0], littleEndian: boolean): PlaneFacts & { frames: number } {
  const view = part10View(elements);
  const p = readPixelFacts(view);
  const byTag = new Map(elements.map((e) => [e.tag, e]));
  const palette = p.photometric === 'PALETTE COLOR'
    ? readPalette((t) => byTag.get(t)?.value ?? undefined, (t) => {
      // Descriptors are US or SS (first value may read as negative when SS): read them as unsigned.
      const v = byTag.get(t)?.value;
      if (!v || v.length < 6) return undefined;
      return [0, 2, 4].map((o) => (littleEndian ? v.readUInt16LE(o) : v.readUInt16BE(o)));
    }, littleEndian)
    : undefined;
  return {
    rows: p.rows, columns: p.columns, samplesPerPixel: p.samplesPerPixel, bitsAllocated: p.bitsAllocated, bitsStored: p.bitsStored,
    pixelRepresentation: p.pixelRepresentation, photometric: p.photometric, planarConfiguration: p.planarConfiguration, littleEndian, palette, frames: p.frames,
    lossy: view.str(0x00282110) === '01',
  };
}

/** The native pixel data and plane facts of a whole Part 10 object (decode compressed ones first: codec.ts). */
export function instancePixels(buf: Buffer): { pixel: Buffer; facts: PlaneFacts & { frames: number } } {
  const inst = readInstanceSync(buf, (b) => inflateRawSync(b));
  if (!inst.pixel) throw new GatewayError('PIXELS_WITHHELD', 'the pixel data is compressed or absent, so its text cannot be read', { auditReason: 'pixels-withheld:text-undecodable' });
  return { pixel: inst.pixel, facts: planeFactsOf(inst.elements, inst.transferSyntax.littleEndian) };
}

/** Analyses a whole Part 10 object with native pixel data, on this thread. */
export function analyzeInstance(buf: Buffer): TextAnalysis {
  const { pixel, facts } = instancePixels(buf);
  return analyzeFrames(pixel, facts, facts.frames);
}

/**
 * Where native pixel data starts in a prefix of a Part 10 object, and how long it is, with the
 * header read so far: undefined while the prefix does not reach the pixel data yet; 'whole' when
 * the object must be read whole first (compressed or deflated pixel data, or none).
 */
export function pixelValueAt(prefix: Buffer): { facts: PlaneFacts & { frames: number }; start: number; length: number } | 'whole' | undefined {
  let head: ReturnType<typeof readHeaderSync>;
  try {
    head = readHeaderSync(prefix, (b) => inflateRawSync(b));
  } catch (e) {
    if (e instanceof GatewayError && e.code === 'DICOM_TRUNCATED') return undefined;
    throw e;
  }
  if (head.transferSyntax.deflated || head.transferSyntax.encapsulated) return 'whole';
  if (!head.reachedPixelData) return undefined;
  let pos = 132;
  const meta = new ElementParser(prefix, 0, false);
  while (pos + 2 <= prefix.length && prefix.readUInt16LE(pos) === 0x0002) pos = meta.element(pos, prefix.length, EXPLICIT_LE).next;
  const p = new ElementParser(prefix, 0, true);
  for (let at = pos; ;) {
    const h = p.header(at, prefix.length, head.transferSyntax);
    if (h.tag === 0x7fe00010) {
      if (h.length === UNDEFINED_LENGTH) return 'whole';
      return { facts: planeFactsOf(head.elements, head.transferSyntax.littleEndian), start: at + h.headerLength, length: h.length };
    }
    if (PIXEL_DATA_TAGS.has(h.tag)) return 'whole'; // float pixel data: not an image with text
    at = p.element(at, prefix.length, head.transferSyntax, h).next;
  }
}
