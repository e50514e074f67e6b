import { randomUUID } from 'node:crypto';
import { resolveLimits, type StageLimits, MAX_LIMITS } from '../config/limits.js';
import { FileNameInvalidError, LimitInvalidError } from '../errors.js';
import type { LanguageRegistry } from '../languages/index.js';
import type {
  ExecuteMessage,
  JobFile,
  Limits,
  ResultMessage,
  StageResult,
  Status,
} from '../protocol/index.js';
import { sandboxStage } from '../protocol/index.js';
import type { MicroVm } from '../vmm/index.js';
import type { Lease, VmPool } from './pool.js';

/** A job as the engine takes it (the API and the CLI translate into this). */
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
}

/** Where the time of a job went, in ms. */
export interface JobTimings {
  readonly totalMs: number;
  /** Waiting for and (on a miss) restoring a VM. */
  readonly acquireMs: number;
  /** From sending the job to the agent to its result: the round trip through the VMM. */
  readonly executeMs: number;
  /** Time the guest's agent spent on the job (files, stages, cleanup), as it measured it. */
  readonly guestMs: number;
  /**
   * The host's own work on the job, outside the VM round trip: totalMs − executeMs
   * (validation, handing out a VM, encoding and decoding). executeMs − guestMs is the transit
   * through the VMM's device and the guest kernel.
   */
  readonly hostOverheadMs: number;
  readonly poolHit: boolean;
}

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

/** Extra time beyond the stages' wall limits before the host gives up on the VM. */
const AGENT_GRACE_MS = 15_000;
const MAX_FILES = 1000;

/**
 * Runs jobs: checks the request, resolves the language and limits, takes a VM from the pool,
 * hands the job to the agent, and always gives the VM back (destroyed). A program that fails is
 * a result; a VM that dies, hangs or breaks the protocol makes the job `sandbox_error`. Bad
 * requests throw RunnerErrors with 4xx statuses before any VM is touched.
 */
export class JobRunner {
  constructor(
    private readonly languages: LanguageRegistry,
    private readonly pool: VmPool,
    private readonly maxLimits: StageLimits = MAX_LIMITS,
  ) {}

  /** Turns a request into the agent's execute message (validation only, no VM). */
  prepare(
    request: JobRequest,
    id: string = randomUUID(),
  ): { message: ExecuteMessage; language: string; version: string; compiles: boolean } {
    const { definition } = this.languages.get(request.language, request.version);
    if (request.files.length === 0) throw new FileNameInvalidError('a job needs at least one file');
    if (request.files.length > MAX_FILES)
      throw new FileNameInvalidError(`a job may have at most ${MAX_FILES} files`);
    const files: JobFile[] = request.files.map((f, i) => {
      const name =
        f.name === undefined || f.name === ''
          ? i === 0
            ? definition.sourceFile
            : `file${i}`
          : f.name;
      checkFileName(name);
      const encoding = f.encoding ?? 'utf8';
      if (encoding === 'base64' && !/^[A-Za-z0-9+/]*={0,2}$/.test(f.content)) {
        throw new FileNameInvalidError(`file ${name}: content is not valid base64`);
      }
      return { name, content: f.content, encoding };
    });
    const seen = new Set<string>();
    for (const f of files) {
      if (seen.has(f.name)) throw new FileNameInvalidError(`file ${f.name} appears twice`);
      seen.add(f.name);
    }
    for (const key of Object.keys(request.env ?? {})) {
      if (!/^[A-Za-z_][A-Za-z0-9_]*$/.test(key))
        throw new LimitInvalidError(`environment variable name ${JSON.stringify(key)} is invalid`);
    }
    const message: ExecuteMessage = {
      type: 'execute',
      id,
      language: definition.name,
      files,
      stdin: (request.stdin ?? Buffer.alloc(0)).toString('base64'),
      args: [...(request.args ?? [])],
      env: { ...(request.env ?? {}) },
      compileLimits: resolveLimits('compile', definition, request.compileLimits, this.maxLimits),
      runLimits: resolveLimits('run', definition, request.runLimits, this.maxLimits),
      ...(request.cases !== undefined && { cases: request.cases.map((c) => c.toString('base64')) }),
    };
    if (
      request.cases !== undefined &&
      (request.cases.length === 0 || request.cases.length > MAX_FILES)
    ) {
      throw new LimitInvalidError(`a job may have 1 to ${MAX_FILES} test cases`);
    }
    return {
      message,
      language: definition.name,
      version: definition.version,
      compiles: definition.compile !== null,
    };
  }

  /** Runs one job to its result. */
  async run(request: JobRequest): Promise<JobResult> {
    const started = performance.now();
    const id = randomUUID();
    const { message, language, version, compiles } = this.prepare(request, id);
    const lease: Lease = await this.pool.acquire(language);
    const acquired = performance.now();
    let result: ResultMessage;
    let answered: number;
    try {
      result = await executeOnVm(lease.vm, message, compiles);
      answered = performance.now();
    } finally {
      // The VM's teardown is not part of the job's latency; the pool tracks it.
      this.pool.releaseInBackground(lease);
    }
    const done = performance.now();
    const guestMs =
      result.agentMs ?? (result.compile?.wallTimeMs ?? 0) + (result.run?.wallTimeMs ?? 0);
    const ms = (x: number): number => Math.round(x * 10) / 10;
    return {
      id,
      language,
      version,
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

/** Checks a file name the way the agent will (the agent checks again and never trusts this). */
export function checkFileName(name: string): void {
  const bad = (why: string): never => {
    throw new FileNameInvalidError(`file name ${JSON.stringify(name.slice(0, 80))} ${why}`);
  };
  if (name.length === 0) bad('is empty');
  if (Buffer.byteLength(name) > 4096) bad('is too long');
  if (name.includes('\0')) bad('contains a NUL byte');
  if (name.startsWith('/')) bad('is absolute');
  for (const part of name.split('/')) {
    if (part === '..' || part === '.' || part === '') bad('has an empty, . or .. component');
    if (Buffer.byteLength(part) > 255) bad('has a component over 255 bytes');
  }
}

/**
 * Sends one job to a VM's agent and waits for its result. The deadline is the sum of the
 * stages' wall limits plus a grace: an agent that hangs past it, a VM that dies, or a peer that
 * breaks the protocol all end as a `sandbox_error` result (the system's fault, not the program's).
 */
export async function executeOnVm(
  vm: MicroVm,
  message: ExecuteMessage,
  compiles = true,
): Promise<ResultMessage> {
  const deadlineMs =
    (compiles ? message.compileLimits.wallTimeMs : 0) +
    message.runLimits.wallTimeMs +
    AGENT_GRACE_MS;
  try {
    const channel = vm.agent();
    await channel.send(message);
    const until = Date.now() + deadlineMs;
    for (;;) {
      const reply = await channel.next(Math.max(1, until - Date.now()));
      if (reply.type === 'result' && reply.id === message.id) return reply;
      if (reply.type === 'hello') {
        // The agent restarted its session mid-job: the job is lost.
        return sandboxError(message.id, 'the agent restarted its session during the job');
      }
      if (reply.type === 'error')
        return sandboxError(message.id, `agent error ${reply.code}: ${reply.message}`);
      return sandboxError(message.id, `unexpected ${reply.type} message from the agent`);
    }
  } catch (err) {
    const why = err instanceof Error ? err.message : String(err);
    return sandboxError(message.id, why);
  }
}

function sandboxError(id: string, message: string): ResultMessage {
  const stage = sandboxStage(message);
  return { type: 'result', id, status: 'sandbox_error', compile: null, run: stage };
}
