/**
 * `deid-gateway serve`: runs until SIGTERM/SIGINT, then drains in-flight requests, flushes
 * pseudonyms and the audit log, and exits 0 (contract).
 */
import type { Config } from '../config/schema.js';
import { startGateway } from '../main.js';

export async function serve(cfg: Config): Promise<number> {
  const gw = await startGateway(cfg);
  await new Promise<void>((resolve) => {
    const stop = (): void => { resolve(); };
    process.once('SIGTERM', stop);
    process.once('SIGINT', stop);
  });
  await gw.close();
  return 0;
}
