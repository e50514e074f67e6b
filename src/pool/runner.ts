import { MAX_LIMITS, type StageLimits } from '../config/index.js';
import { messageOf, NetworkDisabledError } from '../errors.js';
import type { LanguageRegistry } from '../languages/index.js';
import { sandboxStage, type ResultMessage } from '../protocol/index.js';
import type { MicroVm } from '../vmm/index.js';
import { prepareJob, type JobRequest, type JobResult, type PreparedJob } from './job.js';
import type { Lease, VmPool } from './pool.js';

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
  ) {}

  /** Checks a request and builds its one execute message (no VM is touched); see prepareJob. */
  prepare(request: JobRequest, id?: string): PreparedJob {
    if (request.network === true && !this.pool.networkEnabled) {
      throw new NetworkDisabledError(
        'this job asks for network, and the operator does not allow it (networkEnabled is off)',
      );
    }
    return prepareJob(request, this.languages, {
      maxLimits: this.maxLimits,
      ...(id !== undefined && { id }),
    });
  }

  /** Runs one prepared job to its result. */
  async run(job: PreparedJob): Promise<JobResult> {
    const started = performance.now();
    const lease: Lease = await this.pool.acquire(job.language, { network: job.network });
    const acquired = performance.now();
    let result: ResultMessage;
    let answered: number;
    try {
      result = await executeOnVm(lease.vm, job);
      answered = performance.now();
    } finally {
      // The VM's teardown is not part of the job's latency; the pool tracks it.
      this.pool.releaseInBackground(lease);
    }
    const done = performance.now();
    if (result.status === 'sandbox_error') {
      const why = [result.compile, result.run, ...(result.cases ?? [])].find(
        (s) => s?.status === 'sandbox_error',
      )?.message;
      this.log?.warn(
        `job ${job.id} (${job.language}, VM ${lease.vm.id}): sandbox_error: ${why ?? 'no reason given'}`,
      );
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
  vm: MicroVm,
  job: Pick<PreparedJob, 'message' | 'deadlineMs'>,
): Promise<ResultMessage> {
  const { message } = job;
  try {
    const channel = vm.agent();
    await channel.send(message);
    const until = Date.now() + job.deadlineMs;
    for (;;) {
      let reply;
      try {
        reply = await channel.next(Math.max(1, until - Date.now()));
      } catch (err) {
        if (Date.now() >= until) {
          return sandboxError(
            message,
            `the agent gave no result within the job's deadline of ${job.deadlineMs} ms (${messageOf(err)})`,
          );
        }
        throw err;
      }
      if (reply.type === 'result' && reply.id === message.id) return reply;
      if (reply.type === 'hello') {
        // The agent restarted its session mid-job: the job is lost.
        return sandboxError(message, 'the agent restarted its session during the job');
      }
      if (reply.type === 'error')
        return sandboxError(message, `the agent refused the job: ${reply.code}: ${reply.message}`);
      return sandboxError(message, `unexpected ${reply.type} message from the agent`);
    }
  } catch (err) {
    return sandboxError(message, messageOf(err));
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
