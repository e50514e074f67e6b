import { Readable } from 'node:stream';
import { createGunzip } from 'node:zlib';
import type { FastifyRequest } from 'fastify';
import { RequestInvalidError, SandboxNotFoundError } from '../../errors.js';
import type {
  CommandHandle,
  CommandRequest,
  CommandResult,
  FileEntry,
  OutputListener,
} from '../../sandbox/index.js';
import type { ApiInstance } from '../context.js';
import { ConnectError, ConnectStream, decodeRequestEnvelope, toConnectError } from './connect.js';
import { multipartBoundary, readMultipart } from './multipart.js';
import {
  IN_SANDBOX,
  RPC,
  objectBody,
  optInt,
  optString,
  stringRecord,
  targetOf,
  type E2bDeps,
  type Target,
} from './shared.js';
import { entryInfo, writeInfo } from './views.js';

/** How often a command's stream carries a keepalive when it has nothing else to say. */
const KEEPALIVE_MS = 20_000;

/** One argument for `/bin/sh -c`, quoted so that the shell sees it as it is. */
export function shellQuote(arg: string): string {
  return `'${arg.replace(/'/g, `'\\''`)}'`;
}

/**
 * envd's `ProcessConfig` as one of our commands: the service runs a shell command line, so the
 * argv (E2B's `commands.run` sends `/bin/bash -l -c CMD`) is joined with every argument quoted.
 */
function commandRequest(msg: Record<string, unknown>, timeoutMs: number): CommandRequest {
  if (msg.pty !== undefined && msg.pty !== null)
    throw new ConnectError('unimplemented', 'PTY sessions are not supported');
  const process = objectBody(msg.process);
  const cmd = optString(process, 'cmd');
  if (cmd === undefined || cmd === '') throw new RequestInvalidError('process.cmd is required');
  const args = process.args ?? [];
  if (!Array.isArray(args) || args.some((a) => typeof a !== 'string'))
    throw new RequestInvalidError('process.args must be an array of strings');
  const envs = stringRecord(process.envs, 'process.envs');
  const cwd = optString(process, 'cwd');
  return {
    cmd: [cmd, ...(args as string[])].map(shellQuote).join(' '),
    timeoutMs,
    ...(cwd !== undefined && cwd !== '' && { cwd }),
    ...(envs !== undefined && { envs }),
    ...(msg.stdin === true && { stdin: true }),
  };
}

/** The call's deadline (`Connect-Timeout-Ms`); none given is no deadline (0: the most). */
function connectTimeoutMs(req: FastifyRequest): number {
  const raw = req.headers['connect-timeout-ms'];
  if (typeof raw !== 'string' || !/^\d{1,10}$/.test(raw)) return 0;
  return Number(raw);
}

/** envd's `end` event of a command that ended by itself or by a signal. */
function endEvent(result: CommandResult) {
  const exitCode = result.exitCode ?? -1;
  const status =
    result.signal !== null
      ? `signal: ${result.signal}`
      : result.exitCode !== null
        ? `exit status ${result.exitCode}`
        : (result.message ?? result.status);
  return {
    exitCode,
    exited: result.exitCode !== null,
    status,
    ...(exitCode !== 0 && { error: result.message ?? status }),
  };
}

/** The command a `{ process: { pid } }` selector names (tags are not kept: not_found). */
function selectedPid(msg: Record<string, unknown>): number {
  const pid = optInt(objectBody(msg.process), 'pid');
  if (pid === undefined) throw new ConnectError('not_found', 'no such process (select it by pid)');
  return pid;
}

/**
 * envd, E2B's daemon in the sandbox (port 49983): the process and filesystem Connect-RPC
 * services and the `/files` and `/health` REST routes, each call one of the engine's.
 */
export function registerEnvdRoutes(app: ApiInstance, deps: E2bDeps): void {
  const handleOf = (t: Target, pid: number): CommandHandle => {
    const h = deps
      .sandboxes()
      .commands(t.id, t.owner)
      .find((c) => c.pid === pid);
    if (h === undefined) throw new ConnectError('not_found', `process ${pid} not found`);
    return h;
  };

  /** A unary call: JSON in, JSON out, a Connect error body (with its status) on failure. */
  const unary = (path: string, fn: (t: Target, msg: Record<string, unknown>) => unknown): void => {
    app.post(path, RPC, async (req, reply) => {
      try {
        const out = await fn(targetOf(req, deps.tokens), objectBody(req.body));
        return await reply.code(200).type('application/json').send(out);
      } catch (err) {
        const e = toConnectError(err);
        return reply
          .code(e.status)
          .type('application/json')
          .send({ code: e.code, message: e.message });
      }
    });
  };

  /**
   * A server stream of one command's events: `start`, its output as `data`, keepalives, and
   * `end`, then the end-stream envelope. The output is sent in order and waits for the client
   * (its promise is what the engine awaits). A client that leaves does not stop the command.
   */
  const streamCommand = async (
    stream: ConnectStream,
    start: (onOutput: OutputListener) => Promise<{ handle: CommandHandle; stop?: () => void }>,
  ): Promise<void> => {
    let started = false;
    let open!: () => void;
    let chain: Promise<void> = new Promise<void>((r) => (open = r));
    const push = (message: unknown): Promise<void> => {
      chain = chain.then(() => stream.send(message));
      return chain;
    };
    const onOutput: OutputListener = (which, data) => {
      const p = push({ event: { data: { [which]: data.toString('base64') } } });
      // Before the start event is out the engine is not made to wait (command() may not
      // have resolved yet).
      return started ? p : undefined;
    };
    const { handle, stop } = await start(onOutput);
    await stream.send({ event: { start: { pid: handle.pid } } });
    started = true;
    open();
    const keepalive = setInterval(() => void push({ event: { keepalive: {} } }), KEEPALIVE_MS);
    try {
      const result = await handle.done;
      await chain;
      if (result.status === 'timeout') {
        stream.end(
          new ConnectError(
            'deadline_exceeded',
            result.message ?? 'the command ran over its time limit',
          ),
        );
        return;
      }
      if (result.status === 'sandbox_error' && result.exitCode === null && result.signal === null) {
        stream.end(new ConnectError('internal', result.message ?? 'the command could not run'));
        return;
      }
      await stream.send({ event: { end: endEvent(result) } });
      stream.end();
    } finally {
      clearInterval(keepalive);
      stop?.();
    }
  };

  /** A server-streaming route: the errors of the call go in the end-stream envelope. */
  const serverStream = (
    path: string,
    fn: (
      t: Target,
      msg: Record<string, unknown>,
      stream: ConnectStream,
      req: FastifyRequest,
    ) => Promise<void>,
  ): void => {
    app.post(path, RPC, async (req, reply) => {
      const t = targetOf(req, deps.tokens); // before the 200: a wrong token is HTTP 401
      reply.hijack();
      const stream = new ConnectStream(reply.raw);
      try {
        await fn(t, objectBody(decodeRequestEnvelope(req.body)), stream, req);
      } catch (err) {
        if (!(err instanceof ConnectError) && toConnectError(err).code === 'internal')
          req.log.error({ err }, 'E2B stream failed');
        stream.end(err);
      }
    });
  };

  serverStream('/process.Process/Start', async (t, msg, stream, req) => {
    const request = commandRequest(msg, connectTimeoutMs(req));
    await streamCommand(stream, async (onOutput) => ({
      handle: await deps.sandboxes().command(t.id, t.owner, request, onOutput),
    }));
  });

  serverStream('/process.Process/Connect', async (t, msg, stream) => {
    const handle = handleOf(t, selectedPid(msg));
    await streamCommand(stream, (onOutput) =>
      Promise.resolve({ handle, stop: handle.listen(onOutput) }),
    );
  });

  unary('/process.Process/List', (t) => ({
    processes: deps
      .sandboxes()
      .commands(t.id, t.owner)
      .map((h) => ({ config: { cmd: '/bin/sh', args: ['-c', h.cmd], envs: {} }, pid: h.pid })),
  }));

  unary('/process.Process/SendInput', async (t, msg) => {
    const handle = handleOf(t, selectedPid(msg));
    const input = objectBody(msg.input);
    if (input.pty !== undefined) throw new ConnectError('unimplemented', 'there is no PTY');
    const data = optString(input, 'stdin') ?? '';
    await handle.stdin(Buffer.from(data, 'base64'));
    return {};
  });

  unary('/process.Process/SendSignal', (t, msg) => {
    const handle = handleOf(t, selectedPid(msg));
    const s = msg.signal;
    const signal =
      s === 'SIGNAL_SIGTERM' || s === 15
        ? 'SIGTERM'
        : s === 'SIGNAL_SIGKILL' || s === 9 || s === undefined
          ? 'SIGKILL'
          : null;
    if (signal === null) throw new RequestInvalidError(`unknown signal ${JSON.stringify(s)}`);
    handle.kill(signal);
    return {};
  });

  unary('/process.Process/CloseStdin', (t, msg) => {
    handleOf(t, selectedPid(msg)).stdinEnd();
    return {};
  });

  const unimplemented = (what: string) => () => {
    throw new ConnectError('unimplemented', `${what} is not supported (docs/e2b.md)`);
  };
  unary('/process.Process/Update', unimplemented('resizing a PTY'));
  unary('/process.Process/StreamInput', unimplemented('streamed input'));
  unary('/filesystem.Filesystem/CreateWatcher', unimplemented('watching a folder'));
  unary('/filesystem.Filesystem/GetWatcherEvents', unimplemented('watching a folder'));
  unary('/filesystem.Filesystem/RemoveWatcher', unimplemented('watching a folder'));
  serverStream('/filesystem.Filesystem/WatchDir', () =>
    Promise.reject(new ConnectError('unimplemented', 'watching a folder is not supported')),
  );

  const pathOf = (msg: Record<string, unknown>, key = 'path'): string => {
    const p = optString(msg, key);
    if (p === undefined || p === '') throw new RequestInvalidError(`${key} is required`);
    return p;
  };

  unary('/filesystem.Filesystem/Stat', async (t, msg) => ({
    entry: entryInfo(await deps.sandboxes().statFile(t.id, t.owner, pathOf(msg))),
  }));

  unary('/filesystem.Filesystem/ListDir', async (t, msg) => ({
    entries: (
      await deps.sandboxes().listFiles(t.id, t.owner, pathOf(msg), optInt(msg, 'depth') ?? 1)
    ).map(entryInfo),
  }));

  unary('/filesystem.Filesystem/MakeDir', async (t, msg) => {
    const path = pathOf(msg);
    const svc = deps.sandboxes();
    if (!(await svc.makeDir(t.id, t.owner, path)))
      throw new ConnectError('already_exists', `${path} already exists`);
    return { entry: entryInfo(await svc.statFile(t.id, t.owner, path)) };
  });

  unary('/filesystem.Filesystem/Remove', async (t, msg) => {
    await deps.sandboxes().removeFile(t.id, t.owner, pathOf(msg));
    return {};
  });

  unary('/filesystem.Filesystem/Move', async (t, msg) => ({
    entry: entryInfo(
      await deps
        .sandboxes()
        .moveFile(t.id, t.owner, pathOf(msg, 'source'), pathOf(msg, 'destination')),
    ),
  }));

  const queryPath = (req: FastifyRequest): string | undefined => {
    const p = (req.query as Record<string, unknown>).path;
    return typeof p === 'string' && p !== '' ? p : undefined;
  };

  // Downloads stream from the engine; `username` is accepted and ignored (one user).
  app.get('/files', IN_SANDBOX, async (req, reply) => {
    const t = targetOf(req, deps.tokens);
    const path = queryPath(req);
    if (path === undefined) throw new RequestInvalidError('the path parameter is required');
    const content = await deps.sandboxes().readFile(t.id, t.owner, path);
    return reply.type('application/octet-stream').send(Readable.from(content));
  });

  // Uploads: multipart (one part per file, its filename the path) or a raw body with ?path=;
  // each file streams into the engine as it arrives.
  app.post('/files', IN_SANDBOX, async (req, reply) => {
    const t = targetOf(req, deps.tokens);
    const path = queryPath(req);
    const type = req.headers['content-type'] ?? '';
    const body = req.body as Readable;
    const svc = deps.sandboxes();
    const written: FileEntry[] = [];
    if (/^multipart\/form-data/i.test(type)) {
      await readMultipart(body, multipartBoundary(type), async (part, content) => {
        if (part.name !== 'file') return;
        const to = path ?? part.filename ?? '';
        if (to === '') throw new RequestInvalidError('a file part has no filename (its path)');
        written.push(await svc.writeFile(t.id, t.owner, to, content));
      });
    } else {
      if (path === undefined) throw new RequestInvalidError('the path parameter is required');
      const gzip = /^\s*gzip\s*$/i.test(req.headers['content-encoding'] ?? '');
      written.push(
        await svc.writeFile(t.id, t.owner, path, gzip ? body.pipe(createGunzip()) : body),
      );
    }
    if (written.length === 0) throw new RequestInvalidError('the body has no file part');
    return reply.code(200).send(written.map(writeInfo));
  });

  // isRunning(): 2xx while the sandbox runs, 502 (E2B's "not running") otherwise.
  app.get('/health', IN_SANDBOX, async (req, reply) => {
    const t = targetOf(req, deps.tokens);
    try {
      if (deps.sandboxes().get(t.id, t.owner).state === 'running')
        return await reply.code(204).send();
    } catch (err) {
      if (!(err instanceof SandboxNotFoundError)) throw err;
    }
    return reply.code(502).send({ code: 502, message: 'the sandbox is not running' });
  });
}
