/**
 * Client authentication: `Authorization: Bearer <token>`, or HTTP Basic with the client id
 * as user name and the token as password (many DICOMweb tools only do Basic). The config
 * holds only SHA-256(token); comparisons are constant-time and look at every client, so the
 * time taken says nothing about which client or how much matched.
 */
import { createHash, timingSafeEqual } from 'node:crypto';
export { normalizeSubject } from '../core/subject.js';

export interface Authenticatable {
  readonly id: string;
  /** SHA-256 of the client's token; undefined for a client that authenticates by certificate only. */
  readonly tokenHash: Buffer | undefined;
  /** Normalized subject of the client's TLS certificate (mutual TLS), e.g. "CN=acme-ai,O=Acme". */
  readonly certificateSubject?: string | undefined;
}

const ZERO_HASH = Buffer.alloc(32);

/** The client a verified peer certificate names (mutual TLS), or undefined. */
export function authenticateCertificate<C extends Authenticatable>(subject: string | undefined, clients: readonly C[]): C | undefined {
  if (!subject) return undefined;
  return clients.find((c) => c.certificateSubject !== undefined && c.certificateSubject === subject);
}

function sha256(s: string): Buffer {
  return createHash('sha256').update(s, 'utf8').digest();
}

/** The client the header authenticates, or undefined. */
export function authenticate<C extends Authenticatable>(header: string | undefined, clients: readonly C[]): C | undefined {
  if (!header) return undefined;
  const m = /^(Bearer|Basic)\s+(\S+)\s*$/i.exec(header);
  if (!m) return undefined;
  let id: string | undefined;
  let token: string;
  if (m[1]!.toLowerCase() === 'bearer') {
    token = m[2]!;
  } else {
    const decoded = Buffer.from(m[2]!, 'base64').toString('utf8');
    const i = decoded.indexOf(':');
    if (i < 1) return undefined;
    id = decoded.slice(0, i);
    token = decoded.slice(i + 1);
  }
  if (token.length === 0 || token.length > 4096) return undefined;
  const h = sha256(token);
  let found: C | undefined;
  for (const c of clients) {
    const match = timingSafeEqual(h, c.tokenHash ?? ZERO_HASH) && c.tokenHash !== undefined;
    if (match && (id === undefined || id === c.id) && !found) found = c;
  }
  return found;
}
