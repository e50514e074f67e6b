import { randomBytes } from 'node:crypto';
import { join } from 'node:path';
import { SandboxFailureError, VmStateError } from '../errors.js';
import type { MicroVm, VmmDriver } from '../vmm/index.js';
import type { SnapshotManager } from './snapshots.js';

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
  /** Told how long each restore took, to the agent reseeded (for metrics). */
  readonly onRestore?: (language: string, ms: number) => void;
}

/** A VM handed out for one job. It is destroyed on release: one job per VM. */
export interface Lease {
  readonly vm: MicroVm;
  readonly language: string;
  /** True when a ready VM was waiting; false when it was restored for this job. */
  readonly hit: boolean;
  /** Time to restore the snapshot and bring the agent back (seed included). */
  readonly restoreMs: number;
}

interface ReadyVm {
  vm: MicroVm;
  language: string;
  restoreMs: number;
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
}

/**
 * Keeps restored VMs ready per language. One job per VM: a VM is destroyed when its job ends
 * and a fresh one restored in the background, so no state crosses from one job to the next.
 * The number of VMs is capped by count and by memory; a language with nothing ready gets a
 * VM restored on demand (a pool miss), evicting an idle VM of another language if it must.
 */
export class VmPool {
  private readonly ready = new Map<string, ReadyVm[]>();
  private readonly startingFor = new Map<string, number>();
  private readonly warmed = new Set<string>();
  private readonly waiters: (() => void)[] = [];
  private live = 0;
  private busy = 0;
  private closed = false;
  private counters = { hits: 0, misses: 0, failures: 0 };
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
    for (const [lang, list] of this.ready) ready[lang] = list.length;
    let starting = 0;
    for (const n of this.startingFor.values()) starting += n;
    return {
      live: this.live,
      ready,
      busy: this.busy,
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
    while ((this.ready.get(language)?.length ?? 0) === 0 && Date.now() < deadline && !this.closed) {
      await new Promise((r) => setTimeout(r, 20));
    }
  }

  /** A VM for one job: a ready one (hit) or one restored now (miss). */
  async acquire(language: string): Promise<Lease> {
    if (this.closed) throw new VmStateError('the pool is closed');
    const list = this.ready.get(language);
    const ready = list?.shift();
    if (ready) {
      this.busy++;
      this.counters.hits++;
      this.refill();
      return { vm: ready.vm, language, hit: true, restoreMs: ready.restoreMs };
    }
    this.counters.misses++;
    await this.reserveSlot(language);
    this.busy++;
    try {
      const made = await this.prepare(language);
      return { vm: made.vm, language, hit: false, restoreMs: made.restoreMs };
    } catch (err) {
      this.busy--;
      this.freeSlot();
      throw err;
    }
  }

  /** Ends a lease: the VM is destroyed (never reused) and the pool refilled. */
  async release(lease: Lease): Promise<void> {
    this.busy--;
    try {
      await lease.vm.destroy();
    } finally {
      this.freeSlot();
      this.refill();
    }
  }

  /** Like release, without waiting; close() waits for it. */
  releaseInBackground(lease: Lease): void {
    const task = this.release(lease)
      .catch((err: unknown) =>
        this.options.log?.(
          `pool: destroying ${lease.vm.id} failed: ${err instanceof Error ? err.message : String(err)}`,
        ),
      )
      .finally(() => this.background.delete(task));
    this.background.add(task);
  }

  /** Destroys every VM and stops refilling. */
  async close(): Promise<void> {
    this.closed = true;
    for (const w of this.waiters.splice(0)) w();
    await Promise.allSettled([...this.background]);
    const all = [...this.ready.values()].flat();
    this.ready.clear();
    await Promise.allSettled(all.map((r) => r.vm.destroy()));
  }

  private async reserveSlot(language: string): Promise<void> {
    for (;;) {
      if (this.closed) throw new VmStateError('the pool is closed');
      if (this.live < this.capacity) {
        this.live++;
        return;
      }
      // Full: make room by evicting an idle VM of another language, else wait for a release.
      const victim = this.idleVictim(language);
      if (victim) {
        await victim.vm.destroy();
        this.live--;
        continue;
      }
      await new Promise<void>((resolve) => this.waiters.push(resolve));
    }
  }

  private freeSlot(): void {
    this.live--;
    this.waiters.shift()?.();
  }

  private idleVictim(except: string): ReadyVm | undefined {
    for (const [lang, list] of this.ready) {
      if (lang !== except && list.length > 0) return list.shift();
    }
    return undefined;
  }

  /** Restores a VM of `language` and reseeds its agent (fresh entropy, clock, identity). */
  private async prepare(language: string): Promise<ReadyVm> {
    const snapshot = await this.options.snapshots.ensure(language);
    const vmId = `${language}-${randomBytes(6).toString('hex')}`;
    const started = Date.now();
    const vm = await this.options.driver.restore(
      {
        ...snapshot.resources,
        vmId,
        runDir: join(this.options.runDir, vmId),
        timeoutMs: this.options.restoreTimeoutMs,
      },
      snapshot.path,
    );
    try {
      await reseed(vm, this.options.restoreTimeoutMs);
    } catch (err) {
      await vm.destroy();
      this.counters.failures++;
      throw err;
    }
    const restoreMs = Date.now() - started;
    this.options.onRestore?.(language, restoreMs);
    return { vm, language, restoreMs };
  }

  /** Starts background restores until every warmed language has its target (within capacity). */
  private refill(): void {
    if (this.closed) return;
    for (const language of this.warmed) {
      for (;;) {
        const have =
          (this.ready.get(language)?.length ?? 0) + (this.startingFor.get(language) ?? 0);
        if (
          have >= this.options.targetPerLanguage ||
          this.live >= this.capacity ||
          this.waiters.length > 0
        )
          break;
        this.live++;
        this.startingFor.set(language, (this.startingFor.get(language) ?? 0) + 1);
        const task = this.prepare(language)
          .then((made) => {
            if (this.closed) {
              this.live--;
              return made.vm.destroy();
            }
            const list = this.ready.get(language) ?? [];
            list.push(made);
            this.ready.set(language, list);
            // A ready VM that dies while idle is dropped and replaced.
            void made.vm.exited.then(() => this.dropDead(made));
            return undefined;
          })
          .catch((err: unknown) => {
            this.live--;
            this.counters.failures++;
            this.options.log?.(
              `pool: restoring ${language} failed: ${err instanceof Error ? err.message : String(err)}`,
            );
            this.waiters.shift()?.();
          })
          .finally(() => {
            this.startingFor.set(language, (this.startingFor.get(language) ?? 1) - 1);
            this.background.delete(task);
          });
        this.background.add(task);
      }
    }
  }

  private dropDead(ready: ReadyVm): void {
    const list = this.ready.get(ready.language);
    const i = list?.indexOf(ready) ?? -1;
    if (list && i >= 0) {
      list.splice(i, 1);
      this.live--;
      this.options.log?.(`pool: idle VM ${ready.vm.id} died; replacing it`);
      this.waiters.shift()?.();
      this.refill();
    }
  }
}

/**
 * After a restore every VM is a copy of one frozen guest: same random pool, same clock, same
 * identity. Before it takes a job the host gives it fresh entropy, the time and its own id.
 */
export async function reseed(vm: MicroVm, timeoutMs: number): Promise<void> {
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
    if (reply.type === 'seeded' && reply.id === id) return;
    throw new SandboxFailureError(
      `agent answered seed with ${reply.type}${reply.type === 'error' ? `: ${reply.message}` : ''}`,
    );
  }
}
