import type { LiveSignal, Status } from '../protocol/index.js';

/**
 * Sandboxes: a VM kept across calls (docs/sandboxes.md). The service below is the one engine;
 * the native `/v1/sandboxes` routes, the E2B adapter and the CLI are translations onto it.
 */

/** Where a sandbox is in its life: a VM runs it, or it is saved on disk with no VM. */
export type SandboxState = 'running' | 'paused';

/** What the service tells about a sandbox (every API shapes its answer from this). */
export interface SandboxInfo {
  /** 20 lower-case letters and digits. */
  readonly id: string;
  readonly language: string;
  /** What the client asked for: a language name, or an E2B template id mapped to a language. */
  readonly template: string;
  /** The fingerprint of the API key that made it (null without keys). */
  readonly owner: string | null;
  readonly state: SandboxState;
  /** ISO times. `expiresAt`: a running sandbox is killed then, a paused one deleted. */
  readonly createdAt: string;
  readonly startedAt: string;
  readonly expiresAt: string;
  readonly pausedAt: string | null;
  /** How long each call extends a running sandbox's life by (its time-to-live), in ms. */
  readonly timeoutMs: number;
  readonly metadata: Readonly<Record<string, string>>;
  /** Environment variables every command and cell of the sandbox gets. */
  readonly envs: Readonly<Record<string, string>>;
  /** The VM serving it now (null while paused). */
  readonly vmId: string | null;
  readonly memoryMib: number;
  readonly vcpus: number;
  /** The sandbox it was forked from, if any. */
  readonly forkedFrom: string | null;
}

export interface CreateSandboxRequest {
  /** A language name or alias (after any template mapping). */
  readonly language: string;
  /** Recorded as given (default: the language's name). */
  readonly template?: string;
  readonly owner: string | null;
  /** Time-to-live in ms (default: the setting sandboxTimeoutMs; at most sandboxMaxTimeoutMs). */
  readonly timeoutMs?: number;
  readonly metadata?: Readonly<Record<string, string>>;
  readonly envs?: Readonly<Record<string, string>>;
}

/** A shell command in a sandbox (run by `/bin/sh -c` as the sandbox user). */
export interface CommandRequest {
  readonly cmd: string;
  /** A folder under the sandbox folder (absolute under it, or relative); default: the folder. */
  readonly cwd?: string;
  readonly envs?: Readonly<Record<string, string>>;
  /** Wall-clock limit in ms (default: the setting sandboxCommandTimeoutMs; 0 = the most). */
  readonly timeoutMs?: number;
  /** Keep stdin open for `CommandHandle.stdin` (default: the command reads end of file). */
  readonly stdin?: boolean;
}

/** How a command ended. */
export interface CommandResult {
  /** null when a signal ended it, or it never ran (status sandbox_error). */
  readonly exitCode: number | null;
  readonly signal: string | null;
  /** As for jobs: ok, runtime_error (exit code not 0), timeout, memory_limit, output_limit… */
  readonly status: Status;
  /** Why it ended, in words, when it did not end by itself. */
  readonly message: string | null;
  readonly wallTimeMs: number;
}

/** A running command. Output reaches the `onOutput` given to `command()`, in order. */
export interface CommandHandle {
  /** A process number unique within the sandbox (not the guest's pid). */
  readonly pid: number;
  readonly cmd: string;
  /** Resolves when the command ends (never rejects: a failure is a sandbox_error result). */
  readonly done: Promise<CommandResult>;
  /** Sends stdin (only with `stdin: true`); resolves once the agent has room for more. */
  stdin(data: Buffer): Promise<void>;
  stdinEnd(): void;
  /** Sends a signal to the command's processes (default SIGKILL). */
  kill(signal?: LiveSignal): void;
  /** Adds a listener of the output from now on (the E2B `connect` to a running process). */
  listen(onOutput: OutputListener): () => void;
}

export type OutputListener = (stream: 'stdout' | 'stderr', data: Buffer) => Promise<void> | void;

/** The languages code cells run in (one interpreter of each kept alive per sandbox). */
export const CELL_LANGUAGES = ['python', 'javascript'] as const;
export type CellLanguage = (typeof CELL_LANGUAGES)[number];

export interface CellRequest {
  readonly code: string;
  /** Default: the sandbox's language when it is a cell language, else python. */
  readonly language?: CellLanguage;
  readonly envs?: Readonly<Record<string, string>>;
  /** Wall-clock limit in ms (default: the setting sandboxCommandTimeoutMs). */
  readonly timeoutMs?: number;
}

/**
 * A rich result of a cell, as a notebook shows it: the value of its last expression
 * (`isMainResult`), or a figure shown during it. Every format is optional; `png`/`jpeg` are base64.
 */
export interface CellResult {
  readonly isMainResult: boolean;
  readonly text?: string;
  readonly html?: string;
  readonly markdown?: string;
  readonly svg?: string;
  readonly png?: string;
  readonly jpeg?: string;
  readonly latex?: string;
  readonly json?: unknown;
  readonly javascript?: string;
}

export interface CellError {
  readonly name: string;
  readonly value: string;
  readonly traceback: string;
}

export type CellEvent =
  | { readonly type: 'stdout' | 'stderr'; readonly text: string }
  | { readonly type: 'result'; readonly result: CellResult }
  | { readonly type: 'error'; readonly error: CellError };

/** The whole of one cell, once it ended. */
export interface CellOutcome {
  /** The interpreter's count of cells run so far (this one included). */
  readonly executionCount: number;
  readonly results: CellResult[];
  readonly stdout: string[];
  readonly stderr: string[];
  readonly error: CellError | null;
}

export type FileType = 'file' | 'dir' | 'symlink' | 'other';

/** A file or folder of a sandbox; `path` is absolute in the guest (under SANDBOX_DIR). */
export interface FileEntry {
  readonly name: string;
  readonly path: string;
  readonly type: FileType;
  readonly size: number;
  /** Permission bits, e.g. 0o644. */
  readonly mode: number;
  /** ISO time. */
  readonly modifiedAt: string;
  /** Where a link points, for a symlink. */
  readonly target?: string;
}

/**
 * The sandbox engine of one host. Every method that names a sandbox checks its owner: another
 * key's sandbox is SANDBOX_NOT_FOUND, as a missing one is. A call on a running sandbox extends
 * its life by its time-to-live. Paths are absolute under SANDBOX_DIR, or relative to it (the
 * file-name rules of jobs: no `..`, no NUL, at most 4096 bytes); others are FILE_NAME_INVALID.
 */
export interface SandboxService {
  create(request: CreateSandboxRequest): Promise<SandboxInfo>;
  get(id: string, owner: string | null): SandboxInfo;
  list(owner: string | null): SandboxInfo[];
  /** Sets the time left to `timeoutMs` from now (and the TTL later calls extend by). */
  setTimeout(id: string, owner: string | null, timeoutMs: number): SandboxInfo;
  /** Saves the running sandbox (memory and files) to disk and frees its VM. */
  pause(id: string, owner: string | null): Promise<SandboxInfo>;
  /** Brings a paused sandbox back (a running one is only extended). */
  resume(id: string, owner: string | null, options?: { timeoutMs?: number }): Promise<SandboxInfo>;
  /** New running sandboxes, each a copy of this one (paused first if it runs). */
  fork(id: string, owner: string | null, count: number): Promise<SandboxInfo[]>;
  /** Gone: its VM destroyed, its files and snapshot deleted. */
  kill(id: string, owner: string | null): Promise<void>;

  /** Starts a command; resolves once it is sent to the VM. */
  command(
    id: string,
    owner: string | null,
    request: CommandRequest,
    onOutput?: OutputListener,
  ): Promise<CommandHandle>;
  /** The commands running in a sandbox now. */
  commands(id: string, owner: string | null): CommandHandle[];
  /** Runs one code cell in the sandbox's interpreter of that language (started on first use). */
  runCell(
    id: string,
    owner: string | null,
    request: CellRequest,
    onEvent?: (event: CellEvent) => Promise<void> | void,
  ): Promise<CellOutcome>;

  /**
   * Ends a language's interpreter in the sandbox, so that the next cell starts a fresh one (every
   * variable gone). Resolves whether one was running.
   */
  restartInterpreter(id: string, owner: string | null, language: CellLanguage): Promise<boolean>;

  /** Writes a file whole (folders made as needed); streams `content`. */
  writeFile(
    id: string,
    owner: string | null,
    path: string,
    content: Buffer | AsyncIterable<Buffer>,
  ): Promise<FileEntry>;
  /** A file's bytes as a stream; FILE_NOT_FOUND when it is missing or a folder. */
  readFile(id: string, owner: string | null, path: string): Promise<AsyncIterable<Buffer>>;
  /** A folder's entries (depth 1 by default); FILE_NOT_FOUND when it is missing. */
  listFiles(id: string, owner: string | null, path: string, depth?: number): Promise<FileEntry[]>;
  /** One entry; FILE_NOT_FOUND when it is missing. */
  statFile(id: string, owner: string | null, path: string): Promise<FileEntry>;
  /** Removes a file or a folder with everything in it; FILE_NOT_FOUND when it is missing. */
  removeFile(id: string, owner: string | null, path: string): Promise<void>;
  /** Makes a folder and its parents; false when it was there already. */
  makeDir(id: string, owner: string | null, path: string): Promise<boolean>;
  /** Renames (moves) a file or folder; returns the entry at its new path. */
  moveFile(id: string, owner: string | null, from: string, to: string): Promise<FileEntry>;
}
