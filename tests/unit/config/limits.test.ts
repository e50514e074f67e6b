import { describe, expect, it } from 'vitest';
import {
  DEFAULT_LIMITS,
  MAX_LIMITS,
  resolveLimits,
  scaledDefaults,
  scaledMaxima,
  scaleTime,
} from '../../../src/config/limits.js';
import { prepareJob } from '../../../src/pool/job.js';
import { loadSettings, SETTINGS } from '../../../src/config/settings.js';
import { LanguageRegistry } from '../../../src/languages/index.js';

const registry = LanguageRegistry.fromDir();

describe('job limits', () => {
  it('starts from the defaults, applies the language, then the request', () => {
    const python = registry.get('python').definition;
    expect(resolveLimits('run', python)).toEqual(DEFAULT_LIMITS.run);
    const rust = registry.get('rust').definition;
    expect(resolveLimits('compile', rust).wallTimeMs).toBe(90_000);
    expect(resolveLimits('run', python, { wallTimeMs: 1234 }).wallTimeMs).toBe(1234);
  });

  it('rejects negative, fractional and over-maximum values', () => {
    const python = registry.get('python').definition;
    for (const bad of [-1, 0, 1.5, MAX_LIMITS.run.memoryMib + 1]) {
      expect(() => resolveLimits('run', python, { memoryMib: bad })).toThrow(
        expect.objectContaining({ code: 'LIMIT_INVALID' }),
      );
    }
  });

  it('keeps every language default within the server maximum', () => {
    for (const { definition } of registry.list()) {
      for (const stage of ['compile', 'run'] as const) {
        const l = resolveLimits(stage, definition);
        for (const [k, v] of Object.entries(l))
          expect(v, `${definition.name} ${stage} ${k}`).toBeLessThanOrEqual(
            MAX_LIMITS[stage][k as keyof typeof l],
          );
      }
    }
  });
});

describe('the time-limit scale of a slower host', () => {
  it('scales a time, rounding up; 100 keeps it', () => {
    expect(scaleTime(5000, 100)).toBe(5000);
    expect(scaleTime(5000, 250)).toBe(12_500);
    expect(scaleTime(1001, 150)).toBe(1502);
  });

  it('scales the CPU and wall time of the defaults and maxima, and nothing else', () => {
    const d = scaledDefaults(400);
    expect(d.run.cpuTimeMs).toBe(DEFAULT_LIMITS.run.cpuTimeMs * 4);
    expect(d.compile.wallTimeMs).toBe(DEFAULT_LIMITS.compile.wallTimeMs * 4);
    expect(d.run.memoryMib).toBe(DEFAULT_LIMITS.run.memoryMib);
    expect(scaledMaxima(200).compile.cpuTimeMs).toBe(MAX_LIMITS.compile.cpuTimeMs * 2);
    expect(scaledMaxima(200).run.outputBytes).toBe(MAX_LIMITS.run.outputBytes);
    expect(scaledDefaults(100)).toBe(DEFAULT_LIMITS);
  });

  it('scales the defaults and the language own limits, never what a request named', () => {
    const python = registry.get('python').definition;
    const rust = registry.get('rust').definition;
    const max = scaledMaxima(300);
    const run = resolveLimits('run', python, {}, max, DEFAULT_LIMITS, 300);
    expect(run.cpuTimeMs).toBe(DEFAULT_LIMITS.run.cpuTimeMs * 3);
    expect(run.wallTimeMs).toBe(DEFAULT_LIMITS.run.wallTimeMs * 3);
    expect(run.processes).toBe(DEFAULT_LIMITS.run.processes);
    expect(resolveLimits('compile', rust, {}, max, DEFAULT_LIMITS, 300).wallTimeMs).toBe(270_000);
    const asked = resolveLimits('run', python, { cpuTimeMs: 1000 }, max, DEFAULT_LIMITS, 300);
    expect(asked.cpuTimeMs).toBe(1000);
    expect(asked.wallTimeMs).toBe(30_000);
  });

  it('a prepared job gets the scaled limits, and may ask up to the scaled maxima only', () => {
    const files = [{ name: 'main.py', content: 'print(1)' }];
    const job = prepareJob({ language: 'python', files }, registry, { timeScalePercent: 200 });
    expect(job.message.runLimits.cpuTimeMs).toBe(DEFAULT_LIMITS.run.cpuTimeMs * 2);
    const long = { cpuTimeMs: MAX_LIMITS.run.cpuTimeMs * 2 };
    const allowed = prepareJob({ language: 'python', files, runLimits: long }, registry, {
      timeScalePercent: 200,
    });
    expect(allowed.message.runLimits.cpuTimeMs).toBe(MAX_LIMITS.run.cpuTimeMs * 2);
    expect(() => prepareJob({ language: 'python', files, runLimits: long }, registry)).toThrow(
      expect.objectContaining({ code: 'LIMIT_INVALID' }),
    );
  });
});

describe('settings', () => {
  it('has defaults, reads the environment, validates and freezes', () => {
    const s = loadSettings({
      RUNNER_DATA_DIR: '/tmp/x',
      RUNNER_POOL_MAX_VMS: '7',
      RUNNER_WARM_LANGUAGES: 'python, c',
    });
    expect(s.poolMaxVms).toBe(7);
    expect(s.warmLanguages).toEqual(['python', 'c']);
    expect(s.vmm).toBe('qemu');
    expect(Object.isFrozen(s)).toBe(true);
    expect(() => loadSettings({ RUNNER_POOL_MAX_VMS: 'many' })).toThrow(/RUNNER_POOL_MAX_VMS/);
    expect(() => loadSettings({ RUNNER_VMM: 'xen' })).toThrow(/one of qemu, firecracker/);
    expect(() => loadSettings({ RUNNER_VM_MEMORY_MIB: '1' })).toThrow(/at least/);
  });

  it('gives every setting an environment variable of its own', () => {
    const envs = SETTINGS.map((s) => s.env);
    expect(new Set(envs).size).toBe(envs.length);
    for (const e of envs) expect(e).toMatch(/^RUNNER_[A-Z0-9_]+$/);
  });
});
