import type { Duplex } from 'node:stream';
import {
  FrameTruncatedError,
  MessageInvalidError,
  SandboxFailureError,
  VmTimeoutError,
} from '../errors.js';
import { encodeFrame, FrameDecoder, MAX_FRAME_BYTES } from './frame.js';
import type { MessageParser } from './messages.js';

export interface ChannelOptions<In> {
  /** Checks every incoming message; a throw closes the channel. */
  parse: MessageParser<In>;
  maxFrameBytes?: number;
  /**
   * A frame that has begun must be whole within this many ms, or the channel closes: a peer
   * that trickles a byte a second cannot hold the connection.
   */
  frameTimeoutMs?: number;
}

type Waiter<In> = {
  resolve: (m: In) => void;
  reject: (e: Error) => void;
  timer: NodeJS.Timeout | null;
};

/**
 * A typed, length-prefixed JSON channel over a byte stream. Messages queue until read with
 * `next()`. Any protocol violation (bad frame, bad JSON, wrong shape, trickling) destroys the
 * stream and fails every pending and later read with the same error.
 */
export class MessageChannel<In, Out> {
  private readonly decoder: FrameDecoder;
  private readonly queue: In[] = [];
  private readonly waiters: Waiter<In>[] = [];
  private closedWith: Error | null = null;
  private frameTimer: NodeJS.Timeout | null = null;
  private readonly closeListeners: ((err: Error) => void)[] = [];

  constructor(
    private readonly stream: Duplex,
    private readonly options: ChannelOptions<In>,
  ) {
    this.decoder = new FrameDecoder(options.maxFrameBytes ?? MAX_FRAME_BYTES);
    stream.on('data', (chunk: Buffer) => this.onData(chunk));
    stream.on('end', () => {
      try {
        this.decoder.end();
        this.close(new SandboxFailureError('the peer closed the channel'));
      } catch (err) {
        this.close(err as Error);
      }
    });
    stream.on('error', (err) =>
      this.close(new SandboxFailureError(`channel error: ${err.message}`, { cause: err })),
    );
    stream.on('close', () => this.close(new SandboxFailureError('the channel closed')));
  }

  /** The error the channel closed with, or null while open. */
  get closeReason(): Error | null {
    return this.closedWith;
  }

  /** Called once, when the channel closes for any reason. */
  onClose(listener: (err: Error) => void): void {
    if (this.closedWith) listener(this.closedWith);
    else this.closeListeners.push(listener);
  }

  /** Sends one message; resolves when it is handed to the stream. */
  async send(message: Out): Promise<void> {
    if (this.closedWith) throw this.closedWith;
    const frame = encodeFrame(message, this.options.maxFrameBytes ?? MAX_FRAME_BYTES);
    await new Promise<void>((resolve, reject) => {
      this.stream.write(frame, (err) => (err ? reject(err) : resolve()));
    });
  }

  /** The next message, waiting at most `timeoutMs` (no limit when undefined). */
  next(timeoutMs?: number): Promise<In> {
    const queued = this.queue.shift();
    if (queued !== undefined) return Promise.resolve(queued);
    if (this.closedWith) return Promise.reject(this.closedWith);
    return new Promise<In>((resolve, reject) => {
      const waiter: Waiter<In> = { resolve, reject, timer: null };
      if (timeoutMs !== undefined) {
        waiter.timer = setTimeout(() => {
          const i = this.waiters.indexOf(waiter);
          if (i >= 0) this.waiters.splice(i, 1);
          reject(new VmTimeoutError(`no message within ${timeoutMs} ms`));
        }, timeoutMs);
      }
      this.waiters.push(waiter);
    });
  }

  /** Closes the channel and the stream; pending reads fail with `reason`. */
  close(reason: Error = new SandboxFailureError('channel closed')): void {
    if (this.closedWith) return;
    this.closedWith = reason;
    if (this.frameTimer) clearTimeout(this.frameTimer);
    this.stream.destroy();
    for (const w of this.waiters.splice(0)) {
      if (w.timer) clearTimeout(w.timer);
      w.reject(reason);
    }
    for (const l of this.closeListeners.splice(0)) l(reason);
  }

  private onData(chunk: Buffer): void {
    if (this.closedWith) return;
    let messages: unknown[];
    try {
      messages = this.decoder.push(chunk);
      this.armFrameTimer();
      for (const raw of messages) this.deliver(this.options.parse(raw));
    } catch (err) {
      this.close(err instanceof Error ? err : new MessageInvalidError(String(err)));
    }
  }

  private deliver(message: In): void {
    const waiter = this.waiters.shift();
    if (waiter) {
      if (waiter.timer) clearTimeout(waiter.timer);
      waiter.resolve(message);
    } else {
      this.queue.push(message);
    }
  }

  private armFrameTimer(): void {
    const timeoutMs = this.options.frameTimeoutMs;
    if (timeoutMs === undefined) return;
    if (!this.decoder.midFrame) {
      if (this.frameTimer) clearTimeout(this.frameTimer);
      this.frameTimer = null;
      return;
    }
    this.frameTimer ??= setTimeout(() => {
      this.close(new FrameTruncatedError(`a frame was not complete within ${timeoutMs} ms`));
    }, timeoutMs);
  }
}
