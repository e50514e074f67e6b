import { connect } from 'node:net';
import { afterEach, describe, expect, test } from 'vitest';
import { RateLimiter } from '../../../src/api/auth.js';
import type { ExecuteResponse, JobView } from '../../../src/api/schemas.js';
import { gate, makeApp, pyJob, stage, type ErrorBody, type TestApp } from './helpers.js';

let t: TestApp | undefined;
afterEach(async () => {
  await t?.close();
  t = undefined;
});

describe('caps: 413 before any job', () => {
  test('a body over the cap is refused with 413', async () => {
    t = await makeApp({ settings: { bodyLimitBytes: 4096 } });
    const res = await t.app.inject({
      method: 'POST',
      url: '/v1/execute',
      payload: pyJob({ stdin: 'x'.repeat(5000) }),
    });
    expect(res.statusCode).toBe(413);
    expect(res.json<ErrorBody>()).toMatchObject({
      code: 'PAYLOAD_TOO_LARGE',
      message: 'the body is over the cap of 4096 bytes',
    });
    expect(t.engine.calls).toHaveLength(0);
  });

  test('a body over the cap is refused from its Content-Length, before it is read', async () => {
    t = await makeApp({ settings: { bodyLimitBytes: 4096 } });
    const res = await t.app.inject({
      method: 'POST',
      url: '/api/v2/execute',
      payload: '{}',
      headers: { 'content-type': 'application/json', 'content-length': String(10 * 1024 * 1024) },
    });
    expect(res.statusCode).toBe(413);
    expect(res.json<{ message: string }>().message).toMatch(/over the cap/);
  });

  test('too many files is a 413', async () => {
    t = await makeApp({ settings: { maxFiles: 3 } });
    const files = Array.from({ length: 4 }, (_, i) => ({ name: `f${i}.py`, content: '' }));
    const res = await t.app.inject({
      method: 'POST',
      url: '/v1/execute',
      payload: { language: 'python', files },
    });
    expect(res.statusCode).toBe(413);
    expect(res.json<ErrorBody>().message).toBe('a job may have at most 3 files, not 4');
  });

  test('stdin over the cap is a 413, counted in decoded bytes', async () => {
    t = await makeApp({ settings: { maxStdinBytes: 10 } });
    const ok = await t.app.inject({
      method: 'POST',
      url: '/v1/execute',
      payload: pyJob({ stdin: Buffer.alloc(10).toString('base64'), stdinEncoding: 'base64' }),
    });
    expect(ok.statusCode).toBe(200);
    const res = await t.app.inject({
      method: 'POST',
      url: '/v1/execute',
      payload: pyJob({ stdin: 'é'.repeat(6) }),
    });
    expect(res.statusCode).toBe(413);
    expect(res.json<ErrorBody>().message).toMatch(/stdin is 12 bytes, over the cap of 10/);
    const piston = await t.app.inject({
      method: 'POST',
      url: '/api/v2/execute',
      payload: {
        language: 'python',
        version: '3',
        files: [{ content: '' }],
        stdin: 'x'.repeat(11),
      },
    });
    expect(piston.statusCode).toBe(413);
    const cases = await t.app.inject({
      method: 'POST',
      url: '/v1/execute',
      payload: pyJob({ testCases: [{ stdin: 'x'.repeat(11), expectedOutput: '' }] }),
    });
    expect(cases.statusCode).toBe(413);
  });

  test('too many test cases is a 413', async () => {
    t = await makeApp({ settings: { maxTestCases: 2 } });
    const res = await t.app.inject({
      method: 'POST',
      url: '/v1/execute',
      payload: pyJob({
        testCases: [{ expectedOutput: '' }, { expectedOutput: '' }, { expectedOutput: '' }],
      }),
    });
    expect(res.statusCode).toBe(413);
  });
});

describe('API keys', () => {
  const keys = { apiKeys: ['k-one', 'k-two'] };

  test('without a valid key: 401, nothing run', async () => {
    t = await makeApp({ settings: keys });
    for (const headers of [
      {},
      { authorization: 'Bearer wrong' },
      { 'x-api-key': 'k-on' },
      { authorization: 'Basic azpr' },
    ]) {
      const res = await t.app.inject({
        method: 'POST',
        url: '/v1/execute',
        payload: pyJob(),
        headers,
      });
      expect(res.statusCode).toBe(401);
      expect(res.headers['www-authenticate']).toBe('Bearer');
      expect(res.json<ErrorBody>().code).toBe('UNAUTHORIZED');
    }
    const piston = await t.app.inject({ method: 'POST', url: '/api/v2/execute', payload: {} });
    expect(piston.statusCode).toBe(401);
    expect(Object.keys(piston.json<object>())).toEqual(['message']);
    expect((await t.app.inject({ method: 'GET', url: '/v1/runtimes' })).statusCode).toBe(401);
    expect((await t.app.inject({ method: 'GET', url: '/metrics' })).statusCode).toBe(401);
    expect(t.engine.calls).toHaveLength(0);
  });

  test('the key is checked before the body is parsed: a bad body without a key is still 401', async () => {
    t = await makeApp({ settings: keys });
    const res = await t.app.inject({
      method: 'POST',
      url: '/v1/execute',
      payload: '{not json',
      headers: { 'content-type': 'application/json' },
    });
    expect(res.statusCode).toBe(401);
  });

  test('with a key (Bearer or X-API-Key) it runs', async () => {
    t = await makeApp({ settings: keys });
    const a = await t.app.inject({
      method: 'POST',
      url: '/v1/execute',
      payload: pyJob(),
      headers: { authorization: 'Bearer k-one' },
    });
    const b = await t.app.inject({
      method: 'POST',
      url: '/v1/execute',
      payload: pyJob(),
      headers: { 'x-api-key': 'k-two' },
    });
    expect([a.statusCode, b.statusCode]).toEqual([200, 200]);
  });

  test('health, readiness and the OpenAPI document need no key', async () => {
    t = await makeApp({ settings: keys });
    for (const url of ['/healthz', '/readyz', '/openapi.json', '/docs']) {
      expect((await t.app.inject({ method: 'GET', url })).statusCode, url).toBe(200);
    }
  });

  test('a job is visible only to the key that submitted it', async () => {
    t = await makeApp({ settings: keys });
    const { id } = (
      await t.app.inject({
        method: 'POST',
        url: '/v1/jobs',
        payload: pyJob(),
        headers: { 'x-api-key': 'k-one' },
      })
    ).json<{ id: string }>();
    expect(
      (
        await t.app.inject({
          method: 'GET',
          url: `/v1/jobs/${id}`,
          headers: { 'x-api-key': 'k-one' },
        })
      ).statusCode,
    ).toBe(200);
    expect(
      (
        await t.app.inject({
          method: 'GET',
          url: `/v1/jobs/${id}`,
          headers: { 'x-api-key': 'k-two' },
        })
      ).statusCode,
    ).toBe(404);
  });
});

describe('rate limit', () => {
  test('a key over its rate gets 429 with Retry-After; another key is not affected', async () => {
    t = await makeApp({ settings: { apiKeys: ['a', 'b'], rateLimitPerMinute: 3 } });
    const send = (key: string) =>
      t?.app.inject({
        method: 'POST',
        url: '/v1/execute',
        payload: pyJob(),
        headers: { 'x-api-key': key },
      });
    const codes: number[] = [];
    for (let i = 0; i < 4; i++) codes.push((await send('a'))?.statusCode ?? 0);
    expect(codes).toEqual([200, 200, 200, 429]);
    const limited = await send('a');
    expect(limited?.json<ErrorBody>().code).toBe('RATE_LIMITED');
    expect(Number(limited?.headers['retry-after'])).toBeGreaterThanOrEqual(1);
    expect((await send('b'))?.statusCode).toBe(200);
    // Reads do not take tokens.
    expect(
      (await t.app.inject({ method: 'GET', url: '/v1/runtimes', headers: { 'x-api-key': 'a' } }))
        .statusCode,
    ).toBe(200);
  });

  test('the bucket refills with time', () => {
    let now = 0;
    const limiter = new RateLimiter(60, 100, () => now);
    for (let i = 0; i < 60; i++) limiter.take('c');
    expect(() => limiter.take('c')).toThrow(/rate limit/);
    now += 1000; // one token a second
    limiter.take('c');
    expect(() => limiter.take('c')).toThrow(/retry in 1 s/);
  });

  test('the table of clients stays bounded', () => {
    const limiter = new RateLimiter(10, 100, () => 0);
    for (let i = 0; i < 1000; i++) limiter.take(`client-${i}`);
    expect(
      (limiter as unknown as { buckets: Map<string, unknown> }).buckets.size,
    ).toBeLessThanOrEqual(100);
  });
});

describe('bounded queue', () => {
  test('beyond the pool and the queue: 503 with Retry-After, and nothing recorded', async () => {
    t = await makeApp({ settings: { queueMax: 1 } });
    t.engine.capacity = 2;
    const g = gate();
    t.engine.behavior = async () => {
      await g.promise;
      return { run: stage({ out: 'done' }) };
    };
    // Two run, one waits; the fourth is refused. (The queue was sized when the app was built.)
    const inflight = [1, 2, 3].map(() =>
      cur().app.inject({ method: 'POST', url: '/v1/execute', payload: pyJob() }),
    );
    await expect.poll(() => cur().queue.stats().queued).toBe(1);
    const refused = await t.app.inject({ method: 'POST', url: '/v1/execute', payload: pyJob() });
    expect(refused.statusCode).toBe(503);
    expect(refused.json<ErrorBody>().code).toBe('QUEUE_FULL');
    expect(Number(refused.headers['retry-after'])).toBeGreaterThanOrEqual(1);
    const submit = await t.app.inject({ method: 'POST', url: '/v1/jobs', payload: pyJob() });
    expect(submit.statusCode).toBe(503);
    // The three accepted executes are recorded (durably); the refused requests left nothing.
    expect(t.jobStore.counts()).toEqual({ queued: 1, running: 2, done: 0 });
    const metrics = (await t.app.inject({ method: 'GET', url: '/metrics' })).body;
    expect(metrics).toMatch(/runner_queue_depth 1/);
    expect(metrics).toMatch(/runner_queue_running 2/);
    g.open();
    const done = await Promise.all(inflight);
    expect(done.map((r) => r.statusCode)).toEqual([200, 200, 200]);
    expect(done.map((r) => r.json<ExecuteResponse>().run?.stdoutText)).toEqual([
      'done',
      'done',
      'done',
    ]);
    expect(t.jobStore.counts()).toEqual({ queued: 0, running: 0, done: 3 });
  });
});

describe('drain', () => {
  test('close waits for in-flight and submitted jobs; new jobs get 503 meanwhile', async () => {
    t = await makeApp();
    const app = t;
    const g = gate();
    t.engine.behavior = async () => {
      await g.promise;
      return { run: stage({ out: 'finished' }) };
    };
    const running = t.app.inject({ method: 'POST', url: '/v1/execute', payload: pyJob() });
    const { id } = (
      await t.app.inject({ method: 'POST', url: '/v1/jobs', payload: pyJob() })
    ).json<{ id: string }>();
    await expect.poll(() => app.queue.stats().running).toBe(2);
    app.beginDrain();
    const refused = await t.app.inject({ method: 'POST', url: '/v1/execute', payload: pyJob() });
    expect(refused.statusCode).toBe(503);
    expect(refused.json<ErrorBody>().code).toBe('SHUTTING_DOWN');
    expect(refused.headers['retry-after']).toBeDefined();
    const closing = app.app.close();
    setTimeout(() => g.open(), 50);
    await closing;
    expect((await running).json<ExecuteResponse>().run?.stdoutText).toBe('finished');
    const record = app.jobStore.get(id);
    expect(record?.state).toBe('done');
    expect((record?.result as JobView['result'])?.run?.stdoutText).toBe('finished');
  });
});

describe('server timeouts', () => {
  test('request, headers and keep-alive timeouts come from the settings', async () => {
    t = await makeApp({
      settings: { requestTimeoutMs: 20_000, headersTimeoutMs: 7000, keepAliveTimeoutMs: 3000 },
    });
    expect(t.app.server.requestTimeout).toBe(20_000);
    expect(t.app.server.headersTimeout).toBe(7000);
    expect(t.app.server.keepAliveTimeout).toBe(3000);
  });
});

function cur(): TestApp {
  if (!t) throw new Error('no app yet');
  return t;
}

describe('slow clients, on a real socket', () => {
  async function listen(
    settings: Partial<Record<string, unknown>>,
  ): Promise<{ port: number; app: TestApp }> {
    const app = await makeApp({ settings });
    await app.app.listen({ host: '127.0.0.1', port: 0 });
    const address = app.app.server.address();
    if (address === null || typeof address === 'string') throw new Error('no port');
    return { port: address.port, app };
  }

  /** Writes `chunks` slowly and resolves with what the server answered when it closed. */
  function slowClient(
    port: number,
    chunks: string[],
    gapMs: number,
  ): Promise<{ answer: string; ms: number }> {
    return new Promise((resolve, reject) => {
      const started = Date.now();
      const socket = connect(port, '127.0.0.1');
      let answer = '';
      let i = 0;
      const timer = setInterval(() => {
        const chunk = chunks[i++];
        if (chunk !== undefined && !socket.destroyed) socket.write(chunk);
      }, gapMs);
      socket.on('data', (d: Buffer) => (answer += d.toString()));
      socket.on('error', () => undefined);
      socket.on('close', () => {
        clearInterval(timer);
        resolve({ answer, ms: Date.now() - started });
      });
      setTimeout(() => {
        clearInterval(timer);
        socket.destroy();
        reject(new Error('the server kept the slow client'));
      }, 10_000);
    });
  }

  test('headers that trickle in are cut off at the headers timeout, and run nothing', async () => {
    const { port, app } = await listen({ headersTimeoutMs: 1000, requestTimeoutMs: 1000 });
    t = app;
    const trickle = Array.from({ length: 100 }, (_, i) =>
      i === 0 ? 'POST /v1/execute HTTP/1.1\r\nHost: x\r\n' : `X-Slow-${i}: 1\r\n`,
    );
    const { answer, ms } = await slowClient(port, trickle, 200);
    expect(answer).toMatch(/^HTTP\/1\.1 408/);
    expect(ms).toBeLessThan(4000);
    expect(app.engine.calls).toHaveLength(0);
  });

  test('a body that trickles in is cut off at the request timeout, holding no job slot', async () => {
    const { port, app } = await listen({ headersTimeoutMs: 1000, requestTimeoutMs: 1500 });
    t = app;
    const body = JSON.stringify(pyJob());
    const head = `POST /v1/execute HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: ${body.length}\r\n\r\n`;
    const { answer, ms } = await slowClient(port, [head, ...body.split('')], 200);
    expect(answer).toMatch(/^HTTP\/1\.1 408/);
    expect(ms).toBeLessThan(5000);
    expect(app.queue.stats()).toMatchObject({ running: 0, queued: 0 });
    expect(app.engine.calls).toHaveLength(0);
  });
});

describe('many files', () => {
  test('100,000 files are refused with 413, nothing run', async () => {
    t = await makeApp();
    const files = Array.from({ length: 100_000 }, () => ({ content: '' }));
    const res = await t.app.inject({
      method: 'POST',
      url: '/v1/execute',
      payload: { language: 'python', files },
    });
    expect(res.statusCode).toBe(413);
    expect(t.engine.calls).toHaveLength(0);
  });
});
