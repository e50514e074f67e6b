import type {
  FastifyBaseLogger,
  FastifyInstance,
  RawReplyDefaultExpression,
  RawRequestDefaultExpression,
  RawServerDefault,
} from 'fastify';
import type { TypeBoxTypeProvider } from '@fastify/type-provider-typebox';
import type { Settings } from '../config/index.js';
import type { JobQueue } from '../queue/index.js';
import type { ApiMetrics } from './metrics.js';
import type { ApiEngine, JobService } from './service.js';

declare module 'fastify' {
  interface FastifyContextConfig {
    /** Reachable without an API key (health, readiness, the OpenAPI document). */
    public?: boolean;
    /** Creates jobs, so it takes a token from the caller's rate-limit bucket. */
    createsJobs?: boolean;
  }
  interface FastifyRequest {
    /** The fingerprint of the caller's API key (null without keys). */
    owner: string | null;
  }
}

/** The Fastify instance with TypeBox typing of the route schemas. */
export type ApiInstance = FastifyInstance<
  RawServerDefault,
  RawRequestDefaultExpression,
  RawReplyDefaultExpression,
  FastifyBaseLogger,
  TypeBoxTypeProvider
>;

/** What the routes share (one per app, so two apps in one process stay apart). */
export interface ApiContext {
  readonly engine: ApiEngine;
  readonly settings: Settings;
  readonly service: JobService;
  readonly queue: JobQueue;
  readonly metrics: ApiMetrics;
  /** True once a drain began: readiness says so and no new jobs are taken. */
  draining(): boolean;
}
