import { Duplex, PassThrough } from 'node:stream';
import { describe, expect, it } from 'vitest';
import { VmStateError } from '../../../src/errors.js';
import { PoolSlot, SLOT_STATES, VmPool, type SlotState } from '../../../src/pool/pool.js';
import { RunSlots } from '../../../src/pool/slots.js';
import { LanguageRegistry } from '../../../src/languages/index.js';
import {
  CLIENT_GONE_MESSAGE,
  executeOnVm,
  JobRunner,
  type LiveControls,
} from '../../../src/pool/runner.js';
import type { SnapshotManager, SnapshotRef } from '../../../src/pool/snapshots.js';
import {
  encodeFrame,
  FrameDecoder,
  MessageChannel,
  parseAgentMessage,
  type AgentMessage,
  type ExecuteMessage,
  type HostMessage,
} from '../../../src/protocol/index.js';
import type {
  AgentChannel,
  MicroVm,
  VmExit,
  VmLaunchOptions,
  VmmDriver,
} from '../../../src/vmm/index.js';

/**
 * A stand-in VM whose "agent" is a function of the host's messages. The pool and the job
 * runner are exercised for real; only the VMM is fake (the real one is in tests/integration).
 */
class FakeVm implements MicroVm {
  readonly driver = 'fake';
  readonly hello = null;
  state: MicroVm['state'] = 'running';
  readonly exited: Promise<VmExit>;
  destroyed = false;
  private exit!: (e: VmExit) => void;
  private readonly channel: AgentChannel;
  private readonly toAgent = new FrameDecoder();
  readonly fromAgent = new PassThrough();

  constructor(
    readonly id: string,
    respond: (m: HostMessage, vm: FakeVm) => Buffer | null,
  ) {
    this.exited = new Promise((resolve) => (this.exit = resolve));
    const stream = new Duplex({
      read() {},
      write: (chunk: Buffer, _e, cb) => {
        for (const m of this.toAgent.push(chunk)) {
          const reply = respond(m as HostMessage, this);
          if (reply) this.fromAgent.write(reply);
        }
        cb();
      },
    });
    this.fromAgent.on('data', (d: Buffer) => stream.push(d));
    this.fromAgent.on('end', () => stream.push(null));
    this.channel = new MessageChannel<AgentMessage, HostMessage>(stream, {
      parse: parseAgentMessage,
      frameTimeoutMs: 200,
    });
  }

  get pid(): number | undefined {
    return undefined;
  }
  agent(): AgentChannel {
    return this.channel;
  }
  snapshot(): never {
    throw new VmStateError('fake');
  }
  die(): void {
    this.fromAgent.end();
    this.exit({ code: null, signal: 'SIGKILL', expected: false });
  }
  destroy(): Promise<void> {
    this.destroyed = true;
    this.state = 'destroyed';
    this.channel.close();
    this.exit({ code: null, signal: 'SIGKILL', expected: true });
    return Promise.resolve();
  }
  consoleTail(): string {
    return '';
  }
}

const stage = {
  status: 'ok',
  exitCode: 0,
  signal: null,
  wallTimeMs: 5,
  cpuTimeMs: 1,
  memoryPeakBytes: 1,
  stdout: Buffer.from('hi\n').toString('base64'),
  stderr: '',
  stdoutTruncated: false,
  stderrTruncated: false,
} as const;

/** An agent that seeds and runs jobs correctly. */
const goodAgent = (m: HostMessage): Buffer | null => {
  if (m.type === 'seed')
    return encodeFrame({ type: 'seeded', id: m.id, vmId: m.vmId, entropyBytes: 64 });
  if (m.type === 'ping') return encodeFrame({ type: 'pong', id: m.id });
  return encodeFrame({
    type: 'result',
    id: m.id,
    status: 'ok',
    compile: null,
    run: stage,
    agentMs: 6,
  });
};

function fakeDriver(
  respond: (m: HostMessage, vm: FakeVm) => Buffer | null = goodAgent,
): VmmDriver & { made: FakeVm[] } {
  const made: FakeVm[] = [];
  return {
    name: 'qemu',
    made,
    boot: () => Promise.reject(new Error('not used')),
    restore: (o: VmLaunchOptions) => {
      const vm = new FakeVm(o.vmId, respond);
      made.push(vm);
      return Promise.resolve(vm);
    },
  };
}

const snapshots = {
  ensure: (language: string): Promise<SnapshotRef> =>
    Promise.resolve({
      language,
      key: 'k',
      path: '/snap',
      kernelId: 'k',
      rootfsId: 'r',
      sizeBytes: 1,
      resources: { kernelPath: '', initrdPath: '', rootfsPath: '', memoryMib: 512, vcpus: 1 },
    }),
} as unknown as SnapshotManager;

function pool(
  driver: VmmDriver,
  extra: Partial<ConstructorParameters<typeof VmPool>[0]> = {},
): VmPool {
  return new VmPool({
    driver,
    snapshots,
    runDir: '/tmp/none',
    targetPerLanguage: 1,
    maxVms: 2,
    maxMemoryMib: 100_000,
    vmMemoryMib: 512,
    restoreTimeoutMs: 2000,
    ...extra,
  });
}

const execute = (id: string): ExecuteMessage => {
  const limits = {
    wallTimeMs: 1000,
    cpuTimeMs: 1000,
    memoryMib: 64,
    processes: 8,
    outputBytes: 1024,
    fileSizeBytes: 1024,
    openFiles: 16,
    stackBytes: 8 * 1024 * 1024,
  };
  return {
    type: 'execute',
    id,
    language: 'python',
    files: [{ name: 'a.py', content: '', encoding: 'utf8' }],
    stdin: '',
    args: [],
    env: {},
    compileLimits: limits,
    runLimits: limits,
  };
};

describe('VmPool', () => {
  it('gives a restored, reseeded VM on a miss, a ready one on a hit, and destroys each after its job', async () => {
    const driver = fakeDriver();
    const p = pool(driver);
    const miss = await p.acquire('python');
    expect(miss.hit).toBe(false);
    await p.release(miss);
    expect(driver.made[0]?.destroyed).toBe(true);
    await p.warm('python');
    const hit = await p.acquire('python');
    expect(hit.hit).toBe(true);
    expect(hit.vm.state).toBe('running');
    await p.release(hit);
    expect(p.stats()).toMatchObject({ hits: 1, misses: 1, busy: 0 });
    await p.close();
    expect(driver.made.every((vm) => vm.destroyed)).toBe(true);
  });

  it('caps the VMs alive at once, by count and by memory, and makes a waiting job wait', async () => {
    expect(pool(fakeDriver(), { maxVms: 10, maxMemoryMib: 1024, vmMemoryMib: 512 }).capacity).toBe(
      2,
    );
    const p = pool(fakeDriver(), { maxVms: 1, targetPerLanguage: 0 });
    const first = await p.acquire('python');
    let second: Awaited<ReturnType<VmPool['acquire']>> | null = null;
    const waiting = p.acquire('python').then((l) => (second = l));
    await new Promise((r) => setTimeout(r, 50));
    expect(second).toBeNull();
    await p.release(first);
    await waiting;
    expect(second).not.toBeNull();
    await p.close();
  });

  it('evicts an idle VM of another language when the host is full', async () => {
    const driver = fakeDriver();
    const p = pool(driver, { maxVms: 1 });
    await p.warm('ruby');
    expect(p.stats().ready.ruby).toBe(1);
    const lease = await p.acquire('python');
    expect(lease.language).toBe('python');
    expect(driver.made[0]?.destroyed).toBe(true);
    await p.release(lease);
    await p.close();
  });

  it('replaces a ready VM that dies while idle', async () => {
    const driver = fakeDriver();
    const p = pool(driver);
    await p.warm('python');
    driver.made[0]?.die();
    await new Promise((r) => setTimeout(r, 50));
    expect(driver.made.length).toBe(2);
    expect(p.stats().ready.python).toBe(1);
    await p.close();
  });
});

describe('VmPool warm-up (PoolOptions.warmUp)', () => {
  it('warms a VM restored for the pool before it is ready, never one restored for a job', async () => {
    const warmed: string[] = [];
    const p = pool(fakeDriver(), {
      warmUp: (vm) => {
        warmed.push(vm.id);
        return Promise.resolve(true);
      },
    });
    const miss = await p.acquire('python');
    expect(warmed).toEqual([]);
    await p.release(miss);
    await p.warm('python');
    const hit = await p.acquire('python');
    expect(hit.hit).toBe(true);
    expect(warmed).toEqual([hit.vm.id]);
    expect(p.stats().warmUps).toBe(1);
    await p.release(hit);
    await p.close();
  });

  it('waits while as many jobs run as it allows, then warms once they end', async () => {
    let warmUps = 0;
    const p = pool(fakeDriver(), {
      maxVms: 3,
      warmUpBelowBusy: 1,
      warmUp: () => {
        warmUps++;
        return Promise.resolve(true);
      },
    });
    const busy = await p.acquire('ruby');
    const warming = p.warm('python');
    await new Promise((r) => setTimeout(r, 200));
    expect(p.stats().ready.python ?? 0).toBe(0);
    expect(warmUps).toBe(0);
    await p.release(busy);
    await warming;
    expect(p.stats().ready.python).toBe(1);
    expect(warmUps).toBe(1);
    await p.close();
  });

  it('skips the warm-up when the jobs do not end in time', async () => {
    let warmUps = 0;
    const p = pool(fakeDriver(), {
      maxVms: 3,
      warmUpBelowBusy: 1,
      warmUpWaitMs: 100,
      warmUp: () => {
        warmUps++;
        return Promise.resolve(true);
      },
    });
    const busy = await p.acquire('ruby');
    await p.warm('python');
    expect(p.stats().ready.python).toBe(1);
    expect(warmUps).toBe(0);
    await p.release(busy);
    await p.close();
  });

  it('destroys a VM that fails its warm-up (no retry loop), and a job then gets a fresh VM', async () => {
    const driver = fakeDriver();
    const p = pool(driver, {
      restoreTimeoutMs: 100,
      warmUp: () => Promise.reject(new Error('the test program printed nothing')),
    });
    await p.warm('python');
    await new Promise((r) => setTimeout(r, 50));
    expect(driver.made[0]?.destroyed).toBe(true);
    expect(p.stats()).toMatchObject({ failures: 1, warmUps: 0, live: 0 });
    const lease = await p.acquire('python');
    expect(lease.hit).toBe(false);
    await p.release(lease);
    await p.close();
  });
});

describe('VmPool slots: an explicit state machine', () => {
  // Written out again here, not read from the source: a change of the table must be deliberate.
  const moves: Record<SlotState, SlotState[]> = {
    restoring: ['ready', 'leased', 'destroying', 'gone'],
    ready: ['leased', 'destroying', 'gone'],
    leased: ['destroying'],
    destroying: ['gone'],
    gone: [],
  };
  const pathTo: Record<SlotState, SlotState[]> = {
    restoring: [],
    ready: ['ready'],
    leased: ['leased'],
    destroying: ['leased', 'destroying'],
    gone: ['gone'],
  };

  for (const from of SLOT_STATES) {
    for (const to of SLOT_STATES) {
      const legal = moves[from].includes(to);
      it(`${from} → ${to}: ${legal ? 'legal' : 'POOL_STATE'}`, () => {
        const slot = new PoolSlot('python', false);
        for (const step of pathTo[from]) slot.to(step);
        expect(slot.state).toBe(from);
        if (legal) {
          slot.to(to);
          expect(slot.state).toBe(to);
        } else {
          expect(() => slot.to(to)).toThrow(
            expect.objectContaining({
              code: 'POOL_STATE',
              message: expect.stringContaining(`cannot go from ${from} to ${to}`) as string,
            }) as Error,
          );
          expect(slot.state).toBe(from);
        }
      });
    }
  }

  it('refuses a lease released twice, and the counters stay right', async () => {
    const p = pool(fakeDriver(), { targetPerLanguage: 0 });
    const lease = await p.acquire('python');
    expect(p.stats()).toMatchObject({ live: 1, busy: 1 });
    await p.release(lease);
    await expect(p.release(lease)).rejects.toThrow(
      expect.objectContaining({ code: 'POOL_STATE' }) as Error,
    );
    expect(p.stats()).toMatchObject({ live: 0, busy: 0, starting: 0 });
    await p.close();
  });

  it('counts a job waiting for its own restore as busy, a background restore as starting', async () => {
    let restores = 0;
    const gates: (() => void)[] = [];
    const base = fakeDriver();
    const slow: VmmDriver = {
      ...base,
      restore: async (o, path) => {
        restores++;
        await new Promise<void>((r) => gates.push(r));
        return base.restore(o, path);
      },
    };
    const p = pool(slow, { maxVms: 3, targetPerLanguage: 1 });
    const miss = p.acquire('python');
    await new Promise((r) => setTimeout(r, 10));
    expect(p.stats()).toMatchObject({ live: 1, busy: 1, starting: 0 });
    const warming = p.warm('ruby');
    await new Promise((r) => setTimeout(r, 10));
    expect(restores).toBe(2);
    expect(p.stats()).toMatchObject({ live: 2, busy: 1, starting: 1, ready: { ruby: 0 } });
    for (const open of gates.splice(0)) open();
    const lease = await miss;
    await warming;
    expect(p.stats()).toMatchObject({ live: 2, busy: 1, starting: 0, ready: { ruby: 1 } });
    await p.release(lease);
    await p.close();
    expect(p.stats()).toMatchObject({ live: 0, busy: 0, starting: 0 });
  });

  it('counts a failed background restore once', async () => {
    const refusesSeed = (m: HostMessage): Buffer | null =>
      m.type === 'seed'
        ? encodeFrame({ type: 'error', id: m.id, code: 'BOOM', message: 'no entropy today' })
        : goodAgent(m);
    const driver = fakeDriver(refusesSeed);
    const lines: string[] = [];
    const p = pool(driver, { maxVms: 1, log: (l) => lines.push(l), restoreTimeoutMs: 50 });
    await p.warm('python');
    await p.close();
    // One restore, refused; its VM destroyed, one log line, one failure (it used to count twice).
    expect(driver.made).toHaveLength(1);
    expect(driver.made[0]?.destroyed).toBe(true);
    expect(lines.filter((l) => l.includes('restoring python failed'))).toHaveLength(1);
    expect(p.stats().failures).toBe(1);
  });
});

describe('VmPool once closed: POOL_CLOSED', () => {
  it('refuses an acquire, and a job that waited for room', async () => {
    const p = pool(fakeDriver(), { maxVms: 1, targetPerLanguage: 0 });
    const first = await p.acquire('python');
    const waiting = p.acquire('python');
    await new Promise((r) => setTimeout(r, 20));
    await p.close();
    await expect(waiting).rejects.toThrow(
      expect.objectContaining({ code: 'POOL_CLOSED' }) as Error,
    );
    await expect(p.acquire('python')).rejects.toThrow(
      expect.objectContaining({ code: 'POOL_CLOSED' }) as Error,
    );
    await expect(p.restoreFresh('python')).rejects.toThrow(
      expect.objectContaining({ code: 'POOL_CLOSED' }) as Error,
    );
    // A lease held across the close is still released properly.
    await p.release(first);
    expect(p.stats()).toMatchObject({ live: 0, busy: 0 });
  });
});

describe('VmPool.restoreFresh: the one restore path (the pool and runner bench)', () => {
  it('restores and reseeds a VM the caller owns, outside the slots, and reports the time', async () => {
    const driver = fakeDriver();
    const timed: [string, number][] = [];
    const p = pool(driver, { onRestore: (language, ms) => timed.push([language, ms]) });
    const { vm, restoreMs } = await p.restoreFresh('python');
    expect(vm.state).toBe('running');
    expect(vm.id).toMatch(/^python-[0-9a-f]{12}$/);
    expect(timed).toEqual([['python', restoreMs]]);
    expect(p.stats()).toMatchObject({ live: 0, busy: 0 });
    await vm.destroy();
    await p.close();
  });

  it('destroys the VM when its agent refuses the reseed', async () => {
    const driver = fakeDriver((m) =>
      m.type === 'seed'
        ? encodeFrame({ type: 'error', id: m.id, code: 'SANDBOX_FAILURE', message: 'no' })
        : null,
    );
    const p = pool(driver);
    await expect(p.restoreFresh('python')).rejects.toThrow(
      expect.objectContaining({ code: 'SANDBOX_FAILURE' }) as Error,
    );
    expect(driver.made[0]?.destroyed).toBe(true);
    await p.close();
  });
});

describe('executeOnVm: a broken guest ends the job as sandbox_error', () => {
  it('returns the agent’s result when all is well', async () => {
    const vm = new FakeVm('ok', goodAgent);
    const r = await executeOnVm(vm, { message: execute('j'), deadlineMs: 20_000 });
    expect(r.status).toBe('ok');
    expect(r.agentMs).toBe(6);
  });

  const broken: [string, (m: HostMessage, vm: FakeVm) => Buffer | null][] = [
    ['a lying length (0xFFFFFFFF)', () => Buffer.from([0xff, 0xff, 0xff, 0xff])],
    ['a zero length', () => Buffer.from([0, 0, 0, 0])],
    [
      'a body that is not JSON',
      () => Buffer.concat([Buffer.from([0, 0, 0, 3]), Buffer.from('abc')]),
    ],
    ['JSON of the wrong shape', () => encodeFrame({ type: 'result', id: 'j', status: 'great' })],
    [
      'a truncated frame, then silence',
      () => encodeFrame({ type: 'pong', id: 'x' }).subarray(0, 6),
    ],
    [
      'an error message',
      (m) =>
        encodeFrame({
          type: 'error',
          id: 'id' in m ? m.id : null,
          code: 'BOOM',
          message: 'agent broke',
        }),
    ],
    [
      'a new hello mid-job (the agent restarted)',
      () =>
        encodeFrame({ type: 'hello', protocol: 1, agentVersion: 'x', languages: [], vmId: null }),
    ],
    [
      'the VM dying',
      (_m, vm) => {
        setTimeout(() => vm.die(), 10);
        return null;
      },
    ],
  ];
  for (const [what, respond] of broken) {
    it(what, async () => {
      const vm = new FakeVm('bad', respond);
      const started = Date.now();
      const r = await executeOnVm(vm, { message: execute('j'), deadlineMs: 20_000 });
      expect(r.status).toBe('sandbox_error');
      expect(r.run?.message).toBeTruthy();
      expect(Date.now() - started).toBeLessThan(5000);
    });
  }
});

describe('JobRunner run slots (RunSlots)', () => {
  it('runs no more jobs at once than its slots, though the pool could hold more VMs', async () => {
    let executes = 0;
    let answer = (): void => undefined;
    // The first execute is answered only when the test says so.
    const driver = fakeDriver((m, vm) => {
      if (m.type === 'execute' && executes++ === 0) {
        answer = () => {
          const reply = goodAgent(m);
          if (reply) vm.fromAgent.write(reply);
        };
        return null;
      }
      return goodAgent(m);
    });
    const p = pool(driver, { maxVms: 4, targetPerLanguage: 0 });
    const runner = new JobRunner(
      LanguageRegistry.fromDir(),
      p,
      undefined,
      undefined,
      new RunSlots(1),
    );
    const job = () => runner.prepare({ language: 'python', files: [{ content: '' }] });
    const first = runner.run(job());
    await new Promise((r) => setTimeout(r, 50));
    const second = runner.run(job());
    await new Promise((r) => setTimeout(r, 100));
    // The second job waits for the slot, before it takes a VM.
    expect(p.stats()).toMatchObject({ busy: 1 });
    expect(runner.slots.queued).toBe(1);
    answer();
    expect((await first).status).toBe('ok');
    expect((await second).status).toBe('ok');
    expect(runner.slots.running).toBe(0);
    await p.close();
  });
});

describe('a job whose client goes away (RunOptions.signal)', () => {
  /** An agent that seeds, then never answers the first execute (a program that runs forever). */
  const hangFirst = (): ((m: HostMessage) => Buffer | null) => {
    let executes = 0;
    return (m) => {
      if (m.type === 'execute' && executes++ === 0) return null;
      return goodAgent(m);
    };
  };

  it('stops at once: sandbox_error saying so, the VM destroyed, the lease released, the next job runs', async () => {
    const driver = fakeDriver(hangFirst());
    const p = pool(driver, { maxVms: 1 });
    const runner = new JobRunner(LanguageRegistry.fromDir(), p);
    const job = runner.prepare({ language: 'python', files: [{ content: 'while True: pass' }] });
    const abort = new AbortController();
    const running = runner.run(job, { signal: abort.signal });
    await new Promise((r) => setTimeout(r, 100));
    expect(p.stats().busy).toBe(1);
    const at = Date.now();
    abort.abort();
    const result = await running;
    expect(Date.now() - at).toBeLessThan(500);
    expect(result.status).toBe('sandbox_error');
    expect(result.run?.message).toBe(CLIENT_GONE_MESSAGE);
    await new Promise((r) => setTimeout(r, 20));
    expect(driver.made[0]?.destroyed).toBe(true);
    expect(p.stats()).toMatchObject({ busy: 0, live: 0 });
    // The one place of this pool is free again: the next job gets a VM and its result.
    const next = await runner.run(runner.prepare({ language: 'python', files: [{ content: '' }] }));
    expect(next.status).toBe('ok');
    await p.close();
  });

  it('takes no VM when the client went away before the job started', async () => {
    const driver = fakeDriver();
    const p = pool(driver);
    const runner = new JobRunner(LanguageRegistry.fromDir(), p);
    const job = runner.prepare({ language: 'python', files: [{ content: '' }] });
    const result = await runner.run(job, { signal: AbortSignal.abort() });
    expect(result).toMatchObject({ status: 'sandbox_error', vmId: null });
    expect(result.run?.message).toBe(CLIENT_GONE_MESSAGE);
    expect(driver.made).toHaveLength(0);
    await p.close();
  });

  it('ends a live job too: its controls report ended', async () => {
    const vm = new FakeVm('live', () => null);
    const abort = new AbortController();
    let controls: LiveControls | undefined;
    const message: ExecuteMessage = { ...execute('j'), stream: { windowBytes: 65_536 } };
    const running = executeOnVm(
      vm,
      { message, deadlineMs: 20_000 },
      { onEvent: () => undefined, onStart: (c) => (controls = c) },
      abort.signal,
    );
    await new Promise((r) => setTimeout(r, 20));
    expect(controls?.ended).toBe(false);
    abort.abort();
    const r = await running;
    expect(r.status).toBe('sandbox_error');
    expect(controls?.ended).toBe(true);
  });
});
