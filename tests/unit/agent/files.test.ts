import {
  lchown,
  link,
  lstat,
  mkdir,
  mkdtemp,
  readdir,
  readFile,
  rm,
  stat,
  symlink,
  writeFile,
} from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import {
  copyWorkDir,
  createWorkDir,
  removeWorkDir,
  wipeScratch,
  writeJobFiles,
} from '../../../src/agent/index.js';
import { hasCode } from '../../../src/errors.js';
import { checkFileName, type JobFile } from '../../../src/protocol/index.js';
import { freeOwner, isRoot } from './helpers.js';

const utf8 = (name: string, content = 'x'): JobFile => ({ name, content, encoding: 'utf8' });

async function rejects(
  p: Promise<unknown>,
  code: 'FILE_NAME_INVALID' | 'FILE_WRITE_FAILED' | 'ENCODING_INVALID',
) {
  const err = await p.then(
    () => null,
    (e: unknown) => e,
  );
  expect(hasCode(err, code), `expected ${code}, got ${String(err)}`).toBe(true);
}

describe('checkFileName', () => {
  it.each(['main.py', 'src/lib/util.c', 'a b/ü-ñ.txt', '.hidden', '..dots', 'x'.repeat(255)])(
    'accepts %j',
    (name) => {
      expect(checkFileName(name)).toEqual(name.split('/'));
    },
  );

  it.each([
    ['empty', ''],
    ['absolute', '/etc/passwd'],
    ['parent', '../x'],
    ['inner parent', 'a/../../b'],
    ['trailing parent', 'a/..'],
    ['dot component', './a'],
    ['inner dot', 'a/./b'],
    ['double slash', 'a//b'],
    ['trailing slash', 'a/'],
    ['NUL byte', 'a\0b'],
    ['component over 255 bytes', 'x'.repeat(256)],
    ['multibyte component over 255 bytes', 'é'.repeat(128)],
    ['path over 4096 bytes', Array.from({ length: 17 }, () => 'y'.repeat(250)).join('/')],
    ['too deep', Array.from({ length: 17 }, () => 'd').join('/')],
  ])('rejects %s', (_why, name) => {
    let err: unknown;
    try {
      checkFileName(name);
    } catch (e) {
      err = e;
    }
    expect(hasCode(err, 'FILE_NAME_INVALID')).toBe(true);
  });
});

describe('copyWorkDir and wipeScratch', () => {
  let base: string;
  beforeEach(async () => {
    base = await mkdtemp(join(tmpdir(), 'runner-copy-test-'));
  });
  afterEach(async () => {
    await rm(base, { recursive: true, force: true });
  });

  it('copies files, folders and links (as links) with their modes', async () => {
    const from = join(base, 'from');
    await mkdir(join(from, 'sub'), { recursive: true });
    await writeFile(join(from, 'main'), 'bin', { mode: 0o755 });
    await writeFile(join(from, 'sub', 'data'), 'd', { mode: 0o600 });
    await symlink('/etc/passwd', join(from, 'link'));
    await copyWorkDir(from, join(base, 'to'), null);
    expect((await readdir(join(base, 'to'))).sort()).toEqual(['link', 'main', 'sub']);
    expect((await stat(join(base, 'to', 'main'))).mode & 0o777).toBe(0o755);
    expect((await stat(join(base, 'to', 'sub', 'data'))).mode & 0o777).toBe(0o600);
    expect(await readFile(join(base, 'to', 'sub', 'data'), 'utf8')).toBe('d');
    expect((await lstat(join(base, 'to', 'link'))).isSymbolicLink()).toBe(true);
  });

  it.runIf(isRoot)(
    "hands the copy to the job user, and wipes only that user's scratch",
    async () => {
      const owner = await freeOwner(43_000, 50);
      const from = join(base, 'from');
      await mkdir(from);
      await writeFile(join(from, 'main'), 'x');
      await copyWorkDir(from, join(base, 'to'), owner);
      expect((await stat(join(base, 'to'))).uid).toBe(owner.uid);
      expect((await stat(join(base, 'to', 'main'))).uid).toBe(owner.uid);

      const scratch = join(base, 'scratch');
      await mkdir(join(scratch, 'left', 'deep'), { recursive: true });
      await writeFile(join(scratch, 'left', 'deep', 'f'), 'x');
      await writeFile(join(scratch, 'rootfile'), 'keep');
      await lchown(join(scratch, 'left'), owner.uid, owner.gid);
      expect(await wipeScratch([scratch, join(base, 'missing')], owner)).toBe(1);
      expect(await readdir(scratch)).toEqual(['rootfile']);
    },
  );
});

describe('writeJobFiles', () => {
  let base: string;
  let work: string;
  let outside: string;

  beforeEach(async () => {
    base = await mkdtemp(join(tmpdir(), 'runner-files-test-'));
    work = join(base, 'work');
    outside = join(base, 'outside');
    await mkdir(work);
    await mkdir(outside);
  });
  afterEach(async () => {
    await rm(base, { recursive: true, force: true });
  });

  it('writes nested files byte-exact, utf8 and base64', async () => {
    const binary = Buffer.from([0, 1, 2, 255, 254, 0, 10, 13]);
    await writeJobFiles(
      work,
      [
        utf8('main.py', 'print("héllo")\n'),
        { name: 'data/bin/blob.dat', content: binary.toString('base64'), encoding: 'base64' },
        utf8('data/notes.txt', 'n'),
      ],
      null,
    );
    expect(await readFile(join(work, 'main.py'), 'utf8')).toBe('print("héllo")\n');
    expect(await readFile(join(work, 'data/bin/blob.dat'))).toEqual(binary);
    expect(await readFile(join(work, 'data/notes.txt'), 'utf8')).toBe('n');
    expect((await stat(join(work, 'main.py'))).mode & 0o777).toBe(0o644);
    expect((await stat(join(work, 'data/bin'))).mode & 0o777).toBe(0o755);
  });

  it('writes nothing when any name is invalid', async () => {
    await rejects(
      writeJobFiles(work, [utf8('ok.txt'), utf8('../escape.txt')], null),
      'FILE_NAME_INVALID',
    );
    expect(await readdir(work)).toEqual([]);
    expect(await readdir(base)).toEqual(['outside', 'work']);
  });

  it('rejects malformed base64 content', async () => {
    await rejects(
      writeJobFiles(work, [{ name: 'a', content: 'not base64!', encoding: 'base64' }], null),
      'ENCODING_INVALID',
    );
  });

  it('refuses a name given twice before writing anything', async () => {
    await rejects(
      writeJobFiles(work, [utf8('a.txt', '1'), utf8('a.txt', '2')], null),
      'FILE_NAME_INVALID',
    );
    expect(await readdir(work)).toEqual([]);
  });

  it('refuses a name that is both a file and a folder', async () => {
    await rejects(writeJobFiles(work, [utf8('a'), utf8('a/b')], null), 'FILE_NAME_INVALID');
  });

  it('never writes through a planted symlink to a file in a subfolder', async () => {
    const victim = join(outside, 'victim.txt');
    await writeFile(victim, 'original');
    await mkdir(join(work, 'sub'));
    await symlink(victim, join(work, 'sub', 'target.txt'));
    await rejects(
      writeJobFiles(work, [utf8('sub/target.txt', 'pwned')], null),
      'FILE_NAME_INVALID',
    );
    expect(await readFile(victim, 'utf8')).toBe('original');
  });

  it('never creates a file through a dangling symlink', async () => {
    await mkdir(join(work, 'sub'));
    await symlink(join(outside, 'created.txt'), join(work, 'sub', 'new.txt'));
    await rejects(writeJobFiles(work, [utf8('sub/new.txt', 'pwned')], null), 'FILE_NAME_INVALID');
    expect(await readdir(outside)).toEqual([]);
  });

  it('never writes through a planted hardlink', async () => {
    const victim = join(outside, 'victim.txt');
    await writeFile(victim, 'original');
    await mkdir(join(work, 'sub'));
    await link(victim, join(work, 'sub', 'h.txt'));
    await rejects(writeJobFiles(work, [utf8('sub/h.txt', 'pwned')], null), 'FILE_NAME_INVALID');
    expect(await readFile(victim, 'utf8')).toBe('original');
  });

  it('never follows a folder replaced by a symlink', async () => {
    await symlink(outside, join(work, 'sub'));
    await rejects(
      writeJobFiles(work, [utf8('sub/deeper/x.txt', 'pwned')], null),
      'FILE_WRITE_FAILED',
    );
    await rejects(writeJobFiles(work, [utf8('sub/x.txt', 'pwned')], null), 'FILE_WRITE_FAILED');
    expect(await readdir(outside)).toEqual([]);
  });

  it.skipIf(!isRoot)('hands files and folders to the owner', async () => {
    const owner = await freeOwner(60000, 100);
    await writeJobFiles(work, [utf8('d/f.txt')], owner);
    for (const p of ['d', 'd/f.txt']) {
      const st = await stat(join(work, p));
      expect([st.uid, st.gid]).toEqual([owner.uid, owner.gid]);
    }
  });
});

describe('work dirs', () => {
  let base: string;
  beforeEach(async () => {
    base = await mkdtemp(join(tmpdir(), 'runner-workdir-test-'));
  });
  afterEach(async () => {
    await rm(base, { recursive: true, force: true });
  });

  it('makes a fresh private dir per job under a created root', async () => {
    const root = join(base, 'jobs');
    const a = await createWorkDir(root, null);
    const b = await createWorkDir(root, null);
    expect(a).not.toBe(b);
    expect((await stat(a)).mode & 0o777).toBe(0o700);
    expect((await stat(root)).mode & 0o777).toBe(0o711);
  });

  it.skipIf(!isRoot)('hands the work dir to the run user', async () => {
    const owner = await freeOwner(60100, 100);
    const dir = await createWorkDir(join(base, 'jobs'), owner);
    const st = await stat(dir);
    expect([st.uid, st.gid, st.mode & 0o777]).toEqual([owner.uid, owner.gid, 0o700]);
  });

  it('refuses a work root that is a symlink', async () => {
    await mkdir(join(base, 'real'));
    await symlink(join(base, 'real'), join(base, 'link'));
    await expect(createWorkDir(join(base, 'link'), null)).rejects.toThrow(/not a directory/);
  });

  it('removes a work dir without following links inside it', async () => {
    const outside = join(base, 'outside');
    await mkdir(outside);
    await writeFile(join(outside, 'keep.txt'), 'keep');
    const dir = await createWorkDir(join(base, 'jobs'), null);
    await mkdir(join(dir, 'a/b'), { recursive: true });
    await symlink(outside, join(dir, 'a/b/to-outside'));
    await symlink(join(outside, 'keep.txt'), join(dir, 'file-link'));
    await removeWorkDir(dir);
    await expect(lstat(dir)).rejects.toThrow();
    expect(await readFile(join(outside, 'keep.txt'), 'utf8')).toBe('keep');
  });
});
