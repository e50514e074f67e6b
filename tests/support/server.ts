import { chmodSync, copyFileSync, existsSync, mkdtempSync, readdirSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { startServer, type RunningServer } from '../../src/api/server.js';
import { loadSettings, type Settings } from '../../src/config/index.js';
import { testDataPaths } from './paths.js';

/** Why a real `runner serve` with real VMs cannot run here, or null when it can. */
export function serverSkipReason(): string | null {
  if (process.getuid?.() !== 0) return 'booting VMs needs root';
  if (!existsSync('/usr/bin/qemu-system-x86_64')) return 'qemu-system-x86_64 is not installed';
  return null;
}

/** A listening server over a private data dir; `close()` returns what its VMs left behind. */
export interface PrivateServer {
  readonly server: RunningServer;
  /** `server.url` + path. */
  url(path: string): string;
  /** Stops the server, lists the entries left in its run dir (none: every VM was destroyed), removes the dir. */
  close(): Promise<string[]>;
}

/**
 * Starts `runner serve` (startServer, the real engine) reading the images of the shared test
 * data folder, with its snapshots, VM run dirs and job store in a private folder, so that it
 * neither sweeps nor prunes what other test files use. `overrides` are settings.
 */
export async function startPrivateServer(
  prefix: string,
  overrides: Partial<Record<keyof Settings, unknown>> = {},
): Promise<PrivateServer> {
  const shared = testDataPaths();
  const dir = mkdtempSync(join(tmpdir(), prefix));
  // QEMU runs as an unprivileged user and must reach the VM run dirs below this one.
  chmodSync(dir, 0o755);
  const probe = join(shared.dataDir, 'kvm-probe.json');
  if (existsSync(probe)) copyFileSync(probe, join(dir, 'kvm-probe.json'));
  const settings = loadSettings(
    {
      RUNNER_DATA_DIR: dir,
      RUNNER_IMAGES_DIR: shared.imagesDir,
      // The suite's time-limit scale (vitest.config.ts) holds for every server it starts.
      ...(process.env.RUNNER_TIME_LIMIT_SCALE_PERCENT !== undefined && {
        RUNNER_TIME_LIMIT_SCALE_PERCENT: process.env.RUNNER_TIME_LIMIT_SCALE_PERCENT,
      }),
    },
    {
      host: '127.0.0.1',
      port: 0,
      jobStoreFile: join(dir, 'jobs.sqlite'),
      poolMaxVms: 2,
      logLevel: 'warn',
      qemuUser: process.env.RUNNER_QEMU_USER ?? 'runner-vmm',
      ...overrides,
    },
  );
  let server: RunningServer;
  try {
    server = await startServer(settings);
  } catch (err) {
    rmSync(dir, { recursive: true, force: true });
    throw err;
  }
  return {
    server,
    url: (path) => `${server.url}${path}`,
    close: async () => {
      try {
        await server.close();
        return existsSync(join(dir, 'run')) ? readdirSync(join(dir, 'run')) : [];
      } finally {
        rmSync(dir, { recursive: true, force: true });
      }
    },
  };
}
