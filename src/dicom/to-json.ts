/**
 * Part 10 elements → the DICOM JSON model (PS3.18 F.2): PN as component-group objects,
 * IS/DS as numbers, binary as InlineBinary, sequences as arrays of objects.
 */
import { charsetFor, type Charset } from './charset.js';
import { dictionary, isPrivateTag } from './dictionary.js';
import type { RawElement } from './part10.js';
import { declaredCharset, decodeNumbers, decodeStrings } from './values.js';
import { STRING_VRS, type VR } from './vr.js';

export type JsonModel = Record<string, { vr: string; Value?: unknown[]; InlineBinary?: string }>;

/** Converts elements (and nested items) to the JSON model; throws on undecodable text. */
export function toJsonModel(elements: readonly RawElement[], inherited?: Charset): JsonModel {
  const charset = declaredCharset(elements) ?? inherited ?? charsetFor(undefined);
  const out: JsonModel = {};
  for (const e of elements) {
    const key = e.tag.toString(16).toUpperCase().padStart(8, '0');
    let vr: VR = e.items ? 'SQ' : e.vr;
    if (vr === 'UN' && !isPrivateTag(e.tag)) vr = dictionary().lookup(e.tag)?.vr ?? 'UN';
    if (e.items) {
      out[key] = e.items.length ? { vr: 'SQ', Value: e.items.map((i) => toJsonModel(i.elements, charset)) } : { vr: 'SQ' };
      continue;
    }
    const v = e.value ?? Buffer.alloc(0);
    if (STRING_VRS.has(vr)) {
      const s = decodeStrings(v, vr, charset);
      if (!s.length) { out[key] = { vr }; continue; }
      out[key] = {
        vr,
        Value: s.map((x) => {
          if (x === '') return null;
          if (vr === 'PN') {
            const [a, i, p] = x.split('=');
            return { ...(a ? { Alphabetic: a } : {}), ...(i ? { Ideographic: i } : {}), ...(p ? { Phonetic: p } : {}) };
          }
          if (vr === 'IS' || vr === 'DS') return Number.isFinite(Number(x)) ? Number(x) : x;
          return x;
        }),
      };
    } else if (vr === 'AT') {
      const vals: string[] = [];
      for (let i = 0; i + 4 <= v.length; i += 4) {
        const g = e.syntax.littleEndian ? v.readUInt16LE(i) : v.readUInt16BE(i);
        const el = e.syntax.littleEndian ? v.readUInt16LE(i + 2) : v.readUInt16BE(i + 2);
        vals.push(((g << 16 | el) >>> 0).toString(16).toUpperCase().padStart(8, '0'));
      }
      out[key] = vals.length ? { vr, Value: vals } : { vr };
    } else {
      const nums = decodeNumbers(v, vr, e.syntax.littleEndian);
      if (nums.length) out[key] = { vr, Value: nums.map((n) => (typeof n === 'bigint' ? Number(n) : n)) };
      else out[key] = v.length ? { vr, InlineBinary: v.toString('base64') } : { vr };
    }
  }
  return out;
}
