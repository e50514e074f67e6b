/**
 * The jobs that may run at once on this host: a job takes a slot before it takes a VM and
 * gives it back once its result is in. Under TCG a guest counts the time its vCPU thread is
 * not scheduled as the running process's CPU time, so a host with more running VMs than cores
 * would change a program's measured CPU time, and so its verdict, with its neighbours' load;
 * one slot per core (of vCPUs) keeps a verdict the same alone and under a full host.
 */
export class RunSlots {
  private free: number;
  private readonly waiting: ((granted: boolean) => void)[] = [];

  constructor(readonly size: number) {
    this.free = size;
  }

  /** Jobs holding a slot now. */
  get running(): number {
    return this.size - this.free;
  }

  /** Jobs waiting for a slot now. */
  get queued(): number {
    return this.waiting.length;
  }

  /**
   * Waits for a slot; resolves its release (call it once), or null when `signal` aborted the
   * wait (no slot is held then).
   */
  async take(signal?: AbortSignal): Promise<(() => void) | null> {
    if (signal?.aborted === true) return null;
    if (this.free > 0) {
      this.free--;
      return this.releaser();
    }
    const granted = await new Promise<boolean>((resolve) => {
      const waiter = (ok: boolean): void => {
        signal?.removeEventListener('abort', onAbort);
        resolve(ok);
      };
      const onAbort = (): void => {
        const i = this.waiting.indexOf(waiter);
        if (i >= 0) this.waiting.splice(i, 1);
        waiter(false);
      };
      signal?.addEventListener('abort', onAbort, { once: true });
      this.waiting.push(waiter);
    });
    return granted ? this.releaser() : null;
  }

  private releaser(): () => void {
    let released = false;
    return () => {
      if (released) return;
      released = true;
      const next = this.waiting.shift();
      // The slot passes straight to the next waiter; otherwise it is free again.
      if (next !== undefined) next(true);
      else this.free++;
    };
  }
}

/** One slot per `vcpus` of the host's cores (at least one), unless `configured` is set (> 0). */
export function defaultRunSlots(configured: number, cores: number, vcpus: number): number {
  if (configured > 0) return configured;
  return Math.max(1, Math.floor(cores / Math.max(1, vcpus)));
}
