import { buildApp, type App } from '../../../src/api/app.js';
import type { ApiEngine } from '../../../src/api/service.js';
import { loadSettings, type Settings } from '../../../src/config/settings.js';
import { LanguageRegistry } from '../../../src/languages/index.js';
import {
  prepareJob,
  type JobRequest,
  type JobResult,
  type PoolStats,
  type PreparedJob,
  type RunOptions,
  type RuntimeStatus,
} from '../../../src/pool/index.js';
import type { StageResult } from '../../../src/protocol/index.js';
import { JobStore, type JobQueue } from '../../../src/queue/index.js';

/** The native error body. */
export interface ErrorBody {
  statusCode: number;
  code: string;
  error: string;
  message: string;
}

/** What a fake job does: the stage results it returns, or an error it throws. */
export type FakeBehavior = (
  request: JobRequest,
) =>
  | Promise<Partial<Pick<JobResult, 'status' | 'compile' | 'run'>>>
  | Partial<Pick<JobResult, 'status' | 'compile' | 'run'>>;

/** A stage result with defaults; output given as text. */
export function stage(
  over: Partial<StageResult> & { out?: string | Buffer; err?: string } = {},
): StageResult {
  const { out, err, ...rest } = over;
  return {
    status: 'ok',
    exitCode: 0,
    signal: null,
    wallTimeMs: 12,
    cpuTimeMs: 8,
    memoryPeakBytes: 4_000_000,
    stdout: Buffer.from(out ?? '').toString('base64'),
    stderr: Buffer.from(err ?? '').toString('base64'),
    stdoutTruncated: false,
    stderrTruncated: false,
    ...rest,
  };
}

/** By default a job echoes its stdin (like `cat`), after a compile stage for compiled languages. */
const echo: FakeBehavior = (request) => ({ run: stage({ out: request.stdin ?? Buffer.alloc(0) }) });

/** The timings every fake job reports. */
const FAKE_TIMINGS = {
  totalMs: 20,
  acquireMs: 2,
  executeMs: 18,
  guestMs: 12,
  hostOverheadMs: 8,
  poolHit: true,
};

/**
 * A fake engine: the real language definitions and the real job preparation (prepareJob, the
 * same checks as the real engine's), but no VM: run() answers from `behavior`. It records the
 * requests whose jobs it was asked to run, and the prepared jobs.
 */
export class FakeEngine implements ApiEngine {
  readonly languages: LanguageRegistry;
  readonly calls: JobRequest[] = [];
  readonly jobs: PreparedJob[] = [];
  private readonly requests = new Map<string, JobRequest>();
  behavior: FakeBehavior = echo;
  capacity = 2;
  readonly pool = {
    stats: (): PoolStats => ({
      live: 0,
      ready: {},
      busy: 0,
      starting: 0,
      capacity: this.capacity,
      hits: 0,
      misses: 0,
      failures: 0,
      warmUps: 0,
    }),
  };
  /** Languages whose rootfs "is built", and those with a snapshot. */
  built = new Set(['python']);
  snapshotted = new Set<string>();
  /** The host's timeLimitScalePercent, as the real engine takes it (makeApp sets it). */
  timeScalePercent = 100;

  constructor(languages: LanguageRegistry = LanguageRegistry.fromDir()) {
    this.languages = languages;
  }

  prepare(request: JobRequest, id?: string): PreparedJob {
    const job = prepareJob(request, this.languages, {
      timeScalePercent: this.timeScalePercent,
      ...(id !== undefined && { id }),
    });
    this.requests.set(job.id, request);
    return job;
  }

  runtimes(): Promise<Map<string, RuntimeStatus>> {
    const out = new Map<string, RuntimeStatus>();
    for (const { definition: d } of this.languages.list()) {
      const imageReady = this.built.has(d.name);
      out.set(d.name, { imageReady, snapshotReady: imageReady && this.snapshotted.has(d.name) });
    }
    return Promise.resolve(out);
  }

  async run(job: PreparedJob, options: RunOptions = {}): Promise<JobResult> {
    const result = await this.runFake(job);
    // Live (a streamed job): the events the agent would send, then the result.
    const live = options.live;
    if (live !== undefined && job.message.stream !== undefined) {
      live.onStart?.({
        stdin: () => Promise.resolve(),
        stdinEnd: () => undefined,
        signal: () => undefined,
        ended: false,
      });
      await live.onEvent({ type: 'stage', stage: 'run', phase: 'start' });
      const out = Buffer.from(result.run?.stdout ?? '', 'base64');
      if (out.length > 0) await live.onEvent({ type: 'output', stream: 'stdout', data: out });
      await live.onEvent({ type: 'stage', stage: 'run', phase: 'end', status: result.status });
    }
    return result;
  }

  private async runFake(job: PreparedJob): Promise<JobResult> {
    const request = this.requests.get(job.id);
    if (request === undefined) throw new Error(`job ${job.id} was not prepared by this engine`);
    this.calls.push(request);
    this.jobs.push(job);
    const { definition } = this.languages.get(request.language, request.version);
    if (request.cases !== undefined) {
      // Like the agent: compile once, then one run per case with that stdin.
      const outs = [];
      for (const c of request.cases)
        outs.push(await this.behavior({ ...request, stdin: c, cases: undefined }));
      const first = outs[0] ?? {};
      const compile =
        first.compile !== undefined ? first.compile : definition.compile === null ? null : stage();
      const failedCompile = compile !== null && compile.status !== 'ok';
      const cases = failedCompile
        ? null
        : outs.map((o) => (o.run !== undefined && o.run !== null ? o.run : stage()));
      const bad = cases?.find((c) => c.status !== 'ok');
      return {
        id: job.id,
        language: definition.name,
        version: definition.version,
        status: failedCompile ? 'compile_error' : (first.status ?? bad?.status ?? 'ok'),
        compile,
        run: null,
        cases,
        vmId: 'vm-fake',
        timings: FAKE_TIMINGS,
      };
    }
    const out = await this.behavior(request);
    const compile =
      out.compile !== undefined ? out.compile : definition.compile === null ? null : stage();
    const run = out.run !== undefined ? out.run : stage();
    return {
      id: job.id,
      language: definition.name,
      version: definition.version,
      status:
        out.status ??
        (compile !== null && compile.status !== 'ok' ? 'compile_error' : (run?.status ?? 'ok')),
      compile,
      run,
      vmId: 'vm-fake',
      timings: FAKE_TIMINGS,
    };
  }
}

/** Settings for tests: the defaults, with overrides, never the caller's environment. */
export function testSettings(overrides: Partial<Record<string, unknown>> = {}): Settings {
  return loadSettings(
    { RUNNER_DATA_DIR: '/nonexistent-runner-data' },
    { rateLimitPerMinute: 0, ...overrides },
  );
}

/** An app on a fake engine and an in-memory job store; close() tears both down. */
export interface TestApp extends App {
  readonly engine: FakeEngine;
  readonly jobStore: JobStore;
  close(): Promise<void>;
}

export async function makeApp(
  options: {
    settings?: Partial<Record<string, unknown>>;
    engine?: FakeEngine;
    jobStoreFile?: string;
    queue?: JobQueue;
  } = {},
): Promise<TestApp> {
  const engine = options.engine ?? new FakeEngine();
  const settings = testSettings(options.settings);
  engine.timeScalePercent = settings.timeLimitScalePercent;
  const jobStore = new JobStore(options.jobStoreFile ?? ':memory:', {
    maxBytes: settings.jobStoreMaxBytes,
  });
  const built = buildApp({
    engine,
    settings,
    jobStore,
    callbackGraceMs: 200,
    ...(options.queue && { queue: options.queue }),
  });
  await built.app.ready();
  return {
    ...built,
    engine,
    jobStore,
    close: async () => {
      await built.app.close();
      jobStore.close();
    },
  };
}

/** A deferred promise: a gate tests open when they choose. */
export function gate(): { promise: Promise<void>; open: () => void } {
  let open!: () => void;
  const promise = new Promise<void>((r) => (open = r));
  return { promise, open };
}

/** The body of a small python job. */
export function pyJob(extra: Record<string, unknown> = {}): Record<string, unknown> {
  return { language: 'python', files: [{ content: 'print(input())' }], ...extra };
}
