/**
 * Configuration: schema → parse → freeze (ARCHITECTURE rule 4). Every key is validated,
 * unknown keys are errors, and every message names the key and the fix.
 */
import { readFileSync } from 'node:fs';
import { dirname, isAbsolute, resolve } from 'node:path';
import { parseDocument } from 'yaml';
import { z } from 'zod';
import { GatewayError, isGatewayError } from '../core/errors.js';
import { compilePlan, type CompiledPlan, type OverrideAction } from '../deid/plan.js';
import { OPTION_NAMES, type OptionName } from '../deid/table.js';

const OVERRIDE_ACTIONS = ['keep', 'remove', 'empty', 'dummy', 'pseudonym', 'shift'] as const;

const profileSchema = z.strictObject({
  options: z.array(z.enum(OPTION_NAMES as [OptionName, ...OptionName[]], {
    error: () => `unknown option; use one of ${OPTION_NAMES.join(', ')}`,
  })).default([]),
  overrides: z.record(z.string(), z.enum(OVERRIDE_ACTIONS, {
    error: () => `unknown action; use one of ${OVERRIDE_ACTIONS.join(', ')}`,
  })).default({}),
  dateShift: z.strictObject({
    minDays: z.number().int().min(1, 'must be at least 1 day'),
    maxDays: z.number().int().max(36500, 'must be at most 36500 days (100 years)'),
  }).optional(),
});

const clientSchema = z.strictObject({
  id: z.string().regex(/^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$/, 'use 1–64 letters, digits, ".", "_" or "-", starting with a letter or digit'),
  apiKeySha256: z.string().regex(/^[0-9a-fA-F]{64}$/, 'must be the SHA-256 of the token as 64 hex digits (printf %s TOKEN | sha256sum)'),
  policyId: z.string().min(1).max(48).optional(),
  profile: profileSchema.default({ options: [], overrides: {} }),
});

export const configSchema = z.strictObject({
  server: z.strictObject({
    host: z.string().min(1).default('127.0.0.1'),
    port: z.number().int().min(0).max(65535, 'must be a TCP port, 0–65535'),
    publicBaseUrl: z.url({ error: 'must be an absolute URL such as https://gateway.example.org' }).optional(),
    maxQueryResults: z.number().int().min(1).max(1_000_000).default(1000),
  }),
  upstream: z.strictObject({
    url: z.url({ error: 'must be an absolute URL such as http://127.0.0.1:8042/dicom-web' }),
    connectTimeoutMs: z.number().int().min(1).default(5000),
    responseTimeoutMs: z.number().int().min(1).default(60000),
    transport: z.enum(['node', 'undici', 'http-proxy'], { error: () => 'use node (default), undici or http-proxy' }).default('node'),
  }),
  state: z.strictObject({
    dir: z.string().min(1, 'must name a directory for secrets, pseudonyms and the audit log'),
  }),
  engine: z.strictObject({
    maxHeaderBytes: z.number().int().min(65536).max(1024 * 1024 * 1024).default(64 * 1024 * 1024),
  }).default({ maxHeaderBytes: 64 * 1024 * 1024 }),
  clients: z.array(clientSchema).min(1, 'configure at least one client'),
});

export type ClientConfig = z.infer<typeof clientSchema> & { readonly plan: CompiledPlan };
export type Config = Omit<z.infer<typeof configSchema>, 'clients'> & {
  readonly clients: readonly ClientConfig[];
  /** The file the configuration came from (absolute), for messages. */
  readonly source: string;
};

function pathString(path: readonly PropertyKey[]): string {
  let s = '';
  for (const p of path) s += typeof p === 'number' ? `[${p}]` : s ? `.${String(p)}` : String(p);
  return s || '(top level)';
}

function deepFreeze<T>(o: T): T {
  if (o && typeof o === 'object' && !Object.isFrozen(o)) {
    Object.freeze(o);
    for (const v of Object.values(o as Record<string, unknown>)) deepFreeze(v);
  }
  return o;
}

/** Validates a parsed YAML value; throws CONFIG_INVALID listing every problem. */
export function validateConfig(raw: unknown, source: string): Config {
  const r = configSchema.safeParse(raw, { reportInput: true });
  if (!r.success) {
    const lines = r.error.issues.map((i) => {
      if (i.code === 'unrecognized_keys') {
        return `${pathString(i.path)}: unknown key${i.keys.length > 1 ? 's' : ''} ${i.keys.map((k) => `"${k}"`).join(', ')}; remove ${i.keys.length > 1 ? 'them' : 'it'} or check the spelling (docs/configuration.md)`;
      }
      if (i.code === 'invalid_type' && i.input === undefined) return `${pathString(i.path)}: required; add it (docs/configuration.md)`;
      if (i.code === 'invalid_type') return `${pathString(i.path)}: expected ${i.expected}${i.expected === 'string' ? '; quote the value in YAML' : ''}`;
      return `${pathString(i.path)}: ${i.message}`;
    });
    throw new GatewayError('CONFIG_INVALID', `${source}: invalid configuration\n  ${lines.join('\n  ')}`);
  }
  const cfg = r.data;
  const problems: string[] = [];
  const ids = new Set<string>();
  const keys = new Set<string>();
  const clients: ClientConfig[] = [];
  cfg.clients.forEach((c, i) => {
    if (ids.has(c.id)) problems.push(`clients[${i}].id: "${c.id}" is used twice; give every client its own id`);
    ids.add(c.id);
    const k = c.apiKeySha256.toLowerCase();
    if (keys.has(k)) problems.push(`clients[${i}].apiKeySha256: the same token hash is used by two clients; give every client its own token`);
    keys.add(k);
    if (c.profile.dateShift && c.profile.dateShift.maxDays < c.profile.dateShift.minDays) {
      problems.push(`clients[${i}].profile.dateShift: maxDays must be ≥ minDays`);
    }
    try {
      const plan = compilePlan({
        options: c.profile.options,
        overrides: c.profile.overrides as Record<string, OverrideAction>,
        ...(c.profile.dateShift ? { dateShift: c.profile.dateShift } : {}),
      });
      clients.push({ ...c, apiKeySha256: k, plan });
    } catch (e) {
      if (!isGatewayError(e)) throw e;
      problems.push(`clients[${i}].profile.${e.message}`);
    }
  });
  if (problems.length) throw new GatewayError('CONFIG_INVALID', `${source}: invalid configuration\n  ${problems.join('\n  ')}`);
  const dir = isAbsolute(cfg.state.dir) ? cfg.state.dir : resolve(dirname(source), cfg.state.dir);
  return deepFreeze({ ...cfg, state: { dir }, clients, source });
}

/** Reads, parses and validates a YAML configuration file. */
export function loadConfig(file: string): Config {
  const source = resolve(file);
  let text: string;
  try {
    text = readFileSync(source, 'utf8');
  } catch (cause) {
    throw new GatewayError('CONFIG_UNREADABLE', `${source}: cannot be read (${(cause as NodeJS.ErrnoException).code ?? 'error'}); check the --config path`, { cause });
  }
  const doc = parseDocument(text, { uniqueKeys: true, prettyErrors: true });
  if (doc.errors.length) {
    const e = doc.errors[0]!;
    const line = e.linePos?.[0];
    throw new GatewayError('CONFIG_INVALID', `${source}${line ? `:${line.line}:${line.col}` : ''}: not valid YAML (${e.code}); fix the syntax there`);
  }
  return validateConfig(doc.toJS(), source);
}
