import { EventEmitter } from 'node:events';
import { describe, expect, it } from 'vitest';
import { ApiMetrics } from '../../../src/api/metrics.js';

describe('VM lifecycle metrics', () => {
  it('has a histogram of cold boots and restores by language', async () => {
    const metrics = new ApiMetrics(
      {
        queue: () => ({ queued: 0, running: 0 }) as never,
        pool: () => ({
          live: 0,
          ready: {},
          busy: 0,
          starting: 0,
          capacity: 1,
          hits: 0,
          misses: 0,
          failures: 0,
          warmUps: 0,
        }),
      },
      { defaultMetrics: false },
    );
    const events = new EventEmitter();
    events.on('vm', (t: { kind: 'boot' | 'restore'; language: string; ms: number }) =>
      metrics.vm(t.kind, t.language, t.ms),
    );
    events.emit('vm', { kind: 'boot', language: 'python', ms: 7000 });
    events.emit('vm', { kind: 'restore', language: 'python', ms: 300 });
    events.emit('vm', { kind: 'restore', language: 'python', ms: 700 });
    const text = await metrics.text();
    expect(text).toMatch(
      /runner_vm_lifecycle_duration_seconds_count\{kind="boot",language="python"\} 1/,
    );
    expect(text).toMatch(
      /runner_vm_lifecycle_duration_seconds_count\{kind="restore",language="python"\} 2/,
    );
    expect(text).toMatch(
      /runner_vm_lifecycle_duration_seconds_sum\{kind="restore",language="python"\} 1/,
    );
  });
});
