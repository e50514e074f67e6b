import { lstatSync, readdirSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import type { BuildLog } from './build-log.js';

/*
 * The last step of a rootfs build: sizing a finished guest tree and turning it into an ext4
 * image with `mkfs.ext4 -d`, which needs neither root's mount nor a loop device.
 */

/** What `mkfs.ext4 -d` needs for a tree: data blocks and inodes. */
export interface TreeUsage {
  readonly bytes: number;
  readonly inodes: number;
}

/** Measures a tree as ext4 would store it with 4 KiB blocks (hard links counted once). */
export function measureTree(root: string): TreeUsage {
  const seen = new Set<number>();
  let bytes = 0;
  let inodes = 0;
  const block = (n: number): number => Math.ceil(n / 4096) * 4096;
  const walk = (dir: string): void => {
    for (const entry of readdirSync(dir)) {
      const path = join(dir, entry);
      const info = lstatSync(path);
      if (seen.has(info.ino)) continue;
      seen.add(info.ino);
      inodes += 1;
      if (info.isDirectory()) {
        bytes += Math.max(4096, block(info.size));
        walk(path);
      } else if (info.isFile()) {
        bytes += block(info.size);
      } else if (info.isSymbolicLink() && info.size >= 60) {
        bytes += 4096;
      }
    }
  };
  walk(root);
  return { bytes, inodes: inodes + 1 };
}

/** The image size for a tree: the data plus inode tables, metadata and some headroom, in MiB. */
export function ext4SizeMib(usage: TreeUsage): number {
  const inodes = ext4InodeCount(usage);
  const bytes = usage.bytes * 1.05 + inodes * 256 + 24 * 1024 * 1024;
  return Math.ceil(bytes / (1024 * 1024));
}

/** The inode count to give mkfs.ext4 for a tree: its inodes plus a tenth and some spare. */
export function ext4InodeCount(usage: TreeUsage): number {
  return Math.ceil(usage.inodes * 1.1) + 1024;
}

/**
 * Makes the ext4 image from the tree, without mounting: no journal (the guest mounts it
 * read-only), no reserved blocks, root-owned root, and a UUID and hash seed derived from the
 * image hash so that equal inputs give equal metadata. `label` is how the initramfs finds the
 * drive (GUEST_DISK_LABELS). Retries with more room if it did not fit.
 */
export async function makeExt4(
  log: BuildLog,
  root: string,
  image: string,
  hash: string,
  label: string,
  signal?: AbortSignal,
): Promise<void> {
  const usage = measureTree(root);
  const inodes = ext4InodeCount(usage);
  let sizeMib = ext4SizeMib(usage);
  const uuid = `${hash.slice(0, 8)}-${hash.slice(8, 12)}-4${hash.slice(13, 16)}-a${hash.slice(17, 20)}-${hash.slice(20, 32)}`;
  log.write(
    `# tree: ${usage.bytes} bytes in ${usage.inodes} inodes; image ${sizeMib} MiB, ${inodes} inodes`,
  );
  for (let attempt = 1; ; attempt += 1) {
    rmSync(image, { force: true });
    try {
      await log.run(
        'mkfs.ext4',
        [
          '-q',
          '-F',
          '-t',
          'ext4',
          '-b',
          '4096',
          '-I',
          '256',
          '-N',
          String(inodes),
          '-m',
          '0',
          '-L',
          label,
          '-U',
          uuid,
          '-O',
          '^has_journal,^resize_inode',
          '-E',
          `root_owner=0:0,hash_seed=${uuid}`,
          '-d',
          root,
          image,
          `${sizeMib}M`,
        ],
        { signal },
      );
      break;
    } catch (err) {
      if (attempt >= 3 || signal?.aborted === true) throw err;
      sizeMib = Math.ceil(sizeMib * 1.3);
      log.write(`# mkfs failed; retrying with ${sizeMib} MiB`);
    }
  }
  // A read-only check of the result (e2fsck exits 0 when clean).
  await log.run('e2fsck', ['-fn', image], { signal });
}
