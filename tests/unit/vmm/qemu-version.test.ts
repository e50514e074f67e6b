import { chmodSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { qemuFirmware } from '../../../src/pool/engine.js';
import {
  checkRamTemplateQemu,
  formatQemuVersion,
  parseQemuVersion,
  qemuAtLeast,
  RAM_TEMPLATE_MIN_QEMU,
} from '../../../src/vmm/index.js';

const dir = mkdtempSync(join(tmpdir(), 'qemu-version-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

/** A stand-in `qemu-system-x86_64` that prints `text` for --version. */
function fakeQemu(name: string, text: string): string {
  const path = join(dir, name);
  writeFileSync(path, `#!/bin/sh\nprintf '%s\\n' '${text}'\n`);
  chmodSync(path, 0o755);
  return path;
}

describe('the QEMU version a RAM template needs', () => {
  it('reads the version line of Debian 12 and of bookworm-backports', () => {
    expect(
      parseQemuVersion('QEMU emulator version 7.2.15 (Debian 1:7.2+dfsg-7+deb12u13)\nCopyright'),
    ).toEqual({ major: 7, minor: 2, micro: 15 });
    expect(parseQemuVersion('QEMU emulator version 10.0.2 (Debian 1:10.0.2+ds-1~bpo12+1)')).toEqual(
      { major: 10, minor: 0, micro: 2 },
    );
    expect(parseQemuVersion('QEMU emulator version 8.2')).toEqual({ major: 8, minor: 2, micro: 0 });
    expect(parseQemuVersion('no version here')).toBeNull();
  });

  it('compares versions part by part, not as text', () => {
    const v = (major: number, minor: number, micro: number) => ({ major, minor, micro });
    expect(qemuAtLeast(v(10, 0, 2), RAM_TEMPLATE_MIN_QEMU)).toBe(true);
    expect(qemuAtLeast(v(8, 2, 0), RAM_TEMPLATE_MIN_QEMU)).toBe(true);
    expect(qemuAtLeast(v(8, 1, 9), RAM_TEMPLATE_MIN_QEMU)).toBe(false);
    expect(qemuAtLeast(v(7, 2, 15), RAM_TEMPLATE_MIN_QEMU)).toBe(false);
    expect(qemuAtLeast(v(9, 0, 0), v(8, 10, 0))).toBe(true);
    expect(formatQemuVersion(v(10, 0, 2))).toBe('10.0.2');
  });

  it('refuses a QEMU older than 8.2, or one that prints no version, as a bad configuration', async () => {
    const old = fakeQemu('qemu-old', 'QEMU emulator version 7.2.15 (Debian 1:7.2+dfsg-7+deb12u13)');
    await expect(checkRamTemplateQemu(old)).rejects.toMatchObject({
      code: 'CONFIG_INVALID',
      message: expect.stringMatching(/needs QEMU 8\.2\.0 or later.* is 7\.2\.15/) as unknown,
    });
    const mute = fakeQemu('qemu-mute', 'hello');
    await expect(checkRamTemplateQemu(mute)).rejects.toMatchObject({ code: 'CONFIG_INVALID' });
    await expect(checkRamTemplateQemu(join(dir, 'absent'))).rejects.toMatchObject({
      code: 'CONFIG_INVALID',
    });
    const recent = fakeQemu(
      'qemu-new',
      'QEMU emulator version 10.0.2 (Debian 1:10.0.2+ds-1~bpo12+1)',
    );
    await expect(checkRamTemplateQemu(recent)).resolves.toEqual({ major: 10, minor: 0, micro: 2 });
  });

  it('gives an unpacked QEMU the firmware folder beside its bin, and the system one none', () => {
    expect(qemuFirmware('/var/cache/q/root/usr/bin/qemu-system-x86_64')).toEqual({
      firmwareDir: '/var/cache/q/root/usr/share/qemu',
    });
    expect(qemuFirmware('/usr/bin/qemu-system-x86_64')).toEqual({});
    expect(qemuFirmware('qemu-system-x86_64')).toEqual({});
  });
});
