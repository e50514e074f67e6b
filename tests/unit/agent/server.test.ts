import { randomBytes } from 'node:crypto';
import { mkdtemp, rm, stat, writeFile } from 'node:fs/promises';
import { connect, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  AgentServer,
  fitResult,
  listProcessesOfUid,
  UnixTransport,
  type GuestActions,
} from '../../../src/agent/index.js';
import { hasCode } from '../../../src/errors.js';
import {
  encodeFrame,
  FrameDecoder,
  MessageChannel,
  parseAgentMessage,
  PROTOCOL_VERSION,
  type AgentMessage,
  type ExecuteMessage,
  type HostMessage,
  type ResultMessage,
} from '../../../src/protocol/index.js';
import { AGENT_VERSION } from '../../../src/version.js';
import {
  bash,
  findCgroupRoot,
  freeOwner,
  isRoot,
  job,
  makeExecutor,
  text,
  type ExecutorFixture,
} from './helpers.js';

/** Records what the agent asked of its guest; never touches the machine. */
class FakeGuest implements GuestActions {
  readonly entropy: Buffer[] = [];
  readonly clock: number[] = [];
  fail = false;

  addEntropy(bytes: Buffer): Promise<number> {
    if (this.fail) return Promise.reject(new Error('no ioctl for you'));
    this.entropy.push(bytes);
    return Promise.resolve(bytes.length);
  }

  setClock(unixTimeMs: number): Promise<void> {
    this.clock.push(unixTimeMs);
    return Promise.resolve();
  }
}

type HostChannel = MessageChannel<AgentMessage, HostMessage>;

let fx: ExecutorFixture;
let dir: string;
let socketPath: string;
let server: AgentServer;
let transport: UnixTransport;
const guest = new FakeGuest();
const logs: string[] = [];

beforeAll(async () => {
  const owner = isRoot ? await freeOwner(60900, 100) : null;
  fx = await makeExecutor({ owner, cgroupRoot: await findCgroupRoot() });
  dir = await mkdtemp(join(tmpdir(), 'runner-agent-sock-'));
  socketPath = join(dir, 'run', 'agent.sock');
  server = new AgentServer({
    executor: fx.executor,
    guest,
    vmId: 'vm-initial',
    frameTimeoutMs: 1000,
    log: (l) => logs.push(l),
  });
  transport = new UnixTransport(server, socketPath);
  await transport.start();
});

afterAll(async () => {
  await transport.close();
  await fx.close();
  await rm(dir, { recursive: true, force: true });
});

/** Connects as the host; the fixture closes it. */
async function open(): Promise<{ ch: HostChannel; socket: Socket }> {
  // A previous session may still be winding down (its job being killed).
  await expect.poll(() => server.busy, { timeout: 5000 }).toBe(false);
  const socket = connect(socketPath);
  await new Promise<void>((resolve, reject) => {
    socket.once('connect', resolve);
    socket.once('error', reject);
  });
  return { ch: new MessageChannel(socket, { parse: parseAgentMessage }), socket };
}

async function session<T>(fn: (ch: HostChannel, socket: Socket) => Promise<T>): Promise<T> {
  const { ch, socket } = await open();
  try {
    const hello = await ch.next(5000);
    expect(hello.type).toBe('hello');
    return await fn(ch, socket);
  } finally {
    ch.close();
  }
}

function execute(id: string, request: ReturnType<typeof bash>): ExecuteMessage {
  return { type: 'execute', id, ...request };
}

/** Resolves when the agent closes the connection. */
function closedByAgent(ch: HostChannel): Promise<Error> {
  return new Promise((resolve) => ch.onClose(resolve));
}

describe('agent server over a unix socket', () => {
  it('listens on a socket only root may use', async () => {
    const st = await stat(socketPath);
    expect(st.isSocket()).toBe(true);
    expect(st.mode & 0o777).toBe(0o600);
  });

  it('says hello first', async () => {
    const { ch } = await open();
    try {
      expect(await ch.next(5000)).toEqual({
        type: 'hello',
        protocol: PROTOCOL_VERSION,
        agentVersion: AGENT_VERSION,
        languages: fx.executor.languages(),
        vmId: 'vm-initial',
      });
    } finally {
      ch.close();
    }
  });

  it('answers ping with pong', async () => {
    await session(async (ch) => {
      await ch.send({ type: 'ping', id: 'p-1' });
      expect(await ch.next(5000)).toEqual({ type: 'pong', id: 'p-1' });
    });
  });

  it('runs a job and returns its result', async () => {
    await session(async (ch) => {
      await ch.send({
        type: 'execute',
        id: 'job-1',
        ...job('python', 'main.py', 'import sys\nprint("hi", sys.stdin.read())\n', {
          stdin: Buffer.from('there').toString('base64'),
        }),
      });
      const reply = (await ch.next(20_000)) as ResultMessage;
      expect(reply.type).toBe('result');
      expect([reply.id, reply.status, reply.compile]).toEqual(['job-1', 'ok', null]);
      expect(text(reply.run?.stdout ?? '')).toBe('hi there\n');
    });
  });

  it('answers a bad request with an error message and keeps the session', async () => {
    await session(async (ch) => {
      await ch.send(execute('j-lang', { ...bash('echo'), language: 'klingon' }));
      expect(await ch.next(5000)).toMatchObject({
        type: 'error',
        id: 'j-lang',
        code: 'LANGUAGE_UNKNOWN',
      });
      await ch.send(execute('j-name', job('bash', 'a/../../x.sh', 'echo')));
      expect(await ch.next(5000)).toMatchObject({
        type: 'error',
        id: 'j-name',
        code: 'FILE_NAME_INVALID',
      });
      await ch.send({ type: 'ping', id: 'still-there' });
      expect(await ch.next(5000)).toEqual({ type: 'pong', id: 'still-there' });
    });
  });

  it('answers ping while a job runs', async () => {
    await session(async (ch) => {
      await ch.send(execute('slow', bash('sleep 0.5; echo done')));
      await ch.send({ type: 'ping', id: 'during' });
      expect(await ch.next(5000)).toEqual({ type: 'pong', id: 'during' });
      expect(await ch.next(10_000)).toMatchObject({ type: 'result', id: 'slow', status: 'ok' });
    });
  });

  it('seeds entropy and clock, and takes the new vm id', async () => {
    const entropy = randomBytes(48);
    await session(async (ch) => {
      await ch.send({
        type: 'seed',
        id: 's-1',
        entropy: entropy.toString('base64'),
        unixTimeMs: 1_700_000_000_123,
        vmId: 'vm-seeded',
      });
      expect(await ch.next(5000)).toEqual({
        type: 'seeded',
        id: 's-1',
        vmId: 'vm-seeded',
        entropyBytes: 48,
        via: 'tools',
      });
    });
    expect(guest.entropy.at(-1)).toEqual(entropy);
    expect(guest.clock.at(-1)).toBe(1_700_000_000_123);
    const { ch } = await open();
    try {
      expect(await ch.next(5000)).toMatchObject({ type: 'hello', vmId: 'vm-seeded' });
    } finally {
      ch.close();
    }
  });

  it('reports a failed seed as an error', async () => {
    guest.fail = true;
    try {
      await session(async (ch) => {
        await ch.send({
          type: 'seed',
          id: 's-2',
          entropy: randomBytes(32).toString('base64'),
          unixTimeMs: 1,
          vmId: 'vm-x',
        });
        expect(await ch.next(5000)).toMatchObject({
          type: 'error',
          id: 's-2',
          code: 'SANDBOX_FAILURE',
        });
      });
    } finally {
      guest.fail = false;
    }
    expect(server.vmId).not.toBe('vm-x');
  });

  it('turns a second host away with AGENT_BUSY and keeps the first', async () => {
    await session(async (ch) => {
      const second = connect(socketPath);
      const decoder = new FrameDecoder();
      const frames: unknown[] = [];
      second.on('data', (d: Buffer) => frames.push(...decoder.push(d)));
      await new Promise<void>((resolve) => second.once('close', () => resolve()));
      expect(frames).toEqual([
        { type: 'error', id: null, code: 'AGENT_BUSY', message: expect.any(String) as string },
      ]);
      await ch.send({ type: 'ping', id: 'first' });
      expect(await ch.next(5000)).toEqual({ type: 'pong', id: 'first' });
    });
  });

  const badFrames: [string, Buffer][] = [
    ['bad JSON', Buffer.concat([Buffer.from([0, 0, 0, 5]), Buffer.from('{bad}')])],
    ['a length over the cap', Buffer.from([0xff, 0xff, 0xff, 0xff])],
    ['a zero length', Buffer.from([0, 0, 0, 0])],
    ['an unknown field', encodeFrame({ type: 'ping', id: 'x', extra: 1 })],
    ['an unknown type', encodeFrame({ type: 'reboot', id: 'x' })],
  ];
  for (const [what, frame] of badFrames) {
    it(`closes the session on ${what} and serves the next one`, async () => {
      const { ch, socket } = await open();
      expect((await ch.next(5000)).type).toBe('hello');
      const closed = closedByAgent(ch);
      socket.write(frame);
      await closed;
      await session(async (next) => {
        await next.send({ type: 'ping', id: 'after' });
        expect(await next.next(5000)).toEqual({ type: 'pong', id: 'after' });
      });
    });
  }

  it('closes the session when a frame trickles in too slowly', async () => {
    const { ch, socket } = await open();
    expect((await ch.next(5000)).type).toBe('hello');
    const closed = closedByAgent(ch);
    socket.write(Buffer.from([0, 0, 0, 50, 0x7b]));
    const started = Date.now();
    await closed;
    expect(Date.now() - started).toBeGreaterThanOrEqual(900);
  });

  it('kills the running job when the host goes away', async () => {
    const { ch } = await open();
    expect((await ch.next(5000)).type).toBe('hello');
    await ch.send(
      execute('orphan', bash('sleep 30 & sleep 31; echo never', { wallTimeMs: 20_000 })),
    );
    await new Promise((r) => setTimeout(r, 300));
    ch.close();
    await expect.poll(() => server.busy, { timeout: 3000 }).toBe(false);
    if (fx.owner) expect(await listProcessesOfUid(fx.owner.uid)).toEqual([]);
    expect(await fx.leftovers()).toEqual([]);
  });

  it('replaces a stale socket file but refuses to remove anything else', async () => {
    const stalePath = join(dir, 'stale.sock');
    const first = new UnixTransport(server, stalePath);
    await first.start();
    await first.close();
    const again = new UnixTransport(server, stalePath);
    await again.start();
    await again.close();
    const filePath = join(dir, 'plain-file');
    await writeFile(filePath, 'keep');
    const err = await new UnixTransport(server, filePath).start().then(
      () => null,
      (e: unknown) => e,
    );
    expect(hasCode(err, 'CONFIG_INVALID')).toBe(true);
  });
});

describe('fitResult', () => {
  it('trims outputs so the result fits one frame, and says so', () => {
    const big = randomBytes(300_000).toString('base64');
    const stageResult = {
      status: 'ok' as const,
      exitCode: 0,
      signal: null,
      wallTimeMs: 1,
      cpuTimeMs: 1,
      memoryPeakBytes: null,
      stdout: big,
      stderr: big,
      stdoutTruncated: false,
      stderrTruncated: false,
    };
    const reply: ResultMessage = {
      type: 'result',
      id: 'r',
      status: 'ok',
      compile: stageResult,
      run: stageResult,
    };
    const fitted = fitResult(reply, 1024 * 1024);
    expect(Buffer.byteLength(JSON.stringify(fitted))).toBeLessThanOrEqual(1024 * 1024);
    expect(fitted.run?.stdoutTruncated).toBe(true);
    expect(fitted.run?.message).toMatch(/trimmed/);
    expect(Buffer.from(fitted.run?.stdout ?? '', 'base64')).toEqual(
      Buffer.from(big, 'base64').subarray(
        0,
        Buffer.from(fitted.run?.stdout ?? '', 'base64').length,
      ),
    );
    expect(parseAgentMessage(fitted)).toEqual(fitted);
    const small = { ...reply, compile: null, run: { ...stageResult, stdout: '', stderr: '' } };
    expect(fitResult(small, 1024 * 1024)).toBe(small);
  });
});
