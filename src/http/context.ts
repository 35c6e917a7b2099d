/**
 * The request context every DICOMweb handler takes, its audit note, and the helpers they share:
 * pseudonym → original UID, upstream calls, JSON replies, scope checks of a path.
 */
import { GatewayError } from '../core/errors.js';
import { MAX_QUERY_RESULTS } from '../config/schema.js';
import type { EngineContext, JsonDataset } from '../deid/index.js';
import { parseContentType } from '../dicomweb/multipart.js';
import { parseJsonObject, splitJsonArray, writeJsonArray } from '../dicomweb/json-array.js';
import type { PixelPolicy } from '../policy/pixels.js';
import type { FaceProvider } from '../pixels/face/provider.js';
import type { TextProvider } from '../pixels/text/provider.js';
import type { FactsCache } from '../policy/facts-cache.js';
import { mapUpstreamStatus, type Upstream, type UpstreamResponse } from '../upstream/client.js';
import type { ClientScope } from '../policy/client-scope.js';
import type { QueryResolver } from './query.js';
import type { WriteHooks } from './write-gathered.js';

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
  /** Text regions masked under risky: detect (count and boxes, no pixel content). */
  textRegions?: number;
  textBoxes?: [number, number, number, number][];
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
  /** Text decisions of risky instances under risky: detect (src/pixels/text/provider.ts). */
  readonly text: TextProvider;
  /** How long a request waits for a series' face decision before 503 with Retry-After, ms. */
  readonly faceWaitMs: number;
  /** Observes de-identification time per object (metrics), when metrics are on. */
  readonly observeDeid?: ((kind: 'json' | 'part10', seconds: number) => void) | undefined;
}

export interface Reply {
  readonly status: number;
  readonly headers: Record<string, string>;
  readonly body: AsyncIterable<Buffer>;
  /** Calls to make once given chunks of the body have been written to the client (streamed replies). */
  readonly writeHooks?: WriteHooks;
}

export const DICOM_JSON = 'application/dicom+json';

/** Maps path UIDs (pseudonymous) to originals; unknown → 404, never forwarded as typed. */
export function originalUid(rc: RequestContext, pseudo: string | undefined): string {
  if (!pseudo || !/^[0-9.]{1,64}$/.test(pseudo)) throw new GatewayError('NOT_FOUND', 'no such resource');
  const o = rc.resolver.uid(pseudo);
  if (o === undefined) throw new GatewayError('NOT_FOUND', 'no such resource');
  return o;
}

export async function ok(rc: RequestContext, path: string, accept: string, query?: URLSearchParams): Promise<UpstreamResponse> {
  const r = await rc.upstream.get({ path, accept, signal: rc.signal, ...(query ? { query } : {}) });
  if (r.status === 200 || r.status === 206) return r;
  await r.dump();
  if (r.status === 204) return { ...r, status: 204 };
  throw mapUpstreamStatus(r.status);
}

export function expectType(r: UpstreamResponse, ...types: string[]): void {
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

export async function* withFlush(rc: RequestContext, body: AsyncIterable<Buffer>): AsyncGenerator<Buffer> {
  let pending: Buffer | undefined;
  for await (const c of body) {
    if (pending) yield pending;
    pending = c;
  }
  await rc.flush(); // pseudonyms in this body are durable before its last byte leaves
  if (pending) yield pending;
}

export const parseObject = (text: string): JsonDataset => parseJsonObject<JsonDataset>(text);

/** A JSON array from the PACS, de-identified object by object. */
export function jsonReply(rc: RequestContext, up: UpstreamResponse, each: (o: JsonDataset) => JsonDataset | undefined, warnings: readonly string[] = [], maxRows = Number.MAX_SAFE_INTEGER): Reply {
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

/** `[]` without asking the PACS: nothing this client may see can match. */
export function emptyJsonReply(warnings: readonly string[]): Reply {
  return { status: 200, headers: { 'content-type': DICOM_JSON, ...(warnings.length ? { warning: warnings.join(', ') } : {}) }, body: (async function* () { yield Buffer.from('[]'); })() };
}

export function noteStudy(note: RequestNote, original: unknown, pseudo: unknown, patientId: unknown, instances = 0): void {
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

export const firstValue = (o: JsonDataset, tag: string): unknown => o[tag]?.Value?.[0];

/** Counts instances the pixel policy withheld, with the reason the audit record gives. */
export function noteWithheld(note: RequestNote, reason: string | undefined, n = 1): void {
  note.withheld += n;
  const by = (note.withheldBy ??= Object.create(null) as Record<string, number>);
  const key = reason ?? 'pixels-withheld:unknown';
  by[key] = (by[key] ?? 0) + n;
}
