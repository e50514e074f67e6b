import { readdir, readFile, stat } from 'node:fs/promises';
import { join } from 'node:path';
import type { ApiEngine } from './service.js';

/** Whether a language can run here without a build, and without a cold boot. */
export interface RuntimeStatus {
  readonly imageReady: boolean;
  readonly snapshotReady: boolean;
}

/**
 * The readiness of every language: its rootfs (and the kernel) in the local store, and a
 * snapshot on disk taken from exactly those images. (The snapshot's key also covers the VM's
 * shape and driver; a snapshot of the same images with another shape counts as ready here.)
 */
export async function runtimeStatuses(engine: ApiEngine): Promise<Map<string, RuntimeStatus>> {
  const kernel = await engine.store.latest('kernel', null);
  const snapshots = await snapshotImages(engine.paths.snapshotsDir);
  const out = new Map<string, RuntimeStatus>();
  for (const { definition } of engine.languages.list()) {
    const rootfs = await engine.store.latest('rootfs', definition.name);
    const imageReady = kernel !== undefined && rootfs !== undefined;
    const snapshotReady =
      imageReady &&
      snapshots.some(
        (s) =>
          s.language === definition.name &&
          s.rootfsId === rootfs.manifest.id &&
          s.kernelId === kernel.manifest.id,
      );
    out.set(definition.name, { imageReady, snapshotReady });
  }
  return out;
}

interface SnapshotMeta {
  language?: string;
  rootfsId?: string;
  kernelId?: string;
}

async function snapshotImages(dir: string): Promise<SnapshotMeta[]> {
  const names = await readdir(dir).catch(() => [] as string[]);
  const out: SnapshotMeta[] = [];
  for (const name of names) {
    const snap = await stat(join(dir, name, 'vm.snap')).catch(() => null);
    if (!snap?.isFile()) continue;
    const meta = await readFile(join(dir, name, 'meta.json'), 'utf8').then(
      (t) => JSON.parse(t) as SnapshotMeta,
      () => null,
    );
    if (meta !== null) out.push(meta);
  }
  return out;
}
