import { createReadStream, createWriteStream } from 'node:fs';
import { stat } from 'node:fs/promises';
import { constants as osConstants } from 'node:os';
import { basename, join, posix } from 'node:path';
import { Readable, type Writable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import type { Command } from '@commander-js/extra-typings';
import type {
  CellOutcomeView,
  CommandResultView,
  FileEntryView,
  SandboxList,
  SandboxView,
} from '../../api/sandboxes/index.js';
import {
  errorOf,
  FileNameInvalidError,
  isErrorCode,
  LimitInvalidError,
  RequestInvalidError,
  SandboxFailureError,
} from '../../errors.js';
import { ApiClient } from '../client.js';
import { RUN_EXIT_CODES } from './run.js';

/** What the sandbox commands read and write: the process's, or a test's. */
export interface CliIo {
  readonly stdout: Writable;
  readonly stderr: Writable;
  readonly stdin: NodeJS.ReadableStream;
  readonly env: NodeJS.ProcessEnv;
  /** Sets the exit status of the command. */
  exit(code: number): void;
}

/** The process's own streams and exit status. */
export const PROCESS_IO: CliIo = {
  stdout: process.stdout,
  stderr: process.stderr,
  stdin: process.stdin,
  env: process.env,
  exit: (code) => {
    process.exitCode = code;
  },
};

/** A sandbox's path in a command line: `ID:PATH` (an id is lower-case letters and digits). */
export function parseRemote(spec: string): { id: string; path: string } | null {
  const m = /^([a-z0-9]{1,128}):(.*)$/s.exec(spec);
  if (m === null) return null;
  return { id: m[1] ?? '', path: m[2] ?? '' };
}

/** Quotes one word for /bin/sh. */
export function shellQuote(word: string): string {
  return /^[A-Za-z0-9_@%+=:,./-]+$/.test(word) ? word : `'${word.replace(/'/g, `'\\''`)}'`;
}

/** The exit status `runner sandbox exec` gives: the command's own, 128+signal, or RUN_EXIT_CODES. */
export function commandExitCode(
  r: Pick<CommandResultView, 'status' | 'exitCode' | 'signal'>,
): number {
  if (r.status === 'runtime_error' || r.status === 'ok') {
    if (r.exitCode !== null) return r.exitCode;
    const signo =
      r.signal === null ? undefined : (osConstants.signals as Record<string, number>)[r.signal];
    return signo === undefined ? 1 : 128 + signo;
  }
  return RUN_EXIT_CODES[r.status];
}

const seconds =
  (name: string) =>
  (value: string): number => {
    if (!/^\d+(\.\d+)?$/.test(value) || Number(value) <= 0)
      throw new LimitInvalidError(`${name} must be a positive number of seconds, not ${value}`);
    return Math.round(Number(value) * 1000);
  };

const count = (value: string): number => {
  if (!/^\d+$/.test(value) || Number(value) < 1)
    throw new LimitInvalidError(`--count must be a positive integer, not ${value}`);
  return Number(value);
};

const depthArg = (value: string): number => {
  if (!/^\d+$/.test(value) || Number(value) < 1 || Number(value) > 16)
    throw new LimitInvalidError(`--depth must be 1 to 16, not ${value}`);
  return Number(value);
};

/** `NAME=value` pairs, collected from a repeated option. */
const pair = (value: string, previous: Record<string, string> = {}): Record<string, string> => {
  const at = value.indexOf('=');
  if (at <= 0) throw new RequestInvalidError(`${value} is not NAME=value`);
  return { ...previous, [value.slice(0, at)]: value.slice(at + 1) };
};

const sandboxPath = (id: string, tail = ''): string =>
  `/v1/sandboxes/${encodeURIComponent(id)}${tail}`;
const query = (params: Record<string, string | number>): string =>
  `?${new URLSearchParams(Object.entries(params).map(([k, v]): [string, string] => [k, String(v)])).toString()}`;

async function readAll(stream: NodeJS.ReadableStream): Promise<string> {
  const chunks: Buffer[] = [];
  for await (const c of stream) chunks.push(Buffer.isBuffer(c) ? c : Buffer.from(c));
  return Buffer.concat(chunks).toString('utf8');
}

/** Writes and waits until the stream takes more (back-pressure to the server). */
function write(out: Writable, data: string | Buffer): Promise<void> {
  return new Promise((resolve) => {
    if (out.write(data)) resolve();
    else out.once('drain', () => resolve());
  });
}

/** A `failed` event: the call failed after its stream began. */
function streamFailure(data: Record<string, unknown>): Error {
  const code = typeof data.code === 'string' && isErrorCode(data.code) ? data.code : 'INTERNAL';
  return errorOf(code, `the server said: ${String(data.message)}`);
}

/** The event stream ended before its last event: the server went away. */
function cutShort(what: string): Error {
  return new SandboxFailureError(`the server's stream ended before ${what} did`);
}

const SERVER_HELP = `
The server: --url URL or RUNNER_URL (default http://127.0.0.1:2000), and --key KEY or
RUNNER_API_KEY when it has API keys (sent as Authorization: Bearer KEY).`;

/** `runner sandbox …`: sandboxes kept across calls, as a client of `runner serve`. */
export function registerSandboxCommand(program: Command, io: CliIo = PROCESS_IO): void {
  const group = program
    .command('sandbox')
    .description(
      'sandboxes kept across calls (a VM with its files, shells and interpreters), on a running runner serve',
    )
    .addHelpText(
      'after',
      `${SERVER_HELP}

Exit status: 0; exec: the command's own (128+N for signal N, 124 on a timeout, 70 when the
sandbox failed); run: 1 when the cell raised; 2 when the server refused the call or cannot be
reached.

Examples:
  id=$(runner sandbox create python --timeout 600)
  runner sandbox run $id 'x = 21'
  runner sandbox run $id 'x * 2'                 # 42: the interpreter kept x
  runner sandbox cp data.csv $id:data.csv
  runner sandbox exec $id -- wc -l data.csv
  runner sandbox cp $id:out.png ./out.png
  runner sandbox ls $id:/home/user
  runner sandbox pause $id && runner sandbox resume $id
  runner sandbox fork $id --count 3
  runner sandbox kill $id`,
    );

  /** A subcommand with the server options. */
  const sub = (name: string, description: string) =>
    group
      .command(name)
      .description(description)
      .option('--url <url>', 'the server (default: RUNNER_URL, else http://127.0.0.1:2000)')
      .option('--key <key>', 'API key (default: RUNNER_API_KEY)');
  const client = (o: { url?: string; key?: string }): ApiClient => new ApiClient(o, io.env);
  const print = (text: string): void =>
    void io.stdout.write(text.endsWith('\n') ? text : `${text}\n`);
  const printJson = (value: unknown): void => print(JSON.stringify(value, null, 2));

  sub('create', 'start a sandbox of a language; prints its id')
    .argument('<language>', 'language name or alias (python, js, bash, ...)')
    .option(
      '--timeout <seconds>',
      'time-to-live: killed this long after the last call',
      seconds('--timeout'),
    )
    .option('--metadata <name=value>', 'a label of your own (repeat for more)', pair)
    .option(
      '--env <NAME=value>',
      'an environment variable of every command and cell (repeat)',
      pair,
    )
    .option('--json', 'print the whole sandbox as JSON')
    .action(async (language, o) => {
      const s = await client(o).json<SandboxView>('POST', '/v1/sandboxes', {
        language,
        ...(o.timeout !== undefined && { timeoutMs: o.timeout }),
        ...(o.metadata !== undefined && { metadata: o.metadata }),
        ...(o.env !== undefined && { envs: o.env }),
      });
      if (o.json === true) printJson(s);
      else print(s.id);
    });

  sub('exec', 'run a shell command in a sandbox, its output as it comes; exits with its status')
    .argument('<id>', 'the sandbox')
    .argument('<command...>', 'the command (one word: a shell line as it is; more: each quoted)')
    .option('--cwd <dir>', 'folder to run in (default /home/user)')
    .option('--env <NAME=value>', 'an environment variable (repeat)', pair)
    .option('--timeout <seconds>', 'wall-clock limit', seconds('--timeout'))
    .addHelpText(
      'after',
      `
Put the command after --: runner sandbox exec ID -- ls -la /tmp
One word is a shell line: runner sandbox exec ID -- 'ls | wc -l'`,
    )
    .action(async (id, words, o) => {
      const cmd = words.length === 1 ? (words[0] ?? '') : words.map(shellQuote).join(' ');
      const body = {
        cmd,
        ...(o.cwd !== undefined && { cwd: o.cwd }),
        ...(o.env !== undefined && { envs: o.env }),
        ...(o.timeout !== undefined && { timeoutMs: o.timeout }),
      };
      let exited = false;
      for await (const { event, data } of client(o).events(sandboxPath(id, '/commands'), body)) {
        if (event === 'stdout' || event === 'stderr') {
          const bytes =
            typeof data.text === 'string'
              ? Buffer.from(data.text)
              : Buffer.from(String(data.dataBase64), 'base64');
          await write(event === 'stdout' ? io.stdout : io.stderr, bytes);
        } else if (event === 'exit') {
          const r = data as unknown as CommandResultView;
          if (r.status !== 'ok' && r.status !== 'runtime_error')
            io.stderr.write(`runner: ${r.status}${r.message === null ? '' : `: ${r.message}`}\n`);
          io.exit(commandExitCode(r));
          exited = true;
        } else if (event === 'failed') {
          throw streamFailure(data);
        }
      }
      if (!exited) throw cutShort('the command');
    });

  sub('run', 'run a code cell in a sandbox (its interpreter keeps its variables for the next)')
    .argument('<id>', 'the sandbox')
    .argument('<code>', 'the code, or - to read it from stdin')
    .option('-l, --language <name>', 'python or javascript (default: the sandbox’s, else python)')
    .option('--timeout <seconds>', 'wall-clock limit', seconds('--timeout'))
    .option('--json', 'print the whole outcome as JSON when it ends')
    .action(async (id, code, o) => {
      const body = {
        code: code === '-' ? await readAll(io.stdin) : code,
        ...(o.language !== undefined && { language: o.language }),
        ...(o.timeout !== undefined && { timeoutMs: o.timeout }),
      };
      const api = client(o);
      if (o.json === true) {
        const outcome = await api.json<CellOutcomeView>('POST', sandboxPath(id, '/cells'), body);
        printJson(outcome);
        if (outcome.error !== null) io.exit(1);
        return;
      }
      let done = false;
      for await (const { event, data } of api.events(sandboxPath(id, '/cells'), body)) {
        if (event === 'done') done = true;
        else if (event === 'stdout') await write(io.stdout, String(data.text));
        else if (event === 'stderr') await write(io.stderr, String(data.text));
        else if (event === 'result') {
          const r = data.result as CellOutcomeView['results'][number];
          const kinds = Object.keys(r).filter((k) => k !== 'isMainResult' && k !== 'text');
          if (r.text !== undefined) print(r.text);
          else if (kinds.length > 0) print(`[a ${kinds.join('/')} result: see --json]`);
        } else if (event === 'error') {
          const e = data.error as NonNullable<CellOutcomeView['error']>;
          const trace = e.traceback === '' ? `${e.name}: ${e.value}` : e.traceback;
          io.stderr.write(trace.endsWith('\n') ? trace : `${trace}\n`);
          io.exit(1);
        } else if (event === 'failed') {
          throw streamFailure(data);
        }
      }
      if (!done) throw cutShort('the cell');
    });

  sub('restart', 'restart an interpreter of a sandbox: the next cell starts afresh')
    .argument('<id>', 'the sandbox')
    .option('-l, --language <name>', 'python or javascript (default: as for run)')
    .action(async (id, o) => {
      const r = await client(o).json<{ restarted: boolean }>(
        'POST',
        sandboxPath(id, '/cells/restart'),
        o.language === undefined ? {} : { language: o.language },
      );
      print(r.restarted ? 'restarted' : 'no interpreter was running');
    });

  sub('cp', 'copy a file into a sandbox or out of it (ID:PATH names the sandbox side), streamed')
    .argument('<source>', 'LOCAL (or - for stdin), or ID:PATH')
    .argument(
      '<dest>',
      'ID:PATH (a PATH ending in / takes the file’s name), or LOCAL (or - for stdout)',
    )
    .action(async (source, dest, o) => {
      const api = client(o);
      const from = parseRemote(source);
      const to = parseRemote(dest);
      if ((from === null) === (to === null))
        throw new FileNameInvalidError('one side of cp must be ID:PATH and the other a local file');
      if (to !== null) {
        if (source !== '-' && (await stat(source)).isDirectory())
          throw new FileNameInvalidError(`${source} is a folder: cp copies one file`);
        const path =
          to.path === '' || to.path.endsWith('/') ? `${to.path}${basename(source)}` : to.path;
        const body = source === '-' ? io.stdin : createReadStream(source);
        await api.request('PUT', sandboxPath(to.id, `/files${query({ path })}`), {
          body: body as AsyncIterable<Uint8Array>,
        });
        return;
      }
      if (from === null) return;
      const res = await api.request(
        'GET',
        sandboxPath(from.id, `/files${query({ path: from.path })}`),
      );
      const bytes = res.body === null ? Readable.from([]) : Readable.fromWeb(res.body);
      if (dest === '-') {
        for await (const chunk of bytes) await write(io.stdout, chunk as Buffer);
        return;
      }
      const isDir = await stat(dest).then(
        (s) => s.isDirectory(),
        () => false,
      );
      await pipeline(
        bytes,
        createWriteStream(isDir ? join(dest, posix.basename(from.path)) : dest),
      );
    });

  sub('ls', 'list your sandboxes, or with ID[:PATH] the files of one')
    .argument('[target]', 'ID (its folder /home/user) or ID:PATH')
    .option('--depth <n>', 'levels of files to list (1 to 16)', depthArg)
    .option('--json', 'print JSON')
    .action(async (target, o) => {
      const api = client(o);
      if (target === undefined) {
        const { sandboxes } = await api.json<SandboxList>('GET', '/v1/sandboxes');
        if (o.json === true) return printJson(sandboxes);
        for (const s of sandboxes)
          print(`${s.id}  ${s.language.padEnd(10)} ${s.state.padEnd(7)} expires ${s.expiresAt}`);
        return;
      }
      const remote = parseRemote(target) ?? { id: target, path: '' };
      const params = {
        ...(remote.path !== '' && { path: remote.path }),
        ...(o.depth !== undefined && { depth: o.depth }),
      };
      const tail = Object.keys(params).length === 0 ? '' : query(params);
      const { entries } = await api.json<{ entries: FileEntryView[] }>(
        'GET',
        sandboxPath(remote.id, `/files/list${tail}`),
      );
      if (o.json === true) return printJson(entries);
      for (const e of entries) {
        const kind =
          e.type === 'dir' ? 'd' : e.type === 'symlink' ? 'l' : e.type === 'file' ? '-' : '?';
        const mode = e.mode.toString(8).padStart(4, '0');
        const link = e.target === undefined ? '' : ` -> ${e.target}`;
        print(`${kind} ${mode} ${String(e.size).padStart(10)} ${e.modifiedAt}  ${e.path}${link}`);
      }
    });

  sub('info', 'one sandbox, as JSON')
    .argument('<id>', 'the sandbox')
    .action(async (id, o) => {
      printJson(await client(o).json<SandboxView>('GET', sandboxPath(id)));
    });

  sub('pause', 'pause a sandbox: memory and files saved to disk, its VM freed')
    .argument('<id>', 'the sandbox')
    .option('--json', 'print the sandbox as JSON')
    .action(async (id, o) => {
      const s = await client(o).json<SandboxView>('POST', sandboxPath(id, '/pause'), {});
      if (o.json === true) printJson(s);
      else print(`${s.id} paused`);
    });

  sub('resume', 'resume a paused sandbox where it was')
    .argument('<id>', 'the sandbox')
    .option('--timeout <seconds>', 'a new time-to-live', seconds('--timeout'))
    .option('--json', 'print the sandbox as JSON')
    .action(async (id, o) => {
      const s = await client(o).json<SandboxView>('POST', sandboxPath(id, '/resume'), {
        ...(o.timeout !== undefined && { timeoutMs: o.timeout }),
      });
      if (o.json === true) printJson(s);
      else print(`${s.id} running until ${s.expiresAt}`);
    });

  sub('timeout', 'set the time a sandbox has left (and its time-to-live)')
    .argument('<id>', 'the sandbox')
    .argument('<seconds>', 'from now', seconds('SECONDS'))
    .action(async (id, ms, o) => {
      const s = await client(o).json<SandboxView>('POST', sandboxPath(id, '/timeout'), {
        timeoutMs: ms,
      });
      print(`${s.id} running until ${s.expiresAt}`);
    });

  sub('fork', 'copy a running sandbox (memory and files); prints the new ids')
    .argument('<id>', 'the sandbox')
    .option('--count <n>', 'copies to make (1 to 16)', count)
    .option('--json', 'print the new sandboxes as JSON')
    .action(async (id, o) => {
      const { sandboxes } = await client(o).json<SandboxList>('POST', sandboxPath(id, '/fork'), {
        count: o.count ?? 1,
      });
      if (o.json === true) printJson(sandboxes);
      else for (const s of sandboxes) print(s.id);
    });

  sub('kill', 'kill a sandbox: its VM, files and snapshot are gone')
    .argument('<id...>', 'the sandboxes')
    .action(async (ids, o) => {
      const api = client(o);
      for (const id of ids) await api.json('DELETE', sandboxPath(id));
    });

  const files = group
    .command('files')
    .description('files of a sandbox: rm, mkdir, mv, stat (cp and ls copy and list)');
  const fileSub = (name: string, description: string) =>
    files
      .command(name)
      .description(description)
      .option('--url <url>', 'the server (default: RUNNER_URL, else http://127.0.0.1:2000)')
      .option('--key <key>', 'API key (default: RUNNER_API_KEY)');
  const remoteArg = (spec: string): { id: string; path: string } => {
    const r = parseRemote(spec);
    if (r === null || r.path === '') throw new FileNameInvalidError(`${spec} is not ID:PATH`);
    return r;
  };

  fileSub('rm', 'remove a file, or a folder with everything in it')
    .argument('<target>', 'ID:PATH')
    .action(async (target, o) => {
      const r = remoteArg(target);
      await client(o).json('DELETE', sandboxPath(r.id, `/files${query({ path: r.path })}`));
    });

  fileSub('mkdir', 'make a folder and its parents')
    .argument('<target>', 'ID:PATH')
    .action(async (target, o) => {
      const r = remoteArg(target);
      await client(o).json('POST', sandboxPath(r.id, '/files/mkdir'), { path: r.path });
    });

  fileSub('mv', 'rename (move) a file or folder within a sandbox')
    .argument('<from>', 'ID:PATH')
    .argument('<to>', 'PATH (or ID:PATH of the same sandbox)')
    .action(async (fromSpec, toSpec, o) => {
      const from = remoteArg(fromSpec);
      const to = parseRemote(toSpec);
      if (to !== null && to.id !== from.id)
        throw new FileNameInvalidError('mv moves within one sandbox (use cp between two)');
      await client(o).json('POST', sandboxPath(from.id, '/files/move'), {
        from: from.path,
        to: to?.path ?? toSpec,
      });
    });

  fileSub('stat', 'one file’s or folder’s entry, as JSON')
    .argument('<target>', 'ID:PATH')
    .action(async (target, o) => {
      const r = remoteArg(target);
      printJson(
        await client(o).json('GET', sandboxPath(r.id, `/files/stat${query({ path: r.path })}`)),
      );
    });
}
