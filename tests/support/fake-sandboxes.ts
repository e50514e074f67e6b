import { randomBytes } from 'node:crypto';
import { posix } from 'node:path';
import {
  FileNotFoundError,
  LimitInvalidError,
  SandboxLimitError,
  SandboxNotFoundError,
  SandboxStateError,
} from '../../src/errors.js';
import type { LanguageRegistry } from '../../src/languages/index.js';
import type { LiveSignal } from '../../src/protocol/index.js';
import {
  type CellEvent,
  type CellOutcome,
  type CellLanguage,
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
} from '../../src/sandbox/index.js';

/**
 * A FAKE of the sandbox engine (SandboxService), in memory, for the wire tests of the API
 * adapters (E2B's): no VM, no guest. Files are a map of paths; a command is one of a few
 * scripted shell lines (see `script`), its argv read back from the adapter's quoting; a cell
 * is a few scripted Python-like lines (see `cell`). The real engine's tests are elsewhere.
 */

const HOME = '/home/user';

/** `fn`'s value, or its throw, as a promise (the service's methods reject, never throw). */
function attempt<T>(fn: () => T): Promise<T> {
  try {
    return Promise.resolve(fn());
  } catch (err) {
    return Promise.reject(err instanceof Error ? err : new Error(String(err)));
  }
}

/** Chunks as a stream (two of them for a read, so that more than one chunk is exercised). */
function asyncOf(chunks: Buffer[]): AsyncIterable<Buffer> {
  return {
    [Symbol.asyncIterator]: () => {
      const it = chunks.values();
      return { next: () => Promise.resolve(it.next()) };
    },
  };
}
const ROOT = '/';

interface Node {
  type: 'file' | 'dir';
  data: Buffer;
  mtime: string;
}

interface Box {
  info: SandboxInfo;
  files: Map<string, Node>;
  running: Map<number, FakeCommand>;
  counts: Map<string, number>;
  nextPid: number;
}

/** Splits a command line the way /bin/sh would, for lines of single-quoted words only. */
export function unquote(line: string): string[] {
  const words: string[] = [];
  let i = 0;
  while (i < line.length) {
    while (line[i] === ' ') i++;
    if (i >= line.length) break;
    let word = '';
    while (i < line.length && line[i] !== ' ') {
      if (line[i] === "'") {
        const end = line.indexOf("'", i + 1);
        if (end < 0) throw new Error(`unterminated quote in ${line}`);
        word += line.slice(i + 1, end);
        i = end + 1;
      } else if (line[i] === '\\') {
        word += line[i + 1] ?? '';
        i += 2;
      } else {
        throw new Error(`the fake takes only quoted words, not ${JSON.stringify(line)}`);
      }
    }
    words.push(word);
  }
  return words;
}

class FakeCommand implements CommandHandle {
  readonly done: Promise<CommandResult>;
  private finish!: (r: CommandResult) => void;
  private readonly listeners = new Set<OutputListener>();
  private stdinBuf: Buffer[] = [];
  private stdinOpen: boolean;
  private wake: (() => void) | null = null;
  private killed: LiveSignal | null = null;
  private readonly started = Date.now();

  constructor(
    readonly pid: number,
    readonly cmd: string,
    readonly request: CommandRequest,
  ) {
    this.stdinOpen = request.stdin === true;
    this.done = new Promise((r) => (this.finish = r));
  }

  on(listener: OutputListener): void {
    this.listeners.add(listener);
  }

  async emit(stream: 'stdout' | 'stderr', text: string): Promise<void> {
    for (const l of this.listeners) await l(stream, Buffer.from(text));
  }

  end(exitCode: number | null, message: string | null = null): void {
    const signal = this.killed;
    this.finish({
      exitCode: signal !== null ? null : exitCode,
      signal,
      status: signal !== null ? 'runtime_error' : exitCode === 0 ? 'ok' : 'runtime_error',
      message,
      wallTimeMs: Date.now() - this.started,
    });
  }

  /** Waits for a kill (resolves true) or for stdin data/end (false). */
  async wait(ms: number): Promise<boolean> {
    await new Promise<void>((r) => {
      const t = setTimeout(r, ms);
      this.wake = () => {
        clearTimeout(t);
        r();
      };
    });
    this.wake = null;
    return this.killed !== null;
  }

  takeStdin(): { data: Buffer[]; open: boolean } {
    const data = this.stdinBuf;
    this.stdinBuf = [];
    return { data, open: this.stdinOpen };
  }

  stdin(data: Buffer): Promise<void> {
    if (!this.stdinOpen) return Promise.reject(new SandboxStateError('stdin is closed'));
    this.stdinBuf.push(data);
    this.wake?.();
    return Promise.resolve();
  }

  stdinEnd(): void {
    this.stdinOpen = false;
    this.wake?.();
  }

  kill(signal: LiveSignal = 'SIGKILL'): void {
    this.killed = signal;
    this.wake?.();
  }

  listen(onOutput: OutputListener): () => void {
    this.listeners.add(onOutput);
    return () => this.listeners.delete(onOutput);
  }
}

/** The fake engine; `commands` and `cells` record what the adapter asked. */
export class FakeSandboxes implements SandboxService {
  readonly boxes = new Map<string, Box>();
  readonly commandRequests: CommandRequest[] = [];
  readonly cellRequests: CellRequest[] = [];
  maxPerKey = 10;
  maxTimeoutMs = 86_400_000;

  constructor(private readonly languages: LanguageRegistry) {}

  private box(id: string, owner: string | null): Box {
    const b = this.boxes.get(id);
    if (b === undefined || b.info.owner !== owner)
      throw new SandboxNotFoundError(`sandbox ${id} not found`);
    return b;
  }

  private running(id: string, owner: string | null): Box {
    const b = this.box(id, owner);
    if (b.info.state !== 'running') throw new SandboxStateError(`sandbox ${id} is paused`);
    this.touch(b);
    return b;
  }

  private touch(b: Box, timeoutMs = b.info.timeoutMs): void {
    b.info = {
      ...b.info,
      timeoutMs,
      expiresAt: new Date(Date.now() + timeoutMs).toISOString(),
    };
  }

  private make(request: CreateSandboxRequest, forkedFrom: string | null): Box {
    const language = this.languages.get(request.language).definition.name;
    const timeoutMs = request.timeoutMs ?? 300_000;
    if (timeoutMs > this.maxTimeoutMs || timeoutMs < 1000)
      throw new LimitInvalidError(`timeout ${timeoutMs} ms is out of range`);
    const mine = [...this.boxes.values()].filter((b) => b.info.owner === request.owner);
    if (mine.length >= this.maxPerKey)
      throw new SandboxLimitError(`this key has ${this.maxPerKey} sandboxes already`);
    const now = new Date().toISOString();
    let id = '';
    while (id.length < 20)
      id += randomBytes(16)
        .toString('hex')
        .replace(/[^a-z0-9]/g, '');
    const info: SandboxInfo = {
      id: id.slice(0, 20),
      language,
      template: request.template ?? language,
      owner: request.owner,
      state: 'running',
      createdAt: now,
      startedAt: now,
      expiresAt: new Date(Date.now() + timeoutMs).toISOString(),
      pausedAt: null,
      timeoutMs,
      metadata: { ...request.metadata },
      envs: { ...request.envs },
      vmId: 'vm-fake',
      memoryMib: 512,
      vcpus: 1,
      forkedFrom,
    };
    const files = new Map<string, Node>([
      [ROOT, { type: 'dir', data: Buffer.alloc(0), mtime: now }],
      ['/home', { type: 'dir', data: Buffer.alloc(0), mtime: now }],
      [HOME, { type: 'dir', data: Buffer.alloc(0), mtime: now }],
    ]);
    const b: Box = { info, files, running: new Map(), counts: new Map(), nextPid: 1 };
    this.boxes.set(info.id, b);
    return b;
  }

  create(request: CreateSandboxRequest): Promise<SandboxInfo> {
    return attempt(() => {
      return this.make(request, null).info;
    });
  }

  get(id: string, owner: string | null): SandboxInfo {
    return this.box(id, owner).info;
  }

  list(owner: string | null): SandboxInfo[] {
    return [...this.boxes.values()].filter((b) => b.info.owner === owner).map((b) => b.info);
  }

  setTimeout(id: string, owner: string | null, timeoutMs: number): SandboxInfo {
    if (timeoutMs > this.maxTimeoutMs) throw new LimitInvalidError('timeout too long');
    const b = this.box(id, owner);
    this.touch(b, timeoutMs);
    return b.info;
  }

  pause(id: string, owner: string | null): Promise<SandboxInfo> {
    const b = this.box(id, owner);
    if (b.info.state === 'paused')
      return Promise.reject(new SandboxStateError(`sandbox ${id} is paused already`));
    for (const c of b.running.values()) c.kill('SIGKILL');
    b.info = { ...b.info, state: 'paused', pausedAt: new Date().toISOString(), vmId: null };
    return Promise.resolve(b.info);
  }

  resume(id: string, owner: string | null, options?: { timeoutMs?: number }): Promise<SandboxInfo> {
    const b = this.box(id, owner);
    b.info = { ...b.info, state: 'running', pausedAt: null, vmId: 'vm-fake' };
    this.touch(b, options?.timeoutMs ?? b.info.timeoutMs);
    return Promise.resolve(b.info);
  }

  fork(id: string, owner: string | null, count: number): Promise<SandboxInfo[]> {
    const from = this.box(id, owner);
    const out: SandboxInfo[] = [];
    for (let i = 0; i < count; i++) {
      const b = this.make(
        {
          language: from.info.language,
          template: from.info.template,
          owner,
          timeoutMs: from.info.timeoutMs,
          metadata: from.info.metadata,
          envs: from.info.envs,
        },
        id,
      );
      for (const [p, n] of from.files) b.files.set(p, { ...n, data: Buffer.from(n.data) });
      out.push(b.info);
    }
    return Promise.resolve(out);
  }

  kill(id: string, owner: string | null): Promise<void> {
    const b = this.box(id, owner);
    for (const c of b.running.values()) c.kill('SIGKILL');
    this.boxes.delete(id);
    return Promise.resolve();
  }

  command(
    id: string,
    owner: string | null,
    request: CommandRequest,
    onOutput?: OutputListener,
  ): Promise<CommandHandle> {
    const b = this.running(id, owner);
    this.commandRequests.push(request);
    const c = new FakeCommand(b.nextPid++, request.cmd, request);
    if (onOutput !== undefined) c.on(onOutput);
    b.running.set(c.pid, c);
    void c.done.then(() => b.running.delete(c.pid));
    // Runs after command() resolved, as the real one's output comes after the start.
    setImmediate(() => void this.script(b, c));
    return Promise.resolve(c);
  }

  /**
   * The shell lines the fake knows, after `/bin/bash -l -c` (or `/bin/sh -c`): `echo WORDS`
   * (`$NAME` expanded, `>&2` to stderr), `pwd`, `exit N`, `sleep S` (ends early on a kill),
   * `cat` (echoes stdin until it closes), joined with `; `.
   */
  private async script(b: Box, c: FakeCommand): Promise<void> {
    const argv = unquote(c.cmd);
    const line = argv.length >= 3 && argv[argv.length - 2] === '-c' ? (argv.at(-1) ?? '') : '';
    const env: Record<string, string> = { ...b.info.envs, ...c.request.envs };
    let exitCode = 0;
    try {
      for (const step of line.split(/\s*;\s*/)) {
        const [name, ...args] = step.trim().split(/\s+/);
        if (name === 'echo') {
          const toErr = args.at(-1) === '>&2';
          const words = toErr ? args.slice(0, -1) : args;
          const text = words.join(' ').replace(/\$(\w+)/g, (_m, v: string) => env[v] ?? '');
          await c.emit(toErr ? 'stderr' : 'stdout', `${text}\n`);
        } else if (name === 'pwd') {
          await c.emit('stdout', `${c.request.cwd ?? HOME}\n`);
        } else if (name === 'exit') {
          exitCode = Number(args[0] ?? 0);
          break;
        } else if (name === 'sleep') {
          if (await c.wait(Number(args[0] ?? 0) * 1000)) break;
        } else if (name === 'cat') {
          for (;;) {
            const { data, open } = c.takeStdin();
            for (const d of data) await c.emit('stdout', d.toString());
            if (!open) break;
            if (await c.wait(10_000)) break;
          }
        } else if (name !== undefined && name !== '') {
          await c.emit('stderr', `fake: ${name}: command not found\n`);
          exitCode = 127;
          break;
        }
      }
    } finally {
      c.end(exitCode);
    }
  }

  commands(id: string, owner: string | null): CommandHandle[] {
    return [...this.running(id, owner).running.values()];
  }

  /**
   * The cell lines the fake knows: `print(<text>)` (stdout), `warn(<text>)` (stderr),
   * `show_png()` (a display result), a last line `A+B` of integers (the main result), and any
   * other bare name is a NameError.
   */
  /** The fake's interpreter state is its execution count: a restart starts it again. */
  restartInterpreter(id: string, owner: string | null, language: CellLanguage): Promise<boolean> {
    const b = this.running(id, owner);
    return Promise.resolve(b.counts.delete(language));
  }

  async runCell(
    id: string,
    owner: string | null,
    request: CellRequest,
    onEvent?: (event: CellEvent) => Promise<void> | void,
  ): Promise<CellOutcome> {
    const b = this.running(id, owner);
    this.cellRequests.push(request);
    const language = request.language ?? 'python';
    const count = (b.counts.get(language) ?? 0) + 1;
    b.counts.set(language, count);
    const outcome: CellOutcome & { results: CellResult[]; stdout: string[]; stderr: string[] } = {
      executionCount: count,
      results: [],
      stdout: [],
      stderr: [],
      error: null,
    };
    const send = async (e: CellEvent): Promise<void> => {
      await onEvent?.(e);
    };
    for (const raw of request.code.split('\n')) {
      const line = raw.trim();
      let m: RegExpExecArray | null;
      if ((m = /^print\((.*)\)$/.exec(line)) !== null) {
        const text = `${(m[1] ?? '').replace(/^["']|["']$/g, '')}\n`;
        outcome.stdout.push(text);
        await send({ type: 'stdout', text });
      } else if ((m = /^warn\((.*)\)$/.exec(line)) !== null) {
        const text = `${(m[1] ?? '').replace(/^["']|["']$/g, '')}\n`;
        outcome.stderr.push(text);
        await send({ type: 'stderr', text });
      } else if (line === 'show_png()') {
        const result: CellResult = { isMainResult: false, png: 'iVBORw0KGgo=', text: '<Figure>' };
        outcome.results.push(result);
        await send({ type: 'result', result });
      } else if ((m = /^(\d+)\s*\+\s*(\d+)$/.exec(line)) !== null) {
        const result: CellResult = {
          isMainResult: true,
          text: String(Number(m[1]) + Number(m[2])),
        };
        outcome.results.push(result);
        await send({ type: 'result', result });
      } else if (/^[A-Za-z_]\w*$/.test(line)) {
        const error = {
          name: 'NameError',
          value: `name '${line}' is not defined`,
          traceback: `Traceback (most recent call last):\nNameError: name '${line}' is not defined`,
        };
        await send({ type: 'error', error });
        return { ...outcome, error };
      }
    }
    return outcome;
  }

  private abs(path: string): string {
    return posix.normalize(path.startsWith('/') ? path : posix.join(HOME, path));
  }

  private entry(path: string, n: Node): FileEntry {
    return {
      name: posix.basename(path),
      path,
      type: n.type,
      size: n.data.length,
      mode: n.type === 'dir' ? 0o755 : 0o644,
      modifiedAt: n.mtime,
    };
  }

  private node(b: Box, path: string): Node {
    const n = b.files.get(path);
    if (n === undefined) throw new FileNotFoundError(`${path}: no such file or folder`);
    return n;
  }

  private mkdirs(b: Box, path: string): boolean {
    if (b.files.has(path)) return false;
    const parent = posix.dirname(path);
    if (parent !== path) this.mkdirs(b, parent);
    b.files.set(path, { type: 'dir', data: Buffer.alloc(0), mtime: new Date().toISOString() });
    return true;
  }

  async writeFile(
    id: string,
    owner: string | null,
    path: string,
    content: Buffer | AsyncIterable<Buffer>,
  ): Promise<FileEntry> {
    const b = this.running(id, owner);
    const p = this.abs(path);
    const chunks: Buffer[] = [];
    if (Buffer.isBuffer(content)) chunks.push(content);
    else for await (const c of content) chunks.push(c);
    this.mkdirs(b, posix.dirname(p));
    const n: Node = { type: 'file', data: Buffer.concat(chunks), mtime: new Date().toISOString() };
    b.files.set(p, n);
    return this.entry(p, n);
  }

  readFile(id: string, owner: string | null, path: string): Promise<AsyncIterable<Buffer>> {
    return attempt(() => {
      const b = this.running(id, owner);
      const n = this.node(b, this.abs(path));
      if (n.type !== 'file') throw new FileNotFoundError(`${path} is a folder`);
      const data = n.data;
      // Two chunks, so that a stream of more than one is exercised.
      const half = Math.floor(data.length / 2);
      return asyncOf([data.subarray(0, half), data.subarray(half)]);
    });
  }

  listFiles(id: string, owner: string | null, path: string, depth = 1): Promise<FileEntry[]> {
    return attempt(() => {
      const b = this.running(id, owner);
      const p = this.abs(path);
      if (this.node(b, p).type !== 'dir') throw new FileNotFoundError(`${path} is not a folder`);
      const out: FileEntry[] = [];
      for (const [q, n] of b.files) {
        if (q === p || !q.startsWith(p === ROOT ? ROOT : `${p}/`)) continue;
        const rel = q.slice(p.length).replace(/^\//, '');
        if (rel.split('/').length <= depth) out.push(this.entry(q, n));
      }
      return out.sort((x, y) => x.path.localeCompare(y.path));
    });
  }

  statFile(id: string, owner: string | null, path: string): Promise<FileEntry> {
    return attempt(() => {
      const b = this.running(id, owner);
      const p = this.abs(path);
      return this.entry(p, this.node(b, p));
    });
  }

  removeFile(id: string, owner: string | null, path: string): Promise<void> {
    return attempt(() => {
      const b = this.running(id, owner);
      const p = this.abs(path);
      this.node(b, p);
      for (const q of [...b.files.keys()]) if (q === p || q.startsWith(`${p}/`)) b.files.delete(q);
      return undefined;
    });
  }

  makeDir(id: string, owner: string | null, path: string): Promise<boolean> {
    return attempt(() => {
      return this.mkdirs(this.running(id, owner), this.abs(path));
    });
  }

  moveFile(id: string, owner: string | null, from: string, to: string): Promise<FileEntry> {
    return attempt(() => {
      const b = this.running(id, owner);
      const src = this.abs(from);
      const dst = this.abs(to);
      this.node(b, src);
      this.mkdirs(b, posix.dirname(dst));
      for (const [q, n] of [...b.files]) {
        if (q !== src && !q.startsWith(`${src}/`)) continue;
        b.files.delete(q);
        b.files.set(dst + q.slice(src.length), n);
      }
      return this.entry(dst, this.node(b, dst));
    });
  }
}
