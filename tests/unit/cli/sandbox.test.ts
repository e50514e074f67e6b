import { execFile } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { PassThrough } from 'node:stream';
import { fileURLToPath } from 'node:url';
import { Command } from '@commander-js/extra-typings';
import { afterAll, beforeAll, describe, expect, test } from 'vitest';
import {
  commandExitCode,
  parseRemote,
  registerSandboxCommand,
  shellQuote,
  type CliIo,
} from '../../../src/cli/commands/sandbox.js';
import { FakeSandboxes } from '../../support/native-fake-sandboxes.js';
import { FakeEngine, makeApp, type TestApp } from '../api/helpers.js';

class SandboxEngine extends FakeEngine {
  constructor(readonly sandboxes: FakeSandboxes) {
    super();
  }
}

const KEY = 'cli-test-key';
let t: TestApp;
let url = '';
let dir = '';
const fake = new FakeSandboxes();

beforeAll(async () => {
  t = await makeApp({ engine: new SandboxEngine(fake), settings: { apiKeys: [KEY] } });
  url = await t.app.listen({ host: '127.0.0.1', port: 0 });
  dir = mkdtempSync(join(tmpdir(), 'runner-sandbox-cli-'));
});
afterAll(async () => {
  await t.close();
  rmSync(dir, { recursive: true, force: true });
});

/** What one `runner sandbox …` printed and the exit status it set (in this process). */
interface Ran {
  stdout: Buffer;
  stderr: string;
  code: number;
}

function collect(): { stream: PassThrough; bytes: () => Buffer } {
  const stream = new PassThrough();
  const chunks: Buffer[] = [];
  stream.on('data', (c: Buffer) => chunks.push(c));
  return { stream, bytes: () => Buffer.concat(chunks) };
}

/** Runs `runner sandbox ARGS` against the test server, the key given by the environment. */
async function runner(args: string[], stdin: Buffer | string = ''): Promise<Ran> {
  const out = collect();
  const err = collect();
  let code = 0;
  const input = new PassThrough();
  input.end(stdin);
  const io: CliIo = {
    stdout: out.stream,
    stderr: err.stream,
    stdin: input,
    env: { RUNNER_URL: url, RUNNER_API_KEY: KEY },
    exit: (c) => (code = c),
  };
  const program = new Command('runner').exitOverride();
  registerSandboxCommand(program, io);
  await program.parseAsync(['node', 'runner', 'sandbox', ...args]);
  await new Promise((r) => setImmediate(r));
  return { stdout: out.bytes(), stderr: err.bytes().toString(), code };
}

const text = (r: Ran): string => r.stdout.toString();

async function newSandbox(language = 'python'): Promise<string> {
  const r = await runner(['create', language]);
  return text(r).trim();
}

describe('runner sandbox', () => {
  test('create prints the id (or JSON), ls lists it, info shows it, kill ends it', async () => {
    const created = await runner([
      'create',
      'python',
      '--timeout',
      '90',
      '--metadata',
      'task=t1',
      '--env',
      'A=1',
      '--json',
    ]);
    const s = JSON.parse(text(created)) as { id: string; timeoutMs: number; metadata: unknown };
    expect(s.timeoutMs).toBe(90_000);
    expect(s.metadata).toEqual({ task: 't1' });
    const id = await newSandbox('bash');
    expect(id).toMatch(/^[a-z0-9]{20}$/);
    const ls = text(await runner(['ls']));
    expect(ls).toContain(s.id);
    expect(ls).toMatch(new RegExp(`${id}\\s+bash\\s+running`));
    expect(JSON.parse(text(await runner(['info', id])))).toMatchObject({ id, state: 'running' });
    await runner(['kill', id, s.id]);
    expect(text(await runner(['ls']))).not.toContain(id);
    // A refused call: the server's error, as a RunnerError of its code (runner prints it, exits 2).
    await expect(runner(['info', id])).rejects.toMatchObject({ code: 'SANDBOX_NOT_FOUND' });
  });

  test('exec streams the output and exits with the command’s status', async () => {
    const id = await newSandbox('bash');
    const r = await runner(['exec', id, '--', 'echo hi; echo oops >&2; exit 3']);
    expect(text(r)).toBe('hi\n');
    expect(r.stderr).toBe('oops\n');
    expect(r.code).toBe(3);
    // Several words are quoted one by one; --env and --cwd reach the command.
    const env = await runner(['exec', id, '--env', 'X=from-cli', '--cwd', 'sub', '--', 'env', 'X']);
    expect(text(env)).toBe('from-cli\n');
    expect(fake.calls.at(-1)?.args[2]).toMatchObject({ cmd: 'env X', cwd: 'sub' });
    // Bytes that are not UTF-8 come out exact.
    const bin = await runner(['exec', id, '--', 'printf-hex ff00fe41']);
    expect(bin.stdout.equals(Buffer.from([0xff, 0x00, 0xfe, 0x41]))).toBe(true);
    const timeout = await runner(['exec', id, '--timeout', '0.05', '--', 'sleep 5']);
    expect(timeout.code).toBe(124);
    expect(timeout.stderr).toMatch(/timeout/);
  });

  test('run prints stdout as it comes and the result; an exception prints its traceback and exits 1', async () => {
    const id = await newSandbox();
    const first = await runner(['run', id, 'x = 21\nprint("half")']);
    expect(text(first)).toBe('half\n');
    expect(first.code).toBe(0);
    const second = await runner(['run', id, 'x']);
    expect(text(second)).toBe('21\n');
    const failed = await runner(['run', id, 'raise ValueError("nope")']);
    expect(failed.code).toBe(1);
    expect(failed.stderr).toMatch(/ValueError: nope/);
    const fromStdin = await runner(['run', id, '-', '--language', 'javascript'], 'print(piped)');
    expect(text(fromStdin)).toBe('piped\n');
    const json = await runner(['run', id, '--json', 'x']);
    expect(JSON.parse(text(json))).toMatchObject({ executionCount: 4, results: [{ text: '21' }] });
    expect(text(await runner(['restart', id]))).toBe('restarted\n');
    expect(text(await runner(['run', id, 'x']))).toBe('x\n'); // x is gone: the line is its text
  });

  test('cp streams a binary file in and out, byte-exact; ls lists the files of one sandbox', async () => {
    const id = await newSandbox();
    const local = join(dir, 'in.bin');
    const content = randomBytes(200_000);
    writeFileSync(local, content);
    await runner(['cp', local, `${id}:data/`]);
    const listed = text(await runner(['ls', `${id}:data`]));
    expect(listed).toMatch(/^- 0644\s+200000 \S+ {2}\/home\/user\/data\/in\.bin$/m);
    const back = join(dir, 'out.bin');
    await runner(['cp', `${id}:data/in.bin`, back]);
    expect(readFileSync(back).equals(content)).toBe(true);
    // Into a folder: the file keeps its name; - is stdout (and stdin).
    await runner(['cp', `${id}:/home/user/data/in.bin`, dir]);
    expect(readFileSync(join(dir, 'in.bin')).equals(content)).toBe(true);
    await runner(['cp', '-', `${id}:piped.txt`], 'from stdin');
    expect(text(await runner(['cp', `${id}:piped.txt`, '-']))).toBe('from stdin');
    const top = text(await runner(['ls', id, '--depth', '2']));
    expect(top).toContain('/home/user/data/in.bin');
    expect(top).toMatch(/^d 0755 .* \/home\/user\/data$/m);
    await expect(runner(['cp', local, join(dir, 'x')])).rejects.toMatchObject({
      code: 'FILE_NAME_INVALID',
    });
    await expect(runner(['cp', `${id}:nope`, join(dir, 'x')])).rejects.toMatchObject({
      code: 'FILE_NOT_FOUND',
    });
  });

  test('files mkdir, mv, stat, rm', async () => {
    const id = await newSandbox();
    await runner(['files', 'mkdir', `${id}:a/b`]);
    await runner(['cp', '-', `${id}:a/b/f.txt`], 'f');
    await runner(['files', 'mv', `${id}:a/b/f.txt`, 'g.txt']);
    expect(JSON.parse(text(await runner(['files', 'stat', `${id}:g.txt`])))).toMatchObject({
      path: '/home/user/g.txt',
      size: 1,
    });
    await runner(['files', 'rm', `${id}:a`]);
    await expect(runner(['files', 'stat', `${id}:a/b`])).rejects.toMatchObject({
      code: 'FILE_NOT_FOUND',
    });
  });

  test('pause, resume, timeout and fork', async () => {
    const id = await newSandbox();
    expect(text(await runner(['pause', id]))).toBe(`${id} paused\n`);
    await expect(runner(['exec', id, '--', 'echo hi'])).rejects.toMatchObject({
      code: 'SANDBOX_STATE',
    });
    expect(text(await runner(['resume', id, '--timeout', '600']))).toMatch(
      new RegExp(`^${id} running until \\S+\\n$`),
    );
    expect(text(await runner(['timeout', id, '1200']))).toMatch(/running until/);
    const forked = text(await runner(['fork', id, '--count', '2']))
      .trim()
      .split('\n');
    expect(forked).toHaveLength(2);
    for (const f of forked) expect(f).toMatch(/^[a-z0-9]{20}$/);
  });

  test('the parts: ID:PATH, shell quoting, exit statuses', () => {
    expect(parseRemote('abc123:/home/user/x')).toEqual({ id: 'abc123', path: '/home/user/x' });
    expect(parseRemote('./local:file')).toBeNull();
    expect(parseRemote('/tmp/x')).toBeNull();
    expect(shellQuote('plain-word.txt')).toBe('plain-word.txt');
    expect(shellQuote("it's")).toBe(`'it'\\''s'`);
    expect(commandExitCode({ status: 'runtime_error', exitCode: null, signal: 'SIGKILL' })).toBe(
      137,
    );
    expect(commandExitCode({ status: 'timeout', exitCode: null, signal: 'SIGKILL' })).toBe(124);
    expect(commandExitCode({ status: 'sandbox_error', exitCode: null, signal: null })).toBe(70);
  });

  test('the runner bin: exec exits with the command’s status; a refused call prints one line and exits 2', async () => {
    const id = await newSandbox('bash');
    const bin = fileURLToPath(new URL('../../../bin/runner.js', import.meta.url));
    const spawn = (args: string[]) =>
      new Promise<{ code: number | null; stdout: string; stderr: string }>((resolve) => {
        execFile(
          process.execPath,
          [bin, 'sandbox', ...args],
          {
            env: { ...process.env, RUNNER_FROM_SOURCE: '1', RUNNER_URL: url, RUNNER_API_KEY: KEY },
          },
          (err, stdout, stderr) => {
            resolve({ code: err === null ? 0 : (err.code as number), stdout, stderr });
          },
        );
      });
    const ok = await spawn(['exec', id, '--', 'echo from-bin; exit 7']);
    expect(ok).toMatchObject({ code: 7, stdout: 'from-bin\n' });
    const refused = await spawn(['info', 'nosuchsandbox']);
    expect(refused.code).toBe(2);
    expect(refused.stderr).toMatch(/^runner: the server said 404: .*\[SANDBOX_NOT_FOUND\]\n$/);
  }, 60_000);
});
