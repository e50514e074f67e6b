import type { SandboxService } from '../sandbox/index.js';
import type { EventEmitter } from 'node:events';
import type { ClusterView } from '../cluster/index.js';
import type { Settings } from '../config/index.js';
import {
  asRunnerError,
  JobNotFoundError,
  PayloadTooLargeError,
  RequestInvalidError,
} from '../errors.js';
import type { LanguageRegistry } from '../languages/index.js';
import type {
  JobRequest,
  JobResult,
  LiveEvent,
  LiveHandlers,
  PreparedJob,
  RunOptions,
  RuntimeStatus,
  VmPool,
} from '../pool/index.js';
import { decodeBase64, sandboxStage, type Status } from '../protocol/index.js';
import type { JobQueue, JobRecord, JobRecords } from '../queue/index.js';
import { fitOutput, withoutOutput } from '../queue/index.js';
import { EgressPolicy } from '../net/index.js';
import { CallbackSender, checkCallbackUrl } from './callbacks.js';
import { JobEventHub } from './events.js';
import type { ApiMetrics } from './metrics.js';
import {
  checkOutput,
  compileRegex,
  checkerRequest,
  customChecker,
  REGEX_BUDGET_MS,
  type CheckOutcome,
  type CompareSpec,
  type RegexBudget,
} from './checkers.js';
import {
  executeResponse,
  mergeStderrIntoStdout,
  withCpuVerdict,
  sandboxResponse,
  stageView,
  textOrNull,
} from './results.js';
import type {
  CompareRequest,
  ExecuteRequest,
  ExecuteResponse,
  JobView,
  SubmitRequest,
  TestCaseResult,
} from './schemas.js';

/**
 * The part of the engine (src/pool) the HTTP layer uses. The real Engine satisfies it; unit
 * tests pass a fake that runs no VM. The API never reads the pool's files itself.
 */
export interface ApiEngine {
  readonly languages: LanguageRegistry;
  /** Sandboxes kept across calls (a local engine's; absent on an API node of a cluster). */
  readonly sandboxes?: SandboxService;
  readonly pool: Pick<VmPool, 'stats'>;
  /** Jobs the engine runs at once (a local engine's RunSlots); the queue's concurrency. */
  readonly runSlots?: number;
  /** The engine's VM timings (`vm` events: cold boots and restores), when it has them. */
  readonly events?: Pick<EventEmitter, 'on' | 'off'>;
  /** Checks a request and builds its one execute message (4xx RunnerErrors; no VM). */
  prepare(request: JobRequest, id?: string): PreparedJob;
  /** Runs a job; `owner` (the API key) is for a shared queue's per-key share. */
  run(job: PreparedJob, options?: RunOptions): Promise<JobResult>;
  /**
   * A cluster's: the job `id` as queued by any API node, and its result once it has one
   * (waiting for it); null when no such job was queued. Lets a node finish a job whose API
   * node stopped.
   */
  resume?(id: string, language: string): Promise<{ job: PreparedJob; result: JobResult } | null>;
  /**
   * A cluster's: puts the job on the shared queue now (run() then waits for it), so that a
   * job is in Redis before its 202 is sent.
   */
  enqueue?(job: PreparedJob, owner: string | null): Promise<unknown>;
  /** A cluster's live workers and queues (GET /v1/cluster); absent on a single box. */
  cluster?(): Promise<ClusterView>;
  /**
   * A cluster's: the live events of job `id`, whichever node accepted it and whichever worker
   * runs it, from its start until `onEnd`. Returns the means to stop watching.
   */
  watch?(id: string, onEvent: (event: LiveEvent) => void, onEnd: () => void): () => void;
  /** A shared queue's own cap (QUEUE_FULL), checked with the local queue's before a record is made. */
  admit?(): void;
  /** Every language's readiness (images built, snapshot taken). */
  runtimes(): Promise<Map<string, RuntimeStatus>>;
}

/** Settings the service reads. */
export type ServiceSettings = Pick<
  Settings,
  | 'maxFiles'
  | 'maxStdinBytes'
  | 'maxTestCases'
  | 'callbackAllowedHosts'
  | 'egressAllow'
  | 'callbackAttempts'
  | 'callbackBackoffMs'
  | 'callbackTimeoutMs'
  | 'jobRetentionHours'
  | 'jobStoreMaxResultBytes'
>;

/** How a test case's output is judged. */
export interface CaseCheck {
  /** null: nothing to compare (Judge0 without expected_output); the run's status decides. */
  readonly expected: string | null;
  readonly compare: CompareSpec;
  /** The case's stdin, which a custom checker gets as input.txt. */
  readonly input: Buffer;
  /** A regex checker's pattern, compiled (and so checked) at request time. */
  readonly re?: RegExp;
}

/** A request's `compare` as a checker spec: a string is short for `{ kind }`. */
export function compareSpec(compare: CompareRequest | undefined): CompareSpec {
  if (compare === undefined) return { kind: 'trim-trailing' };
  return typeof compare === 'string' ? { kind: compare } : compare;
}

/**
 * A checked request, ready for the queue: nothing in it can fail validation later. Its job's
 * id is the one id of the job: the record's, the engine's, the agent's and the result's.
 */
export interface ApiJob {
  readonly job: PreparedJob;
  /** The verdict rules of each test case, in order (null without test cases). */
  readonly cases: readonly CaseCheck[] | null;
  /** stderr is appended to stdout (and emptied) before the output is judged and shown. */
  readonly mergeStderr?: boolean;
  /**
   * A CPU time over which a run is a time limit though it was not killed (its kill limit is
   * higher: Judge0's cpu_extra_time).
   */
  readonly verdictCpuMs?: number;
  /**
   * A callback of an API's own shape (Judge0's PUT), kept with the record so that the node
   * that finishes the job sends it, even one that adopted it from a node that stopped: the
   * API's routes register its sender with JobService.routeCallback.
   */
  readonly routeCallback?: { readonly route: string; readonly url: string };
}

/** Sends a route's own callback of a finished record (see ApiJob.routeCallback). */
export type RouteCallbackSender = (url: string, record: JobRecord) => void;

const RESTART_MESSAGE = 'the server restarted before the job finished';

function decodeStdin(
  value: string | undefined,
  encoding: 'utf8' | 'base64' | undefined,
  where: string,
): Buffer {
  if (value === undefined) return Buffer.alloc(0);
  return encoding === 'base64' ? decodeBase64(value, where) : Buffer.from(value, 'utf8');
}

/**
 * Turns API requests into engine jobs: checks the caps (413) and the request itself (4xx, via
 * the engine's prepare, before any VM), runs jobs through the bounded queue, records every job
 * durably and sends the callbacks of submitted ones.
 */
export class JobService {
  readonly callbacks: CallbackSender;
  /** The live events of this node's submitted jobs (GET /v1/jobs/:id/events). */
  readonly events = new JobEventHub();
  /** The rule of every request made on a user's behalf (callbacks), from egressAllow. */
  readonly egress: EgressPolicy;
  private readonly routeCallbacks = new Map<string, RouteCallbackSender>();

  constructor(
    private readonly engine: ApiEngine,
    private readonly queue: JobQueue,
    private readonly jobs: JobRecords,
    private readonly metrics: ApiMetrics,
    private readonly settings: ServiceSettings,
    private readonly log: {
      info(msg: string): void;
      warn(msg: string): void;
      error(msg: string): void;
    },
  ) {
    this.egress = new EgressPolicy({ allow: settings.egressAllow });
    this.callbacks = new CallbackSender({
      egress: this.egress,
      attempts: settings.callbackAttempts,
      backoffMs: settings.callbackBackoffMs,
      timeoutMs: settings.callbackTimeoutMs,
      log: (m) => log.warn(m),
    });
  }

  /** Registers how the callbacks of `route` (ApiJob.routeCallback) are sent. */
  routeCallback(route: string, send: RouteCallbackSender): void {
    this.routeCallbacks.set(route, send);
  }

  /**
   * Checks a native request and builds its job, once: the caps (413), then the engine's own
   * checks (the language, file names, encodings, env, args, limits: 400 naming the field).
   */
  prepare(body: ExecuteRequest, options: { live?: boolean } = {}): ApiJob {
    const s = this.settings;
    if (body.files.length > s.maxFiles) {
      throw new PayloadTooLargeError(
        `a job may have at most ${s.maxFiles} files, not ${body.files.length}`,
      );
    }
    const stdin = decodeStdin(body.stdin, body.stdinEncoding, 'stdin');
    if (stdin.length > s.maxStdinBytes) {
      throw new PayloadTooLargeError(
        `stdin is ${stdin.length} bytes, over the cap of ${s.maxStdinBytes}`,
      );
    }
    let cases: CaseCheck[] | null = null;
    let caseStdins: Buffer[] | undefined;
    if (body.testCases !== undefined) {
      if (body.testCases.length > s.maxTestCases) {
        throw new PayloadTooLargeError(
          `a request may have at most ${s.maxTestCases} test cases, not ${body.testCases.length}`,
        );
      }
      if (body.stdin !== undefined)
        throw new RequestInvalidError('give stdin in each test case, not beside testCases');
      caseStdins = body.testCases.map((c, i) => {
        const caseStdin = decodeStdin(c.stdin, c.stdinEncoding, `testCases[${i}].stdin`);
        if (caseStdin.length > s.maxStdinBytes) {
          throw new PayloadTooLargeError(
            `testCases[${i}].stdin is ${caseStdin.length} bytes, over the cap of ${s.maxStdinBytes}`,
          );
        }
        return caseStdin;
      });
      const stdins = caseStdins;
      cases = body.testCases.map((c, i) =>
        this.caseCheck(
          c.expectedOutput,
          compareSpec(c.compare),
          stdins[i] ?? Buffer.alloc(0),
          `testCases[${i}].compare`,
        ),
      );
    }
    const job = this.engine.prepare({
      language: body.language,
      ...(body.version !== undefined && { version: body.version }),
      files: body.files,
      stdin,
      ...(body.args !== undefined && { args: body.args }),
      ...(body.env !== undefined && { env: body.env }),
      ...(body.compileLimits !== undefined && { compileLimits: body.compileLimits }),
      ...(body.runLimits !== undefined && { runLimits: body.runLimits }),
      ...(caseStdins !== undefined && { cases: caseStdins }),
      ...(body.network === true && { network: true }),
      // A submitted job without test cases runs live, for its watchers (/v1/jobs/:id/events).
      ...(options.live === true && caseStdins === undefined && { live: true }),
    });
    return { job, cases };
  }

  /**
   * Checks one case's checker at request time: a regex is compiled, a custom checker's job is
   * prepared once with empty files (its language, version and source are checked: a 400 before
   * anything runs).
   */
  caseCheck(
    expected: string | null,
    compare: CompareSpec,
    input: Buffer,
    field: string,
  ): CaseCheck {
    if (compare.kind === 'regex')
      return { expected, compare, input, re: compileRegex(compare.pattern, compare.flags, field) };
    if (compare.kind === 'custom') {
      const empty = Buffer.alloc(0);
      this.engine.prepare(
        checkerRequest(compare, { input: empty, expected: empty, actual: empty }),
      );
    }
    return { expected, compare, input };
  }

  /**
   * Runs a checked job through the queue and waits for its result. The job is recorded in the
   * durable store too (under the job's own id, readable at GET /v1/jobs/:id), so that a crash
   * mid-job leaves a final status behind, not nothing. The stored record has no output unless
   * `keepOutput` (then it is capped as for submitted jobs).
   */
  async execute(
    job: ApiJob,
    owner: string | null = null,
    options: {
      keepOutput?: boolean;
      /** A live job's consumer (a WebSocket): the job must have been prepared with `live`. */
      live?: LiveHandlers;
      /** Aborted when the client goes away: the job stops at once and frees its VM. */
      signal?: AbortSignal;
    } = {},
  ): Promise<ExecuteResponse> {
    this.queue.admit();
    this.engine.admit?.();
    const record = await this.record(job, owner, null);
    let result: ExecuteResponse;
    try {
      result = await this.queue.push(async () => {
        await this.jobs.markRunning(record.id);
        return this.run(job, owner, options.live, options.signal);
      });
    } catch (err) {
      await this.finish(
        record.id,
        this.failed(job, `the job failed to run: ${asRunnerError(err).message}`),
      );
      throw err;
    }
    // The client gets the output in the response; the record keeps the verdict only, unless
    // the API promises the result can be read again later (Judge0's ?wait=true): then capped.
    await this.finish(
      record.id,
      options.keepOutput === true
        ? fitOutput(result, this.settings.jobStoreMaxResultBytes)
        : withoutOutput(result),
    );
    return result;
  }

  /**
   * Accepts a job for later: recorded as queued (durably) before this returns, then run through
   * the queue. Throws QUEUE_FULL or SHUTTING_DOWN, with no record made, when it cannot be taken.
   */
  submit(body: SubmitRequest, owner: string | null): Promise<JobRecord> {
    const callbackUrl =
      body.callbackUrl === undefined
        ? null
        : checkCallbackUrl(body.callbackUrl, this.settings.callbackAllowedHosts, this.egress);
    return this.submitJob(this.prepare(body, { live: true }), owner, callbackUrl);
  }

  /**
   * submit() for a job already checked (the Judge0 API builds its own). `onFinish` is told the
   * final record (after any callbackUrl delivery was started): an API with its own callback
   * shape sends it from there.
   */
  async submitJob(
    job: ApiJob,
    owner: string | null,
    callbackUrl: string | null,
    onFinish?: (record: JobRecord) => void,
  ): Promise<JobRecord> {
    // Checked before the record is made; a push refused after it (the queue filled meanwhile)
    // still finishes the record, as a failure.
    this.queue.admit();
    this.engine.admit?.();
    const record = await this.record(job, owner, callbackUrl);
    await this.enqueued(record.id, job, owner);
    this.events.open(record.id);
    this.queue
      .push(async () => {
        await this.jobs.markRunning(record.id);
        return this.run(job, owner, this.watched(record.id, job));
      })
      .then(
        (result) =>
          this.finish(record.id, fitOutput(result, this.settings.jobStoreMaxResultBytes), onFinish),
        (err: unknown) => {
          const why = asRunnerError(err).message;
          this.log.error(`job ${record.id}: ${why}`);
          return this.finish(
            record.id,
            this.failed(job, `the job failed to run: ${why}`),
            onFinish,
          );
        },
      );
    return record;
  }

  /**
   * submitJob() for jobs that share one compile (Judge0's batch, issue 14): every member is
   * recorded as queued (durably) under its own id before this returns, then `combined` (one
   * test case per member, in order) runs once through the queue, and each member's record is
   * finished with its own case as if it had run alone: the shared compile, its own run and
   * verdict. Throws QUEUE_FULL or SHUTTING_DOWN, with no record made, when it cannot be taken.
   */
  async submitGroup(
    members: readonly { job: ApiJob; onFinish?: ((record: JobRecord) => void) | undefined }[],
    combined: ApiJob,
    owner: string | null,
  ): Promise<JobRecord[]> {
    this.queue.admit();
    this.engine.admit?.();
    const records: JobRecord[] = [];
    // Each member's spec names the group's job and its case in it, so that a node adopting a
    // member (its API node stopped) finds its share of the group's result.
    for (const [index, m] of members.entries())
      records.push(await this.record(m.job, owner, null, { id: combined.job.id, index }));
    await this.enqueued(combined.job.id, combined, owner);
    this.log.info(`job ${combined.job.id} runs the jobs ${records.map((r) => r.id).join(', ')}`);
    const finishAll = async (
      resultOf: (job: ApiJob, index: number) => ExecuteResponse,
    ): Promise<void> => {
      for (const [i, m] of members.entries())
        await this.finish(m.job.job.id, resultOf(m.job, i), m.onFinish);
    };
    this.queue
      .push(async () => {
        for (const r of records) await this.jobs.markRunning(r.id);
        return this.run(combined, owner);
      })
      .then(
        (result) =>
          finishAll((job, i) =>
            fitOutput(memberResponse(result, job, i), this.settings.jobStoreMaxResultBytes),
          ),
        (err: unknown) => {
          const why = asRunnerError(err).message;
          this.log.error(`job ${combined.job.id}: ${why}`);
          return finishAll((job) => this.failed(job, `the job failed to run: ${why}`));
        },
      );
    return records;
  }

  /**
   * In a cluster, puts an accepted job on the shared queue before the caller answers; when
   * that fails the record is finished as a failure and the error thrown (503).
   */
  private async enqueued(recordId: string, job: ApiJob, owner: string | null): Promise<void> {
    if (this.engine.enqueue === undefined) return;
    try {
      await this.engine.enqueue(job.job, owner);
    } catch (err) {
      await this.finish(
        recordId,
        this.failed(job, `the job could not be queued: ${asRunnerError(err).message}`),
      );
      throw err;
    }
  }

  /** A live submitted job's events go to its watchers; its stdin is all given up front. */
  private watched(id: string, job: ApiJob): LiveHandlers | undefined {
    if (job.job.message.stream === undefined) return undefined;
    return {
      onStart: (controls) => controls.stdinEnd(),
      onEvent: (event) => this.events.publish(id, event),
    };
  }

  /**
   * In a cluster, before a watcher subscribes to a job this node keeps no events of (another
   * node accepted it): this node's hub follows the job's events from Redis, and ends when its
   * record is final. Nothing on a single box, or for a job that is done.
   */
  follow(record: JobRecord, owner: string | null): void {
    const { id } = record;
    if (this.engine.watch === undefined || record.state === 'done' || this.events.has(id)) return;
    this.events.open(id);
    let streamEnded = false;
    const stop = this.engine.watch(
      id,
      (event) => this.events.publish(id, event),
      () => (streamEnded = true),
    );
    // The record is finished by the node that accepted the job, a little after the stream's
    // end; a job that never streams (it failed before it ran) ends with its record alone.
    const poll = setInterval(() => {
      void this.get(id, owner).then(
        (r) => {
          if (r.state !== 'done') return;
          clearInterval(poll);
          // Let the stream's tail in (it left the worker before the result did).
          setTimeout(
            () => {
              stop();
              this.events.end(id);
            },
            streamEnded ? 0 : 200,
          ).unref();
        },
        () => {
          clearInterval(poll);
          stop();
          this.events.end(id);
        },
      );
    }, 250);
    poll.unref();
  }

  /** Records an accepted job as queued, under the job's own id. */
  private record(
    job: ApiJob,
    owner: string | null,
    callbackUrl: string | null,
    group?: { readonly id: string; readonly index: number },
  ): Promise<JobRecord> {
    return this.jobs.create({
      id: job.job.id,
      language: job.job.language,
      version: job.job.version,
      owner,
      callbackUrl,
      spec: specOf(job, group),
    });
  }

  /**
   * In a cluster: adopts the open jobs of API nodes that stopped (each claimed by one node),
   * waits for their results on the shared queue and finishes their records, with the verdict
   * rules they were accepted with; a job that never reached the queue ends as sandbox_error.
   * Returns how many it adopted. Callbacks are sent by the adopting node, native ones and
   * those of an API's own shape (a Judge0 callback_url), once: only the node whose finish
   * moves the record to done sends them. A member of a grouped job (a Judge0 batch) is
   * adopted on its own: its share of the group's result, judged by its own rules.
   */
  async adoptOrphans(): Promise<number> {
    const orphans = (await this.jobs.orphans?.()) ?? [];
    for (const { record, spec } of orphans) void this.adopt(record, spec);
    return orphans.length;
  }

  private async adopt(record: JobRecord, spec: unknown): Promise<void> {
    this.log.warn(`job ${record.id}: the API node that accepted it stopped; this node finishes it`);
    const s = specOrDefault(spec);
    const routed = s.routeCallback ?? null;
    const sender = routed === null ? undefined : this.routeCallbacks.get(routed.route);
    if (routed !== null && sender === undefined)
      this.log.warn(`job ${record.id}: no sender of ${routed.route} callbacks on this node`);
    const onFinish =
      routed === null || sender === undefined
        ? undefined
        : (done: JobRecord) => sender(routed.url, done);
    // A group's member: the group's job is what was queued.
    const queuedId = s.group?.id ?? record.id;
    let resumed: { job: PreparedJob; result: JobResult } | null = null;
    try {
      resumed = (await this.engine.resume?.(queuedId, record.language)) ?? null;
    } catch (err) {
      this.log.error(`job ${record.id}: cannot resume: ${asRunnerError(err).message}`);
    }
    if (resumed === null) {
      await this.finish(
        record.id,
        sandboxResponse(
          record.id,
          record.language,
          record.version ?? '',
          'the API node that accepted the job stopped before it was queued',
        ),
        onFinish,
      );
      return;
    }
    let response: ExecuteResponse;
    if (s.group === undefined || s.group === null) {
      response = await this.judge(apiJobOf(resumed.job, spec), resumed.result);
    } else {
      // Its own case of the group's result, judged by its own rules, under its own id.
      const member = apiJobOf({ ...resumed.job, id: record.id }, spec);
      const own = resumed.result.cases?.[s.group.index];
      const share: JobResult = {
        ...resumed.result,
        id: record.id,
        cases: resumed.result.cases == null ? resumed.result.cases : own ? [own] : [],
      };
      response = memberResponse(await this.judge(member, share), member, 0);
    }
    await this.finish(
      record.id,
      fitOutput(response, this.settings.jobStoreMaxResultBytes),
      onFinish,
    );
  }

  /** A submitted job, if it exists and belongs to `owner`. */
  async get(id: string, owner: string | null): Promise<JobRecord> {
    const record = await this.jobs.get(id);
    if (record === undefined || (record.owner !== null && record.owner !== owner)) {
      throw new JobNotFoundError(`no job ${id}`);
    }
    return record;
  }

  /** The API's view of a record. */
  view(record: JobRecord): JobView {
    const iso = (t: number | null): string | null =>
      t === null ? null : new Date(t).toISOString();
    return {
      id: record.id,
      state: record.state,
      language: record.language,
      status: record.status,
      createdAt: new Date(record.createdAt).toISOString(),
      startedAt: iso(record.startedAt),
      finishedAt: iso(record.finishedAt),
      result: (record.result ?? null) as ExecuteResponse | null,
    };
  }

  /**
   * At start: ends the jobs a crashed run left queued or running (sandbox_error, the server
   * restarted), sends their callbacks, and prunes old records.
   */
  async recover(): Promise<JobRecord[]> {
    const ended = await this.jobs.recover((job) => ({
      status: 'sandbox_error',
      result: sandboxResponse(job.id, job.language, job.version ?? '', RESTART_MESSAGE),
    }));
    for (const job of ended) {
      this.log.warn(`job ${job.id} was left unfinished by an earlier run; ended as sandbox_error`);
      this.metrics.job(job.language, 'sandbox_error', 0);
      if (job.callbackUrl !== null) void this.callbacks.send(job.callbackUrl, this.view(job));
    }
    const pruned = await this.jobs.prune(this.settings.jobRetentionHours * 3_600_000);
    if (pruned > 0) this.log.info(`pruned ${pruned} finished job records`);
    return ended;
  }

  /** Prunes finished records past their retention (called periodically). */
  prune(): Promise<number> {
    return this.jobs.prune(this.settings.jobRetentionHours * 3_600_000);
  }

  /** Waits for every queued and running job, then for callbacks (up to `graceMs`). */
  async drain(callbackGraceMs = 10_000): Promise<void> {
    await this.queue.drain();
    await this.callbacks.close(callbackGraceMs);
  }

  private async finish(
    id: string,
    result: ExecuteResponse,
    onFinish?: (record: JobRecord) => void,
  ): Promise<void> {
    // Only the finish that moves the record to done gets here past jobs.finish (a second one
    // is a JOB_STATE error), so each callback is sent once, by one node.
    try {
      const record = await this.jobs.finish(id, result.status, result);
      this.events.end(id);
      if (record.callbackUrl !== null)
        void this.callbacks.send(record.callbackUrl, this.view(record));
      onFinish?.(record);
    } catch (err) {
      this.log.error(`job ${id}: could not record its result: ${asRunnerError(err).message}`);
    }
  }

  /**
   * Runs one prepared job (all its test cases) on the engine; never throws. A thrown error is
   * the system's (a failed restore, a closed pool) or a bug of ours (INTERNAL, counted apart):
   * either way the job ends sandbox_error and the log says why, with the job's id.
   */
  private async run(
    job: ApiJob,
    owner: string | null,
    live?: LiveHandlers,
    signal?: AbortSignal,
  ): Promise<ExecuteResponse> {
    const started = Date.now();
    let result: JobResult;
    try {
      result = await this.engine.run(job.job, {
        owner,
        ...(live && { live }),
        ...(signal && { signal }),
      });
    } catch (err) {
      const e = asRunnerError(err);
      this.log.error(`job ${job.job.id} (${job.job.language}): ${e.code}: ${e.message}`);
      if (e.code === 'INTERNAL') this.metrics.internalError('engine');
      this.metrics.job(job.job.language, 'sandbox_error', Date.now() - started);
      return this.failed(job, e.message);
    }
    this.metrics.job(result.language, result.status, result.timings.totalMs, result.timings);
    return this.judge(job, result);
  }

  /** The API's result of a job from the engine's: stderr merged, verdicts of CPU and cases. */
  private judge(job: ApiJob, engineResult: JobResult): Promise<ExecuteResponse> {
    let result = engineResult;
    if (job.mergeStderr === true) result = mergedResult(result);
    if (job.verdictCpuMs !== undefined) result = withCpuVerdict(result, job.verdictCpuMs);
    if (job.cases === null) return Promise.resolve(executeResponse(result));
    return caseResponse(result, job.cases, this.engine);
  }

  /** The result of a job the system failed to run: every test case says why, too. */
  private failed(job: ApiJob, message: string): ExecuteResponse {
    const { id, language, version } = job.job;
    const response = sandboxResponse(id, language, version, message);
    if (job.cases === null) return response;
    const testCases = job.cases.map((_, index): TestCaseResult => ({
      index,
      status: 'sandbox_error',
      passed: false,
      run: stageView(sandboxStage(message)),
      timings: null,
    }));
    return {
      ...response,
      run: null,
      testCases,
      summary: { total: testCases.length, passed: 0, failed: testCases.length },
    };
  }
}

/** An ApiJob's verdict rules as JSON (the cluster keeps them with the record). */
interface ApiJobSpec {
  readonly cases: { expected: string | null; compare: CompareSpec; input: string }[] | null;
  readonly mergeStderr: boolean;
  readonly verdictCpuMs: number | null;
  /** Its route's own callback (ApiJob.routeCallback). */
  readonly routeCallback?: { readonly route: string; readonly url: string } | null;
  /** A member of a grouped job: the group's job id and this member's case in it. */
  readonly group?: { readonly id: string; readonly index: number } | null;
}

function specOrDefault(spec: unknown): ApiJobSpec {
  return (spec ?? { cases: null, mergeStderr: false, verdictCpuMs: null }) as ApiJobSpec;
}

function specOf(job: ApiJob, group?: { readonly id: string; readonly index: number }): ApiJobSpec {
  return {
    ...(job.routeCallback !== undefined && { routeCallback: job.routeCallback }),
    ...(group !== undefined && { group }),
    cases:
      job.cases?.map((c) => ({
        expected: c.expected,
        compare: c.compare,
        input: c.input.toString('base64'),
      })) ?? null,
    mergeStderr: job.mergeStderr === true,
    verdictCpuMs: job.verdictCpuMs ?? null,
  };
}

/** The ApiJob of a prepared job and the spec it was accepted with (regexes compiled again). */
function apiJobOf(prepared: PreparedJob, spec: unknown): ApiJob {
  const s = specOrDefault(spec);
  return {
    job: prepared,
    cases:
      s.cases?.map((c, i) => ({
        expected: c.expected,
        compare: c.compare,
        input: Buffer.from(c.input, 'base64'),
        ...(c.compare.kind === 'regex' && {
          re: compileRegex(c.compare.pattern, c.compare.flags, `testCases[${i}].compare`),
        }),
      })) ?? null,
    ...(s.mergeStderr && { mergeStderr: true }),
    ...(s.verdictCpuMs !== null && { verdictCpuMs: s.verdictCpuMs }),
  };
}

/**
 * One member's share of a grouped job's result: its own test case (renumbered 0) and that
 * case's status, under its own id; the compile and the timings are the group's.
 */
function memberResponse(result: ExecuteResponse, member: ApiJob, index: number): ExecuteResponse {
  const c = result.testCases?.[index];
  if (c === undefined) return { ...result, id: member.job.id };
  return {
    ...result,
    id: member.job.id,
    status: c.status,
    testCases: [{ ...c, index: 0 }],
    summary: { total: 1, passed: c.passed ? 1 : 0, failed: c.passed ? 0 : 1 },
  };
}

/** A result with every run stage's stderr appended to its stdout (redirect_stderr_to_stdout). */
function mergedResult(result: JobResult): JobResult {
  return {
    ...result,
    run: result.run === null ? null : mergeStderrIntoStdout(result.run),
    ...(result.cases != null && { cases: result.cases.map(mergeStderrIntoStdout) }),
  };
}

/**
 * Test cases: one job, compiled once, run once per case with its own stdin in the same VM
 * (the agent's `cases`); each case gets its verdict from its checker. A custom checker runs
 * after the job, one checker job per case, each in its own VM. A case that did not run says
 * why: the compile stage failed, or an earlier case ended the job.
 */
async function caseResponse(
  result: JobResult,
  checks: readonly CaseCheck[],
  engine: ApiEngine,
): Promise<ExecuteResponse> {
  const runs = result.cases ?? [];
  const notRun =
    result.status === 'compile_error'
      ? 'not run: the program did not compile'
      : `not run: the job ended before this case (${result.status})`;
  const budget: RegexBudget = { remainingMs: REGEX_BUDGET_MS };
  const results: TestCaseResult[] = [];
  for (const [index, c] of checks.entries()) {
    const run = runs[index];
    if (run === undefined) {
      const status: Status =
        result.status === 'compile_error'
          ? 'compile_error'
          : result.status === 'ok'
            ? 'sandbox_error'
            : result.status;
      results.push({ index, status, passed: false, run: null, timings: null, message: notRun });
      continue;
    }
    const base = { index, status: run.status, run: stageView(run), timings: null };
    if (run.status !== 'ok') {
      results.push({ ...base, passed: false });
      continue;
    }
    if (c.expected === null) {
      results.push({ ...base, passed: true });
      continue;
    }
    const stdout = textOrNull(run.stdout);
    let check: CheckOutcome;
    if (c.compare.kind === 'custom') {
      check = await customChecker(engine, c.compare, {
        input: c.input,
        expected: Buffer.from(c.expected, 'utf8'),
        actual: Buffer.from(run.stdout, 'base64'),
      });
    } else if (stdout === null) {
      check = { verdict: 'wrong_answer', message: 'the output is not valid UTF-8' };
    } else {
      check = checkOutput(c.compare, stdout, c.expected, budget, c.re);
    }
    results.push({
      ...base,
      passed: check.verdict === 'accepted',
      verdict: check.verdict,
      ...(check.message !== undefined && { checkerMessage: check.message }),
      ...(check.difference !== undefined && { firstDifference: check.difference }),
    });
  }
  const passed = results.filter((r) => r.passed).length;
  return {
    ...executeResponse(result),
    run: null,
    testCases: results,
    summary: { total: results.length, passed, failed: results.length - passed },
  };
}
