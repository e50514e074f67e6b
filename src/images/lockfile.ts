import { open, readFile, stat, unlink } from 'node:fs/promises';
import { hostname } from 'node:os';
import { setTimeout as sleep } from 'node:timers/promises';
import { ImageLockedError } from '../errors.js';
import { processAlive } from '../pids.js';

/** A held lock; release it in `finally`. */
export interface HeldLock {
  readonly path: string;
  release(): Promise<void>;
}

export interface LockOptions {
  /** How long to wait for a live holder before failing with IMAGE_LOCKED. */
  readonly waitMs?: number;
  /** How often to look again while waiting. */
  readonly pollMs?: number;
  /**
   * A lock whose holder cannot be checked (another host, or no pid written yet because the
   * holder died between create and write) is stale after this long without change.
   */
  readonly staleMs?: number;
}

/** Why the lock at `path` is stale, or null while its holder may still be working. */
async function staleReason(path: string, staleMs: number): Promise<string | null> {
  let text: string;
  let mtimeMs: number;
  try {
    [text, { mtimeMs }] = await Promise.all([readFile(path, 'utf8'), stat(path)]);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return null; // gone: just retry
    throw err;
  }
  const [pidText, host] = text.split('\n');
  const pid = Number(pidText);
  if (host === hostname() && Number.isInteger(pid) && pid > 0) {
    return processAlive(pid) ? null : `holder pid ${pid} is gone`;
  }
  return Date.now() - mtimeMs > staleMs ? `unchanged for ${staleMs} ms` : null;
}

/**
 * Takes an exclusive lock file (O_EXCL create holding `pid\nhost`), waiting while a live holder
 * has it and removing a stale one. This keeps two processes on one host from downloading the
 * same image. The stale check and the unlink are not atomic: two waiters that both find the
 * same dead holder may both proceed, which costs a duplicate download, never a torn image
 * (every download lands in its own staging folder and appears by rename).
 */
export async function acquireLock(path: string, options: LockOptions = {}): Promise<HeldLock> {
  const waitMs = options.waitMs ?? 30 * 60_000;
  const pollMs = options.pollMs ?? 250;
  const staleMs = options.staleMs ?? 10 * 60_000;
  const deadline = Date.now() + waitMs;
  for (;;) {
    try {
      const handle = await open(path, 'wx');
      try {
        await handle.writeFile(`${process.pid}\n${hostname()}\n`);
      } finally {
        await handle.close();
      }
      let released = false;
      return {
        path,
        release: async () => {
          if (released) return;
          released = true;
          await unlink(path).catch((err: unknown) => {
            if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err;
          });
        },
      };
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err;
    }
    const reason = await staleReason(path, staleMs);
    if (reason !== null) {
      await unlink(path).catch((err: unknown) => {
        if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err;
      });
      continue;
    }
    if (Date.now() >= deadline) {
      throw new ImageLockedError(`${path} is still held after ${waitMs} ms`);
    }
    await sleep(pollMs);
  }
}
