import { execFileSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { gzipSync } from 'node:zlib';
import type { AddressInfo } from 'node:net';
import { Sandbox as CodeSandbox } from '@e2b/code-interpreter';
import {
  AuthenticationError,
  CommandExitError,
  FileNotFoundError,
  Sandbox,
  SandboxError,
} from 'e2b';
import { afterAll, beforeAll, describe, expect, test } from 'vitest';
import { shellQuote } from '../../../src/api/e2b/envd.js';
import { FakeSandboxes, unquote } from '../../support/fake-sandboxes.js';
import { FakeEngine, makeApp, type TestApp } from './helpers.js';

/** The job engine's fake, with the sandbox engine's fake as its `sandboxes`. */
class SandboxEngine extends FakeEngine {
  readonly sandboxes = new FakeSandboxes(this.languages);
}

/** E2B's error body. */
interface E2bError {
  code: number;
  message: string;
}

const KEY = 'e2b_0123456789abcdef0123456789abcdef01234567';

interface Served {
  t: TestApp;
  engine: SandboxEngine;
  base: string;
  opts: { apiUrl: string; sandboxUrl: string; apiKey: string };
}

async function serve(settings: Record<string, unknown> = {}): Promise<Served> {
  const engine = new SandboxEngine();
  const t = await makeApp({ engine, settings });
  await t.app.listen({ host: '127.0.0.1', port: 0 });
  const { port } = t.app.server.address() as AddressInfo;
  const base = `http://127.0.0.1:${port}/e2b`;
  return { t, engine, base, opts: { apiUrl: base, sandboxUrl: base, apiKey: KEY } };
}

/** What the fake engine holds of a sandbox (whoever owns it). */
function infoOf(served: Served, id: string) {
  const box = served.engine.sandboxes.boxes.get(id);
  if (box === undefined) throw new Error(`no sandbox ${id} in the fake`);
  return box.info;
}

describe('the E2B SDKs against our E2B API (fake sandbox engine)', () => {
  let s: Served;
  let dataDir: string;
  beforeAll(async () => {
    dataDir = mkdtempSync(join(tmpdir(), 'e2b-test-'));
    s = await serve({ apiKeys: [KEY], dataDir });
  });
  afterAll(async () => {
    await s.t.close();
    rmSync(dataDir, { recursive: true, force: true });
  });

  test('create with metadata, envs and a timeout; getInfo; list with filters', async () => {
    const sbx = await CodeSandbox.create({
      ...s.opts,
      metadata: { user: 'ann', run: '1' },
      envs: { FOO: 'bar' },
      timeoutMs: 120_000,
    });
    const info = infoOf(s, sbx.sandboxId);
    expect(info.language).toBe('python');
    expect(info.template).toBe('code-interpreter-v1');
    expect(info.metadata).toEqual({ user: 'ann', run: '1' });
    expect(info.envs).toEqual({ FOO: 'bar' });
    expect(info.timeoutMs).toBe(120_000);
    // The owner is the key's fingerprint, computed as for Authorization: Bearer.
    expect(info.owner).toMatch(/^[0-9a-f]{16}$/);

    const got = await sbx.getInfo();
    expect(got.sandboxId).toBe(sbx.sandboxId);
    expect(got.templateId).toBe('code-interpreter-v1');
    expect(got.metadata).toEqual({ user: 'ann', run: '1' });
    expect(got.state).toBe('running');
    expect(got.startedAt).toBeInstanceOf(Date);
    expect(got.endAt.getTime()).toBeGreaterThan(Date.now() + 100_000);

    const other = await Sandbox.create('bash', { ...s.opts, metadata: { user: 'bob' } });
    const all = await Sandbox.list(s.opts).nextItems();
    expect(all.map((x) => x.sandboxId).sort()).toEqual([sbx.sandboxId, other.sandboxId].sort());
    const anns = await Sandbox.list({
      ...s.opts,
      query: { metadata: { user: 'ann' } },
    }).nextItems();
    expect(anns.map((x) => x.sandboxId)).toEqual([sbx.sandboxId]);
    const paused = await Sandbox.list({ ...s.opts, query: { state: ['paused'] } }).nextItems();
    expect(paused).toEqual([]);
    expect(await other.kill()).toBe(true);
    await sbx.kill();
  });

  test('an unknown template is a 400 with the E2B body', async () => {
    const err = await Sandbox.create('klingon-9', s.opts).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(SandboxError);
    expect(String(err)).toMatch(/400: unknown template "klingon-9"/);
    const res = await fetch(`${s.base}/v2/sandboxes`, {
      method: 'POST',
      headers: { 'x-api-key': KEY, 'content-type': 'application/json' },
      body: JSON.stringify({ templateID: 'klingon-9' }),
    });
    expect(res.status).toBe(400);
    const body = (await res.json()) as E2bError;
    expect(body.code).toBe(400);
    expect(body.message).toMatch(/klingon-9/);
  });

  test('runCode streams stdout, gives the result text, the error shape and the count', async () => {
    const sbx = await CodeSandbox.create(s.opts);
    const lines: string[] = [];
    const ex = await sbx.runCode('print("side effect")\nwarn(careful)\n1+1', {
      onStdout: (m) => lines.push(m.line),
      envs: { X: '1' },
    });
    expect(lines).toEqual(['side effect\n']);
    expect(ex.text).toBe('2');
    expect(ex.logs).toEqual({ stdout: ['side effect\n'], stderr: ['careful\n'] });
    expect(ex.executionCount).toBe(1);
    expect(ex.error).toBeUndefined();
    expect(s.engine.sandboxes.cellRequests.at(-1)?.envs).toEqual({ X: '1' });

    const bad = await sbx.runCode('boom', { language: 'python' });
    expect(bad.error?.name).toBe('NameError');
    expect(bad.error?.value).toBe("name 'boom' is not defined");
    expect(bad.error?.traceback).toMatch(/^Traceback/);
    expect(bad.executionCount).toBe(2);

    const fig = await sbx.runCode('show_png()');
    expect(fig.results[0]?.png).toBe('iVBORw0KGgo=');
    expect(fig.results[0]?.isMainResult).toBe(false);

    const js = await sbx.runCode('3+4', { language: 'js' });
    expect(js.text).toBe('7');
    expect(s.engine.sandboxes.cellRequests.at(-1)?.language).toBe('javascript');
    await expect(sbx.runCode('1', { language: 'ts' })).rejects.toThrow(/400/);

    const ctx = await sbx.createCodeContext({ language: 'javascript', cwd: '/tmp' });
    expect(ctx).toEqual({ id: 'javascript', language: 'javascript', cwd: '/tmp' });
    const viaCtx = await sbx.runCode('1+2', { context: ctx });
    expect(viaCtx.text).toBe('3');
    expect(s.engine.sandboxes.cellRequests.at(-1)?.language).toBe('javascript');
    expect((await sbx.listCodeContexts()).map((c) => c.id)).toEqual(['python', 'javascript']);
    await sbx.restartCodeContext(ctx);
    await sbx.removeCodeContext(ctx);
    await sbx.kill();
  });

  test('files: write and read byte-exact (text and binary), list, exists, makeDir, remove, rename', async () => {
    const sbx = await Sandbox.create(s.opts);
    const info = await sbx.files.write('/home/user/a.txt', 'hi there');
    expect(info).toEqual({ name: 'a.txt', type: 'file', path: '/home/user/a.txt' });
    expect(await sbx.files.read('/home/user/a.txt')).toBe('hi there');

    // Every byte value, and bytes that look like a multipart delimiter.
    const bin = Buffer.concat([
      Buffer.from(Array.from({ length: 256 }, (_, i) => i)),
      Buffer.from('\r\n------formdata-undici-0\r\n--\r\n'),
      Buffer.alloc(200_000, 0xff),
    ]);
    await sbx.files.write('/home/user/d/bin.dat', new Uint8Array(bin).buffer);
    const back = await sbx.files.read('/home/user/d/bin.dat', { format: 'bytes' });
    expect(Buffer.from(back).equals(bin)).toBe(true);

    await sbx.files.write([
      { path: '/home/user/m1.txt', data: 'one' },
      { path: '/home/user/m2.txt', data: 'two' },
    ]);
    expect(await sbx.files.read('/home/user/m2.txt')).toBe('two');

    const list = await sbx.files.list('/home/user');
    expect(list.map((e) => [e.name, e.type])).toEqual([
      ['a.txt', 'file'],
      ['d', 'dir'],
      ['m1.txt', 'file'],
      ['m2.txt', 'file'],
    ]);
    expect(list[0]?.size).toBe(8);
    expect(list[0]?.permissions).toBe('-rw-r--r--');
    expect(await sbx.files.exists('/home/user/a.txt')).toBe(true);
    expect(await sbx.files.exists('/home/user/missing')).toBe(false);
    expect(await sbx.files.makeDir('/home/user/new/deep')).toBe(true);
    expect(await sbx.files.makeDir('/home/user/new/deep')).toBe(false);
    const moved = await sbx.files.rename('/home/user/a.txt', '/home/user/new/b.txt');
    expect(moved.path).toBe('/home/user/new/b.txt');
    expect(await sbx.files.read('/home/user/new/b.txt')).toBe('hi there');
    await sbx.files.remove('/home/user/new');
    expect(await sbx.files.exists('/home/user/new/b.txt')).toBe(false);
    await expect(sbx.files.read('/home/user/nope')).rejects.toBeInstanceOf(FileNotFoundError);
    await expect(sbx.files.list('/home/user/nope')).rejects.toBeInstanceOf(FileNotFoundError);
    expect(await sbx.isRunning()).toBe(true);
    await sbx.kill();
  });

  test('commands: stdout, a non-zero exit, envs and cwd, background and kill', async () => {
    const sbx = await Sandbox.create({ ...s.opts, envs: { WHO: 'sandbox' } });
    const ok = await sbx.commands.run('echo hi $WHO');
    expect(ok).toMatchObject({ exitCode: 0, stdout: 'hi sandbox\n', stderr: '' });
    const req = s.engine.sandboxes.commandRequests.at(-1);
    expect(req?.cmd).toBe(`'/bin/bash' '-l' '-c' 'echo hi $WHO'`);
    expect(req?.timeoutMs).toBe(60_000);

    const err = await sbx.commands.run('echo oops >&2; exit 3').catch((e: unknown) => e);
    expect(err).toBeInstanceOf(CommandExitError);
    expect((err as CommandExitError).exitCode).toBe(3);
    expect((err as CommandExitError).stderr).toBe('oops\n');

    const streamed: string[] = [];
    const env = await sbx.commands.run('echo $A; pwd', {
      envs: { A: 'B' },
      cwd: '/tmp',
      onStdout: (d) => void streamed.push(d),
    });
    expect(env.stdout).toBe('B\n/tmp\n');
    expect(streamed.join('')).toBe('B\n/tmp\n');
    expect(s.engine.sandboxes.commandRequests.at(-1)).toMatchObject({
      envs: { A: 'B' },
      cwd: '/tmp',
    });

    const bg = await sbx.commands.run('sleep 30', { background: true });
    expect(bg.pid).toBeGreaterThan(0);
    const listed = await sbx.commands.list();
    expect(listed.map((p) => p.pid)).toContain(bg.pid);
    // Another client attaches to the running command.
    const attached = await sbx.commands.connect(bg.pid);
    expect(await bg.kill()).toBe(true);
    const ended = await bg.wait().catch((e: unknown) => e);
    expect(ended).toBeInstanceOf(CommandExitError);
    expect((ended as CommandExitError).exitCode).toBe(-1);
    await expect(attached.wait()).rejects.toBeInstanceOf(CommandExitError);
    expect(await sbx.commands.kill(bg.pid)).toBe(false);

    // stdin to a background command.
    const cat = await sbx.commands.run('cat', { background: true, stdin: true });
    await sbx.commands.sendStdin(cat.pid, 'typed\n');
    await sbx.commands.closeStdin(cat.pid);
    const catted = await cat.wait();
    expect(catted.stdout).toBe('typed\n');
    await sbx.kill();
  });

  test('setTimeout, pause, then Sandbox.connect resumes; kill is true, then false', async () => {
    const sbx = await Sandbox.create(s.opts);
    await sbx.setTimeout(600_000);
    expect(infoOf(s, sbx.sandboxId).timeoutMs).toBe(600_000);
    expect(await sbx.pause()).toBe(true);
    expect(await sbx.pause()).toBe(false); // already paused: 409
    expect((await sbx.getInfo()).state).toBe('paused');
    expect(await sbx.isRunning()).toBe(false);
    const back = await Sandbox.connect(sbx.sandboxId, { ...s.opts, timeoutMs: 60_000 });
    expect((await back.getInfo()).state).toBe('running');
    expect((await back.commands.run('echo back')).stdout).toBe('back\n');
    // Connecting to a running one is a 200 (and still works).
    await Sandbox.connect(sbx.sandboxId, s.opts);
    expect(await back.kill()).toBe(true);
    expect(await Sandbox.kill(sbx.sandboxId, s.opts)).toBe(false);
    await expect(Sandbox.getInfo(sbx.sandboxId, s.opts)).rejects.toThrow(/not found/);
  });

  test('a wrong X-Access-Token is refused on envd and the code interpreter', async () => {
    const sbx = await CodeSandbox.create(s.opts);
    // The SDK's own object, made as create/connect make it, with a wrong token.
    const Ctor = CodeSandbox as unknown as new (o: Record<string, unknown>) => CodeSandbox;
    const forged = new Ctor({
      ...s.opts,
      sandboxId: sbx.sandboxId,
      envdVersion: '0.5.7',
      envdAccessToken: 'v1.-.wrong',
    });
    await expect(forged.files.read('/home/user/x')).rejects.toBeInstanceOf(AuthenticationError);
    await expect(forged.files.list('/home/user')).rejects.toBeInstanceOf(AuthenticationError);
    await expect(forged.commands.run('echo hi')).rejects.toBeInstanceOf(AuthenticationError);
    await expect(forged.runCode('1+1')).rejects.toThrow(/401/);
    const headers = {
      'e2b-sandbox-id': sbx.sandboxId,
      'x-access-token': 'v1.-.wrong',
      'content-type': 'application/json',
    };
    const unary = await fetch(`${s.base}/filesystem.Filesystem/Stat`, {
      method: 'POST',
      headers,
      body: JSON.stringify({ path: '/home/user' }),
    });
    expect(unary.status).toBe(401);
    expect(await unary.json()).toMatchObject({ code: 'unauthenticated' });
    const files = await fetch(`${s.base}/files?path=/home/user/x`, { headers });
    expect(files.status).toBe(401);
    expect(await files.json()).toMatchObject({ code: 401 });
    const exec = await fetch(`${s.base}/execute`, {
      method: 'POST',
      headers,
      body: JSON.stringify({ code: '1+1' }),
    });
    expect(exec.status).toBe(401);
    // A token of another sandbox does not open this one.
    const other = await CodeSandbox.create(s.opts);
    const token = (other as unknown as { envdAccessToken: string }).envdAccessToken;
    const cross = await fetch(`${s.base}/files?path=/home/user/x`, {
      headers: { ...headers, 'x-access-token': token },
    });
    expect(cross.status).toBe(401);
    await other.kill();
    await sbx.kill();
  });

  test('the token secret survives a restart (it is kept under the data dir)', async () => {
    const secret = readFileSync(join(dataDir, 'e2b-token.key'));
    expect(secret.length).toBe(32);
    const again = await serve({ apiKeys: [KEY], dataDir });
    try {
      const sbx = await Sandbox.create(s.opts);
      const token = (sbx as unknown as { envdAccessToken: string }).envdAccessToken;
      // The second server (same data dir, another engine): the token checks out, so the call
      // reaches its engine, which has no such sandbox.
      const res = await fetch(`${again.base}/files?path=/home/user/x`, {
        headers: { 'e2b-sandbox-id': sbx.sandboxId, 'x-access-token': token },
      });
      expect(res.status).toBe(404);
      const body = (await res.json()) as E2bError;
      expect(body.code).toBe(404);
      expect(body.message).toMatch(/sandbox/);
      await sbx.kill();
    } finally {
      await again.t.close();
    }
  });

  test("a removed API key's access tokens stop working", async () => {
    const sbx = await Sandbox.create(s.opts);
    const token = (sbx as unknown as { envdAccessToken: string }).envdAccessToken;
    const without = await serve({ apiKeys: [`e2b_${'f'.repeat(40)}`], dataDir });
    try {
      const res = await fetch(`${without.base}/files?path=/home/user/x`, {
        headers: { 'e2b-sandbox-id': sbx.sandboxId, 'x-access-token': token },
      });
      expect(res.status).toBe(401);
      expect(((await res.json()) as E2bError).message).toMatch(/no longer configured/);
    } finally {
      await without.t.close();
      await sbx.kill();
    }
  });

  test('fork copies a sandbox; a raw gzip upload with ?path= is taken', async () => {
    const sbx = await Sandbox.create(s.opts);
    await sbx.files.write('/home/user/keep.txt', 'kept');
    const res = await fetch(`${s.base}/sandboxes/${sbx.sandboxId}/fork`, {
      method: 'POST',
      headers: { 'x-api-key': KEY, 'content-type': 'application/json' },
      body: JSON.stringify({ count: 1, timeout: 90 }),
    });
    expect(res.status).toBe(201);
    const [fork] = (await res.json()) as {
      sandbox: { sandboxID: string; envdAccessToken: string };
    }[];
    expect(fork?.sandbox.sandboxID).not.toBe(sbx.sandboxId);
    const copy = await Sandbox.connect(fork?.sandbox.sandboxID ?? '', s.opts);
    expect(await copy.files.read('/home/user/keep.txt')).toBe('kept');
    expect(infoOf(s, copy.sandboxId).timeoutMs).toBe(90_000);

    const up = await fetch(`${s.base}/files?path=/home/user/z.txt`, {
      method: 'POST',
      headers: {
        'e2b-sandbox-id': copy.sandboxId,
        'x-access-token': fork?.sandbox.envdAccessToken ?? '',
        'content-type': 'application/octet-stream',
        'content-encoding': 'gzip',
      },
      body: gzipSync(Buffer.from('zipped')),
    });
    expect(up.status).toBe(200);
    expect(await copy.files.read('/home/user/z.txt')).toBe('zipped');
    await copy.kill();
    await sbx.kill();
  });

  test('a wrong API key is an AuthenticationError', async () => {
    await expect(Sandbox.create({ ...s.opts, apiKey: 'e2b_wrong' })).rejects.toBeInstanceOf(
      AuthenticationError,
    );
    await expect(
      Sandbox.list({ ...s.opts, apiKey: 'e2b_wrong' }).nextItems(),
    ).rejects.toBeInstanceOf(AuthenticationError);
  });

  test('another key does not see the sandbox', async () => {
    const second = 'e2b_ffffffffffffffffffffffffffffffffffffffff';
    const t2 = await serve({ apiKeys: [KEY, second] });
    try {
      const mine = await Sandbox.create({ ...t2.opts });
      await expect(Sandbox.getInfo(mine.sandboxId, { ...t2.opts, apiKey: second })).rejects.toThrow(
        /not found/,
      );
      expect(await Sandbox.kill(mine.sandboxId, { ...t2.opts, apiKey: second })).toBe(false);
      await mine.kill();
    } finally {
      await t2.t.close();
    }
  });
});

describe('the E2B routes next to ours', () => {
  test('without a sandbox engine every E2B route is 503 with the E2B body', async () => {
    const t = await makeApp();
    try {
      const create = await t.app.inject({
        method: 'POST',
        url: '/e2b/v2/sandboxes',
        payload: { templateID: 'base' },
      });
      expect(create.statusCode).toBe(503);
      const body = create.json<E2bError>();
      expect(body.code).toBe(503);
      expect(body.message).toMatch(/not served/);
      const rpc = await t.app.inject({
        method: 'POST',
        url: '/e2b/filesystem.Filesystem/Stat',
        payload: { path: '/' },
      });
      expect(rpc.statusCode).toBe(503);
      expect(rpc.json()).toMatchObject({ code: 'unavailable' });
      // Our own routes are untouched.
      expect((await t.app.inject({ method: 'GET', url: '/v1/runtimes' })).statusCode).toBe(200);
      expect((await t.app.inject({ method: 'GET', url: '/api/v2/runtimes' })).statusCode).toBe(200);
      expect((await t.app.inject({ method: 'GET', url: '/languages' })).statusCode).toBe(200);
      const missing = await t.app.inject({ method: 'GET', url: '/e2b/nothing' });
      expect(missing.statusCode).toBe(404);
      expect(missing.json()).toMatchObject({ code: 404 });
    } finally {
      await t.close();
    }
  });

  test('e2bPrefix moves the routes; a prefix under our APIs is refused', async () => {
    const t = await makeApp({ engine: new SandboxEngine(), settings: { e2bPrefix: '/sbx/' } });
    try {
      const res = await t.app.inject({ method: 'GET', url: '/sbx/v2/sandboxes' });
      expect(res.statusCode).toBe(200);
      expect(res.json()).toEqual([]);
    } finally {
      await t.close();
    }
    await expect(makeApp({ settings: { e2bPrefix: '/v1/e2b' } })).rejects.toThrow(/under a path/);
  });

  test('the argv is quoted so that /bin/sh sees every argument as it was', () => {
    const args = ['/bin/echo', "it's", 'a b', '$HOME', '"q"', '\\', '', 'x;y'];
    const line = args.map(shellQuote).join(' ');
    expect(unquote(line)).toEqual(args);
    const out = execFileSync('/bin/sh', [
      '-c',
      `printf '%s|' ${args.slice(1).map(shellQuote).join(' ')}`,
    ]);
    expect(out.toString()).toBe(`${args.slice(1).join('|')}|`);
  });
});
