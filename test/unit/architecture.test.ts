/**
 * The layering of docs/architecture.md: no source file takes part in an import cycle (type
 * imports included), and every folder of src/ has its row in the layering table. Which folder
 * may import which is enforced by ESLint (eslint.config.js, MAY_IMPORT).
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readdirSync, readFileSync, statSync } from 'node:fs';
import { dirname, join, normalize, relative } from 'node:path';

const SRC = new URL('../../src/', import.meta.url).pathname;

function sources(dir: string): string[] {
  return readdirSync(dir).flatMap((n) => {
    const p = join(dir, n);
    return statSync(p).isDirectory() ? sources(p) : p.endsWith('.ts') ? [p] : [];
  });
}

function importsOf(file: string): string[] {
  const text = readFileSync(file, 'utf8');
  const out: string[] = [];
  for (const m of text.matchAll(/^(?:import|export)\s[^'\n;]*?from\s+'(\.[^']+)'/gm)) out.push(normalize(join(dirname(file), m[1]!.replace(/\.js$/, '.ts'))));
  return out;
}

/** Every cycle reachable in a graph of files (each once, as the path that closes it). */
function findCycles(graph: ReadonlyMap<string, readonly string[]>): string[][] {
  const cycles: string[][] = [];
  const state = new Map<string, 1 | 2>();
  const stack: string[] = [];
  const visit = (f: string): void => {
    state.set(f, 1);
    stack.push(f);
    for (const d of graph.get(f) ?? []) {
      if (state.get(d) === 1) cycles.push([...stack.slice(stack.indexOf(d)), d]);
      else if (!state.has(d)) visit(d);
    }
    stack.pop();
    state.set(f, 2);
  };
  for (const f of graph.keys()) if (!state.has(f)) visit(f);
  return cycles;
}

test('no import cycles in src/ (type imports included)', () => {
  const graph = new Map(sources(SRC).map((f) => [f, importsOf(f)]));
  assert.ok(graph.size > 50, `${graph.size} source files read`);
  assert.deepEqual(findCycles(graph).map((c) => c.map((x) => relative(SRC, x)).join(' → ')), []);
});

test('the cycle finder finds cycles, direct and through other files, and nothing in a tree', () => {
  assert.deepEqual(findCycles(new Map([['a', ['b']], ['b', ['a']]])), [['a', 'b', 'a']]);
  assert.deepEqual(findCycles(new Map([['a', ['b', 'c']], ['b', ['c']], ['c', ['d']], ['d', ['b']]])), [['b', 'c', 'd', 'b']]);
  assert.deepEqual(findCycles(new Map([['a', ['b', 'c']], ['b', ['c']], ['c', []]])), []);
});

test('every folder of src/ has its row in the layering table of docs/architecture.md, and in the lint table', () => {
  const doc = readFileSync(new URL('../../docs/architecture.md', import.meta.url), 'utf8');
  const lint = readFileSync(new URL('../../eslint.config.js', import.meta.url), 'utf8');
  const folders = readdirSync(SRC).filter((n) => statSync(join(SRC, n)).isDirectory() && n !== 'data');
  for (const f of folders) {
    assert.match(doc, new RegExp(`\\| \`src/${f}\` \\|`), `docs/architecture.md has a row for src/${f}`);
    assert.match(lint, new RegExp(`'${f}'`), `eslint.config.js lists src/${f}`);
  }
});
