import Type from 'typebox';
import { scaledDefaults, scaledMaxima } from '../config/index.js';
import { LimitsSchema } from '../protocol/index.js';
import type { ApiContext, ApiInstance } from './context.js';
import { EventStream } from './events.js';
import {
  ErrorResponse,
  ExecuteRequest,
  ExecuteResponse,
  HealthResponse,
  JobAccepted,
  JobParams,
  JobView,
  ReadyResponse,
  ClusterResponse,
  RuntimesResponse,
  SubmitRequest,
} from './schemas.js';

const errors = (...codes: number[]) => Object.fromEntries(codes.map((c) => [c, ErrorResponse]));
const security: { [scheme: string]: string[] }[] = [{ bearer: [] }, { apiKey: [] }];

const StageLimitsView = Type.Object({ compile: LimitsSchema, run: LimitsSchema });
const LimitsResponse = Type.Object({
  defaults: StageLimitsView,
  maxima: StageLimitsView,
  caps: Type.Object({
    bodyLimitBytes: Type.Integer(),
    maxFiles: Type.Integer(),
    maxStdinBytes: Type.Integer(),
    maxTestCases: Type.Integer(),
  }),
});

/** The native API (/v1), health, readiness and metrics. */
export function registerV1Routes(app: ApiInstance, ctx: ApiContext): void {
  app.get(
    '/healthz',
    {
      config: { public: true },
      schema: {
        tags: ['health'],
        summary: 'Liveness: the process answers',
        response: { 200: HealthResponse },
      },
    },
    () => ({
      status: 'ok',
    }),
  );

  app.get(
    '/v1/cluster',
    {
      schema: {
        tags: ['v1'],
        summary: 'The hosts that run jobs (workers, their free slots) and the queues, per language',
        security,
        response: { 200: ClusterResponse, ...errors(401) },
      },
    },
    async (): Promise<ClusterResponse> => {
      const now = Date.now();
      if (ctx.engine.cluster !== undefined) {
        const view = await ctx.engine.cluster();
        return {
          mode: 'cluster',
          workers: view.workers.map((w) => ({
            id: w.id,
            capacity: w.capacity,
            running: w.running,
            draining: w.draining,
            languages: [...w.languages],
            lastSeenMs: Math.max(0, now - w.at),
          })),
          capacity: view.capacity,
          running: view.running,
          free: view.free,
          waiting: view.waiting,
          queues: view.queues,
        };
      }
      // A single box: this host is the one worker; its queue is the in-process one.
      const pool = ctx.engine.pool.stats();
      const q = ctx.queue.stats();
      return {
        mode: 'single',
        workers: [
          {
            id: 'local',
            capacity: pool.capacity,
            running: q.running,
            draining: ctx.draining(),
            languages: ctx.engine.languages.names(),
            lastSeenMs: 0,
          },
        ],
        capacity: ctx.draining() ? 0 : pool.capacity,
        running: q.running,
        free: Math.max(0, pool.capacity - q.running),
        waiting: q.queued,
        queues: {},
      };
    },
  );

  app.get(
    '/readyz',
    {
      config: { public: true },
      schema: {
        tags: ['health'],
        summary: 'Readiness: takes jobs (503 while draining)',
        response: { 200: ReadyResponse, 503: ReadyResponse },
      },
    },
    async (_req, reply) => {
      const q = ctx.queue.stats();
      const queue = {
        queued: q.queued,
        running: q.running,
        concurrency: q.concurrency,
        maxQueued: q.maxQueued,
      };
      if (ctx.draining()) return reply.code(503).send({ status: 'draining', queue });
      return { status: 'ready', queue };
    },
  );

  app.get(
    '/metrics',
    {
      schema: {
        tags: ['health'],
        summary: 'Prometheus metrics',
        security,
        produces: ['text/plain'],
        response: { 200: Type.String(), ...errors(401) },
      },
    },
    async (_req, reply) => {
      const text = await ctx.metrics.text();
      return reply.type(ctx.metrics.contentType).send(text);
    },
  );

  app.post(
    '/v1/execute',
    {
      config: { createsJobs: true },
      schema: {
        tags: ['v1'],
        summary: 'Run a job and wait for its result',
        description:
          'A program that fails is a result (200) with its status, never an HTTP error. With testCases the program is compiled once and run once per case in the same VM, each case in a fresh copy of the compiled work dir with its own stdin, and each case gets a verdict.',
        security,
        body: ExecuteRequest,
        response: { 200: ExecuteResponse, ...errors(400, 401, 413, 415, 429, 503) },
      },
    },
    async (req) => {
      const job = ctx.service.prepare(req.body);
      return ctx.service.execute(job, req.owner);
    },
  );

  app.post(
    '/v1/jobs',
    {
      config: { createsJobs: true },
      schema: {
        tags: ['v1'],
        summary: 'Submit a job; poll GET /v1/jobs/{id} or give a callbackUrl',
        security,
        body: SubmitRequest,
        response: { 202: JobAccepted, ...errors(400, 401, 413, 415, 429, 503) },
      },
    },
    async (req, reply) => {
      const record = await ctx.service.submit(req.body, req.owner);
      const url = `/v1/jobs/${record.id}`;
      return reply
        .code(202)
        .header('location', url)
        .send({ id: record.id, state: 'queued' as const, url });
    },
  );

  app.get(
    '/v1/jobs/:id',
    {
      schema: {
        tags: ['v1'],
        summary: 'A submitted job: its state and, once done, its result',
        security,
        params: JobParams,
        response: { 200: JobView, ...errors(401, 404) },
      },
    },
    async (req) => ctx.service.view(await ctx.service.get(req.params.id, req.owner)),
  );

  app.get(
    '/v1/jobs/:id/events',
    {
      schema: {
        tags: ['v1'],
        summary:
          'Watch a submitted job (Server-Sent Events): stage and output events as they happen, then result',
        description:
          'text/event-stream. Events: `stage` {stage, phase, status?}, `output` {stream, data: base64}, and last `result` (the job view, as GET /v1/jobs/{id} gives it), after which the stream ends. A watcher that comes late gets the events so far first. Leaving does not affect the job.',
        security,
        params: JobParams,
        response: { 200: Type.String({ description: 'text/event-stream' }), ...errors(401, 404) },
      },
    },
    async (req, reply) => {
      const { id } = req.params;
      const owner = req.owner;
      const first = await ctx.service.get(id, owner); // 404 for another key's job or none
      const stream = new EventStream(reply);
      stream.open();
      let unsubscribe: (() => void) | null = null;
      let poll: NodeJS.Timeout | undefined;
      stream.onClose(() => {
        if (poll) clearInterval(poll);
        unsubscribe?.();
      });
      const send = (event: string, data: unknown): void => void stream.send(event, data);
      const finish = async (): Promise<void> => {
        if (stream.closed) return;
        const record = await ctx.service.get(id, owner).catch(() => first);
        send('result', ctx.service.view(record));
        stream.end();
      };
      // In a cluster, another node's job: this node follows its events from Redis.
      ctx.service.follow(first, owner);
      unsubscribe = ctx.service.events.subscribe(id, (event) => {
        if (event.type === 'done') void finish();
        else send(event.type, event);
      });
      if (unsubscribe === null) {
        // This node keeps no events of the job (another node's, or from before a restart):
        // the record alone, watched until it is final.
        if (first.state === 'done') {
          await finish();
          return;
        }
        poll = setInterval(() => {
          void ctx.service.get(id, owner).then(
            (r) => (r.state === 'done' ? finish() : undefined),
            () => finish(),
          );
        }, 500);
      }
    },
  );

  app.get(
    '/v1/runtimes',
    {
      schema: {
        tags: ['v1'],
        summary: 'Languages, versions, aliases, and whether each is ready',
        security,
        response: { 200: RuntimesResponse, ...errors(401) },
      },
    },
    async () => {
      const statuses = await ctx.engine.runtimes();
      return ctx.engine.languages.list().map(({ definition: d }) => ({
        language: d.name,
        version: d.version,
        aliases: [...d.aliases],
        compiled: d.compile !== null,
        imageReady: statuses.get(d.name)?.imageReady ?? false,
        snapshotReady: statuses.get(d.name)?.snapshotReady ?? false,
      }));
    },
  );

  app.get(
    '/v1/limits',
    {
      schema: {
        tags: ['v1'],
        summary: 'Default limits, server maxima and request caps',
        security,
        response: { 200: LimitsResponse, ...errors(401) },
      },
    },
    () => ({
      defaults: scaledDefaults(ctx.settings.timeLimitScalePercent),
      maxima: scaledMaxima(ctx.settings.timeLimitScalePercent),
      caps: {
        bodyLimitBytes: ctx.settings.bodyLimitBytes,
        maxFiles: ctx.settings.maxFiles,
        maxStdinBytes: ctx.settings.maxStdinBytes,
        maxTestCases: ctx.settings.maxTestCases,
      },
    }),
  );
}
