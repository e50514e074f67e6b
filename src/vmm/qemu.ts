import { spawn, type ChildProcess } from 'node:child_process';
import { closeSync, openSync, readFileSync } from 'node:fs';
import { chmod, chown, mkdir, readFile, rename, rm, stat, writeFile } from 'node:fs/promises';
import { connect, createServer, type Socket } from 'node:net';
import { dirname, join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { createWriteStream } from 'node:fs';
import type { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import {
  RunnerError,
  SnapshotFailedError,
  VmBootFailedError,
  VmJailFailedError,
  VmStateError,
  VmTimeoutError,
} from '../errors.js';
import { BaseVm, bringUp, vmmPidFile } from './base-vm.js';
import { GUEST_NET, LAYERED_ROOT_ARG } from '../images/guest-init.js';
import { VM_TAP } from '../net/vmnet.js';
import type { PreparedJail, QemuJail } from './jail.js';
import { QmpClient } from './qmp.js';
import type {
  AgentChannel,
  MicroVm,
  RamFile,
  SnapshotInfo,
  VmLaunchOptions,
  VmmDriver,
} from './types.js';

/** How QEMU accelerates: real KVM where a guest really boots with it, TCG (emulation) otherwise. */
export type QemuAccel = 'kvm' | 'tcg';

/** Settings of the qemu driver. */
export interface QemuDriverOptions {
  /** The QEMU binary (default `qemu-system-x86_64` on PATH). */
  readonly binary?: string;
  readonly accel: QemuAccel;
  /**
   * Run QEMU as this uid/gid (only when the host process is root). Under TCG QEMU is no
   * security boundary of its own, so it must not run as root.
   */
  readonly user?: { uid: number; gid: number } | null;
  /** Turn QEMU's seccomp `-sandbox` on (default true). */
  readonly sandbox?: boolean;
  /** Extra kernel command-line arguments. */
  readonly kernelArgs?: readonly string[];
  /** Largest frame the host accepts from the agent. */
  readonly maxFrameBytes?: number;
  /**
   * Run each QEMU in a jail of its own (jail.ts, native/runner-jail.c: namespaces, a pivoted
   * root of only its files, no capabilities, a cgroup with limits). Null or absent: unjailed.
   */
  readonly jail?: QemuJail | null;
  /**
   * QEMU's firmware folder (`-L`), for a QEMU unpacked outside /usr (scripts/qemu-backports.sh):
   * in its jail it finds no files by its built-in /usr/share/qemu. Absent: QEMU's own default.
   */
  readonly firmwareDir?: string;
}

/** The kernel command line every VM gets (loglevel=1: with `quiet` the console says nothing). */
export const BASE_KERNEL_ARGS = [
  'console=ttyS0',
  'loglevel=1',
  'panic=-1',
  'reboot=t',
  'cryptomgr.notests',
  'random.trust_cpu=on',
  'runner.transport=serial',
];

/**
 * Kernel arguments for TCG. Under load, the guest kernel sometimes fails to calibrate its TSC
 * against the emulated PIT ("tsc: Unable to calibrate against PIT"), marks the TSC unstable and
 * then hangs calibrating the APIC timer: the boot never ends. Under TCG the guest's TSC is the
 * host's (QEMU reads the host counter), so give the kernel the host's TSC frequency and tell it
 * the TSC is reliable. Seen on Debian's 6.1 cloud kernel with QEMU 7.2 (docs/qemu.md).
 */
export function tcgKernelArgs(cpuinfo: string = readCpuinfo()): string[] {
  const mhz = /^cpu MHz\s*:\s*([0-9.]+)/m.exec(cpuinfo)?.[1];
  const khz = mhz === undefined ? null : Math.round(Number(mhz) * 1000);
  return khz !== null && Number.isFinite(khz) && khz > 0
    ? [`tsc_early_khz=${khz}`, 'tsc=reliable']
    : ['tsc=reliable'];
}

function readCpuinfo(): string {
  try {
    return readFileSync('/proc/cpuinfo', 'utf8');
  } catch {
    return '';
  }
}

/** The longest a snapshot may take (a migration of the guest's memory to a local file). */
const SNAPSHOT_TIMEOUT_MS = 120_000;

/**
 * What `qemuArgs` needs of a VM. The rootfs may be null for the KVM probe alone (kvm.ts): it
 * boots the production machine only as far as the kernel running /init, and a real rootfs
 * would tie the probe to a language image it does not need.
 */
export type QemuMachine = Pick<
  VmLaunchOptions,
  | 'vmId'
  | 'runDir'
  | 'kernelPath'
  | 'initrdPath'
  | 'memoryMib'
  | 'vcpus'
  | 'netns'
  | 'basePath'
  | 'ramFile'
> & { readonly rootfsPath: string | null };

/**
 * The id of a RAM template's memory backend: the microvm machine's own `default-ram-id`, so
 * that the RAM block keeps the name it has under a plain `-m`, and a full snapshot of a clone
 * (a paused sandbox) restores in a VM without the template.
 */
const RAM_BACKEND_ID = 'microvm.ram';

/** QEMU's arguments for guest RAM in a template file (docs/qemu.md "The RAM template"). */
export function ramFileArgs(ramFile: RamFile, memoryMib: number): string[] {
  const common = `memory-backend-file,id=${RAM_BACKEND_ID},size=${memoryMib}M,mem-path=${ramFile.path}`;
  // A clone opens the file read-only and maps it private and writable (QEMU 8.2's rom=off):
  // its writes never reach the file, and it cannot open the file for writing at all.
  return [
    '-object',
    ramFile.role === 'template' ? `${common},share=on` : `${common},share=off,readonly=on,rom=off`,
  ];
}

/**
 * QEMU's command line for a microvm. Identical for boot and restore (a restore must see the
 * same machine), except `-incoming`. The agent's port is a virtio-serial port named `runner`
 * on a unix-socket chardev that QEMU serves; the console is QEMU's stdout.
 */
export function qemuArgs(
  options: QemuMachine,
  driver: QemuDriverOptions,
  incoming: boolean,
): string[] {
  const dir = options.runDir;
  const args = [
    '-name',
    `runner-${options.vmId}`,
    '-M',
    options.ramFile ? `microvm,rtc=on,memory-backend=${RAM_BACKEND_ID}` : 'microvm,rtc=on',
    '-accel',
    driver.accel === 'kvm' ? 'kvm' : 'tcg,thread=multi',
    '-cpu',
    driver.accel === 'kvm' ? 'host' : 'max',
    '-smp',
    String(options.vcpus),
    '-m',
    String(options.memoryMib),
    '-nodefaults',
    '-no-user-config',
    '-no-reboot',
    '-display',
    'none',
    '-serial',
    'stdio',
    ...(driver.firmwareDir === undefined ? [] : ['-L', driver.firmwareDir]),
    '-kernel',
    options.kernelPath,
    '-initrd',
    options.initrdPath,
    '-append',
    [
      ...BASE_KERNEL_ARGS,
      ...(driver.accel === 'tcg' ? tcgKernelArgs() : []),
      ...(driver.kernelArgs ?? []),
      ...(options.basePath !== undefined ? [LAYERED_ROOT_ARG] : []),
    ].join(' '),
    ...(options.basePath === undefined
      ? []
      : [
          '-drive',
          `id=base,file=${options.basePath},format=raw,if=none,readonly=on`,
          '-device',
          'virtio-blk-device,drive=base',
        ]),
    ...(options.rootfsPath === null
      ? []
      : [
          '-drive',
          `id=root,file=${options.rootfsPath},format=raw,if=none,readonly=on`,
          '-device',
          'virtio-blk-device,drive=root',
        ]),
    '-device',
    'virtio-serial-device,max_ports=2',
    '-chardev',
    `socket,id=agent,path=${join(dir, 'agent.sock')},server=on,wait=off`,
    '-device',
    'virtserialport,chardev=agent,name=runner',
    '-object',
    'rng-random,id=rng0,filename=/dev/urandom',
    '-device',
    'virtio-rng-device,rng=rng0',
    '-qmp',
    `unix:${join(dir, 'qmp.sock')},server=on,wait=off`,
  ];
  if (options.netns) {
    // The tap exists already in the VM's namespace, owned by the VMM user (QEMU cannot make one).
    args.push(
      '-netdev',
      `tap,id=net0,ifname=${VM_TAP},script=no,downscript=no`,
      '-device',
      `virtio-net-device,netdev=net0,mac=${GUEST_NET.mac}`,
    );
  }
  if (driver.sandbox ?? true) {
    args.push(
      '-sandbox',
      'on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny',
    );
  }
  if (options.ramFile) args.push(...ramFileArgs(options.ramFile, options.memoryMib));
  // A clone's migration starts over QMP, after x-ignore-shared is on (QEMU 7.2 and later take no
  // capability on the command line).
  if (incoming) args.push('-incoming', options.ramFile?.role === 'clone' ? 'defer' : 'fd:3');
  return args;
}

/**
 * The qemu driver: QEMU's `microvm` machine, controlled over QMP, the agent reached over
 * virtio-serial. Snapshots are migrations: saved by `migrate` to a unix socket the host serves
 * and writes to a file (`exec:` would need fork, which the seccomp sandbox forbids, and QEMU
 * 7.2 takes no plain file URI), restored by `-incoming fd:3` with the file handed over at spawn.
 */
export class QemuDriver implements VmmDriver {
  readonly name = 'qemu' as const;

  constructor(readonly options: QemuDriverOptions) {}

  async boot(options: VmLaunchOptions): Promise<MicroVm> {
    const vm = await QemuVm.launch(options, this.options, null);
    return bringUp(
      vm,
      options.timeoutMs,
      () => vm.awaitHello(options.timeoutMs),
      (err) => vm.bootError(err),
    );
  }

  async restore(options: VmLaunchOptions, snapshotPath: string): Promise<MicroVm> {
    const fd = openSync(snapshotPath, 'r');
    let vm: QemuVm;
    try {
      vm = await QemuVm.launch(options, this.options, fd);
    } finally {
      closeSync(fd);
    }
    return bringUp(
      vm,
      options.timeoutMs,
      () => vm.awaitIncoming(options.timeoutMs),
      (err) => err,
    );
  }
}

/**
 * Whether a migration leaves out RAM that is a shared file (a template's). The stream records
 * the capability, and a restore must have it set the same: on to restore a template's state,
 * off again before a clone's own snapshot (which holds its private RAM) is saved.
 */
function ignoreSharedRam(qmp: QmpClient, state = true): Promise<unknown> {
  return qmp.execute('migrate-set-capabilities', {
    capabilities: [{ capability: 'x-ignore-shared', state }],
  });
}

/** Everything the helper wrote on its status fd (empty: QEMU was exec'd). */
function readAll(stream: Readable): Promise<string> {
  return new Promise((resolve) => {
    const chunks: Buffer[] = [];
    stream.on('data', (c: Buffer) => chunks.push(c));
    stream.once('error', () => resolve(Buffer.concat(chunks).toString('utf8')));
    stream.once('close', () => resolve(Buffer.concat(chunks).toString('utf8')));
  });
}

/** VM_JAIL_FAILED from the helper's `PART: what: why` line. */
function jailFailure(text: string): VmJailFailedError {
  const line = text.split('\n')[0] ?? text;
  const colon = line.indexOf(': ');
  const part = colon > 0 ? line.slice(0, colon) : 'unknown';
  const rest = colon > 0 ? line.slice(colon + 2) : line;
  return new VmJailFailedError(`QEMU's jail could not be set up (${part}): ${rest}`);
}

/** QEMU's pid (the jail parent's one child), as the host sees it. */
async function jailedPid(parent: number | undefined): Promise<number | undefined> {
  if (parent === undefined) return undefined;
  const text = await readFile(`/proc/${parent}/task/${parent}/children`, 'utf8').catch(() => '');
  const pid = Number(text.trim().split(' ')[0]);
  return Number.isInteger(pid) && pid > 0 ? pid : undefined;
}

class QemuVm extends BaseVm {
  readonly driver = 'qemu';
  private qmp: QmpClient | null = null;
  /** Jailed: QEMU's own pid (the child of the jail's parent, which `process` watches). */
  qemuPid: number | undefined = undefined;

  private constructor(
    options: VmLaunchOptions,
    private readonly driverOptions: QemuDriverOptions,
    child: ChildProcess,
    private readonly jail: PreparedJail | null,
  ) {
    super(options, child, 'QEMU', driverOptions.maxFrameBytes);
  }

  /** QEMU's pid: in a jail, not the jail's parent but its child (for RSS and /proc checks). */
  override get pid(): number | undefined {
    return this.qemuPid ?? super.pid;
  }

  static async launch(
    options: VmLaunchOptions,
    driver: QemuDriverOptions,
    incomingFd: number | null,
  ): Promise<QemuVm> {
    // The VM's own dir is private to the VMM user; its parent only needs to be traversable.
    await mkdir(dirname(options.runDir), { recursive: true, mode: 0o711 });
    await chmod(dirname(options.runDir), 0o711);
    await mkdir(options.runDir, { recursive: true, mode: 0o700 });
    const user = process.getuid?.() === 0 ? (driver.user ?? null) : null;
    if (user) await chown(options.runDir, user.uid, user.gid);
    const args = qemuArgs(options, driver, incomingFd !== null);
    const binary = driver.binary ?? 'qemu-system-x86_64';
    await writeFile(join(options.runDir, 'cmdline'), JSON.stringify([binary, ...args]));
    // Jailed, the helper gets a status fd after the snapshot's (it closes on QEMU's exec).
    const statusFd = incomingFd === null ? 3 : 4;
    let jail: PreparedJail | null = null;
    if (driver.jail) {
      try {
        jail = await driver.jail.prepare(options, driver.accel, binary, args, {
          keep: incomingFd === null ? [] : [3],
          status: statusFd,
        });
      } catch (err) {
        await rm(options.runDir, { recursive: true, force: true });
        throw err;
      }
    }
    // Without the jail, a networked VM's QEMU is started in its namespace by nsenter (as root),
    // which drops to the VMM user and execs QEMU, keeping the pid.
    const nsenter =
      jail === null && options.netns
        ? [
            '--net=' + options.netns,
            ...(user ? ['-S', `${user.uid}`, '-G', `${user.gid}`] : []),
            '--',
            binary,
          ]
        : null;
    const command = jail?.command ?? (nsenter ? 'nsenter' : binary);
    const argv = jail?.argv ?? [...(nsenter ?? []), ...args];
    const child = spawn(command, argv, {
      stdio: [
        'ignore',
        'pipe',
        'pipe',
        ...(incomingFd === null ? [] : [incomingFd]),
        ...(jail ? ['pipe' as const] : []),
      ],
      // The jail drops to the user itself, after the namespaces and mounts that need root.
      ...(user && !jail && !nsenter ? { uid: user.uid, gid: user.gid } : {}),
      detached: false,
    });
    const spawned = new Promise<void>((resolve, reject) => {
      child.once('spawn', resolve);
      child.once('error', (err) =>
        reject(
          new VmBootFailedError(`cannot start ${jail?.command ?? binary}: ${err.message}`, {
            cause: err,
          }),
        ),
      );
    });
    const status = jail ? readAll(child.stdio[statusFd] as Readable) : null;
    const vm = new QemuVm(options, driver, child, jail);
    try {
      await spawned;
    } catch (err) {
      await vm.destroy();
      throw err;
    }
    // The pid file names the jail's parent: killing it (the sweep) takes QEMU with it.
    await writeFile(join(options.runDir, 'pid'), vmmPidFile(child.pid));
    if (status) {
      const text = (await status).trim();
      if (text !== '') {
        await vm.destroy();
        throw jailFailure(text);
      }
      vm.qemuPid = await jailedPid(child.pid);
    }
    try {
      vm.qmp = await QmpClient.connect(join(options.runDir, 'qmp.sock'), {
        timeoutMs: options.timeoutMs,
        alive: () => vm.process.alive,
      });
    } catch (err) {
      await vm.destroy();
      throw vm.bootError(err);
    }
    return vm;
  }

  /** Cold boot: connect to the agent's port and wait for its hello. */
  async awaitHello(timeoutMs: number): Promise<void> {
    this.begin('awaitAgent');
    const channel = await this.openChannel(timeoutMs);
    const first = await this.raceExit(channel.next(timeoutMs), 'waiting for the agent');
    this.hello = this.helloOf(first);
    this.machine.to('running');
  }

  /**
   * Restore: the host connects to the agent's port before the guest runs again, so that the
   * port's "host connected" state is what it was when the snapshot was taken and the agent's
   * open session simply goes on. Then it waits for the incoming migration to finish and resumes.
   */
  async awaitIncoming(timeoutMs: number): Promise<void> {
    this.begin('loadSnapshot');
    await this.openChannel(timeoutMs);
    const qmp = this.requireQmp();
    if (this.options.ramFile?.role === 'clone') {
      // The stream holds the devices only; the RAM is the template file, mapped at launch.
      await this.raceExit(ignoreSharedRam(qmp), 'restoring');
      await this.raceExit(qmp.execute('migrate-incoming', { uri: 'fd:3' }), 'restoring');
    }
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const status = await this.raceExit(
        qmp.execute<{ status: string }>('query-status'),
        'restoring',
      );
      if (status.status === 'paused' || status.status === 'postmigrate') break;
      if (status.status !== 'inmigrate') {
        throw new SnapshotFailedError(`restored VM is ${status.status}, expected paused`);
      }
      if (Date.now() > deadline)
        throw new VmTimeoutError(`restore did not finish within ${timeoutMs} ms`);
      await sleep(2);
    }
    await qmp.execute('cont');
    this.machine.to('running');
  }

  async snapshot(path: string): Promise<SnapshotInfo> {
    this.begin('snapshot');
    const qmp = this.requireQmp();
    const started = Date.now();
    await qmp.execute('stop');
    this.machine.to('paused');
    const partial = `${path}.partial-${process.pid}`;
    const socketPath = join(this.options.runDir, 'migrate.sock');
    const server = createServer();
    const received = new Promise<void>((resolve, reject) => {
      server.once('connection', (socket: Socket) => {
        server.close();
        pipeline(socket, createWriteStream(partial)).then(resolve, reject);
      });
      server.once('error', reject);
    });
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(socketPath, () => resolve());
    });
    try {
      const user = process.getuid?.() === 0 ? (this.driverOptions.user ?? null) : null;
      if (user) await chown(socketPath, user.uid, user.gid);
      // A template's RAM is its file: the snapshot is the device state alone. A clone's is
      // private to it, and its snapshot (a paused sandbox) holds all of it.
      if (this.options.ramFile)
        await ignoreSharedRam(qmp, this.options.ramFile.role === 'template');
      await qmp.execute('migrate', { uri: `unix:${socketPath}` });
      const deadline = Date.now() + SNAPSHOT_TIMEOUT_MS;
      for (;;) {
        if (Date.now() > deadline)
          throw new SnapshotFailedError(
            `the snapshot did not finish within ${SNAPSHOT_TIMEOUT_MS} ms`,
          );
        const info = await this.raceExit(
          qmp.execute<{ status?: string; 'error-desc'?: string }>('query-migrate'),
          'snapshotting',
        );
        if (info.status === 'completed') break;
        if (info.status === 'failed' || info.status === 'cancelled') {
          throw new SnapshotFailedError(
            `migration ${info.status}: ${info['error-desc'] ?? 'no reason given'}`,
          );
        }
        await sleep(10);
      }
      await this.raceExit(received, 'writing the snapshot');
      await rename(partial, path);
    } catch (err) {
      await rm(partial, { force: true });
      throw err instanceof RunnerError
        ? err
        : new SnapshotFailedError(`snapshot failed: ${String(err)}`, { cause: err });
    } finally {
      server.close();
      await rm(socketPath, { force: true });
    }
    this.machine.to('snapshotted');
    return { path, sizeBytes: (await stat(path)).size, ms: Date.now() - started };
  }

  protected closeControl(): void {
    this.qmp?.close();
  }

  protected async removeFiles(): Promise<void> {
    if (this.jail) await this.driverOptions.jail?.release(this.jail);
    await rm(this.options.runDir, { recursive: true, force: true });
  }

  private async openChannel(timeoutMs: number): Promise<AgentChannel> {
    const path = join(this.options.runDir, 'agent.sock');
    const deadline = Date.now() + timeoutMs;
    let socket: Socket | null = null;
    while (socket === null) {
      if (!this.process.alive) throw this.process.died('connecting to the agent');
      try {
        socket = await new Promise<Socket>((resolve, reject) => {
          const s = connect(path);
          s.once('connect', () => {
            s.off('error', reject);
            resolve(s);
          });
          s.once('error', reject);
        });
      } catch {
        if (Date.now() > deadline) throw new VmTimeoutError(`agent socket ${path} did not open`);
        await sleep(5);
      }
    }
    const channel = this.channelOver(socket);
    this.channel = channel;
    return channel;
  }

  private requireQmp(): QmpClient {
    if (!this.qmp) throw new VmStateError(`VM ${this.id} has no QMP connection`);
    return this.qmp;
  }
}
