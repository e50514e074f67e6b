import { LimitInvalidError } from '../errors.js';
import type { LanguageDefinition } from '../languages/index.js';
import type { Limits } from '../protocol/index.js';

/** The two stages a job may have. */
export type Stage = 'compile' | 'run';

/** Limits for each stage. */
export type StageLimits = Readonly<Record<Stage, Limits>>;

/**
 * Defaults, sized for QEMU under TCG (10–25 times slower than native): a 10 s compile limit
 * fails rustc and javac there, so compiled languages raise their compile limits in their own
 * definitions. Units are in the names.
 */
export const DEFAULT_LIMITS: StageLimits = Object.freeze({
  compile: Object.freeze({
    wallTimeMs: 30_000,
    cpuTimeMs: 30_000,
    memoryMib: 512,
    processes: 128,
    outputBytes: 1024 * 1024,
    fileSizeBytes: 64 * 1024 * 1024,
    openFiles: 256,
    // Compilers recurse deeply (gcc raises its own soft limit to 64 MiB where it can).
    stackBytes: 64 * 1024 * 1024,
  }),
  run: Object.freeze({
    wallTimeMs: 10_000,
    cpuTimeMs: 5_000,
    memoryMib: 256,
    processes: 64,
    outputBytes: 1024 * 1024,
    fileSizeBytes: 16 * 1024 * 1024,
    openFiles: 256,
    // Linux's usual default: what programs got before the limit was a job's own.
    stackBytes: 8 * 1024 * 1024,
  }),
});

/** The server's maxima: a request may ask for less or more than the default, never above these. */
export const MAX_LIMITS: StageLimits = Object.freeze({
  compile: Object.freeze({
    wallTimeMs: 180_000,
    cpuTimeMs: 180_000,
    memoryMib: 768,
    processes: 512,
    outputBytes: 16 * 1024 * 1024,
    fileSizeBytes: 256 * 1024 * 1024,
    openFiles: 1024,
    stackBytes: 256 * 1024 * 1024,
  }),
  run: Object.freeze({
    wallTimeMs: 120_000,
    cpuTimeMs: 120_000,
    memoryMib: 768,
    processes: 512,
    outputBytes: 16 * 1024 * 1024,
    fileSizeBytes: 256 * 1024 * 1024,
    openFiles: 1024,
    stackBytes: 256 * 1024 * 1024,
  }),
});

export const LIMIT_NAMES = Object.keys(DEFAULT_LIMITS.run) as (keyof Limits)[];

/**
 * The limits of one stage: the default, then the language's own override, then what the
 * request asked for. Every requested value must be a positive integer no larger than the
 * server maximum (LIMIT_INVALID otherwise); a language default above the maximum is capped.
 */
export function resolveLimits(
  stage: Stage,
  language: LanguageDefinition,
  requested: Partial<Limits> = {},
  max: StageLimits = MAX_LIMITS,
  defaults: StageLimits = DEFAULT_LIMITS,
): Limits {
  const out: Limits = { ...defaults[stage], ...(language.limits?.[stage] ?? {}) };
  for (const name of LIMIT_NAMES) {
    out[name] = Math.min(out[name], max[stage][name]);
    const value = requested[name];
    if (value === undefined) continue;
    if (!Number.isInteger(value) || value < 1) {
      throw new LimitInvalidError(
        `${stage} limit ${name} must be a positive integer, not ${JSON.stringify(value)}`,
      );
    }
    if (value > max[stage][name]) {
      throw new LimitInvalidError(
        `${stage} limit ${name}=${value} is over the server maximum ${max[stage][name]}`,
      );
    }
    out[name] = value;
  }
  return out;
}
