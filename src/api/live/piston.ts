import { StringDecoder } from 'node:string_decoder';
import type { WebSocket } from 'ws';
import Type from 'typebox';
import { Compile } from 'typebox/compile';
import { asRunnerError, RequestInvalidError } from '../../errors.js';
import type { FastifyRequest } from 'fastify';
import type { ApiContext } from '../context.js';
import { scaledMaxima } from '../../config/index.js';
import { fromPiston } from '../piston.js';
import {
  PistonError,
  PistonExecuteRequest,
  type ExecuteResponse,
  type StageView,
} from '../schemas.js';
import { parsePistonMessage, PISTON_CLOSE } from './messages.js';
import { LiveSession } from './session.js';
import { LiveSocket } from './socket.js';

/** How long Piston waits for `init` after the socket opens before it closes it (4001). */
export const PISTON_INIT_TIMEOUT_MS = 1000;

const initValidator = Compile(PistonExecuteRequest);

/** A Piston `init` checked against /api/v2/execute's own schema; REQUEST_INVALID otherwise. */
export function pistonInit(body: Record<string, unknown>): PistonExecuteRequest {
  if (initValidator.Check(body)) return body;
  const first = initValidator.Errors(body)[0];
  const where = first ? `${first.instancePath || 'init'}: ${first.message}` : 'invalid';
  throw new RequestInvalidError(`init is not a valid execute request (${where})`);
}

/** Piston's `exit` for a stage, with our extras: its status and whether output was cut. */
function exitMessage(stage: 'compile' | 'run', view: StageView | null): Record<string, unknown> {
  return {
    type: 'exit',
    stage,
    code: view?.exitCode ?? null,
    signal: view?.signal ?? null,
    status: view?.status ?? 'ok',
    truncated: view !== null && (view.stdoutTruncated || view.stderrTruncated),
    ...(view?.message !== undefined && { message: view.message }),
  };
}

/**
 * GET /api/v2/connect: Piston's interactive WebSocket. The client sends `init` (the fields
 * of /execute) within PISTON_INIT_TIMEOUT_MS, then `data` {stream: "stdin"} and `signal`;
 * the server sends `runtime` once the program has its VM, `stage` at each stage's start,
 * `data` {stream: "stdout"|"stderr", data} as it comes (UTF-8 text, a character never split
 * across messages), `exit` {stage, code, signal} at each stage's end, then closes 4999.
 * A failure is `error` {message} then 4002; misuse closes 4000, 4001, 4003, 4004 or 4005.
 * Unlike Piston the output stays capped: `exit` also says `status` (output_limit, timeout,
 * ...) and `truncated`. A successful compile's `exit` comes as it ends; any other stage's
 * once the job's result is in (the stream carries no exit code).
 */
export function pistonConnect(ctx: ApiContext) {
  const maxima = scaledMaxima(ctx.settings.timeLimitScalePercent);
  return (ws: WebSocket, req: FastifyRequest): void => {
    const socket = new LiveSocket(ws);
    const session = new LiveSession(ctx, ws);
    const timer = setTimeout(() => {
      if (!session.initialised) socket.close(PISTON_CLOSE.initTimeout);
    }, PISTON_INIT_TIMEOUT_MS);
    timer.unref();
    ws.once('close', () => clearTimeout(timer));

    const fail = (message: string): void => {
      // A close reason holds 123 bytes at most: the message goes first, in its own frame.
      void socket.send({ type: 'error', message });
      socket.close(PISTON_CLOSE.notifiedError);
    };

    const start = async (body: Record<string, unknown>): Promise<void> => {
      const decoders = { stdout: new StringDecoder('utf8'), stderr: new StringDecoder('utf8') };
      // Stages whose start was sent and whose exit was not (yet).
      const open = new Set<'compile' | 'run'>();
      const job = ctx.service.prepare(fromPiston(pistonInit(body), maxima), { live: true });
      const result: ExecuteResponse = await session.run(job, req.owner, {
        started: (j) =>
          socket.send({ type: 'runtime', language: j.job.language, version: j.job.version }),
        event: (event) => {
          if (event.type === 'output') {
            const text = decoders[event.stream].write(event.data);
            return text === ''
              ? undefined
              : socket.send({ type: 'data', stream: event.stream, data: text });
          }
          if (event.phase === 'start') {
            open.add(event.stage);
            return socket.send({ type: 'stage', stage: event.stage });
          }
          // A compile that succeeded exited 0; any other end's code is in the result.
          if (event.stage === 'compile' && event.status === 'ok') {
            open.delete('compile');
            return socket.send({
              type: 'exit',
              stage: 'compile',
              code: 0,
              signal: null,
              status: 'ok',
              truncated: false,
            });
          }
          return undefined;
        },
      });
      if (socket.closed) return;
      if (result.status === 'sandbox_error') {
        const why = result.run?.message ?? result.compile?.message ?? 'the sandbox failed';
        fail(why);
        return;
      }
      for (const stream of ['stdout', 'stderr'] as const) {
        const rest = decoders[stream].end();
        if (rest !== '') await socket.send({ type: 'data', stream, data: rest });
      }
      for (const stage of ['compile', 'run'] as const) {
        if (open.has(stage)) await socket.send(exitMessage(stage, result[stage]));
      }
      socket.close(PISTON_CLOSE.jobDone);
    };

    session.listen(socket, parsePistonMessage, {
      init: start,
      fail: (err) => fail(asRunnerError(err).message),
    });
  };
}

/** The OpenAPI description of the route (a GET that upgrades). */
export const PISTON_CONNECT_DOC = {
  tags: ['piston'],
  security: [{ bearer: [] }, { apiKey: [] }] as { [scheme: string]: string[] }[],
  summary: "Piston's interactive WebSocket (GET with Upgrade: websocket)",
  description:
    'Client → server: `{"type":"init", ...the /api/v2/execute body}` within 1 s, then `{"type":"data","stream":"stdin","data":"text"}` and `{"type":"signal","signal":"SIGINT"}`. Server → client: `runtime` {language, version}, `stage` {stage}, `data` {stream: stdout|stderr, data}, `exit` {stage, code, signal, status, truncated}, `error` {message}. Close codes: 4000 already initialised, 4001 no init within 1 s, 4002 error (after an `error` message), 4003 not initialised, 4004 only stdin may be written, 4005 invalid signal, 4999 job done. The output stays capped as in /execute. An API key may also be given as `?key=KEY` (browsers cannot set headers on a WebSocket). The client closing the socket stops the job.',
  querystring: Type.Object({
    key: Type.Optional(Type.String({ description: 'The API key (for browsers)' })),
  }),
  response: {
    101: Type.Null({ description: 'Switching Protocols: the WebSocket is open' }),
    ...Object.fromEntries([401, 426, 429, 503].map((c) => [c, PistonError])),
  },
};
