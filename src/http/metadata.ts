/**
 * WADO-RS metadata (PS3.18 10.4.1.1.2) at study, series and instance level.
 */
import { rewriteBulkDataUris } from '../dicomweb/urls.js';
import { jsonAttrs } from '../policy/scope.js';
import { recordVisible, requireVisible, upstreamPath } from './visibility.js';
import { DICOM_JSON, originalUid, ok, jsonReply, noteStudy, firstValue, type RequestContext, type Reply } from './context.js';
import { deidJson, maskedByRule, factsOf, ensureDecisionsOf, type Facts } from './pixel-stage.js';

/** WADO-RS metadata at study, series or instance level. */
export async function metadata(rc: RequestContext, p: { study: string; series?: string; instance?: string }): Promise<Reply> {
  await requireVisible(rc, p);
  // Metadata says what the retrieve does: the face decisions of its series are made first.
  await ensureDecisionsOf(rc, originalUid(rc, p.study), p.series === undefined ? undefined : originalUid(rc, p.series), p.instance === undefined ? undefined : originalUid(rc, p.instance));
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
