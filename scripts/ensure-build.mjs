// Builds dist/ when it is missing or older than the sources, so `npm start` and the
// benchmarks work right after `npm ci`.
import { execSync } from 'node:child_process';
import { existsSync, readdirSync, statSync } from 'node:fs';
import { join } from 'node:path';
const root = new URL('..', import.meta.url).pathname;
function newest(dir) {
  let t = 0;
  for (const e of readdirSync(dir, { withFileTypes: true })) {
    const p = join(dir, e.name);
    t = Math.max(t, e.isDirectory() ? newest(p) : statSync(p).mtimeMs);
  }
  return t;
}
const marker = join(root, 'dist/src/cli/main.js');
const src = Math.max(newest(join(root, 'src')), existsSync(join(root, 'bench')) ? newest(join(root, 'bench')) : 0);
if (!existsSync(marker) || statSync(marker).mtimeMs < src) {
  execSync('npm run build --silent', { cwd: root, stdio: 'inherit' });
}
