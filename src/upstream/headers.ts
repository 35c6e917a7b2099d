/**
 * Header hygiene as pure functions (ARCHITECTURE rule 8).
 *
 * Upstream: only what the PACS needs to answer (Accept), never the client's Host,
 * Forwarded or X-Forwarded-* (Orthanc writes them into RetrieveURL and BulkDataURI), never
 * the client's credentials or cookies. Downstream: the body is always rewritten, so no
 * upstream Content-Length, Content-Encoding, ETag, Last-Modified or Content-Location passes;
 * de-identified bodies are not cached anywhere.
 */

/** Hop-by-hop headers (RFC 9110 7.6.1) and ones that describe the upstream's body. */
const DROP_DOWNSTREAM = new Set([
  'connection', 'keep-alive', 'proxy-authenticate', 'proxy-authorization', 'te', 'trailer', 'transfer-encoding',
  'upgrade', 'content-length', 'content-encoding', 'etag', 'last-modified', 'content-location', 'location',
  'server', 'set-cookie', 'www-authenticate', 'x-powered-by', 'date', 'vary', 'cache-control', 'expires', 'age',
]);

/** Builds the upstream request headers from a whitelist; nothing else of the client passes. */
export function upstreamHeaders(accept: string): Record<string, string> {
  return { accept, 'user-agent': 'deid-gateway' };
}

/**
 * The headers the gateway sends with a de-identified body. Only the content type comes from
 * the gateway's own decision; nothing of the upstream response is copied.
 */
export function downstreamHeaders(contentType: string, extra: Record<string, string> = {}): Record<string, string> {
  return { 'content-type': contentType, 'cache-control': 'no-store', 'x-content-type-options': 'nosniff', ...extra };
}

/** True for headers that must never be copied from an upstream response. */
export function isDroppedDownstream(name: string): boolean {
  return DROP_DOWNSTREAM.has(name.toLowerCase());
}
