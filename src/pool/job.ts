import { randomUUID } from 'node:crypto';
import Type, { type Static } from 'typebox';
import { resolveLimits, scaledMaxima, type StageLimits } from '../config/index.js';
import { DEFAULT_SECCOMP_FAMILY, type LanguageRegistry } from '../languages/index.js';
import {
  checkExecuteMessage,
  MAX_FRAME_BYTES,
  sandboxStage,
  type ExecuteMessage,
  type Limits,
  type StageResult,
  type Status,
} from '../protocol/index.js';

/** A job as the engine takes it: the API and the CLI translate their requests into this. */
export interface JobRequest {
  readonly language: string;
  readonly version?: string;
  /** The first file is the entry; a file without a name gets the language's source file name. */
  readonly files: readonly { name?: string; content: string; encoding?: 'utf8' | 'base64' }[];
  readonly stdin?: Buffer;
  readonly args?: readonly string[];
  readonly env?: Readonly<Record<string, string>>;
  readonly compileLimits?: Partial<Limits>;
  readonly runLimits?: Partial<Limits>;
  /** Test cases: compile once, then one run per entry with that stdin (`stdin` is then unused). */
  readonly cases?: readonly Buffer[];
  /** Run in a VM with network behind the egress policy (docs/network.md); default no NIC. */
  readonly network?: boolean;
  /**
   * False: this job neither uses nor fills the compile cache (`runner bench` times real
   * compiles with it). Default true: the host's cache decides (compileCacheMaxMib).
   */
  readonly compileCache?: boolean;
  /**
   * A live job: output streamed as it comes, stdin and signals passed while it runs (the
   * agent's `stream`, with a window of LIVE_OUTPUT_WINDOW_BYTES). Not with `cases`.
   */
  readonly live?: boolean;
}

/**
 * A job checked and turned into the agent's execute message, once. Its id is the job's one
 * id: the API's record, the engine's logs, the agent's log and the result all carry it.
 */
export interface PreparedJob {
  readonly id: string;
  readonly message: ExecuteMessage;
  readonly language: string;
  readonly version: string;
  /** True when the language has a compile stage. */
  readonly compiles: boolean;
  /** How long the host waits for the agent's result before it gives up on the VM. */
  readonly deadlineMs: number;
  /** The job runs in a cold-booted VM with a NIC (docs/network.md). */
  readonly network: boolean;
  /** The job may use and fill the compile cache (JobRequest.compileCache); absent: true. */
  readonly compileCache?: boolean;
}

/** Where the time of a job went, in ms: the engine's result and the API's body share it. */
export const JobTimingsSchema = Type.Object({
  totalMs: Type.Number(),
  /** Waiting for and (on a miss) restoring a VM. */
  acquireMs: Type.Number(),
  /** From sending the job to the agent to its result: the round trip through the VMM. */
  executeMs: Type.Number(),
  /** Time the guest's agent spent on the job (files, stages), as it measured it. */
  guestMs: Type.Number(),
  /**
   * The host's own work on the job, outside the VM round trip: totalMs − executeMs (handing
   * out a VM, encoding and decoding). executeMs − guestMs is the transit through the VMM's
   * device and the guest kernel.
   */
  hostOverheadMs: Type.Number(),
  poolHit: Type.Boolean(),
  /**
   * Present when the compile cache took part (a job with a compile stage): true when the job
   * ran a kept compile instead of compiling (its compile stage is that compile's result).
   */
  compileCached: Type.Optional(Type.Boolean()),
  /**
   * Present when the job compiled: true when its compile went to the language's compile server,
   * started in the VM while it waited in the pool (docs/agent.md, "Compile servers").
   */
  compileServed: Type.Optional(Type.Boolean()),
});
export type JobTimings = Static<typeof JobTimingsSchema>;

/** The timings of a job that never reached a VM. */
export const ZERO_TIMINGS: JobTimings = Object.freeze({
  totalMs: 0,
  acquireMs: 0,
  executeMs: 0,
  guestMs: 0,
  hostOverheadMs: 0,
  poolHit: false,
});

/** The result of a job: the result shape of the protocol plus identity and timings. */
export interface JobResult {
  readonly id: string;
  readonly language: string;
  readonly version: string;
  readonly status: Status;
  readonly compile: StageResult | null;
  readonly run: StageResult | null;
  /** One run stage per test case, when the request had `cases` (then `run` is null). */
  readonly cases?: StageResult[] | null;
  readonly vmId: string | null;
  readonly timings: JobTimings;
}

/**
 * The result of a job that failed for the system's reason `why` without a result from its VM
 * (a client gone, a worker lost, an engine that threw): `sandbox_error` on its run, or on every
 * test case when it has them.
 */
export function sandboxErrorResult(
  job: PreparedJob,
  why: string,
  timings: JobTimings = ZERO_TIMINGS,
): JobResult {
  const stage = sandboxStage(why);
  const cases = job.message.cases;
  return {
    id: job.id,
    language: job.language,
    version: job.version,
    status: 'sandbox_error',
    compile: null,
    run: cases === undefined ? stage : null,
    cases: cases === undefined ? null : cases.map(() => stage),
    vmId: null,
    timings,
  };
}

/**
 * Output bytes of a live job in flight between the agent and its consumer: past it the agent
 * stops reading the program's pipes until the consumer has passed output on.
 */
export const LIVE_OUTPUT_WINDOW_BYTES = 256 * 1024;

/** The host's patience beyond the stages' own limits, each budgeted from what it is. */
export const DEADLINE_BUDGET = {
  /** Writing the files, the agent's own start and answer. */
  baseMs: 10_000,
  /** Per stage: its cgroup, the kill grace and drain after it, a case's fresh work dir and wipe. */
  perStageMs: 3_000,
  /** Moving the result through the VMM: measured ~12 s for 16 MiB under TCG; 1 s per MiB. */
  perResultMibMs: 1_000,
} as const;

/**
 * How long the host waits for a job's result: the compile stage's wall limit, each run's
 * (one per test case) with its overhead, and the transfer of the largest result the job can
 * return. Cleaning up after the job is not in it: the agent answers first.
 */
export function jobDeadlineMs(message: ExecuteMessage, compiles: boolean): number {
  const runs = message.cases?.length ?? 1;
  const stages = runs + (compiles ? 1 : 0);
  const outputBytes =
    (compiles ? message.compileLimits.outputBytes : 0) * 2 +
    runs * message.runLimits.outputBytes * 2;
  const resultBytes = Math.min(MAX_FRAME_BYTES, Math.ceil((outputBytes * 4) / 3));
  const b = DEADLINE_BUDGET;
  return (
    b.baseMs +
    (compiles ? message.compileLimits.wallTimeMs : 0) +
    runs * message.runLimits.wallTimeMs +
    stages * b.perStageMs +
    Math.ceil(resultBytes / 1_048_576) * b.perResultMibMs
  );
}

/**
 * Turns a request into the agent's execute message: resolves the language and the limits,
 * names unnamed files, and checks the message with the agent's own schema and rules
 * (`checkExecuteMessage`). Pure apart from the id: nothing is touched, no VM is used. Bad
 * input throws a 4xx RunnerError naming the field.
 */
export function prepareJob(
  request: JobRequest,
  languages: LanguageRegistry,
  options: { id?: string; maxLimits?: StageLimits; timeScalePercent?: number } = {},
): PreparedJob {
  const { definition } = languages.get(request.language, request.version);
  const scale = options.timeScalePercent ?? 100;
  const maxLimits = options.maxLimits ?? scaledMaxima(scale);
  const id = options.id ?? randomUUID();
  const message: ExecuteMessage = {
    type: 'execute',
    id,
    language: definition.name,
    files: request.files.map((f, i) => ({
      name:
        f.name === undefined || f.name === ''
          ? i === 0
            ? definition.sourceFile
            : `file${i}`
          : f.name,
      content: f.content,
      encoding: f.encoding ?? 'utf8',
    })),
    stdin: (request.stdin ?? Buffer.alloc(0)).toString('base64'),
    args: [...(request.args ?? [])],
    env: { ...(request.env ?? {}) },
    compileLimits: resolveLimits(
      'compile',
      definition,
      request.compileLimits,
      maxLimits,
      undefined,
      scale,
    ),
    runLimits: resolveLimits('run', definition, request.runLimits, maxLimits, undefined, scale),
    seccomp: definition.seccomp ?? DEFAULT_SECCOMP_FAMILY,
    ...(request.cases !== undefined && { cases: request.cases.map((c) => c.toString('base64')) }),
    ...(request.live === true && { stream: { windowBytes: LIVE_OUTPUT_WINDOW_BYTES } }),
  };
  checkExecuteMessage(message);
  const compiles = definition.compile !== null;
  return {
    id,
    message,
    language: definition.name,
    version: definition.version,
    compiles,
    deadlineMs: jobDeadlineMs(message, compiles),
    network: request.network === true,
    ...(request.compileCache === false && { compileCache: false }),
  };
}
