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
 * The arguments of `node` that run one of the project's modules with the gateway's V8 flags
 * (NODE_FLAGS): `rel` is its path from the bench folder, without extension; compiled beside a
 * compiled bench (dist/bench/x.js → dist/<rel>.js), or the source through tsx otherwise.
 */
export function moduleCommand(benchUrl: string, rel: string): string[] {
  const compiled = fileURLToPath(new URL(`${rel}.js`, benchUrl));
  if (benchUrl.endsWith('.js') && existsSync(compiled)) return [...NODE_FLAGS, compiled];
  return [...NODE_FLAGS, '--import', 'tsx', join(projectRoot(benchUrl), 'bench', `${rel}.ts`)];
}

/**
 * The arguments of `node` that run the gateway's command as it runs in production (the flags of
 * every way of starting it, then its entry: `moduleCommand`). `entry` is another build's
 * dist/src/cli/main.js (a before/after), run with the same flags.
 */
export function gatewayCommand(benchUrl: string, entry?: string): string[] {
  return entry ? [...NODE_FLAGS, entry] : moduleCommand(benchUrl, '../src/cli/main');
}

/** Subarrays of `size` bytes of an in-memory file (no copy), as a stream brings them; `tick` runs before each. */
export async function* chunked(buf: Buffer, size = 64 * 1024, tick?: () => void): AsyncGenerator<Buffer> {
  for (let o = 0; o < buf.length; o += size) {
    tick?.();
    yield buf.subarray(o, Math.min(o + size, buf.length));
  }
}
