/**
 * `deid-gateway deid`: the gateway's engine and pseudonyms, offline. Previews exactly what
 * a client would receive, or exports a batch. Outputs are written to a temporary file and
 * renamed only when complete, so a refused input leaves nothing behind.
 *
 * Each input is admitted as the gateway admits an instance for that client: outside its scope
 * (allow-list, filters, the opt-out list) or withheld by its pixel policy, it is refused with
 * the reason; masked under a region rule, it is written masked. Outside the client's access
 * window nothing is written.
 *
 * An export is data leaving for that client, so it is audited like a request: one `request`
 * record (route `cli-deid`, the operator's user name as the remote) and one `study` record per
 * study written, in a hash-chained trail of its own, `state.dir/exports/` (the gateway is the
 * one writer of the main trail). `audit verify|query|report` read it with the main trail.
 */
import { randomBytes } from 'node:crypto';
import { closeSync, openSync, readSync, createReadStream, createWriteStream, mkdirSync, readFileSync, readdirSync, renameSync, statSync, unlinkSync } from 'node:fs';
import { join, relative } from 'node:path';
import { userInfo } from 'node:os';
import { randomUUID } from 'node:crypto';
import { pipeline } from 'node:stream/promises';
import { inflateRawSync } from 'node:zlib';
import { isGatewayError } from '../core/errors.js';
import type { Config } from '../config/schema.js';
import { readHeaderSync } from '../dicom/part10.js';
import { diffHeaders, formatDiff } from '../deid/diff.js';
import { createEngineContext, deidentifyPart10, type InstanceInfo } from '../deid/index.js';
import { loadOrCreateMasterSecret } from '../pseudonym/secret.js';
import { parseOptOutList, parseStudyList } from '../config/lists.js';
import { ClientScope, OptOutSource, type StudyListSource } from '../policy/client-scope.js';
import { admitPixels, DEFAULT_PIXEL_POLICY } from '../policy/pixels.js';
import { checkWindow, notVisible, recordDenial, type OptOutEntry } from '../policy/scope.js';
import { createAuditSink, type StudyRelease } from '../audit/sink.js';
import { AuditTrail, auditKey } from '../audit/trail.js';
import { writeFileSync } from 'node:fs';
import { WatchedFile } from '../policy/watched-file.js';

/** True when a file found in a folder looks like DICOM (DICM prefix, or a .dcm name). */
function looksLikeDicom(path: string): boolean {
  if (/\.dcm$/i.test(path)) return true;
  let fd: number | undefined;
  try {
    fd = openSync(path, 'r');
    const b = Buffer.alloc(4);
    return readSync(fd, b, 0, 4, 128) === 4 && b.toString('latin1') === 'DICM';
  } catch {
    return false;
  } finally {
    if (fd !== undefined) closeSync(fd);
  }
}

/**
 * Files named on the command line are always processed (and refused if not DICOM);
 * files found in folders are processed when they look like DICOM, else reported as skipped.
 */
function* walk(path: string, named: boolean): Generator<{ file: string; skip: boolean }> {
  const st = statSync(path);
  if (st.isDirectory()) {
    for (const name of readdirSync(path).sort()) yield* walk(join(path, name), false);
  } else if (st.isFile()) {
    yield { file: path, skip: !named && !looksLikeDicom(path) };
  }
}

function safeName(uid: string): string {
  return /^[0-9.]+$/.test(uid) ? uid : 'unknown';
}

export async function runDeid(cfg: Config, args: { clientId: string; inputs: string[]; out: string; diff: boolean }): Promise<number> {
  const index = cfg.clients.findIndex((c) => c.id === args.clientId);
  const client = cfg.clients[index];
  if (!client) {
    process.stderr.write(`deid-gateway: --client "${args.clientId}" is not configured; configured: ${cfg.clients.map((c) => c.id).join(', ')}\n`);
    return 2;
  }
  const ctx = createEngineContext({
    clientId: client.id, policyId: client.policyId ?? client.id, masterSecret: loadOrCreateMasterSecret(cfg.state.dir),
    profile: { options: client.plan.options, overrides: client.profile.overrides, ...(client.profile.dateShift ? { dateShift: client.profile.dateShift } : {}) },
  });
  // The client's scope and pixel policy, built as the gateway builds them (src/main.ts).
  const optOut = new OptOutSource(cfg.optOut.patients, cfg.optOut.file === undefined ? undefined
    : new WatchedFile<readonly OptOutEntry[]>(cfg.optOut.file, 'optOut.file', parseOptOutList));
  const scopeKey = `clients[${index}].scope.studiesFile`;
  const scope = new ClientScope(client.scope, optOut, client.scope.studiesFile === undefined ? undefined
    : new WatchedFile<StudyListSource>(client.scope.studiesFile, scopeKey, parseStudyList));
  const pixels = client.pixels ?? DEFAULT_PIXEL_POLICY;
  let pixelNote = '';
  let patientOf: string | undefined;
  const admit = (attr: (tag: number) => string | undefined): ReturnType<typeof admitPixels> => {
    patientOf = attr(0x00100020);
    if (!scope.unrestricted()) { const d = recordDenial(scope.rules(), scope.optOut(), attr); if (d) throw notVisible(d); }
    const r = admitPixels(attr, pixels); // PIXELS_WITHHELD when the policy withholds it
    pixelNote = r?.mask ? ' (pixels masked)' : r?.risk ? ' (risky pixels allowed by policy)' : '';
    return r;
  };
  const started = performance.now();
  const exports = openExportTrail(cfg);
  const studies = new Map<string, StudyRelease & { instances: number }>();
  let bytes = 0;
  const outcomes = { withheld: 0, outOfScope: 0 };
  const withheldBy: Record<string, number> = Object.create(null) as Record<string, number>;
  const record = (o: { status: number; outcome: 'ok' | 'denied' | 'failed'; code?: string; reason?: string; instances: number }): void => {
    exports.audit.record({
      time: new Date().toISOString(), requestId: randomUUID(), client: client.id, method: 'CLI', route: 'cli-deid', status: o.status, outcome: o.outcome,
      code: o.code, reason: o.reason, bytes, durationMs: Math.round(performance.now() - started), instances: o.instances,
      withheld: outcomes.withheld, ...(outcomes.withheld ? { withheldBy: { ...withheldBy } } : {}), outOfScope: outcomes.outOfScope, results: 0,
      studies: [...studies.values()], policyHash: ctx.plan.hash, remote: `cli:${safeUser()}`,
    });
  };
  try {
    checkWindow(client.scope.window);
  } catch (e) {
    const reason = isGatewayError(e) ? e.auditReason : undefined;
    process.stderr.write(`refused: every input: ${isGatewayError(e) ? `${e.code}: ${e.message}` : 'outside the access window'}\n`);
    record({ status: 403, outcome: 'denied', code: 'ACCESS_WINDOW_CLOSED', ...(reason ? { reason } : {}), instances: 0 });
    exports.close();
    return 1;
  }
  mkdirSync(args.out, { recursive: true });
  let done = 0;
  let refused = 0;
  let skipped = 0;
  try {
  for (const input of args.inputs) {
    let files: { file: string; skip: boolean }[];
    try {
      files = [...walk(input, true)];
    } catch {
      process.stderr.write(`refused: ${input}: cannot be read\n`);
      refused++;
      continue;
    }
    for (const { file, skip } of files) {
      if (skip) {
        skipped++;
        process.stderr.write(`skipped: ${file}: not DICOM Part 10 (no DICM prefix)\n`);
        continue;
      }
      const tmp = join(args.out, `.deid-${randomBytes(6).toString('hex')}.part`);
      pixelNote = '';
      patientOf = undefined;
      let info: InstanceInfo | undefined;
      try {
        await pipeline(
          createReadStream(file),
          (source: AsyncIterable<Buffer>) => deidentifyPart10(source, ctx, { maxHeaderBytes: cfg.engine.maxHeaderBytes, admit, onInstance: (i) => { info = i; } }),
          createWriteStream(tmp, { mode: 0o640 }),
        );
        const p = info!.pseudonymous;
        const dir = join(args.out, safeName(p.study), safeName(p.series));
        mkdirSync(dir, { recursive: true });
        const dest = join(dir, `${safeName(p.sop)}.dcm`);
        renameSync(tmp, dest);
        done++;
        bytes += statSync(dest).size;
        const o = info!.original;
        const st = studies.get(o.study) ?? { study: o.study, pseudonymous: p.study, patientId: patientOf, instances: 0 };
        st.instances++;
        studies.set(o.study, st);
        process.stdout.write(`${file} -> ${relative(process.cwd(), dest) || dest}${pixelNote}\n`);
        if (args.diff) {
          const inflate = (b: Buffer): Buffer => inflateRawSync(b);
          const before = readHeaderSync(readFileSync(file), inflate);
          const after = readHeaderSync(readFileSync(dest), inflate);
          process.stdout.write(`${formatDiff(diffHeaders(before.elements, after.elements, ctx.plan))}\n`);
        }
      } catch (e) {
        try { unlinkSync(tmp); } catch { /* not created */ }
        refused++;
        const outOfScope = isGatewayError(e) && e.auditReason?.startsWith('out-of-scope:') ? e.auditReason.slice('out-of-scope:'.length) : undefined;
        if (outOfScope !== undefined) outcomes.outOfScope++;
        if (isGatewayError(e) && e.code === 'PIXELS_WITHHELD') {
          outcomes.withheld++;
          const k = e.auditReason ?? 'pixels-withheld:unknown';
          withheldBy[k] = (withheldBy[k] ?? 0) + 1;
        }
        const reason = outOfScope !== undefined ? `outside client ${client.id}'s scope (${outOfScope})`
          : isGatewayError(e) ? `${e.code}: ${e.message}` : `unexpected error (${(e as Error).name})`;
        process.stderr.write(`refused: ${file}: ${reason}\n`);
      }
    }
  }
  } finally {
    // What was written is recorded, even when the run stops half-way.
    const n = [...studies.values()].reduce((a, x) => a + x.instances, 0);
    record(refused === 0 ? { status: 200, outcome: 'ok', instances: n } : { status: n > 0 ? 200 : 422, outcome: n > 0 ? 'ok' : 'denied', code: n > 0 ? undefined : 'REFUSED', reason: n > 0 ? undefined : 'cli-deid:all-inputs-refused', instances: n });
    exports.close();
  }
  process.stderr.write(`${done} de-identified, ${refused} refused, ${skipped} skipped (client ${client.id}, plan sha256:${ctx.plan.hash.slice(0, 16)}; recorded in ${join(cfg.state.dir, EXPORT_TRAIL)})\n`);
  return refused > 0 ? 1 : 0;
}

/** The export trail's directory below state.dir. */
export const EXPORT_TRAIL = 'exports';

const safeUser = (): string => { try { return userInfo().username.replace(/[^A-Za-z0-9._-]/g, '_').slice(0, 64) || 'unknown'; } catch { return 'unknown'; } };

/**
 * Opens state.dir/exports/ for one export run: a lock file (one writer per hash chain; a lock
 * left by a process that is gone is taken over), the trail, and a sink over it.
 */
function openExportTrail(cfg: Config): { audit: ReturnType<typeof createAuditSink>; close(): void } {
  const dir = join(cfg.state.dir, EXPORT_TRAIL);
  mkdirSync(dir, { recursive: true, mode: 0o700 });
  const lock = join(dir, '.lock');
  for (let attempt = 0; ; attempt++) {
    try {
      writeFileSync(lock, String(process.pid), { flag: 'wx', mode: 0o600 });
      break;
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== 'EEXIST' || attempt > 0) throw new Error(`another deid export is writing ${dir} (its lock file ${lock}); wait for it to finish`);
      const pid = Number(readFileSync(lock, 'utf8'));
      let alive = false;
      try { alive = Number.isInteger(pid) && pid > 0 && process.kill(pid, 0); } catch { alive = false; }
      if (alive) throw new Error(`another deid export (pid ${pid}) is writing ${dir}; wait for it to finish`);
      unlinkSync(lock); // left by an export that is gone
    }
  }
  const master = loadOrCreateMasterSecret(cfg.state.dir);
  const trail = new AuditTrail({ dir, master, maxBytes: cfg.audit.maxFileBytes, rotateDaily: cfg.audit.rotateDaily });
  return {
    audit: createAuditSink(trail, auditKey(master)),
    close: () => { trail.close(); try { unlinkSync(lock); } catch { /* gone */ } },
  };
}
