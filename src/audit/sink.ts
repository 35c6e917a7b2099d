/**
 * What the gateway records about each request (issue 5), and where it goes:
 *  - the hash-chained trail in state.dir (trail.ts): one `request` record per request, denied
 *    and failed ones included, and one `study` record per study released, written together
 *    (one write) before the response completes;
 *  - forwarders (DICOM PS3.15 A.5 messages over syslog, metrics), which never block the
 *    response and never lose a message (the syslog forwarder spools to disk).
 *
 * In the trail, a patient appears only as a keyed reference (patientRef); the original Patient
 * ID goes only to the forwarders (the hospital's audit record repository expects it).
 */
import type { AuditTrail } from './trail.js';
import { patientRef } from './trail.js';

export interface StudyRelease {
  /** Original Study Instance UID. */
  readonly study: string;
  readonly pseudonymous: string;
  /** Original Patient ID, when known (never written to the trail). */
  readonly patientId?: string | undefined;
  readonly instances: number;
}

export interface RequestAudit {
  readonly time: string;
  readonly requestId: string;
  readonly client: string | null;
  readonly method: string;
  readonly route: string;
  readonly status: number;
  readonly outcome: 'ok' | 'denied' | 'failed' | 'aborted';
  readonly code?: string | undefined;
  /** The real reason of a denial (the client may have seen only "not found"). */
  readonly reason?: string | undefined;
  readonly bytes: number;
  readonly durationMs: number;
  readonly instances: number;
  readonly withheld: number;
  /** The withheld instances by reason (pixels-withheld:<risk>): a partial denial, audited with why. */
  readonly withheldBy?: Readonly<Record<string, number>> | undefined;
  /** Risky instances released masked under a rule, or allowed by an explicit policy (audited). */
  readonly masked?: number | undefined;
  /** Instances released with the face cut away (faces: deface), and with a face released under faces: allow. */
  readonly defaced?: number | undefined;
  readonly facesAllowed?: number | undefined;
  /**
   * Under risky: detect, the text regions masked: how many, and their boxes [x, y, width, height]
   * in pixels (at most MAX_AUDIT_BOXES listed; the count is exact). No pixel content.
   */
  readonly textRegions?: number | undefined;
  readonly textBoxes?: readonly (readonly [number, number, number, number])[] | undefined;
  readonly riskyAllowed?: number | undefined;
  readonly outOfScope: number;
  readonly results: number;
  readonly query?: { readonly level: string; readonly keys: readonly string[]; readonly wildcard: boolean } | undefined;
  readonly studies: readonly StudyRelease[];
  readonly policyHash: string | null;
  /** The client's network address (the A.5 destination participant). */
  readonly remote?: string | undefined;
  /** The request's path and query (pseudonymous values only), for the A.5 Query message; not in the trail. */
  readonly url?: string | undefined;
}

/** Boxes listed in one audit record at most (a cine study could list thousands). */
export const MAX_AUDIT_BOXES = 64;

/** Adds an instance's masked text boxes to a record's count and list. */
export function noteTextBoxes(note: { textRegions?: number; textBoxes?: [number, number, number, number][] }, boxes: readonly { readonly x: number; readonly y: number; readonly width: number; readonly height: number }[]): void {
  note.textRegions = (note.textRegions ?? 0) + boxes.length;
  const list = (note.textBoxes ??= []);
  for (const b of boxes) if (list.length < MAX_AUDIT_BOXES) list.push([b.x, b.y, b.width, b.height]);
}

export interface AuditForwarder {
  /**
   * May return a promise (a shared spool): awaited before the response's last byte. A forwarder
   * with healthy() is part of the audit (the A.5 spool): its failure fails the request like the
   * trail's (AUDIT_UNAVAILABLE); others' failures (metrics) are only logged.
   */
  forward(r: RequestAudit): void | Promise<void>;
  healthy?(): boolean;
  recover?(): boolean;
  problemText?(): string | undefined;
  close(): Promise<void>;
}

export interface AuditSink {
  /**
   * Writes the request's records to the trail (synchronously; throws AUDIT_UNAVAILABLE when it
   * cannot) and hands them to the forwarders; the promise, if any, settles when they have them.
   */
  record(r: RequestAudit): void | Promise<void>;
  /** The trail and every spool can be written. */
  healthy(): boolean;
  /** Tries to write again after a failure (admission calls this before refusing). */
  recover(): boolean;
  problem(): string | undefined;
  close(): Promise<void>;
}

export function createAuditSink(trail: AuditTrail, key: Buffer, forwarders: readonly AuditForwarder[] = [], onForwardError: (e: unknown) => void = () => undefined): AuditSink {
  let closed = false;
  return {
    record(r) {
      const studies = r.studies.map((s) => ({ study: s.study, pseudonymous: s.pseudonymous, ...(s.patientId ? { patientRef: patientRef(key, s.patientId) } : {}), instances: s.instances }));
      const { studies: _, url: __, ...rest } = r;
      const records: Record<string, unknown>[] = [{ type: 'request', ...rest, studies: studies.length }];
      for (const s of studies) records.push({ type: 'study', time: r.time, requestId: r.requestId, client: r.client, route: r.route, outcome: r.outcome, ...s, policyHash: r.policyHash });
      trail.appendAll(records);
      let waiting: Promise<void>[] | undefined;
      let failure: unknown;
      for (const f of forwarders) {
        try {
          const p = f.forward(r);
          // A spool's failure rejects the request's audit step (after it is logged).
          if (p) (waiting ??= []).push(f.healthy ? p.catch((e: unknown) => { onForwardError(e); throw e; }) : p.catch(onForwardError));
        } catch (e) {
          onForwardError(e);
          if (f.healthy) failure ??= e;
        }
      }
      if (failure !== undefined) {
        for (const w of waiting ?? []) w.catch(() => undefined);
        throw failure;
      }
      return waiting ? Promise.all(waiting).then(() => undefined) : undefined;
    },
    healthy: () => trail.healthy() && forwarders.every((f) => f.healthy?.() ?? true),
    recover: () => trail.recover() && forwarders.every((f) => f.recover?.() ?? true),
    problem: () => trail.status().problem ?? forwarders.map((f) => f.problemText?.()).find((p) => p !== undefined),
    async close() {
      if (closed) return;
      closed = true;
      for (const f of forwarders) await f.close();
      trail.close();
    },
  };
}
