import { describe, expect, it } from 'vitest';
import { LanguageRegistry } from '../../../src/languages/index.js';
import { quantiles } from '../../../src/cli/commands/bench.js';
import { exitCodeFor, languageForFile } from '../../../src/cli/commands/run.js';
import { LAYERED_ROOT_ARG } from '../../../src/images/guest-init.js';
import { tcgKernelArgs, qemuArgs, ramFileArgs, VmStateMachine } from '../../../src/vmm/index.js';

const registry = LanguageRegistry.fromDir();

describe('CLI helpers', () => {
  it('maps results to exit statuses', () => {
    const base = {
      id: 'x',
      language: 'python',
      version: '3',
      compile: null,
      vmId: null,
      timings: {} as never,
    };
    const stage = (exitCode: number | null, signal: string | null) => ({
      status: 'runtime_error' as const,
      exitCode,
      signal,
      wallTimeMs: 1,
      cpuTimeMs: 1,
      memoryPeakBytes: 1,
      stdout: '',
      stderr: '',
      stdoutTruncated: false,
      stderrTruncated: false,
    });
    expect(exitCodeFor({ ...base, status: 'ok', run: null })).toBe(0);
    expect(exitCodeFor({ ...base, status: 'runtime_error', run: stage(3, null) })).toBe(3);
    expect(exitCodeFor({ ...base, status: 'runtime_error', run: stage(null, 'SIGSEGV') })).toBe(
      139,
    );
    expect(exitCodeFor({ ...base, status: 'timeout', run: null })).toBe(124);
    expect(exitCodeFor({ ...base, status: 'sandbox_error', run: null })).toBe(70);
  });

  it('tells the language from the extension', () => {
    expect(languageForFile(registry, 'x/hello.py')).toBe('python');
    expect(languageForFile(registry, 'a.cc')).toBe('c++');
    expect(languageForFile(registry, 'Main.java')).toBe('java');
    // Shared extensions go to the usual language (pypy and clang are asked for with -l).
    expect(languageForFile(registry, 'main.c')).toBe('c');
    expect(languageForFile(registry, 'run.sh')).toBe('bash');
    expect(languageForFile(registry, 'plot.m')).toBe('octave');
    expect(languageForFile(registry, 'a.hs')).toBe('haskell');
    expect(() => languageForFile(registry, 'a.xyz')).toThrow(/-l LANGUAGE/);
  });

  it('computes nearest-rank quantiles', () => {
    expect(quantiles([5, 1, 3, 2, 4])).toEqual({ p50: 3, p95: 5, n: 5 });
    expect(quantiles(Array.from({ length: 100 }, (_, i) => i + 1))).toEqual({
      p50: 50,
      p95: 95,
      n: 100,
    });
    expect(quantiles([]).n).toBe(0);
  });
});

/** A microvm of one vCPU and 512 MiB over a whole rootfs, as the command-line tests use it. */
const MACHINE = {
  vmId: 'v',
  runDir: '/r/v',
  timeoutMs: 1,
  kernelPath: '/k',
  initrdPath: '/i',
  rootfsPath: '/f.ext4',
  memoryMib: 512,
  vcpus: 1,
};

describe('qemu driver pieces', () => {
  it('gives TCG guests the host TSC rate', () => {
    expect(tcgKernelArgs('cpu MHz\t\t: 2596.126\n')).toEqual([
      'tsc_early_khz=2596126',
      'tsc=reliable',
    ]);
    expect(tcgKernelArgs('')).toEqual(['tsc=reliable']);
  });

  it('builds one command line for boot and restore, with the seccomp sandbox and no network device', () => {
    const opts = MACHINE;
    const boot = qemuArgs(opts, { accel: 'tcg' }, false);
    const restore = qemuArgs(opts, { accel: 'tcg' }, true);
    expect(restore.slice(0, boot.length)).toEqual(boot);
    expect(restore.slice(boot.length)).toEqual(['-incoming', 'fd:3']);
    expect(boot.join(' ')).toContain(
      '-sandbox on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny',
    );
    expect(boot.join(' ')).toContain('readonly=on');
    expect(boot.join(' ')).not.toMatch(/-netdev|-nic|virtio-net/);
    expect(boot).toContain('-nodefaults');
  });

  it('gives a layered VM both drives, read-only, and tells the initramfs to stack them', () => {
    const opts = {
      vmId: 'v',
      runDir: '/r/v',
      timeoutMs: 1,
      kernelPath: '/k',
      initrdPath: '/i',
      rootfsPath: '/layer.ext4',
      basePath: '/base.ext4',
      memoryMib: 512,
      vcpus: 1,
    };
    const args = qemuArgs(opts, { accel: 'tcg' }, false);
    const drives = args.filter((_, i) => args[i - 1] === '-drive');
    expect(drives).toEqual([
      'id=base,file=/base.ext4,format=raw,if=none,readonly=on',
      'id=root,file=/layer.ext4,format=raw,if=none,readonly=on',
    ]);
    expect(args[args.indexOf('-append') + 1]?.split(' ')).toContain(LAYERED_ROOT_ARG);
    const whole = qemuArgs({ ...opts, basePath: undefined }, { accel: 'tcg' }, false);
    expect(whole.filter((a) => a === '-drive')).toHaveLength(1);
    expect(whole[whole.indexOf('-append') + 1]).not.toContain(LAYERED_ROOT_ARG);
  });

  it('maps a RAM template read-only and copy-on-write in a clone, shared in the template VM', () => {
    const opts = MACHINE;
    const template = { path: '/s/ram', role: 'template' as const };
    const clone = { path: '/s/ram', role: 'clone' as const };
    expect(ramFileArgs(template, 512)).toEqual([
      '-object',
      'memory-backend-file,id=microvm.ram,size=512M,mem-path=/s/ram,share=on',
    ]);
    expect(ramFileArgs(clone, 512)).toEqual([
      '-object',
      'memory-backend-file,id=microvm.ram,size=512M,mem-path=/s/ram,share=off,readonly=on,rom=off',
    ]);
    const boot = qemuArgs({ ...opts, ramFile: template }, { accel: 'tcg' }, false);
    expect(boot[boot.indexOf('-M') + 1]).toBe('microvm,rtc=on,memory-backend=microvm.ram');
    expect(boot.join(' ')).toContain('mem-path=/s/ram,share=on');
    // A clone waits for its migration to be started over QMP (x-ignore-shared set first).
    const restore = qemuArgs({ ...opts, ramFile: clone }, { accel: 'tcg' }, true);
    expect(restore.slice(-2)).toEqual(['-incoming', 'defer']);
    expect(restore.join(' ')).toContain('readonly=on,rom=off');
    // Without a RAM file the machine keeps its own RAM and the command line is unchanged.
    const plain = qemuArgs(opts, { accel: 'tcg' }, true);
    expect(plain[plain.indexOf('-M') + 1]).toBe('microvm,rtc=on');
    expect(plain.join(' ')).not.toContain('memory-backend');
    expect(plain.slice(-2)).toEqual(['-incoming', 'fd:3']);
  });

  it('points a QEMU unpacked outside /usr at its own firmware folder', () => {
    const opts = MACHINE;
    const args = qemuArgs(opts, { accel: 'tcg', firmwareDir: '/q/usr/share/qemu' }, false);
    expect(args[args.indexOf('-L') + 1]).toBe('/q/usr/share/qemu');
    expect(args.indexOf('-L')).toBeLessThan(args.indexOf('-kernel'));
    expect(qemuArgs(opts, { accel: 'tcg' }, false)).not.toContain('-L');
  });

  it('refuses illegal VM state transitions', () => {
    const m = new VmStateMachine('v');
    expect(() => m.to('snapshotted')).toThrow(expect.objectContaining({ code: 'VM_STATE' }));
    m.to('running');
    m.to('paused');
    m.to('snapshotted');
    expect(() => m.to('running')).toThrow(/cannot go from snapshotted to running/);
    m.to('destroyed');
    expect(() => m.to('running')).toThrow();
  });
});
