/**
 * The engine of a host: snapshots per language, the warm VM pool, the job runner, and
 * `createEngine` that ties them to the images and the VMM driver. Everything outside imports
 * the pool from here.
 */
export {
  createEngine,
  lookupUser,
  remoteFetcher,
  sweepRunDir,
  type Engine,
  type VmTiming,
} from './engine.js';
export {
  DEADLINE_BUDGET,
  jobDeadlineMs,
  LIVE_OUTPUT_WINDOW_BYTES,
  JobTimingsSchema,
  sandboxErrorResult,
  ZERO_TIMINGS,
  prepareJob,
  type JobRequest,
  type JobResult,
  type JobTimings,
  type PreparedJob,
} from './job.js';
export {
  CLIENT_GONE_MESSAGE,
  executeOnVm,
  type JobChannel,
  JobRunner,
  LIVE_STDIN_WINDOW_BYTES,
  type LiveControls,
  type LiveEvent,
  type LiveHandlers,
  type RunnerLog,
  type RunOptions,
} from './runner.js';
export { prime, reseed, VmPool, type Lease, type PoolOptions, type PoolStats } from './pool.js';
export {
  latestBase,
  readSnapshotMeta,
  SnapshotManager,
  type RuntimeStatus,
  type SnapshotRef,
} from './snapshots.js';
