import { mkdirSync } from 'node:fs';
import { dirname } from 'node:path';
import Database from 'better-sqlite3';
import { JobNotFoundError, SandboxFailureError } from '../errors.js';
import type { Status } from '../protocol/index.js';

/**
 * The life of a submitted job: `queued` → `running` → `done`, or `queued` → `done` when it ends
 * without running (the server restarted, or it failed before it reached a VM). `done` is final.
 */
export type JobState = 'queued' | 'running' | 'done';

/** Which states each transition may start from. */
const LEGAL_FROM: Readonly<Record<JobState, readonly JobState[]>> = {
  queued: [],
  running: ['queued'],
  done: ['queued', 'running'],
};

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
 * every job the crashed run left queued or running. One process owns the file at a time.
 */
export class JobStore {
  private readonly db: Database.Database;

  constructor(file: string) {
    if (file !== ':memory:') mkdirSync(dirname(file), { recursive: true });
    this.db = new Database(file);
    this.db.pragma('journal_mode = WAL');
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
        finished_at INTEGER
      );
      CREATE INDEX IF NOT EXISTS jobs_state ON jobs (state);
      CREATE INDEX IF NOT EXISTS jobs_finished ON jobs (finished_at);
    `);
  }

  /** Records a newly accepted job as queued. */
  create(job: { id: string; language: string; version: string | null; owner: string | null; callbackUrl: string | null }, now = Date.now()): JobRecord {
    this.db
      .prepare(
        `INSERT INTO jobs (id, state, language, version, owner, callback_url, created_at)
         VALUES (?, 'queued', ?, ?, ?, ?, ?)`,
      )
      .run(job.id, job.language, job.version, job.owner, job.callbackUrl, now);
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

  /** queued|running → done, with the final status and result body. */
  finish(id: string, status: Status, result: unknown, now = Date.now()): JobRecord {
    this.transition(id, 'done', 'status = ?, result = ?, finished_at = ?', [status, JSON.stringify(result), now]);
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

  /** Deletes finished jobs older than `maxAgeMs`; returns how many. */
  prune(maxAgeMs: number, now = Date.now()): number {
    return this.db.prepare(`DELETE FROM jobs WHERE state = 'done' AND finished_at < ?`).run(now - maxAgeMs).changes;
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

  private transition(id: string, to: JobState, set: string, values: unknown[]): void {
    const from = LEGAL_FROM[to];
    const marks = from.map(() => '?').join(', ');
    const changes = this.db
      .prepare(`UPDATE jobs SET state = ?, ${set} WHERE id = ? AND state IN (${marks})`)
      .run(to, ...values, id, ...from).changes;
    if (changes === 0) {
      const job = this.get(id);
      if (job === undefined) throw new JobNotFoundError(`no job ${id}`);
      throw new SandboxFailureError(`job ${id} cannot go from ${job.state} to ${to}`);
    }
  }

  private require(id: string): JobRecord {
    const job = this.get(id);
    if (job === undefined) throw new JobNotFoundError(`no job ${id}`);
    return job;
  }
}
