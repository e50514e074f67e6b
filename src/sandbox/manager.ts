import { createHash, randomBytes } from 'node:crypto';
import { createReadStream } from 'node:fs';
import { mkdir, readdir, readFile, rename, rm, stat, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import {
  FileNotFoundError,
  LanguageUnknownError,
  LimitInvalidError,
  messageOf,
  SandboxFailureError,
  SandboxLimitError,
  SandboxNotFoundError,
  SandboxStateError,
  SnapshotFailedError,
} from '../errors.js';
import type { LanguageRegistry } from '../languages/index.js';
import { processAlive } from '../pids.js';
import {
  checkExecuteMessage,
  type ExecuteMessage,
  type Limits,
  type LiveSignal,
  type ResultMessage,
  type SeccompFamily,
} from '../protocol/index.js';
import {
  executeOnVm,
  LIVE_OUTPUT_WINDOW_BYTES,
  type Lease,
  type LiveControls,
  type LiveHandlers,
  type VmPool,
} from '../pool/index.js';
import type { VmResources } from '../vmm/index.js';
import { AgentDemux } from './demux.js';
import { EXISTS_EXIT, FILE_SCRIPTS, MISSING_EXIT, parseFind, sandboxPath } from './files.js';
import { CELL_CONNECT_WAIT_MS, cellClientCommand, kernelCommand, kernelProbe } from './kernels.js';
import {
  CELL_LANGUAGES,
  type CellEvent,
  type CellLanguage,
  type CellOutcome,
  type CellRequest,
  type CellResult,
  type CommandHandle,
  type CommandRequest,
  type CommandResult,
  type CreateSandboxRequest,
  type FileEntry,
  type OutputListener,
  type SandboxInfo,
  type SandboxService,
} from './types.js';

/** Settings of the sandbox engine (from the settings table, docs/configuration.md). */
export interface SandboxManagerOptions {
  readonly pool: Pick<VmPool, 'acquire' | 'acquireFrom' | 'release' | 'capacity'>;
  readonly languages: LanguageRegistry;
  /** Where sandboxes are kept: `<dir>/<id>/sandbox.json`, and `vm.snap` while paused. */
  readonly dir: string;
  readonly timeoutMs: number;
  readonly maxTimeoutMs: number;
  readonly maxPerKey: number;
  /** Running at once on this host; 0: half the pool's capacity (at least one). */
  readonly maxRunning: number;
  readonly pausedTtlMs: number;
  readonly commandTimeoutMs: number;
  /** The guest memory of a VM (a call's memory limit). */
  readonly vmMemoryMib: number;
  readonly vcpus: number;
  /** What a new VM of the language is made of (its snapshot's resources). */
  readonly resources: (language: string) => Promise<VmResources>;
  readonly log?: (line: string) => void;
  /** How often expiries are checked (default 1 s). */
  readonly sweepMs?: number;
}

/** What is kept on disk of a sandbox (sandbox.json). */
interface SandboxRecord {
  id: string;
  language: string;
  template: string;
  owner: string | null;
  state: 'running' | 'paused';
  createdAt: string;
  startedAt: string;
  expiresAt: string;
  pausedAt: string | null;
  timeoutMs: number;
  metadata: Record<string, string>;
  envs: Record<string, string>;
  forkedFrom: string | null;
  /** The process whose VM runs it (while running). */
  heldBy?: number;
  /** While paused: the snapshot's VM resources and its sha256 (checked before a resume). */
  snapshot: { resources: VmResources; sha256: string; sizeBytes: number } | null;
}

/** A running sandbox's VM and what runs in it. */
interface Live {
  lease: Lease;
  /** What the VM is made of (a snapshot of it restores only with the same). */
  resources: VmResources;
  demux: AgentDemux;
  commands: Map<number, CommandHandle>;
  /** Interpreters started in this VM (they live in its memory, so across pause and resume). */
  kernels: Map<CellLanguage, Promise<void>>;
  /** Interpreters to reseed at their next cell (after a resume or fork). */
  reseed: Set<CellLanguage>;
  /** One cell at a time per interpreter. */
  cellTail: Map<CellLanguage, Promise<unknown>>;
}

interface Entry {
  record: SandboxRecord;
  live: Live | null;
  /** A lifecycle change in progress: other calls get SANDBOX_STATE meanwhile. */
  busy: 'pausing' | 'resuming' | 'killing' | null;
}

const ID_ALPHABET = 'abcdefghijklmnopqrstuvwxyz0123456789';
/** The longest a command, cell or interpreter may run (the agent's wall-time maximum). */
const MAX_CALL_MS = 3_600_000;
/** File bytes read per agent call (each call's output also comes back in its result). */
const READ_CHUNK_BYTES = 8 * 1024 * 1024;

/** A new sandbox id: 20 lower-case letters and digits. */
export function newSandboxId(): string {
  const bytes = randomBytes(20);
  let id = '';
  for (const b of bytes) id += ID_ALPHABET.charAt(b % ID_ALPHABET.length);
  return id;
}

/**
 * The sandbox engine of one host (SandboxService). A running sandbox holds one VM leased from
 * the pool for its whole life; its calls are sandbox jobs (ExecuteMessage.sandbox) side by
 * side on the VM's one agent channel (AgentDemux). A pause saves the VM whole (memory, and so
 * its tmpfs files and interpreters) with the VMM's snapshot, and gives the VM back; a resume
 * restores that snapshot into a new VM, reseeded as any restored VM is.
 */
export class SandboxManager implements SandboxService {
  private readonly entries = new Map<string, Entry>();
  private sweeper: NodeJS.Timeout | null = null;
  private closed = false;
  private seq = 0;

  private constructor(private readonly options: SandboxManagerOptions) {}

  /**
   * Loads the paused sandboxes kept in `dir` (a running one's VM did not outlive the process
   * that held it: its record is deleted) and starts the expiry sweep.
   */
  static async open(options: SandboxManagerOptions): Promise<SandboxManager> {
    const manager = new SandboxManager(options);
    await mkdir(options.dir, { recursive: true, mode: 0o700 });
    for (const name of await readdir(options.dir)) {
      const folder = join(options.dir, name);
      const record = await readFile(join(folder, 'sandbox.json'), 'utf8').then(
        (t) => JSON.parse(t) as SandboxRecord,
        () => null,
      );
      if (record?.state === 'paused' && record.snapshot !== null) {
        manager.entries.set(record.id, { record, live: null, busy: null });
        continue;
      }
      // Another process on this data folder (a `runner bench` beside `runner serve`) holds it.
      if (
        record?.state === 'running' &&
        record.heldBy !== process.pid &&
        processAlive(record.heldBy)
      )
        continue;
      options.log?.(`sandbox ${name}: its VM did not survive the restart; deleted`);
      await rm(folder, { recursive: true, force: true });
    }
    manager.sweeper = setInterval(() => void manager.sweep(), options.sweepMs ?? 1000);
    manager.sweeper.unref();
    return manager;
  }

  /** The most sandboxes running at once. */
  get maxRunning(): number {
    return this.options.maxRunning > 0
      ? this.options.maxRunning
      : Math.max(1, Math.floor(this.options.pool.capacity / 2));
  }

  // ---- lifecycle ----

  async create(request: CreateSandboxRequest): Promise<SandboxInfo> {
    const language = this.options.languages.find(request.language);
    if (language === undefined)
      throw new LanguageUnknownError(
        `unknown language ${JSON.stringify(request.language.slice(0, 64))} for a sandbox`,
      );
    const timeoutMs = this.checkTimeout(request.timeoutMs ?? this.options.timeoutMs);
    this.checkCaps(1, request.owner);
    const name = language.definition.name;
    const now = new Date();
    const record: SandboxRecord = {
      id: newSandboxId(),
      language: name,
      template: request.template ?? name,
      owner: request.owner,
      state: 'running',
      createdAt: now.toISOString(),
      startedAt: now.toISOString(),
      expiresAt: new Date(now.getTime() + timeoutMs).toISOString(),
      pausedAt: null,
      timeoutMs,
      metadata: { ...request.metadata },
      envs: { ...request.envs },
      forkedFrom: null,
      snapshot: null,
    };
    // Reserved before the VM is asked for, so that two creates cannot both pass the caps.
    const entry: Entry = { record, live: null, busy: 'resuming' };
    this.entries.set(record.id, entry);
    try {
      const lease = await this.options.pool.acquire(name);
      entry.live = this.attach(lease, await this.options.resources(name));
      await this.save(record);
    } catch (err) {
      this.entries.delete(record.id);
      if (entry.live) await this.detach(entry.live);
      throw err;
    } finally {
      entry.busy = null;
    }
    this.options.log?.(`sandbox ${record.id} (${name}) created on VM ${entry.live.lease.vm.id}`);
    return this.info(entry);
  }

  get(id: string, owner: string | null): SandboxInfo {
    return this.info(this.entry(id, owner));
  }

  list(owner: string | null): SandboxInfo[] {
    return [...this.entries.values()]
      .filter((e) => e.record.owner === owner && e.busy !== 'killing')
      .map((e) => this.info(e));
  }

  setTimeout(id: string, owner: string | null, timeoutMs: number): SandboxInfo {
    const entry = this.entry(id, owner);
    entry.record.timeoutMs = this.checkTimeout(timeoutMs);
    if (entry.record.state === 'running')
      entry.record.expiresAt = new Date(Date.now() + timeoutMs).toISOString();
    void this.save(entry.record);
    return this.info(entry);
  }

  async pause(id: string, owner: string | null): Promise<SandboxInfo> {
    const entry = this.entry(id, owner);
    if (entry.record.state === 'paused')
      throw new SandboxStateError(`sandbox ${id} is paused already`);
    this.idle(entry);
    entry.busy = 'pausing';
    try {
      await this.snapshot(entry);
    } finally {
      entry.busy = null;
    }
    return this.info(entry);
  }

  async resume(
    id: string,
    owner: string | null,
    options: { timeoutMs?: number } = {},
  ): Promise<SandboxInfo> {
    const entry = this.entry(id, owner);
    if (options.timeoutMs !== undefined)
      entry.record.timeoutMs = this.checkTimeout(options.timeoutMs);
    if (entry.record.state === 'running') {
      this.touch(entry);
      return this.info(entry);
    }
    this.idle(entry);
    this.checkCaps(1);
    entry.busy = 'resuming';
    try {
      const live = await this.restore(entry.record);
      entry.live = live;
      const now = new Date();
      entry.record.state = 'running';
      entry.record.startedAt = now.toISOString();
      entry.record.pausedAt = null;
      entry.record.expiresAt = new Date(now.getTime() + entry.record.timeoutMs).toISOString();
      entry.record.snapshot = null;
      await this.save(entry.record);
      await rm(join(this.folder(id), 'vm.snap'), { force: true });
    } finally {
      entry.busy = null;
    }
    this.options.log?.(`sandbox ${id} resumed on VM ${entry.live.lease.vm.id}`);
    return this.info(entry);
  }

  async fork(id: string, owner: string | null, count: number): Promise<SandboxInfo[]> {
    if (!Number.isInteger(count) || count < 1 || count > 16)
      throw new LimitInvalidError('a fork makes 1 to 16 sandboxes');
    const entry = this.entry(id, owner);
    this.idle(entry);
    this.checkCaps(count, entry.record.owner);
    const wasRunning = entry.record.state === 'running';
    if (wasRunning) {
      entry.busy = 'pausing';
      try {
        await this.snapshot(entry);
      } finally {
        entry.busy = null;
      }
    }
    const forks: SandboxInfo[] = [];
    try {
      for (let i = 0; i < count; i++) {
        const now = new Date();
        const record: SandboxRecord = {
          ...entry.record,
          id: newSandboxId(),
          state: 'running',
          createdAt: now.toISOString(),
          startedAt: now.toISOString(),
          pausedAt: null,
          expiresAt: new Date(now.getTime() + entry.record.timeoutMs).toISOString(),
          metadata: { ...entry.record.metadata },
          envs: { ...entry.record.envs },
          forkedFrom: id,
          snapshot: null,
        };
        const child: Entry = { record, live: null, busy: 'resuming' };
        this.entries.set(record.id, child);
        try {
          child.live = await this.restore(entry.record);
          await this.save(record);
        } catch (err) {
          this.entries.delete(record.id);
          throw err;
        } finally {
          child.busy = null;
        }
        forks.push(this.info(child));
      }
    } finally {
      if (wasRunning) await this.resume(id, owner).catch(() => undefined);
    }
    return forks;
  }

  async kill(id: string, owner: string | null): Promise<void> {
    const entry = this.entry(id, owner);
    if (entry.busy === 'killing') return;
    entry.busy = 'killing';
    await this.remove(entry);
  }

  /**
   * Stops the sweep and pauses every running sandbox (so it can be resumed after a restart);
   * one that cannot be paused is killed.
   */
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    if (this.sweeper) clearInterval(this.sweeper);
    for (const entry of this.entries.values()) {
      if (entry.record.state !== 'running' || entry.live === null || entry.busy !== null) continue;
      try {
        await this.snapshot(entry);
      } catch (err) {
        this.options.log?.(
          `sandbox ${entry.record.id}: cannot pause at shut-down: ${messageOf(err)}`,
        );
        await this.remove(entry).catch(() => undefined);
      }
    }
  }

  // ---- commands ----

  async command(
    id: string,
    owner: string | null,
    request: CommandRequest,
    onOutput?: OutputListener,
  ): Promise<CommandHandle> {
    const entry = this.entry(id, owner);
    const live = this.running(entry);
    this.touch(entry);
    const cwd = request.cwd === undefined ? undefined : sandboxPath(request.cwd, { root: true });
    const listeners = new Set<OutputListener>();
    if (onOutput) listeners.add(onOutput);
    const pid = ++this.seq;
    const started = this.start(entry, live, {
      argv: ['/bin/sh', '-c', request.cmd],
      env: { ...request.envs },
      ...(cwd !== undefined && { cwd }),
      timeoutMs: request.timeoutMs ?? this.options.commandTimeoutMs,
      liveStdin: request.stdin === true,
      onOutput: async (stream, data) => {
        for (const l of [...listeners]) await l(stream, data);
      },
    });
    const done = started.result.then(commandResult);
    const handle: CommandHandle = {
      pid,
      cmd: request.cmd,
      done,
      stdin: async (data) => (await started.controls).stdin(data),
      stdinEnd: () => void started.controls.then((c) => c.stdinEnd()),
      kill: (signal: LiveSignal = 'SIGKILL') => void started.controls.then((c) => c.signal(signal)),
      listen: (l) => {
        listeners.add(l);
        return () => listeners.delete(l);
      },
    };
    live.commands.set(pid, handle);
    void done.finally(() => live.commands.delete(pid));
    await started.sent;
    return handle;
  }

  commands(id: string, owner: string | null): CommandHandle[] {
    const entry = this.entry(id, owner);
    return entry.live === null ? [] : [...entry.live.commands.values()];
  }

  // ---- code cells ----

  async runCell(
    id: string,
    owner: string | null,
    request: CellRequest,
    onEvent?: (event: CellEvent) => Promise<void> | void,
  ): Promise<CellOutcome> {
    const entry = this.entry(id, owner);
    const live = this.running(entry);
    this.touch(entry);
    const language: CellLanguage =
      request.language ??
      ((CELL_LANGUAGES as readonly string[]).includes(entry.record.language)
        ? (entry.record.language as CellLanguage)
        : 'python');
    if (!(CELL_LANGUAGES as readonly string[]).includes(language))
      throw new LanguageUnknownError(
        `code cells run in ${CELL_LANGUAGES.join(' or ')}, not ${JSON.stringify(language)}`,
      );
    const timeoutMs = request.timeoutMs ?? this.options.commandTimeoutMs;
    if (!Number.isInteger(timeoutMs) || timeoutMs < 1 || timeoutMs > MAX_CALL_MS)
      throw new LimitInvalidError(`a cell's timeout is 1 to ${MAX_CALL_MS} ms`);
    const previous = live.cellTail.get(language) ?? Promise.resolve();
    const mine = previous
      .catch(() => undefined)
      .then(async () => {
        let outcome = await this.cellOnce(entry, live, language, request, timeoutMs, onEvent);
        if (outcome === null) {
          // The interpreter had stopped (its time limit, a crash): started again, state lost.
          live.kernels.delete(language);
          const note = `[the ${language} interpreter had stopped and was started again: earlier state is lost]\n`;
          await onEvent?.({ type: 'stderr', text: note });
          outcome = await this.cellOnce(entry, live, language, request, timeoutMs, onEvent);
          if (outcome === null)
            throw new SandboxFailureError(
              `the ${language} interpreter of sandbox ${id} does not start`,
            );
          outcome = { ...outcome, stderr: [note, ...outcome.stderr] };
        }
        return outcome;
      });
    live.cellTail.set(language, mine);
    return mine;
  }

  async restartInterpreter(
    id: string,
    owner: string | null,
    language: CellLanguage,
  ): Promise<boolean> {
    const entry = this.entry(id, owner);
    const live = this.running(entry);
    this.touch(entry);
    const previous = live.cellTail.get(language) ?? Promise.resolve();
    const mine = previous
      .catch(() => undefined)
      .then(async () => {
        if (!live.kernels.has(language)) return false;
        live.kernels.delete(language);
        live.reseed.delete(language);
        // The interpreter exits on this request (and removes its socket); the client ends
        // when it does. One that had stopped already makes the client exit 97 or fail.
        await this.start(entry, live, {
          argv: cellClientCommand(language, 1000),
          stdin: Buffer.from(`${JSON.stringify({ exit: true })}\n`),
          timeoutMs: 30_000,
        }).result;
        return true;
      });
    live.cellTail.set(language, mine);
    return mine;
  }

  /** One cell; null when the interpreter was not there to take it. */
  private async cellOnce(
    entry: Entry,
    live: Live,
    language: CellLanguage,
    request: CellRequest,
    timeoutMs: number,
    onEvent?: (event: CellEvent) => Promise<void> | void,
  ): Promise<CellOutcome | null> {
    await this.kernel(entry, live, language);
    const reseed = live.reseed.delete(language);
    const payload = `${JSON.stringify({
      code: request.code,
      env: { ...entry.record.envs, ...request.envs },
      timeoutMs,
      reseed,
    })}\n`;
    const results: CellResult[] = [];
    const stdout: string[] = [];
    const stderr: string[] = [];
    let error: CellOutcome['error'] = null;
    let executionCount: number | null = null;
    let pending = Buffer.alloc(0);
    let clientErr = '';
    const take = async (line: string): Promise<void> => {
      if (line.trim() === '') return;
      let event: {
        type?: string;
        text?: string;
        result?: CellResult;
        error?: CellOutcome['error'];
        executionCount?: number;
      };
      try {
        event = JSON.parse(line) as typeof event;
      } catch {
        return;
      }
      if ((event.type === 'stdout' || event.type === 'stderr') && typeof event.text === 'string') {
        (event.type === 'stdout' ? stdout : stderr).push(event.text);
        await onEvent?.({ type: event.type, text: event.text });
      } else if (event.type === 'result' && event.result) {
        results.push(event.result);
        await onEvent?.({ type: 'result', result: event.result });
      } else if (event.type === 'error' && event.error) {
        error = event.error;
        await onEvent?.({ type: 'error', error: event.error });
      } else if (event.type === 'end' && typeof event.executionCount === 'number') {
        executionCount = event.executionCount;
      }
    };
    const started = this.start(entry, live, {
      argv: cellClientCommand(language),
      stdin: Buffer.from(payload),
      timeoutMs: Math.min(MAX_CALL_MS, timeoutMs + CELL_CONNECT_WAIT_MS + 15_000),
      onOutput: async (stream, data) => {
        if (stream === 'stderr') {
          clientErr = (clientErr + data.toString()).slice(-2000);
          return;
        }
        pending = Buffer.concat([pending, data]);
        for (;;) {
          const nl = pending.indexOf(10);
          if (nl < 0) break;
          const line = pending.subarray(0, nl).toString('utf8');
          pending = pending.subarray(nl + 1);
          await take(line);
        }
      },
    });
    const result = await started.result;
    if (pending.length > 0) await take(pending.toString('utf8'));
    if (executionCount === null) {
      const run = result.run;
      const nothing = stdout.length + stderr.length + results.length === 0 && error === null;
      if (nothing && run?.status !== 'timeout' && result.status !== 'sandbox_error') return null;
      if (result.status === 'sandbox_error')
        throw new SandboxFailureError(
          `the cell could not run: ${run?.message ?? 'no reason given'} ${clientErr}`.trim(),
        );
      live.kernels.delete(language);
      const stopped: NonNullable<CellOutcome['error']> = {
        name: 'KernelDied',
        value: `the ${language} interpreter stopped during the cell (${run?.message ?? run?.status ?? 'no reason'}); its state is lost`,
        traceback: '',
      };
      error = stopped;
      await onEvent?.({ type: 'error', error: stopped });
    }
    return { executionCount: executionCount ?? 0, results, stdout, stderr, error };
  }

  /** Starts a language's interpreter in the VM once (detached); LANGUAGE_UNKNOWN when absent. */
  private kernel(entry: Entry, live: Live, language: CellLanguage): Promise<void> {
    let ready = live.kernels.get(language);
    if (ready === undefined) {
      ready = (async () => {
        const probe = await this.start(entry, live, {
          argv: ['/bin/sh', '-c', kernelProbe(language)],
          timeoutMs: 30_000,
        }).result;
        if (probe.run?.exitCode !== 0)
          throw new LanguageUnknownError(
            `this sandbox (${entry.record.language}) has no ${language} interpreter for code cells`,
          );
        const { argv, seccomp } = kernelCommand(language);
        const started = await this.start(entry, live, {
          argv,
          timeoutMs: MAX_CALL_MS,
          detach: true,
          seccomp,
        }).result;
        if (started.status !== 'ok')
          throw new SandboxFailureError(
            `the ${language} interpreter did not start: ${started.run?.message ?? started.status}`,
          );
      })();
      live.kernels.set(language, ready);
      ready.catch(() => live.kernels.delete(language));
    }
    return ready;
  }

  // ---- files ----

  async writeFile(
    id: string,
    owner: string | null,
    path: string,
    content: Buffer | AsyncIterable<Buffer>,
  ): Promise<FileEntry> {
    const entry = this.entry(id, owner);
    const live = this.running(entry);
    this.touch(entry);
    const abs = sandboxPath(path);
    const started = this.start(entry, live, {
      argv: ['/bin/sh', '-c', FILE_SCRIPTS.write, 'sh', abs],
      timeoutMs: MAX_CALL_MS,
      liveStdin: true,
    });
    const controls = await started.controls;
    try {
      if (Buffer.isBuffer(content)) {
        for (let at = 0; at < content.length; at += 256 * 1024)
          await controls.stdin(content.subarray(at, at + 256 * 1024));
      } else {
        for await (const chunk of content) if (chunk.length > 0) await controls.stdin(chunk);
      }
    } catch (err) {
      controls.signal('SIGKILL');
      await started.result;
      throw err;
    }
    controls.stdinEnd();
    const result = await started.result;
    if (result.status !== 'ok')
      throw new SandboxFailureError(`cannot write ${abs}: ${failure(result)}`);
    return this.statFile(id, owner, abs);
  }

  async readFile(id: string, owner: string | null, path: string): Promise<AsyncIterable<Buffer>> {
    const entry0 = await this.statFile(id, owner, path);
    if (entry0.type !== 'file')
      throw new FileNotFoundError(
        `${entry0.path} is a ${entry0.type === 'dir' ? 'folder' : entry0.type}, not a file`,
      );
    const size = entry0.size;
    const abs = entry0.path;
    const read = (offset: number, count: number, sink: OutputListener) => {
      const entry = this.entry(id, owner);
      return this.start(entry, this.running(entry), {
        argv: ['/bin/sh', '-c', FILE_SCRIPTS.read, 'sh', abs, String(offset), String(count)],
        timeoutMs: MAX_CALL_MS,
        outputBytes: count + 1,
        onOutput: sink,
      }).result;
    };
    return streamChunks(size, read, abs);
  }

  async listFiles(id: string, owner: string | null, path: string, depth = 1): Promise<FileEntry[]> {
    if (!Number.isInteger(depth) || depth < 1 || depth > 64)
      throw new LimitInvalidError('depth is 1 to 64');
    const out = await this.fileCall(id, owner, FILE_SCRIPTS.list, [
      sandboxPath(path, { root: true }),
      String(depth),
    ]);
    return parseFind(out);
  }

  async statFile(id: string, owner: string | null, path: string): Promise<FileEntry> {
    const abs = sandboxPath(path, { root: true });
    const [found] = parseFind(await this.fileCall(id, owner, FILE_SCRIPTS.stat, [abs]));
    if (found === undefined) throw new FileNotFoundError(`no such file or folder: ${abs}`);
    return found;
  }

  async removeFile(id: string, owner: string | null, path: string): Promise<void> {
    await this.fileCall(id, owner, FILE_SCRIPTS.remove, [sandboxPath(path)]);
  }

  async makeDir(id: string, owner: string | null, path: string): Promise<boolean> {
    try {
      await this.fileCall(id, owner, FILE_SCRIPTS.mkdir, [sandboxPath(path)]);
      return true;
    } catch (err) {
      if (err instanceof ExistsSignal) return false;
      throw err;
    }
  }

  async moveFile(id: string, owner: string | null, from: string, to: string): Promise<FileEntry> {
    const target = sandboxPath(to);
    await this.fileCall(id, owner, FILE_SCRIPTS.move, [sandboxPath(from), target]);
    return this.statFile(id, owner, target);
  }

  /** Runs a file script; its stdout. FILE_NOT_FOUND for MISSING_EXIT. */
  private async fileCall(
    id: string,
    owner: string | null,
    script: string,
    operands: string[],
  ): Promise<Buffer> {
    const entry = this.entry(id, owner);
    const live = this.running(entry);
    this.touch(entry);
    const chunks: Buffer[] = [];
    const result = await this.start(entry, live, {
      argv: ['/bin/sh', '-c', script, 'sh', ...operands],
      timeoutMs: 60_000,
      onOutput: (stream, data) => {
        if (stream === 'stdout') chunks.push(data);
      },
    }).result;
    const code = result.run?.exitCode;
    if (code === MISSING_EXIT)
      throw new FileNotFoundError(`no such file or folder: ${operands[0] ?? ''}`);
    if (code === EXISTS_EXIT) throw new ExistsSignal();
    if (result.status !== 'ok') throw new SandboxFailureError(failure(result));
    return Buffer.concat(chunks);
  }

  // ---- the machinery ----

  /**
   * Sends one sandbox job to the VM. `sent`: the message is on its way; `controls`: its live
   * stdin and signals; `result`: its end (a failure of the VM is a sandbox_error result).
   */
  private start(
    entry: Entry,
    live: Live,
    spec: {
      argv: string[];
      env?: Record<string, string>;
      cwd?: string;
      timeoutMs: number;
      stdin?: Buffer;
      liveStdin?: boolean;
      detach?: boolean;
      seccomp?: SeccompFamily;
      outputBytes?: number;
      onOutput?: OutputListener;
    },
  ): { sent: Promise<void>; controls: Promise<LiveControls>; result: Promise<ResultMessage> } {
    const wall = spec.timeoutMs === 0 ? MAX_CALL_MS : spec.timeoutMs;
    if (!Number.isInteger(wall) || wall < 1 || wall > MAX_CALL_MS)
      throw new LimitInvalidError(`a timeout is 0 (the most) to ${MAX_CALL_MS} ms`);
    const limits: Limits = {
      wallTimeMs: wall,
      cpuTimeMs: wall,
      memoryMib: this.options.vmMemoryMib,
      processes: 512,
      outputBytes: Math.min(64 * 1024 * 1024, spec.outputBytes ?? 64 * 1024 * 1024),
      fileSizeBytes: 4 * 1024 * 1024 * 1024,
      openFiles: 4096,
      stackBytes: 8 * 1024 * 1024,
    };
    const language = this.options.languages.get(entry.record.language).definition;
    const rel = spec.cwd === undefined ? undefined : spec.cwd.slice('/home/user/'.length);
    const message: ExecuteMessage = {
      type: 'execute',
      id: `${entry.record.id}-${++this.seq}`,
      language: language.name,
      files: [],
      stdin: (spec.stdin ?? Buffer.alloc(0)).toString('base64'),
      args: [],
      env: { ...entry.record.envs, ...spec.env },
      compileLimits: limits,
      runLimits: limits,
      seccomp: spec.seccomp ?? language.seccomp ?? 'default',
      ...(spec.detach !== true && { stream: { windowBytes: LIVE_OUTPUT_WINDOW_BYTES } }),
      sandbox: {
        argv: spec.argv,
        ...(rel !== undefined && rel !== '' && { cwd: rel }),
        ...(spec.detach === true && { detach: true }),
      },
    };
    checkExecuteMessage(message);
    const channel = live.demux.open(message.id);
    let gotControls: (c: LiveControls) => void = () => undefined;
    const controls = new Promise<LiveControls>((resolve) => (gotControls = resolve));
    const handlers: LiveHandlers = {
      onStart: (c) => {
        if (spec.liveStdin !== true) c.stdinEnd();
        gotControls(c);
      },
      onEvent: async (event) => {
        if (event.type === 'output') await spec.onOutput?.(event.stream, event.data);
      },
    };
    let sent: () => void = () => undefined;
    const sentPromise = new Promise<void>((resolve) => (sent = resolve));
    const result = executeOnVm(
      {
        agent: () => ({
          send: async (m) => {
            await channel.send(m);
            sent();
          },
          next: (t) => channel.next(t),
        }),
      },
      { message, deadlineMs: wall + 30_000 },
      spec.detach === true ? undefined : handlers,
    ).finally(() => {
      sent();
      live.demux.close(message.id);
    });
    return { sent: sentPromise, controls, result };
  }

  /** A leased VM made a sandbox's: its channel is shared by the sandbox's calls from now on. */
  private attach(lease: Lease, resources: VmResources): Live {
    const vm = lease.vm;
    const live: Live = {
      lease,
      resources,
      demux: new AgentDemux(vm.agent(), this.options.log),
      commands: new Map(),
      kernels: new Map(),
      reseed: new Set(),
      cellTail: new Map(),
    };
    // A VM that dies under a sandbox takes the sandbox with it.
    void vm.exited.then((exit) => {
      if (exit.expected) return;
      const entry = [...this.entries.values()].find((e) => e.live === live);
      if (entry === undefined) return;
      this.options.log?.(`sandbox ${entry.record.id}: its VM ${vm.id} died; the sandbox is gone`);
      entry.busy = 'killing';
      void this.remove(entry);
    });
    return live;
  }

  private async detach(live: Live): Promise<void> {
    live.demux.stop();
    await this.options.pool.release(live.lease).catch((err: unknown) => {
      this.options.log?.(`sandbox VM ${live.lease.vm.id}: release failed: ${messageOf(err)}`);
    });
  }

  /** Saves a running sandbox to disk and frees its VM; it is paused after. */
  private async snapshot(entry: Entry): Promise<void> {
    const live = entry.live;
    if (live === null) throw new SandboxStateError(`sandbox ${entry.record.id} has no VM`);
    // Commands end with the VM (detached ones, the interpreters, live on in its memory).
    for (const handle of live.commands.values()) handle.kill('SIGKILL');
    await Promise.race([
      Promise.all([...live.commands.values()].map((h) => h.done)),
      new Promise((r) => setTimeout(r, 5000).unref()),
    ]);
    const folder = this.folder(entry.record.id);
    await mkdir(folder, { recursive: true, mode: 0o700 });
    const path = join(folder, 'vm.snap');
    const resources = live.resources;
    const vm = live.lease.vm;
    live.demux.stop(new SandboxStateError('the sandbox was paused'));
    let info;
    try {
      info = await vm.snapshot(path);
    } catch (err) {
      await this.detach(live);
      entry.live = null;
      entry.busy = 'killing';
      await this.remove(entry);
      throw new SnapshotFailedError(
        `sandbox ${entry.record.id} could not be paused, and is gone: ${messageOf(err)}`,
      );
    }
    await this.options.pool.release(live.lease).catch(() => undefined);
    entry.live = null;
    const now = new Date();
    entry.record.state = 'paused';
    entry.record.pausedAt = now.toISOString();
    entry.record.expiresAt = new Date(now.getTime() + this.options.pausedTtlMs).toISOString();
    entry.record.snapshot = {
      resources,
      sha256: await sha256File(path),
      sizeBytes: info.sizeBytes,
    };
    await this.save(entry.record);
    this.options.log?.(
      `sandbox ${entry.record.id} paused: ${(info.sizeBytes / 1048576).toFixed(0)} MiB in ${info.ms} ms`,
    );
  }

  /** A new VM from a paused sandbox's snapshot, checked against its recorded sha256 first. */
  private async restore(record: SandboxRecord): Promise<Live> {
    const snap = record.snapshot;
    if (snap === null) throw new SandboxStateError(`sandbox ${record.id} has no snapshot`);
    const path = join(this.folder(record.id), 'vm.snap');
    const sum = await sha256File(path).catch((err: unknown) => {
      throw new SnapshotFailedError(
        `the snapshot of sandbox ${record.id} cannot be read: ${messageOf(err)}`,
      );
    });
    if (sum !== snap.sha256)
      throw new SnapshotFailedError(
        `the snapshot of sandbox ${record.id} changed on disk since it was paused; it is not resumed`,
      );
    for (const file of [
      snap.resources.kernelPath,
      snap.resources.initrdPath,
      snap.resources.rootfsPath,
      ...(snap.resources.basePath === undefined ? [] : [snap.resources.basePath]),
    ]) {
      if ((await stat(file).catch(() => null)) === null)
        throw new SnapshotFailedError(
          `sandbox ${record.id} was paused on an image that is gone (${file}); it cannot be resumed`,
        );
    }
    const lease = await this.options.pool.acquireFrom(record.language, {
      path,
      resources: snap.resources,
    });
    const live = this.attach(lease, snap.resources);
    for (const language of CELL_LANGUAGES) {
      live.kernels.set(language, Promise.resolve());
      live.reseed.add(language);
    }
    return live;
  }

  private async remove(entry: Entry): Promise<void> {
    const live = entry.live;
    entry.live = null;
    if (live !== null) await this.detach(live);
    this.entries.delete(entry.record.id);
    await rm(this.folder(entry.record.id), { recursive: true, force: true });
    this.options.log?.(`sandbox ${entry.record.id} killed`);
  }

  private async sweep(): Promise<void> {
    const now = Date.now();
    for (const entry of [...this.entries.values()]) {
      if (entry.busy !== null || Date.parse(entry.record.expiresAt) > now) continue;
      this.options.log?.(
        `sandbox ${entry.record.id}: ${entry.record.state === 'running' ? 'its time-to-live ended' : 'paused past sandboxPausedTtlMs'}; deleted`,
      );
      entry.busy = 'killing';
      await this.remove(entry).catch(() => undefined);
    }
  }

  private entry(id: string, owner: string | null): Entry {
    const entry = this.entries.get(id);
    if (entry === undefined || entry.record.owner !== owner || entry.busy === 'killing')
      throw new SandboxNotFoundError(`no sandbox ${JSON.stringify(id.slice(0, 64))}`);
    return entry;
  }

  private running(entry: Entry): Live;
  private running(): number;
  private running(entry?: Entry): Live | number {
    if (entry === undefined)
      return [...this.entries.values()].filter((e) => e.record.state === 'running').length;
    if (entry.busy !== null && entry.busy !== 'killing')
      throw new SandboxStateError(`sandbox ${entry.record.id} is ${entry.busy}`);
    if (entry.record.state !== 'running' || entry.live === null)
      throw new SandboxStateError(`sandbox ${entry.record.id} is paused; resume it first`);
    return entry.live;
  }

  private idle(entry: Entry): void {
    if (entry.busy !== null)
      throw new SandboxStateError(`sandbox ${entry.record.id} is ${entry.busy}`);
  }

  private touch(entry: Entry): void {
    entry.record.expiresAt = new Date(Date.now() + entry.record.timeoutMs).toISOString();
  }

  private ownedBy(owner: string | null): number {
    let n = 0;
    for (const e of this.entries.values()) if (e.record.owner === owner) n++;
    return n;
  }

  /**
   * SANDBOX_LIMIT unless `count` more sandboxes may run on this host and, when `owner` is given
   * (new sandboxes, not a resume), that key may hold `count` more.
   */
  private checkCaps(count: number, owner?: string | null): void {
    if (owner !== undefined) {
      const owned = this.ownedBy(owner);
      if (owned + count > this.options.maxPerKey)
        throw new SandboxLimitError(
          `this key has ${owned} sandboxes and may have ${this.options.maxPerKey} (sandboxMaxPerKey); kill one first`,
        );
    }
    const running = this.running();
    if (running + count > this.maxRunning)
      throw new SandboxLimitError(
        `this host runs ${running} sandboxes and may run ${this.maxRunning} (sandboxMaxRunning); pause or kill one first`,
      );
  }

  private checkTimeout(ms: number): number {
    if (!Number.isInteger(ms) || ms < 1000 || ms > this.options.maxTimeoutMs)
      throw new LimitInvalidError(
        `a sandbox's timeout is 1000 to ${this.options.maxTimeoutMs} ms (sandboxMaxTimeoutMs)`,
      );
    return ms;
  }

  private folder(id: string): string {
    return join(this.options.dir, id);
  }

  private async save(record: SandboxRecord): Promise<void> {
    record.heldBy = process.pid;
    const folder = this.folder(record.id);
    await mkdir(folder, { recursive: true, mode: 0o700 });
    const tmp = join(folder, `sandbox.json.${process.pid}`);
    await writeFile(tmp, `${JSON.stringify(record, null, 2)}\n`, { mode: 0o600 });
    await rename(tmp, join(folder, 'sandbox.json'));
  }

  private info(entry: Entry): SandboxInfo {
    const r = entry.record;
    return {
      id: r.id,
      language: r.language,
      template: r.template,
      owner: r.owner,
      state: r.state,
      createdAt: r.createdAt,
      startedAt: r.startedAt,
      expiresAt: r.expiresAt,
      pausedAt: r.pausedAt,
      timeoutMs: r.timeoutMs,
      metadata: { ...r.metadata },
      envs: { ...r.envs },
      vmId: entry.live?.lease.vm.id ?? null,
      memoryMib: this.options.vmMemoryMib,
      vcpus: this.options.vcpus,
      forkedFrom: r.forkedFrom,
    };
  }
}

/** Thrown inside makeDir for a folder that is there already. */
class ExistsSignal extends Error {}

function commandResult(result: ResultMessage): CommandResult {
  const run = result.run;
  return {
    exitCode: run?.exitCode ?? null,
    signal: run?.signal ?? null,
    status: result.status,
    message: run?.message ?? null,
    wallTimeMs: run?.wallTimeMs ?? 0,
  };
}

function failure(result: ResultMessage): string {
  const run = result.run;
  const err = Buffer.from(run?.stderr ?? '', 'base64')
    .toString('utf8')
    .trim()
    .slice(0, 500);
  return `${result.status}${run?.exitCode != null ? ` (exit ${run.exitCode})` : ''}${run?.message ? `: ${run.message}` : ''}${err ? `: ${err}` : ''}`;
}

async function sha256File(path: string): Promise<string> {
  const hash = createHash('sha256');
  for await (const chunk of createReadStream(path)) hash.update(chunk as Buffer);
  return hash.digest('hex');
}

/**
 * A file's bytes as a stream, READ_CHUNK_BYTES per agent call; the next chunk's bytes wait
 * until the consumer took the last (each chunk's output is held by the agent's window).
 */
async function* streamChunks(
  size: number,
  read: (offset: number, count: number, sink: OutputListener) => Promise<ResultMessage>,
  path: string,
): AsyncGenerator<Buffer> {
  for (let offset = 0; offset < size || (offset === 0 && size === 0); offset += READ_CHUNK_BYTES) {
    if (size === 0) return;
    const count = Math.min(READ_CHUNK_BYTES, size - offset);
    const queue: Buffer[] = [];
    let wake: (() => void) | null = null;
    let ended = false;
    let pull: (() => void) | null = null;
    const done = read(offset, count, async (stream, data) => {
      if (stream !== 'stdout') return;
      queue.push(data);
      wake?.();
      // Back-pressure: the next output waits until this one is taken.
      if (queue.length > 4) await new Promise<void>((r) => (pull = r));
    }).then((result) => {
      ended = true;
      wake?.();
      return result;
    });
    for (;;) {
      const chunk = queue.shift();
      if (chunk !== undefined) {
        const p = pull as (() => void) | null;
        pull = null;
        p?.();
        yield chunk;
        continue;
      }
      if (ended) break;
      await new Promise<void>((r) => (wake = r));
      wake = null;
    }
    const result = await done;
    if (result.status !== 'ok')
      throw new SandboxFailureError(`cannot read ${path}: ${failure(result)}`);
  }
}
