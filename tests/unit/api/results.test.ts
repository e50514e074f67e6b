import { describe, expect, test } from 'vitest';
import { InterleavedOutput, pistonStage } from '../../../src/api/results.js';
import type { LiveControls } from '../../../src/pool/index.js';
import { stage } from './helpers.js';

describe("Piston's output from a live job's stream", () => {
  test('InterleavedOutput keeps each stage in the order read and ends stdin at once', () => {
    const out = new InterleavedOutput();
    let ended = false;
    out.onStart({ stdinEnd: () => (ended = true) } as unknown as LiveControls);
    expect(ended).toBe(true);
    const chunk = (stream: 'stdout' | 'stderr', s: string) =>
      out.onEvent({ type: 'output', stream, data: Buffer.from(s) });
    out.onEvent({ type: 'stage', stage: 'compile', phase: 'start' });
    chunk('stderr', 'warning\n');
    out.onEvent({ type: 'stage', stage: 'compile', phase: 'end', status: 'ok' });
    out.onEvent({ type: 'stage', stage: 'run', phase: 'start' });
    chunk('stdout', 'a\n');
    chunk('stderr', 'b\n');
    chunk('stdout', 'c\n');
    expect(out.of('compile').toString()).toBe('warning\n');
    expect(out.of('run').toString()).toBe('a\nb\nc\n');
  });

  test('pistonStage takes the interleaving when it holds exactly the stage bytes', () => {
    const s = stage({ out: 'a\nc\n', err: 'b\n' });
    expect(pistonStage(s, Buffer.from('a\nb\nc\n')).output).toBe('a\nb\nc\n');
    // A stream that lost or gained bytes (a VM that died mid-job) is not trusted.
    expect(pistonStage(s, Buffer.from('a\nb\n')).output).toBe('a\nc\nb\n');
    expect(pistonStage(s).output).toBe('a\nc\nb\n');
  });
});
