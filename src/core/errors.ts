/**
 * One error type for the whole product, with stable codes.
 *
 * Every code is listed here and in docs/errors.md. Messages never carry payload values
 * (PS3.15 and the contract: no PHI in logs, errors or headers); they name tags, keys,
 * offsets and reasons only.
 */

export const ErrorCodes = {
  // configuration (exit 2)
  CONFIG_INVALID: { status: 500, title: 'Invalid configuration' },
  CONFIG_UNREADABLE: { status: 500, title: 'Configuration file cannot be read' },
  // DICOM input refused by the engine (fail closed)
  DICOM_MALFORMED: { status: 502, title: 'Malformed DICOM refused' },
  DICOM_TRUNCATED: { status: 502, title: 'Truncated DICOM refused' },
  DICOM_NOT_PART10: { status: 502, title: 'Not a DICOM Part 10 object' },
  DICOM_DIRECTORY: { status: 422, title: 'A media directory (DICOMDIR) is not exported' },
  DICOM_DUPLICATE: { status: 422, title: 'Another input with the same SOP Instance UID was exported' },
  DICOM_UNSUPPORTED_TRANSFER_SYNTAX: { status: 502, title: 'Unsupported transfer syntax' },
  DICOM_CHARSET: { status: 502, title: 'Character set cannot be decoded' },
  DICOM_HEADER_TOO_LARGE: { status: 502, title: 'DICOM header exceeds the configured limit' },
  DICOM_JSON_MALFORMED: { status: 502, title: 'Malformed DICOM JSON refused' },
  // de-identification
  DEID_PLAN_INVALID: { status: 500, title: 'De-identification plan cannot be compiled' },
  // state
  STATE_UNAVAILABLE: { status: 503, title: 'State directory unavailable' },
  // HTTP: the client's request
  UNAUTHORIZED: { status: 401, title: 'Authentication required' },
  FORBIDDEN: { status: 403, title: 'Forbidden' },
  NOT_FOUND: { status: 404, title: 'Not found' },
  METHOD_NOT_ALLOWED: { status: 405, title: 'Method not allowed: this gateway is read-only' },
  NOT_ACCEPTABLE: { status: 406, title: 'Not acceptable' },
  BAD_QUERY: { status: 400, title: 'Malformed query parameter' },
  BAD_REQUEST: { status: 400, title: 'Malformed request' },
  QUERY_KEY_REFUSED: { status: 400, title: 'Query parameter not allowed' },
  ACCESS_WINDOW_CLOSED: { status: 403, title: 'Outside this client\'s access window' },
  RATE_LIMITED: { status: 429, title: 'Request rate limit reached' },
  CONCURRENCY_LIMITED: { status: 429, title: 'Too many concurrent requests' },
  CONNECTIONS_LIMITED: { status: 429, title: 'Too many open connections from this client' },
  QUOTA_EXCEEDED: { status: 429, title: 'Daily transfer quota reached' },
  SCOPE_UNAVAILABLE: { status: 503, title: 'Access scope cannot be evaluated' },
  AUDIT_UNAVAILABLE: { status: 503, title: 'Audit trail cannot be written' },
  PIXELS_WITHHELD: { status: 403, title: 'Pixel data withheld by policy' },
  PIXELS_PENDING: { status: 503, title: 'Pixel decision in progress' },
  RENDERING_UNAVAILABLE: { status: 406, title: 'Rendered images are not available' },
  // HTTP: the upstream PACS
  UPSTREAM_UNAVAILABLE: { status: 502, title: 'Upstream PACS unavailable' },
  UPSTREAM_TIMEOUT: { status: 504, title: 'Upstream PACS timed out' },
  UPSTREAM_ERROR: { status: 502, title: 'Upstream PACS error' },
  UPSTREAM_REJECTED: { status: 400, title: 'Upstream PACS rejected the request' },
  UPSTREAM_RESPONSE_INVALID: { status: 502, title: 'Upstream response cannot be de-identified' },
  // generic
  INTERNAL: { status: 500, title: 'Internal error' },
} as const satisfies Record<string, { status: number; title: string }>;

export type ErrorCode = keyof typeof ErrorCodes;

/** Base class of every error the product raises on purpose. */
export class GatewayError extends Error {
  readonly code: ErrorCode;
  readonly status: number;
  readonly title: string;

  /**
   * Why the request was really denied, for the hospital's audit log only (never sent to the
   * client): e.g. a scope refusal answers exactly like NOT_FOUND, and says `out-of-scope:modality` here.
   */
  readonly auditReason: string | undefined;
  /** Seconds after which a retry may succeed (429, 503): the Retry-After header. */
  readonly retryAfter: number | undefined;

  constructor(code: ErrorCode, message: string, options?: { cause?: unknown; auditReason?: string; retryAfter?: number }) {
    super(message, options?.cause === undefined ? undefined : { cause: options.cause });
    this.name = 'GatewayError';
    this.code = code;
    this.status = ErrorCodes[code].status;
    this.title = ErrorCodes[code].title;
    this.auditReason = options?.auditReason;
    this.retryAfter = options?.retryAfter;
  }
}

export function isGatewayError(e: unknown): e is GatewayError {
  return e instanceof GatewayError;
}

/** Formats a tag number as (GGGG,EEEE) for messages. Tags are not PHI. */
export function tagString(tag: number): string {
  const hex = (tag >>> 0).toString(16).toUpperCase().padStart(8, '0');
  return `(${hex.slice(0, 4)},${hex.slice(4)})`;
}
