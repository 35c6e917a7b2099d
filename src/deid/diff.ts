/**
 * An attribute-by-attribute account of what the engine did to one instance, for hospital
 * IT previewing a policy (`deid-gateway deid --diff`). It names tags, keywords, the kind of
 * change and the rule, and never prints an original value: originals are PHI, and kept values
 * are originals too. The one value it shows is a cleaned text as it leaves (Clean Descriptors,
 * Clean Structured Content), with its redactions marked: what the client receives anyway, and
 * what hospital IT needs to tune the word lists.
 */
import { REDACTED_WORD } from './free-text.js';
import { dictionary, isPrivateTag, isPrivateCreatorTag, tagHex } from '../dicom/dictionary.js';
import type { RawElement } from '../dicom/part10.js';
import type { CompiledPlan } from './plan.js';

export interface DiffLine {
  readonly tag: number;
  readonly keyword: string;
  readonly change: 'removed' | 'replaced' | 'emptied' | 'added' | 'kept' | 'cleaned' | 'cleaned inside';
  readonly rule: string;
  /** A cleaned text as it leaves, and how many redactions it carries. */
  readonly shown?: { readonly value: string; readonly redactions: number };
}

function text(v: Buffer | null): string {
  const b = v ?? Buffer.alloc(0);
  const utf8 = b.toString('utf8');
  return (utf8.includes('\ufffd') ? b.toString('latin1') : utf8).replace(/[\0 ]+$/, '');
}

function sameBytes(a: RawElement, b: RawElement): boolean {
  if (a.items || b.items) {
    if (!a.items || !b.items || a.items.length !== b.items.length) return false;
    return a.items.every((it, i) => {
      const other = b.items![i]!.elements;
      return it.elements.length === other.length && it.elements.every((e, j) => e.tag === other[j]!.tag && sameBytes(e, other[j]!));
    });
  }
  const av = a.value ?? Buffer.alloc(0);
  const bv = b.value ?? Buffer.alloc(0);
  // Padding to even length is not a change.
  const trim = (v: Buffer): Buffer => (v.length && (v[v.length - 1] === 0x20 || v[v.length - 1] === 0) ? v.subarray(0, v.length - 1) : v);
  return trim(av).equals(trim(bv));
}

export function diffHeaders(input: readonly RawElement[], output: readonly RawElement[], plan: CompiledPlan, all = false): DiffLine[] {
  const ins = new Map(input.map((e) => [e.tag, e]));
  const outs = new Map(output.map((e) => [e.tag, e]));
  const tags = [...new Set([...ins.keys(), ...outs.keys()])].sort((a, b) => a - b);
  const lines: DiffLine[] = [];
  for (const tag of tags) {
    const a = ins.get(tag);
    const b = outs.get(tag);
    const priv = isPrivateTag(tag);
    const keyword = priv ? (isPrivateCreatorTag(tag) ? 'private creator' : 'private') : (tag & 0xffff) === 0 ? 'group length' : dictionary().lookup(tag)?.keyword ?? 'unknown';
    const rule = priv ? (b ? 'E.3.10-1 safe private, retainSafePrivate C' : 'E.1-1 private attributes X') : plan.lookup(tag).rule;
    let change: DiffLine['change'];
    if (a && !b) change = 'removed';
    else if (!a && b) change = 'added';
    else if (sameBytes(a!, b!)) change = 'kept';
    else if (b!.items) change = 'cleaned inside';
    else change = (b!.value?.length ?? 0) === 0 ? 'emptied' : 'replaced';
    if (change === 'kept' && !all) continue;
    if (change === 'replaced' && !priv && plan.lookup(tag).action.kind === 'clean') {
      const value = text(b!.value);
      lines.push({ tag, keyword, change: 'cleaned', rule, shown: { value, redactions: value.split(REDACTED_WORD).length - 1 } });
      continue;
    }
    lines.push({ tag, keyword, change, rule: change === 'added' ? 'written by the engine (PS3.15 E.1.1)' : rule });
  }
  return lines;
}

export function formatDiff(lines: readonly DiffLine[]): string {
  return lines.map((l) => `  (${tagHex(l.tag).slice(0, 4)},${tagHex(l.tag).slice(4)}) ${l.keyword.padEnd(40)} ${l.change.padEnd(15)} ${l.rule}${l.shown ? `\n      leaves as ${JSON.stringify(l.shown.value)} (${l.shown.redactions} redaction${l.shown.redactions === 1 ? '' : 's'})` : ''}`).join('\n');
}
