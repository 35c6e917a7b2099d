/**
 * Group commit for the offline export (issue 14): files written to temporary names wait in a
 * batch; their audit records are already written. A flush makes the records durable (one
 * fdatasync for the batch) and only then puts the files in place, in the order they came. A
 * sync that fails puts none of them in place: each is dropped with the error, and the commit
 * stops (nothing more is exported without its record on disk).
 */
export interface GroupCommitOptions<T> {
  /** Makes every record written so far durable; throws when it cannot. */
  readonly sync: () => Promise<void>;
  /** Puts one item in place (rename, and its output line). */
  readonly place: (item: T) => void;
  /** Drops one item whose record could not be made durable (its temporary file removed). */
  readonly drop: (item: T, error: unknown) => void;
  /** A batch is flushed when it holds this many items… */
  readonly maxItems: number;
  /** …or when its first item has waited this long, ms. */
  readonly maxMs: number;
  readonly now?: () => number;
}

export class GroupCommit<T> {
  private readonly batch: T[] = [];
  private since = 0;
  private failed = false;
  /** Syncs made (one per non-empty flush). */
  syncs = 0;

  constructor(private readonly o: GroupCommitOptions<T>) {}

  /** True once a sync has failed: nothing more is to be exported. */
  get stopped(): boolean {
    return this.failed;
  }

  /** Adds an item whose record is written; flushes when the batch is full or old enough. */
  async add(item: T): Promise<void> {
    if (this.failed) throw new Error('the group commit has stopped');
    const now = this.o.now ?? ((): number => performance.now());
    if (!this.batch.length) this.since = now();
    this.batch.push(item);
    if (this.batch.length >= this.o.maxItems || now() - this.since >= this.o.maxMs) await this.flush();
  }

  /** Makes the batch's records durable, then puts its items in place; false when the sync failed. */
  async flush(): Promise<boolean> {
    if (!this.batch.length) return !this.failed;
    const items = this.batch.splice(0);
    this.syncs++;
    try {
      await this.o.sync();
    } catch (e) {
      this.failed = true;
      for (const item of items) this.o.drop(item, e);
      return false;
    }
    for (const item of items) this.o.place(item);
    return true;
  }
}
