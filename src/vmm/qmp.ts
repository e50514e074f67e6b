import { connect, type Socket } from 'node:net';
import { setTimeout as sleep } from 'node:timers/promises';
import { RunnerError, VmDiedError, VmStateError, VmTimeoutError } from '../errors.js';

/** One QMP event as QEMU sends it. */
export interface QmpEvent {
  event: string;
  data?: Record<string, unknown>;
  timestamp?: { seconds: number; microseconds: number };
}

type Pending = {
  resolve: (value: unknown) => void;
  reject: (err: Error) => void;
  timer: NodeJS.Timeout;
  command: string;
};

/** The longest line QEMU may send before we call it broken (a guard, not a protocol limit). */
const MAX_LINE_BYTES = 1024 * 1024;

/**
 * A minimal QMP client: JSON lines over a unix socket. QEMU answers commands in order, so a
 * FIFO of pending commands is enough. Events go to `onEvent` listeners.
 */
export class QmpClient {
  private buffer = '';
  private readonly pending: Pending[] = [];
  private readonly listeners = new Set<(e: QmpEvent) => void>();
  private closed: Error | null = null;
  private greeted!: () => void;
  private readonly greeting = new Promise<void>((resolve) => (this.greeted = resolve));

  private constructor(private readonly socket: Socket) {
    socket.setEncoding('utf8');
    socket.on('data', (chunk: string) => this.onData(chunk));
    socket.on('error', (err) => this.fail(new VmDiedError(`QMP socket error: ${err.message}`)));
    socket.on('close', () => this.fail(new VmDiedError('QMP socket closed')));
  }

  /**
   * Connects to QEMU's QMP socket, retrying while QEMU creates it, and leaves capability
   * negotiation mode. `alive` is polled so that a QEMU that died is not waited for.
   */
  static async connect(
    path: string,
    options: { timeoutMs: number; alive: () => boolean },
  ): Promise<QmpClient> {
    const deadline = Date.now() + options.timeoutMs;
    for (;;) {
      if (!options.alive()) throw new VmDiedError('QEMU exited before its QMP socket opened');
      try {
        const socket = await new Promise<Socket>((resolve, reject) => {
          const s = connect(path);
          s.once('connect', () => {
            s.off('error', reject);
            resolve(s);
          });
          s.once('error', reject);
        });
        const client = new QmpClient(socket);
        let timer: NodeJS.Timeout | undefined;
        try {
          await Promise.race([
            client.greeting,
            new Promise<never>((_, reject) => {
              timer = setTimeout(
                () => reject(new VmTimeoutError('no QMP greeting')),
                Math.max(1, deadline - Date.now()),
              );
            }),
          ]);
        } finally {
          clearTimeout(timer);
        }
        await client.execute('qmp_capabilities', undefined, Math.max(1000, deadline - Date.now()));
        return client;
      } catch (err) {
        if (err instanceof RunnerError) throw err;
        if (Date.now() > deadline)
          throw new VmTimeoutError(
            `QMP socket ${path} did not open within ${options.timeoutMs} ms`,
          );
        await sleep(5);
      }
    }
  }

  /** Runs one command; rejects with the QMP error description, or on timeout. */
  execute<T = unknown>(
    command: string,
    args?: Record<string, unknown>,
    timeoutMs = 10_000,
  ): Promise<T> {
    if (this.closed) return Promise.reject(this.closed);
    return new Promise<T>((resolve, reject) => {
      const timer = setTimeout(() => {
        const i = this.pending.findIndex((p) => p.timer === timer);
        if (i >= 0) this.pending.splice(i, 1);
        reject(new VmTimeoutError(`QMP ${command} did not answer within ${timeoutMs} ms`));
        // A late answer would be matched to the wrong command: the connection is unusable now.
        this.fail(new VmTimeoutError(`QMP ${command} timed out`));
      }, timeoutMs);
      this.pending.push({ resolve: resolve as (v: unknown) => void, reject, timer, command });
      this.socket.write(
        `${JSON.stringify(args === undefined ? { execute: command } : { execute: command, arguments: args })}\n`,
      );
    });
  }

  /** Subscribes to events; returns the unsubscribe function. */
  onEvent(listener: (e: QmpEvent) => void): () => void {
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  }

  /** Resolves on the first event named `name` (and matching `filter`), or rejects on timeout. */
  waitForEvent(
    name: string,
    timeoutMs: number,
    filter: (e: QmpEvent) => boolean = () => true,
  ): Promise<QmpEvent> {
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        off();
        reject(new VmTimeoutError(`no QMP ${name} event within ${timeoutMs} ms`));
      }, timeoutMs);
      const off = this.onEvent((e) => {
        if (e.event === name && filter(e)) {
          clearTimeout(timer);
          off();
          resolve(e);
        }
      });
    });
  }

  close(): void {
    this.fail(new VmDiedError('QMP client closed'));
  }

  private onData(chunk: string): void {
    this.buffer += chunk;
    if (this.buffer.length > MAX_LINE_BYTES && !this.buffer.includes('\n')) {
      this.fail(new VmDiedError('QMP sent an over-long line'));
      return;
    }
    let nl: number;
    while ((nl = this.buffer.indexOf('\n')) >= 0) {
      const line = this.buffer.slice(0, nl).trim();
      this.buffer = this.buffer.slice(nl + 1);
      if (line === '') continue;
      let msg: Record<string, unknown>;
      try {
        msg = JSON.parse(line) as Record<string, unknown>;
      } catch {
        this.fail(new VmDiedError(`QMP sent a line that is not JSON: ${line.slice(0, 80)}`));
        return;
      }
      if ('QMP' in msg) this.greeted();
      else if ('event' in msg) for (const l of this.listeners) l(msg as unknown as QmpEvent);
      else if ('return' in msg || 'error' in msg) {
        const p = this.pending.shift();
        if (!p) continue;
        clearTimeout(p.timer);
        if ('error' in msg) {
          const e = msg.error as { class?: string; desc?: string };
          p.reject(new VmStateError(`QMP ${p.command}: ${e.desc ?? e.class ?? 'error'}`));
        } else p.resolve(msg.return);
      }
    }
  }

  private fail(err: Error): void {
    if (this.closed) return;
    this.closed = err;
    for (const p of this.pending.splice(0)) {
      clearTimeout(p.timer);
      p.reject(err);
    }
    this.socket.destroy();
  }
}
