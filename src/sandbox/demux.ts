import { SandboxFailureError, VmTimeoutError } from '../errors.js';
import type { AgentMessage, HostMessage } from '../protocol/index.js';
import type { AgentChannel } from '../vmm/index.js';
import type { JobChannel } from '../pool/index.js';

interface Waiter {
  resolve(message: AgentMessage): void;
  reject(err: Error): void;
  timer: NodeJS.Timeout | null;
}

/** One job's messages, in arrival order, read like a channel of its own. */
class Route implements JobChannel {
  private readonly queue: AgentMessage[] = [];
  private readonly waiters: Waiter[] = [];
  private failed: Error | null = null;

  constructor(private readonly out: AgentChannel) {}

  send(message: HostMessage): Promise<void> {
    return this.out.send(message);
  }

  next(timeoutMs?: number): Promise<AgentMessage> {
    const queued = this.queue.shift();
    if (queued !== undefined) return Promise.resolve(queued);
    if (this.failed) return Promise.reject(this.failed);
    return new Promise<AgentMessage>((resolve, reject) => {
      const waiter: Waiter = { resolve, reject, timer: null };
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

  deliver(message: AgentMessage): void {
    const waiter = this.waiters.shift();
    if (waiter === undefined) {
      this.queue.push(message);
      return;
    }
    if (waiter.timer) clearTimeout(waiter.timer);
    waiter.resolve(message);
  }

  fail(err: Error): void {
    this.failed ??= err;
    for (const w of this.waiters.splice(0)) {
      if (w.timer) clearTimeout(w.timer);
      w.reject(err);
    }
  }
}

/**
 * Several jobs side by side on one agent channel (a sandbox's commands, cells and file calls):
 * one reader takes every message and hands it to the route of its job id. A message of no
 * open route (a job that ended) is dropped. A new `hello` means the agent began another
 * session, and every open job is lost with the old one; so is everything when the channel
 * closes.
 */
export class AgentDemux {
  private readonly routes = new Map<string, Route>();
  private closed: Error | null = null;

  constructor(
    private readonly channel: AgentChannel,
    private readonly log?: (line: string) => void,
  ) {
    void this.read();
  }

  /** The channel of the job `id` (its messages from now on), until `close(id)`. */
  open(id: string): JobChannel {
    const route = new Route(this.channel);
    if (this.closed) route.fail(this.closed);
    else this.routes.set(id, route);
    return route;
  }

  /** Forgets a job's route (its late messages are dropped). */
  close(id: string): void {
    this.routes.delete(id);
  }

  /** Stops reading: every open job fails with `reason`. The channel itself is the VM's. */
  stop(reason: Error = new SandboxFailureError('the sandbox stopped')): void {
    this.fail(reason);
  }

  private fail(err: Error): void {
    this.closed ??= err;
    for (const route of this.routes.values()) route.fail(err);
    this.routes.clear();
  }

  private async read(): Promise<void> {
    for (;;) {
      if (this.closed) return;
      let message: AgentMessage;
      try {
        message = await this.channel.next();
      } catch (err) {
        this.fail(err instanceof Error ? err : new SandboxFailureError(String(err)));
        return;
      }
      if (this.closed) return;
      if (message.type === 'hello') {
        this.fail(
          new SandboxFailureError('the agent restarted its session; running calls are lost'),
        );
        this.closed = null;
        continue;
      }
      const id = 'id' in message ? message.id : null;
      const route = id === null ? undefined : this.routes.get(id);
      if (route !== undefined) route.deliver(message);
      else this.log?.(`sandbox channel: dropped a late ${message.type} message (${id ?? 'no id'})`);
    }
  }
}
