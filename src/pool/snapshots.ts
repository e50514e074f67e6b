import { randomBytes } from 'node:crypto';
import { existsSync } from 'node:fs';
import {
  chmod,
  chown,
  mkdir,
  open,
  readFile,
  readdir,
  rename,
  rm,
  stat,
  writeFile,
} from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { ImageNotFoundError, SnapshotFailedError } from '../errors.js';
import { BASE_FILE_NAME } from '../images/rootfs.js';
import { canonicalJson, sha256Hex } from '../images/identity.js';
import type { ImageStore, StoredImage } from '../images/store.js';
import type { MicroVm, RamFile, VmmDriver, VmResources } from '../vmm/index.js';

/** Whether a language is ready to run here (see SnapshotManager.status). */
export interface RuntimeStatus {
  /** Its rootfs and the kernel are in the local store. */
  readonly imageReady: boolean;
  /** A snapshot of exactly those images exists, so a job needs no cold boot. */
  readonly snapshotReady: boolean;
}

/** A snapshot on disk and what it was taken with. */
export interface SnapshotRef {
  readonly language: string;
  readonly key: string;
  readonly path: string;
  readonly resources: VmResources;
  readonly kernelId: string;
  readonly rootfsId: string;
  /** The layer's name (the language's, or its family's), which names the snapshot's folder. */
  readonly layer?: string;
  /** The languages of that layer (they share its snapshot). */
  readonly layerLanguages?: readonly string[];
  /** The base image under a layered language's layer (absent for a whole rootfs). */
  readonly baseId?: string;
  readonly sizeBytes: number;
  /**
   * Its RAM template (ramTemplate): the guest RAM the snapshot's clones map copy-on-write; the
   * snapshot itself is then the device state alone. Absent: the RAM is in the snapshot.
   */
  readonly ramPath?: string;
  /** The cold boot that made it (absent when it was already on disk). */
  readonly bootMs?: number;
  readonly snapshotMs?: number;
}

/** Settings of the snapshot manager. */
export interface SnapshotManagerOptions {
  readonly driver: VmmDriver;
  /** A label for what else makes snapshots incompatible (the accel mode, the VMM version). */
  readonly driverTag: string;
  readonly store: ImageStore;
  readonly snapshotsDir: string;
  readonly runDir: string;
  readonly memoryMib: number;
  readonly vcpus: number;
  readonly bootTimeoutMs: number;
  /** Which kernel file the driver boots: `vmlinuz` (QEMU) or `vmlinux` (Firecracker). */
  readonly kernelFile: 'vmlinuz' | 'vmlinux';
  /** Called when an image is missing locally; may fetch it (the S3 store) and return it. */
  readonly fetchMissing?: (
    kind: 'kernel' | 'base' | 'rootfs',
    language: string | null,
    /** For the base: the base tree the language's layer was made against. */
    baseTreeKey?: string,
  ) => Promise<StoredImage | undefined>;
  readonly log?: (line: string) => void;
  /** Told how long each cold boot took (for metrics). */
  readonly onBoot?: (language: string, ms: number) => void;
  /**
   * Runs in the cold-booted VM before its snapshot is taken (the language's own test program,
   * see warmUpJob): every clone then starts with the guest's page cache holding the toolchain
   * and the agent's job path compiled by V8. Throws when the VM cannot run the language, so no
   * snapshot is taken of a VM that failed its self-test. Part of the snapshot's key.
   */
  readonly warmUp?: (vm: MicroVm, language: string) => Promise<void>;
  /**
   * Snapshots keep the guest RAM in a template file beside them (QEMU 8.2 or later, docs/qemu.md
   * "The RAM template"). `owner`: who the VMM runs as, who writes the file while the template VM
   * runs; it is the host's, read-only, before the snapshot is published. Part of the key.
   */
  readonly ramTemplate?: { readonly owner: { uid: number; gid: number } | null } | null;
}

/** The name of a snapshot's RAM template file, beside its vm.snap. */
export const RAM_TEMPLATE_FILE = 'ram';

/** The version of the warm-up recipe, in the snapshot key when a warm-up runs. */
const WARM_UP_RECIPE = 2;

/**
 * Makes and finds per-language snapshots. A snapshot's key hashes the kernel image, the rootfs
 * image (whose id covers the agent and packages), the driver and the VM's shape, so that a change
 * of any of them makes a new snapshot: an old one is never restored against new images.
 */
export class SnapshotManager {
  private readonly inflight = new Map<string, Promise<SnapshotRef>>();

  constructor(private readonly options: SnapshotManagerOptions) {}

  /**
   * The images a language's VMs are made of (fetched on demand when configured): the kernel,
   * the language's layer, and the base image that layer goes over (null for a whole rootfs).
   */
  async images(
    language: string,
  ): Promise<{ kernel: StoredImage; rootfs: StoredImage; base: StoredImage | null }> {
    const kernel = await this.image('kernel', null);
    const rootfs = await this.image('rootfs', language);
    const treeKey = rootfs.manifest.inputs?.baseTreeKey;
    if (treeKey === undefined) return { kernel, rootfs, base: null };
    const base =
      (await latestBase(this.options.store, treeKey)) ??
      (await this.options.fetchMissing?.('base', null, treeKey));
    if (base === undefined) {
      throw new ImageNotFoundError(
        `no base image for ${rootfs.manifest.id} (base tree ${treeKey.slice(0, 16)}) in ${this.options.store.root} (build one: runner images build ${language})`,
      );
    }
    return { kernel, rootfs, base };
  }

  /** The snapshot for a language, made now (one cold boot) when it is missing. */
  async ensure(language: string): Promise<SnapshotRef> {
    const { base, dir } = await this.target(language);
    const existing = await stat(base.path).catch(() => null);
    // A template's state restores nothing without its RAM file: both, or it is taken anew.
    const ram = base.ramPath === undefined ? null : await stat(base.ramPath).catch(() => null);
    if (existing && (base.ramPath === undefined || ram !== null))
      return { ...base, sizeBytes: existing.size + (ram === null ? 0 : ram.blocks * 512) };
    let pending = this.inflight.get(base.key);
    if (!pending) {
      pending = this.create(base, dir).finally(() => this.inflight.delete(base.key));
      this.inflight.set(base.key, pending);
    }
    // Languages of one layer share its snapshot, and so one creation.
    return pending.then((ref) => ({ ...ref, language }));
  }

  /**
   * The one cold-boot path: a VM of `language` booted the way its snapshot is made (same
   * images, shape and checks), timed to the agent's hello. The caller owns the VM and destroys
   * it; `runner bench` times it.
   */
  async bootFresh(
    language: string,
    options: { netns?: string | null } = {},
  ): Promise<{ vm: MicroVm; bootMs: number }> {
    const { base } = await this.target(language);
    return this.boot(base, options.netns ?? null);
  }

  /** Removes snapshots of a layer whose key is not `keep` (stale after an image change). */
  async prune(layer: string, keep: string): Promise<string[]> {
    const removed: string[] = [];
    const names = await readdir(this.options.snapshotsDir).catch(() => [] as string[]);
    for (const name of names) {
      // Exactly `<layer>-<key16>`: the layer `c` must not take `c-clang-...` with it.
      const key = name.startsWith(`${layer}-`) ? name.slice(layer.length + 1) : '';
      if (key !== keep && /^[0-9a-f]{16}$/.test(key)) {
        await rm(join(this.options.snapshotsDir, name), { recursive: true, force: true });
        removed.push(name);
      }
    }
    return removed;
  }

  /** What a language's snapshot is made of, where it goes, and its key. */
  private async target(
    language: string,
  ): Promise<{ base: Omit<SnapshotRef, 'sizeBytes'>; dir: string }> {
    const { kernel, rootfs, base: baseImage } = await this.images(language);
    const base = this.locate(language, kernel, rootfs, baseImage);
    return { base, dir: dirname(base.path) };
  }

  /**
   * Whether a language can run without a build (its images are in the local store) and without
   * a cold boot (a snapshot of exactly those images, this driver and this VM shape is on disk).
   * Reads only: fetches nothing, boots nothing.
   */
  async status(language: string): Promise<RuntimeStatus> {
    const kernel = await this.options.store.latest('kernel', null);
    const rootfs = await this.options.store.latest('rootfs', language);
    if (kernel === undefined || rootfs === undefined)
      return { imageReady: false, snapshotReady: false };
    const treeKey = rootfs.manifest.inputs?.baseTreeKey;
    const base = treeKey === undefined ? null : await latestBase(this.options.store, treeKey);
    if (base === undefined) return { imageReady: false, snapshotReady: false };
    const { path, ramPath } = this.locate(language, kernel, rootfs, base);
    const snap = await stat(path).catch(() => null);
    const ram = ramPath === undefined ? true : existsSync(ramPath);
    return { imageReady: true, snapshotReady: snap?.isFile() === true && ram };
  }

  /** Where the snapshot of these images is kept (its key), and what its VMs are made of. */
  private locate(
    language: string,
    kernel: StoredImage,
    rootfs: StoredImage,
    base: StoredImage | null,
  ): Omit<SnapshotRef, 'sizeBytes'> {
    const resources: VmResources = {
      kernelPath: join(kernel.dir, this.options.kernelFile),
      initrdPath: join(kernel.dir, 'initrd.img'),
      rootfsPath: join(rootfs.dir, rootfs.manifest.files[0]?.name ?? `rootfs-${language}.ext4`),
      ...(base !== null && {
        basePath: join(base.dir, base.manifest.files[0]?.name ?? BASE_FILE_NAME),
      }),
      memoryMib: this.options.memoryMib,
      vcpus: this.options.vcpus,
    };
    const key = sha256Hex(
      canonicalJson({
        kernel: kernel.manifest.id,
        rootfs: rootfs.manifest.id,
        ...(base !== null && { base: base.manifest.id }),
        driver: this.options.driverTag,
        memoryMib: resources.memoryMib,
        vcpus: resources.vcpus,
        ...(this.options.warmUp !== undefined && { warmUp: WARM_UP_RECIPE }),
        ...(this.options.ramTemplate && { ram: 'template' }),
      }),
    ).slice(0, 16);
    // One snapshot per layer: the languages of a family layer share it.
    const layer = rootfs.manifest.language ?? language;
    const dir = join(this.options.snapshotsDir, `${layer}-${key}`);
    return {
      language,
      layer,
      layerLanguages: rootfs.manifest.languages ?? [language],
      key,
      path: join(dir, 'vm.snap'),
      ...(this.options.ramTemplate && { ramPath: join(dir, RAM_TEMPLATE_FILE) }),
      resources,
      kernelId: kernel.manifest.id,
      rootfsId: rootfs.manifest.id,
      ...(base !== null && { baseId: base.manifest.id }),
    };
  }

  /** Cold-boots a VM of the target and checks that its agent offers the language. */
  private async boot(
    base: Omit<SnapshotRef, 'sizeBytes'>,
    netns: string | null = null,
    ramFile: RamFile | null = null,
  ): Promise<{ vm: MicroVm; bootMs: number }> {
    const vmId = `${netns ? 'net' : 'snap'}-${base.language}-${randomBytes(4).toString('hex')}`;
    const started = Date.now();
    const vm = await this.options.driver.boot({
      ...base.resources,
      vmId,
      runDir: join(this.options.runDir, vmId),
      timeoutMs: this.options.bootTimeoutMs,
      ...(netns !== null && { netns }),
      ...(ramFile !== null && { ramFile }),
    });
    const bootMs = Date.now() - started;
    this.options.onBoot?.(base.language, bootMs);
    const hello = vm.hello;
    if (hello && !hello.languages.includes(base.language)) {
      await vm.destroy();
      throw new SnapshotFailedError(
        `the ${base.rootfsId} agent cannot run ${base.language} (it offers ${hello.languages.join(', ')})`,
      );
    }
    return { vm, bootMs };
  }

  private async create(base: Omit<SnapshotRef, 'sizeBytes'>, dir: string): Promise<SnapshotRef> {
    await mkdir(dir, { recursive: true });
    this.options.log?.(`booting ${base.language} (${base.rootfsId}) to take its snapshot`);
    const ramFile = await this.newRamTemplate(base);
    const { vm, bootMs } = await this.boot(base, null, ramFile);
    try {
      let warmUpMs: number | undefined;
      if (this.options.warmUp !== undefined) {
        const started = Date.now();
        // The language that asked for the snapshot: in a family layer the others share the
        // toolchain's files in the page cache, and a warm-up of a slow compiler costs a minute
        // under TCG before the first job is served.
        await this.options.warmUp(vm, base.language);
        warmUpMs = Date.now() - started;
      }
      // With a RAM template the state is published only once the RAM file is sealed.
      const statePath = ramFile === null ? base.path : `${base.path}.state`;
      let info = await vm.snapshot(statePath);
      if (ramFile !== null) {
        await vm.destroy();
        const ramBytes = await sealRamTemplate(ramFile.path);
        await rename(statePath, base.path);
        info = { ...info, path: base.path, sizeBytes: info.sizeBytes + ramBytes };
      }
      await writeFile(
        join(dir, 'meta.json'),
        `${JSON.stringify({ ...base, sizeBytes: info.sizeBytes, bootMs, warmUpMs, snapshotMs: info.ms, takenAt: new Date().toISOString() }, null, 2)}\n`,
      );
      this.options.log?.(
        `snapshot of ${base.language}: ${(info.sizeBytes / 1048576).toFixed(0)} MiB in ${info.ms} ms (boot ${bootMs} ms${warmUpMs !== undefined ? `, warm-up ${warmUpMs} ms` : ''})`,
      );
      await this.prune(base.layer ?? base.language, base.key);
      // Snapshots of a language from before it joined its family's layer are stale too.
      for (const language of base.layerLanguages ?? []) {
        if (language !== base.layer) await this.prune(language, base.key);
      }
      return { ...base, sizeBytes: info.sizeBytes, bootMs, snapshotMs: info.ms };
    } finally {
      await vm.destroy();
    }
  }

  /**
   * A fresh, empty RAM template for a snapshot being made (null without ramTemplate): owned by
   * the VMM's user, who alone may write it while the template VM runs.
   */
  private async newRamTemplate(base: Omit<SnapshotRef, 'sizeBytes'>): Promise<RamFile | null> {
    const ram = this.options.ramTemplate;
    if (!ram || base.ramPath === undefined) return null;
    await rm(base.ramPath, { force: true });
    await writeFile(base.ramPath, '', { mode: 0o600 });
    if (ram.owner !== null && process.getuid?.() === 0) {
      await chown(base.ramPath, ram.owner.uid, ram.owner.gid);
    }
    return { path: base.ramPath, role: 'template' };
  }

  private async image(kind: 'kernel' | 'rootfs', language: string | null): Promise<StoredImage> {
    const local = await this.options.store.latest(kind, language);
    if (local) return local;
    const fetched = await this.options.fetchMissing?.(kind, language);
    if (fetched) return fetched;
    return this.options.store.resolve(kind, language);
  }
}

/**
 * The base image a language layer made against this base tree goes over (any of them fits it):
 * the one the last build marked (ImageStore.select: the agent of the sources last built), else
 * the newest.
 */
export async function latestBase(
  store: ImageStore,
  treeKey: string,
): Promise<StoredImage | undefined> {
  const bases = (await store.list('base')).filter(
    (b) => b.manifest.inputs?.baseTreeKey === treeKey,
  );
  return store.preferred(bases);
}

/**
 * Makes a template VM's RAM file the host's and read-only, on disk (fsync: a clone must never
 * map a torn template), once its VM is gone. Returns the bytes it takes on disk.
 */
async function sealRamTemplate(path: string): Promise<number> {
  if (process.getuid?.() === 0) await chown(path, 0, 0);
  await chmod(path, 0o444);
  const handle = await open(path, 'r');
  try {
    await handle.sync();
    return (await handle.stat()).blocks * 512;
  } finally {
    await handle.close();
  }
}

/** Reads a snapshot's meta.json (timings of the boot that made it), or null. */
export async function readSnapshotMeta(
  ref: SnapshotRef,
): Promise<{ bootMs?: number; snapshotMs?: number } | null> {
  return readFile(join(ref.path, '..', 'meta.json'), 'utf8').then(
    (t) => JSON.parse(t) as { bootMs?: number; snapshotMs?: number },
    () => null,
  );
}
