import type { LiveJob } from './live.js';
import { constants as fsc } from 'node:fs';
import { access, chmod, chown, lstat, mkdir, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { Compile } from 'typebox/compile';
import {
  ConfigInvalidError,
  FileNameInvalidError,
  LanguageUnknownError,
  LimitInvalidError,
  messageOf,
  RunnerError,
  SandboxFailureError,
  type ErrorCode,
} from '../errors.js';
import {
  DEFAULT_SECCOMP_FAMILY,
  type LanguageRegistry,
  type Language,
} from '../languages/index.js';
import {
  checkJob,
  LimitsSchema,
  SANDBOX_DIR,
  MAX_RESULT_OUTPUT_BYTES,
  type ArtefactEntry,
  type ExecuteMessage,
  type Limits,
  type SeccompFamily,
  type StageResult,
  type Status,
} from '../protocol/index.js';
import { collectArtefact, unpackArtefact } from './artefact.js';
import { probeCgroup } from './cgroup.js';
import { CompileServers, type ServedCompile } from './compile-server.js';
import {
  copyWorkDir,
  createWorkDir,
  removeWorkDir,
  wipeScratch,
  writeJobFiles,
  type FileOwner,
} from './files.js';
import type { SandboxTools } from './proc.js';
import {
  DEFAULT_STAGE_TIMINGS,
  runStage,
  sandboxErrorResult,
  type OutputBudget,
  type StageSandbox,
  type StageTimings,
} from './stage.js';

/** The PATH every stage gets; the request cannot change it. */
export const JOB_PATH = '/usr/local/bin:/usr/bin:/bin';

/**
 * Variables the request's env cannot override: the sandbox relies on them (commands are looked
 * up in PATH; HOME and TMPDIR point into the job's own work dir, so nothing a job writes there
 * by default outlives it). A request value for one of them is ignored.
 */
export const RESERVED_ENV = ['PATH', 'HOME', 'TMPDIR'] as const;

/** What the executor runs: an execute message without its envelope. */
export type ExecutorJob = Omit<ExecuteMessage, 'type' | 'id'>;

/**
 * Where a job asked to keep its compile (`keepArtefact`) hands the work dir the compile left,
 * before the run stage starts; the run waits for it to resolve.
 */
export type KeepArtefact = (entries: ArtefactEntry[]) => Promise<void>;

/** What a job did in the guest: the compile stage (null for interpreted languages), the run. */
export interface ExecutorOutcome {
  readonly status: Status;
  readonly compile: StageResult | null;
  readonly run: StageResult | null;
  /** One run per test case, when the job had `cases` (then `run` is null). */
  readonly cases?: StageResult[];
  /** True when the compile stage went to a compile server (compile-server.ts). */
  readonly compileServed?: boolean;
}

export interface ExecutorOptions {
  readonly languages: LanguageRegistry;
  /** Where per-job work dirs are made (created 0711 when missing). */
  readonly workRoot: string;
  /** The unprivileged user and group that run user code; null runs it as the agent's user. */
  readonly runAs: FileOwner | null;
  /**
   * A cgroup v2 hierarchy to make one cgroup per stage under (the guest: /sys/fs/cgroup);
   * null, or a folder that is not a usable cgroup v2, selects the rlimit + uid-sweep fallback.
   */
  readonly cgroupRoot: string | null;
  readonly timings?: StageTimings;
  /** Paths of sh, prlimit, setpriv and env; looked up in the usual places when omitted. */
  readonly tools?: SandboxTools;
  /** Where to say how the sandbox was set up (one line each). */
  readonly log?: (line: string) => void;
  /**
   * Shared scratch folders the job's user can write to outside its work dir (the guest's
   * /tmp, /var/tmp, /dev/shm): emptied of that user's files after every stage. None by default.
   */
  readonly scratchDirs?: readonly string[];
  /** The static exec helper (runner-exec) each stage is started through; none: the tool chain. */
  readonly execHelper?: string | null;
  /** The persistent folder of sandbox jobs (default SANDBOX_DIR); made on first use. */
  readonly sandboxDir?: string;
}

const limitsValidator = Compile(LimitsSchema);

/** Checks one stage's limits against the schema again; throws LIMIT_INVALID. */
export function checkLimits(limits: Limits, stage: string): void {
  if (limitsValidator.Check(limits)) return;
  const first = limitsValidator.Errors(limits)[0];
  const where = first ? `${first.instancePath || '/'} ${first.message}` : 'invalid';
  throw new LimitInvalidError(`${stage} limits: ${where}`);
}

/**
 * Expands a language command: `{entry}` and `{entryStem}` anywhere in an argument, `{sources}`
 * as a whole argument into every file with the language's extension (sorted; the entry file
 * when there is none). The entry is the first file. A file name is the user's: one that would
 * start an argument with `-` (`-toolexec=...`, `-o`, `--help`) gets `./` in front, so that a
 * compiler or interpreter can read it only as a file name.
 */
export function expandCommand(
  template: readonly string[],
  fileNames: readonly string[],
  extension: string,
): string[] {
  const entry = fileNames[0];
  if (entry === undefined) throw new FileNameInvalidError('a job needs a file');
  const slash = entry.lastIndexOf('/');
  const dot = entry.lastIndexOf('.');
  const entryStem = dot > slash + 1 ? entry.slice(0, dot) : entry;
  const suffix = `.${extension}`;
  const sources = fileNames.filter((n) => n.endsWith(suffix)).sort();
  const out: string[] = [];
  const asPath = (name: string): string => (name.startsWith('-') ? `./${name}` : name);
  for (const arg of template) {
    if (arg === '{sources}') {
      out.push(...(sources.length > 0 ? sources : [entry]).map(asPath));
      continue;
    }
    const expanded = arg.replaceAll('{entryStem}', entryStem).replaceAll('{entry}', entry);
    // Only a placeholder at the start can make the argument begin with the user's `-`.
    out.push(arg.startsWith('{') ? asPath(expanded) : expanded);
  }
  return out;
}

/** Finds an executable in `path` (colon-separated); null when none. */
export async function findExecutable(name: string, path: string): Promise<string | null> {
  if (name.includes('/')) return name;
  for (const dir of path.split(':')) {
    if (dir === '') continue;
    const candidate = join(dir, name);
    try {
      const st = await stat(candidate);
      if (!st.isFile()) continue;
      await access(candidate, fsc.X_OK);
      return candidate;
    } catch {
      // not here
    }
  }
  return null;
}

/** Looks up the sandbox helpers; throws SANDBOX_FAILURE naming the missing ones. */
export async function findSandboxTools(): Promise<SandboxTools> {
  const path = '/usr/sbin:/usr/bin:/sbin:/bin';
  const [sh, prlimit, setpriv, env] = await Promise.all(
    ['sh', 'prlimit', 'setpriv', 'env'].map((n) => findExecutable(n, path)),
  );
  if (!sh || !prlimit || !setpriv || !env) {
    const missing = ['sh', 'prlimit', 'setpriv', 'env'].filter(
      (_, i) => [sh, prlimit, setpriv, env][i] === null,
    );
    throw new SandboxFailureError(
      `missing sandbox tools: ${missing.join(', ')} (util-linux, coreutils)`,
    );
  }
  return { sh, prlimit, setpriv, env };
}

/**
 * Runs jobs: one fresh work dir per job, the files written without following links, an
 * optional compile stage, then the run stage, each confined (see stage.ts), then the work dir
 * removed. Build with `Executor.create`.
 */
export class Executor {
  private tail: Promise<void> = Promise.resolve();
  private readonly servers: CompileServers;

  private constructor(
    private readonly options: ExecutorOptions,
    /** How stages are confined here. */
    readonly sandbox: StageSandbox,
    private readonly runnable: ReadonlySet<string>,
  ) {
    this.servers = new CompileServers({
      sandbox,
      workRoot: options.workRoot,
      ...(options.scratchDirs && { scratchDirs: options.scratchDirs }),
      ...(options.log && { log: options.log }),
    });
  }

  /**
   * Resolves the tools, probes the cgroup root, finds which languages have their toolchain on
   * JOB_PATH, and runs `true` through the whole sandbox once: throws SANDBOX_FAILURE when the
   * sandbox does not work, CONFIG_INVALID when dropping privileges is asked for but the agent
   * is not root.
   */
  static async create(options: ExecutorOptions): Promise<Executor> {
    const log = options.log ?? (() => undefined);
    if (options.runAs && process.getuid?.() !== 0) {
      throw new ConfigInvalidError('running code as another uid needs the agent to run as root');
    }
    const tools = options.tools ?? (await findSandboxTools());
    const cgroup = options.cgroupRoot === null ? null : await probeCgroup(options.cgroupRoot);
    if (cgroup) {
      log(
        `cgroup v2 at ${cgroup.root}: memory ${cgroup.memory ? 'yes' : 'no (RLIMIT_DATA)'}, ` +
          `pids ${cgroup.pids ? 'yes' : 'no (RLIMIT_NPROC only)'}`,
      );
    } else {
      log(
        `no usable cgroup v2${options.cgroupRoot === null ? '' : ` at ${options.cgroupRoot}`}: ` +
          'rlimits, CPU from /proc, and a uid sweep at stage end',
      );
    }
    const helper = options.execHelper ?? null;
    if (helper !== null) log(`stages start through ${helper} (one exec)`);
    const sandbox: StageSandbox = { tools, runAs: options.runAs, cgroup, helper };
    const runnable = new Set<string>();
    for (const language of options.languages.list()) {
      if (await toolchainPresent(language)) runnable.add(language.definition.name);
    }
    const executor = new Executor(options, sandbox, runnable);
    await executor.selfTest();
    return executor;
  }

  /**
   * Starts the language's compile server for the next job (the host's `prime`, docs/agent.md,
   * "Compile servers"), in turn with jobs; resolves with the ms it took once it listens. Throws
   * LANGUAGE_UNKNOWN, LIMIT_INVALID, or SANDBOX_FAILURE when it cannot start.
   */
  async prime(
    nameOrAlias: string,
    limits: Limits,
    seccomp: SeccompFamily,
    timeoutMs = 120_000,
  ): Promise<number> {
    const language = this.language(nameOrAlias);
    checkLimits(limits, 'compile');
    const release = await this.turn();
    try {
      const env = { ...language.definition.env };
      return await this.servers.start(
        language,
        limits,
        seccomp,
        (dir) => Executor.stageEnv(dir, env),
        timeoutMs,
      );
    } finally {
      release();
    }
  }

  /** Waits for this executor's turn (jobs and primes, one at a time); call the result to end it. */
  private async turn(): Promise<() => void> {
    const previous = this.tail;
    let release = (): void => undefined;
    this.tail = new Promise<void>((resolve) => (release = resolve));
    await previous;
    return release;
  }

  /** Resolves once no job runs and the last one's work dirs are removed. */
  idle(): Promise<void> {
    return this.tail;
  }

  /** Names of the languages whose commands are installed here. */
  languages(): string[] {
    return [...this.runnable].sort();
  }

  /** The language for a name or alias, if it is runnable here; throws LANGUAGE_UNKNOWN. */
  language(nameOrAlias: string): Language {
    const language = this.options.languages.find(nameOrAlias);
    if (language === undefined) {
      throw new LanguageUnknownError(
        `unknown language ${JSON.stringify(nameOrAlias.slice(0, 64))}; this agent runs: ${this.languages().join(', ')}`,
      );
    }
    if (!this.runnable.has(language.definition.name)) {
      throw new LanguageUnknownError(
        `${language.definition.name} is not installed here; this agent runs: ${this.languages().join(', ')}`,
      );
    }
    return language;
  }

  /**
   * Runs one job. Throws a RunnerError only for a bad request (LANGUAGE_UNKNOWN,
   * LIMIT_INVALID, FILE_NAME_INVALID, ENCODING_INVALID, ENV_INVALID, ARGS_INVALID), before any
   * code runs; every other failure is a result with status sandbox_error. Aborting `signal`
   * kills the job at once. Calls queue: one job runs at a time. The outcome is given as soon as
   * the last stage ends; the work dir is removed after that (before the next job starts), so a
   * job's clean-up is never part of the time the host waits for its result.
   */
  async execute(
    job: ExecutorJob,
    signal?: AbortSignal,
    live?: LiveJob,
    keep?: KeepArtefact,
  ): Promise<ExecutorOutcome> {
    // Sandbox jobs run side by side when every stage has a cgroup of its own (its kill and
    // limits are then the stage's alone); without one they queue like the others.
    if (job.sandbox !== undefined && this.sandbox.cgroup !== null)
      return this.executeInSandbox(job, job.sandbox, signal, live);
    // One job at a time: jobs share the run user, its RLIMIT_NPROC count and, without
    // cgroups, the uid sweep that ends every stage, so two at once would kill each other.
    const release = await this.turn();
    const dirs: string[] = [];
    try {
      if (job.sandbox !== undefined)
        return await this.executeInSandbox(job, job.sandbox, signal, live);
      return await this.executeAlone(job, signal, dirs, live, keep);
    } finally {
      void Promise.all(
        dirs.map((dir) =>
          removeWorkDir(dir).catch((err: unknown) => {
            this.options.log?.(`cannot remove ${dir}: ${messageOf(err)}`);
          }),
        ),
      ).finally(release);
    }
  }

  /**
   * A sandbox job: its argv in the persistent sandbox folder (made on first use, the run user's),
   * one stage, nothing removed and no scratch folder emptied after it. With `detach` the
   * outcome comes once the program is started; it runs on to its own end or its limits.
   */
  private async executeInSandbox(
    job: ExecutorJob,
    sandbox: NonNullable<ExecutorJob['sandbox']>,
    signal: AbortSignal | undefined,
    live?: LiveJob,
  ): Promise<ExecutorOutcome> {
    const language = this.language(job.language);
    checkLimits(job.runLimits, 'run');
    checkJob(job);
    const def = language.definition;
    await this.servers.stop();
    const home = this.options.sandboxDir ?? SANDBOX_DIR;
    try {
      await ensureSandboxDir(home, this.options.runAs);
    } catch (err) {
      return failed(`cannot make the sandbox folder ${home}: ${messageOf(err)}`);
    }
    const cwd = sandbox.cwd === undefined ? home : join(home, sandbox.cwd);
    const env = { LANG: 'C.UTF-8', ...def.env, ...job.env, PATH: JOB_PATH, HOME: home };
    const stage = (): Promise<StageResult> =>
      runStage(
        this.sandbox,
        {
          argv: [...sandbox.argv, ...job.args],
          cwd,
          env,
          stdin: Buffer.from(job.stdin, 'base64'),
          limits: job.runLimits,
          ...(signal ? { signal } : {}),
          seccomp: job.seccomp ?? def.seccomp ?? DEFAULT_SECCOMP_FAMILY,
          ...(live && { live: { job: live, stdin: true } }),
        },
        this.options.timings ?? DEFAULT_STAGE_TIMINGS,
      );
    if (sandbox.detach === true) {
      const log = this.options.log ?? (() => undefined);
      void stage().then(
        (r) => log(`detached ${sandbox.argv[0] ?? ''}: ${r.status} ${r.message ?? ''}`),
        (err: unknown) => log(`detached ${sandbox.argv[0] ?? ''} failed: ${messageOf(err)}`),
      );
      const run: StageResult = {
        ...sandboxErrorResult('started in the background'),
        status: 'ok',
        wallTimeMs: 0,
      };
      return { status: 'ok', compile: null, run };
    }
    live?.stageStart('run');
    const run = await stage();
    live?.stageEnd('run', run.status);
    return { status: run.status, compile: null, run };
  }

  /** Runs the job's stages; every work dir it makes is put in `dirs` for the caller to remove. */
  private async executeAlone(
    job: ExecutorJob,
    signal: AbortSignal | undefined,
    dirs: string[],
    live?: LiveJob,
    keep?: KeepArtefact,
  ): Promise<ExecutorOutcome> {
    const language = this.language(job.language);
    checkLimits(job.compileLimits, 'compile');
    checkLimits(job.runLimits, 'run');
    checkJob(job);
    const def = language.definition;
    const names = job.files.map((f) => f.name);
    const compileArgv = def.compile ? expandCommand(def.compile, names, def.extension) : null;
    const runArgv = [...expandCommand(def.run, names, def.extension), ...job.args];
    // The host's word (it sets it from the same definition), else this agent's definition.
    const seccomp = job.seccomp ?? def.seccomp ?? DEFAULT_SECCOMP_FAMILY;
    // A compile server a prime started is for this job's compile, in the work dir it was
    // started in; any other job ends it first.
    const served =
      compileArgv === null || job.artefact !== undefined
        ? await this.servers.stop().then(() => null)
        : await this.servers.take(def.name, job.compileLimits, seccomp, compileArgv);
    try {
      return await this.compileAndRun(
        job,
        def,
        compileArgv,
        runArgv,
        seccomp,
        served,
        signal,
        dirs,
        live,
        keep,
      );
    } finally {
      // Before the run stage when it compiled; here when the job ended before its compile.
      await served?.finish();
    }
  }

  /** The stages of a job (see executeAlone), with the compile server it took, if any. */
  private async compileAndRun(
    job: ExecutorJob,
    def: Language['definition'],
    compileArgv: string[] | null,
    runArgv: string[],
    seccomp: SeccompFamily,
    served: ServedCompile | null,
    signal: AbortSignal | undefined,
    dirs: string[],
    live?: LiveJob,
    keep?: KeepArtefact,
  ): Promise<ExecutorOutcome> {
    const budget: OutputBudget = { remainingBytes: MAX_RESULT_OUTPUT_BYTES };
    const servedFlag = served !== null ? { compileServed: true as const } : {};
    let workDir: string;
    try {
      workDir = served?.workDir ?? (await createWorkDir(this.options.workRoot, this.options.runAs));
      dirs.push(workDir);
    } catch (err) {
      return failed(`cannot create the work dir: ${messageOf(err)}`);
    }
    // A compile-cache hit: the work dir the compile left, laid out instead of the files (the
    // sources are in it), and that compile's result; no compile runs.
    const cached = compileArgv !== null ? job.artefact : undefined;
    try {
      if (cached !== undefined) await unpackArtefact(workDir, cached.entries, this.options.runAs);
      else await writeJobFiles(workDir, job.files, this.options.runAs);
    } catch (err) {
      if (err instanceof RunnerError && REQUEST_CODES.has(err.code)) throw err;
      return failed(`cannot write the ${cached ? 'compiled files' : 'files'}: ${messageOf(err)}`);
    }
    const baseEnv = { ...def.env };
    const runEnv = { ...baseEnv, ...job.env };
    let compile: StageResult | null = null;
    if (cached !== undefined) {
      compile = cached.compile;
      live?.stageStart('compile');
      live?.stageEnd('compile', compile.status);
    } else if (compileArgv) {
      live?.stageStart('compile');
      try {
        compile = await this.stage(
          served?.argv ?? compileArgv,
          workDir,
          baseEnv,
          Buffer.alloc(0),
          job.compileLimits,
          signal,
          budget,
          seccomp,
          live && { job: live, stdin: false },
          served?.pid,
        );
      } finally {
        await served?.finish();
      }
      if (served && serverFailed(compile)) {
        compile = { ...compile, status: 'sandbox_error', message: SERVER_ENDED };
      }
      if (compile.status === 'runtime_error') compile = { ...compile, status: 'compile_error' };
      live?.stageEnd('compile', compile.status);
      if (compile.status !== 'ok')
        return { status: compile.status, compile, run: null, ...servedFlag };
      if (job.keepArtefact === true && keep !== undefined) {
        const artefact = await collectArtefact(workDir).catch((err: unknown) => ({
          refused: messageOf(err),
        }));
        if ('entries' in artefact) await keep(artefact.entries);
        else this.options.log?.(`the compile is not kept: ${artefact.refused}`);
      }
    }
    if (job.cases === undefined) {
      live?.stageStart('run');
      const run = await this.stage(
        runArgv,
        workDir,
        runEnv,
        Buffer.from(job.stdin, 'base64'),
        job.runLimits,
        signal,
        budget,
        seccomp,
        live && { job: live, stdin: true },
      );
      live?.stageEnd('run', run.status);
      return { status: run.status, compile, run, ...servedFlag };
    }
    // Compiled once; each case runs in a fresh copy of the compiled work dir with its own
    // stdin, and the copy goes after it: no case sees what another wrote.
    const cases: StageResult[] = [];
    for (const [i, caseStdin] of job.cases.entries()) {
      const caseDir = `${workDir}-case${i}`;
      try {
        dirs.push(caseDir);
        await copyWorkDir(workDir, caseDir, this.options.runAs);
      } catch (err) {
        cases.push(sandboxErrorResult(`cannot make the work dir of case ${i}: ${messageOf(err)}`));
        break;
      }
      const result = await this.stage(
        runArgv,
        caseDir,
        runEnv,
        Buffer.from(caseStdin, 'base64'),
        job.runLimits,
        signal,
        budget,
        seccomp,
      );
      cases.push(result);
      await removeWorkDir(caseDir).catch(() => undefined);
      if (result.status === 'sandbox_error') break;
    }
    const bad = cases.find((c) => c.status !== 'ok');
    return { status: bad?.status ?? 'ok', compile, run: null, cases, ...servedFlag };
  }

  /** The environment of a stage: the fixed variables, then `extra`, reserved ones reasserted. */
  static stageEnv(
    workDir: string,
    extra: Readonly<Record<string, string>>,
  ): Record<string, string> {
    const fixed = { PATH: JOB_PATH, HOME: workDir, TMPDIR: workDir };
    return { LANG: 'C.UTF-8', ...extra, ...fixed };
  }

  /** Runs one stage, then empties the shared scratch folders of what it left there. */
  private async stage(
    argv: readonly string[],
    workDir: string,
    env: Readonly<Record<string, string>>,
    stdin: Buffer,
    limits: Limits,
    signal: AbortSignal | undefined,
    outputBudget?: OutputBudget,
    seccomp: SeccompFamily = DEFAULT_SECCOMP_FAMILY,
    live?: { job: LiveJob; stdin: boolean },
    join?: number,
  ): Promise<StageResult> {
    const result = await runStage(
      this.sandbox,
      {
        argv,
        cwd: workDir,
        env: Executor.stageEnv(workDir, env),
        stdin,
        limits,
        ...(signal ? { signal } : {}),
        ...(outputBudget ? { outputBudget } : {}),
        seccomp,
        ...(live && { live }),
        ...(join !== undefined && { join }),
      },
      this.options.timings ?? DEFAULT_STAGE_TIMINGS,
    );
    const scratch = this.options.scratchDirs ?? [];
    if (scratch.length > 0) {
      try {
        await wipeScratch(scratch, this.options.runAs);
      } catch (err) {
        return sandboxErrorResult(`cannot empty the scratch folders: ${messageOf(err)}`);
      }
    }
    return result;
  }

  private async selfTest(): Promise<void> {
    const limits: Limits = {
      wallTimeMs: 10_000,
      cpuTimeMs: 5_000,
      memoryMib: 256,
      processes: 16,
      outputBytes: 1024,
      fileSizeBytes: 1024,
      openFiles: 64,
      stackBytes: 8 * 1024 * 1024,
    };
    let workDir: string;
    try {
      workDir = await createWorkDir(this.options.workRoot, this.options.runAs);
    } catch (err) {
      throw new SandboxFailureError(`work root ${this.options.workRoot}: ${messageOf(err)}`, {
        cause: err,
      });
    }
    try {
      // `cd "$HOME"` also checks that the run user can reach its work dir from /.
      const result = await this.stage(
        ['sh', '-c', 'cd "$HOME" && echo ok'],
        workDir,
        {},
        Buffer.alloc(0),
        limits,
        undefined,
      );
      const out = Buffer.from(result.stdout, 'base64').toString();
      if (result.status !== 'ok' || out !== 'ok\n') {
        const err = Buffer.from(result.stderr, 'base64').toString().slice(0, 500);
        throw new SandboxFailureError(
          `sandbox self-test failed: ${result.status} ${result.message ?? ''} ${err}`.trim(),
        );
      }
    } finally {
      await removeWorkDir(workDir).catch(() => undefined);
    }
  }
}

/** Errors that mean the request is wrong (thrown, answered with an error message). */
export const REQUEST_CODES: ReadonlySet<ErrorCode> = new Set<ErrorCode>([
  'LANGUAGE_UNKNOWN',
  'LIMIT_INVALID',
  'FILE_NAME_INVALID',
  'ENCODING_INVALID',
  'ENV_INVALID',
  'ARGS_INVALID',
  'MESSAGE_INVALID',
]);

/** Makes the sandbox folder once: the run user's, private; a link in its place is refused. */
async function ensureSandboxDir(dir: string, owner: FileOwner | null): Promise<void> {
  const st = await lstat(dir).catch(() => null);
  if (st !== null) {
    if (!st.isDirectory()) throw new SandboxFailureError(`${dir} is not a directory`);
    return;
  }
  await mkdir(dir, { recursive: true, mode: 0o700 });
  await chmod(dir, 0o700);
  if (owner) await chown(dir, owner.uid, owner.gid);
}

/** What runner-exec --connect says when the compile server ended without an exit status. */
const SERVER_ENDED = 'the compile server ended without an exit status';

/** A served compile whose server died with no answer (not killed at a limit): the sandbox's. */
function serverFailed(compile: StageResult): boolean {
  if (compile.exitCode !== 125 || compile.status !== 'runtime_error') return false;
  return Buffer.from(compile.stderr, 'base64').toString('utf8').includes(SERVER_ENDED);
}

function failed(message: string): ExecutorOutcome {
  return { status: 'sandbox_error', compile: null, run: sandboxErrorResult(message) };
}

async function toolchainPresent(language: Language): Promise<boolean> {
  const commands = [language.definition.run[0], language.definition.compile?.[0]];
  for (const command of commands) {
    if (command === undefined) continue;
    // Relative commands (./main) are made by the compile stage; placeholders by the request.
    if (command.includes('/') || command.includes('{')) continue;
    if ((await findExecutable(command, JOB_PATH)) === null) return false;
  }
  return true;
}
