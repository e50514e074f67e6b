import { randomBytes } from 'node:crypto';
import { posix } from 'node:path';
import {
  FileNameInvalidError,
  FileNotFoundError,
  LanguageUnknownError,
  LimitInvalidError,
  SandboxLimitError,
  SandboxNotFoundError,
  SandboxStateError,
} from '../../src/errors.js';
import { SANDBOX_DIR, checkFileName } from '../../src/protocol/index.js';
import type {
  CellEvent,
  CellLanguage,
  CellOutcome,
  CellRequest,
  CellResult,
  CommandHandle,
  CommandRequest,
  CommandResult,
  CreateSandboxRequest,
  FileEntry,
  OutputListener,
  SandboxInfo,
  SandboxService,
} from '../../src/sandbox/index.js';

/**
 * An in-memory SandboxService for the wire tests of the native routes and the CLI: no VM, but
 * the interface's rules (owners checked, running and paused, paths under SANDBOX_DIR). Files
 * live in a Map; commands and cells run through the tiny interpreters below, which are only
 * what the tests need to see output, exit codes, errors and kept state cross the wire.
 *
 * Commands: statements split on `;`, each one of
 *   `echo WORDS` (stdout; `echo WORDS >&2` to stderr), `printf-hex HEX` (those bytes to
 *   stdout), `cat PATH`, `env NAME`, `pwd`, `sleep SECONDS` (ended by the timeout or a kill),
 *   `exit N`; anything else is `sh: X: not found` and exit 127.
 * Cells: lines, each one of `print(TEXT)`, `NAME = VALUE`, `raise NAME(VALUE)`; a last line of
 *   anything else is the main result: a NAME's value, else the line itself as text.
 */
export class FakeSandboxes implements SandboxService {
  private readonly boxes = new Map<string, Box>();
  private nextPid = 1;
  /** Every call, by method name, for tests that check what reached the engine. */
  readonly calls: { method: string; args: unknown[] }[] = [];

  constructor(
    private readonly options: {
      languages?: readonly string[];
      maxPerOwner?: number;
      defaultTimeoutMs?: number;
      maxTimeoutMs?: number;
    } = {},
  ) {}

  create(request: CreateSandboxRequest): Promise<SandboxInfo> {
    this.calls.push({ method: 'create', args: [request] });
    const languages = this.options.languages ?? ['python', 'javascript', 'bash'];
    if (!languages.includes(request.language))
      return Promise.reject(new LanguageUnknownError(`no language ${request.language}`));
    const timeoutMs = this.checkTimeout(request.timeoutMs);
    const mine = [...this.boxes.values()].filter((b) => b.info.owner === request.owner);
    if (mine.length >= (this.options.maxPerOwner ?? 10))
      return Promise.reject(new SandboxLimitError('this key has its most sandboxes'));
    const now = new Date();
    const id = newId();
    const box: Box = {
      info: {
        id,
        language: request.language,
        template: request.template ?? request.language,
        owner: request.owner,
        state: 'running',
        createdAt: now.toISOString(),
        startedAt: now.toISOString(),
        expiresAt: new Date(now.getTime() + timeoutMs).toISOString(),
        pausedAt: null,
        timeoutMs,
        metadata: { ...request.metadata },
        envs: { ...request.envs },
        vmId: `vm-${id.slice(0, 6)}`,
        memoryMib: 512,
        vcpus: 1,
        forkedFrom: null,
      },
      files: new Map([['', dirNode()]]),
      cells: new Map(),
      running: new Set(),
    };
    this.boxes.set(id, box);
    return Promise.resolve({ ...box.info });
  }

  get(id: string, owner: string | null): SandboxInfo {
    return { ...this.box(id, owner).info };
  }

  list(owner: string | null): SandboxInfo[] {
    return [...this.boxes.values()]
      .filter((b) => b.info.owner === owner)
      .map((b) => ({ ...b.info }));
  }

  setTimeout(id: string, owner: string | null, timeoutMs: number): SandboxInfo {
    const box = this.box(id, owner);
    const t = this.checkTimeout(timeoutMs);
    box.info = {
      ...box.info,
      timeoutMs: t,
      expiresAt: new Date(Date.now() + t).toISOString(),
    };
    return { ...box.info };
  }

  pause(id: string, owner: string | null): Promise<SandboxInfo> {
    const box = this.running(id, owner);
    for (const h of box.running) h.kill();
    box.info = { ...box.info, state: 'paused', pausedAt: new Date().toISOString(), vmId: null };
    return Promise.resolve({ ...box.info });
  }

  resume(
    id: string,
    owner: string | null,
    options: { timeoutMs?: number } = {},
  ): Promise<SandboxInfo> {
    const box = this.box(id, owner);
    const timeoutMs = this.checkTimeout(options.timeoutMs ?? box.info.timeoutMs);
    box.info = {
      ...box.info,
      state: 'running',
      pausedAt: null,
      vmId: box.info.vmId ?? `vm-${newId().slice(0, 6)}`,
      timeoutMs,
      expiresAt: new Date(Date.now() + timeoutMs).toISOString(),
    };
    return Promise.resolve({ ...box.info });
  }

  async fork(id: string, owner: string | null, count: number): Promise<SandboxInfo[]> {
    const source = this.running(id, owner);
    const out: SandboxInfo[] = [];
    for (let i = 0; i < count; i++) {
      const copy = await this.create({
        language: source.info.language,
        template: source.info.template,
        owner,
        timeoutMs: source.info.timeoutMs,
        metadata: source.info.metadata,
        envs: source.info.envs,
      });
      const box = this.boxes.get(copy.id);
      if (box === undefined) throw new Error('the copy vanished');
      box.info = { ...box.info, forkedFrom: id };
      for (const [k, v] of source.files) box.files.set(k, { ...v });
      for (const [k, v] of source.cells)
        box.cells.set(k, { count: v.count, vars: new Map(v.vars) });
      out.push({ ...box.info });
    }
    return out;
  }

  kill(id: string, owner: string | null): Promise<void> {
    const box = this.box(id, owner);
    for (const h of box.running) h.kill();
    this.boxes.delete(id);
    return Promise.resolve();
  }

  command(
    id: string,
    owner: string | null,
    request: CommandRequest,
    onOutput?: OutputListener,
  ): Promise<CommandHandle> {
    this.calls.push({ method: 'command', args: [id, owner, request] });
    const box = this.running(id, owner);
    const cwd = request.cwd === undefined ? SANDBOX_DIR : this.absolute(request.cwd);
    const envs = { ...box.info.envs, ...request.envs };
    const started = Date.now();
    let killed: string | null = null;
    let wake: (() => void) | null = null;
    const listeners = new Set<OutputListener>(onOutput === undefined ? [] : [onOutput]);
    const emit = async (stream: 'stdout' | 'stderr', data: Buffer): Promise<void> => {
      for (const l of listeners) await l(stream, data);
    };
    const timeoutMs = request.timeoutMs ?? 60_000;
    const end = (r: Omit<CommandResult, 'wallTimeMs'>): CommandResult => ({
      ...r,
      wallTimeMs: Date.now() - started,
    });
    const run = async (): Promise<CommandResult> => {
      // Output starts only once command() resolved, as with a VM.
      await Promise.resolve();
      for (const statement of request.cmd.split(';').map((s) => s.trim())) {
        if (statement === '') continue;
        const [word = '', ...rest] = statement.split(/\s+/);
        const arg = rest.join(' ');
        if (word === 'echo') {
          const toErr = arg.endsWith('>&2');
          const text = (toErr ? arg.slice(0, -3).trimEnd() : arg).replace(/^'(.*)'$/, '$1');
          await emit(toErr ? 'stderr' : 'stdout', Buffer.from(`${text}\n`));
        } else if (word === 'printf-hex') {
          await emit('stdout', Buffer.from(arg, 'hex'));
        } else if (word === 'cat') {
          const node = box.files.get(this.key(posix.resolve(cwd, arg)));
          if (node?.type !== 'file') {
            await emit('stderr', Buffer.from(`cat: ${arg}: No such file or directory\n`));
            return end({ exitCode: 1, signal: null, status: 'runtime_error', message: null });
          }
          await emit('stdout', node.data);
        } else if (word === 'env') {
          await emit('stdout', Buffer.from(`${envs[arg] ?? ''}\n`));
        } else if (word === 'pwd') {
          await emit('stdout', Buffer.from(`${cwd}\n`));
        } else if (word === 'sleep') {
          const ms = Number(arg) * 1000;
          const limit = timeoutMs === 0 ? Infinity : timeoutMs - (Date.now() - started);
          await new Promise<void>((resolve) => {
            const timer = setTimeout(resolve, Math.max(0, Math.min(ms, limit)));
            wake = () => {
              clearTimeout(timer);
              resolve();
            };
          });
          if (killed !== null)
            return end({ exitCode: null, signal: killed, status: 'runtime_error', message: null });
          if (ms > limit)
            return end({
              exitCode: null,
              signal: 'SIGKILL',
              status: 'timeout',
              message: `the command ran past its ${timeoutMs} ms`,
            });
        } else if (word === 'exit') {
          const code = Number(arg);
          return end({
            exitCode: code,
            signal: null,
            status: code === 0 ? 'ok' : 'runtime_error',
            message: null,
          });
        } else {
          await emit('stderr', Buffer.from(`sh: ${word}: not found\n`));
          return end({ exitCode: 127, signal: null, status: 'runtime_error', message: null });
        }
        if (killed !== null)
          return end({ exitCode: null, signal: killed, status: 'runtime_error', message: null });
      }
      return end({ exitCode: 0, signal: null, status: 'ok', message: null });
    };
    const done = run();
    const handle: CommandHandle = {
      pid: this.nextPid++,
      cmd: request.cmd,
      done,
      stdin: () => Promise.resolve(),
      stdinEnd: () => undefined,
      kill: (signal = 'SIGKILL') => {
        killed ??= signal;
        wake?.();
      },
      listen: (l) => {
        listeners.add(l);
        return () => listeners.delete(l);
      },
    };
    box.running.add(handle);
    void done.finally(() => box.running.delete(handle));
    return Promise.resolve(handle);
  }

  commands(id: string, owner: string | null): CommandHandle[] {
    return [...this.box(id, owner).running];
  }

  async runCell(
    id: string,
    owner: string | null,
    request: CellRequest,
    onEvent?: (event: CellEvent) => Promise<void> | void,
  ): Promise<CellOutcome> {
    this.calls.push({ method: 'runCell', args: [id, owner, request] });
    const box = this.running(id, owner);
    const language =
      request.language ?? (box.info.language === 'javascript' ? 'javascript' : 'python');
    const kernel = box.cells.get(language) ?? { count: 0, vars: new Map<string, string>() };
    box.cells.set(language, kernel);
    kernel.count++;
    const outcome = {
      executionCount: kernel.count,
      results: [] as CellResult[],
      stdout: [] as string[],
      stderr: [] as string[],
      error: null as CellOutcome['error'],
    };
    const lines = request.code.split('\n').filter((l) => l.trim() !== '');
    for (const [i, raw] of lines.entries()) {
      const line = raw.trim();
      const print = /^print\((.*)\)$/.exec(line);
      const assign = /^([A-Za-z_]\w*)\s*=\s*(.*)$/.exec(line);
      const raise = /^raise (\w+)\((.*)\)$/.exec(line);
      if (print) {
        const text = `${unquote(print[1] ?? '')}\n`;
        outcome.stdout.push(text);
        await onEvent?.({ type: 'stdout', text });
      } else if (raise) {
        const name = raise[1] ?? 'Exception';
        const value = unquote(raise[2] ?? '');
        const error = { name, value, traceback: `Traceback (line ${i + 1}):\n${name}: ${value}` };
        outcome.error = error;
        await onEvent?.({ type: 'error', error });
        break;
      } else if (assign) {
        kernel.vars.set(assign[1] ?? '', unquote(assign[2] ?? ''));
      } else if (i === lines.length - 1) {
        const result = { isMainResult: true, text: kernel.vars.get(line) ?? line };
        outcome.results.push(result);
        await onEvent?.({ type: 'result', result });
      }
    }
    return outcome;
  }

  restartInterpreter(id: string, owner: string | null, language: CellLanguage): Promise<boolean> {
    const box = this.running(id, owner);
    return Promise.resolve(box.cells.delete(language));
  }

  async writeFile(
    id: string,
    owner: string | null,
    path: string,
    content: Buffer | AsyncIterable<Buffer>,
  ): Promise<FileEntry> {
    const box = this.running(id, owner);
    const key = this.key(this.absolute(path));
    const chunks: Buffer[] = [];
    if (Buffer.isBuffer(content)) chunks.push(content);
    else for await (const c of content) chunks.push(c);
    if (box.files.get(key)?.type === 'dir') throw new FileNameInvalidError(`${path} is a folder`);
    this.makeParents(box, key);
    box.files.set(key, { type: 'file', data: Buffer.concat(chunks), modifiedAt: now() });
    return this.entry(box, key);
  }

  readFile(id: string, owner: string | null, path: string): Promise<AsyncIterable<Buffer>> {
    const box = this.running(id, owner);
    const node = box.files.get(this.key(this.absolute(path)));
    if (node?.type !== 'file') return Promise.reject(new FileNotFoundError(`no file ${path}`));
    const data = node.data;
    // In chunks, as a stream from the guest comes.
    return Promise.resolve(
      (async function* () {
        for (let at = 0; at < data.length; at += 64 * 1024) {
          await Promise.resolve();
          yield Buffer.from(data.subarray(at, at + 64 * 1024));
        }
      })(),
    );
  }

  listFiles(id: string, owner: string | null, path: string, depth = 1): Promise<FileEntry[]> {
    const box = this.running(id, owner);
    const dir = this.key(this.absolute(path));
    if (box.files.get(dir)?.type !== 'dir')
      return Promise.reject(new FileNotFoundError(`no folder ${path}`));
    const entries = [...box.files.keys()]
      .filter((k) => {
        if (k === dir || (dir !== '' && !k.startsWith(`${dir}/`))) return false;
        const below = dir === '' ? k : k.slice(dir.length + 1);
        return below.split('/').length <= depth;
      })
      .sort()
      .map((k) => this.entry(box, k));
    return Promise.resolve(entries);
  }

  statFile(id: string, owner: string | null, path: string): Promise<FileEntry> {
    const box = this.running(id, owner);
    const key = this.key(this.absolute(path));
    if (!box.files.has(key)) return Promise.reject(new FileNotFoundError(`no file ${path}`));
    return Promise.resolve(this.entry(box, key));
  }

  removeFile(id: string, owner: string | null, path: string): Promise<void> {
    const box = this.running(id, owner);
    const key = this.key(this.absolute(path));
    if (key === '') return Promise.reject(new FileNameInvalidError('the sandbox folder stays'));
    if (!box.files.has(key)) return Promise.reject(new FileNotFoundError(`no file ${path}`));
    for (const k of [...box.files.keys()])
      if (k === key || k.startsWith(`${key}/`)) box.files.delete(k);
    return Promise.resolve();
  }

  makeDir(id: string, owner: string | null, path: string): Promise<boolean> {
    const box = this.running(id, owner);
    const key = this.key(this.absolute(path));
    const there = box.files.get(key);
    if (there?.type === 'file')
      return Promise.reject(new FileNameInvalidError(`${path} is a file`));
    if (there !== undefined) return Promise.resolve(false);
    this.makeParents(box, key);
    box.files.set(key, dirNode());
    return Promise.resolve(true);
  }

  moveFile(id: string, owner: string | null, from: string, to: string): Promise<FileEntry> {
    const box = this.running(id, owner);
    const src = this.key(this.absolute(from));
    const dst = this.key(this.absolute(to));
    if (src === '' || !box.files.has(src))
      return Promise.reject(new FileNotFoundError(`no file ${from}`));
    this.makeParents(box, dst);
    for (const k of [...box.files.keys()].filter((k) => k === src || k.startsWith(`${src}/`))) {
      const node = box.files.get(k);
      if (node === undefined) continue;
      box.files.delete(k);
      box.files.set(dst + k.slice(src.length), node);
    }
    return Promise.resolve(this.entry(box, dst));
  }

  // ---- the rules ----

  /** The box, checked against its owner: another key's is as missing as a missing one. */
  private box(id: string, owner: string | null): Box {
    const box = this.boxes.get(id);
    if (box?.info.owner !== owner) throw new SandboxNotFoundError(`no sandbox ${id}`);
    return box;
  }

  /** The box, which must be running (a call on a paused one is SANDBOX_STATE). */
  private running(id: string, owner: string | null): Box {
    const box = this.box(id, owner);
    if (box.info.state !== 'running')
      throw new SandboxStateError(`sandbox ${id} is ${box.info.state}; resume it first`);
    return box;
  }

  private checkTimeout(ms: number | undefined): number {
    const t = ms ?? this.options.defaultTimeoutMs ?? 300_000;
    const max = this.options.maxTimeoutMs ?? 86_400_000;
    if (t > max) throw new LimitInvalidError(`timeoutMs ${t} is over the most, ${max}`);
    return t;
  }

  /** An absolute guest path under SANDBOX_DIR, checked by the file-name rules of jobs. */
  private absolute(path: string): string {
    const rel =
      path === SANDBOX_DIR
        ? ''
        : path.startsWith(`${SANDBOX_DIR}/`)
          ? path.slice(SANDBOX_DIR.length + 1)
          : path.startsWith('/')
            ? null
            : path;
    if (rel === null) throw new FileNameInvalidError(`${path} is not under ${SANDBOX_DIR}`);
    if (rel !== '') checkFileName(rel, 'path');
    return rel === '' ? SANDBOX_DIR : `${SANDBOX_DIR}/${rel}`;
  }

  /** The Map key of an absolute path: the part under SANDBOX_DIR ('' for the folder itself). */
  private key(abs: string): string {
    return abs === SANDBOX_DIR ? '' : abs.slice(SANDBOX_DIR.length + 1);
  }

  private makeParents(box: Box, key: string): void {
    const parts = key.split('/');
    for (let i = 1; i < parts.length; i++) {
      const k = parts.slice(0, i).join('/');
      const node = box.files.get(k);
      if (node?.type === 'file') throw new FileNameInvalidError(`${k} is a file`);
      if (node === undefined) box.files.set(k, dirNode());
    }
  }

  private entry(box: Box, key: string): FileEntry {
    const node = box.files.get(key);
    if (node === undefined) throw new FileNotFoundError(`no file ${key}`);
    const path = key === '' ? SANDBOX_DIR : `${SANDBOX_DIR}/${key}`;
    return {
      name: posix.basename(path),
      path,
      type: node.type,
      size: node.type === 'file' ? node.data.length : 4096,
      mode: node.type === 'file' ? 0o644 : 0o755,
      modifiedAt: node.modifiedAt,
    };
  }
}

type Node =
  | { readonly type: 'file'; readonly data: Buffer; readonly modifiedAt: string }
  | { readonly type: 'dir'; readonly modifiedAt: string };

interface Box {
  info: SandboxInfo;
  /** By path under SANDBOX_DIR ('' is the folder itself). */
  readonly files: Map<string, Node>;
  /** One interpreter per cell language: its count and its variables. */
  readonly cells: Map<string, { count: number; vars: Map<string, string> }>;
  readonly running: Set<CommandHandle>;
}

const now = (): string => new Date().toISOString();
const dirNode = (): Node => ({ type: 'dir', modifiedAt: now() });
const unquote = (s: string): string => s.trim().replace(/^(['"])(.*)\1$/, '$2');

/** 20 lower-case letters and digits, as the engine's ids. */
function newId(): string {
  const alphabet = 'abcdefghijklmnopqrstuvwxyz0123456789';
  return [...randomBytes(20)].map((b) => alphabet[b % alphabet.length]).join('');
}
