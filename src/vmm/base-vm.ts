import type { ChildProcess } from 'node:child_process';
import type { Socket } from 'node:net';
import {
  ProtocolVersionError,
  RunnerError,
  VmBootFailedError,
  VmDiedError,
  withContext,
} from '../errors.js';
import {
  MessageChannel,
  parseAgentMessage,
  PROTOCOL_VERSION,
  type AgentMessage,
  type HelloMessage,
  type HostMessage,
} from '../protocol/index.js';
import { VmmProcess } from './supervisor.js';
import {
  VmStateMachine,
  type AgentChannel,
  type MicroVm,
  type SnapshotInfo,
  type VmCommand,
  type VmExit,
  type VmLaunchOptions,
  type VmState,
} from './types.js';

/** A frame that has begun must be whole within this time, or the agent is broken. */
const FRAME_TIMEOUT_MS = 10_000;

/** How long past its own deadline a boot or restore may hang before the backstop kills it. */
const BACKSTOP_GRACE_MS = 5000;

/**
 * What every VM has, whatever its VMM: a supervised VMM process (console, exit), a lifecycle
 * whose commands are checked once here (`begin`), the agent channel, destroy, and the error
 * messages of a failed start. A driver adds how it talks to its VMM (QMP, Firecracker's API).
 */
export abstract class BaseVm implements MicroVm {
  abstract readonly driver: string;
  hello: HelloMessage | null = null;
  protected readonly machine: VmStateMachine;
  protected readonly process: VmmProcess;
  protected channel: AgentChannel | null = null;

  /**
   * @param vmmName How messages call the VMM (`QEMU`, `Firecracker`).
   * @param maxFrameBytes Largest frame the host accepts from the agent.
   */
  protected constructor(
    protected readonly options: VmLaunchOptions,
    child: ChildProcess,
    vmmName: string,
    private readonly maxFrameBytes: number | undefined,
  ) {
    this.machine = new VmStateMachine(options.vmId);
    this.process = new VmmProcess(child, vmmName, options.consoleBytes ?? 64 * 1024, () => {
      this.closeControl();
      this.channel?.close(
        new VmDiedError(
          `${vmmName} ${this.process.exitDescription()}${this.process.lastConsoleLine()}`,
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
    return this.process.child.pid;
  }

  agent(): AgentChannel {
    this.begin('talk');
    if (!this.channel || this.channel.closeReason) {
      throw new VmDiedError(`the agent channel of VM ${this.id} is closed`);
    }
    return this.channel;
  }

  abstract snapshot(path: string): Promise<SnapshotInfo>;

  async destroy(): Promise<void> {
    this.begin('destroy');
    if (this.machine.state !== 'destroyed') this.machine.to('destroyed');
    this.channel?.close(new VmDiedError(`VM ${this.id} was destroyed`));
    this.closeControl();
    await this.process.kill();
    await this.removeFiles();
  }

  consoleTail(): string {
    return this.process.consoleText();
  }

  /**
   * A failure of boot or restore, with the last lines the guest printed: a RunnerError keeps
   * its code (but a timeout says the VM failed to start), anything else is VM_BOOT_FAILED.
   */
  bootError(err: unknown): RunnerError {
    const tail = this.lastConsoleLine();
    if (err instanceof RunnerError && err.code !== 'VM_TIMEOUT') {
      // A VM_DIED message is made from the console already.
      return err.message.includes(tail) ? err : withContext(err, tail);
    }
    const message = err instanceof Error ? err.message : String(err);
    return new VmBootFailedError(
      `VM ${this.id} failed to start: ${message}${message.includes(tail) ? '' : tail}`,
      { cause: err },
    );
  }

  /** Throws VM_STATE unless `command` is legal in the VM's state (types.ts, VM_LIFECYCLE). */
  protected begin(command: VmCommand): void {
    this.machine.begin(command);
  }

  /** Closes the driver's control connection (QMP, Firecracker's API); on exit and destroy. */
  protected abstract closeControl(): void;

  /** Removes the VM's files once its VMM is gone (run dir, jail, cgroups). */
  protected abstract removeFiles(): Promise<void>;

  /** The agent's channel over a connected socket. */
  protected channelOver(socket: Socket): AgentChannel {
    return new MessageChannel<AgentMessage, HostMessage>(socket, {
      parse: parseAgentMessage,
      maxFrameBytes: this.maxFrameBytes,
      frameTimeoutMs: FRAME_TIMEOUT_MS,
    });
  }

  /** The agent's first message as a hello of our protocol, or why it is not one. */
  protected helloOf(first: AgentMessage): HelloMessage {
    if (first.type !== 'hello') {
      throw new VmBootFailedError(`the agent's first message was ${first.type}, not hello`);
    }
    if (first.protocol !== PROTOCOL_VERSION) {
      throw new ProtocolVersionError(
        `the agent speaks protocol ${first.protocol}, the host ${PROTOCOL_VERSION}`,
      );
    }
    return first;
  }

  /** Races `promise` against the VMM's exit, so that a dead VMM is seen at once. */
  protected raceExit<T>(promise: Promise<T>, doing: string): Promise<T> {
    return this.process.raceExit(promise, doing);
  }

  /** `; console: <the last lines>`, or '': for error messages. */
  protected lastConsoleLine(): string {
    return this.process.lastConsoleLine();
  }
}

/**
 * Runs the last steps of a boot or restore. A backstop kills the VM past the deadline whatever
 * step hangs, so every wait fails; on failure the VM is destroyed and the error rethrown
 * (`wrap`ped: a boot adds the console, see `BaseVm.bootError`).
 */
export async function bringUp<V extends BaseVm>(
  vm: V,
  timeoutMs: number,
  steps: () => Promise<void>,
  wrap: (err: unknown) => unknown,
): Promise<V> {
  const backstop = setTimeout(() => void vm.destroy(), timeoutMs + BACKSTOP_GRACE_MS);
  try {
    await steps();
    return vm;
  } catch (err) {
    await vm.destroy();
    throw wrap(err);
  } finally {
    clearTimeout(backstop);
  }
}

/**
 * The text of a VM's `pid` file in its run dir: the VMM's pid, then the pid of the service that
 * owns the VM. The start-up sweep kills a leftover VMM only when its owner is gone, so that two
 * processes on one data folder (two test files, `runner bench` beside `runner serve`) never take
 * each other's VMs.
 */
export function vmmPidFile(vmmPid: number | undefined): string {
  return `${vmmPid ?? 0}\n${process.pid}\n`;
}

/** Reads a `pid` file written by {@link vmmPidFile} (an older one holds the VMM's pid alone). */
export function parseVmmPidFile(text: string): { vmmPid: number | null; ownerPid: number | null } {
  const [vmm, owner] = text.split('\n').map((line) => Number(line.trim()));
  const valid = (n: number | undefined): number | null =>
    n !== undefined && Number.isInteger(n) && n > 1 ? n : null;
  return { vmmPid: valid(vmm), ownerPid: valid(owner) };
}
