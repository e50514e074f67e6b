import { spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import {
  JAIL_FAILED_EXIT,
  QemuJail,
  buildJailHelper,
  cgroupPlan,
  jailArgv,
  jailDevices,
  jailLimits,
  parseLdd,
  qemuSupportFiles,
  resolveBinary,
  selfCgroups,
} from '../../../src/vmm/jail.js';

const limits = { memoryBytes: 1536 * 1048576, pidsMax: 128, cpuQuotaUs: 200_000 };

describe("QEMU's jail: spec and command line", () => {
  it('puts every bind, cgroup and fd before -- and QEMU after it, unchanged', () => {
    const argv = jailArgv({
      helper: '/b/runner-jail',
      root: '/d/qemu-jail/vm1',
      uid: 999,
      gid: 995,
      netns: null,
      readOnly: ['/usr/bin/qemu', '/k/vmlinuz'],
      readWrite: ['/d/run/vm1'],
      devices: ['/dev/null'],
      cgroupProcs: ['/sys/fs/cgroup/memory/runner-qemu/vm1/cgroup.procs'],
      keepFds: [3],
      statusFd: 4,
      binary: '/usr/bin/qemu',
      args: ['-name', 'runner-vm1', '-incoming', 'fd:3'],
    });
    expect(argv).toEqual([
      '--root', '/d/qemu-jail/vm1', '--uid', '999', '--gid', '995',
      '--ro', '/usr/bin/qemu', '--ro', '/k/vmlinuz',
      '--rw', '/d/run/vm1',
      '--dev', '/dev/null',
      '--cgroup', '/sys/fs/cgroup/memory/runner-qemu/vm1/cgroup.procs',
      '--keep-fd', '3', '--status-fd', '4',
      '--', '/usr/bin/qemu', '-name', 'runner-vm1', '-incoming', 'fd:3',
    ]); // prettier-ignore
  });

  it('joins a given network namespace and then binds /dev/net/tun; KVM only with KVM', () => {
    const argv = jailArgv({
      helper: 'h',
      root: '/r',
      uid: 1,
      gid: 1,
      netns: '/run/netns/vm1',
      readOnly: [],
      readWrite: [],
      devices: jailDevices('tcg', '/run/netns/vm1'),
      cgroupProcs: [],
      keepFds: [],
      statusFd: 3,
      binary: '/q',
      args: [],
    });
    expect(argv.slice(6, 8)).toEqual(['--netns', '/run/netns/vm1']);
    expect(jailDevices('tcg', null)).toEqual(['/dev/null', '/dev/urandom']);
    expect(jailDevices('kvm', null)).toContain('/dev/kvm');
    expect(jailDevices('tcg', '/run/netns/x')).toContain('/dev/net/tun');
  });

  it('reads ldd: resolved paths and the loader, not the vdso; a missing library is refused', () => {
    const text = [
      '\tlinux-vdso.so.1 (0x00007ffd)',
      '\tlibz.so.1 => /lib/x86_64-linux-gnu/libz.so.1 (0x00007f1)',
      '\t/lib64/ld-linux-x86-64.so.2 (0x00007f2)',
    ].join('\n');
    expect(parseLdd(text, 'q')).toEqual([
      '/lib/x86_64-linux-gnu/libz.so.1',
      '/lib64/ld-linux-x86-64.so.2',
    ]);
    expect(() => parseLdd('\tlibgone.so.3 => not found\n', '/usr/bin/q')).toThrow(
      /VM_JAIL_FAILED|libgone\.so\.3/,
    );
  });

  it("finds QEMU's data files and TCG module relative to its own directory", () => {
    expect(qemuSupportFiles('/usr/bin/qemu-system-x86_64', 'tcg')).toEqual([
      '/usr/share/qemu/bios-microvm.bin',
      '/usr/share/qemu/linuxboot_dma.bin',
      '/usr/lib/x86_64-linux-gnu/qemu/accel-tcg-x86_64.so',
    ]);
    expect(qemuSupportFiles('/opt/q/bin/qemu', 'kvm')).toEqual([
      '/opt/q/share/qemu/bios-microvm.bin',
      '/opt/q/share/qemu/linuxboot_dma.bin',
    ]);
    // A QEMU with TCG built in (Debian's 10 from bookworm-backports) has no module to bind.
    expect(qemuSupportFiles('/opt/q/bin/qemu', 'tcg', () => false)).toEqual([
      '/opt/q/share/qemu/bios-microvm.bin',
      '/opt/q/share/qemu/linuxboot_dma.bin',
    ]);
    expect(qemuSupportFiles('/opt/q/bin/qemu', 'tcg', () => true)).toContain(
      '/opt/q/lib/x86_64-linux-gnu/qemu/accel-tcg-x86_64.so',
    );
  });

  it("resolves the binary on PATH (QEMU is exec'd by absolute path) or names it missing", () => {
    expect(resolveBinary('sh', '/nonexistent:/bin')).toBe('/bin/sh');
    expect(() => resolveBinary('no-such-qemu', '/bin')).toThrow(/not on PATH/);
  });
});

describe("QEMU's jail: cgroups and limits", () => {
  it('memory is the guest plus the overhead; CPU defaults to (vCPUs + 1) x 100 %', () => {
    const l = jailLimits(
      { memoryOverheadMib: 512, pidsMax: 128, cpuPercent: 0 },
      { memoryMib: 1024, vcpus: 1 },
    );
    expect(l).toEqual({ memoryBytes: 1536 * 1048576, pidsMax: 128, cpuQuotaUs: 200_000 });
    expect(
      jailLimits(
        { memoryOverheadMib: 64, pidsMax: 9, cpuPercent: 50 },
        { memoryMib: 128, vcpus: 4 },
      ).cpuQuotaUs,
    ).toBe(50_000);
  });

  it("v1: one dir per controller, nested under the service's own cgroup", () => {
    const self = selfCgroups(
      '9:name=systemd:/\n4:memory:/process_api/abc\n1:cpu,cpuacct:/\n0::/\n',
    );
    expect(self.get('memory')).toBe('/process_api/abc');
    expect(self.get('cpu')).toBe('/');
    const plan = cgroupPlan(1, '/sys/fs/cgroup', self, 'vm1', limits);
    expect(plan.map((p) => p.dir)).toEqual([
      '/sys/fs/cgroup/memory/process_api/abc/runner-qemu/vm1',
      '/sys/fs/cgroup/pids/runner-qemu/vm1',
      '/sys/fs/cgroup/cpu/runner-qemu/vm1',
    ]);
    expect(plan[0]?.files).toEqual({ 'memory.limit_in_bytes': String(1536 * 1048576) });
    expect(plan[1]?.files).toEqual({ 'pids.max': '128' });
    expect(plan[2]?.files).toEqual({ 'cpu.cfs_period_us': '100000', 'cpu.cfs_quota_us': '200000' });
  });

  it('v2: one dir with memory.max, pids.max and cpu.max', () => {
    const plan = cgroupPlan(2, '/sys/fs/cgroup', new Map([['', '/svc']]), 'vm1', limits);
    expect(plan).toEqual([
      {
        dir: '/sys/fs/cgroup/runner-qemu/vm1',
        files: {
          'memory.max': String(1536 * 1048576),
          'memory.swap.max': '0',
          'pids.max': '128',
          'cpu.max': '200000 100000',
        },
      },
    ]);
  });
});

const gcc = spawnSync('gcc', ['--version']).status === 0;
if (!gcc) console.warn('skipping the runner-jail build tests: gcc is not installed');

describe.skipIf(!gcc)('runner-jail, built with the host gcc', () => {
  const buildDir = mkdtempSync(join(tmpdir(), 'runner-jail-build-'));
  afterAll(() => rmSync(buildDir, { recursive: true, force: true }));

  it('is built once per source (by its hash) and reports a bad spec on its status fd, exit 125', async () => {
    const helper = await buildJailHelper(buildDir);
    expect(helper).toMatch(/runner-jail-[0-9a-f]{16}$/);
    expect(await buildJailHelper(buildDir)).toBe(helper);
    // fd 3 is the status fd: a pipe whose text the test reads.
    const r = spawnSync(
      helper,
      ['--status-fd', '3', '--root', '/tmp/x', '--uid', '0', '--gid', '0', '--', '/bin/true'],
      { stdio: ['ignore', 'pipe', 'pipe', 'pipe'] },
    );
    expect(r.status).toBe(JAIL_FAILED_EXIT);
    expect(String(r.output[3])).toMatch(/^args: --uid and --gid must name an unprivileged user/);
    const relative = spawnSync(helper, ['--root', '/r', '--uid', '5', '--gid', '5', '--', 'qemu'], {
      encoding: 'utf8',
    });
    expect(relative.status).toBe(JAIL_FAILED_EXIT);
    expect(relative.stderr).toMatch(/args: the QEMU binary must be an absolute path/);
  });

  it('a source that does not compile is VM_JAIL_FAILED (helper) with the compiler output', async () => {
    const bad = join(buildDir, 'bad.c');
    (await import('node:fs')).writeFileSync(bad, 'int main(void) { return nope; }\n');
    await expect(buildJailHelper(buildDir, bad)).rejects.toThrow(/\(helper\).*nope/s);
  });

  it.skipIf(!existsSync('/usr/bin/qemu-system-x86_64'))(
    'the closure of the real QEMU holds the binary, its libraries, the loader and the TCG module',
    async () => {
      const jail = new QemuJail({
        user: { uid: 999, gid: 999 },
        buildDir,
        rootBaseDir: buildDir,
        cgroupRoot: '/sys/fs/cgroup',
        memoryOverheadMib: 512,
        pidsMax: 128,
        cpuPercent: 0,
      });
      const files = await jail.closure('/usr/bin/qemu-system-x86_64', 'tcg');
      expect(files[0]).toBe('/usr/bin/qemu-system-x86_64');
      expect(files.some((f) => /\/libc\.so\.6$/.test(f))).toBe(true);
      expect(files.some((f) => /ld-linux-x86-64\.so\.2$/.test(f))).toBe(true);
      expect(files).toContain('/usr/lib/x86_64-linux-gnu/qemu/accel-tcg-x86_64.so');
      expect(files).toContain('/usr/share/qemu/bios-microvm.bin');
      for (const f of files) expect(existsSync(f)).toBe(true);
      expect(await jail.closure('/usr/bin/qemu-system-x86_64', 'tcg')).toBe(files);
    },
  );
});
