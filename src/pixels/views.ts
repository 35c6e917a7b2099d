/**
 * `DatasetView` over the two representations the gateway holds: Part 10 elements (streamed
 * headers, offline files) and DICOM JSON (metadata fetched from the PACS).
 */
import { DEFAULT_CHARSET, type Charset } from '../dicom/charset.js';
import { dictionary, isPrivateTag } from '../dicom/dictionary.js';
import type { RawElement } from '../dicom/part10.js';
import { declaredCharset, decodeNumbers, decodeStringsAsRead } from '../dicom/values.js';
import { NUMERIC_SIZES, STRING_VRS, type VR } from '../dicom/vr.js';
import type { DatasetView } from './geometry.js';

function vrOf(e: RawElement): VR {
  if (e.items) return 'SQ';
  if (e.vr === 'UN' && !isPrivateTag(e.tag)) return dictionary().lookup(e.tag)?.vr ?? 'UN';
  return e.vr;
}

/**
 * A view of Part 10 elements (a header, or an item's elements), read in the character set they
 * declare (else `inherited`, the enclosing data set's). Bytes beyond ASCII where none is
 * declared are read as Latin-1, as the engine, DCMTK and pydicom read them.
 */
export function part10View(elements: readonly RawElement[], inherited: Charset = DEFAULT_CHARSET): DatasetView {
  const charset = declaredCharset(elements) ?? inherited;
  let byTag: Map<number, RawElement> | undefined;
  const find = (tag: number): RawElement | undefined => {
    byTag ??= new Map(elements.map((e) => [e.tag, e]));
    return byTag.get(tag);
  };
  const strings = (e: RawElement): string[] | undefined => {
    if (!e.value) return undefined;
    const vr = vrOf(e);
    if (STRING_VRS.has(vr)) return decodeStringsAsRead(e.value, vr, charset).map((s) => s.trim());
    if (NUMERIC_SIZES[vr] !== undefined) return decodeNumbers(e.value, vr, e.syntax.littleEndian).map(String);
    return undefined;
  };
  return {
    str(tag) {
      const e = find(tag);
      const s = e && strings(e)?.join('\\');
      return s ? s : undefined;
    },
    nums(tag) {
      const e = find(tag);
      const s = e && strings(e);
      if (!s?.length) return undefined;
      const n = s.map(Number);
      return n.every(Number.isFinite) ? n : undefined;
    },
    items(tag) {
      const e = find(tag);
      return (e?.items ?? []).map((it) => part10View(it.elements, charset));
    },
  };
}

type JsonAttr = { readonly vr?: string; readonly Value?: readonly unknown[] };

/** A view of a DICOM JSON data set (PS3.18 F.2). */
export function jsonView(ds: Readonly<Record<string, unknown>>): DatasetView {
  const attr = (tag: number): JsonAttr | undefined => ds[tag.toString(16).toUpperCase().padStart(8, '0')] as JsonAttr | undefined;
  return {
    str(tag) {
      const v = attr(tag)?.Value;
      if (!v?.length) return undefined;
      const s = v.map((x) => (x && typeof x === 'object' ? String((x as { Alphabetic?: unknown }).Alphabetic ?? '') : String(x ?? ''))).join('\\').trim();
      return s ? s : undefined;
    },
    nums(tag) {
      const v = attr(tag)?.Value;
      if (!v?.length) return undefined;
      const n = v.map((x) => (typeof x === 'number' ? x : typeof x === 'string' && x.trim() !== '' ? Number(x) : Number.NaN));
      return n.every(Number.isFinite) ? n : undefined;
    },
    items(tag) {
      const a = attr(tag);
      if (a?.vr !== 'SQ' || !a.Value) return [];
      return a.Value.filter((x): x is Record<string, unknown> => !!x && typeof x === 'object').map(jsonView);
    },
  };
}
