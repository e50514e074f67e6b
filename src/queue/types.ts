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
