import { ConfigInvalidError } from '../errors.js';

/** Where the cluster lives: one Redis, and a prefix so that two clusters can share it. */
export interface ClusterOptions {
  /** `redis://[user:password@]host:port[/db]`. */
  readonly redisUrl: string;
  /** Prefix of every key (default `rc`). */
  readonly prefix?: string;
}

/** The Redis keys and BullMQ queue names of a cluster. */
export function clusterKeys(prefix = 'rc'): {
  /** BullMQ's own key prefix. */
  readonly bullPrefix: string;
  /** The queue of one language's jobs. */
  queue(language: string): string;
  /** Hash: worker id -> its last {@link WorkerBeat} (JSON). */
  readonly workers: string;
  /** Hash: owner -> jobs of that owner waiting or running (the per-key share). */
  readonly owners: string;
  /** String (JSON): one job's record. */
  record(id: string): string;
  /** String (JSON): what an API node needs to finish a job another node accepted. */
  spec(id: string): string;
  /** Sorted set: the ids of the records not yet done, by creation time. */
  readonly open: string;
  /** Hash: job id -> the API node that accepted it (while it is open). */
  readonly jobNodes: string;
  /** Hash: API node id -> its last heartbeat (ms since the epoch). */
  readonly apiNodes: string;
  /** Pub/sub channel: an API node queued a job (idle workers wake up and look). */
  readonly wake: string;
  /** Stream: a job's live events, worker -> API nodes (src/cluster/live.ts). */
  liveEvents(id: string): string;
  /** Stream: a job's controls (acks, stdin, signals, cancel), API node -> worker. */
  liveControl(id: string): string;
} {
  return {
    bullPrefix: `${prefix}:bull`,
    queue: (language) => `jobs-${language}`,
    workers: `${prefix}:workers`,
    owners: `${prefix}:owners`,
    record: (id) => `${prefix}:job:${id}`,
    spec: (id) => `${prefix}:spec:${id}`,
    open: `${prefix}:open`,
    jobNodes: `${prefix}:jobnode`,
    apiNodes: `${prefix}:apinodes`,
    wake: `${prefix}:wake`,
    liveEvents: (id) => `${prefix}:live:${id}:ev`,
    liveControl: (id) => `${prefix}:live:${id}:ctl`,
  };
}

/** What a worker says of itself every two seconds. */
export interface WorkerBeat {
  readonly id: string;
  /** Jobs it may run at once. */
  readonly capacity: number;
  readonly running: number;
  readonly languages: readonly string[];
  /** When it wrote this (ms since the epoch); a beat older than {@link BEAT_STALE_MS} is a dead worker's. */
  readonly at: number;
  readonly draining: boolean;
}

/** A worker that has not beaten for this long is taken for gone. */
export const BEAT_STALE_MS = 10_000;

/** Where Redis is, in the shape both ioredis and BullMQ take. */
export interface RedisConnection {
  readonly host: string;
  readonly port: number;
  readonly db: number;
  readonly username?: string;
  readonly password?: string;
  readonly maxRetriesPerRequest: null;
}

/**
 * Connection options for ioredis and BullMQ from a redis:// URL. `maxRetriesPerRequest: null`
 * is what BullMQ's blocking commands need (STACK.md).
 */
export function redisOptions(url: string): RedisConnection {
  let parsed: URL;
  try {
    parsed = new URL(url);
  } catch {
    throw new ConfigInvalidError(`the Redis URL ${JSON.stringify(url)} is not a URL`);
  }
  if (parsed.protocol !== 'redis:')
    throw new ConfigInvalidError(
      `the Redis URL must start with redis://, not ${parsed.protocol}//`,
    );
  const db = parsed.pathname.length > 1 ? Number(parsed.pathname.slice(1)) : 0;
  if (!Number.isInteger(db) || db < 0)
    throw new ConfigInvalidError(`the Redis URL names no database number: ${parsed.pathname}`);
  return {
    host: parsed.hostname,
    port: parsed.port === '' ? 6379 : Number(parsed.port),
    db,
    ...(parsed.username !== '' && { username: decodeURIComponent(parsed.username) }),
    ...(parsed.password !== '' && { password: decodeURIComponent(parsed.password) }),
    maxRetriesPerRequest: null,
  };
}
