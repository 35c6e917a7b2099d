/**
 * Is this study / series / instance visible to the client (issue 4)? Answers from the PACS's
 * own attributes, fetched with cheap QIDO queries (Orthanc answers them from its index) and
 * cached by original UID for all clients (the facts are the PACS's; verdicts are per client):
 *   - a study's row (Patient ID, Issuer, Study Date, Accession Number);
 *   - its series (Modality, Body Part Examined, instance count), only when series or instance
 *     rules exist;
 *   - a series' instances (SOP Class), only when instance rules exist.
 * Something not visible throws NOT_FOUND with the real reason for the audit log only, so a
 * client cannot tell "out of scope" from "does not exist".
 *
 * These checks decide the status line; every record that is actually sent is checked again on
 * its own attributes (QIDO rows, metadata objects, each Part 10 header) — the authoritative check.
 */
import { GatewayError } from '../core/errors.js';
import { parseJsonObject, splitJsonArray } from '../dicomweb/json-array.js';
import { parseContentType } from '../dicomweb/multipart.js';
import type { JsonDataset } from '../deid/index.js';
import { mapUpstreamStatus } from '../upstream/client.js';
import {
  hasInstanceRules, hasSeriesRules, instanceDenial, jsonAttrs, notVisible, seriesDenial, studyDenial, TAG, type Attrs, type Denial,
} from '../policy/scope.js';
import { originalUid, type RequestContext } from './context.js';

const DICOM_JSON = 'application/dicom+json';
const MAX_ROWS = 100_000;

type Row = Readonly<Record<string, { Value?: unknown[] } | undefined>>;

export interface SeriesFacts {
  readonly uid: string;
  readonly attrs: Row;
  readonly instances: number;
}

/** GET of a QIDO list from the PACS, parsed (rows are small: index attributes only). */
export async function queryRows(rc: RequestContext, path: string, params: URLSearchParams): Promise<Row[]> {
  const r = await rc.upstream.get({ path, accept: DICOM_JSON, signal: rc.signal, query: params });
  if (r.status === 204) { await r.dump(); return []; }
  if (r.status !== 200 && r.status !== 206) { await r.dump(); throw mapUpstreamStatus(r.status); }
  let type: string | undefined;
  try { type = parseContentType(r.contentType).type; } catch { type = undefined; }
  if (type !== DICOM_JSON && type !== 'application/json') {
    await r.dump();
    throw new GatewayError('UPSTREAM_RESPONSE_INVALID', `the PACS sent another media type where ${DICOM_JSON} was expected`);
  }
  const out: Row[] = [];
  for await (const text of splitJsonArray(r.body, { maxElementBytes: 1 << 20 })) {
    if (out.length >= MAX_ROWS) throw new GatewayError('UPSTREAM_RESPONSE_INVALID', 'the PACS listed more records than the gateway checks at once');
    out.push(parseJsonObject<Row>(text));
  }
  return out;
}

const uidOf = (r: Row, tag: number): string | undefined => jsonAttrs(r)(tag);

/**
 * Series and instance records the checks of one request have read, each list counted once per
 * request (at least 1), whether it came from the PACS or from the cache, so that the same query
 * stops at the same place: a filtered QIDO counts them against server.maxQueryScan.
 */
const examined = new WeakMap<RequestContext, { records: number; lists: Set<string> }>();

function examine(rc: RequestContext, key: string, records: number): void {
  let e = examined.get(rc);
  if (!e) { e = { records: 0, lists: new Set() }; examined.set(rc, e); }
  if (e.lists.has(key)) return;
  e.lists.add(key);
  e.records += Math.max(1, records);
}

/** The records the visibility checks of this request have read so far. */
export function examinedRecords(rc: RequestContext): number {
  return examined.get(rc)?.records ?? 0;
}

async function studyRow(rc: RequestContext, study: string): Promise<Row | undefined> {
  const key = `study:${study}`;
  const known = rc.facts.get<{ row: Row | null }>(key);
  if (known) return known.row ?? undefined;
  // Patient ID and Issuer asked for explicitly: the opt-out check must not depend on the PACS's defaults.
  const q = new URLSearchParams([['StudyInstanceUID', study], ['includefield', '00100020'], ['includefield', '00100021'], ['limit', '2']]);
  const rows = (await queryRows(rc, '/studies', q)).filter((r) => uidOf(r, TAG.studyUid) === study);
  const row = rows[0];
  rc.facts.put(key, { row: row ?? null });
  return row;
}

async function seriesOf(rc: RequestContext, study: string): Promise<readonly SeriesFacts[]> {
  const key = `series:${study}`;
  const known = rc.facts.get<readonly SeriesFacts[]>(key);
  if (known) { examine(rc, key, known.length); return known; }
  const q = new URLSearchParams([['includefield', '00180015'], ['includefield', '00201209'], ['limit', '0']]);
  const list = (await queryRows(rc, `/studies/${study}/series`, q)).flatMap((r): SeriesFacts[] => {
    const uid = uidOf(r, TAG.seriesUid);
    const n = Number(jsonAttrs(r)(0x00201209) ?? '0');
    return uid ? [{ uid, attrs: r, instances: Number.isFinite(n) ? n : 0 }] : [];
  });
  rc.facts.put(key, list);
  examine(rc, key, list.length);
  return list;
}

async function instancesOf(rc: RequestContext, study: string, series: string): Promise<readonly Row[]> {
  const key = `instances:${study}/${series}`;
  const known = rc.facts.get<readonly Row[]>(key);
  if (known) { examine(rc, key, known.length); return known; }
  const list = await queryRows(rc, `/studies/${study}/series/${series}/instances`, new URLSearchParams([['limit', '0']]));
  rc.facts.put(key, list);
  examine(rc, key, list.length);
  return list;
}

/**
 * The instances of a study, or of one of its series, whose SOP class the client's instance rules
 * allow: asked of the PACS with the classes pushed down (SOPClassUID as a list), so that the
 * instances a client may not see are neither fetched nor examined, and the time a check takes
 * does not depend on how many there are (issue 15). Each row is checked again here.
 */
async function allowedInstancesOf(rc: RequestContext, study: string, series?: string): Promise<readonly Row[]> {
  const rules = rc.client.scope.rules();
  const classes = [...(rules.sopClasses ?? [])].sort().join(',');
  const key = `allowed-instances:${study}/${series ?? '*'}|${classes}`;
  const known = rc.facts.get<readonly Row[]>(key);
  if (known) { examine(rc, key, known.length); return known; }
  const q = new URLSearchParams([['00080016', classes], ['includefield', '0020000E'], ['includefield', '00080016'], ['limit', '0']]);
  const rows = classes === '' ? [] : await queryRows(rc, `/studies/${study}${series === undefined ? '' : `/series/${series}`}/instances`, q);
  const list = rows.filter((i) => !instanceDenial(rules, jsonAttrs(i)) && (series === undefined || uidOf(i, TAG.seriesUid) === series));
  rc.facts.put(key, list);
  examine(rc, key, list.length);
  return list;
}

/** The visible series of a study (all of them when there are no series or instance rules). */
export async function visibleSeries(rc: RequestContext, study: string): Promise<{ series: SeriesFacts[]; instances: number } | undefined> {
  const rules = rc.client.scope.rules();
  if (!hasSeriesRules(rules) && !hasInstanceRules(rules)) return undefined;
  const out: SeriesFacts[] = [];
  let instances = 0;
  // Instance rules: the allowed instances of the study in one query, counted by series; with
  // series rules too, of each series the client may see (a hidden series is not read at all).
  const allowed = new Map<string, number>();
  if (hasInstanceRules(rules) && !hasSeriesRules(rules)) for (const i of await allowedInstancesOf(rc, study)) { const u = uidOf(i, TAG.seriesUid) ?? ''; allowed.set(u, (allowed.get(u) ?? 0) + 1); }
  for (const s of await seriesOf(rc, study)) {
    if (seriesDenial(rules, jsonAttrs(s.attrs))) continue;
    if (hasInstanceRules(rules)) {
      const n = hasSeriesRules(rules) ? (await allowedInstancesOf(rc, study, s.uid)).length : allowed.get(s.uid) ?? 0;
      if (n === 0) continue;
      instances += n;
    } else {
      instances += s.instances;
    }
    out.push(s);
  }
  return { series: out, instances };
}

/** Throws NOT_FOUND (audit: the reason) unless the study passes the study rules and has something visible. */
export async function requireStudy(rc: RequestContext, study: string): Promise<void> {
  if (rc.client.scope.unrestricted()) return;
  const row = await studyRow(rc, study);
  // Unknown to the PACS: 404 here, because Orthanc answers nested QIDO on an unknown study with
  // 200 [], and a restricted client must not tell "absent" from "out of scope".
  if (!row) throw new GatewayError('NOT_FOUND', 'no such resource', { auditReason: 'not-found' });
  await requireStudyRow(rc, jsonAttrs(row), study);
}

/** The study-level verdict on a record that carries the study's attributes, then its series. */
export async function requireStudyRow(rc: RequestContext, a: Attrs, study: string): Promise<void> {
  const rules = rc.client.scope.rules();
  const d = studyDenial(rules, rc.client.scope.optOut(), a);
  if (d) throw notVisible(d);
  const vis = await visibleSeries(rc, study);
  if (vis && vis.series.length === 0) throw notVisible(hasSeriesRules(rules) ? firstSeriesDenial(rules, await seriesOf(rc, study)) : 'sop-class');
}

function firstSeriesDenial(rules: ReturnType<RequestContext['client']['scope']['rules']>, series: readonly SeriesFacts[]): Denial {
  for (const s of series) { const d = seriesDenial(rules, jsonAttrs(s.attrs)); if (d) return d; }
  return 'sop-class';
}

export async function requireSeries(rc: RequestContext, study: string, series: string): Promise<void> {
  if (rc.client.scope.unrestricted()) return;
  await requireStudy(rc, study);
  const rules = rc.client.scope.rules();
  const s = (await seriesOf(rc, study)).find((x) => x.uid === series);
  if (!s) throw new GatewayError('NOT_FOUND', 'no such resource', { auditReason: 'not-found' });
  const d = seriesDenial(rules, jsonAttrs(s.attrs));
  if (d) throw notVisible(d);
  if (hasInstanceRules(rules) && (await allowedInstancesOf(rc, study, series)).length === 0) throw notVisible('sop-class');
}

export async function requireInstance(rc: RequestContext, study: string, series: string, sop: string): Promise<void> {
  if (rc.client.scope.unrestricted()) return;
  await requireSeries(rc, study, series);
  const rules = rc.client.scope.rules();
  if (hasInstanceRules(rules)) {
    // Looked up among the allowed instances; one that is not there is asked for on its own (one
    // row, whatever the series holds), for the audit's reason.
    if ((await allowedInstancesOf(rc, study, series)).some((x) => uidOf(x, TAG.sopUid) === sop)) return;
    const one = (await queryRows(rc, `/studies/${study}/series/${series}/instances`, new URLSearchParams([['SOPInstanceUID', sop], ['includefield', '00080016'], ['limit', '2']]))).find((x) => uidOf(x, TAG.sopUid) === sop);
    if (!one) throw new GatewayError('NOT_FOUND', 'no such resource', { auditReason: 'not-found' });
    // (Allowed, but newer than the list kept with the PACS facts: visible.)
    const d = instanceDenial(rules, jsonAttrs(one));
    if (d) throw notVisible(d);
    return;
  }
  const i = (await instancesOf(rc, study, series)).find((x) => uidOf(x, TAG.sopUid) === sop);
  if (!i) throw new GatewayError('NOT_FOUND', 'no such resource', { auditReason: 'not-found' });
  const d = instanceDenial(rules, jsonAttrs(i));
  if (d) throw notVisible(d);
}

/** Every level on one record that carries them all (an instance's metadata or header). */
export function recordVisible(rc: RequestContext, a: Attrs): Denial | undefined {
  const rules = rc.client.scope.rules();
  return studyDenial(rules, rc.client.scope.optOut(), a) ?? seriesDenial(rules, a) ?? instanceDenial(rules, a);
}

/** The series-level verdict on a series row (study rules checked on the same row). */
export async function seriesRowDenial(rc: RequestContext, a: Attrs): Promise<Denial | undefined> {
  const rules = rc.client.scope.rules();
  const d = studyDenial(rules, rc.client.scope.optOut(), a) ?? seriesDenial(rules, a);
  if (d || !hasInstanceRules(rules)) return d;
  const study = a(TAG.studyUid);
  const series = a(TAG.seriesUid);
  if (!study || !series) return 'sop-class';
  return (await allowedInstancesOf(rc, study, series)).length > 0 ? undefined : 'sop-class';
}

/** Rewrites a study row's counts and modalities to the client's visible part of the study. */
export async function studyRowCounts(rc: RequestContext, row: JsonDataset, study: string): Promise<Denial | undefined> {
  const vis = await visibleSeries(rc, study);
  if (!vis) return undefined;
  if (vis.series.length === 0) return firstSeriesDenial(rc.client.scope.rules(), await seriesOf(rc, study));
  const set = (tag: string, vr: string, value: unknown[]): void => { if (row[tag]) row[tag] = { vr, Value: value }; };
  set('00201206', 'IS', [vis.series.length]);
  set('00201208', 'IS', [vis.instances]);
  const modalities = [...new Set(vis.series.map((s) => jsonAttrs(s.attrs)(TAG.modality)).filter((m): m is string => !!m))].sort();
  set('00080061', 'CS', modalities);
  return undefined;
}

/** Rewrites a series row's instance count to the visible instances (instance rules only). */
export async function seriesRowCount(rc: RequestContext, row: JsonDataset, study: string, series: string): Promise<void> {
  const rules = rc.client.scope.rules();
  if (!hasInstanceRules(rules) || !row['00201209']) return;
  const n = (await allowedInstancesOf(rc, study, series)).length;
  row['00201209'] = { vr: 'IS', Value: [n] };
}

/** Scope check of a WADO-RS path (pseudonymous UIDs): NOT_FOUND when not visible to the client. */
export async function requireVisible(rc: RequestContext, p: { study: string; series?: string | undefined; instance?: string | undefined }): Promise<void> {
  const study = originalUid(rc, p.study);
  if (p.series === undefined) return requireStudy(rc, study);
  const series = originalUid(rc, p.series);
  if (p.instance === undefined) return requireSeries(rc, study, series);
  return requireInstance(rc, study, series, originalUid(rc, p.instance));
}

export function upstreamPath(rc: RequestContext, p: { study: string; series?: string | undefined; instance?: string | undefined }): string {
  let path = `/studies/${originalUid(rc, p.study)}`;
  if (p.series !== undefined) path += `/series/${originalUid(rc, p.series)}`;
  if (p.instance !== undefined) path += `/instances/${originalUid(rc, p.instance)}`;
  return path;
}
