import { Writable } from 'node:stream';
import type { AddressInfo } from 'node:net';
import { pino } from 'pino';
import { afterEach, describe, expect, it } from 'vitest';
import WebSocket from 'ws';
import { buildApp } from '../../../src/api/app.js';
import {
  nativeCloseCode,
  parseNativeMessage,
  parsePistonMessage,
  PISTON_CLOSE,
  takeUrlKey,
} from '../../../src/api/live/index.js';
import type { JobResult, PreparedJob, RunOptions } from '../../../src/pool/index.js';
import { JobStore } from '../../../src/queue/index.js';
import { FakeEngine, gate, makeApp, stage, testSettings, type TestApp } from './helpers.js';

describe('Piston client messages', () => {
  it('reads init, stdin data and signals as Piston does', () => {
    expect(parsePistonMessage('{"type":"init","language":"py","version":"*"}', false)).toEqual({
      kind: 'init',
      body: { language: 'py', version: '*' },
    });
    expect(parsePistonMessage('{"type":"data","stream":"stdin","data":"hi\\n"}', true)).toEqual({
      kind: 'stdin',
      data: Buffer.from('hi\n'),
    });
    expect(parsePistonMessage('{"type":"signal","signal":"SIGINT"}', true)).toEqual({
      kind: 'signal',
      signal: 'SIGINT',
    });
    // Piston ignores a type it does not know.
    expect(parsePistonMessage('{"type":"ping"}', true)).toEqual({ kind: 'ignore' });
  });

  it('gives each misuse its Piston close code', () => {
    const close = (raw: string, initialised: boolean) => {
      const a = parsePistonMessage(raw, initialised);
      return a.kind === 'close' ? a.close.code : a.kind;
    };
    expect(close('{"type":"init"}', true)).toBe(PISTON_CLOSE.alreadyInitialised.code);
    expect(close('{"type":"data","stream":"stdin","data":"x"}', false)).toBe(4003);
    expect(close('{"type":"signal","signal":"SIGINT"}', false)).toBe(4003);
    expect(close('{"type":"data","stream":"stdout","data":"x"}', true)).toBe(4004);
    expect(close('{"type":"signal","signal":"SIGWHAT"}', true)).toBe(4005);
    expect(close('{"type":"signal","signal":9}', true)).toBe(4005);
    expect(close('not json', false)).toBe('error');
    expect(close('[1]', false)).toBe('error');
    expect(close('{"type":"data","stream":"stdin","data":5}', true)).toBe('error');
  });
});

describe('native client messages', () => {
  it('reads init, stdin as text or base64, stdin_end and signals', () => {
    expect(parseNativeMessage('{"type":"init","language":"python"}', false)).toEqual({
      kind: 'init',
      body: { language: 'python' },
    });
    expect(parseNativeMessage('{"type":"stdin","data":"é"}', true)).toEqual({
      kind: 'stdin',
      data: Buffer.from('é'),
    });
    expect(parseNativeMessage('{"type":"stdin","dataBase64":"AAE="}', true)).toEqual({
      kind: 'stdin',
      data: Buffer.from([0, 1]),
    });
    expect(parseNativeMessage('{"type":"stdin_end"}', true)).toEqual({ kind: 'stdin_end' });
    expect(parseNativeMessage('{"type":"signal","signal":"SIGTERM"}', true)).toEqual({
      kind: 'signal',
      signal: 'SIGTERM',
    });
  });

  it('refuses what is out of turn, unknown or malformed, naming it', () => {
    const message = (raw: string, initialised: boolean): string => {
      const a = parseNativeMessage(raw, initialised);
      return a.kind === 'error' ? a.message : a.kind;
    };
    expect(message('{"type":"stdin","data":"x"}', false)).toMatch(/before init/);
    expect(message('{"type":"init"}', true)).toMatch(/initialised already/);
    expect(message('{"type":"nope"}', true)).toMatch(/unknown message type "nope"/);
    expect(message('{"type":"stdin","data":"x","extra":1}', true)).toMatch(/unknown field/);
    expect(message('{"type":"stdin","dataBase64":"%%"}', true)).toMatch(/base64/);
    expect(message('{"type":"stdin"}', true)).toMatch(/data or dataBase64/);
    expect(message('{"type":"signal","signal":"SIGSTOP"}', true)).toMatch(/one of SIGINT/);
    expect(message('{', false)).toMatch(/not JSON/);
    expect(nativeCloseCode(400)).toBe(4400);
    expect(nativeCloseCode(503)).toBe(4503);
  });
});

describe('the key in the URL of a WebSocket route', () => {
  it('is taken off the two WebSocket routes only, other parameters kept', () => {
    expect(takeUrlKey('/v1/connect?key=K')).toEqual({ url: '/v1/connect', key: 'K' });
    expect(takeUrlKey('/api/v2/connect?a=1&key=K%20')).toEqual({
      url: '/api/v2/connect?a=1',
      key: 'K ',
    });
    expect(takeUrlKey('/v1/execute?key=K')).toEqual({ url: '/v1/execute?key=K', key: undefined });
    expect(takeUrlKey('/v1/connect')).toEqual({ url: '/v1/connect', key: undefined });
  });
});

/** A socket's messages (parsed) and its close, collected. */
function collect(ws: WebSocket): {
  messages: Record<string, unknown>[];
  closed: Promise<{ code: number; reason: string }>;
} {
  const messages: Record<string, unknown>[] = [];
  ws.on('message', (d: Buffer) =>
    messages.push(JSON.parse(d.toString()) as Record<string, unknown>),
  );
  const closed = new Promise<{ code: number; reason: string }>((resolve) =>
    ws.on('close', (code, reason) => resolve({ code, reason: reason.toString() })),
  );
  return { messages, closed };
}

const opened = (ws: WebSocket): Promise<void> =>
  new Promise((resolve, reject) => {
    ws.once('open', () => resolve());
    ws.once('error', reject);
  });

/**
 * A fake engine that plays a compiled job's live events (compile, then run) and records what
 * the program was given; it starts the program 100 ms after the job is run.
 */
class CompiledEngine extends FakeEngine {
  readonly stdin: string[] = [];
  readonly signals: string[] = [];
  compileStatus: 'ok' | 'compile_error' = 'ok';

  override async run(job: PreparedJob, options: RunOptions = {}): Promise<JobResult> {
    const failed = this.compileStatus !== 'ok';
    this.behavior = () =>
      failed
        ? { compile: stage({ status: 'compile_error', exitCode: 1, err: 'bad' }), run: null }
        : { run: stage({ out: 'ran\n' }) };
    const result = await super.run(job);
    const live = options.live;
    if (live === undefined) return result;
    await new Promise((r) => setTimeout(r, 100));
    live.onStart?.({
      stdin: (data) => {
        this.stdin.push(data.toString());
        return Promise.resolve();
      },
      stdinEnd: () => this.stdin.push('<end>'),
      signal: (sig) => this.signals.push(sig),
      ended: false,
    });
    await live.onEvent({ type: 'stage', stage: 'compile', phase: 'start' });
    await live.onEvent({
      type: 'stage',
      stage: 'compile',
      phase: 'end',
      status: this.compileStatus,
    });
    if (failed) return result;
    await live.onEvent({ type: 'stage', stage: 'run', phase: 'start' });
    // A character split across two chunks.
    const text = Buffer.from('ran é\n');
    await live.onEvent({ type: 'output', stream: 'stdout', data: text.subarray(0, 5) });
    await live.onEvent({ type: 'output', stream: 'stdout', data: text.subarray(5) });
    await new Promise((r) => setTimeout(r, 100));
    await live.onEvent({ type: 'stage', stage: 'run', phase: 'end', status: 'ok' });
    return result;
  }
}

describe('the WebSocket routes on a fake engine', () => {
  let t: TestApp | undefined;
  afterEach(async () => {
    await t?.close();
    t = undefined;
  });

  const listen = async (settings: Record<string, unknown> = {}, engine?: FakeEngine) => {
    t = await makeApp({ settings, ...(engine && { engine }) });
    await t.app.listen({ host: '127.0.0.1', port: 0 });
    const { port } = t.app.server.address() as AddressInfo;
    return `ws://127.0.0.1:${port}`;
  };

  it('Piston: runtime, stage, data, exit, then 4999', async () => {
    const engine = new FakeEngine();
    engine.behavior = () => ({ run: stage({ out: 'hi\n', status: 'ok' }) });
    const base = await listen({}, engine);
    const ws = new WebSocket(`${base}/api/v2/connect`);
    const { messages, closed } = collect(ws);
    await opened(ws);
    ws.send(
      JSON.stringify({
        type: 'init',
        language: 'python',
        version: '*',
        files: [{ content: 'print(1)' }],
      }),
    );
    expect(await closed).toEqual({ code: 4999, reason: 'Job Completed' });
    expect(messages).toEqual([
      { type: 'runtime', language: 'python', version: '3.11.2' },
      { type: 'stage', stage: 'run' },
      { type: 'data', stream: 'stdout', data: 'hi\n' },
      { type: 'exit', stage: 'run', code: 0, signal: null, status: 'ok', truncated: false },
    ]);
  });

  it("Piston: a compiled job's stages and exits in order, stdin and signals sent early kept for the program", async () => {
    const engine = new CompiledEngine();
    const base = await listen({}, engine);
    const ws = new WebSocket(`${base}/api/v2/connect`);
    const { messages, closed } = collect(ws);
    await opened(ws);
    ws.send(
      JSON.stringify({
        type: 'init',
        language: 'c',
        version: '*',
        files: [{ content: 'int main(){}' }],
      }),
    );
    ws.send(JSON.stringify({ type: 'data', stream: 'stdin', data: 'early\n' }));
    ws.send(JSON.stringify({ type: 'signal', signal: 'SIGUSR1' }));
    expect((await closed).code).toBe(4999);
    const exit = { signal: null, status: 'ok', truncated: false };
    expect(messages.slice(1)).toEqual([
      { type: 'stage', stage: 'compile' },
      { type: 'exit', stage: 'compile', code: 0, ...exit },
      { type: 'stage', stage: 'run' },
      { type: 'data', stream: 'stdout', data: 'ran ' },
      { type: 'data', stream: 'stdout', data: 'é\n' },
      { type: 'exit', stage: 'run', code: 0, ...exit },
    ]);
    expect(engine.stdin).toEqual(['early\n']);
    expect(engine.signals).toEqual(['SIGUSR1']);
  });

  it("Piston: a failed compile's exit carries its code and status", async () => {
    const engine = new CompiledEngine();
    engine.compileStatus = 'compile_error';
    const base = await listen({}, engine);
    const ws = new WebSocket(`${base}/api/v2/connect`);
    const { messages, closed } = collect(ws);
    await opened(ws);
    ws.send(
      JSON.stringify({ type: 'init', language: 'c', version: '*', files: [{ content: 'x' }] }),
    );
    expect((await closed).code).toBe(4999);
    expect(messages.slice(1)).toEqual([
      { type: 'stage', stage: 'compile' },
      {
        type: 'exit',
        stage: 'compile',
        code: 1,
        signal: null,
        status: 'compile_error',
        truncated: false,
      },
    ]);
  });

  it('native: stdin over the cap before the program starts is PAYLOAD_TOO_LARGE, 4413', async () => {
    const base = await listen({ maxStdinBytes: 8 }, new CompiledEngine());
    const ws = new WebSocket(`${base}/v1/connect`);
    const { messages, closed } = collect(ws);
    await opened(ws);
    ws.send(JSON.stringify({ type: 'init', language: 'c', files: [{ content: 'x' }] }));
    ws.send(JSON.stringify({ type: 'stdin', data: '0123456789' }));
    expect((await closed).code).toBe(4413);
    expect(messages.at(-1)).toMatchObject({ type: 'error', error: { code: 'PAYLOAD_TOO_LARGE' } });
  });

  it('Piston: a bad init is an error message, then 4002', async () => {
    const base = await listen();
    const ws = new WebSocket(`${base}/api/v2/connect`);
    const { messages, closed } = collect(ws);
    await opened(ws);
    ws.send(
      JSON.stringify({ type: 'init', language: 'klingon', version: '*', files: [{ content: '' }] }),
    );
    expect((await closed).code).toBe(4002);
    expect(messages).toHaveLength(1);
    expect(messages[0]?.type).toBe('error');
    expect(String(messages[0]?.message)).toMatch(/klingon/);
  });

  it('native: started, the SSE events, the result, then 1000', async () => {
    const base = await listen();
    const ws = new WebSocket(`${base}/v1/connect`);
    const { messages, closed } = collect(ws);
    await opened(ws);
    ws.send(
      JSON.stringify({ type: 'init', language: 'python', files: [{ content: '' }], stdin: 'x' }),
    );
    expect((await closed).code).toBe(1000);
    expect(messages.map((m) => m.type)).toEqual(['started', 'stage', 'output', 'stage', 'result']);
    expect(messages[2]).toEqual({
      type: 'output',
      stream: 'stdout',
      data: Buffer.from('x').toString('base64'),
    });
    expect(messages[4]).toMatchObject({ result: { status: 'ok', language: 'python' } });
  });

  it('native: an error from the catalogue, then 4000 + its status', async () => {
    const base = await listen();
    const ws = new WebSocket(`${base}/v1/connect`);
    const { messages, closed } = collect(ws);
    await opened(ws);
    ws.send(JSON.stringify({ type: 'init', language: 'python', files: [] }));
    expect(await closed).toEqual({ code: 4400, reason: 'REQUEST_INVALID' });
    expect(messages[0]).toMatchObject({
      type: 'error',
      error: { code: 'REQUEST_INVALID', status: 400 },
    });
  });

  it('at close, an open socket ends with 1001 (going away)', async () => {
    const engine = new FakeEngine();
    const running = gate();
    engine.behavior = async () => {
      await running.promise;
      return {};
    };
    const base = await listen({}, engine);
    const ws = new WebSocket(`${base}/v1/connect`);
    const { closed } = collect(ws);
    await opened(ws);
    ws.send(JSON.stringify({ type: 'init', language: 'python', files: [{ content: '' }] }));
    await new Promise((r) => setTimeout(r, 100));
    const closing = t?.close();
    t = undefined;
    expect((await closed).code).toBe(1001);
    running.open();
    await closing;
  });

  it('a plain GET of a WebSocket route is 426', async () => {
    t = await makeApp();
    const res = await t.app.inject({ method: 'GET', url: '/v1/connect' });
    expect(res.statusCode).toBe(426);
    expect(res.json()).toMatchObject({ code: 'UPGRADE_REQUIRED' });
  });

  it('with API keys: the upgrade is refused with 401 without a key, taken with ?key= or a header', async () => {
    const base = await listen({ apiKeys: ['sekrit-key'] });
    const refused = new WebSocket(`${base}/v1/connect`);
    const status = await new Promise<number>((resolve) =>
      refused.on('unexpected-response', (_req, res) => resolve(res.statusCode ?? 0)),
    );
    expect(status).toBe(401);
    const wrong = new WebSocket(`${base}/api/v2/connect?key=nope`);
    await expect(opened(wrong)).rejects.toThrow(/401/);
    for (const ws of [
      new WebSocket(`${base}/api/v2/connect?key=sekrit-key`),
      new WebSocket(`${base}/api/v2/connect`, { headers: { 'x-api-key': 'sekrit-key' } }),
    ]) {
      await opened(ws);
      ws.close();
    }
  });
});

describe('the key in a WebSocket URL never reaches the logs', () => {
  it('is not in any log line of the request', async () => {
    const lines: string[] = [];
    const sink = new Writable({
      write(chunk: Buffer, _e, cb) {
        lines.push(chunk.toString());
        cb();
      },
    });
    const jobStore = new JobStore(':memory:', { maxBytes: 1_000_000 });
    const { app } = buildApp({
      engine: new FakeEngine(),
      settings: testSettings({ apiKeys: ['the-secret-key'] }),
      jobStore,
      loggerInstance: pino({ level: 'trace' }, sink),
    });
    try {
      await app.listen({ host: '127.0.0.1', port: 0 });
      const { port } = app.server.address() as AddressInfo;
      const ws = new WebSocket(`ws://127.0.0.1:${port}/v1/connect?key=the-secret-key&x=1`);
      await opened(ws);
      const { closed } = collect(ws);
      ws.send(JSON.stringify({ type: 'init', language: 'python', files: [{ content: '' }] }));
      await closed;
      const bad = new WebSocket(`ws://127.0.0.1:${port}/api/v2/connect?key=the-secret-keyX`);
      await expect(opened(bad)).rejects.toThrow(/401/);
    } finally {
      await app.close();
      jobStore.close();
    }
    const log = lines.join('');
    expect(log).toContain('/v1/connect?x=1');
    expect(log).not.toContain('the-secret-key');
  });
});
