import { randomBytes } from 'node:crypto';
import { afterEach, describe, expect, test } from 'vitest';
import { COMMAND_OUTPUT_BYTES, type SandboxView } from '../../../src/api/sandboxes/index.js';
import { CappedText, Utf8Chunker } from '../../../src/api/sandboxes/output.js';
import { FakeSandboxes } from '../../support/native-fake-sandboxes.js';
import { FakeEngine, makeApp, type ErrorBody, type TestApp } from './helpers.js';

/** The fake job engine with the fake sandbox engine in it. */
class SandboxEngine extends FakeEngine {
  constructor(readonly sandboxes = new FakeSandboxes()) {
    super();
  }
}

let t: TestApp | undefined;
afterEach(async () => {
  await t?.close();
  t = undefined;
});

/** The sandbox engine of the app made last. */
let fake = new FakeSandboxes();

async function app(settings: Partial<Record<string, unknown>> = {}): Promise<TestApp> {
  fake = new FakeSandboxes();
  t = await makeApp({ engine: new SandboxEngine(fake), settings });
  return t;
}

const json = (body: unknown, key?: string) => ({
  headers: { 'content-type': 'application/json', ...(key !== undefined && { 'x-api-key': key }) },
  payload: JSON.stringify(body),
});

async function create(a: TestApp, body: unknown = { language: 'python' }, key?: string) {
  const res = await a.app.inject({ method: 'POST', url: '/v1/sandboxes', ...json(body, key) });
  expect(res.statusCode, res.body).toBe(201);
  return res.json<SandboxView>();
}

/** Reads a Server-Sent Events answer whole: the events in order, parsed. */
function parseEvents(text: string): { event: string; data: Record<string, unknown> }[] {
  return text
    .split('\n\n')
    .filter((block) => block.startsWith('event: '))
    .map((block) => {
      const [head, data] = block.split('\n');
      return {
        event: (head ?? '').slice(7),
        data: JSON.parse((data ?? '').slice(6)) as Record<string, unknown>,
      };
    });
}

describe('/v1/sandboxes: the life of a sandbox', () => {
  test('create, get, list, set the timeout, kill', async () => {
    const a = await app();
    const res = await a.app.inject({
      method: 'POST',
      url: '/v1/sandboxes',
      ...json({
        language: 'python',
        timeoutMs: 60_000,
        metadata: { task: 't1' },
        envs: { A: '1' },
      }),
    });
    expect(res.statusCode).toBe(201);
    const s = res.json<SandboxView & Record<string, unknown>>();
    expect(res.headers.location).toBe(`/v1/sandboxes/${s.id}`);
    expect(s).toMatchObject({
      language: 'python',
      template: 'python',
      state: 'running',
      timeoutMs: 60_000,
      metadata: { task: 't1' },
      pausedAt: null,
      forkedFrom: null,
      memoryMib: 512,
      vcpus: 1,
    });
    expect(s.id).toMatch(/^[a-z0-9]{20}$/);
    expect(typeof s.vmId).toBe('string');
    // Neither the owner's fingerprint nor the envs (they may hold secrets) are shown.
    expect(s).not.toHaveProperty('owner');
    expect(s).not.toHaveProperty('envs');

    const one = await a.app.inject({ method: 'GET', url: `/v1/sandboxes/${s.id}` });
    expect(one.json()).toEqual(s);
    const list = await a.app.inject({ method: 'GET', url: '/v1/sandboxes' });
    expect(list.json<{ sandboxes: SandboxView[] }>().sandboxes.map((x) => x.id)).toEqual([s.id]);

    const before = Date.parse(s.expiresAt);
    const timeout = await a.app.inject({
      method: 'POST',
      url: `/v1/sandboxes/${s.id}/timeout`,
      ...json({ timeoutMs: 3_600_000 }),
    });
    expect(timeout.statusCode).toBe(200);
    expect(timeout.json<SandboxView>().timeoutMs).toBe(3_600_000);
    expect(Date.parse(timeout.json<SandboxView>().expiresAt)).toBeGreaterThan(before);

    const del = await a.app.inject({ method: 'DELETE', url: `/v1/sandboxes/${s.id}` });
    expect(del.statusCode).toBe(204);
    expect(del.body).toBe('');
    const gone = await a.app.inject({ method: 'GET', url: `/v1/sandboxes/${s.id}` });
    expect(gone.statusCode).toBe(404);
    expect(gone.json<ErrorBody>().code).toBe('SANDBOX_NOT_FOUND');
  });

  test('refused requests: an unknown language, a timeout over the most, unknown fields, a bad count', async () => {
    const a = await app();
    const cases: [string, unknown, number, string][] = [
      ['/v1/sandboxes', { language: 'klingon' }, 400, 'LANGUAGE_UNKNOWN'],
      ['/v1/sandboxes', { language: 'python', timeoutMs: 10 ** 12 }, 400, 'LIMIT_INVALID'],
      ['/v1/sandboxes', { language: 'python', ttl: 5 }, 400, 'REQUEST_INVALID'],
      ['/v1/sandboxes', { language: 'python', envs: { 'BAD-NAME': 'x' } }, 400, 'REQUEST_INVALID'],
      ['/v1/sandboxes', {}, 400, 'REQUEST_INVALID'],
    ];
    for (const [url, body, status, code] of cases) {
      const res = await a.app.inject({ method: 'POST', url, ...json(body) });
      expect(res.statusCode, JSON.stringify(body)).toBe(status);
      expect(res.json<ErrorBody>().code).toBe(code);
    }
    const s = await create(a);
    for (const count of [0, 17]) {
      const res = await a.app.inject({
        method: 'POST',
        url: `/v1/sandboxes/${s.id}/fork`,
        ...json({ count }),
      });
      expect(res.statusCode).toBe(400);
    }
    // The JSON routes keep the 415 of the rest of the API (only the upload takes any type).
    const plain = await a.app.inject({
      method: 'POST',
      url: `/v1/sandboxes/${s.id}/files/mkdir`,
      headers: { 'content-type': 'text/plain' },
      payload: 'dir',
    });
    expect(plain.statusCode).toBe(415);
  });

  test("another key's sandbox is a 404 on every route, and lists hold only the caller's", async () => {
    const a = await app({ apiKeys: ['key-one', 'key-two'] });
    const s = await create(a, { language: 'python' }, 'key-one');
    const other = { 'x-api-key': 'key-two' };
    const body = { 'content-type': 'application/json', ...other };
    const routes: [string, string, unknown?][] = [
      ['GET', `/v1/sandboxes/${s.id}`],
      ['DELETE', `/v1/sandboxes/${s.id}`],
      ['POST', `/v1/sandboxes/${s.id}/timeout`, { timeoutMs: 1000 }],
      ['POST', `/v1/sandboxes/${s.id}/pause`, {}],
      ['POST', `/v1/sandboxes/${s.id}/resume`, {}],
      ['POST', `/v1/sandboxes/${s.id}/fork`, {}],
      ['POST', `/v1/sandboxes/${s.id}/cells`, { code: 'print(1)' }],
      ['POST', `/v1/sandboxes/${s.id}/commands`, { cmd: 'echo hi' }],
      ['GET', `/v1/sandboxes/${s.id}/files?path=a`],
      ['GET', `/v1/sandboxes/${s.id}/files/list`],
      ['GET', `/v1/sandboxes/${s.id}/files/stat?path=a`],
      ['DELETE', `/v1/sandboxes/${s.id}/files?path=a`],
      ['POST', `/v1/sandboxes/${s.id}/files/mkdir`, { path: 'd' }],
      ['POST', `/v1/sandboxes/${s.id}/files/move`, { from: 'a', to: 'b' }],
    ];
    for (const [method, url, payload] of routes) {
      const res = await a.app.inject({
        method: method as 'GET',
        url,
        headers: payload === undefined ? other : body,
        ...(payload !== undefined && { payload: JSON.stringify(payload) }),
      });
      expect(res.statusCode, `${method} ${url}`).toBe(404);
      expect(res.json<ErrorBody>().code).toBe('SANDBOX_NOT_FOUND');
    }
    const put = await a.app.inject({
      method: 'PUT',
      url: `/v1/sandboxes/${s.id}/files?path=a`,
      headers: { ...other, 'content-type': 'application/octet-stream' },
      payload: Buffer.from('x'),
    });
    expect(put.statusCode).toBe(404);
    const theirs = await a.app.inject({ method: 'GET', url: '/v1/sandboxes', headers: other });
    expect(theirs.json()).toEqual({ sandboxes: [] });
    const mine = await a.app.inject({
      method: 'GET',
      url: `/v1/sandboxes/${s.id}`,
      headers: { 'x-api-key': 'key-one' },
    });
    expect(mine.statusCode).toBe(200);
    const none = await a.app.inject({ method: 'GET', url: '/v1/sandboxes' });
    expect(none.statusCode).toBe(401);
  });

  test('pause and resume (the body may be left out); a paused sandbox refuses calls with 409', async () => {
    const a = await app();
    const s = await create(a);
    const paused = await a.app.inject({ method: 'POST', url: `/v1/sandboxes/${s.id}/pause` });
    expect(paused.statusCode, paused.body).toBe(200);
    expect(paused.json()).toMatchObject({ state: 'paused', vmId: null });
    expect(paused.json<SandboxView>().pausedAt).not.toBeNull();
    for (const [url, payload] of [
      [`/v1/sandboxes/${s.id}/commands`, { cmd: 'echo hi' }],
      [`/v1/sandboxes/${s.id}/cells`, { code: '1' }],
      [`/v1/sandboxes/${s.id}/pause`, {}],
    ] as const) {
      const res = await a.app.inject({ method: 'POST', url, ...json(payload) });
      expect(res.statusCode, url).toBe(409);
      expect(res.json<ErrorBody>().code).toBe('SANDBOX_STATE');
    }
    const read = await a.app.inject({ method: 'GET', url: `/v1/sandboxes/${s.id}/files?path=a` });
    expect(read.statusCode).toBe(409);
    const resumed = await a.app.inject({
      method: 'POST',
      url: `/v1/sandboxes/${s.id}/resume`,
      ...json({ timeoutMs: 120_000 }),
    });
    expect(resumed.statusCode).toBe(200);
    expect(resumed.json()).toMatchObject({ state: 'running', pausedAt: null, timeoutMs: 120_000 });
    const bad = await a.app.inject({
      method: 'POST',
      url: `/v1/sandboxes/${s.id}/resume`,
      ...json({ timeout: 1 }),
    });
    expect(bad.statusCode).toBe(400);
  });

  test('fork: copies with their own ids, the files of the original, forkedFrom set', async () => {
    const a = await app();
    const s = await create(a);
    await a.app.inject({
      method: 'PUT',
      url: `/v1/sandboxes/${s.id}/files?path=data.txt`,
      payload: 'kept',
    });
    const res = await a.app.inject({
      method: 'POST',
      url: `/v1/sandboxes/${s.id}/fork`,
      ...json({ count: 2 }),
    });
    expect(res.statusCode).toBe(201);
    const copies = res.json<{ sandboxes: SandboxView[] }>().sandboxes;
    expect(copies).toHaveLength(2);
    for (const c of copies) {
      expect(c.id).not.toBe(s.id);
      expect(c.forkedFrom).toBe(s.id);
      const file = await a.app.inject({
        method: 'GET',
        url: `/v1/sandboxes/${c.id}/files?path=data.txt`,
      });
      expect(file.body).toBe('kept');
    }
    const one = await a.app.inject({ method: 'POST', url: `/v1/sandboxes/${s.id}/fork` });
    expect(one.json<{ sandboxes: unknown[] }>().sandboxes).toHaveLength(1);
  });

  test('a node without the sandbox engine answers every sandbox route 404 NOT_FOUND, saying why', async () => {
    t = await makeApp(); // the plain fake engine: no sandboxes
    for (const [method, url] of [
      ['GET', '/v1/sandboxes'],
      ['POST', '/v1/sandboxes'],
      ['GET', '/v1/sandboxes/abc'],
      ['PUT', '/v1/sandboxes/abc/files?path=a'],
      ['POST', '/v1/sandboxes/abc/commands'],
    ] as const) {
      const res = await t.app.inject({ method, url, payload: '{}' });
      expect(res.statusCode, `${method} ${url}`).toBe(404);
      expect(res.json<ErrorBody>()).toMatchObject({ code: 'NOT_FOUND' });
      expect(res.json<ErrorBody>().message).toMatch(/sandboxes are not served by this node/);
    }
  });
});

describe('/v1/sandboxes/:id/cells', () => {
  test('JSON: output, the main result, kept state and the count; an exception is a 200 with error', async () => {
    const a = await app();
    const s = await create(a);
    const cell = (code: string) =>
      a.app.inject({ method: 'POST', url: `/v1/sandboxes/${s.id}/cells`, ...json({ code }) });
    const first = await cell('x = 42\nprint("hi")');
    expect(first.statusCode).toBe(200);
    expect(first.json()).toEqual({
      executionCount: 1,
      results: [],
      stdout: ['hi\n'],
      stderr: [],
      error: null,
    });
    const second = await cell('x');
    expect(second.json()).toMatchObject({
      executionCount: 2,
      results: [{ isMainResult: true, text: '42' }],
    });
    const failed = await cell('raise ValueError("bad")');
    expect(failed.statusCode).toBe(200);
    expect(failed.json()).toMatchObject({
      executionCount: 3,
      error: { name: 'ValueError', value: 'bad' },
    });
    expect(failed.json<{ error: { traceback: string } }>().error.traceback).toMatch(/ValueError/);
    // A restart forgets the variables and the count.
    const restart = await a.app.inject({
      method: 'POST',
      url: `/v1/sandboxes/${s.id}/cells/restart`,
    });
    expect(restart.json()).toEqual({ restarted: true });
    expect((await cell('x')).json()).toMatchObject({
      executionCount: 1,
      results: [{ text: 'x' }],
    });
    const js = await a.app.inject({
      method: 'POST',
      url: `/v1/sandboxes/${s.id}/cells/restart`,
      ...json({ language: 'javascript' }),
    });
    expect(js.json()).toEqual({ restarted: false });
    // The engine got the request as sent (language, envs, timeout).
    await a.app.inject({
      method: 'POST',
      url: `/v1/sandboxes/${s.id}/cells`,
      ...json({ code: '1', language: 'javascript', envs: { K: 'v' }, timeoutMs: 5000 }),
    });
    const sandboxes = fake;
    expect(sandboxes.calls.at(-1)?.args[2]).toEqual({
      code: '1',
      language: 'javascript',
      envs: { K: 'v' },
      timeoutMs: 5000,
    });
  });

  test('SSE: stdout, result and error events as they come, then done with the whole outcome', async () => {
    const a = await app();
    const s = await create(a);
    const res = await a.app.inject({
      method: 'POST',
      url: `/v1/sandboxes/${s.id}/cells`,
      headers: { 'content-type': 'application/json', accept: 'text/event-stream' },
      payload: JSON.stringify({ code: 'print(one)\nprint(two)\n"last"' }),
    });
    expect(res.statusCode).toBe(200);
    expect(res.headers['content-type']).toMatch(/^text\/event-stream/);
    const events = parseEvents(res.body);
    expect(events.map((e) => e.event)).toEqual(['stdout', 'stdout', 'result', 'done']);
    expect(events[0]?.data).toEqual({ type: 'stdout', text: 'one\n' });
    expect(events[2]?.data).toEqual({
      type: 'result',
      result: { isMainResult: true, text: '"last"' },
    });
    expect(events[3]?.data).toMatchObject({ type: 'done', executionCount: 1, error: null });

    const err = await a.app.inject({
      method: 'POST',
      url: `/v1/sandboxes/${s.id}/cells`,
      headers: { 'content-type': 'application/json', accept: 'text/event-stream' },
      payload: JSON.stringify({ code: 'raise NameError(y)' }),
    });
    const errEvents = parseEvents(err.body);
    expect(errEvents.map((e) => e.event)).toEqual(['error', 'done']);
    expect(errEvents[0]?.data).toMatchObject({ type: 'error', error: { name: 'NameError' } });

    // A failure before any event is an ordinary HTTP error, not a stream.
    const missing = await a.app.inject({
      method: 'POST',
      url: '/v1/sandboxes/nope/cells',
      headers: { 'content-type': 'application/json', accept: 'text/event-stream' },
      payload: JSON.stringify({ code: '1' }),
    });
    expect(missing.statusCode).toBe(404);
    expect(missing.headers['content-type']).toMatch(/^application\/json/);
  });
});

describe('/v1/sandboxes/:id/commands', () => {
  test('JSON: exit code, status, both streams as text, the envs of the sandbox and of the call, cwd', async () => {
    const a = await app();
    const s = await create(a, { language: 'bash', envs: { FROM_SANDBOX: 's' } });
    const run = (body: Record<string, unknown>) =>
      a.app.inject({ method: 'POST', url: `/v1/sandboxes/${s.id}/commands`, ...json(body) });
    const res = await run({ cmd: 'echo hi; echo oops >&2; exit 3' });
    expect(res.statusCode).toBe(200);
    const r = res.json<Record<string, unknown>>();
    expect(r).toMatchObject({
      exitCode: 3,
      signal: null,
      status: 'runtime_error',
      message: null,
      stdout: 'hi\n',
      stderr: 'oops\n',
      stdoutTruncated: false,
      stderrTruncated: false,
    });
    expect(typeof r.wallTimeMs).toBe('number');
    const env = await run({
      cmd: 'env FROM_SANDBOX; env FROM_CALL; pwd',
      envs: { FROM_CALL: 'c' },
      cwd: 'sub',
    });
    expect(env.json()).toMatchObject({
      exitCode: 0,
      status: 'ok',
      stdout: 's\nc\n/home/user/sub\n',
    });
    const timeout = await run({ cmd: 'sleep 5', timeoutMs: 50 });
    expect(timeout.json()).toMatchObject({ status: 'timeout', exitCode: null, signal: 'SIGKILL' });
    const empty = await run({ cmd: '' });
    expect(empty.statusCode).toBe(400);
  });

  test('SSE: start, stdout and stderr (text, or base64 for bytes that are not UTF-8), then exit', async () => {
    const a = await app();
    const s = await create(a, { language: 'bash' });
    const res = await a.app.inject({
      method: 'POST',
      url: `/v1/sandboxes/${s.id}/commands`,
      headers: { 'content-type': 'application/json', accept: 'text/event-stream' },
      payload: JSON.stringify({ cmd: 'echo héllo; printf-hex ff00fe; echo err >&2; exit 1' }),
    });
    expect(res.statusCode).toBe(200);
    const events = parseEvents(res.body);
    expect(events.map((e) => e.event)).toEqual(['start', 'stdout', 'stdout', 'stderr', 'exit']);
    expect(events[0]?.data).toMatchObject({ type: 'start' });
    expect(typeof events[0]?.data.pid).toBe('number');
    expect(events[1]?.data).toEqual({ type: 'stdout', text: 'héllo\n' });
    expect(events[2]?.data).toEqual({
      type: 'stdout',
      dataBase64: Buffer.from([0xff, 0, 0xfe]).toString('base64'),
    });
    expect(events[3]?.data).toEqual({ type: 'stderr', text: 'err\n' });
    expect(events[4]?.data).toMatchObject({ type: 'exit', exitCode: 1, status: 'runtime_error' });
  });

  test('a client that leaves before the end has its command killed', async () => {
    const a = await app();
    const s = await create(a, { language: 'bash' });
    const url = await a.app.listen({ host: '127.0.0.1', port: 0 });
    const abort = new AbortController();
    const res = await fetch(`${url}/v1/sandboxes/${s.id}/commands`, {
      method: 'POST',
      headers: { 'content-type': 'application/json', accept: 'text/event-stream' },
      body: JSON.stringify({ cmd: 'echo started; sleep 30' }),
      signal: abort.signal,
    });
    const reader = res.body?.getReader();
    const first = await reader?.read();
    expect(Buffer.from(first?.value ?? []).toString()).toContain('event: start');
    const sandboxes = fake;
    expect(sandboxes.commands(s.id, null)).toHaveLength(1);
    const handle = sandboxes.commands(s.id, null)[0];
    abort.abort();
    const result = await handle?.done;
    expect(result).toMatchObject({ signal: 'SIGKILL', exitCode: null });
    expect(sandboxes.commands(s.id, null)).toHaveLength(0);
  });
});

describe('/v1/sandboxes/:id/files', () => {
  test('upload and download are streamed and byte-exact, past the JSON body limit', async () => {
    const a = await app({ bodyLimitBytes: 1024 });
    const s = await create(a);
    const url = await a.app.listen({ host: '127.0.0.1', port: 0 });
    const content = randomBytes(300_000); // binary, far over the 1 KiB body limit
    const chunks = [content.subarray(0, 100_000), content.subarray(100_000)];
    const up = await fetch(`${url}/v1/sandboxes/${s.id}/files?path=data/blob.bin`, {
      method: 'PUT',
      headers: { 'content-type': 'application/octet-stream' },
      // A streamed body (chunked): the server never sees its length up front.
      body: new ReadableStream({
        pull(controller) {
          const next = chunks.shift();
          if (next === undefined) controller.close();
          else controller.enqueue(new Uint8Array(next));
        },
      }),
      duplex: 'half',
    });
    expect(up.status).toBe(200);
    expect(await up.json()).toMatchObject({
      name: 'blob.bin',
      path: '/home/user/data/blob.bin',
      type: 'file',
      size: content.length,
      mode: 0o644,
    });
    const down = await fetch(`${url}/v1/sandboxes/${s.id}/files?path=/home/user/data/blob.bin`);
    expect(down.status).toBe(200);
    expect(down.headers.get('content-type')).toBe('application/octet-stream');
    expect(Buffer.from(await down.arrayBuffer()).equals(content)).toBe(true);
    // An empty body, with no content type at all, is an empty file.
    const empty = await a.app.inject({ method: 'PUT', url: `/v1/sandboxes/${s.id}/files?path=e` });
    expect(empty.json()).toMatchObject({ size: 0 });
  });

  test('list, stat, mkdir, move and remove', async () => {
    const a = await app();
    const s = await create(a);
    const base = `/v1/sandboxes/${s.id}/files`;
    await a.app.inject({ method: 'PUT', url: `${base}?path=a/b/c.txt`, payload: 'abc' });
    await a.app.inject({ method: 'PUT', url: `${base}?path=top.txt`, payload: 'top' });
    const list = await a.app.inject({ method: 'GET', url: `${base}/list` });
    expect(list.json<{ entries: { path: string }[] }>().entries.map((e) => e.path)).toEqual([
      '/home/user/a',
      '/home/user/top.txt',
    ]);
    const deep = await a.app.inject({ method: 'GET', url: `${base}/list?path=a&depth=2` });
    const entries = deep.json<{ entries: Record<string, unknown>[] }>().entries;
    expect(entries.map((e) => e.path)).toEqual(['/home/user/a/b', '/home/user/a/b/c.txt']);
    expect(entries[0]).toMatchObject({ name: 'b', type: 'dir', mode: 0o755 });
    expect(typeof entries[1]?.modifiedAt).toBe('string');
    const stat = await a.app.inject({ method: 'GET', url: `${base}/stat?path=top.txt` });
    expect(stat.json()).toMatchObject({ type: 'file', size: 3 });

    const mkdir = (path: string) =>
      a.app.inject({ method: 'POST', url: `${base}/mkdir`, ...json({ path }) });
    expect((await mkdir('x/y')).json()).toEqual({ created: true });
    expect((await mkdir('x/y')).json()).toEqual({ created: false });

    const move = await a.app.inject({
      method: 'POST',
      url: `${base}/move`,
      ...json({ from: 'top.txt', to: 'x/y/moved.txt' }),
    });
    expect(move.statusCode).toBe(200);
    expect(move.json()).toMatchObject({ path: '/home/user/x/y/moved.txt', size: 3 });
    const moved = await a.app.inject({ method: 'GET', url: `${base}?path=x/y/moved.txt` });
    expect(moved.body).toBe('top');

    const del = await a.app.inject({ method: 'DELETE', url: `${base}?path=a` });
    expect(del.statusCode).toBe(204);
    const gone = await a.app.inject({ method: 'GET', url: `${base}?path=a/b/c.txt` });
    expect(gone.statusCode).toBe(404);
    expect(gone.json<ErrorBody>().code).toBe('FILE_NOT_FOUND');
    const again = await a.app.inject({ method: 'DELETE', url: `${base}?path=a` });
    expect(again.json<ErrorBody>().code).toBe('FILE_NOT_FOUND');
  });

  test('bad paths are 400: .., outside the sandbox folder, a NUL, none at all', async () => {
    const a = await app();
    const s = await create(a);
    const base = `/v1/sandboxes/${s.id}/files`;
    for (const path of ['../etc/passwd', '/etc/passwd', 'a/../../b', 'a%00b']) {
      const res = await a.app.inject({ method: 'GET', url: `${base}?path=${path}` });
      expect(res.statusCode, path).toBe(400);
      expect(res.json<ErrorBody>().code, path).toBe('FILE_NAME_INVALID');
      const put = await a.app.inject({ method: 'PUT', url: `${base}?path=${path}`, payload: 'x' });
      expect(put.statusCode, path).toBe(400);
    }
    const none = await a.app.inject({ method: 'GET', url: base });
    expect(none.statusCode).toBe(400);
    expect(none.json<ErrorBody>().code).toBe('REQUEST_INVALID');
    const depth = await a.app.inject({ method: 'GET', url: `${base}/list?depth=0` });
    expect(depth.statusCode).toBe(400);
  });
});

describe('command output on the wire', () => {
  test('Utf8Chunker: a character split across reads goes whole as text; other bytes as base64', () => {
    const c = new Utf8Chunker();
    const e = Buffer.from('é'); // 2 bytes
    expect(c.push(Buffer.concat([Buffer.from('a'), e.subarray(0, 1)]))).toEqual({ text: 'a' });
    expect(c.push(e.subarray(1))).toEqual({ text: 'é' });
    expect(c.push(Buffer.from([0xff]))).toEqual({ dataBase64: '/w==' });
    expect(c.push(Buffer.from([0xe2, 0x82]))).toBeNull(); // the start of '€'
    expect(c.flush()).toEqual({ dataBase64: Buffer.from([0xe2, 0x82]).toString('base64') });
  });

  test('CappedText keeps COMMAND_OUTPUT_BYTES and says it dropped the rest', () => {
    const t1 = new CappedText();
    t1.push(Buffer.alloc(COMMAND_OUTPUT_BYTES - 1, 'a'));
    t1.push(Buffer.from('bcd'));
    expect(t1.truncated).toBe(true);
    const text = t1.end();
    expect(text.length).toBe(COMMAND_OUTPUT_BYTES);
    expect(text.endsWith('ab')).toBe(true);
  });
});
