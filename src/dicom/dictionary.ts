/**
 * The DICOM data dictionary (PS3.6 + PS3.7), loaded from src/data/dicom-dictionary.json.
 *
 * Tags are numbers (group << 16 | element). Masked entries such as (60xx,3000) are matched
 * with a mask, as PS3.6 defines repeating groups; a consumer never looks up by keyword at
 * run time except to validate configuration (keywords that do not resolve are errors).
 */
import { readFileSync } from 'node:fs';
import { isVR, type VR } from './vr.js';

export interface DictEntry {
  readonly tag: number;
  readonly keyword: string | null;
  /** First VR of the PS3.6 VR column ("US or SS" → US, "OB or OW" → OW); null for items. */
  readonly vr: VR | null;
  /** PS3.6 VR column as published, e.g. "US or SS". */
  readonly vrText: string | null;
  readonly vm: string;
  readonly name: string | null;
  readonly retired: boolean;
  /** True when the entry is a masked (repeating group / masked element) entry. */
  readonly masked: boolean;
}

interface RawEntry { keyword: string | null; vr: string | null; vm: string; name: string | null; retired: boolean }

export function parseTagKey(key: string): { value: number; mask: number } {
  const m = /^\(([0-9A-Fa-fx]{4}),([0-9A-Fa-fx]{4})\)$/.exec(key);
  if (!m) throw new Error(`bad tag key ${key}`);
  const hex = `${m[1]}${m[2]}`;
  let value = 0;
  let mask = 0;
  for (const ch of hex) {
    value = value * 16;
    mask = mask * 16;
    if (ch !== 'x') {
      value += parseInt(ch, 16);
      mask += 0xf;
    }
  }
  return { value: value >>> 0, mask: mask >>> 0 };
}

function firstVR(text: string | null): VR | null {
  if (!text) return null;
  const first = text.split(' or ')[0]?.trim() ?? '';
  return isVR(first) ? first : null;
}

class Dictionary {
  private readonly exact = new Map<number, DictEntry>();
  private readonly masked: { mask: number; value: number; entry: DictEntry }[] = [];
  private readonly byKeyword = new Map<string, DictEntry>();
  private readonly maskCache = new Map<number, DictEntry | null>();

  constructor(raw: Record<string, RawEntry>) {
    for (const [key, r] of Object.entries(raw)) {
      const { value, mask } = parseTagKey(key);
      const entry: DictEntry = {
        tag: value, keyword: r.keyword, vr: firstVR(r.vr), vrText: r.vr, vm: r.vm, name: r.name,
        retired: r.retired, masked: mask !== 0xffffffff,
      };
      if (entry.masked) this.masked.push({ mask, value, entry });
      else this.exact.set(value, entry);
      if (r.keyword && !this.byKeyword.has(r.keyword)) this.byKeyword.set(r.keyword, entry);
    }
  }

  lookup(tag: number): DictEntry | undefined {
    const e = this.exact.get(tag);
    if (e) return e;
    const cached = this.maskCache.get(tag);
    if (cached !== undefined) return cached ?? undefined;
    let found: DictEntry | null = null;
    for (const m of this.masked) {
      if (((tag & m.mask) >>> 0) === m.value) { found = m.entry; break; }
    }
    if (this.maskCache.size < 65536) this.maskCache.set(tag, found);
    return found ?? undefined;
  }

  byKeywordOrUndefined(keyword: string): DictEntry | undefined {
    return this.byKeyword.get(keyword);
  }

  *entries(): Iterable<DictEntry> {
    yield* this.exact.values();
    for (const m of this.masked) yield m.entry;
  }
}

let instance: Dictionary | undefined;

/** The process-wide dictionary, parsed on first use. */
export function dictionary(): Dictionary {
  if (!instance) {
    const url = new URL('../data/dicom-dictionary.json', import.meta.url);
    instance = new Dictionary(JSON.parse(readFileSync(url, 'utf8')) as Record<string, RawEntry>);
  }
  return instance;
}

export type { Dictionary };

/** Odd groups are private (PS3.5 7.8); groups 0001, 0003, 0005, 0007 and FFFF are not permitted. */
export function isPrivateTag(tag: number): boolean {
  return ((tag >>> 16) & 1) === 1;
}

/** Private Creator Data Elements are (gggg,0010)-(gggg,00FF) with gggg odd (PS3.5 7.8.1). */
export function isPrivateCreatorTag(tag: number): boolean {
  const el = tag & 0xffff;
  return isPrivateTag(tag) && el >= 0x0010 && el <= 0x00ff;
}

/** Item, Item Delimitation and Sequence Delimitation tags (PS3.5 7.5). */
export const ITEM = 0xfffee000;
export const ITEM_DELIMITATION = 0xfffee00d;
export const SEQUENCE_DELIMITATION = 0xfffee0dd;

/** The tag of a keyword, or undefined. */
export function tagOfKeyword(keyword: string): number | undefined {
  return dictionary().byKeywordOrUndefined(keyword)?.tag;
}

/** Parses "(0010,0010)", "00100010", "0010,0010" or a keyword into a tag number. */
export function parseTag(text: string): number | undefined {
  const t = text.trim();
  const m = /^\(?([0-9A-Fa-f]{4}),?([0-9A-Fa-f]{4})\)?$/.exec(t);
  if (m) return parseInt(`${m[1]}${m[2]}`, 16) >>> 0;
  return tagOfKeyword(t);
}

export function tagHex(tag: number): string {
  return (tag >>> 0).toString(16).toUpperCase().padStart(8, '0');
}
