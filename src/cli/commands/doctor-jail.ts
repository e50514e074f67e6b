import { spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdir, rm } from 'node:fs/promises';
import { join } from 'node:path';
import type { DataPaths, Settings } from '../../config/index.js';
import { RunnerError } from '../../errors.js';
import { qemuJailOptions, resolveVmmUser } from '../../pool/engine.js';
import { cgroupVersion, jailLimits, QemuJail } from '../../vmm/index.js';
import type { Check } from './doctor.js';

/**
 * The jail's lines of `runner doctor`: on or off, its cgroup version and limits, and a trial:
 * `qemu-system-x86_64 --version` run through a real jail (namespaces, pivoted root, cgroups,
 * dropped uid and capabilities), which needs a kernel image to bind like a VM's.
 */
export async function jailChecks(
  settings: Settings,
  paths: DataPaths,
  kernel: { kernelPath: string; initrdPath: string } | null,
): Promise<Check[]> {
  if (!settings.qemuJail || settings.vmm !== 'qemu') {
    return [
      {
        name: 'qemu jail',
        ok: true,
        detail:
          settings.vmm !== 'qemu'
            ? 'not used (RUNNER_VMM=firecracker has its own jailer)'
            : 'off (RUNNER_QEMU_JAIL=false): QEMU runs unjailed, with only -sandbox and its user',
      },
    ];
  }
  const root = settings.qemuJailCgroupRoot;
  const limits = jailLimits(
    {
      memoryOverheadMib: settings.qemuJailMemoryOverheadMib,
      pidsMax: settings.qemuJailPidsMax,
      cpuPercent: settings.qemuJailCpuPercent,
    },
    { memoryMib: settings.vmMemoryMib, vcpus: settings.vmVcpus },
  );
  const checks: Check[] = [
    {
      name: 'qemu jail',
      ok: true,
      detail:
        "on: new mount, PID, IPC, UTS and network namespaces, a pivoted root of only the VM's files, no capabilities, no_new_privs",
    },
    {
      name: 'jail cgroup',
      ok: existsSync(root),
      fix: 'set RUNNER_QEMU_JAIL_CGROUP_ROOT to the cgroup file system (/sys/fs/cgroup)',
      detail: `${existsSync(root) ? '' : 'MISSING '}v${cgroupVersion(root)} at ${root}; per VM: memory ${limits.memoryBytes / 1048576} MiB (guest ${settings.vmMemoryMib} + ${settings.qemuJailMemoryOverheadMib}), pids ${limits.pidsMax}, cpu ${limits.cpuQuotaUs / 1000}% of one CPU`,
    },
  ];
  checks.push(await trial(settings, paths, kernel));
  return checks;
}

async function trial(
  settings: Settings,
  paths: DataPaths,
  kernel: { kernelPath: string; initrdPath: string } | null,
): Promise<Check> {
  const name = 'jail trial';
  const fix =
    'run as root with RUNNER_QEMU_USER set and gcc installed (scripts/setup.sh), or RUNNER_QEMU_JAIL=false to run QEMU unjailed';
  if (kernel === null) {
    return { name, ok: true, detail: 'not tried: no kernel image yet', optional: true };
  }
  const vmId = `doctor-${process.pid}`;
  const runDir = join(paths.runDir, vmId);
  let jail: QemuJail | null = null;
  try {
    jail = new QemuJail(qemuJailOptions(settings, paths, resolveVmmUser(settings)));
    await mkdir(runDir, { recursive: true, mode: 0o700 });
    const prepared = await jail.prepare(
      { vmId, runDir, ...kernel, rootfsPath: null, memoryMib: settings.vmMemoryMib, vcpus: 1 },
      'tcg',
      settings.qemuBinary,
      ['--version'],
      { keep: [], status: 3 },
    );
    try {
      const out = await new Promise<{ code: number | null; text: string; status: string }>(
        (resolve, reject) => {
          const child = spawn(prepared.command, prepared.argv, {
            stdio: ['ignore', 'pipe', 'pipe', 'pipe'],
          });
          let text = '';
          let status = '';
          child.stdout?.on('data', (d: Buffer) => (text += d.toString()));
          child.stderr?.on('data', (d: Buffer) => (text += d.toString()));
          child.stdio[3]?.on('data', (d: Buffer) => (status += d.toString()));
          child.on('error', reject);
          child.on('close', (code) => resolve({ code, text, status }));
        },
      );
      if (out.status !== '')
        return { name, ok: false, detail: `failed: ${out.status.trim()}`, fix };
      if (out.code !== 0) {
        return { name, ok: false, detail: `QEMU exited ${out.code}: ${out.text.trim()}`, fix };
      }
      return {
        name,
        ok: true,
        detail: `works: ${out.text.split('\n')[0]?.trim() ?? ''} ran in a jail`,
      };
    } finally {
      await jail.release(prepared);
    }
  } catch (err) {
    const message = err instanceof RunnerError || err instanceof Error ? err.message : String(err);
    return { name, ok: false, detail: `failed: ${message}`, fix };
  } finally {
    await rm(runDir, { recursive: true, force: true });
  }
}
