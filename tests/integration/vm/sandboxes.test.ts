import { execFile } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { closeSync, fstatSync, mkdtempSync, openSync, readSync, rmSync, writeSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Sandbox, type OutputMessage } from '@e2b/code-interpreter';
import { CommandExitError, RateLimitError, Sandbox as BaseSandbox } from 'e2b';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { startServer, type RunningServer } from '../../../src/api/server.js';
import type { Engine } from '../../../src/pool/index.js';
import type { SandboxService } from '../../../src/sandbox/index.js';
import { ensureImages, testSettings, vmSkipReason } from '../../support/vm.js';

/** A key of the shape E2B's SDK is given (the server takes it as one of its API keys). */
const E2B_KEY = `e2b_${'5'.repeat(40)}`;
/** The owner the server records for it (ApiKeys.check: the first 8 bytes of its sha256). */
const fingerprint = (key: string): string =>
  createHash('sha256').update(key).digest().subarray(0, 8).toString('hex');
const OWNER = fingerprint(E2B_KEY);
/** A second key, whose sandboxes the cap test fills. */
const CAPPED_KEY = `e2b_${'a'.repeat(40)}`;

const skip = vmSkipReason();
if (skip) console.warn(`skipping the sandbox tests in real VMs: ${skip}`);

/**
 * Sandboxes kept across calls, in real VMs behind a real `runner serve` (QEMU, TCG here):
 * state across cells, a matplotlib figure, files byte-exact, streamed commands, pause and a
 * server restart, forks, expiry, caps and isolation. One server (restarted once) and one data
 * folder for the whole file.
 */
describe.skipIf(skip !== null)('sandboxes in real VMs', () => {
  let server: RunningServer | undefined;
  let storeDir = '';
  const made = new Set<string>();

  const settings = () =>
    testSettings({
      host: '127.0.0.1',
      port: 0,
      jobStoreFile: join(storeDir, 'jobs.sqlite'),
      sandboxesDir: join(storeDir, 'sandboxes'),
      logLevel: 'warn',
      poolTarget: 0,
      sandboxMaxPerKey: 3,
      sandboxMaxRunning: 4,
      sandboxCommandTimeoutMs: 120_000,
      apiKeys: [E2B_KEY, CAPPED_KEY],
    });

  function sandboxes(): SandboxService {
    const engine = server?.engine as Engine | undefined;
    if (!engine?.sandboxes) throw new Error('the server runs no sandboxes');
    return engine.sandboxes;
  }

  async function create(owner: string | null = null, timeoutMs?: number): Promise<string> {
    const info = await sandboxes().create({
      language: 'python',
      owner,
      ...(timeoutMs !== undefined && { timeoutMs }),
    });
    made.add(`${owner ?? ''}\n${info.id}`);
    return info.id;
  }

  async function cell(id: string, code: string, owner: string | null = null) {
    return sandboxes().runCell(id, owner, { code });
  }

  async function sh(id: string, cmd: string, owner: string | null = null): Promise<string> {
    let out = '';
    const handle = await sandboxes().command(id, owner, { cmd }, (stream, data) => {
      if (stream === 'stdout') out += data.toString();
    });
    const result = await handle.done;
    expect(result.status, `${cmd}: ${result.message ?? ''}`).toBe('ok');
    return out;
  }

  beforeAll(async () => {
    await ensureImages(['python']);
    storeDir = mkdtempSync(join(tmpdir(), 'runner-sandboxes-'));
    server = await startServer(settings());
  });

  afterEach(async () => {
    for (const key of made) {
      const [owner = '', id = ''] = key.split('\n');
      await sandboxes()
        .kill(id, owner === '' ? null : owner)
        .catch(() => undefined);
    }
    made.clear();
  });

  afterAll(async () => {
    await server?.close();
    if (storeDir !== '') rmSync(storeDir, { recursive: true, force: true });
  });

  it('keeps variables, imports and definitions across cells, in python and javascript', async () => {
    const id = await create();
    const first = await cell(
      id,
      'import math\nx = 41\ndef twice(v):\n    return 2 * v\nprint("set")',
    );
    expect(first.error).toBeNull();
    expect(first.stdout.join('')).toBe('set\n');
    const second = await cell(id, 'twice(x) + math.floor(0.5)');
    expect(second.results).toEqual([{ isMainResult: true, text: '82' }]);
    expect(second.executionCount).toBe(first.executionCount + 1);
    const failed = await cell(id, 'undefined_name');
    expect(failed.error?.name).toBe('NameError');
    expect(failed.error?.traceback).toContain('undefined_name');

    const js1 = await sandboxes().runCell(id, null, {
      language: 'javascript',
      code: 'let n = 20; n + 1',
    });
    expect(js1.results[0]?.text).toBe('21');
    const js2 = await sandboxes().runCell(id, null, {
      language: 'javascript',
      code: 'console.log("n is", n); n * 2',
    });
    expect(js2.stdout.join('')).toBe('n is 20\n');
    expect(js2.results[0]?.text).toBe('40');
  });

  it('shows a matplotlib figure as a PNG', async () => {
    const id = await create();
    const out = await cell(id, 'import matplotlib.pyplot as plt\nplt.plot([1, 4, 9])\nplt.show()');
    expect(out.error).toBeNull();
    const png = out.results.find((r) => r.png !== undefined)?.png ?? '';
    const bytes = Buffer.from(png, 'base64');
    expect(bytes.subarray(0, 8).toString('hex')).toBe('89504e470d0a1a0a');
    expect(bytes.length).toBeGreaterThan(1000);
  });

  it('writes a file and reads it back byte for byte, across read chunks', async () => {
    const id = await create();
    const content = randomBytes(9 * 1024 * 1024 + 123);
    const written = await sandboxes().writeFile(id, null, '/home/user/data/blob.bin', content);
    expect(written).toMatchObject({
      path: '/home/user/data/blob.bin',
      type: 'file',
      size: content.length,
    });
    const chunks: Buffer[] = [];
    for await (const c of await sandboxes().readFile(id, null, 'data/blob.bin')) chunks.push(c);
    expect(Buffer.concat(chunks).equals(content)).toBe(true);
    const listed = await sandboxes().listFiles(id, null, '/home/user/data');
    expect(listed.map((e) => [e.name, e.type, e.size])).toEqual([
      ['blob.bin', 'file', content.length],
    ]);
    // The program sees the same file.
    expect(await sh(id, 'sha256sum data/blob.bin | cut -c1-64')).toBe(
      `${createHash('sha256').update(content).digest('hex')}\n`,
    );
    await expect(sandboxes().readFile(id, null, 'missing.txt')).rejects.toMatchObject({
      code: 'FILE_NOT_FOUND',
    });
    await expect(sandboxes().readFile(id, null, '/etc/passwd')).rejects.toMatchObject({
      code: 'FILE_NAME_INVALID',
    });
  });

  it("streams a command's output as it comes, with its exit code", async () => {
    const id = await create();
    const seen: { at: number; text: string }[] = [];
    const started = Date.now();
    const handle = await sandboxes().command(
      id,
      null,
      { cmd: 'echo one; sleep 2; echo two >&2; exit 7', envs: { WHO: 'x' } },
      (stream, data) =>
        void seen.push({ at: Date.now() - started, text: `${stream}:${data.toString()}` }),
    );
    const result = await handle.done;
    const ended = Date.now() - started;
    expect(result).toMatchObject({ exitCode: 7, status: 'runtime_error' });
    expect(seen.map((s) => s.text)).toEqual(['stdout:one\n', 'stderr:two\n']);
    // The first line was passed on before the command ended, not with its end.
    expect(ended - (seen[0]?.at ?? ended)).toBeGreaterThan(1500);
  });

  it('pauses, survives a restart of the server, and resumes with its state and files', async () => {
    const id = await create();
    await cell(id, 'kept = {"a": [1, 2, 3]}');
    await sandboxes().writeFile(id, null, 'notes.txt', Buffer.from('written before the pause\n'));
    const paused = await sandboxes().pause(id, null);
    expect(paused).toMatchObject({ state: 'paused', vmId: null });
    await expect(cell(id, '1')).rejects.toMatchObject({ code: 'SANDBOX_STATE' });

    await server?.close();
    server = await startServer(settings());
    expect(sandboxes().get(id, null).state).toBe('paused');

    const resumed = await sandboxes().resume(id, null);
    expect(resumed.state).toBe('running');
    const out = await cell(id, 'kept["a"][-1]');
    expect(out.results[0]?.text).toBe('3');
    expect(await sh(id, 'cat notes.txt')).toBe('written before the pause\n');
  });

  it('refuses to resume a snapshot changed on disk, and restarts an interpreter on demand', async () => {
    const id = await create();
    await cell(id, 'mark = "before"');
    await sandboxes().pause(id, null);
    const file = join(storeDir, 'sandboxes', id, 'vm.snap');
    const fd = openSync(file, 'r+');
    const at = Math.floor(fstatSync(fd).size / 2);
    const one = Buffer.alloc(1);
    readSync(fd, one, 0, 1, at);
    writeSync(fd, Buffer.from([(one[0] ?? 0) ^ 0xff]), 0, 1, at);
    await expect(sandboxes().resume(id, null)).rejects.toMatchObject({ code: 'SNAPSHOT_FAILED' });
    expect(sandboxes().get(id, null).state).toBe('paused');
    writeSync(fd, one, 0, 1, at);
    closeSync(fd);
    await sandboxes().resume(id, null);
    expect((await cell(id, 'mark')).results[0]?.text).toBe("'before'");
    expect(await sandboxes().restartInterpreter(id, null, 'python')).toBe(true);
    expect((await cell(id, 'mark')).error?.name).toBe('NameError');
  });

  it('forks into sandboxes that then differ, each with its own random state and VM', async () => {
    const id = await create();
    await cell(id, 'import random\nbase = "parent"');
    const forks = await sandboxes().fork(id, null, 2);
    expect(forks).toHaveLength(2);
    for (const f of forks) made.add(`\n${f.id}`);
    const [a, b] = forks.map((f) => f.id) as [string, string];
    expect(new Set([forks[0]?.vmId, forks[1]?.vmId, sandboxes().get(id, null).vmId]).size).toBe(3);
    await cell(a, 'base = "child a"');
    await cell(b, 'base = "child b"');
    expect((await cell(a, 'base')).results[0]?.text).toBe("'child a'");
    expect((await cell(b, 'base')).results[0]?.text).toBe("'child b'");
    expect((await cell(id, 'base')).results[0]?.text).toBe("'parent'");
    const ra = (await cell(a, 'random.random()')).results[0]?.text;
    const rb = (await cell(b, 'random.random()')).results[0]?.text;
    expect(ra).toBeDefined();
    expect(ra).not.toBe(rb);
  });

  it('ends a sandbox at its time-to-live and frees its VM', async () => {
    const engine = server?.engine as Engine;
    const busyBefore = engine.pool.stats().busy;
    const id = await create(null, 2000);
    expect(engine.pool.stats().busy).toBe(busyBefore + 1);
    await new Promise((r) => setTimeout(r, 4500));
    expect(() => sandboxes().get(id, null)).toThrow(
      expect.objectContaining({ code: 'SANDBOX_NOT_FOUND' }),
    );
    // The VM's teardown runs in the background.
    for (let i = 0; i < 50 && engine.pool.stats().busy > busyBefore; i++)
      await new Promise((r) => setTimeout(r, 100));
    expect(engine.pool.stats().busy).toBe(busyBefore);
  });

  it("refuses a key's sandbox past its cap, and hides one key's sandboxes from another", async () => {
    const capped = fingerprint(CAPPED_KEY);
    const ids = [await create(capped), await create(capped), await create(capped)];
    await expect(create(capped)).rejects.toMatchObject({ code: 'SANDBOX_LIMIT' });
    // Through the APIs: 429 with the code and the setting named, and E2B's SDK's own error.
    const refused = await fetch(`${server?.url}/v1/sandboxes`, {
      method: 'POST',
      headers: { authorization: `Bearer ${CAPPED_KEY}`, 'content-type': 'application/json' },
      body: JSON.stringify({ language: 'python' }),
    });
    expect(refused.status).toBe(429);
    const body = (await refused.json()) as { code: string; message: string };
    expect(body.code).toBe('SANDBOX_LIMIT');
    expect(body.message).toContain('sandboxMaxPerKey');
    const e2b = {
      apiKey: CAPPED_KEY,
      apiUrl: `${server?.url}/e2b`,
      sandboxUrl: `${server?.url}/e2b`,
    };
    await expect(Sandbox.create(e2b)).rejects.toBeInstanceOf(RateLimitError);
    expect(() => sandboxes().get(ids[0] ?? '', 'key-b')).toThrow(
      expect.objectContaining({ code: 'SANDBOX_NOT_FOUND' }),
    );
    expect(sandboxes().list('key-b')).toEqual([]);
    expect(
      sandboxes()
        .list(capped)
        .map((s) => s.id)
        .sort(),
    ).toEqual([...ids].sort());
  });

  it("cannot see another sandbox's files or processes", async () => {
    const a = await create();
    const b = await create();
    await sandboxes().writeFile(a, null, 'secret.txt', Buffer.from('only a\n'));
    const bg = await sandboxes().command(a, null, { cmd: 'exec sleep 300' });
    try {
      // No procps in the image: the processes are read from /proc.
      const sleeping = 'cat /proc/[0-9]*/comm 2>/dev/null | grep -cx sleep; true';
      expect(await sh(a, `ls; ${sleeping}`)).toBe('secret.txt\n1\n');
      expect(await sh(b, `ls -A; ${sleeping}`)).toBe('0\n');
      await expect(sandboxes().readFile(b, null, 'secret.txt')).rejects.toMatchObject({
        code: 'FILE_NOT_FOUND',
      });
    } finally {
      bg.kill();
      await bg.done;
    }
  });
  it("runs E2B's own SDKs unchanged: cells with state, files, commands, timeout, pause and connect, kill", async () => {
    const opts = {
      apiKey: E2B_KEY,
      apiUrl: `${server?.url}/e2b`,
      sandboxUrl: `${server?.url}/e2b`,
    };
    const sbx = await Sandbox.create({
      ...opts,
      metadata: { who: 'e2b-test' },
      envs: { FROM_CREATE: 'yes' },
    });
    made.add(`${OWNER}\n${sbx.sandboxId}`);
    const streamed: string[] = [];
    const first = await sbx.runCode('x = 20\nprint("streamed")\nx + 1', {
      onStdout: (m: OutputMessage) => void streamed.push(m.line),
    });
    expect(first.text).toBe('21');
    expect(first.logs.stdout).toEqual(['streamed', '\n']);
    expect(streamed.join('')).toBe('streamed\n');
    const second = await sbx.runCode('import os\nprint(x * 2, os.environ["FROM_CREATE"])');
    expect(second.logs.stdout.join('')).toBe('40 yes\n');
    expect(second.executionCount).toBe((first.executionCount ?? 0) + 1);
    const failed = await sbx.runCode('{}["missing"]');
    expect(failed.error).toMatchObject({ name: 'KeyError', value: "'missing'" });

    const bytes = randomBytes(300_000);
    await sbx.files.write('/home/user/e2b/blob.bin', new Uint8Array(bytes).buffer);
    const back = await sbx.files.read('/home/user/e2b/blob.bin', { format: 'bytes' });
    expect(Buffer.from(back).equals(bytes)).toBe(true);
    expect((await sbx.files.list('/home/user/e2b')).map((e) => [e.name, e.type, e.size])).toEqual([
      ['blob.bin', 'file', bytes.length],
    ]);
    expect(await sbx.files.exists('/home/user/nope')).toBe(false);

    const out: string[] = [];
    const run = await sbx.commands.run('echo "$GREETING from $(pwd)"; echo warn >&2', {
      envs: { GREETING: 'hello' },
      cwd: '/home/user/e2b',
      onStdout: (d) => void out.push(d),
    });
    expect(run).toMatchObject({
      exitCode: 0,
      stdout: 'hello from /home/user/e2b\n',
      stderr: 'warn\n',
    });
    expect(out.join('')).toBe('hello from /home/user/e2b\n');
    await expect(sbx.commands.run('exit 3')).rejects.toBeInstanceOf(CommandExitError);

    await sbx.setTimeout(120_000);
    const info = await sbx.getInfo();
    expect(info).toMatchObject({
      sandboxId: sbx.sandboxId,
      state: 'running',
      metadata: { who: 'e2b-test' },
    });
    expect(info.endAt.getTime() - Date.now()).toBeGreaterThan(100_000);

    expect(await sbx.pause()).toBe(true);
    expect(sandboxes().get(sbx.sandboxId, OWNER).state).toBe('paused');
    const again = await Sandbox.connect(sbx.sandboxId, opts);
    expect((await again.runCode('x')).text).toBe('20');
    expect(
      await again.files.read('/home/user/e2b/blob.bin', { format: 'bytes' }).then((b) => b.length),
    ).toBe(bytes.length);

    expect(await again.kill()).toBe(true);
    expect(await Sandbox.kill(sbx.sandboxId, opts)).toBe(false);

    // The plain SDK's base template: commands and files.
    const base = await BaseSandbox.create(opts);
    made.add(`${OWNER}\n${base.sandboxId}`);
    expect((await base.commands.run('uname -s')).stdout).toBe('Linux\n');
    await base.kill();
  });
  it('serves the same through /v1/sandboxes and `runner sandbox` (real HTTP, the real CLI)', async () => {
    const url = server?.url ?? '';
    const headers = { authorization: `Bearer ${E2B_KEY}`, 'content-type': 'application/json' };
    const call = (path: string, init: { body?: string; headers?: Record<string, string> } = {}) =>
      fetch(`${url}${path}`, {
        method: 'POST',
        ...(init.body !== undefined && { body: init.body }),
        headers: { ...headers, ...init.headers },
      });
    const created = await call('/v1/sandboxes', { body: JSON.stringify({ language: 'python' }) });
    expect(created.status).toBe(201);
    const { id } = (await created.json()) as { id: string };
    made.add(`${OWNER}\n${id}`);
    const cellRes = await call(`/v1/sandboxes/${id}/cells`, {
      body: JSON.stringify({ code: 'y = 6\ny * 7' }),
    });
    expect(((await cellRes.json()) as { results: { text: string }[] }).results[0]?.text).toBe('42');
    const sse = await call(`/v1/sandboxes/${id}/cells`, {
      body: JSON.stringify({ code: 'print(y)' }),
      headers: { accept: 'text/event-stream' },
    });
    const events = await sse.text();
    expect(events).toContain('event: stdout\ndata: {"type":"stdout","text":"6"}');
    expect(events).toContain('event: done');
    const blob = randomBytes(100_000);
    const put = await fetch(`${url}/v1/sandboxes/${id}/files?path=data.bin`, {
      method: 'PUT',
      headers: { authorization: headers.authorization, 'content-type': 'application/octet-stream' },
      body: blob,
    });
    expect(put.status).toBeLessThan(300);
    const got = await fetch(`${url}/v1/sandboxes/${id}/files?path=data.bin`, { headers });
    expect(Buffer.from(await got.arrayBuffer()).equals(blob)).toBe(true);

    const bin = join(import.meta.dirname, '../../../bin/runner.js');
    const cli = (...args: string[]) =>
      new Promise<{ code: number; stdout: string }>((resolve) => {
        execFile(
          process.execPath,
          [bin, 'sandbox', ...args],
          {
            env: {
              ...process.env,
              RUNNER_FROM_SOURCE: '1',
              RUNNER_URL: url,
              RUNNER_API_KEY: E2B_KEY,
            },
          },
          (err, stdout) => resolve({ code: err === null ? 0 : Number(err.code), stdout }),
        );
      });
    expect(await cli('exec', id, '--', 'wc -c < data.bin; exit 4')).toEqual({
      code: 4,
      stdout: '100000\n',
    });
    expect((await cli('run', id, 'y + 1')).stdout).toContain('7');
    expect((await call(`/v1/sandboxes/${id}/pause`, { body: '{}' })).status).toBe(200);
    expect((await cli('resume', id)).code).toBe(0);
    expect((await cli('run', id, 'y')).stdout).toContain('6');
    expect((await cli('kill', id)).code).toBe(0);
    expect((await fetch(`${url}/v1/sandboxes/${id}`, { headers })).status).toBe(404);
  });
});
