/**
 * The offline export's group commit: a batch's records are made durable before any of its files
 * is put in place, in order; a failed sync puts none in place and stops the export.
 */
import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { GroupCommit } from '../../../src/cli/group-commit.js';

function harness(opts: { maxItems?: number; maxMs?: number; failSyncAt?: number } = {}) {
  const log: string[] = [];
  let clock = 0;
  let syncs = 0;
  const gc = new GroupCommit<string>({
    maxItems: opts.maxItems ?? 3, maxMs: opts.maxMs ?? 1000, now: () => clock,
    sync: async () => {
      syncs++;
      await new Promise((r) => setImmediate(r)); // a real sync yields; nothing may be placed meanwhile
      if (syncs === opts.failSyncAt) throw new Error('disk full');
      log.push('sync');
    },
    place: (x) => log.push(`place ${x}`),
    drop: (x, e) => log.push(`drop ${x} (${(e as Error).message})`),
  });
  return { gc, log, tick: (ms: number) => { clock += ms; } };
}

describe('group commit', () => {
  test('a full batch is synced once, then placed in order; the rest on flush', async () => {
    const { gc, log } = harness();
    for (const x of ['a', 'b', 'c', 'd']) await gc.add(x);
    assert.deepEqual(log, ['sync', 'place a', 'place b', 'place c']);
    assert.equal(await gc.flush(), true);
    assert.deepEqual(log.slice(4), ['sync', 'place d']);
    assert.equal(gc.syncs, 2);
    assert.equal(await gc.flush(), true, 'an empty flush');
    assert.equal(gc.syncs, 2, 'syncs nothing');
  });

  test('a batch whose first item has waited maxMs is flushed by the next add', async () => {
    const { gc, log, tick } = harness({ maxItems: 100, maxMs: 50 });
    await gc.add('a');
    tick(20);
    await gc.add('b');
    assert.deepEqual(log, [], 'not yet');
    tick(40);
    await gc.add('c');
    assert.deepEqual(log, ['sync', 'place a', 'place b', 'place c']);
  });

  test('with the default clock', async () => {
    const placed: string[] = [];
    const gc = new GroupCommit<string>({ maxItems: 2, maxMs: 60_000, sync: async () => undefined, place: (x) => placed.push(x), drop: () => undefined });
    await gc.add('a');
    await gc.add('b');
    assert.deepEqual(placed, ['a', 'b']);
  });

  test('a failed sync places nothing of its batch, drops each with the error, and stops', async () => {
    const { gc, log } = harness({ failSyncAt: 2 });
    for (const x of ['a', 'b', 'c']) await gc.add(x);
    await gc.add('d');
    await gc.add('e');
    assert.equal(await gc.flush(), false);
    assert.deepEqual(log, ['sync', 'place a', 'place b', 'place c', 'drop d (disk full)', 'drop e (disk full)']);
    assert.equal(gc.stopped, true);
    await assert.rejects(gc.add('f'), /stopped/);
  });
});
