/**
 * A YAML file that hospital IT maintains beside the configuration (a study allow-list, the
 * opt-out list), re-read when it changes, without a restart.
 *
 * The file is checked (stat: modification time, size, inode) at most once per `intervalMs`
 * when its value is asked for. A change is parsed and validated; if the new content cannot be
 * read or is invalid, the file is BROKEN and value() throws SCOPE_UNAVAILABLE (503) until it
 * is fixed: the gateway fails closed rather than keep serving under a list it knows is stale.
 * At start, an unreadable or invalid file is a configuration error (exit 2) naming the key.
 *
 * Messages name the configuration key, the file and the fix, never the file's content.
 */
import { readFileSync, statSync } from 'node:fs';
import { parseDocument } from 'yaml';
import { GatewayError } from '../core/errors.js';

export interface FileStatus {
  readonly ok: boolean;
  readonly problem?: string;
}

function unreadable(key: string, path: string, e: unknown): string {
  return `${key}: ${path} cannot be read (${(e as NodeJS.ErrnoException).code ?? 'error'}); create it or fix the path (relative paths start at the configuration file)`;
}

/**
 * Reads and validates a list file once: the value, or a problem naming the key, the file (and
 * the line of a YAML error) and the fix. Used at start (configuration) and on every reload.
 */
export function readListFile<T>(path: string, key: string, parse: (doc: unknown) => T): { value: T } | { problem: string } {
  let text: string;
  try {
    text = readFileSync(path, 'utf8');
  } catch (e) {
    return { problem: unreadable(key, path, e) };
  }
  const doc = parseDocument(text, { uniqueKeys: true });
  if (doc.errors.length) {
    const line = doc.errors[0]!.linePos?.[0];
    return { problem: `${key}: ${path}${line ? `:${line.line}:${line.col}` : ''} is not valid YAML (${doc.errors[0]!.code}); fix the syntax there` };
  }
  try {
    return { value: parse(doc.toJS()) };
  } catch (e) {
    return { problem: `${key}: ${path}: ${(e as Error).message}` };
  }
}

export class WatchedFile<T> {
  private current: T;
  private stamp: string;
  private checkedAt = 0;
  private problem: string | undefined;

  /**
   * @param path absolute path
   * @param key the configuration key that names the file, for messages
   * @param parse validates the YAML value; throws Error with a message naming the inner key
   * @param onProblem called once when the file becomes broken (message) or healthy again (undefined)
   */
  constructor(
    readonly path: string,
    private readonly key: string,
    private readonly parse: (doc: unknown) => T,
    private readonly onProblem: (message: string | undefined) => void = () => undefined,
    private readonly intervalMs = 250,
  ) {
    const first = this.load();
    if ('problem' in first) throw new GatewayError('CONFIG_INVALID', first.problem);
    this.current = first.value;
    this.stamp = first.stamp;
    this.checkedAt = Date.now();
  }

  private statStamp(): string {
    const s = statSync(this.path);
    return `${s.ino}:${s.size}:${s.mtimeMs}`;
  }

  private load(): { value: T; stamp: string } | { problem: string } {
    let stamp: string;
    try {
      stamp = this.statStamp();
    } catch (e) {
      return { problem: unreadable(this.key, this.path, e) };
    }
    const r = readListFile(this.path, this.key, this.parse);
    return 'problem' in r ? r : { value: r.value, stamp };
  }

  /** Re-reads the file if it changed since the last check (at most once per interval). */
  refresh(force = false): void {
    const now = Date.now();
    if (!force && now - this.checkedAt < this.intervalMs) return;
    this.checkedAt = now;
    let stamp: string;
    try {
      stamp = this.statStamp();
    } catch (e) {
      this.stamp = ''; // whatever comes back is read again
      this.setProblem(unreadable(this.key, this.path, e));
      return;
    }
    if (stamp === this.stamp) return; // unchanged: still good, or still the same broken content
    const next = this.load();
    if ('problem' in next) {
      this.stamp = stamp; // do not re-parse the same broken content on every check
      this.setProblem(next.problem);
      return;
    }
    this.current = next.value;
    this.stamp = next.stamp;
    this.setProblem(undefined);
  }

  private setProblem(p: string | undefined): void {
    if (p === this.problem) return;
    this.problem = p;
    this.onProblem(p);
  }

  /** The current value; throws SCOPE_UNAVAILABLE while the file is broken. */
  value(): T {
    this.refresh();
    if (this.problem !== undefined) throw new GatewayError('SCOPE_UNAVAILABLE', 'the access scope cannot be evaluated right now; try again later', { auditReason: 'scope-file-broken', retryAfter: 30 });
    return this.current;
  }

  status(): FileStatus {
    this.refresh();
    return this.problem === undefined ? { ok: true } : { ok: false, problem: this.problem };
  }
}
