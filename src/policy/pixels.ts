/**
 * Which instances' pixels may leave (issue 3's default; issue 6 refines it with masking).
 * An instance whose Burned In Annotation (0028,0301) is anything but NO is withheld. Where
 * the attribute is absent, instances of kinds that customarily carry burned-in text —
 * ultrasound, secondary capture and screen captures, other/external cameras, endoscopy,
 * documents and video — are withheld too; the rest (CT, MR, PT, NM, CR, DX, MG…) pass.
 */

export interface PixelFacts {
  readonly burnedInAnnotation?: string | undefined;
  readonly modality?: string | undefined;
  readonly sopClassUid?: string | undefined;
  readonly imageType?: string | undefined;
}

export type PixelDecision = { readonly allow: true } | { readonly allow: false; readonly reason: string };

const RISKY_MODALITIES = new Set(['US', 'IVUS', 'SC', 'OT', 'XC', 'ES', 'GM', 'SM', 'DOC', 'VIDEO', 'OP', 'OPT']);
const RISKY_SOP_PREFIXES = [
  '1.2.840.10008.5.1.4.1.1.7', // Secondary Capture family
  '1.2.840.10008.5.1.4.1.1.104', // Encapsulated PDF/CDA/STL…
  '1.2.840.10008.5.1.4.1.1.77.1.4.1', // Video photographic
  '1.2.840.10008.5.1.4.1.1.77.1.1.1', // Video endoscopic
  '1.2.840.10008.5.1.4.1.1.77.1.2.1', // Video microscopic
  '1.2.840.10008.5.1.4.1.1.6', // Ultrasound
  '1.2.840.10008.5.1.4.1.1.3', // Ultrasound multi-frame (retired)
];

export function pixelDecision(f: PixelFacts): PixelDecision {
  const bia = f.burnedInAnnotation?.trim().toUpperCase();
  if (bia !== undefined && bia !== '') {
    return bia === 'NO' ? { allow: true } : { allow: false, reason: 'Burned In Annotation is not NO' };
  }
  const modality = f.modality?.trim().toUpperCase();
  if (modality && RISKY_MODALITIES.has(modality)) return { allow: false, reason: `modality ${modality} without Burned In Annotation = NO` };
  const sop = f.sopClassUid?.trim();
  if (sop && RISKY_SOP_PREFIXES.some((p) => sop === p || sop.startsWith(`${p}.`))) return { allow: false, reason: 'SOP class that may carry burned-in text' };
  if (f.imageType && /\b(SECONDARY)\b/i.test(f.imageType) && /\bDERIVED\b/i.test(f.imageType) && !modality) {
    return { allow: false, reason: 'derived secondary image without Burned In Annotation = NO' };
  }
  return { allow: true };
}
