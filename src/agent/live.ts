import type { Writable } from 'node:stream';
import type { AgentMessage, LiveSignal } from '../protocol/index.js';

/** Signals kept for a stage that has not started yet (more are dropped). */
const MAX_PENDING_SIGNALS = 8;
/** Most stdin bytes the agent holds for a live job before the run stage can take them. */
export const MAX_QUEUED_STDIN_BYTES = 1024 * 1024;

/**
 * The live side of one streamed job (an execute message with `stream`), shared by its stages:
 * output goes to the host as it is read, within a window of unacknowledged bytes; stdin and
 * signals come from the host. Back-pressure both ways:
 * - output: past `windowBytes` in flight the stage stops reading the program's pipes (the
 *   program then blocks on write, at the pipe's 64 KiB) until the host's `credit`s make room;
 * - stdin: each chunk is acknowledged (an agent `credit`) once it is in the program's pipe, so
 *   the host keeps a bounded amount in flight; before the run stage starts the agent holds at
 *   most MAX_QUEUED_STDIN_BYTES and drops (and reports) the rest.
 */
export class LiveJob {
  private inFlight = 0;
  private waiting: (() => void) | null = null;
  private queued: Buffer[] = [];
  private queuedBytes = 0;
  private ended = false;
  private sink: Writable | null = null;
  private signalTo: ((signal: LiveSignal) => void) | null = null;
  private readonly pendingSignals: LiveSignal[] = [];
  /** Stdin bytes dropped because the host sent them faster than the window allows. */
  droppedStdinBytes = 0;

  constructor(
    readonly id: string,
    readonly windowBytes: number,
    private readonly send: (message: AgentMessage) => void,
  ) {}

  // ---- from the host ----

  /** The host passed `bytes` of output on: that much more may be sent. */
  credit(bytes: number): void {
    this.inFlight = Math.max(0, this.inFlight - bytes);
    if (this.inFlight < this.windowBytes && this.waiting !== null) {
      const resume = this.waiting;
      this.waiting = null;
      resume();
    }
  }

  /** Bytes for the program's stdin (held until the run stage starts). */
  stdin(data: Buffer): void {
    if (this.ended || data.length === 0) return;
    if (this.sink !== null) {
      this.write(this.sink, data);
      return;
    }
    if (this.queuedBytes + data.length > MAX_QUEUED_STDIN_BYTES) {
      this.droppedStdinBytes += data.length;
      return;
    }
    this.queued.push(data);
    this.queuedBytes += data.length;
  }

  /** The program's stdin ends (it reads end of file). */
  stdinEnd(): void {
    if (this.ended) return;
    this.ended = true;
    if (this.sink !== null) this.sink.end();
  }

  /**
   * A signal for the running stage's processes. One that comes while no stage's processes
   * exist yet (the files being written, between compile and run) waits for the next stage's,
   * so that a Stop sent as soon as the job started is not lost.
   */
  signal(signal: LiveSignal): void {
    if (this.signalTo !== null) this.signalTo(signal);
    else if (this.pendingSignals.length < MAX_PENDING_SIGNALS) this.pendingSignals.push(signal);
  }

  // ---- from the stages ----

  stageStart(stage: 'compile' | 'run'): void {
    this.send({ type: 'stage', id: this.id, stage, phase: 'start' });
  }

  stageEnd(stage: 'compile' | 'run', status: AgentStatus): void {
    this.send({ type: 'stage', id: this.id, stage, phase: 'end', status });
  }

  /** Sends a chunk the stage kept; false when the window is full (stop reading until room). */
  output(stream: 'stdout' | 'stderr', chunk: Buffer): boolean {
    if (chunk.length === 0) return this.inFlight < this.windowBytes;
    this.inFlight += chunk.length;
    this.send({ type: 'output', id: this.id, stream, data: chunk.toString('base64') });
    return this.inFlight < this.windowBytes;
  }

  /** Calls `resume` once the window has room (at once when it has). */
  whenRoom(resume: () => void): void {
    if (this.inFlight < this.windowBytes) resume();
    else this.waiting = resume;
  }

  /** Whether output is held back for want of credit. */
  get blocked(): boolean {
    return this.inFlight >= this.windowBytes;
  }

  /** The run stage's stdin pipe: what was held goes in first; the end follows if it came. */
  attachStdin(pipe: Writable): void {
    pipe.on('error', () => undefined);
    this.sink = pipe;
    for (const chunk of this.queued) this.write(pipe, chunk);
    this.queued = [];
    this.queuedBytes = 0;
    if (this.ended) pipe.end();
  }

  /** Where the host's signals go while a stage runs (null: nowhere). */
  attachSignals(to: ((signal: LiveSignal) => void) | null): void {
    this.signalTo = to;
    if (to !== null) for (const signal of this.pendingSignals.splice(0)) to(signal);
  }

  /** The stage ended: stdin and signals go nowhere now. */
  detach(): void {
    this.sink = null;
    this.signalTo = null;
  }

  /** Writes a chunk and acknowledges it once it is in the pipe (stdin back-pressure). */
  private write(pipe: Writable, data: Buffer): void {
    pipe.write(data, (err) => {
      if (err === undefined || err === null)
        this.send({ type: 'credit', id: this.id, bytes: data.length });
    });
  }
}

type AgentStatus = Extract<AgentMessage, { type: 'result' }>['status'];
