/**
 * DICOMweb handlers (PS3.18 QIDO-RS and WADO-RS), independent of express: each takes a
 * request context and returns a reply whose body is a lazy stream. Every body is produced
 * by the engine from the upstream's; nothing upstream passes as it came.
 */
import { GatewayError } from '../core/errors.js';
import { MAX_QUERY_RESULTS } from '../config/schema.js';
import { dictionary, isPrivateTag } from '../dicom/dictionary.js';
import { CLEAN_PIXEL_DATA, CLEAN_RECOGNIZABLE_VISUAL_FEATURES, deidentifyJson, deidentifyPart10, type EngineContext, type JsonDataset } from '../deid/index.js';
import { parseContentType, readMultipart, writeMultipart, newBoundary, type Part } from '../dicomweb/multipart.js';
import { parseJsonObject, splitJsonArray, writeJsonArray } from '../dicomweb/json-array.js';
import { parseBulkPath, rewriteBulkDataUris, setRetrieveUrl, type Level } from '../dicomweb/urls.js';
import { needsFaceDecision, pixelDecision, pixelsWithheld, type Admitted, type PixelDecision, type PixelPolicy } from '../policy/pixels.js';
import type { FaceProvider, SeriesSource } from '../pixels/face/provider.js';
import { jsonView } from '../pixels/views.js';
import { regionsCover, type PixelGeometry } from '../deid/pixel-mask.js';
import { readInstanceSync } from '../dicom/part10.js';
import { renderFrame } from '../render/render.js';
import { inflateRawSync } from 'node:zlib';
import { FactsCache, type InstanceFacts } from '../policy/facts-cache.js';
import { mapUpstreamStatus, type Upstream, type UpstreamResponse } from '../upstream/client.js';
import { admitInstance, type ClientScope } from '../policy/client-scope.js';
import { hasInstanceRules, hasSeriesRules, jsonAttrs, notVisible, studyDenial, TAG, type Attrs } from '../policy/scope.js';
import { mapQuery, passesDateFilters, type QueryResolver } from './query.js';
import {
  examinedRecords, queryRows, recordVisible, requireInstance, requireSeries, requireStudy, seriesRowCount, seriesRowDenial, studyRowCounts,
} from './visibility.js';

export interface ClientRuntime {
  readonly id: string;
  readonly ctx: EngineContext;
  /** SHA-256 of the token; undefined for a client that authenticates by certificate only. */
  readonly tokenHash: Buffer | undefined;
  /** Normalized TLS certificate subject (mutual TLS). */
  readonly certificateSubject?: string | undefined;
  readonly scope: ClientScope;
  /** What happens to risky instances (withhold, mask under region rules, allow). */
  readonly pixels: PixelPolicy;
  /** Allowed QIDO match keys (tags); undefined: whatever the plan permits. */
  readonly allowedKeys?: ReadonlySet<number> | undefined;
  /** The client's cap on QIDO results (the lower of this and server.maxQueryResults applies). */
  readonly maxResults?: number | undefined;
}

/** What a request did, for the audit record (original and pseudonymous study UIDs). */
export interface RequestNote {
  instances: number;
  withheld: number;
  /** Instances withheld by the pixel policy, by audit reason (pixels-withheld:<risk>). */
  withheldBy?: Record<string, number>;
  /** Records left out because they are outside the client's scope (audit only). */
  outOfScope: number;
  /** Risky instances released: masked under a rule, or allowed by an explicit policy. */
  masked: number;
  riskyAllowed: number;
  /** Instances released with the face cut away; instances with a face released under faces: allow. */
  defaced?: number;
  facesAllowed?: number;
  /** QIDO rows returned. */
  results: number;
  /** What a QIDO asked: level, match key names, whether a key used wildcards (audit: sweeping queries). */
  query?: { readonly level: string; readonly keys: readonly string[]; readonly wildcard: boolean };
  /** Studies released (original UID → pseudonymous UID, original patient, instances sent). */
  readonly studies: Map<string, StudyNote>;
}

export interface StudyNote {
  readonly pseudonymous: string;
  patientId?: string | undefined;
  instances: number;
}

/** At most this many studies are itemized per request record: the schema's cap on QIDO pages. */
export const MAX_NOTED_STUDIES = MAX_QUERY_RESULTS;

export interface RequestContext {
  readonly client: ClientRuntime;
  readonly upstream: Upstream;
  readonly resolver: QueryResolver;
  /** Public base of the gateway's DICOMweb root, e.g. https://gw.example.org/dicom-web */
  readonly dicomWebBase: string;
  readonly signal: AbortSignal;
  readonly note: RequestNote;
  readonly maxQueryLimit: number;
  /** Upstream records a filtered QIDO may examine before it stops (Warning: truncated). */
  readonly maxQueryScan: number;
  readonly maxHeaderBytes: number;
  /** Cap on one instance held in memory to render it. */
  readonly maxRenderBytes: number;
  /** Called once a response body completes, before its last byte: makes pseudonyms durable. */
  readonly flush: () => Promise<void>;
  readonly facts: FactsCache;
  /** Series-level face decisions (src/pixels/face/provider.ts). */
  readonly faces: FaceProvider;
  /** How long a request waits for a series' face decision before 503 with Retry-After, ms. */
  readonly faceWaitMs: number;
  /** Observes de-identification time per object (metrics), when metrics are on. */
  readonly observeDeid?: ((kind: 'json' | 'part10', seconds: number) => void) | undefined;
}

/**
 * deidentifyJson, timed for the metrics when they are on. `cleanPixels`: the instance is
 * released masked (see maskedByRule), so its JSON says what its retrieve says: Burned In
 * Annotation NO and, with the markers, 113101 Clean Pixel Data.
 */
function deidJson(rc: RequestContext, o: JsonDataset, writeMarkers: boolean, cleanPixels = false): JsonDataset {
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
function maskedByRule(rc: RequestContext, o: JsonDataset): boolean {
  if (rc.client.pixels.risky !== 'mask') return false;
  const sop = firstValue(o, '00080018');
  const cached = typeof sop === 'string' ? rc.facts.instance(sop) : undefined;
  const f = cached && cached.scope?.[TAG.studyUid] === firstValue(o, '0020000D') ? cached : factsOf(o);
  const d = decide(rc, f);
  return d.allow && !!d.mask?.length && f.rows !== undefined && regionsCover({ rows: Number(f.rows), columns: Number(f.columns) }, d.mask);
}

export interface Reply {
  readonly status: number;
  readonly headers: Record<string, string>;
  readonly body: AsyncIterable<Buffer>;
}

const DICOM_JSON = 'application/dicom+json';

/** Maps path UIDs (pseudonymous) to originals; unknown → 404, never forwarded as typed. */
export function originalUid(rc: RequestContext, pseudo: string | undefined): string {
  if (!pseudo || !/^[0-9.]{1,64}$/.test(pseudo)) throw new GatewayError('NOT_FOUND', 'no such resource');
  const o = rc.resolver.uid(pseudo);
  if (o === undefined) throw new GatewayError('NOT_FOUND', 'no such resource');
  return o;
}

async function ok(rc: RequestContext, path: string, accept: string, query?: URLSearchParams): Promise<UpstreamResponse> {
  const r = await rc.upstream.get({ path, accept, signal: rc.signal, ...(query ? { query } : {}) });
  if (r.status === 200 || r.status === 206) return r;
  await r.dump();
  if (r.status === 204) return { ...r, status: 204 };
  throw mapUpstreamStatus(r.status);
}

function expectType(r: UpstreamResponse, ...types: string[]): void {
  let t: string | undefined;
  try {
    t = parseContentType(r.contentType).type;
  } catch {
    t = undefined;
  }
  if (t === undefined || !types.includes(t)) {
    void r.dump().catch(() => undefined); // release the connection
    throw new GatewayError('UPSTREAM_RESPONSE_INVALID', t === undefined ? 'the PACS sent a body without a usable content type' : `the PACS sent another media type where ${types[0]} was expected`);
  }
}

async function* withFlush(rc: RequestContext, body: AsyncIterable<Buffer>): AsyncGenerator<Buffer> {
  let pending: Buffer | undefined;
  for await (const c of body) {
    if (pending) yield pending;
    pending = c;
  }
  await rc.flush(); // pseudonyms in this body are durable before its last byte leaves
  if (pending) yield pending;
}

const parseObject = (text: string): JsonDataset => parseJsonObject<JsonDataset>(text);

/** A JSON array from the PACS, de-identified object by object. */
function jsonReply(rc: RequestContext, up: UpstreamResponse, each: (o: JsonDataset) => JsonDataset | undefined, warnings: readonly string[] = [], maxRows = Number.MAX_SAFE_INTEGER): Reply {
  const headers: Record<string, string> = { 'content-type': DICOM_JSON };
  if (warnings.length) headers.warning = warnings.join(', ');
  if (up.status === 204) return { status: 200, headers, body: (async function* () { await rc.flush(); yield Buffer.from('[]'); })() };
  expectType(up, DICOM_JSON, 'application/json');
  let rows = 0;
  const objects = (async function* () {
    for await (const text of splitJsonArray(up.body)) {
      if (++rows > maxRows) break; // the PACS may ignore limit (FIELD-NOTES: limit=0 is unlimited)
      const out = each(parseObject(text));
      if (out !== undefined) yield JSON.stringify(out);
    }
  })();
  return { status: 200, headers, body: withFlush(rc, writeJsonArray(objects)) };
}

export /** `[]` without asking the PACS: nothing this client may see can match. */
function emptyJsonReply(warnings: readonly string[]): Reply {
  return { status: 200, headers: { 'content-type': DICOM_JSON, ...(warnings.length ? { warning: warnings.join(', ') } : {}) }, body: (async function* () { yield Buffer.from('[]'); })() };
}

function noteStudy(note: RequestNote, original: unknown, pseudo: unknown, patientId: unknown, instances = 0): void {
  if (typeof original !== 'string' || typeof pseudo !== 'string') return;
  const known = note.studies.get(original);
  if (known) {
    known.instances += instances;
    if (known.patientId === undefined && typeof patientId === 'string') known.patientId = patientId;
    return;
  }
  if (note.studies.size >= MAX_NOTED_STUDIES) return;
  note.studies.set(original, { pseudonymous: pseudo, patientId: typeof patientId === 'string' ? patientId : undefined, instances });
}

const firstValue = (o: JsonDataset, tag: string): unknown => o[tag]?.Value?.[0];

/** Counts instances the pixel policy withheld, with the reason the audit record gives. */
function noteWithheld(note: RequestNote, reason: string | undefined, n = 1): void {
  note.withheld += n;
  const by = (note.withheldBy ??= Object.create(null) as Record<string, number>);
  const key = reason ?? 'pixels-withheld:unknown';
  by[key] = (by[key] ?? 0) + n;
}

/** Number of Patient Related Studies, Series, Instances: counted by the PACS over studies a scoped client may not see. */
const HIDDEN_AGGREGATES = ['00201200', '00201202', '00201204'] as const;

/**
 * Tags the scope check reads on QIDO rows, always asked for: the check must not depend on a PACS's
 * default return attributes. Patient ID (the opt-out check) is one of those defaults (PS3.18
 * Table 10.6.3-3), so it is never stripped from the rows; the others are, unless the client asked.
 */
const SCOPE_INCLUDES: Record<Level, readonly string[]> = {
  study: ['00100020', '00100021'],
  series: ['00100020', '00100021', '00180015'],
  instance: ['00100020', '00100021', '00180015', '00080060', '0020000E'],
};
const DEFAULT_RETURNED = new Set(['00100020']);

/** One QIDO row as the client receives it: de-identified, its URLs the gateway's. */
function qidoRow(rc: RequestContext, o: JsonDataset, level: Level): JsonDataset {
  const out = deidJson(rc, o, false, level === 'instance' && o['00280301'] !== undefined && maskedByRule(rc, o));
  setRetrieveUrl(out, rc.dicomWebBase, level);
  rewriteBulkDataUris(out, rc.dicomWebBase);
  return out;
}

/** QIDO-RS: /studies, /series, /instances and their nested forms. */
export async function qido(rc: RequestContext, level: Level, scope: { study?: string; series?: string }, params: URLSearchParams): Promise<Reply> {
  const plan = rc.client.ctx.plan;
  const maxLimit = Math.min(rc.maxQueryLimit, rc.client.maxResults ?? Number.MAX_SAFE_INTEGER);
  const q = mapQuery(params, plan, rc.resolver, { maxLimit, allowedKeys: rc.client.allowedKeys });
  rc.note.query = { level, keys: [...q.matchKeys].map((t) => dictionary().lookup(Number.parseInt(t, 16))?.keyword ?? t), wildcard: [...params].some(([k, v]) => !/^(limit|offset|includefield|fuzzymatching)$/i.test(k) && /[*?]/.test(v)) };
  let path = '';
  const study = scope.study === undefined ? undefined : originalUid(rc, scope.study);
  const series = scope.series === undefined ? undefined : originalUid(rc, scope.series);
  if (study !== undefined && series !== undefined) await requireSeries(rc, study, series);
  else if (study !== undefined) await requireStudy(rc, study);
  if (study !== undefined) path += `/studies/${study}`;
  if (series !== undefined) path += `/series/${series}`;
  path += level === 'study' ? '/studies' : level === 'series' ? '/series' : '/instances';
  if (q.empty) return emptyJsonReply(q.warnings);
  if (rc.client.scope.unrestricted() && q.dateFilters.length === 0) {
    // Nothing to filter: the PACS pages, and the body streams.
    const up = new URLSearchParams(q.upstream);
    up.set('limit', String(q.limit));
    if (q.offset) up.set('offset', String(q.offset));
    const res = await ok(rc, path, DICOM_JSON, up);
    return jsonReply(rc, res, (o) => {
      const out = qidoRow(rc, o, level);
      noteStudy(rc.note, firstValue(o, '0020000D'), firstValue(out, '0020000D'), firstValue(o, '00100020'));
      rc.note.results++;
      return out;
    }, q.warnings, q.limit);
  }
  return filteredQido(rc, level, path, q);
}

/** Rows per PACS request of a filtered QIDO: the first page at least this many … */
const QIDO_PAGE_MIN = 10;
/** … and no page more than this many. */
const QIDO_PAGE_MAX = 1000;

/**
 * QIDO over a filtered view (scope rules, opt-out list, shifted dates): limit and offset apply
 * to what the client may see, so the PACS is paged ahead and every row is checked; the work
 * per request is capped (server.maxQueryScan: the rows paged through plus the series and instance
 * records the checks of those rows read), with a Warning when results may be incomplete.
 * The page (at most `limit` rows) is held, then sent, so the Warning can lead the response.
 */
async function filteredQido(rc: RequestContext, level: Level, path: string, q: ReturnType<typeof mapQuery>): Promise<Reply> {
  const rules = rc.client.scope.rules();
  const up = new URLSearchParams(q.upstream);
  // Study-level keys that aggregate over series (PS3.4 C.6.1.1.5 "…in Study") are matched by the
  // PACS on the whole study. Where the scope hides some series of a study, a match on a hidden
  // series would reveal it: ModalitiesInStudy is matched again on the visible series below;
  // SOPClassesInStudy cannot be without reading every instance, so it is refused then.
  const partial = hasSeriesRules(rules) || hasInstanceRules(rules);
  if (level === 'study' && partial && q.matchKeys.has('00080062')) {
    throw new GatewayError('QUERY_KEY_REFUSED', 'match key SOPClassesInStudy: not available to a client whose scope covers part of a study; query the instances (SOPClassUID) instead', { auditReason: 'query-key-refused' });
  }
  const modalitiesAsked = level === 'study' && partial && q.matchKeys.has('00080061') ? up.get('00080061') ?? '' : undefined;
  const push = (tag: string, value: string): void => { if (!q.matchKeys.has(tag)) up.set(tag, value); };
  // Push the scope down where the PACS matches it exactly (comma lists work for UIDs, codes and
  // accession numbers on Orthanc); each row is checked again below either way.
  if (level === 'study' && !path.startsWith('/studies/')) {
    if (rules.studies && rules.accessions?.size === 0 && rules.studies.size > 0 && rules.studies.size <= 200) push('0020000D', [...rules.studies].join(','));
    if (rules.accessions && rules.studies?.size === 0 && rules.accessions.size > 0 && rules.accessions.size <= 200) push('00080050', [...rules.accessions].join(','));
    if (rules.modalities?.size === 1) push('00080061', [...rules.modalities][0]!);
  }
  if ((rules.studies?.size ?? 1) === 0 && (rules.accessions?.size ?? 1) === 0) {
    return emptyJsonReply(q.warnings);
  }
  if (rules.studyDate) {
    // The scope's date range always reaches the PACS: intersected with the client's own (the
    // upstream form of it, widened when its dates are shifted), so how much the gateway has to
    // examine — and so whether a truncation Warning appears — never depends on out-of-scope studies.
    const given = q.matchKeys.has('00080020') ? /^(\d{8})?(?:-(\d{8})?)?$/.exec(up.get('00080020') ?? '') : null;
    const single = given && !(up.get('00080020') ?? '').includes('-');
    const gFrom = given?.[1];
    const gUntil = single ? given?.[1] : given?.[2];
    const from = [gFrom, rules.studyDate.from].filter((x): x is string => !!x).sort().at(-1);
    const until = [gUntil, rules.studyDate.until].filter((x): x is string => !!x).sort()[0];
    if (from && until && from > until) return emptyJsonReply(q.warnings);
    if (!q.matchKeys.has('00080020') || given) up.set('00080020', `${from ?? ''}-${until ?? ''}`);
  }
  if (level !== 'study' && rules.modalities) push('00080060', [...rules.modalities].join(','));
  if (level !== 'study' && rules.bodyParts?.size === 1) push('00180015', [...rules.bodyParts][0]!);
  if (level === 'instance' && rules.sopClasses) push('00080016', [...rules.sopClasses].join(','));
  const strip = SCOPE_INCLUDES[level].filter((t) => !q.included.has(t) && !DEFAULT_RETURNED.has(t));
  for (const t of SCOPE_INCLUDES[level]) up.append('includefield', t);

  const visible = async (o: JsonDataset): Promise<boolean> => {
    const a = jsonAttrs(o);
    const denial = level === 'study' ? (recordStudyDenial(rc, a) ?? await studyRowCounts(rc, o, a(TAG.studyUid) ?? ''))
      : level === 'series' ? await seriesRowDenial(rc, a) : recordVisible(rc, a);
    if (denial) { rc.note.outOfScope++; return false; }
    if (level === 'series') await seriesRowCount(rc, o, a(TAG.studyUid) ?? '', a(TAG.seriesUid) ?? '');
    return true;
  };

  const rows: string[] = [];
  let skipped = 0;
  let scanned = 0;
  let upOffset = 0;
  let truncated = false;
  // Records examined: the rows paged through, and the series and instance records their checks read.
  const examinedBefore = examinedRecords(rc);
  const examined = (): number => scanned + examinedRecords(rc) - examinedBefore;
  // The first page asks for what the client's page would need if nothing were filtered out
  // (offset + limit); each further page asks for twice as many, up to QIDO_PAGE_MAX.
  let want = Math.min(QIDO_PAGE_MAX, Math.max(QIDO_PAGE_MIN, q.offset + q.limit));
  pages: for (;;) {
    // Never more than one row past what the budget has left, so that stopping at the budget knows
    // whether more exist (and never 0, which the PACS reads as "unlimited").
    const pageSize = Math.max(1, Math.min(want, rc.maxQueryScan - examined() + 1));
    const page = new URLSearchParams(up);
    page.set('limit', String(pageSize));
    if (upOffset) page.set('offset', String(upOffset));
    const res = await ok(rc, path, DICOM_JSON, page);
    if (res.status === 204) break;
    expectType(res, DICOM_JSON, 'application/json');
    let n = 0;
    for await (const text of splitJsonArray(res.body)) {
      if (++n > pageSize) break; // the PACS ignored limit: treat the page as full and move on
      if (examined() >= rc.maxQueryScan) { truncated = true; break pages; }
      scanned++;
      const o = parseObject(text);
      if (!(await visible(o))) continue;
      if (modalitiesAsked !== undefined && !matchesAnyValue(modalitiesAsked, o['00080061']?.Value)) continue; // matched only on hidden series
      // Counts and lists the PACS computes over what the client may not see are not returned:
      // the patient's studies, series and instances (other studies may be out of scope), and the
      // SOP classes of a study whose series are partly hidden (ModalitiesInStudy and the study's
      // counts are rewritten to the visible part above).
      for (const t of HIDDEN_AGGREGATES) delete o[t];
      if (partial && level === 'study') delete o['00080062'];
      for (const t of strip) delete o[t];
      const out = qidoRow(rc, o, level);
      if (!passesDateFilters(q.dateFilters, out)) continue;
      if (skipped < q.offset) { skipped++; continue; }
      noteStudy(rc.note, firstValue(o, '0020000D'), firstValue(out, '0020000D'), firstValue(o, '00100020'));
      rc.note.results++;
      rows.push(JSON.stringify(out));
      if (rows.length >= q.limit) break pages;
    }
    if (n < pageSize) break;
    upOffset += pageSize;
    want = Math.min(QIDO_PAGE_MAX, want * 2);
  }
  const warnings = [...q.warnings];
  if (truncated) warnings.push(`299 deid-gateway "The query stopped after examining ${examined()} records; results may be incomplete. Narrow the query."`);
  const headers: Record<string, string> = { 'content-type': DICOM_JSON };
  if (warnings.length) headers.warning = warnings.join(', ');
  return { status: 200, headers, body: withFlush(rc, (async function* () { yield Buffer.from(`[${rows.join(',')}]`); })()) };
}

/**
 * QIDO matching of a multi-valued CS attribute (PS3.4 C.2.2.2): the record matches when one of
 * its values matches one of the asked values (a list in either form), with * and ? wildcards.
 * An empty key matches everything.
 */
export function matchesAnyValue(asked: string, values: readonly unknown[] | undefined): boolean {
  const patterns = asked.split(/[,\\]/).map((v) => v.trim()).filter(Boolean);
  if (patterns.length === 0) return true;
  const res = patterns.map((p) => new RegExp(`^${p.replace(/[.+^${}()|[\]\\]/g, '\\$&').replace(/\*/g, '.*').replace(/\?/g, '.')}$`));
  return (values ?? []).some((v) => typeof v === 'string' && res.some((re) => re.test(v)));
}

/** A study row carries no series or instance attributes: only the study rules apply to the row itself. */
function recordStudyDenial(rc: RequestContext, a: Attrs): ReturnType<typeof recordVisible> {
  return studyDenial(rc.client.scope.rules(), rc.client.scope.optOut(), a);
}

/** Scope check of a WADO-RS path (pseudonymous UIDs): NOT_FOUND when not visible to the client. */
async function requireVisible(rc: RequestContext, p: { study: string; series?: string | undefined; instance?: string | undefined }): Promise<void> {
  const study = originalUid(rc, p.study);
  if (p.series === undefined) return requireStudy(rc, study);
  const series = originalUid(rc, p.series);
  if (p.instance === undefined) return requireSeries(rc, study, series);
  return requireInstance(rc, study, series, originalUid(rc, p.instance));
}

function upstreamPath(rc: RequestContext, p: { study: string; series?: string | undefined; instance?: string | undefined }): string {
  let path = `/studies/${originalUid(rc, p.study)}`;
  if (p.series !== undefined) path += `/series/${originalUid(rc, p.series)}`;
  if (p.instance !== undefined) path += `/instances/${originalUid(rc, p.instance)}`;
  return path;
}

/** WADO-RS metadata at study, series or instance level. */
export async function metadata(rc: RequestContext, p: { study: string; series?: string; instance?: string }): Promise<Reply> {
  await requireVisible(rc, p);
  // Metadata says what the retrieve does: the face decisions of its series are made first.
  await ensureFaces(rc, await pixelFacts(rc, originalUid(rc, p.study), p.series === undefined ? undefined : originalUid(rc, p.series), p.instance === undefined ? undefined : originalUid(rc, p.instance)));
  const up = await ok(rc, `${upstreamPath(rc, p)}/metadata`, DICOM_JSON);
  // The metadata of a whole study or series is also its pixel facts (see policy/facts-cache.ts).
  const seen = new Map<string, Facts>();
  const scope = p.instance === undefined ? { study: originalUid(rc, p.study), series: p.series === undefined ? undefined : originalUid(rc, p.series) } : undefined;
  const reply = jsonReply(rc, up, (o) => {
    const sop = o['00080018']?.Value?.[0];
    if (typeof sop === 'string') { const f = factsOf(o); seen.set(sop, f); rc.facts.putInstance(sop, f); }
    if (recordVisible(rc, jsonAttrs(o))) { rc.note.outOfScope++; return undefined; }
    const out = deidJson(rc, o, true, maskedByRule(rc, o));
    noteStudy(rc.note, firstValue(o, '0020000D'), firstValue(out, '0020000D'), firstValue(o, '00100020'), 1);
    rewriteBulkDataUris(out, rc.dicomWebBase);
    rc.note.instances++;
    return out;
  });
  if (!scope) return reply;
  return {
    ...reply,
    body: (async function* () {
      yield* reply.body;
      if (seen.size) rc.facts.putScope(seen, scope.study, scope.series); // only once the list is complete
    })(),
  };
}

/** The transfer-syntax parameter a client asked for, if any (PS3.18 8.7.3.5). */
export function requestedTransferSyntax(accept: string | undefined): string | undefined {
  if (!accept) return undefined;
  for (const range of accept.split(',')) {
    try {
      const ct = parseContentType(range);
      if (ct.type === 'multipart/related' && (!ct.params.type || ct.params.type === 'application/dicom') && ct.params['transfer-syntax']) {
        return ct.params['transfer-syntax'];
      }
    } catch { /* ignore unparsable ranges */ }
  }
  return undefined;
}

/** True when the client accepts a multipart/related of application/dicom (or anything). */
export function acceptsDicomMultipart(accept: string | undefined): boolean {
  if (!accept || accept.trim() === '') return true;
  return accept.split(',').some((range) => {
    try {
      const ct = parseContentType(range);
      return ct.type === '*/*' || ct.type === 'multipart/*' || (ct.type === 'multipart/related' && (!ct.params.type || ct.params.type === 'application/dicom'));
    } catch {
      return false;
    }
  });
}

/**
 * WADO-RS retrieve of a study, series or instance: each part is a Part 10 instance,
 * de-identified as a stream and written under a fresh boundary. An instance whose pixels
 * the policy withholds is left out and counted (Warning header where known in advance).
 */
export async function retrieve(rc: RequestContext, p: { study: string; series?: string; instance?: string }, accept: string | undefined): Promise<Reply> {
  if (!acceptsDicomMultipart(accept)) throw new GatewayError('NOT_ACCEPTABLE', 'this resource is served as multipart/related; type="application/dicom"');
  const ts = requestedTransferSyntax(accept);
  if (ts !== undefined && ts !== '*' && !/^[0-9.]{1,64}$/.test(ts)) throw new GatewayError('NOT_ACCEPTABLE', 'transfer-syntax must be a UID or *');
  // Masking needs native pixel data: a client that accepts any syntax (`*`) gets the PACS's
  // default (Explicit VR Little Endian) when its policy masks; a specific compressed syntax
  // leaves masked instances withheld (the engine refuses to mask compressed pixel data).
  const upTs = ts === '*' && rc.client.pixels.risky === 'mask' ? undefined : ts;
  const acceptFor = (t: string | undefined): string => `multipart/related; type="application/dicom"${t ? `; transfer-syntax=${t}` : ''}`;
  // A face cut needs native pixels too: a client that accepts any syntax waits for the face
  // decisions before the retrieve is asked for, so that only a study with a face to cut is
  // transcoded (the others keep their stored syntax).
  const afterFaces = upTs === '*' && (rc.client.pixels.faces ?? 'deface') === 'deface';
  // Which instances the pixel policy withholds, before the status line: a direct instance
  // request is refused, a study or series says how many it leaves out (Warning 299).
  const study = originalUid(rc, p.study);
  const series = p.series === undefined ? undefined : originalUid(rc, p.series);
  const sop = p.instance === undefined ? undefined : originalUid(rc, p.instance);
  await requireVisible(rc, p);
  // Both requests go out at once: the retrieve streams while the facts are computed (the PACS
  // reads every file of the study for them), and only the status line waits for the facts.
  const path = `/studies/${study}${series === undefined ? '' : `/series/${series}`}${sop === undefined ? '' : `/instances/${sop}`}`;
  let retrieving = afterFaces ? undefined : ok(rc, path, acceptFor(upTs));
  retrieving?.catch(() => { /* surfaced below, or dropped when the facts refuse first */ });
  let facts: Map<string, Facts>;
  try {
    facts = await pixelFacts(rc, study, series, sop);
  } catch (e) {
    void retrieving?.then((r) => r.dump(), () => undefined);
    throw e;
  }
  const refuse = async (e: GatewayError): Promise<never> => {
    await retrieving?.then((r) => r.dump(), () => undefined);
    throw e;
  };
  if (sop !== undefined && !facts.has(sop)) await refuse(new GatewayError('NOT_FOUND', 'no such resource'));
  // Only what the client may see counts: out-of-scope instances are neither sent nor announced.
  const unrestricted = rc.client.scope.unrestricted();
  const inScope = unrestricted ? [...facts.values()] : [...facts.values()].filter((f) => !recordVisible(rc, factsAttrs(f)));
  if (facts.size > 0 && inScope.length === 0) {
    const f = facts.values().next().value!;
    await refuse(new GatewayError('NOT_FOUND', 'no such resource', { auditReason: `out-of-scope:${recordVisible(rc, factsAttrs(f)) ?? 'unknown'}` }));
  }
  try {
    await ensureFaces(rc, new Map([...facts].filter(([, f]) => inScope.includes(f))));
  } catch (e) {
    return refuse(e as GatewayError);
  }
  const denials = inScope.map((f) => decide(rc, f)).filter((d): d is Extract<PixelDecision, { allow: false }> => !d.allow);
  const announced = denials.length;
  // A multipart needs at least one part (RFC 2046 5.1.1): nothing to send is a 403 too.
  if (sop === undefined && inScope.length > 0 && announced === inScope.length) {
    for (const d of denials) noteWithheld(rc.note, d.auditReason);
    await refuse(pixelsWithheld(denials[0]!, `all ${announced} instance(s) are withheld by the pixel policy`));
  }
  if (sop !== undefined && announced > 0) {
    noteWithheld(rc.note, denials[0]!.auditReason);
    await refuse(pixelsWithheld(denials[0]!));
  }
  retrieving ??= ok(rc, path, acceptFor(inScope.some((f) => { const d = decide(rc, f); return d.allow && !!d.face; }) ? undefined : upTs));
  const up = await retrieving;
  expectType(up, 'multipart/related');
  const boundary = newBoundary();
  const upBoundary = parseContentType(up.contentType).params.boundary;
  const ctx = rc.client.ctx;
  const note = rc.note;
  const maxHeaderBytes = rc.maxHeaderBytes;
  let sent = 0;
  async function* parts(): AsyncGenerator<{ headers: Record<string, string>; body: AsyncIterable<Buffer> }> {
    yield* admittedParts();
    // Nothing left to send (every instance refused in the stream): a multipart needs a part
    // (RFC 2046 5.1.1), and nothing has been written yet, so this is still a clean problem.
    if (sent === 0 && note.withheld > 0) throw new GatewayError('PIXELS_WITHHELD', 'every instance asked for is withheld by the pixel policy', { auditReason: Object.keys(note.withheldBy ?? {})[0] ?? 'pixels-withheld:unknown' });
    if (sent === 0) throw new GatewayError('NOT_FOUND', 'no such resource', { auditReason: 'out-of-scope:all-instances' });
  }
  async function* admittedParts(): AsyncGenerator<{ headers: Record<string, string>; body: AsyncIterable<Buffer> }> {
    for await (const part of readMultipart(up.body, upBoundary, { sniffBoundary: true })) {
      const out = admitPart(part);
      // Pull the first chunk here: a withheld instance is skipped before its part begins.
      const it = out[Symbol.asyncIterator]();
      let first: IteratorResult<Buffer>;
      try {
        first = await it.next();
      } catch (e) {
        if (e instanceof GatewayError && (e.code === 'PIXELS_WITHHELD' || e.auditReason?.startsWith('out-of-scope:'))) {
          if (e.code === 'PIXELS_WITHHELD') noteWithheld(note, e.auditReason); else note.outOfScope++;
          for await (const _ of part.body) { /* drained */ }
          continue;
        }
        throw e;
      }
      note.instances++;
      sent++;
      if (maskedPart) note.masked++;
      const partTs = partTransferSyntax(part);
      yield {
        headers: { 'content-type': `application/dicom${partTs ? `; transfer-syntax=${partTs}` : ''}` },
        body: (async function* () { if (!first.done) yield first.value; yield* { [Symbol.asyncIterator]: () => it }; })(),
      };
    }
  }
  let patientOfPart: string | undefined;
  let maskedPart = false;
  function admitPart(part: Part): AsyncGenerator<Buffer> {
    maskedPart = false;
    return deidentifyPart10(part.body, ctx, {
      maxHeaderBytes,
      onInstance: (i) => { noteStudy(note, i.original.study, i.pseudonymous.study, patientOfPart, 1); rc.observeDeid?.('part10', i.deidSeconds); },
      admit: (attr) => {
        patientOfPart = attr(TAG.patientId);
        // Scope first (inside admitHeader): an out-of-scope instance is skipped silently, not counted as withheld.
        const r = admitHeader(rc, attr);
        if (r?.mask) maskedPart = true;
        else if (r?.risk) note.riskyAllowed++; // allowed by an explicit policy, and counted
        if (r?.face) note.defaced = (note.defaced ?? 0) + 1;
        if (r?.faceAllowed) note.facesAllowed = (note.facesAllowed ?? 0) + 1;
        return r;
      },
    });
  }
  const headers: Record<string, string> = { 'content-type': `multipart/related; type="application/dicom"; boundary=${boundary}` };
  if (announced > 0) headers.warning = `299 deid-gateway "${announced} instance(s) withheld by the pixel policy"`;
  return { status: 200, headers, body: withFlush(rc, writeMultipart(parts(), boundary)) };
}

function partTransferSyntax(part: Part): string | undefined {
  const ct = part.headers['content-type'];
  if (!ct) return undefined;
  try {
    const ts = parseContentType(ct).params['transfer-syntax'];
    return ts && /^[0-9.]{1,64}$/.test(ts) ? ts : undefined;
  } catch {
    return undefined;
  }
}

type Facts = InstanceFacts;

const OVERLAY_BIT_TAGS = Array.from({ length: 16 }, (_, i) => `60${(i * 2).toString(16).toUpperCase().padStart(2, '0')}0102`);

/** Pixel facts of one DICOM JSON object (original values). */
function factsOf(r: JsonDataset): Facts {
  const s = (k: string): string | undefined => { const v = r[k]?.Value; return Array.isArray(v) ? v.map(String).join('\\') : undefined; };
  const a = jsonAttrs(r);
  const scope: Record<number, string> = {};
  for (const tag of Object.values(TAG)) { const v = a(tag); if (v !== undefined) scope[tag] = v; }
  // Overlays embedded in the pixel cells (a bit position and no Overlay Data of their own).
  const overlayBits = OVERLAY_BIT_TAGS.flatMap((t) => {
    const bit = Number(s(t));
    return Number.isInteger(bit) && bit > 0 && !r[`${t.slice(0, 4)}3000`] ? [bit] : [];
  });
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
function decide(rc: RequestContext, f: Facts): PixelDecision {
  return pixelDecision(f, rc.client.pixels, { series: f.scope?.[TAG.seriesUid], lookup: (s) => rc.faces.decision(s) });
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
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<'timeout'>((resolve) => { timer = setTimeout(() => resolve('timeout'), rc.faceWaitMs); });
  try {
    const r = await Promise.race([all, timeout]);
    if (r === 'timeout') {
      all.catch(() => undefined);
      throw new GatewayError('PIXELS_PENDING', 'the face decision of this series is still being made; try again shortly', { retryAfter: Math.max(1, Math.ceil(rc.faceWaitMs / 1000)), auditReason: 'pixels-pending:face' });
    }
  } finally {
    clearTimeout(timer);
  }
}

/** A series as the face provider reads it from the PACS: its metadata, and instances uncompressed. */
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
    async instance(sop) {
      const up = await ok(lasting, `/studies/${study}/series/${series}/instances/${sop}`, 'multipart/related; type="application/dicom"; transfer-syntax=1.2.840.10008.1.2.1');
      expectType(up, 'multipart/related');
      let out: Buffer | undefined;
      for await (const part of readMultipart(up.body, parseContentType(up.contentType).params.boundary, { sniffBoundary: true })) {
        const chunks: Buffer[] = [];
        for await (const c of part.body) if (!out) chunks.push(Buffer.from(c));
        out ??= Buffer.concat(chunks);
      }
      if (!out) throw new GatewayError('NOT_FOUND', 'no such resource');
      return out;
    },
  };
}

/** Geometry of one frame (frames endpoint) or of all frames (bulk pixel data), from the facts. */
function geometryOf(f: Facts, frames: number, littleEndian: boolean): PixelGeometry {
  const n = (v: string | undefined, d: number): number => (v === undefined || v === '' ? d : Number(v.split('\\')[0]));
  return {
    rows: n(f.rows, Number.NaN), columns: n(f.columns, Number.NaN), samplesPerPixel: n(f.samplesPerPixel, 1), bitsAllocated: n(f.bitsAllocated, Number.NaN),
    planarConfiguration: n(f.planarConfiguration, 0), frames, photometric: (f.photometric ?? '').toUpperCase(), littleEndian,
  };
}

/** The scope attributes of cached facts (missing ones read as absent: rules that need them deny). */
function factsAttrs(f: Facts): Attrs {
  return (tag) => f.scope?.[tag];
}

/** Geometry and pixel module of a classic image: what the face provider needs besides the pixels. */
const GEOMETRY_TAGS = ['00200032', '00200037', '00280030', '00281052', '00281053', '00280101', '00280103', '00280008', '00280010', '00280011', '00280002', '00280100', '00080060'];

/** The tags the facts query asks for: pixel facts and everything the scope rules read. */
const FACT_TAGS = [...new Set([...GEOMETRY_TAGS,
  '00280301', '00280302', '00080060', '00080016', '00080008', '00080018', '00080070', '00081090',
  '00280010', '00280011', '00280002', '00280008', '00280100', '00280006', '00280004', ...OVERLAY_BIT_TAGS,
  ...Object.values(TAG).map((t) => t.toString(16).toUpperCase().padStart(8, '0')),
])];

/** Pixel facts of the instances under an (original) study/series/instance, from the PACS. */
async function pixelFacts(rc: RequestContext, study: string, series?: string, sop?: string): Promise<Map<string, Facts>> {
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

async function requirePixels(rc: RequestContext, study: string, series: string, sop: string): Promise<Facts> {
  await requireInstance(rc, study, series, sop);
  const facts = (await pixelFacts(rc, study, series, sop)).get(sop);
  if (!facts) throw new GatewayError('NOT_FOUND', 'no such resource');
  if (!rc.client.scope.unrestricted()) { const d = recordVisible(rc, factsAttrs(facts)); if (d) throw notVisible(d); }

  if (facts.rows === undefined) throw new GatewayError('NOT_FOUND', 'this instance has no pixel data');
  await ensureFaces(rc, new Map([[sop, facts]]));
  const d = decide(rc, facts);
  if (!d.allow) {
    noteWithheld(rc.note, d.auditReason);
    throw pixelsWithheld(d, `the pixel data of this instance is withheld by policy (${d.reason})`);
  }
  if (rc.client.ctx.plan.lookup(0x7fe00010).action.kind !== 'keep') throw new GatewayError('PIXELS_WITHHELD', 'this client\'s policy removes pixel data', { auditReason: 'pixels-withheld:pixel-data-removed' });
  if (d.mask) rc.note.masked++;
  else if (d.risk) rc.note.riskyAllowed++;
  if (d.face) rc.note.defaced = (rc.note.defaced ?? 0) + 1;
  if (d.faceAllowed) rc.note.facesAllowed = (rc.note.facesAllowed ?? 0) + 1;
  return facts;
}


/** True when an instance's pixels must be changed before they leave (mask regions, embedded overlay bits). */
function needsCleaning(rc: RequestContext, facts: Facts): boolean {
  const d = decide(rc, facts);
  return (d.allow && (!!d.mask?.length || !!d.face?.length)) || (facts.overlayBits?.length ?? 0) > 0;
}

/**
 * The cleaned value bytes of an instance's native pixel data, streamed: the instance is asked
 * for uncompressed and passed through the engine (the same decision and masks as a retrieve,
 * taken from its own header), which emits only the pixel value. Frames and bulk pixel data of
 * instances that need cleaning are cut from this, never taken from the PACS's own frames or
 * bulk routes (which may be compressed, big-endian or unlabelled).
 */
async function* cleanedPixels(rc: RequestContext, study: string, series: string, sop: string): AsyncGenerator<Buffer> {
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
function admitHeader(rc: RequestContext, attr: (tag: number) => string | undefined): Admitted | undefined {
  return admitInstance(rc.client.scope, rc.client.pixels, attr, (s) => rc.faces.decision(s)); // PIXELS_WITHHELD with auditReason pixels-withheld:<risk>
}

/** One multipart part per requested frame, cut from the cleaned pixel stream (only requested frames are held). */
function cleanedFrames(rc: RequestContext, facts: Facts, pixels: AsyncIterable<Buffer>, wanted: readonly number[]): Reply {
  const g = geometryOf(facts, 1, true);
  const size = g.rows * g.columns * g.samplesPerPixel * (g.bitsAllocated / 8);
  if (!(size > 0)) throw new GatewayError('PIXELS_WITHHELD', 'the frame size of this instance cannot be determined, so its frames cannot be cleaned', { auditReason: 'pixels-withheld:cannot-clean' });
  const boundary = newBoundary();
  async function* parts(): AsyncGenerator<{ headers: Record<string, string>; body: AsyncIterable<Buffer> }> {
    const want = new Set(wanted);
    const got = new Map<number, Buffer[]>();
    let offset = 0;
    for await (const c of pixels) {
      for (let at = 0; at < c.length;) {
        const frame = Math.floor((offset + at) / size) + 1;
        const end = Math.min(c.length, (frame * size) - offset);
        if (want.has(frame)) (got.get(frame) ?? got.set(frame, []).get(frame)!).push(c.subarray(at, end));
        at = end;
      }
      offset += c.length;
    }
    for (const f of wanted) {
      const b = got.get(f);
      if (!b) throw new GatewayError('NOT_FOUND', `frame ${f} does not exist`);
      yield { headers: { 'content-type': 'application/octet-stream; transfer-syntax=1.2.840.10008.1.2.1' }, body: (async function* () { yield* b; })() };
    }
  }
  return { status: 200, headers: { 'content-type': `multipart/related; type="application/octet-stream"; boundary=${boundary}` }, body: withFlush(rc, writeMultipart(parts(), boundary)) };
}

/** A multipart of frames or bulk data passed through part by part (pixels only, no header). */
function passParts(rc: RequestContext, up: UpstreamResponse, defaultType: string): Reply {
  expectType(up, 'multipart/related');
  const boundary = newBoundary();
  const upCt = parseContentType(up.contentType);
  const type = upCt.params.type ?? defaultType;
  async function* parts(): AsyncGenerator<{ headers: Record<string, string>; body: AsyncIterable<Buffer> }> {
    for await (const part of readMultipart(up.body, upCt.params.boundary, { sniffBoundary: true })) {
      const ct = part.headers['content-type'] ?? type;
      let safe: string;
      try {
        const parsed = parseContentType(ct);
        const ts = parsed.params['transfer-syntax'];
        safe = `${parsed.type}${ts && /^[0-9.]{1,64}$/.test(ts) ? `; transfer-syntax=${ts}` : ''}`;
      } catch {
        safe = 'application/octet-stream';
      }
      yield { headers: { 'content-type': safe }, body: part.body };
    }
  }
  return {
    status: 200,
    headers: { 'content-type': `multipart/related; type="${type.replace(/"/g, '')}"; boundary=${boundary}` },
    body: withFlush(rc, writeMultipart(parts(), boundary)),
  };
}

/** WADO-RS frames of an instance whose pixels the policy allows. */
export async function frames(rc: RequestContext, p: { study: string; series: string; instance: string; frames: string }, accept: string | undefined): Promise<Reply> {
  if (!/^\d{1,9}(,\d{1,9}){0,999}$/.test(p.frames) || p.frames.split(',').some((n) => Number(n) < 1)) {
    throw new GatewayError('BAD_QUERY', 'frame list must be positive integers separated by commas');
  }
  const study = originalUid(rc, p.study);
  const series = originalUid(rc, p.series);
  const sop = originalUid(rc, p.instance);
  const facts = await requirePixels(rc, study, series, sop);
  rc.note.instances++;
  noteStudy(rc.note, study, p.study, facts.scope?.[TAG.patientId], 1);
  // Frames of an instance whose pixels must be cleaned are cut from the engine's output.
  if (needsCleaning(rc, facts)) return cleanedFrames(rc, facts, cleanedPixels(rc, study, series, sop), p.frames.split(',').map(Number));
  const up = await ok(rc, `/studies/${study}/series/${series}/instances/${sop}/frames/${p.frames}`, frameAccept(accept));
  return passParts(rc, up, 'application/octet-stream');
}

function frameAccept(accept: string | undefined): string {
  // Forward only a well-formed multipart/related media range; anything else becomes the default.
  if (accept) {
    for (const range of accept.split(',')) {
      try {
        const ct = parseContentType(range);
        if (ct.type === 'multipart/related' && ct.params.type && /^[a-z0-9.+/-]{1,64}$/i.test(ct.params.type)) {
          const ts = ct.params['transfer-syntax'];
          return `multipart/related; type="${ct.params.type}"${ts && /^([0-9.]{1,64}|\*)$/.test(ts) ? `; transfer-syntax=${ts}` : ''}`;
        }
      } catch { /* next */ }
    }
  }
  // PS3.18 8.7.3.5.2: without a transfer-syntax the default for frames is Explicit VR Little
  // Endian; Orthanc cannot serve `*` from big-endian or deflated instances.
  return 'multipart/related; type="application/octet-stream"';
}

/**
 * WADO-RS bulk data under the gateway's own URLs: only for attributes the plan keeps
 * unchanged (the PACS serves any tag, PatientName included, at /bulk/00100010), every
 * sequence on the path kept, nothing private; pixel data obeys the instance's pixel decision.
 */
export async function bulk(rc: RequestContext, p: { study: string; series: string; instance: string; path: string }, accept: string | undefined): Promise<Reply> {
  const parsed = parseBulkPath(p.path);
  if (!parsed) throw new GatewayError('NOT_FOUND', 'no such bulk data');
  const plan = rc.client.ctx.plan;
  parsed.tags.forEach((tag, i) => {
    const last = i === parsed.tags.length - 1;
    const entry = dictionary().lookup(tag);
    const action = plan.lookup(tag).action;
    // A sequence on the way must pass its items through the plain (inherit) mode: inside a
    // dummied or cleaned sequence, values may differ from the PACS's.
    const allowed = !isPrivateTag(tag) && entry !== undefined && (last ? action.kind === 'keep' && entry.vr !== 'SQ' : action.kind === 'sequence' && action.mode === 'inherit');
    if (!allowed) throw new GatewayError('NOT_FOUND', 'no such bulk data');
  });
  const study = originalUid(rc, p.study);
  const series = originalUid(rc, p.series);
  const sop = originalUid(rc, p.instance);
  const top = parsed.tags[0]!;
  let facts: Facts;
  if (top === 0x7fe00010 || top === 0x7fe00008 || top === 0x7fe00009 || (top >>> 16) === 0x5400 || ((top >>> 16) & 0xff01) === 0x6000) {
    facts = await requirePixels(rc, study, series, sop);
  } else {
    // Any other attribute: the same scope checks as the instance itself.
    await requireInstance(rc, study, series, sop);
    const f = (await pixelFacts(rc, study, series, sop)).get(sop);
    if (!f) throw new GatewayError('NOT_FOUND', 'no such resource');
    if (!rc.client.scope.unrestricted()) { const d = recordVisible(rc, factsAttrs(f)); if (d) throw notVisible(d); }
    facts = f;
  }
  rc.note.instances++;
  noteStudy(rc.note, study, p.study, facts.scope?.[TAG.patientId], 1);
  if ((top === 0x7fe00010 || top === 0x7fe00008 || top === 0x7fe00009) && needsCleaning(rc, facts)) {
    if (top !== 0x7fe00010) throw new GatewayError('PIXELS_WITHHELD', 'float pixel data cannot be cleaned', { auditReason: 'pixels-withheld:cannot-clean' });
    const boundary = newBoundary();
    const pixels = cleanedPixels(rc, study, series, sop);
    return {
      status: 200,
      headers: { 'content-type': `multipart/related; type="application/octet-stream"; boundary=${boundary}` },
      body: withFlush(rc, writeMultipart((async function* () { yield { headers: { 'content-type': 'application/octet-stream; transfer-syntax=1.2.840.10008.1.2.1' }, body: pixels }; })(), boundary)),
    };
  }
  const up = await ok(rc, `/studies/${study}/series/${series}/instances/${sop}/bulk/${p.path.toLowerCase()}`, accept && /multipart\/related/i.test(accept) ? frameAccept(accept) : 'multipart/related; type="application/octet-stream"');
  return passParts(rc, up, 'application/octet-stream');
}

/** The image format a client accepts for rendered resources (JPEG unless it prefers PNG). */
export function renderedFormat(accept: string | undefined): 'png' | 'jpeg' {
  if (!accept || accept.trim() === '') return 'jpeg';
  const ranges = accept.split(',').map((r) => r.split(';')[0]!.trim().toLowerCase());
  for (const r of ranges) {
    if (r === 'image/jpeg' || r === 'image/*' || r === '*/*') return 'jpeg';
    if (r === 'image/png') return 'png';
  }
  throw new GatewayError('NOT_ACCEPTABLE', 'rendered resources are served as image/jpeg or image/png');
}

function renderParams(params: URLSearchParams, thumbnail: boolean): { window?: { center: number; width: number }; viewport?: { width: number; height: number }; quality?: number } {
  const out: { window?: { center: number; width: number }; viewport?: { width: number; height: number }; quality?: number } = {};
  const w = params.get('window');
  if (w !== null) {
    const m = /^(-?\d+(?:\.\d+)?),(\d+(?:\.\d+)?)(?:,(linear))?$/i.exec(w.trim());
    if (!m || Number(m[2]) < 1) throw new GatewayError('BAD_QUERY', 'window must be center,width[,linear] with width ≥ 1');
    out.window = { center: Number(m[1]), width: Number(m[2]) };
  }
  const v = params.get('viewport');
  if (v !== null) {
    const m = /^(\d{1,5}),(\d{1,5})$/.exec(v.trim());
    if (!m || Number(m[1]) < 1 || Number(m[2]) < 1) throw new GatewayError('BAD_QUERY', 'viewport must be width,height in pixels');
    out.viewport = { width: Number(m[1]), height: Number(m[2]) };
  } else if (thumbnail) {
    out.viewport = { width: 128, height: 128 };
  }
  const q = params.get('quality');
  if (q !== null) {
    if (!/^\d{1,3}$/.test(q) || Number(q) < 1 || Number(q) > 100) throw new GatewayError('BAD_QUERY', 'quality must be 1–100');
    out.quality = Number(q);
  }
  return out;
}

/**
 * WADO-RS rendered and thumbnail resources (PS3.18 8.3.5), made by the gateway from the
 * de-identified, masked instance — never the PACS's rendering. Instance and frame level; a
 * study or series thumbnail shows a representative instance (the first, in UID order, whose
 * pixels this client may receive).
 */
export async function rendered(rc: RequestContext, p: { study: string; series?: string; instance?: string; frame?: string }, accept: string | undefined, params: URLSearchParams, thumbnail: boolean): Promise<Reply> {
  const opts = renderParams(params, thumbnail);
  let frame = 1;
  if (p.frame !== undefined) {
    if (!/^\d{1,9}$/.test(p.frame) || Number(p.frame) < 1) throw new GatewayError('BAD_QUERY', 'a rendered frame is one positive frame number');
    frame = Number(p.frame);
  }
  const study = originalUid(rc, p.study);
  const series = p.series === undefined ? undefined : originalUid(rc, p.series);
  const sop = p.instance === undefined ? undefined : originalUid(rc, p.instance);
  if (sop === undefined) {
    await requireVisible(rc, p);
    const all = [...(await pixelFacts(rc, study, series)).entries()].sort(([a], [b]) => a.localeCompare(b))
      .filter(([, f]) => f.rows !== undefined && (rc.client.scope.unrestricted() || !recordVisible(rc, factsAttrs(f))) && f.scope?.[TAG.seriesUid])
      .map(([sop, f]) => ({ sop, series: f.scope![TAG.seriesUid]!, decision: decide(rc, f) }));
    const releasable = all.filter((x) => x.decision.allow);
    if (!releasable.length) throw new GatewayError('PIXELS_WITHHELD', 'no instance here has pixels this client may receive', { auditReason: 'pixels-withheld:no-releasable-instance' });
    if (thumbnail) {
      // A study's or series' thumbnail: the first instance the client may receive.
      const format = renderedFormat(accept);
      return imageReply(rc, await renderInstance(rc, study, releasable[0]!.series, releasable[0]!.sop, frame, format, opts), format);
    }
    // Rendered study or series (PS3.18 10.4.1.1.3): every instance the client may receive,
    // rendered (its first frame), one part each; withheld ones are left out and counted.
    const format = renderedMultipartFormat(accept);
    const withheld = all.length - releasable.length;
    for (const { decision: d } of all) if (!d.allow) noteWithheld(rc.note, d.auditReason);
    const boundary = newBoundary();
    const headers: Record<string, string> = { 'content-type': `multipart/related; type="image/${format}"; boundary=${boundary}` };
    if (withheld > 0) headers.warning = `299 deid-gateway "${withheld} instance(s) withheld by the pixel policy"`;
    async function* parts(): AsyncGenerator<{ headers: Record<string, string>; body: AsyncIterable<Buffer> }> {
      let sent = 0;
      let skipped: GatewayError | undefined;
      for (const x of releasable) {
        let image: Buffer;
        try {
          image = await renderInstance(rc, study, x.series, x.sop, 1, format, opts);
        } catch (e) {
          // An instance this renderer cannot draw (palette colour, too large), or one its own
          // header withholds, is left out; anything else breaks the response.
          if (e instanceof GatewayError && (e.code === 'RENDERING_UNAVAILABLE' || e.code === 'PIXELS_WITHHELD')) {
            skipped ??= e;
            if (e.code === 'PIXELS_WITHHELD') noteWithheld(rc.note, e.auditReason);
            continue;
          }
          throw e;
        }
        sent++;
        yield { headers: { 'content-type': `image/${format}` }, body: (async function* () { yield image; })() };
      }
      if (sent === 0) throw skipped ?? new GatewayError('NOT_FOUND', 'no such resource'); // a multipart needs a part
    }
    return { status: 200, headers, body: withFlush(rc, writeMultipart(parts(), boundary)) };
  }
  if (series === undefined) throw new GatewayError('NOT_FOUND', 'no such resource');
  const format = renderedFormat(accept);
  return imageReply(rc, await renderInstance(rc, study, series, sop, frame, format, opts), format);
}

function imageReply(rc: RequestContext, image: Buffer, format: 'png' | 'jpeg'): Reply {
  return { status: 200, headers: { 'content-type': `image/${format}` }, body: withFlush(rc, (async function* () { yield image; })()) };
}

/** The media type of a rendered study or series: multipart/related; type="image/jpeg" (or png). */
export function renderedMultipartFormat(accept: string | undefined): 'png' | 'jpeg' {
  if (!accept || accept.trim() === '') return 'jpeg';
  for (const range of accept.split(/,(?=(?:[^"]*"[^"]*")*[^"]*$)/)) {
    const [type, ...ps] = range.split(';').map((x) => x.trim());
    const t = (type ?? '').toLowerCase();
    if (ps.some((x) => /^q\s*=\s*0(\.0{0,3})?$/i.test(x))) continue; // q=0: "not acceptable" (RFC 9110 12.4.2)
    if (t === '*/*' || t === 'multipart/*') return 'jpeg';
    if (t !== 'multipart/related') continue;
    const inner = ps.map((x) => /^type\s*=\s*"?([^";]+)"?$/i.exec(x)?.[1]?.toLowerCase()).find((x) => x !== undefined);
    if (inner === undefined || inner === 'image/jpeg' || inner === 'image/*') return 'jpeg';
    if (inner === 'image/png') return 'png';
  }
  throw new GatewayError('NOT_ACCEPTABLE', 'a rendered study or series is served as multipart/related; type="image/jpeg" or type="image/png"');
}

/**
 * One instance, uncompressed, through the engine (the same de-identification and masking as a
 * retrieve), held in memory (bounded by engine.maxRenderBytes) only to draw one frame of it.
 */
async function renderInstance(rc: RequestContext, study: string, series: string, sop: string, frame: number, format: 'png' | 'jpeg', opts: ReturnType<typeof renderParams>): Promise<Buffer> {
  const facts = await requirePixels(rc, study, series, sop);
  let pseudoStudy: string | undefined;
  const up = await ok(rc, `/studies/${study}/series/${series}/instances/${sop}`, 'multipart/related; type="application/dicom"');
  expectType(up, 'multipart/related');
  const chunks: Buffer[] = [];
  let size = 0;
  for await (const part of readMultipart(up.body, parseContentType(up.contentType).params.boundary, { sniffBoundary: true })) {
    if (chunks.length) { for await (const _ of part.body) { /* only the first part */ } continue; }
    const out = deidentifyPart10(part.body, rc.client.ctx, {
      maxHeaderBytes: rc.maxHeaderBytes,
      onInstance: (i) => { pseudoStudy = i.pseudonymous.study; },
      admit: (attr) => admitHeader(rc, attr), // decided again on the instance's own header
    });
    for await (const c of out) {
      size += c.length;
      if (size > rc.maxRenderBytes) throw new GatewayError('RENDERING_UNAVAILABLE', `this instance is larger than engine.maxRenderBytes (${rc.maxRenderBytes} bytes) and is not rendered`);
      chunks.push(c);
    }
  }
  if (!chunks.length) throw new GatewayError('NOT_FOUND', 'no such resource');
  const inst = readInstanceSync(Buffer.concat(chunks), (b) => inflateRawSync(b));
  if (!inst.pixel) throw new GatewayError('RENDERING_UNAVAILABLE', 'this instance has no native pixel data to render');
  const image = renderFrame({ elements: inst.elements, transferSyntax: inst.transferSyntax, pixel: inst.pixel }, { frame, format, ...opts });
  rc.note.instances++;
  noteStudy(rc.note, study, pseudoStudy, facts.scope?.[TAG.patientId], 1);
  return image;
}
