import { spawn, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { access, constants, mkdir, rename, rm, rmdir, stat, writeFile } from 'node:fs/promises';
import type { Socket } from 'node:net';
import { basename, join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import {
  ConfigInvalidError,
  type ErrorCode,
  errorOf,
  hasCode,
  RunnerError,
  SnapshotFailedError,
  VmBootFailedError,
  VmStateError,
  VmTimeoutError,
} from '../errors.js';
import { GUEST_VSOCK_PORT, LAYERED_ROOT_ARG } from '../images/guest-init.js';
import type { AgentMessage, HelloMessage } from '../protocol/index.js';
import { BaseVm, bringUp, vmmPidFile } from './base-vm.js';
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
import {
  checkJailerOptions,
  FIRECRACKER_FILES,
  firecrackerCommand,
  firecrackerLayout,
  firecrackerPath,
  jailerCgroupDirs,
  moveFile,
  placeFile,
  removeVmFiles,
  resolveExecutable,
  type FirecrackerFile,
  type FirecrackerJailerOptions,
  type FirecrackerLayout,
} from './firecracker-jailer.js';
import { BASE_KERNEL_ARGS } from './qemu.js';
import type { MicroVm, SnapshotInfo, VmLaunchOptions, VmmDriver } from './types.js';
import { vsockConnect } from './vsock.js';

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

/**
 * The firecracker driver: Firecracker's REST API over its unix socket, the agent reached over
 * hybrid vsock, optionally under the jailer. Snapshots are Firecracker's own full snapshots
 * (two files: state at `path`, memory at `snapshotMemoryPath(path)`).
 */
export class FirecrackerDriver implements VmmDriver {
  readonly name = 'firecracker' as const;

  constructor(readonly options: FirecrackerDriverOptions) {
    if (options.jailer) checkJailerOptions(options.jailer);
    const cid = options.guestCid ?? 3;
    if (!Number.isInteger(cid) || cid < 3) {
      throw new ConfigInvalidError('the guest vsock CID must be an integer >= 3');
    }
  }

  async boot(options: VmLaunchOptions): Promise<MicroVm> {
    const vm = await FirecrackerVm.launch(options, this.options, null);
    return bringUp(
      vm,
      options.timeoutMs,
      async () => {
        await vm.configureAndStart();
        await vm.awaitAgent('booting');
      },
      (err) => vm.bootError(err),
    );
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
    return bringUp(
      vm,
      options.timeoutMs,
      async () => {
        await vm.loadSnapshot(snapshotPath);
        await vm.awaitAgent('restoring');
      },
      (err) => err,
    );
  }
}

class FirecrackerVm extends BaseVm {
  readonly driver = 'firecracker';
  private readonly jailed: boolean;
  private api: FirecrackerApiClient | null = null;

  private constructor(
    options: VmLaunchOptions,
    private readonly driverOptions: FirecrackerDriverOptions,
    private readonly layout: FirecrackerLayout,
    private readonly execName: string,
    child: ChildProcess,
    /** Boot and restore must be done by then. */
    private readonly deadline: number,
  ) {
    super(options, child, 'Firecracker', driverOptions.maxFrameBytes);
    this.jailed = layout.jailDir !== null;
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
            ...(options.basePath === undefined
              ? []
              : ([['base', options.basePath]] as [FirecrackerFile, string][])),
          ]
        : [
            ['rootfs', options.rootfsPath],
            ...(options.basePath === undefined
              ? []
              : ([['base', options.basePath]] as [FirecrackerFile, string][])),
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
    await writeFile(join(options.runDir, 'pid'), vmmPidFile(child.pid));
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
    this.begin('configure');
    const plan: FirecrackerBootPlan = {
      vcpus: this.options.vcpus,
      memoryMib: this.options.memoryMib,
      kernelPath: firecrackerPath('kernel', this.jailed),
      initrdPath: firecrackerPath('initrd', this.jailed),
      rootfsPath: firecrackerPath('rootfs', this.jailed),
      ...(this.options.basePath !== undefined && {
        basePath: firecrackerPath('base', this.jailed),
      }),
      bootArgs: firecrackerBootArgs([
        ...(this.driverOptions.kernelArgs ?? []),
        ...(this.options.basePath !== undefined ? [LAYERED_ROOT_ARG] : []),
      ]),
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
    this.begin('loadSnapshot');
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
    this.begin('awaitAgent');
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
      const channel = this.channelOver(socket);
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
      let hello: HelloMessage;
      try {
        hello = this.helloOf(first);
      } catch (err) {
        channel.close();
        throw err;
      }
      this.channel = channel;
      // Unlike QEMU's, a restored Firecracker VM greets the host again (a new vsock session).
      this.hello = hello;
      this.machine.to('running');
      return;
    }
  }

  /**
   * Pauses the VM and writes a full snapshot: memory to `snapshotMemoryPath(path)` first, then
   * the state to `path`, each by rename, so a state file always has its memory file. The host's
   * agent connection is closed first (Firecracker resets vsock connections on snapshot anyway,
   * and a session that ended before the pause needs no reset after the restore).
   */
  async snapshot(path: string): Promise<SnapshotInfo> {
    this.begin('snapshot');
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

  protected closeControl(): void {
    this.api?.close();
  }

  protected async removeFiles(): Promise<void> {
    await removeVmFiles(this.options.runDir, this.layout.jailDir);
    const jailer = this.driverOptions.jailer ?? null;
    if (jailer !== null) {
      for (const dir of jailerCgroupDirs(jailer, this.execName, this.id)) {
        await rmdir(dir).catch(() => undefined);
      }
    }
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
}

function messageOf(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}
