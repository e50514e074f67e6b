import {
  closeSync,
  lstatSync,
  mkdirSync,
  openSync,
  readdirSync,
  readlinkSync,
  readSync,
  rmSync,
  writeFileSync,
  type Stats,
} from 'node:fs';
import { join } from 'node:path';
import { ImageBuildFailedError } from '../errors.js';
import type { BuildLog } from './build-log.js';

/*
 * A language layer is what its toolchain tree adds to the base tree, stacked over the base in
 * the guest by overlayfs (lowerdir=layer:base). This file computes that difference on the host:
 * every entry of the upper tree that the lower tree lacks or holds differently, every directory
 * on the way to one, and an overlayfs whiteout (a character device 0:0) for every entry of the
 * lower tree that the upper tree removed.
 */

/** What went into a layer. */
export interface LayerDiff {
  /** Paths (relative, `./`-less) copied from the upper tree, parents before children. */
  readonly copied: readonly string[];
  /** Paths whited out: present in the lower tree, gone from the upper one. */
  readonly whiteouts: readonly string[];
  /** Bytes of regular files copied. */
  readonly bytes: number;
}

function kindOf(st: Stats): string {
  if (st.isDirectory()) return 'dir';
  if (st.isFile()) return 'file';
  if (st.isSymbolicLink()) return 'link';
  if (st.isCharacterDevice()) return 'chr';
  if (st.isBlockDevice()) return 'blk';
  if (st.isFIFO()) return 'fifo';
  return 'socket';
}

function lstatOrNull(path: string): Stats | null {
  try {
    return lstatSync(path);
  } catch {
    return null;
  }
}

/** Whether two regular files of equal size hold the same bytes. */
function sameBytes(a: string, b: string): boolean {
  const fa = openSync(a, 'r');
  const fb = openSync(b, 'r');
  try {
    const ba = Buffer.allocUnsafe(1 << 20);
    const bb = Buffer.allocUnsafe(1 << 20);
    for (;;) {
      const na = readSync(fa, ba, 0, ba.length, null);
      const nb = readSync(fb, bb, 0, bb.length, null);
      if (na !== nb) return false;
      if (na === 0) return true;
      if (ba.compare(bb, 0, nb, 0, na) !== 0) return false;
    }
  } finally {
    closeSync(fa);
    closeSync(fb);
  }
}

/**
 * Whether an entry of the upper tree is the same as the lower tree's at that path: same type,
 * mode, owner, and content (bytes, link target, device number). Times do not count. For
 * directories only their own attributes count (their entries are compared one by one).
 */
function sameEntry(upper: string, up: Stats, lower: string, low: Stats): boolean {
  const kind = kindOf(up);
  if (kind !== kindOf(low) || up.mode !== low.mode || up.uid !== low.uid || up.gid !== low.gid)
    return false;
  switch (kind) {
    case 'file':
      return up.size === low.size && sameBytes(upper, lower);
    case 'link':
      return readlinkSync(upper) === readlinkSync(lower);
    case 'chr':
    case 'blk':
      return up.rdev === low.rdev;
    default:
      return true;
  }
}

/**
 * Lists the difference of `upper` over `lower` (both trees on the host): what a layer stacked
 * over `lower` must hold so that the overlay shows exactly `upper`.
 */
export function diffTrees(upper: string, lower: string): LayerDiff {
  const copied: string[] = [];
  const whiteouts: string[] = [];
  let bytes = 0;
  // Walks one directory present in the upper tree; returns whether anything under it went in.
  const walk = (rel: string, lowerIsDir: boolean): boolean => {
    const upDir = rel === '' ? upper : join(upper, rel);
    const lowDir = rel === '' ? lower : join(lower, rel);
    let any = false;
    const names = readdirSync(upDir).sort();
    for (const name of names) {
      const path = rel === '' ? name : `${rel}/${name}`;
      const up = lstatSync(join(upDir, name));
      const low = lowerIsDir ? lstatOrNull(join(lowDir, name)) : null;
      if (up.isDirectory()) {
        const mark = copied.length;
        const same = low !== null && sameEntry(join(upDir, name), up, join(lowDir, name), low);
        // The directory goes in before its children when anything under it does, or when it is
        // new or differs itself.
        copied.push(path);
        const inner = walk(path, low?.isDirectory() === true);
        if (!inner && same) copied.splice(mark, 1);
        else any = true;
        continue;
      }
      if (low !== null && sameEntry(join(upDir, name), up, join(lowDir, name), low)) continue;
      copied.push(path);
      if (up.isFile()) bytes += up.size;
      any = true;
    }
    if (lowerIsDir) {
      const present = new Set(names);
      for (const name of readdirSync(lowDir).sort()) {
        if (present.has(name)) continue;
        whiteouts.push(rel === '' ? name : `${rel}/${name}`);
        any = true;
      }
    }
    return any;
  };
  walk('', true);
  return { copied, whiteouts, bytes };
}

/**
 * Makes the layer tree `out` (which must not exist) of `upper` over `lower`: the entries of
 * diffTrees copied with tar (owners, modes, hard links, extended attributes such as file
 * capabilities kept), then one whiteout per removed entry. Needs root (mknod, chown).
 */
export async function makeLayerTree(
  log: BuildLog,
  upper: string,
  lower: string,
  out: string,
  signal?: AbortSignal,
): Promise<LayerDiff> {
  const listFile = `${out}.list`;
  const diff = diffTrees(upper, lower);
  mkdirSync(out, { recursive: false, mode: 0o755 });
  log.write(
    `# layer: ${diff.copied.length} entries (${(diff.bytes / 1048576).toFixed(1)} MiB of files), ${diff.whiteouts.length} whiteouts`,
  );
  if (diff.copied.length > 0) {
    // NUL-separated names: any byte but NUL and / may be in a name.
    writeFileSync(listFile, `${diff.copied.map((p) => `./${p}`).join('\0')}\0`);
    try {
      await log.run(
        'sh',
        [
          '-c',
          'set -e; tar -C "$1" --null --no-recursion --xattrs --xattrs-include="*" -T "$3" -cf - | tar -C "$2" --xattrs --xattrs-include="*" --same-owner -xpf -',
          'layer-copy',
          upper,
          out,
          listFile,
        ],
        { signal },
      );
    } finally {
      rmSync(listFile, { force: true });
    }
  }
  for (const path of diff.whiteouts) {
    const parent = join(out, path, '..');
    if (lstatOrNull(parent) === null) {
      throw new ImageBuildFailedError(`layer: no folder for the whiteout of /${path}`);
    }
    await log.run('mknod', ['-m', '000', join(out, path), 'c', '0', '0'], { signal });
  }
  return diff;
}
