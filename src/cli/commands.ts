/**
 * deid-gateway command line (contract: ../shared/docs/CONTRACT.md, docs/cli.md).
 *
 *   deid-gateway serve --config FILE
 *   deid-gateway check-config --config FILE
 *   deid-gateway deid --config FILE --client ID IN... --out DIR [--diff] [--preview DIR] [--jobs N]
 *
 * Exit codes: 0 success; 1 some inputs refused; 2 invalid configuration or usage.
 */
import { parseArgs } from 'node:util';
import { isGatewayError } from '../core/errors.js';
import { loadConfig, type Config } from '../config/schema.js';
import { runDeid } from './deid.js';
import type { QueryArgs, ReportArgs } from './audit.js';

const USAGE = `usage:
  deid-gateway serve --config FILE
  deid-gateway check-config --config FILE
  deid-gateway deid --config FILE --client ID IN... --out DIR [--diff] [--preview DIR] [--jobs N]
  deid-gateway audit verify --config FILE [--trail DIR]...
  deid-gateway audit query --config FILE [--client ID] [--since T] [--until T] [--study UID]
                           [--patient ID] [--outcome ok|denied|failed|aborted] [--type request|study]
                           [--format table|json|csv] [--trail DIR]...
  deid-gateway audit report --config FILE --client ID --since T [--until T] [--out FILE.html] [--trail DIR]...
  (T: an ISO date or date-time, or a duration back from now such as 24h or 30d;
   --trail DIR: the state.dir of another replica, whose trail is read too)`;

export class UsageError extends Error {}

function configOrExit(file: string | undefined): Config {
  if (!file) throw new UsageError('--config FILE is required');
  return loadConfig(file);
}

export async function main(argv: string[]): Promise<number> {
  const [command, ...rest] = argv;
  try {
    switch (command) {
      case 'check-config': {
        const { values } = parseArgs({ args: rest, options: { config: { type: 'string' } }, strict: true });
        const cfg = configOrExit(values.config);
        process.stdout.write(`${cfg.source}: valid; ${cfg.clients.length} client(s)\n`);
        for (const c of cfg.clients) {
          process.stdout.write(`  ${c.id}: options [${c.plan.options.join(', ')}], plan sha256:${c.plan.hash.slice(0, 16)}; ${scopeSummary(c)}\n`);
        }
        if (cfg.optOut.patients.length || cfg.optOut.file) {
          process.stdout.write(`  opt-out: ${cfg.optOut.patients.length} patient(s) inline${cfg.optOut.file ? ` + ${cfg.optOut.file}` : ''}\n`);
        }
        return 0;
      }
      case 'deid': {
        const { values, positionals } = parseArgs({
          args: rest, allowPositionals: true, strict: true,
          options: { config: { type: 'string' }, client: { type: 'string' }, out: { type: 'string' }, diff: { type: 'boolean', default: false }, preview: { type: 'string' }, jobs: { type: 'string' } },
        });
        const cfg = configOrExit(values.config);
        if (!values.client) throw new UsageError('--client ID is required');
        if (!values.out) throw new UsageError('--out DIR is required');
        if (positionals.length === 0) throw new UsageError('name at least one input file or folder');
        const jobs = values.jobs === undefined ? undefined : Number(values.jobs);
        if (jobs !== undefined && !(Number.isInteger(jobs) && jobs >= 1 && jobs <= 64)) throw new UsageError('--jobs N takes a whole number from 1 to 64 (files processed at once)');
        return await runDeid(cfg, { clientId: values.client, inputs: positionals, out: values.out, diff: values.diff ?? false, preview: values.preview, jobs });
      }
      case 'serve': {
        const { values } = parseArgs({ args: rest, options: { config: { type: 'string' } }, strict: true });
        const cfg = configOrExit(values.config);
        const { serve } = await import('./serve.js');
        return await serve(cfg);
      }
      case 'audit': {
        const [sub, ...more] = rest;
        if (sub !== 'verify' && sub !== 'query' && sub !== 'report') throw new UsageError(`unknown audit command "${sub ?? ''}"`);
        const s = { type: 'string' } as const;
        const trail = { type: 'string', multiple: true } as const;
        const { values } = parseArgs({
          args: more, strict: true,
          options: sub === 'verify' ? { config: s, trail }
            : sub === 'query' ? { config: s, client: s, since: s, until: s, study: s, patient: s, outcome: s, type: s, format: s, trail }
              : { config: s, client: s, since: s, until: s, out: s, trail },
        });
        const cfg = configOrExit(values.config as string | undefined);
        const audit = await import('./audit.js');
        try {
          if (sub === 'verify') return await audit.verifyAuditCommand(cfg, values as { trail?: string[] });
          if (sub === 'query') return await audit.queryAuditCommand(cfg, values as QueryArgs);
          return await audit.reportAuditCommand(cfg, values as ReportArgs);
        } catch (e) {
          if (isGatewayError(e)) throw e;
          throw new UsageError((e as Error).message);
        }
      }
      case undefined: case '-h': case '--help': case 'help':
        process.stdout.write(`${USAGE}\n`);
        return command ? 0 : 2;
      default:
        throw new UsageError(`unknown command "${command}"`);
    }
  } catch (e) {
    if (e instanceof UsageError || (e as { code?: string }).code === 'ERR_PARSE_ARGS_UNKNOWN_OPTION' || (e as { code?: string }).code === 'ERR_PARSE_ARGS_INVALID_OPTION_VALUE') {
      process.stderr.write(`deid-gateway: ${(e as Error).message}\n${USAGE}\n`);
      return 2;
    }
    if (isGatewayError(e) && (e.code === 'CONFIG_INVALID' || e.code === 'CONFIG_UNREADABLE' || e.code === 'DEID_PLAN_INVALID')) {
      process.stderr.write(`deid-gateway: ${e.message}\n`);
      return 2;
    }
    if (isGatewayError(e)) {
      process.stderr.write(`deid-gateway: ${e.code}: ${e.message}\n`);
      return 1;
    }
    throw e;
  }
}

/** One line on what a client may see, for check-config (counts and names, never list contents). */
function scopeSummary(c: Config['clients'][number]): string {
  const s = c.scope;
  const parts: string[] = [];
  if (s.studies || s.accessionNumbers || s.studiesFile) {
    parts.push(`allow-list ${(s.studies?.length ?? 0) + (s.accessionNumbers?.length ?? 0)} inline${s.studiesFile ? ` + ${s.studiesFile}` : ''}`);
  }
  if (s.studyDate) parts.push(`study date ${s.studyDate.from ?? '…'}–${s.studyDate.until ?? '…'}`);
  if (s.modalities) parts.push(`modalities ${s.modalities.join(',')}`);
  if (s.bodyParts) parts.push(`body parts ${s.bodyParts.join(',')}`);
  if (s.sopClasses) parts.push(`${s.sopClasses.length} SOP class(es)`);
  if (s.window.from !== undefined || s.window.until !== undefined) {
    parts.push(`access ${s.window.from === undefined ? '…' : new Date(s.window.from).toISOString()} to ${s.window.until === undefined ? '…' : new Date(s.window.until).toISOString()}`);
  }
  const l = c.limits;
  if (l && (l.requestsPerMinute || l.concurrentRequests || l.bytesPerDay)) {
    parts.push(`limits ${[l.requestsPerMinute ? `${l.requestsPerMinute}/min` : '', l.concurrentRequests ? `${l.concurrentRequests} concurrent` : '', l.bytesPerDay ? `${l.bytesPerDay} B/day` : ''].filter(Boolean).join(', ')}`);
  }
  return parts.length ? `scope: ${parts.join('; ')}` : 'scope: the whole PACS (minus opt-outs)';
}
