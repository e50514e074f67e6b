import type { Command } from '@commander-js/extra-typings';
import { spawnSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { readdir } from 'node:fs/promises';
import { join } from 'node:path';
import { dataPaths, loadSettings } from '../../config/index.js';
import { layerName } from '../../images/rootfs.js';
import { ImageStore } from '../../images/store.js';
import { LanguageRegistry } from '../../languages/index.js';
import { latestBase, lookupUser } from '../../pool/index.js';
import {
  BACKPORTS_QEMU,
  canRamTemplate,
  formatQemuVersion,
  parseQemuVersion,
  probeKvm,
  RAM_TEMPLATE_MIN_QEMU,
} from '../../vmm/index.js';
import { jailChecks } from './doctor-jail.js';

/** One line of the doctor's report. */
export interface Check {
  name: string;
  ok: boolean;
  detail: string;
  /** What to do when not ok. */
  fix?: string;
  /** A missing optional piece (a language not built yet): shown, but not a failure. */
  optional?: boolean;
}

/**
 * Whether snapshots can keep their RAM in a template (docs/qemu.md "The RAM template"): with the
 * setting on, the configured QEMU must be 8.2 or later; with it off, only said, never a failure.
 */
export function ramTemplateCheck(
  enabled: boolean,
  binary: string,
  versionLine: string | null,
  backports: string | null,
): Check {
  const version = versionLine === null ? null : parseQemuVersion(versionLine);
  const min = formatQemuVersion(RAM_TEMPLATE_MIN_QEMU);
  const able = canRamTemplate(version);
  const found =
    version === null ? `${binary} gives no version` : `QEMU ${formatQemuVersion(version)}`;
  const fix = `RUNNER_QEMU_BINARY=${backports ?? BACKPORTS_QEMU}${backports === null ? ' (bash scripts/qemu-backports.sh unpacks it)' : ''}`;
  if (enabled) {
    return {
      name: 'ram template',
      ok: able,
      detail: able
        ? `on, ${found}`
        : `on, but ${found} is older than ${min} (the service refuses to start)`,
      fix,
    };
  }
  return {
    name: 'ram template',
    ok: true,
    detail: `off (RUNNER_QEMU_RAM_TEMPLATE); ${able ? `${found} could` : `${found} cannot (${min} or later${backports === null ? '' : `: ${backports}`})`}`,
  };
}

function versionOf(binary: string, args: string[] = ['--version']): string | null {
  const r = spawnSync(binary, args, { encoding: 'utf8', timeout: 10_000 });
  if (r.error || r.status !== 0) return null;
  return (r.stdout || r.stderr).split('\n')[0]?.trim() ?? '';
}

/** Runs every check; nothing is changed on the machine (the KVM probe boots a throwaway guest). */
export async function runChecks(options: { refreshKvm?: boolean } = {}): Promise<Check[]> {
  const settings = loadSettings();
  const paths = dataPaths(settings);
  const store = new ImageStore(paths.imagesDir);
  const checks: Check[] = [];
  const qemu = versionOf(settings.qemuBinary);
  checks.push({
    name: 'qemu',
    ok: qemu !== null,
    detail: qemu ?? `${settings.qemuBinary} not found`,
    fix: 'apt-get install qemu-system-x86 (or run scripts/setup.sh)',
  });
  checks.push(
    ramTemplateCheck(
      settings.qemuRamTemplate,
      settings.qemuBinary,
      qemu,
      existsSync(BACKPORTS_QEMU) ? BACKPORTS_QEMU : null,
    ),
  );
  const fc = versionOf(settings.firecrackerBinary);
  checks.push({
    name: 'firecracker',
    ok: fc !== null || settings.vmm !== 'firecracker',
    detail:
      fc ??
      `${settings.firecrackerBinary} not found${settings.vmm === 'firecracker' ? '' : ' (not needed: RUNNER_VMM=qemu)'}`,
    fix: 'install a Firecracker release binary on PATH or set RUNNER_FIRECRACKER_BINARY',
  });
  const user = settings.qemuUser === '' ? null : lookupUser(settings.qemuUser);
  checks.push({
    name: 'vmm user',
    ok: settings.qemuUser === '' || user !== null,
    detail:
      settings.qemuUser === ''
        ? 'QEMU runs as the service user (RUNNER_QEMU_USER is empty)'
        : user
          ? `${settings.qemuUser} (uid ${user.uid})`
          : `user ${settings.qemuUser} does not exist (as root the service refuses to start without it)`,
    fix: `bash scripts/setup.sh (creates runner-vmm), or useradd --system --no-create-home --shell /usr/sbin/nologin ${settings.qemuUser}, or set RUNNER_QEMU_USER= (empty) to run the VMM as the service's own user`,
  });
  for (const tool of ['debootstrap', 'mkfs.ext4', 'cpio', 'lz4']) {
    const found = ['/usr/sbin', '/usr/bin', '/sbin', '/bin'].some((d) => existsSync(join(d, tool)));
    checks.push({
      name: tool,
      ok: found,
      detail: found ? 'found' : 'missing (needed to build images)',
      fix: 'scripts/setup.sh installs it',
    });
  }
  const kernel = await store.latest('kernel', null);
  checks.push({
    name: 'kernel image',
    ok: kernel !== undefined,
    detail: kernel
      ? `${kernel.manifest.id} (${kernel.manifest.kernelVersion})`
      : `none in ${paths.imagesDir}`,
    fix: 'runner images build python (builds the kernel too)',
  });
  if (kernel && qemu !== null) {
    const kvm = await probeKvm({
      kernelPath: join(kernel.dir, 'vmlinuz'),
      initrdPath: join(kernel.dir, 'initrd.img'),
      guestKernel: kernel.manifest.id,
      cacheFile: join(paths.dataDir, 'kvm-probe.json'),
      qemuBinary: settings.qemuBinary,
      refresh: options.refreshKvm,
    });
    checks.push({
      name: 'kvm',
      ok: true,
      detail: `${kvm.accel === 'kvm' ? 'usable' : 'not usable, VMs run under TCG (slower; QEMU is then no security boundary of its own)'}: ${kvm.reason}`,
    });
  } else {
    checks.push({
      name: 'kvm',
      ok: true,
      detail: existsSync('/dev/kvm')
        ? '/dev/kvm exists; not probed yet (needs QEMU and a kernel image)'
        : 'no /dev/kvm: VMs run under TCG',
    });
  }
  checks.push(
    ...(await jailChecks(
      settings,
      paths,
      kernel
        ? {
            kernelPath: join(kernel.dir, 'vmlinuz'),
            initrdPath: join(kernel.dir, 'initrd.img'),
          }
        : null,
    )),
  );
  const snapshots = new Set(await readdir(paths.snapshotsDir).catch(() => [] as string[]));
  for (const { definition } of LanguageRegistry.fromDir().list()) {
    const rootfs = await store.latest('rootfs', definition.name);
    const snap = [...snapshots].some((s) => s.startsWith(`${layerName(definition)}-`));
    const treeKey = rootfs?.manifest.inputs?.baseTreeKey;
    const base = treeKey === undefined ? null : await latestBase(store, treeKey);
    checks.push({
      name: definition.name,
      ok: rootfs !== undefined && base !== undefined,
      detail:
        rootfs === undefined
          ? 'no image yet'
          : base === undefined
            ? `layer ${rootfs.manifest.id}, but no base image of its base tree`
            : `image ${rootfs.manifest.id}${base === null ? '' : ` over ${base.manifest.id}`}, snapshot ${snap ? 'present' : 'not yet taken (made on first use)'}`,
      fix: `runner images build ${definition.name}`,
      optional: true,
    });
  }
  return checks;
}

/** `runner doctor`: what is present, what is missing, and what to do about it. */
export function registerDoctorCommand(program: Command): void {
  program
    .command('doctor')
    .description(
      "check QEMU, Firecracker, KVM (by really booting a guest), QEMU's jail (by a trial), images and snapshots; say how to fix what is missing",
    )
    .option('--refresh-kvm', 'probe KVM again instead of using the cached answer')
    .option('--json', 'print the checks as JSON')
    .action(async (opts) => {
      const checks = await runChecks({ refreshKvm: opts.refreshKvm === true });
      if (opts.json) {
        process.stdout.write(`${JSON.stringify(checks, null, 2)}\n`);
      } else {
        for (const c of checks) {
          const mark = c.ok ? 'ok  ' : c.optional ? '--  ' : 'FAIL';
          process.stdout.write(`${mark} ${c.name.padEnd(14)} ${c.detail}\n`);
          if (!c.ok && c.fix) process.stdout.write(`     ${''.padEnd(14)} fix: ${c.fix}\n`);
        }
      }
      if (checks.some((c) => !c.ok && c.optional !== true)) process.exitCode = 1;
    });
}
