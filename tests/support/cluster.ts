import { spawn, type ChildProcess } from 'node:child_process';
import {
  chmodSync,
  copyFileSync,
  createWriteStream,
  existsSync,
  mkdirSync,
  mkdtempSync,
  rmSync,
} from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { afterAll, beforeAll } from 'vitest';
import { testDataPaths } from './paths.js';

const ROOT = resolve(import.meta.dirname, '../..');
const RUNNER = join(ROOT, 'bin', 'runner.js');

/** Why the cluster tests cannot run here, or null. */
export function clusterSkipReason(): string | null {
  if (process.getuid?.() !== 0) return 'booting VMs needs root';
  if (!existsSync('/usr/bin/qemu-system-x86_64')) return 'qemu-system-x86_64 is not installed';
  if (!existsSync('/usr/bin/redis-server'))
    return 'redis-server is not installed (scripts/setup.sh installs it)';
  return null;
}

/** A free TCP port on 127.0.0.1 (taken by the OS, then released). */
export async function freePort(): Promise<number> {
  return new Promise((done, fail) => {
    const server = createServer();
    server.once('error', fail);
    server.listen(0, '127.0.0.1', () => {
      const address = server.address();
      const port = typeof address === 'object' && address !== null ? address.port : 0;
      server.close(() => done(port));
    });
  });
}

/** A child process of the test with its output kept in a log file. */
export interface Proc {
  readonly child: ChildProcess;
  readonly log: string;
  /** Resolves with the exit code (or 128 + signal) once it ends. */
  readonly exited: Promise<number>;
  alive(): boolean;
  kill(signal: NodeJS.Signals): void;
}

function start(command: string, args: string[], env: NodeJS.ProcessEnv, log: string): Proc {
  const out = createWriteStream(log, { flags: 'a' });
  // Its own process group: a SIGKILL of the test's making reaches its VMs too (killGroup).
  const child = spawn(command, args, { env, stdio: ['ignore', 'pipe', 'pipe'], detached: true });
  child.stdout?.pipe(out);
  child.stderr?.pipe(out);
  let alive = true;
  const exited = new Promise<number>((done) => {
    child.once('exit', (code, signal) => {
      alive = false;
      done(code ?? 128 + (signal === null ? 0 : (os[signal] ?? 0)));
    });
  });
  return {
    child,
    log,
    exited,
    alive: () => alive,
    kill: (signal) => {
      if (alive) child.kill(signal);
    },
  };
}

const os: Partial<Record<NodeJS.Signals, number>> = { SIGKILL: 9, SIGTERM: 15, SIGINT: 2 };

/** Kills a process's whole group (the process and the VMMs it started). */
export function killGroup(proc: Proc, signal: NodeJS.Signals = 'SIGKILL'): void {
  const pid = proc.child.pid;
  if (pid === undefined) return;
  try {
    process.kill(-pid, signal);
  } catch {
    // Gone already.
  }
}

/** A real redis-server on 127.0.0.1, appending to an AOF in `dir` (so a restart keeps the jobs). */
export async function startRedis(
  dir: string,
  port?: number,
): Promise<{ proc: Proc; url: string; port: number }> {
  mkdirSync(dir, { recursive: true });
  const p = port ?? (await freePort());
  const proc = start(
    '/usr/bin/redis-server',
    [
      '--port',
      String(p),
      '--bind',
      '127.0.0.1',
      '--dir',
      dir,
      '--appendonly',
      'yes',
      '--appendfsync',
      'always',
      '--save',
      '',
    ],
    process.env,
    join(dir, 'redis.log'),
  );
  const url = `redis://127.0.0.1:${p}`;
  const deadline = Date.now() + 10_000;
  for (;;) {
    if (!proc.alive()) throw new Error(`redis-server exited; see ${proc.log}`);
    const ok = await new Promise<boolean>((done) => {
      const s = createServer();
      s.once('error', () => done(true)); // in use: redis is listening
      s.listen(p, '127.0.0.1', () => s.close(() => done(false)));
    });
    if (ok) break;
    if (Date.now() > deadline) throw new Error('redis-server did not listen');
    await sleep(50);
  }
  return { proc, url, port: p };
}

/** Environment of a runner process over its own data dir and the shared images. */
function runnerEnv(dataDir: string, extra: NodeJS.ProcessEnv): NodeJS.ProcessEnv {
  mkdirSync(dataDir, { recursive: true });
  chmodSync(dataDir, 0o755);
  const shared = testDataPaths();
  const probe = join(shared.dataDir, 'kvm-probe.json');
  if (existsSync(probe) && !existsSync(join(dataDir, 'kvm-probe.json')))
    copyFileSync(probe, join(dataDir, 'kvm-probe.json'));
  return {
    ...process.env,
    RUNNER_FROM_SOURCE: '1',
    RUNNER_DATA_DIR: dataDir,
    RUNNER_IMAGES_DIR: shared.imagesDir,
    RUNNER_QEMU_USER: process.env.RUNNER_QEMU_USER ?? 'runner-vmm',
    RUNNER_LOG_LEVEL: 'info',
    ...extra,
  };
}

/** `runner worker --redis URL --id ID` over its own data dir (a host of its own). */
export function startWorker(
  dataDir: string,
  redisUrl: string,
  id: string,
  extra: NodeJS.ProcessEnv = {},
): Proc {
  return start(
    process.execPath,
    [RUNNER, 'worker', '--redis', redisUrl, '--id', id],
    runnerEnv(dataDir, extra),
    join(dataDir, 'worker.log'),
  );
}

/** `runner serve --redis URL` on a free port; resolves once it answers /healthz. */
export async function startApiNode(
  dataDir: string,
  redisUrl: string,
  extra: NodeJS.ProcessEnv = {},
): Promise<{ proc: Proc; url: string }> {
  const port = await freePort();
  const proc = start(
    process.execPath,
    [RUNNER, 'serve', '--redis', redisUrl, '--host', '127.0.0.1', '--port', String(port)],
    runnerEnv(dataDir, extra),
    join(dataDir, 'serve.log'),
  );
  const url = `http://127.0.0.1:${port}`;
  const deadline = Date.now() + 60_000;
  for (;;) {
    if (!proc.alive()) throw new Error(`runner serve exited; see ${proc.log}`);
    try {
      const res = await fetch(`${url}/healthz`);
      if (res.ok) break;
    } catch {
      // Not listening yet.
    }
    if (Date.now() > deadline) throw new Error(`runner serve did not answer; see ${proc.log}`);
    await sleep(200);
  }
  return { proc, url };
}

/** Waits until `cond` holds (polling), or throws after `ms`. */
export async function until(
  cond: () => Promise<boolean> | boolean,
  ms: number,
  what: string,
): Promise<void> {
  const deadline = Date.now() + ms;
  while (!(await cond())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await sleep(200);
  }
}

/**
 * One redis-server for the tests of a describe block: started before them in a temporary
 * folder named after `label`, killed and removed after them. Returns its URL's getter.
 */
export function sharedRedis(label: string): () => string {
  let dir = '';
  let redis: { proc: Proc; url: string } | undefined;
  beforeAll(async () => {
    dir = mkdtempSync(join(tmpdir(), `${label}-`));
    redis = await startRedis(dir);
  });
  afterAll(() => {
    if (redis) killGroup(redis.proc);
    if (dir !== '') rmSync(dir, { recursive: true, force: true });
  });
  return () => redis?.url ?? '';
}
