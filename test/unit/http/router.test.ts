/**
 * The gateway's router (src/http/router.ts): routes match as they did under express 5.
 */
import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { pathOf, Router, under } from '../../../src/http/router.js';

describe('router', () => {
  const r = new Router<string>();
  r.add('/dicom-web/studies', 'studies');
  r.add('/dicom-web/studies/:study', 'study');
  r.add('/dicom-web/studies/:study/series/:series/metadata', 'metadata');
  r.add('/dicom-web/studies/:study/series/:series/instances/:instance/bulk/*path', 'bulk');

  test('literal segments match case-insensitively, with one optional trailing slash', () => {
    for (const p of ['/dicom-web/studies', '/dicom-web/studies/', '/DICOM-WEB/Studies']) assert.equal(r.match(p)?.handler, 'studies', p);
    for (const p of ['/dicom-web/studies//', '/dicom-web/studiesx', '/x/dicom-web/studies', '/dicom-web/%73tudies']) assert.equal(r.match(p), undefined, p);
  });

  test('parameters are one segment each, percent-decoded; a malformed escape throws', () => {
    assert.deepEqual(r.match('/dicom-web/studies/1.2.3'), { handler: 'study', params: { study: '1.2.3' } });
    assert.deepEqual(r.match('/dicom-web/studies/1%2E2/series/3/metadata')?.params, { study: '1.2', series: '3' });
    assert.equal(r.match('/dicom-web/studies/1.2/3/metadata'), undefined, 'one segment, not two');
    assert.throws(() => r.match('/dicom-web/studies/%ZZ'), URIError);
  });

  test('a *name segment takes the rest of the path, slashes included, possibly nothing', () => {
    const base = '/dicom-web/studies/1/series/2/instances/3/bulk';
    assert.deepEqual(r.match(`${base}/00420011/0/00280010`)?.params.path, '00420011/0/00280010');
    assert.deepEqual(r.match(`${base}/a%2Fb`)?.params.path, 'a/b');
    assert.equal(r.match(base)?.params.path, '');
  });

  test('the first route added wins', () => {
    const two = new Router<number>();
    two.add('/a/:x', 1);
    two.add('/a/b', 2);
    assert.equal(two.match('/a/b')?.handler, 1);
  });

  test('under: the prefix itself or below it, case-insensitively', () => {
    assert.ok(under('/dicom-web', '/dicom-web') && under('/dicom-web/', '/dicom-web') && under('/DICOM-WEB/studies', '/dicom-web'));
    assert.ok(!under('/dicom-webx', '/dicom-web') && !under('/x/dicom-web', '/dicom-web'));
  });

  test('pathOf: origin and absolute forms, as sent (nothing resolved or decoded), without query or fragment; anything else has no path', () => {
    assert.equal(pathOf('/dicom-web/studies?limit=1'), '/dicom-web/studies');
    assert.equal(pathOf('/dicom-web/studies#x'), '/dicom-web/studies');
    assert.equal(pathOf('http://gw:8080/dicom-web/studies?limit=1'), '/dicom-web/studies');
    assert.equal(pathOf('HTTPS://user@gw/dicom-web/studies#x'), '/dicom-web/studies');
    assert.equal(pathOf('http://gw'), '/');
    // Dot segments and escapes stay as sent: the same target in either form is the same path.
    assert.equal(pathOf('http://h/dicom-web/studies/1.2/series/%2e%2e'), '/dicom-web/studies/1.2/series/%2e%2e');
    assert.equal(pathOf('http://h/dicom-web/studies/../x'), '/dicom-web/studies/../x');
    assert.equal(pathOf('*'), undefined);
    assert.equal(pathOf('dicom-web/studies'), undefined);
    assert.equal(pathOf('http://h?x'), undefined);
  });
});
