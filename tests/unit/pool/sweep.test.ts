import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { lookupUser, sweepRunDir } from '../../../src/pool/engine.js';
import { parseVmmPidFile, vmmPidFile } from '../../../src/vmm/index.js';

describe('start-up sweep of a crashed run', () => {
  it('kills leftover VMM processes that still name their run dir, and removes every run dir', async () => {
    const runDir = await mkdtemp(join(tmpdir(), 'runner-sweep-'));
    try {
      const vmDir = join(runDir, 'python-dead0001');
      await mkdir(vmDir);
      // A stand-in for a leftover QEMU: its command line names the VM's run dir.
      const keeper = spawn(process.execPath, ['-e', 'setTimeout(() => {}, 300000)', vmDir], {
        stdio: 'ignore',
      });
      await writeFile(join(vmDir, 'pid'), String(keeper.pid));
      // A dir whose pid is some other live process (not naming the dir) must not kill it.
      const bystander = spawn('sleep', ['300'], { stdio: 'ignore' });
      const otherDir = join(runDir, 'python-other002');
      await mkdir(otherDir);
      await writeFile(join(otherDir, 'pid'), String(bystander.pid));
      const exited = new Promise<string | null>((resolve) =>
        keeper.once('exit', (_c, s) => resolve(s)),
      );

      const swept = await sweepRunDir(runDir);
      expect(swept).toBe(2);
      expect(await exited).toBe('SIGKILL');
      expect(existsSync(vmDir)).toBe(false);
      expect(existsSync(otherDir)).toBe(false);
      expect(bystander.exitCode).toBeNull();
      bystander.kill('SIGKILL');
    } finally {
      await rm(runDir, { recursive: true, force: true });
    }
  });

  it("spares the VMs of another live process on the same data folder, and sweeps a dead owner's", async () => {
    const runDir = await mkdtemp(join(tmpdir(), 'runner-sweep-'));
    const children: ChildProcess[] = [];
    try {
      const start = (vmDir: string) => {
        const child = spawn(process.execPath, ['-e', 'setTimeout(() => {}, 300000)', vmDir], {
          stdio: 'ignore',
        });
        children.push(child);
        return child;
      };
      // Another service (a live process, not this one) owns this VM: it must survive.
      const owner = spawn('sleep', ['300'], { stdio: 'ignore' });
      children.push(owner);
      const liveDir = join(runDir, 'python-live0001');
      await mkdir(liveDir);
      const liveVmm = start(liveDir);
      await writeFile(
        join(liveDir, 'pid'),
        vmmPidFile(liveVmm.pid).replace(`${process.pid}`, `${owner.pid}`),
      );
      // The owner of this one is gone (a pid that exited): its VMM is a leftover.
      const gone = spawn('true', [], { stdio: 'ignore' });
      await new Promise((resolve) => gone.once('exit', resolve));
      const deadDir = join(runDir, 'python-dead0002');
      await mkdir(deadDir);
      const deadVmm = start(deadDir);
      await writeFile(join(deadDir, 'pid'), `${deadVmm.pid}\n${gone.pid}\n`);
      const deadExit = new Promise<string | null>((resolve) =>
        deadVmm.once('exit', (_c, s) => resolve(s)),
      );

      expect(await sweepRunDir(runDir)).toBe(1);
      expect(await deadExit).toBe('SIGKILL');
      expect(existsSync(deadDir)).toBe(false);
      expect(existsSync(liveDir)).toBe(true);
      expect(liveVmm.exitCode).toBeNull();
      expect(liveVmm.signalCode).toBeNull();
      expect(parseVmmPidFile(`${liveVmm.pid}\n${owner.pid}\n`)).toEqual({
        vmmPid: liveVmm.pid,
        ownerPid: owner.pid,
      });
    } finally {
      for (const child of children) child.kill('SIGKILL');
      await rm(runDir, { recursive: true, force: true });
    }
  });

  it('is a no-op when there is no run dir yet', async () => {
    expect(await sweepRunDir(join(tmpdir(), 'runner-no-such-dir-xyz'))).toBe(0);
  });

  it('looks users up in a passwd file', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'runner-passwd-'));
    const file = join(dir, 'passwd');
    await writeFile(
      file,
      'root:x:0:0:root:/root:/bin/bash\nrunner-vmm:x:999:995::/nonexistent:/usr/sbin/nologin\n',
    );
    expect(lookupUser('runner-vmm', file)).toEqual({ uid: 999, gid: 995 });
    expect(lookupUser('nobody-here', file)).toBeNull();
    await rm(dir, { recursive: true, force: true });
  });
});
