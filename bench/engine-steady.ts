/**
 * Per-instance header work in steady state (issue 14's "at or under 0.15 ms for a typical CT
 * header"), measured as the gateway runs: in a process of its own started with the gateway's
 * node flags (NODE_FLAGS, src/core/node-version.ts), no forced garbage collection, and passes
 * repeated until V8 has optimized the engine. Started by bench/engine.ts (`npm run bench`);
 * it prints one JSON line: each pass's milliseconds over the series.
 *
 * Why not the throughput table's passes: they call `global.gc()` before each pass, and a forced
 * full collection shrinks the young generation and makes the next pass re-tier part of the
 * engine, which the gateway never does (its passes measured 0.5 ms an instance against 0.11–0.16
 * here, same code, same inputs); and one warm-up pass does not reach steady state (bench/README.md).
 *
 *   BENCH_INSTANCES (200), BENCH_STEADY_PASSES (25)
 */
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createEngineContext, deidentifyPart10 } from '../src/deid/index.js';
import { generateCtSeries } from '../test/fixtures/generate.js';
import { chunked } from './common.js';

const INSTANCES = Number(process.env.BENCH_INSTANCES ?? '200') || 200;
const PASSES = Number(process.env.BENCH_STEADY_PASSES ?? '25') || 25;

async function main(): Promise<void> {
  const dir = await mkdtemp(join(tmpdir(), 'bench-engine-steady-'));
  let inputs: Buffer[];
  try {
    // The throughput table's series (same generator, same seed).
    const paths = await generateCtSeries(dir, INSTANCES, { rows: 512, cols: 512, seed: 20240601 });
    inputs = await Promise.all(paths.map((p) => readFile(p)));
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
  const passes: number[] = [];
  let outputBytes = 0;
  for (let r = 0; r < PASSES; r++) {
    // A fresh context each pass: pseudonym memos start cold, as for a new client.
    const ctx = createEngineContext({ clientId: 'bench', profile: { options: [] }, masterSecret: Buffer.alloc(32, 7) });
    const t0 = process.hrtime.bigint();
    let out = 0;
    for (const input of inputs) for await (const c of deidentifyPart10(chunked(input), ctx)) out += c.length;
    passes.push(Number(process.hrtime.bigint() - t0) / 1e6);
    outputBytes = out;
  }
  process.stdout.write(`${JSON.stringify({ instances: inputs.length, inputBytes: inputs.reduce((n, b) => n + b.length, 0), outputBytes, passes })}\n`);
}

main().catch((e: unknown) => { console.error(e); process.exit(1); });
