import { access, mkdir, readFile, rmdir, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { errnoOf } from './files.js';
import { kernelRandomBytes } from './random.js';

/**
 * What a cgroup v2 hierarchy offers the agent. `kill` (cgroup.kill, Linux 5.14) and CPU
 * accounting (cpu.stat) come with any v2 cgroup; `memory` and `pids` only when those
 * controllers are enabled in the root's cgroup.subtree_control (the guest init does that).
 */
export interface CgroupSupport {
  readonly root: string;
  readonly kill: boolean;
  readonly memory: boolean;
  readonly pids: boolean;
}

/**
 * Probes `root` for a usable cgroup v2 hierarchy by creating and removing a child. Returns
 * null when it is not one (cgroup v1, not mounted, not writable) or a child lacks cgroup.kill:
 * without a reliable kill the agent falls back to rlimits and a uid sweep instead.
 */
export async function probeCgroup(root: string): Promise<CgroupSupport | null> {
  try {
    await access(join(root, 'cgroup.controllers'));
  } catch {
    return null;
  }
  const probe = join(root, `runner-probe-${kernelRandomBytes(6).toString('hex')}`);
  try {
    await mkdir(probe);
  } catch {
    return null;
  }
  try {
    const has = async (file: string): Promise<boolean> =>
      access(join(probe, file)).then(
        () => true,
        () => false,
      );
    const kill = await has('cgroup.kill');
    if (!kill || !(await has('cpu.stat'))) return null;
    return { root, kill, memory: await has('memory.max'), pids: await has('pids.max') };
  } finally {
    await rmdir(probe).catch(() => undefined);
  }
}

/** The cgroup limits of one stage. */
export interface CgroupLimits {
  readonly memoryBytes: number;
  readonly processes: number;
}

/**
 * One stage's own cgroup: created before the stage, the stage's first process moved in, read
 * while it runs, then killed and removed. Every method but `create` swallows the errors that
 * only mean "already gone".
 */
export class StageCgroup {
  private constructor(
    readonly path: string,
    private readonly support: CgroupSupport,
  ) {}

  /** Creates `<root>/runner-<random>` with memory.max (+ swap 0, oom.group) and pids.max. */
  static async create(support: CgroupSupport, limits: CgroupLimits): Promise<StageCgroup> {
    const path = join(support.root, `runner-${kernelRandomBytes(8).toString('hex')}`);
    await mkdir(path);
    const cg = new StageCgroup(path, support);
    try {
      if (support.memory) {
        await writeFile(join(path, 'memory.max'), String(limits.memoryBytes));
        // Optional files: swap accounting may be off; oom.group makes an OOM kill the whole
        // stage instead of one process, so the job ends rather than limping on.
        await writeFile(join(path, 'memory.swap.max'), '0').catch(() => undefined);
        await writeFile(join(path, 'memory.oom.group'), '1').catch(() => undefined);
      }
      if (support.pids) await writeFile(join(path, 'pids.max'), String(limits.processes));
    } catch (err) {
      await cg.destroy();
      throw err;
    }
    return cg;
  }

  /** Moves a process (and so its future children) into this cgroup. */
  async adopt(pid: number): Promise<void> {
    await writeFile(join(this.path, 'cgroup.procs'), String(pid));
  }

  /** CPU time used by every process that ran in this cgroup, in microseconds. */
  async cpuUsageUsec(): Promise<number | null> {
    const stat = await this.read('cpu.stat');
    const m = stat === null ? null : /^usage_usec (\d+)$/m.exec(stat);
    return m ? Number(m[1]) : null;
  }

  /** The peak memory use in bytes (memory.peak, Linux 5.19), or null when not offered. */
  async memoryPeakBytes(): Promise<number | null> {
    if (!this.support.memory) return null;
    const text = await this.read('memory.peak');
    if (text !== null) return Number(text.trim());
    const current = await this.read('memory.current');
    return current === null ? null : Number(current.trim());
  }

  /** How many processes the OOM killer killed in this cgroup. */
  async oomKills(): Promise<number> {
    if (!this.support.memory) return 0;
    const events = await this.read('memory.events');
    const m = events === null ? null : /^oom_kill (\d+)$/m.exec(events);
    return m ? Number(m[1]) : 0;
  }

  /** SIGKILLs every process in the cgroup at once, including ones that left the process group. */
  async kill(): Promise<void> {
    await writeFile(join(this.path, 'cgroup.kill'), '1').catch(() => undefined);
  }

  /** Kills what is left, waits until the cgroup is empty (up to `timeoutMs`), removes it. */
  async destroy(timeoutMs = 2000): Promise<void> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      await this.kill();
      try {
        await rmdir(this.path);
        return;
      } catch (err) {
        const code = errnoOf(err);
        if (code === 'ENOENT') return;
        if (code !== 'EBUSY' || Date.now() > deadline) throw err;
      }
      await sleep(10);
    }
  }

  private async read(file: string): Promise<string | null> {
    try {
      return await readFile(join(this.path, file), 'utf8');
    } catch {
      return null;
    }
  }
}
