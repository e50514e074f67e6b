import {
  existsSync,
  mkdirSync,
  mkdtempSync,
  readdirSync,
  readFileSync,
  rmSync,
  writeFileSync,
} from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { hasCode } from '../../../src/errors.js';
import { sha256Hex } from '../../../src/images/identity.js';
import type { ImageManifest } from '../../../src/images/manifest.js';
import { ImageStore, writeManifest, type ImageKind } from '../../../src/images/store.js';

let root: string;
let store: ImageStore;

beforeEach(() => {
  root = mkdtempSync(join(tmpdir(), 'runner-store-'));
  store = new ImageStore(root);
});
afterEach(() => {
  rmSync(root, { recursive: true, force: true });
});

interface FakeImage {
  kind?: ImageKind;
  id: string;
  language: string | null;
  builtAt?: string;
  files?: Record<string, string>;
  inputs?: ImageManifest['inputs'];
}

/** A small image folder written the way the builder writes one. */
async function fakeImage(spec: FakeImage): Promise<string> {
  const kind = spec.kind ?? 'rootfs';
  const dir = join(root, kind, spec.id);
  mkdirSync(dir, { recursive: true });
  const files = spec.files ?? { [`rootfs-${spec.language ?? 'x'}.ext4`]: `bytes of ${spec.id}` };
  for (const [name, content] of Object.entries(files)) writeFileSync(join(dir, name), content);
  const manifest: ImageManifest = {
    schema: 1,
    kind,
    id: spec.id,
    language: spec.language,
    toolchainVersion: spec.language === null ? null : '1.0.0',
    kernelVersion: '6.1.0-test',
    agentVersion: kind === 'rootfs' ? '0.1.0' : null,
    debianSuite: 'bookworm',
    packages: [],
    files: Object.entries(files).map(([name, content]) => ({
      name,
      sizeBytes: Buffer.byteLength(content),
      sha256: sha256Hex(content),
    })),
    totalSizeBytes: Object.values(files).reduce((n, c) => n + Buffer.byteLength(c), 0),
    buildSeconds: 1,
    builtAt: spec.builtAt ?? '2026-01-01T00:00:00.000Z',
    ...(spec.inputs !== undefined && { inputs: spec.inputs }),
  };
  await writeManifest(dir, manifest);
  return dir;
}

/** A python layer built at that time. */
function pythonLayer(id: string, builtAt: string): Promise<string> {
  return fakeImage({ id, language: 'python', builtAt });
}

async function codeOf(promise: Promise<unknown>): Promise<string | undefined> {
  try {
    await promise;
  } catch (err) {
    return hasCode(err, 'IMAGE_NOT_FOUND')
      ? 'IMAGE_NOT_FOUND'
      : hasCode(err, 'IMAGE_CORRUPT')
        ? 'IMAGE_CORRUPT'
        : String(err);
  }
  return undefined;
}

describe('ImageStore', () => {
  it('lists images of every kind, sorted, and skips work-in-progress folders', async () => {
    await fakeImage({ id: 'python-aaaaaaaaaaaa', language: 'python' });
    await fakeImage({ id: 'c-bbbbbbbbbbbb', language: 'c' });
    await fakeImage({
      kind: 'kernel',
      id: 'kernel-cccccccccccc',
      language: null,
      files: { vmlinux: 'k' },
    });
    mkdirSync(join(root, 'rootfs', '.tmp-python-dddddddddddd-x'), { recursive: true });
    writeFileSync(join(root, 'rootfs', '.part-python-x'), 'partial');
    expect((await store.list()).map((i) => `${i.manifest.kind}/${i.manifest.id}`)).toEqual([
      'kernel/kernel-cccccccccccc',
      'rootfs/c-bbbbbbbbbbbb',
      'rootfs/python-aaaaaaaaaaaa',
    ]);
    expect((await store.list('kernel')).length).toBe(1);
  });

  it('lists an empty or missing store as empty', async () => {
    expect(await new ImageStore(join(root, 'nothing')).list()).toEqual([]);
  });

  it('reports folders with a bad manifest as broken, not as images', async () => {
    const dir = await fakeImage({ id: 'go-eeeeeeeeeeee', language: 'go' });
    writeFileSync(join(dir, 'manifest.json'), '{"schema": 1');
    await fakeImage({ id: 'ruby-ffffffffffff', language: 'ruby' });
    mkdirSync(join(root, 'rootfs', 'rust-111111111111'));
    writeFileSync(
      join(root, 'rootfs', 'rust-111111111111', 'manifest.json'),
      JSON.stringify({ schema: 1, kind: 'rootfs', id: 'other-222222222222' }),
    );
    const { images, broken } = await store.scan();
    expect(images.map((i) => i.manifest.id)).toEqual(['ruby-ffffffffffff']);
    expect(broken.map((b) => b.dir).sort()).toEqual([
      dir,
      join(root, 'rootfs', 'rust-111111111111'),
    ]);
  });

  it('inspects by id, and says IMAGE_NOT_FOUND for unknown or malformed ids', async () => {
    const dir = await fakeImage({ id: 'python-aaaaaaaaaaaa', language: 'python' });
    const image = await store.inspect('python-aaaaaaaaaaaa');
    expect(image.dir).toBe(dir);
    expect(image.manifest.language).toBe('python');
    expect(store.filePath(image, 'rootfs-python.ext4')).toBe(join(dir, 'rootfs-python.ext4'));
    expect(await codeOf(store.inspect('python-000000000000'))).toBe('IMAGE_NOT_FOUND');
    expect(await codeOf(store.inspect('../rootfs/python-aaaaaaaaaaaa'))).toBe('IMAGE_NOT_FOUND');
    expect(await codeOf(store.inspect('python-aaaaaaaaaaaa', 'kernel'))).toBe('IMAGE_NOT_FOUND');
  });

  it('prefers the image the last build selected over a newer build of the same line', async () => {
    const tree = 'ab'.repeat(32);
    const otherTree = 'cd'.repeat(32);
    const base = (id: string, builtAt: string, baseTreeKey = tree) =>
      fakeImage({ kind: 'base', id, language: null, builtAt, inputs: { baseTreeKey } });
    await base('base-aaaaaaaaaaaa', '2026-01-01T00:00:00Z');
    await base('base-bbbbbbbbbbbb', '2026-02-01T00:00:00Z');
    await base('base-cccccccccccc', '2026-03-01T00:00:00Z', otherTree);
    const ofTree = async (key: string) =>
      (await store.list('base')).filter((b) => b.manifest.inputs?.baseTreeKey === key);
    // Nothing selected: the newest of the tree.
    expect((await store.preferred(await ofTree(tree)))?.manifest.id).toBe('base-bbbbbbbbbbbb');
    // The older one selected (a build from older sources found it): it wins.
    const older = await store.find('base-aaaaaaaaaaaa', 'base');
    if (older === undefined) throw new Error('no base-aaaaaaaaaaaa');
    await store.select(older);
    expect((await store.preferred(await ofTree(tree)))?.manifest.id).toBe('base-aaaaaaaaaaaa');
    // Another tree's selection is its own.
    expect((await store.preferred(await ofTree(otherTree)))?.manifest.id).toBe('base-cccccccccccc');
    // A selected image that is gone falls back to the newest.
    rmSync(join(root, 'base', 'base-aaaaaaaaaaaa'), { recursive: true });
    expect((await store.preferred(await ofTree(tree)))?.manifest.id).toBe('base-bbbbbbbbbbbb');

    // Layers: by language.
    await pythonLayer('python-aaaaaaaaaaaa', '2026-01-01T00:00:00Z');
    await pythonLayer('python-bbbbbbbbbbbb', '2026-02-01T00:00:00Z');
    expect((await store.latest('rootfs', 'python'))?.manifest.id).toBe('python-bbbbbbbbbbbb');
    const layer = await store.find('python-aaaaaaaaaaaa', 'rootfs');
    if (layer === undefined) throw new Error('no python-aaaaaaaaaaaa');
    await store.select(layer);
    expect((await store.latest('rootfs', 'python'))?.manifest.id).toBe('python-aaaaaaaaaaaa');
    // The selection files are not images.
    expect((await store.scan()).broken).toEqual([]);
  });

  it('resolves the newest image of a kind for a language', async () => {
    await pythonLayer('python-aaaaaaaaaaaa', '2026-01-01T00:00:00Z');
    await pythonLayer('python-bbbbbbbbbbbb', '2026-03-01T00:00:00Z');
    await pythonLayer('python-cccccccccccc', '2026-02-01T00:00:00Z');
    await fakeImage({
      kind: 'kernel',
      id: 'kernel-dddddddddddd',
      language: null,
      files: { vmlinux: 'k' },
    });
    expect((await store.latest('rootfs', 'python'))?.manifest.id).toBe('python-bbbbbbbbbbbb');
    expect((await store.latest('kernel', null))?.manifest.id).toBe('kernel-dddddddddddd');
    expect(await store.latest('rootfs', 'ruby')).toBeUndefined();
    expect(await codeOf(store.resolve('rootfs', 'ruby'))).toBe('IMAGE_NOT_FOUND');
    await expect(store.resolve('rootfs', 'ruby')).rejects.toThrow(/runner images build ruby/);
  });

  it('removes an image completely', async () => {
    await fakeImage({ id: 'python-aaaaaaaaaaaa', language: 'python' });
    await store.remove('python-aaaaaaaaaaaa');
    expect(await store.list()).toEqual([]);
    expect(readdirSync(join(root, 'rootfs'))).toEqual([]);
    expect(await codeOf(store.remove('python-aaaaaaaaaaaa'))).toBe('IMAGE_NOT_FOUND');
  });

  it('verifies a sound image', async () => {
    await fakeImage({
      id: 'c-aaaaaaaaaaaa',
      language: 'c',
      files: { 'rootfs-c.ext4': 'abc', extra: 'x' },
    });
    expect(await store.verify('c-aaaaaaaaaaaa')).toEqual({
      kind: 'rootfs',
      id: 'c-aaaaaaaaaaaa',
      ok: true,
      checkedFiles: 2,
      problems: [],
    });
  });

  it('detects a corrupted file of the same size, a truncated one, a missing one and an unlisted one', async () => {
    const dir = await fakeImage({
      id: 'c-aaaaaaaaaaaa',
      language: 'c',
      files: { 'rootfs-c.ext4': 'the image bytes', b: 'bbbb', c: 'cccc' },
    });
    writeFileSync(join(dir, 'rootfs-c.ext4'), 'the image byteZ'); // one byte flipped
    writeFileSync(join(dir, 'b'), 'bb');
    rmSync(join(dir, 'c'));
    writeFileSync(join(dir, 'stray'), 'x');
    const report = await store.verify('c-aaaaaaaaaaaa');
    expect(report.ok).toBe(false);
    expect(report.problems.map((p) => `${p.file}:${p.problem}`)).toEqual([
      'rootfs-c.ext4:sha256',
      'b:size',
      'c:missing',
      'stray:unlisted',
    ]);
    expect(report.problems[0]).toMatchObject({
      expected: sha256Hex('the image bytes'),
      actual: sha256Hex('the image byteZ'),
    });
  });

  it('rejects a manifest whose file names would escape the image folder', async () => {
    const dir = await fakeImage({ id: 'c-aaaaaaaaaaaa', language: 'c' });
    const manifest = JSON.parse(readFileSync(join(dir, 'manifest.json'), 'utf8')) as ImageManifest;
    manifest.files = manifest.files.map((f) => ({ ...f, name: '..' }));
    writeFileSync(join(dir, 'manifest.json'), JSON.stringify(manifest));
    expect(await codeOf(store.inspect('c-aaaaaaaaaaaa'))).toBe('IMAGE_CORRUPT');
  });

  it('commits a staging folder by rename, keeping an existing image unless replace', async () => {
    const make = async (content: string): Promise<string> => {
      const staging = await store.createStaging('rootfs', 'bash-aaaaaaaaaaaa');
      expect(staging.startsWith(join(root, 'rootfs', '.tmp-'))).toBe(true);
      writeFileSync(join(staging, 'rootfs-bash.ext4'), content);
      await writeManifest(staging, {
        schema: 1,
        kind: 'rootfs',
        id: 'bash-aaaaaaaaaaaa',
        language: 'bash',
        toolchainVersion: '5.2.15',
        kernelVersion: 'none',
        agentVersion: '0.1.0',
        debianSuite: 'bookworm',
        packages: ['bash'],
        files: [
          { name: 'rootfs-bash.ext4', sizeBytes: content.length, sha256: sha256Hex(content) },
        ],
        totalSizeBytes: content.length,
        buildSeconds: 0,
        builtAt: new Date().toISOString(),
      });
      return staging;
    };
    const first = await make('one');
    const stored = await store.commit(first);
    expect(existsSync(first)).toBe(false);
    expect(stored.dir).toBe(join(root, 'rootfs', 'bash-aaaaaaaaaaaa'));
    const second = await make('two');
    await store.commit(second);
    expect(existsSync(second)).toBe(false);
    expect((await store.inspect('bash-aaaaaaaaaaaa')).manifest.files[0]?.sha256).toBe(
      sha256Hex('one'),
    );
    await store.commit(await make('new'), { replace: true });
    expect((await store.inspect('bash-aaaaaaaaaaaa')).manifest.files[0]?.sha256).toBe(
      sha256Hex('new'),
    );
    expect((await store.verify('bash-aaaaaaaaaaaa')).ok).toBe(true);
    expect(readdirSync(join(root, 'rootfs'))).toEqual(['bash-aaaaaaaaaaaa']);
  });

  it('refuses to commit a staging folder whose files do not match the manifest sizes', async () => {
    const staging = await store.createStaging('rootfs', 'bash-aaaaaaaaaaaa');
    writeFileSync(join(staging, 'rootfs-bash.ext4'), 'short');
    await writeManifest(staging, {
      schema: 1,
      kind: 'rootfs',
      id: 'bash-aaaaaaaaaaaa',
      language: 'bash',
      toolchainVersion: null,
      kernelVersion: 'none',
      agentVersion: null,
      debianSuite: 'bookworm',
      packages: [],
      files: [{ name: 'rootfs-bash.ext4', sizeBytes: 999, sha256: sha256Hex('x') }],
      totalSizeBytes: 999,
      buildSeconds: 0,
      builtAt: new Date().toISOString(),
    });
    expect(await codeOf(store.commit(staging))).toBe('IMAGE_CORRUPT');
  });
});
