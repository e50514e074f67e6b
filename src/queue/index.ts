export type { JobQueue, QueueStats } from './types.js';
export { LocalQueue } from './local.js';
export { JobStore, type JobRecord, type JobState } from './store.js';
