import type { Config } from '../config/schema.js';

/** Placeholder until the gateway lands (issue 3): refuses clearly instead of pretending. */
export async function serve(_cfg: Config): Promise<number> {
  process.stderr.write('deid-gateway: serve is not available in this build yet\n');
  return 2;
}
