/**
 * De-identification of the DICOM JSON model (PS3.18 Annex F): QIDO-RS rows and WADO-RS
 * metadata. The same engine and plan as Part 10; this file only reads and writes JSON.
 */
import { GatewayError } from '../core/errors.js';
import { charsetFor, type Charset } from '../dicom/charset.js';
import { dictionary, isPrivateTag } from '../dicom/dictionary.js';
import { isVR, NUMERIC_SIZES, STRING_VRS, type VR } from '../dicom/vr.js';
import { deidentify, type ApplyOptions, type Adapter, type EngineContext } from './engine.js';
import { decodeStrings } from '../dicom/values.js';

export interface JsonAttribute {
  vr: string;
  Value?: unknown[];
  InlineBinary?: string;
  BulkDataURI?: string;
}
export type JsonDataset = Record<string, JsonAttribute>;

interface JEl { readonly key: string; readonly tag: number; readonly attr: JsonAttribute }
interface JDs { readonly elements: readonly JEl[]; readonly charset: Charset }
interface JOut { readonly key: string; readonly tag: number; readonly attr: JsonAttribute }

const KEY = /^[0-9A-Fa-f]{8}$/;

function malformed(reason: string): GatewayError {
  return new GatewayError('DICOM_JSON_MALFORMED', reason);
}

function toDataset(obj: unknown, depth: number, parentCharset: Charset | undefined): JDs {
  if (depth > 64) throw malformed('sequences nested deeper than 64 levels');
  if (typeof obj !== 'object' || obj === null || Array.isArray(obj)) throw malformed('a data set is not a JSON object');
  const elements: JEl[] = [];
  for (const [key, attr] of Object.entries(obj as Record<string, unknown>)) {
    if (!KEY.test(key)) throw malformed('an attribute key is not 8 hexadecimal digits');
    if (typeof attr !== 'object' || attr === null || typeof (attr as JsonAttribute).vr !== 'string' || !isVR((attr as JsonAttribute).vr)) {
      throw malformed(`attribute ${key.toUpperCase()} has no valid "vr"`);
    }
    const a = attr as JsonAttribute;
    if (a.Value !== undefined && !Array.isArray(a.Value)) throw malformed(`attribute ${key.toUpperCase()} has a "Value" that is not an array`);
    elements.push({ key: key.toUpperCase(), tag: parseInt(key, 16) >>> 0, attr: a });
  }
  elements.sort((a, b) => a.tag - b.tag);
  // The JSON model is UTF-8 (PS3.18 F.2); only InlineBinary of UN elements keeps the
  // original bytes, decoded with the declared Specific Character Set.
  const cs = elements.find((e) => e.tag === 0x00080005)?.attr.Value;
  const charset = Array.isArray(cs) ? charsetFor(cs.map((v) => (typeof v === 'string' ? v : ''))) : parentCharset ?? charsetFor(undefined);
  return { elements, charset };
}

function pnToString(v: unknown): string {
  if (v === null || v === undefined) return '';
  if (typeof v === 'string') return v;
  if (typeof v !== 'object') throw malformed('a PN value is neither an object nor a string');
  const o = v as { Alphabetic?: unknown; Ideographic?: unknown; Phonetic?: unknown };
  const groups = [o.Alphabetic, o.Ideographic, o.Phonetic].map((g) => (typeof g === 'string' ? g : ''));
  while (groups.length > 1 && groups[groups.length - 1] === '') groups.pop();
  return groups.join('=');
}

function pnFromString(s: string): unknown {
  if (s === '') return null;
  const [a, i, p] = s.split('=');
  const o: Record<string, string> = {};
  if (a) o.Alphabetic = a;
  if (i) o.Ideographic = i;
  if (p) o.Phonetic = p;
  return o;
}

function resolvedVR(el: JEl): VR {
  const vr = el.attr.vr as VR;
  if (vr === 'UN' && !isPrivateTag(el.tag)) return dictionary().lookup(el.tag)?.vr ?? 'UN';
  return vr;
}

const jsonAdapter: Adapter<JEl, JDs, JOut> = {
  elements: (ds) => ds.elements,
  tag: (e) => e.tag,
  vr: (e) => resolvedVR(e),
  strings(e, ds) {
    const vr = resolvedVR(e);
    const a = e.attr;
    if (a.Value !== undefined) {
      if (vr === 'SQ') return null;
      return a.Value.map((v) => {
        if (vr === 'PN') return pnToString(v);
        if (v === null || v === undefined) return '';
        if (typeof v === 'string') return v;
        if (typeof v === 'number' || typeof v === 'bigint') return String(v);
        throw malformed(`attribute ${e.key} has a value of an unexpected type`);
      });
    }
    if (a.InlineBinary !== undefined && a.vr === 'UN' && STRING_VRS.has(vr)) {
      return decodeStrings(Buffer.from(a.InlineBinary, 'base64'), vr, ds.charset);
    }
    if (a.InlineBinary !== undefined || a.BulkDataURI !== undefined) return null;
    return [];
  },
  items(e, ds) {
    const v = e.attr.Value;
    if (!v) return [];
    return v.map((item) => toDataset(item, 1, ds.charset));
  },
  keep: (e) => ({ key: e.key, tag: e.tag, attr: e.attr }),
  setStrings(tag, vr, values) {
    const key = tag.toString(16).toUpperCase().padStart(8, '0');
    if (values.every((v) => v === '')) return { key, tag, attr: { vr } };
    let Value: unknown[];
    if (vr === 'PN') Value = values.map(pnFromString);
    else if (vr === 'IS' || vr === 'DS') Value = values.map((v) => (v === '' ? null : Number.isFinite(Number(v)) ? Number(v) : v));
    else Value = values.map((v) => (v === '' ? null : v));
    return { key, tag, attr: { vr, Value } };
  },
  setEmpty(tag, vr) {
    return { key: tag.toString(16).toUpperCase().padStart(8, '0'), tag, attr: { vr } };
  },
  setZeros(tag, vr) {
    const key = tag.toString(16).toUpperCase().padStart(8, '0');
    if (vr === 'AT') return { key, tag, attr: { vr, Value: ['00000000'] } };
    if (['US', 'SS', 'UL', 'SL', 'FL', 'FD', 'SV', 'UV'].includes(vr)) return { key, tag, attr: { vr, Value: [0] } };
    return { key, tag, attr: { vr, InlineBinary: Buffer.alloc(Math.max(2, NUMERIC_SIZES[vr] ?? 2)).toString('base64') } };
  },
  setSequence(tag, items) {
    const key = tag.toString(16).toUpperCase().padStart(8, '0');
    if (items.length === 0) return { key, tag, attr: { vr: 'SQ' } };
    return { key, tag, attr: { vr: 'SQ', Value: items.map(toObject) } };
  },
  outTag: (o) => o.tag,
};

function toObject(out: readonly JOut[]): JsonDataset {
  const o: JsonDataset = {};
  for (const x of out) o[x.key] = x.attr;
  return o;
}

/** De-identifies one DICOM JSON data set; throws DICOM_JSON_MALFORMED on bad input. */
export function deidentifyJson(obj: unknown, ctx: EngineContext, opts: ApplyOptions): JsonDataset {
  return toObject(deidentify(jsonAdapter, toDataset(obj, 0, undefined), ctx, opts));
}
