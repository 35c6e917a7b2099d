/**
 * The runtime form of a client's scope: its inline rules merged with its allow-list file
 * (reloaded on change), the opt-out list shared by every client, and its access window.
 */
import { admitPixels, type FaceLookup, type PixelPolicy, type TextLookup } from './pixels.js';
import { OptOutList, hasInstanceRules, hasSeriesRules, hasStudyRules, notVisible, recordDenial, type Attrs, type OptOutEntry, type ScopeRules } from './scope.js';
import { WatchedFile, type FileStatus } from './watched-file.js';

export interface StudyListSource {
  readonly studies: readonly string[];
  readonly accessionNumbers: readonly string[];
}

export interface ScopeSettings {
  readonly studies?: readonly string[] | undefined;
  readonly accessionNumbers?: readonly string[] | undefined;
  readonly studyDate?: { readonly from?: string | undefined; readonly until?: string | undefined } | undefined;
  readonly modalities?: readonly string[] | undefined;
  readonly bodyParts?: readonly string[] | undefined;
  readonly sopClasses?: readonly string[] | undefined;
  readonly window: { readonly from?: number | undefined; readonly until?: number | undefined };
}

/** The opt-out list: inline entries plus an optional reloaded file. */
export class OptOutSource {
  private cached: { list: OptOutList; from: readonly OptOutEntry[] | undefined } | undefined;

  constructor(private readonly inline: readonly OptOutEntry[], private readonly file?: WatchedFile<readonly OptOutEntry[]>) {}

  /** The current list; throws SCOPE_UNAVAILABLE while the file is broken. */
  list(): OptOutList {
    const fromFile = this.file?.value();
    if (!this.cached || this.cached.from !== fromFile) this.cached = { list: new OptOutList([...this.inline, ...(fromFile ?? [])]), from: fromFile };
    return this.cached.list;
  }

  status(): FileStatus {
    return this.file?.status() ?? { ok: true };
  }
}

const set = (v: readonly string[] | undefined): ReadonlySet<string> | undefined => (v === undefined ? undefined : new Set(v));

export class ClientScope {
  private cached: { rules: ScopeRules; from: StudyListSource | undefined } | undefined;

  constructor(
    private readonly settings: ScopeSettings,
    private readonly optOutSource: OptOutSource,
    private readonly file?: WatchedFile<StudyListSource>,
  ) {}

  get window(): ScopeSettings['window'] {
    return this.settings.window;
  }

  /** The current rules; throws SCOPE_UNAVAILABLE while the allow-list file is broken. */
  rules(): ScopeRules {
    const fromFile = this.file?.value();
    if (this.cached && this.cached.from === fromFile) return this.cached.rules;
    const s = this.settings;
    const listed = s.studies !== undefined || s.accessionNumbers !== undefined || this.file !== undefined;
    const rules: ScopeRules = {
      ...(listed ? {
        studies: new Set([...(s.studies ?? []), ...(fromFile?.studies ?? [])]),
        accessions: new Set([...(s.accessionNumbers ?? []), ...(fromFile?.accessionNumbers ?? [])]),
      } : {}),
      studyDate: s.studyDate,
      modalities: set(s.modalities),
      bodyParts: set(s.bodyParts),
      sopClasses: set(s.sopClasses),
    };
    this.cached = { rules, from: fromFile };
    return rules;
  }

  optOut(): OptOutList {
    return this.optOutSource.list();
  }

  /** True when nothing restricts this client (no rules, empty opt-out list): no checks needed. */
  unrestricted(): boolean {
    const r = this.rules();
    return !hasStudyRules(r) && !hasSeriesRules(r) && !hasInstanceRules(r) && this.optOut().size === 0;
  }

  status(): FileStatus {
    const own = this.file?.status() ?? { ok: true };
    return own.ok ? this.optOutSource.status() : own;
  }
}

/**
 * An instance admitted on its own header, as the gateway's retrieves and the deid command admit
 * it: outside the scope it is not found (notVisible, NOT_FOUND with the out-of-scope reason);
 * withheld by the pixel policy, PIXELS_WITHHELD; otherwise the mask to apply, or the risk an
 * explicit policy allows.
 */
export function admitInstance(scope: ClientScope, pixels: PixelPolicy, attr: Attrs, faces?: FaceLookup, text?: TextLookup): ReturnType<typeof admitPixels> {
  if (!scope.unrestricted()) { const d = recordDenial(scope.rules(), scope.optOut(), attr); if (d) throw notVisible(d); }
  return admitPixels(attr, pixels, faces, text);
}
