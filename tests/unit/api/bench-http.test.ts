import { afterEach, expect, test } from 'vitest';
import { benchHttp } from '../../../src/cli/commands/bench.js';
import { makeApp, stage, type TestApp } from './helpers.js';

let t: TestApp | undefined;
afterEach(async () => {
  await t?.close();
  t = undefined;
});

test('runner bench --url drives a running service over HTTP and counts what was not ok', async () => {
  t = await makeApp();
  const url = await t.app.listen({ host: '127.0.0.1', port: 0 });
  let calls = 0;
  t.engine.behavior = (req) => {
    calls++;
    // Every third timed job fails as a sandbox error, to be counted apart.
    return calls > 1 && calls % 3 === 0
      ? { status: 'sandbox_error', run: stage({ status: 'sandbox_error' }) }
      : { run: stage({ out: `${req.language}\n` }) };
  };
  const report = await benchHttp({ url, language: 'python', jobs: 9, concurrency: 3 });
  expect(calls).toBe(10); // one untimed job first
  expect(report.jobs).toBe(9);
  expect(report.latencyMs.n).toBe(9);
  expect(report.jobsPerSecond).toBeGreaterThan(0);
  expect(report.failed).toEqual({ sandbox_error: 3 });
});
