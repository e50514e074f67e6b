import { describe, expect, it } from 'vitest';
import { jailChecks } from '../../../src/cli/commands/doctor-jail.js';
import { dataPaths, loadSettings } from '../../../src/config/index.js';

function settings(env: Record<string, string>): ReturnType<typeof loadSettings> {
  return loadSettings({ RUNNER_DATA_DIR: '/tmp/runner-doctor-jail-test', ...env });
}

describe("runner doctor: QEMU's jail", () => {
  it('says the jail is off when RUNNER_QEMU_JAIL=false', async () => {
    const s = settings({ RUNNER_QEMU_JAIL: 'false' });
    const checks = await jailChecks(s, dataPaths(s), null);
    expect(checks).toHaveLength(1);
    expect(checks[0]?.detail).toMatch(/^off/);
  });

  it('shows the namespaces, the cgroup version and the limits; a missing cgroup root fails', async () => {
    const s = settings({
      RUNNER_QEMU_JAIL_CGROUP_ROOT: '/nonexistent-cgroup',
      RUNNER_VM_MEMORY_MIB: '256',
      RUNNER_QEMU_JAIL_PIDS_MAX: '64',
    });
    const checks = await jailChecks(s, dataPaths(s), null);
    expect(checks.map((c) => c.name)).toEqual(['qemu jail', 'jail cgroup', 'jail trial']);
    expect(checks[0]?.detail).toMatch(/mount, PID, IPC, UTS and network namespaces/);
    expect(checks[1]?.ok).toBe(false);
    expect(checks[1]?.detail).toMatch(/memory 768 MiB \(guest 256 \+ 512\), pids 64, cpu 200%/);
    // No kernel image: the trial is not tried, and says so.
    expect(checks[2]?.detail).toMatch(/not tried/);
  });
});
