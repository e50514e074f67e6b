import type { ServerResponse } from 'node:http';
import { RequestInvalidError, RunnerError } from '../../errors.js';
import { writeWithRoom } from '../events.js';

/**
 * Connect-RPC (the protocol of E2B's in-sandbox daemon, envd), JSON encoding, by hand: a unary
 * call is a JSON POST answered with JSON; a server stream answers `application/connect+json`
 * envelopes (1 flag byte, a 4-byte big-endian length, JSON) ending with one end-stream
 * envelope (flag 0x02) that carries the error, if any.
 */

/** The Connect codes, each with the HTTP status a unary error of it is sent with. */
const CODE_STATUS = {
  canceled: 499,
  unknown: 500,
  invalid_argument: 400,
  deadline_exceeded: 504,
  not_found: 404,
  already_exists: 409,
  permission_denied: 403,
  resource_exhausted: 429,
  failed_precondition: 412,
  aborted: 409,
  out_of_range: 400,
  unimplemented: 501,
  internal: 500,
  unavailable: 503,
  data_loss: 500,
  unauthenticated: 401,
} as const;

export type ConnectCode = keyof typeof CODE_STATUS;

/** An error of a Connect call, with its own code (our RunnerErrors map from their status). */
export class ConnectError extends Error {
  constructor(
    readonly code: ConnectCode,
    message: string,
  ) {
    super(message);
    this.name = 'ConnectError';
  }

  get status(): number {
    return CODE_STATUS[this.code];
  }
}

/** An HTTP (or catalogue) status as a Connect code (the SDK maps the code to its errors). */
export function codeOfStatus(status: number): ConnectCode {
  switch (status) {
    case 400:
    case 413:
    case 415:
      return 'invalid_argument';
    case 401:
      return 'unauthenticated';
    case 403:
      return 'permission_denied';
    case 404:
      return 'not_found';
    case 409:
      return 'failed_precondition';
    case 429:
      return 'resource_exhausted';
    case 501:
      return 'unimplemented';
    case 503:
      return 'unavailable';
    case 504:
      return 'deadline_exceeded';
    default:
      return status >= 400 && status < 500 ? 'invalid_argument' : 'internal';
  }
}

/** Anything thrown as the Connect error the client gets. */
export function toConnectError(err: unknown): ConnectError {
  if (err instanceof ConnectError) return err;
  if (err instanceof RunnerError) return new ConnectError(codeOfStatus(err.status), err.message);
  const status = (err as { statusCode?: unknown }).statusCode;
  if (typeof status === 'number' && status >= 400 && status < 500)
    return new ConnectError(codeOfStatus(status), (err as Error).message);
  return new ConnectError('internal', 'internal error');
}

/** The one message of a server-stream request (a single envelope). */
export function decodeRequestEnvelope(body: unknown): unknown {
  if (!Buffer.isBuffer(body))
    throw new RequestInvalidError('a stream call must be application/connect+json');
  if (body.length < 5) throw new RequestInvalidError('the body is not a Connect envelope');
  const flags = body[0] ?? 0;
  if ((flags & 0x01) !== 0)
    throw new RequestInvalidError('compressed Connect envelopes are not supported');
  const length = body.readUInt32BE(1);
  if (5 + length !== body.length)
    throw new RequestInvalidError('the body must be exactly one Connect envelope');
  try {
    return JSON.parse(body.subarray(5).toString('utf8')) as unknown;
  } catch (err) {
    throw new RequestInvalidError(`the envelope is not valid JSON: ${(err as Error).message}`);
  }
}

function envelope(flags: number, message: unknown): Buffer {
  const json = Buffer.from(JSON.stringify(message), 'utf8');
  const head = Buffer.alloc(5);
  head[0] = flags;
  head.writeUInt32BE(json.length, 1);
  return Buffer.concat([head, json]);
}

/**
 * The response side of one server stream, over a hijacked reply: messages wait for the
 * client when its socket is full (backpressure reaches the command's output), and nothing is
 * written once the client left or the stream ended.
 */
export class ConnectStream {
  private ended = false;
  private closed = false;

  constructor(private readonly res: ServerResponse) {
    res.writeHead(200, { 'content-type': 'application/connect+json' });
    res.once('close', () => {
      this.closed = true;
    });
  }

  /** True once the client went away or the end was sent. */
  get done(): boolean {
    return this.ended || this.closed;
  }

  /** Sends one message; resolves when the socket has room again. */
  async send(message: unknown): Promise<void> {
    if (this.done) return;
    await writeWithRoom(this.res, envelope(0x00, message));
  }

  /** The end-stream envelope (`{}`, or the error), then the end of the response. */
  end(err?: unknown): void {
    if (this.done) return;
    this.ended = true;
    const e = err === undefined ? undefined : toConnectError(err);
    this.res.end(
      envelope(0x02, e === undefined ? {} : { error: { code: e.code, message: e.message } }),
    );
  }
}
