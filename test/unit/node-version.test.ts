/**
 * The Node.js version the gateway says it needs (package.json's engines, the entry's check) and
 * the one its code needs agree: every API of the table below that src/ uses was there in
 * MIN_NODE. An API newer than MIN_NODE, or an engines field that says otherwise, fails here.
 */
import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { readdirSync, readFileSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { MIN_NODE, NODE_FLAGS, nodeSupported } from '../../src/core/node-version.js';
import { gatewayCommand } from '../../bench/common.js';

const root = fileURLToPath(new URL('../../', import.meta.url));

/** APIs that appeared after Node.js 20.0, with the 20.x (or later) release that brought them. */
const GATED: { api: string; since: string; used: RegExp }[] = [
  { api: 'zlib.crc32', since: '20.15.0', used: /\bcrc32\b[^;]*from 'node:zlib'|zlib\.crc32\(/ },
  { api: 'import.meta.dirname / filename', since: '20.11.0', used: /import\.meta\.(dirname|filename)\b/ },
  { api: 'util.styleText', since: '20.12.0', used: /\bstyleText\b/ },
  { api: 'process.getBuiltinModule', since: '22.3.0', used: /getBuiltinModule\(/ },
  { api: 'Promise.withResolvers', since: '22.0.0', used: /Promise\.withResolvers\(/ },
  { api: 'Array.fromAsync', since: '22.0.0', used: /Array\.fromAsync\(/ },
  { api: 'Object.groupBy / Map.groupBy', since: '21.0.0', used: /\b(Object|Map)\.groupBy\(/ },
  { api: 'Iterator helpers', since: '22.0.0', used: /\bIterator\.from\(|\.toArray\(\)/ },
  { api: 'fs.glob', since: '22.0.0', used: /\bglob(Sync)?\b[^;]*from 'node:fs/ },
  // (zod's z.union is not a Set method.)
  { api: 'Set methods (union, intersection, …)', since: '22.0.0', used: /(?<!\bz)\.(union|intersection|symmetricDifference|isSubsetOf|isSupersetOf|isDisjointFrom)\(/ },
  { api: 'require(esm) / --experimental-strip-types', since: '22.6.0', used: /process\.features\.typescript/ },
];

function sources(dir: string): string[] {
  return readdirSync(dir).flatMap((n) => {
    const p = join(dir, n);
    return statSync(p).isDirectory() ? sources(p) : p.endsWith('.ts') ? [p] : [];
  });
}

describe('the Node.js version', () => {
  const pkg = JSON.parse(readFileSync(join(root, 'package.json'), 'utf8')) as { engines: { node: string } };
  const lock = JSON.parse(readFileSync(join(root, 'package-lock.json'), 'utf8')) as { packages: Record<string, { engines?: { node?: string } }> };

  test('package.json and its lock file say >= MIN_NODE, the version the entry checks', () => {
    assert.equal(pkg.engines.node, `>=${MIN_NODE}`);
    assert.equal(lock.packages['']?.engines?.node, `>=${MIN_NODE}`);
  });

  test('every version-gated API src/ uses was there in MIN_NODE, and MIN_NODE is no older than the newest one used', () => {
    const used = new Map<string, { since: string; files: string[] }>();
    for (const file of sources(join(root, 'src'))) {
      const text = readFileSync(file, 'utf8');
      for (const g of GATED) if (g.used.test(text)) (used.get(g.api) ?? used.set(g.api, { since: g.since, files: [] }).get(g.api)!).files.push(file.slice(root.length));
    }
    // The scanner sees the one such API the code is known to use (the PNG encoder's CRC).
    assert.ok(used.get('zlib.crc32')?.files.includes('src/render/render.ts'), 'zlib.crc32 is found in src/render/render.ts');
    for (const [api, u] of used) assert.ok(nodeSupported(MIN_NODE, u.since), `${api} (Node.js ${u.since}) is used in ${u.files.join(', ')}, but MIN_NODE is ${MIN_NODE}`);
    const newest = [...used.values()].map((u) => u.since).reduce((m, v) => (nodeSupported(v, m) ? v : m));
    assert.equal(newest, MIN_NODE, 'MIN_NODE is exactly what the code needs (raise or lower it with the code)');
  });

  test('version comparison', () => {
    assert.ok(nodeSupported('20.15.0', '20.15.0'));
    assert.ok(nodeSupported('v20.15.1', '20.15.0'));
    assert.ok(nodeSupported('22.0.0', '20.15.0'));
    assert.ok(!nodeSupported('20.14.9', '20.15.0'));
    assert.ok(!nodeSupported('v20.10.0', '20.15.0'));
    assert.ok(!nodeSupported('19.99.99', '20.15.0'));
  });

  test('the entry refuses an older Node.js with one clear line and exit code 2, before loading the rest', () => {
    // The running Node.js, told that the minimum is above it: the entry's own check path.
    const entry = join(root, 'src/cli/main.ts');
    const probe = `import { nodeSupported } from ${JSON.stringify(join(root, 'src/core/node-version.ts'))}; process.stdout.write(String(nodeSupported(process.versions.node)));`;
    const ok = spawnSync(process.execPath, ['--import', 'tsx', '--input-type=module', '-e', probe], { encoding: 'utf8', cwd: root });
    assert.equal(ok.stdout, 'true', 'this Node.js is supported');
    const old = spawnSync(process.execPath, ['--import', 'tsx', '--import', `data:text/javascript,Object.defineProperty(process.versions, 'node', { value: '20.10.0' })`, entry, '--help'], { encoding: 'utf8', cwd: root });
    assert.equal(old.status, 2, old.stderr);
    assert.match(old.stderr, new RegExp(`Node\\.js ${MIN_NODE.replace(/\./g, '\\.')} or later is needed; this is 20\\.10\\.0`));
    assert.equal(old.stderr.trim().split('\n').length, 1);
  });

  test('the gateway starts with the same V8 flags every way it is started, and V8 takes them', () => {
    assert.ok(NODE_FLAGS.length > 0);
    const flags = NODE_FLAGS.join(' ');
    // The installed command: the entry's shebang passes them (env -S splits the line).
    const shebang = readFileSync(join(root, 'src/cli/main.ts'), 'utf8').split('\n')[0];
    assert.equal(shebang, `#!/usr/bin/env -S node ${flags}`);
    // npm start.
    const scripts = (JSON.parse(readFileSync(join(root, 'package.json'), 'utf8')) as { scripts: Record<string, string> }).scripts;
    assert.match(scripts.start!, new RegExp(` node ${flags.replace(/[.*+?^${}()|[\]\\-]/g, '\\$&')} dist/src/cli/main\\.js serve$`));
    // The container.
    const entry = /^ENTRYPOINT (\[.*\])$/m.exec(readFileSync(join(root, 'deploy/Dockerfile'), 'utf8'));
    assert.deepEqual(JSON.parse(entry![1]!), ['node', ...NODE_FLAGS, 'dist/src/cli/main.js']);
    // The benchmarks measure the gateway as it runs.
    assert.deepEqual(gatewayCommand('file:///x/dist/bench/gateway.js', '/y/main.js'), [...NODE_FLAGS, '/y/main.js']);
    assert.deepEqual(gatewayCommand(new URL('../../bench/gateway.ts', import.meta.url).href).slice(0, NODE_FLAGS.length), [...NODE_FLAGS]);
    // This Node.js accepts them (an unknown or misspelt flag exits with "bad option").
    const r = spawnSync(process.execPath, [...NODE_FLAGS, '-e', 'process.stdout.write("ok")'], { encoding: 'utf8' });
    assert.equal(r.status, 0, r.stderr);
    assert.equal(r.stdout, 'ok');
  });
});
