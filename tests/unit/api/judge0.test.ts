import { createServer, type IncomingMessage } from 'node:http';
import type { AddressInfo } from 'node:net';
import { zipSync } from 'fflate';
import { afterEach, describe, expect, test } from 'vitest';
import { splitArguments } from '../../../src/api/judge0/submission.js';
import { MAX_EXTRACT_BYTES, unpackAdditionalFiles } from '../../../src/api/judge0/zip.js';
import { VmStateError } from '../../../src/errors.js';
import { gate, makeApp, stage, type FakeBehavior, type TestApp } from './helpers.js';

let t: TestApp | undefined;
afterEach(async () => {
  await t?.close();
  t = undefined;
});

type Sub = Record<string, unknown> & { status?: { id: number; description: string } };

async function app(
  settings: Record<string, unknown> = {},
  behavior?: FakeBehavior,
): Promise<TestApp> {
  t = await makeApp({ settings });
  if (behavior !== undefined) t.engine.behavior = behavior;
  return t;
}

async function post(url: string, payload: unknown, headers: Record<string, string> = {}) {
  t ??= await makeApp();
  const res = await t.app.inject({
    method: 'POST',
    url,
    payload: payload as Record<string, unknown>,
    headers: { 'content-type': 'application/json', ...headers },
  });
  return { status: res.statusCode, body: res.json<unknown>() };
}

async function get(url: string, headers: Record<string, string> = {}) {
  t ??= await makeApp();
  const res = await t.app.inject({ method: 'GET', url, headers });
  return { status: res.statusCode, body: res.json<unknown>() };
}

/** Polls a token until its status is no longer In Queue or Processing. */
async function poll(token: string, query = ''): Promise<Sub> {
  for (let i = 0; i < 200; i++) {
    const { body } = await get(`/submissions/${token}${query}`);
    const s = body as Sub;
    if (s.status !== undefined && s.status.id > 2) return s;
    await new Promise((r) => setTimeout(r, 10));
  }
  throw new Error(`submission ${token} did not finish`);
}

/** The C program of Judge0's documentation: reads a name, greets it. */
const HELLO_C =
  '#include <stdio.h>\n\nint main(void) {\n  char name[10];\n  scanf("%s", name);\n  printf("hello, %s\\n", name);\n  return 0;\n}';
/** A fake that greets its stdin like HELLO_C would. */
const greet: FakeBehavior = (r) => ({
  run: stage({ out: `hello, ${r.stdin?.toString() ?? ''}\n` }),
});

describe("Judge0's documented examples", () => {
  test('create a submission: 201 with a token; GET follows it to its result', async () => {
    await app({}, greet);
    const { status, body } = await post('/submissions', {
      source_code: HELLO_C,
      language_id: 50,
      stdin: 'world',
    });
    expect(status).toBe(201);
    const { token } = body as { token: string };
    expect(Object.keys(body as object)).toEqual(['token']);
    expect(token).toMatch(/^[0-9a-f-]{36}$/);
    const s = await poll(token);
    // Judge0's default fields, no more.
    expect(Object.keys(s).sort()).toEqual(
      ['compile_output', 'memory', 'message', 'status', 'stderr', 'stdout', 'time', 'token'].sort(),
    );
    expect(s).toMatchObject({
      token,
      stdout: 'hello, world\n',
      stderr: null,
      compile_output: null,
      message: null,
      status: { id: 3, description: 'Accepted' },
      time: '0.008',
      memory: 3906,
    });
    // The engine was asked for C, with Judge0's default limits in our units.
    expect(t?.engine.calls[0]?.language).toBe('c');
    expect(t?.engine.calls[0]?.runLimits).toEqual({
      // cpu_time_limit 5 s + cpu_extra_time 1 s: killed at 6 s, judged at 5 s.
      cpuTimeMs: 6000,
      wallTimeMs: 10000,
      memoryMib: 125,
      processes: 60,
      fileSizeBytes: 1024 * 1024,
      stackBytes: 64_000 * 1024,
    });
  });

  const greetSub = { source_code: 'x', language_id: 50, expected_output: 'hello, a' };

  test('stack_limit becomes the stack rlimit of the run', async () => {
    await app({}, greet);
    await post('/submissions?wait=true', { ...greetSub, stack_limit: 16_000 });
    expect(t?.engine.calls[0]?.runLimits?.stackBytes).toBe(16_000 * 1024);
  });

  test('cpu_extra_time: a run over cpu_time_limit but under the kill limit is a time limit', async () => {
    await app({}, () => ({ run: stage({ cpuTimeMs: 1500, out: 'hello, a\n' }) }));
    const slow = await post('/submissions?wait=true&fields=status,message', {
      ...greetSub,
      cpu_time_limit: 1,
      cpu_extra_time: 2,
    });
    expect(t?.engine.calls[0]?.runLimits?.cpuTimeMs).toBe(3000);
    expect(slow.body).toMatchObject({
      status: { id: 5, description: 'Time Limit Exceeded' },
      message: 'Time limit exceeded',
    });
    const fast = await post('/submissions?wait=true&fields=status', {
      ...greetSub,
      cpu_time_limit: 2,
    });
    expect((fast.body as Sub).status?.id).toBe(3);
  });

  test('wait=true with expected_output: the result at once, Accepted (language_id as a string)', async () => {
    await app({}, greet);
    const { status, body } = await post('/submissions?wait=true', {
      source_code: HELLO_C,
      language_id: '50',
      stdin: 'Judge0',
      expected_output: 'hello, Judge0',
    });
    expect(status).toBe(201);
    expect(body).toMatchObject({
      stdout: 'hello, Judge0\n',
      stderr: null,
      compile_output: null,
      message: null,
      status: { id: 3, description: 'Accepted' },
    });
  });

  test.each([
    [{ source_code: HELLO_C }, { language_id: ["can't be blank"] }],
    [
      {
        source_code: HELLO_C,
        language_id: 150000,
        stdin: 'world',
        expected_output: 'hello, world',
      },
      { language_id: ["language with id 150000 doesn't exist"] },
    ],
    [
      { source_code: HELLO_C, language_id: 50, wall_time_limit: 100000, cpu_time_limit: 1 },
      { wall_time_limit: ['must be less than or equal to 20'] },
    ],
    [
      { language_id: 50, cpu_time_limit: 0, memory_limit: 'lots' },
      {
        source_code: ["can't be blank"],
        cpu_time_limit: ['must be greater than 0'],
        memory_limit: ['is not a number'],
      },
    ],
    [
      { source_code: 'x', language_id: 71, enable_network: true },
      { enable_network: [expect.stringMatching(/network access is not allowed/) as unknown] },
    ],
    [
      { source_code: 'x', language_id: 71, compiler_options: '-O3' },
      { compiler_options: [expect.stringMatching(/not allowed/) as unknown] },
    ],
    [
      { source_code: 'x', language_id: 71, callback_url: 'ftp://x/y' },
      { callback_url: [expect.stringMatching(/http or https/) as unknown] },
    ],
    [
      { source_code: 'x', language_id: 71, callback_url: 'http://169.254.169.254/latest' },
      {
        callback_url: [
          expect.stringMatching(/^host 169\.254\.169\.254 is refused .*metadata/) as unknown,
        ],
      },
    ],
    [
      { source_code: 'x', language_id: 71, callback_url: 'http://[::ffff:127.0.0.1]:8080/' },
      {
        callback_url: [
          expect.stringMatching(/^host ::ffff:7f00:1 is refused .*loopback/) as unknown,
        ],
      },
    ],
  ])('422 names every bad field: %j', async (payload, errors) => {
    const { status, body } = await post('/submissions', payload);
    expect(status).toBe(422);
    expect(body).toEqual(errors);
    expect(t?.engine.calls).toHaveLength(0);
  });

  test('base64: source, stdin and expected output go in base64, outputs come back in it', async () => {
    await app({}, greet);
    const b = (s: string) => Buffer.from(s).toString('base64');
    const { body } = await post('/submissions?base64_encoded=true&wait=true', {
      source_code: b(HELLO_C),
      language_id: 50,
      stdin: 'SnVkZ2Uw',
      expected_output: b('hello, Judge0'),
    });
    expect(body).toMatchObject({ stdout: b('hello, Judge0\n'), status: { id: 3 } });
    expect(t?.engine.calls[0]?.files[0]).toEqual({ content: b(HELLO_C), encoding: 'base64' });
    expect(t?.engine.calls[0]?.cases?.[0]?.toString()).toBe('Judge0');
    // A plain-text read of output that is not UTF-8 is refused, as Judge0 does.
    await t?.close();
    await app({}, () => ({ run: stage({ out: Buffer.from([0xfe, 0xff]) }) }));
    const waited = await post('/submissions?wait=true', { source_code: 'x', language_id: 71 });
    expect(waited.body).toMatchObject({
      error: expect.stringMatching(/base64_encoded=true/) as unknown,
    });
    const token = (waited.body as { token: string }).token;
    expect((await get(`/submissions/${token}`)).status).toBe(400);
    expect((await get(`/submissions/${token}?base64_encoded=true`)).body).toMatchObject({
      stdout: '/v8=',
    });
  });

  test('fields: a list, * for all, and an unknown one is a 400', async () => {
    await app({}, greet);
    const { body } = await post('/submissions?wait=true', {
      source_code: 'x',
      language_id: 71,
      stdin: 'a',
    });
    const token = (body as { token: string }).token;
    expect((await get(`/submissions/${token}?fields=stdout,status_id`)).body).toEqual({
      stdout: 'hello, a\n',
      status_id: 3,
    });
    const all = (await get(`/submissions/${token}?fields=*`)).body as Sub;
    expect(all).toMatchObject({
      token,
      language_id: 71,
      language: { id: 71, name: 'Python (3.11.2)' },
      exit_code: 0,
      exit_signal: null,
      wall_time: '0.012',
    });
    expect(typeof all.created_at).toBe('string');
    expect(typeof all.finished_at).toBe('string');
    const bad = await get(`/submissions/${token}?fields=stdout,nope,worse`);
    expect(bad).toEqual({ status: 400, body: { error: 'invalid fields: [nope, worse]' } });
  });

  test('batch: tokens (or errors) in order; GET by tokens, null for an unknown one', async () => {
    await app({}, (r) => ({ run: stage({ out: `hello from ${r.language}\n` }) }));
    const { status, body } = await post('/submissions/batch', {
      submissions: [
        { language_id: 46, source_code: 'echo hello from Bash' },
        { language_id: 123456789, source_code: 'print("hello from Python")' },
        { language_id: 72, source_code: '' },
        { language_id: 71, source_code: 'print("hello from Python")' },
      ],
    });
    expect(status).toBe(201);
    const list = body as Record<string, unknown>[];
    expect(list[1]).toEqual({ language_id: ["language with id 123456789 doesn't exist"] });
    expect(list[2]).toEqual({ source_code: ["can't be blank"] });
    const tokens = [list[0]?.token, list[3]?.token] as string[];
    await poll(tokens[0] ?? '');
    await poll(tokens[1] ?? '');
    const got = await get(
      `/submissions/batch?tokens=${tokens.join(',')},nope&fields=token,stdout,status_id`,
    );
    expect(got.body).toEqual({
      submissions: [
        { token: tokens[0], stdout: 'hello from bash\n', status_id: 3 },
        { token: tokens[1], stdout: 'hello from python\n', status_id: 3 },
        null,
      ],
    });
    expect((await post('/submissions/batch', { submissions: [{ language_id: 1 }] })).status).toBe(
      422,
    );
    expect((await get('/submissions/batch?tokens=')).status).toBe(400);
  });
});

describe('batch: submissions that differ only in stdin compile once (issue 14)', () => {
  const c = (stdin: string, extra: Record<string, unknown> = {}) => ({
    source_code: HELLO_C,
    language_id: 50,
    stdin,
    ...extra,
  });
  const tokensOf = (body: unknown): string[] => (body as { token: string }[]).map((s) => s.token);
  /** The fields a grouped submission must show exactly as if it had run alone. */
  const RESULT_FIELDS =
    'stdout,stderr,compile_output,message,status,exit_code,exit_signal,time,wall_time,memory';

  test('one engine job, one case each; every token reads back its own result', async () => {
    await app({}, greet);
    const { status, body } = await post('/submissions/batch', {
      submissions: [
        c('a', { expected_output: 'hello, a' }),
        c('b', { expected_output: 'hello, x' }),
        c('c'),
      ],
    });
    expect(status).toBe(201);
    const tokens = tokensOf(body);
    expect(new Set(tokens).size).toBe(3);
    const subs = await Promise.all(tokens.map((tk) => poll(tk, `?fields=token,${RESULT_FIELDS}`)));
    expect(t?.engine.jobs).toHaveLength(1);
    expect(t?.engine.calls[0]?.cases?.map((b) => b.toString())).toEqual(['a', 'b', 'c']);
    expect(subs.map((s) => [s.token, s.stdout, s.status?.description])).toEqual([
      [tokens[0], 'hello, a\n', 'Accepted'],
      [tokens[1], 'hello, b\n', 'Wrong Answer'],
      [tokens[2], 'hello, c\n', 'Accepted'],
    ]);
    const got = await get(`/submissions/batch?tokens=${tokens.join(',')}&fields=token,stdout`);
    expect(got.body).toEqual({
      submissions: tokens.map((token, i) => ({ token, stdout: `hello, ${'abc'[i]}\n` })),
    });
    // Shaped exactly as the same submission run alone.
    const alone = await post(
      `/submissions?wait=true&fields=token,${RESULT_FIELDS}`,
      c('b', { expected_output: 'hello, x' }),
    );
    expect(subs[1]).toEqual({ ...(alone.body as Sub), token: tokens[1] });
  });

  test('different sources, limits or number_of_runs are not grouped', async () => {
    await app({}, greet);
    const other = 'int main(void) { return 0; }';
    const { body } = await post('/submissions/batch', {
      submissions: [c('a'), c('b', { source_code: other }), c('c'), c('d', { source_code: other })],
    });
    const subs = await Promise.all(tokensOf(body).map((tk) => poll(tk)));
    expect(subs.map((s) => s.stdout)).toEqual([
      'hello, a\n',
      'hello, b\n',
      'hello, c\n',
      'hello, d\n',
    ]);
    expect(t?.engine.calls.map((r) => r.cases?.map((b) => b.toString()))).toEqual([
      ['a', 'c'],
      ['b', 'd'],
    ]);
    const more = await post('/submissions/batch', {
      submissions: [c('e'), c('f', { cpu_time_limit: 2 }), c('g', { number_of_runs: 2 })],
    });
    await Promise.all(tokensOf(more.body).map((tk) => poll(tk)));
    expect(t?.engine.calls.slice(2).map((r) => r.cases?.map((b) => b.toString()))).toEqual([
      ['e'],
      ['f'],
      ['g', 'g'],
    ]);
  });

  test('a group is split at the test case cap (RUNNER_MAX_TEST_CASES)', async () => {
    await app({ maxTestCases: 2 }, greet);
    const { body } = await post('/submissions/batch', { submissions: [c('a'), c('b'), c('c')] });
    const subs = await Promise.all(tokensOf(body).map((tk) => poll(tk)));
    expect(subs.map((s) => s.stdout)).toEqual(['hello, a\n', 'hello, b\n', 'hello, c\n']);
    expect(t?.engine.calls.map((r) => r.cases?.length)).toEqual([2, 1]);
  });

  test('a failed compile gives every submission of the group Compilation Error', async () => {
    await app({}, () => ({
      compile: stage({ status: 'compile_error', exitCode: 1, err: 'main.c:1: error' }),
      run: null,
    }));
    const { body } = await post('/submissions/batch', { submissions: [c('a'), c('b'), c('c')] });
    const subs = await Promise.all(tokensOf(body).map((tk) => poll(tk)));
    expect(t?.engine.jobs).toHaveLength(1);
    for (const s of subs)
      expect(s).toMatchObject({
        status: { id: 6, description: 'Compilation Error' },
        compile_output: 'main.c:1: error',
        stdout: null,
      });
  });

  test('every token is recorded as queued before the 201; a failed engine fails each', async () => {
    const open = gate();
    await app({}, async () => {
      await open.promise;
      throw new VmStateError('the VM died');
    });
    const { body } = await post('/submissions/batch', { submissions: [c('a'), c('b')] });
    const tokens = tokensOf(body);
    for (const tk of tokens) {
      expect(t?.jobStore.get(tk)?.state).toMatch(/^(queued|running)$/);
      expect(((await get(`/submissions/${tk}`)).body as Sub).status?.id).toBeLessThanOrEqual(2);
    }
    open.open();
    for (const tk of tokens)
      expect(await poll(tk, '?fields=token,status,message')).toEqual({
        token: tk,
        status: { id: 13, description: 'Internal Error' },
        message: 'the VM died',
      });
    expect(t?.engine.jobs).toHaveLength(1);
  });

  test("each grouped submission's callback is sent, with its own result", async () => {
    const got: Sub[] = [];
    const server = createServer((req: IncomingMessage, res) => {
      let data = '';
      req.on('data', (chunk: Buffer) => (data += chunk.toString()));
      req.on('end', () => {
        got.push(JSON.parse(data) as Sub);
        res.writeHead(200).end();
      });
    });
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
    const url = `http://127.0.0.1:${(server.address() as AddressInfo).port}/hook`;
    try {
      // The listener is loopback: the egress allow-list must open it.
      await app({ callbackAllowedHosts: ['127.0.0.1'], egressAllow: ['127.0.0.1'] }, greet);
      const { body } = await post('/submissions/batch', {
        submissions: [c('a', { callback_url: url }), c('b', { callback_url: url })],
      });
      const tokens = tokensOf(body);
      for (let i = 0; i < 200 && got.length < 2; i++) await new Promise((r) => setTimeout(r, 10));
      expect(t?.engine.jobs).toHaveLength(1);
      const b64 = (s: string) => Buffer.from(s).toString('base64');
      expect(got.map((s) => [s.token, s.stdout]).sort()).toEqual(
        [
          [tokens[0], b64('hello, a\n')],
          [tokens[1], b64('hello, b\n')],
        ].sort(),
      );
    } finally {
      server.close();
    }
  });
});

describe('verdicts as Judge0 gives them', () => {
  const sub = { source_code: 'x', language_id: 50, expected_output: 'hello, a' };
  test.each<[string, FakeBehavior, number, string, string | null]>([
    ['a wrong answer', () => ({ run: stage({ out: 'hello, b\n' }) }), 4, 'Wrong Answer', null],
    [
      'a compile error',
      () => ({
        compile: stage({ status: 'compile_error', exitCode: 1, err: 'main.c:1: error' }),
        run: null,
      }),
      6,
      'Compilation Error',
      null,
    ],
    [
      'a timeout',
      () => ({ run: stage({ status: 'timeout', signal: 'SIGKILL', exitCode: null }) }),
      5,
      'Time Limit Exceeded',
      'Time limit exceeded',
    ],
    [
      'SIGSEGV',
      () => ({ run: stage({ status: 'runtime_error', signal: 'SIGSEGV', exitCode: null }) }),
      7,
      'Runtime Error (SIGSEGV)',
      'Caught fatal signal 11',
    ],
    [
      'SIGFPE',
      () => ({ run: stage({ status: 'runtime_error', signal: 'SIGFPE', exitCode: null }) }),
      9,
      'Runtime Error (SIGFPE)',
      'Caught fatal signal 8',
    ],
    [
      'SIGABRT',
      () => ({ run: stage({ status: 'runtime_error', signal: 'SIGABRT', exitCode: null }) }),
      10,
      'Runtime Error (SIGABRT)',
      'Caught fatal signal 6',
    ],
    [
      'a non-zero exit',
      () => ({ run: stage({ status: 'runtime_error', exitCode: 3 }) }),
      11,
      'Runtime Error (NZEC)',
      'Exited with error status 3',
    ],
    [
      'another signal',
      () => ({ run: stage({ status: 'runtime_error', signal: 'SIGILL', exitCode: null }) }),
      12,
      'Runtime Error (Other)',
      'Caught fatal signal 4',
    ],
    [
      'a memory limit',
      () => ({ run: stage({ status: 'memory_limit', signal: 'SIGKILL', exitCode: null }) }),
      12,
      'Runtime Error (Other)',
      'Memory limit exceeded',
    ],
    [
      'an output limit',
      () => ({ run: stage({ status: 'output_limit', stdoutTruncated: true }) }),
      8,
      'Runtime Error (SIGXFSZ)',
      'Output limit exceeded',
    ],
    [
      'a sandbox failure',
      () => ({ run: stage({ status: 'sandbox_error', exitCode: null, message: 'the VM died' }) }),
      13,
      'Internal Error',
      'the VM died',
    ],
  ])('%s', async (_name, behavior, id, description, message) => {
    await app({}, behavior);
    const { body } = await post('/submissions?wait=true&fields=status,message,compile_output', sub);
    expect(body).toMatchObject({ status: { id, description }, message });
    if (id === 6) expect((body as Sub).compile_output).toBe('main.c:1: error');
  });

  test("expected_output uses Judge0's trim: trailing spaces, blank lines at both ends", async () => {
    await app({}, () => ({ run: stage({ out: '\n\nhello, a   \n\n' }) }));
    const { body } = await post('/submissions?wait=true', sub);
    expect((body as Sub).status?.id).toBe(3);
  });

  test('number_of_runs: compiled once, run N times; time and memory are averages', async () => {
    let n = 0;
    await app({}, () => ({
      run: stage({ out: 'hello, a', cpuTimeMs: ++n * 10, memoryPeakBytes: n * 1024 * 100 }),
    }));
    const { body } = await post('/submissions?wait=true', { ...sub, number_of_runs: 3 });
    expect(body).toMatchObject({ status: { id: 3 }, time: '0.020', memory: 200 });
    expect(t?.engine.calls).toHaveLength(1);
    expect(t?.engine.calls[0]?.cases).toHaveLength(3);
  });

  test('redirect_stderr_to_stdout appends stderr to stdout before it is judged', async () => {
    await app({}, () => ({ run: stage({ out: 'hello, ', err: 'a' }) }));
    const { body } = await post('/submissions?wait=true', {
      ...sub,
      redirect_stderr_to_stdout: true,
    });
    expect(body).toMatchObject({ stdout: 'hello, a', stderr: null, status: { id: 3 } });
  });

  test('command_line_arguments are split like a shell would', async () => {
    await app();
    await post('/submissions?wait=true', { ...sub, command_line_arguments: `a "b c" 'd e' f\\ g` });
    expect(t?.engine.calls[0]?.args).toEqual(['a', 'b c', 'd e', 'f g']);
    expect(splitArguments('"open')).toBeNull();
    expect(splitArguments(' ""  x ')).toEqual(['', 'x']);
  });
});

describe('additional_files', () => {
  const zip = (files: Record<string, Uint8Array | [Uint8Array, object]>) =>
    Buffer.from(zipSync(files as Parameters<typeof zipSync>[0])).toString('base64');
  const text = (s: string) => new TextEncoder().encode(s);

  test('a zip is unpacked beside the program', async () => {
    await app();
    const { status } = await post('/submissions?wait=true', {
      source_code: 'print(open("data/in.txt").read())',
      language_id: 71,
      additional_files: zip({ 'data/in.txt': text('42'), 'lib.py': text('X = 1') }),
    });
    expect(status).toBe(201);
    const files = t?.engine.calls[0]?.files ?? [];
    expect(files.map((f) => f.name)).toEqual([undefined, 'data/in.txt', 'lib.py']);
    expect(Buffer.from(files[1]?.content ?? '', 'base64').toString()).toBe('42');
  });

  test.each([
    ['a .. entry', () => zip({ '../evil.sh': text('x') }), /`\.\.` component/],
    ['an absolute entry', () => zip({ '/etc/passwd': text('x') }), /absolute/],
    [
      'a symlink entry',
      () => zip({ link: [text('/etc/passwd'), { os: 3, attrs: (0o120777 << 16) >>> 0 }] }),
      /symlink/,
    ],
    [
      'a zip bomb (declared)',
      () => zip({ big: new Uint8Array(MAX_EXTRACT_BYTES + 1) }),
      /unpacks to more than/,
    ],
    ['not a zip', () => Buffer.from('hello').toString('base64'), /not a zip/],
  ])('%s is a 422 on additional_files, and nothing runs', async (_name, make, message) => {
    const { status, body } = await post('/submissions', {
      source_code: 'x',
      language_id: 71,
      additional_files: make(),
    });
    expect(status).toBe(422);
    expect((body as Record<string, string[]>).additional_files?.[0]).toMatch(message);
    expect(t?.engine.calls).toHaveLength(0);
  });

  test('a bomb that lies about its size is stopped while it inflates', () => {
    const bytes = Buffer.from(zipSync({ big: new Uint8Array(64 * 1024 * 1024) }));
    // Rewrite the declared size in the central directory to 1 byte.
    const cd = bytes.lastIndexOf(Buffer.from([0x50, 0x4b, 0x01, 0x02]));
    bytes.writeUInt32LE(1, cd + 24);
    expect(() => unpackAdditionalFiles(bytes)).toThrow(/unpacks to more than/);
  });
});

describe('callbacks, auth, and the system routes', () => {
  test('callback_url gets a PUT of the result (default fields, base64), retried after a failure', async () => {
    const got: { method: string; body: Sub }[] = [];
    let first = true;
    const server = createServer((req: IncomingMessage, res) => {
      let data = '';
      req.on('data', (c: Buffer) => (data += c.toString()));
      req.on('end', () => {
        if (first) {
          first = false;
          res.writeHead(500).end();
          return;
        }
        got.push({ method: req.method ?? '', body: JSON.parse(data) as Sub });
        res.writeHead(200).end();
      });
    });
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
    const port = (server.address() as AddressInfo).port;
    try {
      await app(
        { callbackAllowedHosts: ['127.0.0.1'], egressAllow: ['127.0.0.1'], callbackBackoffMs: 20 },
        greet,
      );
      const { body } = await post('/submissions', {
        source_code: 'x',
        language_id: 71,
        stdin: 'cb',
        callback_url: `http://127.0.0.1:${port}/hook`,
      });
      const token = (body as { token: string }).token;
      for (let i = 0; i < 200 && got.length === 0; i++) await new Promise((r) => setTimeout(r, 10));
      expect(got).toHaveLength(1);
      expect(got[0]?.method).toBe('PUT');
      expect(got[0]?.body).toMatchObject({
        token,
        stdout: Buffer.from('hello, cb\n').toString('base64'),
        status: { id: 3, description: 'Accepted' },
      });
    } finally {
      server.close();
    }
  });

  test('a callback_url to a loopback listener the allow-list does not open: 422, and it receives nothing', async () => {
    let connections = 0;
    const server = createServer((_req, res) => res.writeHead(200).end());
    server.on('connection', () => connections++);
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
    const port = (server.address() as AddressInfo).port;
    try {
      // callbackAllowedHosts names it, but that only narrows: the egress policy still refuses.
      await app({ callbackAllowedHosts: ['127.0.0.1'], callbackBackoffMs: 1 }, greet);
      const { status, body } = await post('/submissions?wait=true', {
        source_code: 'x',
        language_id: 71,
        callback_url: `http://127.0.0.1:${port}/hook`,
      });
      expect(status).toBe(422);
      expect(body).toMatchObject({ callback_url: [expect.stringMatching(/loopback/) as unknown] });
      expect(t?.engine.calls).toHaveLength(0);
    } finally {
      server.close();
    }
    expect(connections).toBe(0);
  });

  test('X-Auth-Token is taken as a key when keys are configured', async () => {
    await app({ apiKeys: ['k1'] });
    expect((await get('/languages')).status).toBe(401);
    expect((await get('/languages')).body).toMatchObject({ error: expect.any(String) as unknown });
    expect((await get('/languages', { 'x-auth-token': 'nope' })).status).toBe(401);
    expect((await get('/languages', { 'x-auth-token': 'k1' })).status).toBe(200);
    const created = await post(
      '/submissions',
      { source_code: 'x', language_id: 71 },
      { 'x-auth-token': 'k1' },
    );
    expect(created.status).toBe(201);
    // X-Auth-Token is Judge0's: the native API does not take it.
    expect((await get('/v1/runtimes', { 'x-auth-token': 'k1' })).status).toBe(401);
  });

  test('languages, statuses, about, config_info, workers', async () => {
    await app();
    const langs = (await get('/languages')).body as { id: number; name: string }[];
    expect(langs.map((l) => l.id)).toEqual([
      45, 46, 50, 51, 54, 55, 56, 57, 58, 59, 60, 61, 62, 63, 64, 65, 66, 67, 68, 69, 71, 72, 73,
      74, 75, 76, 77, 78, 79, 80, 81, 82, 85, 86, 88,
    ]);
    expect(langs.find((l) => l.id === 71)?.name).toBe('Python (3.11.2)');
    expect(langs.find((l) => l.id === 75)?.name).toBe('C (Clang 14.0.6)');
    expect(langs.find((l) => l.id === 51)?.name).toBe('C# (Mono 6.8.0.105)');
    expect((await get('/languages/50')).body).toMatchObject({
      id: 50,
      name: 'C (GCC 12.2.0)',
      is_archived: false,
      source_file: 'main.c',
      run_cmd: './main',
    });
    expect((await get('/languages/9999')).status).toBe(404);
    const statuses = (await get('/statuses')).body as { id: number; description: string }[];
    expect(statuses).toHaveLength(14);
    expect(statuses[13]).toEqual({ id: 14, description: 'Exec Format Error' });
    expect(Object.keys((await get('/about')).body as object).sort()).toEqual([
      'homepage',
      'maintainer',
      'source_code',
      'version',
    ]);
    expect((await get('/config_info')).body).toMatchObject({
      enable_wait_result: true,
      cpu_time_limit: 5,
      max_wall_time_limit: 20,
      allow_enable_network: false,
    });
    expect((await get('/workers')).body).toEqual([
      { queue: 'default', size: 0, available: 2, idle: 2, working: 0, paused: 0, failed: 0 },
    ]);
  });

  test('a host at timeLimitScalePercent scales the time defaults and maxima', async () => {
    await app({ timeLimitScalePercent: 200 });
    expect((await get('/config_info')).body).toMatchObject({
      cpu_time_limit: 10,
      max_cpu_time_limit: 30,
      cpu_extra_time: 2,
      wall_time_limit: 20,
      max_wall_time_limit: 40,
      memory_limit: 128_000,
    });
    const long = await post('/submissions?wait=true', {
      source_code: 'print(1)',
      language_id: 71,
      wall_time_limit: 30,
    });
    expect(long.status).toBe(201);
    const plain = await post('/submissions?wait=true', {
      source_code: 'print(2)',
      language_id: 71,
    });
    expect(plain.status).toBe(201);
    // The job of a submission that named no limit gets the scaled defaults.
    const [named, unnamed] = t?.engine.calls ?? [];
    expect(named?.runLimits?.wallTimeMs).toBe(30_000);
    expect(unnamed?.runLimits).toMatchObject({ wallTimeMs: 20_000, cpuTimeMs: 12_000 });
    const over = await post('/submissions', {
      source_code: 'print(3)',
      language_id: 71,
      wall_time_limit: 41,
    });
    expect(over.body).toEqual({ wall_time_limit: ['must be less than or equal to 40'] });
  });

  test('under a prefix when one is configured', async () => {
    await app({ judge0Prefix: '/judge0/' });
    expect((await get('/judge0/statuses')).status).toBe(200);
    expect((await get('/statuses')).status).toBe(404);
  });
});

describe('enable_network', () => {
  test('where the operator allows network, enable_network asks the engine for a networked VM', async () => {
    await app({ networkEnabled: true });
    const on = await post('/submissions?wait=true', {
      source_code: 'print(1)',
      language_id: 71,
      enable_network: true,
    });
    expect(on.status).toBe(201);
    const off = await post('/submissions?wait=true', { source_code: 'print(2)', language_id: 71 });
    expect(off.status).toBe(201);
    expect(t?.engine.calls.map((c) => c.network === true)).toEqual([true, false]);
    expect((await get('/config_info')).body).toMatchObject({ allow_enable_network: true });
  });
});
