import { LIVE_SIGNALS, type LiveSignal } from '../../protocol/index.js';

/**
 * Piston's close codes of /api/v2/connect (engineer-man/piston api/src/api/v2.js), with the
 * reason Piston sends along.
 */
export const PISTON_CLOSE = {
  alreadyInitialised: { code: 4000, reason: 'Already Initialized' },
  initTimeout: { code: 4001, reason: 'Initialization Timeout' },
  notifiedError: { code: 4002, reason: 'Notified Error' },
  notInitialised: { code: 4003, reason: 'Not yet initialized' },
  onlyStdin: { code: 4004, reason: 'Can only write to stdin' },
  invalidSignal: { code: 4005, reason: 'Invalid signal' },
  jobDone: { code: 4999, reason: 'Job Completed' },
} as const;

/** A WebSocket close: its code and its reason (at most 123 bytes, so no details in it). */
export interface Close {
  readonly code: number;
  readonly reason: string;
}

/** What a client's message asks for, or how it misused the protocol. */
export type ClientAction =
  | { readonly kind: 'init'; readonly body: Record<string, unknown> }
  | { readonly kind: 'stdin'; readonly data: Buffer }
  | { readonly kind: 'stdin_end' }
  | { readonly kind: 'signal'; readonly signal: LiveSignal }
  | { readonly kind: 'ignore' }
  /** Close at once with this code (no message first). */
  | { readonly kind: 'close'; readonly close: Close }
  /** Tell the client `message` (an `error` message), then close. */
  | { readonly kind: 'error'; readonly message: string };

const isSignal = (s: unknown): s is LiveSignal =>
  typeof s === 'string' && (LIVE_SIGNALS as readonly string[]).includes(s);

/** The message as a JSON object, or why it is not one. */
function objectOf(raw: string): Record<string, unknown> | string {
  let value: unknown;
  try {
    value = JSON.parse(raw);
  } catch (err) {
    return `the message is not JSON: ${(err as Error).message}`;
  }
  if (typeof value !== 'object' || value === null || Array.isArray(value))
    return 'the message must be a JSON object';
  return value as Record<string, unknown>;
}

/** `value` without its `type` field (the rest of an `init` is the execute request). */
function withoutType(value: Record<string, unknown>): Record<string, unknown> {
  const rest = { ...value };
  delete rest.type;
  return rest;
}

/**
 * One message of a Piston client, read as Piston reads it: `init` (the fields of /execute),
 * `data` {stream: "stdin", data} and `signal` {signal}; any other type is ignored, as Piston
 * does. A misuse is Piston's close code; a message that is not JSON is a notified error
 * (4002). Signals are those we can pass to the program (LIVE_SIGNALS); any other is 4005.
 */
export function parsePistonMessage(raw: string, initialised: boolean): ClientAction {
  const value = objectOf(raw);
  if (typeof value === 'string') return { kind: 'error', message: value };
  switch (value.type) {
    case 'init':
      if (initialised) return { kind: 'close', close: PISTON_CLOSE.alreadyInitialised };
      return { kind: 'init', body: withoutType(value) };
    case 'data':
      if (!initialised) return { kind: 'close', close: PISTON_CLOSE.notInitialised };
      if (value.stream !== 'stdin') return { kind: 'close', close: PISTON_CLOSE.onlyStdin };
      if (typeof value.data !== 'string')
        return { kind: 'error', message: 'data.data must be a string' };
      return { kind: 'stdin', data: Buffer.from(value.data, 'utf8') };
    case 'signal':
      if (!initialised) return { kind: 'close', close: PISTON_CLOSE.notInitialised };
      if (!isSignal(value.signal)) return { kind: 'close', close: PISTON_CLOSE.invalidSignal };
      return { kind: 'signal', signal: value.signal };
    default:
      return { kind: 'ignore' };
  }
}

const BASE64 = /^(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?$/;

/**
 * One message of a native /v1/connect client: `init` (the /v1/execute body), `stdin`
 * {data: UTF-8 text} or {dataBase64}, `stdin_end` and `signal` {signal}. Anything else (an
 * unknown type or field, a message out of turn) is an `error` (REQUEST_INVALID).
 */
export function parseNativeMessage(raw: string, initialised: boolean): ClientAction {
  const value = objectOf(raw);
  if (typeof value === 'string') return { kind: 'error', message: value };
  const type = value.type;
  const allowed: Record<string, readonly string[]> = {
    stdin: ['type', 'data', 'dataBase64'],
    stdin_end: ['type'],
    signal: ['type', 'signal'],
  };
  if (type === 'init') {
    if (initialised) return { kind: 'error', message: 'the job is initialised already' };
    return { kind: 'init', body: withoutType(value) };
  }
  if (typeof type !== 'string' || allowed[type] === undefined)
    return {
      kind: 'error',
      message: `unknown message type ${JSON.stringify(type)} (init, stdin, stdin_end, signal)`,
    };
  const unknown = Object.keys(value).find((k) => !allowed[type]?.includes(k));
  if (unknown !== undefined)
    return { kind: 'error', message: `${type} has an unknown field ${JSON.stringify(unknown)}` };
  if (!initialised) return { kind: 'error', message: `${type} before init` };
  if (type === 'stdin_end') return { kind: 'stdin_end' };
  if (type === 'signal') {
    if (!isSignal(value.signal))
      return {
        kind: 'error',
        message: `signal must be one of ${LIVE_SIGNALS.join(', ')}`,
      };
    return { kind: 'signal', signal: value.signal };
  }
  const { data, dataBase64 } = value;
  if (data !== undefined && typeof data !== 'string')
    return { kind: 'error', message: 'stdin.data must be a string' };
  if (dataBase64 !== undefined && (typeof dataBase64 !== 'string' || !BASE64.test(dataBase64)))
    return { kind: 'error', message: 'stdin.dataBase64 must be base64' };
  if (data === undefined && dataBase64 === undefined)
    return { kind: 'error', message: 'stdin needs data or dataBase64' };
  return {
    kind: 'stdin',
    data: Buffer.concat([
      Buffer.from(typeof data === 'string' ? data : '', 'utf8'),
      Buffer.from(typeof dataBase64 === 'string' ? dataBase64 : '', 'base64'),
    ]),
  };
}

/**
 * The close code of a native session that ends with an `error`: 4000 plus the error's HTTP
 * status (4400 a bad message or request, 4401, 4413 over a cap, 4429 rate limited, 4500 our
 * fault, 4503 the queue is full or the server is draining).
 */
export function nativeCloseCode(httpStatus: number): number {
  return 4000 + Math.min(999, Math.max(0, httpStatus));
}
