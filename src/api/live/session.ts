import type { RawData, WebSocket } from 'ws';
import { PayloadTooLargeError } from '../../errors.js';
import type { LiveControls, LiveEvent } from '../../pool/index.js';
import type { ApiContext } from '../context.js';
import type { ApiJob } from '../service.js';
import type { ExecuteResponse } from '../schemas.js';
import type { ClientAction } from './messages.js';

/** What a live session tells its protocol (Piston's or the native one) as the job runs. */
export interface SessionOutput {
  /** The job was handed to its VM: the program starts now. */
  started(job: ApiJob): void | Promise<void>;
  /** A stage or output event; the next waits for the returned promise (back-pressure). */
  event(event: LiveEvent): void | Promise<void>;
}

/** The text of a WebSocket message (ws gives a Buffer, an ArrayBuffer or fragments). */
export function textOf(data: RawData): string {
  if (Buffer.isBuffer(data)) return data.toString('utf8');
  if (Array.isArray(data)) return Buffer.concat(data).toString('utf8');
  return Buffer.from(data).toString('utf8');
}

/**
 * One interactive job on one socket, shared by both protocols: the job goes through the
 * same admission and queue as POST /v1/execute (JobService.execute: the queue cap, the
 * record, the metrics), with the socket as its live consumer. Stdin and signals that come
 * before the program starts wait for it (stdin at most maxStdinBytes); while the agent has no
 * room for more stdin, the socket is not read. The socket closing aborts the job (its VM is
 * destroyed at once).
 */
export class LiveSession {
  private controls: LiveControls | null = null;
  private readonly early: ClientAction[] = [];
  private earlyBytes = 0;
  private readonly abort = new AbortController();
  /** stdin writes in order, one at a time. */
  private writes: Promise<void> = Promise.resolve();

  constructor(
    private readonly ctx: ApiContext,
    private readonly ws: WebSocket,
  ) {
    ws.once('close', () => this.abort.abort());
  }

  /** Runs `job` to its API result (a system failure is a sandbox_error result; 4xx/503 throw). */
  run(job: ApiJob, owner: string | null, out: SessionOutput): Promise<ExecuteResponse> {
    return this.ctx.service.execute(job, owner, {
      signal: this.abort.signal,
      live: {
        onStart: (controls) => {
          this.controls = controls;
          void out.started(job);
          for (const a of this.early.splice(0)) this.apply(a);
        },
        onEvent: (event) => out.event(event),
      },
    });
  }

  /** Passes a client's stdin, stdin end or signal to the program (or keeps it until it starts). */
  apply(action: ClientAction): void {
    const controls = this.controls;
    if (controls === null) {
      if (action.kind === 'stdin') {
        this.earlyBytes += action.data.length;
        const cap = this.ctx.settings.maxStdinBytes;
        if (this.earlyBytes > cap)
          throw new PayloadTooLargeError(
            `stdin sent before the program started is over the cap of ${cap} bytes`,
          );
      }
      this.early.push(action);
      return;
    }
    if (action.kind === 'stdin') {
      this.writes = this.writes.then(async () => {
        this.ws.pause();
        try {
          await controls.stdin(action.data);
        } finally {
          this.ws.resume();
        }
      });
    } else if (action.kind === 'stdin_end') {
      this.writes = this.writes.then(() => controls.stdinEnd());
    } else if (action.kind === 'signal') {
      // At once, past any stdin still waiting for room: a Ctrl-C must not queue behind input.
      controls.signal(action.signal);
    }
  }
}
