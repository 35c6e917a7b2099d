/**
 * Accept headers of WADO-RS resources: what a rendered study or series is sent as, and how a
 * ModalitiesInStudy match is applied to the visible series of a partly hidden study.
 */
import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { matchesAnyValue, renderedMultipartFormat } from '../../../src/http/dicomweb.js';
import { GatewayError } from '../../../src/core/errors.js';

describe('rendered study or series: the media type', () => {
  test('JPEG by default and for any multipart; PNG when asked; quoted types and q-values honoured', () => {
    for (const a of [undefined, '', '*/*', 'multipart/related', 'multipart/related; type="image/jpeg"', 'multipart/*', 'multipart/related; type=image/jpeg']) {
      assert.equal(renderedMultipartFormat(a), 'jpeg', String(a));
    }
    assert.equal(renderedMultipartFormat('multipart/related; type="image/png"'), 'png');
    assert.equal(renderedMultipartFormat('multipart/related; type="image/png"; q=0, multipart/related; type="image/jpeg"'), 'jpeg', 'q=0 is "not acceptable"');
    assert.equal(renderedMultipartFormat('multipart/related; type="image/gif", multipart/related; type="image/png"'), 'png', 'the first range it can serve');
  });

  test('a type it cannot serve is 406 NOT_ACCEPTABLE', () => {
    for (const a of ['multipart/related; type="image/gif"', 'image/jpeg', 'application/dicom', 'multipart/related; type="image/png"; q=0']) {
      assert.throws(() => renderedMultipartFormat(a), (e: unknown) => e instanceof GatewayError && e.code === 'NOT_ACCEPTABLE', a);
    }
  });
});

describe('ModalitiesInStudy on the visible series', () => {
  test('any asked value matching any visible modality; lists in either form; * and ? wildcards; empty matches all', () => {
    assert.equal(matchesAnyValue('CT', ['CT']), true);
    assert.equal(matchesAnyValue('SR', ['CT']), false);
    assert.equal(matchesAnyValue('SR,CT', ['CT']), true);
    assert.equal(matchesAnyValue('SR\\MR', ['CT']), false);
    assert.equal(matchesAnyValue('S*', ['CT']), false);
    assert.equal(matchesAnyValue('C?', ['CT']), true);
    assert.equal(matchesAnyValue('', ['CT']), true);
    assert.equal(matchesAnyValue('CT', []), false, 'nothing visible matches nothing');
    assert.equal(matchesAnyValue('C.', ['CT']), false, 'a dot is a character, not a pattern');
  });
});
