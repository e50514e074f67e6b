/*
 * Where a Firecracker VM's files go and how its process starts: in the VM's run dir, or in a
 * jail the jailer builds (chroot, namespaces, cgroups, a uid of its own; docs/firecracker.md).
 */

import {
  access,
  chown,
  constants,
  copyFile,
  link,
  realpath,
  rename,
  rm,
  symlink,
} from 'node:fs/promises';
import { basename, delimiter, isAbsolute, join, resolve } from 'node:path';
import { ConfigInvalidError, RunnerError } from '../errors.js';
import type { FirecrackerDriverOptions } from './firecracker.js';

/** Running Firecracker under its jailer (chroot, namespaces, cgroups, a uid of its own). */
export interface FirecrackerJailerOptions {
  /** The jailer binary (of the same release as Firecracker). */
  readonly binary: string;
  /** The uid and gid Firecracker runs as, after the jailer drops root. */
  readonly uid: number;
  readonly gid: number;
  /** Where jails are built: `<chrootBaseDir>/<firecracker's file name>/<vmId>/root`. */
  readonly chrootBaseDir: string;
  /** `--cgroup-version` (the jailer's default is 1). */
  readonly cgroupVersion?: 1 | 2;
  /** `--parent-cgroup` (the jailer's default is Firecracker's file name). */
  readonly parentCgroup?: string;
  /** `--cgroup FILE=VALUE` settings, e.g. `cpuset.cpus=0-1`, `memory.max=...`. */
  readonly cgroups?: readonly string[];
  /** `--netns PATH`: a network namespace to join (none: Firecracker gets no network anyway). */
  readonly netns?: string;
  /** `--resource-limit RESOURCE=VALUE`, e.g. `no-file=1024`. */
  readonly resourceLimits?: readonly string[];
}

/** Throws CONFIG_INVALID unless the jailer can be run as configured. */
export function checkJailerOptions(jailer: FirecrackerJailerOptions): void {
  for (const [key, value] of [
    ['uid', jailer.uid],
    ['gid', jailer.gid],
  ] as const) {
    if (!Number.isInteger(value) || value < 0) {
      throw new ConfigInvalidError(`jailer ${key} must be an integer >= 0`);
    }
  }
  if (!isAbsolute(jailer.chrootBaseDir)) {
    throw new ConfigInvalidError('the jailer chroot base dir must be absolute');
  }
}

/**
 * The files of a VM, by the names Firecracker knows them. Firecracker runs with the VM's root
 * folder as its working directory (the run dir, or the jail's root), and every path it is given
 * is relative to that root (or, in a jail, absolute inside it). A snapshot records the drive
 * and vsock paths as they were given, and a restore reopens them: relative names make them
 * land in the restoring VM's own folder, so two VMs restored from one snapshot never share a
 * socket and the restore needs no `vsock_override` (which only recent Firecrackers take).
 */
export const FIRECRACKER_FILES = {
  apiSocket: 'api.sock',
  vsockSocket: 'vsock.sock',
  kernel: 'vmlinux',
  initrd: 'initrd.img',
  rootfs: 'rootfs.ext4',
  base: 'base.ext4',
  snapshotState: 'snapshot.state',
  snapshotMemory: 'snapshot.mem',
} as const;

/** A file of a VM, by its role. */
export type FirecrackerFile = keyof typeof FIRECRACKER_FILES;

/** Where a VM's files are, as the host sees them. */
export interface FirecrackerLayout {
  /** Firecracker's working directory and root of its files: the run dir, or the jail root. */
  readonly root: string;
  /** The jail (`<chrootBaseDir>/<exec name>/<vmId>`), removed on destroy; null unjailed. */
  readonly jailDir: string | null;
  readonly apiSocket: string;
  readonly vsockSocket: string;
}

/** The layout of a VM; `execName` is the file name of the (resolved) Firecracker binary. */
export function firecrackerLayout(
  vm: { vmId: string; runDir: string },
  jailer: FirecrackerJailerOptions | null,
  execName: string,
): FirecrackerLayout {
  const jailDir = jailer === null ? null : join(jailer.chrootBaseDir, execName, vm.vmId);
  const root = jailDir === null ? vm.runDir : join(jailDir, 'root');
  return {
    root,
    jailDir,
    apiSocket: join(root, FIRECRACKER_FILES.apiSocket),
    vsockSocket: join(root, FIRECRACKER_FILES.vsockSocket),
  };
}

/** A file's name as Firecracker is told it: relative to its cwd, or absolute inside the jail. */
export function firecrackerPath(file: FirecrackerFile, jailed: boolean): string {
  return jailed ? `/${FIRECRACKER_FILES[file]}` : FIRECRACKER_FILES[file];
}

/** The process to start: Firecracker itself, or the jailer that execs into it. */
export interface FirecrackerCommand {
  readonly file: string;
  readonly args: string[];
  readonly cwd: string;
}

/**
 * The command line. The jailer runs in the foreground (no `--daemonize`, no `--new-pid-ns`), so
 * it execs into Firecracker in the same process: the child the driver supervises is Firecracker.
 */
export function firecrackerCommand(
  vm: { vmId: string; runDir: string },
  driver: FirecrackerDriverOptions,
  execFile: string,
): FirecrackerCommand {
  const jailer = driver.jailer ?? null;
  if (jailer === null) {
    return {
      file: execFile,
      args: ['--api-sock', firecrackerPath('apiSocket', false), '--id', vm.vmId],
      cwd: vm.runDir,
    };
  }
  const layout = firecrackerLayout(vm, jailer, basename(execFile));
  return {
    file: jailer.binary,
    args: [
      '--id',
      vm.vmId,
      '--exec-file',
      execFile,
      '--uid',
      String(jailer.uid),
      '--gid',
      String(jailer.gid),
      '--chroot-base-dir',
      jailer.chrootBaseDir,
      ...(jailer.cgroupVersion === undefined
        ? []
        : ['--cgroup-version', String(jailer.cgroupVersion)]),
      ...(jailer.parentCgroup === undefined ? [] : ['--parent-cgroup', jailer.parentCgroup]),
      ...(jailer.cgroups ?? []).flatMap((c) => ['--cgroup', c]),
      ...(jailer.netns === undefined ? [] : ['--netns', jailer.netns]),
      ...(jailer.resourceLimits ?? []).flatMap((r) => ['--resource-limit', r]),
      '--',
      // The jailer passes --id itself.
      '--api-sock',
      firecrackerPath('apiSocket', true),
    ],
    cwd: layout.root,
  };
}

/**
 * The cgroup folders the jailer makes for a VM (it leaves them behind; destroy removes them,
 * best effort): cgroup v2 `<root>/<parent>/<id>`, v1 one per controller named in `cgroups`.
 */
export function jailerCgroupDirs(
  jailer: FirecrackerJailerOptions,
  execName: string,
  vmId: string,
  cgroupRoot = '/sys/fs/cgroup',
): string[] {
  const parent = jailer.parentCgroup ?? execName;
  if (jailer.cgroupVersion === 2) return [join(cgroupRoot, parent, vmId)];
  const controllers = new Set((jailer.cgroups ?? []).map((c) => c.split('.')[0] ?? ''));
  return [...controllers].filter((c) => c !== '').map((c) => join(cgroupRoot, c, parent, vmId));
}

/**
 * Puts `source` into a VM's folder as `target`. Unjailed, a symlink. Jailed, Firecracker sees
 * only its jail, so a hard link (the jail and the image store should share a file system), or
 * else a copy owned by the jail's user. A hard link keeps the source's owner and mode: images
 * must be readable by the jail's uid.
 */
export async function placeFile(
  source: string,
  target: string,
  jailer: FirecrackerJailerOptions | null,
): Promise<void> {
  const from = resolve(source);
  if (jailer === null) {
    await access(from, constants.R_OK);
    await symlink(from, target);
    return;
  }
  try {
    await link(from, target);
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    if (code !== 'EXDEV' && code !== 'EPERM' && code !== 'EMLINK') throw err;
    await copyFile(from, target, constants.COPYFILE_FICLONE);
    await chown(target, jailer.uid, jailer.gid);
  }
}

/** rename, or copy and remove across file systems. */
export async function moveFile(from: string, to: string): Promise<void> {
  try {
    await rename(from, to);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'EXDEV') throw err;
    await copyFile(from, to, constants.COPYFILE_FICLONE);
    await rm(from, { force: true });
  }
}

/** Removes a VM's run dir and its jail (if any). */
export async function removeVmFiles(runDir: string, jailDir: string | null): Promise<void> {
  await rm(runDir, { recursive: true, force: true });
  if (jailDir !== null) await rm(jailDir, { recursive: true, force: true });
}

/**
 * The absolute, symlink-free path of an executable (a bare name is looked up on PATH): the
 * jailer wants a path, and names the jail after the file it resolves to. Its name must contain
 * `firecracker` (the jailer refuses others).
 */
export async function resolveExecutable(binary: string): Promise<string> {
  const candidates = binary.includes('/')
    ? [resolve(binary)]
    : (process.env.PATH ?? '')
        .split(delimiter)
        .filter((dir) => dir !== '')
        .map((dir) => join(dir, binary));
  for (const candidate of candidates) {
    try {
      await access(candidate, constants.X_OK);
      const real = await realpath(candidate);
      if (!basename(real).includes('firecracker')) {
        throw new ConfigInvalidError(
          `the jailer runs only binaries whose name contains "firecracker", not ${real}`,
        );
      }
      return real;
    } catch (err) {
      if (err instanceof RunnerError) throw err;
    }
  }
  throw new ConfigInvalidError(`no executable Firecracker binary ${binary} found`);
}
