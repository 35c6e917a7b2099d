/**
 * Which instances' pixels may leave, and how (issue 6).
 *
 * Risk classification per instance, on original attributes:
 *  - Burned In Annotation (0028,0301) other than NO;
 *  - Recognizable Visual Features (0028,0302) YES (a face, a tattoo…);
 *  - where Burned In Annotation is absent, kinds that customarily carry burned-in text:
 *    ultrasound, secondary capture and screen captures, other/external cameras, endoscopy,
 *    documents and video (modality or SOP class), SECONDARY images whatever the first Image
 *    Type value (screen grabs, dose screens), multi-frame true colour;
 *  - encapsulated documents (PDF, CDA, STL…) are always risky.
 * Burned In Annotation = NO, stated by the modality, clears the kind-based suspicion (not
 * Recognizable Visual Features, not documents).
 *
 * Per client, a risky instance is withheld (default), masked (a region rule keyed by
 * Manufacturer, Model, Rows and Columns — CTP's pixel anonymizer approach — must cover it,
 * else it is withheld), masked where its text is detected (`detect`: region rules first, then
 * the instance's stored text decision, src/pixels/text), or allowed (explicit, and audited). Documents and Recognizable Visual
 * Features (a face is not removed by a band) are never masked: withheld unless allowed.
 */
import { GatewayError } from '../core/errors.js';
import type { Region } from '../deid/pixel-mask.js';

export interface PixelFacts {
  readonly burnedInAnnotation?: string | undefined;
  readonly recognizableVisualFeatures?: string | undefined;
  readonly modality?: string | undefined;
  readonly sopClassUid?: string | undefined;
  readonly imageType?: string | undefined;
  readonly manufacturer?: string | undefined;
  readonly model?: string | undefined;
  readonly rows?: string | undefined;
  readonly columns?: string | undefined;
  readonly samplesPerPixel?: string | undefined;
  readonly numberOfFrames?: string | undefined;
  readonly photometric?: string | undefined;
}

export interface MaskRule {
  /** Each given key must match (case-insensitive, trimmed); an omitted key matches anything. */
  readonly match: { readonly manufacturer?: string | undefined; readonly model?: string | undefined; readonly rows?: number | undefined; readonly columns?: number | undefined };
  readonly regions: readonly Region[];
}

export interface PixelPolicy {
  /** Risky instances: withheld (default), masked by region rules, masked where text is detected (rules first), or allowed (audited). */
  readonly risky: 'withhold' | 'mask' | 'detect' | 'allow';
  readonly masks: readonly MaskRule[];
  /** Head CT, MR and PET series with a face in view: defaced (default), withheld, or allowed (audited). */
  readonly faces?: 'deface' | 'withhold' | 'allow' | undefined;
}

export const DEFAULT_PIXEL_POLICY: PixelPolicy = { risky: 'withhold', masks: [], faces: 'deface' };

import type { FaceLookup, FacePlane, FaceVerdict, TextBox, TextLookup, TextVerdict } from '../pixels/types.js';
export type { FaceLookup, FacePlane, FaceVerdict, TextLookup, TextVerdict };

/** Modalities whose series may show a face that can be rebuilt from the volume. */
export const FACE_MODALITIES: ReadonlySet<string> = new Set(['CT', 'MR', 'PT']);

/** True when the client's policy needs a face decision for an instance of this modality. */
export function needsFaceDecision(modality: string | undefined, policy: PixelPolicy): boolean {
  return (policy.faces ?? 'deface') !== 'allow' && FACE_MODALITIES.has((modality ?? '').trim().toUpperCase());
}

export type PixelDecision =
  /** `detected`: the mask is the text the detector found (possibly none), not a region rule's. */
  | { readonly allow: true; readonly mask?: readonly Region[] | undefined; readonly detected?: readonly TextBox[] | undefined; readonly risk?: string | undefined; readonly face?: readonly FacePlane[] | undefined; readonly faceAllowed?: boolean | undefined }
  /** `auditReason` is `pixels-withheld:<risk code>`, PHI-free, for the audit record. */
  | { readonly allow: false; readonly reason: string; readonly auditReason: string };

const RISKY_MODALITIES = new Set(['US', 'IVUS', 'SC', 'OT', 'XC', 'ES', 'GM', 'SM', 'DOC', 'VIDEO', 'OP', 'OPT']);
const DOCUMENT_SOP_PREFIX = '1.2.840.10008.5.1.4.1.1.104'; // Encapsulated PDF, CDA, STL, OBJ, MTL
const RISKY_SOP_PREFIXES = [
  '1.2.840.10008.5.1.4.1.1.7', // Secondary Capture family (incl. multi-frame SC)
  '1.2.840.10008.5.1.4.1.1.77.1.4.1', // Video photographic
  '1.2.840.10008.5.1.4.1.1.77.1.1.1', // Video endoscopic
  '1.2.840.10008.5.1.4.1.1.77.1.2.1', // Video microscopic
  '1.2.840.10008.5.1.4.1.1.77.1.4', // VL photographic
  '1.2.840.10008.5.1.4.1.1.77.1.1', // VL endoscopic
  '1.2.840.10008.5.1.4.1.1.6', // Ultrasound (and multi-frame)
  '1.2.840.10008.5.1.4.1.1.3', // Ultrasound multi-frame (retired)
];
const has = (sop: string, p: string): boolean => sop === p || sop.startsWith(`${p}.`);

/** Why an instance's pixels are risky: a stable PHI-free code (audit) and a sentence (messages). */
interface Risk { readonly code: string; readonly text: string }

function classify(f: PixelFacts): Risk | undefined {
  const sop = f.sopClassUid?.trim() ?? '';
  if (sop && has(sop, DOCUMENT_SOP_PREFIX)) return { code: 'encapsulated-document', text: 'encapsulated document' };
  if (f.recognizableVisualFeatures?.trim().toUpperCase() === 'YES') return { code: 'recognizable-visual-features', text: 'Recognizable Visual Features is YES' };
  const bia = f.burnedInAnnotation?.trim().toUpperCase();
  if (bia !== undefined && bia !== '') return bia === 'NO' ? undefined : { code: 'burned-in-annotation', text: 'Burned In Annotation is not NO' };
  const modality = f.modality?.trim().toUpperCase();
  if (modality && RISKY_MODALITIES.has(modality)) return { code: `modality-${modality.toLowerCase()}`, text: `modality ${modality} without Burned In Annotation = NO` };
  if (sop && RISKY_SOP_PREFIXES.some((p) => has(sop, p))) return { code: 'sop-class', text: 'SOP class that may carry burned-in text' };
  // Screen captures and dose screens are SECONDARY whatever the first value (ORIGINAL or DERIVED).
  if (f.imageType && /\bSECONDARY\b/i.test(f.imageType)) return { code: 'secondary-image', text: 'secondary image without Burned In Annotation = NO' };
  if (f.samplesPerPixel?.trim() === '3' && Number(f.numberOfFrames ?? '1') > 1) return { code: 'multi-frame-colour', text: 'multi-frame true colour without Burned In Annotation = NO' };
  return undefined;
}

/** The reason an instance's pixels are risky, or undefined. */
export function pixelRisk(f: PixelFacts): string | undefined {
  return classify(f)?.text;
}

/** The pixel facts of an instance's own header, read through `attr` (tag → value, "\\"-joined). */
export function headerPixelFacts(attr: (tag: number) => string | undefined): PixelFacts {
  return {
    burnedInAnnotation: attr(0x00280301), recognizableVisualFeatures: attr(0x00280302), modality: attr(0x00080060), sopClassUid: attr(0x00080016),
    imageType: attr(0x00080008), manufacturer: attr(0x00080070), model: attr(0x00081090), rows: attr(0x00280010), columns: attr(0x00280011),
    samplesPerPixel: attr(0x00280002), numberOfFrames: attr(0x00280008), photometric: attr(0x00280004),
  };
}

/** The PIXELS_WITHHELD error of a denial, with its audit reason. */
export function pixelsWithheld(d: { readonly reason: string; readonly auditReason: string }, message = `this instance is withheld by policy (${d.reason})`): GatewayError {
  return new GatewayError('PIXELS_WITHHELD', message, { auditReason: d.auditReason });
}

/**
 * The admission of an instance by its own header (the gateway's retrieves, rendered images and
 * cleaned pixels, and the offline `deid` command): the mask to apply, or the risk an explicit
 * `allow` lets through, or nothing; throws PIXELS_WITHHELD (with its audit reason) otherwise.
 */
export function admitPixels(attr: (tag: number) => string | undefined, policy: PixelPolicy, faces?: FaceLookup, text?: TextLookup): Admitted | undefined {
  const d = pixelDecision(headerPixelFacts(attr), policy, faces ? { series: attr(0x0020000e), lookup: faces } : undefined, text ? { sop: attr(0x00080018), lookup: text } : undefined);
  if (!d.allow) throw pixelsWithheld(d);
  const out: { mask?: readonly Region[]; detected?: readonly TextBox[]; risk?: string; face?: readonly FacePlane[]; faceAllowed?: boolean } = {};
  if (d.detected) { out.detected = d.detected; out.mask = d.detected; } else if (d.mask) out.mask = d.mask; else if (d.risk) out.risk = d.risk;
  if (d.face) out.face = d.face;
  if (d.faceAllowed) out.faceAllowed = true;
  return Object.keys(out).length ? out : undefined;
}

/** What an admitted instance needs: region masks, an allowed risk, a face cut. */
export interface Admitted {
  readonly mask?: readonly Region[];
  /** Under risky: detect, the text lines found (the mask; empty when none was found): the pixels were examined and are released clean. */
  readonly detected?: readonly TextBox[];
  readonly risk?: string;
  readonly face?: readonly FacePlane[];
  /** A face in view released unchanged because the client's policy says faces: allow (audited). */
  readonly faceAllowed?: boolean;
}

const same = (a: string | undefined, b: string | undefined): boolean => (a ?? '').trim().toUpperCase() === (b ?? '').trim().toUpperCase();

/** The first mask rule that covers the instance (device and image size), if any. */
export function maskRuleFor(f: PixelFacts, rules: readonly MaskRule[]): MaskRule | undefined {
  return rules.find((r) => (r.match.manufacturer === undefined || same(r.match.manufacturer, f.manufacturer))
    && (r.match.model === undefined || same(r.match.model, f.model))
    && (r.match.rows === undefined || Number(f.rows) === r.match.rows)
    && (r.match.columns === undefined || Number(f.columns) === r.match.columns));
}

/**
 * The pixel decision for an instance. `faces` gives the instance's original series and the
 * stored face decisions; without it (or without a decision for the series) an instance of a
 * face modality is withheld while the client's policy needs a face decision: nothing leaves
 * before its series is decided.
 */
export function pixelDecision(f: PixelFacts, policy: PixelPolicy = DEFAULT_PIXEL_POLICY, faces?: { readonly series: string | undefined; readonly lookup: FaceLookup }, text?: { readonly sop: string | undefined; readonly lookup: TextLookup }): PixelDecision {
  const faceModality = FACE_MODALITIES.has((f.modality ?? '').trim().toUpperCase());
  const mode = policy.faces ?? 'deface';
  // A CT, MR or PET stating Recognizable Visual Features YES is the face the cut removes: under
  // deface it is released defaced when its series' decision finds the face, and withheld
  // otherwise (the header says a face is there; an analysis that finds none does not overrule it).
  const rvf = f.recognizableVisualFeatures?.trim().toUpperCase() === 'YES';
  const d = faceModality && rvf && mode === 'deface' ? textDecision({ ...f, recognizableVisualFeatures: undefined }, policy, text) : textDecision(f, policy, text);
  if (!d.allow || !faceModality) return d;
  const verdict = faces?.series ? faces.lookup(faces.series) : undefined;
  if (mode === 'allow') return verdict?.kind === 'deface' || verdict?.kind === 'uncertain' ? { ...d, faceAllowed: true } : d;
  const auditReason = 'pixels-withheld:face';
  if (!verdict) return { allow: false, reason: 'the face decision of this series has not been made', auditReason: 'pixels-withheld:face-pending' };
  if (verdict.kind === 'no-face') {
    return rvf && mode === 'deface' ? { allow: false, reason: 'Recognizable Visual Features is YES and no face was found to remove', auditReason: 'pixels-withheld:recognizable-visual-features' } : d;
  }
  if (verdict.kind === 'uncertain') return { allow: false, reason: `a head is in view and its face cannot be removed with confidence (${verdict.why})`, auditReason };
  if (mode === 'withhold') return { allow: false, reason: 'a face is in view and this client\'s policy withholds faces', auditReason };
  return { ...d, face: verdict.planes };
}

/** True when the client's policy needs a text decision (detection) for an instance with these facts. */
export function needsTextDecision(f: PixelFacts, policy: PixelPolicy): boolean {
  if (policy.risky !== 'allow' && suspectScreen(f)) return true;
  if (policy.risky !== 'detect') return false;
  const r = classify(f);
  return r !== undefined && r.code !== 'encapsulated-document' && r.code !== 'recognizable-visual-features' && !maskRuleFor(f, policy.masks);
}

/** Grayscale modalities: a colour image among them is a screen capture (a dose sheet, a report). */
const GRAYSCALE_MODALITIES = new Set(['CT', 'MR', 'PT', 'NM']);

/**
 * An image that looks like a screen whatever its Burned In Annotation says (real files: Philips
 * dose screens stored as RGB CT with Burned In Annotation NO): colour (RGB, YBR, palette) in a
 * grayscale modality, or a SECONDARY image or Secondary Capture that says NO. Its text is looked
 * for under every policy but allow.
 */
export function suspectScreen(f: PixelFacts): boolean {
  if (f.burnedInAnnotation?.trim().toUpperCase() !== 'NO') return false;
  const modality = f.modality?.trim().toUpperCase() ?? '';
  const colour = f.samplesPerPixel?.trim() === '3' || (f.photometric ?? '').trim().toUpperCase() === 'PALETTE COLOR';
  const sop = f.sopClassUid?.trim() ?? '';
  return (colour && GRAYSCALE_MODALITIES.has(modality)) || /\bSECONDARY\b/i.test(f.imageType ?? '') || has(sop, '1.2.840.10008.5.1.4.1.1.7');
}

function textDecision(f: PixelFacts, policy: PixelPolicy, text?: { readonly sop: string | undefined; readonly lookup: TextLookup }): PixelDecision {
  const r = classify(f);
  if (r === undefined && policy.risky !== 'allow' && suspectScreen(f)) {
    // "No burned-in text" is not trusted on a screen: the detector decides.
    const v = text?.sop ? text.lookup(text.sop) : undefined;
    const auditReason = 'pixels-withheld:screen-text';
    if (!v) return { allow: false, reason: 'this image looks like a screen and its text has not been looked for yet', auditReason: 'pixels-withheld:text-pending' };
    if (v.kind === 'clean') return { allow: true };
    if (v.kind === 'withhold') return { allow: false, reason: `this image looks like a screen, and ${v.why}`, auditReason: `pixels-withheld:${v.code}` };
    if (policy.risky === 'detect') return { allow: true, mask: v.regions, detected: v.regions, risk: 'text found on a screen said to have none' };
    return { allow: false, reason: 'Burned In Annotation says NO, but text was found on this screen-like image', auditReason };
  }
  if (r === undefined) return { allow: true };
  const { code, text: risk } = r;
  const auditReason = `pixels-withheld:${code}`;
  if (policy.risky === 'allow') return { allow: true, risk };
  // A document is not an image with a text band, and a face is not removed by a band mask:
  // neither is ever released by a region rule, only by an explicit allow.
  if (code === 'encapsulated-document') return { allow: false, reason: 'an encapsulated document cannot be masked', auditReason };
  if (code === 'recognizable-visual-features') return { allow: false, reason: 'Recognizable Visual Features is YES, which region masks cannot remove', auditReason };
  if (policy.risky === 'mask' || policy.risky === 'detect') {
    // Region rules apply first where they match.
    const rule = maskRuleFor(f, policy.masks);
    if (rule) return { allow: true, mask: rule.regions, risk };
  }
  if (policy.risky === 'detect') {
    const v = text?.sop ? text.lookup(text.sop) : undefined;
    if (!v) return { allow: false, reason: 'the burned-in text of this instance has not been looked for yet', auditReason: 'pixels-withheld:text-pending' };
    if (v.kind === 'withhold') return { allow: false, reason: `${risk}, and ${v.why}`, auditReason: `pixels-withheld:${v.code}` };
    return { allow: true, mask: v.kind === 'mask' ? v.regions : [], detected: v.kind === 'mask' ? v.regions : [], risk };
  }
  if (policy.risky === 'mask') {
    return { allow: false, reason: `${risk}, and no mask rule covers this device and image size`, auditReason };
  }
  return { allow: false, reason: risk, auditReason };
}
