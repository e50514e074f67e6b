import { join } from 'node:path';
import { pino } from 'pino';
import type { Settings } from '../config/index.js';
import { hostname } from 'node:os';
import { ClusterEngine, RedisJobRecords } from '../cluster/index.js';
import { LanguageRegistry } from '../languages/index.js';
import { createEngine, type Engine } from '../pool/index.js';
import { JobStore } from '../queue/index.js';
import { buildApp } from './app.js';
import type { ApiInstance } from './context.js';
import type { ApiEngine } from './service.js';

/** A listening service and how to stop it. */
export interface RunningServer {
  readonly app: ApiInstance;
  /** This host's engine, or (with `redisUrl`) the cluster's, which runs no VM here. */
  readonly engine: Engine | ClusterEngine;
  /** The base URL it listens on (the real port when 0 was asked for). */
  readonly url: string;
  /**
   * Drains and stops: no new requests or jobs (503), in-flight requests and queued jobs
   * finish, callbacks get a last chance, then the VMs are destroyed and the job store closed.
   */
  close(): Promise<void>;
}

const PRUNE_EVERY_MS = 3_600_000;
/** How often an API node of a cluster looks for the open jobs of API nodes that stopped. */
const ADOPT_EVERY_MS = 5_000;

/**
 * Starts `runner serve`: opens the job store (ending the jobs a crashed run left behind),
 * builds the engine (sweeping that run's VMs), warms the configured languages in the
 * background, and listens.
 */
export async function startServer(
  settings: Settings,
  options: { engine?: Engine } = {},
): Promise<RunningServer> {
  const dataDir = settings.dataDir ?? '.';
  const clustered = settings.redisUrl !== '' && options.engine === undefined;
  // In a cluster the records live in Redis, so that any API node answers for any job.
  const redisRecords = clustered
    ? new RedisJobRecords({
        redisUrl: settings.redisUrl,
        prefix: settings.clusterPrefix,
        node: `api-${hostname()}-${process.pid}`,
        retentionMs: settings.jobRetentionHours * 3_600_000,
      })
    : null;
  const jobStore =
    redisRecords ??
    new JobStore(settings.jobStoreFile ?? join(dataDir, 'jobs.sqlite'), {
      maxBytes: settings.jobStoreMaxBytes,
    });
  // One log for the service and its engine: a job's lines carry its id in both.
  const logger = pino({ level: settings.logLevel });
  let engine: Engine | ClusterEngine;
  try {
    engine =
      options.engine ??
      (clustered
        ? new ClusterEngine(LanguageRegistry.fromDir(), {
            redisUrl: settings.redisUrl,
            prefix: settings.clusterPrefix,
            maxInFlight: settings.clusterMaxInFlight,
            maxQueued: settings.queueMax,
            queueWaitMs: settings.clusterQueueWaitMs,
            timeScalePercent: settings.timeLimitScalePercent,
            log: (line) => logger.warn(line),
          })
        : await createEngine(settings, {
            log: (line) => logger.info(line),
            warn: (line) => logger.warn(line),
          }));
  } catch (err) {
    void jobStore.close();
    throw err;
  }
  const apiEngine: ApiEngine = engine;
  const { app, service } = buildApp({
    engine: apiEngine,
    settings,
    jobStore,
    loggerInstance: logger,
    processMetrics: true,
  });
  const stopped = { done: false };
  const prune = setInterval(() => void service.prune(), PRUNE_EVERY_MS);
  // A cluster's API node finishes the open jobs of API nodes that stopped.
  const adopt = setInterval(() => {
    if (redisRecords !== null) service.adoptOrphans().catch(() => 0);
  }, ADOPT_EVERY_MS);
  adopt.unref();
  prune.unref();
  const close = async (): Promise<void> => {
    if (stopped.done) return;
    stopped.done = true;
    clearInterval(prune);
    try {
      await app.close();
    } finally {
      await engine.close();
      clearInterval(adopt);
      await jobStore.close();
    }
  };
  try {
    await redisRecords?.start();
    await app.ready();
    const ended = await service.recover();
    if (ended.length > 0)
      app.log.warn(
        `${ended.length} job(s) left unfinished by an earlier run were ended as sandbox_error`,
      );
    const local = engine instanceof ClusterEngine ? null : engine;
    for (const language of local === null ? [] : settings.warmLanguages) {
      local?.pool.warm(language).then(
        () => app.log.info(`warmed ${language}`),
        (err: unknown) =>
          app.log.error(
            `warming ${language} failed: ${err instanceof Error ? err.message : String(err)}`,
          ),
      );
    }
    const url = await app.listen({ host: settings.host, port: settings.port });
    app.log.info(
      local === null
        ? `runner serve: listening on ${url} (API node of the cluster at ${settings.redisUrl.replace(/\/\/[^@/]*@/, '//***@')}: jobs run on its workers)`
        : `runner serve: listening on ${url} (VM driver ${local.driver.constructor.name}, accel ${local.accel?.accel ?? 'as configured'})`,
    );
    return { app, engine, url, close };
  } catch (err) {
    await close();
    throw err;
  }
}
