import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { resolveVmmUser } from '../../../src/pool/engine.js';

const dir = mkdtempSync(join(tmpdir(), 'runner-passwd-'));
const passwd = join(dir, 'passwd');
writeFileSync(
  passwd,
  'root:x:0:0:root:/root:/bin/bash\nrunner-vmm:x:999:995::/nonexistent:/usr/sbin/nologin\n',
);
afterAll(() => rmSync(dir, { recursive: true, force: true }));

describe('resolveVmmUser: the VMM never falls back to root silently', () => {
  it('finds the configured user', () => {
    expect(resolveVmmUser({ qemuUser: 'runner-vmm' }, passwd, 0)).toEqual({ uid: 999, gid: 995 });
  });

  it('refuses to start as root when the configured user does not exist, saying what to do', () => {
    let caught: unknown;
    try {
      resolveVmmUser({ qemuUser: 'nobody-here' }, passwd, 0);
    } catch (err) {
      caught = err;
    }
    expect(caught).toMatchObject({ code: 'CONFIG_INVALID' });
    const message = (caught as Error).message;
    expect(message).toContain('nobody-here');
    expect(message).toContain('bash scripts/setup.sh');
    expect(message).toContain('useradd --system nobody-here');
    expect(message).toContain('RUNNER_QEMU_USER= (empty)');
  });

  it('refuses as root when the passwd file cannot be read', () => {
    expect(() => resolveVmmUser({ qemuUser: 'runner-vmm' }, join(dir, 'missing'), 0)).toThrow(
      expect.objectContaining({ code: 'CONFIG_INVALID' }) as Error,
    );
  });

  it("runs as the service's own user when RUNNER_QEMU_USER is empty, on purpose", () => {
    expect(resolveVmmUser({ qemuUser: '' }, join(dir, 'missing'), 0)).toBeNull();
  });

  it('does not care when the service is not root (the VMM runs as the caller anyway)', () => {
    expect(resolveVmmUser({ qemuUser: 'nobody-here' }, passwd, 1000)).toBeNull();
    expect(resolveVmmUser({ qemuUser: 'runner-vmm' }, passwd, 1000)).toEqual({
      uid: 999,
      gid: 995,
    });
  });
});
