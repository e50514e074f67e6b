import { VmStateError } from '../errors.js';
import type { AgentMessage, HelloMessage, HostMessage, MessageChannel } from '../protocol/index.js';

/** The channel to a guest agent, as the host sees it. */
export type AgentChannel = MessageChannel<AgentMessage, HostMessage>;

/**
 * A VM's lifecycle. Every transition is checked: `starting` → `running` (the agent answered) →
 * `paused` (for a snapshot) → `snapshotted`; any state → `destroyed`, which is final.
 */
export type VmState = 'starting' | 'running' | 'paused' | 'snapshotted' | 'destroyed';

/** Every VM state, in lifecycle order. */
export const VM_STATES: readonly VmState[] = [
  'starting',
  'running',
  'paused',
  'snapshotted',
  'destroyed',
];

/**
 * What the host asks of a VM, whatever the VMM (Firecracker's `VmmAction`, for our drivers):
 * - `configure`: set the machine up and start it (Firecracker's pre-boot API calls; QEMU takes
 *   it all on its command line);
 * - `loadSnapshot`: bring a saved VM back (Firecracker's load, QEMU's incoming migration);
 * - `awaitAgent`: wait for the guest agent and open the channel to it;
 * - `talk`: hand out the agent channel, for a job or a reseed;
 * - `snapshot`: pause the VM and save it whole;
 * - `destroy`: kill the VMM and remove its files (idempotent).
 */
export type VmCommand =
  'configure' | 'loadSnapshot' | 'awaitAgent' | 'talk' | 'snapshot' | 'destroy';

/** Every VM command. */
export const VM_COMMANDS: readonly VmCommand[] = [
  'configure',
  'loadSnapshot',
  'awaitAgent',
  'talk',
  'snapshot',
  'destroy',
];

/**
 * What is legal, in one place: the states each command may begin in, and the states each state
 * may move to. A command checks its row once, when it begins (`VmStateMachine.begin`); the
 * moves it makes on the way are checked again by `to`.
 */
export const VM_LIFECYCLE: {
  readonly commands: Readonly<Record<VmCommand, readonly VmState[]>>;
  readonly transitions: Readonly<Record<VmState, readonly VmState[]>>;
} = {
  commands: {
    configure: ['starting'],
    loadSnapshot: ['starting'],
    awaitAgent: ['starting'],
    talk: ['running'],
    snapshot: ['running'],
    // Destroy is how every failure ends, so it is legal whatever went wrong, and again.
    destroy: VM_STATES,
  },
  transitions: {
    starting: ['running', 'destroyed'],
    running: ['paused', 'destroyed'],
    paused: ['running', 'snapshotted', 'destroyed'],
    snapshotted: ['destroyed'],
    destroyed: [],
  },
};

/** Holds a VM's state and refuses illegal commands and transitions with VM_STATE. */
export class VmStateMachine {
  private current: VmState = 'starting';

  constructor(private readonly vmId: string) {}

  get state(): VmState {
    return this.current;
  }

  /** Moves to `next`; throws VM_STATE when the move is not legal from the current state. */
  to(next: VmState): void {
    if (!VM_LIFECYCLE.transitions[this.current].includes(next)) {
      throw new VmStateError(`VM ${this.vmId}: cannot go from ${this.current} to ${next}`);
    }
    this.current = next;
  }

  /** Throws VM_STATE, naming the command and the state, unless `command` is legal now. */
  begin(command: VmCommand): void {
    const legal = VM_LIFECYCLE.commands[command];
    if (!legal.includes(this.current)) {
      throw new VmStateError(
        `VM ${this.vmId}: cannot ${command} while ${this.current} (only while ${legal.join(' or ')})`,
      );
    }
  }
}

/** What a VM is made of. */
export interface VmResources {
  /** The kernel: a bzImage for QEMU, the ELF vmlinux for Firecracker. */
  readonly kernelPath: string;
  readonly initrdPath: string;
  /** The language's drive: its layer over `basePath`, or (without one) a whole rootfs. */
  readonly rootfsPath: string;
  /**
   * The base image (Debian, the agent) under a layered language's drive: the VM gets both
   * drives and the kernel argument LAYERED_ROOT_ARG (docs/images.md).
   */
  readonly basePath?: string;
  readonly memoryMib: number;
  readonly vcpus: number;
}

/** Everything a boot or restore needs. */
export interface VmLaunchOptions extends VmResources {
  readonly vmId: string;
  /** A folder of this VM's own (sockets, console log, pid file); removed on destroy. */
  readonly runDir: string;
  /** How long the guest has to say hello (cold boot) or to come back (restore). */
  readonly timeoutMs: number;
  /** Bytes of console output kept (the most recent ones). */
  readonly consoleBytes?: number;
  /**
   * The network namespace file (e.g. /run/netns/NAME) of a VM that asked for network
   * (src/net/vmnet.ts): QEMU runs in it (its jail joins it instead of a new empty one, and binds
   * /dev/net/tun) and gets a virtio-net NIC on its tap. Null or absent: no network at all.
   */
  readonly netns?: string | null;
  /**
   * Guest RAM in a file (QEMU only, docs/qemu.md "The RAM template"). `template`: a cold boot
   * whose RAM is the file, shared, so that its snapshot holds only the device state. `clone`:
   * a restore of such a snapshot that maps the file read-only and copy-on-write, so its clones
   * share every page they do not write. Absent: RAM of the VMM's own.
   */
  readonly ramFile?: RamFile | null;
}

/** A RAM template file and how a VM uses it (VmLaunchOptions.ramFile). */
export interface RamFile {
  readonly path: string;
  readonly role: 'template' | 'clone';
}

/** How a VMM process ended. */
export interface VmExit {
  readonly code: number | null;
  readonly signal: string | null;
  /** True when the host asked for it (destroy), false when the VM died on its own. */
  readonly expected: boolean;
}

/** Timings of a snapshot, for the benchmark. */
export interface SnapshotInfo {
  readonly path: string;
  readonly sizeBytes: number;
  readonly ms: number;
}

/** One running microVM, whatever the VMM. */
export interface MicroVm {
  readonly id: string;
  readonly driver: string;
  readonly state: VmState;
  /** The VMM's process id (for RSS measurements and sweeps). */
  readonly pid: number | undefined;
  /** The agent's hello (cold boot), or null after a restore (the hello was before the snapshot). */
  readonly hello: HelloMessage | null;
  /** Resolves when the VMM process exits, for any reason. */
  readonly exited: Promise<VmExit>;
  /** The open channel to the agent. Throws VM_STATE unless running. */
  agent(): AgentChannel;
  /** Pauses the VM and saves it whole to `path`; the VM is left `snapshotted`. */
  snapshot(path: string): Promise<SnapshotInfo>;
  /** Kills the VMM and removes everything of the VM (sockets, files). Idempotent. */
  destroy(): Promise<void>;
  /** The most recent console output, for error messages. */
  consoleTail(): string;
}

/** A VMM: boots VMs and restores them from snapshots. */
export interface VmmDriver {
  readonly name: 'qemu' | 'firecracker';
  /** Cold boot; resolves once the agent has said hello. */
  boot(options: VmLaunchOptions): Promise<MicroVm>;
  /** Restores a snapshot taken by `snapshot` with the same resources; resolves once running. */
  restore(options: VmLaunchOptions, snapshotPath: string): Promise<MicroVm>;
}
