import { CallbackUrlInvalidError, EgressDeniedError } from '../errors.js';
import { EgressPolicy } from '../net/index.js';

/**
 * Checks a callbackUrl at submission: http(s) only, no credentials, an allowed host
 * (callbackAllowedHosts), and no IP-literal host the egress policy refuses (EGRESS_DENIED, a
 * 400 whose message starts with the field). Host names are checked when the callback connects.
 */
export function checkCallbackUrl(
  raw: string,
  allowedHosts: readonly string[],
  egress: EgressPolicy,
): string {
  let url: URL;
  try {
    url = new URL(raw);
  } catch {
    throw new CallbackUrlInvalidError(
      `callbackUrl ${JSON.stringify(raw.slice(0, 100))} is not a URL`,
    );
  }
  if (url.protocol !== 'http:' && url.protocol !== 'https:') {
    throw new CallbackUrlInvalidError(
      `callbackUrl must be http or https, not ${url.protocol.replace(/:$/, '')}`,
    );
  }
  if (url.username !== '' || url.password !== '') {
    throw new CallbackUrlInvalidError('callbackUrl must not carry credentials');
  }
  // URL keeps IPv6 hosts in brackets; the allow list is written without them.
  const host = url.hostname.replace(/^\[|\]$/g, '');
  if (allowedHosts.length > 0 && !allowedHosts.includes(host)) {
    throw new CallbackUrlInvalidError(
      `callbackUrl host ${host} is not allowed (allowed: ${allowedHosts.join(', ')})`,
    );
  }
  egress.checkUrl(url, 'callbackUrl');
  return url.href;
}

/** How callbacks are delivered. */
export interface CallbackOptions {
  readonly attempts: number;
  readonly backoffMs: number;
  readonly timeoutMs: number;
  readonly log?: (msg: string) => void;
  /** The rule every delivery is checked against when it connects (default: refuse non-public). */
  readonly egress?: EgressPolicy;
}

const MAX_BACKOFF_MS = 60_000;

/**
 * Delivers results to callback URLs: a JSON POST (or PUT), retried on network errors and non-2xx
 * answers, waiting `backoffMs`, then twice that, and so on (capped at a minute). Every try goes
 * through the egress policy, checked on the address it connects to; a refused address is final
 * (logged once, not retried). Redirects are not followed. Pending deliveries are tracked so a
 * drain can wait for them, and aborted by `close()`.
 */
export class CallbackSender {
  private readonly pending = new Set<Promise<boolean>>();
  private readonly abort = new AbortController();
  private readonly egress: EgressPolicy;

  constructor(private readonly options: CallbackOptions) {
    this.egress = options.egress ?? new EgressPolicy();
  }

  /**
   * Starts a delivery in the background; the promise says whether it got through. POST for the
   * native API; Judge0's callbacks are a PUT.
   */
  send(url: string, body: unknown, method: 'POST' | 'PUT' = 'POST'): Promise<boolean> {
    const p = this.deliver(url, JSON.stringify(body), method).finally(() => this.pending.delete(p));
    this.pending.add(p);
    return p;
  }

  get inFlight(): number {
    return this.pending.size;
  }

  /** Waits for pending deliveries up to `graceMs`, then aborts what is left. */
  async close(graceMs: number): Promise<void> {
    if (this.pending.size > 0) {
      let timer: NodeJS.Timeout | undefined;
      await Promise.race([
        Promise.allSettled([...this.pending]),
        new Promise((r) => (timer = setTimeout(r, graceMs))),
      ]);
      clearTimeout(timer);
    }
    this.abort.abort();
    await Promise.allSettled([...this.pending]);
  }

  private async deliver(url: string, payload: string, method: 'POST' | 'PUT'): Promise<boolean> {
    let wait = this.options.backoffMs;
    for (let attempt = 1; attempt <= this.options.attempts; attempt++) {
      if (this.abort.signal.aborted) return false;
      let why: string;
      const timeout = AbortSignal.timeout(this.options.timeoutMs);
      try {
        const status = await this.egress.send(url, {
          method,
          headers: { 'content-type': 'application/json', 'user-agent': 'runner-codes-callback' },
          body: payload,
          signal: AbortSignal.any([this.abort.signal, timeout]),
        });
        if (status >= 200 && status < 300) return true;
        why =
          status >= 300 && status < 400
            ? `HTTP ${status} (redirects are not followed)`
            : `HTTP ${status}`;
      } catch (err) {
        if (err instanceof EgressDeniedError) {
          // The address will be refused on every try: give up now.
          this.options.log?.(`callback ${url} refused, not retried: ${err.message}`);
          return false;
        }
        why = timeout.aborted
          ? `no answer in ${this.options.timeoutMs} ms`
          : err instanceof Error
            ? err.message
            : String(err);
      }
      this.options.log?.(
        `callback ${url} attempt ${attempt}/${this.options.attempts} failed: ${why}`,
      );
      if (attempt < this.options.attempts) {
        await sleep(wait, this.abort.signal);
        wait = Math.min(MAX_BACKOFF_MS, wait * 2);
      }
    }
    return false;
  }
}

function sleep(ms: number, signal: AbortSignal): Promise<void> {
  return new Promise((resolve) => {
    const timer = setTimeout(done, ms);
    function done(): void {
      clearTimeout(timer);
      signal.removeEventListener('abort', done);
      resolve();
    }
    signal.addEventListener('abort', done, { once: true });
  });
}
