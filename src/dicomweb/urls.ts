/**
 * URLs in de-identified DICOM JSON. Upstream RetrieveURL and BulkDataURI values carry the
 * PACS's address and original UIDs (FIELD-NOTES), so they are never passed on: the engine
 * removes RetrieveURL, and this module writes the gateway's own from the *de-identified*
 * UIDs of the object, and rebuilds every BulkDataURI the same way (dropping any it cannot
 * parse: fail closed).
 */
import type { JsonAttribute, JsonDataset } from '../deid/json.js';

export type Level = 'study' | 'series' | 'instance';

const RETRIEVE_URL = '00081190';
const BULK_PATH = /\/bulk\/([0-9A-Fa-f]{8}(?:\/\d{1,9}\/[0-9A-Fa-f]{8})*)\/?$/;

function first(ds: JsonDataset, key: string): string | undefined {
  const v = ds[key]?.Value?.[0];
  return typeof v === 'string' && /^[0-9.]+$/.test(v) ? v : undefined;
}

/** The de-identified Study/Series/SOP Instance UIDs of an object. */
export function objectUids(ds: JsonDataset): { study?: string; series?: string; sop?: string } {
  return { study: first(ds, '0020000D'), series: first(ds, '0020000E'), sop: first(ds, '00080018') };
}

/** Path of a resource below the DICOMweb root. */
export function resourcePath(level: Level, u: { study?: string; series?: string; sop?: string }): string | undefined {
  if (!u.study) return undefined;
  if (level === 'study') return `/studies/${u.study}`;
  if (!u.series) return undefined;
  if (level === 'series') return `/studies/${u.study}/series/${u.series}`;
  if (!u.sop) return undefined;
  return `/studies/${u.study}/series/${u.series}/instances/${u.sop}`;
}

/** Sets RetrieveURL (0008,1190) to the gateway's URL of the row's resource (QIDO rows). */
export function setRetrieveUrl(ds: JsonDataset, dicomWebBase: string, level: Level): void {
  const path = resourcePath(level, objectUids(ds));
  if (path) ds[RETRIEVE_URL] = { vr: 'UR', Value: [`${dicomWebBase}${path}`] };
  else delete ds[RETRIEVE_URL];
}

/**
 * Rewrites every BulkDataURI (at any depth) to the gateway's bulk route of this instance;
 * attributes whose URI has no recognisable bulk path are removed.
 */
export function rewriteBulkDataUris(ds: JsonDataset, dicomWebBase: string): void {
  const base = resourcePath('instance', objectUids(ds));
  const walk = (o: JsonDataset): void => {
    for (const [key, attr] of Object.entries(o)) {
      if (attr.vr === 'SQ') {
        for (const item of (attr.Value ?? []) as JsonDataset[]) if (item && typeof item === 'object') walk(item);
        continue;
      }
      if (attr.BulkDataURI === undefined) continue;
      const m = BULK_PATH.exec(attr.BulkDataURI);
      if (!m || !base) { delete o[key]; continue; }
      (o[key] as JsonAttribute).BulkDataURI = `${dicomWebBase}${base}/bulk/${m[1]!.toLowerCase()}`;
    }
  };
  walk(ds);
}

/** Parses the bulk path of a request ("7fe00010" or "54000100/1/54001010") into tags and item indexes. */
export function parseBulkPath(path: string): { tags: number[]; items: number[] } | undefined {
  const parts = path.split('/').filter(Boolean);
  if (parts.length % 2 !== 1) return undefined;
  const tags: number[] = [];
  const items: number[] = [];
  for (let i = 0; i < parts.length; i++) {
    const p = parts[i]!;
    if (i % 2 === 0) {
      if (!/^[0-9A-Fa-f]{8}$/.test(p)) return undefined;
      tags.push(parseInt(p, 16) >>> 0);
    } else {
      if (!/^\d{1,9}$/.test(p)) return undefined;
      items.push(Number(p));
    }
  }
  return { tags, items };
}
