/**
 * DICOMweb handlers (PS3.18 QIDO-RS and WADO-RS), independent of express: each takes a
 * request context and returns a reply whose body is a lazy stream. Every body is produced
 * by the engine from the upstream's; nothing upstream passes as it came.
 */
import { GatewayError } from '../core/errors.js';
import { dictionary, isPrivateTag } from '../dicom/dictionary.js';
import { deidentifyJson, deidentifyPart10, type EngineContext, type JsonDataset } from '../deid/index.js';
import { parseContentType, readMultipart, writeMultipart, newBoundary, type Part } from '../dicomweb/multipart.js';
import { splitJsonArray, writeJsonArray } from '../dicomweb/json-array.js';
import { parseBulkPath, rewriteBulkDataUris, setRetrieveUrl, type Level } from '../dicomweb/urls.js';
import { pixelDecision } from '../policy/pixels.js';
import { FactsCache, type InstanceFacts } from '../policy/facts-cache.js';
import { mapUpstreamStatus, type Upstream, type UpstreamResponse } from '../upstream/client.js';
import { mapQuery, type QueryResolver } from './query.js';

export interface ClientRuntime {
  readonly id: string;
  readonly ctx: EngineContext;
  readonly tokenHash: Buffer;
}

/** What a request did, for the audit record (original and pseudonymous study UIDs). */
export interface RequestNote {
  instances: number;
  withheld: number;
  readonly studies: Map<string, string>;
}

export interface RequestContext {
  readonly client: ClientRuntime;
  readonly upstream: Upstream;
  readonly resolver: QueryResolver;
  /** Public base of the gateway's DICOMweb root, e.g. https://gw.example.org/dicom-web */
  readonly dicomWebBase: string;
  readonly signal: AbortSignal;
  readonly note: RequestNote;
  readonly maxQueryLimit: number;
  readonly maxHeaderBytes: number;
  /** Called once a response body completes, before its last byte: makes pseudonyms durable. */
  readonly flush: () => void;
  readonly facts: FactsCache;
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
  let t: string;
  try {
    t = parseContentType(r.contentType).type;
  } catch {
    throw new GatewayError('UPSTREAM_RESPONSE_INVALID', 'the PACS sent a body without a usable content type');
  }
  if (!types.includes(t)) throw new GatewayError('UPSTREAM_RESPONSE_INVALID', `the PACS sent another media type where ${types[0]} was expected`);
}

async function* withFlush(rc: RequestContext, body: AsyncIterable<Buffer>): AsyncGenerator<Buffer> {
  let pending: Buffer | undefined;
  for await (const c of body) {
    if (pending) yield pending;
    pending = c;
  }
  rc.flush(); // pseudonyms in this body are durable before its last byte leaves
  if (pending) yield pending;
}

/** A JSON array from the PACS, de-identified object by object. */
/** JSON.parse without its error message, which quotes the input (PHI). */
function parseObject(text: string): JsonDataset {
  try {
    const o = JSON.parse(text) as unknown;
    if (typeof o !== 'object' || o === null || Array.isArray(o)) throw new Error('not an object');
    return o as JsonDataset;
  } catch {
    throw new GatewayError('DICOM_JSON_MALFORMED', 'an object of the PACS response is not valid DICOM JSON');
  }
}

function jsonReply(rc: RequestContext, up: UpstreamResponse, each: (o: JsonDataset) => JsonDataset, warnings: readonly string[] = [], maxRows = Number.MAX_SAFE_INTEGER): Reply {
  const headers: Record<string, string> = { 'content-type': DICOM_JSON };
  if (warnings.length) headers.warning = warnings.join(', ');
  if (up.status === 204) return { status: 200, headers, body: (async function* () { rc.flush(); yield Buffer.from('[]'); })() };
  expectType(up, DICOM_JSON, 'application/json');
  let rows = 0;
  const objects = (async function* () {
    for await (const text of splitJsonArray(up.body)) {
      if (++rows > maxRows) break; // the PACS may ignore limit (FIELD-NOTES: limit=0 is unlimited)
      yield JSON.stringify(each(parseObject(text)));
    }
  })();
  return { status: 200, headers, body: withFlush(rc, writeJsonArray(objects)) };
}

function noteStudy(rc: RequestContext, original: unknown, pseudo: unknown): void {
  if (typeof original === 'string' && typeof pseudo === 'string' && rc.note.studies.size < 10_000) rc.note.studies.set(original, pseudo);
}

/** QIDO-RS: /studies, /series, /instances and their nested forms. */
export async function qido(rc: RequestContext, level: Level, scope: { study?: string; series?: string }, params: URLSearchParams): Promise<Reply> {
  const plan = rc.client.ctx.plan;
  const q = mapQuery(params, plan, rc.resolver, rc.maxQueryLimit);
  let path = '';
  if (scope.study) path += `/studies/${originalUid(rc, scope.study)}`;
  if (scope.series) path += `/series/${originalUid(rc, scope.series)}`;
  path += level === 'study' ? '/studies' : level === 'series' ? '/series' : '/instances';
  if (q.empty) {
    return { status: 200, headers: { 'content-type': DICOM_JSON, ...(q.warnings.length ? { warning: q.warnings.join(', ') } : {}) }, body: (async function* () { yield Buffer.from('[]'); })() };
  }
  const up = await ok(rc, path, DICOM_JSON, q.upstream);
  return jsonReply(rc, up, (o) => {
    const out = deidentifyJson(o, rc.client.ctx, { writeMarkers: false });
    noteStudy(rc, o['0020000D']?.Value?.[0], out['0020000D']?.Value?.[0]);
    setRetrieveUrl(out, rc.dicomWebBase, level);
    rewriteBulkDataUris(out, rc.dicomWebBase);
    return out;
  }, q.warnings, Number(q.upstream.get('limit')));
}

function upstreamPath(rc: RequestContext, p: { study: string; series?: string | undefined; instance?: string | undefined }): string {
  let path = `/studies/${originalUid(rc, p.study)}`;
  if (p.series !== undefined) path += `/series/${originalUid(rc, p.series)}`;
  if (p.instance !== undefined) path += `/instances/${originalUid(rc, p.instance)}`;
  return path;
}

/** WADO-RS metadata at study, series or instance level. */
export async function metadata(rc: RequestContext, p: { study: string; series?: string; instance?: string }): Promise<Reply> {
  const up = await ok(rc, `${upstreamPath(rc, p)}/metadata`, DICOM_JSON);
  // The metadata of a whole study or series is also its pixel facts (see policy/facts-cache.ts).
  const seen = new Map<string, Facts>();
  const scope = p.instance === undefined ? { study: originalUid(rc, p.study), series: p.series === undefined ? undefined : originalUid(rc, p.series) } : undefined;
  const reply = jsonReply(rc, up, (o) => {
    const sop = o['00080018']?.Value?.[0];
    if (typeof sop === 'string') { const f = factsOf(o); seen.set(sop, f); rc.facts.putInstance(sop, f); }
    const out = deidentifyJson(o, rc.client.ctx, { writeMarkers: true });
    noteStudy(rc, o['0020000D']?.Value?.[0], out['0020000D']?.Value?.[0]);
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
  const upAccept = `multipart/related; type="application/dicom"${ts ? `; transfer-syntax=${ts}` : ''}`;
  // Which instances the pixel policy withholds, before the status line: a direct instance
  // request is refused, a study or series says how many it leaves out (Warning 299).
  const study = originalUid(rc, p.study);
  const series = p.series === undefined ? undefined : originalUid(rc, p.series);
  const sop = p.instance === undefined ? undefined : originalUid(rc, p.instance);
  // Both requests go out at once: the retrieve streams while the facts are computed (the PACS
  // reads every file of the study for them), and only the status line waits for the facts.
  const path = `/studies/${study}${series === undefined ? '' : `/series/${series}`}${sop === undefined ? '' : `/instances/${sop}`}`;
  const retrieving = ok(rc, path, upAccept);
  retrieving.catch(() => { /* surfaced below, or dropped when the facts refuse first */ });
  let facts: Map<string, Facts>;
  try {
    facts = await pixelFacts(rc, study, series, sop);
  } catch (e) {
    void retrieving.then((r) => r.dump(), () => undefined);
    throw e;
  }
  const refuse = async (e: GatewayError): Promise<never> => {
    await retrieving.then((r) => r.dump(), () => undefined);
    throw e;
  };
  if (sop !== undefined && !facts.has(sop)) await refuse(new GatewayError('NOT_FOUND', 'no such resource'));
  const announced = [...facts.values()].filter((f) => !pixelDecision(f).allow).length;
  // A multipart needs at least one part (RFC 2046 5.1.1): nothing to send is a 403 too.
  if (sop === undefined && facts.size > 0 && announced === facts.size) {
    rc.note.withheld += announced;
    await refuse(new GatewayError('PIXELS_WITHHELD', `all ${announced} instance(s) are withheld by the pixel policy`));
  }
  if (sop !== undefined && announced > 0) {
    rc.note.withheld++;
    await refuse(new GatewayError('PIXELS_WITHHELD', `this instance is withheld by policy (${(pixelDecision(facts.get(sop)!) as { reason: string }).reason})`));
  }
  const up = await retrieving;
  expectType(up, 'multipart/related');
  const boundary = newBoundary();
  const upBoundary = parseContentType(up.contentType).params.boundary;
  const ctx = rc.client.ctx;
  const note = rc.note;
  const maxHeaderBytes = rc.maxHeaderBytes;
  async function* parts(): AsyncGenerator<{ headers: Record<string, string>; body: AsyncIterable<Buffer> }> {
    for await (const part of readMultipart(up.body, upBoundary, { sniffBoundary: true })) {
      const out = admitPart(part);
      // Pull the first chunk here: a withheld instance is skipped before its part begins.
      const it = out[Symbol.asyncIterator]();
      let first: IteratorResult<Buffer>;
      try {
        first = await it.next();
      } catch (e) {
        if (e instanceof GatewayError && e.code === 'PIXELS_WITHHELD') {
          note.withheld++;
          for await (const _ of part.body) { /* drained */ }
          continue;
        }
        throw e;
      }
      note.instances++;
      const partTs = partTransferSyntax(part);
      yield {
        headers: { 'content-type': `application/dicom${partTs ? `; transfer-syntax=${partTs}` : ''}` },
        body: (async function* () { if (!first.done) yield first.value; yield* { [Symbol.asyncIterator]: () => it }; })(),
      };
    }
  }
  function admitPart(part: Part): AsyncGenerator<Buffer> {
    return deidentifyPart10(part.body, ctx, {
      maxHeaderBytes,
      onInstance: (i) => { if (i.original.study && note.studies.size < 10_000) note.studies.set(i.original.study, i.pseudonymous.study); },
      admit: (f) => { const d = pixelDecision(f); return d.allow ? undefined : d.reason; },
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

/** Pixel facts of one DICOM JSON object (original values). */
function factsOf(r: JsonDataset): Facts {
  const s = (k: string): string | undefined => { const v = r[k]?.Value; return Array.isArray(v) ? v.map(String).join('\\') : undefined; };
  return { burnedInAnnotation: s('00280301'), modality: s('00080060'), sopClassUid: s('00080016'), imageType: s('00080008'), rows: s('00280010') };
}

/** Pixel facts of the instances under an (original) study/series/instance, from the PACS. */
async function pixelFacts(rc: RequestContext, study: string, series?: string, sop?: string): Promise<Map<string, Facts>> {
  if (sop) {
    const known = rc.facts.instance(sop);
    if (known) return new Map([[sop, known]]);
  } else {
    const known = rc.facts.scope(study, series);
    if (known) return known;
  }
  // One includefield per attribute: a comma list is sent as %2C, which Orthanc does not split.
  const q = new URLSearchParams(['00280301', '00080060', '00080016', '00080008', '00080018', '00280010'].map((t): [string, string] => ['includefield', t]));
  if (sop) q.set('SOPInstanceUID', sop);
  const path = series ? `/studies/${study}/series/${series}/instances` : `/studies/${study}/instances`;
  const up = await ok(rc, path, DICOM_JSON, q);
  const out = new Map<string, Facts>();
  if (up.status === 204) return out;
  expectType(up, DICOM_JSON, 'application/json');
  for await (const text of splitJsonArray(up.body, { maxElementBytes: 1 << 20 })) {
    const r = parseObject(text);
    const uid = r['00080018']?.Value?.[0];
    if (typeof uid === 'string') out.set(uid, factsOf(r));
  }
  if (sop) { const f = out.get(sop); if (f) rc.facts.putInstance(sop, f); } else rc.facts.putScope(out, study, series);
  return out;
}

async function requirePixels(rc: RequestContext, study: string, series: string, sop: string): Promise<void> {
  const facts = (await pixelFacts(rc, study, series, sop)).get(sop);
  if (!facts) throw new GatewayError('NOT_FOUND', 'no such resource');
  if (facts.rows === undefined) throw new GatewayError('NOT_FOUND', 'this instance has no pixel data');
  const d = pixelDecision(facts);
  if (!d.allow) {
    rc.note.withheld++;
    throw new GatewayError('PIXELS_WITHHELD', `the pixel data of this instance is withheld by policy (${d.reason})`);
  }
  if (rc.client.ctx.plan.lookup(0x7fe00010).action.kind !== 'keep') throw new GatewayError('PIXELS_WITHHELD', 'this client\'s policy removes pixel data');
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
  await requirePixels(rc, study, series, sop);
  const up = await ok(rc, `/studies/${study}/series/${series}/instances/${sop}/frames/${p.frames}`, frameAccept(accept));
  rc.note.instances++;
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
  if (top === 0x7fe00010 || top === 0x7fe00008 || top === 0x7fe00009 || (top >>> 16) === 0x5400 || ((top >>> 16) & 0xff01) === 0x6000) {
    await requirePixels(rc, study, series, sop);
  }
  const up = await ok(rc, `/studies/${study}/series/${series}/instances/${sop}/bulk/${p.path.toLowerCase()}`, accept && /multipart\/related/i.test(accept) ? frameAccept(accept) : 'multipart/related; type="application/octet-stream"');
  rc.note.instances++;
  return passParts(rc, up, 'application/octet-stream');
}
