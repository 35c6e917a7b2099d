/**
 * Timing side channel of shifted-date queries (issue 15), measured as the attack measures it:
 * a client with Retain Longitudinal Modified Dates queries `StudyDate=x` on its shifted time
 * line, and compares how long answers take. A window that holds the original date of one of its
 * own studies (which does not match x), or the date of an opted-out patient's study on its
 * allow-list, must not answer more slowly than an empty one.
 *
 *   npm run bench:timing            (BENCH_TIMING_N requests per case, default 150: at 40 a 6–10 ms query's gap moved by ±0.6 ms from run to run)
 *
 * Two clients with the same shift range and the same studies (the cohort fixture in a real
 * Orthanc, an opted-out patient's study on the list): `listed` is scoped by an allow-list of
 * study UIDs (the gateway then asks the PACS the same whatever x is), `filtered` by a study
 * date range (StudyDate matched on the client's cohort index, src/http/qido.ts). The cases are
 * interleaved (rotated each round); the table shows each case's median and its gap to the empty window's (target:
 * at most 0.5 ms, about the noise of a loopback request).
 *
 * A second table (issue 15, hidden records): a client scoped by filters the PACS cannot match
 * (two body parts) asks for records only hidden studies hold (a head MR study of
 * BENCH_TIMING_HIDDEN instances, default 300; the opted-out patient's study by UID) and, in
 * alternation, for records nobody holds: both answer [] and should take as long (≤ 0.5 ms).
 * `open` has no scope rules: only the opt-out list hides an NM study of HIDDEN instances.
 * Writes bench/out/timing.json.
 */
import { createHash } from 'node:crypto';
import { mkdirSync, mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import winston from 'winston';
import { validateConfig } from '../src/config/schema.js';
import { buildParts, startGateway } from '../src/main.js';
import { encodeInstance, generateCohort, SOP_MR } from '../test/fixtures/cohort.js';
import { startOrthanc } from '../test/helpers/orthanc.js';
import { projectRoot } from './common.js';

const N = Number(process.env.BENCH_TIMING_N ?? '150') || 150;
/** Instances of a study no client below may see (MR of the head), for the hidden-records case. */
const HIDDEN = Number(process.env.BENCH_TIMING_HIDDEN ?? '300') || 300;
const TARGET_MS = 0.5;
const MIN_DAYS = 10, MAX_DAYS = 400;

const sha = (t: string): string => createHash('sha256').update(t).digest('hex');
const med = (xs: readonly number[]): number => { const s = [...xs].sort((a, b) => a - b); return s[Math.floor(s.length / 2)]!; };
const addDays = (d: string, n: number): string => {
  const t = new Date(Date.UTC(+d.slice(0, 4), +d.slice(4, 6) - 1, +d.slice(6, 8)) + n * 86_400_000);
  return t.toISOString().slice(0, 10).replace(/-/g, '');
};

async function main(): Promise<void> {
  const root = projectRoot(import.meta.url);
  const cohort = generateCohort();
  const S = cohort.studies;
  const optedOut = S[3]!; // MRN-70003 of HOSP-B, opted out below
  const own = S[0]!;
  const orthanc = await startOrthanc();
  const dir = mkdtempSync(join(tmpdir(), 'bench-timing-'));
  try {
    await orthanc.upload([...cohort.files]);
    // Hidden records: one head MR study of HIDDEN instances, outside the 'parts' client's scope.
    const hiddenStudy = `${S[0]!.uid}.77`;
    const hp = { id: 'MRN-HIDDEN-1', issuer: 'HOSP-A', name: 'HIDDEN^PATIENT' };
    await orthanc.upload(Array.from({ length: HIDDEN }, (_, i) => encodeInstance({ p: hp, studyUid: hiddenStudy, accession: 'ACC-HIDDEN', date: '20200707', seriesUid: `${hiddenStudy}.1`, seriesNumber: 1, modality: 'MR', bodyPart: 'HEAD', sopClass: SOP_MR, sop: `${hiddenStudy}.1.${i + 1}`, number: i + 1 })));
    // A hidden series inside a study the 'parts' clients see (S0, a CHEST study): 100 PT
    // instances of the head, for the queries inside one study.
    const hiddenInOwn = `${own.uid}.78`;
    await orthanc.upload(Array.from({ length: 100 }, (_, i) => encodeInstance({ p: { id: own.patientId, issuer: own.issuer, name: own.patientName }, studyUid: own.uid, accession: own.accession, date: own.date, seriesUid: hiddenInOwn, seriesNumber: 78, modality: 'PT', bodyPart: 'HEAD', sopClass: SOP_MR, sop: `${hiddenInOwn}.${i + 1}`, number: i + 1 })));
    // An opted-out patient's study of a modality nobody else has (NM, HIDDEN instances), for
    // the client with no scope rules: only the opt-out list hides it from that client.
    const optedOutNm = `${S[0]!.uid}.79`;
    const op = { id: 'MRN-OPTOUT-NM', issuer: 'HOSP-A', name: 'OPTEDOUT^NM' };
    await orthanc.upload(Array.from({ length: HIDDEN }, (_, i) => encodeInstance({ p: op, studyUid: optedOutNm, accession: 'ACC-OPTOUT-NM', date: '20200808', seriesUid: `${optedOutNm}.1`, seriesNumber: 1, modality: 'NM', bodyPart: 'CHEST', sopClass: SOP_MR, sop: `${optedOutNm}.1.${i + 1}`, number: i + 1 })));
    const studies = [S[0]!.uid, S[2]!.uid, optedOut.uid, S[5]!.uid];
    const cfg = validateConfig({
      server: { host: '127.0.0.1', port: 0 },
      upstream: { url: orthanc.dicomWebUrl },
      state: { dir },
      optOut: { patients: [{ id: optedOut.patientId, issuer: optedOut.issuer }, { id: op.id, issuer: op.issuer }] },
      clients: ['listed', 'filtered', 'parts', 'parts-uids', 'open'].map((id) => ({
        id, apiKeySha256: sha(`${id}-token-0123456789`),
        // parts-uids: as parts, with the original UIDs (so that a study's UID can be put in a path).
        profile: { options: ['retainLongitudinalModifiedDates', ...(id === 'parts-uids' ? ['retainUIDs'] : [])], dateShift: { minDays: MIN_DAYS, maxDays: MAX_DAYS } },
        // parts: filters the PACS cannot match (two body parts); the opted-out study is a CHEST one.
        // open: no scope rules at all (the whole PACS but the opt-out list).
        ...(id === 'open' ? {} : { scope: id === 'listed' ? { studies } : id.startsWith('parts') ? { bodyParts: ['CHEST', 'ABDOMEN'] } : { studyDate: { from: '1900-01-01', until: '2100-12-31' } } }),
      })),
    }, join(dir, 'gateway.yaml'));
    const gw = await startGateway(cfg, { ...buildParts(cfg), log: winston.createLogger({ transports: [new winston.transports.Console({ silent: true })] }) });
    const get = async (client: string, x: string): Promise<{ ms: number; rows: number }> => {
      const t0 = performance.now();
      const r = await fetch(`${gw.url}/dicom-web/studies?StudyDate=${x}`, { headers: { authorization: `Bearer ${client}-token-0123456789` } });
      const body = await r.json() as unknown[];
      if (r.status !== 200) throw new Error(`${client} StudyDate=${x}: HTTP ${r.status}`);
      return { ms: performance.now() - t0, rows: body.length };
    };
    // The own study's shifted date, to choose an x whose window holds its original date but
    // which does not match it: x = original - 200 days (offset != 200 for this study, checked).
    const shiftedOwn = async (client: string): Promise<string> => {
      const r = await fetch(`${gw.url}/dicom-web/studies?includefield=00080020`, { headers: { authorization: `Bearer ${client}-token-0123456789` } });
      const rows = await r.json() as Record<string, { Value?: unknown[] }>[];
      // The study whose shifted date lies 10–400 days before its original: the own study S0.
      const dates = rows.map((o) => String(o['00080020']?.Value?.[0] ?? ''));
      const d = dates.find((s) => s <= addDays(own.date, -MIN_DAYS) && s >= addDays(own.date, -MAX_DAYS));
      if (!d) throw new Error('the own study was not found');
      return d;
    };
    const result: Record<string, unknown> = { date: new Date().toISOString(), n: N };
    const lines: string[] = [];
    for (const client of ['listed', 'filtered']) {
      const shifted = await shiftedOwn(client);
      let xOwn = addDays(own.date, -200);
      if (xOwn === shifted) xOwn = addDays(own.date, -201);
      const cases: [string, string][] = [
        ['empty window', '19000101'],
        ['window holds an own study\'s original date', xOwn],
        ['window holds an opted-out study\'s date', addDays(optedOut.date, -200)],
      ];
      for (const [, x] of cases) for (let i = 0; i < 5; i++) await get(client, x); // warm-up
      const times = cases.map(() => [] as number[]);
      const rowsSeen = cases.map(() => 0);
      for (let i = 0; i < N; i++) {
        // Rotated each round, so that no case always comes first.
        for (let j = 0; j < cases.length; j++) {
          const k = (i + j) % cases.length;
          const r = await get(client, cases[k]![1]);
          times[k]!.push(r.ms);
          rowsSeen[k] = r.rows;
        }
      }
      const base = med(times[0]!);
      const out: Record<string, unknown> = {};
      cases.forEach(([label], k) => {
        const m = med(times[k]!);
        out[label] = { medianMs: Number(m.toFixed(3)), gapMs: Number((m - base).toFixed(3)), rows: rowsSeen[k] };
        lines.push(`| ${client} | ${label} | ${rowsSeen[k]} | ${m.toFixed(2)} ms | ${k === 0 ? '—' : `${(m - base) >= 0 ? '+' : ''}${(m - base).toFixed(2)} ms`} | ${k === 0 ? '' : Math.abs(m - base) <= TARGET_MS ? 'MET' : 'MISSED'} |`);
      });
      result[client] = out;
    }
    // Hidden records (issue 15, finding 2): a client scoped by filters asks for records that only
    // studies it may not see hold (the head MR study of HIDDEN instances, and the opted-out
    // patient's study by UID), and for records nobody has. Both answer [] and must take as long.
    const hiddenLines: string[] = [];
    {
      const timed = async (client: string, path: string): Promise<{ ms: number; rows: number }> => {
        const t0 = performance.now();
        const r = await fetch(`${gw.url}/dicom-web/${path}`, { headers: { authorization: `Bearer ${client}-token-0123456789` } });
        const body = await r.json() as unknown[];
        if (r.status !== 200) throw new Error(`${client} ${path}: HTTP ${r.status}`);
        return { ms: performance.now() - t0, rows: body.length };
      };
      const unknownUid = '1.2.826.0.1.3680043.9.7433.99.1';
      const pairs: [string, string, string, string][] = [
        ['parts', `instances?Modality=MR (${HIDDEN} hidden instances match)`, 'instances?Modality=MR', 'instances?Modality=XA'],
        // An instance-level key: Orthanc may match it over every instance that has it first.
        ['parts', `instances?SOPClassUID=<MR Image Storage> (${HIDDEN} hidden instances match)`, `instances?SOPClassUID=${SOP_MR}`, 'instances?SOPClassUID=1.2.840.10008.5.1.4.1.1.12.1'],
        ['parts', 'series?Modality=MR (hidden series match)', 'series?Modality=MR', 'series?Modality=XA'],
        ['parts', 'studies?StudyInstanceUID=<opted-out study>', `studies?StudyInstanceUID=${optedOut.uid}`, `studies?StudyInstanceUID=${unknownUid}`],
        // Inside a study the client sees: its hidden PT series (100 instances) matches the Modality.
        ['parts-uids', 'studies/{S0}/series?Modality=PT (a hidden series of a visible study matches)', `studies/${own.uid}/series?Modality=PT`, `studies/${own.uid}/series?Modality=XA`],
        ['parts-uids', 'studies/{S0}/instances?Modality=PT (its 100 hidden instances match)', `studies/${own.uid}/instances?Modality=PT`, `studies/${own.uid}/instances?Modality=XA`],
        // An allow-list the PACS matches: the opted-out study on the list costs the PACS one row.
        ['listed', 'studies?StudyInstanceUID=<opted-out study on its list>', `studies?StudyInstanceUID=${optedOut.uid}`, `studies?StudyInstanceUID=${unknownUid}`],
        // No scope rules: the opt-out list is the only thing that hides the NM study.
        ['open', 'studies?ModalitiesInStudy=NM (an opted-out study matches)', 'studies?ModalitiesInStudy=NM', 'studies?ModalitiesInStudy=XA'],
        ['open', 'series?Modality=NM (its series matches)', 'series?Modality=NM', 'series?Modality=XA'],
        ['open', `instances?Modality=NM (its ${HIDDEN} instances match)`, 'instances?Modality=NM', 'instances?Modality=XA'],
      ];
      const out: Record<string, unknown> = {};
      for (const [client, label, hidden, none] of pairs) {
        const timed1 = (p: string): Promise<{ ms: number; rows: number }> => timed(client, p);
        for (let i = 0; i < 5; i++) { await timed1(hidden); await timed1(none); } // warm-up (and the cohort index)
        const th: number[] = [];
        const tn: number[] = [];
        let rows = 0;
        for (let i = 0; i < N; i++) {
          const order = i % 2 ? [hidden, none] : [none, hidden];
          for (const p of order) { const r = await timed1(p); (p === hidden ? th : tn).push(r.ms); rows += r.rows; }
        }
        const gap = med(th) - med(tn);
        out[`${client}: ${label}`] = { hiddenMedianMs: Number(med(th).toFixed(3)), noneMedianMs: Number(med(tn).toFixed(3)), gapMs: Number(gap.toFixed(3)), rows };
        hiddenLines.push(`| ${client} | ${label} | ${rows} | ${med(th).toFixed(2)} ms | ${med(tn).toFixed(2)} ms | ${gap >= 0 ? '+' : ''}${gap.toFixed(2)} ms | ${Math.abs(gap) <= TARGET_MS && rows === 0 ? 'MET' : 'MISSED'} |`);
      }
      result.hidden = out;
    }
    console.log(`shifted-date QIDO timing, ${N} requests per case, interleaved (medians)\n`);
    console.log('| client | StudyDate=x, where the window [x+min, x+max] | rows | median | gap to empty | <= 0.5 ms |');
    console.log('|---|---|---|---|---|---|');
    for (const l of lines) console.log(l);
    console.log(`\nhidden records (parts, parts-uids: two body parts; listed: an allow-list; open: no scope rules, an opted-out study), ${N} requests per case, alternated (medians)\n`);
    console.log('| client | asked (only hidden records match) | rows | median | same query, nothing matches anywhere | gap | <= 0.5 ms, no rows |');
    console.log('|---|---|---|---|---|---|---|');
    for (const l of hiddenLines) console.log(l);
    await gw.close();
    mkdirSync(join(root, 'bench/out'), { recursive: true });
    writeFileSync(join(root, 'bench/out/timing.json'), `${JSON.stringify(result, null, 2)}\n`);
  } finally {
    await orthanc.stop();
  }
}

main().catch((e: unknown) => { console.error(e); process.exit(1); });
