import { spawn } from 'node:child_process';
import { readdir, readFile } from 'node:fs/promises';
import { setTimeout as sleep } from 'node:timers/promises';
import type { FileOwner } from './files.js';

/** Linux's USER_HZ: /proc times are in these ticks (100 on every mainstream architecture). */
const CLOCK_TICKS_PER_SECOND = 100;

/** The sandbox helpers, resolved to absolute paths once (util-linux, coreutils, dash). */
export interface SandboxTools {
  readonly sh: string;
  readonly prlimit: string;
  readonly setpriv: string;
  readonly env: string;
}

/** CPU time (user + system, own + waited-for children) of one process in ms, or null. */
export async function readProcessCpuMs(pid: number): Promise<number | null> {
  const fields = await readStatFields(`/proc/${pid}/stat`);
  if (!fields) return null;
  // After the `(comm)` field: index 11..14 are utime, stime, cutime, cstime (fields 14-17).
  const ticks = [11, 12, 13, 14].reduce((sum, i) => sum + Number(fields[i] ?? 0), 0);
  return (ticks * 1000) / CLOCK_TICKS_PER_SECOND;
}

/** CPU time in ms of the children this process has waited for (cutime + cstime of self). */
export async function readReapedChildrenCpuMs(): Promise<number> {
  const fields = await readStatFields('/proc/self/stat');
  if (!fields) return 0;
  const ticks = Number(fields[13] ?? 0) + Number(fields[14] ?? 0);
  return (ticks * 1000) / CLOCK_TICKS_PER_SECOND;
}

/** The peak resident set of one process in bytes (VmHWM), or null. */
export async function readPeakRssBytes(pid: number): Promise<number | null> {
  try {
    const status = await readFile(`/proc/${pid}/status`, 'utf8');
    const m = /^VmHWM:\s+(\d+) kB$/m.exec(status);
    return m ? Number(m[1]) * 1024 : null;
  } catch {
    return null;
  }
}

async function readStatFields(path: string): Promise<string[] | null> {
  try {
    const text = await readFile(path, 'utf8');
    // comm may hold spaces and parentheses: split after the last ')'.
    return text
      .slice(text.lastIndexOf(')') + 2)
      .trim()
      .split(' ');
  } catch {
    return null;
  }
}

/**
 * Pids of every process whose real uid is `uid` (from /proc/PID/status, which stays right when
 * a process makes itself non-dumpable and its /proc folder turns root-owned).
 */
export async function listProcessesOfUid(uid: number): Promise<number[]> {
  const pids: number[] = [];
  let entries: string[];
  try {
    entries = await readdir('/proc');
  } catch {
    return pids;
  }
  await Promise.all(
    entries
      .filter((e) => /^\d+$/.test(e))
      .map(async (e) => {
        try {
          const status = await readFile(`/proc/${e}/status`, 'utf8');
          const m = /^Uid:\s+(\d+)/m.exec(status);
          // A zombie is dead already; it only waits for its parent (or init) to reap it.
          const zombie = /^State:\s+[ZX]/m.test(status);
          if (m && Number(m[1]) === uid && !zombie) pids.push(Number(e));
        } catch {
          // gone meanwhile
        }
      }),
  );
  return pids;
}

/**
 * Kills every process of `owner.uid`: runs `kill -KILL -1` as that uid, which can only signal
 * that uid's own processes, so a daemon that called setsid dies too and nothing else can be
 * hit. Repeats (a fork racing the first pass) until none is left or `attempts` are used.
 * The fallback for hosts without a usable cgroup v2; the uid must be used by nothing else.
 */
export async function killAllOfUid(
  tools: SandboxTools,
  owner: FileOwner,
  attempts = 5,
): Promise<boolean> {
  for (let i = 0; i < attempts; i++) {
    // Always one pass, then repeat only while the listing still shows some.
    if (i > 0 && (await listProcessesOfUid(owner.uid)).length === 0) return true;
    await new Promise<void>((resolve) => {
      const child = spawn(
        tools.setpriv,
        [
          `--reuid=${owner.uid}`,
          `--regid=${owner.gid}`,
          '--clear-groups',
          '--',
          tools.sh,
          '-c',
          'kill -KILL -1',
        ],
        { stdio: 'ignore', env: { PATH: '/usr/bin:/bin' } },
      );
      child.once('error', () => resolve());
      child.once('exit', () => resolve());
    });
    await sleep(i === 0 ? 1 : 10);
  }
  return (await listProcessesOfUid(owner.uid)).length === 0;
}
