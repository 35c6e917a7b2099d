/**
 * The two lists hospital IT maintains in their own YAML files beside the configuration, and
 * reloaded without restart (policy/watched-file.ts): a client's study allow-list
 * (`clients[].scope.studiesFile`) and the opt-out list of patients (`optOut.file`). Their
 * schemas are shared with the inline forms in the configuration. Messages name keys and
 * positions, never values (Patient IDs are PHI).
 */
import { z } from 'zod';
import type { OptOutEntry } from '../policy/scope.js';

export const uidSchema = z.string().trim().regex(/^[0-9]+(\.[0-9]+)*$/, 'must be a UID (digits and dots)').max(64, 'a UID has at most 64 characters');
export const accessionSchema = z.string().trim().min(1, 'must not be empty').max(64, 'an Accession Number has at most 16 characters (64 accepted)');

export const optOutEntrySchema = z.strictObject({
  id: z.string().trim().min(1, 'the Patient ID must not be empty').max(64),
  issuer: z.string().trim().min(1).max(64).optional(),
});

export const studyListFileSchema = z.strictObject({
  studies: z.array(uidSchema).default([]),
  accessionNumbers: z.array(accessionSchema).default([]),
});

export const optOutFileSchema = z.strictObject({
  patients: z.array(optOutEntrySchema).default([]),
});

export interface StudyList {
  readonly studies: readonly string[];
  readonly accessionNumbers: readonly string[];
}

function issuesText(e: z.ZodError): string {
  return e.issues.slice(0, 5).map((i) => {
    const where = i.path.map((p) => (typeof p === 'number' ? `[${p}]` : `.${String(p)}`)).join('').replace(/^\./, '') || '(top level)';
    if (i.code === 'unrecognized_keys') return `${where}: unknown key(s) ${i.keys.map((k) => `"${k}"`).join(', ')}; remove or rename`;
    if (i.code === 'invalid_type') return `${where}: expected ${i.expected}`;
    return `${where}: ${i.message}`;
  }).join('; ');
}

/** Parses a study allow-list file's YAML value; throws Error naming the inner key. */
export function parseStudyList(doc: unknown): StudyList {
  const r = studyListFileSchema.safeParse(doc ?? {});
  if (!r.success) throw new Error(`${issuesText(r.error)} (expected studies: [UIDs] and/or accessionNumbers: [values])`);
  return r.data;
}

/** Parses an opt-out file's YAML value; throws Error naming the inner key. */
export function parseOptOutList(doc: unknown): readonly OptOutEntry[] {
  const r = optOutFileSchema.safeParse(doc ?? {});
  if (!r.success) throw new Error(`${issuesText(r.error)} (expected patients: [{ id, issuer }])`);
  return r.data.patients;
}
