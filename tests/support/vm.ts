import { existsSync, mkdirSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import type { DataPaths } from '../../src/config/paths.js';
import { loadSettings, type Settings } from '../../src/config/settings.js';
import { bundleAgent } from '../../src/images/agent-bundle.js';
import { BuildLog } from '../../src/images/build-log.js';
import { buildKernelImage, isCurrentKernel } from '../../src/images/kernel.js';
import { acquireLock } from '../../src/images/lockfile.js';
import { RootfsBuilder } from '../../src/images/rootfs.js';
import { ImageStore } from '../../src/images/store.js';
import { LanguageRegistry } from '../../src/languages/index.js';
import { createEngine, type Engine } from '../../src/pool/engine.js';
import { testDataDir, testDataPaths } from './paths.js';

/**
 * Why tests that boot VMs cannot run on this machine, or null when they can. They need root
 * (debootstrap, chroot) and QEMU.
 */
export function vmSkipReason(): string | null {
  if (process.getuid?.() !== 0)
    return 'booting VMs needs root to build the images (debootstrap, chroot)';
  if (!existsSync('/usr/bin/qemu-system-x86_64'))
    return 'qemu-system-x86_64 is not installed (scripts/setup.sh installs it)';
  if (!existsSync('/usr/sbin/debootstrap'))
    return 'debootstrap is not installed (scripts/setup.sh installs it)';
  return null;
}

/**
 * Makes sure the kernel image and the rootfs of each language exist for the current agent, in
 * the shared test data folder (built once per machine, reused by every test file and run).
 */
export async function ensureImages(languages: readonly string[]): Promise<void> {
  const paths = testDataPaths();
  mkdirSync(paths.buildDir, { recursive: true });
  // Test files run side by side (vitest.config.ts): one at a time checks and builds, the others
  // wait here (a build from nothing takes half an hour) and then find the images made.
  const lock = await acquireLock(join(paths.buildDir, 'test-images.lock'), {
    waitMs: 3 * 3600_000,
    pollMs: 1000,
  });
  try {
    await ensureImagesLocked(paths, languages);
  } finally {
    await lock.release();
  }
}

async function ensureImagesLocked(paths: DataPaths, languages: readonly string[]): Promise<void> {
  const store = new ImageStore(paths.imagesDir);
  mkdirSync(paths.logsDir, { recursive: true });
  const log = new BuildLog(join(paths.logsDir, 'test-kernel.log'));
  try {
    const kernel = await store.latest('kernel', null);
    if (kernel === undefined || !isCurrentKernel(kernel)) {
      await buildKernelImage({
        store,
        workDir: join(paths.buildDir, 'kernel'),
        log,
        settings: testSettings(),
      });
    }
  } finally {
    log.close();
  }
  const registry = LanguageRegistry.fromDir();
  // Its own file per process: another test process may be bundling at the same moment.
  const agentBundlePath = await bundleAgent(
    join(paths.buildDir, 'agent', `agent-test-${process.pid}.mjs`),
  );
  const builder = new RootfsBuilder({ paths, store, agentBundlePath, settings: testSettings() });
  const { failed } = await builder
    .buildMany(languages.map((l) => registry.get(l)))
    .finally(() => rmSync(agentBundlePath, { force: true }));
  if (failed.length > 0) {
    throw new Error(
      `image builds failed: ${failed.map((f) => `${f.language} (${f.phase}): ${f.error.message} [log ${f.logPath ?? '-'}]`).join('; ')}`,
    );
  }
}

/** Settings for tests: the shared data folder, QEMU as the unprivileged VMM user when it exists. */
export function testSettings(overrides: Partial<Record<keyof Settings, unknown>> = {}): Settings {
  return loadSettings({ ...process.env, RUNNER_DATA_DIR: testDataDir() }, overrides);
}

/** An engine over the shared test data; the caller closes it. */
export async function testEngine(
  overrides: Partial<Record<keyof Settings, unknown>> = {},
): Promise<Engine> {
  return createEngine(testSettings(overrides), {
    log: (line) => {
      if (process.env.RUNNER_TEST_VERBOSE) console.info(line);
    },
  });
}
