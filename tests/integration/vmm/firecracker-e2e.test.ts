import { randomBytes } from 'node:crypto';
import { accessSync, constants, existsSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { delimiter, join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it, onTestFailed } from 'vitest';
import { DEFAULT_LIMITS } from '../../../src/config/limits.js';
import { BASE_FILE_NAME, rootfsFileName } from '../../../src/images/rootfs.js';
import { latestBase } from '../../../src/pool/snapshots.js';
import { ImageStore } from '../../../src/images/store.js';
import type { ResultMessage } from '../../../src/protocol/index.js';
import {
  FirecrackerDriver,
  type FirecrackerJailerOptions,
  type MicroVm,
  type VmLaunchOptions,
} from '../../../src/vmm/index.js';
import { testDataPaths } from '../../support/paths.js';

/*
 * Firecracker for real: boot the python rootfs, run a hello world through the agent, snapshot,
 * restore, run again. It needs a Firecracker binary (on PATH or RUNNER_FIRECRACKER_BINARY) and a
 * /dev/kvm that really runs guests, which cannot be told cheaply (on the development machines
 * /dev/kvm exists but its nested KVM hangs guests), so it also needs RUNNER_FIRECRACKER_E2E=1.
 * The images come from the shared test data folder (the kernel's vmlinux, the python rootfs).
 * RUNNER_FIRECRACKER_JAILER=/path/to/jailer runs it under the jailer (as root), with
 * RUNNER_FIRECRACKER_JAIL_UID / _GID (default 65534).
 */

function onPath(name: string): string | null {
  for (const dir of (process.env.PATH ?? '').split(delimiter)) {
    if (dir === '') continue;
    try {
      accessSync(join(dir, name), constants.X_OK);
      return join(dir, name);
    } catch {
      // not here
    }
  }
  return null;
}

const binary =
  process.env.RUNNER_FIRECRACKER_BINARY !== undefined &&
  process.env.RUNNER_FIRECRACKER_BINARY !== ''
    ? process.env.RUNNER_FIRECRACKER_BINARY
    : onPath('firecracker');
const jailerBinary = process.env.RUNNER_FIRECRACKER_JAILER ?? '';

const skipReason =
  binary === null
    ? 'no firecracker binary (put one on PATH or set RUNNER_FIRECRACKER_BINARY)'
    : !existsSync('/dev/kvm')
      ? '/dev/kvm is missing'
      : process.env.RUNNER_FIRECRACKER_E2E !== '1'
        ? 'set RUNNER_FIRECRACKER_E2E=1 where /dev/kvm really runs guests (its presence proves nothing)'
        : jailerBinary !== '' && process.getuid?.() !== 0
          ? 'the jailer needs root'
          : null;
if (skipReason !== null) console.warn(`skipping the Firecracker end-to-end test: ${skipReason}`);

/** Runs one python program through the agent and returns its result. */
async function runPython(vm: MicroVm, source: string): Promise<ResultMessage> {
  const channel = vm.agent();
  const id = `job-${randomBytes(4).toString('hex')}`;
  await channel.send({
    type: 'execute',
    id,
    language: 'python',
    files: [{ name: 'main.py', content: source, encoding: 'utf8' }],
    stdin: '',
    args: [],
    env: {},
    compileLimits: DEFAULT_LIMITS.compile,
    runLimits: DEFAULT_LIMITS.run,
  });
  for (;;) {
    const message = await channel.next(60_000);
    if (message.type === 'result' && message.id === id) return message;
    if (message.type === 'error')
      throw new Error(`agent error ${message.code}: ${message.message}`);
  }
}

function stdoutOf(result: ResultMessage): string {
  return Buffer.from(result.run?.stdout ?? '', 'base64').toString('utf8');
}

describe.skipIf(skipReason !== null)('firecracker end to end (python)', () => {
  let work = '';
  beforeAll(() => {
    // Short: unix socket paths must stay under 108 bytes.
    work = mkdtempSync(join(tmpdir(), 'fc-e2e-'));
  });
  afterAll(() => {
    if (work !== '') rmSync(work, { recursive: true, force: true });
  });

  it('boots, runs hello world, snapshots, restores and runs again', async () => {
    const store = new ImageStore(testDataPaths().imagesDir);
    const kernel = await store.resolve('kernel', null);
    const rootfs = await store.resolve('rootfs', 'python');
    const base = await latestBase(store, rootfs.manifest.inputs?.baseTreeKey ?? '');
    if (base === undefined) throw new Error('no base image for the python layer');
    const jailer: FirecrackerJailerOptions | null =
      jailerBinary === ''
        ? null
        : {
            binary: jailerBinary,
            uid: Number(process.env.RUNNER_FIRECRACKER_JAIL_UID ?? 65534),
            gid: Number(process.env.RUNNER_FIRECRACKER_JAIL_GID ?? 65534),
            chrootBaseDir: join(work, 'jail'),
          };
    const driver = new FirecrackerDriver({ binary: binary ?? 'firecracker', jailer });
    const launch = (vmId: string): VmLaunchOptions => ({
      vmId,
      runDir: join(work, 'run', vmId),
      kernelPath: store.filePath(kernel, 'vmlinux'),
      initrdPath: store.filePath(kernel, 'initrd.img'),
      rootfsPath: store.filePath(rootfs, rootfsFileName('python')),
      basePath: store.filePath(base, BASE_FILE_NAME),
      memoryMib: 512,
      vcpus: 1,
      timeoutMs: 60_000,
    });
    let current: MicroVm | null = null;
    onTestFailed(() => {
      if (current !== null) console.error(`VM ${current.id} console:\n${current.consoleTail()}`);
    });

    const snapshotPath = join(work, 'python.snap');
    const booted = await driver.boot(launch(`fc-e2e-${randomBytes(4).toString('hex')}`));
    current = booted;
    try {
      expect(booted.hello?.languages).toContain('python');
      const first = await runPython(booted, 'print("hello from firecracker")');
      expect(first.status).toBe('ok');
      expect(stdoutOf(first)).toBe('hello from firecracker\n');
      const info = await booted.snapshot(snapshotPath);
      console.info(`snapshot: ${(info.sizeBytes / 1048576).toFixed(0)} MiB in ${info.ms} ms`);
    } finally {
      await booted.destroy();
    }

    const started = Date.now();
    const restored = await driver.restore(
      launch(`fc-e2e-${randomBytes(4).toString('hex')}`),
      snapshotPath,
    );
    current = restored;
    try {
      console.info(`restore to hello: ${Date.now() - started} ms`);
      expect(restored.hello?.type).toBe('hello');
      const second = await runPython(restored, 'print(6 * 7)');
      expect(second.status).toBe('ok');
      expect(stdoutOf(second)).toBe('42\n');
    } finally {
      await restored.destroy();
    }
  });
});
