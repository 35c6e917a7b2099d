/**
 * `deid-gateway deid`: the gateway's engine and pseudonyms, offline. Previews exactly what
 * a client would receive, or exports a batch. Outputs are written to a temporary file and
 * renamed only when complete, so a refused input leaves nothing behind.
 *
 * Each input is admitted as the gateway admits an instance for that client: outside its scope
 * (allow-list, filters, the opt-out list) or withheld by its pixel policy, it is refused with
 * the reason; masked under a region rule, it is written masked.
 */
import { randomBytes } from 'node:crypto';
import { closeSync, openSync, readSync, createReadStream, createWriteStream, mkdirSync, readFileSync, readdirSync, renameSync, statSync, unlinkSync } from 'node:fs';
import { join, relative } from 'node:path';
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
import { notVisible, recordDenial, type OptOutEntry } from '../policy/scope.js';
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
  const admit = (attr: (tag: number) => string | undefined): ReturnType<typeof admitPixels> => {
    if (!scope.unrestricted()) { const d = recordDenial(scope.rules(), scope.optOut(), attr); if (d) throw notVisible(d); }
    const r = admitPixels(attr, pixels); // PIXELS_WITHHELD when the policy withholds it
    pixelNote = r?.mask ? ' (pixels masked)' : r?.risk ? ' (risky pixels allowed by policy)' : '';
    return r;
  };
  mkdirSync(args.out, { recursive: true });
  let done = 0;
  let refused = 0;
  let skipped = 0;
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
        const reason = outOfScope !== undefined ? `outside client ${client.id}'s scope (${outOfScope})`
          : isGatewayError(e) ? `${e.code}: ${e.message}` : `unexpected error (${(e as Error).name})`;
        process.stderr.write(`refused: ${file}: ${reason}\n`);
      }
    }
  }
  process.stderr.write(`${done} de-identified, ${refused} refused, ${skipped} skipped (client ${client.id}, plan sha256:${ctx.plan.hash.slice(0, 16)})\n`);
  return refused > 0 ? 1 : 0;
}
