import { mkdirSync, mkdtempSync, rmSync, symlinkSync, writeFileSync, linkSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { ext4InodeCount, ext4SizeMib, measureTree } from '../../../src/images/ext4.js';
import { guestPath } from '../../../src/images/guest-tree.js';
import { parseToolchainVersion, rootfsFileName } from '../../../src/images/rootfs.js';

let root: string;
beforeEach(() => {
  root = mkdtempSync(join(tmpdir(), 'runner-rootfs-'));
});
afterEach(() => {
  rmSync(root, { recursive: true, force: true });
});

describe('guestPath', () => {
  it('follows links as the guest would and never leaves the tree', () => {
    mkdirSync(join(root, 'usr/sbin'), { recursive: true });
    mkdirSync(join(root, 'etc'));
    symlinkSync('usr/sbin', join(root, 'sbin')); // merged /usr, relative
    symlinkSync('/usr/sbin', join(root, 'abs')); // absolute: relative to the tree, not the host
    symlinkSync('../../../../../..', join(root, 'etc/up'));
    expect(guestPath(root, '/sbin/runner-init')).toBe(join(root, 'usr/sbin/runner-init'));
    expect(guestPath(root, '/abs/x')).toBe(join(root, 'usr/sbin/x'));
    expect(guestPath(root, '/etc/up/etc/passwd')).toBe(join(root, 'etc/passwd'));
    expect(guestPath(root, '/../../etc/passwd')).toBe(join(root, 'etc/passwd'));
  });

  it('does not follow the last component (files are replaced, not written through)', () => {
    mkdirSync(join(root, 'etc'));
    symlinkSync('/etc/host-file', join(root, 'etc/resolv.conf'));
    expect(guestPath(root, '/etc/resolv.conf')).toBe(join(root, 'etc/resolv.conf'));
  });

  it('stops on link loops', () => {
    symlinkSync('b', join(root, 'a'));
    symlinkSync('a', join(root, 'b'));
    expect(() => guestPath(root, '/a/x')).toThrow(/too many symlinks/);
  });
});

describe('parseToolchainVersion', () => {
  it.each([
    ['Python 3.11.2\n', '3.11.2'],
    ['go version go1.19.8 linux/amd64\n', '1.19.8'],
    ['GNU bash, version 5.2.15(1)-release (x86_64-pc-linux-gnu)\n', '5.2.15'],
    ['v18.20.4\n', '18.20.4'],
    ['javac 17.0.21\n', '17.0.21'],
    ['PHP 8.2.36 (cli) (built: ...)\nCopyright (c) The PHP Group\n', '8.2.36'],
    ['Version 4.8.4\n', '4.8.4'],
    ['rustc 1.63.0\n', '1.63.0'],
    ['ruby 3.1.2p20 (2022-04-12 revision 4491bb740a) [x86_64-linux-gnu]\n', '3.1.2'],
    ['weird\n', 'weird'],
    ['', 'unknown'],
  ])('%j -> %s', (output, version) => {
    expect(parseToolchainVersion(output)).toBe(version);
  });
});

describe('ext4 sizing', () => {
  it('counts blocks and inodes, hard links once', () => {
    mkdirSync(join(root, 'd'));
    writeFileSync(join(root, 'd/a'), Buffer.alloc(5000));
    linkSync(join(root, 'd/a'), join(root, 'd/b'));
    writeFileSync(join(root, 'c'), '');
    symlinkSync('x'.repeat(100), join(root, 'long'));
    symlinkSync('short', join(root, 'short'));
    const usage = measureTree(root);
    // root + d + a(=b) + c + long + short
    expect(usage.inodes).toBe(6);
    expect(usage.bytes).toBe(4096 /* d */ + 8192 /* a */ + 4096 /* long link */);
  });

  it('leaves room for metadata', () => {
    const usage = { bytes: 200 * 1024 * 1024, inodes: 5000 };
    expect(ext4InodeCount(usage)).toBeGreaterThan(5000);
    expect(ext4SizeMib(usage)).toBeGreaterThan(200);
    expect(ext4SizeMib(usage)).toBeLessThan(260);
  });

  it('names the image file after the language', () => {
    expect(rootfsFileName('c++')).toBe('rootfs-c++.ext4');
  });
});
