import type { WebSocket } from 'ws';
import type { Close } from './messages.js';

/**
 * Bytes a live socket may hold unsent (ws's bufferedAmount: its own queue plus the TCP
 * socket's) before the job's next event waits: a client that reads slowly holds the program
 * at the agent's window, and what the server keeps per socket stays about this much.
 */
export const LIVE_SOCKET_BUFFER_BYTES = 1024 * 1024;

/** How often a held send looks again whether the client read (ws has no drain event). */
const DRAIN_POLL_MS = 10;

/** A WebSocket with JSON messages, back-pressure and a close that happens once. */
export class LiveSocket {
  private closing = false;

  constructor(
    readonly ws: WebSocket,
    private readonly bufferBytes = LIVE_SOCKET_BUFFER_BYTES,
  ) {
    ws.once('close', () => {
      this.closing = true;
    });
  }

  /** Whether the socket is closed or closing (nothing more is sent). */
  get closed(): boolean {
    return this.closing || this.ws.readyState !== this.ws.OPEN;
  }

  /**
   * Sends one JSON message; resolves once the socket holds at most `bufferBytes` unsent (at
   * once when it does already), or when the socket closes.
   */
  send(message: unknown): Promise<void> {
    if (this.closed) return Promise.resolve();
    this.ws.send(JSON.stringify(message));
    if (this.ws.bufferedAmount <= this.bufferBytes) return Promise.resolve();
    return new Promise((resolve) => {
      const timer = setInterval(() => {
        if (this.closed || this.ws.bufferedAmount <= this.bufferBytes) {
          clearInterval(timer);
          resolve();
        }
      }, DRAIN_POLL_MS);
    });
  }

  /** Closes with `close`'s code and reason (once; later calls do nothing). */
  close(close: Close): void {
    if (this.closing) return;
    this.closing = true;
    this.ws.close(close.code, close.reason);
  }
}
