import { spawn, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import {
  access,
  chown,
  constants,
  copyFile,
  link,
  mkdir,
  realpath,
  rename,
  rm,
  rmdir,
  stat,
  symlink,
  writeFile,
} from 'node:fs/promises';
import { connect, type Socket } from 'node:net';
import { basename, delimiter, isAbsolute, join, resolve } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import {
  ConfigInvalidError,
  type ErrorCode,
  errorOf,
  hasCode,
  ProtocolVersionError,
  RunnerError,
  SnapshotFailedError,
  VmBootFailedError,
  VmDiedError,
  VmStateError,
  VmTimeoutError,
} from '../errors.js';
import { GUEST_VSOCK_PORT } from '../images/guest-init.js';
import {
  MessageChannel,
  parseAgentMessage,
  PROTOCOL_VERSION,
  type AgentMessage,
  type HelloMessage,
  type HostMessage,
} from '../protocol/index.js';
import {
  bootRequests,
  checkUnixPath,
  FirecrackerApiClient,
  restoreRequests,
  snapshotRequests,
  type FirecrackerBootPlan,
  type FirecrackerFault,
  type FirecrackerRequest,
} from './firecracker-api.js';

export * from './firecracker-api.js';
import { BASE_KERNEL_ARGS } from './qemu.js';
import { VmmProcess } from './supervisor.js';
import {
  VmStateMachine,
  type AgentChannel,
  type MicroVm,
  type SnapshotInfo,
  type VmExit,
  type VmLaunchOptions,
  type VmmDriver,
  type VmState,
} from './types.js';

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

/** Settings of the firecracker driver. */
export interface FirecrackerDriverOptions {
  /** The Firecracker binary (default `firecracker` on PATH). */
  readonly binary?: string;
  /** Run under the jailer (needs root); null or absent runs Firecracker directly. */
  readonly jailer?: FirecrackerJailerOptions | null;
  /** Extra kernel command-line arguments. */
  readonly kernelArgs?: readonly string[];
  /** Largest frame the host accepts from the agent. */
  readonly maxFrameBytes?: number;
  /** The guest's vsock CID (default 3; each VM has its own vsock device, so they may share it). */
  readonly guestCid?: number;
  /** How long one configuration call may take (default 10 s). */
  readonly apiTimeoutMs?: number;
  /** How long writing a snapshot may take (default 120 s; it writes all of guest memory). */
  readonly snapshotTimeoutMs?: number;
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
  snapshotState: 'snapshot.state',
  snapshotMemory: 'snapshot.mem',
} as const;

type FirecrackerFile = keyof typeof FIRECRACKER_FILES;

/** A frame that has begun must be whole within this time, or the agent is broken. */
const FRAME_TIMEOUT_MS = 10_000;
/** The longest line Firecracker answers a CONNECT with (`OK 1073741824\n`). */
const MAX_HANDSHAKE_LINE_BYTES = 64;

/** The kernel command line: the common arguments, with the agent on vsock. */
export function firecrackerBootArgs(extra: readonly string[] = []): string {
  return [
    ...BASE_KERNEL_ARGS.map((arg) =>
      arg.startsWith('runner.transport=') ? 'runner.transport=vsock' : arg,
    ),
    ...extra,
  ].join(' ');
}

/** A snapshot is two files: the VM state at `path` and guest memory beside it. */
export function snapshotMemoryPath(statePath: string): string {
  return `${statePath}.mem`;
}

/** Ids Firecracker and its jailer accept (`--id`): letters, digits and hyphens, at most 64. */
export function isFirecrackerVmId(id: string): boolean {
  return /^[A-Za-z0-9-]{1,64}$/.test(id);
}

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
 * Opens one host-initiated hybrid vsock connection: connect to the vsock unix socket, send
 * `CONNECT <port>\n`, read `OK <host port>\n`. Firecracker closes the connection instead when
 * nothing in the guest listens on the port (yet). Bytes after the OK line already belong to
 * the guest's stream: they are pushed back, and the socket is returned paused with them.
 */
export function vsockConnect(path: string, port: number, timeoutMs: number): Promise<Socket> {
  return new Promise<Socket>((resolveSocket, reject) => {
    const socket = connect(path);
    let buffered = Buffer.alloc(0);
    const finish = (err: Error | null): void => {
      clearTimeout(timer);
      socket.off('data', onData);
      socket.off('error', onError);
      socket.off('close', onClose);
      if (err === null) {
        resolveSocket(socket);
      } else {
        socket.destroy();
        reject(err);
      }
    };
    const onData = (chunk: Buffer): void => {
      buffered = Buffer.concat([buffered, chunk]);
      const newline = buffered.indexOf(0x0a);
      if (newline < 0) {
        if (buffered.length > MAX_HANDSHAKE_LINE_BYTES) {
          finish(new Error(`the answer to CONNECT ${port} is not a line`));
        }
        return;
      }
      const line = buffered.subarray(0, newline).toString('latin1');
      if (!/^OK \d+$/.test(line)) {
        finish(new Error(`CONNECT ${port} was answered ${JSON.stringify(line.slice(0, 40))}`));
        return;
      }
      socket.pause();
      const rest = buffered.subarray(newline + 1);
      if (rest.length > 0) socket.unshift(rest);
      finish(null);
    };
    const onError = (err: Error): void => finish(err);
    const onClose = (): void =>
      finish(new Error(`closed before OK (nothing listens on vsock port ${port} yet)`));
    const timer = setTimeout(
      () => finish(new Error(`no answer to CONNECT ${port} within ${timeoutMs} ms`)),
      timeoutMs,
    );
    socket.once('connect', () => socket.write(`CONNECT ${port}\n`));
    socket.on('data', onData);
    socket.once('error', onError);
    socket.once('close', onClose);
  });
}

/**
 * The firecracker driver: Firecracker's REST API over its unix socket, the agent reached over
 * hybrid vsock, optionally under the jailer. Snapshots are Firecracker's own full snapshots
 * (two files: state at `path`, memory at `snapshotMemoryPath(path)`).
 */
export class FirecrackerDriver implements VmmDriver {
  readonly name = 'firecracker' as const;

  constructor(readonly options: FirecrackerDriverOptions) {
    const jailer = options.jailer ?? null;
    if (jailer !== null) {
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
    const cid = options.guestCid ?? 3;
    if (!Number.isInteger(cid) || cid < 3) {
      throw new ConfigInvalidError('the guest vsock CID must be an integer >= 3');
    }
  }

  async boot(options: VmLaunchOptions): Promise<MicroVm> {
    const vm = await FirecrackerVm.launch(options, this.options, null);
    try {
      await vm.configureAndStart();
      await vm.awaitAgent('booting');
      return vm;
    } catch (err) {
      await vm.destroy();
      throw vm.bootError(err);
    }
  }

  async restore(options: VmLaunchOptions, snapshotPath: string): Promise<MicroVm> {
    for (const file of [snapshotPath, snapshotMemoryPath(snapshotPath)]) {
      await access(file, constants.R_OK).catch((err: unknown) => {
        throw new SnapshotFailedError(`cannot read snapshot file ${file}`, {
          cause: err,
        });
      });
    }
    const vm = await FirecrackerVm.launch(options, this.options, snapshotPath);
    try {
      await vm.loadSnapshot(snapshotPath);
      await vm.awaitAgent('restoring');
      return vm;
    } catch (err) {
      await vm.destroy();
      throw err;
    }
  }
}

class FirecrackerVm implements MicroVm {
  readonly driver = 'firecracker';
  hello: HelloMessage | null = null;
  private readonly machine: VmStateMachine;
  private readonly process: VmmProcess;
  private readonly jailed: boolean;
  private api: FirecrackerApiClient | null = null;
  private channel: AgentChannel | null = null;

  private constructor(
    private readonly options: VmLaunchOptions,
    private readonly driverOptions: FirecrackerDriverOptions,
    private readonly layout: FirecrackerLayout,
    private readonly execName: string,
    private readonly child: ChildProcess,
    /** Boot and restore must be done by then. */
    private readonly deadline: number,
  ) {
    this.jailed = layout.jailDir !== null;
    this.machine = new VmStateMachine(options.vmId);
    this.process = new VmmProcess(child, 'Firecracker', options.consoleBytes ?? 64 * 1024, () => {
      this.api?.close();
      this.channel?.close(
        new VmDiedError(
          `Firecracker ${this.process.exitDescription()}${this.process.lastConsoleLine()}`,
        ),
      );
    });
  }

  get exited(): Promise<VmExit> {
    return this.process.exited;
  }

  get id(): string {
    return this.options.vmId;
  }

  get state(): VmState {
    return this.machine.state;
  }

  get pid(): number | undefined {
    return this.child.pid;
  }

  /**
   * Makes the VM's folder (and jail), puts the files Firecracker needs in it, starts
   * Firecracker and waits for its API socket. `snapshotPath` is set for a restore.
   */
  static async launch(
    options: VmLaunchOptions,
    driver: FirecrackerDriverOptions,
    snapshotPath: string | null,
  ): Promise<FirecrackerVm> {
    const deadline = Date.now() + options.timeoutMs;
    const failCode: ErrorCode = snapshotPath === null ? 'VM_BOOT_FAILED' : 'SNAPSHOT_FAILED';
    if (!isFirecrackerVmId(options.vmId)) {
      throw new VmBootFailedError(
        `VM id ${JSON.stringify(options.vmId)} is not one Firecracker takes (letters, digits, hyphens; at most 64)`,
      );
    }
    const jailer = driver.jailer ?? null;
    const binary = driver.binary ?? 'firecracker';
    // The jailer copies the binary into the jail, under its own (resolved) file name.
    const execFile = jailer === null ? binary : await resolveExecutable(binary);
    const execName = basename(execFile);
    const layout = firecrackerLayout(options, jailer, execName);
    checkUnixPath(layout.apiSocket, 'VM_BOOT_FAILED');
    checkUnixPath(layout.vsockSocket, 'VM_BOOT_FAILED');

    await mkdir(options.runDir, { recursive: true, mode: 0o700 });
    if (layout.jailDir !== null) {
      // A stale jail of the same id would hold sockets Firecracker cannot bind again.
      await rm(layout.jailDir, { recursive: true, force: true });
      await mkdir(layout.root, { recursive: true, mode: 0o755 });
    }
    const placements: [FirecrackerFile, string][] =
      snapshotPath === null
        ? [
            ['kernel', options.kernelPath],
            ['initrd', options.initrdPath],
            ['rootfs', options.rootfsPath],
          ]
        : [
            ['rootfs', options.rootfsPath],
            ...(jailer === null
              ? []
              : ([
                  ['snapshotState', snapshotPath],
                  ['snapshotMemory', snapshotMemoryPath(snapshotPath)],
                ] as [FirecrackerFile, string][])),
          ];
    try {
      for (const [file, source] of placements) {
        await placeFile(source, join(layout.root, FIRECRACKER_FILES[file]), jailer);
      }
    } catch (err) {
      await removeVmFiles(options.runDir, layout.jailDir);
      throw errorOf(failCode, `cannot prepare the files of VM ${options.vmId}: ${messageOf(err)}`, {
        cause: err,
      });
    }

    const command = firecrackerCommand(options, driver, execFile);
    await writeFile(
      join(options.runDir, 'cmdline'),
      JSON.stringify({ cwd: command.cwd, argv: [command.file, ...command.args] }),
    );
    const child = spawn(command.file, command.args, {
      cwd: command.cwd,
      stdio: ['ignore', 'pipe', 'pipe'],
      detached: false,
    });
    const spawned = new Promise<void>((resolveSpawn, reject) => {
      child.once('spawn', resolveSpawn);
      child.once('error', (err) =>
        reject(
          errorOf(failCode, `cannot start ${command.file}: ${err.message}`, {
            cause: err,
          }),
        ),
      );
    });
    const vm = new FirecrackerVm(options, driver, layout, execName, child, deadline);
    try {
      await spawned;
    } catch (err) {
      await removeVmFiles(options.runDir, layout.jailDir);
      throw err;
    }
    await writeFile(join(options.runDir, 'pid'), String(child.pid));
    try {
      await FirecrackerApiClient.waitForSocket(layout.apiSocket, {
        deadline,
        alive: () => vm.process.alive,
      });
    } catch (err) {
      await vm.destroy();
      throw snapshotPath === null ? vm.bootError(err) : err;
    }
    vm.api = new FirecrackerApiClient(layout.apiSocket, driver.apiTimeoutMs ?? 10_000);
    return vm;
  }

  /** Cold boot: machine, kernel, rootfs, vsock, then InstanceStart. */
  async configureAndStart(): Promise<void> {
    const plan: FirecrackerBootPlan = {
      vcpus: this.options.vcpus,
      memoryMib: this.options.memoryMib,
      kernelPath: firecrackerPath('kernel', this.jailed),
      initrdPath: firecrackerPath('initrd', this.jailed),
      rootfsPath: firecrackerPath('rootfs', this.jailed),
      bootArgs: firecrackerBootArgs(this.driverOptions.kernelArgs),
      guestCid: this.driverOptions.guestCid ?? 3,
      vsockPath: firecrackerPath('vsockSocket', this.jailed),
    };
    for (const req of bootRequests(plan)) {
      await this.call(req, 'VM_BOOT_FAILED', `configuring ${req.path}`);
    }
  }

  /**
   * Restore: a fresh Firecracker loads the snapshot and resumes it. The snapshot's drive and
   * vsock paths are relative (see FIRECRACKER_FILES), so they open in this VM's own folder.
   */
  async loadSnapshot(snapshotPath: string): Promise<void> {
    const paths = this.jailed
      ? {
          snapshotPath: firecrackerPath('snapshotState', true),
          memFilePath: firecrackerPath('snapshotMemory', true),
        }
      : { snapshotPath, memFilePath: snapshotMemoryPath(snapshotPath) };
    for (const req of restoreRequests(paths)) {
      await this.call(
        req,
        'SNAPSHOT_FAILED',
        'loading the snapshot',
        Math.max(1000, this.deadline - Date.now()),
      );
    }
  }

  /**
   * Connects to the agent over hybrid vsock and waits for its hello, retrying until the
   * deadline while nothing listens yet (Firecracker closes the connection), while the guest's
   * bridge cannot reach the agent yet (the stream closes before hello), and, after a restore,
   * while the agent still serves its session from before the snapshot (AGENT_BUSY): Firecracker
   * resets every vsock connection on snapshot, and the guest sees that only once it runs again.
   */
  async awaitAgent(doing: 'booting' | 'restoring'): Promise<void> {
    const port = GUEST_VSOCK_PORT;
    let lastReason = 'no attempt yet';
    for (;;) {
      if (!this.process.alive) throw this.process.died(doing);
      const remaining = this.deadline - Date.now();
      if (remaining <= 0) {
        throw new VmTimeoutError(
          `the agent of VM ${this.id} did not say hello on vsock port ${port} within ${this.options.timeoutMs} ms (last: ${lastReason})${this.lastConsoleLine()}`,
        );
      }
      let socket: Socket;
      try {
        socket = await this.raceExit(
          vsockConnect(this.layout.vsockSocket, port, Math.min(remaining, 5000)),
          doing,
        );
      } catch (err) {
        if (hasCode(err, 'VM_DIED')) throw err;
        lastReason = messageOf(err);
        await sleep(10);
        continue;
      }
      const channel = new MessageChannel<AgentMessage, HostMessage>(socket, {
        parse: parseAgentMessage,
        maxFrameBytes: this.driverOptions.maxFrameBytes,
        frameTimeoutMs: FRAME_TIMEOUT_MS,
      });
      socket.resume();
      let first: AgentMessage;
      try {
        first = await this.raceExit(channel.next(Math.max(1, this.deadline - Date.now())), doing);
      } catch (err) {
        channel.close();
        // The stream closed before hello: the guest's bridge could not reach the agent yet.
        if (hasCode(err, 'SANDBOX_FAILURE')) {
          lastReason = messageOf(err);
          await sleep(20);
          continue;
        }
        if (hasCode(err, 'VM_TIMEOUT')) {
          throw new VmTimeoutError(
            `the agent of VM ${this.id} accepted the vsock connection but sent nothing within ${this.options.timeoutMs} ms${this.lastConsoleLine()}`,
            { cause: err },
          );
        }
        throw err;
      }
      if (first.type === 'error' && first.code === 'AGENT_BUSY') {
        channel.close();
        lastReason = 'the agent still served its session from before the snapshot';
        await sleep(20);
        continue;
      }
      if (first.type !== 'hello') {
        channel.close();
        throw new VmBootFailedError(`the agent's first message was ${first.type}, not hello`);
      }
      if (first.protocol !== PROTOCOL_VERSION) {
        channel.close();
        throw new ProtocolVersionError(
          `the agent speaks protocol ${first.protocol}, the host ${PROTOCOL_VERSION}`,
        );
      }
      this.channel = channel;
      // Unlike QEMU's, a restored Firecracker VM greets the host again (a new vsock session).
      this.hello = first;
      this.machine.to('running');
      return;
    }
  }

  agent(): AgentChannel {
    this.machine.require('talk to the agent', 'running');
    if (!this.channel || this.channel.closeReason) {
      throw new VmDiedError(`the agent channel of VM ${this.id} is closed`);
    }
    return this.channel;
  }

  /**
   * Pauses the VM and writes a full snapshot: memory to `snapshotMemoryPath(path)` first, then
   * the state to `path`, each by rename, so a state file always has its memory file. The host's
   * agent connection is closed first (Firecracker resets vsock connections on snapshot anyway,
   * and a session that ended before the pause needs no reset after the restore).
   */
  async snapshot(path: string): Promise<SnapshotInfo> {
    this.machine.require('snapshot', 'running');
    const started = Date.now();
    const memPath = snapshotMemoryPath(path);
    const tag = `.partial-${process.pid}-${randomBytes(4).toString('hex')}`;
    const statePartial = `${path}${tag}`;
    const memPartial = `${memPath}${tag}`;
    // Unjailed, Firecracker writes straight beside the target; jailed, it can only write
    // inside its jail, and the files are moved out.
    const written = this.jailed
      ? {
          snapshotPath: firecrackerPath('snapshotState', true),
          memFilePath: firecrackerPath('snapshotMemory', true),
          hostState: join(this.layout.root, FIRECRACKER_FILES.snapshotState),
          hostMem: join(this.layout.root, FIRECRACKER_FILES.snapshotMemory),
        }
      : {
          snapshotPath: statePartial,
          memFilePath: memPartial,
          hostState: statePartial,
          hostMem: memPartial,
        };
    this.channel?.close(new VmStateError(`VM ${this.id} is being snapshotted`));
    const [pause, create] = snapshotRequests(written);
    await this.call(pause, 'SNAPSHOT_FAILED', 'pausing');
    this.machine.to('paused');
    try {
      await this.call(
        create,
        'SNAPSHOT_FAILED',
        'snapshotting',
        this.driverOptions.snapshotTimeoutMs ?? 120_000,
      );
      if (this.jailed) {
        await moveFile(written.hostMem, memPartial);
        await moveFile(written.hostState, statePartial);
      }
      await rename(memPartial, memPath);
      await rename(statePartial, path);
    } catch (err) {
      await Promise.all(
        [statePartial, memPartial, written.hostState, written.hostMem].map((p) =>
          rm(p, { force: true }),
        ),
      );
      throw err instanceof RunnerError
        ? err
        : new SnapshotFailedError(`snapshot failed: ${messageOf(err)}`, {
            cause: err,
          });
    }
    this.machine.to('snapshotted');
    const sizes = await Promise.all([stat(path), stat(memPath)]);
    return {
      path,
      sizeBytes: sizes.reduce((sum, s) => sum + s.size, 0),
      ms: Date.now() - started,
    };
  }

  async destroy(): Promise<void> {
    if (this.machine.state !== 'destroyed') this.machine.to('destroyed');
    this.channel?.close(new VmDiedError(`VM ${this.id} was destroyed`));
    this.api?.close();
    await this.process.kill();
    await removeVmFiles(this.options.runDir, this.layout.jailDir);
    const jailer = this.driverOptions.jailer ?? null;
    if (jailer !== null) {
      for (const dir of jailerCgroupDirs(jailer, this.execName, this.id)) {
        await rmdir(dir).catch(() => undefined);
      }
    }
  }

  consoleTail(): string {
    return this.process.consoleText();
  }

  bootError(err: unknown): RunnerError {
    if (err instanceof RunnerError && err.code !== 'VM_TIMEOUT') return err;
    return new VmBootFailedError(
      `VM ${this.id} failed to start: ${messageOf(err)}${this.lastConsoleLine()}`,
      { cause: err },
    );
  }

  /**
   * One API call, raced against Firecracker's exit. A call whose connection broke is reported
   * as VM_DIED when Firecracker turns out to have exited (it closes the socket as it dies).
   */
  private async call(
    req: FirecrackerRequest,
    code: ErrorCode,
    doing: string,
    timeoutMs?: number,
  ): Promise<void> {
    const api = this.api;
    if (api === null) throw new VmStateError(`VM ${this.id} has no API connection`);
    if (!this.process.alive) throw this.process.died(doing);
    try {
      await this.raceExit(api.send(req, code, timeoutMs), doing);
    } catch (err) {
      const fault =
        err instanceof RunnerError ? (err.details as FirecrackerFault | undefined) : undefined;
      if (fault !== undefined && fault.status === null) {
        await Promise.race([this.exited, sleep(250)]);
        if (!this.process.alive) throw this.process.died(doing);
      }
      throw err;
    }
  }

  /** Races `promise` against the VMM's exit, so that a dead Firecracker is seen at once. */
  private raceExit<T>(promise: Promise<T>, doing: string): Promise<T> {
    return this.process.raceExit(promise, doing);
  }

  private lastConsoleLine(): string {
    return this.process.lastConsoleLine();
  }
}

/**
 * Puts `source` into a VM's folder as `target`. Unjailed, a symlink. Jailed, Firecracker sees
 * only its jail, so a hard link (the jail and the image store should share a file system), or
 * else a copy owned by the jail's user. A hard link keeps the source's owner and mode: images
 * must be readable by the jail's uid.
 */
async function placeFile(
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
async function moveFile(from: string, to: string): Promise<void> {
  try {
    await rename(from, to);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'EXDEV') throw err;
    await copyFile(from, to, constants.COPYFILE_FICLONE);
    await rm(from, { force: true });
  }
}

async function removeVmFiles(runDir: string, jailDir: string | null): Promise<void> {
  await rm(runDir, { recursive: true, force: true });
  if (jailDir !== null) await rm(jailDir, { recursive: true, force: true });
}

/**
 * The absolute, symlink-free path of an executable (a bare name is looked up on PATH): the
 * jailer wants a path, and names the jail after the file it resolves to. Its name must contain
 * `firecracker` (the jailer refuses others).
 */
async function resolveExecutable(binary: string): Promise<string> {
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

function messageOf(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}
