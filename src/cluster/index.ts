/**
 * Many hosts, one queue (BullMQ on Redis): API nodes put prepared jobs on a queue per
 * language (ClusterEngine, the engine of `runner serve --redis`), VM hosts take them when a
 * slot is free (ClusterWorker, `runner worker --redis`). docs/scaling.md has the design.
 */
export { ClusterEngine, type ClusterEngineOptions, type ClusterView } from './client.js';
export { RedisJobRecords, type RedisRecordsOptions } from './records.js';
export {
  ClusterWorker,
  WARM_STREAK_MAX,
  type ClusterWorkerOptions,
  type WorkerEngine,
} from './worker.js';
export {
  BEAT_STALE_MS,
  clusterKeys,
  redisOptions,
  type ClusterOptions,
  type RedisConnection,
  type WorkerBeat,
} from './names.js';
export {
  apiLive,
  cancelLive,
  ControlEntrySchema,
  LIVE_KEPT_MS,
  LIVE_RELAY_WINDOW_BYTES,
  LiveEntrySchema,
  watchLive,
  workerLive,
  type ApiLive,
  type WorkerLive,
} from './live.js';
export {
  ClusterJobSchema,
  ClusterResultSchema,
  fromClusterJob,
  fromClusterResult,
  toClusterJob,
  type ClusterJob,
  type ClusterResult,
} from './wire.js';
