import { request } from 'node:http';
import { afterEach, describe, expect, test } from 'vitest';
import type { PistonExecuteResponse } from '../../../src/api/schemas.js';
import { MAX_LIMITS } from '../../../src/config/limits.js';
import { LanguageRegistry } from '../../../src/languages/index.js';
import { FakeEngine, makeApp, stage, type TestApp } from './helpers.js';

let t: TestApp | undefined;
afterEach(async () => {
  await t?.close();
  t = undefined;
});

/**
 * The execute example of Piston's documentation (engineer-man/piston, docs/api-v2.md), as
 * published. It asks for javascript 24.16.0; the fake registry below carries that version so
 * the request is taken unchanged.
 */
const PISTON_DOC_REQUEST = `{
  "language": "js",
  "version": "24.16.0",
  "files": [
    {
      "name": "my_cool_code.js",
      "content": "console.log(process.argv)"
    }
  ],
  "stdin": "",
  "args": ["1", "2", "3"],
  "compile_timeout": 10000,
  "run_timeout": 3000,
  "compile_memory_limit": -1,
  "run_memory_limit": -1
}`;

/** The real definitions, with javascript at the version of Piston's example. */
function pistonDocEngine(): FakeEngine {
  const real = LanguageRegistry.fromDir();
  return new FakeEngine(
    new LanguageRegistry(
      real
        .list()
        .map((l) =>
          l.definition.name === 'javascript'
            ? { ...l, definition: { ...l.definition, version: '24.16.0' } }
            : l,
        ),
    ),
  );
}

async function pistonPost(payload: unknown): Promise<{ status: number; body: unknown }> {
  t ??= await makeApp();
  const res = await t.app.inject({
    method: 'POST',
    url: '/api/v2/execute',
    payload: payload as Record<string, unknown>,
  });
  return { status: res.statusCode, body: res.json<unknown>() };
}

describe('POST /api/v2/execute', () => {
  test("Piston's documented request works unchanged, and the response has Piston's shape", async () => {
    t = await makeApp({ engine: pistonDocEngine() });
    const argv = "[\n  '/usr/bin/node',\n  '/work/my_cool_code.js',\n  '1',\n  '2',\n  '3'\n]\n";
    t.engine.behavior = () => ({ run: stage({ out: argv }) });
    const res = await t.app.inject({
      method: 'POST',
      url: '/api/v2/execute',
      payload: PISTON_DOC_REQUEST,
      headers: { 'content-type': 'application/json' },
    });
    expect(res.statusCode).toBe(200);
    const body = res.json<PistonExecuteResponse>();
    expect(body.language).toBe('javascript');
    expect(body.version).toBe('24.16.0');
    expect(body.run).toMatchObject({
      stdout: argv,
      stderr: '',
      output: argv,
      code: 0,
      signal: null,
    });
    expect(body.compile).toBeUndefined(); // javascript has no compile stage
    // What the engine was asked: the named file, the args, Piston's units converted, -1 = maximum.
    const call = t.engine.calls[0];
    expect(call?.files).toEqual([
      { name: 'my_cool_code.js', content: 'console.log(process.argv)', encoding: 'utf8' },
    ]);
    expect(call?.args).toEqual(['1', '2', '3']);
    expect(call?.stdin?.length).toBe(0);
    expect(call?.runLimits).toEqual({ wallTimeMs: 3000, memoryMib: MAX_LIMITS.run.memoryMib });
    expect(call?.compileLimits).toEqual({
      wallTimeMs: 10000,
      memoryMib: MAX_LIMITS.compile.memoryMib,
    });
  });

  test('a file with no name, stdin, and a compiled language with its compile stage', async () => {
    t = await makeApp();
    t.engine.behavior = (r) => ({
      compile: stage({ err: 'warning: x' }),
      run: stage({ out: r.stdin ?? '', err: 'e' }),
    });
    const { status, body } = await pistonPost({
      language: 'c',
      version: '*',
      files: [{ content: 'int main(){}' }],
      stdin: 'in',
    });
    expect(status).toBe(200);
    expect(body).toMatchObject({
      language: 'c',
      run: { stdout: 'in', stderr: 'e', output: 'ine', code: 0, signal: null },
      compile: { stdout: '', stderr: 'warning: x', output: 'warning: x', code: 0, signal: null },
    });
    expect(t.engine.calls[0]?.files[0]).toEqual({ content: 'int main(){}', encoding: 'utf8' });
  });

  test('a program killed by a signal has code null and the signal; a timeout says TO', async () => {
    t = await makeApp();
    t.engine.behavior = () => ({
      run: stage({ status: 'timeout', exitCode: null, signal: 'SIGKILL' }),
    });
    const { body } = await pistonPost({
      language: 'python',
      version: '3.11.2',
      files: [{ content: 'while 1: pass' }],
    });
    expect(body).toMatchObject({
      run: { code: null, signal: 'SIGKILL', status: 'TO', message: 'Time limit exceeded' },
    });
  });

  test('memory limits in bytes become MiB; timeouts stay ms; cpu times are taken', async () => {
    t = await makeApp();
    await pistonPost({
      language: 'python',
      version: '3',
      files: [{ content: '' }],
      run_memory_limit: 100 * 1024 * 1024,
      run_timeout: 1500,
      run_cpu_time: 1000,
    });
    expect(t.engine.calls[0]?.runLimits).toEqual({
      wallTimeMs: 1500,
      cpuTimeMs: 1000,
      memoryMib: 100,
    });
  });

  test('-1 is the maximum of the host, at its timeLimitScalePercent', async () => {
    t = await makeApp({ settings: { timeLimitScalePercent: 300 } });
    await pistonPost({
      language: 'python',
      version: '3',
      files: [{ content: '' }],
      run_timeout: -1,
      compile_cpu_time: -1,
    });
    expect(t.engine.calls[0]?.runLimits?.wallTimeMs).toBe(MAX_LIMITS.run.wallTimeMs * 3);
    expect(t.engine.calls[0]?.compileLimits?.cpuTimeMs).toBe(MAX_LIMITS.compile.cpuTimeMs * 3);
  });

  test('hex file content is taken', async () => {
    t = await makeApp();
    await pistonPost({
      language: 'python',
      version: '3',
      files: [{ content: Buffer.from('print(1)').toString('hex'), encoding: 'hex' }],
    });
    const file = t.engine.calls[0]?.files[0];
    expect(file?.encoding).toBe('base64');
    expect(Buffer.from(file?.content ?? '', 'base64').toString()).toBe('print(1)');
  });

  test.each([
    ['no version', { language: 'python', files: [{ content: '' }] }, /missing the field "version"/],
    ['no files', { language: 'python', version: '3' }, /missing the field "files"/],
    [
      'an unknown language',
      { language: 'klingon', version: '1', files: [{ content: '' }] },
      /unknown language "klingon"/,
    ],
    [
      'a version not installed',
      { language: 'python', version: '2.7.0', files: [{ content: '' }] },
      /not "2.7.0"/,
    ],
    [
      'an unknown field',
      { language: 'python', version: '3', files: [{ content: '' }], timeout: 5 },
      /unknown field "timeout"/,
    ],
    [
      'a timeout over the maximum',
      { language: 'python', version: '3', files: [{ content: '' }], run_timeout: 10_000_000 },
      /over the server maximum/,
    ],
    [
      'a zero timeout',
      { language: 'python', version: '3', files: [{ content: '' }], run_timeout: 0 },
      /positive or -1/,
    ],
    [
      'a limit below -1',
      { language: 'python', version: '3', files: [{ content: '' }], run_timeout: -2 },
      /must be >= -1/,
    ],
    [
      'bad hex',
      { language: 'python', version: '3', files: [{ content: 'xyz', encoding: 'hex' }] },
      /not valid hex/,
    ],
  ])('%s is a 400 with a Piston {message}', async (_name, payload, message) => {
    const { status, body } = await pistonPost(payload);
    expect(status).toBe(400);
    expect(Object.keys(body as object)).toEqual(['message']);
    expect((body as { message: string }).message).toMatch(message);
    expect(t?.engine.calls).toHaveLength(0);
  });

  test('a body that is not JSON, under any content type, and a 404 keep the Piston error shape', async () => {
    t = await makeApp();
    const r400 = await t.app.inject({
      method: 'POST',
      url: '/api/v2/execute',
      payload: 'x',
      headers: { 'content-type': 'text/plain' },
    });
    expect(r400.statusCode).toBe(400);
    expect(r400.json<{ message: string }>().message).toMatch(/not valid JSON/);
    expect(Object.keys(r400.json<object>())).toEqual(['message']);
    const r404 = await t.app.inject({ method: 'GET', url: '/api/v2/nothing' });
    expect(r404.statusCode).toBe(404);
    expect(Object.keys(r404.json<object>())).toEqual(['message']);
  });
});

/**
 * Piston's most used npm client and many bots send the JSON body with node-fetch's default
 * content type for a string body, or with none; Piston takes both, so the Piston routes do too.
 */
describe('Piston clients as they really are', () => {
  const body = JSON.stringify({
    language: 'python',
    version: '3',
    files: [{ name: 'main.py', content: 'print(input())' }],
    stdin: 'hi',
  });

  test.each([['text/plain;charset=UTF-8'], ['text/plain'], ['application/octet-stream']])(
    'a JSON body sent as %s runs',
    async (type) => {
      t = await makeApp();
      const res = await t.app.inject({
        method: 'POST',
        url: '/api/v2/execute',
        payload: body,
        headers: { 'content-type': type },
      });
      expect(res.statusCode).toBe(200);
      expect(res.json<PistonExecuteResponse>().run.stdout).toBe('hi');
      expect(t.engine.calls).toHaveLength(1);
    },
  );

  test('a JSON body with no content type runs (over a real socket, so no header is added)', async () => {
    t = await makeApp();
    const address = await t.app.listen({ host: '127.0.0.1', port: 0 });
    const { status, text } = await new Promise<{ status: number; text: string }>(
      (resolve, reject) => {
        const req = request(
          `${address}/api/v2/execute`,
          { method: 'POST', headers: { 'content-length': Buffer.byteLength(body) } },
          (res) => {
            let text = '';
            res.on('data', (c: Buffer) => (text += c.toString()));
            res.on('end', () => resolve({ status: res.statusCode ?? 0, text }));
          },
        );
        req.on('error', reject);
        expect(req.getHeader('content-type')).toBeUndefined();
        req.end(body);
      },
    );
    expect(status).toBe(200);
    expect((JSON.parse(text) as PistonExecuteResponse).run.stdout).toBe('hi');
  });

  test('an empty text/plain body is a 400 with a Piston {message}', async () => {
    t = await makeApp();
    const res = await t.app.inject({
      method: 'POST',
      url: '/api/v2/execute',
      payload: '',
      headers: { 'content-type': 'text/plain;charset=UTF-8', 'content-length': '0' },
    });
    expect(res.statusCode).toBe(400);
    expect(Object.keys(res.json<object>())).toEqual(['message']);
  });

  test('outside the Piston routes a text/plain JSON body is still a 415', async () => {
    t = await makeApp();
    const res = await t.app.inject({
      method: 'POST',
      url: '/v1/execute',
      payload: JSON.stringify({ language: 'python', files: [{ content: 'print(1)' }] }),
      headers: { 'content-type': 'text/plain;charset=UTF-8' },
    });
    expect(res.statusCode).toBe(415);
    expect(t.engine.calls).toHaveLength(0);
  });
});

describe('GET /api/v2/runtimes and /api/v2/packages', () => {
  test("runtimes have Piston's fields and its aliases", async () => {
    t = await makeApp();
    const list = (await t.app.inject({ method: 'GET', url: '/api/v2/runtimes' })).json<
      { language: string; version: string; aliases: string[] }[]
    >();
    for (const r of list) expect(Object.keys(r).sort()).toEqual(['aliases', 'language', 'version']);
    expect(list.find((r) => r.language === 'javascript')?.aliases).toEqual(
      expect.arrayContaining(['node-javascript', 'node-js', 'js']) as unknown,
    );
    expect(list.find((r) => r.language === 'python')?.aliases).toContain('py');
  });

  test('packages say which languages are installed', async () => {
    t = await makeApp();
    const list = (await t.app.inject({ method: 'GET', url: '/api/v2/packages' })).json<
      { language: string; language_version: string; installed: boolean }[]
    >();
    expect(list.find((p) => p.language === 'python')).toEqual({
      language: 'python',
      language_version: '3.11.2',
      installed: true,
    });
    expect(list.find((p) => p.language === 'rust')?.installed).toBe(false);
  });
});
