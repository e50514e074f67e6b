import { execFile } from 'node:child_process';
import { ConfigInvalidError, messageOf } from '../errors.js';

/** A QEMU release, as `--version` prints it. */
export interface QemuVersion {
  readonly major: number;
  readonly minor: number;
  readonly micro: number;
}

/** The first QEMU that maps a read-only file as writable private RAM (`readonly=on,rom=off`). */
export const RAM_TEMPLATE_MIN_QEMU: QemuVersion = { major: 8, minor: 2, micro: 0 };

/** Where scripts/qemu-backports.sh (run by scripts/setup.sh) unpacks QEMU 10 by default. */
export const BACKPORTS_QEMU =
  '/var/cache/runner-codes/qemu-backports/root/usr/bin/qemu-system-x86_64';

/** Whether a QEMU can clone from a read-only RAM template (8.2 or later). */
export function canRamTemplate(version: QemuVersion | null): version is QemuVersion {
  return version !== null && qemuAtLeast(version, RAM_TEMPLATE_MIN_QEMU);
}

/** The version in `qemu-system-x86_64 --version` output, or null. */
export function parseQemuVersion(text: string): QemuVersion | null {
  const m = /version (\d+)\.(\d+)(?:\.(\d+))?/.exec(text);
  if (m === null) return null;
  return { major: Number(m[1]), minor: Number(m[2]), micro: Number(m[3] ?? '0') };
}

/** Whether `a` is at least `b`. */
export function qemuAtLeast(a: QemuVersion, b: QemuVersion): boolean {
  if (a.major !== b.major) return a.major > b.major;
  if (a.minor !== b.minor) return a.minor > b.minor;
  return a.micro >= b.micro;
}

export function formatQemuVersion(v: QemuVersion): string {
  return `${v.major}.${v.minor}.${v.micro}`;
}

/** Runs `binary --version`; CONFIG_INVALID when it does not run or prints no version. */
export function qemuVersion(binary: string): Promise<QemuVersion> {
  return new Promise((resolve, reject) => {
    execFile(binary, ['--version'], { timeout: 10_000 }, (err, stdout) => {
      if (err) {
        reject(new ConfigInvalidError(`cannot run ${binary} --version: ${messageOf(err)}`));
        return;
      }
      const version = parseQemuVersion(stdout);
      if (version === null) {
        reject(new ConfigInvalidError(`${binary} --version printed no version: ${stdout.trim()}`));
        return;
      }
      resolve(version);
    });
  });
}

/**
 * Checks that a QEMU can clone from a RAM template (RUNNER_QEMU_RAM_TEMPLATE): 8.2 or later.
 * Returns its version, for the snapshot key (a template's state stream is QEMU's own).
 */
export async function checkRamTemplateQemu(binary: string): Promise<QemuVersion> {
  const version = await qemuVersion(binary);
  if (!canRamTemplate(version)) {
    throw new ConfigInvalidError(
      `RUNNER_QEMU_RAM_TEMPLATE needs QEMU ${formatQemuVersion(RAM_TEMPLATE_MIN_QEMU)} or later (readonly=on,rom=off); ${binary} is ${formatQemuVersion(version)} (docs/qemu.md "The RAM template": scripts/qemu-backports.sh fetches one)`,
    );
  }
  return version;
}
