import { mkdtempSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import Database from 'better-sqlite3';
import { afterEach, beforeEach, describe, expect, test } from 'vitest';
import { JobStateError } from '../../../src/errors.js';
import { checkJobMove, JobStore, type JobState } from '../../../src/queue/index.js';

let dir: string;
beforeEach(() => {
  dir = mkdtempSync(join(tmpdir(), 'queue-store-'));
});
afterEach(() => {
  rmSync(dir, { recursive: true, force: true });
});

const job = (id: string) => ({
  id,
  language: 'python',
  version: null,
  owner: null,
  callbackUrl: null,
});

/** A result whose JSON is about `bytes` long. */
const blob = (bytes: number) => ({ stdout: 'x'.repeat(bytes) });

describe('the job state machine', () => {
  const states: JobState[] = ['queued', 'running', 'done'];
  const legal = new Set(['queued>running', 'queued>done', 'running>done']);
  for (const from of states) {
    for (const to of states) {
      const move = `${from}>${to}`;
      test(`${from} → ${to} is ${legal.has(move) ? 'legal' : 'refused with JOB_STATE'}`, () => {
        if (legal.has(move)) {
          expect(() => checkJobMove('j', from, to)).not.toThrow();
          return;
        }
        let thrown: unknown;
        try {
          checkJobMove('j', from, to);
        } catch (err) {
          thrown = err;
        }
        expect(thrown).toBeInstanceOf(JobStateError);
        expect(thrown).toMatchObject({
          code: 'JOB_STATE',
          message: `job j cannot go from ${from} to ${to}`,
        });
      });
    }
  }

  test('the store refuses every illegal move with JOB_STATE and leaves the record as it was', () => {
    const store = new JobStore(':memory:');
    try {
      store.create(job('a'));
      expect(() => store.create(job('a'))).toThrow(JobStateError); // queued → queued
      store.markRunning('a');
      expect(() => store.markRunning('a')).toThrow(JobStateError); // running → running
      expect(() => store.create(job('a'))).toThrow(JobStateError); // running → queued
      expect(store.get('a')?.state).toBe('running');
      store.finish('a', 'ok', { n: 1 });
      expect(() => store.markRunning('a')).toThrow(JobStateError); // done → running
      expect(() => store.finish('a', 'timeout', { n: 2 })).toThrow(JobStateError); // twice
      expect(() => store.create(job('a'))).toThrow(JobStateError); // done → queued
      expect(store.get('a')).toMatchObject({ state: 'done', status: 'ok', result: { n: 1 } });
      // An unknown job is not a state error.
      expect(() => store.markRunning('nope')).toThrow(
        expect.objectContaining({ code: 'JOB_NOT_FOUND' }),
      );
      expect(() => store.finish('nope', 'ok', {})).toThrow(
        expect.objectContaining({ code: 'JOB_NOT_FOUND' }),
      );
    } finally {
      store.close();
    }
  });
});

describe('the store cap', () => {
  test('finishing a job over the cap deletes the oldest finished records, never unfinished ones', () => {
    const store = new JobStore(':memory:', { maxBytes: 3500 });
    try {
      for (const id of ['a', 'b', 'c', 'd']) store.create(job(id), 0);
      store.create(job('waiting'), 0);
      store.finish('a', 'ok', blob(1000), 1);
      store.finish('b', 'ok', blob(1000), 2);
      store.finish('c', 'ok', blob(1000), 3);
      expect(store.counts().done).toBe(3);
      store.finish('d', 'ok', blob(1000), 4);
      expect(store.get('a')).toBeUndefined();
      expect(['b', 'c', 'd'].map((id) => store.get(id)?.state)).toEqual(['done', 'done', 'done']);
      expect(store.get('waiting')?.state).toBe('queued');
      expect(store.resultBytes()).toBeLessThanOrEqual(3500);
    } finally {
      store.close();
    }
  });

  test('the record just finished is kept even when it alone is over the cap', () => {
    const store = new JobStore(':memory:', { maxBytes: 1500 });
    try {
      store.create(job('old'), 0);
      store.finish('old', 'ok', blob(1000), 1);
      store.create(job('big'), 0);
      store.finish('big', 'ok', blob(2000), 2);
      expect(store.get('old')).toBeUndefined();
      expect(store.get('big')?.state).toBe('done');
    } finally {
      store.close();
    }
  });

  test('prune also enforces the cap (a store opened with a smaller one)', () => {
    const file = join(dir, 'jobs.sqlite');
    const wide = new JobStore(file);
    for (const id of ['a', 'b', 'c']) {
      wide.create(job(id), 0);
      wide.finish(id, 'ok', blob(1000), id.charCodeAt(0));
    }
    wide.close();
    const narrow = new JobStore(file, { maxBytes: 2100 });
    try {
      expect(narrow.prune(3_600_000, 1000)).toBe(1);
      expect(narrow.get('a')).toBeUndefined();
      expect(narrow.get('c')).toBeDefined();
    } finally {
      narrow.close();
    }
  });
});

describe('reclaiming space', () => {
  const pages = (file: string) => {
    const db = new Database(file, { readonly: true });
    try {
      return {
        pages: db.pragma('page_count', { simple: true }) as number,
        free: db.pragma('freelist_count', { simple: true }) as number,
      };
    } finally {
      db.close();
    }
  };

  test('deleting many large records and pruning shrinks the file', () => {
    const file = join(dir, 'jobs.sqlite');
    const store = new JobStore(file);
    for (let i = 0; i < 40; i++) {
      store.create(job(`j${i}`), 0);
      store.finish(`j${i}`, 'ok', blob(100_000), 1000);
    }
    const full = pages(file);
    expect(full.pages).toBeGreaterThan(900); // 4 MB in 4 KiB pages
    expect(store.prune(1, 10_000)).toBe(40);
    const after = pages(file);
    expect(after.free).toBe(0);
    expect(after.pages).toBeLessThan(20);
    store.close(); // checkpoints the WAL into the file
    expect(statSync(file).size).toBeLessThan(100_000);
  });

  test('an older file without auto_vacuum is switched once, and its result sizes counted', () => {
    const file = join(dir, 'old.sqlite');
    const old = new Database(file);
    old.pragma('journal_mode = WAL');
    // The schema before the store cap: no result_bytes, auto_vacuum NONE.
    old.exec(`CREATE TABLE jobs (id TEXT PRIMARY KEY, state TEXT NOT NULL, language TEXT NOT NULL,
      version TEXT, owner TEXT, callback_url TEXT, status TEXT, result TEXT,
      created_at INTEGER NOT NULL, started_at INTEGER, finished_at INTEGER)`);
    old
      .prepare(
        `INSERT INTO jobs (id, state, language, status, result, created_at, finished_at)
        VALUES ('j', 'done', 'python', 'ok', ?, 0, 1)`,
      )
      .run(JSON.stringify({ text: 'é'.repeat(100) }));
    expect(old.pragma('auto_vacuum', { simple: true })).toBe(0);
    old.close();

    const store = new JobStore(file);
    try {
      expect(store.get('j')?.result).toEqual({ text: 'é'.repeat(100) });
      expect(store.resultBytes()).toBe(
        Buffer.byteLength(JSON.stringify({ text: 'é'.repeat(100) })),
      );
    } finally {
      store.close();
    }
    const db = new Database(file, { readonly: true });
    expect(db.pragma('auto_vacuum', { simple: true })).toBe(2);
    db.close();
  });
});
