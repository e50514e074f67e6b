import { describe, expect, it } from 'vitest';
import { parseFind, sandboxPath } from '../../../src/sandbox/files.js';

describe('sandbox paths', () => {
  it('takes paths under the sandbox folder, absolute or relative', () => {
    expect(sandboxPath('a.txt')).toBe('/home/user/a.txt');
    expect(sandboxPath('/home/user/d/e.txt')).toBe('/home/user/d/e.txt');
    expect(sandboxPath('d/')).toBe('/home/user/d');
    expect(sandboxPath('/home/user', { root: true })).toBe('/home/user');
    expect(sandboxPath('', { root: true })).toBe('/home/user');
  });

  it('refuses paths outside it, with FILE_NAME_INVALID', () => {
    for (const bad of [
      '/etc/passwd',
      '../x',
      'a/../../b',
      '/home/userx/a',
      'a\0b',
      './a',
      '/home/user/a//b',
    ]) {
      expect(() => sandboxPath(bad), bad).toThrow(
        expect.objectContaining({ code: 'FILE_NAME_INVALID' }),
      );
    }
    expect(() => sandboxPath('/home/user')).toThrow(
      expect.objectContaining({ code: 'FILE_NAME_INVALID' }),
    );
  });
});

describe("find's entries", () => {
  it('parses type, size, mode, time, path and link target', () => {
    const out = Buffer.from(
      'f\t5\t644\t1700000000.5\t/home/user/a.txt\t\0d\t4096\t755\t1700000001.0\t/home/user/d\t\0' +
        'l\t4\t777\t1700000002.0\t/home/user/ln\t/etc/hosts\0',
    );
    const entries = parseFind(out);
    expect(entries).toEqual([
      {
        name: 'a.txt',
        path: '/home/user/a.txt',
        type: 'file',
        size: 5,
        mode: 0o644,
        modifiedAt: '2023-11-14T22:13:20.500Z',
      },
      {
        name: 'd',
        path: '/home/user/d',
        type: 'dir',
        size: 4096,
        mode: 0o755,
        modifiedAt: '2023-11-14T22:13:21.000Z',
      },
      {
        name: 'ln',
        path: '/home/user/ln',
        type: 'symlink',
        size: 4,
        mode: 0o777,
        modifiedAt: '2023-11-14T22:13:22.000Z',
        target: '/etc/hosts',
      },
    ]);
  });

  it('keeps tabs in a link target', () => {
    const [e] = parseFind(Buffer.from('l\t3\t777\t0\t/home/user/x\ta\tb\0'));
    expect(e?.target).toBe('a\tb');
  });
});
