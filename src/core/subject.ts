/**
 * TLS certificate subjects in one canonical form, for mutual TLS client authentication
 * (configuration and peer certificates are compared in this form).
 */

/**
 * A certificate subject in one canonical form: attributes sorted by name, "NAME=value" joined
 * by commas, e.g. "CN=acme-ai,O=Acme AI". Configuration and peer certificates are compared
 * in this form.
 */
export function normalizeSubject(subject: Readonly<Record<string, string | string[] | undefined>> | string): string {
  const pairs: [string, string][] = [];
  if (typeof subject === 'string') {
    for (const part of subject.split(/\s*[,/]\s*/).filter(Boolean)) {
      const i = part.indexOf('=');
      if (i > 0) pairs.push([part.slice(0, i).trim().toUpperCase(), part.slice(i + 1).trim()]);
    }
  } else {
    for (const [k, v] of Object.entries(subject)) for (const x of Array.isArray(v) ? v : v === undefined ? [] : [v]) pairs.push([k.toUpperCase(), x]);
  }
  return pairs.sort((a, b) => a[0].localeCompare(b[0]) || a[1].localeCompare(b[1])).map(([k, v]) => `${k}=${v}`).join(',');
}

