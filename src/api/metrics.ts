import { Counter, Gauge, Histogram, Registry, collectDefaultMetrics } from 'prom-client';
import type { JobResult, PoolStats } from '../pool/index.js';
import type { Status } from '../protocol/index.js';
import type { ClusterView } from '../cluster/index.js';
import type { QueueStats } from '../queue/index.js';

/** Where the gauges read their values at scrape time. */
export interface MetricSources {
  queue(): QueueStats;
  pool(): PoolStats;
  /** A cluster's view (API nodes of a cluster only). */
  cluster?: () => Promise<ClusterView>;
}

const SECONDS = [0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 120, 300];

/**
 * The service's Prometheus metrics, in a registry of its own (never prom-client's global one,
 * so two apps in one process, as in tests, do not collide).
 */
export class ApiMetrics {
  readonly registry = new Registry();
  private readonly jobs: Counter<'language' | 'status'>;
  private readonly jobSeconds: Histogram<'language'>;
  private readonly acquireSeconds: Histogram<'pool_hit'>;
  private readonly httpRequests: Counter<'method' | 'route' | 'status_code'>;
  private readonly httpSeconds: Histogram<'method' | 'route'>;
  private readonly rejected: Counter<'code'>;
  private readonly vmSeconds: Histogram<'kind' | 'language'>;
  private readonly internal: Counter<'where'>;

  constructor(sources: MetricSources, options: { defaultMetrics?: boolean } = {}) {
    const registers = [this.registry];
    if (options.defaultMetrics !== false)
      collectDefaultMetrics({ register: this.registry, prefix: 'runner_process_' });
    this.jobs = new Counter({
      name: 'runner_jobs_total',
      help: 'Jobs that ended, by language and status.',
      labelNames: ['language', 'status'],
      registers,
    });
    this.jobSeconds = new Histogram({
      name: 'runner_job_duration_seconds',
      help: 'Request-to-result time of a job.',
      labelNames: ['language'],
      buckets: SECONDS,
      registers,
    });
    this.acquireSeconds = new Histogram({
      name: 'runner_vm_acquire_duration_seconds',
      help: 'Time to get a VM for a job: a ready one (pool_hit=true) or a snapshot restore (pool_hit=false).',
      labelNames: ['pool_hit'],
      buckets: [0.001, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30],
      registers,
    });
    this.httpRequests = new Counter({
      name: 'runner_http_requests_total',
      help: 'HTTP requests, by method, route and status code.',
      labelNames: ['method', 'route', 'status_code'],
      registers,
    });
    this.httpSeconds = new Histogram({
      name: 'runner_http_request_duration_seconds',
      help: 'HTTP request time.',
      labelNames: ['method', 'route'],
      buckets: SECONDS,
      registers,
    });
    this.vmSeconds = new Histogram({
      name: 'runner_vm_lifecycle_duration_seconds',
      help: 'Cold boots (kind=boot: to the agent hello, for a snapshot) and snapshot restores (kind=restore: to the agent reseeded).',
      labelNames: ['kind', 'language'],
      buckets: [0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 20, 60, 120],
      registers,
    });
    this.internal = new Counter({
      name: 'runner_internal_errors_total',
      help: 'Bugs of the service itself (INTERNAL: an unexpected exception), by where they surfaced; apart from sandbox failures, which are runner_jobs_total{status="sandbox_error"}.',
      labelNames: ['where'],
      registers,
    });
    this.rejected = new Counter({
      name: 'runner_http_rejected_total',
      help: 'Requests refused with an error, by error code.',
      labelNames: ['code'],
      registers,
    });
    new Gauge({
      name: 'runner_queue_depth',
      help: 'Jobs waiting for a VM.',
      registers,
      collect() {
        this.set(sources.queue().queued);
      },
    });
    new Gauge({
      name: 'runner_queue_running',
      help: 'Jobs holding a VM slot.',
      registers,
      collect() {
        this.set(sources.queue().running);
      },
    });
    new Gauge({
      name: 'runner_pool_vms',
      help: 'VMs of the pool by state.',
      labelNames: ['state'],
      registers,
      collect() {
        const s = sources.pool();
        this.set({ state: 'live' }, s.live);
        this.set({ state: 'busy' }, s.busy);
        this.set({ state: 'starting' }, s.starting);
        this.set(
          { state: 'ready' },
          Object.values(s.ready).reduce((a, b) => a + b, 0),
        );
      },
    });
    const cluster = sources.cluster;
    if (cluster !== undefined) {
      // Read once per scrape, shared by the gauges below (each collect awaits the same read).
      let scrape: { at: number; view: Promise<ClusterView> } | null = null;
      const view = (): Promise<ClusterView> => {
        if (scrape === null || Date.now() - scrape.at > 500)
          scrape = { at: Date.now(), view: cluster() };
        return scrape.view;
      };
      new Gauge({
        name: 'runner_cluster_queue_depth',
        help: 'Jobs waiting in the shared queue, by language.',
        labelNames: ['language'],
        registers,
        async collect() {
          this.reset();
          for (const [language, q] of Object.entries((await view()).queues))
            this.set({ language }, q.waiting);
        },
      });
      new Gauge({
        name: 'runner_cluster_oldest_job_age_seconds',
        help: 'Age of the oldest job waiting in the shared queue, by language.',
        labelNames: ['language'],
        registers,
        async collect() {
          this.reset();
          for (const [language, q] of Object.entries((await view()).queues))
            this.set({ language }, q.oldestMs / 1000);
        },
      });
      new Gauge({
        name: 'runner_cluster_workers',
        help: 'Live workers (a heartbeat within 10 s), by whether they drain.',
        labelNames: ['draining'],
        registers,
        async collect() {
          const workers = (await view()).workers;
          this.set({ draining: 'false' }, workers.filter((w) => !w.draining).length);
          this.set({ draining: 'true' }, workers.filter((w) => w.draining).length);
        },
      });
      new Gauge({
        name: 'runner_cluster_slots',
        help: 'Job slots of the live workers: all (capacity), running, free.',
        labelNames: ['state'],
        registers,
        async collect() {
          const v = await view();
          this.set({ state: 'capacity' }, v.capacity);
          this.set({ state: 'running' }, v.running);
          this.set({ state: 'free' }, v.free);
        },
      });
    }
    new Gauge({
      name: 'runner_pool_capacity',
      help: 'Most VMs alive at once.',
      registers,
      collect() {
        this.set(sources.pool().capacity);
      },
    });
    new Gauge({
      name: 'runner_pool_acquires',
      help: 'VM acquisitions since start: hits (a ready VM), misses (restored on demand), failures.',
      labelNames: ['outcome'],
      registers,
      collect() {
        const s = sources.pool();
        this.set({ outcome: 'hit' }, s.hits);
        this.set({ outcome: 'miss' }, s.misses);
        this.set({ outcome: 'failure' }, s.failures);
      },
    });
    new Gauge({
      name: 'runner_pool_warm_ups',
      help: 'VMs the pool warmed up (the language test program run once) before marking them ready.',
      registers,
      collect() {
        this.set(sources.pool().warmUps);
      },
    });
  }

  /** Counts one engine job. */
  job(language: string, status: Status, totalMs: number, timings?: JobResult['timings']): void {
    this.jobs.inc({ language, status });
    this.jobSeconds.observe({ language }, totalMs / 1000);
    if (timings)
      this.acquireSeconds.observe({ pool_hit: String(timings.poolHit) }, timings.acquireMs / 1000);
  }

  http(method: string, route: string, statusCode: number, seconds: number): void {
    this.httpRequests.inc({ method, route, status_code: String(statusCode) });
    this.httpSeconds.observe({ method, route }, seconds);
  }

  /** Counts one cold boot or restore. */
  vm(kind: 'boot' | 'restore', language: string, ms: number): void {
    this.vmSeconds.observe({ kind, language }, ms / 1000);
  }

  /** Counts one bug of ours (an INTERNAL error), where it surfaced: `engine` or `http`. */
  internalError(where: 'engine' | 'http'): void {
    this.internal.inc({ where });
  }

  rejection(code: string): void {
    this.rejected.inc({ code });
  }

  async text(): Promise<string> {
    return this.registry.metrics();
  }

  get contentType(): string {
    return this.registry.contentType;
  }
}
