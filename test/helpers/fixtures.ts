/**
 * Test helpers: the generated fixture set (once per test process), engine contexts with a
 * fixed master secret, a canary scanner and an independent Part 10 → JSON reader (dcmjs).
 */
import { mkdtempSync, readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { inflateRawSync } from 'node:zlib';
import dcmjs from 'dcmjs';
import { readHeaderSync } from '../../src/dicom/part10.js';
import { toJsonModel } from '../../src/dicom/to-json.js';
import { createEngineContext, type EngineContext } from '../../src/deid/index.js';
import type { OverrideAction } from '../../src/deid/plan.js';
import type { OptionName } from '../../src/deid/table.js';
import { generateFixtures, type Manifest, type ManifestFile } from '../fixtures/generate.js';

export interface FixtureSet {
  readonly dir: string;
  readonly manifest: Manifest;
  readonly files: readonly { readonly path: string; readonly meta: ManifestFile; readonly bytes: Buffer }[];
}

let cached: Promise<FixtureSet> | undefined;

/** Generates the fixture set into a fresh temp directory (once per process). */
export function fixtures(): Promise<FixtureSet> {
  cached ??= (async () => {
    const dir = mkdtempSync(join(tmpdir(), 'deid-fixtures-'));
    const manifest = await generateFixtures(dir, { seed: 20261125 });
    const files = manifest.files.map((meta) => {
      const path = join(dir, meta.file);
      return { path, meta, bytes: readFileSync(path) };
    });
    return { dir, manifest, files };
  })();
  return cached;
}

export const TEST_MASTER = Buffer.alloc(32, 0x5a);

export function engine(options: readonly OptionName[] = [], clientId = 'test-client', overrides?: Record<string, OverrideAction>): EngineContext {
  return createEngineContext({ clientId, profile: { options, ...(overrides ? { overrides } : {}) }, masterSecret: TEST_MASTER });
}

/** Text views of bytes a client could decode: Latin-1, UTF-8, and base64 InlineBinary payloads. */
export function decodableText(bytes: Buffer): string {
  let text = `${bytes.toString('latin1')}\n${bytes.toString('utf8')}`;
  for (const m of text.matchAll(/"InlineBinary"\s*:\s*"([A-Za-z0-9+/=]+)"/g)) text += `\n${Buffer.from(m[1]!, 'base64').toString('latin1')}`;
  return text.toUpperCase();
}

/**
 * The bytes a client could read: a Deflated Explicit VR data set (PS3.5 A.5) is inflated,
 * so scans see inside it (a scan of the raw bytes would pass vacuously).
 */
export function plainBytes(bytes: Buffer): Buffer {
  if (bytes.length < 144 || bytes.toString('latin1', 128, 132) !== 'DICM') return bytes;
  const metaEnd = 144 + bytes.readUInt32LE(140);
  if (!bytes.subarray(132, metaEnd).toString('latin1').includes('1.2.840.10008.1.2.1.99')) return bytes;
  return Buffer.concat([bytes.subarray(0, metaEnd), inflateRawSync(bytes.subarray(metaEnd))]);
}

/** Canary values (strings, dates, UIDs) found in `bytes`, with where they were planted. */
export function findCanaries(bytes: Buffer, manifest: Manifest, kinds: ('strings' | 'dates' | 'uids')[] = ['strings', 'dates', 'uids'], except: ReadonlySet<string> = new Set()): string[] {
  const text = decodableText(plainBytes(bytes));
  const leaks: string[] = [];
  for (const kind of kinds) {
    for (const [value, where] of Object.entries(manifest.canaries[kind])) {
      if (!except.has(value) && text.includes(value.toUpperCase())) leaks.push(`${kind} ${value} (${where})`);
    }
  }
  return leaks;
}

type Json = Record<string, { vr: string; Value?: unknown[]; InlineBinary?: string; BulkDataURI?: string }>;

function normalizeValue(v: unknown): unknown {
  if (v instanceof ArrayBuffer) return Buffer.from(v).toString('base64');
  if (ArrayBuffer.isView(v)) return Buffer.from(v.buffer, v.byteOffset, v.byteLength).toString('base64');
  return v;
}

/** The DICOM JSON model in one canonical form, so two producers can be compared. */
export function normalizeJson(ds: Json): Json {
  const out: Json = {};
  for (const key of Object.keys(ds).sort()) {
    const a = ds[key]!;
    const n: { vr: string; Value?: unknown[]; InlineBinary?: string } = { vr: a.vr };
    if (a.vr === 'SQ') {
      const items = (a.Value ?? []) as Json[];
      if (items.length) n.Value = items.map(normalizeJson);
    } else if (a.InlineBinary !== undefined) {
      n.InlineBinary = a.InlineBinary;
    } else if (a.Value && a.Value.length) {
      const vals = a.Value.map(normalizeValue);
      if (vals.length === 1 && typeof vals[0] === 'string' && ['OB', 'OW', 'OF', 'OD', 'OL', 'OV', 'UN'].includes(a.vr)) {
        if ((vals[0] as string).length) n.InlineBinary = vals[0] as string;
      } else if (!vals.every((v) => v === '' || v === null)) {
        n.Value = vals.map((v) => (typeof v === 'string' ? v.replace(/[\0 ]+$/, '') : v));
      }
    }
    out[key.toUpperCase()] = n;
  }
  return out;
}

/**
 * Reads Part 10 with dcmjs (independent of the product's parser). dcmjs 0.49 cannot read
 * multi-valued (ISO 2022) character sets; for those the product's own reader and JSON
 * converter stand in, which still checks that both engine adapters agree.
 */
export function dcmjsRead(bytes: Buffer): { meta: Json; dict: Json; reader: 'dcmjs' | 'product' } {
  const ab = bytes.buffer.slice(bytes.byteOffset, bytes.byteOffset + bytes.byteLength);
  try {
    const r = dcmjs.data.DicomMessage.readFile(ab as ArrayBuffer, { ignoreErrors: false });
    return { meta: r.meta as Json, dict: r.dict as Json, reader: 'dcmjs' };
  } catch (e) {
    if (!/multiple character sets/.test(String((e as Error).message))) throw e;
    const h = readHeaderSync(bytes, inflateRawSync);
    return { meta: toJsonModel(h.meta) as Json, dict: toJsonModel(h.elements) as Json, reader: 'product' };
  }
}
