import { spawn, type ChildProcess } from 'node:child_process';
import { performance } from 'node:perf_hooks';
import type { Readable, Writable } from 'node:stream';
import { setTimeout as sleep } from 'node:timers/promises';
import { messageOf } from '../errors.js';
import {
  sandboxStage,
  type Limits,
  type SeccompFamily,
  type StageResult,
  type Status,
} from '../protocol/index.js';
import { StageCgroup, type CgroupSupport } from './cgroup.js';
import type { LiveJob } from './live.js';
import type { FileOwner } from './files.js';
import {
  killAllOfUid,
  readPeakRssBytes,
  readProcessCpuMs,
  readReapedChildrenCpuMs,
  type SandboxTools,
} from './proc.js';

/** How one stage is confined; fixed for the life of an executor. */
export interface StageSandbox {
  readonly tools: SandboxTools;
  /**
   * The static exec helper (runner-exec): cgroup, rlimits, uid, no_new_privs and environment in
   * one exec. Null: the chain of sh (cgroup gate), prlimit, setpriv and env from `tools`.
   */
  readonly helper?: string | null;
  /** The unprivileged user that runs the code, or null to run as the agent's own user. */
  readonly runAs: FileOwner | null;
  /** A usable cgroup v2 hierarchy, or null for the rlimit + uid-sweep fallback. */
  readonly cgroup: CgroupSupport | null;
}

/** One stage to run: argv[0] is looked up in `env.PATH`. */
export interface StageSpec {
  readonly argv: readonly string[];
  readonly cwd: string;
  readonly env: Readonly<Record<string, string>>;
  readonly stdin: Buffer;
  readonly limits: Limits;
  /** Aborting ends the stage at once (every process killed) with status sandbox_error. */
  readonly signal?: AbortSignal;
  /** The job's output budget, shared with its other stages (none: only the stage's caps). */
  readonly outputBudget?: OutputBudget;
  /**
   * The seccomp filter family of every process of the stage (runner-exec --seccomp); none: no
   * filter. Only the exec helper installs one: the tool chain fallback has none.
   */
  readonly seccomp?: SeccompFamily;
  /**
   * A streamed job's live side: output is sent as it is read (within the caps), with
   * back-pressure; with `stdin`, the program's stdin stays open for the host's chunks after
   * `stdin` (the spec's) until the host ends it, and the host's signals reach the stage.
   */
  readonly live?: { readonly job: LiveJob; readonly stdin: boolean };
  /**
   * A running process (a compile server, see compile-server.ts) moved into the stage's cgroup
   * before the stage's program starts: from then on its CPU time, new memory and end are the
   * stage's. Needs the stage's cgroup.
   */
  readonly join?: number;
}

/** The stage machinery's own timings, in ms. */
export interface StageTimings {
  /** Between SIGTERM at the wall limit and SIGKILL. */
  readonly killGraceMs: number;
  /** How long to keep reading output after the main process exits, before killing the rest. */
  readonly drainMs: number;
  /** How often CPU time (and, without cgroups, memory) is sampled. */
  readonly pollMs: number;
}

export const DEFAULT_STAGE_TIMINGS: StageTimings = { killGraceMs: 200, drainMs: 100, pollMs: 50 };

/** The PATH of the sandbox helpers themselves (they run as root, with nothing else set). */
export const HELPER_ENV = { PATH: '/usr/sbin:/usr/bin:/sbin:/bin' };

/**
 * Waits for the go byte on fd 3 (sent once the agent has moved this shell into the stage's
 * cgroup), closes fd 3, then execs the rest. Exit 125 when the agent closed fd 3 without it.
 */
const CGROUP_GATE = 'read -r go <&3 || exit 125; exec 3<&-; exec "$@"';

type KillReason = 'wall' | 'cpu' | 'output' | 'abort';

/** The rlimits of a stage, as NAME=SOFT:HARD (the names runner-exec and prlimit share). */
function stageRlimits(sandbox: StageSandbox, limits: Limits): string[] {
  const cpuSoftS = Math.ceil(limits.cpuTimeMs / 1000) + 1;
  const out = [
    `cpu=${cpuSoftS}:${cpuSoftS + 1}`,
    'core=0:0',
    `fsize=${limits.fileSizeBytes}:${limits.fileSizeBytes}`,
    `nofile=${limits.openFiles}:${limits.openFiles}`,
    `stack=${limits.stackBytes}:${limits.stackBytes}`,
  ];
  // RLIMIT_NPROC counts every process of the real uid: meaningful only for the job's own uid.
  if (sandbox.runAs) out.push(`nproc=${limits.processes}:${limits.processes}`);
  // Without the memory controller, RLIMIT_DATA (private writable memory, not address-space
  // reservations, which RLIMIT_AS would count and break node, java and go with) stands in.
  if (!sandbox.cgroup?.memory) {
    const bytes = limits.memoryMib * 1024 * 1024;
    out.push(`data=${bytes}:${bytes}`);
  }
  return out;
}

/**
 * Builds the command line of a stage. With the exec helper: `runner-exec --cgroup DIR
 * --rlimit … --uid N --gid N --env K=V… [--seccomp FAMILY] -- argv`, one static exec that joins the stage's cgroup
 * itself before anything of the program runs. Without it (a host without the helper):
 * [sh gate] prlimit … -- setpriv … -- env -i -- K=V… argv. Either way the helpers run as root
 * with a fixed, clean environment, and the job's environment applies only after privileges are
 * dropped, so nothing the request sets (LD_PRELOAD…) ever reaches a root process.
 */
export function buildStageArgv(
  sandbox: StageSandbox,
  spec: StageSpec,
  cgroupPath: string | null = null,
): string[] {
  const { tools, runAs, cgroup } = sandbox;
  const rlimits = stageRlimits(sandbox, spec.limits);
  const out: string[] = [];
  if (sandbox.helper) {
    out.push(sandbox.helper, '--status-fd', '3');
    if (cgroupPath !== null) out.push('--cgroup', cgroupPath);
    for (const r of rlimits) out.push('--rlimit', r);
    if (runAs) out.push('--uid', String(runAs.uid), '--gid', String(runAs.gid));
    for (const [k, v] of Object.entries(spec.env)) out.push('--env', `${k}=${v}`);
    if (spec.seccomp !== undefined) out.push('--seccomp', spec.seccomp);
    out.push('--', ...spec.argv);
    return out;
  }
  if (cgroup) out.push(tools.sh, '-c', CGROUP_GATE, 'sh');
  out.push(tools.prlimit, ...rlimits.map((r) => `--${r}`));
  out.push('--', tools.setpriv);
  if (runAs) {
    out.push(
      `--reuid=${runAs.uid}`,
      `--regid=${runAs.gid}`,
      '--clear-groups',
      '--inh-caps=-all',
      '--bounding-set=-all',
    );
  }
  out.push('--no-new-privs', '--', tools.env, '-i', '--');
  for (const [k, v] of Object.entries(spec.env)) out.push(`${k}=${v}`);
  out.push(...spec.argv);
  return out;
}

/**
 * What a whole job may still return of its output, shared by every capture of every stage of
 * the job, so that many test cases at their per-stream cap cannot outgrow one result frame or
 * the agent's memory (see MAX_RESULT_OUTPUT_BYTES).
 */
export interface OutputBudget {
  remainingBytes: number;
}

/**
 * Keeps at most `capBytes` of a stream (the stage's limit: more ends the stage with
 * output_limit, `onOverflow` is called once) and never more than the job's shared budget
 * allows (past it, output is read and dropped, and the capture is `trimmed`: the program kept
 * its limits, the job's result is just full).
 */
class OutputCapture {
  private readonly chunks: Buffer[] = [];
  private bytes = 0;
  private seen = 0;
  truncated = false;
  trimmed = false;

  constructor(
    private readonly capBytes: number,
    private readonly onOverflow: () => void,
    private readonly budget: OutputBudget | undefined,
  ) {}

  /** Keeps what the caps allow of `chunk`; returns the part kept. */
  push(chunk: Buffer): Buffer {
    if (this.truncated) return EMPTY;
    const capRoom = Math.max(0, this.capBytes - this.seen);
    this.seen += chunk.length;
    let part = chunk.length > capRoom ? chunk.subarray(0, capRoom) : chunk;
    if (this.budget !== undefined) {
      if (part.length > this.budget.remainingBytes) {
        part = part.subarray(0, Math.max(0, this.budget.remainingBytes));
        this.trimmed = true;
      }
      this.budget.remainingBytes -= part.length;
    }
    if (part.length > 0) {
      this.chunks.push(part);
      this.bytes += part.length;
    }
    if (chunk.length > capRoom) {
      this.truncated = true;
      this.onOverflow();
    }
    return part;
  }

  base64(): string {
    return Buffer.concat(this.chunks, this.bytes).toString('base64');
  }
}

const EMPTY = Buffer.alloc(0);

/** A stage result for a failure of the sandbox itself. */
export const sandboxErrorResult = sandboxStage;

/**
 * Runs one stage under its limits and returns its result; never throws (a failure of the
 * machinery is a sandbox_error result). The stage ends when its main process exits (output
 * still in flight is read for `drainMs`, then whatever is left is killed: daemons, a grandchild
 * holding the pipe) or when a limit hits: wall time (SIGTERM to the process group, SIGKILL
 * after `killGraceMs`), CPU time, output bytes (SIGKILL at once).
 */
export async function runStage(
  sandbox: StageSandbox,
  spec: StageSpec,
  timings: StageTimings = DEFAULT_STAGE_TIMINGS,
): Promise<StageResult> {
  let cgroup: StageCgroup | null = null;
  try {
    if (sandbox.cgroup) {
      cgroup = await StageCgroup.create(sandbox.cgroup, {
        memoryBytes: spec.limits.memoryMib * 1024 * 1024,
        processes: spec.limits.processes,
      });
    }
  } catch (err) {
    return sandboxErrorResult(`cannot create the stage cgroup: ${messageOf(err)}`);
  }
  if (spec.join !== undefined) {
    try {
      if (cgroup === null) throw new Error('the stage has no cgroup');
      await cgroup.adopt(spec.join);
    } catch (err) {
      if (cgroup) await cgroup.destroy().catch(() => undefined);
      return sandboxErrorResult(`cannot move the compile server into the stage: ${messageOf(err)}`);
    }
  }
  const run = new StageRun(sandbox, spec, timings, cgroup);
  try {
    return await run.execute();
  } catch (err) {
    await run.killEverything().catch(() => undefined);
    return sandboxErrorResult(`stage failed: ${messageOf(err)}`, run.elapsedMs());
  } finally {
    if (cgroup) await cgroup.destroy().catch(() => undefined);
  }
}

/** The state of one running stage. Lives for one `runStage` call. */
class StageRun {
  private child: ChildProcess | null = null;
  private started = 0;
  private exitedAt: number | null = null;
  private reason: KillReason | null = null;
  private polledCpuMs = 0;
  private polledRssBytes: number | null = null;
  private readonly timers: NodeJS.Timeout[] = [];
  private readonly stdout: OutputCapture;
  private readonly stderr: OutputCapture;

  constructor(
    private readonly sandbox: StageSandbox,
    private readonly spec: StageSpec,
    private readonly timings: StageTimings,
    private readonly cgroup: StageCgroup | null,
  ) {
    const overflow = (): void => this.terminate('output');
    this.stdout = new OutputCapture(spec.limits.outputBytes, overflow, spec.outputBudget);
    this.stderr = new OutputCapture(spec.limits.outputBytes, overflow, spec.outputBudget);
  }

  elapsedMs(): number {
    if (this.started === 0) return 0;
    return Math.round((this.exitedAt ?? performance.now()) - this.started);
  }

  async execute(): Promise<StageResult> {
    if (this.spec.signal?.aborted) return sandboxErrorResult('the job was aborted');
    const reapedCpuBefore = await readReapedChildrenCpuMs();
    // With the exec helper the stage joins its cgroup by itself, and fd 3 carries its failure
    // to start the program (if any); the chain needs fd 3 as the cgroup gate.
    const helper = Boolean(this.sandbox.helper);
    const gated = this.cgroup !== null && !helper;
    const argv = buildStageArgv(this.sandbox, this.spec, this.cgroup?.path ?? null);
    const child = spawn(argv[0] as string, argv.slice(1), {
      cwd: this.spec.cwd,
      env: HELPER_ENV,
      stdio: gated || helper ? ['pipe', 'pipe', 'pipe', 'pipe'] : ['pipe', 'pipe', 'pipe'],
      // setsid(): the stage gets its own session and process group (pgid = pid).
      detached: true,
    });
    this.child = child;
    this.started = performance.now();
    const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) =>
      child.once('exit', (code, signal) => resolve({ code, signal })),
    );
    const spawned = await new Promise<Error | null>((resolve) => {
      child.once('spawn', () => resolve(null));
      child.once('error', (err) => resolve(err));
    });
    if (spawned) return sandboxErrorResult(`cannot start the stage: ${spawned.message}`);
    child.on('error', () => undefined);

    const startFailure = helper ? readAll(child.stdio[3] as Readable) : Promise.resolve('');
    const live = this.spec.live;
    const pipes = [child.stdout, child.stderr];
    // Live: each kept chunk goes to the host; a full window pauses both pipes until room.
    const forward = (stream: 'stdout' | 'stderr') =>
      live === undefined
        ? undefined
        : (kept: Buffer): void => {
            if (live.job.output(stream, kept)) return;
            for (const p of pipes) p?.pause();
            live.job.whenRoom(() => {
              for (const p of pipes) p?.resume();
            });
          };
    const stdoutDone = collect(child.stdout, this.stdout, forward('stdout'));
    const stderrDone = collect(child.stderr, this.stderr, forward('stderr'));
    const outputDone = Promise.all([stdoutDone, stderrDone]);
    if (live?.stdin === true && child.stdin) {
      child.stdin.on('error', () => undefined);
      if (this.spec.stdin.length > 0) child.stdin.write(this.spec.stdin);
      live.job.attachStdin(child.stdin);
    } else {
      feedStdin(child.stdin, this.spec.stdin);
    }
    if (this.cgroup && gated) {
      const gate = child.stdio[3] as Writable;
      gate.on('error', () => undefined);
      try {
        await this.cgroup.adopt(child.pid as number);
      } catch (err) {
        gate.destroy();
        await this.killEverything();
        await exited;
        return sandboxErrorResult(`cannot move the stage into its cgroup: ${messageOf(err)}`);
      }
      gate.end('\n');
    }
    // Signals once the stage is in its cgroup: one that was waiting (see LiveJob.signal) must
    // not kill the helper before its cgroup is joined, which would read as a sandbox failure.
    live?.job.attachSignals((sig) => this.signalGroup(sig));

    const onAbort = (): void => this.terminate('abort');
    this.spec.signal?.addEventListener('abort', onAbort, { once: true });
    this.timers.push(setTimeout(() => this.terminate('wall'), this.spec.limits.wallTimeMs));
    this.startPolling();

    let status: { code: number | null; signal: NodeJS.Signals | null };
    try {
      status = await exited;
      this.exitedAt = performance.now();
      live?.job.attachSignals(null);
      // Output the main process wrote before exiting may still be in the pipes. Live, the
      // host may be slow to make room for it: wait for it within what is left of the wall limit.
      const drainMs =
        live !== undefined && live.job.blocked
          ? Math.max(
              this.timings.drainMs,
              this.spec.limits.wallTimeMs - (this.exitedAt - this.started),
            )
          : this.timings.drainMs;
      await Promise.race([outputDone, sleep(drainMs)]);
      // Whatever is left (daemons, a grandchild holding a pipe, setsid escapees) dies now.
      await this.killEverything();
      await Promise.race([outputDone, sleep(this.timings.drainMs)]);
    } finally {
      live?.job.detach();
      this.spec.signal?.removeEventListener('abort', onAbort);
      for (const t of this.timers) clearTimeout(t);
      child.stdout?.destroy();
      child.stderr?.destroy();
      child.stdin?.destroy();
    }

    const failure = await Promise.race([startFailure, sleep(this.timings.drainMs).then(() => '')]);
    if (failure !== '')
      return sandboxErrorResult(
        `the sandbox could not start the program: ${failure}`,
        this.elapsedMs(),
      );
    const cpuTimeMs = await this.finalCpuMs(reapedCpuBefore);
    const memoryPeakBytes = this.cgroup
      ? ((await this.cgroup.memoryPeakBytes()) ?? this.polledRssBytes)
      : this.polledRssBytes;
    const oomKills = this.cgroup ? await this.cgroup.oomKills() : 0;
    return this.result(status.code, status.signal, cpuTimeMs, memoryPeakBytes, oomKills);
  }

  private result(
    exitCode: number | null,
    signal: NodeJS.Signals | null,
    cpuTimeMs: number | null,
    memoryPeakBytes: number | null,
    oomKills: number,
  ): StageResult {
    const l = this.spec.limits;
    let status: Status;
    let message: string | undefined;
    const cpuOver = cpuTimeMs !== null && cpuTimeMs >= l.cpuTimeMs;
    if (this.reason === 'abort') {
      status = 'sandbox_error';
      message = 'the job was aborted (the host session ended)';
    } else if (this.reason === 'output' || this.stdout.truncated || this.stderr.truncated) {
      // Also when only a leftover process overflowed while the stage drained its pipes.
      status = 'output_limit';
      message = `output over the limit of ${l.outputBytes} bytes per stream`;
    } else if (oomKills > 0) {
      status = 'memory_limit';
      message = `killed by the out-of-memory killer at the limit of ${l.memoryMib} MiB`;
    } else if (this.reason === 'cpu' || cpuOver || signal === 'SIGXCPU') {
      status = 'timeout';
      message = `CPU time limit of ${l.cpuTimeMs} ms exceeded`;
    } else if (this.reason === 'wall') {
      status = 'timeout';
      message = `wall time limit of ${l.wallTimeMs} ms exceeded`;
    } else if (signal !== null || exitCode !== 0) {
      status = 'runtime_error';
      if (signal === 'SIGXFSZ') message = `file size limit of ${l.fileSizeBytes} bytes exceeded`;
    } else {
      status = 'ok';
    }
    const result: StageResult = {
      status,
      exitCode,
      signal,
      wallTimeMs: this.elapsedMs(),
      cpuTimeMs: cpuTimeMs === null ? null : Math.round(cpuTimeMs),
      memoryPeakBytes,
      stdout: this.stdout.base64(),
      stderr: this.stderr.base64(),
      stdoutTruncated: this.stdout.truncated || this.stdout.trimmed,
      stderrTruncated: this.stderr.truncated || this.stderr.trimmed,
    };
    if (this.stdout.trimmed || this.stderr.trimmed) {
      const trimmed =
        'output trimmed: the result of one job holds a limited amount of output in all';
      message = message === undefined ? trimmed : `${message}; ${trimmed}`;
    }
    if (message !== undefined) result.message = message;
    return result;
  }

  /** Ends the stage early, once, for `reason`. */
  private terminate(reason: KillReason): void {
    if (this.reason !== null || this.exitedAt !== null) return;
    this.reason = reason;
    if (reason === 'wall') {
      // A polite SIGTERM to the process group first; SIGKILL to everything after the grace.
      this.signalGroup('SIGTERM');
      this.timers.push(
        setTimeout(
          () => void this.killEverything().catch(() => undefined),
          this.timings.killGraceMs,
        ),
      );
    } else {
      void this.killEverything().catch(() => undefined);
    }
  }

  /** SIGKILLs the process group, then every process of the stage (cgroup.kill or uid sweep). */
  async killEverything(): Promise<void> {
    this.signalGroup('SIGKILL');
    if (this.cgroup) await this.cgroup.kill();
    else if (this.sandbox.runAs) await killAllOfUid(this.sandbox.tools, this.sandbox.runAs);
  }

  private signalGroup(signal: NodeJS.Signals): void {
    const pid = this.child?.pid;
    if (pid === undefined) return;
    try {
      process.kill(-pid, signal);
    } catch {
      // the group is gone already
    }
  }

  /**
   * Samples CPU time (and, without the memory controller, the main process's peak RSS) every
   * `pollMs`; kills at the CPU limit.
   */
  private startPolling(): void {
    let busy = false;
    const poll = async (): Promise<void> => {
      const pid = this.child?.pid;
      if (pid === undefined) return;
      let cpuMs: number | null;
      if (this.cgroup) {
        const usec = await this.cgroup.cpuUsageUsec();
        cpuMs = usec === null ? null : usec / 1000;
      } else {
        cpuMs = await readProcessCpuMs(pid);
      }
      if (!this.sandbox.cgroup?.memory) {
        // No memory.peak: the main process's own peak RSS is the best there is.
        const rss = await readPeakRssBytes(pid);
        if (rss !== null) this.polledRssBytes = Math.max(this.polledRssBytes ?? 0, rss);
      }
      if (cpuMs !== null) this.polledCpuMs = Math.max(this.polledCpuMs, cpuMs);
      if (this.polledCpuMs >= this.spec.limits.cpuTimeMs) this.terminate('cpu');
    };
    const timer = setInterval(() => {
      if (busy || this.exitedAt !== null) return;
      busy = true;
      poll()
        .catch(() => undefined)
        .finally(() => {
          busy = false;
        });
    }, this.timings.pollMs);
    this.timers.push(timer);
  }

  /**
   * With a cgroup, its cpu.stat covers every process of the stage. Without, the best measure is
   * the larger of the last sample and what the reaped main process (and the children it waited
   * for) added to the agent's own cutime/cstime.
   */
  private async finalCpuMs(reapedBefore: number): Promise<number | null> {
    if (this.cgroup) {
      const usec = await this.cgroup.cpuUsageUsec();
      return usec === null ? this.polledCpuMs : usec / 1000;
    }
    const reaped = (await readReapedChildrenCpuMs()) - reapedBefore;
    return Math.max(this.polledCpuMs, reaped);
  }
}

/** Everything a stream gives until it ends (a few bytes at most: the helper's failure). */
function readAll(stream: Readable | null): Promise<string> {
  return new Promise((resolve) => {
    if (!stream) {
      resolve('');
      return;
    }
    const chunks: Buffer[] = [];
    stream.on('data', (c: Buffer) => chunks.push(c));
    const done = (): void => resolve(Buffer.concat(chunks).toString('utf8').slice(0, 1000));
    stream.once('end', done);
    stream.once('close', done);
    stream.once('error', done);
  });
}

function collect(
  stream: Readable | null,
  capture: OutputCapture,
  onKept?: (kept: Buffer) => void,
): Promise<void> {
  return new Promise((resolve) => {
    if (!stream) {
      resolve();
      return;
    }
    stream.on('data', (chunk: Buffer) => {
      const kept = capture.push(chunk);
      if (kept.length > 0) onKept?.(kept);
    });
    stream.once('end', () => resolve());
    stream.once('close', () => resolve());
    stream.once('error', () => resolve());
  });
}

/** Writes all of stdin, then closes it; a program that never reads or exits early is fine. */
function feedStdin(stream: Writable | null, bytes: Buffer): void {
  if (!stream) return;
  stream.on('error', () => undefined);
  stream.end(bytes);
}

export { messageOf };
