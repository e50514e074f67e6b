import type { ServerResponse } from 'node:http';
import type { FastifyReply } from 'fastify';
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

/** How often an idle Server-Sent Events stream sends a comment, so that proxies keep it open. */
export const SSE_HEARTBEAT_MS = 15_000;

/**
 * One Server-Sent Events response (`event: NAME`, `data: JSON`), the one writer of SSE for every
 * route: a job's events and a sandbox's cells and commands. It takes the response from Fastify
 * only at `open()` (or the first `send`), so a route may still fail with an ordinary HTTP error
 * until it has something to stream. `send` resolves once the socket takes more, which gives the
 * engine back-pressure from a slow reader; after the client left it resolves at once.
 */
export class EventStream {
  private opened = false;
  private gone = false;
  private heartbeat: NodeJS.Timeout | undefined;
  private readonly closeListeners: (() => void)[] = [];

  constructor(
    private readonly reply: FastifyReply,
    private readonly heartbeatMs = SSE_HEARTBEAT_MS,
  ) {}

  /** Whether the response is ours now (no HTTP error can be sent any more). */
  get started(): boolean {
    return this.opened;
  }

  /** Whether the stream ended, or its client left. */
  get closed(): boolean {
    return this.gone;
  }

  /** Writes the head of the stream (once). */
  open(): void {
    if (this.opened) return;
    this.opened = true;
    this.reply.hijack();
    const res = this.reply.raw;
    res.writeHead(200, {
      'content-type': 'text/event-stream; charset=utf-8',
      'cache-control': 'no-cache',
      'x-accel-buffering': 'no',
    });
    // 'close' of the response: it ended, or the connection went away before that.
    res.once('close', () => this.stop());
    this.heartbeat = setInterval(() => {
      if (!this.gone) res.write(': keep-alive\n\n');
    }, this.heartbeatMs);
    this.heartbeat.unref();
  }

  /** Sends one event (opening the stream first if need be). */
  send(event: string, data: unknown): Promise<void> {
    this.open();
    if (this.gone) return Promise.resolve();
    return writeWithRoom(this.reply.raw, `event: ${event}\ndata: ${JSON.stringify(data)}\n\n`);
  }

  /** Calls `listener` once, when the stream ends or its client leaves. */
  onClose(listener: () => void): void {
    if (this.gone) listener();
    else this.closeListeners.push(listener);
  }

  /** Ends the stream (opening it first if it never was). */
  end(): void {
    this.open();
    if (this.gone) return;
    this.stop();
    this.reply.raw.end();
  }

  private stop(): void {
    if (this.gone) return;
    this.gone = true;
    clearInterval(this.heartbeat);
    for (const l of this.closeListeners.splice(0)) l();
  }
}

/**
 * Writes a chunk of a streamed response; resolves at once when the socket took it, else once
 * it drains or the response closes (a client gone never holds the writer).
 */
export function writeWithRoom(res: ServerResponse, chunk: string | Buffer): Promise<void> {
  if (res.write(chunk)) return Promise.resolve();
  return new Promise((resolve) => {
    const done = (): void => {
      res.off('drain', done);
      res.off('close', done);
      resolve();
    };
    res.once('drain', done);
    res.once('close', done);
  });
}
