import { spawn } from 'node:child_process';
import { createReadStream, createWriteStream } from 'node:fs';
import {
  chmod,
  copyFile,
  mkdir,
  open,
  readdir,
  readFile,
  rm,
  stat,
  writeFile,
} from 'node:fs/promises';
import { join } from 'node:path';
import { pipeline } from 'node:stream/promises';
import { createGzip } from 'node:zlib';
import { ImageBuildFailedError, ImageCorruptError } from '../errors.js';
import type { BuildLog } from './build-log.js';
import { canonicalJson, DEBIAN_SUITE, sha256File, sha256Hex } from './identity.js';
import { GUEST_DISK_LABELS, GUEST_NET, LAYERED_ROOT_ARG } from './guest-init.js';
import type { ImageManifest } from './manifest.js';
import { resolveDebianMirrors, type DebianMirrorSettings } from './mirror.js';
import { writeManifest, type ImageStore, type StoredImage } from './store.js';

/** The Debian package whose dependency names the kernel that every VM boots. */
export const KERNEL_META_PACKAGE = 'linux-image-cloud-amd64';

/**
 * Kernel modules the initramfs loads, by file name without `.ko`. Debian's cloud kernel builds
 * virtio, the virtio-mmio transport (QEMU microvm and Firecracker both use it), the block and
 * console drivers, vsock and overlayfs as modules; ext4 is built in. They are loaded in
 * dependency order, computed from each module's own `depends=` field.
 */
export const INITRAMFS_MODULES = [
  'virtio_ring',
  'virtio',
  'virtio_mmio',
  'virtio_blk',
  'virtio_console',
  'virtio-rng',
  'vsock',
  'vmw_vsock_virtio_transport_common',
  'vmw_vsock_virtio_transport',
  'overlay',
  // The NIC of a VM that asked for network (src/net/vmnet.ts); virtio_net needs net_failover,
  // which needs failover. Loaded in every VM: without a virtio-net device it binds to nothing.
  'failover',
  'net_failover',
  'virtio_net',
] as const;

/** Bumped when the initramfs recipe changes in a way the inputs below do not capture. */
const KERNEL_RECIPE = 1;

/**
 * The initramfs's /init (busybox sh). It loads the modules, mounts the base image and the
 * language's layer read-only (or, without `runner.root=layers`, one whole rootfs at /dev/vda),
 * stacks them under a tmpfs overlay so that writes stay in RAM and never reach an image, and
 * hands over to the guest init. Any failure powers the VM off, which the host
 * sees at once as the VMM exiting.
 */
export function initramfsInit(modules: readonly string[]): string {
  return `#!/bin/busybox sh
# Runner Codes initramfs /init
/bin/busybox mkdir -p /bin /sbin /usr/bin /usr/sbin
/bin/busybox --install -s
mount -t devtmpfs -o nosuid,noexec devtmpfs /dev
mount -t proc -o nosuid,nodev,noexec proc /proc
mount -t sysfs -o nosuid,nodev,noexec sysfs /sys
fail() { echo "runner-initramfs: $*" > /dev/console; echo o > /proc/sysrq-trigger; sleep 5; poweroff -f; }
for m in ${modules.join(' ')}; do
  insmod /lib/modules/$m.ko || echo "runner-initramfs: insmod $m failed" > /dev/console
done
# runner.root=layers: two drives, found by their ext4 labels (the order of virtio-mmio devices
# is the VMM's): the base (Debian, the agent) and the language's layer, stacked by overlayfs with
# the layer on top. Without it: one drive, /dev/vda, a whole rootfs.
layered=
read -r cmdline < /proc/cmdline
for arg in $cmdline; do
  [ "$arg" = ${LAYERED_ROOT_ARG} ] && layered=1
done
mount -t tmpfs -o mode=0755,nosuid,nodev tmpfs /rw || fail "cannot mount the overlay tmpfs"
mkdir -p /rw/upper /rw/work /newroot
i=0
if [ -n "$layered" ]; then
  base=; layer=
  until base=$(findfs LABEL=${GUEST_DISK_LABELS.base} 2>/dev/null) && layer=$(findfs LABEL=${GUEST_DISK_LABELS.layer} 2>/dev/null); do
    i=$((i+1)); [ $i -gt 1000 ] && fail "no drives labelled ${GUEST_DISK_LABELS.base} and ${GUEST_DISK_LABELS.layer}"
    usleep 10000
  done
  mkdir -p /base /layer
  mount -t ext4 -o ro,noload,nodev "$base" /base || fail "cannot mount the base $base"
  mount -t ext4 -o ro,noload,nodev "$layer" /layer || fail "cannot mount the layer $layer"
  lower=/layer:/base
else
  while [ ! -b /dev/vda ]; do
    i=$((i+1)); [ $i -gt 1000 ] && fail "no root disk /dev/vda"
    usleep 10000
  done
  mkdir -p /lower
  mount -t ext4 -o ro,noload,nodev /dev/vda /lower || fail "cannot mount the rootfs /dev/vda"
  lower=/lower
fi
mount -t overlay -o lowerdir=$lower,upperdir=/rw/upper,workdir=/rw/work overlay /newroot || fail "cannot mount the overlay"
[ -x /newroot/sbin/runner-init ] || fail "the rootfs has no /sbin/runner-init"
# Network on request (src/net/vmnet.ts): only a VM started with a NIC has eth0. Configured here,
# where busybox has ip; the address and the route outlive switch_root.
if [ -e /sys/class/net/eth0 ]; then
  ip link set eth0 up && ip addr add ${GUEST_NET.address}/${GUEST_NET.prefix} dev eth0 &&
    ip route add default via ${GUEST_NET.gateway} dev eth0 &&
    echo "nameserver ${GUEST_NET.gateway}" > /newroot/etc/resolv.conf ||
    echo "runner-initramfs: cannot configure eth0" > /dev/console
fi
mount --move /dev /newroot/dev
umount /proc /sys
exec switch_root /newroot /sbin/runner-init
`;
}

/** Orders modules so each comes after the ones its `depends=` names (a plain topological sort). */
export function orderModules(depends: ReadonlyMap<string, readonly string[]>): string[] {
  const order: string[] = [];
  const state = new Map<string, 'visiting' | 'done'>();
  const visit = (name: string, path: string[]): void => {
    const s = state.get(name);
    if (s === 'done') return;
    if (s === 'visiting')
      throw new ImageBuildFailedError(`module dependency cycle: ${[...path, name].join(' -> ')}`);
    const deps = depends.get(name);
    if (deps === undefined)
      throw new ImageBuildFailedError(`module ${name} is needed but not in the kernel package`);
    state.set(name, 'visiting');
    for (const d of deps) visit(d, [...path, name]);
    state.set(name, 'done');
    order.push(name);
  };
  for (const name of [...depends.keys()].sort()) visit(name, []);
  return order;
}

/** Reads a module's `depends=` from its .modinfo section (a NUL-separated list of key=value). */
export function moduleDepends(ko: Buffer): string[] {
  const key = Buffer.from('\0depends=');
  const at = ko.indexOf(key);
  if (at < 0) return [];
  const start = at + key.length;
  const end = ko.indexOf(0, start);
  const value = ko.subarray(start, end < 0 ? undefined : end).toString('latin1');
  return value === '' ? [] : value.split(',');
}

const COMPRESSED_KERNEL_MAGICS: readonly { name: string; magic: Buffer; command: string[] }[] = [
  { name: 'lz4', magic: Buffer.from([0x02, 0x21, 0x4c, 0x18]), command: ['lz4', '-dc'] },
  { name: 'zstd', magic: Buffer.from([0x28, 0xb5, 0x2f, 0xfd]), command: ['zstd', '-dcq'] },
  { name: 'xz', magic: Buffer.from([0xfd, 0x37, 0x7a, 0x58, 0x5a, 0x00]), command: ['xz', '-dcq'] },
  { name: 'gzip', magic: Buffer.from([0x1f, 0x8b, 0x08]), command: ['gzip', '-dcq'] },
];

/**
 * Extracts the uncompressed ELF `vmlinux` from a bzImage `vmlinuz` (Firecracker boots only the
 * ELF). Like the kernel's own scripts/extract-vmlinux: try each compression magic found in the
 * file and keep the first output that is an ELF. Decompressors exit non-zero on the trailing
 * bytes after the payload; that is expected, so only the ELF check decides.
 */
export async function extractVmlinux(vmlinuz: string, out: string): Promise<string> {
  const data = await readFile(vmlinuz);
  const tried: string[] = [];
  for (const { name, magic, command } of COMPRESSED_KERNEL_MAGICS) {
    let at = data.indexOf(magic);
    while (at >= 0) {
      await decompressTo(command, data.subarray(at), out);
      const head = Buffer.alloc(4);
      const fh = await open(out, 'r');
      try {
        await fh.read(head, 0, 4, 0);
      } finally {
        await fh.close();
      }
      if (head.equals(Buffer.from([0x7f, 0x45, 0x4c, 0x46]))) return name;
      tried.push(`${name}@${at}`);
      at = data.indexOf(magic, at + 1);
    }
  }
  await rm(out, { force: true });
  throw new ImageBuildFailedError(
    `no ELF kernel found inside ${vmlinuz} (tried ${tried.join(', ') || 'nothing'})`,
  );
}

function decompressTo(command: string[], input: Buffer, out: string): Promise<void> {
  return new Promise((resolve, reject) => {
    const [cmd, ...args] = command as [string, ...string[]];
    const child = spawn(cmd, args, { stdio: ['pipe', 'pipe', 'ignore'] });
    const sink = createWriteStream(out);
    child.on('error', (err) =>
      reject(
        new ImageBuildFailedError(`${cmd} is needed to extract vmlinux: ${err.message}`, {
          cause: err,
        }),
      ),
    );
    child.stdin.on('error', () => undefined); // the decompressor stops reading at the payload's end
    child.stdin.end(input);
    child.stdout.pipe(sink);
    sink.on('finish', () => resolve());
    sink.on('error', reject);
  });
}

/** What `buildKernelImage` needs. */
export interface KernelBuildOptions {
  store: ImageStore;
  /** A work folder for apt lists, downloaded packages and staging (kept between builds). */
  workDir: string;
  log: BuildLog;
  /** Where the Debian packages come from (the settings, else the machine's apt sources). */
  settings: DebianMirrorSettings;
  /** Rebuild even when an image with the same identity exists. */
  force?: boolean;
  onPhase?: (phase: string) => void;
}

/**
 * The hash of how this code builds a kernel image (the recipe version, the initramfs modules
 * and its /init), apart from the Debian packages: kept in the manifest's `inputs.recipe`, so
 * that a store whose kernel was built by another recipe (say, before virtio_net was added) is
 * seen to need a new one without downloading anything.
 */
export function kernelRecipe(): string {
  return sha256Hex(
    canonicalJson({
      recipe: KERNEL_RECIPE,
      modules: INITRAMFS_MODULES,
      init: sha256Hex(initramfsInit(INITRAMFS_MODULES)),
    }),
  ).slice(0, 16);
}

/** Whether a stored kernel image was built by this code's recipe. */
export function isCurrentKernel(image: { manifest: { inputs?: Record<string, string> } }): boolean {
  return image.manifest.inputs?.recipe === kernelRecipe();
}

/** The identity of a kernel image: the exact Debian packages and the initramfs recipe. */
export function kernelIdentity(inputs: {
  kernelPackage: string;
  kernelVersion: string;
  kernelSha256: string;
  busyboxVersion: string;
  busyboxSha256: string;
}): string {
  const hash = sha256Hex(
    canonicalJson({
      ...inputs,
      recipe: KERNEL_RECIPE,
      modules: INITRAMFS_MODULES,
      init: sha256Hex(initramfsInit(INITRAMFS_MODULES)),
    }),
  );
  return `kernel-${hash.slice(0, 16)}`;
}

/**
 * Builds (or reuses) the kernel image: `vmlinuz` (for QEMU), `vmlinux` (the ELF, for
 * Firecracker) and `initrd.img` (busybox from Debian's busybox-static plus the virtio, vsock and
 * overlay modules of that same kernel). Packages come from the machine's Debian mirror (or the
 * debianMirror setting) through a private apt configuration, so the host's own apt state is
 * not changed.
 */
export async function buildKernelImage(options: KernelBuildOptions): Promise<StoredImage> {
  const { store, workDir, log } = options;
  const started = Date.now();
  const apt = await privateApt(workDir, log, options.settings);
  options.onPhase?.('packages');
  const kernelPackage = await resolveKernelPackage(apt, log);
  const kernel = await apt.download(kernelPackage);
  const busybox = await apt.download('busybox-static');
  const id = kernelIdentity({
    kernelPackage,
    kernelVersion: kernel.version,
    kernelSha256: kernel.sha256,
    busyboxVersion: busybox.version,
    busyboxSha256: busybox.sha256,
  });
  const existing = await store.find(id, 'kernel');
  if (existing !== undefined && options.force !== true) {
    log.write(`# kernel image ${id} is already in the store`);
    return existing;
  }

  options.onPhase?.('extract');
  const scratch = join(workDir, `extract-${process.pid}`);
  await rm(scratch, { recursive: true, force: true });
  await mkdir(scratch, { recursive: true });
  try {
    const kroot = join(scratch, 'kernel');
    const broot = join(scratch, 'busybox');
    await log.run('dpkg-deb', ['-x', kernel.path, kroot]);
    await log.run('dpkg-deb', ['-x', busybox.path, broot]);
    const release = kernelPackage.replace(/^linux-image-/, '');
    const staging = await store.createStaging('kernel', id);
    await copyFile(join(kroot, 'boot', `vmlinuz-${release}`), join(staging, 'vmlinuz'));
    const codec = await extractVmlinux(join(staging, 'vmlinuz'), join(staging, 'vmlinux'));
    log.write(`# vmlinux extracted from the ${codec} payload of vmlinuz`);

    options.onPhase?.('initramfs');
    const ird = join(scratch, 'initramfs');
    for (const d of [
      'bin',
      'dev',
      'proc',
      'sys',
      'lib/modules',
      'lower',
      'base',
      'layer',
      'rw',
      'newroot',
    ]) {
      await mkdir(join(ird, d), { recursive: true });
    }
    await copyFile(join(broot, 'bin', 'busybox'), join(ird, 'bin', 'busybox'));
    await chmod(join(ird, 'bin', 'busybox'), 0o755);
    const modulesRoot = join(kroot, 'lib', 'modules', release, 'kernel');
    const found = await findModules(modulesRoot, INITRAMFS_MODULES);
    const depends = new Map<string, string[]>();
    for (const [name, path] of found) {
      depends.set(name, moduleDepends(await readFile(path)));
      await copyFile(path, join(ird, 'lib', 'modules', `${name}.ko`));
    }
    const order = orderModules(depends);
    log.write(`# initramfs modules in load order: ${order.join(' ')}`);
    await writeFile(join(ird, 'init'), initramfsInit(order), { mode: 0o755 });
    await writeCpioGz(ird, join(staging, 'initrd.img'), log);

    options.onPhase?.('checksum');
    const files = [];
    let total = 0;
    for (const name of ['vmlinuz', 'vmlinux', 'initrd.img']) {
      const path = join(staging, name);
      const sizeBytes = (await stat(path)).size;
      total += sizeBytes;
      files.push({ name, sizeBytes, sha256: await sha256File(path) });
    }
    const manifest: ImageManifest = {
      schema: 1,
      kind: 'kernel',
      id,
      language: null,
      toolchainVersion: null,
      kernelVersion: `${release} (${kernel.version})`,
      agentVersion: null,
      debianSuite: DEBIAN_SUITE,
      packages: [`${kernelPackage}=${kernel.version}`, `busybox-static=${busybox.version}`],
      files,
      totalSizeBytes: total,
      buildSeconds: Math.round((Date.now() - started) / 100) / 10,
      builtAt: new Date().toISOString(),
      inputs: { recipe: kernelRecipe() },
    };
    await writeManifest(staging, manifest);
    return await store.commit(staging, { replace: options.force === true });
  } finally {
    await rm(scratch, { recursive: true, force: true });
  }
}

async function findModules(root: string, names: readonly string[]): Promise<Map<string, string>> {
  const wanted = new Set(names);
  const found = new Map<string, string>();
  const walk = async (dir: string): Promise<void> => {
    for (const entry of await readdir(dir, { withFileTypes: true })) {
      const path = join(dir, entry.name);
      if (entry.isDirectory()) await walk(path);
      else if (entry.name.endsWith('.ko')) {
        const name = entry.name.slice(0, -3);
        if (wanted.has(name)) found.set(name, path);
      }
    }
  };
  await walk(root);
  const missing = names.filter((n) => !found.has(n));
  if (missing.length > 0) {
    throw new ImageBuildFailedError(`the kernel package lacks the modules ${missing.join(', ')}`);
  }
  return found;
}

/** Packs a folder into a gzip'd newc cpio archive owned by root (the initramfs format). */
async function writeCpioGz(dir: string, out: string, log: BuildLog): Promise<void> {
  const listing = await log.capture('find', ['.', '-mindepth', '1'], { cwd: dir });
  const names = listing
    .split('\n')
    .filter((l) => l !== '')
    .sort();
  const cpioFile = `${out}.cpio`;
  await new Promise<void>((resolve, reject) => {
    const child = spawn('cpio', ['-o', '-H', 'newc', '-R', '0:0', '--quiet', '-O', cpioFile], {
      cwd: dir,
      stdio: ['pipe', 'ignore', 'pipe'],
    });
    let stderr = '';
    child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    child.on('error', (err) =>
      reject(new ImageBuildFailedError(`cpio: ${err.message}`, { cause: err })),
    );
    child.on('close', (code) =>
      code === 0
        ? resolve()
        : reject(new ImageBuildFailedError(`cpio exited with ${code}: ${stderr}`)),
    );
    child.stdin.end(`${names.join('\n')}\n`);
  });
  await pipeline(createReadStream(cpioFile), createGzip({ level: 6 }), createWriteStream(out));
  await rm(cpioFile);
}

interface DownloadedPackage {
  path: string;
  version: string;
  sha256: string;
}

interface PrivateApt {
  download(pkg: string): Promise<DownloadedPackage>;
  capture(tool: 'apt-cache' | 'apt-get', args: string[]): Promise<string>;
}

/**
 * An apt configuration of the builder's own (sources, lists and cache in `workDir`), pointed
 * at the same mirror as debootstrap. `apt-get update` runs at most once an hour.
 */
async function privateApt(
  workDir: string,
  log: BuildLog,
  settings: DebianMirrorSettings,
): Promise<PrivateApt> {
  const mirrors = resolveDebianMirrors(DEBIAN_SUITE, settings);
  const aptDir = join(workDir, 'apt');
  const debs = join(workDir, 'debs');
  await mkdir(join(aptDir, 'lists', 'partial'), { recursive: true });
  await mkdir(join(aptDir, 'cache', 'archives', 'partial'), { recursive: true });
  await mkdir(debs, { recursive: true });
  const sources = [
    `deb ${mirrors.main} ${DEBIAN_SUITE} main`,
    `deb ${mirrors.main} ${DEBIAN_SUITE}-updates main`,
  ];
  if (mirrors.security !== null)
    sources.push(`deb ${mirrors.security} ${DEBIAN_SUITE}-security main`);
  const sourceList = join(aptDir, 'sources.list');
  const text = `${sources.join('\n')}\n`;
  const previous = await readFile(sourceList, 'utf8').catch(() => '');
  await writeFile(sourceList, text);
  const opts = [
    '-o',
    `Dir::Etc::SourceList=${sourceList}`,
    '-o',
    'Dir::Etc::SourceParts=/nonexistent',
    '-o',
    `Dir::State::Lists=${join(aptDir, 'lists')}`,
    '-o',
    `Dir::Cache=${join(aptDir, 'cache')}`,
    '-o',
    'APT::Sandbox::User=root',
    '-o',
    'Debug::NoLocking=1',
  ];
  const capture = (tool: 'apt-cache' | 'apt-get', args: string[]): Promise<string> =>
    log.capture(tool, [...opts, ...args], {
      env: { ...process.env, LC_ALL: 'C', DEBIAN_FRONTEND: 'noninteractive' },
    });
  const stamp = join(aptDir, 'updated');
  const fresh = await stat(stamp).then(
    (s) => Date.now() - s.mtimeMs < 3600_000 && previous === text,
    () => false,
  );
  if (!fresh) {
    log.write(`# apt sources for the kernel (from ${mirrors.origin})`);
    await capture('apt-get', ['-q', 'update']);
    await writeFile(stamp, new Date().toISOString());
  }
  return {
    capture,
    async download(pkg: string): Promise<DownloadedPackage> {
      const show = await capture('apt-cache', ['show', '--no-all-versions', pkg]);
      const field = (name: string): string => {
        const m = new RegExp(`^${name}: (.+)$`, 'm').exec(show);
        if (!m?.[1]) throw new ImageBuildFailedError(`apt-cache show ${pkg} has no ${name}`);
        return m[1].trim();
      };
      const version = field('Version');
      const sha256 = field('SHA256');
      const file = join(debs, `${pkg}_${version.replace(/:/g, '%3a')}.deb`);
      const have = await sha256File(file).catch(() => null);
      if (have !== sha256) {
        const tmpDir = join(debs, `.dl-${process.pid}`);
        await rm(tmpDir, { recursive: true, force: true });
        await mkdir(tmpDir);
        await log.run('apt-get', [...opts, '-q', 'download', `${pkg}=${version}`], { cwd: tmpDir });
        const [got] = await readdir(tmpDir);
        if (got === undefined)
          throw new ImageBuildFailedError(`apt-get download ${pkg} wrote nothing`);
        await copyFile(join(tmpDir, got), file);
        await rm(tmpDir, { recursive: true, force: true });
        const sum = await sha256File(file);
        if (sum !== sha256)
          throw new ImageCorruptError(
            `${pkg} ${version}: sha256 ${sum} is not the archive's ${sha256}`,
          );
      }
      return { path: file, version, sha256 };
    },
  };
}

async function resolveKernelPackage(apt: PrivateApt, log: BuildLog): Promise<string> {
  const out = await apt.capture('apt-cache', ['depends', KERNEL_META_PACKAGE]);
  const m = /Depends: (linux-image-[0-9][^\s]*)/.exec(out);
  if (!m?.[1])
    throw new ImageBuildFailedError(`cannot tell which kernel ${KERNEL_META_PACKAGE} depends on`);
  log.write(`# ${KERNEL_META_PACKAGE} -> ${m[1]}`);
  return m[1];
}
