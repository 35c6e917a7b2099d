#!/usr/bin/env node
/**
 * The command's entry (`deid-gateway`, docs in the README): it checks the Node.js version before
 * anything that needs a newer one is loaded, then runs the command (./commands.ts).
 * A Node.js older than package.json's engines field gets one clear line and exit code 2.
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
