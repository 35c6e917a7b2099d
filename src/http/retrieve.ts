/**
 * WADO-RS retrieve of studies, series and instances (PS3.18 10.4.1.1.1): Part 10 parts
 * de-identified as they stream.
 */
import { GatewayError } from '../core/errors.js';
import { deidentifyPart10 } from '../deid/index.js';
import { parseContentType, readMultipart, writeMultipart, newBoundary, type Part } from '../dicomweb/multipart.js';
import { needsFaceDecision, needsTextDecision, pixelsWithheld, type PixelDecision } from '../policy/pixels.js';
import { TAG } from '../policy/scope.js';
import { noteTextBoxes } from '../audit/sink.js';
import { recordVisible, requireVisible } from './visibility.js';
import { originalUid, ok, expectType, withFlush, noteStudy, noteWithheld, type RequestContext, type Reply } from './context.js';
import { decide, ensureDecisions, factsAttrs, pixelFacts, admitHeader, type Facts } from './pixel-stage.js';
import { WriteHooks } from './write-gathered.js';

const EXPLICIT_LE_UID = '1.2.840.10008.1.2.1';

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
  const upTs = ts === '*' && (rc.client.pixels.risky === 'mask' || rc.client.pixels.risky === 'detect') ? undefined : ts;
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
  // When the facts are known already and a face or text decision is pending, the retrieve waits
  // for it too: the PACS then serves the analysis alone, and the stream does not stall half-sent.
  // Under risky: detect with the facts unknown, it waits as well (risky instances are likely).
  const known = sop === undefined ? rc.facts.scope(study, series) : undefined;
  const faceSeries = new Set<string>();
  let textPending = known === undefined && rc.client.pixels.risky === 'detect';
  for (const [uid, f] of known ?? []) {
    const s = f.scope?.[TAG.seriesUid];
    // Only what the client may see: a hidden series' pending decision neither holds the retrieve
    // back nor, when another client's analysis of it reaches its samples, lets it go.
    if (f.rows === undefined || (!rc.client.scope.unrestricted() && recordVisible(rc, factsAttrs(f)))) continue;
    if (s !== undefined && needsFaceDecision(f.modality, rc.client.pixels) && rc.faces.decision(s) === undefined) faceSeries.add(s);
    if (needsTextDecision(f, rc.client.pixels) && rc.text.decision(uid) === undefined) textPending = true;
  }
  const pending = textPending || faceSeries.size > 0;
  let retrieving = afterFaces || pending ? undefined : ok(rc, path, acceptFor(upTs));
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
  // A single instance whose text is looked for now is fetched once: the bytes the detector read
  // (Explicit VR Little Endian) are the ones served, when that is the syntax the retrieve asks for.
  const kept = sop !== undefined && retrieving === undefined && (upTs === undefined || upTs === EXPLICIT_LE_UID) ? new Map<string, Buffer>() : undefined;
  // Waiting for face decisions only, in a syntax that does not depend on them (the PACS's
  // default, which the cut needs anyway): the retrieve is asked for once the last analysis has
  // its samples, so that the PACS prepares the series while the gateway analyses. A decision
  // that withholds everything, or a 503, drops it (the connection is closed, not drained).
  const stopEarly: (() => void)[] = [];
  if (faceSeries.size && !textPending && !afterFaces && upTs === undefined) {
    let left = faceSeries.size;
    for (const s of faceSeries) {
      stopEarly.push(rc.faces.onSampled(s, () => {
        if (--left > 0 || retrieving) return;
        retrieving = ok(rc, path, acceptFor(undefined));
        retrieving.catch(() => { /* surfaced below, or dropped when a decision refuses */ });
      }));
    }
  }
  try {
    await ensureDecisions(rc, new Map([...facts].filter(([, f]) => inScope.includes(f))), kept);
  } catch (e) {
    return refuse(e as GatewayError);
  } finally {
    for (const stop of stopEarly) stop();
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
  const keptBytes = sop !== undefined ? kept?.get(sop) : undefined;
  if (!keptBytes) retrieving ??= ok(rc, path, acceptFor(inScope.some((f) => { const d = decide(rc, f); return d.allow && !!d.face; }) ? undefined : upTs));
  let up: Awaited<typeof retrieving>;
  try {
    up = keptBytes ? undefined : await retrieving!;
  } catch (e) {
    // A syntax the PACS cannot transcode to (JPEG baseline of 16-bit data, a codec it lacks) is
    // the client's to change: 406 with what the gateway always serves, not a PACS failure.
    if (upTs !== undefined && upTs !== '*' && upTs !== EXPLICIT_LE_UID && e instanceof GatewayError && (e.code === 'UPSTREAM_ERROR' || e.code === 'UPSTREAM_REJECTED')) {
      throw new GatewayError('NOT_ACCEPTABLE', `transfer syntax ${upTs} cannot be provided for these instances; ask for ${EXPLICIT_LE_UID} (Explicit VR Little Endian) or * (as stored)`);
    }
    throw e;
  }
  if (up) expectType(up, 'multipart/related');
  const boundary = newBoundary();
  const source = (): AsyncIterable<Part> => (up
    ? readMultipart(up.body, parseContentType(up.contentType).params.boundary, { sniffBoundary: true })
    : (async function* () { yield { headers: { 'content-type': `application/dicom; transfer-syntax=${EXPLICIT_LE_UID}` }, body: (async function* () { yield keptBytes!; })() }; })());
  // The PACS's read buffers are given back as the reply goes out (the socket transport): once
  // the last chunk of an instance has been written to the client, nothing reads the bytes
  // before the next instance's content again (the engine is done with them, the multipart
  // reader never looks back, masks and cuts were written before), so they may be read into.
  const recycle = up?.recycle?.bind(up);
  const writeHooks = recycle ? new WriteHooks() : undefined;
  let lastOut: Buffer | undefined;
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
    for await (const part of source()) {
      // The previous instance was sent whole (a withheld one leaves lastOut unset).
      if (writeHooks && lastOut && part.start !== undefined) {
        const start = part.start;
        writeHooks.after(lastOut, () => recycle!(start));
      }
      lastOut = undefined;
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
        body: (async function* () {
          if (!first.done) { if (first.value.length) lastOut = first.value; yield first.value; }
          for await (const c of { [Symbol.asyncIterator]: () => it }) { if (c.length) lastOut = c; yield c; }
        })(),
      };
    }
  }
  let patientOfPart: string | undefined;
  let maskedPart = false;
  function admitPart(part: Part): AsyncGenerator<Buffer> {
    maskedPart = false;
    return deidentifyPart10(part.body, ctx, {
      maxHeaderBytes,
      // The bytes are this request's alone, whether fetched for the text decision or streamed
      // from the PACS (every upstream transport hands out each read once, in buffers or slab
      // regions no one else reads, and the multipart parser never reads back what it has
      // yielded): masks and the face cut are written where they are, not into copies.
      ownsInput: true,
      onInstance: (i) => { noteStudy(note, i.original.study, i.pseudonymous.study, patientOfPart, 1); rc.observeDeid?.('part10', i.deidSeconds); },
      admit: (attr) => {
        patientOfPart = attr(TAG.patientId);
        // Scope first (inside admitHeader): an out-of-scope instance is skipped silently, not counted as withheld.
        const r = admitHeader(rc, attr);
        if (r?.mask) maskedPart = true;
        if (r?.detected) noteTextBoxes(note, r.detected);
        else if (r?.risk) note.riskyAllowed++; // allowed by an explicit policy, and counted
        if (r?.face) note.defaced = (note.defaced ?? 0) + 1;
        if (r?.faceAllowed) note.facesAllowed = (note.facesAllowed ?? 0) + 1;
        return r;
      },
    });
  }
  const headers: Record<string, string> = { 'content-type': `multipart/related; type="application/dicom"; boundary=${boundary}` };
  if (announced > 0) headers.warning = `299 deid-gateway "${announced} instance(s) withheld by the pixel policy"`;
  return { status: 200, headers, body: withFlush(rc, writeMultipart(parts(), boundary)), ...(writeHooks ? { writeHooks } : {}) };
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
