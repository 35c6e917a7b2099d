/**
 * The corpus runner: real files through the offline `deid`, for one or more clients, checked
 * by other toolkits (issue 16).
 *
 *   npm run corpus -- [--clients basic,options] [--dciodvfy N] [--keep DIR] [--json FILE] [--show-values] [--config FILE --client ID ...] DIR...
 *
 * A leak is shown by the start of its value unless --show-values (which prints it whole: only
 * for corpora of test data).
 *
 * For each client it runs `deid-gateway deid` over the folders (as a user would), then:
 *  - counts files in, written, skipped (not DICOM) and refused, by code;
 *  - reads every output with DCMTK's `dcmdump` (file format only): outputs it cannot read;
 *  - runs `dciodvfy` (dicom3tools) on N sampled input/output pairs: errors in the output that
 *    its input does not have (new errors, values left out of the comparison; inputs of no known
 *    IOD, where dciodvfy stops early, are not compared);
 *  - scans every output for the input's values that the client's profile does not keep
 *    (names, identifiers, UIDs, dates, private text: every element whose action is not keep or
 *    clean, 6 characters or more, and not also a kept value of the same file): leaks;
 *  - MB/s of the de-identification (input bytes over the command's wall time).
 * Prints a table per folder and client and writes bench/out/corpus.json. Exits 1 when an output
 * is unreadable, an error is new or a value leaks.
 *
 * The clients, unless --config names a configuration: `basic` (the Basic Profile, no options)
 * and `options` (Retain Longitudinal Modified Dates, Retain Patient Characteristics, Clean
 * Descriptors, Clean Structured Content), both with the default pixel policy.
 */
import { spawn, spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { randomBytes } from 'node:crypto';
import { tmpdir } from 'node:os';
import { basename, dirname, join, resolve } from 'node:path';
import { createEngineContext } from '../src/deid/index.js';
import { dciodvfyErrors, dcmdumpFailures, leaksOf } from './corpus-scan.js';
import { gatewayCommand, projectRoot } from './common.js';

interface Args { dirs: string[]; clients: string[]; config?: string; dciodvfy: number; keep?: string; showValues: boolean; json?: string }

const OPTION_CLIENT = ['retainLongitudinalModifiedDates', 'retainPatientCharacteristics', 'cleanDescriptors', 'cleanStructuredContent'];

function parseArgs(argv: string[]): Args {
  const a: Args = { dirs: [], clients: [], dciodvfy: 100, showValues: false };
  for (let i = 0; i < argv.length; i++) {
    const v = argv[i]!;
    const next = (): string => { const x = argv[++i]; if (x === undefined) throw new Error(`${v} needs a value`); return x; };
    if (v === '--clients') a.clients.push(...next().split(',').filter(Boolean));
    else if (v === '--client') a.clients.push(next());
    else if (v === '--config') a.config = resolve(next());
    else if (v === '--dciodvfy') { a.dciodvfy = Number(next()); if (!Number.isInteger(a.dciodvfy) || a.dciodvfy < 0) throw new Error('--dciodvfy takes a count'); }
    else if (v === '--keep') a.keep = resolve(next());
    else if (v === '--show-values') a.showValues = true;
    else if (v === '--json') a.json = resolve(next());
    else if (v === '--help' || v === '-h') { process.stdout.write(`${readFileSync(new URL(import.meta.url)).toString().split('\n').slice(0, 25).join('\n')}\n`); process.exit(0); }
    else if (v.startsWith('--')) throw new Error(`unknown option ${v}`);
    else a.dirs.push(resolve(v));
  }
  if (!a.dirs.length) throw new Error('name one or more folders of DICOM files (npm run corpus -- DIR...)');
  for (const d of a.dirs) if (!existsSync(d) || !statSync(d).isDirectory()) throw new Error(`${d} is not a folder`);
  if (!a.clients.length) a.clients = a.config ? [] : ['basic', 'options'];
  if (a.config && !a.clients.length) throw new Error('with --config, name the clients (--client ID)');
  return a;
}

/** The leak scan needs only the plan (which values change): any secret will do. */
const MASTER = randomBytes(32);

function writeConfig(dir: string): string {
  const client = (id: string, options: string[]): string => `  - id: ${id}\n    apiKeySha256: "${randomBytes(32).toString('hex')}"\n    profile: {options: [${options.join(', ')}]}\n`;
  const p = join(dir, 'corpus.yaml');
  writeFileSync(p, `server: {host: 127.0.0.1, port: 8080}\nupstream: {url: "http://127.0.0.1:8042/dicom-web"}\nstate: {dir: ${JSON.stringify(join(dir, 'state'))}}\nclients:\n${client('basic', [])}${client('options', OPTION_CLIENT)}`);
  return p;
}

interface Run {
  client: string; dir: string; seconds: number; inputBytes: number; filesIn: number; written: number; skipped: number;
  refused: Record<string, number>; pairs: [string, string][]; refusedFiles: [string, string][];
}

/** Runs the offline command over one folder for one client; its lines say what became of each file. */
async function runDeid(root: string, config: string, client: string, dir: string, out: string): Promise<Run> {
  const t0 = performance.now();
  // The command as built (npm run corpus), or from the sources when the runner runs from them (tests).
  const entry = gatewayCommand(import.meta.url);
  const child = spawn(process.execPath, [...entry, 'deid', '--config', config, '--client', client, dir, '--out', out], { cwd: root, stdio: ['ignore', 'pipe', 'pipe'] });
  let stdout = '';
  let stderr = '';
  child.stdout.setEncoding('utf8').on('data', (c: string) => { stdout += c; });
  child.stderr.setEncoding('utf8').on('data', (c: string) => { stderr += c; });
  const code = await new Promise<number>((r) => child.on('close', (c) => r(c ?? -1)));
  const seconds = (performance.now() - t0) / 1000;
  const pairs: [string, string][] = [];
  for (const line of stdout.split('\n')) {
    const at = line.indexOf(' -> ');
    if (at < 0 || line.startsWith(' ')) continue;
    const m = /^(.*?\.dcm)/.exec(line.slice(at + 4));
    if (m) pairs.push([line.slice(0, at), resolve(root, m[1]!)]);
  }
  const refused: Record<string, number> = {};
  const refusedFiles: [string, string][] = [];
  let skipped = 0;
  for (const line of stderr.split('\n')) {
    if (line.startsWith('skipped: ')) { skipped++; continue; }
    if (!line.startsWith('refused: ')) continue;
    const m = /^refused: (.*?): ([A-Z][A-Z0-9_]+): /.exec(line) ?? /^refused: (.*?): (outside client|unexpected error|cannot be read)/.exec(line);
    const codeOf = !m ? 'UNPARSED' : m[2] === 'outside client' ? 'OUT_OF_SCOPE' : m[2] === 'unexpected error' ? 'INTERNAL' : m[2] === 'cannot be read' ? 'UNREADABLE' : m[2]!;
    refused[codeOf] = (refused[codeOf] ?? 0) + 1;
    refusedFiles.push([m?.[1] ?? line, codeOf]);
  }
  if (code !== 0 && code !== 1) throw new Error(`deid for ${client} exited ${code}: ${stderr.split('\n').slice(-5).join(' | ')}`);
  let inputBytes = 0;
  for (const [f] of [...pairs, ...refusedFiles]) { try { inputBytes += statSync(f).size; } catch { /* a folder named on the line */ } }
  return { client, dir, seconds, inputBytes, filesIn: pairs.length + refusedFiles.length + skipped, written: pairs.length, skipped, refused, pairs, refusedFiles };
}

function sample<T>(xs: readonly T[], n: number): T[] {
  if (xs.length <= n) return [...xs];
  const step = xs.length / n;
  return Array.from({ length: n }, (_, i) => xs[Math.floor(i * step)]!);
}

const profiles: Record<string, string[]> = { basic: [], options: OPTION_CLIENT };

async function main(): Promise<number> {
  const args = parseArgs(process.argv.slice(2));
  const root = projectRoot(import.meta.url);
  const work = args.keep ?? mkdtempSync(join(tmpdir(), 'deid-corpus-'));
  mkdirSync(work, { recursive: true });
  const config = args.config ?? writeConfig(work);
  const tools = { dcmdump: spawnSync('dcmdump', ['--version']).status === 0, dciodvfy: spawnSync('which', ['dciodvfy']).status === 0 };
  const rows: Record<string, unknown>[] = [];
  let failed = false;
  try {
    for (const dir of args.dirs) {
      for (const client of args.clients) {
        const out = join(work, 'out', `${basename(dir)}-${client}`);
        rmSync(out, { recursive: true, force: true });
        mkdirSync(out, { recursive: true });
        const run = await runDeid(root, config, client, dir, out);
        const outputs = run.pairs.map(([, o]) => o);
        const unreadable = tools.dcmdump ? dcmdumpFailures(outputs) : [];
        let newErrors = 0;
        const newKinds = new Map<string, { n: number; input: string }>();
        const checked = tools.dciodvfy ? sample(run.pairs, args.dciodvfy) : [];
        let incomparable = 0;
        for (const [input, output] of checked) {
          const before = dciodvfyErrors(input);
          // An input of no known IOD stops dciodvfy early: its output's errors cannot be compared.
          if ([...before].some((e) => /Information Object Not found/i.test(e))) { incomparable++; continue; }
          for (const e of dciodvfyErrors(output)) if (!before.has(e)) { newErrors++; const k = newKinds.get(e); if (k) k.n++; else newKinds.set(e, { n: 1, input }); }
        }
        // Leak scan: the client's own plan (the generated configuration's profiles).
        const options = profiles[client];
        const leak = options ? leaksOf(run.pairs, createEngineContext({ clientId: client, profile: { options: options as never }, masterSecret: MASTER }), args.showValues) : undefined;
        const row = {
          folder: basename(dir), client, filesIn: run.filesIn, written: run.written, skipped: run.skipped,
          refused: Object.values(run.refused).reduce((a, b) => a + b, 0), refusedByCode: run.refused,
          unreadable: tools.dcmdump ? unreadable.length : null, dciodvfyChecked: checked.length - incomparable, dciodvfyIncomparable: incomparable, newDciodvfyErrors: tools.dciodvfy ? newErrors : null,
          newErrorKinds: [...newKinds].sort((a, b) => b[1].n - a[1].n).slice(0, 10).map(([e, k]) => `${k.n}x ${e} (e.g. ${k.input})`),
          needles: leak?.needles ?? null, leaks: leak?.leaks.length ?? null, leakExamples: leak?.leaks.slice(0, 5) ?? [],
          mb: Math.round(run.inputBytes / 1e4) / 100, seconds: Math.round(run.seconds * 100) / 100, mbPerSecond: Math.round((run.inputBytes / 1e6 / run.seconds) * 100) / 100,
        };
        rows.push(row);
        if (unreadable.length || newErrors || leak?.leaks.length) failed = true;
        const codes = Object.entries(run.refused).sort((a, b) => b[1] - a[1]).map(([c, n]) => `${c} ${n}`).join(', ');
        process.stdout.write(`${row.folder} / ${client}: ${row.filesIn} in, ${row.written} written, ${row.refused} refused${codes ? ` (${codes})` : ''}, ${row.skipped} skipped; dcmdump unreadable ${row.unreadable ?? 'n/a'}; dciodvfy new errors ${row.newDciodvfyErrors ?? 'n/a'} in ${row.dciodvfyChecked} pairs${incomparable ? ` (${incomparable} more of no known IOD)` : ''}; leaks ${row.leaks ?? 'n/a'} of ${row.needles ?? 'n/a'} values; ${row.mb} MB in ${row.seconds} s (${row.mbPerSecond} MB/s)\n`);
        for (const k of row.newErrorKinds) process.stdout.write(`    new: ${k}\n`);
        for (const l of row.leakExamples) process.stdout.write(`    leak: ${l.input}: ${l.value}\n`);
      }
    }
  } finally {
    if (!args.keep) rmSync(work, { recursive: true, force: true });
  }
  const head = '| folder | client | files in | written | refused (by code) | skipped | dcmdump unreadable | new dciodvfy errors (pairs) | leaks / values | MB/s |';
  const lines = [head, '|:--|:--|--:|--:|:--|--:|--:|--:|--:|--:|', ...rows.map((r) => {
    const codes = Object.entries(r.refusedByCode as Record<string, number>).sort((a, b) => b[1] - a[1]).map(([c, n]) => `${c} ${n}`).join(', ');
    return `| ${String(r.folder)} | ${String(r.client)} | ${String(r.filesIn)} | ${String(r.written)} | ${String(r.refused)}${codes ? ` (${codes})` : ''} | ${String(r.skipped)} | ${String(r.unreadable ?? 'n/a')} | ${String(r.newDciodvfyErrors ?? 'n/a')} (${String(r.dciodvfyChecked)}) | ${String(r.leaks ?? 'n/a')} / ${String(r.needles ?? 'n/a')} | ${String(r.mbPerSecond)} |`;
  })];
  process.stdout.write(`\n${lines.join('\n')}\n`);
  if (!tools.dcmdump || !tools.dciodvfy) process.stdout.write(`\n(${!tools.dcmdump ? 'dcmdump (dcmtk) ' : ''}${!tools.dciodvfy ? 'dciodvfy (dicom3tools) ' : ''}not installed: those checks were not run)\n`);
  const json = args.json ?? join(root, 'bench', 'out', 'corpus.json');
  mkdirSync(dirname(json), { recursive: true });
  writeFileSync(json, `${JSON.stringify({ when: new Date().toISOString(), rows }, null, 2)}\n`);
  process.stdout.write(`wrote ${json}${args.keep ? `; outputs kept in ${args.keep}` : ''}\n`);
  return failed ? 1 : 0;
}

main().then((code) => process.exit(code), (e: unknown) => { process.stderr.write(`corpus: ${(e as Error).message}\n`); process.exit(2); });
