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

/** The limits that a slower host scales (timeLimitScalePercent): both clocks. */
const TIME_LIMIT_NAMES = ['cpuTimeMs', 'wallTimeMs'] as const;

/** A default time (ms or s) scaled by `percent` (100: as is), rounded up to a whole unit. */
export function scaleTime(value: number, percent: number): number {
  return percent === 100 ? value : Math.ceil((value * percent) / 100);
}

/** Limits with the CPU and wall time of both stages times `percent`/100 (rounded up). */
export function scaleTimeLimits(limits: StageLimits, percent: number): StageLimits {
  if (percent === 100) return limits;
  const stage = (s: Stage): Limits => {
    const out = { ...limits[s] };
    for (const name of TIME_LIMIT_NAMES) out[name] = scaleTime(out[name], percent);
    return out;
  };
  return { compile: stage('compile'), run: stage('run') };
}

/** The default limits of a host at `percent` (timeLimitScalePercent); `GET /v1/limits`. */
export function scaledDefaults(percent: number): StageLimits {
  return scaleTimeLimits(DEFAULT_LIMITS, percent);
}

/** The server maxima of a host at `percent` (timeLimitScalePercent); `GET /v1/limits`. */
export function scaledMaxima(percent: number): StageLimits {
  return scaleTimeLimits(MAX_LIMITS, percent);
}

/**
 * The limits of one stage: the default, then the language's own override, then what the
 * request asked for. Every requested value must be a positive integer no larger than the
 * server maximum (LIMIT_INVALID otherwise); a language default above the maximum is capped.
 * `timeScalePercent` (the timeLimitScalePercent setting) scales the CPU and wall time of the
 * defaults and the language's own, never what the request named; `max` is then the maxima at
 * the same scale (scaledMaxima).
 */
export function resolveLimits(
  stage: Stage,
  language: LanguageDefinition,
  requested: Partial<Limits> = {},
  max: StageLimits = MAX_LIMITS,
  defaults: StageLimits = DEFAULT_LIMITS,
  timeScalePercent = 100,
): Limits {
  const out: Limits = { ...defaults[stage], ...(language.limits?.[stage] ?? {}) };
  for (const name of TIME_LIMIT_NAMES) out[name] = scaleTime(out[name], timeScalePercent);
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
