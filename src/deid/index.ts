/**
 * The engine's public face: one compiled context per client.
 */
import { deriveClientKey } from '../pseudonym/secret.js';
import { Pseudonymizer, type PseudonymRecorder } from '../pseudonym/pseudonymizer.js';
import type { EngineContext } from './engine.js';
import { compilePlan, type ProfileSpec } from './plan.js';

export { deidentifyJson, type JsonDataset, type JsonAttribute } from './json.js';
export { CLEAN_PIXEL_DATA, CLEAN_RECOGNIZABLE_VISUAL_FEATURES, deidentifyPart10, deidentifyPart10Buffer, type InstanceInfo, type Part10Options } from './part10.js';
export { compilePlan, type CompiledPlan, type ProfileSpec } from './plan.js';
export type { EngineContext } from './engine.js';

/** Compiles the plan and derives the pseudonymizer of one client. */
export function createEngineContext(args: {
  clientId: string;
  policyId?: string;
  profile: ProfileSpec;
  masterSecret: Buffer;
  recorder?: PseudonymRecorder;
}): EngineContext {
  const plan = compilePlan(args.profile);
  const pseudonymizer = new Pseudonymizer(deriveClientKey(args.masterSecret, args.clientId), plan.dateShift, args.recorder);
  return Object.freeze({ plan, pseudonymizer, policyId: args.policyId ?? args.clientId });
}
