import { createServer, request } from 'node:http';
import type { AddressInfo } from 'node:net';
import { strToU8, zipSync } from 'fflate';
import { afterAll, beforeAll, describe, expect, test } from 'vitest';
import { serverSkipReason, startPrivateServer, type PrivateServer } from '../../support/server.js';
import { ensureImages } from '../../support/vm.js';

/**
 * The Judge0-compatible API end to end: `startServer` with the real engine, python and c only,
 * over real HTTP, Judge0's requests sent as its documentation shows them. Images come from
 * the shared test data folder; snapshots, run dirs and the job store are private. VMs: a cold
 * boot per language for its snapshot, then one restore per job (a custom checker is a job of
 * its own, in its own VM).
 */
const reason = serverSkipReason();
if (reason !== null) console.warn(`tests/integration/api/judge0 skipped: ${reason}`);

interface Submission {
  token?: string;
  stdout?: string | null;
  stderr?: string | null;
  compile_output?: string | null;
  message?: string | null;
  status?: { id: number; description: string };
  time?: string | null;
  memory?: number | null;
}

/** The C program of Judge0's documentation: reads a name, greets it. */
/** The API key of this server: Judge0 clients send it as X-Auth-Token. */
const KEY = 'judge0-it-key-0123456789';
const AUTH = { 'x-auth-token': KEY, 'x-api-key': KEY };

const HELLO_C =
  '#include <stdio.h>\n\nint main(void) {\n  char name[10];\n  scanf("%s", name);\n  printf("hello, %s\\n", name);\n  return 0;\n}';

describe.skipIf(reason !== null)('the Judge0 API with real VMs', () => {
  let fixture: PrivateServer | undefined;

  beforeAll(async () => {
    await ensureImages(['python', 'c']);
    // Keys on: every Judge0 request below carries X-Auth-Token, as Judge0's clients do. The
    // callback test's listener is on loopback, which the egress policy refuses unless the
    // allow-list opens it.
    fixture = await startPrivateServer('judge0-it-', {
      apiKeys: [KEY],
      egressAllow: ['127.0.0.1'],
    });
  }, 900_000);

  afterAll(async () => {
    // Every VM was destroyed: nothing is left in the private run dir.
    if (fixture) expect(await fixture.close()).toEqual([]);
  });

  const url = (path: string): string => {
    if (!fixture) throw new Error('the server did not start');
    return fixture.url(path);
  };
  const post = async (path: string, body: unknown) => {
    const res = await fetch(url(path), {
      method: 'POST',
      headers: { 'content-type': 'application/json', ...AUTH },
      body: JSON.stringify(body),
    });
    return { status: res.status, body: await res.json() };
  };
  const get = async (path: string) => {
    const res = await fetch(url(path), { headers: AUTH });
    return { status: res.status, body: await res.json() };
  };
  const b64 = (s: string): string => Buffer.from(s).toString('base64');

  test('wait=true: the documented C request is Accepted, with time and memory', async () => {
    const { status, body } = await post('/submissions?wait=true', {
      source_code: HELLO_C,
      language_id: 50,
      stdin: 'Judge0',
      expected_output: 'hello, Judge0',
    });
    expect(status).toBe(201);
    const s = body as Submission;
    expect(s).toMatchObject({
      stdout: 'hello, Judge0\n',
      stderr: null,
      compile_output: null,
      status: { id: 3, description: 'Accepted' },
    });
    expect(s.time).toMatch(/^\d+\.\d{3}$/);
    expect(s.memory).toBeGreaterThan(0);
  }, 600_000);

  test('a wrong answer is 4 with the program output', async () => {
    const { body } = await post('/submissions?wait=true', {
      source_code: 'print(input()[::-1])',
      language_id: 71,
      stdin: 'abc',
      expected_output: 'abc',
    });
    expect(body).toMatchObject({ stdout: 'cba\n', status: { id: 4, description: 'Wrong Answer' } });
  }, 600_000);

  test('a C compilation error is 6 with the compiler output', async () => {
    const { body } = await post('/submissions?wait=true', {
      source_code: 'int main( { return 0; }',
      language_id: 50,
    });
    const s = body as Submission;
    expect(s.status).toEqual({ id: 6, description: 'Compilation Error' });
    expect(s.compile_output).toMatch(/error/);
    expect(s.stdout).toBeNull();
  }, 600_000);

  test('base64 in and out, then polled by token', async () => {
    const { status, body } = await post('/submissions?base64_encoded=true', {
      source_code: b64('import sys\nprint(input())\nprint("e", file=sys.stderr)'),
      language_id: 71,
      stdin: b64('héllo'),
      expected_output: b64('héllo'),
    });
    expect(status).toBe(201);
    const token = (body as Submission).token ?? '';
    let s: Submission = {};
    for (let i = 0; i < 600; i++) {
      s = (await get(`/submissions/${token}?base64_encoded=true`)).body as Submission;
      if ((s.status?.id ?? 1) > 2) break;
      await new Promise((r) => setTimeout(r, 500));
    }
    expect(s).toMatchObject({
      stdout: b64('héllo\n'),
      stderr: b64('e\n'),
      status: { id: 3 },
    });
  }, 600_000);

  test('a batch: tokens in order, read back together', async () => {
    const { status, body } = await post('/submissions/batch', {
      submissions: [
        { language_id: 71, source_code: 'print("hello from Python")' },
        { language_id: 50, source_code: '#include <stdio.h>\nint main(){puts("hello from C");}' },
      ],
    });
    expect(status).toBe(201);
    const tokens = (body as { token: string }[]).map((x) => x.token);
    let list: (Submission | null)[] = [];
    for (let i = 0; i < 600; i++) {
      const got = await get(
        `/submissions/batch?tokens=${tokens.join(',')}&fields=token,stdout,status`,
      );
      list = (got.body as { submissions: (Submission | null)[] }).submissions;
      if (list.every((x) => (x?.status?.id ?? 1) > 2)) break;
      await new Promise((r) => setTimeout(r, 500));
    }
    expect(list).toEqual([
      {
        token: tokens[0],
        stdout: 'hello from Python\n',
        status: { id: 3, description: 'Accepted' },
      },
      { token: tokens[1], stdout: 'hello from C\n', status: { id: 3, description: 'Accepted' } },
    ]);
  }, 900_000);

  test('a batch of one C source with three stdins compiles once; each token has its own run', async () => {
    // The #warning makes the compile stage print something, the same for all three.
    const source =
      '#warning "compiled once"\n#include <stdio.h>\nint main(void){int n;if(scanf("%d",&n)!=1)return 1;printf("%d\\n",n*n);return 0;}';
    const { status, body } = await post('/submissions/batch', {
      submissions: ['2', '3', '4'].map((stdin, i) => ({
        language_id: 50,
        source_code: source,
        stdin,
        expected_output: i === 1 ? '10' : String(Number(stdin) ** 2),
      })),
    });
    expect(status).toBe(201);
    const tokens = (body as { token: string }[]).map((x) => x.token);
    expect(new Set(tokens).size).toBe(3);
    let list: (Submission | null)[] = [];
    for (let i = 0; i < 600; i++) {
      const got = await get(
        `/submissions/batch?tokens=${tokens.join(',')}&fields=token,stdout,compile_output,status`,
      );
      list = (got.body as { submissions: (Submission | null)[] }).submissions;
      if (list.every((x) => (x?.status?.id ?? 1) > 2)) break;
      await new Promise((r) => setTimeout(r, 500));
    }
    expect(list.map((x) => [x?.token, x?.stdout, x?.status?.description])).toEqual([
      [tokens[0], '4\n', 'Accepted'],
      [tokens[1], '9\n', 'Wrong Answer'],
      [tokens[2], '16\n', 'Accepted'],
    ]);
    const compileOutput = list[0]?.compile_output;
    expect(compileOutput).toMatch(/compiled once/);
    expect(list.map((x) => x?.compile_output)).toEqual([
      compileOutput,
      compileOutput,
      compileOutput,
    ]);
    // One compile, one VM: the three records share the compile stage and the job's timings,
    // to the millisecond, which three separate jobs would not.
    const records = await Promise.all(tokens.map((tk) => get(`/v1/jobs/${tk}`)));
    const shared = records.map((r) => {
      const result = (r.body as { result: { compile: unknown; timings: unknown } }).result;
      return { compile: result.compile, timings: result.timings };
    });
    expect(shared[1]).toEqual(shared[0]);
    expect(shared[2]).toEqual(shared[0]);
  }, 900_000);

  test('a custom checker in python judges a C program, in a VM of its own', async () => {
    const checker = {
      kind: 'custom',
      language: 'python',
      source: [
        'import sys',
        'inp, exp, act = (open(p).read() for p in sys.argv[1:4])',
        'a, b = map(int, inp.split())',
        'print("AC" if int(act) == a + b == int(exp) else "WA")',
        'print("sum of", a, b)',
      ].join('\n'),
    };
    const { status, body } = await post('/v1/execute', {
      language: 'c',
      files: [
        {
          content:
            '#include <stdio.h>\nint main(){int a,b;scanf("%d %d",&a,&b);printf("%d\\n",a*b==4?a+b:a*b);}',
        },
      ],
      testCases: [
        { stdin: '2 2', expectedOutput: '4', compare: checker },
        { stdin: '2 3', expectedOutput: '5', compare: checker },
      ],
    });
    expect(status).toBe(200);
    const cases = (
      body as { testCases: { verdict?: string; checkerMessage?: string; passed: boolean }[] }
    ).testCases;
    expect(cases.map((c) => c.verdict)).toEqual(['accepted', 'wrong_answer']);
    expect(cases[1]?.checkerMessage).toBe('sum of 2 3');
  }, 900_000);

  test('without X-Auth-Token nothing runs: 401', async () => {
    const res = await fetch(url('/submissions?wait=true'), {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ source_code: 'print(1)', language_id: 71 }),
    });
    expect(res.status).toBe(401);
  });

  test("time limit, NZEC and SIGSEGV get Judge0's statuses 5, 11 and 7", async () => {
    const tle = await post('/submissions?wait=true', {
      source_code: 'while True: pass',
      language_id: 71,
      cpu_time_limit: 1,
      wall_time_limit: 5,
    });
    expect((tle.body as Submission).status).toEqual({ id: 5, description: 'Time Limit Exceeded' });
    const nzec = await post('/submissions?wait=true&fields=status,exit_code', {
      source_code: 'import sys\nsys.exit(3)',
      language_id: 71,
    });
    expect(nzec.body).toMatchObject({ status: { id: 11 }, exit_code: 3 });
    const segv = await post('/submissions?wait=true&fields=status,exit_signal', {
      source_code: '#include <signal.h>\nint main(void){raise(SIGSEGV);return 0;}',
      language_id: 50,
    });
    expect(segv.body).toMatchObject({ status: { id: 7 }, exit_signal: 11 });
  }, 900_000);

  test('additional_files: a zip unpacked into the work dir, read by the program', async () => {
    const zip = zipSync({ 'data/input.txt': strToU8('from the zip\n') });
    const { body } = await post('/submissions?wait=true', {
      source_code: 'print(open("data/input.txt").read().strip())',
      language_id: 71,
      additional_files: Buffer.from(zip).toString('base64'),
    });
    expect(body).toMatchObject({ stdout: 'from the zip\n', status: { id: 3 } });
    const evil = zipSync({ '../escape.txt': strToU8('x') });
    const refused = await post('/submissions', {
      source_code: 'print(1)',
      language_id: 71,
      additional_files: Buffer.from(evil).toString('base64'),
    });
    expect(refused.status).toBe(422);
  }, 900_000);

  test('callback_url: the result is PUT to it when the submission ends', async () => {
    const received: { method: string; body: Submission }[] = [];
    const listener = createServer((req, res) => {
      let data = '';
      req.on('data', (c: Buffer) => (data += c.toString()));
      req.on('end', () => {
        received.push({ method: req.method ?? '', body: JSON.parse(data) as Submission });
        res.end('ok');
      });
    });
    await new Promise<void>((r) => listener.listen(0, '127.0.0.1', r));
    try {
      const port = (listener.address() as AddressInfo).port;
      const { status, body } = await post('/submissions', {
        source_code: 'print("called back")',
        language_id: 71,
        callback_url: `http://127.0.0.1:${port}/judge0`,
      });
      expect(status).toBe(201);
      const token = (body as { token: string }).token;
      for (let i = 0; i < 600 && received.length === 0; i++)
        await new Promise((r) => setTimeout(r, 200));
      expect(received[0]?.method).toBe('PUT');
      // Judge0 sends the callback in its default fields, base64-encoded.
      expect(received[0]?.body).toMatchObject({
        token,
        stdout: b64('called back\n'),
        status: { id: 3, description: 'Accepted' },
      });
    } finally {
      listener.close();
    }
  }, 900_000);

  test('Piston clients: a JSON body sent as text/plain, and with no content type, runs', async () => {
    const body = JSON.stringify({
      language: 'python',
      version: '*',
      files: [{ content: 'print("piston ok")' }],
    });
    const plain = await fetch(url('/api/v2/execute'), {
      method: 'POST',
      headers: { 'content-type': 'text/plain;charset=UTF-8', authorization: `Bearer ${KEY}` },
      body,
    });
    expect(plain.status).toBe(200);
    expect(((await plain.json()) as { run: { stdout: string } }).run.stdout).toBe('piston ok\n');
    // No content type at all (node:http sends none unless asked).
    const bare = await new Promise<{ status: number; text: string }>((resolve, reject) => {
      const req = request(
        url('/api/v2/execute'),
        {
          method: 'POST',
          headers: { authorization: `Bearer ${KEY}`, 'content-length': Buffer.byteLength(body) },
        },
        (res) => {
          let text = '';
          res.on('data', (c: Buffer) => (text += c.toString()));
          res.on('end', () => resolve({ status: res.statusCode ?? 0, text }));
        },
      );
      req.on('error', reject);
      req.end(body);
    });
    expect(bare.status).toBe(200);
    expect((JSON.parse(bare.text) as { run: { stdout: string } }).run.stdout).toBe('piston ok\n');
  }, 900_000);

  test('every built-in checker judges real output, compiled and run once for all cases', async () => {
    // The program prints its stdin back with its letters upper-cased and a float rounded.
    const program = [
      'import sys',
      'text = sys.stdin.read()',
      'if text.startswith("f "):',
      '    print("%.4f" % float(text[2:]))',
      'else:',
      '    print("  ".join(text.upper().split()) + "  ")',
    ].join('\n');
    const cases: [string, string, unknown, boolean][] = [
      ['a b', 'A  B  \n', 'exact', true],
      ['a b', 'A  B', 'exact', false],
      ['a b', 'A  B', 'trim-trailing', true],
      ['a b', '\nA  B\n\n', 'trim', true],
      ['a b', 'A B', 'tokens', true],
      ['a b', 'a  b', 'case-insensitive', true],
      ['f 3.14159265', '3.1416', { kind: 'float', absTolerance: 1e-3 }, true],
      ['f 3.14159265', '3.2', { kind: 'float', absTolerance: 1e-3 }, false],
      ['a b', '', { kind: 'regex', pattern: '^A +B *$' }, true],
      ['a b', '', { kind: 'regex', pattern: '^B' }, false],
    ];
    const { status, body } = await post('/v1/execute', {
      language: 'python',
      files: [{ content: program }],
      testCases: cases.map(([stdin, expectedOutput, compare]) => ({
        stdin,
        expectedOutput,
        compare,
      })),
    });
    expect(status).toBe(200);
    const results = (body as { testCases: { passed: boolean; firstDifference?: unknown }[] })
      .testCases;
    expect(results.map((r) => r.passed)).toEqual(cases.map((c) => c[3]));
    // A mismatch says where: the first differing line.
    expect(results[1]?.firstDifference).toMatchObject({ line: 1 });
  }, 900_000);
});
