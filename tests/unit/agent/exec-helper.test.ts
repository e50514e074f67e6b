import { chmod, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { findSandboxTools, runStage, type StageSandbox } from '../../../src/agent/index.js';
import { buildExecHelper } from '../../../src/images/exec-helper.js';
import { freeOwner, isRoot, LIMITS, text } from './helpers.js';

/**
 * runner-exec itself, built with this machine's gcc: what it sets up, and that a failure to set
 * up is the sandbox's (sandbox_error) while a program that cannot run is the program's.
 */
let dir: string;
let helper: string | null = null;
let why = '';

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'runner-exec-test-'));
  await chmod(dir, 0o755);
  try {
    helper = await buildExecHelper(join(dir, 'runner-exec'));
  } catch (err) {
    why = (err as Error).message;
    console.warn(`skipping the runner-exec tests: ${why}`);
  }
});

afterAll(async () => {
  await rm(dir, { recursive: true, force: true });
});

async function sandbox(over: Partial<StageSandbox> = {}): Promise<StageSandbox> {
  return { tools: await findSandboxTools(), runAs: null, cgroup: null, helper, ...over };
}

const spec = (script: string) => ({
  argv: ['sh', '-c', script],
  cwd: dir,
  env: { PATH: '/usr/bin:/bin', ONLY: 'this' },
  stdin: Buffer.alloc(0),
  limits: { ...LIMITS, openFiles: 33 },
});

describe('runner-exec', () => {
  it('replaces the environment, sets the limits and no_new_privs, and closes its status fd', async (ctx) => {
    if (helper === null) ctx.skip(why);
    const r = await runStage(
      await sandbox(),
      spec(
        'env | sort | tr "\\n" " "; echo; ulimit -n; ulimit -s; grep NoNewPrivs /proc/self/status; [ -e /proc/$$/fd/3 ] && echo fd3-open || echo fd3-closed',
      ),
    );
    expect(r.status).toBe('ok');
    const out = text(r.stdout);
    expect(out).toMatch(/^ONLY=this PATH=\/usr\/bin:\/bin PWD=\S+ \n33\n8192\n/);
    expect(out).toMatch(/NoNewPrivs:\s+1/);
    expect(out).toMatch(/fd3-closed\n$/);
  });

  it.runIf(isRoot)('drops to the job user with no capabilities', async () => {
    if (helper === null) return;
    const owner = await freeOwner(47_000, 100);
    const r = await runStage(
      await sandbox({ runAs: owner }),
      spec('id -u; id -G; grep -E "CapBnd|CapEff" /proc/self/status'),
    );
    expect(text(r.stdout)).toBe(
      `${owner.uid}\n${owner.gid}\nCapEff:\t0000000000000000\nCapBnd:\t0000000000000000\n`,
    );
  });

  it('a program that cannot be executed is the program’s failure (127), not the sandbox’s', async (ctx) => {
    if (helper === null) ctx.skip(why);
    const r = await runStage(await sandbox(), { ...spec(''), argv: ['./no-such-program'] });
    expect(r.status).toBe('runtime_error');
    expect(r.exitCode).toBe(127);
    expect(text(r.stderr)).toMatch(/cannot execute \.\/no-such-program/);
  });

  it('a program exiting 125 is still the program’s', async (ctx) => {
    if (helper === null) ctx.skip(why);
    const r = await runStage(await sandbox(), spec('echo runner-exec: fake >&2; exit 125'));
    expect(r.status).toBe('runtime_error');
    expect(r.exitCode).toBe(125);
  });

  it('a failure to set up the stage is a sandbox_error that says which step', async () => {
    // A stand-in helper that fails the way runner-exec does: the reason on its status fd.
    const fake = join(dir, 'failing-helper');
    await writeFile(
      fake,
      '#!/bin/sh\nprintf "setresuid: Operation not permitted" >&3\nexit 125\n',
      {
        mode: 0o755,
      },
    );
    const r = await runStage(await sandbox({ helper: fake }), spec('echo never'));
    expect(r.status).toBe('sandbox_error');
    expect(r.message).toMatch(/could not start the program: setresuid: Operation not permitted/);
  });
});
