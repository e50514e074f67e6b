import type { FastifyReply } from 'fastify';
import { ConfigInvalidError, RequestInvalidError, RunnerError } from '../../errors.js';
import { MAX_LIMITS } from '../../config/index.js';
import { AGENT_VERSION } from '../../version.js';
import type { ApiContext, ApiInstance } from '../context.js';
import type { ApiJob } from '../service.js';
import { Judge0Languages } from './languages.js';
import {
  Judge0About,
  Judge0BatchQuery,
  Judge0BatchRequest,
  Judge0BatchView,
  Judge0ConfigInfo,
  Judge0Error,
  Judge0FieldErrors,
  Judge0LanguageDetail,
  Judge0LanguageParams,
  Judge0LanguageView,
  Judge0Query,
  Judge0StatusView,
  Judge0Submission,
  Judge0SubmissionRequest,
  Judge0TokenParams,
  Judge0Worker,
} from './schemas.js';
import {
  buildGroupJob,
  buildJob,
  DEFAULT_FIELDS,
  fieldErrorsOf,
  groupKey,
  judge0Limits,
  MAX_BATCH_SIZE,
  NOT_UTF8,
  parseFields,
  parseSubmission,
  submissionView,
  type Judge0Params,
} from './submission.js';
import { JUDGE0_STATUSES } from './statuses.js';
import { MAX_EXTRACT_BYTES } from './zip.js';

declare module 'fastify' {
  interface FastifyContextConfig {
    /** A Judge0 route: its key may come as X-Auth-Token, its errors are Judge0's `{ error }`. */
    judge0?: boolean;
  }
}

export { Judge0Languages } from './languages.js';
export { JUDGE0_STATUSES } from './statuses.js';

const security: { [scheme: string]: string[] }[] = [{ judge0Token: [] }, { bearer: [] }];
const errors = { 400: Judge0Error, 401: Judge0Error, 404: Judge0Error, 503: Judge0Error };
/** Route options every Judge0 route shares: X-Auth-Token is taken as an API key. */
const judge0 = { judge0: true } as const;

/** A prefix from the settings: empty, or `/a/b` (trailing slashes dropped). */
export function judge0Prefix(raw: string): string {
  const p = raw.trim().replace(/\/+$/, '');
  if (p !== '' && !/^\/[A-Za-z0-9._~\/-]+$/.test(p))
    throw new ConfigInvalidError(
      `RUNNER_JUDGE0_PREFIX must be empty or a path like /judge0, not ${JSON.stringify(raw)}`,
    );
  return p;
}

/** The route name of Judge0's callbacks (ApiJob.routeCallback). */
const JUDGE0_CALLBACK = 'judge0';

/**
 * Judge0 CE's API (the submission, language, status and system routes) as an adapter over the
 * job service: a submission is one job of the engine (compiled once, one test case per
 * run), or one test case of a batch's shared job (same source, other stdin), its token its
 * record's id; the result is read back from the job store and shown with
 * Judge0's fields and units. Bad input is Judge0's 422 of per-field messages. docs/judge0.md
 * says what is covered and where it differs.
 */
export function registerJudge0Routes(app: ApiInstance, ctx: ApiContext): void {
  const languages = new Judge0Languages(ctx.engine.languages);
  const settings = ctx.settings;
  const limits = judge0Limits(settings.timeLimitScalePercent);

  /** Checks a submission and builds its job; 422 (per field) when it cannot be. */
  const prepare = (body: unknown, base64: boolean) => {
    const params = parseSubmission(
      body,
      base64,
      languages,
      settings.callbackAllowedHosts,
      ctx.service.egress,
      settings.networkEnabled,
      limits,
    );
    return { params, job: buildJob(ctx.service, params) };
  };

  /** The PUT of Judge0's callback: the default fields, base64 encoded (as Judge0 sends it). */
  const sendCallback = (url: string, record: Parameters<typeof submissionView>[0]): void =>
    void ctx.service.callbacks.send(
      url,
      submissionView(record, languages, DEFAULT_FIELDS, true),
      'PUT',
    );
  // In a cluster, a node that adopts a submission from an API node that stopped sends it.
  ctx.service.routeCallback(JUDGE0_CALLBACK, sendCallback);
  const callback = (params: Judge0Params) => {
    const url = params.callbackUrl;
    return url === null
      ? undefined
      : (record: Parameters<typeof submissionView>[0]) => sendCallback(url, record);
  };
  /** The job with its callback kept beside its record (for the node that finishes it). */
  const routed = (job: ApiJob, params: Judge0Params): ApiJob =>
    params.callbackUrl === null
      ? job
      : { ...job, routeCallback: { route: JUDGE0_CALLBACK, url: params.callbackUrl } };

  /** A checked submission of a batch, and where its answer goes in the batch's response. */
  type Member = { params: Judge0Params; job: ApiJob; index: number };

  /**
   * The one job of a group, or null when it is refused (a cap on the whole job, say): then its
   * submissions run alone, as each was accepted alone.
   */
  const groupJob = (members: readonly Member[]): ApiJob | null => {
    try {
      return buildGroupJob(ctx.service, members);
    } catch (err) {
      if (err instanceof RunnerError && err.status < 500) return null;
      throw err;
    }
  };

  const unprocessable = (reply: FastifyReply, err: unknown) => {
    const fields = fieldErrorsOf(err);
    if (fields === null) throw err;
    return reply.code(422).send(fields);
  };

  app.post(
    '/submissions',
    {
      config: { createsJobs: true, ...judge0 },
      attachValidation: true,
      schema: {
        tags: ['judge0'],
        summary: 'Judge0: create a submission (201 with its token, or its result with ?wait=true)',
        security,
        querystring: Judge0Query,
        body: Judge0SubmissionRequest,
        response: { 201: Judge0Submission, 422: Judge0FieldErrors, ...errors },
      },
    },
    async (req, reply) => {
      const base64 = req.query.base64_encoded === 'true';
      const fields = parseFields(req.query.fields);
      let prepared;
      try {
        prepared = prepare(req.body, base64);
      } catch (err) {
        return unprocessable(reply, err);
      }
      const { params, job } = prepared;
      if (req.query.wait !== 'true') {
        const record = await ctx.service.submitJob(
          routed(job, params),
          req.owner,
          null,
          callback(params),
        );
        return reply.code(201).send({ token: record.id });
      }
      const createdAt = Date.now();
      // Judge0 lets a waited-for submission be read again by its token: keep its output.
      // Kept with the record too: a node that adopts it (this one stopped) sends the callback.
      const result = await ctx.service.execute(routed(job, params), req.owner, {
        keepOutput: true,
      });
      const finished = {
        id: job.job.id,
        language: job.job.language,
        state: 'done' as const,
        result,
        createdAt,
        finishedAt: Date.now(),
      };
      callback(params)?.(finished);
      try {
        return await reply.code(201).send(submissionView(finished, languages, fields, base64));
      } catch (err) {
        if (err instanceof RequestInvalidError && err.message === NOT_UTF8)
          return reply.code(201).send({ token: job.job.id, error: NOT_UTF8 });
        throw err;
      }
    },
  );

  app.post(
    '/submissions/batch',
    {
      config: { createsJobs: true, ...judge0 },
      attachValidation: true,
      schema: {
        tags: ['judge0'],
        summary: 'Judge0: create up to 20 submissions; a token or the errors of each',
        security,
        querystring: Judge0Query,
        body: Judge0BatchRequest,
        response: {
          201: { type: 'array', items: {} },
          422: { type: 'array', items: {} },
          ...errors,
        },
      },
    },
    async (req, reply) => {
      const base64 = req.query.base64_encoded === 'true';
      const list = (req.body as { submissions?: unknown } | null)?.submissions;
      if (!Array.isArray(list) || list.length === 0)
        throw new RequestInvalidError('there should be at least one submission in a batch');
      if (list.length > MAX_BATCH_SIZE)
        throw new RequestInvalidError(
          `number of submissions in a batch should be less than or equal to ${MAX_BATCH_SIZE}`,
        );
      const out: unknown[] = [];
      const accepted: Member[] = [];
      for (const body of list) {
        try {
          accepted.push({ ...prepare(body, base64), index: out.length });
          out.push(null);
        } catch (err) {
          const fields = fieldErrorsOf(err);
          if (fields === null) throw err;
          out.push(fields);
        }
      }
      // Submissions that differ only in stdin (and expected_output, callback_url) share one
      // job: compiled once, one test case each; each keeps its token and record.
      const groups = new Map<string, Member[]>();
      for (const m of accepted) {
        const key = groupKey(m.params) ?? m.job.job.id;
        const group = groups.get(key) ?? [];
        if (group.length === 0) groups.set(key, group);
        group.push(m);
      }
      for (const group of groups.values()) {
        for (let i = 0; i < group.length; i += settings.maxTestCases) {
          const chunk = group.slice(i, i + settings.maxTestCases);
          const combined = chunk.length > 1 ? groupJob(chunk) : null;
          if (combined === null) {
            for (const m of chunk)
              await ctx.service.submitJob(
                routed(m.job, m.params),
                req.owner,
                null,
                callback(m.params),
              );
          } else {
            const members = chunk.map((m) => ({
              job: routed(m.job, m.params),
              onFinish: callback(m.params),
            }));
            await ctx.service.submitGroup(members, combined, req.owner);
          }
          for (const m of chunk) out[m.index] = { token: m.job.job.id };
        }
      }
      return reply.code(accepted.length > 0 ? 201 : 422).send(out);
    },
  );

  app.get(
    '/submissions/batch',
    {
      config: judge0,
      schema: {
        tags: ['judge0'],
        summary: 'Judge0: several submissions by their tokens (null for an unknown one)',
        security,
        querystring: Judge0BatchQuery,
        response: { 200: Judge0BatchView, ...errors },
      },
    },
    async (req) => {
      const tokens = (req.query.tokens ?? '')
        .split(',')
        .map((t) => t.trim())
        .filter((t) => t !== '');
      if (tokens.length === 0)
        throw new RequestInvalidError('there should be at least one submission in a batch');
      if (tokens.length > MAX_BATCH_SIZE)
        throw new RequestInvalidError(
          `number of submissions in a batch should be less than or equal to ${MAX_BATCH_SIZE}`,
        );
      const fields = parseFields(req.query.fields);
      const base64 = req.query.base64_encoded === 'true';
      return {
        submissions: await Promise.all(
          tokens.map(async (token) => {
            let record;
            try {
              record = await ctx.service.get(token, req.owner);
            } catch {
              return null;
            }
            return submissionView(record, languages, fields, base64);
          }),
        ),
      };
    },
  );

  app.get(
    '/submissions/:token',
    {
      config: judge0,
      schema: {
        tags: ['judge0'],
        summary: 'Judge0: a submission, by its token (?fields=, ?base64_encoded=)',
        security,
        params: Judge0TokenParams,
        querystring: Judge0Query,
        response: { 200: Judge0Submission, ...errors },
      },
    },
    async (req) => {
      const record = await ctx.service.get(req.params.token, req.owner);
      return submissionView(
        record,
        languages,
        parseFields(req.query.fields),
        req.query.base64_encoded === 'true',
      );
    },
  );

  app.get(
    '/languages',
    {
      config: judge0,
      schema: {
        tags: ['judge0'],
        summary: 'Judge0: languages by Judge0 id',
        security,
        response: { 200: { type: 'array', items: Judge0LanguageView }, ...errors },
      },
    },
    () => languages.list().map((l) => ({ id: l.id, name: l.name })),
  );

  app.get(
    '/languages/:id',
    {
      config: judge0,
      schema: {
        tags: ['judge0'],
        summary: 'Judge0: one language, with its source file and commands',
        security,
        params: Judge0LanguageParams,
        response: { 200: Judge0LanguageDetail, ...errors },
      },
    },
    async (req, reply) => {
      const lang = /^\d+$/.test(req.params.id) ? languages.get(Number(req.params.id)) : undefined;
      if (lang === undefined) return reply.code(404).send({ error: 'Not Found' });
      const d = lang.definition;
      return {
        id: lang.id,
        name: lang.name,
        is_archived: false,
        source_file: d.sourceFile,
        compile_cmd: d.compile === null ? null : d.compile.join(' '),
        run_cmd: d.run.join(' '),
      };
    },
  );

  app.get(
    '/statuses',
    {
      config: judge0,
      schema: {
        tags: ['judge0'],
        summary: 'Judge0: the 14 statuses',
        security,
        response: { 200: { type: 'array', items: Judge0StatusView }, ...errors },
      },
    },
    () => JUDGE0_STATUSES.map((s) => ({ ...s })),
  );

  app.get(
    '/about',
    {
      config: judge0,
      schema: {
        tags: ['judge0'],
        summary: 'Judge0: about this server',
        security,
        response: { 200: Judge0About, ...errors },
      },
    },
    () => ({
      version: AGENT_VERSION,
      homepage: 'docs/judge0.md',
      source_code: 'runner-codes',
      maintainer: 'Runner Codes (a Judge0 CE-compatible API over microVMs)',
    }),
  );

  app.get(
    '/config_info',
    {
      config: judge0,
      schema: {
        tags: ['judge0'],
        summary: 'Judge0: the defaults and maxima submissions get',
        security,
        response: { 200: Judge0ConfigInfo, ...errors },
      },
    },
    () => {
      const l = limits;
      return {
        enable_wait_result: true,
        enable_compiler_options: false,
        allowed_languages_for_compile_options: [],
        enable_command_line_arguments: true,
        enable_submission_delete: false,
        enable_callbacks: true,
        callbacks_max_tries: settings.callbackAttempts,
        callbacks_timeout: settings.callbackTimeoutMs / 1000,
        enable_additional_files: true,
        max_queue_size: settings.queueMax,
        cpu_time_limit: l.cpu_time_limit.default,
        max_cpu_time_limit: l.cpu_time_limit.max,
        cpu_extra_time: l.cpu_extra_time.default,
        max_cpu_extra_time: l.cpu_extra_time.max,
        wall_time_limit: l.wall_time_limit.default,
        max_wall_time_limit: l.wall_time_limit.max,
        memory_limit: l.memory_limit.default,
        max_memory_limit: Math.min(l.memory_limit.max, MAX_LIMITS.run.memoryMib * 1024),
        stack_limit: l.stack_limit.default,
        max_stack_limit: l.stack_limit.max,
        max_processes_and_or_threads: l.max_processes_and_or_threads.default,
        max_max_processes_and_or_threads: l.max_processes_and_or_threads.max,
        enable_per_process_and_thread_time_limit: false,
        allow_enable_per_process_and_thread_time_limit: false,
        enable_per_process_and_thread_memory_limit: false,
        allow_enable_per_process_and_thread_memory_limit: false,
        max_file_size: l.max_file_size.default,
        max_max_file_size: l.max_file_size.max,
        number_of_runs: l.number_of_runs.default,
        max_number_of_runs: l.number_of_runs.max,
        redirect_stderr_to_stdout: false,
        max_extract_size: MAX_EXTRACT_BYTES / 1024,
        enable_batched_submissions: true,
        max_submission_batch_size: MAX_BATCH_SIZE,
        submission_cache_duration: 0,
        use_docs_as_homepage: false,
        allow_enable_network: settings.networkEnabled,
        enable_network: false,
      };
    },
  );

  app.get(
    '/workers',
    {
      config: judge0,
      schema: {
        tags: ['judge0'],
        summary: 'Judge0: the job queue and how busy it is',
        security,
        response: { 200: { type: 'array', items: Judge0Worker }, ...errors },
      },
    },
    () => {
      const q = ctx.queue.stats();
      return [
        {
          queue: 'default',
          size: q.queued,
          available: q.concurrency,
          idle: Math.max(0, q.concurrency - q.running),
          working: q.running,
          paused: 0,
          failed: 0,
        },
      ];
    },
  );
}
