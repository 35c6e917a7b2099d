#!/usr/bin/env -S node --max-semi-space-size=4
/**
 * The command's entry (`deid-gateway`, docs in the README): it checks the Node.js version before
 * anything that needs a newer one is loaded, then runs the command (./commands.ts).
 * A Node.js older than package.json's engines field gets one clear line and exit code 2.
 *
 * The gateway runs with a young generation of 4 MiB semi-spaces (V8's default grows them to 16):
 * a retrieve makes short-lived objects at a high rate, and a smaller young generation is
 * collected sooner, which holds the peak resident memory of streaming a 400-slice CT about 30
 * MB lower for no measurable CPU (docs/decisions.md, session 11). V8 reads the flag only when
 * it starts, so it is on every way of starting the gateway: this line (the installed
 * `deid-gateway` command), `npm start`, the container's entry point and the benchmarks
 * (`NODE_FLAGS` in ../core/node-version.ts; test/unit/node-version.test.ts holds them together).
 */
import { MIN_NODE, nodeSupported } from '../core/node-version.js';

if (!nodeSupported(process.versions.node)) {
  process.stderr.write(`deid-gateway: Node.js ${MIN_NODE} or later is needed; this is ${process.versions.node}\n`);
  process.exitCode = 2;
} else {
  const { main } = await import('./commands.js');
  main(process.argv.slice(2)).then((code) => {
    process.exitCode = code;
  }, (e: unknown) => {
    // Unexpected: say what kind of failure without printing data.
    process.stderr.write(`deid-gateway: internal error: ${(e as Error)?.name ?? 'Error'}: ${(e as Error)?.message ?? ''}\n`);
    process.exitCode = 70;
  });
}
