// Lint: typescript-eslint's recommended rules, plus the dependency direction of
// docs/architecture.md for every folder of src/: which folders each may import (the layering
// table), which packages the engine layers stay free of (web, logging, caches, the store's
// packages), and that only src/dicom imports dcmjs. test/unit/architecture.test.ts checks that
// no file imports itself in a cycle.
import tseslint from 'typescript-eslint';

const FOLDERS = ['core', 'dicom', 'pixels', 'pseudonym', 'deid', 'dicomweb', 'upstream', 'audit', 'render', 'policy', 'config', 'state', 'http', 'cli'];

/** Which folders each folder may import (docs/architecture.md); main.ts and cli/ wire everything. */
const MAY_IMPORT = {
  core: [],
  dicom: ['core'],
  pixels: ['core', 'dicom'],
  pseudonym: ['core', 'deid'], // types of the engine only
  deid: ['core', 'dicom', 'pixels', 'pseudonym'],
  dicomweb: ['core', 'deid'],
  upstream: ['core'],
  audit: ['core'],
  render: ['core', 'dicom'],
  policy: ['core', 'config', 'deid', 'pixels'],
  config: ['core', 'deid', 'dicom', 'policy'],
  state: ['core', 'audit', 'pixels', 'policy', 'pseudonym'],
  http: ['core', 'dicom', 'pixels', 'pseudonym', 'deid', 'dicomweb', 'upstream', 'audit', 'render', 'policy', 'config'],
  cli: FOLDERS.filter((f) => f !== 'cli'),
};

const WEB_AND_LOGGING = ['express', 'http-proxy', 'undici', 'winston', 'supertest'];
/** Packages each folder may not import, beyond dcmjs (src/dicom only). */
const NO_PACKAGES = {
  core: [...WEB_AND_LOGGING, 'node-cache', 'better-sqlite3', 'pg'],
  dicom: [...WEB_AND_LOGGING, 'node-cache', 'better-sqlite3', 'pg'],
  deid: [...WEB_AND_LOGGING, 'node-cache', 'better-sqlite3', 'pg'],
  pseudonym: [...WEB_AND_LOGGING],
  render: [...WEB_AND_LOGGING, 'node-cache', 'better-sqlite3', 'pg'],
  pixels: [...WEB_AND_LOGGING, 'node-cache', 'pg'],
  policy: ['express', 'http-proxy', 'undici', 'supertest'],
  dicomweb: [...WEB_AND_LOGGING, 'node-cache', 'better-sqlite3', 'pg'],
};

const folderRule = (folder) => {
  const forbidden = FOLDERS.filter((f) => f !== folder && !MAY_IMPORT[folder].includes(f));
  const packages = [...(folder === 'dicom' ? [] : ['dcmjs']), ...(NO_PACKAGES[folder] ?? [])];
  return {
    files: [`src/${folder}/**/*.ts`],
    rules: {
      'no-restricted-imports': ['error', {
        paths: packages.map((name) => ({ name, message: name === 'dcmjs' ? 'only src/dicom may import dcmjs' : `src/${folder} stays free of ${name} (docs/architecture.md)` })),
        patterns: [
          ...(forbidden.length ? [{ group: forbidden.map((f) => `**/${f}/**`), message: `src/${folder} may import only ${MAY_IMPORT[folder].join(', ') || 'nothing'} (docs/architecture.md)` }] : []),
          ...(folder === 'cli' ? [] : [{ group: ['**/main.js'], message: 'only the composition root and the command line wire parts together (docs/architecture.md)' }]),
        ],
      }],
    },
  };
};

export default tseslint.config(
  { ignores: ['dist/**', 'node_modules/**', 'test/fixtures/generated/**'] },
  ...tseslint.configs.recommended,
  {
    rules: {
      '@typescript-eslint/no-unused-vars': ['error', { argsIgnorePattern: '^_', varsIgnorePattern: '^_' }],
    },
  },
  {
    files: ['src/*.ts'],
    rules: { 'no-restricted-imports': ['error', { paths: [{ name: 'dcmjs', message: 'only src/dicom may import dcmjs' }] }] },
  },
  ...FOLDERS.map(folderRule),
);
