/**
 * The catalogue of the system's own errors. Each error has a stable code, an HTTP status (for
 * the API) and a one-line description (used by the docs; a test checks that every code is
 * documented). A program that fails is a result, never one of these.
 */
export const ERROR_CATALOGUE = {
  FRAME_TOO_LARGE: { status: 502, description: 'A frame announced a length over the cap.' },
  FRAME_EMPTY: { status: 502, description: 'A frame announced a length of zero.' },
  FRAME_TRUNCATED: { status: 502, description: 'The stream ended in the middle of a frame.' },
  FRAME_BAD_JSON: { status: 502, description: 'A frame body was not valid UTF-8 JSON.' },
  MESSAGE_INVALID: { status: 502, description: 'A message did not match its schema.' },
  PROTOCOL_VERSION: { status: 502, description: 'The peer speaks another protocol version.' },
  LANGUAGE_INVALID: { status: 500, description: 'A language definition on disk is malformed.' },
  LANGUAGE_UNKNOWN: { status: 400, description: 'No such language, version or alias.' },
  FILE_NAME_INVALID: {
    status: 400,
    description: 'A file name is empty, absolute, has `..`, a NUL byte or is too long.',
  },
  FILE_WRITE_FAILED: {
    status: 500,
    description: 'A request file could not be written into the work dir.',
  },
  LIMIT_INVALID: {
    status: 400,
    description: 'A limit is negative, not an integer or over the server maximum.',
  },
  AGENT_BUSY: { status: 503, description: 'The agent already serves a host session.' },
  SANDBOX_FAILURE: { status: 500, description: 'The sandbox itself failed (not the program).' },
  IMAGE_NOT_FOUND: { status: 404, description: 'No such image in the store.' },
  IMAGE_CORRUPT: {
    status: 500,
    description: 'An image file does not match its manifest checksum.',
  },
  IMAGE_BUILD_FAILED: { status: 500, description: 'A step of an image build failed.' },
  S3_TRANSFER_FAILED: { status: 502, description: 'An S3 transfer failed after its retries.' },
  IMAGE_LOCKED: {
    status: 503,
    description: 'Another process kept the image lock past the wait limit.',
  },
  VM_BOOT_FAILED: {
    status: 500,
    description: 'A VM did not boot or its agent did not say hello in time.',
  },
  VM_DIED: { status: 500, description: 'The VMM process exited while the VM was in use.' },
  VM_TIMEOUT: { status: 500, description: 'The VM did not answer before its deadline.' },
  VM_STATE: { status: 500, description: 'A VM lifecycle command was not legal in its state.' },
  SNAPSHOT_FAILED: { status: 500, description: 'Taking or restoring a snapshot failed.' },
  CONFIG_INVALID: { status: 500, description: 'A configuration value is invalid.' },
  REQUEST_INVALID: {
    status: 400,
    description: 'The request is not valid JSON, lacks a field, has a wrong type or an unknown field.',
  },
  CALLBACK_URL_INVALID: {
    status: 400,
    description: 'A callbackUrl is not an http(s) URL or names a host that is not allowed.',
  },
  UNAUTHORIZED: { status: 401, description: 'API keys are configured and the request has no valid one.' },
  NOT_FOUND: { status: 404, description: 'No such route.' },
  JOB_NOT_FOUND: { status: 404, description: 'No such job (or it belongs to another API key, or it expired).' },
  PAYLOAD_TOO_LARGE: {
    status: 413,
    description: 'The body, the number of files or test cases, or stdin is over its cap.',
  },
  CONTENT_TYPE_UNSUPPORTED: { status: 415, description: 'The body is not application/json.' },
  RATE_LIMITED: { status: 429, description: 'This API key (or client) sent too many jobs; see Retry-After.' },
  QUEUE_FULL: { status: 503, description: 'The job queue is full; see Retry-After.' },
  SHUTTING_DOWN: { status: 503, description: 'The server is draining and takes no new jobs.' },
} as const satisfies Record<string, { status: number; description: string }>;

export type ErrorCode = keyof typeof ERROR_CATALOGUE;

/** The base of every error the system throws on purpose. */
export class RunnerError extends Error {
  readonly code: ErrorCode;
  readonly status: number;
  readonly details: unknown;

  constructor(code: ErrorCode, message: string, options?: { cause?: unknown; details?: unknown }) {
    super(message, options?.cause === undefined ? undefined : { cause: options.cause });
    this.name = 'RunnerError';
    this.code = code;
    this.status = ERROR_CATALOGUE[code].status;
    this.details = options?.details;
  }
}

/** Errors of the guest channel: a peer that breaks the protocol. The connection must close. */
export class ProtocolError extends RunnerError {
  constructor(code: ErrorCode, message: string, options?: { cause?: unknown; details?: unknown }) {
    super(code, message, options);
    this.name = 'ProtocolError';
  }
}

/** True when `err` is a RunnerError with the given code. */
export function hasCode(err: unknown, code: ErrorCode): boolean {
  return err instanceof RunnerError && err.code === code;
}
