import { MAX_LIMITS, scaledMaxima, type Stage, type StageLimits } from '../config/index.js';
import { LimitInvalidError, EncodingInvalidError } from '../errors.js';
import type { Limits } from '../protocol/index.js';
import type { ApiContext, ApiInstance } from './context.js';
import { InterleavedOutput, pistonStage } from './results.js';
import {
  PistonError,
  PistonExecuteRequest,
  PistonExecuteResponse,
  PistonPackages,
  PistonRuntimes,
  type ExecuteRequest,
} from './schemas.js';

const MIB = 1024 * 1024;

/** A Piston limit: absent → the default; -1 → the server maximum; else converted to our unit. */
function pistonLimit(
  maxima: StageLimits,
  stage: Stage,
  name: keyof Limits,
  value: number | undefined,
  scale: (v: number) => number,
): number | undefined {
  if (value === undefined) return undefined;
  if (value === -1) return maxima[stage][name];
  if (value <= 0)
    throw new LimitInvalidError(
      `${stage} ${name === 'memoryMib' ? 'memory limit' : 'timeout'} must be positive or -1, not ${value}`,
    );
  return scale(value);
}

function stageLimits(
  maxima: StageLimits,
  stage: Stage,
  timeoutMs?: number,
  cpuTimeMs?: number,
  memoryBytes?: number,
): Partial<Limits> {
  const out: Partial<Limits> = {};
  const wall = pistonLimit(maxima, stage, 'wallTimeMs', timeoutMs, Math.ceil);
  const cpu = pistonLimit(maxima, stage, 'cpuTimeMs', cpuTimeMs, Math.ceil);
  const mem = pistonLimit(maxima, stage, 'memoryMib', memoryBytes, (b) => Math.ceil(b / MIB));
  if (wall !== undefined) out.wallTimeMs = wall;
  if (cpu !== undefined) out.cpuTimeMs = cpu;
  if (mem !== undefined) out.memoryMib = mem;
  return out;
}

/**
 * Piston's request as a native one: hex files to base64, Piston's units to ours; a limit of -1
 * is the server maximum (`maxima`: the host's, scaledMaxima).
 */
export function fromPiston(
  body: PistonExecuteRequest,
  maxima: StageLimits = MAX_LIMITS,
): ExecuteRequest {
  const files = body.files.map((f, i) => {
    if (f.encoding === 'hex') {
      if (!/^(?:[0-9a-fA-F]{2})*$/.test(f.content))
        throw new EncodingInvalidError(`files[${i}].content is not valid hex`);
      return {
        ...(f.name !== undefined && { name: f.name }),
        content: Buffer.from(f.content, 'hex').toString('base64'),
        encoding: 'base64' as const,
      };
    }
    return {
      ...(f.name !== undefined && { name: f.name }),
      content: f.content,
      encoding: f.encoding ?? 'utf8',
    };
  });
  return {
    language: body.language,
    version: body.version,
    files,
    ...(body.stdin !== undefined && { stdin: body.stdin }),
    ...(body.args !== undefined && { args: body.args }),
    compileLimits: stageLimits(
      maxima,
      'compile',
      body.compile_timeout,
      body.compile_cpu_time,
      body.compile_memory_limit,
    ),
    runLimits: stageLimits(
      maxima,
      'run',
      body.run_timeout,
      body.run_cpu_time,
      body.run_memory_limit,
    ),
  };
}

const errors = {
  400: PistonError,
  401: PistonError,
  413: PistonError,
  415: PistonError,
  429: PistonError,
  503: PistonError,
};
const security: { [scheme: string]: string[] }[] = [{ bearer: [] }, { apiKey: [] }];

/**
 * Piston's API v2 (engineer-man/piston docs/api-v2.md), so Piston clients and bots work
 * unchanged: the same paths, request and response shapes, language names and aliases. Errors
 * are Piston's `{message}`. `output` is stdout and stderr in the order they were written (the
 * job runs live for it). Differences: packages are read-only (POST/DELETE /api/v2/packages are
 * not offered).
 */
export function registerPistonRoutes(app: ApiInstance, ctx: ApiContext): void {
  const maxima = scaledMaxima(ctx.settings.timeLimitScalePercent);
  app.get(
    '/api/v2/runtimes',
    {
      schema: {
        tags: ['piston'],
        summary: 'Piston: languages, versions and aliases',
        security,
        response: { 200: PistonRuntimes, 401: PistonError },
      },
    },
    () =>
      ctx.engine.languages.list().map(({ definition: d }) => ({
        language: d.name,
        version: d.version,
        aliases: [...d.aliases],
      })),
  );

  app.get(
    '/api/v2/packages',
    {
      schema: {
        tags: ['piston'],
        summary: 'Piston: packages and whether each is installed (its image is built)',
        security,
        response: { 200: PistonPackages, 401: PistonError },
      },
    },
    async () => {
      const statuses = await ctx.engine.runtimes();
      return ctx.engine.languages.list().map(({ definition: d }) => ({
        language: d.name,
        language_version: d.version,
        installed: statuses.get(d.name)?.imageReady ?? false,
      }));
    },
  );

  app.post(
    '/api/v2/execute',
    {
      config: { createsJobs: true },
      schema: {
        tags: ['piston'],
        summary: 'Piston: run code and wait for the result',
        security,
        body: PistonExecuteRequest,
        response: { 200: PistonExecuteResponse, ...errors },
      },
    },
    async (req) => {
      // Run live, only to keep the true interleaving of stdout and stderr for `output`.
      const job = ctx.service.prepare(fromPiston(req.body, maxima), { live: true });
      const output = new InterleavedOutput();
      const result = await ctx.service.execute(job, req.owner, { live: output });
      const compiled = job.job.compiles;
      return {
        language: result.language,
        version: result.version,
        run: pistonStage(result.run, output.of('run')),
        ...(compiled && { compile: pistonStage(result.compile, output.of('compile')) }),
      };
    },
  );
}
