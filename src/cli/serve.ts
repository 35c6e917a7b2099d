/**
 * `deid-gateway serve`: runs until SIGTERM/SIGINT, then drains in-flight requests, flushes
 * pseudonyms and the audit log, and exits 0 (contract). SIGHUP re-reads the configuration:
 * clients, policies, scopes, limits, pixel rules and the opt-out list change for new
 * requests without dropping any; an invalid file is logged (naming the key) and the running
 * configuration stays.
 */
import { isGatewayError } from '../core/errors.js';
import { loadConfig, type Config } from '../config/schema.js';
import { createOpsLogger } from '../audit/log.js';
import { startGateway } from '../main.js';

export async function serve(cfg: Config): Promise<number> {
  const gw = await startGateway(cfg, undefined, { warm: true });
  const log = createOpsLogger();
  const onHup = (): void => {
    try {
      const next = loadConfig(cfg.source);
      const warnings = gw.reload(next);
      log.info(`configuration reloaded from ${cfg.source}${warnings.length ? `; restart to apply: ${warnings.map((w) => w.split(':')[0]).join(', ')}` : ''}`);
    } catch (e) {
      log.error(`configuration not reloaded, the running one stays: ${isGatewayError(e) ? e.message : (e as Error)?.name}`);
    }
  };
  process.on('SIGHUP', onHup);
  await new Promise<void>((resolve) => {
    const stop = (): void => { resolve(); };
    process.once('SIGTERM', stop);
    process.once('SIGINT', stop);
  });
  process.off('SIGHUP', onHup);
  await gw.close();
  return 0;
}
