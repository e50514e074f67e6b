import { afterAll, beforeAll, describe, expect, test } from 'vitest';
import type { ExecuteResponse, JobView, PistonExecuteResponse } from '../../../src/api/schemas.js';
import { serverSkipReason, startPrivateServer, type PrivateServer } from '../../support/server.js';
import { ensureImages } from '../../support/vm.js';

/**
 * The HTTP service end to end: `startServer` with the real engine (QEMU, TCG here), python
 * only, over real HTTP. The images come from the shared test data folder (built there when
 * missing); the snapshots, VM run dirs and job store live in a private folder, so this test
 * neither sweeps nor prunes what other test files running at the same time use. VMs: one cold
 * boot for the snapshot, then one restore per job (three jobs).
 */
const reason = serverSkipReason();
if (reason !== null) console.warn(`tests/integration/api skipped: ${reason}`);

describe.skipIf(reason !== null)('runner serve with real VMs', () => {
  let fixture: PrivateServer | undefined;

  beforeAll(async () => {
    await ensureImages(['python']);
    fixture = await startPrivateServer('api-it-');
  });

  afterAll(async () => {
    // Every VM was destroyed: nothing is left in the private run dir.
    if (fixture) expect(await fixture.close()).toEqual([]);
  });

  const url = (path: string): string => {
    if (!fixture) throw new Error('the server did not start');
    return fixture.url(path);
  };
  const post = async (path: string, body: unknown) => {
    const res = await fetch(url(path), {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify(body),
    });
    const json: unknown = await res.json();
    return { status: res.status, body: json };
  };

  test('POST /v1/execute runs python in a microVM', async () => {
    const { status, body } = await post('/v1/execute', {
      language: 'python',
      files: [
        {
          content:
            'import sys\nname = input()\nprint(f"hello {name}")\nprint("warn", file=sys.stderr)\nsys.exit(3)',
        },
      ],
      stdin: 'api\n',
    });
    expect(status).toBe(200);
    const result = body as ExecuteResponse;
    expect(result.status).toBe('runtime_error');
    expect(result.run).toMatchObject({
      exitCode: 3,
      stdoutText: 'hello api\n',
      stderrText: 'warn\n',
    });
    expect(result.version).toBe('3.11.2');
  });

  test("POST /api/v2/execute takes Piston's request shape", async () => {
    // Piston's documented example (docs/api-v2.md), with python in place of js.
    const { status, body } = await post('/api/v2/execute', {
      language: 'python',
      version: '3.x',
      files: [{ name: 'my_cool_code.py', content: 'import sys\nprint(sys.argv[1:])' }],
      stdin: '',
      args: ['1', '2', '3'],
      compile_timeout: 10000,
      run_timeout: 3000,
      compile_memory_limit: -1,
      run_memory_limit: -1,
    });
    expect(status).toBe(200);
    const result = body as PistonExecuteResponse;
    expect(result).toMatchObject({ language: 'python', version: '3.11.2' });
    expect(result.run).toMatchObject({
      stdout: "['1', '2', '3']\n",
      stderr: '',
      output: "['1', '2', '3']\n",
      code: 0,
      signal: null,
    });
  });

  test('POST /v1/jobs, then GET /v1/jobs/:id to the result; runtimes and metrics show it', async () => {
    const { status, body } = await post('/v1/jobs', {
      language: 'py',
      files: [{ content: 'print(6 * 7)' }],
    });
    expect(status).toBe(202);
    const { id } = body as { id: string };
    let job: JobView | undefined;
    await expect
      .poll(
        async () => {
          job = (await (await fetch(url(`/v1/jobs/${id}`))).json()) as JobView;
          return job.state;
        },
        { timeout: 120_000, interval: 250 },
      )
      .toBe('done');
    expect(job?.result).toMatchObject({ status: 'ok', run: { stdoutText: '42\n' } });

    const runtimes = (await (await fetch(url('/v1/runtimes'))).json()) as {
      language: string;
      imageReady: boolean;
      snapshotReady: boolean;
    }[];
    expect(runtimes.find((r) => r.language === 'python')).toMatchObject({
      imageReady: true,
      snapshotReady: true,
    });
    const metrics = await (await fetch(url('/metrics'))).text();
    expect(metrics).toMatch(/runner_jobs_total\{language="python",status="ok"\} 2/);
    expect(metrics).toMatch(/runner_jobs_total\{language="python",status="runtime_error"\} 1/);
    // The snapshot's cold boot and every restore are timed.
    expect(metrics).toMatch(
      /runner_vm_lifecycle_duration_seconds_count\{kind="boot",language="python"\} 1/,
    );
    expect(metrics).toMatch(
      /runner_vm_lifecycle_duration_seconds_count\{kind="restore",language="python"\} [3-9]/,
    );
  });

  test('a bad request is refused before any VM', async () => {
    const { status, body } = await post('/api/v2/execute', {
      language: 'python',
      files: [{ content: '' }],
    });
    expect(status).toBe(400);
    expect(body).toEqual({ message: 'body is missing the field "version"' });
  });
});
