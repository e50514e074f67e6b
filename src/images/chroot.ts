import { execFileSync } from 'node:child_process';
import { existsSync, mkdirSync, readFileSync, rmSync, symlinkSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { ImageBuildFailedError } from '../errors.js';
import type { BuildLog, RunOptions } from './build-log.js';

/** PATH inside a build chroot. */
export const CHROOT_PATH = '/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin';

/**
 * The environment of commands run in a build chroot: nothing from the host but the proxy
 * settings apt may need to reach the mirror.
 */
export function chrootEnv(hostEnv: NodeJS.ProcessEnv = process.env): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = {
    PATH: CHROOT_PATH,
    HOME: '/root',
    LANG: 'C.UTF-8',
    DEBIAN_FRONTEND: 'noninteractive',
    DEBCONF_NONINTERACTIVE_SEEN: 'true',
  };
  for (const key of [
    'http_proxy',
    'https_proxy',
    'no_proxy',
    'HTTP_PROXY',
    'HTTPS_PROXY',
    'NO_PROXY',
  ]) {
    const value = hostEnv[key];
    if (value !== undefined) env[key] = value;
  }
  return env;
}

/** Mount points at or below `dir`, deepest first (from /proc/self/mountinfo). */
export function mountsUnder(dir: string): string[] {
  const root = resolve(dir);
  let text: string;
  try {
    text = readFileSync('/proc/self/mountinfo', 'utf8');
  } catch {
    return [];
  }
  const found: string[] = [];
  for (const line of text.split('\n')) {
    const field = line.split(' ')[4];
    if (field === undefined) continue;
    // mountinfo escapes space, tab, newline and backslash as \ooo.
    const point = field.replace(/\\([0-7]{3})/g, (_m, oct: string) =>
      String.fromCharCode(parseInt(oct, 8)),
    );
    if (point === root || point.startsWith(`${root}/`)) found.push(point);
  }
  return [...new Set(found)].sort((a, b) => b.length - a.length);
}

/**
 * Unmounts everything at or below `dir` (lazily when a plain unmount fails), so that removing a
 * build folder can never reach through a bind mount into the shared package cache.
 */
export function unmountUnder(dir: string): void {
  for (let round = 0; round < 3; round += 1) {
    const points = mountsUnder(dir);
    if (points.length === 0) return;
    for (const point of points) {
      try {
        execFileSync('umount', [point], { stdio: 'ignore' });
      } catch {
        try {
          execFileSync('umount', ['-l', point], { stdio: 'ignore' });
        } catch {
          // Checked below.
        }
      }
    }
  }
  const left = mountsUnder(dir);
  if (left.length > 0) {
    throw new ImageBuildFailedError(`cannot unmount ${left.join(', ')}`);
  }
}

/** Removes a build folder, after making sure nothing is mounted inside it. */
export function removeTree(dir: string): void {
  if (!existsSync(dir)) return;
  unmountUnder(dir);
  rmSync(dir, { recursive: true, force: true });
}

/** What a chroot needs mounted while packages are installed or commands run in it. */
export interface ChrootMountOptions {
  /** Bind-mounted at /var/cache/apt/archives: the .deb cache shared by every build. */
  readonly archivesDir?: string;
}

const DEVICES: readonly (readonly [string, number, number])[] = [
  ['null', 1, 3],
  ['zero', 1, 5],
  ['full', 1, 7],
  ['random', 1, 8],
  ['urandom', 1, 9],
  ['tty', 5, 0],
];

/**
 * Runs `fn` with /proc (a JDK install fails without it), a minimal /dev on a tmpfs (so no device
 * node of the host's /dev lands in the image) and the shared package cache mounted in `root`;
 * unmounts them all afterwards, also on failure.
 */
export async function withChrootMounts<T>(
  root: string,
  log: BuildLog,
  options: ChrootMountOptions,
  fn: () => Promise<T>,
): Promise<T> {
  const mount = async (args: string[]): Promise<void> => {
    await log.run('mount', args);
  };
  try {
    mkdirSync(join(root, 'proc'), { recursive: true });
    await mount(['-t', 'proc', '-o', 'nosuid,nodev,noexec', 'proc', join(root, 'proc')]);
    const dev = join(root, 'dev');
    mkdirSync(dev, { recursive: true });
    await mount(['-t', 'tmpfs', '-o', 'mode=0755,nosuid', 'runner-dev', dev]);
    for (const [name, major, minor] of DEVICES) {
      await log.run('mknod', ['-m', '0666', join(dev, name), 'c', String(major), String(minor)]);
    }
    mkdirSync(join(dev, 'pts'));
    mkdirSync(join(dev, 'shm'), { mode: 0o1777 });
    symlinkSync('/proc/self/fd', join(dev, 'fd'));
    symlinkSync('/proc/self/fd/0', join(dev, 'stdin'));
    symlinkSync('/proc/self/fd/1', join(dev, 'stdout'));
    symlinkSync('/proc/self/fd/2', join(dev, 'stderr'));
    if (options.archivesDir !== undefined) {
      const target = join(root, 'var/cache/apt/archives');
      mkdirSync(target, { recursive: true });
      mkdirSync(join(options.archivesDir, 'partial'), { recursive: true });
      await mount(['--bind', options.archivesDir, target]);
    }
    return await fn();
  } finally {
    unmountUnder(join(root, 'var/cache/apt/archives'));
    unmountUnder(join(root, 'dev'));
    unmountUnder(join(root, 'proc'));
    unmountUnder(root);
  }
}

/** Runs a command inside `root` with chroot(8) and the chroot environment. */
export function chrootRun(
  log: BuildLog,
  root: string,
  argv: readonly string[],
  options: RunOptions = {},
): Promise<void> {
  return log.run('chroot', [root, ...argv], { env: chrootEnv(), ...options });
}

/** Like chrootRun, returning the command's output. */
export function chrootCapture(
  log: BuildLog,
  root: string,
  argv: readonly string[],
  options: RunOptions = {},
): Promise<string> {
  return log.capture('chroot', [root, ...argv], { env: chrootEnv(), ...options });
}
