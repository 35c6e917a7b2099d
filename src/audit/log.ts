/**
 * The operational log (stderr, JSON lines): request id, client, route, status, timings and
 * error codes; never a UID or a value. The audit trail is separate: trail.ts and sink.ts.
 */
import winston from 'winston';

/** The operational log: request id, client, route, status and timings; never UIDs or values. */
export function createOpsLogger(level = process.env.LOG_LEVEL ?? 'info'): winston.Logger {
  return winston.createLogger({
    level,
    format: winston.format.combine(winston.format.timestamp(), winston.format.json()),
    transports: [new winston.transports.Console({ stderrLevels: ['error', 'warn', 'info', 'debug'] })],
  });
}
