import { STATUS_CODES } from 'node:http';
import { errorOf, isErrorCode, RunnerError } from '../errors.js';

/** Where the CLI finds a running `runner serve`, unless --url says otherwise. */
export const DEFAULT_SERVER_URL = 'http://127.0.0.1:2000';

/** The server a client command talks to: --url / RUNNER_URL, --key / RUNNER_API_KEY. */
export interface ServerOptions {
  readonly url?: string;
  readonly key?: string;
}

/** The CLI cannot reach the server at all (no RunnerError code fits a client-side failure). */
export class ServerUnreachableError extends Error {
  constructor(url: string, cause: unknown) {
    const why = cause instanceof Error ? ((cause.cause as Error | undefined) ?? cause).message : '';
    super(
      `cannot reach ${url}${why === '' ? '' : `: ${why}`} (is runner serve running? see --url)`,
    );
    this.name = 'ServerUnreachableError';
  }
}

/** One Server-Sent Event as read: its name and its JSON data. */
export interface ServerEvent {
  readonly event: string;
  readonly data: Record<string, unknown>;
}

/**
 * A small HTTP client of the native API for the CLI: JSON calls, raw bodies in and out as
 * streams, and Server-Sent Events read as they come. A refused request becomes the RunnerError
 * of its code (so `runner` prints its message and exits 2), as if the engine were local.
 */
export class ApiClient {
  readonly url: string;
  private readonly key: string | undefined;

  constructor(options: ServerOptions, env: NodeJS.ProcessEnv = process.env) {
    this.url = (options.url ?? env.RUNNER_URL ?? DEFAULT_SERVER_URL).replace(/\/+$/, '');
    const key = options.key ?? env.RUNNER_API_KEY;
    this.key = key === undefined || key === '' ? undefined : key;
  }

  /** A request; throws the server's error for a status of 400 or more. */
  async request(
    method: string,
    path: string,
    init: { json?: unknown; body?: AsyncIterable<Uint8Array>; accept?: string } = {},
  ): Promise<Response> {
    const headers: Record<string, string> = {};
    if (this.key !== undefined) headers.authorization = `Bearer ${this.key}`;
    if (init.accept !== undefined) headers.accept = init.accept;
    let body: RequestInit['body'];
    if (init.json !== undefined) {
      headers['content-type'] = 'application/json';
      body = JSON.stringify(init.json);
    } else if (init.body !== undefined) {
      headers['content-type'] = 'application/octet-stream';
      // Node's fetch streams an async iterable body (chunked) when told it is half duplex.
      body = init.body;
    }
    let res: Response;
    try {
      res = await fetch(`${this.url}${path}`, {
        method,
        headers,
        ...(body !== undefined && { body }),
        ...(init.body !== undefined && { duplex: 'half' }),
      });
    } catch (err) {
      throw new ServerUnreachableError(this.url, err);
    }
    if (res.status >= 400) throw await errorOfResponse(res);
    return res;
  }

  /** A JSON call: the parsed answer (undefined for 204). */
  async json<T>(method: string, path: string, body?: unknown): Promise<T> {
    const res = await this.request(method, path, body === undefined ? {} : { json: body });
    if (res.status === 204) return undefined as T;
    return (await res.json()) as T;
  }

  /** A call answered with Server-Sent Events: each event as it comes. */
  async *events(path: string, body: unknown): AsyncGenerator<ServerEvent> {
    const res = await this.request('POST', path, { json: body, accept: 'text/event-stream' });
    if (res.body === null) return;
    const decoder = new TextDecoder();
    let buffered = '';
    for await (const chunk of res.body) {
      buffered += decoder.decode(chunk as Uint8Array, { stream: true });
      let end: number;
      while ((end = buffered.indexOf('\n\n')) >= 0) {
        const block = buffered.slice(0, end);
        buffered = buffered.slice(end + 2);
        const event = parseEvent(block);
        if (event !== null) yield event;
      }
    }
  }
}

/** One `event:`/`data:` block; null for a comment (the keep-alives). */
function parseEvent(block: string): ServerEvent | null {
  let event = 'message';
  const data: string[] = [];
  for (const line of block.split('\n')) {
    if (line.startsWith('event:')) event = line.slice(6).trim();
    else if (line.startsWith('data:')) data.push(line.slice(5).trimStart());
  }
  if (data.length === 0) return null;
  return { event, data: JSON.parse(data.join('\n')) as Record<string, unknown> };
}

async function errorOfResponse(res: Response): Promise<RunnerError> {
  const text = await res.text();
  let code = '';
  let message = text.trim() === '' ? (STATUS_CODES[res.status] ?? 'error') : text;
  try {
    const body = JSON.parse(text) as { code?: unknown; message?: unknown };
    if (typeof body.code === 'string') code = body.code;
    if (typeof body.message === 'string') message = body.message;
  } catch {
    // not JSON: the text is the message
  }
  return errorOf(
    isErrorCode(code) ? code : res.status >= 500 ? 'INTERNAL' : 'REQUEST_INVALID',
    `the server said ${res.status}: ${message}`,
  );
}
