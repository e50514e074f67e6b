import { hostname } from 'node:os';
import { setTimeout as sleep } from 'node:timers/promises';
import { Worker, type Job } from 'bullmq';
import { Redis } from 'ioredis';
import { asRunnerError } from '../errors.js';
import {
  sandboxErrorResult,
  type JobResult,
  type PreparedJob,
  type RunOptions,
} from '../pool/index.js';
import { clusterKeys, redisOptions, type ClusterOptions, type WorkerBeat } from './names.js';
import { workerLive } from './live.js';
import { fromClusterJob, type ClusterResult } from './wire.js';

/** What a worker needs of its host's engine. */
export interface WorkerEngine {
  readonly languages: { names(): string[] };
  readonly pool: {
    readonly capacity: number;
    /** Its VMs ready now, per language (the pool's stats); a worker prefers those languages. */
    stats?(): { readonly ready: Readonly<Record<string, number>> };
  };
  /** Jobs the engine runs at once (RunSlots); the worker takes no more than that. */
  readonly runSlots?: number;
  run(job: PreparedJob, options?: RunOptions): Promise<JobResult>;
}

/** Settings of one worker. */
export interface ClusterWorkerOptions extends ClusterOptions {
  /** This worker's name in the cluster (default host name and pid). */
  readonly id?: string;
  /** Jobs it runs at once (default the engine's run slots: one per core of vCPUs). */
  readonly concurrency?: number;
  /** How long a job's lock lasts without renewal: a dead worker's job is stalled after it. */
  readonly lockMs?: number;
  /**
   * How often an idle worker looks at its queues without being woken (default 5000 ms): a
   * safety net, since API nodes wake idle workers when they queue a job.
   */
  readonly pollMs?: number;
  /** How long a live job waits for its API node's ack before going on without (ms). */
  readonly liveAckTimeoutMs?: number;
  readonly log?: (line: string) => void;
}

/** The progress a worker writes on a job when it hands it to a VM. */
interface RunMark {
  readonly phase: 'running';
  readonly worker: string;
  readonly at: number;
}

function isRunMark(progress: unknown): progress is RunMark {
  return (
    typeof progress === 'object' &&
    progress !== null &&
    (progress as { phase?: unknown }).phase === 'running'
  );
}

/**
 * A VM host of the cluster (`runner worker --redis URL`). It takes a job only when its pool has
 * a free slot, so a busy host never holds jobs an idle one could run: BullMQ's manual fetch,
 * one queue per language, looked at in turn. Before a job reaches a VM the worker marks it
 * `running`; a job whose worker died is found stalled by BullMQ (its lock was not renewed) and
 * handed out again: one that was never marked runs again elsewhere, one that was marked ends
 * as sandbox_error (its program may have had effects, and a rerun could give another verdict),
 * so no job is left pending and none is run to two results.
 */
export class ClusterWorker {
  readonly id: string;
  private readonly keys;
  private readonly redis: Redis;
  private readonly workers = new Map<string, Worker>();
  private inFlight = 0;
  private taken = 0;
  private stopping = false;
  private wake: (() => void) | null = null;
  /** An idle worker's wait: ended by a wake-up (a job was queued) or the fallback poll. */
  private idle: (() => void) | null = null;
  /** A wake-up came since the last look at the queues began. */
  private woken = false;
  /** Jobs taken in a row because their language was warm (bounded: WARM_STREAK_MAX). */
  private warmStreak = 0;
  private subscriber: Redis | null = null;
  private loop: Promise<void> | null = null;
  private beat: NodeJS.Timeout | null = null;
  private readonly lockMs: number;
  private readonly pollMs: number;
  private readonly concurrency: number;

  constructor(
    private readonly engine: WorkerEngine,
    private readonly options: ClusterWorkerOptions,
  ) {
    this.id = options.id ?? `${hostname()}-${process.pid}`;
    this.keys = clusterKeys(options.prefix);
    this.redis = new Redis(redisOptions(options.redisUrl));
    this.lockMs = options.lockMs ?? 30_000;
    this.pollMs = options.pollMs ?? 5000;
    this.concurrency = options.concurrency ?? engine.runSlots ?? engine.pool.capacity;
  }

  /** Opens one BullMQ worker per language, starts the stalled checks and the fetch loop. */
  async start(): Promise<void> {
    // Idle, a worker sleeps until an API node says it queued a job (pub/sub), instead of
    // polling every queue: subscribed before the first look, so no job slips between them.
    this.subscriber = this.redis.duplicate();
    this.subscriber.on('error', (err) => this.options.log?.(`worker wake-ups: ${err.message}`));
    this.subscriber.on('message', () => this.rouse());
    // Back from a lost connection: what was published meanwhile is lost, so look now.
    this.subscriber.on('ready', () => this.rouse());
    await this.subscriber.subscribe(this.keys.wake);
    for (const language of this.engine.languages.names()) {
      const worker = new Worker(this.keys.queue(language), null, {
        connection: redisOptions(this.options.redisUrl),
        prefix: this.keys.bullPrefix,
        autorun: false,
        lockDuration: this.lockMs,
        stalledInterval: Math.max(1000, Math.floor(this.lockMs / 2)),
        // A stalled job comes back once; handle() decides whether it may run again.
        maxStalledCount: 1,
      });
      worker.on('error', (err) => this.options.log?.(`worker ${language}: ${err.message}`));
      // A stalled job went back to waiting: look again (others are told too).
      worker.on('stalled', () => {
        this.rouse();
        void this.redis.publish(this.keys.wake, language).catch(() => 0);
      });
      await worker.startStalledCheckTimer();
      this.workers.set(language, worker);
    }
    await this.heartbeat();
    this.beat = setInterval(() => void this.heartbeat(), 2000);
    this.beat.unref();
    this.loop = this.fetchLoop();
    this.options.log?.(
      `worker ${this.id}: taking jobs of ${this.workers.size} languages, ${this.concurrency} at once`,
    );
  }

  /** Jobs this worker holds now. */
  get running(): number {
    return this.inFlight;
  }

  /**
   * Drains (SIGTERM): takes no new job, lets the running ones finish, leaves the cluster.
   * Resolves when it is gone.
   */
  async drain(): Promise<void> {
    this.stopping = true;
    this.wake?.();
    this.idle?.();
    await this.loop;
    while (this.inFlight > 0) await sleep(50);
    if (this.beat) clearInterval(this.beat);
    await Promise.all([...this.workers.values()].map((w) => w.close()));
    await this.redis.hdel(this.keys.workers, this.id).catch(() => 0);
    this.subscriber?.disconnect();
    this.redis.disconnect();
  }

  private async heartbeat(): Promise<void> {
    const beat: WorkerBeat = {
      id: this.id,
      capacity: this.concurrency,
      running: this.inFlight,
      languages: [...this.workers.keys()],
      at: Date.now(),
      draining: this.stopping,
    };
    try {
      await this.redis.hset(this.keys.workers, this.id, JSON.stringify(beat));
    } catch (err) {
      this.options.log?.(`worker ${this.id}: heartbeat failed: ${asRunnerError(err).message}`);
    }
  }

  /** A job may be waiting: an idle worker looks at its queues now. */
  private rouse(): void {
    this.woken = true;
    this.idle?.();
  }

  /**
   * The order in which to look at the queues: round robin from `next` (no language starves
   * the others), except that languages with a VM ready in this worker's pool come first (a
   * warm job starts at once; a cold one elsewhere may meet a warm VM there), at most
   * WARM_STREAK_MAX times in a row, so a cold language still gets every few takes.
   */
  private order(languages: readonly string[], next: number): string[] {
    const fair = languages.map((_, i) => languages[(next + i) % languages.length] as string);
    if (this.warmStreak >= WARM_STREAK_MAX) return fair;
    const ready = this.engine.pool.stats?.().ready ?? {};
    const warm = fair.filter((l) => (ready[l] ?? 0) > 0);
    return warm.length === 0 ? fair : [...warm, ...fair.filter((l) => !warm.includes(l))];
  }

  private async fetchLoop(): Promise<void> {
    const languages = [...this.workers.keys()];
    let next = 0;
    while (!this.stopping) {
      if (this.inFlight >= this.concurrency) {
        await new Promise<void>((resolve) => (this.wake = resolve));
        this.wake = null;
        continue;
      }
      this.woken = false;
      const order = this.order(languages, next);
      let found = false;
      for (let i = 0; i < order.length && !this.stopping; i++) {
        const language = order[i] as string;
        const worker = this.workers.get(language) as Worker;
        const token = `${this.id}:${++this.taken}`;
        let job: Job | undefined;
        try {
          job = await worker.getNextJob(token, { block: false });
        } catch (err) {
          this.options.log?.(`worker ${this.id}: fetch failed: ${asRunnerError(err).message}`);
          await sleep(1000);
          break;
        }
        if (job === undefined) continue;
        const fairAt = (languages.indexOf(language) - next + languages.length) % languages.length;
        // Taken ahead of its round-robin turn: a warm preference, counted against its bound.
        this.warmStreak = i < fairAt ? this.warmStreak + 1 : 0;
        // The next look starts after this language, so no language starves the others.
        next = (languages.indexOf(language) + 1) % languages.length;
        found = true;
        this.inFlight++;
        void this.handle(job, token).finally(() => {
          this.inFlight--;
          this.wake?.();
          void this.heartbeat();
        });
        break;
      }
      if (!found && !this.stopping && !this.woken) {
        // Nothing waits: sleep until an API node queues a job (or the fallback poll).
        await new Promise<void>((resolve) => {
          const timer = setTimeout(resolve, this.pollMs);
          this.idle = () => {
            clearTimeout(timer);
            resolve();
          };
        });
        this.idle = null;
      }
    }
  }

  private async handle(job: Job, token: string): Promise<void> {
    let prepared: PreparedJob;
    try {
      prepared = fromClusterJob(job.data).job;
    } catch (err) {
      this.options.log?.(`job ${job.id ?? '?'}: ${asRunnerError(err).message}`);
      await job.moveToFailed(asRunnerError(err), token, false).catch(() => undefined);
      return;
    }
    const progress: unknown = job.progress;
    if (isRunMark(progress)) {
      const why = `the worker ${progress.worker} stopped while it ran this job`;
      this.options.log?.(`job ${prepared.id}: ${why}; ended as sandbox_error`);
      // Its watchers hear the end now, not after their wait for it runs out.
      if (prepared.message.stream !== undefined)
        await workerLive(this.redis, this.keys, prepared.id, true).close();
      await this.complete(job, token, sandboxErrorResult(prepared, why));
      return;
    }
    const renew = setInterval(
      () => {
        job.extendLock(token, this.lockMs).catch((err: unknown) => {
          this.options.log?.(
            `job ${prepared.id}: lock renewal failed: ${asRunnerError(err).message}`,
          );
        });
      },
      Math.floor(this.lockMs / 3),
    );
    // Its events go to the API nodes through Redis; its controls (stdin, cancel) come back.
    const live = workerLive(
      this.redis,
      this.keys,
      prepared.id,
      prepared.message.stream !== undefined,
      this.options.log,
      this.options.liveAckTimeoutMs,
    );
    try {
      await job.updateProgress({
        phase: 'running',
        worker: this.id,
        at: Date.now(),
      } satisfies RunMark);
      let result: JobResult;
      try {
        result = live.signal.aborted
          ? sandboxErrorResult(prepared, CANCELLED)
          : await this.engine.run(prepared, {
              owner: (job.data as { owner?: string | null }).owner ?? null,
              signal: live.signal,
              ...(live.handlers !== undefined && { live: live.handlers }),
            });
      } catch (err) {
        result = sandboxErrorResult(prepared, asRunnerError(err).message);
      }
      if (live.signal.aborted) result = sandboxErrorResult(prepared, CANCELLED);
      await live.close();
      await this.complete(job, token, result);
    } finally {
      clearInterval(renew);
      await live.close();
    }
  }

  private async complete(job: Job, token: string, result: JobResult): Promise<void> {
    const wire: ClusterResult = { ...result, worker: this.id };
    try {
      await job.moveToCompleted(wire, token, false);
      // The job leaves its owner's share (counted up by the API node that queued it).
      const owner = (job.data as { owner?: unknown }).owner;
      await this.redis
        .hincrby(this.keys.owners, typeof owner === 'string' ? owner : '-', -1)
        .catch(() => 0);
    } catch (err) {
      // The lock was lost (this worker was taken for dead): the job was handed out again.
      this.options.log?.(
        `job ${result.id}: could not report its result: ${asRunnerError(err).message}`,
      );
    }
  }
}

/** Jobs a worker takes in a row ahead of their turn because its pool has their language warm. */
export const WARM_STREAK_MAX = 3;

/** Why a job cancelled by its API node (the client went away) ended. */
const CANCELLED = 'the client went away; the job was cancelled';
