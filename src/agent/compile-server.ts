import { spawn, type ChildProcess } from 'node:child_process';
import { readdir } from 'node:fs/promises';
import { join } from 'node:path';
import { SandboxFailureError, messageOf } from '../errors.js';
import type { Language } from '../languages/index.js';
import type { Limits, SeccompFamily } from '../protocol/index.js';
import { StageCgroup } from './cgroup.js';
import { createWorkDir, removeWorkDir, wipeScratch } from './files.js';
import { buildStageArgv, HELPER_ENV, type StageSandbox } from './stage.js';

/**
 * What a server's own start may use beyond the compile's CPU limit: its RLIMIT_CPU counts the
 * whole life of the process, start included. The compile's own CPU limit is the stage's, read
 * from the stage's cgroup as for every stage.
 */
export const PRIME_CPU_ALLOWANCE_MS = 300_000;

/** The socket's name in the server's folder. */
const SOCKET_NAME = 'compile.sock';

/** A compile server that listens, waiting for the compile of the next job. */
interface Primed {
  readonly language: string;
  readonly limits: Limits;
  readonly seccomp: SeccompFamily;
  readonly replaces: number;
  /** The next job's work dir: the server's cwd, HOME and TMPDIR, as a compile stage's. */
  readonly workDir: string;
  /** The folder of its socket (not the work dir: the job's files and program must not see it). */
  readonly socketDir: string;
  readonly socket: string;
  readonly child: ChildProcess;
  readonly exited: Promise<void>;
  readonly cgroup: StageCgroup;
}

/** A server handed to one compile stage: its argv, the pid to move into the stage's cgroup. */
export interface ServedCompile {
  /** The compile stage's argv: runner-exec --connect, then the command it stands in for. */
  readonly argv: string[];
  readonly pid: number;
  /**
   * The job's work dir, made when the server was started (empty: its files are not written
   * yet); the job removes it with its other dirs.
   */
  readonly workDir: string;
  /** After the stage (whose cgroup kill ended the server): its socket and cgroup go. Once. */
  finish(): Promise<void>;
}

export interface CompileServersOptions {
  readonly sandbox: StageSandbox;
  /** Where the server's folders (the next job's work dir, its socket's) are made: the work root. */
  readonly workRoot: string;
  /**
   * The shared scratch folders (the guest's /tmp...): emptied of the run user's files when a
   * server is ended without serving (a JVM leaves /tmp/hsperfdata_<user>), as after a stage.
   */
  readonly scratchDirs?: readonly string[];
  readonly log?: (line: string) => void;
}

/**
 * The compile servers of one agent (docs/agent.md, "Compile servers"): at most one runs, started
 * by the host's `prime` in a VM waiting in the pool, as the run user, in a cgroup of its own,
 * under the compile limits of the language's jobs and its seccomp family, exactly as a compile
 * stage starts. The next job's compile stage takes it when it is that language's and has those
 * limits: the server's process joins the stage's cgroup (so its CPU time from then on, its new
 * memory and its end are the stage's) and the stage's program is the client. Every other job,
 * and a sandbox job, ends the server first, so nothing of it is left for a program to see.
 */
export class CompileServers {
  private current: Primed | null = null;

  constructor(private readonly options: CompileServersOptions) {}

  /** The language's server, started and listening; the ms it took. Ends any other first. */
  async start(
    language: Language,
    limits: Limits,
    seccomp: SeccompFamily,
    env: (dir: string) => Record<string, string>,
    timeoutMs: number,
  ): Promise<number> {
    const started = performance.now();
    await this.stop();
    const def = language.definition;
    const server = def.compileServer;
    if (server === undefined || def.compile === null)
      throw new SandboxFailureError(`${def.name} has no compile server`);
    const { sandbox } = this.options;
    if (sandbox.cgroup === null || !sandbox.helper || sandbox.runAs === null)
      throw new SandboxFailureError(
        'a compile server needs cgroups, the exec helper and a run user (it joins the stage of the compile it serves)',
      );
    const cgroup = await StageCgroup.create(sandbox.cgroup, {
      memoryBytes: limits.memoryMib * 1024 * 1024,
      processes: limits.processes,
    });
    let dir: string | null = null;
    let socketDir: string | null = null;
    let child: ChildProcess | null = null;
    try {
      dir = await createWorkDir(this.options.workRoot, sandbox.runAs);
      socketDir = await createWorkDir(this.options.workRoot, sandbox.runAs);
      const socket = join(socketDir, SOCKET_NAME);
      const argv = buildStageArgv(
        sandbox,
        {
          argv: server.command.map((a) => a.replaceAll('{socket}', socket)),
          cwd: dir,
          env: env(dir),
          stdin: Buffer.alloc(0),
          limits: { ...limits, cpuTimeMs: limits.cpuTimeMs + PRIME_CPU_ALLOWANCE_MS },
          seccomp,
        },
        cgroup.path,
      );
      const proc = spawn(argv[0] as string, argv.slice(1), {
        cwd: dir,
        env: HELPER_ENV,
        stdio: ['ignore', 'pipe', 'pipe', 'pipe'],
        detached: true,
      });
      child = proc;
      const exited = new Promise<void>((resolve) => proc.once('exit', () => resolve()));
      await ready(proc, timeoutMs);
      this.current = {
        language: def.name,
        limits,
        seccomp,
        replaces: server.replaces,
        workDir: dir,
        socketDir,
        socket,
        child: proc,
        exited,
        cgroup,
      };
      const ms = Math.round(performance.now() - started);
      this.options.log?.(`compile server of ${def.name}: listening after ${ms} ms`);
      return ms;
    } catch (err) {
      await cgroup.destroy().catch(() => undefined);
      child?.kill('SIGKILL');
      for (const d of [dir, socketDir])
        if (d !== null) await removeWorkDir(d).catch(() => undefined);
      throw new SandboxFailureError(
        `the compile server of ${def.name} did not start: ${messageOf(err)}`,
        { cause: err },
      );
    }
  }

  /**
   * The server for this compile (`compileArgv` expanded from the language's compile command),
   * or null: none runs, or it is another language's, or the job's compile limits or seccomp
   * family are not ones it can serve under (see `servable`), or its work dir is not empty; then
   * it is ended.
   */
  async take(
    language: string,
    limits: Limits,
    seccomp: SeccompFamily,
    compileArgv: readonly string[],
  ): Promise<ServedCompile | null> {
    const primed = this.current;
    if (
      primed === null ||
      primed.language !== language ||
      primed.seccomp !== seccomp ||
      !servable(primed.limits, limits) ||
      primed.child.exitCode !== null ||
      primed.child.signalCode !== null ||
      primed.child.pid === undefined ||
      compileArgv.length < primed.replaces ||
      (await readdir(primed.workDir).catch(() => ['?'])).length > 0
    ) {
      await this.stop();
      return null;
    }
    this.current = null;
    const helper = this.options.sandbox.helper as string;
    let finished: Promise<void> | null = null;
    return {
      argv: [
        helper,
        '--connect',
        primed.socket,
        '--skip',
        String(primed.replaces),
        '--',
        ...compileArgv,
      ],
      pid: primed.child.pid,
      workDir: primed.workDir,
      finish: () => (finished ??= end(primed, false)),
    };
  }

  /** Ends the server, if one runs, and waits until it is gone; nothing of it is left. */
  async stop(): Promise<void> {
    const primed = this.current;
    this.current = null;
    if (primed === null) return;
    await end(primed);
    const { scratchDirs = [], sandbox } = this.options;
    if (scratchDirs.length > 0) await wipeScratch(scratchDirs, sandbox.runAs);
  }
}

/**
 * Whether a server started under `primed` compiles exactly as a stage under `job` would: the
 * limits set on its process when it started (file size, open files, stack, processes) must be
 * the job's, and its CPU limit no lower than the job's (the stage reads the job's CPU limit from
 * its cgroup; RLIMIT_CPU is the backstop). Wall time, memory and output are the stage's own:
 * its timer, its cgroup's memory.max (charged from the moment the server joins it) and its
 * capture. So a Piston client's compile_timeout still finds the server.
 */
export function servable(primed: Limits, job: Limits): boolean {
  return (
    primed.fileSizeBytes === job.fileSizeBytes &&
    primed.openFiles === job.openFiles &&
    primed.stackBytes === job.stackBytes &&
    primed.processes === job.processes &&
    job.cpuTimeMs <= primed.cpuTimeMs
  );
}

/**
 * Kills a server (a no-op once its stage's cgroup killed it), removes its cgroup, its socket's
 * folder and, unless a job took it, its work dir.
 */
async function end(primed: Primed, removeWorkDirToo = true): Promise<void> {
  await primed.cgroup.kill();
  primed.child.kill('SIGKILL');
  await Promise.race([primed.exited, new Promise((r) => setTimeout(r, 2000))]);
  await primed.cgroup.destroy().catch(() => undefined);
  await removeWorkDir(primed.socketDir).catch(() => undefined);
  if (removeWorkDirToo) await removeWorkDir(primed.workDir).catch(() => undefined);
}

/** Resolves when the server prints `ready`; rejects when it exits first or takes too long. */
function ready(child: ChildProcess, timeoutMs: number): Promise<void> {
  return new Promise<void>((resolve, reject) => {
    let out = '';
    let err = '';
    let startFailure = '';
    const timer = setTimeout(() => fail(`not ready after ${timeoutMs} ms`), timeoutMs);
    const fail = (why: string): void => {
      clearTimeout(timer);
      const said = (startFailure || err).trim().slice(-1000);
      reject(new Error(said ? `${why}: ${said}` : why));
    };
    child.stdout?.on('data', (chunk: Buffer) => {
      if (out.length < 4096) out += chunk.toString('utf8');
      if (/^ready$/m.test(out)) {
        clearTimeout(timer);
        resolve();
      }
    });
    child.stderr?.on('data', (chunk: Buffer) => {
      if (err.length < 4096) err += chunk.toString('utf8');
    });
    (child.stdio[3] as NodeJS.ReadableStream | null)?.on('data', (chunk: Buffer) => {
      startFailure += chunk.toString('utf8');
    });
    child.once('error', (e) => fail(e.message));
    child.once('exit', (code, signal) => fail(`it exited (${signal ?? `status ${code}`})`));
  });
}
