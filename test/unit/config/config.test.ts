/**
 * Configuration: the contract's minimal file keeps working; every bad key is named with
 * its fix; unknown keys are errors.
 */
import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { loadConfig } from '../../../src/config/schema.js';
import { GatewayError } from '../../../src/core/errors.js';

const dir = mkdtempSync(join(tmpdir(), 'deid-config-'));
let n = 0;
function file(text: string): string {
  const p = join(dir, `c${n++}.yaml`);
  writeFileSync(p, text);
  return p;
}

const HASH = '5e884898da28047151d0e56f8dc6292773603d0d6aabbdd62a11ef721d1542d8';
export const MINIMAL = `server:
  host: 127.0.0.1
  port: 8080
upstream:
  url: http://127.0.0.1:8042/dicom-web   # the PACS's DICOMweb root
state:
  dir: ./var          # secrets, pseudonym store, audit log: the embedded default
clients:
  - id: acme-ai
    apiKeySha256: ${HASH}
    profile:
      options: []     # PS3.15 Annex E option names, see below
`;

function invalid(text: string): string {
  try {
    loadConfig(file(text));
  } catch (e) {
    assert.ok(e instanceof GatewayError && e.code === 'CONFIG_INVALID', `CONFIG_INVALID, got ${String(e)}`);
    return e.message;
  }
  assert.fail('the configuration was accepted');
}

describe('configuration', () => {
  test('the contract\'s minimal file is valid; state.dir resolves next to the file', () => {
    const p = file(MINIMAL);
    const c = loadConfig(p);
    assert.equal(c.clients[0]!.id, 'acme-ai');
    assert.equal(c.state.dir, join(dir, 'var'));
    assert.deepEqual([...c.clients[0]!.plan.options], []);
    assert.ok(Object.isFrozen(c) && Object.isFrozen(c.clients[0]), 'Object.isFrozen(c) && Object.isFrozen(c.clients[0])');
  });

  const cases: [string, string, RegExp][] = [
    ['unknown top-level key', MINIMAL + 'extra: 1\n', /\(top level\): unknown key "extra"; remove it/],
    ['unknown nested key', MINIMAL.replace('port: 8080', 'port: 8080\n  prot: 1'), /server: unknown key "prot"/],
    ['port out of range', MINIMAL.replace('8080', '80800'), /server\.port: must be a TCP port/],
    ['upstream url not a URL', MINIMAL.replace('http://127.0.0.1:8042/dicom-web', 'localhost'), /upstream\.url: must be an absolute URL/],
    ['token hash not hex', MINIMAL.replace(HASH, 'abc'), /clients\[0\]\.apiKeySha256: must be the SHA-256/],
    ['token hash parsed as a number', MINIMAL.replace(HASH, '5e88'), /apiKeySha256: expected string; quote the value/],
    ['unknown option', MINIMAL.replace('options: []', 'options: [retainUID]'), /clients\[0\]\.profile\.options\[0\]: unknown option; use one of retainSafePrivate/],
    ['both date options', MINIMAL.replace('options: []', 'options: [retainLongitudinalFullDates, retainLongitudinalModifiedDates]'), /clients\[0\]\.profile\.options: .*exclude each other; keep one/],
    ['override of an unknown keyword', MINIMAL.replace('options: []', 'options: []\n      overrides: {PatientNme: keep}'), /overrides\.PatientNme: unknown keyword; use a PS3\.6 keyword/],
    ['shift on a non-date', MINIMAL.replace('options: []', 'options: []\n      overrides: {PatientName: shift}'), /overrides\.PatientName: shift applies to DA and DT/],
    ['override on a private tag', MINIMAL.replace('options: []', 'options: []\n      overrides: {"(0029,1010)": keep}'), /private tags cannot be overridden; use the retainSafePrivate option/],
    ['missing clients', MINIMAL.slice(0, MINIMAL.indexOf('clients:')), /clients: required; add it/],
    ['duplicate client ids', MINIMAL + `  - id: acme-ai\n    apiKeySha256: ${'a'.repeat(64)}\n`, /clients\[1\]\.id: "acme-ai" is used twice/],
    ['duplicate tokens', MINIMAL + `  - id: other\n    apiKeySha256: ${HASH}\n`, /clients\[1\]\.apiKeySha256: the same token hash is used by two clients/],
    ['bad date shift range', MINIMAL.replace('options: []', 'options: []\n      dateShift: {minDays: 0, maxDays: 10}'), /dateShift\.minDays: must be at least 1 day/],
    ['duplicate YAML key', MINIMAL.replace('port: 8080', 'port: 8080\n  port: 8081'), /not valid YAML \(DUPLICATE_KEY\)/],
  ];
  for (const [name, text, re] of cases) {
    test(`invalid: ${name} → the message names the key and the fix`, () => {
      assert.match(invalid(text), re);
    });
  }

  test('an unreadable file is CONFIG_UNREADABLE naming the path', () => {
    assert.throws(() => loadConfig(join(dir, 'nope.yaml')), (e: unknown) => e instanceof GatewayError && e.code === 'CONFIG_UNREADABLE' && /check the --config path/.test(e.message));
  });

  test('an override changes the compiled plan and its hash', () => {
    const a = loadConfig(file(MINIMAL)).clients[0]!.plan;
    const b = loadConfig(file(MINIMAL.replace('options: []', 'options: []\n      overrides: {StudyDescription: keep}'))).clients[0]!.plan;
    assert.notEqual(a.hash, b.hash);
    assert.equal(b.lookup(0x00081030).action.kind, 'keep');
    assert.equal(a.lookup(0x00081030).action.kind, 'remove');
  });
});
