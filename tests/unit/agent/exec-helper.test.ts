import { execFile } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { chmod, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  findSandboxTools,
  ReseedServer,
  runStage,
  SystemGuestActions,
  type StageSandbox,
} from '../../../src/agent/index.js';
import { SandboxFailureError } from '../../../src/errors.js';
import { buildExecHelper } from '../../../src/images/exec-helper.js';
import { freeOwner, isRoot, LIMITS, text } from './helpers.js';

/**
 * runner-exec itself, built with this machine's gcc: what it sets up, and that a failure to set
 * up is the sandbox's (sandbox_error) while a program that cannot run is the program's.
 */
let dir: string;
let helper: string | null = null;
let why = '';

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'runner-exec-test-'));
  await chmod(dir, 0o755);
  try {
    helper = await buildExecHelper(join(dir, 'runner-exec'));
  } catch (err) {
    why = (err as Error).message;
    console.warn(`skipping the runner-exec tests: ${why}`);
  }
});

afterAll(async () => {
  await rm(dir, { recursive: true, force: true });
});

async function sandbox(over: Partial<StageSandbox> = {}): Promise<StageSandbox> {
  return { tools: await findSandboxTools(), runAs: null, cgroup: null, helper, ...over };
}

const spec = (script: string) => ({
  argv: ['sh', '-c', script],
  cwd: dir,
  env: { PATH: '/usr/bin:/bin', ONLY: 'this' },
  stdin: Buffer.alloc(0),
  limits: { ...LIMITS, openFiles: 33 },
});

describe('runner-exec', () => {
  it('replaces the environment, sets the limits and no_new_privs, and closes its status fd', async (ctx) => {
    if (helper === null) ctx.skip(why);
    const r = await runStage(
      await sandbox(),
      spec(
        'env | sort | tr "\\n" " "; echo; ulimit -n; ulimit -s; grep NoNewPrivs /proc/self/status; [ -e /proc/$$/fd/3 ] && echo fd3-open || echo fd3-closed',
      ),
    );
    expect(r.status).toBe('ok');
    const out = text(r.stdout);
    expect(out).toMatch(/^ONLY=this PATH=\/usr\/bin:\/bin PWD=\S+ \n33\n8192\n/);
    expect(out).toMatch(/NoNewPrivs:\s+1/);
    expect(out).toMatch(/fd3-closed\n$/);
  });

  it.runIf(isRoot)('drops to the job user with no capabilities', async () => {
    if (helper === null) return;
    const owner = await freeOwner(47_000, 100);
    const r = await runStage(
      await sandbox({ runAs: owner }),
      spec('id -u; id -G; grep -E "CapBnd|CapEff" /proc/self/status'),
    );
    expect(text(r.stdout)).toBe(
      `${owner.uid}\n${owner.gid}\nCapEff:\t0000000000000000\nCapBnd:\t0000000000000000\n`,
    );
  });

  it('a program that cannot be executed is the program’s failure (127), not the sandbox’s', async (ctx) => {
    if (helper === null) ctx.skip(why);
    const r = await runStage(await sandbox(), { ...spec(''), argv: ['./no-such-program'] });
    expect(r.status).toBe('runtime_error');
    expect(r.exitCode).toBe(127);
    expect(text(r.stderr)).toMatch(/cannot execute \.\/no-such-program/);
  });

  it('a program exiting 125 is still the program’s', async (ctx) => {
    if (helper === null) ctx.skip(why);
    const r = await runStage(await sandbox(), spec('echo runner-exec: fake >&2; exit 125'));
    expect(r.status).toBe('runtime_error');
    expect(r.exitCode).toBe(125);
  });

  it('a failure to set up the stage is a sandbox_error that says which step', async () => {
    // A stand-in helper that fails the way runner-exec does: the reason on its status fd.
    const fake = join(dir, 'failing-helper');
    await writeFile(
      fake,
      '#!/bin/sh\nprintf "setresuid: Operation not permitted" >&3\nexit 125\n',
      {
        mode: 0o755,
      },
    );
    const r = await runStage(await sandbox({ helper: fake }), spec('echo never'));
    expect(r.status).toBe('sandbox_error');
    expect(r.message).toMatch(/could not start the program: setresuid: Operation not permitted/);
  });

  /**
   * Calls that succeed (or fail with something else) for an ordinary user without the filter,
   * so the filter is what the EPERM/ENOSYS lines prove. None of them does anything lasting.
   */
  const PROBE = [
    'import ctypes, errno, socket',
    'libc = ctypes.CDLL(None, use_errno=True)',
    'libc.syscall.restype = ctypes.c_long',
    'def sc(name, nr, *args):',
    '    r = libc.syscall(ctypes.c_long(nr), *[ctypes.c_long(a) for a in args])',
    '    print(name, errno.errorcode[ctypes.get_errno()] if r == -1 else "ok")',
    'sc("ptrace_traceme", 101, 0, 0, 0, 0)',
    'sc("add_key", 248, 0, 0, 0, 0, -3)',
    'sc("keyctl", 250, 0, -3, 0)',
    'sc("unshare", 272, 0x10000000)',
    'sc("bpf", 321, 0, 0, 0)',
    'sc("io_uring_setup", 425, 1, 0)',
    'sc("personality", 135, 0x0040000)',
    'sc("personality_query", 135, 0xffffffff)',
    'sc("clone3", 435, 0, 0)',
    'sc("landlock_create_ruleset", 444, 0, 0, 1)',
    'try:',
    '    socket.socket(40, socket.SOCK_STREAM).close(); print("socket_vsock ok")',
    'except OSError as e:',
    '    print("socket_vsock", errno.errorcode[e.errno])',
    'status = open("/proc/self/status").read()',
    'print("seccomp_mode", status.split("Seccomp:")[1].split()[0])',
  ].join('\n');

  const probe = async (seccomp?: 'default' | 'jvm' | 'node'): Promise<Record<string, string>> => {
    const runAs = isRoot ? await freeOwner(48_000, 100) : null;
    const r = await runStage(await sandbox({ runAs }), {
      ...spec(''),
      argv: ['python3', '-c', PROBE],
      ...(seccomp ? { seccomp } : {}),
    });
    expect(r.status, text(r.stderr)).toBe('ok');
    return Object.fromEntries(
      text(r.stdout)
        .trim()
        .split('\n')
        .map((l) => l.split(' ')),
    ) as Record<string, string>;
  };

  it('--seccomp: the denied calls get EPERM, clone3 and unlisted calls ENOSYS, vsock refused', async (ctx) => {
    if (helper === null) ctx.skip(why);
    for (const family of ['default', 'jvm', 'node'] as const) {
      expect(await probe(family), family).toEqual({
        ptrace_traceme: 'EPERM',
        add_key: 'EPERM',
        keyctl: 'EPERM',
        unshare: 'EPERM',
        bpf: 'EPERM',
        io_uring_setup: 'EPERM',
        personality: 'EPERM',
        personality_query: 'ok',
        clone3: 'ENOSYS',
        landlock_create_ruleset: 'ENOSYS',
        socket_vsock: 'EAFNOSUPPORT',
        seccomp_mode: '2',
      });
    }
  });

  it('without --seccomp there is no filter (the probe above is not vacuous)', async (ctx) => {
    if (helper === null) ctx.skip(why);
    const got = await probe();
    expect(got).toMatchObject({ ptrace_traceme: 'ok', personality_query: 'ok', seccomp_mode: '0' });
    expect(got.clone3).not.toBe('ENOSYS');
  });

  it('--seccomp: a call through the i386 or x32 ABI kills the process with SIGSYS', async (ctx) => {
    if (helper === null) ctx.skip(why);
    // getpid through int 0x80 (i386 number 20) and with the x32 bit (0x40000000 | 39).
    const source = [
      '#include <stdio.h>',
      '#include <string.h>',
      'int main(int argc, char **argv) {',
      '  long r;',
      '  if (argc > 1 && strcmp(argv[1], "x32") == 0)',
      '    __asm__ volatile("syscall" : "=a"(r) : "a"(0x40000000L | 39) : "rcx", "r11", "memory");',
      '  else',
      '    __asm__ volatile("int $0x80" : "=a"(r) : "a"(20L) : "memory");',
      '  printf("survived\\n");',
      '  return 0;',
      '}',
    ].join('\n');
    await writeFile(join(dir, 'abi.c'), source);
    const built = await runStage(await sandbox(), {
      ...spec(`gcc -o ${join(dir, 'abi')} ${join(dir, 'abi.c')}`),
    });
    expect(built.status, text(built.stderr)).toBe('ok');
    for (const abi of ['i386', 'x32']) {
      const r = await runStage(await sandbox(), {
        ...spec(''),
        argv: [join(dir, 'abi'), abi],
        seccomp: 'default',
      });
      expect({ signal: r.signal, out: text(r.stdout) }, abi).toEqual({ signal: 'SIGSYS', out: '' });
    }
    const unfiltered = await runStage(await sandbox(), { ...spec(''), argv: [join(dir, 'abi')] });
    // Without the filter: the call runs (or, on a kernel without i386 emulation, SIGSEGV).
    expect(unfiltered.signal).not.toBe('SIGSYS');
  });

  it('an unknown seccomp family is the sandbox’s failure, before the program runs', async (ctx) => {
    if (helper === null) ctx.skip(why);
    const r = await runStage(await sandbox(), {
      ...spec('echo never'),
      seccomp: 'bogus' as 'default',
    });
    expect(r.status).toBe('sandbox_error');
    expect(r.message).toMatch(/--seccomp wants default, jvm or node/);
    expect(text(r.stdout)).toBe('');
  });
});

/**
 * The reseed server (`runner-exec --reseed-server`) and the agent's client of it. Crediting
 * entropy and setting the clock need root, and the clock is never set on this machine: the
 * server runs here as an unprivileged user, whose ioctl the kernel refuses, which is enough to
 * see the framing, the answers and the fallback. The credited path runs in every VM test (each
 * restore is reseeded), and tests/integration/vm/sandbox.test.ts checks it took no process.
 */
describe('runner-exec --reseed-server', () => {
  let unprivileged: string;
  let uid = 0;

  beforeAll(async () => {
    if (helper === null || !isRoot) return;
    uid = (await freeOwner(47_300)).uid;
    unprivileged = join(dir, 'reseed-as-user');
    await writeFile(
      unprivileged,
      `#!/bin/sh\nexec setpriv --reuid=${uid} --regid=${uid} --clear-groups ${helper} "$@"\n`,
      { mode: 0o755 },
    );
  });

  const serverPids = async (): Promise<string[]> => {
    const out = await new Promise<string>((resolve) =>
      execFile('pgrep', ['-u', String(uid), '-f', 'reseed-server'], (_e, stdout) =>
        resolve(stdout),
      ),
    );
    return out.split('\n').filter((l) => l !== '');
  };

  it('answers request after request in one process; a refused ioctl is the sandbox’s failure', async (ctx) => {
    if (helper === null) ctx.skip(why);
    if (!isRoot) ctx.skip('needs root to run the server as an unprivileged user');
    const server = new ReseedServer(unprivileged, 5000);
    try {
      const pid = server.start();
      for (let i = 0; i < 3; i++) {
        const err = await server.reseed(randomBytes(64), Date.now()).catch((e: unknown) => e);
        expect(err).toBeInstanceOf(SandboxFailureError);
        expect((err as Error).message).toBe(
          'reseed: ioctl RNDADDENTROPY: Operation not permitted',
        );
      }
      expect(server.running).toBe(true);
      expect(server.start()).toBe(pid);
      expect(await serverPids()).toHaveLength(1);
    } finally {
      server.stop();
    }
  });

  it('an oversized request is answered and ends the server; then the client says it is not running', async (ctx) => {
    if (helper === null) ctx.skip(why);
    if (!isRoot) ctx.skip('needs root to run the server as an unprivileged user');
    const server = new ReseedServer(unprivileged, 5000);
    server.start();
    const err = await server.reseed(Buffer.alloc(4097), Date.now()).catch((e: unknown) => e);
    expect((err as Error).message).toBe('reseed: a short or oversized request');
    await expect.poll(() => server.running, { timeout: 5000 }).toBe(false);
    const after = await server.reseed(randomBytes(8), Date.now()).catch((e: unknown) => e);
    expect(after).not.toBeInstanceOf(SandboxFailureError);
    expect((after as Error).message).toBe('the reseed server is not running');
  });

  it('the agent falls back to one exec when its server is gone, and starts the server again', async (ctx) => {
    if (helper === null) ctx.skip(why);
    if (!isRoot) ctx.skip('needs root to run the server as an unprivileged user');
    const logged: string[] = [];
    const guest = new SystemGuestActions(unprivileged, 5000, (l) => logged.push(l));
    try {
      await expect.poll(serverPids, { timeout: 5000 }).toHaveLength(1);
      const [first] = await serverPids();
      process.kill(Number(first), 'SIGKILL');
      const err = await guest.reseed(randomBytes(64), Date.now()).catch((e: unknown) => e);
      // The one-shot exec ran (and, unprivileged, was refused in the same way).
      expect((err as Error).message).toMatch(/failed: .*RNDADDENTROPY: Operation not permitted/);
      expect(logged.join('\n')).toMatch(/--reseed-server ended \(SIGKILL\): reseeding with one exec/);
      await expect.poll(serverPids, { timeout: 5000 }).toHaveLength(1);
      expect(await serverPids()).not.toContain(first);
    } finally {
      guest.close();
    }
  });
});
