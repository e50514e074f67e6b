import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import type { ExecuteResponse } from '../../../src/api/schemas.js';
import { startServer, type RunningServer } from '../../../src/api/server.js';
import type { Engine } from '../../../src/pool/engine.js';
import { executeOnVm, type JobRequest } from '../../../src/pool/index.js';
import type { StageResult } from '../../../src/protocol/index.js';
import { suiteScaledMs } from '../../support/paths.js';
import { ensureImages, testEngine, testSettings, vmSkipReason } from '../../support/vm.js';

const skip = vmSkipReason();
if (skip) console.warn(`skipping the sandbox tests in real VMs: ${skip}`);

const text = (s: StageResult | null | undefined, stream: 'stdout' | 'stderr' = 'stdout'): string =>
  Buffer.from(s?.[stream] ?? '', 'base64').toString();

/**
 * Limits, faults and hostile programs, each in a real VM (qemu; TCG here), sent through the real
 * HTTP service (`POST /v1/execute` of `runner serve`'s server) unless the case needs the VM
 * itself (to kill or stop its VMM, or to ping its agent afterwards). After each case the agent of
 * that same VM must still answer (where the VM is meant to survive), and the next normal job must
 * run correctly (afterEach).
 */
describe.skipIf(skip !== null)('the sandbox in real VMs', () => {
  let engine: Engine;
  let server: RunningServer | undefined;
  let storeDir = '';

  /** Runs a job through the HTTP service and returns its result (the stage shapes of the engine). */
  async function service(request: JobRequest): Promise<ExecuteResponse> {
    if (!server) throw new Error('the server did not start');
    const body = {
      language: request.language,
      files: request.files.map((f) => ({ ...f })),
      ...(request.stdin !== undefined && {
        stdin: request.stdin.toString('base64'),
        stdinEncoding: 'base64',
      }),
      ...(request.args !== undefined && { args: request.args }),
      ...(request.env !== undefined && { env: request.env }),
      ...(request.runLimits !== undefined && { runLimits: request.runLimits }),
      ...(request.compileLimits !== undefined && { compileLimits: request.compileLimits }),
    };
    const res = await fetch(`${server.url}/v1/execute`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify(body),
    });
    expect(res.status).toBe(200);
    return (await res.json()) as ExecuteResponse;
  }

  const python = (code: string, extra: Partial<JobRequest> = {}): JobRequest => ({
    language: 'python',
    files: [{ name: 'main.py', content: code }],
    ...extra,
  });

  /** Runs a job on a leased VM, then checks the agent still answers a ping, then releases. */
  async function runAndPing(
    request: JobRequest,
  ): Promise<{ result: Awaited<ReturnType<typeof executeOnVm>>; agentAlive: boolean }> {
    const job = engine.prepare(request);
    const lease = await engine.pool.acquire(job.language);
    try {
      const result = await executeOnVm(lease.vm, job);
      let agentAlive = false;
      try {
        const channel = lease.vm.agent();
        await channel.send({ type: 'ping', id: 'after' });
        const pong = await channel.next(10_000);
        agentAlive = pong.type === 'pong' && pong.id === 'after';
      } catch {
        agentAlive = false;
      }
      return { result, agentAlive };
    } finally {
      await engine.pool.release(lease);
    }
  }

  async function nextJobWorks(): Promise<void> {
    const r = await service(python('print("still fine")'));
    expect(r.status).toBe('ok');
    expect(text(r.run).trim()).toBe('still fine');
  }

  beforeAll(async () => {
    await ensureImages(['python', 'bash', 'c']);
    engine = await testEngine({ poolTarget: 0 });
    storeDir = mkdtempSync(join(tmpdir(), 'runner-sandbox-jobs-'));
    server = await startServer(
      testSettings({
        host: '127.0.0.1',
        port: 0,
        jobStoreFile: join(storeDir, 'jobs.sqlite'),
        logLevel: 'warn',
        queueMax: 16,
      }),
      { engine },
    );
  });

  afterEach(async () => {
    await nextJobWorks();
  });

  afterAll(async () => {
    // Closing the server closes the engine (every VM destroyed).
    if (server) await server.close();
    else await engine?.close();
    if (storeDir !== '') rmSync(storeDir, { recursive: true, force: true });
  });

  it('a CPU loop is killed at the CPU limit as timeout, with times reported', async () => {
    const { result, agentAlive } = await runAndPing(
      python('while True: pass', { runLimits: { cpuTimeMs: 1000, wallTimeMs: 8000 } }),
    );
    expect(result.status).toBe('timeout');
    expect(result.run?.cpuTimeMs).toBeGreaterThanOrEqual(900);
    expect(result.run?.wallTimeMs).toBeLessThan(8000);
    expect(agentAlive).toBe(true);
  });

  it('sleeping forever and waiting on stdin are killed at the wall limit', async () => {
    const sleep = await runAndPing(
      python('import time; time.sleep(1000)', { runLimits: { wallTimeMs: 1500 } }),
    );
    expect(sleep.result.status).toBe('timeout');
    expect(sleep.result.run?.wallTimeMs).toBeGreaterThanOrEqual(1400);
    const stdin = await service(
      python('import sys; print(len(sys.stdin.read()))', { stdin: Buffer.from('abc') }),
    );
    expect(text(stdin.run).trim()).toBe('3'); // stdin is closed after the given input
  });

  it('a fork bomb hits the process cap, ends at its limit, and no process survives', async () => {
    const bomb =
      'import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass\n';
    const { result, agentAlive } = await runAndPing(
      python(bomb, { runLimits: { processes: 32, wallTimeMs: 3000, cpuTimeMs: 3000 } }),
    );
    expect(['timeout', 'runtime_error']).toContain(result.status);
    expect(agentAlive).toBe(true);
    // A shell fork bomb too.
    const shell = await runAndPing({
      language: 'bash',
      files: [{ name: 'main.sh', content: 'f() { f | f & }; f; sleep 2; echo done' }],
      runLimits: { processes: 32, wallTimeMs: 4000 },
    });
    expect(['timeout', 'runtime_error', 'ok']).toContain(shell.result.status);
    expect(shell.agentAlive).toBe(true);
  });

  it('a memory bomb ends as memory_limit and the agent lives', async () => {
    const bomb = 'blocks = []\nwhile True:\n    blocks.append(bytearray(8 * 1024 * 1024))\n';
    const { result, agentAlive } = await runAndPing(
      python(bomb, { runLimits: { memoryMib: 64, wallTimeMs: 10000 } }),
    );
    expect(result.status).toBe('memory_limit');
    expect(agentAlive).toBe(true);
  });

  it('endless output stops at the byte cap with truncated set', async () => {
    const { result, agentAlive } = await runAndPing({
      language: 'bash',
      files: [{ name: 'main.sh', content: 'yes' }],
      runLimits: { outputBytes: 65536 },
    });
    expect(result.status).toBe('output_limit');
    expect(result.run?.stdoutTruncated).toBe(true);
    expect(Buffer.from(result.run?.stdout ?? '', 'base64').length).toBe(65536);
    expect(agentAlive).toBe(true);
  });

  it('user code cannot kill the agent or power the guest off (it runs unprivileged)', async () => {
    const code = [
      'import os, signal',
      'out = []',
      'for pid in [1] + [int(p) for p in os.listdir("/proc") if p.isdigit() and int(p) != os.getpid()]:',
      '    try:',
      '        os.kill(pid, signal.SIGKILL)',
      '    except (PermissionError, ProcessLookupError):',
      '        pass',
      'try:',
      '    open("/proc/sysrq-trigger", "w").write("o")',
      '    out.append("sysrq-written")',
      'except OSError as e:',
      '    out.append("sysrq-denied")',
      'print(os.getuid(), " ".join(out))',
    ].join('\n');
    const { result, agentAlive } = await runAndPing(python(code));
    expect(text(result.run).trim()).toBe('1000 sysrq-denied');
    expect(agentAlive).toBe(true);
  });

  it('a VM killed mid-job ends the job as sandbox_error, and the pool goes on', async () => {
    const job = engine.prepare(
      python('import time; time.sleep(30)', { runLimits: { wallTimeMs: 40000 } }),
    );
    const lease = await engine.pool.acquire('python');
    try {
      const pending = executeOnVm(lease.vm, job);
      await new Promise((r) => setTimeout(r, 1500));
      expect(lease.vm.pid).toBeGreaterThan(1);
      process.kill(lease.vm.pid as number, 'SIGKILL');
      const started = Date.now();
      const result = await pending;
      expect(result.status).toBe('sandbox_error');
      expect(result.run?.message).toMatch(/QEMU exited|closed/);
      expect(Date.now() - started).toBeLessThan(5000);
    } finally {
      await engine.pool.release(lease);
    }
  });

  it('a VM that hangs mid-job (VMM stopped) is detected at the deadline as sandbox_error', async () => {
    const job = engine.prepare(
      python('import time; time.sleep(30)', { runLimits: { wallTimeMs: 1000, cpuTimeMs: 1000 } }),
    );
    const lease = await engine.pool.acquire('python');
    try {
      process.kill(lease.vm.pid as number, 'SIGSTOP');
      const result = await executeOnVm(lease.vm, job);
      expect(result.status).toBe('sandbox_error');
      expect(result.run?.message).toMatch(/no message within/);
    } finally {
      process.kill(lease.vm.pid as number, 'SIGCONT');
      await engine.pool.release(lease);
    }
  }, 60_000);

  it("two restores of one snapshot see different random state, the agent's own too", async () => {
    // The stage's cgroup name is drawn by the agent, which lives on in every clone.
    const code =
      'import os, random, uuid\nprint(os.urandom(16).hex(), random.getrandbits(64), uuid.uuid4(), open("/proc/self/cgroup").read().strip())';
    const a = await service(python(code));
    const b = await service(python(code));
    expect(a.status).toBe('ok');
    expect(b.status).toBe('ok');
    expect(a.id).not.toBe(b.id);
    const [ua, ra, ida, cga] = text(a.run).trim().split(' ');
    const [ub, rb, idb, cgb] = text(b.run).trim().split(' ');
    expect(ua).not.toBe(ub);
    expect(ra).not.toBe(rb);
    expect(ida).not.toBe(idb);
    expect(cga).toMatch(/runner-[0-9a-f]{16}/);
    expect(cga).not.toBe(cgb);
  });

  it('the reseed after a restore starts no process: the reseed server kept from before the snapshot answers it', async () => {
    const restored = await engine.pool.restoreFresh('python');
    try {
      expect(restored.reseededVia).toBe('server');
      // The clock it set is the host's (to the second: the guest's clock runs on from the seed).
      const job = engine.prepare(python('import time; print(int(time.time()))'));
      const result = await executeOnVm(restored.vm, job);
      expect(Math.abs(Number(text(result.run).trim()) - Date.now() / 1000)).toBeLessThan(30);
    } finally {
      await restored.vm.destroy();
    }
  });

  it('files left in /tmp, /dev/shm, /var/tmp and $HOME are invisible to the next job', async () => {
    const write =
      'import os\nfor d in ["/tmp", "/dev/shm", "/var/tmp", os.environ["HOME"]]:\n    try:\n        open(os.path.join(d, "left-behind"), "w").write("x")\n    except OSError:\n        pass\n';
    await service(python(write));
    const look = await service(
      python(
        'import os\nprint(sum(os.path.exists(os.path.join(d, "left-behind")) for d in ["/tmp", "/dev/shm", "/var/tmp", os.environ["HOME"]]))',
      ),
    );
    expect(text(look.run).trim()).toBe('0');
  });

  it('disk fill, a huge file, many files and EMFILE stay inside the job, and the agent still works', async () => {
    const code = [
      'import os, errno',
      'out = []',
      'try:',
      '    with open("/tmp/fill", "wb") as f:',
      '        while True:',
      '            f.write(b"x" * (1 << 20))',
      'except OSError as e:',
      '    out.append("fill:" + errno.errorcode[e.errno])',
      'os.remove("/tmp/fill")',
      'n = 0',
      'try:',
      '    os.mkdir("/tmp/many")',
      '    for n in range(10000):',
      '        open(f"/tmp/many/{n}", "w").close()',
      '    out.append("files:ok")',
      'except OSError as e:',
      '    out.append("files:" + errno.errorcode[e.errno])',
      'fds = []',
      'try:',
      '    while True:',
      '        fds.append(open("/dev/null"))',
      'except OSError as e:',
      '    out.append("fds:" + errno.errorcode[e.errno])',
      'print(" ".join(out))',
    ].join('\n');
    const { result, agentAlive } = await runAndPing(
      python(code, {
        runLimits: {
          fileSizeBytes: 64 * 1024 * 1024,
          openFiles: 64,
          // 20000 files took 60 s of wall time alone on this Intel host under TCG (33 s of CPU),
          // past the 60 s it had; 10000 still ask the tmpfs for many inodes.
          wallTimeMs: suiteScaledMs(60_000),
          cpuTimeMs: suiteScaledMs(60_000),
        },
      }),
    );
    console.info(
      `disk fill: ${result.status}, wall ${result.run?.wallTimeMs} ms, cpu ${result.run?.cpuTimeMs} ms`,
    );
    // The verdict first: a job past its limits has no output to compare.
    expect(result.status, `${result.run?.message ?? ''} ${text(result.run, 'stderr')}`).toBe('ok');
    // The file-size limit stops the huge file (SIGXFSZ is ignored by Python: EFBIG).
    expect(text(result.run).trim()).toMatch(/^fill:(EFBIG|ENOSPC) files:(ok|ENOSPC) fds:EMFILE$/);
    expect(agentAlive).toBe(true);
  });

  it('probing: only its own processes, only the documented environment, no host files, no agent port, no privileges', async () => {
    const code = [
      'import os, json, subprocess',
      'r = {}',
      'r["procs"] = sorted(int(p) for p in os.listdir("/proc") if p.isdigit()) == sorted([os.getpid()]) or [p for p in os.listdir("/proc") if p.isdigit()]',
      'r["env"] = sorted(os.environ)',
      'def can_read(path):',
      '    try:',
      '        open(path, "rb").read(1); return True',
      '    except OSError:',
      '        return False',
      'r["shadow"] = can_read("/etc/shadow")',
      'r["ports"] = [p for p in os.listdir("/dev") if p.startswith("vport")]',
      'r["port_open"] = any(can_read("/dev/" + p) for p in r["ports"])',
      'r["nnp"] = [l.split()[1] for l in open("/proc/self/status") if l.startswith("NoNewPrivs")][0]',
      'r["uid"] = os.getuid()',
      'try:',
      '    r["su"] = subprocess.run(["su", "-c", "id"], capture_output=True, stdin=subprocess.DEVNULL, timeout=20).returncode',
      'except FileNotFoundError:',
      '    r["su"] = "absent"',
      'r["mounts_host"] = [l.split()[1] for l in open("/proc/self/mounts") if l.split()[0] in ("9p", "virtiofs", "nfs")]',
      'r["rootfs_ro"] = not os.access("/usr", os.W_OK)',
      'print(json.dumps(r))',
    ].join('\n');
    const r = await service(python(code, { env: { MY_VAR: 'x' } }));
    expect(r.status, `${r.run?.message ?? ''} ${text(r.run, 'stderr')}`).toBe('ok');
    const got = JSON.parse(text(r.run)) as Record<string, unknown>;
    expect(got.procs).toBe(true);
    expect(got.env).toEqual([
      'HOME',
      'LANG',
      'MY_VAR',
      'PATH',
      'PYTHONDONTWRITEBYTECODE',
      'PYTHONUNBUFFERED',
      'TMPDIR',
    ]);
    expect(got.shadow).toBe(false);
    expect(got.port_open).toBe(false);
    expect(got.nnp).toBe('1');
    expect(got.uid).toBe(1000);
    expect(got.su).not.toBe(0);
    expect(got.mounts_host).toEqual([]);
    expect(got.rootfs_ro).toBe(true);
  });

  it('binary and invalid UTF-8 output, NUL bytes, come back byte-exact', async () => {
    const code = 'import sys\nsys.stdout.buffer.write(bytes(range(256)) + b"\\xff\\xfe\\x00end")';
    const r = await service(python(code));
    expect(r.status).toBe('ok');
    expect(Buffer.from(r.run?.stdout ?? '', 'base64')).toEqual(
      Buffer.concat([
        Buffer.from(Array.from({ length: 256 }, (_, i) => i)),
        Buffer.from([0xff, 0xfe, 0x00]),
        Buffer.from('end'),
      ]),
    );
  });

  it('a program that dies by a signal has it reported; daemons and setsid children do not outlive the job', async () => {
    const segv = await service({
      language: 'bash',
      files: [{ name: 'main.sh', content: 'kill -SEGV $$' }],
    });
    expect(segv.status).toBe('runtime_error');
    expect(segv.run?.signal).toBe('SIGSEGV');
    const code = 'setsid sh -c "sleep 1000" & nohup sleep 1000 >/dev/null 2>&1 & echo started';
    const { result, agentAlive } = await (async () => {
      const job = engine.prepare({
        language: 'bash',
        files: [{ name: 'main.sh', content: code }],
      });
      const lease = await engine.pool.acquire('bash');
      try {
        const result = await executeOnVm(lease.vm, job);
        // The next job in this same VM (a second execute) finds no process of the first.
        const check = engine.prepare({
          language: 'bash',
          files: [
            {
              name: 'main.sh',
              content:
                'for p in /proc/[0-9]*; do cat $p/comm; done 2>/dev/null | grep -c sleep || true',
            },
          ],
        });
        const after = await executeOnVm(lease.vm, check);
        return { result, agentAlive: text(after.run).trim() === '0' };
      } finally {
        await engine.pool.release(lease);
      }
    })();
    expect(result.status).toBe('ok');
    expect(agentAlive).toBe(true);
  });

  it('SIGABRT is reported; a program that traps SIGTERM is killed at the wall limit anyway', async () => {
    const abort = await service(python('import os\nos.abort()'));
    expect(abort.status).toBe('runtime_error');
    expect(abort.run?.signal).toBe('SIGABRT');
    const trap = await service({
      language: 'bash',
      files: [
        { name: 'main.sh', content: "trap 'echo ignored' TERM\nwhile :; do sleep 0.1; done" },
      ],
      runLimits: { wallTimeMs: 2000 },
    });
    expect(trap.status).toBe('timeout');
    expect(trap.run?.signal).toBe('SIGKILL');
    expect(trap.run?.wallTimeMs).toBeLessThan(6000);
  });

  it('one 100 MB line without a newline stops at the byte cap', async () => {
    const r = await service(
      python('import sys\nsys.stdout.write("x" * (100 * 1024 * 1024))', {
        runLimits: { outputBytes: 1024 * 1024, memoryMib: 512 },
      }),
    );
    expect(r.status).toBe('output_limit');
    expect(r.run?.stdoutTruncated).toBe(true);
    expect(Buffer.from(r.run?.stdout ?? '', 'base64').length).toBe(1024 * 1024);
  });

  it('closing stdout and running on: the job still ends at the wall limit, and grandchildren die with it', async () => {
    const r = await service({
      language: 'bash',
      files: [{ name: 'main.sh', content: 'echo before\nexec 1>&-\n(sleep 1000 &)\nsleep 1000' }],
      // 2 s was not always enough for bash to print on the loaded CI host: no output came back.
      runLimits: { wallTimeMs: suiteScaledMs(2000) },
    });
    expect(r.status, r.run?.message).toBe('timeout');
    expect(r.run?.message).toMatch(/wall time limit/);
    expect(text(r.run)).toBe('before\n');
  });

  it('a compile-time read of a secret file fails: no host file is in the guest, and guest secrets are root-only', async () => {
    const r = await service({
      language: 'c',
      files: [{ name: 'main.c', content: '#include "/etc/shadow"\nint main(void){return 0;}\n' }],
    });
    expect(r.status).toBe('compile_error');
    expect(text(r.compile, 'stderr')).toMatch(/Permission denied|No such file/);
  });

  it('DNS lookups fail at once', async () => {
    const r = await service(
      python(
        'import socket, time\nt = time.time()\ntry:\n    socket.getaddrinfo("example.com", 80)\n    print("resolved")\nexcept OSError:\n    print("failed")\nprint("fast" if time.time() - t < 2 else "slow")',
      ),
    );
    expect(text(r.run).trim().split('\n')).toEqual(['failed', 'fast']);
  });

  it('the network is absent: no interface but loopback, connections fail at once', async () => {
    const code = [
      'import os, socket, time',
      'print(sorted(os.listdir("/sys/class/net")))',
      't = time.time()',
      'for addr in [("169.254.169.254", 80), ("10.0.2.2", 22), ("1.1.1.1", 53)]:',
      '    s = socket.socket(); s.settimeout(5)',
      '    try:',
      '        s.connect(addr); print("connected", addr)',
      '    except OSError as e:',
      '        print("failed", e.errno)',
      'print("fast" if time.time() - t < 2 else "slow")',
    ].join('\n');
    const r = await service(python(code));
    const lines = text(r.run).trim().split('\n');
    expect(lines[0]).toBe("['lo']");
    expect(lines.filter((l) => l.startsWith('connected'))).toEqual([]);
    expect(lines.at(-1)).toBe('fast');
  });
});
