import Type from 'typebox';
import { Compile } from 'typebox/compile';
import type { FastifyRequest } from 'fastify';
import type { WebSocket } from 'ws';
import { asRunnerError, RequestInvalidError, type RunnerError } from '../../errors.js';
import type { ApiContext } from '../context.js';
import { jobEventOf } from '../events.js';
import { ErrorResponse, ExecuteRequest } from '../schemas.js';
import { nativeCloseCode, parseNativeMessage } from './messages.js';
import { LiveSession, textOf } from './session.js';
import { LiveSocket } from './socket.js';

/** How long /v1/connect waits for `init` after the socket opens (then REQUEST_INVALID, 4400). */
export const NATIVE_INIT_TIMEOUT_MS = 10_000;

const initValidator = Compile(ExecuteRequest);

/** A native `init` checked against POST /v1/execute's schema; REQUEST_INVALID otherwise. */
export function nativeInit(body: Record<string, unknown>): ExecuteRequest {
  if (initValidator.Check(body)) return body;
  const first = initValidator.Errors(body)[0];
  const where = first ? `${first.instancePath || 'init'}: ${first.message}` : 'invalid';
  throw new RequestInvalidError(`init is not a valid execute request (${where})`);
}

/** The `error` message of a RunnerError: the catalogue's code, the HTTP body's fields. */
function errorMessage(err: RunnerError): Record<string, unknown> {
  return {
    type: 'error',
    error: {
      code: err.code,
      message: err.message,
      status: err.status,
      ...(err.details !== undefined && { details: err.details }),
    },
  };
}

/**
 * GET /v1/connect: the native interactive WebSocket. The client sends `init` (the
 * /v1/execute body plus `"type":"init"`), then `stdin` {data | dataBase64}, `stdin_end` and
 * `signal` {signal}; the server sends `started` {id, language, version} when the program has
 * its VM, the same `stage` and `output` events as GET /v1/jobs/{id}/events, and last
 * `result` {result: the /v1/execute response}, then closes 1000. A failure is `error`
 * {error: {code, message, status}} and a close of 4000 + the error's HTTP status.
 */
export function nativeConnect(ctx: ApiContext) {
  return (ws: WebSocket, req: FastifyRequest): void => {
    const socket = new LiveSocket(ws);
    const session = new LiveSession(ctx, ws);
    let initialised = false;

    const fail = (error: unknown): void => {
      const err = asRunnerError(error);
      void socket.send(errorMessage(err));
      socket.close({ code: nativeCloseCode(err.status), reason: err.code });
    };
    const timer = setTimeout(() => {
      if (!initialised)
        fail(new RequestInvalidError(`no init within ${NATIVE_INIT_TIMEOUT_MS} ms`));
    }, NATIVE_INIT_TIMEOUT_MS);
    timer.unref();
    ws.once('close', () => clearTimeout(timer));

    const start = async (body: Record<string, unknown>): Promise<void> => {
      const job = ctx.service.prepare(nativeInit(body), { live: true });
      const result = await session.run(job, req.owner, {
        started: (j) =>
          socket.send({
            type: 'started',
            id: j.job.id,
            language: j.job.language,
            version: j.job.version,
          }),
        event: (event) => socket.send(jobEventOf(event)),
      });
      if (socket.closed) return;
      await socket.send({ type: 'result', result });
      socket.close({ code: 1000, reason: 'job done' });
    };

    ws.on('message', (data) => {
      if (socket.closed) return;
      const action = parseNativeMessage(textOf(data), initialised);
      try {
        switch (action.kind) {
          case 'ignore':
            return;
          case 'close':
            socket.close(action.close);
            return;
          case 'error':
            fail(new RequestInvalidError(action.message));
            return;
          case 'init':
            initialised = true;
            clearTimeout(timer);
            start(action.body).catch(fail);
            return;
          default:
            session.apply(action);
        }
      } catch (err) {
        fail(err);
      }
    });
  };
}

/** The OpenAPI description of the route (a GET that upgrades). */
export const NATIVE_CONNECT_DOC = {
  tags: ['v1'],
  security: [{ bearer: [] }, { apiKey: [] }] as { [scheme: string]: string[] }[],
  summary: 'Run a job interactively over a WebSocket (GET with Upgrade: websocket)',
  description:
    'Client → server: `{"type":"init", ...the /v1/execute body}` (within 10 s), then `{"type":"stdin","data":"text"}` or `{"type":"stdin","dataBase64":"..."}`, `{"type":"stdin_end"}` and `{"type":"signal","signal":"SIGINT"}` (SIGINT, SIGTERM, SIGKILL, SIGQUIT, SIGHUP, SIGUSR1, SIGUSR2). Server → client: `started` {id, language, version}; the events of GET /v1/jobs/{id}/events: `stage` {stage, phase, status?} and `output` {stream, data: base64}; last `result` {result: the POST /v1/execute response}, then close 1000. On failure: `error` {error: {code, message, status, details?}} (the error catalogue), then close 4000 + status (4400 bad message or request, 4401, 4413, 4429, 4500, 4503). An API key may also be given as `?key=KEY` (browsers cannot set headers on a WebSocket). The client closing the socket stops the job and frees its VM.',
  querystring: Type.Object({
    key: Type.Optional(Type.String({ description: 'The API key (for browsers)' })),
  }),
  response: {
    101: Type.Null({ description: 'Switching Protocols: the WebSocket is open' }),
    401: ErrorResponse,
    426: ErrorResponse,
    429: ErrorResponse,
    503: ErrorResponse,
  },
};
