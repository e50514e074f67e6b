import { Duplex, PassThrough } from 'node:stream';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { AgentServer, type GuestActions } from '../../../src/agent/index.js';
import { LanguageRegistry } from '../../../src/languages/index.js';
import {
  executeOnVm,
  LIVE_OUTPUT_WINDOW_BYTES,
  prepareJob,
  type JobRequest,
  type LiveControls,
} from '../../../src/pool/index.js';
import {
  MessageChannel,
  parseAgentMessage,
  type AgentMessage,
  type HostMessage,
} from '../../../src/protocol/index.js';
import type { AgentChannel, MicroVm, VmExit } from '../../../src/vmm/index.js';
import { freeOwner, isRoot, makeExecutor, text, type ExecutorFixture } from '../agent/helpers.js';

/**
 * The host and the real agent (AgentServer + Executor, running bash on this machine) joined by
 * an in-memory duplex, with no VM in between: whatever the host's prepareJob lets through, the
 * agent must run, and the host's executeOnVm must read back what it answers. A drift between
 * the two sides' rules fails here, without a VM.
 */

const guest: GuestActions = {
  addEntropy: (bytes) => Promise.resolve(bytes.length),
  setClock: () => Promise.resolve(),
};

/** Two byte streams crossed: what one side writes, the other reads. */
function crossedPair(): { host: Duplex; agent: Duplex } {
  const toAgent = new PassThrough();
  const toHost = new PassThrough();
  return {
    host: Duplex.from({ readable: toHost, writable: toAgent }),
    agent: Duplex.from({ readable: toAgent, writable: toHost }),
  };
}

/** A MicroVm whose agent is the real one, in this process. */
class InProcessVm implements MicroVm {
  readonly driver = 'in-process';
  readonly hello = null;
  readonly state = 'running' as const;
  readonly pid = undefined;
  readonly exited = new Promise<VmExit>(() => undefined);

  constructor(
    readonly id: string,
    private readonly channel: AgentChannel,
  ) {}

  agent(): AgentChannel {
    return this.channel;
  }
  snapshot(): never {
    throw new Error('not here');
  }
  destroy(): Promise<void> {
    this.channel.close();
    return Promise.resolve();
  }
  consoleTail(): string {
    return '';
  }
}

const registry = LanguageRegistry.fromDir();
let fx: ExecutorFixture;
let vm: InProcessVm;

beforeAll(async () => {
  const owner = isRoot ? await freeOwner(46_000, 100) : null;
  fx = await makeExecutor({ owner, cgroupRoot: null });
  const pair = crossedPair();
  const server = new AgentServer({ executor: fx.executor, guest });
  void server.serve(pair.agent);
  const channel = new MessageChannel<AgentMessage, HostMessage>(pair.host, {
    parse: parseAgentMessage,
  });
  const hello = await channel.next(5000);
  expect(hello.type).toBe('hello');
  vm = new InProcessVm('in-process', channel);
});

afterAll(async () => {
  await vm.destroy();
  await fx.close();
});

async function run(request: Omit<JobRequest, 'language'>) {
  const job = prepareJob({ language: 'bash', ...request }, registry);
  const result = await executeOnVm(vm, job);
  expect(result.id).toBe(job.id);
  return result;
}

describe('host and agent agree (the real agent behind executeOnVm, no VM)', () => {
  it('runs a job end to end under one id', async () => {
    const r = await run({
      files: [{ content: 'echo "hi $1"; cat' }],
      args: ['you'],
      stdin: Buffer.from('in'),
    });
    expect(r.status).toBe('ok');
    expect(text(r.run?.stdout ?? '')).toBe('hi you\nin');
  });

  it.each([
    ['16 components deep', `${'d/'.repeat(15)}x.sh`],
    ['a 255-byte component', `${'x'.repeat(252)}.sh`],
    ['a 304-character path', `${'p'.repeat(150)}/${'q'.repeat(150)}.sh`],
    ['a name like an option', '-c'],
    ['a name like a long option', '--help'],
  ])('what the host takes, the agent runs: %s', async (_what, name) => {
    const r = await run({ files: [{ name, content: 'echo ran' }] });
    expect(r.run?.message ?? '').not.toMatch(/refused/);
    expect(r.status).toBe('ok');
    expect(text(r.run?.stdout ?? '')).toBe('ran\n');
  });

  it('runs args and env up to the exec limit the host allows', async () => {
    const r = await run({
      files: [{ content: 'echo ${#1} ${#BIG}' }],
      args: ['a'.repeat(100_000)],
      env: { BIG: 'b'.repeat(100_000) },
    });
    expect(r.status).toBe('ok');
    expect(text(r.run?.stdout ?? '')).toBe('100000 100000\n');
  });

  it('test cases come back one per case, under the same id', async () => {
    const r = await run({
      files: [{ content: 'read x; echo $((x * 2))' }],
      cases: [Buffer.from('1\n'), Buffer.from('21\n')],
    });
    expect(r.cases?.map((c) => text(c.stdout))).toEqual(['2\n', '42\n']);
  });
});

describe('executeOnVm: the deadline and the reason', () => {
  /** A VM whose agent reads the job and never answers. */
  function silentVm(): InProcessVm {
    const pair = crossedPair();
    pair.agent.resume();
    const channel = new MessageChannel<AgentMessage, HostMessage>(pair.host, {
      parse: parseAgentMessage,
    });
    return new InProcessVm('silent', channel);
  }

  it('gives up at the job deadline, saying so, on every test case', async () => {
    const job = prepareJob(
      { language: 'bash', files: [{ content: '' }], cases: [Buffer.alloc(0), Buffer.alloc(0)] },
      registry,
    );
    const started = Date.now();
    const r = await executeOnVm(silentVm(), { ...job, deadlineMs: 300 });
    expect(Date.now() - started).toBeLessThan(3000);
    expect(r.status).toBe('sandbox_error');
    expect(r.cases).toHaveLength(2);
    for (const c of r.cases ?? [])
      expect(c.message).toMatch(/no result within the job's deadline of 300 ms/);
  });
});

describe('live jobs through executeOnVm (the host side of streaming)', () => {
  it('events come in order, stdin is passed while it runs, and the result is the sum', async () => {
    const job = prepareJob(
      {
        language: 'bash',
        files: [{ content: 'echo start; read -r x; echo "got $x" >&2; read -r y; echo "then $y"' }],
        live: true,
      },
      registry,
    );
    const events: string[] = [];
    let controls: LiveControls | undefined;
    const result = await executeOnVm(vm, job, {
      onStart: (c) => (controls = c),
      onEvent: async (e) => {
        if (e.type === 'stage') {
          events.push(`${e.stage} ${e.phase}`);
          return;
        }
        const t = e.data.toString();
        events.push(`${e.stream} ${t.trim()}`);
        if (t.includes('start')) await controls?.stdin(Buffer.from('one\n'));
        if (t.includes('got')) {
          await controls?.stdin(Buffer.from('two\n'));
          controls?.stdinEnd();
        }
      },
    });
    expect(events).toEqual([
      'run start',
      'stdout start',
      'stderr got one',
      'stdout then two',
      'run end',
    ]);
    expect(text(result.run?.stdout ?? '')).toBe('start\nthen two\n');
    expect(text(result.run?.stderr ?? '')).toBe('got one\n');
    expect(controls?.ended).toBe(true);
  });

  it("a slow consumer holds the program at the window: the host's memory stays bounded", async () => {
    const job = prepareJob(
      {
        language: 'bash',
        files: [{ content: 'head -c 4000000 /dev/zero | tr "\\0" y' }],
        live: true,
      },
      registry,
    );
    let received = 0;
    const started = performance.now();
    let inFirstSecond = 0;
    const result = await executeOnVm(vm, job, {
      onEvent: async (e) => {
        if (e.type !== 'output') return;
        received += e.data.length;
        if (performance.now() - started < 1000) inFirstSecond = received;
        // A consumer that passes a chunk on only after 200 ms.
        await new Promise((r) => setTimeout(r, 200));
      },
    });
    // Whatever arrived in the first second is about one window's worth, not the flood.
    expect(inFirstSecond).toBeLessThanOrEqual(LIVE_OUTPUT_WINDOW_BYTES + 128 * 1024);
    expect(received).toBe(Buffer.from(result.run?.stdout ?? '', 'base64').length);
  }, 60_000);
});

describe('a live job with no consumer', () => {
  it('still ends with its result: events taken at once, stdin ended (a cluster worker runs such jobs)', async () => {
    const job = prepareJob(
      {
        language: 'bash',
        files: [{ content: 'echo a; cat; echo b >&2' }],
        stdin: Buffer.from('in\n'),
        live: true,
      },
      registry,
    );
    const r = await executeOnVm(vm, job);
    expect(r.status).toBe('ok');
    expect(text(r.run?.stdout ?? '')).toBe('a\nin\n');
    expect(text(r.run?.stderr ?? '')).toBe('b\n');
  });
});
