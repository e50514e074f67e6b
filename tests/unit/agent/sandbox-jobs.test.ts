import { mkdtemp, readdir, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { ExecutorJob } from '../../../src/agent/executor.js';
import { freeOwner, isRoot, LIMITS, makeExecutor, text, type ExecutorFixture } from './helpers.js';

/**
 * Sandbox jobs (docs/agent.md, "Sandbox jobs") with the real executor and real processes on
 * this host: the folder persists between jobs, nothing is removed, a detached program runs on.
 */
describe('sandbox jobs', () => {
  let fx: ExecutorFixture;
  let home = '';

  beforeAll(async () => {
    home = join(await mkdtemp(join(tmpdir(), 'runner-sandbox-home-')), 'user');
    const owner = isRoot ? await freeOwner(47_200, 100) : null;
    fx = await makeExecutor({ owner, cgroupRoot: null, sandboxDir: home });
  });

  afterAll(async () => {
    await fx.close();
    await rm(join(home, '..'), { recursive: true, force: true });
  });

  const sandboxJob = (argv: string[], extra: Partial<ExecutorJob> = {}): ExecutorJob => ({
    language: 'bash',
    files: [],
    stdin: '',
    args: [],
    env: {},
    compileLimits: LIMITS,
    runLimits: LIMITS,
    sandbox: { argv },
    ...extra,
  });

  it('runs in the one persistent folder: what a job writes, the next one reads', async () => {
    const w = await fx.executor.execute(sandboxJob(['sh', '-c', 'echo kept > note.txt; pwd']));
    expect(w.status).toBe('ok');
    expect(text(w.run?.stdout ?? '')).toBe(`${home}\n`);
    const r = await fx.executor.execute(sandboxJob(['sh', '-c', 'cat note.txt; echo "$HOME"']));
    expect(text(r.run?.stdout ?? '')).toBe(`kept\n${home}\n`);
    expect(await readdir(home)).toEqual(['note.txt']);
    // No job work dir is made for them either.
    expect(await fx.leftovers()).toEqual([]);
  });

  it('runs in a folder under it (cwd), and takes stdin and env', async () => {
    await fx.executor.execute(sandboxJob(['mkdir', '-p', 'sub/dir']));
    const r = await fx.executor.execute(
      sandboxJob(['sh', '-c', 'pwd; cat; echo "$WHO"'], {
        sandbox: { argv: ['sh', '-c', 'pwd; cat; echo "$WHO"'], cwd: 'sub/dir' },
        stdin: Buffer.from('in\n').toString('base64'),
        env: { WHO: 'me' },
      }),
    );
    expect(text(r.run?.stdout ?? '')).toBe(`${home}/sub/dir\nin\nme\n`);
  });

  it('answers a detached job at once while its program runs on', async () => {
    const started = Date.now();
    const d = await fx.executor.execute(
      sandboxJob(['sh', '-c', 'sleep 1; echo late > late.txt'], {
        sandbox: { argv: ['sh', '-c', 'sleep 1; echo late > late.txt'], detach: true },
      }),
    );
    expect(d.status).toBe('ok');
    expect(Date.now() - started).toBeLessThan(900);
    expect(await readdir(home)).not.toContain('late.txt');
    await new Promise((r) => setTimeout(r, 2500));
    expect(await readdir(home)).toContain('late.txt');
  });

  it('refuses files in a sandbox job, and a cwd with ..', async () => {
    await expect(
      fx.executor.execute(
        sandboxJob(['true'], { files: [{ name: 'a', content: '', encoding: 'utf8' }] }),
      ),
    ).rejects.toMatchObject({ code: 'FILE_NAME_INVALID' });
    await expect(
      fx.executor.execute(sandboxJob(['true'], { sandbox: { argv: ['true'], cwd: '../x' } })),
    ).rejects.toMatchObject({ code: 'FILE_NAME_INVALID' });
  });
});
