/**
 * The checks of the corpus runner (bench/corpus.ts), on files: outputs other toolkits cannot
 * read, validator errors de-identification introduced, and values the profile must not let out.
 */
import { spawnSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { inflateRawSync } from 'node:zlib';
import { readHeaderSync, type RawElement } from '../src/dicom/part10.js';
import type { EngineContext } from '../src/deid/index.js';

/** Outputs dcmdump cannot read as Part 10 files (checked in batches). */
export function dcmdumpFailures(files: readonly string[]): string[] {
  const bad: string[] = [];
  for (let i = 0; i < files.length; i += 200) {
    const batch = files.slice(i, i + 200);
    const r = spawnSync('dcmdump', ['+fo', ...batch], { encoding: 'latin1', maxBuffer: 1 << 30, stdio: ['ignore', 'ignore', 'pipe'] });
    for (const line of r.stderr.split('\n')) {
      const m = /reading file: (.*)$/.exec(line);
      if (m) bad.push(m[1]!.trim());
    }
  }
  return bad;
}

/** dciodvfy's errors of a file, with values and positions left out so that two files compare. */
export function dciodvfyErrors(file: string): Set<string> {
  const r = spawnSync('dciodvfy', [file], { encoding: 'latin1', maxBuffer: 1 << 26, timeout: 60_000 });
  const out = new Set<string>();
  for (const line of `${r.stdout}\n${r.stderr}`.split('\n')) {
    if (!/Error/.test(line)) continue;
    // Values differ between an input and its output (UIDs mapped, names replaced): what is
    // compared is the kind of error and where it is.
    out.add(line.replace(/"[^"]*"/g, '""').replace(/<[0-9.]+>/g, '<UID>').replace(/\b\d+(?:\.\d+){2,}\b/g, 'UID').replace(/<[^>]*>\s*=\s*.*$/, '').replace(/\[[0-9]+\]/g, '[]').replace(/0x[0-9a-f]+/gi, '0x').replace(/\bvalue = .*$/i, 'value = ').trim());
  }
  return out;
}

const TEXT_VRS = new Set(['AE', 'AS', 'CS', 'DA', 'DS', 'DT', 'IS', 'LO', 'LT', 'PN', 'SH', 'ST', 'TM', 'UC', 'UI', 'UR', 'UT']);

/**
 * The values of an input that its client's profile must not let through: elements whose action
 * is neither keep nor clean (nested items included), 6 characters or more, that are not also a
 * kept value of the same file (a private copy of the Manufacturer is not a leak).
 */
export function needles(bytes: Buffer, ctx: EngineContext): string[] {
  let els: readonly RawElement[];
  try { els = readHeaderSync(bytes, (b) => inflateRawSync(b)).elements; } catch { return []; }
  const kept = new Set<string>();
  const secret = new Set<string>();
  const visit = (list: readonly RawElement[], inKept: boolean): void => {
    for (const e of list) {
      const kind = ctx.plan.lookup(e.tag).action.kind;
      if (e.items) { for (const it of e.items) visit(it.elements, inKept && (kind === 'keep' || kind === 'sequence')); continue; }
      if (!e.value || !TEXT_VRS.has(e.vr)) continue;
      const text = e.value.toString('latin1');
      for (const part of text.split('\\')) {
        const v = part.replace(/[\0 ]+$/, '').replace(/^ +/, '');
        if (!v) continue;
        if ((e.tag >>> 16) === 0x0002 || kind === 'keep' || kind === 'keep-valid' || kind === 'clean' || kind === 'age' || kind === 'sequence') kept.add(v.toUpperCase());
        else if (v.length >= 6 && !/^[0-9.+-]{1,7}$/.test(v)) secret.add(v);
      }
    }
  };
  visit(els, true);
  return [...secret].filter((v) => !kept.has(v.toUpperCase()) && ![...kept].some((k) => k.includes(v.toUpperCase())));
}

/**
 * The values an output carries, as upper-case text: every element but the ones the engine
 * writes about itself (Patient Identity Removed, De-identification Method and its codes,
 * Longitudinal Temporal Information Modified), whose
 * words ("removed") are no one's.
 */
export function outputText(bytes: Buffer): string {
  const parts: string[] = [];
  const visit = (list: readonly RawElement[]): void => {
    for (const e of list) {
      if ((e.tag >= 0x00120062 && e.tag <= 0x00120064) || e.tag === 0x00280303) continue;
      if (e.items) { for (const it of e.items) visit(it.elements); continue; }
      if (e.value && e.tag !== 0x7fe00010) parts.push(e.value.toString('latin1'));
    }
  };
  const h = readHeaderSync(bytes, (b) => inflateRawSync(b));
  visit(h.meta ?? []);
  visit(h.elements);
  return parts.join('\n').toUpperCase();
}

export function leaksOf(pairs: readonly [string, string][], ctx: EngineContext, show: boolean): { needles: number; leaks: { input: string; value: string }[] } {
  let n = 0;
  const leaks: { input: string; value: string }[] = [];
  for (const [input, output] of pairs) {
    let inBytes: Buffer;
    let outText: string;
    try { inBytes = readFileSync(input); outText = outputText(readFileSync(output)); } catch { continue; }
    for (const v of needles(inBytes, ctx)) {
      n++;
      if (outText.includes(v.toUpperCase())) leaks.push({ input, value: show ? v : v.length > 12 ? `${v.slice(0, 4)}…(${v.length})` : '(short value)' });
    }
  }
  return { needles: n, leaks };
}

