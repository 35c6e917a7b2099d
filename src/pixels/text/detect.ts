/**
 * A classical, model-free detector of text burned into one image plane (issue 12).
 *
 * The plane is 8-bit (the brightest sample of each pixel, for colour). It is searched for light
 * text on a darker ground and for dark text on a lighter one. Steps:
 *
 *  1. Strokes: pixels brighter (or darker) by STROKE_CONTRAST than their ground on both sides,
 *     a few pixels away, across or along (a cheap stroke-width test): thin structures stand
 *     out, and the inside and edges of wide ones (the imaging sector, colour bars, panels) do not.
 *  2. Glyphs: 8-connected components of stroke pixels with the size, fill and contrast of a
 *     character, standing on a clean ground (few other stroke pixels close around them: speckle
 *     and tissue are textured, a banner's ground is not), drawn in one colour.
 *  3. Lines: glyphs that share a text line (overlapping rows, alike heights and colours, gaps
 *     of at most about a character) are grouped; a line of at least three glyphs, or of two
 *     that stand on a perfectly clean ground, is text. Each line becomes a padded rectangle.
 *
 * It needs no model and no network, and costs a few milliseconds per 640×480 plane.
 */

/** A rectangle in pixel coordinates: columns x .. x+width-1, rows y .. y+height-1. */
export interface Box { readonly x: number; readonly y: number; readonly width: number; readonly height: number }

export interface PlaneText {
  /** Padded boxes of the text lines found. */
  readonly lines: readonly Box[];
  /** Stroke pixels of the glyphs in those lines (for the mostly-text measure). */
  readonly textPixels: number;
  /** Glyph-like components left out of every line (isolated characters, symbols). */
  readonly orphans: number;
}

/** Distances at which a stroke pixel's ground is looked for, px: thin and bold strokes. */
const RADII = [2, 6] as const;
/** How much brighter (or darker) than its ground a stroke pixel is (0–255). */
const STROKE_CONTRAST = 48;
/** Glyph heights, px. */
const MIN_HEIGHT = 6;
/** Largest difference between the peak levels of one line's glyphs. */
const PEAK_SPREAD = 16;
/** Largest difference of tint (hue signature) within a glyph's strongest pixels, and between a line's glyphs. */
const TINT_SPREAD = 24;
/** The same, for pixels that went through lossy compression (Lossy Image Compression 01). */
const LOSSY_TINT_SPREAD = 96;
/** Widest gap between neighbouring glyphs of a line, in glyph heights ( a monospaced word space is about 1.3: such a word joins its line afterwards). */
const GAP = 1.2;
const MAX_HEIGHT = 64;

/** Bits of the stroke map: a light stroke on a darker ground, a dark stroke on a lighter one. */
const LIGHT = 1;
const DARK = 2;

/**
 * The stroke map of a plane, in one pass for both polarities, with a one-pixel border of zeros
 * (width w + 2) so that the component walk needs no bounds checks. A pixel is a light (dark)
 * stroke when it is at least STROKE_CONTRAST brighter (darker) than both its neighbours r away
 * to the left and right, or than both above and below, for r in RADII. A stroke narrower than
 * twice the radius passes; the inside of a wide structure (the imaging sector, a colour bar, a
 * panel) and its edges do not. Outside the image is not ground. `out` is cleared by the caller;
 * the stroke pixels' indices in the map are listed in `seeds`, in row order, and counted.
 */
function strokes(p: Uint8Array, w: number, h: number, out: Uint8Array, seeds: Int32Array, only?: Tiles): number {
  const W = w + 2;
  let found = 0;
  const [r1, r2] = RADII;
  const c = STROKE_CONTRAST;
  const size = only?.size ?? w;
  const across = only ? Math.ceil(w / size) : 1;
  for (let y = 0; y < h; y++) {
    const row = y * w;
    const orow = (y + 1) * W + 1;
    const inY = y >= r2 && y + r2 < h;
    const tileRow = only ? Math.floor(y / size) * across : 0;
    for (let t = 0; t < across; t++) {
    if (only && !only.dirty[tileRow + t]) continue;
    const xEnd = Math.min(w, (t + 1) * size);
    for (let x = t * size; x < xEnd; x++) {
      const i = row + x;
      const v = p[i]!;
      let bits = 0;
      if (inY && x >= r2 && x + r2 < w) {
        const a1 = p[i - r1]!, b1 = p[i + r1]!, u1 = p[i - r1 * w]!, d1 = p[i + r1 * w]!;
        const a2 = p[i - r2]!, b2 = p[i + r2]!, u2 = p[i - r2 * w]!, d2 = p[i + r2 * w]!;
        const lo = v - c, hi = v + c; // light: neighbours at or under lo; dark: at or over hi
        if ((a1 <= lo && b1 <= lo) || (u1 <= lo && d1 <= lo) || (a2 <= lo && b2 <= lo) || (u2 <= lo && d2 <= lo)) bits = LIGHT;
        else if ((a1 >= hi && b1 >= hi) || (u1 >= hi && d1 >= hi) || (a2 >= hi && b2 >= hi) || (u2 >= hi && d2 >= hi)) bits = DARK;
      } else {
        bits = borderBits(p, w, h, x, y, r1) | borderBits(p, w, h, x, y, r2);
        if (bits === (LIGHT | DARK)) bits = LIGHT;
      }
      // The map is cleared by the caller: only stroke pixels are written.
      if (bits) { out[orow + x] = bits; seeds[found++] = orow + x; }
    }
    }
  }
  return found;
}

/** Square tiles of `size` pixels, row by row; `dirty` marks the ones to read. */
export interface Tiles { readonly size: number; readonly dirty: Uint8Array }

/** The stroke test near the border, where a side outside the image is not ground. */
function borderBits(p: Uint8Array, w: number, h: number, x: number, y: number, r: number): number {
  const i = y * w + x;
  const v = p[i]!, lo = v - STROKE_CONTRAST, hi = v + STROKE_CONTRAST;
  let bits = 0;
  if (x >= r && x + r < w) {
    if (p[i - r]! <= lo && p[i + r]! <= lo) bits |= LIGHT;
    if (p[i - r]! >= hi && p[i + r]! >= hi) bits |= DARK;
  }
  if (y >= r && y + r < h) {
    if (p[i - r * w]! <= lo && p[i + r * w]! <= lo) bits |= LIGHT;
    if (p[i - r * w]! >= hi && p[i + r * w]! >= hi) bits |= DARK;
  }
  return bits;
}

/**
 * Working buffers, kept between calls (the detector runs frame after frame on one thread).
 * Component labels are not cleared between planes: each plane's labels start above the last
 * plane's (`epoch`), so a label at or under it means "not labelled in this plane".
 */
let work: { stroke: Uint8Array; label: Int32Array; stack: Int32Array; members: Int32Array; seeds: Int32Array; epoch: number } | undefined;
function scratch(n: number): NonNullable<typeof work> {
  if (!work || work.stroke.length < n) work = { stroke: new Uint8Array(n), label: new Int32Array(n), stack: new Int32Array(n), members: new Int32Array(n), seeds: new Int32Array(n), epoch: 0 };
  // Far from overflow: labels restart from zero.
  if (work.epoch > 0x40000000) { work.label.fill(0); work.epoch = 0; }
  return work;
}

interface Glyph {
  x0: number; y0: number; x1: number; y1: number; // inclusive, image coordinates
  count: number; tone: number; clean: number;
  /** The component's label (pieces of touching glyphs share it). */
  label: number;
  /** The strongest stroke level (text is drawn in one colour: its glyphs share it). */
  peak: number;
  /** The tint of its strongest pixels (colour images). */
  tint: number;
}

/** Finds the text lines of one plane: light text on a darker ground and dark text on a lighter one. */
/**
 * `only`: read only these tiles (the parts of a frame that changed since the one before, and
 * their surroundings); strokes elsewhere are taken as absent.
 */
export function detectPlane(plane: Uint8Array, w: number, h: number, tint?: Uint8Array, lossy = false, only?: Tiles): PlaneText {
  // Lossy compression subsamples and smears chroma over thin strokes: the tint test loosens.
  const tintSpread = lossy ? LOSSY_TINT_SPREAD : TINT_SPREAD;
  const W = w + 2;
  const n = W * (h + 2);
  const s = scratch(n);
  s.stroke.fill(0, 0, n);
  const found = strokes(plane, w, h, s.stroke, s.seeds, only);
  if (!found) return { lines: [], textPixels: 0, orphans: 0 };
  const base = s.epoch;
  const { light, dark, top } = glyphsOf(plane, tint, tintSpread, w, h, s, found, base);
  s.epoch = top;
  const out = [linesOf(light, tintSpread, w, h, LIGHT, s.stroke, s.label), linesOf(dark, tintSpread, w, h, DARK, s.stroke, s.label)];
  return { lines: mergeBoxes(out.flatMap((o) => o.lines)), textPixels: out.reduce((a, o) => a + o.textPixels, 0), orphans: out.reduce((a, o) => a + o.orphans, 0) };
}

/** The 8-neighbourhood in the padded map. */
function neighbours(W: number): Int32Array {
  return Int32Array.from([-W - 1, -W, -W + 1, -1, 1, W - 1, W, W + 1]);
}

/**
 * The glyph-like components of both polarities: 8-connected components of stroke pixels of one
 * polarity (a pixel has one), walked from the stroke pass's seeds in row order, with labels
 * above `base`. Answers each polarity's glyphs and the last label given.
 */
function glyphsOf(plane: Uint8Array, tint: Uint8Array | undefined, tintSpread: number, w: number, h: number, s: NonNullable<typeof work>, found: number, base: number): { light: Glyph[]; dark: Glyph[]; top: number } {
  const { stroke, label, stack, members: pixelsOf, seeds } = s;
  const W = w + 2;
  const nb = neighbours(W);
  const light: Glyph[] = [], dark: Glyph[] = [];
  let next = base;
  for (let si = 0; si < found; si++) {
    const seed = seeds[si]!;
    if (label[seed]! > base) continue;
    const bit = stroke[seed]!;
    const isLight = bit === LIGHT;
    next++;
    let sp = 0;
    stack[sp++] = seed;
    label[seed] = next;
    let x0 = W, y0 = h + 2, x1 = -1, y1 = -1, count = 0, tone = 0, peak = 0;
    while (sp > 0) {
      const q = stack[--sp]!;
      const y = (q / W) | 0;
      const x = q - y * W;
      const v = plane[(y - 1) * w + (x - 1)]!;
      const level = isLight ? v : 255 - v;
      pixelsOf[count] = (y - 1) * w + (x - 1);
      count++;
      tone += level;
      if (level > peak) peak = level;
      if (x < x0) x0 = x; if (x > x1) x1 = x; if (y < y0) y0 = y; if (y > y1) y1 = y;
      for (let k = 0; k < 8; k++) {
        const r = q + nb[k]!;
        if ((stroke[r]! & bit) && label[r]! <= base) { label[r] = next; stack[sp++] = r; }
      }
    }
    const gw = x1 - x0 + 1;
    const gh = y1 - y0 + 1;
    if (gh < MIN_HEIGHT || gh > MAX_HEIGHT || count < 8 || gw > gh * 12) continue;
    // Text is drawn in one colour: its strongest pixels share one tint. A colour-flow map's
    // blobs run through the colour scale (yellow to orange to red) at the same brightness.
    let tintLo = 255, tintHi = 0;
    if (tint) {
      for (let m = 0; m < count; m++) {
        const i = pixelsOf[m]!;
        const v = plane[i]!;
        if ((isLight ? v : 255 - v) < peak - PEAK_SPREAD) continue;
        const t = tint[i]!;
        if (t < tintLo) tintLo = t; if (t > tintHi) tintHi = t;
      }
      if (tintHi - tintLo > tintSpread) continue;
    }
    // Glyphs that touch (bold or smoothed fonts) are one wide component: cut it where few
    // stroke pixels join the letters, and judge each piece as a glyph.
    const pieces = gw > gh * 3 + 2 ? splitTouching(label, W, next, x0, y0, x1, y1) : [{ x0, y0, x1, y1, count }];
    const into = isLight ? light : dark;
    for (const p of pieces) {
      const pw = p.x1 - p.x0 + 1, ph = p.y1 - p.y0 + 1;
      if (ph < MIN_HEIGHT || ph > MAX_HEIGHT || pw > ph * 3 + 2 || p.count < 8) continue;
      const fill = p.count / (pw * ph);
      if (fill < 0.08 || (fill > 0.9 && pw > ph / 3)) continue;
      into.push({ x0: p.x0 - 1, y0: p.y0 - 1, x1: p.x1 - 1, y1: p.y1 - 1, count: p.count, tone: tone / count, peak, clean: 0, label: next, tint: (tintLo + tintHi) >> 1 });
    }
  }
  return { light, dark, top: next };
}

/** The text lines of one polarity's glyphs. */
function linesOf(glyphs: Glyph[], tintSpread: number, w: number, h: number, bit: number, stroke: Uint8Array, label: Int32Array): PlaneText {
  if (!glyphs.length) return { lines: [], textPixels: 0, orphans: 0 };
  const W = w + 2;
  // Ground: other strokes of this polarity in a margin around the glyph (speckle and tissue are textured).
  for (const g of glyphs) {
    const m = Math.max(2, Math.round((g.y1 - g.y0 + 1) * 0.25));
    let ring = 0, other = 0;
    for (let y = Math.max(0, g.y0 - m); y <= Math.min(h - 1, g.y1 + m); y++) {
      const row = (y + 1) * W + 1;
      const inRows = y >= g.y0 && y <= g.y1;
      for (let x = Math.max(0, g.x0 - m); x <= Math.min(w - 1, g.x1 + m); x++) {
        if (inRows && x >= g.x0 && x <= g.x1) continue;
        ring++;
        const q = row + x;
        if ((stroke[q]! & bit) && label[q] !== g.label) other++;
      }
    }
    g.clean = ring ? other / ring : 0;
  }
  const cand = glyphs.filter((g) => g.clean <= 0.2).sort((a, b) => a.x0 - b.x0);
  // Lines: union of glyphs that read as neighbours on one line.
  const parent = cand.map((_, i) => i);
  const find = (i: number): number => { while (parent[i] !== i) { parent[i] = parent[parent[i]!]!; i = parent[i]!; } return i; };
  for (let i = 0; i < cand.length; i++) {
    const a = cand[i]!;
    const ha = a.y1 - a.y0 + 1;
    for (let j = i + 1; j < cand.length; j++) {
      const b = cand[j]!;
      const hb = b.y1 - b.y0 + 1;
      const hmax = Math.max(ha, hb);
      if (b.x0 - a.x1 - 1 > hmax * GAP) break; // sorted by x0: later ones only start further right
      const overlap = Math.min(a.y1, b.y1) - Math.max(a.y0, b.y0) + 1;
      if (overlap < 0.5 * Math.min(ha, hb)) continue;
      if (hmax > 2.2 * Math.min(ha, hb)) continue;
      if (Math.abs(a.tone - b.tone) > 48) continue;
      if (b.x0 - a.x1 - 1 > hmax * GAP) continue;
      parent[find(j)] = find(i);
    }
  }
  const groups = new Map<number, Glyph[]>();
  cand.forEach((g, i) => { const r = find(i); (groups.get(r) ?? groups.set(r, []).get(r)!).push(g); });
  interface Line { x0: number; y0: number; x1: number; y1: number; peak: number; tint: number; base: number; tol: number }
  const accepted: Line[] = [];
  const left: Glyph[] = [];
  let textPixels = 0;
  for (const members of groups.values()) {
    const spotless = members.every((g) => g.clean <= 0.02);
    if (members.length < 3 && !(members.length === 2 && spotless)) { left.push(...members); continue; }
    // A line is drawn in one colour: its glyphs peak at one level (within compression noise).
    // Speckle that lines up by chance peaks all over.
    const peaks = members.map((g) => g.peak);
    if (Math.max(...peaks) - Math.min(...peaks) > PEAK_SPREAD) { left.push(...members); continue; }
    const tints = members.map((g) => g.tint);
    if (Math.max(...tints) - Math.min(...tints) > tintSpread) { left.push(...members); continue; }
    // Most glyphs of a line stand on one baseline (descenders and punctuation aside).
    const bottoms = members.map((g) => g.y1).sort((a, b) => a - b);
    const tol = Math.max(2, Math.round(0.15 * (bottoms.at(-1)! - Math.min(...members.map((g) => g.y0)) + 1)));
    let onBase = 0, base = bottoms[0]!;
    for (const b of bottoms) { const n = bottoms.filter((c) => Math.abs(c - b) <= tol).length; if (n > onBase) { onBase = n; base = b; } }
    if (onBase < 0.6 * members.length) { left.push(...members); continue; }
    const line: Line = { x0: w, y0: h, x1: 0, y1: 0, peak: peaks.sort((a, b) => a - b)[peaks.length >> 1]!, tint: tints.sort((a, b) => a - b)[tints.length >> 1]!, base, tol };
    for (const g of members) { line.x0 = Math.min(line.x0, g.x0); line.y0 = Math.min(line.y0, g.y0); line.x1 = Math.max(line.x1, g.x1); line.y1 = Math.max(line.y1, g.y1); textPixels += g.count; }
    accepted.push(line);
  }
  // Words a wide space away (monospaced fonts) join a line found beside them: on its baseline,
  // in its colour, of its height, within two and a half heights of its end.
  let orphans = 0;
  for (let grew = true; grew;) {
    grew = false;
    for (let i = left.length - 1; i >= 0; i--) {
      const g = left[i]!;
      const gh = g.y1 - g.y0 + 1;
      const line = accepted.find((l) => {
        const lh = l.y1 - l.y0 + 1;
        const gap = g.x0 > l.x1 ? g.x0 - l.x1 - 1 : l.x0 > g.x1 ? l.x0 - g.x1 - 1 : 0;
        return gap <= 2.5 * lh && Math.abs(g.peak - l.peak) <= PEAK_SPREAD && Math.abs(g.tint - l.tint) <= tintSpread && Math.abs(g.y1 - l.base) <= l.tol
          && gh <= 1.5 * lh && gh >= lh / 2.2;
      });
      if (!line) continue;
      line.x0 = Math.min(line.x0, g.x0); line.x1 = Math.max(line.x1, g.x1); line.y0 = Math.min(line.y0, g.y0); line.y1 = Math.max(line.y1, g.y1);
      textPixels += g.count;
      left.splice(i, 1);
      grew = true;
    }
  }
  orphans = left.length;
  const lines: Box[] = accepted.map(({ x0, y0, x1, y1 }) => {
    // Padded by a third of the line's height, and out to the image's edge when the line ends
    // within a character of it (a glyph cut off by the edge is too small to be found).
    const lh = y1 - y0 + 1;
    const pad = Math.max(3, Math.round(lh * 0.3));
    const bx0 = x0 - pad - lh <= 0 ? 0 : x0 - pad;
    const by0 = y0 - pad - lh <= 0 ? 0 : y0 - pad;
    const bx1 = x1 + pad + lh >= w - 1 ? w : x1 + pad + 1;
    const by1 = y1 + pad + lh >= h - 1 ? h : y1 + pad + 1;
    return { x: bx0, y: by0, width: bx1 - bx0, height: by1 - by0 };
  });
  return { lines: mergeBoxes(lines), textPixels, orphans };
}

/**
 * The pieces of a wide component: runs of columns holding more than a quarter of its fullest
 * column's stroke pixels (the thin joins between touching letters fall below), each with the
 * rows and pixels it covers; none when the pieces cover less than 60 % of its width.
 */
function splitTouching(label: Int32Array, w: number, id: number, x0: number, y0: number, x1: number, y1: number): { x0: number; y0: number; x1: number; y1: number; count: number }[] {
  const cols = new Int32Array(x1 - x0 + 1);
  for (let y = y0; y <= y1; y++) for (let x = x0; x <= x1; x++) if (label[y * w + x] === id) cols[x - x0]!++;
  let max = 0;
  for (const c of cols) if (c > max) max = c;
  const cut = Math.max(1, Math.floor(max / 4));
  const out: { x0: number; y0: number; x1: number; y1: number; count: number }[] = [];
  for (let i = 0; i < cols.length;) {
    if (cols[i]! <= cut) { i++; continue; }
    let j = i;
    while (j + 1 < cols.length && cols[j + 1]! > cut) j++;
    let py0 = y1, py1 = y0, count = 0;
    for (let y = y0; y <= y1; y++) for (let x = x0 + i; x <= x0 + j; x++) {
      if (label[y * w + x] === id) { count++; if (y < py0) py0 = y; if (y > py1) py1 = y; }
    }
    out.push({ x0: x0 + i, y0: py0, x1: x0 + j, y1: py1, count });
    i = j + 1;
  }
  // Letters fill most of the columns of a word, with thin joins between them; a trace (an ECG,
  // a caliper line) is thin along most of its length with a few tall spikes: not text.
  const covered = out.reduce((s, p) => s + p.x1 - p.x0 + 1, 0);
  return covered >= 0.6 * cols.length ? out : [];
}

/** Merges overlapping or touching boxes until none overlap. */
export function mergeBoxes(boxes: readonly Box[]): Box[] {
  let out = boxes.map((b) => ({ ...b }));
  for (let changed = true; changed;) {
    changed = false;
    const next: Box[] = [];
    for (const b of out) {
      const k = next.findIndex((o) => b.x <= o.x + o.width && o.x <= b.x + b.width && b.y <= o.y + o.height && o.y <= b.y + b.height);
      if (k < 0) { next.push(b); continue; }
      const o = next[k]!;
      const x = Math.min(o.x, b.x), y = Math.min(o.y, b.y);
      next[k] = { x, y, width: Math.max(o.x + o.width, b.x + b.width) - x, height: Math.max(o.y + o.height, b.y + b.height) - y };
      changed = true;
    }
    out = next;
  }
  return out.sort((a, b) => a.y - b.y || a.x - b.x);
}
