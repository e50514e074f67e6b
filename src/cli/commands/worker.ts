import type { Command } from '@commander-js/extra-typings';
import { ClusterWorker } from '../../cluster/index.js';
import { loadSettings } from '../../config/index.js';
import { ConfigInvalidError } from '../../errors.js';
import { createEngine } from '../../pool/index.js';

/** `runner worker`: a VM host of the cluster, taking jobs from the shared queue. */
export function registerWorkerCommand(program: Command): void {
  program
    .command('worker')
    .description(
      'run jobs from the shared queue (Redis) on this host: a VM host of the cluster that `runner serve --redis` API nodes feed',
    )
    .option('--redis <url>', 'the Redis of the cluster (RUNNER_REDIS_URL), redis://host:port[/db]')
    .option(
      '--id <name>',
      "this worker's name in the cluster (RUNNER_WORKER_ID; default host name and pid)",
    )
    .option('--concurrency <n>', 'jobs run at once (default: the pool size, RUNNER_POOL_MAX_VMS)')
    .addHelpText(
      'after',
      '\nIt takes a job only when its pool has a free slot. SIGTERM or SIGINT drains: it takes no new job,\nfinishes the running ones, leaves the cluster and exits. docs/scaling.md has the design.',
    )
    .action(async (opts) => {
      const settings = loadSettings(process.env, {
        redisUrl: opts.redis,
        workerId: opts.id,
      });
      if (settings.redisUrl === '')
        throw new ConfigInvalidError('runner worker needs --redis URL (or RUNNER_REDIS_URL)');
      const concurrency = opts.concurrency === undefined ? undefined : Number(opts.concurrency);
      if (concurrency !== undefined && (!Number.isInteger(concurrency) || concurrency < 1))
        throw new ConfigInvalidError(
          `--concurrency must be a positive integer, not ${opts.concurrency}`,
        );
      const log = (line: string): void => {
        process.stderr.write(`${new Date().toISOString()} ${line}\n`);
      };
      const engine = await createEngine(settings, { log });
      const worker = new ClusterWorker(engine, {
        redisUrl: settings.redisUrl,
        prefix: settings.clusterPrefix,
        lockMs: settings.clusterLockMs,
        ...(settings.workerId !== '' && { id: settings.workerId }),
        ...(concurrency !== undefined && { concurrency }),
        log,
      });
      await worker.start();
      for (const language of settings.warmLanguages) {
        engine.pool.warm(language).catch((err: unknown) => {
          log(`warming ${language} failed: ${err instanceof Error ? err.message : String(err)}`);
        });
      }
      let stopping = false;
      const stop = (signal: string): void => {
        if (stopping) return;
        stopping = true;
        log(`worker ${worker.id}: ${signal}: draining (${worker.running} running)`);
        const force = setTimeout(() => {
          log(`worker ${worker.id}: drain took over ${settings.drainTimeoutMs} ms; exiting`);
          process.exit(1);
        }, settings.drainTimeoutMs);
        force.unref();
        void worker
          .drain()
          .then(() => engine.close())
          .then(() => {
            log(`worker ${worker.id}: drained; bye`);
            process.exit(0);
          });
      };
      process.on('SIGTERM', () => stop('SIGTERM'));
      process.on('SIGINT', () => stop('SIGINT'));
    });
}
