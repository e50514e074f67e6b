import { createServer, type IncomingMessage } from 'node:http';
import type { AddressInfo } from 'node:net';
import { afterEach, describe, expect, test } from 'vitest';
import { CallbackSender } from '../../../src/api/callbacks.js';
import type { ExecuteResponse, JobView } from '../../../src/api/schemas.js';
import { EgressPolicy } from '../../../src/net/index.js';
import {
  FakeEngine,
  gate,
  makeApp,
  pyJob,
  stage,
  type ErrorBody,
  type TestApp,
} from './helpers.js';

let t: TestApp | undefined;
/** The app of the running test. */
function cur(): TestApp {
  if (!t) throw new Error('no app yet');
  return t;
}
afterEach(async () => {
  await t?.close();
  t = undefined;
});

async function post(url: string, payload: unknown, headers: Record<string, string> = {}) {
  if (!t) t = await makeApp();
  return t.app.inject({
    method: 'POST',
    url,
    payload: payload as Record<string, unknown>,
    headers,
  });
}

describe('POST /v1/execute', () => {
  test('runs a job and returns its result, output as base64 and as text', async () => {
    const res = await post('/v1/execute', pyJob({ stdin: 'hello' }));
    expect(res.statusCode).toBe(200);
    const body = res.json<ExecuteResponse>();
    expect(body).toMatchObject({
      language: 'python',
      version: '3.11.2',
      status: 'ok',
      compile: null,
    });
    expect(body.run?.stdout).toBe(Buffer.from('hello').toString('base64'));
    expect(body.run?.stdoutText).toBe('hello');
    expect(body.timings).toMatchObject({ totalMs: 20, poolHit: true });
    // What the engine got: the file, stdin as bytes.
    const call = cur().engine.calls[0];
    expect(call?.files[0]).toEqual({ content: 'print(input())' });
    expect(call?.stdin?.toString()).toBe('hello');
  });

  test('aliases, base64 stdin, args, env and limits reach the engine', async () => {
    const res = await post('/v1/execute', {
      language: 'py3',
      version: '3.x',
      files: [
        { name: 'main.py', content: Buffer.from('x').toString('base64'), encoding: 'base64' },
        { name: 'lib/util.py', content: '' },
      ],
      stdin: Buffer.from([0, 1, 2]).toString('base64'),
      stdinEncoding: 'base64',
      args: ['a', 'b'],
      env: { FOO: 'bar' },
      runLimits: { wallTimeMs: 2000, memoryMib: 128 },
    });
    expect(res.statusCode).toBe(200);
    const call = cur().engine.calls[0];
    expect(call?.stdin).toEqual(Buffer.from([0, 1, 2]));
    expect(call?.args).toEqual(['a', 'b']);
    expect(call?.env).toEqual({ FOO: 'bar' });
    expect(call?.runLimits).toEqual({ wallTimeMs: 2000, memoryMib: 128 });
  });

  test('output that is not UTF-8 has null text, bytes intact', async () => {
    t = await makeApp();
    t.engine.behavior = () => ({ run: stage({ out: Buffer.from([0xff, 0xfe, 0x41]) }) });
    const body = (await post('/v1/execute', pyJob())).json<ExecuteResponse>();
    expect(body.run?.stdoutText).toBeNull();
    expect(Buffer.from(body.run?.stdout ?? '', 'base64')).toEqual(Buffer.from([0xff, 0xfe, 0x41]));
  });

  test('a failing program is a 200 result with its status', async () => {
    t = await makeApp();
    t.engine.behavior = () => ({
      status: 'runtime_error',
      run: stage({ status: 'runtime_error', exitCode: 3, err: 'boom' }),
    });
    const res = await post('/v1/execute', pyJob());
    expect(res.statusCode).toBe(200);
    expect(res.json<ExecuteResponse>()).toMatchObject({
      status: 'runtime_error',
      run: { exitCode: 3, stderrText: 'boom' },
    });
  });

  test('an engine failure is a sandbox_error result, never a 500', async () => {
    t = await makeApp();
    t.engine.behavior = () => {
      throw new Error('the VM died');
    };
    const res = await post('/v1/execute', pyJob());
    expect(res.statusCode).toBe(200);
    expect(res.json<ExecuteResponse>()).toMatchObject({
      status: 'sandbox_error',
      run: { status: 'sandbox_error', message: 'the VM died' },
    });
  });

  test.each([
    ['an unknown field', pyJob({ bogus: 1 }), /unknown field "bogus"/],
    [
      'an unknown field in a file',
      { language: 'python', files: [{ content: '', mode: 755 }] },
      /files\[0\] has an unknown field "mode"/,
    ],
    ['a missing language', { files: [{ content: '' }] }, /missing the field "language"/],
    ['no files', { language: 'python', files: [] }, /files must NOT have fewer than 1 items/],
    ['a wrong type', pyJob({ args: 'x' }), /args must be array/],
    [
      'a bad encoding',
      { language: 'python', files: [{ content: '', encoding: 'hex' }] },
      /must be one of "utf8", "base64"/,
    ],
    ['a negative limit', pyJob({ runLimits: { wallTimeMs: -5 } }), /wallTimeMs must be >= 1/],
    [
      'a limit over the server maximum',
      pyJob({ runLimits: { wallTimeMs: 500_000 } }),
      /over the server maximum/,
    ],
    ['a fractional limit', pyJob({ runLimits: { memoryMib: 1.5 } }), /memoryMib must be integer/],
    ['an unknown limit', pyJob({ runLimits: { gpus: 1 } }), /unknown field "gpus"/],
    ['an unknown language', pyJob({ language: 'klingon' }), /unknown language "klingon"/],
    ['a version not installed', pyJob({ version: '2.7' }), /not "2.7"/],
    [
      'a file name with ..',
      { language: 'python', files: [{ name: '../x.py', content: '' }] },
      /files\[0\]\.name "\.\.\/x\.py" has a `\.\.` component/,
    ],
    [
      'an absolute file name',
      { language: 'python', files: [{ name: '/etc/passwd', content: '' }] },
      /is absolute/,
    ],
    [
      'two files with one name',
      {
        language: 'python',
        files: [
          { name: 'a.py', content: '' },
          { name: 'a.py', content: '' },
        ],
      },
      /files\[1\]\.name "a\.py" is also files\[0\]\.name/,
    ],
    [
      'bad base64 content',
      { language: 'python', files: [{ content: '***', encoding: 'base64' }] },
      /not valid base64/,
    ],
    [
      'bad base64 stdin',
      pyJob({ stdin: '***', stdinEncoding: 'base64' }),
      /stdin is not valid base64/,
    ],
    ['a bad env name', pyJob({ env: { 'A-B': '1' } }), /env/],
    ['a body that is not an object', [1, 2], /body must be object/],
  ])('%s is a 400 that says what is wrong, and runs nothing', async (_name, body, message) => {
    const res = await post('/v1/execute', body);
    expect(res.statusCode).toBe(400);
    const json = res.json<ErrorBody>();
    expect(json.message).toMatch(message);
    expect(json.statusCode).toBe(400);
    expect(json.code).toMatch(/^[A-Z_]+$/);
    expect(cur().engine.calls).toHaveLength(0);
  });

  // Each of these used to pass the API, reach a VM and come back as 200 sandbox_error (the
  // agent refused them). The host now checks with the agent's own schema and rules.
  test.each([
    [
      'a path 17 components deep',
      {
        language: 'python',
        files: [{ content: '' }, { name: `${'d/'.repeat(16)}x.py`, content: '' }],
      },
      'FILE_NAME_INVALID',
      /files\[1\]\.name .* is nested deeper than 16/,
    ],
    [
      'a name component of 300 bytes',
      {
        language: 'python',
        files: [{ content: '' }, { name: `${'n'.repeat(300)}.py`, content: '' }],
      },
      'FILE_NAME_INVALID',
      /files\[1\]\.name .* has a component over 255 bytes/,
    ],
    [
      'files named both a and a/b',
      {
        language: 'python',
        files: [{ content: '' }, { name: 'a', content: '' }, { name: 'a/b', content: '' }],
      },
      'FILE_NAME_INVALID',
      /files\[1\]\.name "a" is also a folder of files\[2\]\.name/,
    ],
    [
      'a NUL in an env value',
      pyJob({ env: { A: 'x\u0000y' } }),
      'ENV_INVALID',
      /env\."A": the value holds a NUL/,
    ],
    [
      'a NUL in an argument',
      pyJob({ args: ['ok', 'x\u0000y'] }),
      'ARGS_INVALID',
      /args\[1\] holds a NUL/,
    ],
    [
      'base64 of a length 4n+1',
      { language: 'python', files: [{ content: 'QUJDR', encoding: 'base64' }] },
      'ENCODING_INVALID',
      /files\[0\]\.content is not valid base64/,
    ],
    [
      'args over the exec limit together',
      pyJob({ args: Array.from({ length: 20 }, () => 'a'.repeat(60_000)) }),
      'ARGS_INVALID',
      /args and env take \d+ bytes of the exec limit together/,
    ],
  ])('%s is a 400 naming the field, before any VM', async (_name, body, code, message) => {
    const res = await post('/v1/execute', body);
    expect(res.statusCode).toBe(400);
    const json = res.json<ErrorBody>();
    expect(json.code).toBe(code);
    expect(json.message).toMatch(message);
    expect(cur().engine.calls).toHaveLength(0);
  });

  test('a 304-character path the agent takes is taken here too', async () => {
    const name = `${'p'.repeat(150)}/${'q'.repeat(150)}.py`;
    const res = await post('/v1/execute', {
      language: 'python',
      files: [{ content: 'print(1)' }, { name, content: '' }],
    });
    expect(res.statusCode).toBe(200);
    expect(cur().engine.jobs[0]?.message.files[1]?.name).toBe(name);
  });

  test('invalid JSON and an empty body are 400s', async () => {
    t = await makeApp();
    for (const payload of ['{"language":', '']) {
      const res = await t.app.inject({
        method: 'POST',
        url: '/v1/execute',
        payload,
        headers: { 'content-type': 'application/json' },
      });
      expect(res.statusCode).toBe(400);
      expect(res.json<ErrorBody>().code).toBe('REQUEST_INVALID');
    }
  });

  test('a body that is not JSON is a 415', async () => {
    t = await makeApp();
    for (const type of [
      'text/plain',
      'application/x-www-form-urlencoded',
      'application/xml',
      'multipart/form-data; boundary=x',
    ]) {
      const res = await t.app.inject({
        method: 'POST',
        url: '/v1/execute',
        payload: 'language=python',
        headers: { 'content-type': type },
      });
      expect(res.statusCode, type).toBe(415);
      expect(res.json<ErrorBody>().code).toBe('CONTENT_TYPE_UNSUPPORTED');
    }
    expect(t.engine.calls).toHaveLength(0);
  });
});

describe('test cases', () => {
  test('each case runs with its own stdin and gets a verdict', async () => {
    const res = await post(
      '/v1/execute',
      pyJob({
        testCases: [
          { stdin: 'a', expectedOutput: 'a' },
          { stdin: 'b  \n\n', expectedOutput: 'b' },
          { stdin: 'b \n', expectedOutput: 'b\n', compare: 'exact' },
          { stdin: 'c', expectedOutput: 'd' },
        ],
      }),
    );
    expect(res.statusCode).toBe(200);
    const body = res.json<ExecuteResponse>();
    expect(body.testCases?.map((c) => c.passed)).toEqual([true, true, false, false]);
    expect(body.summary).toEqual({ total: 4, passed: 2, failed: 2 });
    expect(body.status).toBe('ok');
    // One job: compiled once, one run per case with its own stdin.
    expect(cur().engine.calls).toHaveLength(1);
    expect(cur().engine.calls[0]?.cases?.map((c) => c.toString())).toEqual([
      'a',
      'b  \n\n',
      'b \n',
      'c',
    ]);
  });

  test('a compile error stops the cases after the first', async () => {
    t = await makeApp();
    t.engine.behavior = () => ({
      compile: stage({ status: 'compile_error', exitCode: 1, err: 'main.c:1: error' }),
      run: null,
    });
    const res = await post('/v1/execute', {
      language: 'c',
      files: [{ content: 'int main(' }],
      testCases: [{ expectedOutput: '1' }, { expectedOutput: '2' }],
    });
    const body = res.json<ExecuteResponse>();
    expect(body.status).toBe('compile_error');
    expect(body.compile?.stderrText).toBe('main.c:1: error');
    expect(body.testCases).toMatchObject([
      { index: 0, status: 'compile_error', passed: false },
      { index: 1, status: 'compile_error', passed: false, run: null },
    ]);
    expect(t.engine.calls).toHaveLength(1);
  });

  test('a runtime error fails the case and sets the overall status', async () => {
    t = await makeApp();
    t.engine.behavior = (r) =>
      r.stdin?.toString() === 'bad'
        ? { run: stage({ status: 'timeout', signal: 'SIGKILL', exitCode: null }) }
        : { run: stage({ out: 'ok' }) };
    const body = (
      await post(
        '/v1/execute',
        pyJob({
          testCases: [
            { stdin: 'x', expectedOutput: 'ok' },
            { stdin: 'bad', expectedOutput: 'ok' },
          ],
        }),
      )
    ).json<ExecuteResponse>();
    expect(body.testCases?.map((c) => c.status)).toEqual(['ok', 'timeout']);
    expect(body.status).toBe('timeout');
    expect(body.summary?.passed).toBe(1);
  });

  test('stdin beside testCases is a 400', async () => {
    const res = await post(
      '/v1/execute',
      pyJob({ stdin: 'x', testCases: [{ expectedOutput: '' }] }),
    );
    expect(res.statusCode).toBe(400);
  });
});

describe('jobs: submit, poll, callback', () => {
  test('POST /v1/jobs answers 202 with an id at once; GET follows it to done', async () => {
    t = await makeApp();
    const g = gate();
    t.engine.behavior = async (r) => {
      await g.promise;
      return { run: stage({ out: r.stdin ?? '' }) };
    };
    const res = await t.app.inject({
      method: 'POST',
      url: '/v1/jobs',
      payload: pyJob({ stdin: 'later' }),
    });
    expect(res.statusCode).toBe(202);
    const { id, url } = res.json<{ id: string; url: string }>();
    expect(res.headers.location).toBe(url);
    let job = (await t.app.inject({ method: 'GET', url })).json<JobView>();
    expect(job.id).toBe(id);
    expect(['queued', 'running']).toContain(job.state);
    expect(job.result).toBeNull();
    g.open();
    await expect
      .poll(async () => (await cur().app.inject({ method: 'GET', url })).json<JobView>().state)
      .toBe('done');
    job = (await t.app.inject({ method: 'GET', url })).json<JobView>();
    expect(job).toMatchObject({
      state: 'done',
      status: 'ok',
      result: { id, status: 'ok', run: { stdoutText: 'later' } },
    });
    expect(job.finishedAt).toMatch(/^\d{4}-/);
  });

  test('an unknown job is a 404', async () => {
    t = await makeApp();
    const res = await t.app.inject({ method: 'GET', url: '/v1/jobs/nope' });
    expect(res.statusCode).toBe(404);
    expect(res.json<ErrorBody>().code).toBe('JOB_NOT_FOUND');
  });

  test('a bad job is refused with 400 and no record', async () => {
    t = await makeApp();
    const res = await t.app.inject({
      method: 'POST',
      url: '/v1/jobs',
      payload: pyJob({ language: 'klingon' }),
    });
    expect(res.statusCode).toBe(400);
    expect(t.jobStore.counts()).toEqual({ queued: 0, running: 0, done: 0 });
  });

  test('the result is POSTed to the callbackUrl, retried after a failure', async () => {
    const received: unknown[] = [];
    let hits = 0;
    const server = createServer((req: IncomingMessage, res) => {
      let data = '';
      req.on('data', (c: Buffer) => (data += c.toString()));
      req.on('end', () => {
        hits++;
        if (hits === 1) {
          res.statusCode = 500;
          res.end();
          return;
        }
        received.push(JSON.parse(data));
        res.end('ok');
      });
    });
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
    try {
      const port = (server.address() as AddressInfo).port;
      t = await makeApp({
        // The listener is loopback: the egress allow-list must open it.
        settings: {
          callbackAllowedHosts: ['127.0.0.1'],
          egressAllow: ['127.0.0.1'],
          callbackBackoffMs: 20,
        },
      });
      const res = await t.app.inject({
        method: 'POST',
        url: '/v1/jobs',
        payload: pyJob({ stdin: 'cb', callbackUrl: `http://127.0.0.1:${port}/hook` }),
      });
      expect(res.statusCode).toBe(202);
      await expect.poll(() => received.length, { timeout: 5000 }).toBe(1);
      expect(hits).toBe(2);
      expect(received[0]).toMatchObject({
        id: res.json<{ id: string }>().id,
        state: 'done',
        result: { run: { stdoutText: 'cb' } },
      });
    } finally {
      await t?.close();
      t = undefined;
      await new Promise((r) => server.close(r));
    }
  });

  test.each([
    ['file:///etc/passwd', /must be http or https/],
    ['gopher://127.0.0.1/', /must be http or https/],
    ['http://169.254.169.254/latest/meta-data', /is not allowed/],
    ['http://user:pw@127.0.0.1/', /credentials/],
    ['not a url', /is not a URL/],
  ])('callbackUrl %s is a 400', async (url, message) => {
    t = await makeApp({ settings: { callbackAllowedHosts: ['127.0.0.1'] } });
    const res = await t.app.inject({
      method: 'POST',
      url: '/v1/jobs',
      payload: pyJob({ callbackUrl: url }),
    });
    expect(res.statusCode).toBe(400);
    expect(res.json<ErrorBody>().code).toBe('CALLBACK_URL_INVALID');
    expect(res.json<ErrorBody>().message).toMatch(message);
  });

  test.each([
    ['http://127.0.0.1:9/', /127\.0\.0\.1 is refused by the egress policy: loopback/],
    ['http://[::ffff:127.0.0.1]/', /::ffff:7f00:1 is refused .*IPv4-mapped 127\.0\.0\.1/],
    ['http://2130706433/', /127\.0\.0\.1 is refused/],
    ['http://0x7f.1/', /127\.0\.0\.1 is refused/],
    ['http://10.0.0.1/', /private/],
    ['http://169.254.169.254/latest/meta-data', /cloud metadata/],
    ['http://[fd00:ec2::254]/', /AWS IPv6 metadata/],
    ['http://localhost:9/', /localhost is refused/],
  ])(
    'callbackUrl %s (a refused address) is a 400 EGRESS_DENIED naming the field',
    async (url, why) => {
      t = await makeApp();
      const res = await t.app.inject({
        method: 'POST',
        url: '/v1/jobs',
        payload: pyJob({ callbackUrl: url }),
      });
      expect(res.statusCode).toBe(400);
      expect(res.json<ErrorBody>().code).toBe('EGRESS_DENIED');
      expect(res.json<ErrorBody>().message).toMatch(/^callbackUrl host /);
      expect(res.json<ErrorBody>().message).toMatch(why);
      expect(t.jobStore.counts()).toEqual({ queued: 0, running: 0, done: 0 });
    },
  );

  test('a loopback listener the allow-list does not open receives nothing (refused at connect, not retried)', async () => {
    // A host name (no literal, so the submit check passes) whose injected resolution is the
    // listener's own loopback address: only the connect-time check stands in the way.
    let connections = 0;
    const server = createServer((_req, res) => res.end('ok'));
    server.on('connection', () => connections++);
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
    const port = (server.address() as AddressInfo).port;
    const warnings: string[] = [];
    const resolved: string[] = [];
    const egress = new EgressPolicy({
      resolve: (host) => {
        resolved.push(host);
        return Promise.resolve([{ address: '127.0.0.1', family: 4 }]);
      },
    });
    const sender = new CallbackSender({
      attempts: 5,
      backoffMs: 1,
      timeoutMs: 2000,
      egress,
      log: (m) => warnings.push(m),
    });
    try {
      expect(await sender.send(`http://hook.test:${port}/hook`, { x: 1 })).toBe(false);
      expect(connections).toBe(0);
      expect(resolved).toEqual(['hook.test']); // one try: a refusal is final
      expect(warnings).toHaveLength(1);
      expect(warnings[0]).toMatch(
        /refused, not retried: egress to 127\.0\.0\.1 \(hook\.test\) refused: loopback/,
      );
    } finally {
      await sender.close(0);
      await new Promise((r) => server.close(r));
    }
  });
});

describe('runtimes, limits, health, metrics', () => {
  test('GET /v1/runtimes lists every language with readiness', async () => {
    t = await makeApp();
    const list = (await t.app.inject({ method: 'GET', url: '/v1/runtimes' })).json<
      {
        language: string;
        aliases: string[];
        imageReady: boolean;
        snapshotReady: boolean;
        compiled: boolean;
      }[]
    >();
    const python = list.find((r) => r.language === 'python');
    expect(python).toMatchObject({
      version: '3.11.2',
      compiled: false,
      imageReady: true,
      snapshotReady: false,
    });
    expect(python?.aliases).toContain('py');
    expect(list.find((r) => r.language === 'rust')).toMatchObject({
      compiled: true,
      imageReady: false,
    });
  });

  test('snapshotReady is what the engine says (the API reads no pool files)', async () => {
    const engine = new FakeEngine();
    engine.snapshotted.add('python');
    t = await makeApp({ engine });
    const list = (await t.app.inject({ method: 'GET', url: '/v1/runtimes' })).json<
      { language: string; snapshotReady: boolean }[]
    >();
    expect(list.find((r) => r.language === 'python')?.snapshotReady).toBe(true);
  });

  test('GET /v1/limits gives defaults, maxima and caps', async () => {
    t = await makeApp({ settings: { maxFiles: 7 } });
    const body = (await t.app.inject({ method: 'GET', url: '/v1/limits' })).json<{
      defaults: { run: { wallTimeMs: number } };
      maxima: { run: { wallTimeMs: number } };
      caps: { maxFiles: number };
    }>();
    expect(body.maxima.run.wallTimeMs).toBeGreaterThan(body.defaults.run.wallTimeMs);
    expect(body.caps.maxFiles).toBe(7);
  });

  test('GET /v1/limits shows the time limits of a host at timeLimitScalePercent', async () => {
    t = await makeApp({ settings: { timeLimitScalePercent: 250 } });
    const body = (await t.app.inject({ method: 'GET', url: '/v1/limits' })).json<{
      defaults: { run: { cpuTimeMs: number; memoryMib: number } };
      maxima: { compile: { wallTimeMs: number } };
    }>();
    expect(body.defaults.run.cpuTimeMs).toBe(12_500);
    expect(body.defaults.run.memoryMib).toBe(256);
    expect(body.maxima.compile.wallTimeMs).toBe(450_000);
  });

  test('healthz and readyz', async () => {
    t = await makeApp();
    expect((await t.app.inject({ method: 'GET', url: '/healthz' })).json<unknown>()).toEqual({
      status: 'ok',
    });
    const ready = await t.app.inject({ method: 'GET', url: '/readyz' });
    expect(ready.statusCode).toBe(200);
    expect(ready.json<unknown>()).toMatchObject({ status: 'ready', queue: { concurrency: 2 } });
    t.beginDrain();
    expect((await t.app.inject({ method: 'GET', url: '/readyz' })).statusCode).toBe(503);
  });

  test('GET /metrics counts jobs by language and status, requests, queue and pool', async () => {
    t = await makeApp();
    await t.app.inject({ method: 'POST', url: '/v1/execute', payload: pyJob() });
    await t.app.inject({ method: 'POST', url: '/v1/execute', payload: pyJob({ bogus: 1 }) });
    const res = await t.app.inject({ method: 'GET', url: '/metrics' });
    expect(res.headers['content-type']).toMatch(/^text\/plain/);
    const text = res.body;
    expect(text).toMatch(/runner_jobs_total\{language="python",status="ok"\} 1/);
    expect(text).toMatch(
      /runner_http_requests_total\{method="POST",route="\/v1\/execute",status_code="400"\} 1/,
    );
    expect(text).toMatch(/runner_http_rejected_total\{code="REQUEST_INVALID"\} 1/);
    expect(text).toMatch(/runner_queue_depth 0/);
    expect(text).toMatch(/runner_pool_capacity 2/);
    expect(text).toMatch(/runner_vm_acquire_duration_seconds_count\{pool_hit="true"\} 1/);
  });

  test('an unknown route is a 404 in the native shape', async () => {
    t = await makeApp();
    const res = await t.app.inject({ method: 'GET', url: '/v1/nothing' });
    expect(res.statusCode).toBe(404);
    expect(res.json<ErrorBody>()).toMatchObject({ code: 'NOT_FOUND' });
  });
});

describe('GET /v1/cluster', () => {
  test('a single box is one worker whose slots are the pool and whose queue is the local one', async () => {
    t = await makeApp();
    const res = await t.app.inject({ method: 'GET', url: '/v1/cluster' });
    expect(res.statusCode).toBe(200);
    const body = res.json<{
      mode: string;
      workers: { id: string; capacity: number; languages: string[] }[];
      capacity: number;
      free: number;
      waiting: number;
    }>();
    expect(body.mode).toBe('single');
    expect(body.workers).toHaveLength(1);
    // The fake engine's pool holds 2 VMs.
    expect(body.workers[0]?.capacity).toBe(2);
    expect(body.capacity).toBe(2);
    expect(body.workers[0]?.languages).toContain('python');
    expect(body.free).toBe(body.capacity);
    expect(body.waiting).toBe(0);
  });
});
