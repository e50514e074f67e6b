import { homedir } from 'node:os';
import { join } from 'node:path';

/** Where the project keeps its data: images, snapshots, VM run dirs, logs. */
export interface DataPaths {
  /** The root: the `dataDir` setting (RUNNER_DATA_DIR), else {@link defaultDataDir}. */
  readonly dataDir: string;
  /** The local image store: the `imagesDir` setting (RUNNER_IMAGES_DIR), else `<dataDir>/images`. */
  readonly imagesDir: string;
  /** Snapshots, one folder per language and image identity. */
  readonly snapshotsDir: string;
  /** Per-VM run dirs (sockets, console logs); swept at start-up. */
  readonly runDir: string;
  /** Build work folders and caches (debootstrap, Debian packages). */
  readonly buildDir: string;
  /** Build logs. */
  readonly logsDir: string;
  /** Compiles kept by their exact inputs (src/cache). */
  readonly compileCacheDir: string;
}

/**
 * The two settings the paths derive from; the Settings object fits (a structural type, so that
 * this module, which settings.ts uses for the default, does not import it back).
 */
export interface PathSettings {
  readonly dataDir: string | null;
  readonly imagesDir: string | null;
}

/** The data root when none is set: /var/lib/runner-codes as root, else ~/.local/share/runner-codes. */
export function defaultDataDir(): string {
  return process.getuid?.() === 0
    ? '/var/lib/runner-codes'
    : join(homedir(), '.local', 'share', 'runner-codes');
}

/** Resolves the data paths from the settings. Pure: the caller decides when to create them. */
export function dataPaths(settings: PathSettings): DataPaths {
  const dataDir = settings.dataDir ?? defaultDataDir();
  return {
    dataDir,
    imagesDir: settings.imagesDir ?? join(dataDir, 'images'),
    snapshotsDir: join(dataDir, 'snapshots'),
    runDir: join(dataDir, 'run'),
    buildDir: join(dataDir, 'build'),
    logsDir: join(dataDir, 'logs'),
    compileCacheDir: join(dataDir, 'compile-cache'),
  };
}
