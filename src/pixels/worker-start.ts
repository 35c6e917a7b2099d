/**
 * Starting a pixel worker thread. Compiled, it runs the module's .js file; under tsx (tests,
 * development) its .ts file, after registering tsx's loader in the worker itself (a worker
 * does not inherit --import).
 */
import { Worker } from 'node:worker_threads';

/** A worker running `name` (without extension) beside the module at `from` (its import.meta.url). */
export function startPixelWorker(from: string, name: string): Worker {
  if (!from.endsWith('.ts')) return new Worker(new URL(`./${name}.js`, from));
  const api = import.meta.resolve('tsx/esm/api');
  const entry = new URL(`./${name}.ts`, from).href;
  return new Worker(`(async () => { (await import(${JSON.stringify(api)})).register(); await import(${JSON.stringify(entry)}); })();`, { eval: true });
}
