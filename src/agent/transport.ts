import { constants as fsc, createReadStream, createWriteStream } from 'node:fs';
import { chmod, lstat, mkdir, open, unlink, type FileHandle } from 'node:fs/promises';
import { createServer, type Server, type Socket } from 'node:net';
import { dirname } from 'node:path';
import { Duplex } from 'node:stream';
import { setTimeout as sleep } from 'node:timers/promises';
import { ConfigInvalidError } from '../errors.js';
import { errnoOf } from './files.js';
import type { AgentServer } from './server.js';
import { messageOf } from './stage.js';

/** A way for the host to reach the agent. */
export interface Transport {
  /** Starts accepting the host; resolves once ready. */
  start(): Promise<void>;
  /** Stops accepting and ends the current session. */
  close(): Promise<void>;
}

/**
 * Listens on a unix socket (mode 0600: only root, never the job's user, may connect). One host
 * session at a time: a connection while one is active gets an AGENT_BUSY error frame and is
 * closed. For vsock the guest init bridges `VSOCK-LISTEN:5000,fork` to this socket with socat.
 */
export class UnixTransport implements Transport {
  private server: Server | null = null;
  private readonly sockets = new Set<Socket>();

  constructor(
    private readonly agent: AgentServer,
    readonly path: string,
    private readonly log: (line: string) => void = () => undefined,
  ) {}

  async start(): Promise<void> {
    await mkdir(dirname(this.path), { recursive: true, mode: 0o700 });
    // A socket left by an earlier agent is replaced; anything else at the path is an error.
    try {
      const st = await lstat(this.path);
      if (!st.isSocket()) {
        throw new ConfigInvalidError(`${this.path} exists and is not a socket`);
      }
      await unlink(this.path);
    } catch (err) {
      if (errnoOf(err) !== 'ENOENT') throw err;
    }
    const server = createServer((socket) => this.accept(socket));
    this.server = server;
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(this.path, () => {
        server.off('error', reject);
        resolve();
      });
    });
    server.on('error', (err) => this.log(`unix socket error: ${err.message}`));
    await chmod(this.path, 0o600);
  }

  async close(): Promise<void> {
    const server = this.server;
    this.server = null;
    for (const s of this.sockets) s.destroy();
    if (server) await new Promise<void>((resolve) => server.close(() => resolve()));
  }

  private accept(socket: Socket): void {
    socket.on('error', () => undefined);
    if (this.agent.busy) {
      this.agent.refuse(socket);
      return;
    }
    this.sockets.add(socket);
    socket.once('close', () => this.sockets.delete(socket));
    void this.agent.serve(socket);
  }
}

export interface SerialOptions {
  /** Wait between closing the port and opening it again (after EOF, EIO, EBUSY, ENOENT). */
  readonly reopenDelayMs?: number;
  /**
   * After opening, how long the port must stay readable before the hello is sent: while no
   * host is connected, reads return end-of-file at once, and a hello written then would block
   * until some later host connects and then reach it stale.
   */
  readonly helloDelayMs?: number;
}

/**
 * A virtio-serial port (the guest side of QEMU's `virtserialport`, e.g.
 * /dev/virtio-ports/runner). Quirks: the port can be opened only once (EBUSY on a second open),
 * and reads return end-of-file while no host is connected. So: open, serve one session, and
 * when the stream ends (EOF, or EIO from a pty in tests) close, wait, reopen and serve a new
 * session with a new hello. A char device is not a socket to libuv, so net.Socket cannot wrap
 * it; fs streams on the fd (blocking reads on the thread pool) work, and the fd is closed only
 * after the pending read returns, so at most one read is ever outstanding.
 */
export class SerialTransport implements Transport {
  private stopped = false;
  private loop: Promise<void> | null = null;
  private current: Duplex | null = null;

  constructor(
    private readonly agent: AgentServer,
    readonly device: string,
    private readonly options: SerialOptions = {},
    private readonly log: (line: string) => void = () => undefined,
  ) {}

  start(): Promise<void> {
    this.loop ??= this.run();
    return Promise.resolve();
  }

  async close(): Promise<void> {
    this.stopped = true;
    this.current?.destroy();
    await this.loop;
  }

  private async run(): Promise<void> {
    const delayMs = this.options.reopenDelayMs ?? 100;
    let lastError = '';
    while (!this.stopped) {
      let handle: FileHandle;
      try {
        handle = await open(this.device, fsc.O_RDWR | fsc.O_NOCTTY);
      } catch (err) {
        const why = `${errnoOf(err) ?? ''} ${messageOf(err)}`;
        if (why !== lastError) this.log(`cannot open ${this.device}: ${messageOf(err)}; retrying`);
        lastError = why;
        await sleep(delayMs);
        continue;
      }
      lastError = '';
      try {
        await this.session(handle);
      } catch (err) {
        this.log(`serial session failed: ${messageOf(err)}`);
      } finally {
        await handle.close().catch(() => undefined);
      }
      if (!this.stopped) await sleep(delayMs);
    }
  }

  /** One session on an open port; resolves when both directions are closed. */
  private async session(handle: FileHandle): Promise<void> {
    const fd = handle.fd;
    const readable = createReadStream('', { fd, autoClose: false, highWaterMark: 64 * 1024 });
    const writable = createWriteStream('', { fd, autoClose: false });
    const readClosed = new Promise<void>((r) => readable.once('close', () => r()));
    const writeClosed = new Promise<void>((r) => writable.once('close', () => r()));
    readable.on('error', () => undefined);
    writable.on('error', () => undefined);
    const duplex = Duplex.from({ readable, writable });
    duplex.on('error', () => undefined);
    duplex.once('close', () => {
      readable.destroy();
      writable.destroy();
    });
    this.current = duplex;
    try {
      await this.agent.serve(duplex, { helloDelayMs: this.options.helloDelayMs ?? 50 });
    } finally {
      this.current = null;
      duplex.destroy();
      readable.destroy();
      writable.destroy();
      // Destroying waits for an in-flight read or write before it reports close.
      await Promise.all([readClosed, writeClosed]);
    }
  }
}
