/**
 * QIDO-RS (PS3.18 10.6): de-identified rows, matched under the client's scope.
 */
import { GatewayError } from '../core/errors.js';
import { dictionary } from '../dicom/dictionary.js';
import { type JsonDataset } from '../deid/index.js';
import { splitJsonArray } from '../dicomweb/json-array.js';
import { rewriteBulkDataUris, setRetrieveUrl, type Level } from '../dicomweb/urls.js';
import { hasInstanceRules, hasSeriesRules, hasStudyRules, jsonAttrs, seriesDenial, studyDenial, TAG, type Attrs } from '../policy/scope.js';
import { mapQuery, passesDateFilters } from './query.js';
import { examinedRecords, recordVisible, requireSeries, requireStudy, seriesRowCount, seriesRowDenial, studyRowCounts } from './visibility.js';
import { DICOM_JSON, originalUid, ok, expectType, withFlush, parseObject, jsonReply, emptyJsonReply, noteStudy, firstValue, type RequestContext, type Reply } from './context.js';
import { deidJson, maskedByRule } from './pixel-stage.js';

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

/** Study UIDs per PACS request when a query is bounded by the client's cohort index. */
const UID_LIST_MAX = 200;
/**
 * Series-level match keys an instance query may carry (Modality, Series Description, Series
 * Number, Body Part Examined): matched on series first for a client with a cohort index.
 */
const SERIES_LEVEL_KEYS = ['00080060', '0008103E', '00200011', '00180015'] as const;
/** UIDs as comma lists of at most UID_LIST_MAX, one per PACS request. */
const uidChunks = (uids: readonly string[]): string[] => {
  const out: string[] = [];
  for (let i = 0; i < uids.length; i += UID_LIST_MAX) out.push(uids.slice(i, i + UID_LIST_MAX).join(','));
  return out;
};
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
async function filteredQido(rc: RequestContext, level: Level, path: string, q: ReturnType<typeof mapQuery>, collect?: (o: JsonDataset, out: JsonDataset) => void): Promise<Reply> {
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
  // A key the scope restricts and the client asks too (Modality, SOPClassUID): the PACS is asked
  // for the values both allow (the client's patterns matched against the scope's values), and
  // nothing at all when none is left, so that a value only hidden records hold (Modality=MR for
  // a CT client) is never sent to the PACS and its rows never fetched and dropped.
  const narrow = (tag: string, allowed: ReadonlySet<string>): boolean => {
    const keep = [...allowed].filter((v) => matchesAnyValue(up.get(tag) ?? '', [v]));
    if (keep.length) up.set(tag, keep.join(','));
    return keep.length > 0;
  };
  if (level !== 'study' && rules.modalities && q.matchKeys.has('00080060') && !narrow('00080060', rules.modalities)) return emptyJsonReply(q.warnings);
  if (level === 'instance' && rules.sopClasses && q.matchKeys.has('00080016') && !narrow('00080016', rules.sopClasses)) return emptyJsonReply(q.warnings);
  // Push the scope down where the PACS matches it exactly (comma lists work for UIDs, codes and
  // accession numbers on Orthanc); each row is checked again below either way. The allow-list
  // goes down at every level (a series or instance query names study-level keys too), so that
  // the PACS never returns, and the gateway never examines, the rows of studies the client may
  // not see: how long a query takes, and whether it is cut by server.maxQueryScan, then do not
  // depend on them (issue 15).
  // Whether the rows the PACS returns are bounded by the client's own studies (one study in the
  // path, or its allow-list pushed down).
  let ownStudies = path.startsWith('/studies/');
  if (!path.startsWith('/studies/')) {
    if (rules.studies && rules.accessions?.size === 0 && rules.studies.size > 0 && rules.studies.size <= 200 && !q.matchKeys.has('0020000D')) { push('0020000D', [...rules.studies].join(',')); ownStudies = true; }
    if (rules.accessions && rules.studies?.size === 0 && rules.accessions.size > 0 && rules.accessions.size <= 200 && !q.matchKeys.has('00080050')) { push('00080050', [...rules.accessions].join(',')); ownStudies = true; }
    if (level === 'study' && rules.modalities?.size === 1) push('00080061', [...rules.modalities][0]!);
  }
  // Shifted dates (issue 15): a window widened from the client's value ([x + min, x + max]) would
  // make the PACS return, and the gateway examine, the studies whose original date falls in it,
  // hidden ones included, and the time taken would tell a client where its studies' original
  // dates (and so their offsets) lie. Where the rows are bounded by the client's own studies,
  // the PACS is asked for all of them whatever the date asked, and the dates are matched here
  // on the shifted values only: the work no longer depends on the date.
  if (ownStudies) for (const f of q.dateFilters) up.delete(f.tag);
  // Other clients (scoped by filters, or unrestricted) match StudyDate on the client's cohort
  // index (below): the shifted dates of every study it may see, read from the PACS at most once a
  // minute whatever is asked. The PACS is then asked for the matching studies by UID (no date
  // window), so that neither the rows it returns nor the gateway's work depend on hidden studies.
  const extraWarnings: string[] = [];
  const studyDate = q.dateFilters.find((f) => f.tag === '00080020');
  // Other shifted date keys (SeriesDate, ContentDate, AcquisitionDate, …) have no index: no
  // window from the client's value reaches the PACS either. The rows are fetched whatever the
  // date (bounded by the other keys and the scope, and by server.maxQueryScan) and matched
  // here on the shifted values, so which rows the PACS returns never depends on the date asked.
  if (!ownStudies) for (const f of q.dateFilters) if (f.tag !== '00080020') up.delete(f.tag);
  // The client's cohort index (issue 15): where the PACS cannot be asked for the client's own
  // studies exactly (a scope of filters, an allow-list longer than a list can carry or mixing
  // UIDs and accession numbers; or a shifted StudyDate), every query outside one study asks the
  // PACS only for the studies the index holds (the shifted dates of every study the client may
  // see, read at most once a minute whatever is asked), 200 UIDs a request. Rows of studies the
  // client may not see are then neither fetched nor examined in answer to its requests: the time
  // a query takes, and its truncation Warning, depend on its own studies only. A StudyDate is
  // matched on the index; a study no longer in the index (opted out) is not asked for.
  // The opt-out list counts as a scope: without scope rules the PACS would return an opted-out
  // patient's rows and the gateway drop them, and the time taken would tell a client without
  // rules what opted-out patients hold (bench:timing: +1.5 ms for one opted-out NM study,
  // +215 ms for its 300 instances, before session 14).
  const scoped = hasStudyRules(rules) || partial || rc.client.scope.optOut().size > 0;
  // A series or instance query inside one study (`/studies/{uid}/series`, `/studies/{uid}/instances`)
  // for a client with series rules: the PACS would return the study's hidden series (another
  // body part, or a Modality the client asked for that its scope hides) and the gateway drop
  // them row by row, so the time taken would tell how many hidden series the study holds. Such
  // a query names the study's visible series instead, from the index's series list.
  const studyInPath = level !== 'study' && !collect && hasSeriesRules(rules) ? /^\/studies\/([^/]+)\/(?:series|instances)$/.exec(path)?.[1] : undefined;
  const useIndex = !collect && ((!ownStudies && !path.startsWith('/studies/') && (scoped || studyDate !== undefined)) || studyInPath !== undefined);
  let chunks: (string | undefined)[] = [undefined];
  /** The key each chunk of UIDs is asked under: study UIDs, or (instances of a modality) series UIDs. */
  let chunkKey = '0020000D';
  // An index cut short by server.maxQueryScan does not hold the whole scope: other queries then
  // page through the PACS as before (their keys narrow what it returns, and a study beyond the
  // index is still found), and the time they take may depend on hidden rows again. StudyDate is
  // matched on the index either way (no date window may reach the PACS), with a Warning.
  const idx = useIndex ? await cohortIndex(rc) : undefined;
  // (A study in the path that the index does not hold, one added to the PACS since it was read,
  // is queried as before; a series added to a study the index holds reaches these queries with
  // the next index, after at most COHORT_INDEX_TTL_MS, as it does the other series queries.)
  const indexed = idx !== undefined && (studyInPath !== undefined ? !idx.truncated && idx.dates.has(studyInPath) : !idx.truncated || studyDate !== undefined);
  if (idx && indexed) {
    if (idx.truncated) extraWarnings.push(`299 deid-gateway "Only the first ${idx.dates.size} studies in scope were searched (server.maxQueryScan); results may be incomplete. Narrow the scope."`);
    let uids = studyInPath !== undefined ? [studyInPath] : [...idx.dates].filter(([, d]) => !studyDate || (d !== '' && passesDateFilters([studyDate], { '00080020': { Value: [d] } }))).map(([u]) => u);
    if (q.matchKeys.has('0020000D')) { const asked = new Set((up.get('0020000D') ?? '').split(/[,\\]/)); uids = uids.filter((u) => asked.has(u)); }
    if (!uids.length) return emptyJsonReply([...q.warnings, ...extraWarnings]);
    if (studyDate) up.delete('00080020');
    chunks = uidChunks(uids);
    // Series lists of the index's studies, read once per index and kept with it (the PACS took
    // about 20 ms to list the series of ten studies), each series with its study; a query then
    // takes those of its own studies (its StudyDate and StudyInstanceUID narrow them).
    const inQuery = new Set(uids);
    const seriesOf = (keys: URLSearchParams, check: boolean): Promise<SeriesList | undefined> =>
      cachedSeriesList(idx, `${check ? 'visible' : 'all'}|${keys.toString()}`, () => listSeries(rc, uidChunks([...idx.dates.keys()]), keys, rc.maxQueryScan, check));
    const askedSeries = q.matchKeys.has('0020000E') ? new Set((up.get('0020000E') ?? '').split(/[,\\]/)) : undefined;
    const pick = (list: SeriesList, also?: SeriesList): string[] => [...list].filter(([u, study]) => inQuery.has(study) && (!askedSeries || askedSeries.has(u)) && (!also || also.has(u))).map(([u]) => u);
    // A scope with series rules (modalities, body parts) hides some series of the client's own
    // studies: the series it may see are listed (their modality and body part checked here, as
    // the rows are), and series and instance queries then name those series only, so that the
    // hidden series of a visible study are never fetched or examined in answer to its queries.
    const visibleSeries = level !== 'study' && hasSeriesRules(rules) ? await seriesOf(new URLSearchParams(), true) : undefined;
    if (level === 'series' && visibleSeries) {
      const list = pick(visibleSeries);
      if (!list.length) return emptyJsonReply([...q.warnings, ...extraWarnings]);
      up.delete('0020000D');
      chunkKey = '0020000E';
      chunks = uidChunks(list);
    }
    // An instance query with series-level keys (a Modality, a series description, number or
    // body part): the PACS matches such a key on every instance of every series that has it,
    // hidden ones included, before it looks at the study (Orthanc: 0.7 ms more for 300 hidden
    // MR instances). So the index's studies are asked for their series matching those keys
    // first (the PACS matches series quickly, whoever they belong to), and the instances are
    // then asked for by series UID, from those series only (of those the client may see, with
    // series rules). Instance-level keys alone (a SOP Class UID) are matched by the PACS within
    // the studies named (150 requests each way with 300 hidden MR instances: -0.06 ms by study,
    // +0.10 ms by series, which cost 2 ms more a query), so they need no series step.
    const seriesKeys = SERIES_LEVEL_KEYS.filter((t) => up.has(t));
    if (level === 'instance' && (seriesKeys.length || visibleSeries)) {
      const keys = new URLSearchParams(seriesKeys.map((t): [string, string] => [t, up.get(t)!]));
      const series = seriesKeys.length ? await seriesOf(keys, false) : visibleSeries;
      if (series) {
        const list = pick(series, visibleSeries);
        if (!list.length) return emptyJsonReply([...q.warnings, ...extraWarnings]);
        for (const t of seriesKeys) up.delete(t);
        up.delete('0020000D');
        chunkKey = '0020000E';
        chunks = uidChunks(list);
      }
    }
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
    if (!up.has('00080020') || given) up.set('00080020', `${from ?? ''}-${until ?? ''}`);
  }
  // (Series and instances asked for by series UID: those series already match these.)
  const bySeries = chunkKey === '0020000E';
  if (level !== 'study' && !bySeries && rules.modalities) push('00080060', [...rules.modalities].join(','));
  if (level !== 'study' && !bySeries && rules.bodyParts?.size === 1) push('00180015', [...rules.bodyParts][0]!);
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
  let truncated = false;
  // Records examined: the rows paged through, and the series and instance records their checks read.
  const examinedBefore = examinedRecords(rc);
  const examined = (): number => scanned + examinedRecords(rc) - examinedBefore;
  // The first page asks for what the client's page would need if nothing were filtered out
  // (offset + limit); each further page asks for twice as many, up to QIDO_PAGE_MAX.
  const firstWant = collect ? QIDO_PAGE_MAX : Math.min(QIDO_PAGE_MAX, Math.max(QIDO_PAGE_MIN, q.offset + q.limit));
  scan: for (const chunk of chunks) {
    if (chunk !== undefined) up.set(chunkKey, chunk);
    let upOffset = 0;
    let want = firstWant;
    for (;;) {
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
        if (examined() >= rc.maxQueryScan) { truncated = true; break scan; }
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
        // The scope attributes the client did not ask for are dropped from what it receives, not
        // from what is de-identified: the Issuer of Patient ID is part of the patient's key, so a
        // row's pseudonymous Patient ID and date shift are the ones metadata and retrieve give.
        const out = qidoRow(rc, o, level);
        for (const t of strip) delete out[t];
        if (collect) { collect(o, out); continue; }
        if (!passesDateFilters(q.dateFilters, out)) continue;
        if (skipped < q.offset) { skipped++; continue; }
        noteStudy(rc.note, firstValue(o, '0020000D'), firstValue(out, '0020000D'), firstValue(o, '00100020'));
        rc.note.results++;
        rows.push(JSON.stringify(out));
        if (rows.length >= q.limit) break scan;
      }
      if (n < pageSize) break;
      upOffset += pageSize;
      want = Math.min(QIDO_PAGE_MAX, want * 2);
    }
  }
  const warnings = [...q.warnings, ...extraWarnings];
  if (truncated) warnings.push(`299 deid-gateway "The query stopped after examining ${examined()} records; results may be incomplete. Narrow the query."`);
  const headers: Record<string, string> = { 'content-type': DICOM_JSON };
  if (warnings.length) headers.warning = warnings.join(', ');
  return { status: 200, headers, body: withFlush(rc, (async function* () { yield Buffer.from(`[${rows.join(',')}]`); })()) };
}

/** How long a client's cohort index is reused, ms: a study added to the PACS reaches its indexed queries after at most this. */
const COHORT_INDEX_TTL_MS = 60_000;

interface CohortIndex { readonly at: number; readonly dates: ReadonlyMap<string, string>; readonly truncated: boolean }

/** Series Instance UID → Study Instance UID. */
type SeriesList = ReadonlyMap<string, string>;

/**
 * The series of the given studies (chunks of study UIDs) that match the series-level `keys`,
 * and with `check`, whose modality and body part the client's scope lets it see; undefined when
 * the studies hold more than `max` such series (queries then name the studies, as before, and
 * rows are checked one by one).
 */
async function listSeries(rc: RequestContext, studyChunks: readonly string[], keys: URLSearchParams, max: number, check: boolean): Promise<SeriesList | undefined> {
  const rules = rc.client.scope.rules();
  const out = new Map<string, string>();
  let read = 0;
  for (const chunk of studyChunks) {
    let offset = 0;
    for (;;) {
      const page = new URLSearchParams(keys);
      page.set('0020000D', chunk);
      page.append('includefield', '0020000D');
      if (check) { page.append('includefield', '00080060'); page.append('includefield', '00180015'); }
      page.set('limit', String(QIDO_PAGE_MAX));
      if (offset) page.set('offset', String(offset));
      const res = await ok(rc, '/series', DICOM_JSON, page);
      if (res.status === 204) break;
      expectType(res, DICOM_JSON, 'application/json');
      let n = 0;
      for await (const text of splitJsonArray(res.body)) {
        n++;
        if (++read > max) return undefined;
        const o = parseObject(text);
        const uid = o['0020000E']?.Value?.[0];
        const study = o['0020000D']?.Value?.[0];
        if (typeof uid !== 'string' || !uid || typeof study !== 'string') continue;
        if (!check || !seriesDenial(rules, jsonAttrs(o))) out.set(uid, study);
      }
      if (n < QIDO_PAGE_MAX) break;
      offset += n;
    }
  }
  return out;
}

/** Series lists of a cohort index's studies, by what was asked; they live as long as the index. */
const seriesLists = new WeakMap<CohortIndex, Map<string, Promise<SeriesList | undefined>>>();
/** Distinct series lists kept per index. */
const SERIES_LISTS_MAX = 64;

/** A series list, read once per cohort index and key (a failed read is not kept). */
function cachedSeriesList(idx: CohortIndex, key: string, read: () => Promise<SeriesList | undefined>): Promise<SeriesList | undefined> {
  let lists = seriesLists.get(idx);
  if (!lists) seriesLists.set(idx, (lists = new Map()));
  const known = lists.get(key);
  if (known) return known;
  const p = read();
  if (lists.size < SERIES_LISTS_MAX) {
    lists.set(key, p);
    p.catch(() => lists.delete(key));
  }
  return p;
}

/**
 * Per client's scope rules (a reloaded list file makes new rules, and so a new index); an index
 * built under another opt-out list (the file was reloaded) is built again.
 */
const cohortIndexes = new WeakMap<object, { building: Promise<CohortIndex>; done?: CohortIndex; optOut: object }>();

/**
 * A client's cohort index: original Study Instance UID → the StudyDate the client sees (shifted;
 * empty where its plan removes dates), for every study in its scope, read from the PACS with the
 * scope pushed down and every row checked as a query's would be. Built in a context of its own (its records do not count
 * against the request's maxQueryScan, its rows are not the request's results, a client that
 * goes away does not cancel it), shared by concurrent requests, reused for COHORT_INDEX_TTL_MS.
 * The PACS's answers bound it (server.maxQueryScan records, then `truncated`).
 */
async function cohortIndex(rc: RequestContext): Promise<CohortIndex> {
  const key = rc.client.scope.rules();
  const optOut = rc.client.scope.optOut();
  const entry = cohortIndexes.get(key);
  if (entry && entry.optOut === optOut && (!entry.done || Date.now() - entry.done.at < COHORT_INDEX_TTL_MS)) return entry.building;
  // Not tied to the request that starts it (others may be waiting for it), nor to its counters.
  const own: RequestContext = { ...rc, signal: new AbortController().signal, note: { instances: 0, withheld: 0, outOfScope: 0, masked: 0, riskyAllowed: 0, results: 0, studies: new Map() } };
  const slot: { building: Promise<CohortIndex>; done?: CohortIndex; optOut: object } = { building: Promise.resolve({ at: 0, dates: new Map(), truncated: false }), optOut };
  slot.building = (async (): Promise<CohortIndex> => {
    const dates = new Map<string, string>();
    const q = mapQuery(new URLSearchParams([['includefield', '00080020']]), rc.client.ctx.plan, rc.resolver, { maxLimit: Number.MAX_SAFE_INTEGER });
    const reply = await filteredQido(own, 'study', '/studies', q, (o, out) => {
      const uid = o['0020000D']?.Value?.[0];
      const d = out['00080020']?.Value?.[0];
      // Every visible study; its date only where the client sees one (a removed date matches no StudyDate).
      if (typeof uid === 'string') dates.set(uid, typeof d === 'string' ? d : '');
    });
    for await (const _ of reply.body) { /* an empty array */ }
    const index = { at: Date.now(), dates, truncated: /stopped after examining/.test(reply.headers.warning ?? '') };
    slot.done = index;
    return index;
  })();
  cohortIndexes.set(key, slot);
  slot.building.catch(() => { if (cohortIndexes.get(key) === slot) cohortIndexes.delete(key); });
  return slot.building;
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
