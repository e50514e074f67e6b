import { Readable } from 'node:stream';
import type { FastifyReply, FastifyRequest } from 'fastify';
import type { TypeBoxTypeProvider } from '@fastify/type-provider-typebox';
import Type from 'typebox';
import { NotFoundError, asRunnerError, type RunnerError } from '../../errors.js';
import { SANDBOX_DIR } from '../../protocol/index.js';
import {
  CELL_LANGUAGES,
  type CellEvent,
  type CellOutcome,
  type CellResult,
  type CommandHandle,
  type CommandResult,
  type FileEntry,
  type SandboxInfo,
  type SandboxService,
} from '../../sandbox/index.js';
import type { ApiContext, ApiInstance } from '../context.js';
import { EventStream } from '../events.js';
import { ErrorResponse } from '../schemas.js';
import { CappedText, Utf8Chunker } from './output.js';
import {
  CellBody,
  CellOutcomeView,
  CommandBody,
  CommandResultView,
  CreateSandboxBody,
  FileEntryView,
  FileList,
  FileListQuery,
  FilePathQuery,
  ForkBody,
  MakeDirBody,
  MakeDirResult,
  MoveBody,
  PauseBody,
  RestartBody,
  RestartResult,
  ResumeBody,
  SandboxList,
  SandboxParams,
  SandboxView,
  SetTimeoutBody,
} from './schemas.js';

export * from './schemas.js';
export { COMMAND_OUTPUT_BYTES } from './output.js';

const errors = (...codes: number[]) => Object.fromEntries(codes.map((c) => [c, ErrorResponse]));
const security: { [scheme: string]: string[] }[] = [{ bearer: [] }, { apiKey: [] }];
const tags = ['sandboxes'];
const NoContent = Type.Null({ description: 'No content' });
const SSE_NOTE =
  'With `Accept: text/event-stream` the answer is a Server-Sent Events stream instead (docs/api.md, "Sandboxes").';

/** A sandbox as the API shows it. */
export function sandboxView(s: SandboxInfo): SandboxView {
  return {
    id: s.id,
    language: s.language,
    template: s.template,
    state: s.state,
    createdAt: s.createdAt,
    startedAt: s.startedAt,
    expiresAt: s.expiresAt,
    pausedAt: s.pausedAt,
    timeoutMs: s.timeoutMs,
    metadata: { ...s.metadata },
    vmId: s.vmId,
    memoryMib: s.memoryMib,
    vcpus: s.vcpus,
    forkedFrom: s.forkedFrom,
  };
}

const fileView = (e: FileEntry): FileEntryView => ({
  name: e.name,
  path: e.path,
  type: e.type,
  size: e.size,
  mode: e.mode,
  modifiedAt: e.modifiedAt,
  ...(e.target !== undefined && { target: e.target }),
});

const cellResultView = (r: CellResult): CellResult => ({ ...r });

const outcomeView = (o: CellOutcome): CellOutcomeView => ({
  executionCount: o.executionCount,
  results: o.results.map(cellResultView),
  stdout: [...o.stdout],
  stderr: [...o.stderr],
  error: o.error === null ? null : { ...o.error },
});

const ended = (r: CommandResult) => ({
  exitCode: r.exitCode,
  signal: r.signal,
  status: r.status,
  message: r.message,
  wallTimeMs: r.wallTimeMs,
});

/** The error body a stream sends (event `failed`) when the call fails after it began. */
function failureBody(err: RunnerError): Record<string, unknown> {
  return { statusCode: err.status, code: err.code, message: err.message };
}

const wantsEvents = (req: FastifyRequest): boolean =>
  (req.headers.accept ?? '').includes('text/event-stream');

/**
 * The native sandbox routes (/v1/sandboxes): a translation of each call onto the engine's
 * SandboxService, checked against the caller's key. A node without the engine (an API node of
 * a cluster) answers every one of them 404 NOT_FOUND, saying so.
 */
export function registerSandboxRoutes(app: ApiInstance, ctx: ApiContext): void {
  const engine = (): SandboxService => {
    const s = ctx.engine.sandboxes;
    if (s === undefined)
      throw new NotFoundError(
        'sandboxes are not served by this node (an API node of a cluster keeps none): use a single box, or a node that runs VMs',
      );
    return s;
  };
  // Before the body is read (after the key check, a hook of the root scope).
  app.addHook('onRequest', (_req, _reply, done) => {
    try {
      engine();
      done();
    } catch (err) {
      done(err as Error);
    }
  });
  /** Routes whose body may be left out take it as `{}`. */
  const optionalBody = (req: FastifyRequest, _reply: FastifyReply, done: () => void): void => {
    req.body ??= {};
    done();
  };

  app.post(
    '/v1/sandboxes',
    {
      config: { createsJobs: true },
      schema: {
        tags,
        summary: 'Start a sandbox: a VM kept for you across calls until its time-to-live runs out',
        security,
        body: CreateSandboxBody,
        response: { 201: SandboxView, ...errors(400, 401, 415, 429, 500, 503) },
      },
    },
    async (req, reply) => {
      const b = req.body;
      const info = await engine().create({
        language: b.language,
        owner: req.owner,
        ...(b.timeoutMs !== undefined && { timeoutMs: b.timeoutMs }),
        ...(b.metadata !== undefined && { metadata: b.metadata }),
        ...(b.envs !== undefined && { envs: b.envs }),
      });
      return reply.code(201).header('location', `/v1/sandboxes/${info.id}`).send(sandboxView(info));
    },
  );

  app.get(
    '/v1/sandboxes',
    {
      schema: {
        tags,
        summary: 'Your sandboxes, running and paused',
        security,
        response: { 200: SandboxList, ...errors(401, 503) },
      },
    },
    (req) => ({ sandboxes: engine().list(req.owner).map(sandboxView) }),
  );

  app.get(
    '/v1/sandboxes/:id',
    {
      schema: {
        tags,
        summary: 'One sandbox',
        security,
        params: SandboxParams,
        response: { 200: SandboxView, ...errors(401, 404, 503) },
      },
    },
    (req) => sandboxView(engine().get(req.params.id, req.owner)),
  );

  app.delete(
    '/v1/sandboxes/:id',
    {
      schema: {
        tags,
        summary: 'Kill a sandbox: its VM, files and snapshot are gone',
        security,
        params: SandboxParams,
        response: { 204: NoContent, ...errors(401, 404, 503) },
      },
    },
    async (req, reply) => {
      await engine().kill(req.params.id, req.owner);
      return reply.code(204).send(null);
    },
  );

  app.post(
    '/v1/sandboxes/:id/timeout',
    {
      schema: {
        tags,
        summary: 'Set the time left (and the time-to-live each later call extends it by)',
        security,
        params: SandboxParams,
        body: SetTimeoutBody,
        response: { 200: SandboxView, ...errors(400, 401, 404, 415, 503) },
      },
    },
    (req) => sandboxView(engine().setTimeout(req.params.id, req.owner, req.body.timeoutMs)),
  );

  app.post(
    '/v1/sandboxes/:id/pause',
    {
      preValidation: optionalBody,
      schema: {
        tags,
        summary: 'Pause: save memory and files to disk and free the VM',
        security,
        params: SandboxParams,
        body: PauseBody,
        response: { 200: SandboxView, ...errors(400, 401, 404, 409, 415, 500, 503) },
      },
    },
    async (req) => sandboxView(await engine().pause(req.params.id, req.owner)),
  );

  app.post(
    '/v1/sandboxes/:id/resume',
    {
      config: { createsJobs: true },
      preValidation: optionalBody,
      schema: {
        tags,
        summary: 'Resume a paused sandbox where it was (a running one is only extended)',
        security,
        params: SandboxParams,
        body: ResumeBody,
        response: { 200: SandboxView, ...errors(400, 401, 404, 409, 415, 429, 500, 503) },
      },
    },
    async (req) => {
      const t = req.body.timeoutMs;
      return sandboxView(
        await engine().resume(
          req.params.id,
          req.owner,
          t === undefined ? undefined : { timeoutMs: t },
        ),
      );
    },
  );

  app.post(
    '/v1/sandboxes/:id/fork',
    {
      config: { createsJobs: true },
      preValidation: optionalBody,
      schema: {
        tags,
        summary: 'New running sandboxes, each a copy of this one (memory and files)',
        security,
        params: SandboxParams,
        body: ForkBody,
        response: { 201: SandboxList, ...errors(400, 401, 404, 409, 415, 429, 500, 503) },
      },
    },
    async (req, reply) => {
      const copies = await engine().fork(req.params.id, req.owner, req.body.count ?? 1);
      return reply.code(201).send({ sandboxes: copies.map(sandboxView) });
    },
  );

  app.post(
    '/v1/sandboxes/:id/cells',
    {
      schema: {
        tags,
        summary: 'Run a code cell in the sandbox’s interpreter (its variables stay for the next)',
        description: `An exception in the cell is its \`error\` (200), not an HTTP error. ${SSE_NOTE} Events: \`stdout\`/\`stderr\` {text}, \`result\` {result}, \`error\` {error}, and last \`done\` (the whole outcome, as the JSON answer).`,
        security,
        params: SandboxParams,
        body: CellBody,
        produces: ['application/json', 'text/event-stream'],
        response: { 200: CellOutcomeView, ...errors(400, 401, 404, 409, 415, 500, 503) },
      },
    },
    async (req, reply) => {
      const b = req.body;
      const request = {
        code: b.code,
        ...(b.language !== undefined && { language: b.language }),
        ...(b.envs !== undefined && { envs: b.envs }),
        ...(b.timeoutMs !== undefined && { timeoutMs: b.timeoutMs }),
      };
      if (!wantsEvents(req))
        return outcomeView(await engine().runCell(req.params.id, req.owner, request));
      const stream = new EventStream(reply);
      const onEvent = (e: CellEvent): Promise<void> =>
        e.type === 'result'
          ? stream.send('result', { type: 'result', result: cellResultView(e.result) })
          : stream.send(e.type, e);
      try {
        const outcome = await engine().runCell(req.params.id, req.owner, request, onEvent);
        await stream.send('done', { type: 'done', ...outcomeView(outcome) });
      } catch (err) {
        // Before the first event the call fails as any request does.
        if (!stream.started) throw err;
        await stream.send('failed', failureBody(asRunnerError(err)));
      }
      stream.end();
      return reply;
    },
  );

  app.post(
    '/v1/sandboxes/:id/cells/restart',
    {
      preValidation: optionalBody,
      schema: {
        tags,
        summary: 'Restart an interpreter: the next cell starts a fresh one, every variable gone',
        security,
        params: SandboxParams,
        body: RestartBody,
        response: { 200: RestartResult, ...errors(400, 401, 404, 409, 415, 503) },
      },
    },
    async (req) => {
      const { id } = req.params;
      // The default of a cell: the sandbox's language when it is a cell language, else python.
      const language =
        req.body.language ??
        CELL_LANGUAGES.find((l) => l === engine().get(id, req.owner).language) ??
        'python';
      return { restarted: await engine().restartInterpreter(id, req.owner, language) };
    },
  );

  app.post(
    '/v1/sandboxes/:id/commands',
    {
      schema: {
        tags,
        summary: 'Run a shell command and wait for it to end',
        description: `A command that fails is a result (200) with its status and exit code. If the client leaves before the end, the command is killed. ${SSE_NOTE} Events: \`start\` {pid}, \`stdout\`/\`stderr\` {text} or {dataBase64} (bytes that are not UTF-8), and last \`exit\` (how it ended).`,
        security,
        params: SandboxParams,
        body: CommandBody,
        produces: ['application/json', 'text/event-stream'],
        response: { 200: CommandResultView, ...errors(400, 401, 404, 409, 415, 500, 503) },
      },
    },
    async (req, reply) => {
      const b = req.body;
      const request = {
        cmd: b.cmd,
        ...(b.cwd !== undefined && { cwd: b.cwd }),
        ...(b.envs !== undefined && { envs: b.envs }),
        ...(b.timeoutMs !== undefined && { timeoutMs: b.timeoutMs }),
      };
      const { id } = req.params;
      let finished = false;
      // The client went away before the end: nobody will see the output, so stop the command.
      const onGone = (kill: () => void) =>
        reply.raw.once('close', () => {
          if (!finished) kill();
        });

      if (!wantsEvents(req)) {
        const out = { stdout: new CappedText(), stderr: new CappedText() };
        const handle = await engine().command(id, req.owner, request, (s, data) => {
          out[s].push(data);
        });
        onGone(() => handle.kill());
        const result = await handle.done;
        finished = true;
        return {
          ...ended(result),
          stdout: out.stdout.end(),
          stderr: out.stderr.end(),
          stdoutTruncated: out.stdout.truncated,
          stderrTruncated: out.stderr.truncated,
        };
      }

      const stream = new EventStream(reply);
      const chunkers = { stdout: new Utf8Chunker(), stderr: new Utf8Chunker() };
      // Output may come before command() resolves: it waits for the `start` event.
      let started = (): void => undefined;
      const startSent = new Promise<void>((resolve) => (started = resolve));
      let refused = false;
      try {
        let handle: CommandHandle;
        try {
          handle = await engine().command(id, req.owner, request, async (s, data) => {
            await startSent;
            if (refused) return; // the answer is an HTTP error: no stream
            const chunk = chunkers[s].push(data);
            if (chunk !== null) await stream.send(s, { type: s, ...chunk });
          });
        } catch (err) {
          refused = true;
          started();
          throw err;
        }
        onGone(() => handle.kill());
        await stream.send('start', { type: 'start', pid: handle.pid });
        started();
        const result = await handle.done;
        finished = true;
        for (const s of ['stdout', 'stderr'] as const) {
          const rest = chunkers[s].flush();
          if (rest !== null) await stream.send(s, { type: s, ...rest });
        }
        await stream.send('exit', { type: 'exit', ...ended(result) });
      } catch (err) {
        // Before the first event the call fails as any request does.
        if (!stream.started) throw err;
        await stream.send('failed', failureBody(asRunnerError(err)));
      }
      stream.end();
      return reply;
    },
  );

  // ---- files ----

  // Uploads: the raw body, of any content type, is handed on as a stream and never buffered,
  // so RUNNER_BODY_LIMIT_BYTES does not apply (a file is bounded by the sandbox's disk; the
  // whole request still by RUNNER_REQUEST_TIMEOUT_MS).
  void app.register((scope, _opts, done) => {
    scope.removeAllContentTypeParsers();
    scope.addContentTypeParser('*', (_req, payload, parsed) => {
      parsed(null, payload);
    });
    scope.withTypeProvider<TypeBoxTypeProvider>().put(
      '/v1/sandboxes/:id/files',
      {
        schema: {
          tags,
          summary: 'Write a file whole from the raw body (folders are made as needed)',
          description:
            'The body is the file’s bytes, of any content type (application/octet-stream is usual), streamed to the sandbox.',
          security,
          params: SandboxParams,
          querystring: FilePathQuery,
          consumes: ['application/octet-stream'],
          response: { 200: FileEntryView, ...errors(400, 401, 404, 409, 500, 503) },
        },
      },
      async (req) => {
        // No body at all (no content type, no length) is an empty file.
        const body = req.body as Readable | undefined;
        const content = body ?? Buffer.alloc(0);
        return fileView(
          await engine().writeFile(req.params.id, req.owner, req.query.path, content),
        );
      },
    );
    done();
  });

  app.get(
    '/v1/sandboxes/:id/files',
    {
      schema: {
        tags,
        summary: 'Read a file: its raw bytes',
        security,
        params: SandboxParams,
        querystring: FilePathQuery,
        produces: ['application/octet-stream'],
        response: {
          200: Type.String({ format: 'binary', description: 'The file’s bytes.' }),
          ...errors(400, 401, 404, 409, 503),
        },
      },
    },
    async (req, reply) => {
      const bytes = await engine().readFile(req.params.id, req.owner, req.query.path);
      // A failure after the first bytes can only cut the response short: the socket is closed.
      // (The typed reply expects the schema's string; a stream is sent as it is.)
      const body = Readable.from(bytes) as unknown as string;
      return reply.type('application/octet-stream').send(body);
    },
  );

  app.get(
    '/v1/sandboxes/:id/files/list',
    {
      schema: {
        tags,
        summary: 'A folder’s entries (depth levels deep)',
        security,
        params: SandboxParams,
        querystring: FileListQuery,
        response: { 200: FileList, ...errors(400, 401, 404, 409, 503) },
      },
    },
    async (req) => {
      const entries = await engine().listFiles(
        req.params.id,
        req.owner,
        req.query.path ?? SANDBOX_DIR,
        req.query.depth === undefined ? 1 : Number(req.query.depth),
      );
      return { entries: entries.map(fileView) };
    },
  );

  app.get(
    '/v1/sandboxes/:id/files/stat',
    {
      schema: {
        tags,
        summary: 'One file’s or folder’s entry',
        security,
        params: SandboxParams,
        querystring: FilePathQuery,
        response: { 200: FileEntryView, ...errors(400, 401, 404, 409, 503) },
      },
    },
    async (req) => fileView(await engine().statFile(req.params.id, req.owner, req.query.path)),
  );

  app.delete(
    '/v1/sandboxes/:id/files',
    {
      schema: {
        tags,
        summary: 'Remove a file, or a folder with everything in it',
        security,
        params: SandboxParams,
        querystring: FilePathQuery,
        response: { 204: NoContent, ...errors(400, 401, 404, 409, 503) },
      },
    },
    async (req, reply) => {
      await engine().removeFile(req.params.id, req.owner, req.query.path);
      return reply.code(204).send(null);
    },
  );

  app.post(
    '/v1/sandboxes/:id/files/mkdir',
    {
      schema: {
        tags,
        summary: 'Make a folder and its parents',
        security,
        params: SandboxParams,
        body: MakeDirBody,
        response: { 200: MakeDirResult, ...errors(400, 401, 404, 409, 415, 503) },
      },
    },
    async (req) => ({
      created: await engine().makeDir(req.params.id, req.owner, req.body.path),
    }),
  );

  app.post(
    '/v1/sandboxes/:id/files/move',
    {
      schema: {
        tags,
        summary: 'Rename (move) a file or folder',
        security,
        params: SandboxParams,
        body: MoveBody,
        response: { 200: FileEntryView, ...errors(400, 401, 404, 409, 415, 503) },
      },
    },
    async (req) =>
      fileView(await engine().moveFile(req.params.id, req.owner, req.body.from, req.body.to)),
  );
}
