import { describe, expect, it } from 'vitest';
import { DEFAULT_LIMITS, MAX_LIMITS, resolveLimits } from '../../../src/config/limits.js';
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
