/**
 * The pseudonym store as the gateway uses it: records are taken synchronously (the engine
 * records while it de-identifies), lookups are batched and asynchronous (a request's
 * pseudonyms are resolved before its handler runs), and flush() makes every recorded pair
 * durable before a response's last byte. Two implementations: the embedded SQLite store
 * (store.ts) and PostgreSQL (postgres.ts), which replicas share.
 */
import type { PseudonymKind, PseudonymStore } from './store.js';

export interface GatewayPseudonymStore {
  record(clientId: string, kind: PseudonymKind, pseudonym: string, original: string): void;
  /** Originals of the pseudonyms this client knows (unknown ones are absent). */
  lookupMany(clientId: string, kind: PseudonymKind, pseudonyms: readonly string[]): Promise<ReadonlyMap<string, string>>;
  flush(): Promise<void>;
  /** For /readyz; never throws. */
  healthy(): boolean;
  close(): Promise<void>;
}

/** The embedded SQLite store behind the gateway's interface. */
export function fromSqlite(store: PseudonymStore): GatewayPseudonymStore & { readonly sqlite: PseudonymStore } {
  return {
    sqlite: store,
    record: (c, k, p, o) => store.record(c, k, p, o),
    async lookupMany(c, k, ps) {
      const out = new Map<string, string>();
      for (const p of ps) { const o = store.lookup(c, k, p); if (o !== undefined) out.set(p, o); }
      return out;
    },
    async flush() { store.flush(); },
    healthy: () => store.healthy(),
    async close() { store.close(); },
  };
}
