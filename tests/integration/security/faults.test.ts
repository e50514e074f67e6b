import { spawn, type ChildProcess } from 'node:child_process';
import {
  chmodSync,
  copyFileSync,
  existsSync,
  mkdtempSync,
  readdirSync,
  readFileSync,
  rmSync,
} from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { projectRoot } from '../../../src/images/agent-bundle.js';
import { testDataPaths } from '../../support/paths.js';
import { ensureImages, vmSkipReason } from '../../support/vm.js';

const skip = vmSkipReason();
if (skip) console.warn(`skipping the fault tests against a real server: ${skip}`);

/** A free TCP port on 127.0.0.1. */
async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = createServer();
    s.listen(0, '127.0.0.1', () => {
      const address = s.address();
      s.close(() =>
        typeof address === 'object' && address
          ? resolve(address.port)
          : reject(new Error('no port')),
      );
    });
  });
}

/** Pids of the QEMU processes whose command line names `dir`. */
function vmmsUnder(dir: string): number[] {
  const pids: number[] = [];
  for (const p of readdirSync('/proc')) {
    if (!/^\d+$/.test(p)) continue;
    try {
      const cmd = readFileSync(`/proc/${p}/cmdline`, 'utf8');
      // QEMU itself (jailed, exec'd by its full path), not the jail's parent.
      const argv0 = cmd.split('\0')[0] ?? '';
      if (/(^|\/)qemu-system[^/]*$/.test(argv0) && cmd.includes(dir)) pids.push(Number(p));
    } catch {
      // gone
    }
  }
  return pids;
}

/**
 * The service is killed with SIGKILL while jobs run, then restarted: every accepted job ends
 * with a final status, and nothing of the old VMs is left. Then a flood of ten times more
 * concurrent requests than VM slots: bounded, 503 with Retry-After beyond the queue, no crash.
 * A real `runner serve` process, real VMs (qemu), a private data dir over the shared images.
 */
describe.skipIf(skip !== null)('faults against a real runner serve', () => {
  const shared = testDataPaths();
  let dir = '';
  let port = 0;
  let server: ChildProcess | null = null;

  const env = (): NodeJS.ProcessEnv => ({
    ...process.env,
    RUNNER_DATA_DIR: dir,
    RUNNER_IMAGES_DIR: shared.imagesDir,
    RUNNER_PORT: String(port),
    RUNNER_HOST: '127.0.0.1',
    RUNNER_POOL_TARGET: '0',
    RUNNER_POOL_MAX_VMS: '2',
    RUNNER_QUEUE_MAX: '4',
    RUNNER_LOG_LEVEL: 'warn',
  });

  async function start(): Promise<ChildProcess> {
    const child = spawn(process.execPath, [join(projectRoot(), 'bin', 'runner.js'), 'serve'], {
      env: env(),
      stdio: ['ignore', 'ignore', 'pipe'],
    });
    let stderr = '';
    child.stderr?.on('data', (d: Buffer) => (stderr = (stderr + d.toString()).slice(-4000)));
    const deadline = Date.now() + 60_000;
    for (;;) {
      if (child.exitCode !== null) throw new Error(`runner serve exited: ${stderr}`);
      try {
        const res = await fetch(`http://127.0.0.1:${port}/healthz`);
        if (res.ok) return child;
      } catch {
        // not up yet
      }
      if (Date.now() > deadline) throw new Error(`runner serve did not come up: ${stderr}`);
      await new Promise((r) => setTimeout(r, 200));
    }
  }

  const api = async (
    method: string,
    path: string,
    body?: unknown,
  ): Promise<{ status: number; headers: Headers; body: Record<string, unknown> }> => {
    const res = await fetch(`http://127.0.0.1:${port}${path}`, {
      method,
      headers: body === undefined ? {} : { 'content-type': 'application/json' },
      body: body === undefined ? undefined : JSON.stringify(body),
    });
    return {
      status: res.status,
      headers: res.headers,
      body: (await res.json()) as Record<string, unknown>,
    };
  };

  beforeAll(async () => {
    await ensureImages(['python']);
    dir = mkdtempSync(join(tmpdir(), 'runner-faults-'));
    chmodSync(dir, 0o755);
    const probe = join(shared.dataDir, 'kvm-probe.json');
    if (existsSync(probe)) copyFileSync(probe, join(dir, 'kvm-probe.json'));
    port = await freePort();
    server = await start();
  });

  afterAll(async () => {
    if (server && server.exitCode === null) {
      server.kill('SIGTERM');
      await new Promise((r) => server?.once('exit', r));
    }
    for (const pid of vmmsUnder(dir)) process.kill(pid, 'SIGKILL');
    if (dir !== '') rmSync(dir, { recursive: true, force: true });
  });

  it('SIGKILL with jobs in flight: after a restart every accepted job is final and no VM is left', async () => {
    const job = {
      language: 'python',
      files: [{ content: 'import time\ntime.sleep(60)' }],
      runLimits: { wallTimeMs: 90_000 },
    };
    const ids: string[] = [];
    for (let i = 0; i < 3; i++) {
      const r = await api('POST', '/v1/jobs', job);
      expect(r.status).toBe(202);
      ids.push(r.body.id as string);
    }
    // Wait until a job runs inside a VM.
    const deadline = Date.now() + 120_000;
    while (Date.now() < deadline) {
      const states = await Promise.all(
        ids.map(async (id) => (await api('GET', `/v1/jobs/${id}`)).body.state),
      );
      if (states.includes('running') && vmmsUnder(join(dir, 'run')).length > 0) break;
      await new Promise((r) => setTimeout(r, 500));
    }
    expect(vmmsUnder(join(dir, 'run')).length).toBeGreaterThan(0);
    server?.kill('SIGKILL');
    await new Promise((r) => server?.once('exit', r));
    // Jailed, each QEMU dies with the service that started it (the jail's PDEATHSIG): none
    // outlives the killed server. (Unjailed they would, until the restart's sweep.)
    const gone = Date.now() + 10_000;
    while (vmmsUnder(join(dir, 'run')).length > 0 && Date.now() < gone)
      await new Promise((r) => setTimeout(r, 100));
    expect(vmmsUnder(join(dir, 'run'))).toEqual([]);

    server = await start();
    // The restart sweeps what the VMs left (their run dirs) and ends the jobs.
    expect(vmmsUnder(join(dir, 'run'))).toEqual([]);
    for (const id of ids) {
      const r = await api('GET', `/v1/jobs/${id}`);
      expect(r.status).toBe(200);
      expect(r.body.state).toBe('done');
      expect(r.body.status).toBe('sandbox_error');
    }
    // The next normal job runs.
    const ok = await api('POST', '/v1/execute', {
      language: 'python',
      files: [{ content: 'print(6 * 7)' }],
    });
    expect(ok.status).toBe(200);
    expect((ok.body.run as { stdoutText: string }).stdoutText).toBe('42\n');
  });

  it('a flood of ten times the VM slots: bounded queue, 503 with Retry-After beyond it, no crash', async () => {
    const slots = 2;
    const job = { language: 'python', files: [{ content: 'print("flood")' }] };
    const results = await Promise.all(
      Array.from({ length: slots * 10 }, () => api('POST', '/v1/execute', job)),
    );
    const codes = results.map((r) => r.status);
    expect(codes.filter((c) => c === 200).length).toBeGreaterThanOrEqual(slots);
    const refused = results.filter((r) => r.status === 503 || r.status === 429);
    expect(refused.length).toBeGreaterThan(0);
    for (const r of refused) expect(Number(r.headers.get('retry-after'))).toBeGreaterThan(0);
    expect(codes.every((c) => c === 200 || c === 503 || c === 429)).toBe(true);
    for (const r of results.filter((x) => x.status === 200))
      expect((r.body.run as { stdoutText: string }).stdoutText).toBe('flood\n');
    // Still alive and serving.
    expect((await api('GET', '/healthz')).status).toBe(200);
    expect(server?.exitCode).toBeNull();
  });
  it('SIGTERM with a job in flight: the job finishes, new requests are refused, the server exits cleanly', async () => {
    const pending = api('POST', '/v1/execute', {
      language: 'python',
      files: [{ content: 'import time\ntime.sleep(4)\nprint("drained")' }],
    });
    // Wait until the job holds a VM.
    const deadline = Date.now() + 60_000;
    while (vmmsUnder(join(dir, 'run')).length === 0 && Date.now() < deadline)
      await new Promise((r) => setTimeout(r, 200));
    const exited = new Promise<number | null>((resolve) =>
      server?.once('exit', (code) => resolve(code)),
    );
    server?.kill('SIGTERM');
    await new Promise((r) => setTimeout(r, 300));
    const refused = await api('POST', '/v1/execute', {
      language: 'python',
      files: [{ content: 'print(1)' }],
    }).catch(() => null);
    if (refused !== null) expect(refused.status).toBe(503);
    const done = await pending;
    expect(done.status).toBe(200);
    expect((done.body.run as { stdoutText: string }).stdoutText).toBe('drained\n');
    expect(await exited).toBe(0);
    expect(vmmsUnder(join(dir, 'run'))).toEqual([]);
  });
});
