import { spawn } from 'node:child_process';
import { access, constants, mkdir, readFile, writeFile } from 'node:fs/promises';
import { release } from 'node:os';
import { dirname } from 'node:path';
import type { QemuAccel } from './qemu.js';

/** The outcome of a KVM probe, cached on disk. */
export interface KvmProbeResult {
  readonly accel: QemuAccel;
  /** Why: "a guest booted under KVM in 412 ms", "/dev/kvm is missing", ... */
  readonly reason: string;
  readonly hostKernel: string;
  readonly guestKernel: string;
  readonly probedAt: string;
}

/** Console text that proves the guest kernel ran well past the bootloader. */
const BOOTED_MARKERS = ['Run /init as init process', 'Freeing unused kernel image'];

/**
 * Finds out whether QEMU can really use KVM here. The presence of /dev/kvm proves nothing: on
 * a paravirtual nested KVM an ordinary guest kernel hangs right after the bootloader. So boot
 * the real guest kernel under KVM with a short deadline and look for the kernel reaching
 * /init on the console. The answer is cached (per host kernel and guest kernel) in `cacheFile`.
 */
export async function probeKvm(options: {
  kernelPath: string;
  initrdPath: string;
  guestKernel: string;
  cacheFile: string;
  qemuBinary?: string;
  deadlineMs?: number;
  refresh?: boolean;
}): Promise<KvmProbeResult> {
  const hostKernel = release();
  if (options.refresh !== true) {
    const cached = await readFile(options.cacheFile, 'utf8').then(
      (t) => JSON.parse(t) as KvmProbeResult,
      () => null,
    );
    if (cached && cached.hostKernel === hostKernel && cached.guestKernel === options.guestKernel)
      return cached;
  }
  const result = (accel: QemuAccel, reason: string): KvmProbeResult => ({
    accel,
    reason,
    hostKernel,
    guestKernel: options.guestKernel,
    probedAt: new Date().toISOString(),
  });
  let outcome: KvmProbeResult;
  try {
    await access('/dev/kvm', constants.R_OK | constants.W_OK);
    outcome = await bootUnderKvm(options, result);
  } catch {
    outcome = result('tcg', '/dev/kvm is missing or not accessible');
  }
  await mkdir(dirname(options.cacheFile), { recursive: true });
  await writeFile(options.cacheFile, `${JSON.stringify(outcome, null, 2)}\n`);
  return outcome;
}

function bootUnderKvm(
  options: { kernelPath: string; initrdPath: string; qemuBinary?: string; deadlineMs?: number },
  result: (accel: QemuAccel, reason: string) => KvmProbeResult,
): Promise<KvmProbeResult> {
  const deadlineMs = options.deadlineMs ?? 8000;
  const started = Date.now();
  return new Promise((resolve) => {
    const child = spawn(
      options.qemuBinary ?? 'qemu-system-x86_64',
      [
        '-M',
        'microvm,rtc=on',
        '-accel',
        'kvm',
        '-cpu',
        'host',
        '-smp',
        '1',
        '-m',
        '256',
        '-nodefaults',
        '-no-user-config',
        '-no-reboot',
        '-display',
        'none',
        '-serial',
        'stdio',
        '-kernel',
        options.kernelPath,
        '-initrd',
        options.initrdPath,
        '-append',
        'console=ttyS0 loglevel=7 panic=-1 reboot=t',
      ],
      { stdio: ['ignore', 'pipe', 'pipe'] },
    );
    let text = '';
    let done = false;
    const finish = (r: KvmProbeResult): void => {
      if (done) return;
      done = true;
      clearTimeout(timer);
      child.kill('SIGKILL');
      resolve(r);
    };
    const onData = (d: Buffer): void => {
      text = (text + d.toString('latin1')).slice(-65536);
      if (BOOTED_MARKERS.some((m) => text.includes(m))) {
        finish(result('kvm', `a guest kernel booted under KVM in ${Date.now() - started} ms`));
      }
    };
    child.stdout.on('data', onData);
    child.stderr.on('data', onData);
    child.on('error', (err) =>
      finish(result('tcg', `QEMU could not start with KVM: ${err.message}`)),
    );
    child.on('exit', (code) =>
      finish(
        result(
          'tcg',
          `QEMU with KVM exited (status ${code}) before the guest booted: ${text.trim().split('\n').pop() ?? ''}`,
        ),
      ),
    );
    const timer = setTimeout(
      () =>
        finish(
          result(
            'tcg',
            `/dev/kvm exists but a guest kernel did not boot under KVM within ${deadlineMs} ms (nested or broken KVM)`,
          ),
        ),
      deadlineMs,
    );
  });
}
