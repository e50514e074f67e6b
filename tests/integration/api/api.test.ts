import { createServer } from 'node:http';
import type { AddressInfo } from 'node:net';
import { afterAll, beforeAll, describe, expect, test } from 'vitest';
import type { ExecuteResponse, JobView, PistonExecuteResponse } from '../../../src/api/schemas.js';
import { serverSkipReason, startPrivateServer, type PrivateServer } from '../../support/server.js';
import { suiteScaledMs } from '../../support/paths.js';
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
    // The callback test's listener is on loopback: the egress allow-list opens 127.0.0.1 only.
    fixture = await startPrivateServer('api-it-', { egressAllow: ['127.0.0.1'] });
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
    // Piston's documented example (docs/api-v2.md), with python in place of js; its timeouts
    // at the suite's scale (a 3 s wall limit killed the program as it exited on a loaded host).
    const { status, body } = await post('/api/v2/execute', {
      language: 'python',
      version: '3.x',
      files: [{ name: 'my_cool_code.py', content: 'import sys\nprint(sys.argv[1:])' }],
      stdin: '',
      args: ['1', '2', '3'],
      compile_timeout: suiteScaledMs(10000),
      run_timeout: suiteScaledMs(3000),
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

  test('callbackUrl: an allow-listed loopback listener gets the result; refused addresses are a 400', async () => {
    const received: { method: string; body: JobView }[] = [];
    const listener = createServer((req, res) => {
      let data = '';
      req.on('data', (c: Buffer) => (data += c.toString()));
      req.on('end', () => {
        received.push({ method: req.method ?? '', body: JSON.parse(data) as JobView });
        res.end('ok');
      });
    });
    await new Promise<void>((r) => listener.listen(0, '127.0.0.1', r));
    try {
      const port = (listener.address() as AddressInfo).port;
      // Refused before any VM, and nothing is sent to them: 127.0.0.2 is outside the allow-list.
      for (const refused of [
        'http://169.254.169.254/latest/meta-data',
        'http://[::ffff:169.254.169.254]/',
        `http://127.0.0.2:${port}/`,
        'http://10.0.0.1/',
      ]) {
        const { status, body } = await post('/v1/jobs', {
          language: 'py',
          files: [{ content: 'print(1)' }],
          callbackUrl: refused,
        });
        expect(status, refused).toBe(400);
        expect(body, refused).toMatchObject({ code: 'EGRESS_DENIED' });
      }
      const { status, body } = await post('/v1/jobs', {
        language: 'py',
        files: [{ content: 'print("called back")' }],
        callbackUrl: `http://127.0.0.1:${port}/hook`,
      });
      expect(status).toBe(202);
      const { id } = body as { id: string };
      await expect.poll(() => received.length, { timeout: 120_000, interval: 200 }).toBe(1);
      expect(received[0]?.method).toBe('POST');
      expect(received[0]?.body).toMatchObject({
        id,
        state: 'done',
        result: { status: 'ok', run: { stdoutText: 'called back\n' } },
      });
    } finally {
      listener.close();
    }
  });
});
