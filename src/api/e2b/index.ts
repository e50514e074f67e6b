import { join } from 'node:path';
import type { FastifyContextConfig } from 'fastify';
import { dataPaths } from '../../config/index.js';
import { ConfigInvalidError, RequestInvalidError } from '../../errors.js';
import type { ApiContext, ApiInstance } from '../context.js';
import { codeOfStatus, ConnectError } from './connect.js';
import { registerControlRoutes } from './control.js';
import { registerEnvdRoutes } from './envd.js';
import { registerInterpreterRoutes } from './interpreter.js';
import type { E2bDeps } from './shared.js';
import { ApiKeys } from '../auth.js';
import { AccessTokens } from './tokens.js';

export { AccessTokens } from './tokens.js';
export { ENVD_VERSION } from './views.js';

/** Where the secret of the sandboxes' access tokens is kept, under the data dir. */
export const TOKEN_SECRET_FILE = 'e2b-token.key';

/** Paths our own APIs hold: an E2B prefix there would shadow them or be shadowed. */
const TAKEN = ['/v1', '/api', '/docs', '/openapi.json', '/healthz', '/readyz', '/metrics'];

/** The `e2bPrefix` setting checked: empty, or `/a/b` (trailing slashes dropped). */
export function e2bPrefix(raw: string): string {
  const p = raw.trim().replace(/\/+$/, '');
  if (p !== '' && !/^\/[A-Za-z0-9._~\/-]+$/.test(p))
    throw new ConfigInvalidError(
      `RUNNER_E2B_PREFIX must be empty or a path like /e2b, not ${JSON.stringify(raw)}`,
    );
  if (TAKEN.some((t) => p === t || p.startsWith(`${t}/`)))
    throw new ConfigInvalidError(`RUNNER_E2B_PREFIX ${p} is under a path of our own APIs`);
  return p;
}

/**
 * The error body of an E2B route, or undefined for any other route: E2B's `{ code, message }`
 * (code: the HTTP status) on the control plane and the REST routes, Connect's `{ code:
 * "not_found", message }` on envd's RPC routes (the SDK reads the code from the body).
 */
export function e2bErrorBody(
  config: FastifyContextConfig,
  status: number,
  message: string,
): unknown {
  if (config.e2bConnect === true) return { code: codeOfStatus(status), message };
  if (config.e2b === true) return { code: status, message };
  return undefined;
}

/**
 * E2B's API (docs/e2b.md) over the sandbox engine: the control plane, envd and the code
 * interpreter, all on one origin (E2B_API_URL and E2B_SANDBOX_URL are both the prefix). The
 * in-sandbox routes are told apart by path; `E2b-Sandbox-Id` names the sandbox. A translation
 * only: every call is one or two of `SandboxService`'s.
 */
export function registerE2bRoutes(scope: ApiInstance, ctx: ApiContext): void {
  // No sandboxes here (an API node of a cluster): every route says so, in its own shape.
  scope.addHook('onRequest', async (req, reply) => {
    if (ctx.engine.sandboxes !== undefined) return;
    const message = 'sandboxes are not served here (this server has no local sandbox engine)';
    await reply
      .code(503)
      .send(
        req.routeOptions.config.e2bConnect === true
          ? { code: 'unavailable', message }
          : { code: 503, message },
      );
  });

  // E2B's clients send `Content-Type: application/json` on bodiless calls too: an empty body
  // is an empty object here.
  scope.removeContentTypeParser('application/json');
  scope.addContentTypeParser('application/json', { parseAs: 'string' }, (_req, body, done) => {
    const text = typeof body === 'string' ? body : body.toString('utf8');
    if (text.trim() === '') {
      done(null, undefined);
      return;
    }
    try {
      done(null, JSON.parse(text) as unknown);
    } catch (err) {
      done(new RequestInvalidError(`the body is not valid JSON: ${(err as Error).message}`));
    }
  });
  // A Connect stream's request: one envelope, read whole (it is small).
  scope.addContentTypeParser(
    'application/connect+json',
    { parseAs: 'buffer' },
    (_req, body, done) => {
      done(null, body);
    },
  );
  // File uploads: the stream itself, so that a file is never held whole.
  const raw = (_req: unknown, payload: unknown, done: (err: null, body: unknown) => void): void =>
    done(null, payload);
  scope.addContentTypeParser('multipart/form-data', raw);
  scope.addContentTypeParser('application/octet-stream', raw);

  const engine = ctx.engine;
  const keys = new ApiKeys(ctx.settings.apiKeys);
  const deps: E2bDeps = {
    sandboxes: () => {
      if (engine.sandboxes === undefined)
        throw new ConnectError('unavailable', 'sandboxes are not served here');
      return engine.sandboxes;
    },
    languages: engine.languages,
    tokens: new AccessTokens(
      join(dataPaths(ctx.settings).dataDir, TOKEN_SECRET_FILE),
      (m) => scope.log.warn(m),
      (owner) => keys.stillValid(owner),
    ),
  };
  registerControlRoutes(scope, deps);
  registerEnvdRoutes(scope, deps);
  registerInterpreterRoutes(scope, deps);
}
