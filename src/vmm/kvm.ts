import { spawn } from 'node:child_process';
import { access, constants, mkdir, mkdtemp, readFile, rename, rm, writeFile } from 'node:fs/promises';
import { release, tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { qemuArgs, type QemuAccel } from './qemu.js';

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
  const usable = await access('/dev/kvm', constants.R_OK | constants.W_OK).then(
    () => true,
    () => false,
  );
  let outcome: KvmProbeResult;
  if (usable) {
    const booted = await bootUnderKvm(options);
    outcome = result(booted.accel, booted.reason);
  } else {
    outcome = result('tcg', '/dev/kvm is missing or not accessible');
  }
  await mkdir(dirname(options.cacheFile), { recursive: true });
  // Whole or not at all: another process on this data folder may be reading it.
  const partial = `${options.cacheFile}.partial-${process.pid}`;
  await writeFile(partial, `${JSON.stringify(outcome, null, 2)}\n`);
  await rename(partial, options.cacheFile);
  return outcome;
}

/** What the probe boots, and how long it waits. */
export interface KvmProbeBoot {
  readonly kernelPath: string;
  readonly initrdPath: string;
  readonly qemuBinary?: string;
  readonly deadlineMs?: number;
}

/**
 * Boots the guest kernel under KVM on the production machine (`qemuArgs`, so that the probe
 * tests what the VMs will really run) and watches the console, which `qemuArgs` puts on
 * QEMU's stdout, for the markers. No rootfs: the kernel reaching /init is the proof. The
 * sockets go to a throwaway run dir, removed after.
 */
export async function bootUnderKvm(
  options: KvmProbeBoot,
): Promise<{ accel: QemuAccel; reason: string }> {
  const runDir = await mkdtemp(join(tmpdir(), 'runner-kvm-probe-'));
  try {
    const args = qemuArgs(
      {
        vmId: `kvm-probe-${process.pid}`,
        runDir,
        kernelPath: options.kernelPath,
        initrdPath: options.initrdPath,
        rootfsPath: null,
        memoryMib: 256,
        vcpus: 1,
      },
      // The markers are KERN_INFO lines, which the production loglevel=1 hides; the kernel
      // takes the last loglevel= it is given.
      { accel: 'kvm', kernelArgs: ['loglevel=7'] },
      false,
    );
    return await watchBoot(options.qemuBinary ?? 'qemu-system-x86_64', args, options.deadlineMs);
  } finally {
    await rm(runDir, { recursive: true, force: true });
  }
}

// The probe runs QEMU unjailed (jail.ts), on purpose: it boots no rootfs and no user code,
// only our own guest kernel to /init, for a few seconds at start-up, with nothing of a job in
// reach; and it must tell whether KVM works, not whether the jail does (`runner doctor` tries
// the jail on its own), so a broken jail does not turn into a wrong "TCG" answer cached on disk.
function watchBoot(
  binary: string,
  args: string[],
  deadlineMs = 8000,
): Promise<{ accel: QemuAccel; reason: string }> {
  const started = Date.now();
  return new Promise((resolve) => {
    const child = spawn(binary, args, { stdio: ['ignore', 'pipe', 'pipe'] });
    let text = '';
    let done = false;
    const finish = (accel: QemuAccel, reason: string): void => {
      if (done) return;
      done = true;
      clearTimeout(timer);
      child.kill('SIGKILL');
      resolve({ accel, reason });
    };
    const onData = (d: Buffer): void => {
      text = (text + d.toString('latin1')).slice(-65536);
      if (BOOTED_MARKERS.some((m) => text.includes(m))) {
        finish('kvm', `a guest kernel booted under KVM in ${Date.now() - started} ms`);
      }
    };
    child.stdout.on('data', onData);
    child.stderr.on('data', onData);
    child.on('error', (err) => finish('tcg', `QEMU could not start with KVM: ${err.message}`));
    // 'close', not 'exit': only then has all of the console been read.
    child.on('close', (code, signal) =>
      finish(
        'tcg',
        `QEMU with KVM exited (${signal ?? `status ${code}`}) before the guest booted: ${text.trim().split('\n').pop() ?? ''}`,
      ),
    );
    const timer = setTimeout(
      () =>
        finish(
          'tcg',
          `/dev/kvm exists but a guest kernel did not boot under KVM within ${deadlineMs} ms (nested or broken KVM)`,
        ),
      deadlineMs,
    );
  });
}
