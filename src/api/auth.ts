import { createHash, timingSafeEqual } from 'node:crypto';
import type { IncomingHttpHeaders } from 'node:http';
import { RateLimitedError, UnauthorizedError } from '../errors.js';

const digest = (s: string): Buffer => createHash('sha256').update(s).digest();

/**
 * Optional API keys. With none configured every request is let in (owner null). A key comes as
 * `Authorization: Bearer KEY` or `X-API-Key: KEY`; keys are compared through their sha256 in
 * constant time, and a job records only a short fingerprint of its key.
 */
export class ApiKeys {
  private readonly digests: Buffer[];

  constructor(keys: readonly string[]) {
    this.digests = keys.filter((k) => k !== '').map(digest);
  }

  get enabled(): boolean {
    return this.digests.length > 0;
  }

  /**
   * Whether `owner` is the fingerprint of a key configured now (or, without keys, null): a
   * credential made for an owner (an E2B access token) stops working when its key is removed.
   */
  stillValid(owner: string | null): boolean {
    if (!this.enabled) return owner === null;
    return owner !== null && this.digests.some((d) => d.subarray(0, 8).toString('hex') === owner);
  }

  /** The caller's key fingerprint (null without keys); throws UNAUTHORIZED. */
  check(headers: IncomingHttpHeaders): string | null {
    if (!this.enabled) return null;
    const key = presentedKey(headers);
    if (key === undefined)
      throw new UnauthorizedError(
        'an API key is required (Authorization: Bearer KEY or X-API-Key: KEY)',
      );
    const d = digest(key);
    // Check every key, so the time does not tell which one matched.
    let ok = false;
    for (const known of this.digests) ok = timingSafeEqual(known, d) || ok;
    if (!ok) throw new UnauthorizedError('the API key is not valid');
    return d.subarray(0, 8).toString('hex');
  }
}

function presentedKey(headers: IncomingHttpHeaders): string | undefined {
  const header = headers['x-api-key'];
  if (typeof header === 'string' && header !== '') return header;
  const auth = headers.authorization;
  if (typeof auth === 'string') {
    const m = /^Bearer\s+(\S+)\s*$/i.exec(auth);
    if (m?.[1] !== undefined) return m[1];
  }
  return undefined;
}

interface Bucket {
  tokens: number;
  at: number;
}

/**
 * A token bucket per client: `perMinute` tokens, refilled continuously. Each job-creating
 * request takes one; an empty bucket gets RATE_LIMITED with the seconds until the next token.
 * Full buckets are forgotten when the table grows, so memory stays bounded.
 */
export class RateLimiter {
  private readonly buckets = new Map<string, Bucket>();

  constructor(
    private readonly perMinute: number,
    private readonly maxClients = 100_000,
    private readonly now: () => number = Date.now,
  ) {}

  /** Takes a token for `client`; throws RATE_LIMITED (details.retryAfterSeconds) when empty. */
  take(client: string): void {
    if (this.perMinute <= 0) return;
    const now = this.now();
    const ratePerMs = this.perMinute / 60_000;
    let bucket = this.buckets.get(client);
    if (bucket === undefined) {
      if (this.buckets.size >= this.maxClients) this.sweep(now);
      bucket = { tokens: this.perMinute, at: now };
      this.buckets.set(client, bucket);
    } else {
      bucket.tokens = Math.min(this.perMinute, bucket.tokens + (now - bucket.at) * ratePerMs);
      bucket.at = now;
    }
    if (bucket.tokens < 1) {
      const retryAfterSeconds = Math.max(1, Math.ceil((1 - bucket.tokens) / ratePerMs / 1000));
      throw new RateLimitedError(
        `rate limit of ${this.perMinute} jobs per minute reached; retry in ${retryAfterSeconds} s`,
        {
          details: { retryAfterSeconds },
        },
      );
    }
    bucket.tokens -= 1;
  }

  private sweep(now: number): void {
    const ratePerMs = this.perMinute / 60_000;
    for (const [client, b] of this.buckets) {
      if (b.tokens + (now - b.at) * ratePerMs >= this.perMinute) this.buckets.delete(client);
    }
    // Still full of active clients: drop the oldest entries (Map keeps insertion order).
    for (const client of this.buckets.keys()) {
      if (this.buckets.size < this.maxClients) break;
      this.buckets.delete(client);
    }
  }
}
