import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import type { ExecuteResponse } from '../../../src/api/schemas.js';
import { startServer, type RunningServer } from '../../../src/api/server.js';
import { MAX_RESULT_OUTPUT_BYTES } from '../../../src/protocol/index.js';
import { suiteScaledMs } from '../../support/paths.js';
import { ensureImages, testSettings, vmSkipReason } from '../../support/vm.js';

const skip = vmSkipReason();
if (skip) console.warn(`skipping the job-path tests in real VMs: ${skip}`);

/**
 * The job path's bugs found by trying to break it, each against `runner serve` with real VMs
 * (QEMU, TCG here): test cases that outgrow a fixed deadline, outputs that outgrow the agent,
 * scratch space that outlives a case, a file name read as a compiler option. After each, a
 * normal job must still run.
 */
describe.skipIf(skip !== null)('the job path in real VMs', () => {
  let server: RunningServer | undefined;
  let storeDir = '';

  async function execute(body: Record<string, unknown>): Promise<ExecuteResponse> {
    if (!server) throw new Error('the server did not start');
    const res = await fetch(`${server.url}/v1/execute`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify(body),
    });
    expect(res.status).toBe(200);
    return (await res.json()) as ExecuteResponse;
  }

  beforeAll(async () => {
    await ensureImages(['python', 'c']);
    storeDir = mkdtempSync(join(tmpdir(), 'runner-jobpath-'));
    server = await startServer(
      testSettings({
        host: '127.0.0.1',
        port: 0,
        jobStoreFile: join(storeDir, 'jobs.sqlite'),
        logLevel: 'warn',
        poolTarget: 0,
      }),
    );
  });

  afterEach(async () => {
    const r = await execute({ language: 'python', files: [{ content: 'print("still fine")' }] });
    expect(r.status).toBe('ok');
    expect(r.run?.stdoutText).toBe('still fine\n');
  });

  afterAll(async () => {
    await server?.close();
    if (storeDir !== '') rmSync(storeDir, { recursive: true, force: true });
  });

  it('64 test cases of 0.4 s each all come back (the deadline counts the cases)', async () => {
    const cases = Array.from({ length: 64 }, (_, i) => ({
      stdin: `${i}\n`,
      expectedOutput: `${i}\n`,
    }));
    const r = await execute({
      language: 'python',
      files: [{ content: 'import time\ntime.sleep(0.4)\nprint(input())\n' }],
      testCases: cases,
    });
    expect(r.status).toBe('ok');
    expect(r.summary).toEqual({ total: 64, passed: 64, failed: 0 });
  }, 400_000);

  it('16 cases printing 16 MiB to both streams return one bounded result, not a hang', async () => {
    const started = Date.now();
    const r = await execute({
      language: 'python',
      files: [
        {
          content:
            'import sys\nb = b"x" * (16 << 20)\nsys.stdout.buffer.write(b)\nsys.stdout.flush()\nsys.stderr.buffer.write(b)\n',
        },
      ],
      runLimits: { outputBytes: 16 << 20 },
      testCases: Array.from({ length: 16 }, () => ({ expectedOutput: '' })),
    });
    expect(r.status).not.toBe('sandbox_error');
    expect(r.testCases).toHaveLength(16);
    let total = 0;
    for (const c of r.testCases ?? []) {
      expect(c.status).not.toBe('sandbox_error');
      total += Buffer.from(c.run?.stdout ?? '', 'base64').length;
      total += Buffer.from(c.run?.stderr ?? '', 'base64').length;
    }
    expect(total).toBeLessThanOrEqual(MAX_RESULT_OUTPUT_BYTES);
    const last = r.testCases?.at(-1)?.run;
    expect(last?.stdoutTruncated).toBe(true);
    expect(last?.message).toMatch(/output trimmed/);
    // Far from the job's deadline: the result came back when the cases ended.
    expect(Date.now() - started).toBeLessThan(300_000);
  }, 400_000);

  it('cases filling /dev/shm, /var/tmp and /tmp in turn each end memory_limit, never a dead VM', async () => {
    // Many files under the per-file size limit, until the job's memory (which its tmpfs pages
    // count against) runs out.
    const fill =
      'import sys\nd = sys.stdin.readline().strip()\nchunk = b"z" * (4 << 20)\nn = 0\n' +
      'while True:\n    with open(f"{d}/fill{n}", "wb") as f:\n        f.write(chunk)\n    n += 1\n';
    const r = await execute({
      language: 'python',
      files: [{ content: fill }],
      runLimits: {
        memoryMib: 192,
        wallTimeMs: suiteScaledMs(60_000),
        cpuTimeMs: suiteScaledMs(60_000),
      },
      testCases: ['/dev/shm', '/var/tmp', '/tmp', '/dev/shm'].map((d) => ({
        stdin: `${d}\n`,
        expectedOutput: '',
      })),
    });
    expect(r.status).toBe('memory_limit');
    expect(r.testCases?.map((c) => c.status)).toEqual([
      'memory_limit',
      'memory_limit',
      'memory_limit',
      'memory_limit',
    ]);
  }, 300_000);

  it('a source file named like a compiler option is compiled as a file', async () => {
    // Read as an option, `-o.c` would name gcc's output `.c` and leave no ./main to run.
    const r = await execute({
      language: 'c',
      files: [
        {
          name: 'main.c',
          content:
            '#include <stdio.h>\nint helper(void);\nint main(void){printf("%d\\n", helper());return 0;}\n',
        },
        { name: '-o.c', content: 'int helper(void){return 42;}\n' },
      ],
    });
    expect(r.compile?.status).toBe('ok');
    expect(r.status).toBe('ok');
    expect(r.run?.stdoutText).toBe('42\n');
  }, 300_000);
});
