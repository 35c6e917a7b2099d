import type { Config } from '../config/schema.js';

/** Placeholder until the audit trail lands (issue 5). */
export async function verifyAuditCommand(_cfg: Config): Promise<number> {
  process.stderr.write('deid-gateway: audit verify is not available in this build yet\n');
  return 2;
}
