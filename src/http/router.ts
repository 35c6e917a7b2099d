/**
 * The gateway's routes, matched as express 5 matched them (the gateway used express until
 * session 14; docs/decisions.md): literal segments case-insensitively, one trailing slash
 * optional, `:name` one segment, `*name` the rest of the path (slashes included, possibly
 * empty). Parameters are percent-decoded; a malformed escape is a `URIError`, which the app
 * answers as an unknown resource. Matching runs on the path as sent (not decoded), so
 * `%73tudies` is not `studies`.
 */

export type Params = Record<string, string>;

export interface Route<H> {
  readonly re: RegExp;
  readonly keys: readonly string[];
  readonly handler: H;
}

const escape = (s: string): string => s.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');

/** Compiles `/a/:b/c/*d` (a `*name` segment only last). */
export function compile(pattern: string): { re: RegExp; keys: string[] } {
  const keys: string[] = [];
  let src = '';
  for (const seg of pattern.split('/').slice(1)) {
    if (seg.startsWith(':')) { keys.push(seg.slice(1)); src += '/([^/]+)'; continue; }
    if (seg.startsWith('*')) { keys.push(seg.slice(1)); src += '(?:/(.*))?'; continue; }
    src += `/${escape(seg)}`;
  }
  return { re: new RegExp(`^${src}/?$`, 'i'), keys };
}

export class Router<H> {
  private readonly routes: Route<H>[] = [];

  add(pattern: string, handler: H): void {
    this.routes.push({ ...compile(pattern), handler });
  }

  /** The first route matching `path`, with its decoded parameters; throws URIError on a malformed escape. */
  match(path: string): { handler: H; params: Params } | undefined {
    for (const r of this.routes) {
      const m = r.re.exec(path);
      if (!m) continue;
      const params: Params = {};
      r.keys.forEach((k, i) => { const v = m[i + 1]; params[k] = v === undefined ? '' : decodeURIComponent(v); });
      return { handler: r.handler, params };
    }
    return undefined;
  }
}

/** Whether `path` is `prefix` or below it (`/dicom-web`, `/dicom-web/…`), case-insensitively. */
export function under(path: string, prefix: string): boolean {
  const p = path.toLowerCase();
  return p === prefix || p.startsWith(`${prefix}/`);
}

/**
 * The path of a request target, as sent (nothing resolved or decoded, as express's parseurl):
 * origin form (`/a?b`), or absolute form (`http://h/a?b`) without its scheme and authority;
 * the query and a fragment are not part of it. Undefined for anything else (`*`).
 */
export function pathOf(url: string): string | undefined {
  let rest = url;
  if (!url.startsWith('/')) {
    const m = /^https?:\/\/[^/?#]*/i.exec(url);
    if (!m) return undefined;
    rest = url.slice(m[0].length) || '/';
    if (!rest.startsWith('/')) return undefined;
  }
  const end = rest.search(/[?#]/);
  return end < 0 ? rest : rest.slice(0, end);
}
