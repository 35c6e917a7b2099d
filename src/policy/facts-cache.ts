/**
 * What the gateway knows about instances' pixels, by original UID, so that a retrieve, frames
 * or bulk request does not make the PACS read every file of a study again (Orthanc 1.10 needs
 * 0.3–0.5 s for an instance-level query over 300 instances). Filled by the pixel-facts query,
 * by metadata responses (real clients fetch metadata before pixels) and by every instance
 * streamed. The in-stream check of each instance stays authoritative; the cache only spares
 * the query and feeds the Warning count, which is why its entries expire (default 10 minutes).
 */
import NodeCache from 'node-cache';
import type { PixelFacts } from './pixels.js';

export interface InstanceFacts extends PixelFacts {
  readonly rows?: string | undefined;
  readonly bitsAllocated?: string | undefined;
  readonly planarConfiguration?: string | undefined;
  readonly photometric?: string | undefined;
  /** Bit positions of overlays embedded in the pixel cells. */
  readonly overlayBits?: readonly number[] | undefined;
  /**
   * The instance's geometry and pixel module as the PACS's index returned them (DICOM JSON
   * attributes by tag), for the face provider: a classic image's position needs no metadata call.
   */
  readonly geometry?: Readonly<Record<string, unknown>> | undefined;
  /** Original values of the attributes the scope rules read (policy/scope.ts TAG), by tag. */
  readonly scope?: Readonly<Record<number, string>> | undefined;
}

export class FactsCache {
  private readonly cache: NodeCache;

  constructor(ttlSeconds = 600, maxKeys = 200_000) {
    // useClones false: values are frozen plain objects and arrays of strings.
    this.cache = new NodeCache({ stdTTL: ttlSeconds, checkperiod: Math.max(60, ttlSeconds / 2), useClones: false, maxKeys });
  }

  private set(key: string, value: unknown): void {
    try {
      this.cache.set(key, value);
    } catch {
      this.cache.flushAll(); // maxKeys reached: start again rather than grow
      this.cache.set(key, value);
    }
  }

  instance(sop: string): InstanceFacts | undefined {
    return this.cache.get<InstanceFacts>(`i:${sop}`);
  }

  putInstance(sop: string, facts: InstanceFacts): void {
    this.set(`i:${sop}`, Object.freeze({ ...facts }));
  }

  /** The facts of every instance of a study (or series), when all are known. */
  scope(study: string, series?: string): Map<string, InstanceFacts> | undefined {
    const sops = this.cache.get<readonly string[]>(series ? `se:${study}/${series}` : `s:${study}`);
    if (!sops) return undefined;
    const out = new Map<string, InstanceFacts>();
    for (const sop of sops) {
      const f = this.instance(sop);
      if (!f) return undefined;
      out.set(sop, f);
    }
    return out;
  }

  /** Records the complete list of instances of a study (or series) with their facts. */
  putScope(all: ReadonlyMap<string, InstanceFacts>, study: string, series?: string): void {
    for (const [sop, f] of all) this.putInstance(sop, f);
    this.set(series ? `se:${study}/${series}` : `s:${study}`, Object.freeze([...all.keys()]));
  }

  /** Any other PACS fact by key (scope lookups: a study's row, its series, a series' instances). */
  get<T>(key: string): T | undefined {
    return this.cache.get<T>(`x:${key}`);
  }

  put(key: string, value: unknown): void {
    this.set(`x:${key}`, Object.freeze(value));
  }

  close(): void {
    this.cache.close();
  }
}
