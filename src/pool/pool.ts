import { randomBytes } from 'node:crypto';
import { availableParallelism } from 'node:os';
import { join } from 'node:path';
import {
  NetworkDisabledError,
  PoolClosedError,
  PoolStateError,
  SandboxFailureError,
} from '../errors.js';
import type { Limits, ReseedVia, SeccompFamily, SeededMessage } from '../protocol/index.js';
import type { VmNet, VmNetManager } from '../net/vmnet.js';
import type { MicroVm, VmmDriver, VmResources } from '../vmm/index.js';
import type { SnapshotManager } from './snapshots.js';

/** What a restore needs of a snapshot: its file, its VMs' shape, its RAM template if any. */
export interface PoolSnapshot {
  readonly path: string;
  readonly resources: VmResources;
  readonly ramPath?: string;
}

/** Settings of the warm pool. */
export interface PoolOptions {
  readonly driver: VmmDriver;
  readonly snapshots: SnapshotManager;
  readonly runDir: string;
  /** Ready VMs to keep per warmed language. */
  readonly targetPerLanguage: number;
  /** The most VMs alive at once on this host (ready, starting and busy). */
  readonly maxVms: number;
  /** The most guest memory, in MiB, for all VMs of this host together. */
  readonly maxMemoryMib: number;
  readonly vmMemoryMib: number;
  readonly restoreTimeoutMs: number;
  readonly log?: (line: string) => void;
  /** Makes networked VMs' networks; null or absent: network is off (networkEnabled). */
  readonly network?: VmNetManager | null;
  /** Told how long each restore took, to the agent reseeded (for metrics). */
  readonly onRestore?: (language: string, ms: number) => void;
  /**
   * Runs in a VM restored for the pool before it is marked ready (the language's own test
   * program, or the prime of its compile server), so that QEMU's translation cache, empty
   * after every restore, is warm for the job: off the job's path, waiting for a quiet moment
   * and skipped while jobs wait (see warmUpWhenQuiet).
   * A VM that fails it is destroyed. Resolves whether it ran (a language may have none).
   */
  readonly warmUp?: (vm: MicroVm, language: string) => Promise<boolean>;
  /**
   * A warm-up runs only while fewer jobs than this run (default: half the host's cores, at
   * least 1: on 2 cores, only while none runs): a compile server's start is 15–25 s of a core
   * under TCG, which a running job would share.
   */
  readonly warmUpBelowBusy?: number;
  /**
   * How long a restored VM waits for that moment before it is made ready unwarmed (default
   * 120 s; it never waits while a job waits for pool capacity).
   */
  readonly warmUpWaitMs?: number;
}

/** A VM handed out for one job. It is destroyed on release: one job per VM. */
export interface Lease {
  readonly vm: MicroVm;
  readonly language: string;
  /** True when a ready VM was waiting; false when it was restored for this job. */
  readonly hit: boolean;
  /** Time to restore the snapshot and bring the agent back (seed included). */
  readonly restoreMs: number;
  /**
   * What the VM runs, exactly: the key of the snapshot it was restored from (its kernel, base,
   * layer and shape). Null for a VM of another origin (a cold boot, a sandbox's own snapshot).
   * The compile cache keys on it.
   */
  readonly images: string | null;
}

/** A VM just restored, before it is anyone's. */
interface Restored {
  readonly vm: MicroVm;
  readonly restoreMs: number;
  readonly images: string | null;
  /** How the agent reseeded (`server`: without starting a process); absent from old agents. */
  readonly reseededVia?: ReseedVia;
}

/**
 * Where a VM's place in the pool is in its life. A place is taken (within capacity) as its
 * restore begins, and given up when its VM is gone:
 * `restoring` → `ready` (idle, for the pool) → `leased` (one job) → `destroying` → `gone`;
 * a restore for a waiting job goes `restoring` → `leased` at once. An idle VM is destroyed
 * when evicted or at close (`ready` → `destroying`), dropped when it dies (`ready` → `gone`);
 * a failed restore ends `restoring` → `gone`, and one that ends after close is destroyed.
 */
export type SlotState = 'restoring' | 'ready' | 'leased' | 'destroying' | 'gone';

/** Every slot state, in life order. */
export const SLOT_STATES: readonly SlotState[] = [
  'restoring',
  'ready',
  'leased',
  'destroying',
  'gone',
];

/** The moves each slot state allows; anything else is a bug of the pool (POOL_STATE). */
export const SLOT_MOVES: Readonly<Record<SlotState, readonly SlotState[]>> = {
  restoring: ['ready', 'leased', 'destroying', 'gone'],
  ready: ['leased', 'destroying', 'gone'],
  leased: ['destroying'],
  destroying: ['gone'],
  gone: [],
};

/** One VM's place in the pool, from the start of its restore to its end. */
export class PoolSlot {
  private current: SlotState = 'restoring';
  /** Set once the restore is done. */
  vm: MicroVm | null = null;
  restoreMs = 0;
  images: string | null = null;

  /** @param forJob Restored for a waiting job (a pool miss), not to be kept ready. */
  constructor(
    readonly language: string,
    readonly forJob: boolean,
  ) {}

  get state(): SlotState {
    return this.current;
  }

  /** Moves to `next`; throws POOL_STATE when the move is not legal from the current state. */
  to(next: SlotState): void {
    if (!SLOT_MOVES[this.current].includes(next)) {
      throw new PoolStateError(
        `pool slot of ${this.vm?.id ?? `a ${this.language} VM`}: cannot go from ${this.current} to ${next}`,
      );
    }
    this.current = next;
  }
}

/** Counters for metrics and `runner bench`. */
export interface PoolStats {
  live: number;
  ready: Record<string, number>;
  busy: number;
  starting: number;
  capacity: number;
  hits: number;
  misses: number;
  failures: number;
  /** VMs warmed up before they were marked ready (PoolOptions.warmUp). */
  warmUps: number;
}

/**
 * Keeps restored VMs ready per language. One job per VM: a VM is destroyed when its job ends
 * and a fresh one restored in the background, so no state crosses from one job to the next.
 * The number of VMs is capped by count and by memory; a language with nothing ready gets a
 * VM restored on demand (a pool miss), evicting an idle VM of another language if it must.
 * Every VM has a slot (`PoolSlot`); the counters are read off the slots.
 */
export class VmPool {
  /** Every slot not gone, in the order they were taken. */
  private readonly slots = new Set<PoolSlot>();
  private readonly warmed = new Set<string>();
  private readonly waiters: (() => void)[] = [];
  private closed = false;
  private counters = { hits: 0, misses: 0, failures: 0, warmUps: 0 };
  private readonly background = new Set<Promise<unknown>>();

  constructor(private readonly options: PoolOptions) {}

  /** How many VMs may be alive at once. */
  get capacity(): number {
    return Math.max(
      1,
      Math.min(
        this.options.maxVms,
        Math.floor(this.options.maxMemoryMib / this.options.vmMemoryMib),
      ),
    );
  }

  stats(): PoolStats {
    const ready: Record<string, number> = {};
    for (const language of this.warmed) ready[language] = 0;
    let busy = 0;
    let starting = 0;
    for (const slot of this.slots) {
      if (slot.state === 'ready') ready[slot.language] = (ready[slot.language] ?? 0) + 1;
      // A job waiting for its own restore is busy already.
      else if (slot.state === 'leased' || (slot.state === 'restoring' && slot.forJob)) busy++;
      else if (slot.state === 'restoring') starting++;
    }
    return {
      live: this.slots.size,
      ready,
      busy,
      starting,
      capacity: this.capacity,
      ...this.counters,
    };
  }

  /** Keeps `targetPerLanguage` VMs of `language` ready from now on; resolves once one is ready. */
  async warm(language: string): Promise<void> {
    this.warmed.add(language);
    await this.options.snapshots.ensure(language);
    this.refill();
    const deadline = Date.now() + this.options.restoreTimeoutMs * 2;
    while (this.readyOf(language) === undefined && Date.now() < deadline && !this.closed) {
      await new Promise((r) => setTimeout(r, 20));
    }
  }

  /** Stops keeping `language` ready (undoes warm); its idle VMs are destroyed. */
  async cool(language: string): Promise<void> {
    this.warmed.delete(language);
    const idle = [...this.slots].filter((s) => s.language === language && s.state === 'ready');
    await Promise.allSettled(idle.map((s) => this.destroyIdle(s)));
  }

  /** Whether networked VMs can be made here (the operator turned networkEnabled on). */
  get networkEnabled(): boolean {
    return (this.options.network ?? null) !== null;
  }

  /**
   * A VM for one job: a ready one (hit) or one restored now (miss). POOL_CLOSED once closed.
   * With `network`, always a cold boot with a NIC in a namespace of its own (a miss; it takes
   * a slot like any VM); NETWORK_DISABLED when the operator did not allow network.
   */
  async acquire(language: string, options: { network?: boolean } = {}): Promise<Lease> {
    if (this.closed) throw new PoolClosedError('the pool is closed');
    if (options.network === true) return this.acquireNetworked(language);
    const ready = this.readyOf(language);
    if (ready?.vm) {
      ready.to('leased');
      this.counters.hits++;
      this.refill();
      return {
        vm: ready.vm,
        language,
        hit: true,
        restoreMs: ready.restoreMs,
        images: ready.images,
      };
    }
    return this.leaseRestored(language, () => this.restoreFresh(language));
  }

  /** A pool miss: a slot within capacity, a VM restored into it by `restore`, leased at once. */
  private async leaseRestored(language: string, restore: () => Promise<Restored>): Promise<Lease> {
    this.counters.misses++;
    const slot = await this.takeSlot(language, true);
    let made: Restored;
    try {
      made = await restore();
    } catch (err) {
      this.counters.failures++;
      this.giveUp(slot);
      throw err;
    }
    slot.vm = made.vm;
    slot.restoreMs = made.restoreMs;
    slot.images = made.images;
    slot.to('leased');
    return { vm: made.vm, language, hit: false, restoreMs: made.restoreMs, images: made.images };
  }

  /**
   * Ends a lease: the VM is destroyed (never reused) and the pool refilled. POOL_STATE for a
   * lease that is not held (released twice, or not from this pool).
   */
  async release(lease: Lease): Promise<void> {
    const slot = [...this.slots].find((s) => s.vm === lease.vm);
    if (slot?.state !== 'leased') {
      throw new PoolStateError(
        `VM ${lease.vm.id} is not leased from this pool (${slot?.state ?? 'not in it'})`,
      );
    }
    slot.to('destroying');
    try {
      await lease.vm.destroy();
    } finally {
      this.giveUp(slot);
      this.refill();
    }
  }

  /** Like release, without waiting; close() waits for it. */
  releaseInBackground(lease: Lease): void {
    const task = this.release(lease)
      .catch((err: unknown) =>
        this.options.log?.(`pool: destroying ${lease.vm.id} failed: ${messageOf(err)}`),
      )
      .finally(() => this.background.delete(task));
    this.background.add(task);
  }

  /** Destroys every idle VM and stops refilling; a waiting or later acquire gets POOL_CLOSED. */
  async close(): Promise<void> {
    this.closed = true;
    for (const w of this.waiters.splice(0)) w();
    await Promise.allSettled([...this.background]);
    const idle = [...this.slots].filter((s) => s.state === 'ready');
    await Promise.allSettled(idle.map((s) => this.destroyIdle(s)));
  }

  /**
   * The pool's one restore path: the language's snapshot restored as a new VM and its agent
   * reseeded, timed to the reseed's answer. The caller owns the VM and destroys it. It takes no
   * slot: the pool's own callers take one first; `runner bench` times it on an idle pool.
   */
  async restoreFresh(language: string): Promise<Restored> {
    if (this.closed) throw new PoolClosedError('the pool is closed');
    const snapshot = await this.options.snapshots.ensure(language);
    return { ...(await this.restoreSnapshot(language, snapshot)), images: snapshot.key };
  }

  /**
   * A VM restored from a snapshot of the caller's (a paused sandbox), leased at once within
   * capacity like a pool miss, and reseeded (new entropy, clock and VM id). `resources` must
   * be those the snapshot was taken with.
   */
  async acquireFrom(language: string, snapshot: PoolSnapshot): Promise<Lease> {
    if (this.closed) throw new PoolClosedError('the pool is closed');
    return this.leaseRestored(language, async () => ({
      ...(await this.restoreSnapshot(language, snapshot)),
      images: null,
    }));
  }

  private async restoreSnapshot(
    language: string,
    snapshot: PoolSnapshot,
  ): Promise<{ vm: MicroVm; restoreMs: number; reseededVia?: ReseedVia }> {
    const vmId = `${language}-${randomBytes(6).toString('hex')}`;
    const started = Date.now();
    const vm = await this.options.driver.restore(
      {
        ...snapshot.resources,
        vmId,
        runDir: join(this.options.runDir, vmId),
        timeoutMs: this.options.restoreTimeoutMs,
        ...(snapshot.ramPath !== undefined && {
          ramFile: { path: snapshot.ramPath, role: 'clone' as const },
        }),
      },
      snapshot.path,
    );
    let seeded: SeededMessage;
    try {
      seeded = await reseed(vm, this.options.restoreTimeoutMs);
    } catch (err) {
      await vm.destroy();
      throw err;
    }
    const restoreMs = Date.now() - started;
    this.options.onRestore?.(language, restoreMs);
    return { vm, restoreMs, ...(seeded.via !== undefined && { reseededVia: seeded.via }) };
  }

  private async acquireNetworked(language: string): Promise<Lease> {
    const network = this.options.network ?? null;
    if (network === null)
      throw new NetworkDisabledError('network is off on this host (networkEnabled)');
    this.counters.misses++;
    const slot = await this.takeSlot(language, true);
    let vm: MicroVm;
    let bootMs: number;
    try {
      const net = await network.create();
      try {
        const booted = await this.options.snapshots.bootFresh(language, {
          netns: net.netnsPath,
        });
        vm = withNetwork(booted.vm, net);
        bootMs = booted.bootMs;
      } catch (err) {
        await net.destroy();
        throw err;
      }
    } catch (err) {
      this.counters.failures++;
      this.giveUp(slot);
      throw err;
    }
    slot.vm = vm;
    slot.restoreMs = bootMs;
    slot.images = null;
    slot.to('leased');
    return { vm, language, hit: false, restoreMs: bootMs, images: null };
  }

  /** The first ready VM's slot of `language`. */
  private readyOf(language: string): PoolSlot | undefined {
    for (const slot of this.slots) {
      if (slot.state === 'ready' && slot.language === language) return slot;
    }
    return undefined;
  }

  /** A new slot within capacity: evicts an idle VM of another language, else waits. */
  private async takeSlot(language: string, forJob: boolean): Promise<PoolSlot> {
    for (;;) {
      if (this.closed) throw new PoolClosedError('the pool is closed');
      if (this.slots.size < this.capacity) return this.newSlot(language, forJob);
      const victim = [...this.slots].find((s) => s.state === 'ready' && s.language !== language);
      if (victim) {
        // The freed place is ours: no waiter is woken for it.
        await this.destroyIdle(victim, false);
        continue;
      }
      await new Promise<void>((resolve) => this.waiters.push(resolve));
    }
  }

  private newSlot(language: string, forJob: boolean): PoolSlot {
    const slot = new PoolSlot(language, forJob);
    this.slots.add(slot);
    return slot;
  }

  /** Ends a slot (its VM is gone or was never made) and hands its place to a waiter. */
  private giveUp(slot: PoolSlot, wake = true): void {
    slot.to('gone');
    this.slots.delete(slot);
    if (wake) this.waiters.shift()?.();
  }

  private async destroyIdle(slot: PoolSlot, wake = true): Promise<void> {
    slot.to('destroying');
    try {
      await slot.vm?.destroy();
    } finally {
      this.giveUp(slot, wake);
    }
  }

  /** Starts background restores until every warmed language has its target (within capacity). */
  private refill(): void {
    if (this.closed) return;
    for (const language of this.warmed) {
      for (;;) {
        let have = 0;
        for (const s of this.slots) {
          if (s.language === language && !s.forJob) {
            if (s.state === 'ready' || s.state === 'restoring') have++;
          }
        }
        if (
          have >= this.options.targetPerLanguage ||
          this.slots.size >= this.capacity ||
          this.waiters.length > 0
        )
          break;
        const slot = this.newSlot(language, false);
        const task = this.fill(slot)
          .catch((err: unknown) =>
            this.options.log?.(`pool: destroying a ${language} VM failed: ${messageOf(err)}`),
          )
          .finally(() => this.background.delete(task));
        this.background.add(task);
      }
    }
  }

  /** Restores a VM into a slot of its own, to be kept ready. */
  private async fill(slot: PoolSlot): Promise<void> {
    let made: Restored;
    try {
      made = await this.restoreFresh(slot.language);
    } catch (err) {
      this.counters.failures++;
      this.options.log?.(`pool: restoring ${slot.language} failed: ${messageOf(err)}`);
      this.giveUp(slot);
      return;
    }
    slot.vm = made.vm;
    slot.restoreMs = made.restoreMs;
    slot.images = made.images;
    if (!this.closed && this.options.warmUp !== undefined && (await this.warmUpWhenQuiet())) {
      try {
        if (await this.options.warmUp(made.vm, slot.language)) this.counters.warmUps++;
      } catch (err) {
        this.counters.failures++;
        this.options.log?.(`pool: the warm-up of a ${slot.language} VM failed: ${messageOf(err)}`);
        await this.destroyIdle(slot);
        return;
      }
    }
    if (this.closed) {
      await this.destroyIdle(slot);
      return;
    }
    slot.to('ready');
    // A ready VM that dies while idle is dropped and replaced.
    void made.vm.exited.then(() => this.dropDead(slot));
  }

  /** A warm-up runs only while jobs are not waiting and fewer run than warmUpBelowBusy. */
  private warmUpAllowed(): boolean {
    if (this.waiters.length > 0) return false;
    let busy = 0;
    for (const s of this.slots) if (s.state === 'leased') busy++;
    const below =
      this.options.warmUpBelowBusy ?? Math.max(1, Math.floor(availableParallelism() / 2));
    return busy < below;
  }

  /**
   * Waits for a moment a warm-up may run (warmUpAllowed), up to warmUpWaitMs; false when there
   * is none: the pool closed, a job waits for capacity, or the host stayed busy.
   */
  private async warmUpWhenQuiet(): Promise<boolean> {
    const deadline = Date.now() + (this.options.warmUpWaitMs ?? 120_000);
    for (;;) {
      if (this.closed || this.waiters.length > 0) return false;
      if (this.warmUpAllowed()) return true;
      if (Date.now() >= deadline) return false;
      await new Promise((r) => setTimeout(r, 50));
    }
  }

  private dropDead(slot: PoolSlot): void {
    if (slot.state !== 'ready') return;
    this.giveUp(slot);
    this.options.log?.(`pool: idle VM ${slot.vm?.id ?? ''} died; replacing it`);
    this.refill();
  }
}

/** The VM with its network: destroying it also deletes the network, even when the VMM's end fails. */
function withNetwork(vm: MicroVm, net: VmNet): MicroVm {
  return {
    get id() {
      return vm.id;
    },
    get driver() {
      return vm.driver;
    },
    get state() {
      return vm.state;
    },
    get pid() {
      return vm.pid;
    },
    get hello() {
      return vm.hello;
    },
    exited: vm.exited,
    agent: () => vm.agent(),
    snapshot: (path) => vm.snapshot(path),
    consoleTail: () => vm.consoleTail(),
    destroy: async () => {
      try {
        await vm.destroy();
      } finally {
        await net.destroy();
      }
    },
  };
}

function messageOf(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}

/**
 * Starts a language's compile server in a VM (a `prime`, docs/agent.md, "Compile servers") and
 * waits until it listens: the next job's compile goes to it when its compile limits allow
 * (the same rlimits as `limits`, a CPU limit no higher). Throws SANDBOX_FAILURE with the agent's reason when it does not start.
 */
export async function prime(
  vm: MicroVm,
  language: string,
  limits: Limits,
  seccomp: SeccompFamily,
  timeoutMs: number,
): Promise<number> {
  const channel = vm.agent();
  const id = `prime-${randomBytes(4).toString('hex')}`;
  await channel.send({ type: 'prime', id, language, limits, seccomp });
  for (;;) {
    const reply = await channel.next(timeoutMs);
    if (reply.type === 'hello') continue;
    if (reply.type === 'primed' && reply.id === id) return reply.ms;
    throw new SandboxFailureError(
      `agent answered prime with ${reply.type}${reply.type === 'error' ? `: ${reply.message}` : ''}`,
    );
  }
}

/**
 * After a restore every VM is a copy of one frozen guest: same random pool, same clock, same
 * identity. Before it takes a job the host gives it fresh entropy, the time and its own id.
 */
export async function reseed(vm: MicroVm, timeoutMs: number): Promise<SeededMessage> {
  const channel = vm.agent();
  const id = `seed-${randomBytes(4).toString('hex')}`;
  await channel.send({
    type: 'seed',
    id,
    entropy: randomBytes(64).toString('base64'),
    unixTimeMs: Date.now(),
    vmId: vm.id,
  });
  for (;;) {
    const reply = await channel.next(timeoutMs);
    if (reply.type === 'hello') continue; // the agent began a new session on the port
    if (reply.type === 'seeded' && reply.id === id) return reply;
    throw new SandboxFailureError(
      `agent answered seed with ${reply.type}${reply.type === 'error' ? `: ${reply.message}` : ''}`,
    );
  }
}
