import { existsSync } from 'node:fs';
import { createServer, type IncomingMessage } from 'node:http';
import type { AddressInfo } from 'node:net';
import { setTimeout as sleep } from 'node:timers/promises';
import { describe, expect, test } from 'vitest';
import { buildApp, type App } from '../../../src/api/app.js';
import { Redis } from 'ioredis';
import {
  ClusterEngine,
  ClusterWorker,
  clusterKeys,
  redisOptions,
  RedisJobRecords,
  type WorkerEngine,
} from '../../../src/cluster/index.js';
import { LanguageRegistry } from '../../../src/languages/index.js';
import type { JobResult, PreparedJob } from '../../../src/pool/index.js';
import { sharedRedis } from '../../support/cluster.js';
import { stage, testSettings } from '../api/helpers.js';

/**
 * Adoption of what an API node that stopped had accepted, against a real redis-server: two
 * API nodes (the real app, the cluster's engine and records) and a worker whose engine is a
 * stand-in (no VM): each test case prints "hello, <its stdin>".
 */
const reason = existsSync('/usr/bin/redis-server') ? null : 'redis-server is not installed';
if (reason !== null) console.warn(`tests/unit/cluster/adopt skipped: ${reason}`);

const languages = LanguageRegistry.fromDir();

/** Runs each case of a job as `print("hello, " + input())`. */
const greeter: WorkerEngine = {
  languages: { names: () => ['python'] },
  pool: { capacity: 2 },
  run: (j: PreparedJob): Promise<JobResult> => {
    const greet = (b64: string) =>
      stage({ out: `hello, ${Buffer.from(b64, 'base64').toString().trim()}\n` });
    const cases = j.message.cases?.map(greet);
    return Promise.resolve({
      id: j.id,
      language: j.language,
      version: j.version,
      status: 'ok',
      compile: null,
      run: cases === undefined ? greet(j.message.stdin) : null,
      ...(cases !== undefined && { cases }),
      vmId: null,
      timings: {
        totalMs: 1,
        acquireMs: 0,
        executeMs: 1,
        guestMs: 1,
        hostOverheadMs: 0,
        poolHit: true,
      },
    });
  },
};

describe.skipIf(reason !== null)('adoption of Judge0 submissions on a real Redis', () => {
  const redisUrl = sharedRedis('cluster-adopt');

  /** An API node: the real app over the cluster's engine and records. */
  const node = (name: string) => {
    const settings = testSettings({
      callbackAllowedHosts: ['127.0.0.1'],
      egressAllow: ['127.0.0.1'],
      callbackBackoffMs: 20,
    });
    const opts = { redisUrl: redisUrl(), prefix: 'adopt' };
    const records = new RedisJobRecords({ ...opts, node: name, retentionMs: 60_000 });
    const engine = new ClusterEngine(languages, {
      ...opts,
      maxInFlight: 10,
      maxQueued: 100,
      queueWaitMs: 30_000,
    });
    const built: App = buildApp({ engine, settings, jobStore: records, callbackGraceMs: 200 });
    return { records, engine, built };
  };

  test("a dead node's Judge0 callback is sent once by the node that adopts it, and a batch's grouped members are adopted one by one", async () => {
    const got: { url: string; body: Record<string, unknown> }[] = [];
    const hook = createServer((req: IncomingMessage, res) => {
      let data = '';
      req.on('data', (chunk: Buffer) => (data += chunk.toString()));
      req.on('end', () => {
        got.push({ url: req.url ?? '', body: JSON.parse(data) as Record<string, unknown> });
        res.writeHead(200).end();
      });
    });
    await new Promise<void>((r) => hook.listen(0, '127.0.0.1', r));
    const url = `http://127.0.0.1:${(hook.address() as AddressInfo).port}/hook`;
    // Node a accepts while no worker runs, then dies (it never beat: it is gone at once).
    const a = node('api-a');
    await a.built.app.ready();
    const sub = (stdin: string) => ({
      source_code: 'print("hello, " + input())',
      language_id: 71,
      stdin,
      callback_url: url,
    });
    const one = await a.built.app.inject({
      method: 'POST',
      url: '/submissions',
      payload: sub('solo'),
    });
    expect(one.statusCode).toBe(201);
    const batch = await a.built.app.inject({
      method: 'POST',
      url: '/submissions/batch',
      payload: { submissions: [sub('x'), sub('y'), sub('z')] },
    });
    expect(batch.statusCode).toBe(201);
    const solo = one.json<{ token: string }>().token;
    const members = batch.json<{ token: string }[]>().map((m) => m.token);
    // A waited-for one (?wait=true): its client is still waiting on node a when a dies.
    void a.built.app
      .inject({ method: 'POST', url: '/submissions?wait=true', payload: sub('waited') })
      .catch(() => undefined);
    const probe = new Redis(redisOptions(redisUrl()));
    let waited: string | undefined;
    for (let i = 0; i < 100 && waited === undefined; i++) {
      await sleep(20);
      const open = await probe.zrange(clusterKeys('adopt').open, '0', '-1');
      waited = open.find((id) => id !== solo && !members.includes(id));
    }
    probe.disconnect();
    if (waited === undefined) throw new Error('the waited-for submission was not recorded');
    // Dies: its Redis connections go, so it can finish nothing.
    await a.records.close();
    await a.engine.close();
    const b = node('api-b');
    const c = node('api-c');
    await b.records.start();
    await c.records.start();
    await b.built.app.ready();
    await c.built.app.ready();
    const worker = new ClusterWorker(greeter, { redisUrl: redisUrl(), prefix: 'adopt' });
    await worker.start();
    try {
      // Two live nodes look at once: each job is adopted by one of them.
      const counts = await Promise.all([
        b.built.service.adoptOrphans(),
        c.built.service.adoptOrphans(),
      ]);
      expect(counts[0] + counts[1]).toBe(5);
      for (let i = 0; i < 300 && got.length < 5; i++) await sleep(20);
      // Time for a second, wrong, callback to show.
      await sleep(500);
      const byToken = new Map(got.map((g) => [String(g.body.token), g.body]));
      expect(got).toHaveLength(5);
      expect([...byToken.keys()].sort()).toEqual([solo, waited, ...members].sort());
      const stdoutOf = (t: string) =>
        Buffer.from((byToken.get(t)?.stdout as string | undefined) ?? '', 'base64').toString();
      expect(stdoutOf(solo)).toBe('hello, solo\n');
      expect(stdoutOf(waited)).toBe('hello, waited\n');
      expect(members.map(stdoutOf)).toEqual(['hello, x\n', 'hello, y\n', 'hello, z\n']);
      for (const t of [solo, ...members])
        expect(byToken.get(t)?.status).toEqual({ id: 3, description: 'Accepted' });
      // Any node reads each member's own result.
      for (const [i, t] of members.entries()) {
        const res = await c.built.app.inject({ method: 'GET', url: `/submissions/${t}` });
        expect(res.json<{ stdout: string }>().stdout).toBe(`hello, ${'xyz'[i] ?? ''}\n`);
      }
    } finally {
      hook.close();
      await worker.drain();
      for (const n of [b, c]) {
        await n.built.app.close();
        await n.engine.close();
        await n.records.close();
      }
      // The dead node's app would drain jobs it can no longer finish: not waited for.
      void a.built.app.close().catch(() => undefined);
    }
  }, 60_000);
});
