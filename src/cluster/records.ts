import { Redis } from 'ioredis';
import { JobNotFoundError, JobStateError } from '../errors.js';
import type { Status } from '../protocol/index.js';
import type { JobRecord, JobRecords, NewJobRecord, Orphan } from '../queue/index.js';
import { BEAT_STALE_MS, clusterKeys, redisOptions, type ClusterOptions } from './names.js';

/**
 * Moves a record atomically: ARGV[1] the allowed from-states (comma-separated), ARGV[2] the new
 * state, ARGV[3] a JSON object of fields to set, ARGV[4] ms to keep it after the move (0: as
 * it is). Returns the new record, or an error naming the state it was in.
 */
const MOVE = `
local text = redis.call('GET', KEYS[1])
if not text then return redis.error_reply('NOTFOUND') end
local rec = cjson.decode(text)
local ok = false
for s in string.gmatch(ARGV[1], '[^,]+') do if rec.state == s then ok = true end end
if not ok then return redis.error_reply('STATE ' .. rec.state) end
rec.state = ARGV[2]
for k, v in pairs(cjson.decode(ARGV[3])) do rec[k] = v end
local out = cjson.encode(rec)
if tonumber(ARGV[4]) > 0 then
  redis.call('SET', KEYS[1], out, 'PX', ARGV[4])
  redis.call('ZREM', KEYS[2], rec.id)
  redis.call('HDEL', KEYS[3], rec.id)
else
  redis.call('SET', KEYS[1], out, 'KEEPTTL')
end
return out
`;

/** How a stored record looks: the API's JobRecord as JSON (cjson turns null into a sentinel). */
function parse(text: string): JobRecord {
  const raw = JSON.parse(text) as Record<string, unknown>;
  const orNull = (v: unknown): unknown => (v === undefined ? null : v);
  return {
    id: raw.id as string,
    state: raw.state as JobRecord['state'],
    language: raw.language as string,
    version: orNull(raw.version) as string | null,
    owner: orNull(raw.owner) as string | null,
    callbackUrl: orNull(raw.callbackUrl) as string | null,
    status: orNull(raw.status) as Status | null,
    result: orNull(raw.result),
    createdAt: raw.createdAt as number,
    startedAt: orNull(raw.startedAt) as number | null,
    finishedAt: orNull(raw.finishedAt) as number | null,
  };
}

/** Settings of the Redis job records. */
export interface RedisRecordsOptions extends ClusterOptions {
  /** This API node's id: the records it accepted are its own until it dies. */
  readonly node: string;
  /** How long finished records are kept. */
  readonly retentionMs: number;
}

/**
 * The cluster's job records, in Redis, so that any API node answers for any job: one key per
 * record (JSON; finished ones expire after the retention), a sorted set of the open ones and
 * the API node that accepted each, so that the open jobs of a node that died can be found.
 * Moves are atomic (a Lua script checks the state), with the single box's rules.
 */
export class RedisJobRecords implements JobRecords {
  private readonly keys;
  private readonly redis: Redis;
  private timer: NodeJS.Timeout | null = null;

  constructor(private readonly options: RedisRecordsOptions) {
    this.keys = clusterKeys(options.prefix);
    this.redis = new Redis(redisOptions(options.redisUrl));
    this.redis.defineCommand('rcMove', { numberOfKeys: 3, lua: MOVE });
  }

  private key(id: string): string {
    return this.keys.record(id);
  }

  private get open(): string {
    return this.keys.open;
  }

  private get nodes(): string {
    return this.keys.jobNodes;
  }

  /** Starts this node's heartbeat: while it beats, its open jobs are nobody else's to end. */
  async start(): Promise<void> {
    await this.beat();
    this.timer = setInterval(() => void this.beat(), 2000);
    this.timer.unref();
  }

  /** The API nodes that beat within BEAT_STALE_MS. */
  async liveNodes(): Promise<Set<string>> {
    const beats = await this.redis.hgetall(this.keys.apiNodes);
    const now = Date.now();
    return new Set(
      Object.entries(beats)
        .filter(([, at]) => now - Number(at) < BEAT_STALE_MS)
        .map(([node]) => node),
    );
  }

  private async beat(): Promise<void> {
    try {
      await this.redis.hset(this.keys.apiNodes, this.options.node, String(Date.now()));
    } catch {
      // Redis away: the next beat tries again; a node that cannot beat is taken for gone.
    }
  }

  async create(job: NewJobRecord): Promise<JobRecord> {
    const now = Date.now();
    const record: JobRecord = {
      id: job.id,
      language: job.language,
      version: job.version,
      owner: job.owner,
      callbackUrl: job.callbackUrl,
      state: 'queued',
      status: null,
      result: null,
      createdAt: now,
      startedAt: null,
      finishedAt: null,
    };
    const { spec, ...fields } = job;
    const stored = { ...record, ...fields };
    const tx = this.redis
      .multi()
      .set(this.key(job.id), JSON.stringify(stored), 'NX')
      .zadd(this.open, now, job.id)
      .hset(this.nodes, job.id, this.options.node);
    if (spec !== undefined)
      tx.set(this.keys.spec(job.id), JSON.stringify(spec), 'PX', this.options.retentionMs);
    const set = await tx.exec();
    if (set?.[0]?.[1] !== 'OK') {
      const existing = await this.get(job.id);
      throw new JobStateError(
        `job ${job.id} exists already (${existing?.state ?? 'gone'}); nothing goes back to queued`,
      );
    }
    return record;
  }

  async get(id: string): Promise<JobRecord | undefined> {
    const text = await this.redis.get(this.key(id));
    return text === null ? undefined : parse(text);
  }

  markRunning(id: string): Promise<JobRecord> {
    return this.move(id, ['queued'], 'running', { startedAt: Date.now() }, 0);
  }

  finish(id: string, status: Status, result: unknown): Promise<JobRecord> {
    return this.move(
      id,
      ['queued', 'running'],
      'done',
      { status, result, finishedAt: Date.now() },
      this.options.retentionMs,
    );
  }

  /**
   * The open jobs of API nodes that are gone (no heartbeat within BEAT_STALE_MS), each
   * claimed for this node (atomically: only one node takes each) so that only it ends it.
   */
  async orphans(): Promise<Orphan[]> {
    const liveNodes = await this.liveNodes();
    const owners = await this.redis.hgetall(this.nodes);
    const out: Orphan[] = [];
    for (const [id, node] of Object.entries(owners)) {
      // A live node's jobs are its own (this node's too); only a silent node's are taken.
      if (liveNodes.has(node)) continue;
      // Claimed only if it still names the node it named when read.
      const claimed = await this.redis.eval(
        "if redis.call('HGET', KEYS[1], ARGV[1]) == ARGV[2] then redis.call('HSET', KEYS[1], ARGV[1], ARGV[3]) return 1 end return 0",
        1,
        this.nodes,
        id,
        node,
        this.options.node,
      );
      if (claimed !== 1) continue;
      const record = await this.get(id);
      if (record !== undefined && record.state !== 'done') {
        const spec = await this.redis.get(this.keys.spec(id));
        out.push({ record, spec: spec === null ? null : (JSON.parse(spec) as unknown) });
      } else await this.redis.hdel(this.nodes, id);
    }
    return out;
  }

  /**
   * Nothing at start: in a cluster the open jobs of a node that stopped are adopted by a live
   * node (JobService.adoptOrphans, every few seconds), which waits for their results instead
   * of ending them.
   */
  recover(): Promise<JobRecord[]> {
    return Promise.resolve([]);
  }

  /** Finished records expire by themselves (their TTL is the retention). */
  prune(): Promise<number> {
    return Promise.resolve(0);
  }

  async close(): Promise<void> {
    if (this.timer) clearInterval(this.timer);
    await this.redis.hdel(this.keys.apiNodes, this.options.node).catch(() => 0);
    this.redis.disconnect();
  }

  private async move(
    id: string,
    from: readonly string[],
    to: string,
    fields: Record<string, unknown>,
    keepMs: number,
  ): Promise<JobRecord> {
    try {
      const out = await (
        this.redis as unknown as {
          rcMove(...args: (string | number)[]): Promise<string>;
        }
      ).rcMove(
        this.key(id),
        this.open,
        this.nodes,
        from.join(','),
        to,
        JSON.stringify(fields),
        keepMs,
      );
      return parse(out);
    } catch (err) {
      const message = err instanceof Error ? err.message : String(err);
      if (message.includes('NOTFOUND')) throw new JobNotFoundError(`no job ${id}`);
      const state = /STATE (\w+)/.exec(message)?.[1];
      if (state !== undefined)
        throw new JobStateError(`job ${id} cannot go from ${state} to ${to}`);
      throw err;
    }
  }
}
