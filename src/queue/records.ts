import type { Status } from '../protocol/index.js';
import type { JobRecord, JobStore } from './store.js';
import type { JobRecords, NewJobRecord } from './types.js';

/** The single box's job records: the SQLite JobStore behind the async interface. */
export class StoreRecords implements JobRecords {
  constructor(readonly store: JobStore) {}

  create(job: NewJobRecord): Promise<JobRecord> {
    return Promise.resolve(this.store.create(job));
  }

  get(id: string): Promise<JobRecord | undefined> {
    return Promise.resolve(this.store.get(id));
  }

  markRunning(id: string): Promise<JobRecord> {
    return Promise.resolve(this.store.markRunning(id));
  }

  finish(id: string, status: Status, result: unknown): Promise<JobRecord> {
    return Promise.resolve(this.store.finish(id, status, result));
  }

  recover(
    makeResult: (job: JobRecord) => { status: Status; result: unknown },
  ): Promise<JobRecord[]> {
    return Promise.resolve(this.store.recover(makeResult));
  }

  prune(maxAgeMs: number): Promise<number> {
    return Promise.resolve(this.store.prune(maxAgeMs));
  }

  close(): Promise<void> {
    this.store.close();
    return Promise.resolve();
  }
}
