import { chmodSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { Job, Queue } from 'bullmq';
import WebSocket from 'ws';
import { afterAll, beforeAll, describe, expect, test } from 'vitest';
import { clusterKeys, redisOptions } from '../../../src/cluster/index.js';
import type { ExecuteResponse, JobView } from '../../../src/api/schemas.js';
import {
  clusterSkipReason,
  killGroup,
  startApiNode,
  startRedis,
  startWorker,
  until,
  type Proc,
} from '../../support/cluster.js';
import { ensureImages } from '../../support/vm.js';

/**
 * Many hosts, one queue, all real: a redis-server on a loopback port (AOF on), two workers
 * (`runner worker`, each with its own data dir: two hosts) and two API nodes (`runner serve
 * --redis`), real processes running real VMs (python, QEMU under TCG). Each worker runs one
 * VM at a time (2 cores here). The workers' locks last 4 s so that a killed worker's job is
 * found stalled within seconds.
 */
const reason = clusterSkipReason();
if (reason !== null) console.warn(`tests/integration/cluster skipped: ${reason}`);

const KEYS = ['key-flood', 'key-quiet'];
const PY = (code: string) => ({ language: 'python', files: [{ name: 'main.py', content: code }] });

describe.skipIf(reason !== null)('a cluster: API nodes and workers on one Redis', () => {
  let dir = '';
  let redis: { proc: Proc; url: string; port: number } | undefined;
  const workers = new Map<string, Proc>();
  const api: { proc: Proc; url: string }[] = [];
  const workerEnv = { RUNNER_POOL_MAX_VMS: '1', RUNNER_CLUSTER_LOCK_MS: '4000' };
  const apiEnv = { RUNNER_API_KEYS: KEYS.join(',') };

  const queue = (): Queue =>
    new Queue(clusterKeys().queue('python'), {
      connection: redisOptions(redis?.url ?? ''),
      prefix: clusterKeys().bullPrefix,
    });
  /** Which worker ran a job (the result on the queue names it). */
  const ranOn = async (id: string): Promise<string | undefined> => {
    const q = queue();
    try {
      const job = await Job.fromId(q, id);
      return (job?.returnvalue as { worker?: string } | undefined)?.worker;
    } finally {
      await q.close();
    }
  };
  const call = async (
    node: number,
    method: string,
    path: string,
    body?: unknown,
    key = KEYS[1],
  ) => {
    const res = await fetch(`${api[node]?.url ?? ''}${path}`, {
      method,
      headers: { 'content-type': 'application/json', 'x-api-key': key ?? '' },
      ...(body !== undefined && { body: JSON.stringify(body) }),
    });
    const json: unknown = await res.json();
    return { status: res.status, body: json };
  };
  const submit = async (node: number, code: string, key?: string): Promise<string> => {
    const res = await call(node, 'POST', '/v1/jobs', PY(code), key);
    expect(res.status).toBe(202);
    return (res.body as { id: string }).id;
  };
  const view = async (node: number, id: string, key?: string): Promise<JobView> =>
    (await call(node, 'GET', `/v1/jobs/${id}`, undefined, key)).body as JobView;
  const done = async (node: number, id: string, ms = 120_000, key?: string): Promise<JobView> => {
    let last: JobView | undefined;
    await until(
      async () => {
        last = await view(node, id, key);
        return last.state === 'done';
      },
      ms,
      `job ${id} to finish`,
    );
    return last as JobView;
  };

  beforeAll(async () => {
    await ensureImages(['python']);
    dir = mkdtempSync(join(tmpdir(), 'cluster-it-'));
    // QEMU runs as the unprivileged VMM user and must reach the VM run dirs below this one.
    chmodSync(dir, 0o755);
    redis = await startRedis(join(dir, 'redis'));
    for (const id of ['w1', 'w2'])
      workers.set(id, startWorker(join(dir, id), redis.url, id, workerEnv));
    for (const n of ['a1', 'a2']) api.push(await startApiNode(join(dir, n), redis.url, apiEnv));
    // Both workers take their python snapshot (one cold boot each) before the tests time them.
    const warm = await Promise.all(
      [0, 1].map(() => call(0, 'POST', '/v1/execute', PY('print(1)'))),
    );
    for (const w of warm) expect(w.status).toBe(200);
  }, 600_000);

  afterAll(async () => {
    for (const p of [...workers.values(), ...api.map((a) => a.proc)]) killGroup(p, 'SIGKILL');
    if (redis) killGroup(redis.proc, 'SIGKILL');
    await sleep(500);
    // RUNNER_TEST_KEEP=1 keeps the processes' logs and data dirs for a look after a failure.
    if (dir !== '' && process.env.RUNNER_TEST_KEEP !== '1')
      rmSync(dir, { recursive: true, force: true });
    else if (dir !== '') console.info(`cluster test files kept in ${dir}`);
  });

  test('jobs from both API nodes spread over both workers, and any node answers for any job', async () => {
    const ids = await Promise.all(
      [0, 1, 0, 1].map((node, i) => submit(node, `import time\ntime.sleep(1.5)\nprint(${i} * 7)`)),
    );
    const views = await Promise.all(ids.map((id, i) => done((i + 1) % 2, id)));
    views.forEach((v, i) => {
      expect(v.status).toBe('ok');
      expect((v.result as ExecuteResponse).run?.stdoutText).toBe(`${i * 7}\n`);
    });
    const ran = await Promise.all(ids.map(ranOn));
    expect(new Set(ran)).toEqual(new Set(['w1', 'w2']));
  }, 300_000);

  test('streaming across hosts: SSE from either API node shows output as the worker runs it', async () => {
    /** Reads an SSE stream to its end: each event with when it came. */
    const sse = async (node: number, id: string) => {
      const res = await fetch(`${api[node]?.url ?? ''}/v1/jobs/${id}/events`, {
        headers: { 'x-api-key': KEYS[1] ?? '' },
      });
      expect(res.status).toBe(200);
      const events: { event: string; data: Record<string, unknown>; at: number }[] = [];
      const decoder = new TextDecoder();
      let text = '';
      for await (const chunk of res.body as unknown as AsyncIterable<Uint8Array>) {
        text += decoder.decode(chunk, { stream: true });
        let end: number;
        while ((end = text.indexOf('\n\n')) >= 0) {
          const block = text.slice(0, end);
          text = text.slice(end + 2);
          const event = /^event: (.*)$/m.exec(block)?.[1];
          const data = /^data: (.*)$/m.exec(block)?.[1];
          if (event !== undefined && data !== undefined)
            events.push({
              event,
              data: JSON.parse(data) as Record<string, unknown>,
              at: Date.now(),
            });
        }
      }
      return events;
    };
    const id = await submit(
      0,
      'import time\nprint("first", flush=True)\ntime.sleep(2)\nprint("second", flush=True)',
    );
    // The node that accepted it (fed by its worker through Redis) and the other node (which
    // follows the job's stream in Redis) both see it live.
    const [own, other] = await Promise.all([sse(0, id), sse(1, id)]);
    for (const events of [own, other]) {
      const outputs = events.filter((e) => e.event === 'output');
      const texts = outputs.map((e) => Buffer.from(String(e.data.data), 'base64').toString());
      expect(texts.join('')).toBe('first\nsecond\n');
      const first = outputs[texts.findIndex((t) => t.includes('first'))];
      const second = outputs[texts.findIndex((t) => t.includes('second'))];
      // Two chunks, the program's sleep apart: the first came while the job still ran.
      expect(first).toBeDefined();
      expect(second).toBeDefined();
      expect((second?.at ?? 0) - (first?.at ?? 0)).toBeGreaterThan(1000);
      const last = events.at(-1);
      expect(last?.event).toBe('result');
      expect(last?.data.status).toBe('ok');
    }
    expect(['w1', 'w2']).toContain(await ranOn(id));
  }, 180_000);

  /** A /v1/connect socket on API node `node`: its messages, and a promise of the next that matches. */
  const connect = (node: number) => {
    const ws = new WebSocket(
      `${(api[node]?.url ?? '').replace(/^http/, 'ws')}/v1/connect?key=${KEYS[1] ?? ''}`,
    );
    const seen: Record<string, unknown>[] = [];
    const waiters: { match: (m: Record<string, unknown>) => boolean; done: () => void }[] = [];
    ws.on('message', (data) => {
      const m = JSON.parse((data as Buffer).toString()) as Record<string, unknown>;
      seen.push(m);
      for (const w of waiters.splice(0)) {
        if (w.match(m)) w.done();
        else waiters.push(w);
      }
    });
    const opened = new Promise<void>((resolve, reject) => {
      ws.once('open', () => resolve());
      ws.once('error', reject);
    });
    const next = (match: (m: Record<string, unknown>) => boolean): Promise<void> =>
      seen.some(match) ? Promise.resolve() : new Promise((done) => waiters.push({ match, done }));
    const send = (m: unknown): void => ws.send(JSON.stringify(m));
    const text = (): string =>
      seen
        .filter((m) => m.type === 'output')
        .map((m) => Buffer.from(String(m.data), 'base64').toString())
        .join('');
    return { ws, seen, opened, next, send, text };
  };

  test('the WebSocket /v1/connect of an API node drives an interactive program on a worker', async () => {
    const c = connect(1);
    await c.opened;
    c.send({
      type: 'init',
      ...PY('name = input("name? ")\nprint("hello", name, flush=True)\nprint(input())'),
    });
    await c.next(() => c.text().endsWith('name? '));
    c.send({ type: 'stdin', data: 'ada\n' });
    await c.next(() => c.text().endsWith('hello ada\n'));
    c.send({ type: 'stdin', data: 'bye\n' });
    c.send({ type: 'stdin_end' });
    await c.next((m) => m.type === 'result');
    const result = c.seen.find((m) => m.type === 'result')?.result as ExecuteResponse;
    expect(result.status).toBe('ok');
    expect(c.text()).toBe('name? hello ada\nbye\n');
    const started = c.seen.find((m) => m.type === 'started') as { id: string };
    expect(['w1', 'w2']).toContain(await ranOn(started.id));
  }, 180_000);

  test('a WebSocket client that goes away stops its job on the worker at once', async () => {
    const c = connect(0);
    await c.opened;
    c.send({ type: 'init', ...PY('import time\nprint("up", flush=True)\ntime.sleep(60)') });
    await c.next(() => c.text() === 'up\n');
    const { id } = c.seen.find((m) => m.type === 'started') as { id: string };
    const gone = Date.now();
    c.ws.terminate();
    // Its record ends within seconds (not after the program's 60 s), as the client went away.
    const record = await done(1, id, 30_000);
    const stoppedMs = Date.now() - gone;
    console.info(`cluster: a job whose client went away ended ${stoppedMs} ms after`);
    expect(stoppedMs).toBeLessThan(15_000);
    expect(record.result?.status).toBe('sandbox_error');
    expect(record.result?.run?.message ?? '').toMatch(/client went away/);
  }, 180_000);

  test('a sync job returns its output through the API node that took it', async () => {
    const res = await call(1, 'POST', '/api/v2/execute', {
      language: 'python',
      version: '*',
      files: [{ content: 'import sys\nprint(sys.stdin.read().upper())' }],
      stdin: 'cluster',
    });
    expect(res.status).toBe(200);
    expect((res.body as { run: { stdout: string } }).run.stdout).toBe('CLUSTER\n');
  }, 120_000);

  test('one key flooding the queue does not starve another key', async () => {
    const flood = await Promise.all(
      Array.from({ length: 8 }, (_, i) =>
        submit(0, `import time\ntime.sleep(1)\nprint(${i})`, KEYS[0]),
      ),
    );
    await sleep(300);
    const quiet = await submit(1, 'print("quiet")', KEYS[1]);
    const quietView = await done(1, quiet, 180_000, KEYS[1]);
    expect(quietView.status).toBe('ok');
    const floodViews = await Promise.all(flood.map((id) => done(0, id, 300_000, KEYS[0])));
    const quietAt = Date.parse(quietView.finishedAt ?? '');
    const before = floodViews.filter((v) => Date.parse(v.finishedAt ?? '') < quietAt).length;
    // Two workers of one slot: the quiet key's job waits for at most the jobs already running
    // and the next few, never for the whole flood.
    expect(before).toBeLessThanOrEqual(4);
  }, 400_000);

  test('a worker killed mid-job: its started job ends sandbox_error, once, and the other worker goes on', async () => {
    const id = await submit(
      0,
      'import time\nprint("started", flush=True)\ntime.sleep(30)\nprint("never")',
    );
    let runner: string | undefined;
    await until(
      async () => {
        const q = queue();
        try {
          const job = await Job.fromId(q, id);
          runner = (job?.progress as { worker?: string } | undefined)?.worker;
        } finally {
          await q.close();
        }
        return runner !== undefined;
      },
      60_000,
      'the job to start on a worker',
    );
    const victim = workers.get(runner ?? '');
    expect(victim).toBeDefined();
    if (victim) killGroup(victim, 'SIGKILL');
    try {
      const v = await done(1, id, 120_000);
      expect(v.status).toBe('sandbox_error');
      expect(JSON.stringify(v.result)).toContain(`the worker ${runner ?? ''} stopped`);
      // The survivor still runs jobs.
      const after = await submit(1, 'print("after")');
      expect((await done(0, after)).status).toBe('ok');
    } finally {
      // Restart the killed worker for the tests after this one.
      const name = runner ?? 'w1';
      workers.set(name, startWorker(join(dir, `${name}-again`), redis?.url ?? '', name, workerEnv));
    }
  }, 400_000);

  test('an API node killed after accepting a job: another node finishes it', async () => {
    const id = await submit(0, 'import time\ntime.sleep(2)\nprint("adopted")');
    const dead = api[0];
    if (dead) killGroup(dead.proc, 'SIGKILL');
    try {
      const v = await done(1, id, 120_000);
      expect(v.status).toBe('ok');
      expect((v.result as ExecuteResponse).run?.stdoutText).toBe('adopted\n');
      const log = readFileSync(api[1]?.proc.log ?? '', 'utf8');
      // Adopted once, by the one live node.
      expect(log.split(`job ${id}: the API node that accepted it stopped`)).toHaveLength(2);
    } finally {
      api[0] = await startApiNode(join(dir, 'a1-again'), redis?.url ?? '', apiEnv);
    }
  }, 300_000);

  test('Redis restarted: an accepted job survives (AOF) and finishes', async () => {
    const id = await submit(1, 'import time\ntime.sleep(1)\nprint("survived")');
    if (!redis) throw new Error('no redis');
    killGroup(redis.proc, 'SIGTERM');
    await redis.proc.exited;
    redis = await startRedis(join(dir, 'redis'), redis.port);
    const v = await done(0, id, 180_000);
    expect(v.status).toBe('ok');
    expect((v.result as ExecuteResponse).run?.stdoutText).toBe('survived\n');
  }, 300_000);

  test('a worker drains on SIGTERM: it finishes its job, takes no new one, and exits 0', async () => {
    const w = workers.get('w2');
    if (!w) throw new Error('no w2');
    const ids = await Promise.all(
      [0, 1, 2].map((i) => submit(i % 2, `import time\ntime.sleep(3)\nprint(${i})`)),
    );
    await sleep(1500);
    w.kill('SIGTERM');
    expect(await w.exited).toBe(0);
    const views = await Promise.all(ids.map((id) => done(0, id, 180_000)));
    for (const v of views) expect(v.status).toBe('ok');
    expect(readFileSync(w.log, 'utf8')).toMatch(/drained; bye/);
  }, 300_000);
});
