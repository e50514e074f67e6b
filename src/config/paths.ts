import { homedir } from 'node:os';
import { join } from 'node:path';

/** Where the project keeps its data: images, snapshots, VM run dirs, logs. */
export interface DataPaths {
  /** The root: `RUNNER_DATA_DIR`, else /var/lib/runner-codes for root, else ~/.local/share/runner-codes. */
  readonly dataDir: string;
  /** The local image store. */
  readonly imagesDir: string;
  /** Snapshots, one folder per language and image identity. */
  readonly snapshotsDir: string;
  /** Per-VM run dirs (sockets, console logs); swept at start-up. */
  readonly runDir: string;
  /** Build work folders and caches (debootstrap, Debian packages). */
  readonly buildDir: string;
  /** Build logs. */
  readonly logsDir: string;
}

/** Resolves the data paths from the environment. Pure: the caller decides when to create them. */
export function dataPaths(env: NodeJS.ProcessEnv = process.env): DataPaths {
  const dataDir =
    env.RUNNER_DATA_DIR ??
    (process.getuid?.() === 0
      ? '/var/lib/runner-codes'
      : join(homedir(), '.local', 'share', 'runner-codes'));
  return {
    dataDir,
    imagesDir: env.RUNNER_IMAGES_DIR ?? join(dataDir, 'images'),
    snapshotsDir: join(dataDir, 'snapshots'),
    runDir: join(dataDir, 'run'),
    buildDir: join(dataDir, 'build'),
    logsDir: join(dataDir, 'logs'),
  };
}
