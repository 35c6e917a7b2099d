/**
 * Certificate subjects: one canonical form for configuration strings and certificates, with
 * values that cannot pose as attributes.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { normalizeSubject, parseSubject } from '../../../src/core/subject.js';

test('order and spacing do not matter; types are case-insensitive', () => {
  assert.equal(normalizeSubject('CN=acme-ai, O=Acme AI'), normalizeSubject({ O: 'Acme AI', CN: 'acme-ai' }));
  assert.equal(normalizeSubject('o=Acme AI,cn=acme-ai'), normalizeSubject('CN=acme-ai,O=Acme AI'));
});

test('a value holding ",O=…" never equals two attributes', () => {
  assert.notEqual(normalizeSubject({ CN: 'acme-ai,O=Acme AI' }), normalizeSubject('CN=acme-ai,O=Acme AI'));
  assert.equal(normalizeSubject({ CN: 'acme-ai,O=Acme AI' }), normalizeSubject('CN=acme-ai\\,O\\=Acme AI'), 'unless the configuration escapes it');
});

test('"/" is part of a value, not a separator', () => {
  assert.notEqual(normalizeSubject('O=Acme/Research'), normalizeSubject({ O: 'Acme' }));
  assert.equal(normalizeSubject('O=Acme/Research'), normalizeSubject({ O: 'Acme/Research' }));
});

test('malformed subjects are refused', () => {
  for (const bad of ['acme-ai', 'CN', '=x', 'CN=a,', 'CN=a\\', '1X=a']) assert.equal(parseSubject(bad), undefined, bad);
  assert.deepEqual(parseSubject('CN=a+OU=b'), [['CN', 'a'], ['OU', 'b']]);
});
