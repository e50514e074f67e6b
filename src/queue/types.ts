import type { Status } from '../protocol/index.js';
import type { JobRecord } from './store.js';

/** What a queue says about itself (for metrics, readiness and Retry-After). */
export interface QueueStats {
  /** Tasks waiting for a slot. */
  readonly queued: number;
  /** Tasks holding a slot. */
  readonly running: number;
  /** How many tasks may run at once (the pool's capacity). */
  readonly concurrency: number;
  /** How many tasks may wait; one more is refused. */
  readonly maxQueued: number;
  /** Moving average of a task's run time, in ms (0 before the first one ends). */
  readonly averageRunMs: number;
}

/**
 * Runs jobs with bounded concurrency and a bounded backlog. The in-process queue is the only
 * implementation today; a Redis-backed one (many hosts, one queue) goes behind the same
 * interface.
 */
export interface JobQueue {
  /**
   * Runs `task` when a slot is free and settles with its outcome. Refuses at once (QUEUE_FULL)
   * when the backlog is full and SHUTTING_DOWN once draining began; nothing runs then.
   */
  push<T>(task: () => Promise<T>): Promise<T>;
  /**
   * Throws (QUEUE_FULL or SHUTTING_DOWN) when a push made now would be refused. A caller that
   * must record a job before pushing it checks first, then pushes in the same tick.
   */
  admit(): void;
  stats(): QueueStats;
  /** Seconds a refused client should wait before retrying (the Retry-After header). */
  retryAfterSeconds(): number;
  /** Stops taking tasks; resolves once every queued and running task has settled. */
  drain(): Promise<void>;
}

/** A job as accepted, before it runs. */
export interface NewJobRecord {
  readonly id: string;
  readonly language: string;
  readonly version: string | null;
  readonly owner: string | null;
  readonly callbackUrl: string | null;
  /**
   * What another API node needs to finish the job if the one that accepted it stops (the
   * verdict rules of its test cases); kept by the cluster's records only.
   */
  readonly spec?: unknown;
}

/** An open job whose API node stopped, claimed by this node, with the spec it was created with. */
export interface Orphan {
  readonly record: JobRecord;
  readonly spec: unknown;
}

/**
 * Where the API keeps its job records: SQLite on a single box (StoreRecords over JobStore),
 * Redis in a cluster (src/cluster), so that any API node answers for any job. The moves are
 * those of checkJobMove: queued → running → done, or queued → done.
 */
export interface JobRecords {
  /** Records a newly accepted job as queued; JOB_STATE when the id exists. */
  create(job: NewJobRecord): Promise<JobRecord>;
  get(id: string): Promise<JobRecord | undefined>;
  /** queued → running. */
  markRunning(id: string): Promise<JobRecord>;
  /** queued|running → done, with the final status and result body. */
  finish(id: string, status: Status, result: unknown): Promise<JobRecord>;
  /** At start: ends the jobs an earlier run of this node left unfinished; returns them. */
  recover(
    makeResult: (job: JobRecord) => { status: Status; result: unknown },
  ): Promise<JobRecord[]>;
  /** The open jobs of API nodes that stopped, each claimed for this node (a cluster's only). */
  orphans?(): Promise<Orphan[]>;
  /** Deletes finished records past `maxAgeMs`; returns how many went. */
  prune(maxAgeMs: number): Promise<number>;
  close(): Promise<void>;
}
