// Lint: typescript-eslint's recommended rules, plus the dependency direction of
// docs/architecture.md: the engine (deid/, dicom/, pseudonym/, core/) never imports the web
// or logging layers; only dicom/ may import dcmjs; only pseudonym/ the store's packages.
import tseslint from 'typescript-eslint';

const webAndLogging = ['express', 'http-proxy', 'undici', 'winston', 'supertest'];
const layer = (dirs, extra = [], outer = []) => ({
  files: dirs.map((d) => `src/${d}/**/*.ts`),
  rules: {
    'no-restricted-imports': ['error', {
      paths: [...webAndLogging, ...extra].map((name) => ({ name, message: 'the engine layers stay free of web, logging and cache packages (docs/architecture.md)' })),
      patterns: [{ group: ['**/http/**', '**/upstream/**', '**/audit/**', '**/cli/**', '**/config/**', ...outer], message: 'inner layers never import outer ones (docs/architecture.md)' }],
    }],
  },
});

export default tseslint.config(
  { ignores: ['dist/**', 'node_modules/**', 'test/fixtures/generated/**'] },
  ...tseslint.configs.recommended,
  {
    rules: {
      '@typescript-eslint/no-unused-vars': ['error', { argsIgnorePattern: '^_', varsIgnorePattern: '^_' }],
    },
  },
  {
    files: ['src/**/*.ts'],
    ignores: ['src/dicom/**'],
    rules: { 'no-restricted-imports': ['error', { paths: [{ name: 'dcmjs', message: 'only src/dicom may import dcmjs' }] }] },
  },
  layer(['deid', 'core'], ['dcmjs', 'node-cache', 'better-sqlite3']),
  layer(['pseudonym'], ['dcmjs']),
  layer(['dicom'], ['node-cache', 'better-sqlite3']),
  layer(['render'], ['dcmjs', 'node-cache', 'better-sqlite3']),
  // The pixel stage sits on core and dicom: the engine, the policy and the routes use it, never the reverse.
  layer(['pixels'], ['dcmjs', 'node-cache'], ['**/deid/**', '**/policy/**', '**/pseudonym/**', '**/render/**', '**/main.js']),
);
