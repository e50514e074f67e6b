/**
 * The interactive WebSockets: Piston's GET /api/v2/connect and the native GET /v1/connect.
 * Both are adapters over the same JobService (admission, queue, records) and engine as a
 * synchronous execute; a job's socket is its live consumer.
 */
// The plugin's types add `wsHandler` to Fastify's route options.
import type {} from '@fastify/websocket';
import { UpgradeRequiredError } from '../../errors.js';
import type { ApiContext, ApiInstance } from '../context.js';
import { NATIVE_CONNECT_DOC, nativeConnect } from './native.js';
import { PISTON_CONNECT_DOC, pistonConnect } from './piston.js';

export { LIVE_SOCKET_BUFFER_BYTES, LiveSocket } from './socket.js';
export {
  nativeCloseCode,
  parseNativeMessage,
  parsePistonMessage,
  PISTON_CLOSE,
  type ClientAction,
  type Close,
} from './messages.js';
export { NATIVE_INIT_TIMEOUT_MS, nativeInit } from './native.js';
export { PISTON_INIT_TIMEOUT_MS, pistonInit } from './piston.js';

/** The paths of the WebSocket routes: the only ones that take an API key as `?key=`. */
export const LIVE_PATHS: readonly string[] = ['/api/v2/connect', '/v1/connect'];

/**
 * Takes the `key` query parameter off a URL of a WebSocket route (browsers cannot set
 * headers on a WebSocket). Returns the URL without it, which is what routing and the logs see,
 * so the key is never logged; any other URL is returned as it is, with no key.
 */
export function takeUrlKey(url: string): { url: string; key: string | undefined } {
  const q = url.indexOf('?');
  if (q < 0) return { url, key: undefined };
  const path = url.slice(0, q);
  if (!LIVE_PATHS.includes(path)) return { url, key: undefined };
  const params = new URLSearchParams(url.slice(q + 1));
  const key = params.get('key') ?? undefined;
  if (key === undefined) return { url, key: undefined };
  params.delete('key');
  const rest = params.toString();
  return { url: rest === '' ? path : `${path}?${rest}`, key };
}

/** Registers both WebSocket routes (@fastify/websocket must be registered on the app first). */
export function registerLiveRoutes(app: ApiInstance, ctx: ApiContext): void {
  // A plain GET (no upgrade) of a WebSocket route: 426 says what to do.
  const notUpgrade = (): never => {
    throw new UpgradeRequiredError('this route is a WebSocket: send Upgrade: websocket');
  };
  app.route({
    method: 'GET',
    url: '/api/v2/connect',
    config: { createsJobs: true },
    schema: PISTON_CONNECT_DOC,
    handler: notUpgrade,
    wsHandler: pistonConnect(ctx),
  });
  app.route({
    method: 'GET',
    url: '/v1/connect',
    config: { createsJobs: true },
    schema: NATIVE_CONNECT_DOC,
    handler: notUpgrade,
    wsHandler: nativeConnect(ctx),
  });
}
