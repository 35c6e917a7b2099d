/**
 * DICOMweb handlers (PS3.18 QIDO-RS and WADO-RS), independent of express: each takes a
 * request context and returns a reply whose body is a lazy stream. Every body is produced
 * by the engine from the upstream's; nothing upstream passes as it came.
 *
 * One file per resource family, after orthanc-dicomweb: `qido.ts`, `metadata.ts`,
 * `retrieve.ts`, `frames-bulk.ts`, `rendered.ts`; what they share is in `context.ts` (the
 * request context and its helpers) and `pixel-stage.ts` (the pixel decision of each instance).
 */
export { MAX_NOTED_STUDIES, type ClientRuntime, type Reply, type RequestContext, type RequestNote, type StudyNote } from './context.js';
export { matchesAnyValue, qido } from './qido.js';
export { metadata } from './metadata.js';
export { acceptsDicomMultipart, requestedTransferSyntax, retrieve } from './retrieve.js';
export { bulk, frames } from './frames-bulk.js';
export { rendered, renderedFormat, renderedMultipartFormat } from './rendered.js';
