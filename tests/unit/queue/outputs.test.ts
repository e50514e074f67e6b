import { Compile } from 'typebox/compile';
import { describe, expect, test } from 'vitest';
import { stageView } from '../../../src/api/results.js';
import { ExecuteResponse } from '../../../src/api/schemas.js';
import { fitOutput, withoutOutput } from '../../../src/queue/index.js';
import { stage } from '../api/helpers.js';

const check = Compile(ExecuteResponse);

const timings = {
  totalMs: 1,
  acquireMs: 0,
  executeMs: 1,
  guestMs: 1,
  hostOverheadMs: 0,
  poolHit: true,
};

function result(out: string | Buffer, err: string = ''): ExecuteResponse {
  return {
    id: 'j',
    language: 'python',
    version: '3.11.2',
    status: 'ok',
    compile: stageView(stage({ out: 'compiled', err: 'warning' })),
    run: stageView(stage({ out, err })),
    timings,
  };
}

const jsonBytes = (v: unknown) => Buffer.byteLength(JSON.stringify(v));
const bytesOf = (base64: string) => Buffer.from(base64, 'base64');

describe('withoutOutput', () => {
  test('empties every stream, keeps the verdict, says so, and still matches the schema', () => {
    const full: ExecuteResponse = {
      ...result('a'.repeat(10_000), 'oops'),
      testCases: [
        {
          index: 0,
          status: 'ok',
          passed: true,
          run: stageView(stage({ out: '3' })),
          timings: null,
        },
        { index: 1, status: 'timeout', passed: false, run: null, timings: null },
      ],
      summary: { total: 2, passed: 1, failed: 1 },
    };
    const kept = withoutOutput(full);
    expect(kept.storedOutput).toBe('none');
    for (const s of [kept.compile, kept.run, kept.testCases?.[0]?.run]) {
      expect(s).toMatchObject({ stdout: '', stderr: '', stdoutText: null, stderrText: null });
    }
    expect(kept).toMatchObject({ status: 'ok', summary: full.summary, timings });
    expect(kept.run?.exitCode).toBe(0);
    expect(kept.testCases?.[1]).toEqual(full.testCases?.[1]);
    expect(check.Check(kept)).toBe(true);
    expect(full.run?.stdoutText).toBe('a'.repeat(10_000)); // the response itself is untouched
  });
});

describe('fitOutput', () => {
  test('a result that fits is kept whole and unflagged', () => {
    const small = result('hello\n');
    expect(fitOutput(small, 1_000_000)).toBe(small);
  });

  test('long output is cut to the cap on a character boundary; short streams keep all', () => {
    // 4-byte and 2-byte characters, offset so cuts fall inside them.
    const text = `x${'😀é'.repeat(100_000)}`;
    const big = result(text, 'short error');
    const cap = 64 * 1024;
    const fitted = fitOutput(big, cap);
    expect(jsonBytes(fitted)).toBeLessThanOrEqual(cap);
    expect(jsonBytes(fitted)).toBeGreaterThan(cap / 2); // the budget is used, not wasted
    expect(fitted.storedOutput).toBe('trimmed');
    const run = fitted.run;
    expect(run?.stdoutTruncated).toBe(true);
    expect(run?.stdoutText).not.toBeNull();
    expect(text.startsWith(run?.stdoutText ?? '?')).toBe(true);
    expect(bytesOf(run?.stdout ?? '').toString('utf8')).toBe(run?.stdoutText);
    // Short streams are whole and not flagged.
    expect(run?.stderrText).toBe('short error');
    expect(run?.stderrTruncated).toBe(false);
    expect(fitted.compile?.stdoutText).toBe('compiled');
    expect(check.Check(fitted)).toBe(true);
  });

  test('binary output stays valid base64 with no text; escaped text still fits', () => {
    const binary = Buffer.alloc(200_000, 0xff);
    const fitted = fitOutput(result(binary), 32 * 1024);
    expect(jsonBytes(fitted)).toBeLessThanOrEqual(32 * 1024);
    expect(fitted.run?.stdoutText).toBeNull();
    expect(bytesOf(fitted.run?.stdout ?? '').every((b) => b === 0xff)).toBe(true);
    // Control characters take 6 bytes each in JSON (\u0001): the budget shrinks until it fits.
    const escaped = fitOutput(result('\u0001'.repeat(200_000)), 32 * 1024);
    expect(jsonBytes(escaped)).toBeLessThanOrEqual(32 * 1024);
    expect(escaped.run?.stdoutText?.length).toBeGreaterThan(1000);
  });

  test('test case outputs are trimmed too', () => {
    const withCases: ExecuteResponse = {
      ...result(''),
      run: null,
      testCases: [0, 1, 2].map((index) => ({
        index,
        status: 'ok' as const,
        passed: false,
        run: stageView(stage({ out: 'y'.repeat(50_000) })),
        timings: null,
      })),
    };
    const fitted = fitOutput(withCases, 40_000);
    expect(jsonBytes(fitted)).toBeLessThanOrEqual(40_000);
    for (const c of fitted.testCases ?? []) expect(c.run?.stdoutTruncated).toBe(true);
    expect(check.Check(fitted)).toBe(true);
  });
});
