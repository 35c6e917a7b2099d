/**
 * DICOM PS3.15 Annex A.5 audit messages (the DICOM audit message schema, RFC 3881 lineage)
 * built from the gateway's request records, for the hospital's Audit Record Repository.
 *
 *   QIDO-RS                      → Query (110112)
 *   metadata, retrieve, frames,  → Begin Transferring DICOM Instances (110102), DICOM
 *   bulk that released studies     Instances Transferred (110104) and Export (110106: the data
 *                                  leaves the hospital's security domain to the client), one
 *                                  message per patient, as A.5 requires
 *   401                          → User Authentication (110114, Login, failure) and Security
 *                                  Alert (110113, Use of Restricted Function)
 *   refused TLS handshake         → User Authentication (110114, Login, failure) and Security
 *   (clientCertificates: require)  Alert (110113, Node Authentication)
 *   first success of a client    → User Authentication (110114, Login, success), once per process
 *   out of scope, access window, → Security Alert (110113, Use of Restricted Function)
 *   refused query key
 *
 * These messages go to hospital infrastructure and carry original identifiers (Study Instance
 * UIDs, Patient IDs), as an ARR expects. Every value is XML-escaped.
 */
import type { RequestAudit, StudyRelease } from './sink.js';

type Coded = readonly [code: string, system: string, text: string];

const EV = {
  query: ['110112', 'DCM', 'Query'],
  begin: ['110102', 'DCM', 'Begin Transferring DICOM Instances'],
  transferred: ['110104', 'DCM', 'DICOM Instances Transferred'],
  export: ['110106', 'DCM', 'Export'],
  alert: ['110113', 'DCM', 'Security Alert'],
  auth: ['110114', 'DCM', 'User Authentication'],
} as const satisfies Record<string, Coded>;
const LOGIN: Coded = ['110122', 'DCM', 'Login'];
const RESTRICTED: Coded = ['110132', 'DCM', 'Use of Restricted Function'];
const NODE_AUTH: Coded = ['110126', 'DCM', 'Node Authentication'];
const SOURCE: Coded = ['110153', 'DCM', 'Source Role ID'];
const DESTINATION: Coded = ['110152', 'DCM', 'Destination Role ID'];
const STUDY_UID: Coded = ['110180', 'DCM', 'Study Instance UID'];
const SOP_CLASS_UID: Coded = ['110181', 'DCM', 'SOP Class UID'];
const PATIENT_NUMBER: Coded = ['2', 'RFC-3881', 'Patient Number'];
/** Study Root Query/Retrieve Information Model - FIND: the query model QIDO-RS maps to. */
const STUDY_ROOT_FIND = '1.2.840.10008.5.1.4.1.2.2.1';

export interface AtnaContext {
  /** AuditSourceID and the gateway's participant UserID, e.g. deid-gateway@host. */
  readonly sourceId: string;
  readonly host: string;
  readonly pid: number;
}

export interface AtnaMessage {
  readonly eventId: string;
  readonly xml: string;
}

const x = (s: unknown): string => String(s).replace(/[&<>"']/g, (c) => ({ '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&apos;' }[c]!));
const coded = (tag: string, c: Coded): string => `<${tag} csd-code="${x(c[0])}" codeSystemName="${x(c[1])}" originalText="${x(c[2])}"/>`;

function outcome(r: RequestAudit): string {
  if (r.outcome === 'ok') return '0';
  if (r.outcome === 'denied') return '4';
  return r.status >= 500 || r.outcome === 'aborted' ? '8' : '4';
}

function message(ctx: AtnaContext, r: RequestAudit, event: Coded, action: string, objects: string[], opts: { eventType?: Coded; outcomeCode?: string; time?: string } = {}): AtnaMessage {
  const client = r.client ?? 'unauthenticated';
  const xml = '<?xml version="1.0" encoding="UTF-8"?>'
    + '<AuditMessage>'
    + `<EventIdentification EventActionCode="${action}" EventDateTime="${x(opts.time ?? r.time)}" EventOutcomeIndicator="${opts.outcomeCode ?? outcome(r)}">`
    + coded('EventID', event) + (opts.eventType ? coded('EventTypeCode', opts.eventType) : '')
    + (r.reason || r.code ? `<EventOutcomeDescription>${x([r.code, r.reason].filter(Boolean).join(' '))}</EventOutcomeDescription>` : '')
    + '</EventIdentification>'
    + `<ActiveParticipant UserID="${x(ctx.sourceId)}" AlternativeUserID="${ctx.pid}" UserIsRequestor="false" NetworkAccessPointID="${x(ctx.host)}" NetworkAccessPointTypeCode="1">${coded('RoleIDCode', SOURCE)}</ActiveParticipant>`
    + `<ActiveParticipant UserID="${x(client)}" UserIsRequestor="true"${r.remote ? ` NetworkAccessPointID="${x(r.remote)}" NetworkAccessPointTypeCode="2"` : ''}>${coded('RoleIDCode', DESTINATION)}</ActiveParticipant>`
    + `<AuditSourceIdentification AuditSourceID="${x(ctx.sourceId)}"><AuditSourceTypeCode csd-code="4" codeSystemName="DCM" originalText="Application Server Process"/></AuditSourceIdentification>`
    + objects.join('')
    + '</AuditMessage>';
  return { eventId: event[0], xml };
}

function studyObject(s: StudyRelease): string {
  return `<ParticipantObjectIdentification ParticipantObjectID="${x(s.study)}" ParticipantObjectTypeCode="2" ParticipantObjectTypeCodeRole="3">`
    + coded('ParticipantObjectIDTypeCode', STUDY_UID)
    + `<ParticipantObjectDescription>${x(`${s.instances} instance(s); de-identified as ${s.pseudonymous}`)}</ParticipantObjectDescription>`
    + '</ParticipantObjectIdentification>';
}

function patientObject(patientId: string): string {
  return `<ParticipantObjectIdentification ParticipantObjectID="${x(patientId)}" ParticipantObjectTypeCode="1" ParticipantObjectTypeCodeRole="1">${coded('ParticipantObjectIDTypeCode', PATIENT_NUMBER)}</ParticipantObjectIdentification>`;
}

/** The route of a TLS handshake refused before any HTTP request (mutual TLS with `require`). */
export const TLS_ROUTE = 'tls-handshake';

const TRANSFER_ROUTES = new Set(['metadata', 'retrieve', 'frames', 'bulk', 'rendered', 'thumbnail']);

/** The A.5 messages of one request record (possibly none). */
export function atnaMessages(ctx: AtnaContext, r: RequestAudit, opts: { firstLogin: boolean }): AtnaMessage[] {
  const started = new Date(Date.parse(r.time) - r.durationMs).toISOString();
  const out: AtnaMessage[] = [];
  const authFailure = r.status === 401 || r.route === TLS_ROUTE;
  // An authentication failure is two events, each in its own message: the failed login, and
  // the security alert (a node that failed TLS client authentication, or a refused credential).
  if (authFailure) {
    out.push(message(ctx, r, EV.auth, 'E', [], { eventType: LOGIN, outcomeCode: '4' }));
    out.push(message(ctx, r, EV.alert, 'E', [], { eventType: r.route === TLS_ROUTE ? NODE_AUTH : RESTRICTED, outcomeCode: '4' }));
  } else if (opts.firstLogin && r.client) out.push(message(ctx, r, EV.auth, 'E', [], { eventType: LOGIN, outcomeCode: '0' }));
  if (r.reason && /^(out-of-scope:|access-window:|query-key-refused)/.test(r.reason)) {
    out.push(message(ctx, r, EV.alert, 'E', [], { eventType: RESTRICTED, outcomeCode: '4' }));
  }
  if (r.route.startsWith('qido')) {
    const q = `<ParticipantObjectIdentification ParticipantObjectID="${STUDY_ROOT_FIND}" ParticipantObjectTypeCode="2" ParticipantObjectTypeCodeRole="3">`
      + coded('ParticipantObjectIDTypeCode', SOP_CLASS_UID)
      + `<ParticipantObjectQuery>${Buffer.from(r.url ?? r.route, 'utf8').toString('base64')}</ParticipantObjectQuery>`
      + '</ParticipantObjectIdentification>';
    out.push(message(ctx, r, EV.query, 'E', [q]));
  }
  if (TRANSFER_ROUTES.has(r.route) && r.studies.length) {
    // One patient per message (A.5.3): group the released studies by original Patient ID.
    const byPatient = new Map<string, StudyRelease[]>();
    for (const s of r.studies) {
      const k = s.patientId ?? '';
      byPatient.set(k, [...(byPatient.get(k) ?? []), s]);
    }
    for (const [patient, studies] of byPatient) {
      const objects = [...studies.map(studyObject), ...(patient ? [patientObject(patient)] : [])];
      out.push(message(ctx, r, EV.begin, 'E', objects, { time: started }));
      out.push(message(ctx, r, EV.transferred, 'R', objects));
      out.push(message(ctx, r, EV.export, 'R', objects));
    }
  }
  return out;
}
