import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import Database from 'better-sqlite3';
import { afterEach, beforeEach, describe, expect, test } from 'vitest';
import type { ExecuteResponse, JobView } from '../../../src/api/schemas.js';
import { JobStore, LocalQueue } from '../../../src/queue/index.js';
import { FakeEngine, gate, makeApp, pyJob, stage } from './helpers.js';

let dir: string;
beforeEach(() => {
  dir = mkdtempSync(join(tmpdir(), 'api-durable-'));
});
afterEach(() => {
  rmSync(dir, { recursive: true, force: true });
});

describe('durable job records', () => {
  test('after a crash, every accepted job ends with a final status at the next start', async () => {
    const file = join(dir, 'jobs.sqlite');
    // First run: three jobs accepted; one finishes, one is running, one waits, then the
    // process "crashes" (the store is dropped without the jobs ending).
    const engine = new FakeEngine();
    engine.capacity = 1;
    const first = await makeApp({ engine, jobStoreFile: file, settings: { queueMax: 10 } });
    const hang = gate();
    let n = 0;
    first.engine.behavior = async () => {
      if (++n === 1) return { run: stage({ out: 'first' }) };
      await hang.promise;
      return { run: stage() };
    };
    const submit = async () =>
      (await first.app.inject({ method: 'POST', url: '/v1/jobs', payload: pyJob() })).json<{
        id: string;
      }>().id;
    const done = await submit();
    await expect.poll(() => first.jobStore.get(done)?.state).toBe('done');
    const running = await submit();
    const queued = await submit();
    await expect.poll(() => first.jobStore.get(running)?.state).toBe('running');
    expect(first.jobStore.get(queued)?.state).toBe('queued');
    first.jobStore.close(); // the crash: nothing more gets written

    // Second run on the same file.
    const second = await makeApp({ jobStoreFile: file });
    try {
      const ended = await second.service.recover();
      expect(ended.map((j) => j.id).sort()).toEqual([running, queued].sort());
      for (const id of [running, queued]) {
        const job = (
          await second.app.inject({ method: 'GET', url: `/v1/jobs/${id}` })
        ).json<JobView>();
        expect(job).toMatchObject({ id, state: 'done', status: 'sandbox_error' });
        expect(job.result?.run?.message).toBe('the server restarted before the job finished');
      }
      const kept = (
        await second.app.inject({ method: 'GET', url: `/v1/jobs/${done}` })
      ).json<JobView>();
      expect(kept.result?.run?.stdoutText).toBe('first');
      expect(second.jobStore.counts()).toEqual({ queued: 0, running: 0, done: 3 });
      // Recovery is idempotent.
      expect(await second.service.recover()).toEqual([]);
    } finally {
      hang.open();
      await second.close();
      await first.app.close().catch(() => undefined);
    }
  });

  test('a 202 is sent only after the job is on disk', async () => {
    const file = join(dir, 'jobs.sqlite');
    const app = await makeApp({ jobStoreFile: file });
    try {
      const { id } = (
        await app.app.inject({ method: 'POST', url: '/v1/jobs', payload: pyJob() })
      ).json<{ id: string }>();
      const other = new JobStore(file); // another connection sees it
      expect(other.get(id)).toBeDefined();
      other.close();
    } finally {
      await app.close();
    }
  });

  test('a synchronous job keeps its verdict but no output in the store', async () => {
    const app = await makeApp();
    app.engine.behavior = () => ({ run: stage({ out: 'a'.repeat(100_000), err: 'warn' }) });
    try {
      const res = await app.app.inject({ method: 'POST', url: '/v1/execute', payload: pyJob() });
      const body = res.json<ExecuteResponse>();
      expect(body.run?.stdoutText).toBe('a'.repeat(100_000)); // the client gets it all
      expect(body.storedOutput).toBeUndefined();
      const stored = (
        await app.app.inject({ method: 'GET', url: `/v1/jobs/${body.id}` })
      ).json<JobView>();
      expect(stored).toMatchObject({ state: 'done', status: 'ok' });
      expect(stored.result?.storedOutput).toBe('none');
      expect(stored.result?.run).toMatchObject({
        status: 'ok',
        exitCode: 0,
        stdout: '',
        stderr: '',
        stdoutText: null,
        stderrText: null,
      });
    } finally {
      await app.close();
    }
  });

  test('a Piston job keeps no output in the store either', async () => {
    const file = join(dir, 'jobs.sqlite');
    const app = await makeApp({ jobStoreFile: file });
    app.engine.behavior = () => ({ run: stage({ out: 'b'.repeat(100_000) }) });
    try {
      const res = await app.app.inject({
        method: 'POST',
        url: '/api/v2/execute',
        payload: { language: 'python', version: '*', files: [{ content: 'print(1)' }] },
      });
      expect(res.json<{ run: { stdout: string } }>().run.stdout).toBe('b'.repeat(100_000));
      const db = new Database(file, { readonly: true });
      const rows = db.prepare('SELECT result FROM jobs').all() as { result: string }[];
      db.close();
      expect(rows).toHaveLength(1);
      expect(rows[0]?.result.length).toBeLessThan(2000);
      expect(JSON.parse(rows[0]?.result ?? '{}')).toMatchObject({ storedOutput: 'none' });
    } finally {
      await app.close();
    }
  });

  test('a submitted job keeps its output up to the per-job cap, marked truncated', async () => {
    const cap = 64 * 1024;
    const app = await makeApp({ settings: { jobStoreMaxResultBytes: cap } });
    app.engine.behavior = () => ({ run: stage({ out: 'c'.repeat(1_000_000), err: 'e' }) });
    try {
      const { id } = (
        await app.app.inject({ method: 'POST', url: '/v1/jobs', payload: pyJob() })
      ).json<{ id: string }>();
      await expect.poll(() => app.jobStore.get(id)?.state).toBe('done');
      expect(Buffer.byteLength(JSON.stringify(app.jobStore.get(id)?.result))).toBeLessThanOrEqual(
        cap,
      );
      const view = (await app.app.inject({ method: 'GET', url: `/v1/jobs/${id}` })).json<JobView>();
      expect(view.result?.storedOutput).toBe('trimmed');
      expect(view.result?.run?.stdoutTruncated).toBe(true);
      expect(view.result?.run?.stdoutText?.length).toBeGreaterThan(10_000);
      expect(view.result?.run?.stderrText).toBe('e');
    } finally {
      await app.close();
    }
  });

  test('the job state machine refuses illegal transitions', () => {
    const store = new JobStore(':memory:');
    const job = store.create({
      id: 'j1',
      language: 'python',
      version: '3.11.2',
      owner: null,
      callbackUrl: null,
    });
    expect(job.state).toBe('queued');
    store.markRunning('j1');
    expect(() => store.markRunning('j1')).toThrow(/cannot go from running to running/);
    const result: Partial<ExecuteResponse> = { status: 'ok' };
    store.finish('j1', 'ok', result);
    expect(() => store.finish('j1', 'ok', result)).toThrow(/cannot go from done to done/);
    expect(() => store.markRunning('nope')).toThrow(/no job nope/);
    store.close();
  });

  test('old finished records are pruned; unfinished ones never', () => {
    const store = new JobStore(':memory:');
    store.create(
      { id: 'old', language: 'python', version: null, owner: null, callbackUrl: null },
      0,
    );
    store.finish('old', 'ok', {}, 1000);
    store.create(
      { id: 'new', language: 'python', version: null, owner: null, callbackUrl: null },
      0,
    );
    store.finish('new', 'ok', {}, 10_000);
    store.create(
      { id: 'waiting', language: 'python', version: null, owner: null, callbackUrl: null },
      0,
    );
    expect(store.prune(5000, 11_000)).toBe(1);
    expect(store.get('old')).toBeUndefined();
    expect(store.get('new')).toBeDefined();
    expect(store.get('waiting')).toBeDefined();
    store.close();
  });
});

describe('LocalQueue', () => {
  test('runs at most `concurrency` at once, in arrival order, and refuses beyond maxQueued', async () => {
    const q = new LocalQueue({ concurrency: 2, maxQueued: 2 });
    const g = gate();
    const order: number[] = [];
    let active = 0;
    let peak = 0;
    const task = (i: number) => async () => {
      order.push(i);
      peak = Math.max(peak, ++active);
      await g.promise;
      active--;
      return i;
    };
    const ps = [1, 2, 3, 4].map((i) => q.push(task(i)));
    await expect(q.push(task(5))).rejects.toMatchObject({ code: 'QUEUE_FULL' });
    expect(q.stats()).toMatchObject({ queued: 2, running: 2 });
    g.open();
    expect(await Promise.all(ps)).toEqual([1, 2, 3, 4]);
    expect(order).toEqual([1, 2, 3, 4]);
    expect(peak).toBe(2);
  });

  test('a failing task settles its promise and frees its slot', async () => {
    const q = new LocalQueue({ concurrency: 1, maxQueued: 5 });
    await expect(q.push(() => Promise.reject(new Error('boom')))).rejects.toThrow('boom');
    await expect(q.push(() => Promise.resolve(7))).resolves.toBe(7);
    expect(q.stats().running).toBe(0);
  });

  test('drain refuses new tasks and waits for the rest', async () => {
    const q = new LocalQueue({ concurrency: 1, maxQueued: 5 });
    const g = gate();
    const a = q.push(async () => {
      await g.promise;
      return 'a';
    });
    const b = q.push(() => Promise.resolve('b'));
    const drained = q.drain();
    await expect(q.push(() => Promise.resolve('c'))).rejects.toMatchObject({
      code: 'SHUTTING_DOWN',
    });
    g.open();
    await drained;
    expect(await Promise.all([a, b])).toEqual(['a', 'b']);
  });
});
