import { compileKey, type CompileCache } from '../cache/index.js';
import { MAX_LIMITS, type StageLimits } from '../config/index.js';
import { messageOf, NetworkDisabledError, VmTimeoutError } from '../errors.js';
import type { LanguageRegistry } from '../languages/index.js';
import {
  MAX_FRAME_BYTES,
  sandboxStage,
  type AgentMessage,
  type Artefact,
  type ArtefactMessage,
  type ExecuteMessage,
  type HostMessage,
  type LiveSignal,
  type ResultMessage,
  type StageResult,
  type Status,
} from '../protocol/index.js';
import type { MicroVm } from '../vmm/index.js';
import {
  prepareJob,
  sandboxErrorResult,
  ZERO_TIMINGS,
  type JobRequest,
  type JobResult,
  type PreparedJob,
} from './job.js';
import type { Lease, VmPool } from './pool.js';
import { RunSlots } from './slots.js';

/**
 * What a job needs of the channel to its agent: a VM's own channel, or one job's share of it
 * (a sandbox runs several jobs side by side on one channel, src/sandbox/demux.ts).
 */
export type JobChannel = Pick<ReturnType<MicroVm['agent']>, 'send' | 'next'>;

/** Where the runner reports what its jobs did (one line each; sandbox failures as warnings). */
export interface RunnerLog {
  info(line: string): void;
  warn(line: string): void;
}

/**
 * Runs jobs: takes a VM from the pool, hands the prepared job to the agent, and always gives
 * the VM back (destroyed). A program that fails is a result; a VM that dies, hangs or breaks
 * the protocol makes the job `sandbox_error`, and says why in the result and the log.
 */
export class JobRunner {
  constructor(
    private readonly languages: LanguageRegistry,
    private readonly pool: VmPool,
    private readonly maxLimits: StageLimits = MAX_LIMITS,
    private readonly log?: RunnerLog,
    /** Jobs that run at once (default: one per VM the pool can hold, i.e. no extra bound). */
    readonly slots: RunSlots = new RunSlots(pool.capacity),
    /** Compiles kept on the host; none: every job compiles. */
    private readonly compileCache: CompileCache | null = null,
    /** The timeLimitScalePercent setting: scales the default time limits (resolveLimits). */
    private readonly timeScalePercent = 100,
  ) {}

  /**
   * How the compile cache takes part in a job on this VM: none (no cache, no compile stage,
   * the job asked for none, a VM of unknown images), a hit (the message carries the kept
   * artefact, when it fits one frame), or a miss (the message asks the agent to keep the
   * compile).
   */
  private async cachePlan(
    job: PreparedJob,
    images: string | null,
  ): Promise<{ key: string; message: ExecuteMessage; hit: boolean } | null> {
    const cache = this.compileCache;
    if (cache === null || images === null || !job.compiles || job.compileCache === false)
      return null;
    const language = this.languages.find(job.language);
    if (language === undefined) return null;
    const key = compileKey(job.message, language.definition, images);
    if (key === null) return null;
    let artefact: Artefact | undefined;
    try {
      artefact = await cache.get(key);
    } catch (err) {
      this.log?.warn(`compile cache: cannot read ${key.slice(0, 16)}: ${messageOf(err)}`);
    }
    if (artefact !== undefined) {
      // The sources ride in the artefact: the files are sent once, in it.
      const files = job.message.files.map((f) => ({ ...f, content: '' }));
      const message = { ...job.message, files, artefact };
      if (Buffer.byteLength(JSON.stringify(message)) < MAX_FRAME_BYTES - 65_536)
        return { key, message, hit: true };
    }
    return { key, message: { ...job.message, keepArtefact: true }, hit: false };
  }

  /** Checks a request and builds its one execute message (no VM is touched); see prepareJob. */
  prepare(request: JobRequest, id?: string): PreparedJob {
    if (request.network === true && !this.pool.networkEnabled) {
      throw new NetworkDisabledError(
        'this job asks for network, and the operator does not allow it (networkEnabled is off)',
      );
    }
    return prepareJob(request, this.languages, {
      maxLimits: this.maxLimits,
      timeScalePercent: this.timeScalePercent,
      ...(id !== undefined && { id }),
    });
  }

  /** Runs one prepared job to its result. */
  async run(job: PreparedJob, options: RunOptions = {}): Promise<JobResult> {
    const { live, signal } = options;
    const started = performance.now();
    // A client gone before its job got a VM costs no VM.
    if (isAborted(signal)) return abortedResult(job, performance.now() - started);
    const slot = await this.slots.take(signal);
    if (slot === null) return abortedResult(job, performance.now() - started);
    let lease: Lease;
    try {
      lease = await this.pool.acquire(job.language, { network: job.network });
    } catch (err) {
      slot();
      throw err;
    }
    const acquired = performance.now();
    let result: ResultMessage;
    let answered: number;
    let plan: Awaited<ReturnType<JobRunner['cachePlan']>> = null;
    let artefact: ArtefactMessage | undefined;
    try {
      plan = await this.cachePlan(job, lease.images);
      const sent = plan === null ? job : { ...job, message: plan.message };
      const kept = plan?.hit === true ? plan.message.artefact?.compile : undefined;
      const consumer = live !== undefined && kept !== undefined ? replayCompile(live, kept) : live;
      result = isAborted(signal)
        ? sandboxError(job.message, CLIENT_GONE_MESSAGE)
        : await executeOnVm(lease.vm, sent, consumer, signal, (m) => (artefact = m));
      answered = performance.now();
    } finally {
      slot();
      // The VM's teardown is not part of the job's latency; the pool tracks it. One job per VM:
      // a VM is destroyed on release, so an aborted job's VM is never seen again.
      this.pool.releaseInBackground(lease);
    }
    const done = performance.now();
    if (isAborted(signal)) {
      this.log?.info(`job ${job.id} (${job.language}, VM ${lease.vm.id}): ${CLIENT_GONE_MESSAGE}`);
    } else if (result.status === 'sandbox_error') {
      const why = [result.compile, result.run, ...(result.cases ?? [])].find(
        (s) => s?.status === 'sandbox_error',
      )?.message;
      this.log?.warn(
        `job ${job.id} (${job.language}, VM ${lease.vm.id}): sandbox_error: ${why ?? 'no reason given'}`,
      );
    }
    if (plan !== null && !plan.hit && artefact !== undefined && result.compile?.status === 'ok') {
      const { key } = plan;
      const compile = result.compile;
      const entries = artefact.entries;
      // Kept before the result is given (after the VM is released), so that the next job with
      // the same compile finds it; a few ms against the compile it saves.
      await this.compileCache?.put(key, compile, entries).catch((err: unknown) => {
        this.log?.warn(`compile cache: cannot keep ${key.slice(0, 16)}: ${messageOf(err)}`);
      });
    }
    const guestMs =
      result.agentMs ?? (result.compile?.wallTimeMs ?? 0) + (result.run?.wallTimeMs ?? 0);
    const ms = (x: number): number => Math.round(x * 10) / 10;
    return {
      id: job.id,
      language: job.language,
      version: job.version,
      status: result.status,
      compile: result.compile,
      run: result.run,
      cases: result.cases ?? null,
      vmId: lease.vm.id,
      timings: {
        totalMs: ms(done - started),
        acquireMs: ms(acquired - started),
        executeMs: ms(answered - acquired),
        guestMs,
        hostOverheadMs: ms(Math.max(0, done - started - (answered - acquired))),
        poolHit: lease.hit,
        ...(plan !== null && { compileCached: plan.hit && result.compile !== null }),
        ...(result.compile !== null && { compileServed: result.compileServed === true }),
      },
    };
  }
}

/**
 * Sends one prepared job to a VM's agent and waits for its result, up to the job's deadline
 * (jobDeadlineMs). An agent that hangs past it, a VM that dies, a peer that breaks the
 * protocol or an agent that refuses the job all end as a `sandbox_error` result saying why
 * (the system's fault, not the program's). With test cases, the reason is on every case.
 */
export async function executeOnVm(
  vm: { agent(): JobChannel },
  job: Pick<PreparedJob, 'message' | 'deadlineMs'>,
  live?: LiveHandlers,
  signal?: AbortSignal,
  /** Hears the work dir of a compile the message asked to keep (`keepArtefact`). */
  onArtefact?: (message: ArtefactMessage) => void,
): Promise<ResultMessage> {
  const { message } = job;
  // An abort ends the wait at once (the caller then destroys the VM); the wait it cut short
  // fails when the VM goes, which nobody needs to hear.
  let onAbort: (() => void) | undefined;
  const aborted = new Promise<'aborted'>((resolve) => {
    onAbort = () => resolve('aborted');
    if (isAborted(signal)) resolve('aborted');
    else signal?.addEventListener('abort', onAbort, { once: true });
  });
  let liveSide: LiveSide | null = null;
  try {
    const channel = vm.agent();
    await channel.send(message);
    // A live job with no consumer (a cluster's worker, a caller that only wants the result)
    // still speaks the live protocol: its events are taken at once and its stdin ends now.
    const consumer: LiveHandlers | undefined =
      message.stream === undefined ? undefined : (live ?? DISCARD_LIVE);
    liveSide = consumer !== undefined ? new LiveSide(message.id, channel) : null;
    if (liveSide !== null) consumer?.onStart?.(liveSide.controls);
    const until = Date.now() + job.deadlineMs;
    for (;;) {
      let reply;
      try {
        const next = channel.next(Math.max(1, until - Date.now()));
        const got = await Promise.race([next, aborted]);
        if (got === 'aborted') {
          next.catch(() => undefined);
          liveSide?.end();
          return sandboxError(message, CLIENT_GONE_MESSAGE);
        }
        reply = got;
      } catch (err) {
        // The wait's own timeout is the deadline (a timer may fire a millisecond before
        // Date.now() reaches it).
        if (err instanceof VmTimeoutError || Date.now() >= until) {
          return sandboxError(
            message,
            `the agent gave no result within the job's deadline of ${job.deadlineMs} ms (${messageOf(err)})`,
          );
        }
        throw err;
      }
      if (reply.type === 'result' && reply.id === message.id) {
        // Every event reaches the consumer before the result does (within the deadline).
        if (liveSide !== null)
          await Promise.race([
            liveSide.flushed(),
            aborted,
            new Promise((r) => setTimeout(r, Math.max(0, until - Date.now())).unref()),
          ]);
        if (isAborted(signal)) {
          liveSide?.end();
          return sandboxError(message, CLIENT_GONE_MESSAGE);
        }
        liveSide?.end();
        return reply;
      }
      if (
        liveSide !== null &&
        consumer !== undefined &&
        (reply.type === 'stage' || reply.type === 'output' || reply.type === 'credit') &&
        reply.id === message.id
      ) {
        await liveSide.take(reply, consumer);
        continue;
      }
      if (reply.type === 'artefact' && reply.id === message.id) {
        if (message.keepArtefact === true) onArtefact?.(reply);
        continue;
      }
      if (reply.type === 'hello') {
        // The agent restarted its session mid-job: the job is lost.
        return sandboxError(message, 'the agent restarted its session during the job');
      }
      if (reply.type === 'error')
        return sandboxError(message, `the agent refused the job: ${reply.code}: ${reply.message}`);
      return sandboxError(message, `unexpected ${reply.type} message from the agent`);
    }
  } catch (err) {
    liveSide?.end();
    return sandboxError(message, isAborted(signal) ? CLIENT_GONE_MESSAGE : messageOf(err));
  } finally {
    if (onAbort !== undefined) signal?.removeEventListener('abort', onAbort);
  }
}

/**
 * A live consumer of a job that runs a kept compile: the agent starts and ends the compile
 * stage without output (nothing compiles), so the kept compile's stdout, then its stderr, are
 * given to the consumer as that stage's output, as a compile would have streamed them (their
 * interleaving is not kept).
 */
function replayCompile(live: LiveHandlers, compile: StageResult): LiveHandlers {
  return {
    ...(live.onStart !== undefined && { onStart: (controls) => live.onStart?.(controls) }),
    async onEvent(event) {
      await live.onEvent(event);
      if (event.type !== 'stage' || event.stage !== 'compile' || event.phase !== 'start') return;
      for (const stream of ['stdout', 'stderr'] as const) {
        const data = Buffer.from(compile[stream], 'base64');
        if (data.length > 0) await live.onEvent({ type: 'output', stream, data });
      }
    },
  };
}

/**
 * The message of a job whose client went away (its RunOptions.signal aborted): the job was
 * stopped and its VM destroyed. The job ends `sandbox_error` (the program did not fail; the
 * run was cut short by the system on the client's behalf).
 */
export const CLIENT_GONE_MESSAGE = 'the client went away: the job was stopped and its VM destroyed';

/** Read through a call: TypeScript would keep `aborted` narrowed across awaits. */
function isAborted(signal: AbortSignal | undefined): boolean {
  return signal?.aborted === true;
}

/** The result of a job stopped before it got a VM (its client went away while it waited). */
function abortedResult(job: PreparedJob, waitedMs: number): JobResult {
  const totalMs = Math.round(waitedMs * 10) / 10;
  return sandboxErrorResult(job, CLIENT_GONE_MESSAGE, {
    ...ZERO_TIMINGS,
    totalMs,
    hostOverheadMs: totalMs,
  });
}

/** How one job is run: who asked (a shared queue's per-key share), and its live consumer. */
export interface RunOptions {
  /** The API key (fingerprint) that asked for it; for a cluster's per-key share. */
  readonly owner?: string | null;
  /** A live job's consumer (the job must have been prepared with `live`). */
  readonly live?: LiveHandlers;
  /**
   * Aborted when the job's client goes away: the job is stopped at once, its VM destroyed
   * (never reused) and its lease released; the result is `sandbox_error` (CLIENT_GONE_MESSAGE).
   */
  readonly signal?: AbortSignal;
}

/** What a live job's consumer (a WebSocket, an SSE stream, the CLI) hears and does. */
export interface LiveHandlers {
  /**
   * Each stage start or end and each output chunk, in order. The chunk's bytes are credited
   * back to the agent (room for more output) once the returned promise settles: a consumer
   * that is slow to pass output on holds the program at the agent's window.
   */
  onEvent(event: LiveEvent): Promise<void> | void;
  /** Called once the job is sent, with the means to talk to the program. */
  onStart?(controls: LiveControls): void;
}

/** One event of a live job. */
export type LiveEvent =
  | {
      readonly type: 'stage';
      readonly stage: 'compile' | 'run';
      readonly phase: 'start' | 'end';
      readonly status?: Status;
    }
  | { readonly type: 'output'; readonly stream: 'stdout' | 'stderr'; readonly data: Buffer };

/** How a consumer talks to a live job's program. */
export interface LiveControls {
  /** Sends stdin; resolves once the agent has room for more (its stdin window). */
  stdin(data: Buffer): Promise<void>;
  stdinEnd(): void;
  signal(signal: LiveSignal): void;
  /** Whether the job has ended (controls do nothing then). */
  readonly ended: boolean;
}

/** The consumer of a live job nobody watches: events dropped, stdin ended at once. */
const DISCARD_LIVE: LiveHandlers = {
  onStart: (controls) => controls.stdinEnd(),
  onEvent: () => undefined,
};

/** Stdin bytes the host keeps in flight to the agent before it waits for its acknowledgements. */
export const LIVE_STDIN_WINDOW_BYTES = 256 * 1024;

/** The host's side of one live job on one channel. */
class LiveSide {
  private stdinInFlight = 0;
  private delivered: Promise<void> = Promise.resolve();
  private waiting: (() => void)[] = [];
  private done = false;
  readonly controls: LiveControls;

  constructor(
    private readonly id: string,
    private readonly channel: JobChannel,
  ) {
    const isDone = (): boolean => this.done;
    this.controls = {
      stdin: (data) => this.stdin(data),
      stdinEnd: () => this.send({ type: 'stdin_end', id }),
      signal: (signal) => this.send({ type: 'signal', id, signal }),
      get ended() {
        return isDone();
      },
    };
  }

  async take(
    reply: Extract<AgentMessage, { type: 'stage' | 'output' | 'credit' }>,
    live: LiveHandlers,
  ): Promise<void> {
    if (reply.type === 'credit') {
      this.stdinInFlight = Math.max(0, this.stdinInFlight - reply.bytes);
      if (this.stdinInFlight < LIVE_STDIN_WINDOW_BYTES) for (const w of this.waiting.splice(0)) w();
      return;
    }
    // One event at a time, in order: the next is handed over when the consumer has taken the
    // last. What waits meanwhile is at most the agent's window (it sends no more uncredited).
    const event: LiveEvent =
      reply.type === 'stage'
        ? {
            type: 'stage',
            stage: reply.stage,
            phase: reply.phase,
            ...(reply.status !== undefined && { status: reply.status }),
          }
        : { type: 'output', stream: reply.stream, data: Buffer.from(reply.data, 'base64') };
    this.delivered = this.delivered
      .then(() => live.onEvent(event))
      .catch(() => undefined)
      .then(() => {
        if (event.type === 'output')
          this.send({ type: 'credit', id: this.id, bytes: event.data.length });
      });
    return Promise.resolve();
  }

  /** Resolves once every event so far has been handed to the consumer. */
  flushed(): Promise<void> {
    return this.delivered;
  }

  end(): void {
    this.done = true;
    for (const w of this.waiting.splice(0)) w();
  }

  private async stdin(data: Buffer): Promise<void> {
    if (this.done || data.length === 0) return;
    this.stdinInFlight += data.length;
    this.send({ type: 'stdin', id: this.id, data: data.toString('base64') });
    if (this.stdinInFlight >= LIVE_STDIN_WINDOW_BYTES)
      await new Promise<void>((resolve) => this.waiting.push(resolve));
  }

  private send(message: HostMessage): void {
    if (this.done) return;
    this.channel.send(message).catch(() => undefined);
  }
}

function sandboxError(
  message: Pick<PreparedJob['message'], 'id' | 'cases'>,
  why: string,
): ResultMessage {
  const stage = sandboxStage(why);
  return {
    type: 'result',
    id: message.id,
    status: 'sandbox_error',
    compile: null,
    run: message.cases === undefined ? stage : null,
    ...(message.cases !== undefined && { cases: message.cases.map(() => stage) }),
  };
}
