import type { EventEmitter } from 'node:events';
import { randomUUID } from 'node:crypto';
import type { Settings } from '../config/settings.js';
import type { DataPaths } from '../config/paths.js';
import { JobNotFoundError, PayloadTooLargeError, RequestInvalidError } from '../errors.js';
import type { ImageStore } from '../images/store.js';
import type { LanguageRegistry } from '../languages/index.js';
import type { VmPool } from '../pool/pool.js';
import type { JobRequest, JobResult, JobRunner } from '../pool/runner.js';
import type { Status } from '../protocol/index.js';
import type { JobQueue, JobRecord, JobStore } from '../queue/index.js';
import { fitOutput, withoutOutput } from '../queue/index.js';
import { CallbackSender, checkCallbackUrl } from './callbacks.js';
import type { ApiMetrics } from './metrics.js';
import {
  executeResponse,
  outputMatches,
  sandboxResponse,
  stageView,
  textOrNull,
} from './results.js';
import type {
  ExecuteRequest,
  ExecuteResponse,
  JobView,
  SubmitRequest,
  TestCaseResult,
} from './schemas.js';

/**
 * The part of the engine (src/pool/engine.ts) the HTTP layer uses. The real Engine satisfies
 * it; unit tests pass a fake that runs no VM.
 */
export interface ApiEngine {
  readonly languages: LanguageRegistry;
  readonly runner: Pick<JobRunner, 'prepare'>;
  readonly pool: Pick<VmPool, 'stats'>;
  readonly store: Pick<ImageStore, 'latest'>;
  readonly paths: Pick<DataPaths, 'snapshotsDir'>;
  /** The engine's VM timings (`vm` events: cold boots and restores), when it has them. */
  readonly events?: Pick<EventEmitter, 'on' | 'off'>;
  run(request: JobRequest): Promise<JobResult>;
}

/** Settings the service reads. */
export type ServiceSettings = Pick<
  Settings,
  | 'maxFiles'
  | 'maxStdinBytes'
  | 'maxTestCases'
  | 'callbackAllowedHosts'
  | 'callbackAttempts'
  | 'callbackBackoffMs'
  | 'callbackTimeoutMs'
  | 'jobRetentionHours'
  | 'jobStoreMaxResultBytes'
>;

/** A checked request, ready for the queue: nothing in it can fail validation later. */
export interface PreparedJob {
  readonly request: JobRequest;
  readonly language: string;
  readonly version: string;
  readonly cases:
    readonly { stdin: Buffer; expected: string; compare: 'exact' | 'trim-trailing' }[] | null;
}

const RESTART_MESSAGE = 'the server restarted before the job finished';
const BASE64 = /^[A-Za-z0-9+/]*={0,2}$/;

function decodeStdin(
  value: string | undefined,
  encoding: 'utf8' | 'base64' | undefined,
  where: string,
): Buffer {
  if (value === undefined) return Buffer.alloc(0);
  if (encoding === 'base64') {
    if (!BASE64.test(value)) throw new RequestInvalidError(`${where} is not valid base64`);
    return Buffer.from(value, 'base64');
  }
  return Buffer.from(value, 'utf8');
}

/**
 * Turns API requests into engine jobs: checks the caps (413) and the request itself (4xx, via
 * the runner's prepare, before any VM), runs jobs through the bounded queue, records submitted
 * jobs durably and sends their callbacks.
 */
export class JobService {
  readonly callbacks: CallbackSender;

  constructor(
    private readonly engine: ApiEngine,
    private readonly queue: JobQueue,
    private readonly jobs: JobStore,
    private readonly metrics: ApiMetrics,
    private readonly settings: ServiceSettings,
    private readonly log: {
      info(msg: string): void;
      warn(msg: string): void;
      error(msg: string): void;
    },
  ) {
    this.callbacks = new CallbackSender({
      attempts: settings.callbackAttempts,
      backoffMs: settings.callbackBackoffMs,
      timeoutMs: settings.callbackTimeoutMs,
      log: (m) => log.warn(m),
    });
  }

  /** Checks a native request and makes the engine request; throws 4xx RunnerErrors. */
  prepare(body: ExecuteRequest): PreparedJob {
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
    let cases: PreparedJob['cases'] = null;
    if (body.testCases !== undefined) {
      if (body.testCases.length > s.maxTestCases) {
        throw new PayloadTooLargeError(
          `a request may have at most ${s.maxTestCases} test cases, not ${body.testCases.length}`,
        );
      }
      if (body.stdin !== undefined)
        throw new RequestInvalidError('give stdin in each test case, not beside testCases');
      cases = body.testCases.map((c, i) => {
        const caseStdin = decodeStdin(c.stdin, c.stdinEncoding, `testCases/${i}/stdin`);
        if (caseStdin.length > s.maxStdinBytes) {
          throw new PayloadTooLargeError(
            `testCases/${i}/stdin is ${caseStdin.length} bytes, over the cap of ${s.maxStdinBytes}`,
          );
        }
        return {
          stdin: caseStdin,
          expected: c.expectedOutput,
          compare: c.compare ?? 'trim-trailing',
        };
      });
    }
    const request: JobRequest = {
      language: body.language,
      version: body.version,
      files: body.files,
      stdin,
      args: body.args,
      env: body.env,
      compileLimits: body.compileLimits,
      runLimits: body.runLimits,
    };
    // Validation only: language, version, file names, limits against the server maxima.
    const { language, version } = this.engine.runner.prepare(request);
    return { request, language, version, cases };
  }

  /**
   * Runs a checked job through the queue and waits for its result. The job is recorded in the
   * durable store too (its id is the result's id, readable at GET /v1/jobs/:id), so that a
   * crash mid-job leaves a final status behind, not nothing.
   */
  async execute(job: PreparedJob, owner: string | null = null): Promise<ExecuteResponse> {
    this.queue.admit();
    const record = this.record(job, owner, null);
    let result: ExecuteResponse;
    try {
      result = await this.queue.push(async () => {
        this.jobs.markRunning(record.id);
        return this.run(job, record.id);
      });
    } catch (err) {
      this.finish(
        record.id,
        sandboxResponse(record.id, job.language, job.version, 'the job failed to run'),
      );
      throw err;
    }
    // The client gets the output in the response; the record keeps the verdict only.
    this.finish(record.id, withoutOutput(result));
    return result;
  }

  /**
   * Accepts a job for later: recorded as queued (durably) before this returns, then run through
   * the queue. Throws QUEUE_FULL or SHUTTING_DOWN, with no record made, when it cannot be taken.
   */
  submit(body: SubmitRequest, owner: string | null): JobRecord {
    const callbackUrl =
      body.callbackUrl === undefined
        ? null
        : checkCallbackUrl(body.callbackUrl, this.settings.callbackAllowedHosts);
    const job = this.prepare(body);
    // Checked and recorded synchronously, so the push below cannot be refused.
    this.queue.admit();
    const record = this.record(job, owner, callbackUrl);
    this.queue
      .push(async () => {
        this.jobs.markRunning(record.id);
        return this.run(job, record.id);
      })
      .then(
        (result) => this.finish(record.id, fitOutput(result, this.settings.jobStoreMaxResultBytes)),
        (err: unknown) => {
          this.log.error(`job ${record.id}: ${err instanceof Error ? err.message : String(err)}`);
          this.finish(
            record.id,
            sandboxResponse(record.id, job.language, job.version, 'the job failed to run'),
          );
        },
      );
    return record;
  }

  /** Records an accepted job as queued, under a new id. */
  private record(job: PreparedJob, owner: string | null, callbackUrl: string | null): JobRecord {
    return this.jobs.create({
      id: randomUUID(),
      language: job.language,
      version: job.version,
      owner,
      callbackUrl,
    });
  }

  /** A submitted job, if it exists and belongs to `owner`. */
  get(id: string, owner: string | null): JobRecord {
    const record = this.jobs.get(id);
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
  recover(): JobRecord[] {
    const ended = this.jobs.recover((job) => ({
      status: 'sandbox_error',
      result: sandboxResponse(job.id, job.language, job.version ?? '', RESTART_MESSAGE),
    }));
    for (const job of ended) {
      this.log.warn(`job ${job.id} was left unfinished by an earlier run; ended as sandbox_error`);
      this.metrics.job(job.language, 'sandbox_error', 0);
      if (job.callbackUrl !== null) void this.callbacks.send(job.callbackUrl, this.view(job));
    }
    const pruned = this.jobs.prune(this.settings.jobRetentionHours * 3_600_000);
    if (pruned > 0) this.log.info(`pruned ${pruned} finished job records`);
    return ended;
  }

  /** Prunes finished records past their retention (called periodically). */
  prune(): number {
    return this.jobs.prune(this.settings.jobRetentionHours * 3_600_000);
  }

  /** Waits for every queued and running job, then for callbacks (up to `graceMs`). */
  async drain(callbackGraceMs = 10_000): Promise<void> {
    await this.queue.drain();
    await this.callbacks.close(callbackGraceMs);
  }

  private finish(id: string, result: ExecuteResponse): void {
    try {
      const record = this.jobs.finish(id, result.status, result);
      if (record.callbackUrl !== null)
        void this.callbacks.send(record.callbackUrl, this.view(record));
    } catch (err) {
      this.log.error(
        `job ${id}: could not record its result: ${err instanceof Error ? err.message : String(err)}`,
      );
    }
  }

  /** Runs one prepared job (all its test cases) on the engine; never throws. */
  private async run(job: PreparedJob, id: string = randomUUID()): Promise<ExecuteResponse> {
    if (job.cases === null) {
      const r = await this.runOne(job, job.request);
      return { ...r, id };
    }
    return this.runCases(job, job.cases, id);
  }

  /** One engine job; a thrown system error becomes a sandbox_error result. */
  private async runOne(job: PreparedJob, request: JobRequest): Promise<ExecuteResponse> {
    const started = Date.now();
    try {
      const result = await this.engine.run(request);
      this.metrics.job(result.language, result.status, result.timings.totalMs, result.timings);
      return executeResponse(result);
    } catch (err) {
      const message = err instanceof Error ? err.message : String(err);
      this.log.error(`engine failed a ${job.language} job: ${message}`);
      this.metrics.job(job.language, 'sandbox_error', Date.now() - started);
      return sandboxResponse(randomUUID(), job.language, job.version, message);
    }
  }

  /**
   * Test cases: one job, compiled once, then run once per case with its own stdin in the same
   * VM (the agent's `cases`); each case gets its verdict. When compiling fails no case runs.
   */
  private async runCases(
    job: PreparedJob,
    cases: NonNullable<PreparedJob['cases']>,
    id: string,
  ): Promise<ExecuteResponse> {
    const started = Date.now();
    let result: JobResult;
    try {
      result = await this.engine.run({ ...job.request, cases: cases.map((c) => c.stdin) });
    } catch (err) {
      const message = err instanceof Error ? err.message : String(err);
      this.log.error(`engine failed a ${job.language} job: ${message}`);
      this.metrics.job(job.language, 'sandbox_error', Date.now() - started);
      return sandboxResponse(id, job.language, job.version, message);
    }
    this.metrics.job(result.language, result.status, result.timings.totalMs, result.timings);
    const runs = result.cases ?? [];
    const results: TestCaseResult[] = cases.map((c, index) => {
      const run = runs[index];
      if (run === undefined) {
        const status: Status =
          result.status === 'compile_error'
            ? 'compile_error'
            : result.status === 'ok'
              ? 'sandbox_error'
              : result.status;
        return { index, status, passed: false, run: null, timings: null };
      }
      const stdout = textOrNull(run.stdout);
      const passed =
        run.status === 'ok' && stdout !== null && outputMatches(stdout, c.expected, c.compare);
      return { index, status: run.status, passed, run: stageView(run), timings: null };
    });
    const passed = results.filter((r) => r.passed).length;
    return {
      id,
      language: result.language,
      version: result.version,
      status: result.status,
      compile: result.compile === null ? null : stageView(result.compile),
      run: null,
      timings: { ...result.timings },
      testCases: results,
      summary: { total: results.length, passed, failed: results.length - passed },
    };
  }
}
