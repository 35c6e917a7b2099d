/**
 * TLS certificate subjects in one canonical form, for mutual TLS client authentication
 * (configuration and peer certificates are compared in this form).
 *
 * The configuration writes a subject as an RFC 4514 string ("CN=acme-ai,O=Acme AI"; a comma,
 * plus, equals sign or backslash inside a value is escaped with a backslash). A certificate's
 * subject arrives as (type, value) pairs. Both become the sorted pairs with every special
 * character of a value escaped, so a value that contains ",O=…" can never pose as a second
 * attribute, and "/" is an ordinary character.
 */

const escapeValue = (v: string): string => v.replace(/[\\,+=";<>]/g, (c) => `\\${c}`);

function canonical(pairs: [string, string][]): string {
  return pairs
    .map(([k, v]): [string, string] => [k.trim().toUpperCase(), v.trim()])
    .sort((a, b) => a[0].localeCompare(b[0]) || a[1].localeCompare(b[1]))
    .map(([k, v]) => `${k}=${escapeValue(v)}`)
    .join(',');
}

/** Splits an RFC 4514 string at unescaped commas and plus signs; undefined when malformed. */
export function parseSubject(text: string): [string, string][] | undefined {
  const pairs: [string, string][] = [];
  let key = '';
  let value = '';
  let inValue = false;
  for (let i = 0; i < text.length; i++) {
    const c = text[i]!;
    if (c === '\\') {
      const n = text[i + 1];
      if (n === undefined) return undefined;
      if (inValue) value += n; else key += n;
      i++;
      continue;
    }
    if (!inValue && c === '=') { inValue = true; continue; }
    if (c === ',' || c === '+') {
      if (!inValue || !key.trim()) return undefined;
      pairs.push([key, value]);
      key = '';
      value = '';
      inValue = false;
      continue;
    }
    if (inValue) value += c; else key += c;
  }
  if (!inValue || !key.trim()) return undefined;
  pairs.push([key, value]);
  return pairs.every(([k]) => /^[A-Za-z][A-Za-z0-9.-]*$/.test(k.trim())) ? pairs : undefined;
}

/** The canonical form of a configured subject string or of a certificate's subject object. */
export function normalizeSubject(subject: Readonly<Record<string, string | string[] | undefined>> | string): string {
  if (typeof subject === 'string') return canonical(parseSubject(subject) ?? []);
  const pairs: [string, string][] = [];
  for (const [k, v] of Object.entries(subject)) for (const x of Array.isArray(v) ? v : v === undefined ? [] : [v]) pairs.push([k, x]);
  return canonical(pairs);
}
