// Copies the standard's data files next to the compiled code (dist/src/data), which
// loads them relative to itself; the product never reads ../shared at run time.
import { cpSync, mkdirSync, readdirSync } from 'node:fs';
const from = new URL('../src/data/', import.meta.url);
const to = new URL('../dist/src/data/', import.meta.url);
mkdirSync(to, { recursive: true });
for (const f of readdirSync(from)) cpSync(new URL(f, from), new URL(f, to), { recursive: true });
