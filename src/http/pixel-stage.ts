/**
 * The gateway's side of the pixel stage (src/pixels, src/policy/pixels.ts): the facts of
 * instances from the PACS's index, the decision per instance (risk, masks, the series' face
 * decision, made here before any pixel leaves), cleaned pixels for frames and bulk data, and the
 * markers metadata and QIDO carry.
 */
import { GatewayError } from '../core/errors.js';
import { CLEAN_PIXEL_DATA, CLEAN_RECOGNIZABLE_VISUAL_FEATURES, deidentifyJson, deidentifyPart10, type JsonDataset } from '../deid/index.js';
import { parseContentType, readMultipart } from '../dicomweb/multipart.js';
import { splitJsonArray } from '../dicomweb/json-array.js';
import { needsFaceDecision, needsTextDecision, pixelDecision, pixelsWithheld, type Admitted, type PixelDecision } from '../policy/pixels.js';
import { noteTextBoxes } from '../audit/sink.js';
import type { SeriesSource } from '../pixels/face/provider.js';
import { jsonView } from '../pixels/views.js';
import { embeddedOverlayBits, OVERLAY_GROUPS } from '../pixels/overlays.js';
import { regionsCover, type PixelGeometry } from '../deid/pixel-mask.js';
import type { InstanceFacts } from '../policy/facts-cache.js';
import { admitInstance } from '../policy/client-scope.js';
import { jsonAttrs, notVisible, TAG, type Attrs } from '../policy/scope.js';
import { queryRows, recordVisible, requireInstance } from './visibility.js';
import { DICOM_JSON, ok, expectType, parseObject, firstValue, noteWithheld, type RequestContext } from './context.js';

/**
 * deidentifyJson, timed for the metrics when they are on. `cleanPixels`: the instance is
 * released masked (see maskedByRule), so its JSON says what its retrieve says: Burned In
 * Annotation NO and, with the markers, 113101 Clean Pixel Data.
 */
export function deidJson(rc: RequestContext, o: JsonDataset, writeMarkers: boolean, cleanPixels = false): JsonDataset {
  const defaced = defacedByDecision(rc, o);
  const codes = [...(cleanPixels ? [CLEAN_PIXEL_DATA] : []), ...(defaced ? [CLEAN_RECOGNIZABLE_VISUAL_FEATURES] : [])];
  const opts = { writeMarkers, ...(codes.length ? { extraMethodCodes: codes } : {}) };
  const t0 = rc.observeDeid ? performance.now() : 0;
  let out = deidentifyJson(o, rc.client.ctx, opts);
  if (cleanPixels || defaced) {
    if (cleanPixels) out['00280301'] = { vr: 'CS', Value: ['NO'] };
    if (defaced) out['00280302'] = { vr: 'CS', Value: ['NO'] };
    out = Object.fromEntries(Object.entries(out).sort(([a], [b]) => a.localeCompare(b))) as JsonDataset;
  }
  rc.observeDeid?.('json', (performance.now() - t0) / 1000);
  return out;
}

/** True when a retrieve releases this instance with its series' face cut away (the decision is known). */
function defacedByDecision(rc: RequestContext, o: JsonDataset): boolean {
  const series = firstValue(o, '0020000E');
  const modality = firstValue(o, '00080060');
  if (typeof series !== 'string' || typeof modality !== 'string' || (rc.client.pixels.faces ?? 'deface') !== 'deface') return false;
  return needsFaceDecision(modality, rc.client.pixels) && rc.faces.decision(series)?.kind === 'deface';
}

/**
 * True when a retrieve releases this instance masked by a rule whose regions cover part of
 * the image (the engine's condition for Burned In Annotation NO and 113101), judged on the
 * original JSON, or on the facts cached for the instance when the JSON lacks them (QIDO rows).
 */
export function maskedByRule(rc: RequestContext, o: JsonDataset): boolean {
  if (rc.client.pixels.risky !== 'mask' && rc.client.pixels.risky !== 'detect') return false;
  const sop = firstValue(o, '00080018');
  const cached = typeof sop === 'string' ? rc.facts.instance(sop) : undefined;
  const f = cached && cached.scope?.[TAG.studyUid] === firstValue(o, '0020000D') ? cached : factsOf(o);
  const d = decide(rc, f);
  // Detected text: the pixels were examined, and are released with what was found masked.
  if (d.allow && d.detected) return true;
  return d.allow && !!d.mask?.length && f.rows !== undefined && regionsCover({ rows: Number(f.rows), columns: Number(f.columns) }, d.mask);
}

export type Facts = InstanceFacts;

const OVERLAY_BIT_TAGS = OVERLAY_GROUPS.map((g) => `${g.toString(16).toUpperCase()}0102`);

/** Pixel facts of one DICOM JSON object (original values). */
export function factsOf(r: JsonDataset): Facts {
  const s = (k: string): string | undefined => { const v = r[k]?.Value; return Array.isArray(v) ? v.map(String).join('\\') : undefined; };
  const a = jsonAttrs(r);
  const scope: Record<number, string> = {};
  for (const tag of Object.values(TAG)) { const v = a(tag); if (v !== undefined) scope[tag] = v; }
  // Overlays embedded in the pixel cells: the same reader as the engine's (src/pixels/overlays.ts).
  // A QIDO row does not list Overlay Data: such an instance is cut from cleaned pixels, where the
  // engine decides again on the whole header.
  const overlayBits = embeddedOverlayBits(jsonView(r), { hasData: (g) => r[`${g.toString(16).toUpperCase()}3000`] !== undefined });
  const geometry: Record<string, unknown> = {};
  for (const t of GEOMETRY_TAGS) if (r[t]) geometry[t] = r[t];
  return {
    geometry,
    burnedInAnnotation: s('00280301'), recognizableVisualFeatures: s('00280302'), modality: s('00080060'), sopClassUid: s('00080016'), imageType: s('00080008'),
    manufacturer: s('00080070'), model: s('00081090'), rows: s('00280010'), columns: s('00280011'), samplesPerPixel: s('00280002'), numberOfFrames: s('00280008'),
    bitsAllocated: s('00280100'), planarConfiguration: s('00280006'), photometric: s('00280004'), overlayBits, scope,
  };
}

/** The client's pixel decision on an instance's facts. */
export function decide(rc: RequestContext, f: Facts): PixelDecision {
  return pixelDecision(f, rc.client.pixels, { series: f.scope?.[TAG.seriesUid], lookup: (s) => rc.faces.decision(s) }, { sop: f.scope?.[TAG.sopUid], lookup: (s) => rc.text.decision(s) });
}

/** Instances whose text is looked for at once (each is fetched whole, uncompressed). */
const TEXT_CONCURRENCY = 2;

/**
 * Makes sure every risky instance among these has its text decision under risky: detect
 * (stored, or made now on the instance fetched from the PACS in Explicit VR Little Endian)
 * before any of its pixels leave. Waits at most faceWaitMs, like the face decisions.
 */
async function ensureText(rc: RequestContext, facts: ReadonlyMap<string, Facts>, keep?: Map<string, Buffer>): Promise<void> {
  if (rc.client.pixels.risky === 'allow') return;
  const todo = [...facts].filter(([sop, f]) => f.rows !== undefined && f.scope?.[TAG.studyUid] && f.scope[TAG.seriesUid] && needsTextDecision(f, rc.client.pixels) && rc.text.decision(sop) === undefined);
  if (!todo.length) return;
  const lasting: RequestContext = { ...rc, signal: new AbortController().signal };
  const queue = [...todo];
  const worker = async (): Promise<void> => {
    for (let next = queue.shift(); next; next = queue.shift()) {
      const [sop, f] = next;
      // Streamed: its frames are read as they arrive. The bytes may be kept for the caller.
      await rc.text.decide(sop, async () => instanceStream(lasting, f.scope![TAG.studyUid]!, f.scope![TAG.seriesUid]!, sop), (bytes) => {
        if (bytes.length <= KEEP_MAX_BYTES) keep?.set(sop, bytes);
      });
    }
  };
  await waitBounded(rc, Promise.all(Array.from({ length: Math.min(TEXT_CONCURRENCY, queue.length) }, worker)), 'the burned-in text of this instance is still being looked for; try again shortly', 'pixels-pending:text');
}

/** Waits for `work` at most faceWaitMs; then 503 PIXELS_PENDING with Retry-After while it goes on. */
async function waitBounded(rc: RequestContext, work: Promise<unknown>, message: string, auditReason: string): Promise<void> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<'timeout'>((resolve) => { timer = setTimeout(() => resolve('timeout'), rc.faceWaitMs); });
  try {
    const r = await Promise.race([work, timeout]);
    if (r === 'timeout') {
      work.catch(() => undefined);
      throw new GatewayError('PIXELS_PENDING', message, { retryAfter: Math.max(1, Math.ceil(rc.faceWaitMs / 1000)), auditReason });
    }
  } finally {
    clearTimeout(timer);
  }
}

/**
 * One instance from the PACS (asked for in Explicit VR Little Endian) as the stream of its Part 10
 * bytes; the rest of the multipart is read to its end.
 */
async function instanceStream(rc: RequestContext, study: string, series: string, sop: string): Promise<AsyncIterable<Buffer>> {
  const up = await ok(rc, `/studies/${study}/series/${series}/instances/${sop}`, 'multipart/related; type="application/dicom"; transfer-syntax=1.2.840.10008.1.2.1');
  expectType(up, 'multipart/related');
  return (async function* () {
    let seen = false;
    for await (const part of readMultipart(up.body, parseContentType(up.contentType).params.boundary, { sniffBoundary: true })) {
      if (seen) { for await (const _ of part.body) { /* only the first part */ } continue; }
      seen = true;
      yield* part.body;
    }
    if (!seen) throw new GatewayError('NOT_FOUND', 'no such resource');
  })();
}

/** An instance fetched for its text decision is served from memory up to this size; a larger one is asked for again. */
const KEEP_MAX_BYTES = 256 * 1024 * 1024;

/** One whole instance from the PACS as Part 10 bytes, asked for in Explicit VR Little Endian. */
async function wholeInstance(rc: RequestContext, study: string, series: string, sop: string): Promise<Buffer> {
  const chunks: Buffer[] = [];
  // The reader's chunks may be views of a buffer it reuses: each is copied as it comes.
  for await (const c of await instanceStream(rc, study, series, sop)) chunks.push(Buffer.from(c));
  return Buffer.concat(chunks);
}

/**
 * The decisions an instance's pixels need before they leave: its series' face decision and,
 * under risky: detect, its own text decision. `keep` receives the instances fetched whole for a
 * text decision (Explicit VR Little Endian), for a caller that serves one instance and need not
 * ask the PACS for it twice.
 */
export async function ensureDecisions(rc: RequestContext, facts: ReadonlyMap<string, Facts>, keep?: Map<string, Buffer>): Promise<void> {
  await ensureFaces(rc, facts);
  await ensureText(rc, facts, keep);
}

/**
 * Makes sure every series among these instances whose modality may show a face has its face
 * decision (stored, or analysed now on a reduced volume fetched from the PACS) before any of
 * its pixels leave. Waits at most faceWaitMs: then 503 with Retry-After while the analysis
 * goes on, so the client's retry finds it decided.
 */
async function ensureFaces(rc: RequestContext, facts: ReadonlyMap<string, Facts>): Promise<void> {
  const bySeries = new Map<string, { study: string; modality: string }>();
  for (const f of facts.values()) {
    const series = f.scope?.[TAG.seriesUid];
    const study = f.scope?.[TAG.studyUid];
    if (!series || !study || f.rows === undefined || !needsFaceDecision(f.modality, rc.client.pixels)) continue;
    if (rc.faces.decision(series) === undefined) bySeries.set(series, { study, modality: (f.modality ?? '').trim().toUpperCase() });
  }
  if (!bySeries.size) return;
  // The digest covers every instance of the series (in the client's scope or not): the decision
  // is about the series' pixels and is shared by every client.
  const all = Promise.all([...bySeries].map(async ([series, e]) => {
    const seriesFacts = await pixelFacts(rc, e.study, series);
    return rc.faces.decide(series, e.modality, [...seriesFacts.keys()], pacsSeriesSource(rc, e.study, series, seriesFacts));
  }));
  await waitBounded(rc, all, 'the face decision of this series is still being made; try again shortly', 'pixels-pending:face');
}

/** A series as the face provider reads it from the PACS: its metadata, and instances uncompressed. */
/**
 * The face decisions a metadata reply's markers need. The series and their modalities come
 * from the PACS's index (a series query reads no file); the instance facts, which a PACS reads
 * from every file, are asked for only for series whose modality may show a face.
 */
export async function ensureDecisionsOf(rc: RequestContext, study: string, series?: string, sop?: string): Promise<void> {
  // Text decisions are per instance: under risky: detect, the instance facts are asked for.
  if (sop !== undefined || rc.client.pixels.risky === 'detect') { await ensureDecisions(rc, await pixelFacts(rc, study, series, sop)); return; }
  if ((rc.client.pixels.faces ?? 'deface') === 'allow') return;
  const q = new URLSearchParams([['includefield', '00080060']]);
  if (series !== undefined) q.set('SeriesInstanceUID', series);
  const candidates = (await queryRows(rc, `/studies/${study}/series`, q)).flatMap((r) => {
    const uid = r['0020000E']?.Value?.[0];
    const modality = r['00080060']?.Value?.[0];
    return typeof uid === 'string' && needsFaceDecision(typeof modality === 'string' ? modality : undefined, rc.client.pixels) && rc.faces.decision(uid) === undefined ? [uid] : [];
  });
  const facts = new Map<string, Facts>();
  for (const f of await Promise.all(candidates.map((uid) => pixelFacts(rc, study, uid)))) for (const [k, v] of f) facts.set(k, v);
  await ensureFaces(rc, facts);
}

function pacsSeriesSource(rc: RequestContext, study: string, series: string, facts: ReadonlyMap<string, Facts>): SeriesSource {
  // The analysis outlives the request that started it: it is not tied to that request's abort signal.
  const lasting: RequestContext = { ...rc, signal: new AbortController().signal };
  return {
    async instances() {
      // Classic single-frame images: their positions came with the facts query. Anything else
      // (enhanced multi-frame objects keep theirs in functional groups) asks for the metadata.
      const placed = [...facts].map(([sop, f]) => ({ sop, view: jsonView(f.geometry ?? {}) }));
      if (placed.length && placed.every(({ view }) => (view.nums(0x00280008)?.[0] ?? 1) === 1 && view.nums(0x00200032)?.length === 3 && view.nums(0x00200037)?.length === 6)) return placed;
      const up = await ok(lasting, `/studies/${study}/series/${series}/metadata`, DICOM_JSON);
      const out: { sop: string; view: ReturnType<typeof jsonView> }[] = [];
      for await (const text of splitJsonArray(up.body)) {
        const o = parseObject(text);
        const sop = o['00080018']?.Value?.[0];
        if (typeof sop === 'string') out.push({ sop, view: jsonView(o) });
      }
      return out;
    },
    instance: (sop) => wholeInstance(lasting, study, series, sop),
  };
}

/** Geometry of one frame (frames endpoint) or of all frames (bulk pixel data), from the facts. */
export function geometryOf(f: Facts, frames: number, littleEndian: boolean): PixelGeometry {
  const n = (v: string | undefined, d: number): number => (v === undefined || v === '' ? d : Number(v.split('\\')[0]));
  return {
    rows: n(f.rows, Number.NaN), columns: n(f.columns, Number.NaN), samplesPerPixel: n(f.samplesPerPixel, 1), bitsAllocated: n(f.bitsAllocated, Number.NaN),
    planarConfiguration: n(f.planarConfiguration, 0), frames, photometric: (f.photometric ?? '').toUpperCase(), littleEndian,
  };
}

/** The scope attributes of cached facts (missing ones read as absent: rules that need them deny). */
export function factsAttrs(f: Facts): Attrs {
  return (tag) => f.scope?.[tag];
}

/** Geometry and pixel module of a classic image: what the face provider needs besides the pixels. */
const GEOMETRY_TAGS = ['00200032', '00200037', '00280030', '00281052', '00281053', '00280101', '00280102', '00280103', '00280008', '00280010', '00280011', '00280002', '00280100', '00080060'];

/** The tags the facts query asks for: pixel facts and everything the scope rules read. */
const FACT_TAGS = [...new Set([...GEOMETRY_TAGS,
  '00280301', '00280302', '00080060', '00080016', '00080008', '00080018', '00080070', '00081090',
  '00280010', '00280011', '00280002', '00280008', '00280100', '00280006', '00280004', ...OVERLAY_BIT_TAGS,
  ...Object.values(TAG).map((t) => t.toString(16).toUpperCase().padStart(8, '0')),
])];

/** Pixel facts of the instances under an (original) study/series/instance, from the PACS. */
export async function pixelFacts(rc: RequestContext, study: string, series?: string, sop?: string): Promise<Map<string, Facts>> {
  if (sop) {
    const known = rc.facts.instance(sop);
    // SOP Instance UIDs are not always unique in a PACS: use cached facts only for this study and series.
    const sameFolder = known && known.scope?.[TAG.studyUid] === study && (series === undefined || known.scope?.[TAG.seriesUid] === series);
    if (known && sameFolder) return new Map([[sop, known]]);
  } else {
    const known = rc.facts.scope(study, series);
    if (known) return known;
  }
  // One includefield per attribute: a comma list is sent as %2C, which Orthanc does not split.
  const q = new URLSearchParams(FACT_TAGS.map((t): [string, string] => ['includefield', t]));
  if (sop) q.set('SOPInstanceUID', sop);
  const path = series ? `/studies/${study}/series/${series}/instances` : `/studies/${study}/instances`;
  const out = new Map<string, Facts>();
  for (const r of await queryRows(rc, path, q)) {
    const uid = r['00080018']?.Value?.[0];
    if (typeof uid === 'string') out.set(uid, factsOf(r as JsonDataset));
  }
  if (sop) { const f = out.get(sop); if (f) rc.facts.putInstance(sop, f); } else rc.facts.putScope(out, study, series);
  return out;
}

export async function requirePixels(rc: RequestContext, study: string, series: string, sop: string): Promise<Facts> {
  await requireInstance(rc, study, series, sop);
  const facts = (await pixelFacts(rc, study, series, sop)).get(sop);
  if (!facts) throw new GatewayError('NOT_FOUND', 'no such resource');
  if (!rc.client.scope.unrestricted()) { const d = recordVisible(rc, factsAttrs(facts)); if (d) throw notVisible(d); }

  if (facts.rows === undefined) throw new GatewayError('NOT_FOUND', 'this instance has no pixel data');
  await ensureDecisions(rc, new Map([[sop, facts]]));
  const d = decide(rc, facts);
  if (!d.allow) {
    noteWithheld(rc.note, d.auditReason);
    throw pixelsWithheld(d, `the pixel data of this instance is withheld by policy (${d.reason})`);
  }
  if (rc.client.ctx.plan.lookup(0x7fe00010).action.kind !== 'keep') throw new GatewayError('PIXELS_WITHHELD', 'this client\'s policy removes pixel data', { auditReason: 'pixels-withheld:pixel-data-removed' });
  if (d.mask) rc.note.masked++;
  if (d.detected) noteTextBoxes(rc.note, d.detected);
  else if (d.risk) rc.note.riskyAllowed++;
  if (d.face) rc.note.defaced = (rc.note.defaced ?? 0) + 1;
  if (d.faceAllowed) rc.note.facesAllowed = (rc.note.facesAllowed ?? 0) + 1;
  return facts;
}


/** True when an instance's pixels must be changed before they leave (mask regions, embedded overlay bits). */
export function needsCleaning(rc: RequestContext, facts: Facts): boolean {
  const d = decide(rc, facts);
  return (d.allow && (!!d.mask?.length || !!d.face?.length || !!d.detected)) || (facts.overlayBits?.length ?? 0) > 0;
}

/**
 * The cleaned value bytes of an instance's native pixel data, streamed: the instance is asked
 * for uncompressed and passed through the engine (the same decision and masks as a retrieve,
 * taken from its own header), which emits only the pixel value. Frames and bulk pixel data of
 * instances that need cleaning are cut from this, never taken from the PACS's own frames or
 * bulk routes (which may be compressed, big-endian or unlabelled).
 */
export async function* cleanedPixels(rc: RequestContext, study: string, series: string, sop: string): AsyncGenerator<Buffer> {
  const up = await ok(rc, `/studies/${study}/series/${series}/instances/${sop}`, 'multipart/related; type="application/dicom"');
  expectType(up, 'multipart/related');
  let seen = false;
  for await (const part of readMultipart(up.body, parseContentType(up.contentType).params.boundary, { sniffBoundary: true })) {
    if (seen) { for await (const _ of part.body) { /* only the first part */ } continue; }
    seen = true;
    yield* deidentifyPart10(part.body, rc.client.ctx, { maxHeaderBytes: rc.maxHeaderBytes, pixelsOnly: true, admit: (attr) => admitHeader(rc, attr) });
  }
  if (!seen) throw new GatewayError('NOT_FOUND', 'no such resource');
}

/** The scope and pixel decision on an instance's own header (retrieve, rendered, cleaned pixels). */
export function admitHeader(rc: RequestContext, attr: (tag: number) => string | undefined): Admitted | undefined {
  return admitInstance(rc.client.scope, rc.client.pixels, attr, (s) => rc.faces.decision(s), (s) => rc.text.decision(s)); // PIXELS_WITHHELD with auditReason pixels-withheld:<risk>
}
