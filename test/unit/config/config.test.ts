/**
 * Configuration: the contract's minimal file keeps working; every bad key is named with
 * its fix; unknown keys are errors.
 */
import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { connectionsPerClient, loadConfig, MAX_QUERY_RESULTS } from '../../../src/config/schema.js';
import { MAX_NOTED_STUDIES } from '../../../src/http/dicomweb.js';
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
    // Faces are defaced by default, also when the pixels block says nothing of them.
    assert.equal(c.engine.faceWaitSeconds, 60);
    const withPixels = loadConfig(file(MINIMAL.replace('options: []', 'options: []\n    pixels: {risky: allow}')));
    assert.equal(withPixels.clients[0]!.pixels?.faces, 'deface');
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
    ['unknown face policy', MINIMAL.replace('options: []', 'options: []\n    pixels: {faces: blur}'), /clients\[0\]\.pixels\.faces: .*use deface \(default\), withhold or allow/],
    ['face wait out of range', MINIMAL + 'engine: {faceWaitSeconds: 0}\n', /engine\.faceWaitSeconds/],
    ['duplicate client ids', MINIMAL + `  - id: acme-ai\n    apiKeySha256: ${'a'.repeat(64)}\n`, /clients\[1\]\.id: "acme-ai" is used twice/],
    ['duplicate tokens', MINIMAL + `  - id: other\n    apiKeySha256: ${HASH}\n`, /clients\[1\]\.apiKeySha256: the same token hash is used by two clients/],
    ['bad date shift range', MINIMAL.replace('options: []', 'options: []\n      dateShift: {minDays: 0, maxDays: 10}'), /dateShift\.minDays: must be at least 1 day/],
    ['duplicate YAML key', MINIMAL.replace('port: 8080', 'port: 8080\n  port: 8081'), /not valid YAML \(DUPLICATE_KEY\)/],
    ['scope: unknown key', MINIMAL + '    scope: {modality: [CT]}\n', /clients\[0\]\.scope: unknown key "modality"/],
    ['scope: a study that is not a UID', MINIMAL + '    scope: {studies: [abc]}\n', /clients\[0\]\.scope\.studies\[0\]: must be a UID/],
    ['scope: a date that is not a date', MINIMAL + '    scope: {studyDate: {from: 2020/01/01}}\n', /clients\[0\]\.scope\.studyDate\.from: use a date such as 2021-12-31/],
    ['scope: dates reversed', MINIMAL + '    scope: {studyDate: {from: 2021-01-01, until: 2020-01-01}}\n', /clients\[0\]\.scope\.studyDate: from is after until; swap them/],
    ['scope: window reversed', MINIMAL + '    scope: {validFrom: 2027-01-01, validUntil: 2026-01-01}\n', /clients\[0\]\.scope: validFrom must be before validUntil/],
    ['scope: window not a date', MINIMAL + '    scope: {validUntil: next year}\n', /clients\[0\]\.scope\.validUntil: use an ISO 8601 date/],
    ['scope: empty modality list', MINIMAL + '    scope: {modalities: []}\n', /clients\[0\]\.scope\.modalities: list at least one value, or leave the key out/],
    ['scope: missing studies file', MINIMAL + '    scope: {studiesFile: ./nope.yaml}\n', /clients\[0\]\.scope\.studiesFile: .*nope\.yaml cannot be read \(ENOENT\); create it or fix the path/],
    ['query: unknown allowed key', MINIMAL + '    query: {allowedKeys: [StudyDat]}\n', /clients\[0\]\.query\.allowedKeys\[0\]: "StudyDat" is not a DICOM keyword or tag/],
    ['limits: bad size', MINIMAL + '    limits: {bytesPerDay: lots}\n', /clients\[0\]\.limits\.bytesPerDay: use bytes as a number or a size such as "500 MB"/],
    ['limits: zero rate', MINIMAL + '    limits: {requestsPerMinute: 0}\n', /clients\[0\]\.limits\.requestsPerMinute: /],
    ['optOut: entry without id', MINIMAL + 'optOut: {patients: [{issuer: X}]}\n', /optOut\.patients\[0\]\.id: required; add it/],
    ['optOut: missing file', MINIMAL + 'optOut: {file: ./missing-opt-out.yaml}\n', /optOut\.file: .*missing-opt-out\.yaml cannot be read \(ENOENT\)/],
  ];
  for (const [name, text, re] of cases) {
    test(`invalid: ${name} → the message names the key and the fix`, () => {
      assert.match(invalid(text), re);
    });
  }

  test('scope, query, limits and opt-out keys are read into their runtime form', () => {
    writeFileSync(join(dir, 'list.yaml'), 'studies: [1.2.3]\naccessionNumbers: [A1]\n');
    writeFileSync(join(dir, 'opt.yaml'), 'patients: [{id: P1, issuer: H}]\n');
    const c = loadConfig(file(`${MINIMAL}    scope:
      studiesFile: ./list.yaml
      modalities: [ct, MR]
      studyDate: {from: 2020-01-01, until: '20201231'}
      validFrom: 2026-01-01
      validUntil: 2027-01-01T12:00:00+01:00
    query: {allowedKeys: [StudyDate, 0020000D], maxResults: 50}
    limits: {requestsPerMinute: 60, concurrentRequests: 4, bytesPerDay: 2 GiB}
optOut:
  patients: [{id: P2}]
  file: ./opt.yaml
`));
    const s = c.clients[0]!.scope;
    assert.equal(s.studiesFile, join(dir, 'list.yaml'));
    assert.deepEqual(s.modalities, ['CT', 'MR']);
    assert.deepEqual(s.studyDate, { from: '20200101', until: '20201231' });
    assert.equal(s.window.from, Date.UTC(2026, 0, 1));
    assert.equal(s.window.until, Date.UTC(2027, 0, 1, 11));
    assert.deepEqual([...c.clients[0]!.allowedKeys!].sort((a, b) => a - b), [0x00080020, 0x0020000d]);
    assert.deepEqual(c.clients[0]!.limits, { requestsPerMinute: 60, concurrentRequests: 4, bytesPerDay: 2 * 1024 ** 3 });
    assert.deepEqual(c.optOut, { patients: [{ id: 'P2' }], file: join(dir, 'opt.yaml') });
  });

  test('a broken list file is named with its key and the inner problem, never its values', () => {
    writeFileSync(join(dir, 'bad-list.yaml'), 'studies: [1.2.3, MRN-SECRET-1]\n');
    const m = invalid(`${MINIMAL}    scope: {studiesFile: ./bad-list.yaml}\n`);
    assert.match(m, /clients\[0\]\.scope\.studiesFile: .*bad-list\.yaml: studies\[1\]: must be a UID/);
    assert.ok(!m.includes('MRN-SECRET-1'), 'the message does not quote the file');
    writeFileSync(join(dir, 'bad-opt.yaml'), 'patients: [{id: MRN-SECRET-2, isuer: X}]\n');
    const o = invalid(`${MINIMAL}optOut: {file: ./bad-opt.yaml}\n`);
    assert.match(o, /optOut\.file: .*patients\[0\]: unknown key\(s\) "isuer"/);
    assert.ok(!o.includes('MRN-SECRET-2'), 'the message does not quote the file');
  });

  test('QIDO page caps never exceed the studies one audit record itemizes', () => {
    assert.equal(MAX_QUERY_RESULTS, MAX_NOTED_STUDIES, 'the schema\'s cap is the audit record\'s');
    assert.equal(loadConfig(file(MINIMAL.replace('port: 8080', 'port: 8080\n  maxQueryResults: 10000'))).server.maxQueryResults, 10_000);
    assert.match(invalid(MINIMAL.replace('port: 8080', 'port: 8080\n  maxQueryResults: 10001')), /server\.maxQueryResults: must be at most 10000 \(every study a request releases is itemized in its audit record\); lower it and let clients page with offset/);
    assert.match(invalid(MINIMAL.replace('options: []', 'options: []\n    query: {maxResults: 1000000}')), /clients\[0\]\.query\.maxResults: must be at most 10000/);
  });

  test('connections per client: 64 by default, half of maxConnections when that is less, never more than maxConnections', () => {
    assert.equal(connectionsPerClient(loadConfig(file(MINIMAL)).server), 64);
    assert.equal(connectionsPerClient(loadConfig(file(MINIMAL.replace('port: 8080', 'port: 8080\n  maxConnections: 50'))).server), 25);
    assert.equal(connectionsPerClient(loadConfig(file(MINIMAL.replace('port: 8080', 'port: 8080\n  connectionsPerClient: 200'))).server), 200);
    assert.match(invalid(MINIMAL.replace('port: 8080', 'port: 8080\n  maxConnections: 100\n  connectionsPerClient: 101')), /server\.connectionsPerClient: 101 is more than server\.maxConnections \(100\): one client could hold every connection/);
    assert.match(invalid(MINIMAL.replace('port: 8080', 'port: 8080\n  connectionsPerClient: 0')), /server\.connectionsPerClient/);
  });

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
