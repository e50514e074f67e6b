/**
 * The HTTP service: a native API (/v1) and a Piston-compatible one (/api/v2), built by a
 * factory that never listens (buildApp), and the process around it (startServer).
 */
export { buildApp, type App, type AppDeps } from './app.js';
export { startServer, type RunningServer } from './server.js';
export { generateOpenApi } from './openapi.js';
export { JobService, type ApiEngine } from './service.js';
export { ApiMetrics } from './metrics.js';
export { ApiKeys, RateLimiter } from './auth.js';
