/**
 * WADO-RS rendered resources and thumbnails (PS3.18 10.4.1.1.3), drawn by the gateway from
 * de-identified, cleaned pixels; the PACS's rendering is never proxied.
 */
import { GatewayError } from '../core/errors.js';
import { deidentifyPart10 } from '../deid/index.js';
import { parseContentType, readMultipart, writeMultipart, newBoundary } from '../dicomweb/multipart.js';
import { readInstanceSync } from '../dicom/part10.js';
import { renderFrame } from '../render/render.js';
import { inflateRawSync } from 'node:zlib';
import { TAG } from '../policy/scope.js';
import { recordVisible, requireVisible } from './visibility.js';
import { originalUid, ok, expectType, withFlush, noteStudy, noteWithheld, type RequestContext, type Reply } from './context.js';
import { decide, ensureDecisions, factsAttrs, pixelFacts, requirePixels, admitHeader } from './pixel-stage.js';

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
    const facts = await pixelFacts(rc, study, series);
    await ensureDecisions(rc, facts); // a head series is decided before any of its images is drawn
    const all = [...facts.entries()].sort(([a], [b]) => a.localeCompare(b))
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
