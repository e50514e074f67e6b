import { mkdirSync } from 'node:fs';
import { dirname } from 'node:path';
import Database from 'better-sqlite3';
import { InternalError, JobNotFoundError, JobStateError } from '../errors.js';
import type { Status } from '../protocol/index.js';

/**
 * The life of a submitted job: `queued` → `running` → `done`, or `queued` → `done` when it ends
 * without running (the server restarted, or it failed before it reached a VM). `done` is final.
 */
export type JobState = 'queued' | 'running' | 'done';

/** Which states each transition may start from: a job is created queued and never goes back. */
const LEGAL_FROM: Readonly<Record<JobState, readonly JobState[]>> = {
  queued: [],
  running: ['queued'],
  done: ['queued', 'running'],
};

/** Throws JOB_STATE unless job `id` may go from `from` to `to` (the table above). */
export function checkJobMove(id: string, from: JobState, to: JobState): void {
  if (!LEGAL_FROM[to].includes(from)) throw new JobStateError(`job ${id} cannot go from ${from} to ${to}`);
}

/** Limits of a job store. */
export interface JobStoreOptions {
  /**
   * Most bytes of stored results (their JSON) in the whole store: past it, finishing a job
   * deletes the oldest finished records first, before their retention ends. The record just
   * finished is never the one deleted, so the store may go over by at most one record.
   */
  readonly maxBytes?: number;
}

/** One submitted job as stored. `result` is the API's result body, kept as JSON. */
export interface JobRecord {
  readonly id: string;
  readonly state: JobState;
  readonly language: string;
  readonly version: string | null;
  /** A fingerprint of the API key that submitted it (null without keys): others cannot read it. */
  readonly owner: string | null;
  readonly callbackUrl: string | null;
  readonly status: Status | null;
  readonly result: unknown;
  readonly createdAt: number;
  readonly startedAt: number | null;
  readonly finishedAt: number | null;
}

interface Row {
  id: string;
  state: JobState;
  language: string;
  version: string | null;
  owner: string | null;
  callback_url: string | null;
  status: Status | null;
  result: string | null;
  created_at: number;
  started_at: number | null;
  finished_at: number | null;
}

function fromRow(row: Row): JobRecord {
  return {
    id: row.id,
    state: row.state,
    language: row.language,
    version: row.version,
    owner: row.owner,
    callbackUrl: row.callback_url,
    status: row.status,
    result: row.result === null ? null : (JSON.parse(row.result) as unknown),
    createdAt: row.created_at,
    startedAt: row.started_at,
    finishedAt: row.finished_at,
  };
}

/**
 * Submitted jobs and their final results in an embedded SQLite file, written before the client
 * is told the job was accepted, so that a crash loses none: at the next start, `recover()` ends
 * every job the crashed run left queued or running. One process owns the file at a time. The
 * file stays bounded: records are pruned after their retention, or oldest first past the store
 * cap, and their pages are given back to the file system.
 */
export class JobStore {
  private readonly db: Database.Database;
  private readonly maxBytes: number;

  constructor(file: string, options: JobStoreOptions = {}) {
    this.maxBytes = options.maxBytes ?? Number.POSITIVE_INFINITY;
    if (file !== ':memory:') mkdirSync(dirname(file), { recursive: true });
    this.db = new Database(file);
    // Deleted records' pages go back to the file system (prune runs incremental_vacuum); it
    // takes effect only before the first table is created, so an older file is vacuumed below.
    this.db.pragma('auto_vacuum = INCREMENTAL');
    this.db.pragma('journal_mode = WAL');
    // A checkpointed WAL is cut back to this instead of keeping its largest size for ever.
    this.db.pragma('journal_size_limit = 67108864');
    // FULL: an accepted job must be on disk before its 202 goes out.
    this.db.pragma('synchronous = FULL');
    this.db.pragma('busy_timeout = 5000');
    this.db.exec(`
      CREATE TABLE IF NOT EXISTS jobs (
        id TEXT PRIMARY KEY,
        state TEXT NOT NULL CHECK (state IN ('queued', 'running', 'done')),
        language TEXT NOT NULL,
        version TEXT,
        owner TEXT,
        callback_url TEXT,
        status TEXT,
        result TEXT,
        created_at INTEGER NOT NULL,
        started_at INTEGER,
        finished_at INTEGER,
        result_bytes INTEGER NOT NULL DEFAULT 0
      );
    `);
    const columns = this.db.pragma('table_info(jobs)') as { name: string }[];
    if (!columns.some((c) => c.name === 'result_bytes')) {
      // A file from before the store cap: count what its results already take.
      this.db.exec(`ALTER TABLE jobs ADD COLUMN result_bytes INTEGER NOT NULL DEFAULT 0;
        UPDATE jobs SET result_bytes = length(CAST(result AS BLOB)) WHERE result IS NOT NULL;`);
    }
    // jobs_done covers the size sum and the eviction order without reading the results.
    this.db.exec(`
      CREATE INDEX IF NOT EXISTS jobs_state ON jobs (state);
      CREATE INDEX IF NOT EXISTS jobs_finished ON jobs (finished_at);
      CREATE INDEX IF NOT EXISTS jobs_done ON jobs (state, finished_at, result_bytes);
    `);
    if (this.db.pragma('auto_vacuum', { simple: true }) !== 2) this.db.exec('VACUUM');
  }

  /** Records a newly accepted job as queued; JOB_STATE when the id exists (nothing goes back to queued). */
  create(job: { id: string; language: string; version: string | null; owner: string | null; callbackUrl: string | null }, now = Date.now()): JobRecord {
    const changes = this.db
      .prepare(
        `INSERT INTO jobs (id, state, language, version, owner, callback_url, created_at)
         VALUES (?, 'queued', ?, ?, ?, ?, ?) ON CONFLICT (id) DO NOTHING`,
      )
      .run(job.id, job.language, job.version, job.owner, job.callbackUrl, now).changes;
    if (changes === 0) checkJobMove(job.id, this.require(job.id).state, 'queued');
    return this.require(job.id);
  }

  get(id: string): JobRecord | undefined {
    const row = this.db.prepare('SELECT * FROM jobs WHERE id = ?').get(id) as Row | undefined;
    return row === undefined ? undefined : fromRow(row);
  }

  /** queued → running. */
  markRunning(id: string, now = Date.now()): JobRecord {
    this.transition(id, 'running', 'started_at = ?', [now]);
    return this.require(id);
  }

  /**
   * queued|running → done, with the final status and result body (stored as given: the caller
   * decides how much output it keeps). Then, over the store cap, the oldest records go.
   */
  finish(id: string, status: Status, result: unknown, now = Date.now()): JobRecord {
    const json = JSON.stringify(result);
    this.transition(id, 'done', 'status = ?, result = ?, result_bytes = ?, finished_at = ?', [status, json, Buffer.byteLength(json), now]);
    if (this.evictOverCap(id) > 0) this.reclaim();
    return this.require(id);
  }

  /**
   * Ends every job a crashed run left queued or running, with the result `makeResult` builds
   * (a sandbox_error saying the server restarted). Returns the jobs it ended, so their
   * callbacks can still be sent.
   */
  recover(makeResult: (job: JobRecord) => { status: Status; result: unknown }, now = Date.now()): JobRecord[] {
    const rows = this.db.prepare(`SELECT * FROM jobs WHERE state IN ('queued', 'running')`).all() as Row[];
    const ended: JobRecord[] = [];
    const tx = this.db.transaction(() => {
      for (const row of rows) {
        const job = fromRow(row);
        const { status, result } = makeResult(job);
        ended.push(this.finish(job.id, status, result, now));
      }
    });
    tx();
    return ended;
  }

  /**
   * Deletes finished jobs older than `maxAgeMs` and the oldest ones past the store cap, then
   * gives the freed pages back to the file system; returns how many records went.
   */
  prune(maxAgeMs: number, now = Date.now()): number {
    const old = this.db.prepare(`DELETE FROM jobs WHERE state = 'done' AND finished_at < ?`).run(now - maxAgeMs).changes;
    const pruned = old + this.evictOverCap(null);
    this.reclaim();
    return pruned;
  }

  /** Bytes of stored results (their JSON), the quantity the store cap bounds. */
  resultBytes(): number {
    const row = this.db.prepare(`SELECT COALESCE(SUM(result_bytes), 0) AS n FROM jobs WHERE state = 'done'`).get() as { n: number };
    return row.n;
  }

  /** Jobs per state (for metrics and tests). */
  counts(): Record<JobState, number> {
    const out: Record<JobState, number> = { queued: 0, running: 0, done: 0 };
    const rows = this.db.prepare('SELECT state, COUNT(*) AS n FROM jobs GROUP BY state').all() as { state: JobState; n: number }[];
    for (const r of rows) out[r.state] = r.n;
    return out;
  }

  close(): void {
    if (this.db.open) this.db.close();
  }

  /** Deletes the oldest finished records (never `keep`) while the results are over the cap. */
  private evictOverCap(keep: string | null): number {
    if (!Number.isFinite(this.maxBytes)) return 0;
    let over = this.resultBytes() - this.maxBytes;
    if (over <= 0) return 0;
    // Reads the covering index only, oldest first, until enough bytes are found.
    const victims: number[] = [];
    const rows = this.db.prepare(`SELECT rowid AS r, id, result_bytes AS n FROM jobs WHERE state = 'done' ORDER BY finished_at`).iterate() as IterableIterator<{ r: number; id: string; n: number }>;
    for (const row of rows) {
      if (row.id === keep) continue;
      victims.push(row.r);
      over -= row.n;
      if (over <= 0) break;
    }
    const del = this.db.prepare('DELETE FROM jobs WHERE rowid = ?');
    this.db.transaction(() => {
      for (const r of victims) del.run(r);
    })();
    return victims.length;
  }

  /** Gives free pages back to the file system (auto_vacuum = INCREMENTAL keeps them otherwise). */
  private reclaim(): void {
    this.db.pragma('incremental_vacuum');
  }

  private transition(id: string, to: JobState, set: string, values: unknown[]): void {
    const from = LEGAL_FROM[to];
    const marks = from.map(() => '?').join(', ');
    const changes = this.db
      .prepare(`UPDATE jobs SET state = ?, ${set} WHERE id = ? AND state IN (${marks})`)
      .run(to, ...values, id, ...from).changes;
    if (changes === 0) {
      const job = this.require(id);
      checkJobMove(id, job.state, to);
      // The move was legal yet no row changed: only a bug of ours gets here.
      throw new InternalError(`job ${id} in ${job.state} did not move to ${to}`);
    }
  }

  private require(id: string): JobRecord {
    const job = this.get(id);
    if (job === undefined) throw new JobNotFoundError(`no job ${id}`);
    return job;
  }
}
