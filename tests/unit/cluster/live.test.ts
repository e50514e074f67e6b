import { existsSync } from 'node:fs';
import { setTimeout as sleep } from 'node:timers/promises';
import { describe, expect, test } from 'vitest';
import { Job, Worker } from 'bullmq';
import {
  ClusterEngine,
  ClusterWorker,
  clusterKeys,
  redisOptions,
  type WorkerEngine,
} from '../../../src/cluster/index.js';
import { LIVE_RELAY_WINDOW_BYTES } from '../../../src/cluster/live.js';
import { LanguageRegistry } from '../../../src/languages/index.js';
import {
  prepareJob,
  type JobResult,
  type LiveControls,
  type LiveEvent,
  type PreparedJob,
  type RunOptions,
} from '../../../src/pool/index.js';
import { sharedRedis } from '../../support/cluster.js';
import { okResult } from '../../support/results.js';

/**
 * Streaming across hosts against a real redis-server: an API node's ClusterEngine.run with a
 * live consumer, a ClusterWorker whose engine is a stand-in that speaks the live interface
 * (no VM; tests/integration/cluster drives a real program through real processes).
 */
const reason = existsSync('/usr/bin/redis-server') ? null : 'redis-server is not installed';
if (reason !== null) console.warn(`tests/unit/cluster/live skipped: ${reason}`);

const languages = LanguageRegistry.fromDir();
const liveJob = (code: string): PreparedJob =>
  prepareJob({ language: 'python', files: [{ content: code }], live: true }, languages);

const result = (j: PreparedJob, stdout = ''): JobResult => okResult(j, stdout);

/** A local engine whose "program" is `body`, given the live consumer and its own controls. */
function liveEngine(
  body: (
    j: PreparedJob,
    options: RunOptions,
    stdin: { next(): Promise<Buffer | null>; signals: string[] },
  ) => Promise<JobResult>,
): WorkerEngine {
  return {
    languages: { names: () => ['python'] },
    pool: { capacity: 2 },
    run: async (j, options = {}) => {
      const chunks: (Buffer | null)[] = [];
      const waiters: (() => void)[] = [];
      const signals: string[] = [];
      let ended = false;
      const controls: LiveControls = {
        stdin: (data) => {
          chunks.push(data);
          for (const w of waiters.splice(0)) w();
          return Promise.resolve();
        },
        stdinEnd: () => {
          chunks.push(null);
          for (const w of waiters.splice(0)) w();
        },
        signal: (s) => {
          signals.push(s);
          for (const w of waiters.splice(0)) w();
        },
        get ended() {
          return ended;
        },
      };
      options.live?.onStart?.(controls);
      try {
        return await body(j, options, {
          signals,
          next: async () => {
            while (chunks.length === 0) await new Promise<void>((r) => waiters.push(r));
            return chunks.shift() ?? null;
          },
        });
      } finally {
        ended = true;
      }
    },
  };
}

const out = (text: string): LiveEvent => ({
  type: 'output',
  stream: 'stdout',
  data: Buffer.from(text),
});

describe.skipIf(reason !== null)('streaming across hosts on a real Redis', () => {
  const redisUrl = sharedRedis('cluster-live');
  let n = 0;
  const prefix = (): string => `live${++n}`;
  const api = (p: string): ClusterEngine =>
    new ClusterEngine(languages, {
      redisUrl: redisUrl(),
      prefix: p,
      maxInFlight: 10,
      maxQueued: 10,
      queueWaitMs: 30_000,
    });

  test("events arrive in order through Redis, and the API node's stdin reaches the program", async () => {
    const p = prefix();
    const engine = liveEngine(async (j, options, stdin) => {
      await options.live?.onEvent({ type: 'stage', stage: 'run', phase: 'start' });
      await options.live?.onEvent(out('name? '));
      const name = (await stdin.next())?.toString() ?? '';
      await options.live?.onEvent(out(`hello ${name.trim()}\n`));
      const eof = await stdin.next();
      await options.live?.onEvent(out(eof === null ? 'eof\n' : 'no eof\n'));
      await options.live?.onEvent({ type: 'stage', stage: 'run', phase: 'end', status: 'ok' });
      return result(j, `name? hello ${name.trim()}\neof\n`);
    });
    const worker = new ClusterWorker(engine, { redisUrl: redisUrl(), prefix: p, id: 'w' });
    const node = api(p);
    await worker.start();
    try {
      const seen: string[] = [];
      let controls: LiveControls | undefined;
      const res = await node.run(liveJob('input()'), {
        live: {
          onStart: (c) => (controls = c),
          onEvent: async (e) => {
            seen.push(e.type === 'output' ? e.data.toString() : `[${e.stage} ${e.phase}]`);
            if (e.type === 'output' && e.data.toString() === 'name? ') {
              await controls?.stdin(Buffer.from('ada\n'));
              controls?.stdinEnd();
            }
          },
        },
      });
      expect(res.status).toBe('ok');
      expect(seen).toEqual(['[run start]', 'name? ', 'hello ada\n', 'eof\n', '[run end]']);
    } finally {
      await worker.drain();
      await node.close();
    }
  }, 30_000);

  test('events published before the API node reads are not lost; another node can watch them', async () => {
    const p = prefix();
    const engine = liveEngine(async (j, options) => {
      for (let i = 0; i < 50; i++) await options.live?.onEvent(out(`${i},`));
      await sleep(300);
      return result(j);
    });
    const worker = new ClusterWorker(engine, { redisUrl: redisUrl(), prefix: p, id: 'w' });
    const node = api(p);
    const other = api(p);
    await worker.start();
    try {
      const j = liveJob('print()');
      const seen: string[] = [];
      // The consumer is slow to start taking: the first events wait in the stream for it.
      const run = node.run(j, {
        live: {
          onEvent: async (e) => {
            if (seen.length === 0) await sleep(200);
            if (e.type === 'output') seen.push(e.data.toString());
          },
        },
      });
      await sleep(100);
      const watched: string[] = [];
      const ended = new Promise<void>((resolve) => {
        other.watch(
          j.id,
          (e) => e.type === 'output' && watched.push(e.data.toString()),
          () => resolve(),
        );
      });
      await run;
      await ended;
      const all = Array.from({ length: 50 }, (_, i) => `${i},`);
      expect(seen).toEqual(all);
      expect(watched).toEqual(all);
    } finally {
      await worker.drain();
      await node.close();
      await other.close();
    }
  }, 30_000);

  test('back-pressure across hosts: the worker stays within the window of a slow consumer', async () => {
    const p = prefix();
    const chunk = 32 * 1024;
    const total = 2 * 1024 * 1024;
    let sent = 0;
    let taken = 0;
    let maxAhead = 0;
    const engine = liveEngine(async (j, options) => {
      for (let i = 0; i < total / chunk; i++) {
        sent += chunk;
        maxAhead = Math.max(maxAhead, sent - taken);
        await options.live?.onEvent({
          type: 'output',
          stream: 'stdout',
          data: Buffer.alloc(chunk, 0x61),
        });
      }
      return result(j);
    });
    const worker = new ClusterWorker(engine, { redisUrl: redisUrl(), prefix: p, id: 'w' });
    const node = api(p);
    await worker.start();
    try {
      await node.run(liveJob('print()'), {
        live: {
          onEvent: async (e) => {
            await sleep(5);
            if (e.type === 'output') taken += e.data.length;
          },
        },
      });
      expect(taken).toBe(total);
      // At most the window, plus the chunk in hand and one on its way.
      expect(maxAhead).toBeLessThanOrEqual(LIVE_RELAY_WINDOW_BYTES + 2 * chunk);
      expect(maxAhead).toBeGreaterThan(chunk);
    } finally {
      await worker.drain();
      await node.close();
    }
  }, 60_000);

  test('a consumer that stops taking (its node died) holds the job only until the ack timeout', async () => {
    const p = prefix();
    const chunk = 32 * 1024;
    let sent = 0;
    const engine = liveEngine(async (j, options) => {
      for (let i = 0; i < 32; i++) {
        await options.live?.onEvent({
          type: 'output',
          stream: 'stdout',
          data: Buffer.alloc(chunk, 0x62),
        });
        sent += chunk;
      }
      return result(j);
    });
    const worker = new ClusterWorker(engine, {
      redisUrl: redisUrl(),
      prefix: p,
      id: 'w',
      liveAckTimeoutMs: 300,
    });
    const node = api(p);
    await worker.start();
    try {
      const res = await node.run(liveJob('print()'), {
        // Never done with its first event: no ack ever comes.
        live: { onEvent: () => new Promise<void>(() => undefined) },
      });
      expect(res.status).toBe('ok');
      expect(sent).toBe(32 * chunk);
    } finally {
      await worker.drain();
      await node.close();
    }
  }, 30_000);

  test('an aborted run is cancelled on its worker, and a queued one is taken off the queue', async () => {
    const p = prefix();
    let aborted = false;
    const engine = liveEngine(async (j, options, stdin) => {
      await options.live?.onEvent(out('running\n'));
      // The "program" runs until it is killed or its run is aborted.
      while (stdin.signals.length === 0 && options.signal?.aborted !== true) await sleep(20);
      aborted = options.signal?.aborted === true;
      return result(j, 'killed');
    });
    const worker = new ClusterWorker(engine, { redisUrl: redisUrl(), prefix: p, id: 'w' });
    const node = api(p);
    await worker.start();
    try {
      const ac = new AbortController();
      const started = Date.now();
      const res = await node.run(liveJob('while True: pass'), {
        signal: ac.signal,
        live: {
          onEvent: (e) => {
            if (e.type === 'output') ac.abort();
          },
        },
      });
      expect(res.status).toBe('sandbox_error');
      expect(res.run?.message).toContain('the client went away');
      expect(aborted).toBe(true);
      expect(Date.now() - started).toBeLessThan(5000);
    } finally {
      await worker.drain();
    }
    // No worker now: an aborted job still waiting is taken off the queue at once.
    try {
      const ac = new AbortController();
      const run = node.run(liveJob('print()'), { signal: ac.signal });
      await sleep(200);
      ac.abort();
      const res = await run;
      expect(res.status).toBe('sandbox_error');
      expect(res.run?.message).toContain('before the job ran');
    } finally {
      await node.close();
    }
  }, 30_000);

  test('a live job whose worker died mid-run: its watchers hear the end with the result', async () => {
    const p = prefix();
    const keys = clusterKeys(p);
    const node = api(p);
    const j = liveJob('print()');
    const seen: string[] = [];
    const run = node.run(j, {
      live: { onEvent: (e) => void seen.push(e.type) },
    });
    // A "worker" takes it, marks it running, and dies (never renews, never completes).
    const dying = new Worker(keys.queue('python'), null, {
      connection: redisOptions(redisUrl()),
      prefix: keys.bullPrefix,
      autorun: false,
      lockDuration: 1000,
    });
    let taken: Job | undefined;
    for (let i = 0; i < 50 && taken === undefined; i++) {
      taken = await dying.getNextJob('dead-1');
      if (taken === undefined) await sleep(50);
    }
    await taken?.updateProgress({ phase: 'running', worker: 'dead', at: Date.now() });
    await dying.close(true);
    const survivor = new ClusterWorker(
      liveEngine((x) => Promise.resolve(result(x))),
      {
        redisUrl: redisUrl(),
        prefix: p,
        id: 'alive',
        lockMs: 1000,
      },
    );
    const started = Date.now();
    await survivor.start();
    try {
      const res = await run;
      expect(res.status).toBe('sandbox_error');
      expect(res.run?.message).toContain('the worker dead stopped');
      // Not held for the relay's grace (5 s) after the result: the end came with it.
      expect(Date.now() - started).toBeLessThan(4500);
    } finally {
      await survivor.drain();
      await node.close();
    }
  }, 30_000);

  test('the added latency of the relay (printed)', async () => {
    const p = prefix();
    const sentAt: number[] = [];
    const engine = liveEngine(async (j, options) => {
      for (let i = 0; i < 200; i++) {
        sentAt.push(performance.now());
        await options.live?.onEvent(out(String(i)));
        await sleep(2);
      }
      return result(j);
    });
    const worker = new ClusterWorker(engine, { redisUrl: redisUrl(), prefix: p, id: 'w' });
    const node = api(p);
    await worker.start();
    const lat: number[] = [];
    try {
      await node.run(liveJob('print()'), {
        live: {
          onEvent: (e) => {
            if (e.type === 'output') lat.push(performance.now() - (sentAt[Number(e.data)] ?? 0));
          },
        },
      });
    } finally {
      await worker.drain();
      await node.close();
    }
    lat.sort((a, b) => a - b);
    const q = (f: number): string => (lat[Math.floor(f * (lat.length - 1))] ?? 0).toFixed(2);
    console.info(
      `live relay latency over Redis: p50 ${q(0.5)} ms, p95 ${q(0.95)} ms, max ${q(1)} ms`,
    );
    expect(lat).toHaveLength(200);
  }, 30_000);
});
