import { chmod, mkdir, mkdtemp, readdir, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Executor, listProcessesOfUid } from '../../../src/agent/index.js';
import { buildExecHelper } from '../../../src/images/exec-helper.js';
import { LanguageRegistry, type Language } from '../../../src/languages/index.js';
import {
  COMPILE_LIMITS,
  findCgroupRoot,
  freeOwner,
  isRoot,
  job,
  registry,
  text,
} from './helpers.js';

// A compile server as the guest runs one (docs/agent.md, "Compile servers"): a real process
// started through the real runner-exec, as a run user, in real cgroups; the server here is a
// small node program that speaks the same socket protocol as tsc-warm.js's --runner-serve.
const SERVER = `'use strict';
const net = require('node:net');
const fs = require('node:fs');
const [socket, mode, scratch] = process.argv.slice(2);
const frame = (kind, bytes) => {
  const head = Buffer.alloc(5);
  head[0] = kind;
  head.writeUInt32BE(bytes.length, 1);
  return Buffer.concat([head, bytes]);
};
const server = net.createServer({ allowHalfOpen: true }, (s) => {
  server.close();
  const chunks = [];
  s.on('data', (c) => chunks.push(c));
  s.on('end', () => {
    const fields = Buffer.concat(chunks).toString('utf8').split('\\0');
    fields.pop();
    const [cwd, ...args] = fields;
    if (mode === 'decline') return s.end(frame(4, Buffer.alloc(0)), () => process.exit(0));
    if (mode === 'die') process.exit(9);
    if (mode === 'partial') return s.write(frame(1, Buffer.from('half')), () => process.exit(9));
    const start = process.cpuUsage();
    while (process.cpuUsage(start).user < 400_000); // 400 ms of CPU the stage must count
    fs.writeFileSync(cwd + '/out.txt', 'served ' + process.pid + '\\n');
    const said = JSON.stringify({ cwd, args, uid: process.getuid(), pid: process.pid });
    s.end(
      Buffer.concat([frame(1, Buffer.from(said)), frame(2, Buffer.from('note\\n')), frame(3, Buffer.from([mode === 'fail' ? 2 : 0]))]),
      () => process.exit(0),
    );
  });
});
if (mode === 'litter') fs.writeFileSync('left-behind', 'x');
if (mode === 'scratch') fs.writeFileSync(scratch + '/hsperfdata-like', 'x');
server.listen(socket, () => process.stdout.write('ready\\n'));
`;

let skipReason: string | null = null;
let dir = '';
let executor: Executor;
let uid = 0;

function fake(name: string, mode: string): Language {
  return {
    dir,
    definition: {
      name,
      aliases: [],
      version: '1',
      packages: [],
      extension: 'fk',
      sourceFile: 'main.fk',
      compile: ['sh', '-c', 'echo cold > out.txt', 'sh', '{sources}'],
      compileServer: {
        command: ['node', join(dir, 'server.cjs'), '{socket}', mode, join(dir, 'scratch')],
        replaces: 2,
      },
      run: ['cat', 'out.txt'],
      env: {},
      versionCommand: ['true'],
      test: { file: 'main.fk', expected: '' },
    },
  };
}

beforeAll(async () => {
  const cgroupRoot = await findCgroupRoot();
  if (!isRoot) skipReason = 'a compile server needs root (it runs as a run user)';
  else if (cgroupRoot === null) skipReason = 'no usable cgroup v2 hierarchy on this machine';
  dir = await mkdtemp(join(tmpdir(), 'runner-compile-server-'));
  await chmod(dir, 0o755);
  await writeFile(join(dir, 'server.cjs'), SERVER, { mode: 0o644 });
  if (skipReason !== null) {
    console.warn(`compile servers: skipped: ${skipReason}`);
    return;
  }
  const execHelper = await buildExecHelper(join(dir, 'runner-exec'));
  const owner = await freeOwner(62100, 100);
  uid = owner.uid;
  const languages = new LanguageRegistry([
    fake('fk-ok', 'ok'),
    fake('fk-fail', 'fail'),
    fake('fk-decline', 'decline'),
    fake('fk-die', 'die'),
    fake('fk-partial', 'partial'),
    fake('fk-litter', 'litter'),
    fake('fk-scratch', 'scratch'),
    registry.get('bash'),
  ]);
  await mkdir(join(dir, 'scratch'), { mode: 0o1777 });
  await chmod(join(dir, 'scratch'), 0o1777);
  executor = await Executor.create({
    languages,
    workRoot: join(dir, 'work'),
    runAs: owner,
    cgroupRoot,
    execHelper,
    scratchDirs: [join(dir, 'scratch')],
  });
}, 60_000);

afterAll(async () => {
  await rm(dir, { recursive: true, force: true });
});

const source = (language: string) => job(language, 'main.fk', 'anything');
const SECCOMP = 'default' as const;

describe('compile servers', () => {
  it('a primed server compiles the next job, as the run user, its CPU counted in the stage', async (ctx) => {
    if (skipReason) return ctx.skip(skipReason);
    const ms = await executor.prime('fk-ok', COMPILE_LIMITS, SECCOMP);
    expect(ms).toBeGreaterThan(0);
    const servers = await listProcessesOfUid(uid);
    expect(servers).toHaveLength(1);
    const out = await executor.execute(source('fk-ok'));
    expect(out.compileServed).toBe(true);
    expect(out.status).toBe('ok');
    const said = JSON.parse(text(out.compile?.stdout ?? '')) as {
      cwd: string;
      args: string[];
      uid: number;
      pid: number;
    };
    expect(said.uid).toBe(uid);
    expect(said.pid).toBe(servers[0]);
    // The compile command after its first two words, with the sources; the job's own dir.
    expect(said.args).toEqual(['echo cold > out.txt', 'sh', 'main.fk']);
    expect(said.cwd).toMatch(/\/work\/job-/);
    expect(text(out.compile?.stderr ?? '')).toBe('note\n');
    expect(out.compile?.cpuTimeMs).toBeGreaterThanOrEqual(300);
    expect(text(out.run?.stdout ?? '')).toBe(`served ${said.pid}\n`);
    // The stage's end ended the server.
    expect(await listProcessesOfUid(uid)).toEqual([]);
  });

  it("the server's exit status is the compile's", async (ctx) => {
    if (skipReason) return ctx.skip(skipReason);
    await executor.prime('fk-fail', COMPILE_LIMITS, SECCOMP);
    const out = await executor.execute(source('fk-fail'));
    expect(out.compileServed).toBe(true);
    expect(out.status).toBe('compile_error');
    expect(out.compile?.exitCode).toBe(2);
    expect(out.run).toBeNull();
  });

  it('a declined command line runs the compile command itself', async (ctx) => {
    if (skipReason) return ctx.skip(skipReason);
    await executor.prime('fk-decline', COMPILE_LIMITS, SECCOMP);
    const out = await executor.execute(source('fk-decline'));
    expect(out.status).toBe('ok');
    expect(text(out.run?.stdout ?? '')).toBe('cold\n');
  });

  it('a server that ends before it answers: the compile command runs itself', async (ctx) => {
    if (skipReason) return ctx.skip(skipReason);
    await executor.prime('fk-die', COMPILE_LIMITS, SECCOMP);
    const out = await executor.execute(source('fk-die'));
    expect(out.status).toBe('ok');
    expect(text(out.run?.stdout ?? '')).toBe('cold\n');
  });

  it('a server that ends half way through its answer is a sandbox error, not a compile error', async (ctx) => {
    if (skipReason) return ctx.skip(skipReason);
    await executor.prime('fk-partial', COMPILE_LIMITS, SECCOMP);
    const out = await executor.execute(source('fk-partial'));
    expect(out.status).toBe('sandbox_error');
    expect(out.compile?.message).toMatch(/compile server ended/);
  });

  it("the job's work dir is the server's cwd, and a server that left a file there is not used", async (ctx) => {
    if (skipReason) return ctx.skip(skipReason);
    await executor.prime('fk-litter', COMPILE_LIMITS, SECCOMP);
    const out = await executor.execute({
      ...source('fk-litter'),
      runLimits: { ...COMPILE_LIMITS },
    });
    expect(out.compileServed).toBeUndefined();
    expect(text(out.run?.stdout ?? '')).toBe('cold\n');
    expect(await listProcessesOfUid(uid)).toEqual([]);
  });

  it("another wall time, memory or output limit, or a lower CPU limit, is the stage's own: served", async (ctx) => {
    if (skipReason) return ctx.skip(skipReason);
    await executor.prime('fk-ok', COMPILE_LIMITS, SECCOMP);
    const out = await executor.execute({
      ...source('fk-ok'),
      compileLimits: {
        ...COMPILE_LIMITS,
        wallTimeMs: COMPILE_LIMITS.wallTimeMs - 1000,
        memoryMib: COMPILE_LIMITS.memoryMib - 64,
        outputBytes: 4096,
        cpuTimeMs: COMPILE_LIMITS.cpuTimeMs - 1000,
      },
    });
    expect(out.compileServed).toBe(true);
    expect(out.status).toBe('ok');
  });

  it('a higher CPU limit is not served', async (ctx) => {
    if (skipReason) return ctx.skip(skipReason);
    await executor.prime('fk-ok', COMPILE_LIMITS, SECCOMP);
    const out = await executor.execute({
      ...source('fk-ok'),
      compileLimits: { ...COMPILE_LIMITS, cpuTimeMs: COMPILE_LIMITS.cpuTimeMs + 1000 },
    });
    expect(out.compileServed).toBeUndefined();
    expect(text(out.run?.stdout ?? '')).toBe('cold\n');
  });

  it('other compile limits, or another language, end the server before anything runs', async (ctx) => {
    if (skipReason) return ctx.skip(skipReason);
    await executor.prime('fk-ok', COMPILE_LIMITS, SECCOMP);
    const other = await executor.execute({
      ...source('fk-ok'),
      compileLimits: { ...COMPILE_LIMITS, openFiles: 63 },
    });
    expect(other.compileServed).toBeUndefined();
    expect(text(other.run?.stdout ?? '')).toBe('cold\n');
    await executor.prime('fk-ok', COMPILE_LIMITS, SECCOMP);
    const shell = await executor.execute(
      job('bash', 'main.sh', 'ps -u "$(id -u)" -o comm= | grep -c node || true'),
    );
    expect(shell.status).toBe('ok');
    expect(text(shell.run?.stdout ?? '').trim()).toBe('0');
    expect(await listProcessesOfUid(uid)).toEqual([]);
  });

  it('a server ended unused leaves nothing in the shared scratch folders', async (ctx) => {
    if (skipReason) return ctx.skip(skipReason);
    await executor.prime('fk-scratch', COMPILE_LIMITS, SECCOMP);
    expect(await readdir(join(dir, 'scratch'))).toEqual(['hsperfdata-like']);
    const shell = await executor.execute(job('bash', 'main.sh', `ls -A ${join(dir, 'scratch')}`));
    expect(shell.status).toBe('ok');
    expect(text(shell.run?.stdout ?? '')).toBe('');
  });

  it('a server that cannot start fails the prime, saying why', async (ctx) => {
    if (skipReason) return ctx.skip(skipReason);
    await expect(executor.prime('bash', COMPILE_LIMITS, SECCOMP)).rejects.toThrow(
      /no compile server/,
    );
  });
});
