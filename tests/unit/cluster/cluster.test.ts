import { existsSync } from 'node:fs';
import { Job, Queue, Worker } from 'bullmq';
import { describe, expect, test } from 'vitest';
import {
  ClusterEngine,
  ClusterWorker,
  clusterKeys,
  fromClusterJob,
  redisOptions,
  RedisJobRecords,
  toClusterJob,
  type WorkerEngine,
} from '../../../src/cluster/index.js';
import { LanguageRegistry } from '../../../src/languages/index.js';
import { prepareJob, type JobResult, type PreparedJob } from '../../../src/pool/index.js';
import { sharedRedis } from '../../support/cluster.js';
import { okResult } from '../../support/results.js';

/**
 * The queue's semantics against a real redis-server (no VM: the workers' engine is a stand-in
 * that answers at once; tests/integration/cluster runs the real thing).
 */
const reason = existsSync('/usr/bin/redis-server') ? null : 'redis-server is not installed';
if (reason !== null) console.warn(`tests/unit/cluster skipped: ${reason}`);

const languages = LanguageRegistry.fromDir();
const job = (code: string): PreparedJob =>
  prepareJob({ language: 'python', files: [{ content: code }] }, languages);

/** An API node's engine on prefix `p`, with a cluster-wide cap of `maxQueued` waiting jobs. */
const apiNode = (url: string, p: string, maxQueued: number): ClusterEngine =>
  new ClusterEngine(languages, {
    redisUrl: url,
    prefix: p,
    maxInFlight: 100,
    maxQueued,
    queueWaitMs: 30_000,
  });

/** An engine that "runs" a job by echoing its source, after `ms`. */
function echoEngine(ms = 0, seen: string[] = []): WorkerEngine {
  return {
    languages: { names: () => ['python'] },
    pool: { capacity: 1 },
    run: async (j: PreparedJob): Promise<JobResult> => {
      seen.push(j.id);
      await new Promise((r) => setTimeout(r, ms));
      return okResult(j, j.message.files[0]?.content ?? '');
    },
  };
}

describe.skipIf(reason !== null)('the cluster queue on a real Redis', () => {
  const redisUrl = sharedRedis('cluster-unit');
  let n = 0;
  const prefix = (): string => `t${++n}`;

  test('a job goes from an API node to a worker and its result comes back', async () => {
    const p = prefix();
    const url = redisUrl();
    const worker = new ClusterWorker(echoEngine(), { redisUrl: url, prefix: p, id: 'w' });
    const api = apiNode(url, p, 10);
    await worker.start();
    try {
      const j = job('print(42)');
      const result = await api.run(j, { owner: 'owner-a' });
      expect(result.id).toBe(j.id);
      // The stand-in echoes the file as the message carries it.
      expect(Buffer.from(result.run?.stdout ?? '', 'base64').toString()).toBe(
        j.message.files[0]?.content,
      );
      const view = await api.cluster();
      expect(view.workers.map((w) => w.id)).toEqual(['w']);
    } finally {
      await worker.drain();
      await api.close();
    }
  });

  test('a stalled job its worker had marked running ends sandbox_error; one it had not is run', async () => {
    const p = prefix();
    const url = redisUrl();
    const keys = clusterKeys(p);
    const queue = new Queue(keys.queue('python'), {
      connection: redisOptions(url),
      prefix: keys.bullPrefix,
    });
    const marked = job('print("marked")');
    const unmarked = job('print("unmarked")');
    await queue.add('job', toClusterJob(marked, null), { jobId: marked.id });
    await queue.add('job', toClusterJob(unmarked, null), { jobId: unmarked.id });
    // A "worker" that takes both, marks one, and dies (never renews, never completes).
    const dying = new Worker(keys.queue('python'), null, {
      connection: redisOptions(url),
      prefix: keys.bullPrefix,
      autorun: false,
      lockDuration: 1000,
    });
    const a = await dying.getNextJob('dead-1');
    const b = await dying.getNextJob('dead-2');
    const byId = new Map([a, b].map((j) => [j?.id, j]));
    await byId.get(marked.id)?.updateProgress({ phase: 'running', worker: 'dead', at: Date.now() });
    await dying.close(true);
    const seen: string[] = [];
    const survivor = new ClusterWorker(echoEngine(0, seen), {
      redisUrl: url,
      prefix: p,
      id: 'alive',
      lockMs: 1000,
    });
    await survivor.start();
    try {
      const finished = async (id: string): Promise<JobResult & { worker: string }> => {
        for (;;) {
          const j = await Job.fromId(queue, id);
          // Read again once completed: the first read may predate the result.
          if ((await j?.getState()) === 'completed')
            return (await Job.fromId(queue, id))?.returnvalue as JobResult & { worker: string };
          await new Promise((r) => setTimeout(r, 100));
        }
      };
      const m = await finished(marked.id);
      const u = await finished(unmarked.id);
      expect(m.status).toBe('sandbox_error');
      expect(m.run?.message).toContain('the worker dead stopped while it ran this job');
      expect(u.status).toBe('ok');
      expect(u.worker).toBe('alive');
      // The marked job never reached the survivor's engine; the unmarked one did, once.
      expect(seen).toEqual([unmarked.id]);
    } finally {
      await survivor.drain();
      await queue.close();
    }
  }, 30_000);

  test("one key's flood queues behind another key's first job", async () => {
    const p = prefix();
    const url = redisUrl();
    const api = apiNode(url, p, 100);
    const order: string[] = [];
    const worker = new ClusterWorker(echoEngine(20, order), { redisUrl: url, prefix: p, id: 'w' });
    const flood = Array.from({ length: 6 }, (_, i) => job(`print(${i})`));
    const quiet = job('print("quiet")');
    // Queued before the worker starts: all wait, then the worker picks by priority.
    const runs = flood.map((j) => api.run(j, { owner: 'flood' }));
    await new Promise((r) => setTimeout(r, 300));
    runs.push(api.run(quiet, { owner: 'quiet' }));
    await new Promise((r) => setTimeout(r, 300));
    await worker.start();
    try {
      await Promise.all(runs);
      // The quiet key's first job has priority 1, like the flood's first: it runs second.
      expect(order.indexOf(quiet.id)).toBeLessThanOrEqual(1);
    } finally {
      await worker.drain();
      await api.close();
    }
  }, 30_000);

  test('the cluster-wide cap refuses with QUEUE_FULL when as many jobs wait as it allows', async () => {
    const p = prefix();
    const url = redisUrl();
    const api = apiNode(url, p, 2);
    try {
      const pending = [api.run(job('1')), api.run(job('2'))];
      for (const run of pending) run.catch(() => undefined);
      await api.cluster();
      await new Promise((r) => setTimeout(r, 200));
      await api.cluster();
      expect(() => api.admit()).toThrow(expect.objectContaining({ code: 'QUEUE_FULL' }));
    } finally {
      await api.close();
    }
  });

  test("records: any node reads them; moves are checked; a dead node's open jobs are claimed once", async () => {
    const p = prefix();
    const url = redisUrl();
    const a = new RedisJobRecords({ redisUrl: url, prefix: p, node: 'api-a', retentionMs: 60_000 });
    const b = new RedisJobRecords({ redisUrl: url, prefix: p, node: 'api-b', retentionMs: 60_000 });
    const c = new RedisJobRecords({ redisUrl: url, prefix: p, node: 'api-c', retentionMs: 60_000 });
    await b.start();
    await c.start();
    try {
      await a.create({
        id: 'j1',
        language: 'python',
        version: null,
        owner: null,
        callbackUrl: null,
        spec: { cases: null },
      });
      expect((await b.get('j1'))?.state).toBe('queued');
      await expect(
        a.create({ id: 'j1', language: 'python', version: null, owner: null, callbackUrl: null }),
      ).rejects.toMatchObject({ code: 'JOB_STATE' });
      await b.markRunning('j1');
      await expect(b.markRunning('j1')).rejects.toMatchObject({ code: 'JOB_STATE' });
      // api-a never beat: it is gone. Two live nodes look at once; only one claims j1.
      const [fromB, fromC] = await Promise.all([b.orphans(), c.orphans()]);
      const claimed = [...fromB, ...fromC];
      expect(claimed.map((o) => o.record.id)).toEqual(['j1']);
      expect(claimed[0]?.spec).toEqual({ cases: null });
      const done = await b.finish('j1', 'ok', { hello: 1 });
      expect(done.state).toBe('done');
      expect((await c.get('j1'))?.result).toEqual({ hello: 1 });
      expect(await b.orphans()).toEqual([]);
      // A live node's open jobs are its own: neither it nor another live node takes them.
      await b.create({
        id: 'j2',
        language: 'python',
        version: null,
        owner: null,
        callbackUrl: null,
      });
      expect([...(await b.orphans()), ...(await c.orphans())]).toEqual([]);
    } finally {
      await Promise.all([a.close(), b.close(), c.close()]);
    }
  });

  test('the wire refuses a job that is not one the agent takes', () => {
    const good = toClusterJob(job('print(1)'), null);
    expect(fromClusterJob(good).job.id).toBe(good.job.id);
    expect(() => fromClusterJob({ ...good, v: 2 })).toThrow(
      expect.objectContaining({ code: 'CLUSTER_WIRE' }),
    );
    const bad = { ...good, job: { ...good.job, message: { ...good.job.message, id: 'other' } } };
    expect(() => fromClusterJob(bad)).toThrow(expect.objectContaining({ code: 'CLUSTER_WIRE' }));
  });
});
