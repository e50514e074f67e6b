export type { JobQueue, JobRecords, NewJobRecord, Orphan, QueueStats } from './types.js';
export { StoreRecords } from './records.js';
export { LocalQueue } from './local.js';
export {
  checkJobMove,
  JobStore,
  type JobRecord,
  type JobState,
  type JobStoreOptions,
} from './store.js';
export {
  fitOutput,
  withoutOutput,
  type ResultWithOutput,
  type StoredOutput,
  type StoredStage,
} from './outputs.js';
