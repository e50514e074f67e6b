import { execFileSync } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, readdirSync, readlinkSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, relative } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Engine } from '../../../src/pool/engine.js';
import { qemuJailOptions, resolveVmmUser } from '../../../src/pool/engine.js';
import type { SnapshotRef } from '../../../src/pool/snapshots.js';
import {
  QemuDriver,
  QemuJail,
  type MicroVm,
  type VmLaunchOptions,
} from '../../../src/vmm/index.js';
import { ensureImages, testEngine, testSettings, vmSkipReason } from '../../support/vm.js';

const skip =
  vmSkipReason() ??
  (existsSync('/usr/bin/nsenter') ? null : 'nsenter is not installed (util-linux)');
if (skip) console.warn(`skipping the QEMU jail tests in real VMs: ${skip}`);

/** The status lines of /proc/<pid>/status, by name. */
function status(pid: number): Map<string, string> {
  const out = new Map<string, string>();
  for (const line of readFileSync(`/proc/${pid}/status`, 'utf8').split('\n')) {
    const [k, v] = line.split(':\t');
    if (k !== undefined && v !== undefined) out.set(k, v.trim());
  }
  return out;
}

/** Every file (not dir) under a jailed process's root, as absolute paths inside the jail. */
function jailFiles(pid: number): string[] {
  const root = `/proc/${pid}/root`;
  const out: string[] = [];
  const walk = (dir: string): void => {
    for (const e of readdirSync(dir, { withFileTypes: true })) {
      const p = join(dir, e.name);
      if (e.isDirectory()) walk(p);
      else out.push(`/${relative(root, p)}`);
    }
  };
  walk(root);
  return out.sort();
}

/** True once the process is gone (or a zombie nobody reaped yet: it runs nothing). */
function gone(pid: number): boolean {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    const state = stat.slice(stat.lastIndexOf(')') + 2, stat.lastIndexOf(')') + 3);
    return state === 'Z' || state === 'X';
  } catch {
    return true;
  }
}

/**
 * QEMU in its jail (src/vmm/jail.ts, src/vmm/native/runner-jail.c), booted and restored for
 * real (TCG here): no capabilities, only its own files, no network but lo, namespaces and a
 * cgroup of its own, gone with the jail's parent; a jail that cannot be set up stops the VM.
 */
describe.skipIf(skip !== null)('QEMU in its jail, in real VMs', () => {
  let engine: Engine | undefined;
  let ref: SnapshotRef | undefined;
  const vms: MicroVm[] = [];
  let n = 0;

  function need(): { engine: Engine; ref: SnapshotRef } {
    if (!engine || !ref) throw new Error('the engine did not start');
    return { engine, ref };
  }

  /** The error a promise rejects with (the test fails if it resolves). */
  async function rejection(promise: Promise<unknown>): Promise<{ code?: string; message: string }> {
    try {
      await promise;
    } catch (err) {
      return err as { code?: string; message: string };
    }
    throw new Error('expected a rejection');
  }

  function launch(): VmLaunchOptions {
    if (!engine || !ref) throw new Error('the engine did not start');
    const vmId = `jailtest-${process.pid}-${n++}`;
    return {
      ...ref.resources,
      vmId,
      runDir: join(engine.paths.runDir, vmId),
      timeoutMs: 30_000,
    };
  }

  async function restore(): Promise<MicroVm> {
    if (!engine || !ref) throw new Error('the engine did not start');
    const vm = await engine.driver.restore(launch(), ref.path);
    vms.push(vm);
    return vm;
  }

  beforeAll(async () => {
    await ensureImages(['python']);
    engine = await testEngine({ poolTarget: 0, qemuJail: true });
    ref = await engine.snapshots.ensure('python');
  }, 600_000);

  afterAll(async () => {
    for (const vm of vms) await vm.destroy();
    await engine?.close();
  });

  it('boots cold through the jail, takes a snapshot out of it, and restores from it', async () => {
    if (!engine) throw new Error('no engine');
    const { vm } = await engine.snapshots.bootFresh('python');
    vms.push(vm);
    const dir = mkdtempSync(join(tmpdir(), 'runner-jail-snap-'));
    try {
      const info = await vm.snapshot(join(dir, 'vm.snap'));
      expect(info.sizeBytes).toBeGreaterThan(1 << 20);
      await vm.destroy();
      const restored = await engine.driver.restore(launch(), join(dir, 'vm.snap'));
      vms.push(restored);
      expect(restored.state).toBe('running');
      await restored.destroy();
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  }, 300_000);

  it('the restored QEMU has no capabilities, no_new_privs, seccomp, and the VMM uid', async () => {
    const vm = await restore();
    const pid = vm.pid ?? 0;
    const s = status(pid);
    for (const cap of ['CapInh', 'CapPrm', 'CapEff', 'CapBnd', 'CapAmb'])
      expect(s.get(cap), cap).toBe('0000000000000000');
    expect(s.get('NoNewPrivs')).toBe('1');
    expect(s.get('Seccomp')).toBe('2'); // QEMU's own -sandbox, on in the jail
    const user = resolveVmmUser(testSettings());
    expect(s.get('Uid')?.split('\t')[0]).toBe(String(user?.uid));
    expect(s.get('Groups') ?? '').toBe('');
    // The jail's parent holds nothing either.
    const parent = Number(s.get('PPid'));
    const ps = status(parent);
    expect(ps.get('CapEff')).toBe('0000000000000000');
    expect(ps.get('CapBnd')).toBe('0000000000000000');
    // QEMU's environment is empty: no secret of the service's reaches it.
    expect(readFileSync(`/proc/${pid}/environ`, 'utf8')).toBe('');
    await vm.destroy();
  }, 120_000);

  it("sees only the jail's files, has only lo, and its own namespaces and cgroup", async () => {
    if (!engine || !ref) throw new Error('no engine');
    const vm = await restore();
    const pid = vm.pid ?? 0;
    const files = jailFiles(pid);
    const runDir = join(engine.paths.runDir, vm.id);
    expect(files).toContain('/usr/bin/qemu-system-x86_64');
    expect(files).toContain(ref.resources.kernelPath);
    expect(files).toContain(ref.resources.rootfsPath);
    // The base image under the language's layer is bound in read-only as well.
    expect(ref.resources.basePath).toBeDefined();
    expect(files).toContain(ref.resources.basePath);
    expect(files).toContain(join(runDir, 'qmp.sock'));
    expect(files).toContain('/dev/urandom');
    const images = [
      ref.resources.kernelPath,
      ref.resources.initrdPath,
      ref.resources.rootfsPath,
      ref.resources.basePath ?? '',
    ];
    const allowed = (f: string): boolean =>
      f.startsWith(`${runDir}/`) ||
      images.includes(f) ||
      /^\/(usr\/)?lib(64)?\//.test(f) ||
      f.startsWith('/usr/share/qemu/') ||
      ['/usr/bin/qemu-system-x86_64', '/etc/ld.so.cache', '/dev/null', '/dev/urandom'].includes(f);
    expect(files.filter((f) => !allowed(f))).toEqual([]);
    // Nothing else of the host: no /etc/passwd, no /proc, no other VM's run dir.
    expect(existsSync(`/proc/${pid}/root/etc/passwd`)).toBe(false);
    expect(existsSync(`/proc/${pid}/root/proc/self`)).toBe(false);
    expect(readdirSync(`/proc/${pid}/root${engine.paths.runDir}`)).toEqual([vm.id]);

    const links = execFileSync('nsenter', [`--net=/proc/${pid}/ns/net`, 'ip', '-o', 'link'], {
      encoding: 'utf8',
    });
    expect(
      links
        .trim()
        .split('\n')
        .map((l) => l.split(':')[1]?.trim()),
    ).toEqual(['lo']);
    for (const ns of ['mnt', 'pid', 'ipc', 'uts', 'net']) {
      expect(readlinkSync(`/proc/${pid}/ns/${ns}`), ns).not.toBe(
        readlinkSync(`/proc/self/ns/${ns}`),
      );
    }
    // PID 1 of its own PID namespace.
    expect(status(pid).get('NSpid')?.split('\t').at(-1)).toBe('1');

    const cgroups = readFileSync(`/proc/${pid}/cgroup`, 'utf8');
    const root = '/sys/fs/cgroup';
    if (existsSync(join(root, 'cgroup.controllers'))) {
      const dir = join(root, 'runner-qemu', vm.id);
      expect(cgroups).toContain(`::/runner-qemu/${vm.id}`);
      expect(readFileSync(join(dir, 'pids.max'), 'utf8').trim()).toBe('128');
      expect(readFileSync(join(dir, 'memory.max'), 'utf8').trim()).toBe(
        String((ref.resources.memoryMib + 512) * 1048576),
      );
    } else {
      for (const c of ['memory', 'pids', 'cpu']) {
        const line = cgroups.split('\n').find((l) => l.split(':')[1]?.split(',').includes(c));
        expect(line, c).toMatch(new RegExp(`/runner-qemu/${vm.id}$`));
      }
      const path = (c: string): string => {
        const line = cgroups.split('\n').find((l) => l.split(':')[1]?.split(',').includes(c));
        return join(root, c, line?.split(':')[2] ?? '/missing');
      };
      expect(readFileSync(join(path('pids'), 'pids.max'), 'utf8').trim()).toBe('128');
      expect(readFileSync(join(path('memory'), 'memory.limit_in_bytes'), 'utf8').trim()).toBe(
        String((ref.resources.memoryMib + 512) * 1048576),
      );
      expect(readFileSync(join(path('cpu'), 'cpu.cfs_quota_us'), 'utf8').trim()).toBe(
        String((ref.resources.vcpus + 1) * 100_000),
      );
      const memDir = path('memory');
      await vm.destroy();
      // Destroy removes the cgroups and the jail root.
      expect(existsSync(memDir)).toBe(false);
      expect(existsSync(join(engine.paths.dataDir, 'qemu-jail', vm.id))).toBe(false);
    }
    await vm.destroy();
  }, 120_000);

  it("killing the jail's parent with SIGKILL leaves no QEMU running", async () => {
    const vm = await restore();
    const pid = vm.pid ?? 0;
    const parent = Number(status(pid).get('PPid'));
    expect(parent).toBeGreaterThan(1);
    process.kill(parent, 'SIGKILL');
    const deadline = Date.now() + 5000;
    while (!gone(pid) && Date.now() < deadline) await sleep(20);
    expect(gone(pid)).toBe(true);
    await vm.destroy();
  }, 120_000);

  it('a job still runs correctly through the jail', async () => {
    if (!engine) throw new Error('no engine');
    const r = await engine.run(
      engine.prepare({
        language: 'python',
        files: [{ content: 'import sys\nprint(sum(range(10)), sys.stdin.read().strip())' }],
        stdin: Buffer.from('jailed'),
      }),
    );
    expect(r.status).toBe('ok');
    expect(Buffer.from(r.run?.stdout ?? '', 'base64').toString()).toBe('45 jailed\n');
  }, 180_000);

  describe('a jail that cannot be set up refuses to start, naming the part', () => {
    function driverWith(overrides: Record<string, unknown>): QemuDriver {
      const settings = testSettings(overrides);
      const user = resolveVmmUser(settings);
      return new QemuDriver({
        binary: settings.qemuBinary,
        accel: 'tcg',
        user,
        jail: new QemuJail(qemuJailOptions(settings, need().engine.paths, user)),
      });
    }

    it('a missing kernel file: files', async () => {
      const options = { ...launch(), kernelPath: '/nonexistent/vmlinuz' };
      const err = await rejection(driverWith({}).restore(options, need().ref.path));
      expect(err.code).toBe('VM_JAIL_FAILED');
      expect(err.message).toMatch(/\(files\): \/nonexistent\/vmlinuz is missing/);
      expect(existsSync(options.runDir)).toBe(false);
    });

    it('a bad cgroup root: cgroup', async () => {
      const driver = driverWith({ qemuJailCgroupRoot: '/nonexistent-cgroup' });
      const options = launch();
      const err = await rejection(driver.restore(options, need().ref.path));
      expect(err.code).toBe('VM_JAIL_FAILED');
      expect(err.message).toMatch(/\(cgroup\): \/nonexistent-cgroup does not exist/);
      expect(existsSync(join(need().engine.paths.dataDir, 'qemu-jail', options.vmId))).toBe(false);
    });

    it('a network namespace that is not one: netns, told by the helper on its status fd', async () => {
      const options = { ...launch(), netns: '/etc/passwd' };
      const err = await rejection(driverWith({}).restore(options, need().ref.path));
      expect(err.code).toBe('VM_JAIL_FAILED');
      expect(err.message).toMatch(/\(netns\): \/etc\/passwd: Invalid argument/);
      expect(existsSync(join(need().engine.paths.dataDir, 'qemu-jail', options.vmId))).toBe(false);
      expect(existsSync(options.runDir)).toBe(false);
    });
  });
});
