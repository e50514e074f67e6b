import { execFileSync, spawnSync } from 'node:child_process';
import {
  chmodSync,
  chownSync,
  linkSync,
  lstatSync,
  mkdirSync,
  mkdtempSync,
  readFileSync,
  rmSync,
  symlinkSync,
  writeFileSync,
} from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { BuildLog } from '../../../src/images/build-log.js';
import { diffTrees, makeLayerTree } from '../../../src/images/layer-diff.js';

let dir: string;
let lower: string;
let upper: string;

beforeEach(() => {
  dir = mkdtempSync(join(tmpdir(), 'runner-layer-'));
  lower = join(dir, 'lower');
  upper = join(dir, 'upper');
});
afterEach(() => {
  spawnSync('umount', [join(dir, 'merged')], { stdio: 'ignore' });
  rmSync(dir, { recursive: true, force: true });
});

/** The same tree in both places: a base, and a toolchain made from a copy of it. */
function makeTrees(): void {
  for (const root of [lower, upper]) {
    mkdirSync(join(root, 'etc'), { recursive: true });
    mkdirSync(join(root, 'usr/bin'), { recursive: true });
    mkdirSync(join(root, 'usr/share/doc/old'), { recursive: true });
    writeFileSync(join(root, 'etc/passwd'), 'root:x:0:0::/root:/bin/sh\n');
    writeFileSync(join(root, 'etc/hostname'), 'runner\n');
    writeFileSync(join(root, 'usr/bin/sh'), 'shell');
    writeFileSync(join(root, 'usr/share/doc/old/README'), 'old');
    writeFileSync(join(root, 'usr/bin/gone'), 'removed by the toolchain');
    symlinkSync('sh', join(root, 'usr/bin/dash'));
    symlinkSync('usr/bin', join(root, 'bin'));
  }
  // The toolchain's changes.
  writeFileSync(
    join(upper, 'etc/passwd'),
    'root:x:0:0::/root:/bin/sh\n_apt:x:42:65534::/:/bin/false\n',
  );
  chmodSync(join(upper, 'etc/hostname'), 0o600);
  mkdirSync(join(upper, 'usr/lib/python3'), { recursive: true });
  writeFileSync(join(upper, 'usr/lib/python3/os.py'), 'import sys\n');
  writeFileSync(join(upper, 'usr/bin/python3.11'), 'python');
  linkSync(join(upper, 'usr/bin/python3.11'), join(upper, 'usr/bin/python3'));
  rmSync(join(upper, 'usr/bin/gone'));
  rmSync(join(upper, 'usr/share/doc/old'), { recursive: true });
  rmSync(join(upper, 'usr/bin/dash'));
  symlinkSync('python3', join(upper, 'usr/bin/dash'));
}

describe('diffTrees', () => {
  it('lists what the upper tree adds or changes, the folders on the way, and what it removed', () => {
    makeTrees();
    const diff = diffTrees(upper, lower);
    expect(diff.copied).toEqual([
      'etc',
      'etc/hostname',
      'etc/passwd',
      'usr',
      'usr/bin',
      'usr/bin/dash',
      'usr/bin/python3',
      'usr/bin/python3.11',
      'usr/lib',
      'usr/lib/python3',
      'usr/lib/python3/os.py',
      'usr/share',
      'usr/share/doc',
    ]);
    expect(diff.whiteouts).toEqual(['usr/bin/gone', 'usr/share/doc/old']);
    expect(diff.bytes).toBe(
      'root:x:0:0::/root:/bin/sh\n_apt:x:42:65534::/:/bin/false\n'.length +
        'runner\n'.length +
        2 * 'python'.length +
        'import sys\n'.length,
    );
  });

  it('is empty for identical trees, whatever their times', () => {
    makeTrees();
    const diff = diffTrees(lower, lower);
    expect(diff).toEqual({ copied: [], whiteouts: [], bytes: 0 });
  });

  it('sees a change of content of equal size, of owner, and of type', () => {
    makeTrees();
    writeFileSync(join(upper, 'usr/bin/sh'), 'SHELL');
    if (process.getuid?.() === 0) chownSync(join(upper, 'etc/passwd'), 42, 0);
    rmSync(join(upper, 'bin'));
    mkdirSync(join(upper, 'bin'));
    const diff = diffTrees(upper, lower);
    expect(diff.copied).toContain('usr/bin/sh');
    expect(diff.copied).toContain('bin');
    expect(diff.copied).toContain('etc/passwd');
  });
});

const isRoot = process.getuid?.() === 0;
const overlayReason = !isRoot
  ? 'mknod of whiteouts and mounting an overlay need root'
  : !readFileSync('/proc/filesystems', 'utf8').includes('overlay') &&
      spawnSync('modprobe', ['overlay']).status !== 0
    ? 'the host kernel has no overlayfs'
    : null;
if (overlayReason !== null) console.warn(`skipping the layer overlay test: ${overlayReason}`);

describe.skipIf(overlayReason !== null)('makeLayerTree, stacked by overlayfs', () => {
  it('shows exactly the upper tree when the layer is stacked over the lower one', async () => {
    makeTrees();
    chownSync(join(upper, 'usr/lib/python3/os.py'), 1000, 1000);
    const layer = join(dir, 'layer');
    const log = new BuildLog(join(dir, 'build.log'));
    try {
      const diff = await makeLayerTree(log, upper, lower, layer);
      expect(diff.whiteouts).toHaveLength(2);
    } finally {
      log.close();
    }
    // The whiteouts are character devices 0:0; the hard link is kept; owners are kept.
    const whiteout = lstatSync(join(layer, 'usr/bin/gone'));
    expect(whiteout.isCharacterDevice()).toBe(true);
    expect(whiteout.rdev).toBe(0);
    expect(lstatSync(join(layer, 'usr/bin/python3')).ino).toBe(
      lstatSync(join(layer, 'usr/bin/python3.11')).ino,
    );
    expect(lstatSync(join(layer, 'usr/lib/python3/os.py')).uid).toBe(1000);
    // Unchanged files stay out of the layer.
    expect(() => lstatSync(join(layer, 'usr/bin/sh'))).toThrow();
    // Stacked: the merged view is the upper tree, entry for entry.
    const merged = join(dir, 'merged');
    mkdirSync(merged);
    execFileSync('mount', [
      '-t',
      'overlay',
      '-o',
      `ro,lowerdir=${layer}:${lower}`,
      'overlay',
      merged,
    ]);
    expect(diffTrees(merged, upper)).toEqual({ copied: [], whiteouts: [], bytes: 0 });
    expect(diffTrees(upper, merged)).toEqual({ copied: [], whiteouts: [], bytes: 0 });
  });
});
