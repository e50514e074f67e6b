import type { VmTiming } from '../pool/index.js';
import { STATUS_CODES } from 'node:http';
import { join } from 'node:path';
import type { Socket } from 'node:net';
import { Readable } from 'node:stream';
import Fastify, {
  type FastifyBaseLogger,
  type FastifyError,
  type FastifyReply,
  type FastifyRequest,
  type FastifyServerOptions,
} from 'fastify';
import swagger from '@fastify/swagger';
import swaggerUi from '@fastify/swagger-ui';
import websocket from '@fastify/websocket';
import type { IncomingMessage } from 'node:http';
import type { TypeBoxTypeProvider } from '@fastify/type-provider-typebox';
import { dataPaths, type Settings } from '../config/index.js';
import {
  ERROR_CATALOGUE,
  type ErrorCode,
  RequestInvalidError,
  RunnerError,
  ShuttingDownError,
} from '../errors.js';
import {
  JobStore,
  LocalQueue,
  StoreRecords,
  type JobQueue,
  type JobRecords,
} from '../queue/index.js';
import { AGENT_VERSION } from '../version.js';
import { ApiKeys, RateLimiter } from './auth.js';
import type { ApiContext, ApiInstance } from './context.js';
import { ApiMetrics } from './metrics.js';
import { e2bErrorBody, e2bPrefix, registerE2bRoutes } from './e2b/index.js';
import { judge0Prefix, registerJudge0Routes } from './judge0/index.js';
import { registerLiveRoutes, takeUrlKey } from './live/index.js';
import { registerPistonRoutes } from './piston.js';
import { defaultBuiltDir, registerPlayground } from '../playground/index.js';
import { JobService, type ApiEngine } from './service.js';
import { registerSandboxRoutes } from './sandboxes/index.js';
import { registerV1Routes } from './v1.js';

/** What buildApp needs. The app never listens: the caller does (or uses inject() in tests). */
export interface AppDeps {
  readonly engine: ApiEngine;
  readonly settings: Settings;
  /** The job records: a SQLite JobStore (a single box) or any JobRecords (a cluster's). */
  readonly jobStore: JobStore | JobRecords;
  /** Defaults to an in-process queue as wide as the pool, holding settings.queueMax. */
  readonly queue?: JobQueue;
  readonly logger?: FastifyServerOptions['logger'];
  /** A logger of the caller's (shared with the engine, so one job's lines meet in one log). */
  readonly loggerInstance?: FastifyBaseLogger;
  /** Process metrics (CPU, heap, ...) in /metrics; off in tests. */
  readonly processMetrics?: boolean;
  /** On close, how long pending callbacks may still try after the last job ended (ms). */
  readonly callbackGraceMs?: number;
}

/** An app and the handles its owner needs for start-up and shutdown. */
export interface App {
  readonly app: ApiInstance;
  readonly service: JobService;
  readonly queue: JobQueue;
  /** Stops taking jobs (readiness turns 503) before the server closes. */
  beginDrain(): void;
}

/** The OpenAPI document's base; paths and schemas come from the routes. */
const OPENAPI_BASE = {
  openapi: '3.0.3',
  info: {
    title: 'Runner Codes',
    version: AGENT_VERSION,
    description:
      'Runs untrusted code, each job in its own throwaway microVM. A native API under /v1, a Piston-compatible one under /api/v2 and a Judge0 CE-compatible one at the root (or RUNNER_JUDGE0_PREFIX). Generated from the route schemas (npm run openapi).',
  },
  tags: [
    { name: 'v1', description: 'The native API' },
    { name: 'sandboxes', description: 'The native API: sandboxes kept across calls' },
    { name: 'piston', description: 'Piston API v2 compatibility' },
    { name: 'judge0', description: 'Judge0 CE compatibility (docs/judge0.md)' },
    { name: 'health', description: 'Health, readiness and metrics' },
  ],
  components: {
    securitySchemes: {
      bearer: {
        type: 'http' as const,
        scheme: 'bearer',
        description: 'Authorization: Bearer KEY (when RUNNER_API_KEYS is set)',
      },
      apiKey: { type: 'apiKey' as const, in: 'header' as const, name: 'X-API-Key' },
      judge0Token: {
        type: 'apiKey' as const,
        in: 'header' as const,
        name: 'X-Auth-Token',
        description: "Judge0's header; the same keys as RUNNER_API_KEYS (Judge0 routes only)",
      },
    },
  },
};

/** Bodies above this go to the socket in chunks, made as the client reads. */
const STREAM_BODY_BYTES = 64 * 1024;
/** UTF-16 code units (or bytes) per chunk of a streamed body. */
const CHUNK_UNITS = 64 * 1024;

/**
 * A serialized body handed out in chunks as the socket drains, so that a connection holds the
 * body once (the string) rather than also a full copy in its write buffer. `release` is told
 * of every byte handed out, and of the rest when the stream is destroyed unfinished.
 */
class BodyStream extends Readable {
  private offset = 0;
  private unsent: number;

  constructor(
    private body: string | Buffer,
    bytes: number,
    private readonly release: (bytes: number) => void,
  ) {
    super();
    this.unsent = bytes;
  }

  override _read(): void {
    const body = this.body;
    if (this.offset >= body.length) {
      this.body = '';
      this.push(null);
      return;
    }
    let end = Math.min(body.length, this.offset + CHUNK_UNITS);
    let chunk: Buffer;
    if (typeof body === 'string') {
      // Never split a surrogate pair: each half alone would be encoded as U+FFFD.
      const last = body.charCodeAt(end - 1);
      if (end < body.length && last >= 0xd800 && last <= 0xdbff) end--;
      chunk = Buffer.from(body.slice(this.offset, end), 'utf8');
    } else {
      chunk = body.subarray(this.offset, end);
    }
    this.offset = end;
    this.handOut(chunk.length);
    this.push(chunk);
  }

  override _destroy(err: Error | null, callback: (err?: Error | null) => void): void {
    this.body = '';
    this.handOut(this.unsent);
    callback(err);
  }

  private handOut(bytes: number): void {
    const n = Math.min(bytes, this.unsent);
    this.unsent -= n;
    this.release(n);
  }
}

/** What one connection holds for its client. */
interface Connection {
  /** Body bytes of its responses not yet handed to the socket. */
  unsentBytes: number;
  /** Responses started (onSend) and not yet closed. */
  responses: number;
  /** Runs out when the client reads nothing for the write timeout; null with no response. */
  timer: NodeJS.Timeout | null;
}

/**
 * Bounds what a client that does not read its responses costs: a connection whose responses
 * make no progress (the socket never drains) for `writeTimeoutMs` is destroyed, and so is one
 * whose unsent response bytes (socket.writableLength plus the bodies not yet handed to the
 * socket, pipelined ones included) would go over `maxBufferBytes`. Large bodies are streamed
 * so that they are held once. Progress is the socket draining, which the kernel reports only
 * once about a third of its send buffer is free (up to some 1.4 MB read by the client), so a
 * timeout must leave a slow reader time for that much.
 */
class ResponseGuard {
  private readonly connections = new WeakMap<Socket, Connection>();

  constructor(
    private readonly limits: { readonly writeTimeoutMs: number; readonly maxBufferBytes: number },
    private readonly warn: (msg: string) => void,
  ) {}

  /** The onSend step: checks the cap, watches the response, and streams a large body. */
  onSend(req: FastifyRequest, reply: FastifyReply, payload: unknown): unknown {
    const socket = req.raw.socket;
    const conn = this.connection(socket);
    const body = typeof payload === 'string' || Buffer.isBuffer(payload) ? payload : null;
    const bytes = body === null ? 0 : Buffer.byteLength(body);
    // A mock socket (inject) has no write buffer.
    const unsent = (socket.writableLength ?? 0) + conn.unsentBytes + bytes;
    if (unsent > this.limits.maxBufferBytes) {
      this.warn(
        `dropped the connection of ${req.ip}: ${unsent} response bytes unsent, over the cap of ${this.limits.maxBufferBytes}`,
      );
      socket.destroy();
      return null;
    }
    this.watch(socket, conn, reply);
    if (body === null || bytes <= STREAM_BODY_BYTES || req.method === 'HEAD') return payload;
    conn.unsentBytes += bytes;
    reply.header('content-length', String(bytes));
    return new BodyStream(body, bytes, (n) => {
      conn.unsentBytes -= n;
    });
  }

  private connection(socket: Socket): Connection {
    let conn = this.connections.get(socket);
    if (conn === undefined) {
      const c: Connection = { unsentBytes: 0, responses: 0, timer: null };
      // The client read what was buffered: progress, so the deadline starts again.
      socket.on('drain', () => c.timer?.refresh());
      this.connections.set(socket, c);
      conn = c;
    }
    return conn;
  }

  private watch(socket: Socket, conn: Connection, reply: FastifyReply): void {
    conn.responses++;
    if (conn.timer === null) {
      conn.timer = setTimeout(() => {
        this.warn(
          `dropped a connection whose client read nothing of its responses for ${this.limits.writeTimeoutMs} ms`,
        );
        socket.destroy();
      }, this.limits.writeTimeoutMs);
      conn.timer.unref();
    }
    // 'close' follows 'finish' (all handed to the kernel) and an aborted connection alike.
    reply.raw.once('close', () => {
      if (--conn.responses > 0 || conn.timer === null) return;
      clearTimeout(conn.timer);
      conn.timer = null;
    });
  }
}

/** An error as the API reports it. */
interface ApiError {
  status: number;
  code: string;
  message: string;
}

const firstValidationMessage = (err: FastifyError): string => {
  const v = err.validation?.[0];
  if (v === undefined) return err.message;
  const where = `${err.validationContext ?? 'body'}${v.instancePath.replace(/\//g, '.').replace(/\.(\d+)/g, '[$1]')}`;
  const params = v.params;
  if (v.keyword === 'additionalProperties')
    return `${where} has an unknown field ${JSON.stringify(params.additionalProperty)}`;
  if (v.keyword === 'required')
    return `${where} is missing the field ${JSON.stringify(params.missingProperty)}`;
  if (v.keyword === 'enum' && Array.isArray(params.allowedValues))
    return `${where} must be one of ${params.allowedValues.map((x) => JSON.stringify(x)).join(', ')}`;
  return `${where} ${v.message ?? 'is invalid'}`;
};

/** Maps anything a handler or Fastify threw to a status, a stable code and a clear message. */
function toApiError(err: unknown, bodyLimitBytes: number): ApiError {
  if (err instanceof RunnerError)
    return { status: err.status, code: err.code, message: err.message };
  const e = err as FastifyError;
  const r = (code: ErrorCode, message: string): ApiError => ({
    status: ERROR_CATALOGUE[code].status,
    code,
    message,
  });
  if (e.validation !== undefined) return r('REQUEST_INVALID', firstValidationMessage(e));
  switch (e.code) {
    case 'FST_ERR_CTP_BODY_TOO_LARGE':
      return r('PAYLOAD_TOO_LARGE', `the body is over the cap of ${bodyLimitBytes} bytes`);
    case 'FST_ERR_CTP_INVALID_MEDIA_TYPE':
      return r('CONTENT_TYPE_UNSUPPORTED', 'the body must be application/json');
    case 'FST_ERR_CTP_EMPTY_JSON_BODY':
      return r('REQUEST_INVALID', 'the body is empty; send a JSON object');
    case 'FST_ERR_CTP_INVALID_JSON_BODY':
      return r('REQUEST_INVALID', `the body is not valid JSON: ${e.message}`);
    default:
      break;
  }
  if (e instanceof SyntaxError)
    return r('REQUEST_INVALID', `the body is not valid JSON: ${e.message}`);
  if (typeof e.statusCode === 'number' && e.statusCode >= 400 && e.statusCode < 500) {
    return { status: e.statusCode, code: 'REQUEST_INVALID', message: e.message };
  }
  // Anything else is a bug of ours, not the sandbox's: INTERNAL, counted apart.
  return { status: 500, code: 'INTERNAL', message: 'internal error' };
}

/**
 * The Piston routes in a scope of their own. Piston's most used npm client and many bots send the
 * JSON body as `text/plain;charset=UTF-8` (what fetch sends for a string body) or with no content
 * type at all; Piston itself takes them. So here, and only here, a body of any content type is
 * parsed as JSON (a missing content type comes to the catch-all parser too); a body that is not
 * JSON is a 400 as usual. Every other route keeps its 415.
 */
function pistonScope(ctx: ApiContext) {
  return (scope: ApiInstance, _opts: unknown, done: (err?: Error) => void): void => {
    scope.addContentTypeParser('*', { parseAs: 'string' }, (_req, body, parsed) => {
      const text = typeof body === 'string' ? body : body.toString('utf8');
      if (text.trim() === '') {
        parsed(new RequestInvalidError('the body is empty; send a JSON object'), undefined);
        return;
      }
      try {
        parsed(null, JSON.parse(text) as unknown);
      } catch (err) {
        parsed(
          new RequestInvalidError(`the body is not valid JSON: ${(err as Error).message}`),
          undefined,
        );
      }
    });
    registerPistonRoutes(scope.withTypeProvider<TypeBoxTypeProvider>(), ctx);
    done();
  };
}

/**
 * Builds the HTTP service: both APIs, their schemas and OpenAPI document, API keys, rate
 * limits, caps, metrics and the job service. Never listens; the caller owns the engine and the
 * job store and closes them after the app.
 */
export function buildApp(deps: AppDeps): App {
  const { engine, settings } = deps;
  // An API key given as ?key= on a WebSocket route, taken off the URL before routing and
  // logging (so it never reaches a log line), and read by the auth hook.
  const urlKeys = new WeakMap<IncomingMessage, string>();
  const app = Fastify({
    rewriteUrl: (req) => {
      const { url, key } = takeUrlKey(req.url ?? '/');
      if (key !== undefined) {
        urlKeys.set(req, key);
        // Fastify keeps the URL as it came here, and some serializers log it.
        (req as IncomingMessage & { originalUrl?: string }).originalUrl = url;
      }
      return url;
    },
    ...(deps.loggerInstance !== undefined
      ? { loggerInstance: deps.loggerInstance }
      : { logger: deps.logger ?? false }),
    bodyLimit: settings.bodyLimitBytes,
    requestTimeout: settings.requestTimeoutMs,
    keepAliveTimeout: settings.keepAliveTimeoutMs,
    // Node checks the header and request deadlines only this often (30 s by default).
    http: { connectionsCheckingInterval: 1000 },
    return503OnClosing: true,
    forceCloseConnections: 'idle',
    ajv: {
      customOptions: {
        removeAdditional: false,
        coerceTypes: false,
        useDefaults: false,
        allErrors: false,
      },
    },
  }).withTypeProvider<TypeBoxTypeProvider>();
  // Slowloris: the headers must arrive within this; Node requires it to be at most requestTimeout.
  app.server.headersTimeout = Math.min(settings.headersTimeoutMs, settings.requestTimeoutMs);
  // Only JSON bodies: a text/plain body gets 415 instead of a confusing schema error. The Piston
  // routes take JSON under any content type in their own scope (pistonScope below).
  app.removeContentTypeParser('text/plain');

  const queue =
    deps.queue ??
    new LocalQueue({
      concurrency: engine.runSlots ?? engine.pool.stats().capacity,
      maxQueued: settings.queueMax,
    });
  const clusterView = engine.cluster?.bind(engine);
  const metrics = new ApiMetrics(
    {
      queue: () => queue.stats(),
      pool: () => engine.pool.stats(),
      ...(clusterView !== undefined && { cluster: clusterView }),
    },
    { defaultMetrics: deps.processMetrics ?? false },
  );
  const onVm = (t: VmTiming): void => metrics.vm(t.kind, t.language, t.ms);
  engine.events?.on('vm', onVm);
  app.addHook('onClose', (_app, done) => {
    engine.events?.off('vm', onVm);
    done();
  });
  const records =
    deps.jobStore instanceof JobStore ? new StoreRecords(deps.jobStore) : deps.jobStore;
  const service = new JobService(engine, queue, records, metrics, settings, {
    info: (m) => app.log.info(m),
    warn: (m) => app.log.warn(m),
    error: (m) => app.log.error(m),
  });
  let draining = false;
  const ctx: ApiContext = { engine, settings, service, queue, metrics, draining: () => draining };
  const keys = new ApiKeys(settings.apiKeys);
  const e2bBase = e2bPrefix(settings.e2bPrefix);
  const limiter = new RateLimiter(settings.rateLimitPerMinute);

  app.decorateRequest('owner', null);

  // Before the body is read: a request without a key, or over its rate, costs no buffering.
  app.addHook('onRequest', (req, _reply, done) => {
    try {
      const config = req.routeOptions.config;
      if (config.public !== true && !req.url.startsWith('/docs')) {
        // Judge0's clients send their key as X-Auth-Token: the same keys, under Judge0's header.
        const token = req.headers['x-auth-token'];
        const urlKey = urlKeys.get(req.raw);
        const headers =
          config.judge0 === true &&
          typeof token === 'string' &&
          req.headers['x-api-key'] === undefined
            ? { ...req.headers, 'x-api-key': token }
            : urlKey !== undefined &&
                req.headers['x-api-key'] === undefined &&
                req.headers.authorization === undefined
              ? { ...req.headers, 'x-api-key': urlKey }
              : req.headers;
        req.owner = keys.check(headers);
        if (config.createsJobs === true) {
          if (draining)
            throw new ShuttingDownError('the server is shutting down and takes no new jobs');
          limiter.take(req.owner ?? req.ip);
        }
      }
      done();
    } catch (err) {
      done(err as FastifyError);
    }
  });

  app.addHook('onResponse', (req, reply, done) => {
    // An upgrade refused (401, 429, 503, 404): its socket left the HTTP server's hands, so
    // nothing else ends it (the websocket plugin's own hook does not run once auth threw).
    if (req.headers.upgrade?.toLowerCase() === 'websocket' && reply.statusCode >= 400)
      req.raw.socket.destroy();
    metrics.http(
      req.method,
      req.routeOptions.url ?? 'unmatched',
      reply.statusCode,
      reply.elapsedTime / 1000,
    );
    done();
  });

  const guard = new ResponseGuard(
    {
      writeTimeoutMs: settings.responseWriteTimeoutMs,
      maxBufferBytes: settings.maxResponseBufferBytes,
    },
    (m) => app.log.warn(m),
  );
  app.addHook('onSend', (req, reply, payload, done) => {
    done(null, guard.onSend(req, reply, payload));
  });

  app.setErrorHandler(async (err: unknown, req: FastifyRequest, reply: FastifyReply) => {
    const e = toApiError(err, settings.bodyLimitBytes);
    if (e.status >= 500 && e.code !== 'QUEUE_FULL' && e.code !== 'SHUTTING_DOWN')
      req.log.error({ err }, 'request failed');
    metrics.rejection(e.code);
    if (e.code === 'INTERNAL') metrics.internalError('http');
    if (e.code === 'QUEUE_FULL' || e.code === 'SHUTTING_DOWN')
      reply.header('retry-after', String(queue.retryAfterSeconds()));
    if (e.code === 'RATE_LIMITED' && err instanceof RunnerError) {
      const details = err.details as { retryAfterSeconds?: number } | undefined;
      reply.header('retry-after', String(details?.retryAfterSeconds ?? 60));
    }
    if (e.code === 'UNAUTHORIZED') reply.header('www-authenticate', 'Bearer');
    reply.code(e.status);
    if (req.url.startsWith('/api/v2/')) return { message: e.message };
    if (req.routeOptions.config.judge0 === true) return { error: e.message };
    const e2b = e2bErrorBody(req.routeOptions.config, e.status, e.message);
    if (e2b !== undefined) return e2b;
    return {
      statusCode: e.status,
      code: e.code,
      error: STATUS_CODES[e.status] ?? 'Error',
      message: e.message,
    };
  });

  app.setNotFoundHandler(async (req: FastifyRequest, reply: FastifyReply) => {
    const message = `no route ${req.method} ${req.url.split('?')[0] ?? ''}`;
    reply.code(404);
    if (req.url.startsWith('/api/v2/')) return { message };
    if (e2bBase !== '' && (req.url === e2bBase || req.url.startsWith(`${e2bBase}/`)))
      return { code: 404, message };
    return { statusCode: 404, code: 'NOT_FOUND', error: 'Not Found', message };
  });

  void app.register(swagger, { openapi: OPENAPI_BASE });
  // Interactive jobs (GET /api/v2/connect, GET /v1/connect). A client message holds at most
  // an init (a body) or a stdin chunk: the body limit bounds both.
  // At close the open sockets end with 1001 (going away), which stops their jobs: an
  // interactive program could otherwise hold the drain until its wall-time limit.
  void app.register(websocket, {
    options: { maxPayload: settings.bodyLimitBytes },
    preClose(done) {
      for (const client of this.websocketServer.clients)
        client.close(1001, 'the server is shutting down');
      this.websocketServer.close(() => done());
    },
  });
  void app.register(swaggerUi, { routePrefix: '/docs' });
  void app.register((scope, _opts, done) => {
    const typed = scope.withTypeProvider<TypeBoxTypeProvider>();
    typed.get('/openapi.json', { config: { public: true }, schema: { hide: true } }, () =>
      app.swagger(),
    );
    registerV1Routes(typed, ctx);
    done();
  });
  // Sandboxes kept across calls, in a scope of their own (its hook answers 503 without the engine).
  void app.register((scope, _opts, done) => {
    registerSandboxRoutes(scope.withTypeProvider<TypeBoxTypeProvider>(), ctx);
    done();
  });
  void app.register(pistonScope(ctx));
  void app.register((scope, _opts, done) => {
    registerLiveRoutes(scope.withTypeProvider<TypeBoxTypeProvider>(), ctx);
    done();
  });
  // The playground page at / (public; the APIs it calls keep their keys): docs/playground.md.
  registerPlayground(app, {
    builtDir: defaultBuiltDir(),
    cacheDir: join(dataPaths(settings).buildDir, 'playground'),
  });
  void app.register(
    (scope, _opts, done) => {
      registerJudge0Routes(scope.withTypeProvider<TypeBoxTypeProvider>(), ctx);
      done();
    },
    { prefix: judge0Prefix(settings.judge0Prefix) },
  );
  // E2B's sandbox API (docs/e2b.md): its control plane, envd and code interpreter.
  void app.register(
    (scope, _opts, done) => {
      registerE2bRoutes(scope.withTypeProvider<TypeBoxTypeProvider>(), ctx);
      done();
    },
    { prefix: e2bBase },
  );

  app.addHook('preClose', (done) => {
    draining = true;
    done();
  });
  // After the server stopped taking requests and the in-flight ones ended: finish the
  // submitted jobs still queued or running, then their callbacks.
  app.addHook('onClose', async () => {
    await service.drain(deps.callbackGraceMs ?? 10_000);
  });

  return {
    app,
    service,
    queue,
    beginDrain: () => {
      draining = true;
    },
  };
}
