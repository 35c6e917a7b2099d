/**
 * RFC 9457 problem details. Every error response is one of these, with a stable `code`
 * (docs/errors.md); the detail is the error's own message, which never carries payload
 * values, upstream URLs or upstream bodies.
 */
import { GatewayError, isGatewayError } from '../core/errors.js';

export interface Problem {
  readonly type: string;
  readonly title: string;
  readonly status: number;
  readonly detail: string;
  readonly code: string;
  readonly requestId: string;
}

export function toProblem(e: unknown, requestId: string): Problem {
  const g: GatewayError = isGatewayError(e) ? e : new GatewayError('INTERNAL', 'unexpected error; see the gateway log by request id');
  return {
    type: `urn:deid-gateway:problem:${g.code.toLowerCase().replace(/_/g, '-')}`,
    title: g.title,
    status: g.status,
    detail: g.message,
    code: g.code,
    requestId,
  };
}
