import { readFileSync } from 'node:fs';
import { chmod, mkdtemp, readdir, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Executor, listProcessesOfUid, probeCgroup } from '../../../src/agent/index.js';
import type { ExecutorOptions, FileOwner, ExecutorJob } from '../../../src/agent/index.js';
import { LanguageRegistry } from '../../../src/languages/index.js';
import type { Limits } from '../../../src/protocol/index.js';

export const isRoot = process.getuid?.() === 0;
export const languagesDir = join(import.meta.dirname, '../../../languages');
export const registry = LanguageRegistry.fromDir(languagesDir);

/** Limits roomy enough for a loaded 2-core machine, small enough to keep tests quick. */
export const LIMITS: Limits = {
  wallTimeMs: 10_000,
  cpuTimeMs: 5_000,
  memoryMib: 512,
  processes: 64,
  outputBytes: 64 * 1024,
  fileSizeBytes: 1024 * 1024,
  openFiles: 64,
  stackBytes: 8 * 1024 * 1024,
};

/** Compile limits: gcc on a busy machine may need a few seconds. */
export const COMPILE_LIMITS: Limits = { ...LIMITS, wallTimeMs: 30_000, cpuTimeMs: 20_000 };

/**
 * An unprivileged uid and gid nobody else on this machine uses, from `[from, from + count)`:
 * not in /etc/passwd or /etc/group, no process running as it. Tests that drop privileges use
 * one, so that "kill every process of the uid" can never hit anything but the test's own.
 * Each test file passes its own range, so files running in parallel never share one.
 */
export async function freeOwner(from: number, count = 100): Promise<FileOwner> {
  const taken = new Set<number>();
  for (const file of ['/etc/passwd', '/etc/group']) {
    for (const line of readFileSync(file, 'utf8').split('\n')) {
      const id = Number(line.split(':')[2]);
      if (Number.isInteger(id)) taken.add(id);
    }
  }
  const start = Math.floor(Math.random() * count);
  for (let i = 0; i < count; i++) {
    const id = from + ((start + i) % count);
    if (taken.has(id)) continue;
    if ((await listProcessesOfUid(id)).length > 0) continue;
    return { uid: id, gid: id };
  }
  throw new Error(`no free uid in ${from}..${from + count - 1}`);
}

/** The first usable cgroup v2 root on this machine (the guest's, or a hybrid host's), or null. */
export async function findCgroupRoot(): Promise<string | null> {
  for (const root of ['/sys/fs/cgroup', '/sys/fs/cgroup/unified']) {
    if (await probeCgroup(root)) return root;
  }
  return null;
}

/** A job of one file in `language`, with test limits; `extra` overrides anything. */
export function job(
  language: string,
  name: string,
  content: string,
  extra: Partial<ExecutorJob> = {},
): ExecutorJob {
  return {
    language,
    files: [{ name, content, encoding: 'utf8' }],
    stdin: '',
    args: [],
    env: {},
    compileLimits: COMPILE_LIMITS,
    runLimits: LIMITS,
    ...extra,
  };
}

/** A bash job with run limits merged from `limits`. */
export function bash(
  script: string,
  limits: Partial<Limits> = {},
  extra: Partial<ExecutorJob> = {},
) {
  return job('bash', 'main.sh', script, { runLimits: { ...LIMITS, ...limits }, ...extra });
}

export const text = (b64: string): string => Buffer.from(b64, 'base64').toString('utf8');
export const bytes = (b64: string): Buffer => Buffer.from(b64, 'base64');

/** An executor over a temporary work root; `close()` checks nothing is left and removes it. */
export interface ExecutorFixture {
  readonly executor: Executor;
  readonly workRoot: string;
  readonly owner: FileOwner | null;
  /** Work dirs left behind (there should be none between jobs). */
  leftovers(): Promise<string[]>;
  close(): Promise<void>;
}

export async function makeExecutor(
  options: { owner: FileOwner | null; cgroupRoot: string | null } & Partial<ExecutorOptions>,
): Promise<ExecutorFixture> {
  const workRoot = await mkdtemp(join(tmpdir(), 'runner-agent-test-'));
  // The run user must be able to pass through to its work dir (mkdtemp makes 0700).
  await chmod(workRoot, 0o711);
  const executor = await Executor.create({
    languages: registry,
    workRoot: join(workRoot, 'jobs'),
    runAs: options.owner,
    ...options,
  });
  return {
    executor,
    workRoot: join(workRoot, 'jobs'),
    owner: options.owner,
    leftovers: async () => {
      // A job's work dirs are removed after its outcome is given, before the next job.
      await executor.idle();
      return readdir(join(workRoot, 'jobs')).catch(() => []);
    },
    close: () => rm(workRoot, { recursive: true, force: true }),
  };
}
