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
import { dictionary, parseTag } from '../dicom/dictionary.js';
import { normalizeSubject, parseSubject } from '../core/subject.js';
import { readListFile } from '../policy/watched-file.js';
import { accessionSchema, optOutEntrySchema, parseOptOutList, parseStudyList, uidSchema } from './lists.js';

/**
 * The most QIDO rows one request may return: every study a request releases is itemized in its
 * audit record, up to this many (MAX_NOTED_STUDIES in src/http/dicomweb.ts is this constant), so
 * a page may not be larger (a larger result is paged with offset).
 */
export const MAX_QUERY_RESULTS = 10_000;
const QUERY_RESULTS_CAP = `must be at most ${MAX_QUERY_RESULTS} (every study a request releases is itemized in its audit record); lower it and let clients page with offset`;

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
  /** Clean Descriptors / Clean Structured Content: the hospital's own words kept, and always removed. */
  freeText: z.strictObject({
    keep: z.array(z.string().regex(/^[^\s]{1,64}$/, 'one word each, without spaces')).default([]),
    remove: z.array(z.string().regex(/^[^\s]{1,64}$/, 'one word each, without spaces')).default([]),
  }).optional(),
});

const dateSchema = z.string().regex(/^\d{4}-?\d{2}-?\d{2}$/, 'use a date such as 2021-12-31').transform((d) => d.replace(/-/g, ''));
const instantSchema = z.string().refine((v) => /^\d{4}-\d{2}-\d{2}([T ][0-9:.]+(Z|[+-]\d{2}:?\d{2})?)?$/.test(v) && !Number.isNaN(Date.parse(v)), {
  message: 'use an ISO 8601 date or date-time such as 2027-01-01 or 2027-01-01T00:00:00Z',
});
const codeListSchema = z.array(z.string().trim().regex(/^[A-Za-z0-9_ ]{1,16}$/, 'must be a DICOM code string (letters, digits, _; up to 16)').transform((v) => v.toUpperCase())).min(1, 'list at least one value, or leave the key out');
/** Bytes: a number, or a string such as "500 MB", "20GB", "1.5 TiB". */
const bytesSchema = z.union([
  z.number().int().min(1),
  z.string().regex(/^\s*\d+(\.\d+)?\s*([kKmMgGtT]i?[bB]|[bB])?\s*$/, 'use bytes as a number or a size such as "500 MB" or "2 TiB"').transform((v) => {
    const m = /^\s*(\d+(?:\.\d+)?)\s*([kKmMgGtT]i?)?[bB]?\s*$/.exec(v)!;
    const unit = (m[2] ?? '').toLowerCase();
    const pow = { '': 0, k: 1, m: 2, g: 3, t: 4 }[unit[0] as '' | 'k' | 'm' | 'g' | 't'] ?? 0;
    return Math.round(Number(m[1]) * (unit.endsWith('i') ? 1024 : 1000) ** pow);
  }),
], { error: () => 'use bytes as a number or a size such as "500 MB" or "2 TiB"' });

const scopeSchema = z.strictObject({
  studies: z.array(uidSchema).optional(),
  accessionNumbers: z.array(accessionSchema).optional(),
  studiesFile: z.string().min(1).optional(),
  studyDate: z.strictObject({ from: dateSchema.optional(), until: dateSchema.optional() }).optional(),
  modalities: codeListSchema.optional(),
  bodyParts: codeListSchema.optional(),
  sopClasses: z.array(uidSchema).min(1, 'list at least one SOP Class UID, or leave the key out').optional(),
  validFrom: instantSchema.optional(),
  validUntil: instantSchema.optional(),
});

const clientSchema = z.strictObject({
  id: z.string().regex(/^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$/, 'use 1–64 letters, digits, ".", "_" or "-", starting with a letter or digit'),
  apiKeySha256: z.string().regex(/^[0-9a-fA-F]{64}$/, 'must be the SHA-256 of the token as 64 hex digits (printf %s TOKEN | sha256sum)').optional(),
  certificateSubject: z.string().refine((v) => parseSubject(v) !== undefined, { message: 'use an RFC 4514 subject such as "CN=acme-ai,O=Acme AI" (escape , + = \\ in values with a backslash)' }).optional(),
  policyId: z.string().min(1).max(48).optional(),
  profile: profileSchema.default({ options: [], overrides: {} }),
  scope: scopeSchema.optional(),
  query: z.strictObject({
    allowedKeys: z.array(z.string().trim().min(1)).optional(),
    maxResults: z.number().int().min(1).max(MAX_QUERY_RESULTS, QUERY_RESULTS_CAP).optional(),
  }).optional(),
  pixels: z.strictObject({
    risky: z.enum(['withhold', 'mask', 'detect', 'allow'], { error: () => 'use withhold (default), mask, detect or allow' }).default('withhold'),
    faces: z.enum(['deface', 'withhold', 'allow'], { error: () => 'use deface (default), withhold or allow' }).default('deface'),
    masks: z.array(z.strictObject({
      match: z.strictObject({
        manufacturer: z.string().min(1).optional(),
        model: z.string().min(1).optional(),
        rows: z.number().int().min(1).optional(),
        columns: z.number().int().min(1).optional(),
      }),
      regions: z.array(z.strictObject({
        x: z.number().int().min(0), y: z.number().int().min(0),
        width: z.number().int().min(1), height: z.number().int().min(1),
      })).min(1, 'give at least one region {x, y, width, height}'),
    })).default([]),
  }).optional(),
  limits: z.strictObject({
    requestsPerMinute: z.number().int().min(1).max(1_000_000).optional(),
    concurrentRequests: z.number().int().min(1).max(100_000).optional(),
    bytesPerDay: bytesSchema.optional(),
  }).optional(),
});

export const configSchema = z.strictObject({
  server: z.strictObject({
    host: z.string().min(1).default('127.0.0.1'),
    port: z.number().int().min(0).max(65535, 'must be a TCP port, 0–65535'),
    publicBaseUrl: z.url({ error: 'must be an absolute URL such as https://gateway.example.org' }).optional(),
    maxQueryResults: z.number().int().min(1).max(MAX_QUERY_RESULTS, QUERY_RESULTS_CAP).default(1000),
    maxQueryScan: z.number().int().min(1).max(10_000_000).default(10_000),
    maxConnections: z.number().int().min(1).max(1_000_000).default(1024),
    /** A response whose client reads nothing for this long is closed (a slow reader holds no PACS connection). */
    clientIdleSeconds: z.number().min(1).max(3600).default(30),
    /** Retrieves (and frames, bulk data, rendered images) one client may stream at once; more wait their turn. */
    streamsPerClient: z.number().int().min(1).max(10_000).default(8),
    /**
     * Open connections one client may hold (a connection is its client's from its first
     * authenticated request); a request on one more is 429 CONNECTIONS_LIMITED and that
     * connection is closed. Default: 64, or half of maxConnections when that is less.
     */
    connectionsPerClient: z.number().int().min(1).max(1_000_000).optional(),
    /** SIGTERM: how long in-flight requests may finish before their connections are closed. */
    drainSeconds: z.number().min(0).max(3600, 'must be at most 3600 (an hour); keep it below the orchestrator\'s grace period').default(25),
    tls: z.strictObject({
      certFile: z.string().min(1, 'name the PEM certificate (chain) of this server'),
      keyFile: z.string().min(1, 'name the PEM private key of this server'),
      caFile: z.string().min(1).optional(),
      clientCertificates: z.enum(['none', 'optional', 'require'], { error: () => 'use none (default), optional or require' }).default('none'),
    }).optional(),
  }),
  upstream: z.strictObject({
    url: z.url({ error: 'must be an absolute URL such as http://127.0.0.1:8042/dicom-web' }),
    connectTimeoutMs: z.number().int().min(1).default(5000),
    responseTimeoutMs: z.number().int().min(1).default(60000),
    /** The PACS client: socket (the gateway's own, for http://; the default there), node (node:http; the default for https://), undici or http-proxy. */
    transport: z.enum(['socket', 'node', 'undici', 'http-proxy'], { error: () => 'use socket (default for http://), node (default for https://), undici or http-proxy' }).optional(),
    /** Connections to the PACS (kept alive, shared by every client). */
    connections: z.number().int().min(1).max(10_000).default(32),
  }),
  state: z.strictObject({
    dir: z.string().min(1, 'must name a directory for secrets, pseudonyms and the audit log'),
    store: z.string().regex(/^postgres(ql)?:\/\/\S+$/, 'use a PostgreSQL URL such as postgres://gateway@db.hospital.example/deid (leave out for the embedded SQLite store)').optional(),
    /** A file holding the database password (a mounted secret), so the URL need not carry it; read for every new connection. */
    storePasswordFile: z.string().min(1, 'name the file that holds the database password').optional(),
  }),
  audit: z.strictObject({
    maxFileBytes: bytesSchema.default(64 * 1024 * 1024),
    rotateDaily: z.boolean().default(true),
    syslog: z.strictObject({
      host: z.string().min(1, 'name the audit record repository host'),
      port: z.number().int().min(1).max(65535, 'must be a TCP port, 1–65535'),
      appName: z.string().regex(/^[\x21-\x7e]{1,48}$/, 'use 1–48 printable characters without spaces (RFC 5424 APP-NAME)').default('deid-gateway'),
      tls: z.strictObject({
        caFile: z.string().min(1).optional(),
        certFile: z.string().min(1).optional(),
        keyFile: z.string().min(1).optional(),
        rejectUnauthorized: z.boolean().default(true),
      }).optional(),
    }).optional(),
  }).default({ maxFileBytes: 64 * 1024 * 1024, rotateDaily: true }),
  metrics: z.strictObject({
    host: z.string().min(1).default('127.0.0.1'),
    port: z.number().int().min(0).max(65535, 'must be a TCP port, 0–65535').optional(),
    apiKeySha256: z.string().regex(/^[0-9a-fA-F]{64}$/, 'must be the SHA-256 of the admin token as 64 hex digits').optional(),
  }).optional(),
  engine: z.strictObject({
    maxHeaderBytes: z.number().int().min(65536).max(1024 * 1024 * 1024).default(64 * 1024 * 1024),
    maxRenderBytes: bytesSchema.default(256 * 1024 * 1024),
    /** How long a request waits for a series' face decision before 503 with Retry-After. */
    faceWaitSeconds: z.number().min(1).max(600).default(60),
  }).default({ maxHeaderBytes: 64 * 1024 * 1024, maxRenderBytes: 256 * 1024 * 1024, faceWaitSeconds: 60 }),
  optOut: z.strictObject({
    patients: z.array(optOutEntrySchema).default([]),
    file: z.string().min(1).optional(),
  }).optional(),
  clients: z.array(clientSchema).min(1, 'configure at least one client'),
});

/** A client's scope as configuration gives it: inline rules, the allow-list file, the window. */
export interface ScopeConfig {
  readonly studies?: readonly string[] | undefined;
  readonly accessionNumbers?: readonly string[] | undefined;
  /** Absolute path of the allow-list file (reloaded on change). */
  readonly studiesFile?: string | undefined;
  readonly studyDate?: { readonly from?: string | undefined; readonly until?: string | undefined } | undefined;
  readonly modalities?: readonly string[] | undefined;
  readonly bodyParts?: readonly string[] | undefined;
  readonly sopClasses?: readonly string[] | undefined;
  /** Epoch ms; from inclusive, until exclusive. */
  readonly window: { readonly from?: number | undefined; readonly until?: number | undefined };
}

export type ClientConfig = Omit<z.infer<typeof clientSchema>, 'scope'> & {
  readonly plan: CompiledPlan;
  readonly scope: ScopeConfig;
  /** Allowed match keys as tags, when the client has a list. */
  readonly allowedKeys?: ReadonlySet<number> | undefined;
};
/** The open connections one client may hold: server.connectionsPerClient, or 64 (half of maxConnections when that is less). */
export function connectionsPerClient(server: { readonly maxConnections: number; readonly connectionsPerClient?: number | undefined }): number {
  return server.connectionsPerClient ?? Math.max(1, Math.min(64, Math.floor(server.maxConnections / 2)));
}

export type Config = Omit<z.infer<typeof configSchema>, 'clients' | 'optOut'> & {
  readonly clients: readonly ClientConfig[];
  /** Opt-out patients given inline, and the absolute path of the opt-out file (reloaded on change). */
  readonly optOut: { readonly patients: readonly { readonly id: string; readonly issuer?: string | undefined }[]; readonly file?: string | undefined };
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
  const subjects = new Set<string>();
  const clients: ClientConfig[] = [];
  const base = dirname(resolve(source));
  const abs = (p: string): string => (isAbsolute(p) ? p : resolve(base, p));
  /** Reads and validates a list file once (check-config and start); the gateway reloads it later. */
  const checkFile = (key: string, file: string, parse: (doc: unknown) => unknown): void => {
    const r = readListFile(file, key, parse);
    if ('problem' in r) problems.push(r.problem);
  };
  const optOutFile = cfg.optOut?.file === undefined ? undefined : abs(cfg.optOut.file);
  let serverTls: { certFile: string; keyFile: string; caFile?: string; clientCertificates: 'none' | 'optional' | 'require' } | undefined;
  if (cfg.server.tls) {
    const t = cfg.server.tls;
    serverTls = { certFile: abs(t.certFile), keyFile: abs(t.keyFile), ...(t.caFile ? { caFile: abs(t.caFile) } : {}), clientCertificates: t.clientCertificates };
    for (const [k, f] of Object.entries(serverTls)) {
      if (!k.endsWith('File')) continue;
      try { readFileSync(f as string); } catch (e) { problems.push(`server.tls.${k}: ${f as string} cannot be read (${(e as NodeJS.ErrnoException).code ?? 'error'}); fix the path`); }
    }
    if (t.clientCertificates !== 'none' && !t.caFile) problems.push('server.tls.caFile: client certificates need the CA that issues them; add caFile or set clientCertificates: none');
  }
  if (cfg.server.connectionsPerClient !== undefined && cfg.server.connectionsPerClient > cfg.server.maxConnections) {
    problems.push(`server.connectionsPerClient: ${cfg.server.connectionsPerClient} is more than server.maxConnections (${cfg.server.maxConnections}): one client could hold every connection; lower it or raise maxConnections`);
  }
  if (cfg.metrics && cfg.metrics.port === undefined && cfg.metrics.apiKeySha256 === undefined) problems.push('metrics: give port (a separate listener) and/or apiKeySha256 (/metrics on the main listener behind an admin token)');
  const tls = cfg.audit.syslog?.tls;
  const tlsFiles: Record<string, string> = {};
  for (const k of ['caFile', 'certFile', 'keyFile'] as const) {
    const f = tls?.[k];
    if (f === undefined) continue;
    tlsFiles[k] = abs(f);
    try { readFileSync(tlsFiles[k]); } catch (e) { problems.push(`audit.syslog.tls.${k}: ${tlsFiles[k]} cannot be read (${(e as NodeJS.ErrnoException).code ?? 'error'}); fix the path`); }
  }
  if (tls && (tls.certFile === undefined) !== (tls.keyFile === undefined)) problems.push('audit.syslog.tls: give certFile and keyFile together (client certificate), or neither');
  if (optOutFile) checkFile('optOut.file', optOutFile, parseOptOutList);
  cfg.clients.forEach((c, i) => {
    if (ids.has(c.id)) problems.push(`clients[${i}].id: "${c.id}" is used twice; give every client its own id`);
    ids.add(c.id);
    const k = c.apiKeySha256?.toLowerCase();
    if (k === undefined && c.certificateSubject === undefined) problems.push(`clients[${i}]: give apiKeySha256 (a token) and/or certificateSubject (mutual TLS)`);
    if (k !== undefined && keys.has(k)) problems.push(`clients[${i}].apiKeySha256: the same token hash is used by two clients; give every client its own token`);
    if (k !== undefined) keys.add(k);
    if (c.certificateSubject !== undefined) {
      if (cfg.server.tls === undefined || cfg.server.tls.clientCertificates === 'none' || cfg.server.tls.caFile === undefined) problems.push(`clients[${i}].certificateSubject: needs server.tls with caFile and clientCertificates optional or require`);
      const sub = normalizeSubject(c.certificateSubject);
      if (subjects.has(sub)) problems.push(`clients[${i}].certificateSubject: the same subject names two clients`);
      subjects.add(sub);
    }
    if (c.profile.dateShift && c.profile.dateShift.maxDays < c.profile.dateShift.minDays) {
      problems.push(`clients[${i}].profile.dateShift: maxDays must be ≥ minDays`);
    }
    if (c.pixels?.risky === 'mask' && c.pixels.masks.length === 0) problems.push(`clients[${i}].pixels.masks: risky: mask needs at least one mask rule (match + regions); without one every risky instance is withheld`);
    const sc = c.scope ?? {};
    const studiesFile = sc.studiesFile === undefined ? undefined : abs(sc.studiesFile);
    if (studiesFile) checkFile(`clients[${i}].scope.studiesFile`, studiesFile, parseStudyList);
    if (sc.studyDate?.from && sc.studyDate.until && sc.studyDate.from > sc.studyDate.until) problems.push(`clients[${i}].scope.studyDate: from is after until; swap them`);
    const from = sc.validFrom === undefined ? undefined : Date.parse(/T| /.test(sc.validFrom) ? sc.validFrom : `${sc.validFrom}T00:00:00Z`);
    const until = sc.validUntil === undefined ? undefined : Date.parse(/T| /.test(sc.validUntil) ? sc.validUntil : `${sc.validUntil}T00:00:00Z`);
    if (from !== undefined && until !== undefined && from >= until) problems.push(`clients[${i}].scope: validFrom must be before validUntil`);
    let allowedKeys: Set<number> | undefined;
    if (c.query?.allowedKeys) {
      const keysOut = new Set<number>();
      allowedKeys = keysOut;
      c.query.allowedKeys.forEach((name, j) => {
        const tag = parseTag(name);
        if (tag === undefined || !dictionary().lookup(tag)) problems.push(`clients[${i}].query.allowedKeys[${j}]: "${name.slice(0, 64)}" is not a DICOM keyword or tag; use a keyword such as StudyDate or a tag such as 00080020`);
        else keysOut.add(tag);
      });
    }
    const scope: ScopeConfig = {
      studies: sc.studies, accessionNumbers: sc.accessionNumbers, studiesFile, studyDate: sc.studyDate,
      modalities: sc.modalities, bodyParts: sc.bodyParts, sopClasses: sc.sopClasses, window: { from, until },
    };
    try {
      const plan = compilePlan({
        options: c.profile.options,
        overrides: c.profile.overrides as Record<string, OverrideAction>,
        ...(c.profile.dateShift ? { dateShift: c.profile.dateShift } : {}),
        ...(c.profile.freeText ? { freeText: c.profile.freeText } : {}),
      });
      clients.push({ ...c, apiKeySha256: k, ...(c.certificateSubject ? { certificateSubject: normalizeSubject(c.certificateSubject) } : {}), plan, scope, ...(allowedKeys ? { allowedKeys } : {}) });
    } catch (e) {
      if (!isGatewayError(e)) throw e;
      problems.push(`clients[${i}].profile.${e.message}`);
    }
  });
  if (problems.length) throw new GatewayError('CONFIG_INVALID', `${source}: invalid configuration\n  ${problems.join('\n  ')}`);
  const dir = isAbsolute(cfg.state.dir) ? cfg.state.dir : resolve(dirname(source), cfg.state.dir);
  if (cfg.state.storePasswordFile && !cfg.state.store) problems.push('state.storePasswordFile: only used with state.store (a PostgreSQL URL); remove it or set state.store');
  const storePasswordFile = cfg.state.storePasswordFile ? (isAbsolute(cfg.state.storePasswordFile) ? cfg.state.storePasswordFile : resolve(dirname(source), cfg.state.storePasswordFile)) : undefined;
  if (problems.length) throw new GatewayError('CONFIG_INVALID', `${source}: invalid configuration\n  ${problems.join('\n  ')}`);
  const audit = { ...cfg.audit, ...(cfg.audit.syslog ? { syslog: { ...cfg.audit.syslog, ...(cfg.audit.syslog.tls ? { tls: { ...cfg.audit.syslog.tls, ...tlsFiles } } : {}) } } : {}) };
  return deepFreeze({ ...cfg, server: { ...cfg.server, ...(serverTls ? { tls: serverTls } : {}) }, audit, state: { dir, ...(cfg.state.store ? { store: cfg.state.store } : {}), ...(storePasswordFile ? { storePasswordFile } : {}) }, clients, source, optOut: { patients: cfg.optOut?.patients ?? [], ...(optOutFile ? { file: optOutFile } : {}) } });
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
