import { asRunnerError, ConfigInvalidError, QueueFullError, ShuttingDownError } from '../errors.js';
import type { JobQueue, QueueStats } from './types.js';

interface Waiting {
  start: () => void;
}

/**
 * The in-process queue: at most `concurrency` tasks run at once (one per VM the pool can hold),
 * at most `maxQueued` wait, and the rest are refused so that memory stays bounded under load.
 * Tasks start in arrival order.
 */
export class LocalQueue implements JobQueue {
  private readonly waiting: Waiting[] = [];
  private running = 0;
  private draining = false;
  private averageRunMs = 0;
  private readonly idle: (() => void)[] = [];

  constructor(
    private readonly options: { readonly concurrency: number; readonly maxQueued: number },
  ) {
    if (!Number.isInteger(options.concurrency) || options.concurrency < 1) {
      throw new ConfigInvalidError(`queue concurrency must be a positive integer, not ${options.concurrency}`);
    }
  }

  admit(): void {
    if (this.draining) throw new ShuttingDownError('the server is shutting down and takes no new jobs');
    if (this.running >= this.options.concurrency && this.waiting.length >= this.options.maxQueued) {
      throw new QueueFullError(`the job queue is full (${this.waiting.length} waiting, ${this.running} running); retry later`);
    }
  }

  push<T>(task: () => Promise<T>): Promise<T> {
    try {
      this.admit();
    } catch (err) {
      return Promise.reject(asRunnerError(err));
    }
    return new Promise<T>((resolve, reject) => {
      const start = (): void => {
        this.running++;
        const began = Date.now();
        // A task that throws synchronously is still settled through the promise chain.
        Promise.resolve()
          .then(task)
          .then(resolve, reject)
          .finally(() => {
            const ms = Date.now() - began;
            this.averageRunMs = this.averageRunMs === 0 ? ms : this.averageRunMs * 0.8 + ms * 0.2;
            this.running--;
            this.next();
          });
      };
      if (this.running < this.options.concurrency) start();
      else this.waiting.push({ start });
    });
  }

  stats(): QueueStats {
    return {
      queued: this.waiting.length,
      running: this.running,
      concurrency: this.options.concurrency,
      maxQueued: this.options.maxQueued,
      averageRunMs: Math.round(this.averageRunMs),
    };
  }

  retryAfterSeconds(): number {
    const perTaskMs = this.averageRunMs === 0 ? 1000 : this.averageRunMs;
    const waves = (this.waiting.length + 1) / this.options.concurrency;
    return Math.min(3600, Math.max(1, Math.ceil((waves * perTaskMs) / 1000)));
  }

  async drain(): Promise<void> {
    this.draining = true;
    if (this.running === 0 && this.waiting.length === 0) return;
    await new Promise<void>((resolve) => this.idle.push(resolve));
  }

  private next(): void {
    while (this.running < this.options.concurrency) {
      const item = this.waiting.shift();
      if (!item) break;
      item.start();
    }
    if (this.running === 0 && this.waiting.length === 0) {
      for (const resolve of this.idle.splice(0)) resolve();
    }
  }
}
