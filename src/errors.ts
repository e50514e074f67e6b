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
  ENCODING_INVALID: {
    status: 400,
    description: 'File content or stdin is not valid base64 (or hex) of the kind it says it is.',
  },
  ENV_INVALID: {
    status: 400,
    description:
      'An environment variable name is not [A-Za-z_][A-Za-z0-9_]*, or a value holds a NUL byte.',
  },
  ARGS_INVALID: {
    status: 400,
    description:
      'An argument holds a NUL byte, or the arguments and environment together are over the exec limit.',
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
  VM_JAIL_FAILED: {
    status: 500,
    description:
      "QEMU's jail could not be set up (the message names the part); the VM did not start.",
  },
  VM_TIMEOUT: { status: 500, description: 'The VM did not answer before its deadline.' },
  VM_STATE: { status: 500, description: 'A VM lifecycle command was not legal in its state.' },
  NETWORK_DISABLED: {
    status: 403,
    description: 'The job asked for network, and the operator does not allow it (networkEnabled).',
  },
  NETWORK_SETUP_FAILED: {
    status: 500,
    description: "A VM's network (namespace, tap, veth, egress policy) could not be set up.",
  },
  POOL_CLOSED: { status: 503, description: 'The VM pool is closed (the service is stopping).' },
  POOL_STATE: {
    status: 500,
    description: 'A pool slot was moved in a way its life does not allow.',
  },
  JOB_STATE: { status: 500, description: 'A job was moved in a way its life does not allow.' },
  CLUSTER_WIRE: {
    status: 500,
    description:
      'A job or result read from the shared queue does not match the cluster wire format.',
  },
  CLUSTER_UNAVAILABLE: {
    status: 503,
    description: 'The shared queue (Redis) cannot be reached, or no worker answered in time.',
  },
  SNAPSHOT_FAILED: { status: 500, description: 'Taking or restoring a snapshot failed.' },
  CONFIG_INVALID: { status: 500, description: 'A configuration value is invalid.' },
  REQUEST_INVALID: {
    status: 400,
    description:
      'The request is not valid JSON, lacks a field, has a wrong type or an unknown field.',
  },
  CALLBACK_URL_INVALID: {
    status: 400,
    description: 'A callbackUrl is not an http(s) URL or names a host that is not allowed.',
  },
  EGRESS_DENIED: {
    status: 400,
    description:
      'A request the service would make for a user (a callback) goes to an address its egress policy refuses (loopback, private, link-local, metadata...).',
  },
  UNAUTHORIZED: {
    status: 401,
    description: 'API keys are configured and the request has no valid one.',
  },
  NOT_FOUND: { status: 404, description: 'No such route.' },
  JOB_NOT_FOUND: {
    status: 404,
    description: 'No such job (or it belongs to another API key, or it expired).',
  },
  SANDBOX_NOT_FOUND: {
    status: 404,
    description: 'No such sandbox (or it belongs to another API key, was killed, or expired).',
  },
  SANDBOX_LIMIT: {
    status: 429,
    description:
      'Too many sandboxes: this API key has its most (sandboxMaxPerKey), or the host runs its most (sandboxMaxRunning).',
  },
  SANDBOX_STATE: {
    status: 409,
    description: 'The sandbox cannot do that now (it is paused, or pausing, or resuming).',
  },
  FILE_NOT_FOUND: { status: 404, description: "No such file or folder in the sandbox." },
  PAYLOAD_TOO_LARGE: {
    status: 413,
    description: 'The body, the number of files or test cases, or stdin is over its cap.',
  },
  CONTENT_TYPE_UNSUPPORTED: { status: 415, description: 'The body is not application/json.' },
  UPGRADE_REQUIRED: {
    status: 426,
    description: 'A WebSocket route was asked without `Upgrade: websocket`.',
  },
  RATE_LIMITED: {
    status: 429,
    description: 'This API key (or client) sent too many jobs; see Retry-After.',
  },
  QUEUE_FULL: { status: 503, description: 'The job queue is full; see Retry-After.' },
  SHUTTING_DOWN: { status: 503, description: 'The server is draining and takes no new jobs.' },
  INTERNAL: {
    status: 500,
    description:
      'A bug of the service itself (an unexpected exception), counted apart from sandbox failures.',
  },
} as const satisfies Record<string, { status: number; description: string }>;

export type ErrorCode = keyof typeof ERROR_CATALOGUE;

/** What an error may carry besides its message. */
export interface RunnerErrorOptions {
  readonly cause?: unknown;
  readonly details?: unknown;
}

/**
 * The base of every error the system throws on purpose. It cannot be made directly: each code
 * has its own class below (`new FileNameInvalidError(...)`), so a call site names what went
 * wrong and cannot pick a code by accident.
 */
export abstract class RunnerError extends Error {
  readonly code: ErrorCode;
  readonly status: number;
  readonly details: unknown;

  protected constructor(code: ErrorCode, message: string, options?: RunnerErrorOptions) {
    super(message, options?.cause === undefined ? undefined : { cause: options.cause });
    this.name = new.target.name;
    this.code = code;
    this.status = ERROR_CATALOGUE[code].status;
    this.details = options?.details;
  }
}

/** Errors of the guest channel: a peer that breaks the protocol. The connection must close. */
export abstract class ProtocolError extends RunnerError {}

type ErrorClass<C extends ErrorCode> = new (
  message: string,
  options?: RunnerErrorOptions,
) => RunnerError & { readonly code: C };

function coded<C extends ErrorCode>(code: C) {
  return class extends RunnerError {
    declare readonly code: C;
    constructor(message: string, options?: RunnerErrorOptions) {
      super(code, message, options);
    }
  };
}

function codedProtocol<C extends ErrorCode>(code: C) {
  return class extends ProtocolError {
    declare readonly code: C;
    constructor(message: string, options?: RunnerErrorOptions) {
      super(code, message, options);
    }
  };
}

/** FRAME_TOO_LARGE: A frame announced a length over the cap. */
export class FrameTooLargeError extends codedProtocol('FRAME_TOO_LARGE') {}
/** FRAME_EMPTY: A frame announced a length of zero. */
export class FrameEmptyError extends codedProtocol('FRAME_EMPTY') {}
/** FRAME_TRUNCATED: The stream ended in the middle of a frame. */
export class FrameTruncatedError extends codedProtocol('FRAME_TRUNCATED') {}
/** FRAME_BAD_JSON: A frame body was not valid UTF-8 JSON. */
export class FrameBadJsonError extends codedProtocol('FRAME_BAD_JSON') {}
/** MESSAGE_INVALID: A message did not match its schema. */
export class MessageInvalidError extends codedProtocol('MESSAGE_INVALID') {}
/** PROTOCOL_VERSION: The peer speaks another protocol version. */
export class ProtocolVersionError extends codedProtocol('PROTOCOL_VERSION') {}
/** LANGUAGE_INVALID: A language definition on disk is malformed. */
export class LanguageInvalidError extends coded('LANGUAGE_INVALID') {}
/** LANGUAGE_UNKNOWN: No such language, version or alias. */
export class LanguageUnknownError extends coded('LANGUAGE_UNKNOWN') {}
/** FILE_NAME_INVALID: A file name is empty, absolute, has `..`, a NUL byte or is too long. */
export class FileNameInvalidError extends coded('FILE_NAME_INVALID') {}
/** ENCODING_INVALID: File content or stdin is not valid base64 (or hex) of the kind it says it is. */
export class EncodingInvalidError extends coded('ENCODING_INVALID') {}
/** ENV_INVALID: An environment variable name is not [A-Za-z_][A-Za-z0-9_]*, or a value holds a NUL byte. */
export class EnvInvalidError extends coded('ENV_INVALID') {}
/** ARGS_INVALID: An argument holds a NUL byte, or the arguments and environment together are over the exec limit. */
export class ArgsInvalidError extends coded('ARGS_INVALID') {}
/** FILE_WRITE_FAILED: A request file could not be written into the work dir. */
export class FileWriteFailedError extends coded('FILE_WRITE_FAILED') {}
/** LIMIT_INVALID: A limit is negative, not an integer or over the server maximum. */
export class LimitInvalidError extends coded('LIMIT_INVALID') {}
/** AGENT_BUSY: The agent already serves a host session. */
export class AgentBusyError extends coded('AGENT_BUSY') {}
/** SANDBOX_FAILURE: The sandbox itself failed (not the program). */
export class SandboxFailureError extends coded('SANDBOX_FAILURE') {}
/** IMAGE_NOT_FOUND: No such image in the store. */
export class ImageNotFoundError extends coded('IMAGE_NOT_FOUND') {}
/** IMAGE_CORRUPT: An image file does not match its manifest checksum. */
export class ImageCorruptError extends coded('IMAGE_CORRUPT') {}
/** IMAGE_BUILD_FAILED: A step of an image build failed. */
export class ImageBuildFailedError extends coded('IMAGE_BUILD_FAILED') {}
/** S3_TRANSFER_FAILED: An S3 transfer failed after its retries. */
export class S3TransferFailedError extends coded('S3_TRANSFER_FAILED') {}
/** IMAGE_LOCKED: Another process kept the image lock past the wait limit. */
export class ImageLockedError extends coded('IMAGE_LOCKED') {}
/** VM_BOOT_FAILED: A VM did not boot or its agent did not say hello in time. */
export class VmBootFailedError extends coded('VM_BOOT_FAILED') {}
/** VM_DIED: The VMM process exited while the VM was in use. */
export class VmDiedError extends coded('VM_DIED') {}
/** VM_JAIL_FAILED: QEMU's jail could not be set up (the message names the part); the VM did not start. */
export class VmJailFailedError extends coded('VM_JAIL_FAILED') {}
/** VM_TIMEOUT: The VM did not answer before its deadline. */
export class VmTimeoutError extends coded('VM_TIMEOUT') {}
/** VM_STATE: A VM lifecycle command was not legal in its state. */
export class VmStateError extends coded('VM_STATE') {}
/** NETWORK_DISABLED: The job asked for network, and the operator does not allow it. */
export class NetworkDisabledError extends coded('NETWORK_DISABLED') {}
/** NETWORK_SETUP_FAILED: A VM's network could not be set up. */
export class NetworkSetupFailedError extends coded('NETWORK_SETUP_FAILED') {}
/** POOL_CLOSED: The VM pool is closed (the service is stopping). */
export class PoolClosedError extends coded('POOL_CLOSED') {}
/** POOL_STATE: A pool slot was moved in a way its life does not allow. */
export class PoolStateError extends coded('POOL_STATE') {}
/** JOB_STATE: A job was moved in a way its life does not allow. */
export class JobStateError extends coded('JOB_STATE') {}

/** CLUSTER_WIRE: A job or result read from the shared queue does not match the wire format. */
export class ClusterWireError extends coded('CLUSTER_WIRE') {}

/** CLUSTER_UNAVAILABLE: The shared queue cannot be reached, or no worker answered in time. */
export class ClusterUnavailableError extends coded('CLUSTER_UNAVAILABLE') {}
/** SNAPSHOT_FAILED: Taking or restoring a snapshot failed. */
export class SnapshotFailedError extends coded('SNAPSHOT_FAILED') {}
/** CONFIG_INVALID: A configuration value is invalid. */
export class ConfigInvalidError extends coded('CONFIG_INVALID') {}
/** REQUEST_INVALID: The request is not valid JSON, lacks a field, has a wrong type or an unknown field. */
export class RequestInvalidError extends coded('REQUEST_INVALID') {}
/** CALLBACK_URL_INVALID: A callbackUrl is not an http(s) URL or names a host that is not allowed. */
export class CallbackUrlInvalidError extends coded('CALLBACK_URL_INVALID') {}
/** EGRESS_DENIED: A request the service would make for a user goes to an address its egress policy refuses. */
export class EgressDeniedError extends coded('EGRESS_DENIED') {}
/** UNAUTHORIZED: API keys are configured and the request has no valid one. */
export class UnauthorizedError extends coded('UNAUTHORIZED') {}
/** NOT_FOUND: No such route. */
export class NotFoundError extends coded('NOT_FOUND') {}
/** JOB_NOT_FOUND: No such job (or it belongs to another API key, or it expired). */
export class JobNotFoundError extends coded('JOB_NOT_FOUND') {}
/** PAYLOAD_TOO_LARGE: The body, the number of files or test cases, or stdin is over its cap. */
export class PayloadTooLargeError extends coded('PAYLOAD_TOO_LARGE') {}
/** CONTENT_TYPE_UNSUPPORTED: The body is not application/json. */
export class ContentTypeUnsupportedError extends coded('CONTENT_TYPE_UNSUPPORTED') {}
/** UPGRADE_REQUIRED: A WebSocket route was asked without `Upgrade: websocket`. */
export class UpgradeRequiredError extends coded('UPGRADE_REQUIRED') {}
/** RATE_LIMITED: This API key (or client) sent too many jobs; see Retry-After. */
export class RateLimitedError extends coded('RATE_LIMITED') {}
/** QUEUE_FULL: The job queue is full; see Retry-After. */
export class QueueFullError extends coded('QUEUE_FULL') {}
/** SHUTTING_DOWN: The server is draining and takes no new jobs. */
export class ShuttingDownError extends coded('SHUTTING_DOWN') {}
/** INTERNAL: A bug of the service itself (an unexpected exception), counted apart from sandbox failures. */
export class InternalError extends coded('INTERNAL') {}

/** SANDBOX_NOT_FOUND: No such sandbox (or it belongs to another API key, was killed, or expired). */
export class SandboxNotFoundError extends coded('SANDBOX_NOT_FOUND') {}
/** SANDBOX_LIMIT: Too many sandboxes for this API key or this host. */
export class SandboxLimitError extends coded('SANDBOX_LIMIT') {}
/** SANDBOX_STATE: The sandbox cannot do that now (paused, pausing, resuming). */
export class SandboxStateError extends coded('SANDBOX_STATE') {}
/** FILE_NOT_FOUND: No such file or folder in the sandbox. */
export class FileNotFoundError extends coded('FILE_NOT_FOUND') {}

/** Every code's class: one table, so a code without a class fails to compile. */
export const ERROR_CLASSES: { readonly [C in ErrorCode]: ErrorClass<C> } = {
  FRAME_TOO_LARGE: FrameTooLargeError,
  FRAME_EMPTY: FrameEmptyError,
  FRAME_TRUNCATED: FrameTruncatedError,
  FRAME_BAD_JSON: FrameBadJsonError,
  MESSAGE_INVALID: MessageInvalidError,
  PROTOCOL_VERSION: ProtocolVersionError,
  LANGUAGE_INVALID: LanguageInvalidError,
  LANGUAGE_UNKNOWN: LanguageUnknownError,
  FILE_NAME_INVALID: FileNameInvalidError,
  ENCODING_INVALID: EncodingInvalidError,
  ENV_INVALID: EnvInvalidError,
  ARGS_INVALID: ArgsInvalidError,
  FILE_WRITE_FAILED: FileWriteFailedError,
  LIMIT_INVALID: LimitInvalidError,
  AGENT_BUSY: AgentBusyError,
  SANDBOX_FAILURE: SandboxFailureError,
  IMAGE_NOT_FOUND: ImageNotFoundError,
  IMAGE_CORRUPT: ImageCorruptError,
  IMAGE_BUILD_FAILED: ImageBuildFailedError,
  S3_TRANSFER_FAILED: S3TransferFailedError,
  IMAGE_LOCKED: ImageLockedError,
  VM_BOOT_FAILED: VmBootFailedError,
  VM_DIED: VmDiedError,
  VM_JAIL_FAILED: VmJailFailedError,
  VM_TIMEOUT: VmTimeoutError,
  VM_STATE: VmStateError,
  NETWORK_DISABLED: NetworkDisabledError,
  NETWORK_SETUP_FAILED: NetworkSetupFailedError,
  POOL_CLOSED: PoolClosedError,
  POOL_STATE: PoolStateError,
  JOB_STATE: JobStateError,
  CLUSTER_WIRE: ClusterWireError,
  CLUSTER_UNAVAILABLE: ClusterUnavailableError,
  SNAPSHOT_FAILED: SnapshotFailedError,
  CONFIG_INVALID: ConfigInvalidError,
  REQUEST_INVALID: RequestInvalidError,
  CALLBACK_URL_INVALID: CallbackUrlInvalidError,
  EGRESS_DENIED: EgressDeniedError,
  UNAUTHORIZED: UnauthorizedError,
  NOT_FOUND: NotFoundError,
  JOB_NOT_FOUND: JobNotFoundError,
  SANDBOX_NOT_FOUND: SandboxNotFoundError,
  SANDBOX_LIMIT: SandboxLimitError,
  SANDBOX_STATE: SandboxStateError,
  FILE_NOT_FOUND: FileNotFoundError,
  PAYLOAD_TOO_LARGE: PayloadTooLargeError,
  CONTENT_TYPE_UNSUPPORTED: ContentTypeUnsupportedError,
  UPGRADE_REQUIRED: UpgradeRequiredError,
  RATE_LIMITED: RateLimitedError,
  QUEUE_FULL: QueueFullError,
  SHUTTING_DOWN: ShuttingDownError,
  INTERNAL: InternalError,
};

/**
 * An error of a code known only at run time (a driver's failure code, an agent's wire error,
 * a code kept while a message gains context). Prefer the class itself where the code is fixed.
 */
export function errorOf(
  code: ErrorCode,
  message: string,
  options?: RunnerErrorOptions,
): RunnerError {
  return new ERROR_CLASSES[code](message, options);
}

/** The same error with more said: same code and details, the original as its cause. */
export function withContext(err: RunnerError, suffix: string): RunnerError {
  return errorOf(err.code, `${err.message}${suffix}`, { cause: err, details: err.details });
}

/** True when `value` names a code of the catalogue. */
export function isErrorCode(value: string): value is ErrorCode {
  return Object.hasOwn(ERROR_CATALOGUE, value);
}

/**
 * Anything thrown, as a RunnerError: ours as they are, anything else (a bug of ours, or a
 * library's surprise) as INTERNAL, keeping the original as its cause.
 */
export function asRunnerError(err: unknown): RunnerError {
  if (err instanceof RunnerError) return err;
  return new InternalError(err instanceof Error ? err.message : String(err), { cause: err });
}

/** True when `err` is a RunnerError with the given code. */
export function hasCode(err: unknown, code: ErrorCode): boolean {
  return err instanceof RunnerError && err.code === code;
}

/** The message of anything thrown. */
export function messageOf(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}
