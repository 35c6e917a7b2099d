/**
 * WADO-RS frames and bulk data (PS3.18 10.4.1.1.4, 10.4.1.1.5): passed through where nothing
 * needs cleaning, cut from the engine's cleaned output where something does.
 */
import { GatewayError } from '../core/errors.js';
import { dictionary, isPrivateTag } from '../dicom/dictionary.js';
import { parseContentType, readMultipart, writeMultipart, newBoundary } from '../dicomweb/multipart.js';
import { parseBulkPath } from '../dicomweb/urls.js';
import { type UpstreamResponse } from '../upstream/client.js';
import { notVisible, TAG } from '../policy/scope.js';
import { recordVisible, requireInstance } from './visibility.js';
import { originalUid, ok, expectType, withFlush, noteStudy, type RequestContext, type Reply } from './context.js';
import { geometryOf, factsAttrs, pixelFacts, requirePixels, needsCleaning, cleanedPixels, type Facts } from './pixel-stage.js';

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
