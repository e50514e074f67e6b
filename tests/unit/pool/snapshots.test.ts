import {
  appendFileSync,
  existsSync,
  mkdirSync,
  mkdtempSync,
  readdirSync,
  rmSync,
  statSync,
  writeFileSync,
} from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { ImageStore, type StoredImage } from '../../../src/images/store.js';
import { SnapshotManager, type SnapshotManagerOptions } from '../../../src/pool/snapshots.js';
import type { MicroVm, VmLaunchOptions, VmmDriver } from '../../../src/vmm/index.js';

/** Images as the store would list them; only what the manager reads. */
const image = (id: string, file?: string): StoredImage =>
  ({
    dir: `/images/${id}`,
    manifest: { id, files: file === undefined ? [] : [{ name: file }] },
  }) as unknown as StoredImage;

const store = {
  latest: (kind: 'kernel' | 'rootfs') =>
    Promise.resolve(kind === 'kernel' ? image('kernel-1') : image('python-1', 'python.ext4')),
} as unknown as ImageStore;

/** A driver that records its cold boots; each VM's agent offers `languages`. */
function bootingDriver(languages: string[]): VmmDriver & {
  boots: VmLaunchOptions[];
  vms: { destroyed: boolean; snapshots: string[] }[];
} {
  const boots: VmLaunchOptions[] = [];
  const vms: { destroyed: boolean; snapshots: string[] }[] = [];
  return {
    name: 'qemu',
    boots,
    vms,
    boot: (o) => {
      boots.push(o);
      const record = { destroyed: false, snapshots: [] as string[] };
      vms.push(record);
      return Promise.resolve({
        id: o.vmId,
        hello: { type: 'hello', protocol: 1, agentVersion: 'x', languages, vmId: null },
        snapshot: (path: string) => {
          record.snapshots.push(path);
          return Promise.resolve({ path, sizeBytes: 0, ms: 1 });
        },
        destroy: () => {
          record.destroyed = true;
          return Promise.resolve();
        },
      } as unknown as MicroVm);
    },
    restore: () => Promise.reject(new Error('not used')),
  };
}

/** The snapshot manager's settings of these tests: snapshots and run dirs under `dir`. */
function managerOptions(dir: string, driver: VmmDriver, store: ImageStore): SnapshotManagerOptions {
  return {
    driver,
    driverTag: 'qemu-tcg',
    store,
    snapshotsDir: join(dir, 'snapshots'),
    runDir: join(dir, 'run'),
    memoryMib: 512,
    vcpus: 1,
    bootTimeoutMs: 1234,
    kernelFile: 'vmlinuz',
  };
}

describe('SnapshotManager: one cold-boot path for snapshots and runner bench', () => {
  let dir: string;
  beforeEach(() => {
    dir = mkdtempSync(join(tmpdir(), 'runner-snapshots-'));
  });
  afterEach(() => rmSync(dir, { recursive: true, force: true }));

  function manager(driver: VmmDriver, onBoot?: (l: string, ms: number) => void): SnapshotManager {
    return new SnapshotManager({ ...managerOptions(dir, driver, store), onBoot });
  }

  it('bootFresh boots exactly what a snapshot is taken of, and leaves the VM to the caller', async () => {
    const driver = bootingDriver(['python']);
    const booted: string[] = [];
    const m = manager(driver, (language) => booted.push(language));
    const ref = await m.ensure('python');
    const { vm, bootMs } = await m.bootFresh('python');
    expect(bootMs).toBeGreaterThanOrEqual(0);
    expect(driver.boots).toHaveLength(2);
    const [forSnapshot, fresh] = driver.boots;
    // The shape of a launch: everything but the VM's own id and folder.
    const shape = (o: VmLaunchOptions): [string, unknown][] =>
      Object.entries(o).filter(([k]) => k !== 'vmId' && k !== 'runDir');
    expect(shape(fresh as VmLaunchOptions)).toEqual(shape(forSnapshot as VmLaunchOptions));
    expect(Object.fromEntries(shape(fresh as VmLaunchOptions))).toEqual({
      ...ref.resources,
      timeoutMs: 1234,
    });
    expect(ref.resources.rootfsPath).toBe('/images/python-1/python.ext4');
    expect(fresh?.runDir).toBe(join(dir, 'run', vm.id));
    expect(booted).toEqual(['python', 'python']);
    // The snapshot's VM was snapshotted and destroyed; the fresh one is untouched.
    expect(driver.vms[0]).toEqual({ destroyed: true, snapshots: [ref.path] });
    expect(driver.vms[1]).toEqual({ destroyed: false, snapshots: [] });
  });

  it('bootFresh refuses, and destroys, a VM whose agent does not offer the language', async () => {
    const driver = bootingDriver(['ruby']);
    await expect(manager(driver).bootFresh('python')).rejects.toThrow(
      expect.objectContaining({ code: 'SNAPSHOT_FAILED' }) as Error,
    );
    expect(driver.vms[0]?.destroyed).toBe(true);
  });
});

describe('SnapshotManager: a RAM template beside the snapshot', () => {
  let dir: string;
  beforeEach(() => {
    dir = mkdtempSync(join(tmpdir(), 'runner-snapshots-'));
  });
  afterEach(() => rmSync(dir, { recursive: true, force: true }));

  it('boots the template VM on a fresh file, and publishes the state only once the file is sealed', async () => {
    const events: string[] = [];
    const boots: VmLaunchOptions[] = [];
    const driver: VmmDriver = {
      name: 'qemu',
      boot: (o) => {
        boots.push(o);
        const ram = o.ramFile?.path;
        if (ram !== undefined) {
          events.push(`boot ${statSync(ram).size} ${(statSync(ram).mode & 0o777).toString(8)}`);
          // The guest's RAM, as QEMU writes it into the shared file.
          appendFileSync(ram, Buffer.alloc(4096, 7));
        }
        return Promise.resolve({
          id: o.vmId,
          hello: {
            type: 'hello',
            protocol: 1,
            agentVersion: 'x',
            languages: ['python'],
            vmId: null,
          },
          snapshot: (path: string) => {
            events.push(`snapshot ${path}`);
            writeFileSync(path, 'state');
            return Promise.resolve({ path, sizeBytes: 5, ms: 1 });
          },
          destroy: () => {
            if (ram !== undefined)
              events.push(`destroy ${(statSync(ram).mode & 0o777).toString(8)}`);
            return Promise.resolve();
          },
        } as unknown as MicroVm);
      },
      restore: () => Promise.reject(new Error('not used')),
    };
    const plain = new SnapshotManager(managerOptions(dir, driver, store));
    const m = new SnapshotManager({
      ...managerOptions(dir, driver, store),
      ramTemplate: { owner: null },
    });
    const ref = await m.ensure('python');
    expect(ref.ramPath).toBe(join(dirname(ref.path), 'ram'));
    expect(boots[0]?.ramFile).toEqual({ path: ref.ramPath, role: 'template' });
    // An empty file the VMM's user alone may write; the VM is gone before the file is sealed
    // (the manager's own destroy after it is idempotent).
    expect(events.slice(0, 3)).toEqual(['boot 0 600', `snapshot ${ref.path}.state`, 'destroy 600']);
    expect(statSync(ref.ramPath ?? '').mode & 0o777).toBe(0o444);
    expect(existsSync(ref.path)).toBe(true);
    expect(existsSync(`${ref.path}.state`)).toBe(false);
    expect(ref.sizeBytes).toBeGreaterThanOrEqual(4096);
    // Taken again when its RAM file is gone (the state alone restores nothing).
    rmSync(ref.ramPath ?? '');
    const again = await m.ensure('python');
    expect(boots).toHaveLength(2);
    expect(statSync(again.ramPath ?? '').size).toBe(4096);
    // A snapshot with its RAM inside is another key: neither is ever taken for the other.
    const other = await plain.ensure('python');
    expect(other.key).not.toBe(ref.key);
    expect(other.ramPath).toBeUndefined();
  });
});

describe('SnapshotManager: a layered language goes over the base of its base tree', () => {
  let dir: string;
  beforeEach(() => {
    dir = mkdtempSync(join(tmpdir(), 'runner-snapshots-'));
  });
  afterEach(() => rmSync(dir, { recursive: true, force: true }));

  const stored = (id: string, file: string, inputs: Record<string, string>, builtAt: string) =>
    ({
      dir: `/images/${id}`,
      manifest: { id, files: [{ name: file }], inputs, builtAt },
    }) as unknown as StoredImage;

  function layeredStore(bases: StoredImage[]): ImageStore {
    return {
      latest: (kind: 'kernel' | 'rootfs') =>
        Promise.resolve(
          kind === 'kernel'
            ? image('kernel-1')
            : stored(
                'python-2',
                'rootfs-python.ext4',
                { baseTreeKey: 't1' },
                '2026-01-01T00:00:00Z',
              ),
        ),
      list: (kind: string) => Promise.resolve(kind === 'base' ? bases : []),
      // The real choice (no build selected one here: the newest).
      preferred: (images: readonly StoredImage[]) =>
        new ImageStore('/nonexistent-images').preferred(images),
      root: '/images',
    } as unknown as ImageStore;
  }

  function manager(driver: VmmDriver, store: ImageStore): SnapshotManager {
    return new SnapshotManager(managerOptions(dir, driver, store));
  }

  it('boots the layer over the newest base of the same tree, and keys the snapshot by both', async () => {
    const older = stored('base-aaa', 'base.ext4', { baseTreeKey: 't1' }, '2026-01-01T00:00:00Z');
    const newer = stored('base-bbb', 'base.ext4', { baseTreeKey: 't1' }, '2026-02-01T00:00:00Z');
    const otherTree = stored(
      'base-ccc',
      'base.ext4',
      { baseTreeKey: 't0' },
      '2026-03-01T00:00:00Z',
    );
    const driver = bootingDriver(['python']);
    const ref = await manager(driver, layeredStore([older, otherTree, newer])).ensure('python');
    expect(ref.baseId).toBe('base-bbb');
    expect(driver.boots[0]?.basePath).toBe('/images/base-bbb/base.ext4');
    expect(driver.boots[0]?.rootfsPath).toBe('/images/python-2/rootfs-python.ext4');
    // Another base (a new agent) means another snapshot.
    const other = await manager(bootingDriver(['python']), layeredStore([older])).ensure('python');
    expect(other.baseId).toBe('base-aaa');
    expect(other.key).not.toBe(ref.key);
  });

  it('refuses with IMAGE_NOT_FOUND when no base of the layer tree is in the store', async () => {
    const otherTree = stored(
      'base-ccc',
      'base.ext4',
      { baseTreeKey: 't0' },
      '2026-03-01T00:00:00Z',
    );
    const driver = bootingDriver(['python']);
    await expect(manager(driver, layeredStore([otherTree])).ensure('python')).rejects.toMatchObject(
      {
        code: 'IMAGE_NOT_FOUND',
        message: expect.stringContaining('runner images build python') as unknown,
      },
    );
    expect(driver.boots).toHaveLength(0);
  });
});

describe('SnapshotManager.prune', () => {
  it('removes exactly <layer>-<key16> folders other than the kept one', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'runner-prune-'));
    try {
      const names = [
        'c-0123456789abcdef',
        'c-fedcba9876543210',
        'c-clang-0123456789abcdef',
        'gcc-0123456789abcdef',
        'c-notakey',
      ];
      for (const n of names) mkdirSync(join(dir, n));
      const m = new SnapshotManager({
        ...managerOptions(dir, bootingDriver([]), store),
        snapshotsDir: dir,
      });
      expect(await m.prune('c', 'fedcba9876543210')).toEqual(['c-0123456789abcdef']);
      expect(readdirSync(dir).sort()).toEqual(
        [
          'c-clang-0123456789abcdef',
          'c-fedcba9876543210',
          'c-notakey',
          'gcc-0123456789abcdef',
        ].sort(),
      );
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
