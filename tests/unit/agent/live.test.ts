import { Duplex, PassThrough } from 'node:stream';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { AgentServer, type GuestActions } from '../../../src/agent/index.js';
import { prepareJob } from '../../../src/pool/index.js';
import {
  MessageChannel,
  parseAgentMessage,
  type AgentMessage,
  type ExecuteMessage,
  type HostMessage,
} from '../../../src/protocol/index.js';
import { freeOwner, isRoot, makeExecutor, registry, type ExecutorFixture } from './helpers.js';

/**
 * Live jobs (execute with `stream`): the real AgentServer and Executor (bash on this machine)
 * over an in-memory duplex, the host side played by the test through the protocol itself.
 */

const guest: GuestActions = {
  addEntropy: (bytes) => Promise.resolve(bytes.length),
  setClock: () => Promise.resolve(),
};

let fx: ExecutorFixture;
let channel: MessageChannel<AgentMessage, HostMessage>;

beforeAll(async () => {
  const owner = isRoot ? await freeOwner(47_000, 100) : null;
  fx = await makeExecutor({ owner, cgroupRoot: null });
  const toAgent = new PassThrough();
  const toHost = new PassThrough();
  const server = new AgentServer({ executor: fx.executor, guest });
  void server.serve(Duplex.from({ readable: toAgent, writable: toHost }));
  channel = new MessageChannel<AgentMessage, HostMessage>(
    Duplex.from({ readable: toHost, writable: toAgent }),
    { parse: parseAgentMessage },
  );
  expect((await channel.next(5000)).type).toBe('hello');
});

afterAll(async () => {
  channel.close();
  await fx.close();
});

/** A live bash job's execute message. */
function live(code: string, windowBytes = 1 << 20, stdin = ''): ExecuteMessage {
  const job = prepareJob(
    { language: 'bash', files: [{ content: code }], stdin: Buffer.from(stdin) },
    registry,
  );
  return { ...job.message, stream: { windowBytes } };
}

interface Seen {
  readonly at: number;
  readonly message: AgentMessage;
}

/** Credits an output chunk's bytes back to the agent (room for more output). */
const credit = (id: string, data: string): Promise<void> =>
  channel.send({ type: 'credit', id, bytes: Buffer.from(data, 'base64').length });

/**
 * Reads the job's messages until its result; `onMessage` may answer (stdin, credits...).
 * By default every output chunk is credited at once.
 */
async function follow(
  id: string,
  onMessage: (m: AgentMessage, seen: Seen[]) => Promise<void> | void = async (m) => {
    if (m.type === 'output') await credit(id, m.data);
  },
): Promise<Seen[]> {
  const seen: Seen[] = [];
  for (;;) {
    const message = await channel.next(30_000);
    seen.push({ at: performance.now(), message });
    await onMessage(message, seen);
    if (message.type === 'result' && message.id === id) return seen;
  }
}

const outputs = (seen: Seen[]) =>
  seen.flatMap((s) =>
    s.message.type === 'output'
      ? [
          {
            at: s.at,
            stream: s.message.stream,
            text: Buffer.from(s.message.data, 'base64').toString(),
          },
        ]
      : [],
  );

describe('live jobs: output as it comes, stdin and signals as they are sent', () => {
  it('a program that prints, sleeps and prints again is seen in two chunks, the pause between', async () => {
    const m = live('echo one; sleep 0.6; echo two');
    await channel.send(m);
    const seen = await follow(m.id);
    const out = outputs(seen);
    expect(out.map((o) => o.text)).toEqual(['one\n', 'two\n']);
    expect((out[1]?.at ?? 0) - (out[0]?.at ?? 0)).toBeGreaterThan(400);
    const stages = seen.flatMap((s) =>
      s.message.type === 'stage' ? [`${s.message.stage} ${s.message.phase}`] : [],
    );
    expect(stages).toEqual(['run start', 'run end']);
    const result = seen.at(-1)?.message;
    // The one-shot result is the sum of the stream.
    expect(
      result?.type === 'result' && Buffer.from(result.run?.stdout ?? '', 'base64').toString(),
    ).toBe('one\ntwo\n');
  });

  it('stdout and stderr come in the order the program wrote them', async () => {
    const m = live('echo o1; sleep 0.2; echo e1 >&2; sleep 0.2; echo o2; sleep 0.2; echo e2 >&2');
    await channel.send(m);
    const out = outputs(await follow(m.id));
    expect(out.map((o) => `${o.stream}:${o.text.trim()}`)).toEqual([
      'stdout:o1',
      'stderr:e1',
      'stdout:o2',
      'stderr:e2',
    ]);
  });

  it('an interactive program is answered line by line, and reads end of file at stdin_end', async () => {
    const m = live('while read -r line; do echo "got $line"; done; echo bye', 1 << 20, 'first\n');
    await channel.send(m);
    const answers = ['second', 'third'];
    const seen = await follow(m.id, async (msg) => {
      if (msg.type !== 'output') return;
      await credit(m.id, msg.data);
      const next = answers.shift();
      if (next !== undefined)
        await channel.send({
          type: 'stdin',
          id: m.id,
          data: Buffer.from(`${next}\n`).toString('base64'),
        });
      else await channel.send({ type: 'stdin_end', id: m.id });
    });
    const text = outputs(seen)
      .map((o) => o.text)
      .join('');
    expect(text).toBe('got first\ngot second\ngot third\nbye\n');
    // Each stdin chunk was acknowledged once it was in the program's pipe.
    const credits = seen.filter((s) => s.message.type === 'credit');
    expect(credits.length).toBe(2);
  });

  it('a signal reaches the running program', async () => {
    const m = live("trap 'echo caught; exit 3' INT; echo ready; while :; do sleep 0.05; done");
    await channel.send(m);
    const seen = await follow(m.id, async (msg) => {
      if (msg.type !== 'output') return;
      await credit(m.id, msg.data);
      if (Buffer.from(msg.data, 'base64').toString().includes('ready'))
        await channel.send({ type: 'signal', id: m.id, signal: 'SIGINT' });
    });
    const result = seen.at(-1)?.message;
    expect(
      outputs(seen)
        .map((o) => o.text)
        .join(''),
    ).toContain('caught');
    expect(result?.type === 'result' && result.run?.exitCode).toBe(3);
  });

  it('a signal sent with the job, before its stage has processes, still reaches the program', async () => {
    const m = live('echo started; sleep 20; echo never');
    const started = Date.now();
    await channel.send(m);
    // At once, in the same breath as the job: the agent is still writing its files.
    await channel.send({ type: 'signal', id: m.id, signal: 'SIGKILL' });
    const seen = await follow(m.id);
    const result = seen.at(-1)?.message;
    if (result?.type !== 'result') throw new Error('no result');
    expect(result.run?.signal).toBe('SIGKILL');
    expect(result.run?.status).not.toBe('sandbox_error');
    expect(Date.now() - started).toBeLessThan(10_000);
  });

  it('a program printing faster than the host reads is held at the window, and the caps still hold', async () => {
    const windowBytes = 64 * 1024;
    const m = live('head -c 3000000 /dev/zero | tr "\\0" x', windowBytes);
    await channel.send(m);
    let received = 0;
    let held = 0;
    let holding = true;
    const done = follow(m.id, async (msg) => {
      if (msg.type !== 'output') return;
      const n = Buffer.from(msg.data, 'base64').length;
      received += n;
      if (holding) held += n;
      else await channel.send({ type: 'credit', id: m.id, bytes: n });
    });
    await new Promise((r) => setTimeout(r, 800));
    // No credit yet: the agent stopped at its window (a read may overshoot by one pipe's worth).
    expect(received).toBeGreaterThan(0);
    expect(received).toBeLessThanOrEqual(windowBytes + 64 * 1024);
    const atHold = received;
    await new Promise((r) => setTimeout(r, 400));
    expect(received).toBe(atHold);
    holding = false;
    await channel.send({ type: 'credit', id: m.id, bytes: held });
    const seen = await done;
    const result = seen.at(-1)?.message;
    if (result?.type !== 'result' || result.run === null) throw new Error('no run');
    // The stage's output cap still holds, and the stream is what the result holds.
    const kept = Buffer.from(result.run.stdout, 'base64').length;
    expect(received).toBe(kept);
    expect(kept).toBeLessThanOrEqual(m.runLimits.outputBytes);
    expect(result.run.stdoutTruncated).toBe(kept < 3_000_000);
  });
});
