/*
 * QEMU's jail (docs/qemu.md, "QEMU's jail"): the host side of src/vmm/native/runner-jail.c.
 * What a VM's QEMU may see (its file closure), the helper's command line, the cgroup of its
 * own (v1 or v2) with memory, CPU and pids limits, and the clean-up after QEMU is gone.
 */

import { spawn } from 'node:child_process';
import { createHash } from 'node:crypto';
import { existsSync, readFileSync, statSync } from 'node:fs';
import {
  access,
  constants,
  mkdir,
  readdir,
  readFile,
  rename,
  rm,
  rmdir,
  writeFile,
} from 'node:fs/promises';
import { delimiter, dirname, isAbsolute, join, normalize } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { VmJailFailedError } from '../errors.js';
import { projectRoot } from '../images/agent-bundle.js';
import type { QemuAccel } from './qemu.js';
import type { RamFile } from './types.js';

/** The helper's exit code when the jail could not be set up (QEMU never ran). */
export const JAIL_FAILED_EXIT = 125;

/** The parts of a jail, as the helper and the errors name them. */
export type JailPart =
  | 'args'
  | 'helper'
  | 'files'
  | 'netns'
  | 'namespaces'
  | 'fork'
  | 'cgroup'
  | 'mounts'
  | 'pivot'
  | 'user'
  | 'capabilities'
  | 'fds'
  | 'exec';

/**
 * QEMU's data files a microvm really opens, relative to its data dir (`<exec dir>/../share/qemu`):
 * found with `strace -f -e trace=openat` on QEMU 7.2 (docs/qemu.md).
 */
export const QEMU_DATA_FILES = ['bios-microvm.bin', 'linuxboot_dma.bin'] as const;

/** The TCG accelerator, a module QEMU 7.2 dlopens from `<exec dir>/../lib/<triplet>/qemu` (10 has it built in). */
export const QEMU_TCG_MODULE = 'x86_64-linux-gnu/qemu/accel-tcg-x86_64.so';

/** Settings of the jail: who QEMU runs as, where jails go, the cgroup limits. */
export interface QemuJailOptions {
  /** The unprivileged uid/gid QEMU runs as (root is refused). */
  readonly user: { uid: number; gid: number } | null;
  /** Where the helper is built (`<data dir>/build`). */
  readonly buildDir: string;
  /** Where each VM's jail root is made: `<rootBaseDir>/<vmId>`. */
  readonly rootBaseDir: string;
  /** The cgroup file system (`/sys/fs/cgroup`). */
  readonly cgroupRoot: string;
  /** Memory of the VMM beyond the guest's (QEMU itself, TCG's code buffer). */
  readonly memoryOverheadMib: number;
  readonly pidsMax: number;
  /** CPU limit in percent of one CPU; 0: (vCPUs + 1) × 100. */
  readonly cpuPercent: number;
  /** The helper's source (default: this tree's). */
  readonly source?: string;
}

/** What one jail is made of: the helper's spec, before it becomes a command line. */
export interface JailSpec {
  readonly helper: string;
  readonly root: string;
  readonly uid: number;
  readonly gid: number;
  readonly netns: string | null;
  readonly readOnly: readonly string[];
  readonly readWrite: readonly string[];
  readonly devices: readonly string[];
  /** cgroup.procs files the VMM joins. */
  readonly cgroupProcs: readonly string[];
  readonly keepFds: readonly number[];
  readonly statusFd: number;
  readonly binary: string;
  readonly args: readonly string[];
}

/** The helper's argv (without the helper itself): `--flag value`... `-- binary args`. */
export function jailArgv(spec: JailSpec): string[] {
  const out = ['--root', spec.root, '--uid', String(spec.uid), '--gid', String(spec.gid)];
  if (spec.netns !== null) out.push('--netns', spec.netns);
  for (const p of spec.readOnly) out.push('--ro', p);
  for (const p of spec.readWrite) out.push('--rw', p);
  for (const p of spec.devices) out.push('--dev', p);
  for (const p of spec.cgroupProcs) out.push('--cgroup', p);
  for (const fd of spec.keepFds) out.push('--keep-fd', String(fd));
  out.push('--status-fd', String(spec.statusFd), '--', spec.binary, ...spec.args);
  return out;
}

/** The device nodes a VM's QEMU opens: /dev/urandom for rng-random, KVM, a tap's /dev/net/tun. */
export function jailDevices(accel: QemuAccel, netns: string | null): string[] {
  return [
    '/dev/null',
    '/dev/urandom',
    ...(accel === 'kvm' ? ['/dev/kvm'] : []),
    ...(netns !== null ? ['/dev/net/tun'] : []),
  ];
}

/**
 * The libraries `ldd` lists, by the paths the loader resolves them to (the ones the jail binds
 * them at). VM_JAIL_FAILED (files) for a library that is not found.
 */
export function parseLdd(text: string, of: string): string[] {
  const out: string[] = [];
  for (const raw of text.split('\n')) {
    const line = raw.trim();
    if (line === '' || line.endsWith(':') || line.includes('statically linked')) continue;
    if (line.includes('=> not found')) {
      throw new VmJailFailedError(
        `QEMU's jail (files): ${of} needs ${line.split(' ')[0]}, not found`,
      );
    }
    const m = /=>\s*(\/\S+)/.exec(line) ?? /^(\/\S+)/.exec(line);
    if (m?.[1] !== undefined) out.push(m[1]);
  }
  return out;
}

/** Resolves a binary name on PATH to an absolute path (QEMU execs it by that path in the jail). */
export function resolveBinary(binary: string, path: string = process.env.PATH ?? ''): string {
  if (isAbsolute(binary)) return binary;
  for (const dir of path.split(delimiter)) {
    if (dir === '') continue;
    const candidate = join(dir, binary);
    try {
      if (statSync(candidate).isFile()) return candidate;
    } catch {
      // not in this dir
    }
  }
  throw new VmJailFailedError(`QEMU's jail (files): ${binary} is not on PATH`);
}

/**
 * Where QEMU finds its data files and modules, relative to its own directory (its relocation).
 * The TCG module only where it is one: Debian's QEMU 10 (bookworm-backports) has TCG built in.
 */
export function qemuSupportFiles(
  binary: string,
  accel: QemuAccel,
  exists: (path: string) => boolean = existsSync,
): string[] {
  const execDir = dirname(binary);
  const tcg = normalize(join(execDir, '..', 'lib', QEMU_TCG_MODULE));
  return [
    ...QEMU_DATA_FILES.map((f) => normalize(join(execDir, '..', 'share', 'qemu', f))),
    ...(accel === 'tcg' && exists(tcg) ? [tcg] : []),
  ];
}

/** The cgroup version of a cgroup file system: 2 when it has cgroup.controllers at its root. */
export function cgroupVersion(root: string): 1 | 2 {
  return existsSync(join(root, 'cgroup.controllers')) ? 2 : 1;
}

/** The controllers a VMM's cgroup limits. */
export const JAIL_CONTROLLERS = ['memory', 'pids', 'cpu'] as const;

/** One cgroup dir of a VM and the limit files written into it. */
export interface CgroupDir {
  readonly dir: string;
  readonly files: Readonly<Record<string, string>>;
}

/** A VMM's limits, resolved. */
export interface JailLimits {
  readonly memoryBytes: number;
  readonly pidsMax: number;
  /** CPU quota per 100 ms period, in µs. */
  readonly cpuQuotaUs: number;
}

const CPU_PERIOD_US = 100_000;

/** The limits of a VM's VMM: guest memory plus the overhead, pids, CPU. */
export function jailLimits(
  options: Pick<QemuJailOptions, 'memoryOverheadMib' | 'pidsMax' | 'cpuPercent'>,
  vm: { memoryMib: number; vcpus: number },
): JailLimits {
  const percent = options.cpuPercent > 0 ? options.cpuPercent : (vm.vcpus + 1) * 100;
  return {
    memoryBytes: (vm.memoryMib + options.memoryOverheadMib) * 1024 * 1024,
    pidsMax: options.pidsMax,
    cpuQuotaUs: Math.round((percent / 100) * CPU_PERIOD_US),
  };
}

/**
 * The service's own cgroup per controller, from /proc/self/cgroup (`4:memory:/a/b`, `0::/a`).
 * v1 VMM cgroups nest under the service's own, so they stay inside whatever confines it.
 */
export function selfCgroups(text: string): Map<string, string> {
  const out = new Map<string, string>();
  for (const line of text.split('\n')) {
    const m = /^\d+:([^:]*):(.*)$/.exec(line.trim());
    if (!m) continue;
    for (const c of (m[1] ?? '').split(',')) out.set(c, m[2] ?? '/');
  }
  return out;
}

/**
 * The cgroup dirs of one VM and their limit files. v1: one dir per controller under the
 * service's own cgroup (`<root>/<ctrl><self>/runner-qemu/<vmId>`); v2: one dir
 * `<root>/runner-qemu/<vmId>` (not under the service's own cgroup, which holds the service's
 * process and so may not hand controllers down: v2's "no internal processes" rule).
 */
export function cgroupPlan(
  version: 1 | 2,
  root: string,
  self: Map<string, string>,
  vmId: string,
  limits: JailLimits,
): CgroupDir[] {
  if (version === 2) {
    return [
      {
        dir: join(root, 'runner-qemu', vmId),
        files: {
          'memory.max': String(limits.memoryBytes),
          'memory.swap.max': '0',
          'pids.max': String(limits.pidsMax),
          'cpu.max': `${limits.cpuQuotaUs} ${CPU_PERIOD_US}`,
        },
      },
    ];
  }
  const files: Record<(typeof JAIL_CONTROLLERS)[number], Record<string, string>> = {
    memory: { 'memory.limit_in_bytes': String(limits.memoryBytes) },
    pids: { 'pids.max': String(limits.pidsMax) },
    cpu: {
      'cpu.cfs_period_us': String(CPU_PERIOD_US),
      'cpu.cfs_quota_us': String(limits.cpuQuotaUs),
    },
  };
  return JAIL_CONTROLLERS.map((c) => ({
    dir: join(root, c, self.get(c) ?? '/', 'runner-qemu', vmId),
    files: files[c],
  }));
}

/** A jail made ready for one VM: the helper's command line and what to remove after. */
export interface PreparedJail {
  readonly command: string;
  readonly argv: string[];
  readonly root: string;
  readonly cgroups: readonly CgroupDir[];
}

/** What a VM's jail needs of it. */
export interface JailedVm {
  readonly vmId: string;
  readonly runDir: string;
  readonly kernelPath: string;
  readonly initrdPath: string;
  readonly rootfsPath: string | null;
  readonly basePath?: string;
  readonly memoryMib: number;
  readonly vcpus: number;
  readonly netns?: string | null;
  readonly ramFile?: RamFile | null;
}

function jailError(part: JailPart, message: string, cause?: unknown): VmJailFailedError {
  return new VmJailFailedError(`QEMU's jail could not be set up (${part}): ${message}`, {
    cause,
  });
}

/**
 * Builds the helper (src/vmm/native/runner-jail.c) with the host's gcc, statically linked, into
 * `<buildDir>/vmm/runner-jail-<sha256 of the source, 16 hex>`: built once per source, about a
 * second. VM_JAIL_FAILED (helper) when gcc or the static C library is missing.
 */
export async function buildJailHelper(
  buildDir: string,
  source: string = join(projectRoot(), 'src', 'vmm', 'native', 'runner-jail.c'),
): Promise<string> {
  let text: Buffer;
  try {
    text = readFileSync(source);
  } catch (err) {
    throw jailError('helper', `cannot read ${source}`, err);
  }
  const hash = createHash('sha256').update(text).digest('hex').slice(0, 16);
  const outFile = join(buildDir, 'vmm', `runner-jail-${hash}`);
  if (existsSync(outFile)) return outFile;
  await mkdir(dirname(outFile), { recursive: true });
  const partial = `${outFile}.partial-${process.pid}`;
  const args = ['-static', '-O2', '-s', '-Wall', '-Wextra', '-Werror', '-o', partial, source];
  const { code, output } = await run('gcc', args).catch((err: unknown) => {
    throw jailError(
      'helper',
      `cannot run gcc to build runner-jail (${err instanceof Error ? err.message : String(err)}): install gcc and libc6-dev (bash scripts/setup.sh does)`,
      err,
    );
  });
  if (code !== 0 || !existsSync(partial)) {
    await rm(partial, { force: true });
    throw jailError(
      'helper',
      `building runner-jail failed (gcc exit ${code ?? 'signal'}; the static C library comes with libc6-dev):\n${output.trim()}`,
    );
  }
  await rename(partial, outFile);
  return outFile;
}

function run(command: string, args: string[]): Promise<{ code: number | null; output: string }> {
  return new Promise((resolve, reject) => {
    const child = spawn(command, args, { stdio: ['ignore', 'pipe', 'pipe'] });
    const chunks: Buffer[] = [];
    child.stdout.on('data', (c: Buffer) => chunks.push(c));
    child.stderr.on('data', (c: Buffer) => chunks.push(c));
    child.on('error', reject);
    child.on('close', (code) => resolve({ code, output: Buffer.concat(chunks).toString('utf8') }));
  });
}

/**
 * The jails of one QEMU driver: builds the helper once, computes each binary's file closure
 * once (ldd), makes each VM's jail root and cgroups, and removes them after the VM.
 */
export class QemuJail {
  private helper: Promise<string> | null = null;
  private readonly closures = new Map<string, Promise<string[]>>();

  constructor(readonly options: QemuJailOptions) {}

  /** The helper's path, built on first use (cached by the source's hash). */
  helperPath(): Promise<string> {
    this.helper ??= buildJailHelper(this.options.buildDir, this.options.source);
    this.helper.catch(() => {
      this.helper = null;
    });
    return this.helper;
  }

  /**
   * Every file of QEMU itself that a jail binds: the binary, its libraries and those of the TCG
   * module (ldd, once per binary and accel), the data files, the loader's cache.
   */
  closure(binary: string, accel: QemuAccel): Promise<string[]> {
    const key = `${binary}\0${accel}`;
    let found = this.closures.get(key);
    if (!found) {
      found = this.computeClosure(binary, accel);
      this.closures.set(key, found);
      found.catch(() => this.closures.delete(key));
    }
    return found;
  }

  private async computeClosure(binary: string, accel: QemuAccel): Promise<string[]> {
    const support = qemuSupportFiles(binary, accel);
    const objects = [binary, ...support.filter((f) => f.endsWith('.so'))];
    const libs: string[] = [];
    for (const object of objects) {
      const { code, output } = await run('ldd', [object]).catch((err: unknown) => {
        throw jailError('files', `cannot run ldd on ${object}`, err);
      });
      if (code !== 0 && !output.includes('not a dynamic executable')) {
        throw jailError('files', `ldd ${object} failed: ${output.trim()}`);
      }
      libs.push(...parseLdd(output, object));
    }
    const files = [binary, ...support, ...libs];
    if (existsSync('/etc/ld.so.cache')) files.push('/etc/ld.so.cache');
    return [...new Set(files)];
  }

  /**
   * Makes a VM's jail ready: checks every file, makes the jail root and the cgroups with their
   * limits, and returns the helper's command line. VM_JAIL_FAILED naming the part otherwise
   * (what was made is removed again).
   */
  async prepare(
    vm: JailedVm,
    accel: QemuAccel,
    binary: string,
    args: readonly string[],
    fds: { keep: readonly number[]; status: number },
  ): Promise<PreparedJail> {
    if (process.getuid?.() !== 0) {
      throw jailError(
        'namespaces',
        'the service is not root, and namespaces, mounts and cgroups need root (RUNNER_QEMU_JAIL=false runs QEMU unjailed)',
      );
    }
    const user = this.options.user;
    if (user === null || user.uid === 0 || user.gid === 0) {
      throw jailError(
        'user',
        'QEMU runs as an unprivileged user in its jail: set RUNNER_QEMU_USER (runner-vmm)',
      );
    }
    const command = await this.helperPath();
    const absolute = resolveBinary(binary);
    const closure = await this.closure(absolute, accel);
    const netns = vm.netns ?? null;
    const vmFiles = [
      vm.kernelPath,
      vm.initrdPath,
      ...(vm.basePath === undefined ? [] : [vm.basePath]),
      ...(vm.rootfsPath === null ? [] : [vm.rootfsPath]),
    ];
    const devices = jailDevices(accel, netns);
    const ramFiles = vm.ramFile ? [vm.ramFile.path] : [];
    for (const file of [
      ...closure,
      ...vmFiles,
      ...ramFiles,
      ...devices,
      ...(netns === null ? [] : [netns]),
    ]) {
      await access(file, constants.R_OK).catch((err: unknown) => {
        throw jailError('files', `${file} is missing or unreadable`, err);
      });
    }
    const root = join(this.options.rootBaseDir, vm.vmId);
    await mkdir(root, { recursive: true, mode: 0o700 }).catch((err: unknown) => {
      throw jailError('mounts', `cannot make the jail root ${root}`, err);
    });
    let cgroups: CgroupDir[] = [];
    try {
      cgroups = await this.makeCgroups(vm);
    } catch (err) {
      await this.release({ root, cgroups });
      throw err;
    }
    const argv = jailArgv({
      helper: command,
      root,
      uid: user.uid,
      gid: user.gid,
      netns,
      // A template VM writes its RAM into the file; a clone only reads it (rom=off, no write).
      readOnly: [
        ...closure,
        ...vmFiles,
        ...(vm.ramFile?.role === 'clone' ? [vm.ramFile.path] : []),
      ],
      readWrite: [vm.runDir, ...(vm.ramFile?.role === 'template' ? [vm.ramFile.path] : [])],
      devices,
      cgroupProcs: cgroups.map((c) => join(c.dir, 'cgroup.procs')),
      keepFds: fds.keep,
      statusFd: fds.status,
      binary: absolute,
      args,
    });
    return { command, argv, root, cgroups };
  }

  private async makeCgroups(vm: JailedVm): Promise<CgroupDir[]> {
    const root = this.options.cgroupRoot;
    if (!existsSync(root)) throw jailError('cgroup', `${root} does not exist`);
    const version = cgroupVersion(root);
    const self = selfCgroups(await readFile('/proc/self/cgroup', 'utf8').catch(() => ''));
    const plan = cgroupPlan(version, root, self, vm.vmId, jailLimits(this.options, vm));
    const made: CgroupDir[] = [];
    try {
      if (version === 2) await enableV2Controllers(root);
      for (const cgroup of plan) {
        await mkdir(cgroup.dir, { recursive: true });
        made.push(cgroup);
        for (const [file, value] of Object.entries(cgroup.files)) {
          // memory.swap.max is absent without swap accounting: nothing to limit then.
          if (file === 'memory.swap.max' && !existsSync(join(cgroup.dir, file))) continue;
          await writeFile(join(cgroup.dir, file), value);
        }
      }
    } catch (err) {
      await removeCgroups(made);
      throw err instanceof VmJailFailedError
        ? err
        : jailError(
            'cgroup',
            `cannot set up the VMM's cgroup (v${version} at ${root}): ${err instanceof Error ? err.message : String(err)}`,
            err,
          );
    }
    return made;
  }

  /**
   * Removes a jail once its VMM is gone: kills whatever is left in its cgroups (the jail's
   * parent may have been SIGKILLed a moment ago, and PDEATHSIG is asynchronous), waits for them
   * to empty, removes them and the jail root.
   */
  async release(jail: Pick<PreparedJail, 'root' | 'cgroups'>): Promise<void> {
    await removeCgroups(jail.cgroups);
    await rm(jail.root, { recursive: true, force: true }).catch(() => undefined);
  }
}

async function enableV2Controllers(root: string): Promise<void> {
  const parent = join(root, 'runner-qemu');
  await mkdir(parent, { recursive: true });
  for (const dir of [root, parent]) {
    await writeFile(
      join(dir, 'cgroup.subtree_control'),
      JAIL_CONTROLLERS.map((c) => `+${c}`).join(' '),
    );
  }
}

async function cgroupPids(dir: string): Promise<number[]> {
  const text = await readFile(join(dir, 'cgroup.procs'), 'utf8').catch(() => '');
  return text
    .split('\n')
    .filter((l) => l !== '')
    .map(Number);
}

async function removeCgroups(cgroups: readonly CgroupDir[]): Promise<void> {
  for (const cgroup of cgroups) {
    for (let attempt = 0; attempt < 200; attempt++) {
      const pids = await cgroupPids(cgroup.dir);
      for (const pid of pids) {
        try {
          process.kill(pid, 'SIGKILL');
        } catch {
          // gone already
        }
      }
      try {
        await rmdir(cgroup.dir);
        break;
      } catch (err) {
        const code = (err as NodeJS.ErrnoException).code;
        if (code === 'ENOENT') break;
        await sleep(5);
      }
    }
  }
}

/**
 * Removes what a crashed run left in `rootBaseDir` and the cgroups of those VMs (their QEMUs
 * died with their jail's parent, which the run dir sweep killed).
 */
export async function sweepJails(
  options: QemuJailOptions,
  spare: (vmId: string) => Promise<boolean> = () => Promise.resolve(false),
): Promise<void> {
  const names = await readdir(options.rootBaseDir).catch(() => [] as string[]);
  if (names.length === 0) return;
  const root = options.cgroupRoot;
  const version = existsSync(root) ? cgroupVersion(root) : 1;
  const self = selfCgroups(await readFile('/proc/self/cgroup', 'utf8').catch(() => ''));
  const limits = { memoryBytes: 0, pidsMax: 0, cpuQuotaUs: 0 };
  for (const name of names) {
    if (await spare(name)) continue;
    await removeCgroups(cgroupPlan(version, root, self, name, limits));
    await rm(join(options.rootBaseDir, name), { recursive: true, force: true });
  }
}
