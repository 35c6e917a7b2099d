/**
 * `deid-gateway audit report`: one self-contained HTML page (inline CSS and SVG, no script, no
 * external resource) about one client over a period, for a security reviewer:
 * studies / instances / bytes per day (a chart), denials by reason, top studies, and flagged
 * anomalies. Computed from the audit trail only; patients appear as keyed references.
 *
 * Anomaly rules (thresholds are options; defaults below):
 *  - enumeration: at least `burst404` "not found" answers (404, or a QIDO by Study, Series or SOP
 *    Instance UID that found nothing) within `burstWindowS` seconds — a client walking UIDs or
 *    probing what exists;
 *  - sweeping query: a QIDO with no match key or a wildcard key that returned at least
 *    `sweepRows` rows (the trail records the rows returned, not the limit asked for);
 *  - volume: a day whose bytes exceed `volumeFactor` × the median of the client's other days
 *    with traffic, in the period and in the `baselineDays` before it (the client's usual; needs
 *    at least 3 such days);
 *  - outside the agreement: any request refused for the access window.
 */
import type { AuditEntry } from './read.js';

export interface ReportOptions {
  readonly client: string;
  readonly since: number;
  readonly until: number;
  readonly generatedAt?: number;
  readonly integrity?: { readonly ok: boolean; readonly text: string };
  readonly burst404?: number;
  readonly burstWindowS?: number;
  readonly sweepRows?: number;
  readonly volumeFactor?: number;
  /** Days before `since` whose traffic counts as the client's usual volume (default 30). */
  readonly baselineDays?: number;
}

export interface Anomaly {
  readonly kind: 'enumeration' | 'sweeping-query' | 'volume' | 'outside-agreement';
  readonly time: string;
  readonly detail: string;
}

export interface DayFigures { day: string; requests: number; studies: number; instances: number; bytes: number; denied: number }

export interface ReportData {
  readonly client: string;
  readonly days: readonly DayFigures[];
  readonly totals: { requests: number; denied: number; failed: number; studies: number; patients: number; instances: number; bytes: number };
  readonly denials: readonly { reason: string; count: number }[];
  readonly topStudies: readonly { study: string; patientRef: string; instances: number; requests: number }[];
  readonly anomalies: readonly Anomaly[];
  readonly policies: readonly string[];
}

const esc = (s: unknown): string => String(s).replace(/[&<>"']/g, (c) => ({ '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;' }[c]!));
const mb = (n: number): string => (n >= 1e9 ? `${(n / 1e9).toFixed(2)} GB` : n >= 1e6 ? `${(n / 1e6).toFixed(1)} MB` : n >= 1e3 ? `${(n / 1e3).toFixed(1)} kB` : `${n} B`);

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  const m = Math.floor(s.length / 2);
  return s.length % 2 ? s[m]! : (s[m - 1]! + s[m]!) / 2;
}

/** The figures of a report (also for tests and `--format json`). */
export function reportData(entries: Iterable<AuditEntry>, o: ReportOptions): ReportData {
  const burst404 = o.burst404 ?? 20;
  const windowMs = (o.burstWindowS ?? 60) * 1000;
  const sweepRows = o.sweepRows ?? 100;
  const factor = o.volumeFactor ?? 5;
  const days = new Map<string, DayFigures & { studySet: Set<string> }>();
  const day = (t: string): DayFigures & { studySet: Set<string> } => {
    const d = t.slice(0, 10);
    let f = days.get(d);
    if (!f) { f = { day: d, requests: 0, studies: 0, instances: 0, bytes: 0, denied: 0, studySet: new Set() }; days.set(d, f); }
    return f;
  };
  const totals = { requests: 0, denied: 0, failed: 0, studies: 0, patients: 0, instances: 0, bytes: 0 };
  const denials = new Map<string, number>();
  const studies = new Map<string, { study: string; patientRef: string; instances: number; requests: number }>();
  const patients = new Set<string>();
  const policies = new Set<string>();
  const anomalies: Anomaly[] = [];
  const notFound: number[] = [];
  let lastBurstEnd = -Infinity;
  const baselineFrom = o.since - (o.baselineDays ?? 30) * 86_400_000;
  /** Bytes per day before the period: the client's usual volume, for the volume rule only. */
  const baseline = new Map<string, number>();
  for (const e of entries) {
    if (e.client !== o.client || !e.time) continue;
    const t = Date.parse(e.time);
    if (t >= baselineFrom && t < o.since && e.type === 'request') baseline.set(e.time.slice(0, 10), (baseline.get(e.time.slice(0, 10)) ?? 0) + (e.bytes ?? 0));
    if (!(t >= o.since && t < o.until)) continue;
    if (e.type === 'request') {
      const f = day(e.time);
      f.requests++;
      totals.requests++;
      f.bytes += e.bytes ?? 0;
      totals.bytes += e.bytes ?? 0;
      f.instances += e.instances ?? 0;
      totals.instances += e.instances ?? 0;
      if (e.policyHash) policies.add(e.policyHash);
      if (e.outcome === 'denied') { f.denied++; totals.denied++; }
      if (e.outcome === 'failed') totals.failed++;
      if (e.outcome === 'denied' || e.code === 'NOT_FOUND') {
        const reason = e.reason ?? e.code ?? 'unknown';
        denials.set(reason, (denials.get(reason) ?? 0) + 1);
      }
      // "Not found": a 404, or a query by UID that found nothing (the same probe through QIDO).
      const uidMiss = e.status === 200 && !!e.query && (e.results ?? 0) === 0 && e.query.keys.some((k) => /^(StudyInstanceUID|SeriesInstanceUID|SOPInstanceUID)$/.test(k));
      if (e.status === 404 || uidMiss) {
        notFound.push(t);
        while (notFound.length && notFound[0]! < t - windowMs) notFound.shift();
        if (notFound.length >= burst404 && notFound[0]! > lastBurstEnd) {
          anomalies.push({ kind: 'enumeration', time: e.time, detail: `${notFound.length} "not found" answers within ${windowMs / 1000} s (possible UID enumeration or probing)` });
          lastBurstEnd = t;
        }
      }
      if (e.query && (e.results ?? 0) > 0 && (e.query.keys.length === 0 || e.query.wildcard) && (e.results ?? 0) >= sweepRows) {
        anomalies.push({ kind: 'sweeping-query', time: e.time, detail: `${e.query.level}-level query ${e.query.keys.length ? `with wildcard keys (${e.query.keys.join(', ')})` : 'with no match key'} returned ${e.results} rows` });
      }
      if (e.reason?.startsWith('access-window:')) {
        anomalies.push({ kind: 'outside-agreement', time: e.time, detail: `request ${e.reason === 'access-window:expired' ? 'after the agreement ended' : 'before the agreement started'} (${e.route ?? 'route unknown'})` });
      }
    } else if (e.type === 'study' && e.study) {
      day(e.time).studySet.add(e.study);
      const s = studies.get(e.study) ?? { study: e.study, patientRef: e.patientRef ?? '—', instances: 0, requests: 0 };
      s.instances += e.instances ?? 0;
      s.requests++;
      studies.set(e.study, s);
      if (e.patientRef) patients.add(e.patientRef);
    }
  }
  const dayList = [...days.values()].sort((a, b) => a.day.localeCompare(b.day)).map(({ studySet, ...f }) => ({ ...f, studies: studySet.size }));
  for (const d of dayList) {
    const others = [...dayList.filter((x) => x !== d && x.bytes > 0).map((x) => x.bytes), ...[...baseline.values()].filter((b) => b > 0)];
    if (others.length >= 3 && d.bytes > factor * median(others)) {
      anomalies.push({ kind: 'volume', time: `${d.day}T00:00:00.000Z`, detail: `${mb(d.bytes)} on ${d.day}, more than ${factor}× the client's median day (${mb(median(others))} over ${others.length} days with traffic)` });
    }
  }
  totals.studies = studies.size;
  totals.patients = patients.size;
  anomalies.sort((a, b) => a.time.localeCompare(b.time));
  return {
    client: o.client, days: dayList, totals,
    denials: [...denials].map(([reason, count]) => ({ reason, count })).sort((a, b) => b.count - a.count),
    topStudies: [...studies.values()].sort((a, b) => b.instances - a.instances || b.requests - a.requests).slice(0, 20),
    anomalies, policies: [...policies],
  };
}

/** The three figures of the daily chart, each a panel of its own with its own scale. */
const PANELS = [
  { key: 'studies', label: 'studies released per day', colour: '#2f6fb3', value: (d: DayFigures): number => d.studies, text: (n: number): string => String(n) },
  { key: 'instances', label: 'instances released per day', colour: '#6b3fa0', value: (d: DayFigures): number => d.instances, text: (n: number): string => String(n) },
  { key: 'bytes', label: 'bytes sent per day', colour: '#b35c00', value: (d: DayFigures): number => d.bytes, text: mb },
] as const;

function chart(days: readonly DayFigures[]): string {
  if (days.length === 0) return '<p class="muted">No traffic in this period.</p>';
  return PANELS.map((panel) => {
    const w = 720, h = 160, pad = 34;
    const max = Math.max(1, ...days.map(panel.value));
    const bw = Math.max(2, Math.min(40, (w - pad * 2) / days.length - 4));
    const bars = days.map((d, i) => {
      const x = pad + i * ((w - pad * 2) / days.length) + 2;
      const bh = Math.round((panel.value(d) / max) * (h - pad * 2));
      return `<g><rect x="${x.toFixed(1)}" y="${h - pad - bh}" width="${bw.toFixed(1)}" height="${bh}" fill="${panel.colour}"><title>${esc(d.day)}: ${d.studies} studies, ${d.instances} instances, ${esc(mb(d.bytes))}</title></rect>`
        + (days.length <= 31 ? `<text x="${(x + bw / 2).toFixed(1)}" y="${h - pad + 14}" font-size="9" text-anchor="middle">${esc(d.day.slice(5))}</text>` : '') + '</g>';
    }).join('');
    return `<svg xmlns="http://www.w3.org/2000/svg" width="${w}" height="${h}" role="img" aria-label="${panel.label}" data-figure="${panel.key}">`
      + `<line x1="${pad}" y1="${h - pad}" x2="${w - pad}" y2="${h - pad}" stroke="#999"/><text x="${pad}" y="${pad - 12}" font-size="11">${panel.label} (max ${esc(panel.text(max))})</text>${bars}</svg>`;
  }).join('\n');
}

/** The report as one HTML document. */
export function renderReport(data: ReportData, o: ReportOptions): string {
  const t = data.totals;
  const rows = (cells: readonly unknown[][]): string => cells.map((c) => `<tr>${c.map((x) => `<td>${esc(x)}</td>`).join('')}</tr>`).join('');
  const integrity = o.integrity ? `<p class="${o.integrity.ok ? 'ok' : 'bad'}">Audit trail integrity: ${esc(o.integrity.text)}</p>` : '';
  return `<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Audit report: ${esc(data.client)}</title>
<meta http-equiv="Content-Security-Policy" content="default-src 'none'; style-src 'unsafe-inline'; img-src data:">
<style>
body{font:14px/1.45 system-ui,sans-serif;margin:2rem auto;max-width:60rem;color:#222;padding:0 1rem}
h1{font-size:1.5rem;margin-bottom:.2rem}h2{font-size:1.1rem;margin-top:2rem;border-bottom:1px solid #ddd}
table{border-collapse:collapse;width:100%}td,th{border-bottom:1px solid #eee;padding:.3rem .5rem;text-align:left;font-variant-numeric:tabular-nums}
th{background:#f6f6f6}.muted{color:#777}.ok{color:#1a7f37}.bad{color:#b42318;font-weight:600}
.cards{display:flex;gap:1rem;flex-wrap:wrap}.card{border:1px solid #ddd;border-radius:6px;padding:.6rem 1rem;min-width:8rem}
.card b{display:block;font-size:1.3rem}.anomaly{color:#b42318}
</style></head><body>
<h1>Audit report: ${esc(data.client)}</h1>
<p class="muted">Period ${esc(new Date(o.since).toISOString())} to ${esc(new Date(o.until).toISOString())}; generated ${esc(new Date(o.generatedAt ?? Date.now()).toISOString())} by deid-gateway from the audit trail. Patients appear as keyed references (P-…): <code>deid-gateway audit query --patient ID</code> finds a patient by original ID.</p>
${integrity}
<div class="cards">
<div class="card"><b>${t.requests}</b>requests</div><div class="card"><b>${t.studies}</b>studies released</div>
<div class="card"><b>${t.patients}</b>patients</div><div class="card"><b>${t.instances}</b>instances</div>
<div class="card"><b>${esc(mb(t.bytes))}</b>sent</div><div class="card"><b>${t.denied}</b>denied</div><div class="card"><b>${t.failed}</b>failed</div>
<div class="card"><b class="${data.anomalies.length ? 'anomaly' : ''}">${data.anomalies.length}</b>anomalies</div>
</div>
<h2>Released per day</h2>
${chart(data.days)}
<table><thead><tr><th>day</th><th>requests</th><th>studies</th><th>instances</th><th>bytes</th><th>denied</th></tr></thead><tbody>
${rows(data.days.map((d) => [d.day, d.requests, d.studies, d.instances, mb(d.bytes), d.denied]))}
</tbody></table>
<h2>Anomalies</h2>
${data.anomalies.length ? `<table><thead><tr><th>time</th><th>kind</th><th>detail</th></tr></thead><tbody>${rows(data.anomalies.map((a) => [a.time, a.kind, a.detail]))}</tbody></table>` : '<p class="ok">None flagged.</p>'}
<h2>Denials by reason</h2>
${data.denials.length ? `<table><thead><tr><th>reason</th><th>requests</th></tr></thead><tbody>${rows(data.denials.map((d) => [d.reason, d.count]))}</tbody></table>` : '<p class="muted">No denials.</p>'}
<h2>Top studies</h2>
${data.topStudies.length ? `<table><thead><tr><th>Study Instance UID (original)</th><th>patient</th><th>instances</th><th>requests</th></tr></thead><tbody>${rows(data.topStudies.map((s) => [s.study, s.patientRef, s.instances, s.requests]))}</tbody></table>` : '<p class="muted">No study released.</p>'}
<h2>Policies</h2>
<p>${data.policies.length ? data.policies.map((p) => `<code>${esc(p)}</code>`).join('<br>') : '<span class="muted">—</span>'}</p>
</body></html>
`;
}
