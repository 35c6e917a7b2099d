/**
 * The oldest Node.js the gateway runs on: package.json's engines field says the same
 * (`>=MIN_NODE`), and test/unit/node-version.test.ts holds the two together and checks that the
 * code uses no API newer than this (the PNG encoder's zlib.crc32 appeared in 20.15.0).
 */
export const MIN_NODE = '20.15.0';

/** Whether a Node.js version ("20.15.1", "v22.1.0") is MIN_NODE or later. */
export function nodeSupported(version: string, min = MIN_NODE): boolean {
  const parse = (v: string): number[] => v.replace(/^v/, '').split('.').map((x) => Number.parseInt(x, 10) || 0);
  const a = parse(version), b = parse(min);
  for (let i = 0; i < 3; i++) if ((a[i] ?? 0) !== (b[i] ?? 0)) return (a[i] ?? 0) > (b[i] ?? 0);
  return true;
}

/**
 * The V8 flags the gateway is started with, on every way of starting it: the entry's shebang
 * (src/cli/main.ts), `npm start`, deploy/Dockerfile's entry point and the benchmarks. V8 reads
 * them only at start-up (v8.setFlagsFromString is too late for the heap's sizes), so they cannot
 * be set from inside. A young generation of 4 MiB semi-spaces instead of V8's 16 is collected
 * sooner: the peak resident memory of streaming a 400-slice CT is about 30 MB lower, for no
 * CPU that the benchmarks can tell (docs/decisions.md, session 11).
 */
export const NODE_FLAGS: readonly string[] = ['--max-semi-space-size=4'];
