import { existsSync } from 'node:fs';
import { setTimeout as sleep } from 'node:timers/promises';
import { Redis } from 'ioredis';
import { describe, expect, test } from 'vitest';
import {
  ClusterEngine,
  ClusterWorker,
  redisOptions,
  WARM_STREAK_MAX,
  type WorkerEngine,
} from '../../../src/cluster/index.js';
import { LanguageRegistry } from '../../../src/languages/index.js';
import {
  prepareJob,
  ZERO_TIMINGS,
  type JobResult,
  type PreparedJob,
} from '../../../src/pool/index.js';
import { sharedRedis } from '../../support/cluster.js';

/**
 * How a worker picks its next job, against a real redis-server (the engine is a stand-in, no
 * VM): languages it has warm first (bounded), and an idle worker that costs Redis little but
 * still takes a new job at once (woken by the API node that queued it).
 */
const reason = existsSync('/usr/bin/redis-server') ? null : 'redis-server is not installed';
if (reason !== null) console.warn(`tests/unit/cluster/fetch skipped: ${reason}`);

const languages = LanguageRegistry.fromDir();
const job = (language: string, code = 'x'): PreparedJob =>
  prepareJob({ language, files: [{ content: code }] }, languages);

/** An engine serving `names` that records what it ran; `ready` is its pool's warm VMs. */
function engine(names: string[], ran: string[], ready: Record<string, number> = {}): WorkerEngine {
  return {
    languages: { names: () => names },
    pool: { capacity: 1, stats: () => ({ ready }) },
    run: async (j: PreparedJob): Promise<JobResult> => {
      ran.push(j.language);
      await sleep(5);
      return {
        id: j.id,
        language: j.language,
        version: j.version,
        status: 'ok',
        compile: null,
        run: null,
        vmId: null,
        timings: ZERO_TIMINGS,
      };
    },
  };
}

describe.skipIf(reason !== null)("a worker's choice of jobs on a real Redis", () => {
  const redisUrl = sharedRedis('cluster-fetch');
  let n = 0;
  const prefix = (): string => `fetch${++n}`;
  const api = (p: string): ClusterEngine =>
    new ClusterEngine(languages, {
      redisUrl: redisUrl(),
      prefix: p,
      maxInFlight: 100,
      maxQueued: 100,
      queueWaitMs: 30_000,
    });

  test('a worker with a warm VM of a language takes its jobs first, but not forever', async () => {
    const p = prefix();
    const node = api(p);
    const ran: string[] = [];
    // python comes first in round robin; javascript is the one warm.
    const worker = new ClusterWorker(engine(['python', 'javascript'], ran, { javascript: 1 }), {
      redisUrl: redisUrl(),
      prefix: p,
      id: 'w',
    });
    const jobs = [
      ...Array.from({ length: 2 }, () => job('python')),
      ...Array.from({ length: 6 }, () => job('javascript')),
    ];
    const runs = jobs.map((j) => node.run(j));
    await sleep(300);
    await worker.start();
    try {
      await Promise.all(runs);
      // Warm first, WARM_STREAK_MAX in a row; then python's turn comes.
      expect(ran.slice(0, WARM_STREAK_MAX)).toEqual(Array(WARM_STREAK_MAX).fill('javascript'));
      expect(ran[WARM_STREAK_MAX]).toBe('python');
      expect(ran.filter((l) => l === 'python')).toHaveLength(2);
      expect(ran.lastIndexOf('python')).toBeLessThanOrEqual(2 * (WARM_STREAK_MAX + 1) - 1);
    } finally {
      await worker.drain();
      await node.close();
    }
  }, 30_000);

  test('an idle worker and API node cost Redis little, and a new job is still taken at once', async () => {
    const p = prefix();
    const probe = new Redis(redisOptions(redisUrl()));
    const node = api(p);
    const ran: string[] = [];
    const worker = new ClusterWorker(engine(languages.names(), ran), {
      redisUrl: redisUrl(),
      prefix: p,
      id: 'w',
    });
    await worker.start();
    try {
      await node.cluster();
      await sleep(1000);
      await probe.config('RESETSTAT');
      await sleep(3000);
      const stats = await probe.info('stats');
      const commands = Number(/total_commands_processed:(\d+)/.exec(stats)?.[1]);
      console.info(
        `idle: ${commands} Redis commands in 3 s (${languages.names().length} queues, one worker, one API node)`,
      );
      // Polling every queue every 50 ms was ~4000 commands in 3 s.
      expect(commands).toBeLessThan(400);
      const started = Date.now();
      await node.run(job('python'));
      // Woken by the API node, not by its fallback poll (seconds).
      expect(Date.now() - started).toBeLessThan(1000);
      expect(ran).toEqual(['python']);
    } finally {
      await worker.drain();
      await node.close();
      probe.disconnect();
    }
  }, 30_000);
});
