/**
 * The opt-out list and each configured client's scope, built the one way the gateway
 * (src/main.ts) and the offline deid command (src/cli/deid.ts) use: the list files are watched,
 * so hospital IT's edits apply without a restart.
 */
import type { Config } from '../config/schema.js';
import { parseOptOutList, parseStudyList } from '../config/lists.js';
import { ClientScope, OptOutSource, type StudyListSource } from './client-scope.js';
import type { OptOutEntry } from './scope.js';
import { WatchedFile } from './watched-file.js';

/**
 * `onFileProblem(key, message)` hears when a list file becomes unusable (a message naming the
 * key) or usable again (undefined). `scopeOf(i)` builds the scope of `cfg.clients[i]`.
 */
export function scopesFromConfig(
  cfg: Pick<Config, 'optOut' | 'clients'>,
  onFileProblem: (key: string, message: string | undefined) => void = () => undefined,
): { optOut: OptOutSource; scopeOf(index: number): ClientScope } {
  const optOutFile = cfg.optOut.file === undefined ? undefined
    : new WatchedFile<readonly OptOutEntry[]>(cfg.optOut.file, 'optOut.file', parseOptOutList, (m) => onFileProblem('optOut.file', m));
  const optOut = new OptOutSource(cfg.optOut.patients, optOutFile);
  return {
    optOut,
    scopeOf(index) {
      const c = cfg.clients[index]!;
      const key = `clients[${index}].scope.studiesFile`;
      const file = c.scope.studiesFile === undefined ? undefined
        : new WatchedFile<StudyListSource>(c.scope.studiesFile, key, parseStudyList, (m) => onFileProblem(key, m));
      return new ClientScope(c.scope, optOut, file);
    },
  };
}
