/**
 * Free-text cleaning for Clean Descriptors / Clean Structured Content (PS3.15 E.3.2, E.3.3), in
 * two passes: first every identifier of the same data set (all person-name components, IDs,
 * accession and similar, the birth date in common formats) and common patterns (e-mail,
 * telephone, dates, titled names, long digit runs); then the safe-word cleaner (free-text.ts),
 * which keeps only words known to be safe in their context.
 */
import { cleanFreeText, isClinicalWord, type FreeTextOptions } from './free-text.js';

export const REDACTED = '[REDACTED]';

const PATTERNS: readonly RegExp[] = [
  /[\p{L}\p{N}._%+-]+@[\p{L}\p{N}.-]+\.\p{L}{2,}/gu, // e-mail
  // Numeric dates, not inside decimals ("3.75/1.875" is a measurement).
  /(?<![\d.,])\d{4}[-/.]\d{1,2}[-/.]\d{1,2}(?![\d]|[.,]\d)/g, // 2024-03-01
  /(?<![\d.,])\d{1,2}[-/.]\d{1,2}[-/.]\d{2,4}(?![\d]|[.,]\d)/g, // 01/03/2024, 1.3.24
  /\b(?:19|20)\d{2}(?:0[1-9]|1[0-2])(?:0[1-9]|[12]\d|3[01])\b/g, // 20240301
  /\b\d{1,2}\s+(?:Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec)[a-z]*\.?\s+\d{2,4}\b/gi,
  /\b(?:Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec)[a-z]*\.?\s+\d{1,2},?\s+\d{4}\b/gi,
  /(?<![\d.,])\d{6,}(?!\d|[.,]\d)/g, // long digit runs: record numbers (not the decimals of 3.000000)
];

// Digit groups joined by a space, hyphen or slash, with an optional +country and (area) code;
// no dots or decimal context, so measurements such as "3.75/1.875" are not phone numbers.
const PHONE = /(?<![\p{L}\p{N}.,])(?:\+\d{1,3}[ -]?)?(?:\(\d{1,5}\)[ -]?)?\d{2,5}(?:[ /-]\d{2,5}){1,4}(?![\p{L}\p{N}]|[.,]\d)/gu;

function escapeRe(s: string): string {
  return s.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
}

export interface Scrubber {
  /** Returns the text with identifiers and patterns replaced by [REDACTED]. */
  scrub(text: string): string;
}

/** Birth date in the forms people type it. */
export function dateForms(da: string): string[] {
  const m = /^(\d{4})(\d{2})(\d{2})$/.exec(da.trim());
  if (!m) return [];
  const [, y, mo, d] = m as unknown as [string, string, string, string];
  return [`${y}${mo}${d}`, `${y}-${mo}-${d}`, `${y}/${mo}/${d}`, `${y}.${mo}.${d}`, `${d}/${mo}/${y}`,
    `${mo}/${d}/${y}`, `${d}.${mo}.${y}`, `${d}-${mo}-${y}`, `${+d}/${+mo}/${y}`, `${+mo}/${+d}/${y}`];
}

/** Splits identifier values into the pieces to look for (PN components, whole values). */
export function identifierPieces(values: Iterable<string>): string[] {
  const out = new Set<string>();
  for (const raw of values) {
    const v = raw.trim();
    if (v.length >= 3) out.add(v);
    for (const part of v.split(/[\^=\\,]/)) {
      const p = part.trim();
      if (p.length >= 2) out.add(p);
      // Multi-word components ("van der Berg", "Mary Ann"): each word of 3+ letters.
      for (const w of p.split(/\s+/)) if (w.length >= 3) out.add(w);
    }
  }
  return [...out];
}

const cache = new Map<string, Scrubber>();

/** Cleaned values remembered per scrubber (a series repeats its descriptions). */
const MEMO = 512;

/** A scrubber for one data set's identifiers and the client's word lists; cached, since a series repeats them. */
export function scrubberFor(identifiers: readonly string[], words?: FreeTextOptions, wordsId = ''): Scrubber {
  const key = `${wordsId}\u0001${identifiers.join('\u0000')}`;
  const hit = cache.get(key);
  if (hit) return hit;
  // A data set's identifier that is a clinical word (a station named "CT") is not looked for in
  // text: it would take the modality out of every description ("CT CHEST/PLAN").
  const sorted = [...identifiers].filter((v) => !isClinicalWord(v)).sort((a, b) => b.length - a.length).map(escapeRe);
  // Identifiers match case-insensitively, not inside longer words ("Li" in "Liver") nor
  // inside a decimal ("000000" in "3.000000").
  const ids = sorted.length ? new RegExp(`(?<![\\p{L}\\p{N}])(?<!\\d[.,])(?:${sorted.join('|')})(?![\\p{L}\\p{N}])(?![.,]\\d)`, 'giu') : null;
  const memo = new Map<string, string>();
  const s: Scrubber = {
    scrub(text: string): string {
      const known = memo.get(text);
      if (known !== undefined) return known;
      let out = ids ? text.replace(ids, REDACTED) : text;
      // Telephone numbers: digit groups with separators, 7+ digits in all ("+1 555 0100 22").
      out = out.replace(PHONE, (m) => (m.replace(/\D/g, '').length >= 7 ? REDACTED : m));
      for (const p of PATTERNS) out = out.replace(p, REDACTED);
      out = cleanFreeText(out, words);
      if (memo.size >= MEMO) memo.clear();
      memo.set(text, out);
      return out;
    },
  };
  if (cache.size >= 256) cache.clear();
  cache.set(key, s);
  return s;
}
