import { chmodSync, existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { bootUnderKvm, qemuArgs } from '../../../src/vmm/index.js';

/*
 * The KVM probe against a fake QEMU: a shell script that records its argv and prints what it
 * is told. No guest is booted.
 */
describe('the KVM probe', () => {
  let dir: string;

  beforeEach(() => {
    dir = mkdtempSync(join(tmpdir(), 'runner-kvm-test-'));
  });
  afterEach(() => rmSync(dir, { recursive: true, force: true }));

  function fakeQemu(body: string): string {
    const path = join(dir, 'qemu');
    writeFileSync(path, `#!/bin/sh\nprintf '%s\\n' "$@" > ${join(dir, 'argv')}\n${body}\n`);
    chmodSync(path, 0o755);
    return path;
  }

  const argv = (): string[] => readFileSync(join(dir, 'argv'), 'utf8').trimEnd().split('\n');

  it('boots the production command line under KVM and sees the kernel reach /init', async () => {
    const qemuBinary = fakeQemu(`echo '[    0.42] Run /init as init process'\nexec sleep 30`);
    const r = await bootUnderKvm({
      kernelPath: '/k/vmlinuz',
      initrdPath: '/k/initrd.img',
      qemuBinary,
    });
    expect(r.accel).toBe('kvm');
    expect(r.reason).toMatch(/a guest kernel booted under KVM in \d+ ms/);

    const args = argv();
    const runDir = args[args.indexOf('-qmp') + 1]?.replace(/^unix:(.*)\/qmp\.sock,.*$/, '$1') ?? '';
    const expected = qemuArgs(
      {
        vmId: args[args.indexOf('-name') + 1]?.replace(/^runner-/, '') ?? '',
        runDir,
        kernelPath: '/k/vmlinuz',
        initrdPath: '/k/initrd.img',
        rootfsPath: null,
        memoryMib: 256,
        vcpus: 1,
      },
      { accel: 'kvm', kernelArgs: ['loglevel=7'] },
      false,
    );
    expect(args).toEqual(expected);
    expect(args.join(' ')).toContain('-accel kvm -cpu host');
    // The console is QEMU's stdout, where the probe reads it.
    expect(args.join(' ')).toContain('-serial stdio');
    expect(args).not.toContain('-drive');
    // A loud console: the last loglevel= wins.
    const append = args[args.indexOf('-append') + 1] ?? '';
    expect(append.lastIndexOf('loglevel=7')).toBeGreaterThan(append.indexOf('loglevel=1'));
    // The throwaway run dir is gone.
    expect(runDir).toContain('runner-kvm-probe-');
    expect(existsSync(runDir)).toBe(false);
  });

  it('falls back to TCG when QEMU exits before the guest boots, with its last line', async () => {
    const qemuBinary = fakeQemu(
      `echo 'qemu: failed to initialize kvm: Permission denied' >&2\nexit 1`,
    );
    const r = await bootUnderKvm({ kernelPath: '/k', initrdPath: '/i', qemuBinary });
    expect(r).toEqual({
      accel: 'tcg',
      reason:
        'QEMU with KVM exited (status 1) before the guest booted: qemu: failed to initialize kvm: Permission denied',
    });
  });

  it('falls back to TCG when the guest hangs past the deadline (nested KVM)', async () => {
    const qemuBinary = fakeQemu(`echo 'Booting the kernel.'\nexec sleep 30`);
    const r = await bootUnderKvm({
      kernelPath: '/k',
      initrdPath: '/i',
      qemuBinary,
      deadlineMs: 300,
    });
    expect(r.accel).toBe('tcg');
    expect(r.reason).toMatch(/did not boot under KVM within 300 ms/);
  });
});
