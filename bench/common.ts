import { existsSync, readFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { NODE_FLAGS } from '../src/core/node-version.js';

/** The repository root (the folder holding package.json), from src or from dist. */
export function projectRoot(from: string): string {
  let dir = dirname(fileURLToPath(from));
  while (!existsSync(join(dir, 'package.json'))) {
    const up = dirname(dir);
    if (up === dir) throw new Error('package.json not found above the benchmark');
    dir = up;
  }
  return dir;
}

// ---------------------------------------------------------------------------
// CPU profile summary

interface ProfileNode { id: number; callFrame: { functionName: string; url: string; lineNumber: number }; hitCount?: number }

export function summarizeProfile(file: string, top = 20): { fn: string; where: string; selfMs: number; pct: number }[] {
  const p = JSON.parse(readFileSync(file, 'utf8')) as { nodes: ProfileNode[]; samples: number[]; timeDeltas: number[]; startTime: number; endTime: number };
  const totalUs = p.endTime - p.startTime;
  const perSampleUs = totalUs / Math.max(1, p.samples.length);
  const self = new Map<string, { fn: string; where: string; us: number }>();
  for (const n of p.nodes) {
    const hits = n.hitCount ?? 0;
    if (!hits) continue;
    const url = n.callFrame.url.replace(/^file:\/\/.*?\/(node_modules|dist|src)\//, '$1/');
    const key = `${n.callFrame.functionName}|${url}|${n.callFrame.lineNumber}`;
    const e = self.get(key) ?? { fn: n.callFrame.functionName || '(anonymous)', where: url ? `${url}:${n.callFrame.lineNumber + 1}` : '', us: 0 };
    e.us += hits * perSampleUs;
    self.set(key, e);
  }
  const busyUs = [...self.values()].filter((e) => e.fn !== '(idle)').reduce((a, e) => a + e.us, 0);
  return [...self.values()].filter((e) => e.fn !== '(idle)').sort((a, b) => b.us - a.us).slice(0, top)
    .map((e) => ({ fn: e.fn, where: e.where, selfMs: Math.round(e.us / 100) / 10, pct: Math.round((1000 * e.us) / busyUs) / 10 }));
}


/**
 * The arguments of `node` that run the gateway's command as it runs in production: the V8 flags
 * of every way of starting it (NODE_FLAGS), then the compiled entry beside the calling bench
 * (dist/bench/x.js → dist/src/cli/main.js), or the source through tsx when run from source.
 * `entry` is another build's dist/src/cli/main.js (a before/after), run with the same flags.
 */
export function gatewayCommand(benchUrl: string, entry?: string): string[] {
  if (entry) return [...NODE_FLAGS, entry];
  const compiled = fileURLToPath(new URL('../src/cli/main.js', benchUrl));
  if (benchUrl.endsWith('.js') && existsSync(compiled)) return [...NODE_FLAGS, compiled];
  return [...NODE_FLAGS, '--import', 'tsx', join(projectRoot(benchUrl), 'src/cli/main.ts')];
}
