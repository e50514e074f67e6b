import { describe, expect, it } from 'vitest';
import { ramTemplateCheck } from '../../../src/cli/commands/doctor.js';
import { BACKPORTS_QEMU } from '../../../src/vmm/index.js';

const V72 = 'QEMU emulator version 7.2.22 (Debian 1:7.2+dfsg-7+deb12u18)';
const V10 = 'QEMU emulator version 10.0.2 (Debian 1:10.0.2+ds-2+deb13u1~bpo12+1)';

describe("runner doctor: the RAM template's QEMU", () => {
  it('fails with the setting on and a QEMU older than 8.2, and names the QEMU to use', () => {
    const check = ramTemplateCheck(true, '/usr/bin/qemu-system-x86_64', V72, BACKPORTS_QEMU);
    expect(check.ok).toBe(false);
    expect(check.detail).toBe(
      'on, but QEMU 7.2.22 is older than 8.2.0 (the service refuses to start)',
    );
    expect(check.fix).toBe(`RUNNER_QEMU_BINARY=${BACKPORTS_QEMU}`);
    // Not unpacked yet: the fix says how.
    expect(ramTemplateCheck(true, 'q', V72, null).fix).toMatch(/scripts\/qemu-backports\.sh/);
    expect(ramTemplateCheck(true, 'q', null, null)).toMatchObject({
      ok: false,
      detail: expect.stringMatching(/q gives no version/) as unknown,
    });
  });

  it('passes with the setting on and QEMU 10', () => {
    expect(ramTemplateCheck(true, BACKPORTS_QEMU, V10, BACKPORTS_QEMU)).toMatchObject({
      ok: true,
      detail: 'on, QEMU 10.0.2',
    });
  });

  it('with the setting off only says whether the QEMU could, and where one that can is', () => {
    expect(ramTemplateCheck(false, 'q', V72, BACKPORTS_QEMU)).toEqual({
      name: 'ram template',
      ok: true,
      detail: `off (RUNNER_QEMU_RAM_TEMPLATE); QEMU 7.2.22 cannot (8.2.0 or later: ${BACKPORTS_QEMU})`,
    });
    expect(ramTemplateCheck(false, 'q', V10, null).detail).toBe(
      'off (RUNNER_QEMU_RAM_TEMPLATE); QEMU 10.0.2 could',
    );
  });
});
