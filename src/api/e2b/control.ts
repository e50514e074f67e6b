import type { FastifyReply } from 'fastify';
import { LanguageUnknownError, RequestInvalidError, SandboxStateError } from '../../errors.js';
import type { SandboxInfo } from '../../sandbox/index.js';
import type { ApiInstance } from '../context.js';
import { CONTROL, objectBody, optInt, optString, stringRecord, type E2bDeps } from './shared.js';
import { detailView, listedView, sandboxView } from './views.js';

/** E2B's own templates: both are a Python sandbox here (the code interpreter's and the plain one). */
const PYTHON_TEMPLATES = new Set(['code-interpreter-v1', 'base']);

/** Options of E2B's create that we do not offer: refused, rather than silently not honoured. */
const REFUSED: readonly [string, (v: unknown) => boolean, string][] = [
  ['allow_internet_access', (v) => v === true, 'sandboxes have no network here'],
  ['network', (v) => v !== undefined && v !== null, 'sandboxes have no network here'],
  ['mcp', (v) => v !== undefined && v !== null, 'the MCP gateway is not offered'],
  ['volumeMounts', (v) => Array.isArray(v) && v.length > 0, 'volumes are not offered'],
  ['autoPause', (v) => v === true, 'a sandbox is killed at its timeout (no auto-pause)'],
  [
    'autoResume',
    (v) => (v as { enabled?: unknown } | null)?.enabled === true,
    'there is no auto-resume',
  ],
  [
    'iam',
    (v) => v !== undefined && v !== null && Object.keys(v).length > 0,
    'IAM tokens are not offered',
  ],
];

/** seconds → ms, for E2B's `timeout` fields. */
const secondsMs = (s: number | undefined): number | undefined =>
  s === undefined ? undefined : s * 1000;

/**
 * E2B's control plane (`E2B_API_URL`): create, list, get, kill, timeout, pause, connect
 * (resume) and fork, each one call of the engine, answered in E2B's shapes. The caller's
 * owner is the app's (`X-API-KEY` is one of our key headers).
 */
export function registerControlRoutes(app: ApiInstance, deps: E2bDeps): void {
  const languageOf = (template: string): string => {
    if (PYTHON_TEMPLATES.has(template)) return 'python';
    const found = deps.languages.find(template);
    if (found === undefined)
      throw new LanguageUnknownError(
        `unknown template ${JSON.stringify(template)}: use code-interpreter-v1, base, or a language (${deps.languages.names().join(', ')})`,
      );
    return found.definition.name;
  };
  const token = (info: SandboxInfo): string => deps.tokens.issue(info.id, info.owner);

  app.post(
    '/v2/sandboxes',
    { ...CONTROL, config: { ...CONTROL.config, createsJobs: true } },
    async (req, reply) => {
      const body = objectBody(req.body);
      const template = optString(body, 'templateID');
      if (template === undefined || template === '')
        throw new RequestInvalidError('templateID is required');
      for (const [key, refused, why] of REFUSED)
        if (refused(body[key])) throw new RequestInvalidError(`${key} is not supported: ${why}`);
      const timeoutMs = secondsMs(optInt(body, 'timeout'));
      const metadata = stringRecord(body.metadata, 'metadata');
      const envs = stringRecord(body.envVars, 'envVars');
      const info = await deps.sandboxes().create({
        language: languageOf(template),
        template,
        owner: req.owner,
        ...(timeoutMs !== undefined && { timeoutMs }),
        ...(metadata !== undefined && { metadata }),
        ...(envs !== undefined && { envs }),
      });
      reply.code(201);
      return sandboxView(info, token(info));
    },
  );

  const list = (query: Record<string, unknown>, owner: string | null) => {
    const one = (key: string): string | undefined => {
      const v = query[key];
      return Array.isArray(v) ? v.map(String).join(',') : typeof v === 'string' ? v : undefined;
    };
    const states = one('state')
      ?.split(',')
      .filter((s) => s !== '');
    for (const s of states ?? [])
      if (s !== 'running' && s !== 'paused')
        throw new RequestInvalidError(`state must be running or paused, not ${JSON.stringify(s)}`);
    // `metadata` is itself a query string: k=v&k2=v2.
    const meta = one('metadata');
    const wanted = meta === undefined ? [] : [...new URLSearchParams(meta).entries()];
    const template = one('template');
    const after = one('startedAfter');
    const afterMs = after === undefined ? undefined : Date.parse(after);
    if (afterMs !== undefined && Number.isNaN(afterMs))
      throw new RequestInvalidError('startedAfter must be an ISO date-time');
    const order = one('order') ?? 'asc';
    if (order !== 'asc' && order !== 'desc')
      throw new RequestInvalidError('order must be asc or desc');
    const out = deps
      .sandboxes()
      .list(owner)
      .filter(
        (s) =>
          (states === undefined || states.length === 0 || states.includes(s.state)) &&
          wanted.every(([k, v]) => s.metadata[k] === v) &&
          (template === undefined || s.template === template || s.language === template) &&
          (afterMs === undefined || Date.parse(s.startedAt) > afterMs),
      )
      .sort((a, b) => a.startedAt.localeCompare(b.startedAt));
    if (order === 'desc') out.reverse();
    // No pagination: a key holds at most sandboxMaxPerKey sandboxes, so one page has them all
    // (no x-next-token header: the SDK stops there).
    return out.map(listedView);
  };
  app.get('/v2/sandboxes', CONTROL, (req) => list(req.query as Record<string, unknown>, req.owner));
  // E2B's older list (running ones only there; both states here).
  app.get('/sandboxes', CONTROL, (req) => list(req.query as Record<string, unknown>, req.owner));

  app.get<{ Params: { id: string } }>('/sandboxes/:id', CONTROL, (req) => {
    const info = deps.sandboxes().get(req.params.id, req.owner);
    return detailView(info, token(info));
  });

  app.delete<{ Params: { id: string } }>('/sandboxes/:id', CONTROL, async (req, reply) => {
    await deps.sandboxes().kill(req.params.id, req.owner);
    return reply.code(204).send();
  });

  app.post<{ Params: { id: string } }>('/sandboxes/:id/timeout', CONTROL, async (req, reply) => {
    const timeout = optInt(objectBody(req.body), 'timeout');
    if (timeout === undefined) throw new RequestInvalidError('timeout (seconds) is required');
    deps.sandboxes().setTimeout(req.params.id, req.owner, timeout * 1000);
    return reply.code(204).send();
  });

  app.post<{ Params: { id: string } }>('/sandboxes/:id/pause', CONTROL, async (req, reply) => {
    // `memory` (keep memory or only files) is accepted and ignored: a pause keeps both.
    const svc = deps.sandboxes();
    if (svc.get(req.params.id, req.owner).state === 'paused')
      throw new SandboxStateError(`sandbox ${req.params.id} is already paused`);
    await svc.pause(req.params.id, req.owner);
    return reply.code(204).send();
  });

  app.post<{ Params: { id: string } }>('/v2/sandboxes/:id/connect', CONTROL, async (req, reply) => {
    // `memory: false` (resume by rebooting) is accepted and ignored: a resume restores memory.
    const timeoutMs = secondsMs(optInt(objectBody(req.body), 'timeout'));
    const svc = deps.sandboxes();
    const wasPaused = svc.get(req.params.id, req.owner).state === 'paused';
    const info = await svc.resume(
      req.params.id,
      req.owner,
      timeoutMs === undefined ? {} : { timeoutMs },
    );
    reply.code(wasPaused ? 201 : 200);
    return sandboxView(info, token(info));
  });

  app.post<{ Params: { id: string } }>('/sandboxes/:id/fork', CONTROL, async (req, reply) => {
    const body = objectBody(req.body);
    const count = optInt(body, 'count') ?? 1;
    const timeoutMs = secondsMs(optInt(body, 'timeout'));
    const svc = deps.sandboxes();
    const forks = await svc.fork(req.params.id, req.owner, count);
    const out = forks.map((f) =>
      timeoutMs === undefined ? f : svc.setTimeout(f.id, req.owner, timeoutMs),
    );
    reply.code(201);
    return out.map((info) => ({ sandbox: sandboxView(info, token(info)) }));
  });

  // What E2B's SDK can ask that we do not serve: a clear 501 rather than a 404 the SDK would
  // read as "no such sandbox".
  const notServed =
    (what: string) =>
    async (_req: unknown, reply: FastifyReply): Promise<FastifyReply> =>
      reply
        .code(501)
        .send({ code: 501, message: `${what} are not served by this server (docs/e2b.md)` });
  app.get('/sandboxes/:id/metrics', CONTROL, notServed('sandbox metrics'));
  app.get('/sandboxes/metrics', CONTROL, notServed('sandbox metrics'));
  app.put('/sandboxes/:id/network', CONTROL, notServed('network settings'));
  app.post('/sandboxes/:id/snapshots', CONTROL, notServed('snapshots'));
  app.get('/snapshots', CONTROL, notServed('snapshots'));
}
