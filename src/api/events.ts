import type { LiveEvent } from '../pool/index.js';

/** One event of a submitted job as watchers see it (GET /v1/jobs/:id/events). */
export type JobEvent =
  | {
      readonly type: 'stage';
      readonly stage: 'compile' | 'run';
      readonly phase: 'start' | 'end';
      readonly status?: string;
    }
  | { readonly type: 'output'; readonly stream: 'stdout' | 'stderr'; readonly data: string }
  | { readonly type: 'done' };

/**
 * An engine's live event as the API shows it, the one place that shapes them: the SSE stream
 * (GET /v1/jobs/:id/events) and the WebSocket (GET /v1/connect) send the same events.
 */
export function jobEventOf(event: LiveEvent): Exclude<JobEvent, { type: 'done' }> {
  return event.type === 'output'
    ? { type: 'output', stream: event.stream, data: event.data.toString('base64') }
    : {
        type: 'stage',
        stage: event.stage,
        phase: event.phase,
        ...(event.status !== undefined && { status: event.status }),
      };
}

type Listener = (event: JobEvent) => void;

interface Entry {
  readonly events: JobEvent[];
  readonly listeners: Set<Listener>;
  ended: boolean;
  timer?: NodeJS.Timeout;
}

/** How long a finished job's events stay for a watcher that comes late. */
export const EVENTS_KEPT_MS = 5 * 60_000;

/**
 * The live events of this node's submitted jobs, for watchers: each job's events are kept
 * (bounded: a job's output is bounded by its caps and the result budget) from its start until
 * EVENTS_KEPT_MS after its end, so a watcher that subscribes late gets them all, then the rest
 * as they come. A watcher leaving never touches the job.
 */
export class JobEventHub {
  private readonly jobs = new Map<string, Entry>();

  /** Starts keeping `id`'s events (before the job runs). */
  open(id: string): void {
    if (!this.jobs.has(id)) this.jobs.set(id, { events: [], listeners: new Set(), ended: false });
  }

  /** Whether this hub keeps `id`'s events. */
  has(id: string): boolean {
    return this.jobs.has(id);
  }

  /** A live event of job `id`, as the engine gives it. */
  publish(id: string, event: LiveEvent): void {
    this.emit(id, jobEventOf(event));
  }

  /** The job's record is final: watchers get `done` and are let go. */
  end(id: string): void {
    const entry = this.jobs.get(id);
    if (entry === undefined || entry.ended) return;
    this.emit(id, { type: 'done' });
    entry.ended = true;
    entry.listeners.clear();
    entry.timer = setTimeout(() => this.jobs.delete(id), EVENTS_KEPT_MS);
    entry.timer.unref();
  }

  /**
   * Replays what job `id` has had, then calls `listener` for each new event until `done`.
   * Returns the unsubscribe, or null when this node keeps nothing of the job.
   */
  subscribe(id: string, listener: Listener): (() => void) | null {
    const entry = this.jobs.get(id);
    if (entry === undefined) return null;
    for (const e of entry.events) listener(e);
    if (entry.ended) return () => undefined;
    entry.listeners.add(listener);
    return () => entry.listeners.delete(listener);
  }

  private emit(id: string, event: JobEvent): void {
    const entry = this.jobs.get(id);
    if (entry === undefined || entry.ended) return;
    entry.events.push(event);
    for (const l of entry.listeners) l(event);
  }
}
