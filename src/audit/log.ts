/**
 * The audit trail (issue 3's first form; issue 5 adds hash chaining and standard messages):
 * one JSON line per request in `state.dir/audit.log`, through winston, separate from the
 * operational log. It holds original and pseudonymous study UIDs — this file stays inside
 * the hospital — and never a name, ID, date or other value of a data set.
 */
import { join } from 'node:path';
import winston from 'winston';

export interface AuditRecord {
  readonly time: string;
  readonly requestId: string;
  readonly client: string | null;
  readonly method: string;
  readonly route: string;
  readonly status: number;
  readonly outcome: 'ok' | 'denied' | 'failed' | 'aborted';
  readonly code?: string;
  readonly bytes: number;
  readonly durationMs: number;
  readonly instances: number;
  readonly withheld: number;
  readonly studies: readonly { readonly original: string; readonly pseudonymous: string }[];
  readonly policyHash: string | null;
}

export interface AuditSink {
  write(r: AuditRecord): void;
  close(): Promise<void>;
}

export function openAuditLog(stateDir: string): AuditSink {
  const transport = new winston.transports.File({ filename: join(stateDir, 'audit.log'), options: { flags: 'a', mode: 0o600 } });
  const logger = winston.createLogger({ level: 'info', format: winston.format.printf((info) => JSON.stringify(info.message)), transports: [transport] });
  return {
    write(r) {
      logger.info(r as unknown as string);
    },
    close() {
      return new Promise((resolve) => {
        transport.on('finish', () => resolve());
        logger.end();
        setTimeout(resolve, 2000).unref();
      });
    },
  };
}

/** The operational log: request id, client, route, status and timings; never UIDs or values. */
export function createOpsLogger(level = process.env.LOG_LEVEL ?? 'info'): winston.Logger {
  return winston.createLogger({
    level,
    format: winston.format.combine(winston.format.timestamp(), winston.format.json()),
    transports: [new winston.transports.Console({ stderrLevels: ['error', 'warn', 'info', 'debug'] })],
  });
}
