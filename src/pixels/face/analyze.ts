/**
 * Does a volume show a face, and where is the cut that removes it?
 *
 * Model-free, on the reduced LPS volume (docs/pixels.md, "Faces"):
 *  1. the head is the largest connected body above a threshold (-400 HU for CT, half of
 *     Otsu's threshold for MR and PET);
 *  2. its anterior surface is seen as a depth map (for each height and left-right position,
 *     how far forward the skin comes);
 *  3. landmarks on that map: the nose tip (a narrow ridge on the midline, with alike cheeks
 *     either side and a recess above it), the nasion (the deepest point of the profile under
 *     the line from the tip to the forehead), the glabella and the chin; the line from the
 *     nasion to the tip gives the head's pitch;
 *  4. the cut is two planes in the face's own frame, placed from the nasion, rotated by the
 *     pitch and scaled by the head's size: a steep one from above the brow through the eyes,
 *     and a shallow one, in the manner of quickshear, that passes in front of the brain stem
 *     and the temporal poles and under the frontal lobes. A voxel is removed when it is in
 *     front of both. Everything above the brow and behind the cut is left untouched.
 * Guards make every doubtful case "uncertain" (withheld): no nasion, a cut that would reach
 * deep into the head, a nose where no nose is on a head of this size, a "nose" with solid
 * tissue behind it (a brow or a bump of the forehead: a nose has the nasal cavity behind it).
 * A body with no head in view, or a head that ends above the eyes, has no face in view.
 */
import type { Vec3 } from '../geometry.js';
import type { Volume } from './volume.js';

/** Bumped whenever the analysis or the cut changes: stored decisions of older versions are recomputed. */
export const FACE_ALGORITHM = 'face-cut-5';

/** A half-space boundary in patient coordinates: a point p is in front of it when n·p < d. */
export interface CutPlane {
  readonly n: Vec3;
  readonly d: number;
}

export type FaceAnalysis =
  | { readonly kind: 'no-face'; readonly why: string }
  | { readonly kind: 'deface'; readonly planes: readonly CutPlane[]; readonly landmarks: Readonly<Record<string, Vec3>>; readonly confidence: string }
  | { readonly kind: 'uncertain'; readonly why: string };

/*
 * The passes over every voxel below are small functions over typed arrays and numbers, each
 * called the same way every time: an analysis runs once a series, so a pass written inline in
 * a larger function was compiled on the stack (OSR) and often thrown away at the next call; in
 * the gateway a cross-section pass then took 15–85 ms in the interpreter instead of 2–3 ms.
 */

/** lohi = [lowest, highest] of the finite values (Infinity, -Infinity: none). */
function finiteRange(values: Float32Array, lohi: Float64Array): void {
  let lo = Infinity;
  let top = -Infinity;
  const n = values.length;
  for (let i = 0; i < n; i++) {
    const v = values[i]!;
    if (v === v) { if (v < lo) lo = v; if (v > top) top = v; } // v === v: not NaN
  }
  lohi[0] = lo;
  lohi[1] = top;
}

/** Counts the finite values into `fine` (bin width 1 / perBin from lo, the last bin open); returns how many. */
function fineHistogram(values: Float32Array, lo: number, perBin: number, fine: Int32Array): number {
  const last = fine.length - 1;
  const n = values.length;
  let total = 0;
  for (let i = 0; i < n; i++) {
    const v = values[i]!;
    if (v === v) { const b = ((v - lo) * perBin) | 0; fine[b < last ? b : last]!++; total++; }
  }
  return total;
}

/** Otsu's threshold of the finite values, with the top 0.5 % clipped (a few bright voxels do not pull it up). */
function otsu(values: Float32Array): number {
  // One pass for the range, one for a fine histogram: the 99.5th percentile from it, then
  // Otsu's method over 256 bins up to that value.
  const lohi = new Float64Array(2);
  finiteRange(values, lohi);
  const lo = lohi[0]!;
  const top = lohi[1]!;
  if (!(top > lo)) return top;
  const FINE = 4096;
  const fine = new Int32Array(FINE);
  const fw = (top - lo) / FINE;
  const total = fineHistogram(values, lo, 1 / fw, fine);
  let acc = 0;
  let cut = FINE - 1;
  for (let b = 0; b < FINE; b++) { acc += fine[b]!; if (acc >= 0.995 * total) { cut = b; break; } }
  const hi = lo + (cut + 1) * fw;
  const bins = 256;
  const hist = new Float64Array(bins);
  // Re-bin the fine histogram (values above the cut fall in the last bin).
  for (let b = 0; b < FINE; b++) {
    const v = lo + (b + 0.5) * fw;
    hist[Math.max(0, Math.min(bins - 1, Math.floor(((v - lo) / (hi - lo)) * bins)))]! += fine[b]!;
  }
  const w = (hi - lo) / bins;
  let sum = 0;
  for (let i = 0; i < bins; i++) sum += i * hist[i]!;
  let sumB = 0;
  let wB = 0;
  let best = 0;
  let at = 0;
  for (let i = 0; i < bins; i++) {
    wB += hist[i]!;
    if (wB === 0) continue;
    const wF = total - wB;
    if (wF === 0) break;
    sumB += i * hist[i]!;
    const mB = sumB / wB;
    const mF = (sum - sumB) / wF;
    const between = wB * wF * (mB - mF) ** 2;
    if (between > best) { best = between; at = i; }
  }
  return lo + (at + 1) * w;
}

/** Marks the mask's body voxels -1 in `label`, a copy of the volume with a one-voxel border. */
function padLabels(mask: Uint8Array, label: Int32Array, nx: number, ny: number, nz: number): void {
  const px = nx + 2;
  const plane = px * (ny + 2);
  for (let z = 0; z < nz; z++) {
    for (let y = 0; y < ny; y++) {
      const from = (z * ny + y) * nx;
      const to = (z + 1) * plane + (y + 1) * px + 1;
      for (let x = 0; x < nx; x++) if (mask[from + x]) label[to + x] = -1;
    }
  }
}

/** Labels `next` the unlabelled (-1) body 6-connected to voxel i (itself -1); returns its size. */
function flood(label: Int32Array, queue: Int32Array, i: number, next: number, px: number, plane: number): number {
  let head = 0;
  let tail = 0;
  queue[tail++] = i;
  label[i] = next;
  while (head < tail) {
    const v = queue[head++]!;
    let u = v - 1;
    if (label[u] === -1) { label[u] = next; queue[tail++] = u; }
    u = v + 1;
    if (label[u] === -1) { label[u] = next; queue[tail++] = u; }
    u = v - px;
    if (label[u] === -1) { label[u] = next; queue[tail++] = u; }
    u = v + px;
    if (label[u] === -1) { label[u] = next; queue[tail++] = u; }
    u = v - plane;
    if (label[u] === -1) { label[u] = next; queue[tail++] = u; }
    u = v + plane;
    if (label[u] === -1) { label[u] = next; queue[tail++] = u; }
  }
  return tail;
}

/** mask = 1 where `label` (padded) is `keep`, else 0. */
function unpadLabels(label: Int32Array, keep: number, mask: Uint8Array, nx: number, ny: number, nz: number): void {
  const px = nx + 2;
  const plane = px * (ny + 2);
  for (let z = 0; z < nz; z++) {
    for (let y = 0; y < ny; y++) {
      const from = (z * ny + y) * nx;
      const to = (z + 1) * plane + (y + 1) * px + 1;
      for (let x = 0; x < nx; x++) mask[from + x] = keep > 0 && label[to + x] === keep ? 1 : 0;
    }
  }
}

/** The index of the first -1 in `label` at or after `from` (label.length: none). */
function nextUnlabelled(label: Int32Array, from: number): number {
  const n = label.length;
  let i = from;
  while (i < n && label[i] !== -1) i++;
  return i;
}

/**
 * The largest 6-connected component of a mask, in place. Returns its size. The labels live in
 * a copy with a one-voxel border of background, so that no neighbour needs a bounds check.
 */
function keepLargest(mask: Uint8Array, nx: number, ny: number, nz: number): number {
  const px = nx + 2;
  const plane = px * (ny + 2);
  const label = new Int32Array(plane * (nz + 2));
  // -1: body not yet labelled; 0: background (and the border); n > 0: component n.
  padLabels(mask, label, nx, ny, nz);
  const queue = new Int32Array(mask.length);
  let best = 0;
  let bestLabel = 0;
  let next = 1;
  for (let i = nextUnlabelled(label, 0); i < label.length; i = nextUnlabelled(label, i + 1)) {
    const size = flood(label, queue, i, next, px, plane);
    if (size > best) { best = size; bestLabel = next; }
    next++;
  }
  unpadLabels(label, bestLabel, mask, nx, ny, nz);
  return best;
}

/** mask[i] = 1 where data[i] > thr (NaN is not); returns how many. */
function threshold(data: Float32Array, thr: number, mask: Uint8Array): number {
  let n = 0;
  for (let i = 0; i < data.length; i++) if (data[i]! > thr) { mask[i] = 1; n++; }
  return n;
}

interface Slice { count: number; x0: number; x1: number; y0: number; y1: number }

/**
 * One cross-section (height z) of the mask: counts its body voxels per column and per row, and
 * fills its row of the depth map with the anteriority of each column's first body voxel.
 * Returns how many body voxels it has.
 */
function scanSection(mask: Uint8Array, nx: number, ny: number, z: number, front: number, g: number, ant: Float32Array, colCount: Int32Array, rowCount: Int32Array): number {
  colCount.fill(0);
  rowCount.fill(0);
  let count = 0;
  const antAt = z * nx;
  for (let y = 0; y < ny; y++) {
    const rowAt = (z * ny + y) * nx;
    let inRow = 0;
    for (let x = 0; x < nx; x++) {
      if (!mask[rowAt + x]) continue;
      if (ant[antAt + x] !== ant[antAt + x]) ant[antAt + x] = front - y * g; // first (most anterior) body voxel
      colCount[x]!++;
      inRow++;
    }
    rowCount[y] = inRow;
    count += inRow;
  }
  return count;
}

/**
 * Cross-sections (extents of the columns and rows with at least `core` voxels of body) and the
 * anterior depth map: ant[z * nx + x] = how far forward (mm, -y) the body comes (NaN: none).
 * `front` is the anteriorness of row y = 0.
 */
function sections(mask: Uint8Array, nx: number, ny: number, nz: number, front: number, g: number, core: number): { slices: Slice[]; ant: Float32Array } {
  const slices: Slice[] = [];
  const ant = new Float32Array(nz * nx).fill(Number.NaN);
  const colCount = new Int32Array(nx);
  const rowCount = new Int32Array(ny);
  const thin = Math.max(2, Math.ceil(12 / g));
  const extent = new Int32Array(2);
  for (let z = 0; z < nz; z++) {
    // Where the field of view cuts the face, its edge stands for the surface: a nose cut by it
    // is still a ridge (and the guards below keep an edge from passing for a nose).
    const count = scanSection(mask, nx, ny, z, front, g, ant, colCount, rowCount);
    // Runs of such columns thinner than 12 mm do not count: the side plates of a head holder,
    // tall and apart from the head, do not widen it.
    extentOfRuns(colCount, nx, core, thin, extent);
    const s: Slice = { count, x0: extent[0]!, x1: extent[1]!, y0: ny, y1: -1 };
    for (let y = 0; y < ny; y++) if (rowCount[y]! >= core) { if (y < s.y0) s.y0 = y; s.y1 = y; }
    slices.push(s);
  }
  return { slices, ant };
}

/**
 * [first, last] of the columns with counts[i] >= min, over the runs of them at least
 * `minRun` long: a thin run apart from the rest (the side plate of a head holder) does not
 * count, while gaps inside the body (a hollow phantom) do not split it. Written to out; [n, -1]
 * when there is none.
 */
function extentOfRuns(counts: Int32Array, n: number, min: number, minRun: number, out: Int32Array): void {
  let first = n;
  let last = -1;
  let from = -1;
  for (let i = 0; i <= n; i++) {
    if (i < n && counts[i]! >= min) { if (from < 0) from = i; continue; }
    if (from >= 0 && i - from >= minRun) { if (from < first) first = from; last = i - 1; }
    from = -1;
  }
  out[0] = first;
  out[1] = last;
}

/**
 * The share of body voxels in a box 20–70 mm (scaled) behind a point of the midline profile (its
 * height above the volume's origin and its anteriority, mm) along an axis of pitch phi (positive:
 * rising towards the back), 20 mm to either side of column x0, and from 8 mm below to 24 mm
 * above the axis (scaled). Nearest voxels.
 */
function solidBehind(mask: Uint8Array, vol: Volume, [zMm, antMm]: [number, number], x0: number, phi: number, scale: number): number {
  const { nx, ny, nz, spacing: g, origin } = vol;
  const c = Math.cos(phi);
  const s = Math.sin(phi);
  let body = 0;
  let all = 0;
  const half = Math.round((20 * scale) / g);
  const xFrom = Math.max(0, x0 - half);
  const xTo = Math.min(nx - 1, x0 + half);
  for (let t = 20 * scale; t <= 70 * scale; t += g / 2) {
    for (let u = -8 * scale; u <= 24 * scale; u += g / 2) {
      // Back along the axis by t, across it (up the face) by u.
      const ant = antMm - t * c + u * s;
      const z = Math.round((zMm + t * s + u * c) / g);
      const y = Math.round((-origin[1] - ant) / g);
      if (z < 0 || z >= nz || y < 0 || y >= ny) continue;
      const row = (z * ny + y) * nx;
      for (let x = xFrom; x <= xTo; x++) { all++; body += mask[row + x]!; }
    }
  }
  return all ? body / all : 0;
}

/**
 * Body voxels the two planes would remove that lie `guardFrom` mm or more above the nose tip (in
 * the face's frame: h = (A - nAnt) sinP + (z - zN) cosP, A = -y) and 30 mm or more behind the
 * skin of their column. The planes do not depend on x: a voxel is removed when, for every plane,
 * n1·y + n2·z < d.
 */
function deepInCut(mask: Uint8Array, ant: Float32Array, vol: Volume, f: { nAnt: number; zN: number; sinP: number; cosP: number; guardFrom: number }, p1: CutPlane, p2: CutPlane): number {
  const { nx, ny, nz, spacing: g, origin } = vol;
  let deep = 0;
  for (let z = 0; z < nz; z++) {
    const pz = origin[2] + z * g;
    for (let y = 0; y < ny; y++) {
      const py = origin[1] + y * g;
      const antY = -py;
      if ((antY - f.nAnt) * f.sinP + (pz - f.zN) * f.cosP < f.guardFrom) continue;
      if (!(p1.n[1] * py + p1.n[2] * pz < p1.d) || !(p2.n[1] * py + p2.n[2] * pz < p2.d)) continue;
      deep += deepInRow(mask, ant, (z * ny + y) * nx, z * nx, nx, antY);
    }
  }
  return deep;
}

/** Body voxels of one row whose column's skin lies 30 mm or more in front of the row (antY). */
function deepInRow(mask: Uint8Array, ant: Float32Array, rowAt: number, antAt: number, nx: number, antY: number): number {
  let deep = 0;
  for (let x = 0; x < nx; x++) {
    if (!mask[rowAt + x]) continue;
    const front = ant[antAt + x]!;
    if (front === front && front - antY >= 30) deep++;
  }
  return deep;
}

const median = (a: number[]): number => { const s = [...a].sort((p, q) => p - q); return s[Math.floor(s.length / 2)] ?? Number.NaN; };

/** The body threshold of a volume: air for CT, Otsu's background for everything else. */
export function bodyThreshold(vol: Volume, modality: string): number {
  if (modality === 'CT') return -400;
  // Otsu on MR splits background from tissue; half of it keeps the skin's partial volumes.
  return otsu(vol.data) * 0.5;
}

export function analyzeFace(vol: Volume, modality: string): FaceAnalysis {
  const { nx, ny, nz, spacing: g, origin } = vol;
  const thr = bodyThreshold(vol, modality);
  const mask = new Uint8Array(nx * ny * nz);
  const above = threshold(vol.data, thr, mask);
  const size = keepLargest(mask, nx, ny, nz);
  if (size * g ** 3 < 200_000) {
    // Nothing head-sized is connected. With little signal in view that is not a head; with much
    // (a body the threshold broke up), it cannot be told: withheld.
    if (above * g ** 3 < 400_000) return { kind: 'no-face', why: 'no body large enough for a head' };
    return { kind: 'uncertain', why: 'the body in view cannot be separated from the background' };
  }

  // Cross-sections and the anterior depth map: ant[z][x] = how far forward (mm, -y) the body comes.
  // A cross-section's extents count only columns and rows with at least 20 mm of body in them:
  // a CT table, a head holder or a coil's shell (thin, and often joined to the head) does not
  // widen it.
  const { slices, ant } = sections(mask, nx, ny, nz, -origin[1], g, Math.ceil(20 / g));
  const width = (s: Slice): number => (s.x1 - s.x0 + 1) * g;
  const depth = (s: Slice): number => (s.y1 - s.y0 + 1) * g;
  // An adult head's cross-section: longer than wide (a neck, a knee or a limb is about round).
  const headLike = slices.map((s) => s.count > 0 && s.x1 >= 0 && s.y1 >= 0 && width(s) >= 110 && width(s) <= 235 && depth(s) >= 140 && depth(s) <= 280 && depth(s) / width(s) >= 1.05);
  // The head: the longest run of head-like cross-sections.
  let run = 0;
  let bestRun = 0;
  let runEnd = -1;
  for (let z = 0; z < nz; z++) {
    run = headLike[z] ? run + 1 : 0;
    if (run > bestRun) { bestRun = run; runEnd = z; }
  }
  const headInView = bestRun * g >= 40;
  // Without an adult head's cross-sections (a child's head, a face-only field of view) the
  // landmarks are still searched, over the whole body in view.
  const headLo = headInView ? runEnd - bestRun + 1 : 0;
  const headHi = headInView ? runEnd : nz - 1;
  const zTop = slices.reduce((t, s, z) => (s.count > 0 ? z : t), 0);
  const zBottom = slices.findIndex((s) => s.count > 0);
  const topArea = slices[zTop]!.count;
  const maxArea = Math.max(1, ...slices.slice(headLo, headHi + 1).map((s) => s.count));
  const vertexInView = zTop < nz - 1 || topArea < 0.3 * maxArea;
  const xMid = median(slices.slice(headLo, headHi + 1).filter((s) => s.count > 0 && s.x1 >= 0).map((s) => (s.x0 + s.x1) / 2));
  const headDepth = headInView ? median(slices.slice(headLo, headHi + 1).map(depth)) : 190;
  const scale = Math.min(1.2, Math.max(0.6, headDepth / 190));
  const A = (z: number, x: number): number => (z >= 0 && z < nz && x >= 0 && x < nx ? ant[z * nx + x]! : Number.NaN);

  // Nose tip: the largest prominence over the surface 22 mm to either side, near the midline.
  const w = Math.round((22 * scale) / g);
  // The nose is on the midline (an eye, 30 mm out, is the usual impostor in EPI).
  const xr = Math.round(15 / g);
  let best = 0;
  let bz = -1;
  let bx = -1;
  const zFrom = zBottom;
  const zTo = vertexInView ? Math.min(nz - 1, zTop - Math.round((90 * scale) / g)) : nz - 1;
  // Per height, the most prominent candidate and its column.
  const zBest = new Float64Array(nz);
  const zX = new Int32Array(nz).fill(-1);
  // Whether that candidate's lip (10 mm below it) is in view rather than beyond the field of view.
  const zLip = new Uint8Array(nz);
  for (let z = zFrom; z <= zTo; z++) {
    for (let x = Math.round(xMid) - xr; x <= Math.round(xMid) + xr; x++) {
      const c = A(z, x);
      if (Number.isNaN(c)) continue;
      const l = A(z, x - w);
      const r = A(z, x + w);
      const side = Math.max(Number.isNaN(l) ? -Infinity : l, Number.isNaN(r) ? -Infinity : r);
      if (side === -Infinity) continue; // a thin object, not a face
      // The cheeks either side of a nose are alike; an eye has the nose on one side and the temple on the other.
      if (Number.isNaN(l) || Number.isNaN(r) || Math.abs(l - r) > 15 * scale) continue;
      // A nose stands 8–45 mm out of the face and has a lip below it; more, or nothing below,
      // is the edge of the field of view or the end of the body.
      // (A field of view that ends under the nose, as a head CT's often does, has no lip in it.)
      const below = z - Math.round((10 * scale) / g);
      if (c - side > 45 * scale || (below >= zBottom && Number.isNaN(A(below, x)))) continue;
      // A nose is narrow: 12 mm to either side of its tip the surface lies at least 5 mm behind
      // it (a brain's or a skull's front, round over 60 mm or more, falls about 1 mm there).
      const n12 = Math.max(1, Math.round((12 * scale) / g));
      const l12 = A(z, x - n12);
      const r12 = A(z, x + n12);
      if (!(c - (Number.isNaN(l12) ? -Infinity : l12) >= 5 && c - (Number.isNaN(r12) ? -Infinity : r12) >= 5)) continue;
      // The nose stands out above too: the profile 15–45 mm above its tip (the dorsum and the
      // nasion) lies well behind it; a chin's or a lip's does not.
      let deepest = Infinity;
      for (let d = Math.round((15 * scale) / g); d <= Math.round((45 * scale) / g); d++) { const u = A(z + d, x); if (!Number.isNaN(u) && u < deepest) deepest = u; }
      if (deepest === Infinity || c - deepest < 6) continue;
      const p = Math.min(c - side, 1.5 * (c - deepest));
      if (p > zBest[z]!) { zBest[z] = p; zX[z] = x; zLip[z] = below >= zBottom ? 1 : 0; }
    }
  }
  for (let z = zFrom; z <= zTo; z++) if (zBest[z]! > best) { best = zBest[z]!; bz = z; bx = zX[z]!; }
  // Which ridge is the nose? The one that stands out most, unless:
  //  - it is a brow or a bump of the forehead: a ridge 15–90 mm below it stands 5 mm or more in
  //    front of it and has the face under it (what lies 15–40 mm below it stays within 25 mm
  //    behind its tip, the median, and nothing there stands 5 mm in front of it). The highest
  //    such ridge is the nose. (Session 10: a bump on the forehead of a head phantom, taken for
  //    the nose, put the cut through the frontal lobe.)
  //  - it is a chin: a raised chin can stand out more than the nose above it. When the ridge has
  //    no face under it (a chin has the neck), the face is in view from below it (30 mm of body
  //    under it) and a ridge 15–90 mm above it stands out at least half as well, with its lip in
  //    view, the highest such ridge is the nose.
  // A field of view that ends under the ridge (a slab above the mouth, a head CT cut at the nose)
  // keeps the ridge that stands out most: no chin is in view to be taken for a nose.
  // A ridge counts where its prominence peaks within 8 mm up and down.
  const peakR = Math.max(1, Math.round(8 / g));
  const isPeak = (z: number): boolean => {
    const p = zBest[z]!;
    if (p < Math.max(8, 0.5 * best) || !zLip[z]) return false;
    for (let d = -peakR; d <= peakR; d++) if (d !== 0 && z + d >= zFrom && z + d <= zTo && zBest[z + d]! > p) return false;
    return true;
  };
  // The most forward point of the midline band (5 columns) at a height, NaN where there is none.
  const forward = (z: number, x: number): number => {
    let m = Number.NaN;
    for (let k = x - 2; k <= x + 2; k++) { const v = A(z, k); if (!Number.isNaN(v) && !(v <= m)) m = v; }
    return m;
  };
  // The face under a ridge: 15–40 mm below it, in view over at least half that band, within 25 mm
  // behind its tip (median) and nothing 5 mm in front of it. (Under a raised chin the neck lay
  // 25–35 mm behind it on the phantoms; echo-planar series often lose the mouth and chin, and
  // then no ridge has a face under it.)
  const faceUnder = (z: number, x: number): boolean => {
    const tip = A(z, x);
    const from = Math.round((15 * scale) / g);
    const to = Math.max(from + 1, Math.round((40 * scale) / g));
    const behind: number[] = [];
    for (let d = from; d <= to && z - d >= zBottom; d++) { const m = forward(z - d, x); behind.push(Number.isNaN(m) ? Infinity : tip - m); }
    return behind.length * 2 >= to - from + 1 && median(behind) <= 25 * scale && Math.min(...behind) > -5;
  };
  if (best >= 8) {
    const under = bz - Math.round((15 * scale) / g);
    for (let z = under; z >= Math.max(zFrom, bz - Math.round((90 * scale) / g)); z--) {
      if (!isPeak(z) || !(A(z, zX[z]!) >= A(bz, bx) + 5) || !faceUnder(z, zX[z]!)) continue;
      bz = z;
      bx = zX[z]!;
      best = zBest[z]!;
      break;
    }
  }
  if (best >= 8 && bz - Math.round((30 * scale) / g) >= zBottom && !faceUnder(bz, bx)) {
    const lowest = bz + Math.round((15 * scale) / g);
    for (let z = Math.min(zTo, bz + Math.round((90 * scale) / g)); z >= lowest; z--) {
      if (!isPeak(z)) continue;
      bz = z;
      bx = zX[z]!;
      best = zBest[z]!;
      break;
    }
  }
  const noseFound = best >= 8 && bz >= 0;
  if (!noseFound && !headInView) return { kind: 'no-face', why: 'no head in view' };
  if (!noseFound) {
    // No nose. A head whose lowest slice is well above where the eyes would be has no face in view.
    if (vertexInView && (zTop - zBottom) * g < 100 * scale) return { kind: 'no-face', why: 'the head ends above the eyes' };
    return { kind: 'uncertain', why: 'a head is in view but its face landmarks were not found' };
  }
  // Refine the tip: the most anterior point within 8 mm, at a height where the ridge still
  // stands out as a nose (a lip or a chin thrust forward under it is not the tip).
  const r8 = Math.round(8 / g);
  let nz0 = bz;
  let nx0 = bx;
  for (let z = Math.max(zFrom, bz - r8); z <= Math.min(zTo, bz + r8); z++) {
    if (!(zBest[z]! > 0)) continue;
    for (let x = bx - r8; x <= bx + r8; x++) if (A(z, x) > A(nz0, nx0)) { nz0 = z; nx0 = x; }
  }
  // The midline profile: the most forward point within 2 voxels of the tip's column (robust to a
  // hole in the thin skin of the nasal bridge).
  const profile = (z: number): number => forward(z, nx0);
  const nAnt = A(nz0, nx0);
  const mm = (z: number): number => z * g;
  // Nasion: the deepest point of the profile below the straight line from the tip to the
  // forehead (80 mm above the tip, or the highest point in view), 8–60 mm above the tip;
  // glabella: the most forward point 5–30 mm above the nasion; chin: the most forward point
  // 40–100 mm below the tip with a fold between it and the nose.
  const zF = Math.min(zTop, nz0 + Math.round((80 * scale) / g));
  const aF = profile(zF);
  let sZ = -1;
  let sDepth = 0;
  for (let z = nz0 + Math.round(8 / g); z <= Math.min(zF - 1, nz0 + Math.round((60 * scale) / g)); z++) {
    const v = profile(z);
    if (Number.isNaN(v) || Number.isNaN(aF)) continue;
    const line = nAnt + ((aF - nAnt) * (z - nz0)) / (zF - nz0);
    if (line - v > sDepth) { sDepth = line - v; sZ = z; }
  }
  let gZ = -1;
  if (sZ >= 0) {
    for (let z = sZ + Math.round(5 / g); z <= Math.min(zTop, sZ + Math.round((30 * scale) / g)); z++) {
      const v = profile(z);
      if (!Number.isNaN(v) && (gZ < 0 || v > profile(gZ))) gZ = z;
    }
  }
  const nasionOk = sZ >= 0 && gZ >= 0 && sDepth >= 3 && nAnt - profile(sZ) >= 8 && nAnt - profile(sZ) <= 45 * scale;
  // A ridge with no head around it and no nasion above it is not a nose (a knee's patella).
  if (!headInView && !nasionOk) return { kind: 'no-face', why: 'no head in view' };
  let cZ = -1;
  for (let z = nz0 - Math.round((40 * scale) / g); z >= Math.max(zBottom, nz0 - Math.round((100 * scale) / g)); z--) {
    const v = profile(z);
    if (!Number.isNaN(v) && (cZ < 0 || v > profile(cZ))) cZ = z;
  }
  let chinOk = false;
  if (cZ >= 0 && cZ > zBottom + 1) {
    let fold = Infinity;
    for (let z = cZ; z <= nz0; z++) fold = Math.min(fold, profile(z));
    chinOk = profile(cZ) - fold >= 2 && nAnt - profile(cZ) < 45 * scale;
  }
  // Without a nasion above the tip the cut has no measured anchor under the frontal lobes.
  // Echo-planar series (diffusion, fMRI) lose it to distortion and signal loss by the frontal
  // sinus while the nose stands clear: on a clear nose of a head in view, the nasion is placed
  // where it lies on an adult head in a neutral posture, a 50 mm nasal dorsum leaning 28° from
  // the vertical (44 mm above the tip and 23 mm behind it), moved 4 mm up so that an error
  // removes more of the brow rather than leave the eyes. The guards below still refuse a cut
  // that would reach into the head.
  // Nor is a nasion whose pitch lies beyond what the cut can follow (±0.5 rad from the neutral
  // lean, the clamp below): such a profile is distorted (echo-planar) rather than a head that
  // far tipped, and a clamped pitch would put the cut where neither landmark says.
  // A nasion is placed only under a clear nose: a ridge standing 20 mm or more proud of the
  // cheeks. A lower one may be a brow: on a real diffusion series (Canon, the face below the
  // eyes lost to distortion) a 15 mm bump of the forehead was taken for the nose, and the cut
  // from a nasion placed above it took the frontal pole (session 9).
  const measuredLean = nasionOk ? Math.atan2(nAnt - profile(sZ), mm(sZ) - mm(nz0)) : 0;
  const estimated = !nasionOk || Math.abs((28 * Math.PI) / 180 - measuredLean) > 0.5;
  if (estimated && !(headInView && best >= 20)) return { kind: 'uncertain', why: 'no nasion was found above the nose' };
  const nasionAnt = estimated ? nAnt - 23 * scale : profile(sZ);
  const nasionZ = estimated ? mm(nz0) + 48 * scale : mm(sZ);
  if (vertexInView && (mm(zTop) - mm(nz0) < 80 * scale || mm(zTop) - mm(nz0) > 260 * scale)) {
    return { kind: 'uncertain', why: 'the nose found is not where a nose is on a head of this size' };
  }
  // Pitch: in a neutral posture the line from the nasion to the tip of the nose leans about
  // 28° forward from the vertical; more when the chin is raised, less when it is lowered.
  const t = Math.atan2(nAnt - nasionAnt, nasionZ - mm(nz0));
  const phi = Math.max(-0.5, Math.min(0.5, (28 * Math.PI) / 180 - t));
  // Behind a nose lie the nasal cavity and the maxillary sinuses: air, or no signal. Behind a
  // brow or a bump of the forehead lies the brain. Measured in a box 20–70 mm behind the tip,
  // 40 mm wide, from 8 mm below the tip's height to 24 mm above it, along an axis 0.2 rad (11°)
  // steeper towards the back than the cut's pitch: the pitch reads -8° to -14° on real heads
  // held straight (their dorsum leans more than the 28° taken as neutral), and a box on that
  // axis reached the palate behind the nose; without the pitch, it did so behind a lowered
  // chin's nose. On the 64 real series and the two real heads of ../shared (session 10), the body
  // filled 37–72 % of the box behind every nose that was cut cleanly and 84–99 % behind the six
  // ridges that were brows or bumps (among them the Canon diffusion series whose cut took the
  // frontal pole); 45–71 % on the head phantoms (which have a nasal cavity and maxillary
  // sinuses). At 78 % or more, the ridge is not taken for a nose.
  const fill = solidBehind(mask, vol, [mm(nz0), nAnt], nx0, phi + 0.2, scale);
  if (fill >= 0.78) return { kind: 'uncertain', why: 'the ridge taken for the nose has solid tissue behind it, not the nasal cavity' };
  const sinP = Math.sin(phi);
  const cosP = Math.cos(phi);
  const zN = origin[2] + mm(nz0);
  // Face frame: h (up the face), a (behind the nose tip), from anteriorness A and height Z.
  const toFace = (antMm: number, zMm: number): [number, number] => {
    const dA = antMm - nAnt;
    const dZ = zMm - zN;
    return [dA * sinP + dZ * cosP, -dA * cosP + dZ * sinP];
  };
  // Both lines are placed from the nasion (the tip gives only the pitch):
  // line 1 (steep): from 5 mm in front of the nasion and 20 mm above it (the brow), 2 mm back per mm down;
  // line 2 (shallow): through 28 mm behind and 15 mm below the nasion, 0.45 mm back per mm down.
  const [hS, aS] = toFace(nasionAnt, origin[2] + nasionZ);
  const lines = [
    { h0: hS + 20 * scale, a0: aS - 5 * scale, k: 2.0 },
    // (A nasion placed from the nose may sit too high: the shallow line then keeps 10 mm further forward.)
    { h0: hS - 15 * scale, a0: aS + (estimated ? 18 : 28) * scale, k: 0.45 },
  ];
  // a < a0 + k (h0 - h)  ⇔  a + k h - (a0 + k h0) < 0, with h and a linear in (y, z):
  // A = -y; h = (A - nAnt) sinP + (z - zN) cosP; a = -(A - nAnt) cosP + (z - zN) sinP.
  const planes: CutPlane[] = lines.map(({ h0, a0, k }) => {
    // coefficient of A and of z in a + k h
    const cA = -cosP + k * sinP;
    const cZ2 = sinP + k * cosP;
    const constant = -(cA * nAnt) - cZ2 * zN - (a0 + k * h0);
    // cA * A + cZ2 * z + constant < 0, A = -y
    return { n: [0, -cA, cZ2] as Vec3, d: -constant };
  });
  const at = (z: number, antMm: number, x: number): Vec3 => [origin[0] + x * g, -antMm, origin[2] + mm(z)];
  const landmarks: Record<string, Vec3> = { noseTip: at(nz0, nAnt, nx0), nasion: [origin[0] + nx0 * g, -nasionAnt, origin[2] + nasionZ] };
  if (!estimated) landmarks.glabella = at(gZ, profile(gZ), nx0);
  if (chinOk) landmarks.chin = at(cZ, profile(cZ), nx0);
  // The cut never reaches deep into the head: no body voxel 35 mm or more above the tip (in the
  // face's frame) and 30 mm or more behind the skin of its column may be removed. Landmarks that
  // put the cut there are wrong; the series is withheld rather than cut through the brain.
  // A ridge at the lowest slices with no lip in view may be the bridge of a nose whose tip lies
  // below the field of view (a slab above the mouth): the frontal lobes can then lie less than
  // 35 mm above it, so the guard starts 20 mm above it. (From the tip itself, it withheld a
  // real diffusion series cut cleanly under its nose: the cut's legitimate depth at the nose.)
  const tipAtEdge = !zLip[bz] && (nz0 - zBottom) * g <= 10;
  const guardFrom = tipAtEdge ? 20 * scale : 35 * scale;
  // The planes do not depend on x: a voxel is removed when, for every plane, n1·y + n2·z < d.
  const [p1, p2] = planes as [CutPlane, CutPlane];
  const deep = deepInCut(mask, ant, vol, { nAnt, zN, sinP, cosP, guardFrom }, p1, p2);
  // A nasion placed from the nose, not seen, is trusted less: the cut may take no more than a
  // trace (250 mm³) of what lies deep in the head.
  if (deep * g ** 3 > (estimated ? 250 : 2000)) return { kind: 'uncertain', why: 'the cut these landmarks give would reach deep into the head' };
  const confidence = `nose prominence ${best.toFixed(0)} mm, nasion${estimated ? ' placed from the nose (not seen)' : ''}${chinOk ? ', chin' : ''}, pitch ${((phi * 180) / Math.PI).toFixed(0)}°`;
  return { kind: 'deface', planes, landmarks, confidence };
}
