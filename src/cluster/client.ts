import { Job, Queue, QueueEvents } from 'bullmq';
import { Redis } from 'ioredis';
import { ClusterUnavailableError, QueueFullError, asRunnerError } from '../errors.js';
import type { LanguageRegistry } from '../languages/index.js';
import {
  sandboxErrorResult,
  prepareJob,
  type JobRequest,
  type JobResult,
  type LiveEvent,
  type PoolStats,
  type PreparedJob,
  type RunOptions,
  type RuntimeStatus,
} from '../pool/index.js';
import {
  BEAT_STALE_MS,
  clusterKeys,
  redisOptions,
  type ClusterOptions,
  type WorkerBeat,
} from './names.js';
import { apiLive, cancelLive, watchLive } from './live.js';
import { fromClusterJob, fromClusterResult, toClusterJob } from './wire.js';

/** How often a busy API node reads the cluster's view (the queue cap's count). */
const VIEW_BUSY_MS = 1000;
/** How often an idle one does. */
const VIEW_IDLE_MS = 10_000;

/** How long a live job's last events may trail its result (they left the worker before it). */
const LIVE_END_GRACE_MS = 5000;

/** Settings of an API node's view of the cluster. */
export interface ClusterEngineOptions extends ClusterOptions {
  /** Jobs this API node may have in the cluster at once (its local queue's concurrency). */
  readonly maxInFlight: number;
  /** Jobs that may wait in the whole cluster; beyond it new jobs get QUEUE_FULL (503). */
  readonly maxQueued: number;
  /** How long a job may wait in the queue before it ends as sandbox_error (no worker took it). */
  readonly queueWaitMs: number;
  /** The timeLimitScalePercent setting: the API node resolves a job's limits (default 100). */
  readonly timeScalePercent?: number;
  readonly log?: (line: string) => void;
}

/** One language's queue, as an autoscaler wants it. */
export interface QueueView {
  /** Jobs waiting for a worker. */
  readonly waiting: number;
  /** Jobs a worker holds. */
  readonly active: number;
  /** Age of the oldest waiting job, in ms (0 when none waits). */
  readonly oldestMs: number;
}

/** What the cluster looks like from an API node: live workers, their slots, the queues. */
export interface ClusterView {
  readonly workers: readonly WorkerBeat[];
  /** Slots of the live workers that are not draining. */
  readonly capacity: number;
  readonly running: number;
  /** Free slots: capacity − running (never below 0). */
  readonly free: number;
  /** Per language with any job waiting or running. */
  readonly queues: Readonly<Record<string, QueueView>>;
  /** Jobs waiting in every queue. */
  readonly waiting: number;
}

/**
 * The engine of an API node (`runner serve --redis URL`): the same engine interface the HTTP
 * layer uses on a single box, but `run` puts the prepared job on its language's shared queue
 * and waits for whichever worker runs it. Jobs are prepared here, by the same prepareJob, so a
 * bad request is refused (400) before it reaches Redis.
 */
export class ClusterEngine {
  private readonly keys;
  private readonly redis: Redis;
  private readonly queues = new Map<string, Queue>();
  private readonly queueEvents = new Map<string, QueueEvents>();
  /** Jobs this node has put on the queue and not yet seen the end of. */
  private readonly enqueued = new Map<string, Promise<Job>>();
  private view: ClusterView = {
    workers: [],
    capacity: 0,
    running: 0,
    free: 0,
    queues: {},
    waiting: 0,
  };
  private refresh: NodeJS.Timeout | null = null;
  private closed = false;
  /** The next view read is a busy one (soon), or one is under way. */
  private viewSoon = false;
  /** When this node last queued a job (ms since the epoch). */
  private lastQueuedAt = 0;

  /** The pool as the HTTP layer sees it: this node's share of the cluster. */
  readonly pool: { stats(): PoolStats };

  constructor(
    readonly languages: LanguageRegistry,
    private readonly options: ClusterEngineOptions,
  ) {
    this.keys = clusterKeys(options.prefix);
    this.redis = new Redis(redisOptions(options.redisUrl));
    this.redis.on('error', (err) => options.log?.(`redis: ${err.message}`));
    this.pool = {
      stats: () => ({
        live: this.view.running,
        ready: {},
        busy: this.view.running,
        starting: 0,
        // The local queue's concurrency: jobs wait in the cluster's queue, not in this node.
        capacity: options.maxInFlight,
        hits: 0,
        misses: 0,
        failures: 0,
        warmUps: 0,
      }),
    };
    this.scheduleView();
  }

  /**
   * The cluster-wide cap: throws QUEUE_FULL (503, Retry-After) when as many jobs wait in the
   * whole cluster as the cap allows (read from the view, at most a second or two old).
   */
  admit(): void {
    if (this.view.waiting >= this.options.maxQueued)
      throw new QueueFullError(
        `the cluster's queue is full (${this.view.waiting} waiting, ${this.view.free} free slots); retry later`,
      );
  }

  /** Checks a request and builds its one execute message (no Redis, no VM). */
  prepare(request: JobRequest, id?: string): PreparedJob {
    return prepareJob(request, this.languages, {
      timeScalePercent: this.options.timeScalePercent ?? 100,
      ...(id !== undefined && { id }),
    });
  }

  /**
   * Queues the job on its language's queue and waits for its result. The job's id is the
   * BullMQ job's id, so a job queued twice (a retried request) is one job. A live job's
   * consumer gets its events from whichever worker runs it, and its stdin and signals go there
   * (src/cluster/live.ts); the result comes after its last event. An aborted `signal` cancels
   * the job: taken off the queue if no worker holds it yet, else aborted by its worker.
   */
  async run(job: PreparedJob, options: RunOptions = {}): Promise<JobResult> {
    const owner = options.owner ?? null;
    const { signal } = options;
    if (signal?.aborted === true)
      return sandboxErrorResult(job, 'the client went away before the job ran');
    const events = await this.eventsOf(job.language);
    const live =
      options.live !== undefined && job.message.stream !== undefined
        ? apiLive(this.redis, this.keys, job.id, options.live)
        : null;
    let queued: Job;
    try {
      queued = await this.enqueue(job, owner);
    } catch (err) {
      live?.stop();
      throw err;
    }
    let onAbort = (): void => undefined;
    const cancelled = new Promise<JobResult>((resolve) => {
      onAbort = () => void this.cancel(job, queued, owner).then((r) => r && resolve(r));
    });
    signal?.addEventListener('abort', onAbort, { once: true });
    try {
      const value = await Promise.race([
        queued.waitUntilFinished(
          events,
          this.options.queueWaitMs + job.deadlineMs,
        ) as Promise<unknown>,
        cancelled,
      ]);
      const result =
        typeof value === 'object' && value !== null && 'worker' in value
          ? fromClusterResult(value).result
          : (value as JobResult);
      if (live !== null)
        await Promise.race([
          live.done,
          new Promise((r) => setTimeout(r, LIVE_END_GRACE_MS).unref()),
        ]);
      return result;
    } catch (err) {
      throw new ClusterUnavailableError(
        `job ${job.id} got no result from the cluster: ${asRunnerError(err).message}`,
        { cause: err },
      );
    } finally {
      live?.stop();
      signal?.removeEventListener('abort', onAbort);
      this.enqueued.delete(job.id);
    }
  }

  /**
   * Cancels a job whose client went away: its worker is told to abort it (it ends as
   * sandbox_error); a job no worker took yet is taken off the queue, and its result given
   * here (null when a worker holds it: its result comes from there).
   */
  private async cancel(
    job: PreparedJob,
    queued: Job,
    owner: string | null,
  ): Promise<JobResult | null> {
    await cancelLive(this.redis, this.keys, job.id).catch(() => undefined);
    try {
      await queued.remove();
    } catch {
      return null; // Locked by a worker (or done): the worker ends it.
    }
    await this.redis.hincrby(this.keys.owners, owner ?? '-', -1).catch(() => 0);
    return sandboxErrorResult(job, 'the client went away before the job ran');
  }

  /**
   * Watches the live events of job `id` (accepted by any API node, run by any worker) from the
   * start, until its end; acknowledges nothing. Returns the means to stop.
   */
  watch(id: string, onEvent: (event: LiveEvent) => void, onEnd: () => void): () => void {
    return watchLive(this.redis, this.keys, id, onEvent, onEnd);
  }

  /**
   * Puts the job on its language's queue (once: a second call for the same id gives the job
   * queued by the first), so that an accepted job is in Redis before the client hears so: an
   * API node that dies after its 202 leaves the job to the workers and its record to another
   * node (JobService.adoptOrphans).
   */
  async enqueue(job: PreparedJob, owner: string | null = null): Promise<Job> {
    const pending = this.enqueued.get(job.id);
    if (pending !== undefined) return pending;
    const added = this.add(job, owner);
    this.enqueued.set(job.id, added);
    added.catch(() => this.enqueued.delete(job.id));
    return added;
  }

  private async add(job: PreparedJob, owner: string | null): Promise<Job> {
    const queue = this.queueOf(job.language);
    const share = owner ?? '-';
    let queued;
    try {
      // The per-key share: a key's n-th waiting job gets priority n, so one key's flood queues
      // behind every other key's first jobs instead of in front of them.
      const waiting = Math.max(1, await this.redis.hincrby(this.keys.owners, share, 1));
      queued = await queue.add('job', toClusterJob(job, owner), {
        jobId: job.id,
        priority: Math.min(waiting, 2_097_151),
        removeOnComplete: { age: 3600, count: 10_000 },
        removeOnFail: { age: 3600, count: 10_000 },
      });
      this.lastQueuedAt = Date.now();
      // Quiet until now: the view is read again soon, not at the idle pace.
      if (!this.viewSoon && this.refresh) {
        clearTimeout(this.refresh);
        this.scheduleView();
      }
      // Idle workers sleep until told (their fallback poll is seconds): wake them.
      await this.redis.publish(this.keys.wake, job.language).catch(() => 0);
    } catch (err) {
      await this.redis.hincrby(this.keys.owners, share, -1).catch(() => 0);
      throw new ClusterUnavailableError(
        `cannot queue job ${job.id}: ${asRunnerError(err).message}`,
        {
          cause: err,
        },
      );
    }
    return queued;
  }

  /**
   * The job `id` as some API node queued it, and its result (waiting for it when it has none
   * yet); null when it was never queued or is gone from the queue.
   */
  async resume(
    id: string,
    language: string,
  ): Promise<{ job: PreparedJob; result: JobResult } | null> {
    const queue = this.queueOf(language);
    const found = await Job.fromId(queue, id);
    if (found === undefined) return null;
    const { job } = fromClusterJob(found.data);
    const state = await found.getState();
    const value: unknown =
      state === 'completed'
        ? found.returnvalue
        : await found.waitUntilFinished(
            await this.eventsOf(language),
            this.options.queueWaitMs + job.deadlineMs,
          );
    return { job, result: fromClusterResult(value).result };
  }

  /** Every language, ready where a live worker takes it. */
  runtimes(): Promise<Map<string, RuntimeStatus>> {
    const served = new Set(this.view.workers.flatMap((w) => w.languages));
    return Promise.resolve(
      new Map(
        this.languages
          .names()
          .map((name) => [name, { imageReady: served.has(name), snapshotReady: served.has(name) }]),
      ),
    );
  }

  /** The live workers, read from their heartbeats. */
  async cluster(): Promise<ClusterView> {
    await this.readView();
    return this.view;
  }

  async close(): Promise<void> {
    this.closed = true;
    if (this.refresh) clearTimeout(this.refresh);
    await Promise.all([...this.queueEvents.values()].map((e) => e.close()));
    await Promise.all([...this.queues.values()].map((q) => q.close()));
    this.redis.disconnect();
  }

  /**
   * The view is read every VIEW_BUSY_MS while the cluster has work (jobs waiting or running,
   * or this node queued one lately: the queue cap reads it), and every VIEW_IDLE_MS when
   * all is quiet, so an idle API node costs Redis little; GET /v1/cluster reads it afresh.
   */
  private scheduleView(): void {
    if (this.closed) return;
    const busy =
      this.enqueued.size > 0 ||
      this.view.waiting > 0 ||
      this.view.running > 0 ||
      Date.now() - this.lastQueuedAt < VIEW_IDLE_MS;
    this.viewSoon = busy;
    this.refresh = setTimeout(
      () => {
        this.viewSoon = true;
        void this.readView().finally(() => this.scheduleView());
      },
      busy ? VIEW_BUSY_MS : VIEW_IDLE_MS,
    );
    this.refresh.unref();
  }

  private async readView(): Promise<void> {
    try {
      const beats = await this.redis.hgetall(this.keys.workers);
      const now = Date.now();
      const workers = Object.values(beats)
        .map((text) => JSON.parse(text) as WorkerBeat)
        .filter((b) => now - b.at < BEAT_STALE_MS);
      const capacity = workers.reduce((n, w) => n + (w.draining ? 0 : w.capacity), 0);
      const running = workers.reduce((n, w) => n + w.running, 0);
      const queues: Record<string, QueueView> = {};
      let waiting = 0;
      for (const language of this.languages.names()) {
        const queue = this.queueOf(language);
        const counts = await queue.getJobCounts('wait', 'prioritized', 'active');
        const queued = (counts.wait ?? 0) + (counts.prioritized ?? 0);
        if (queued === 0 && (counts.active ?? 0) === 0) continue;
        // The oldest waiting job: the head of the plain and the prioritized lists.
        const heads = await queue.getJobs(['wait', 'prioritized'], 0, 20, true);
        const oldest = heads.reduce((t, j) => Math.min(t, j.timestamp), now);
        queues[language] = { waiting: queued, active: counts.active ?? 0, oldestMs: now - oldest };
        waiting += queued;
      }
      this.view = {
        workers,
        capacity,
        running,
        free: Math.max(0, capacity - running),
        queues,
        waiting,
      };
    } catch (err) {
      this.options.log?.(`cluster view: ${asRunnerError(err).message}`);
    }
  }

  private queueOf(language: string): Queue {
    let queue = this.queues.get(language);
    if (queue === undefined) {
      queue = new Queue(this.keys.queue(language), {
        connection: redisOptions(this.options.redisUrl),
        prefix: this.keys.bullPrefix,
      });
      this.queues.set(language, queue);
    }
    return queue;
  }

  private async eventsOf(language: string): Promise<QueueEvents> {
    let events = this.queueEvents.get(language);
    if (events === undefined) {
      events = new QueueEvents(this.keys.queue(language), {
        connection: redisOptions(this.options.redisUrl),
        prefix: this.keys.bullPrefix,
      });
      this.queueEvents.set(language, events);
      await events.waitUntilReady();
    }
    return events;
  }
}
