import { spawnSync } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { mkdir, mkdtemp, readFile, readdir, rm, writeFile } from 'node:fs/promises';
import { hostname, tmpdir } from 'node:os';
import { join } from 'node:path';
import { PassThrough } from 'node:stream';
import { PutObjectCommand, S3Client } from '@aws-sdk/client-s3';
import { afterAll, afterEach, beforeAll, beforeEach, describe, expect, it, vi } from 'vitest';
import { loadSettings, type Settings } from '../../../src/config/settings.js';
import { hasCode } from '../../../src/errors.js';
import { acquireLock } from '../../../src/images/lockfile.js';
import type { ImageManifest, ManifestFile } from '../../../src/images/manifest.js';
import {
  partialFilePath,
  remoteStoreConfig,
  remoteStoreConfigFromSettings,
  renderTransferProgress,
  RemoteImageStore,
  type ImageKind,
  type TransferProgress,
} from '../../../src/images/remote.js';
import { createS3Client } from '../../../src/images/s3.js';
import { startS3, type S3Fixture } from '../../support/s3.js';
import { pathOf, TcpProxy } from '../../support/tcp-proxy.js';

const MIB = 1024 * 1024;

let s3: S3Fixture;
let work: string;
/** Things a test made (stores, proxies, clients); closed after each test. */
const owned: { close(): unknown }[] = [];

beforeAll(async () => {
  s3 = await startS3();
  work = await mkdtemp(join(tmpdir(), 'runner-remote-test-'));
});

afterEach(async () => {
  for (const thing of owned.splice(0).reverse()) await thing.close();
});

afterAll(async () => {
  try {
    await s3.close();
  } finally {
    await rm(work, { recursive: true, force: true });
  }
});

/** A store on s3rver, directly or through `endpoint` (a proxy); fast retries for tests. */
function makeStore(endpoint = s3.endpoint): RemoteImageStore {
  const store = new RemoteImageStore(
    remoteStoreConfig({
      bucket: s3.bucket,
      prefix: 'test/images',
      endpoint,
      accessKeyId: s3.accessKeyId,
      secretAccessKey: s3.secretAccessKey,
      partSizeMib: 5,
    }),
    { retry: { baseDelayMs: 10, maxDelayMs: 50 }, lock: { pollMs: 20 } },
  );
  owned.push(store);
  return store;
}

async function makeProxy(): Promise<TcpProxy> {
  const proxy = await TcpProxy.start(s3.port);
  owned.push(proxy);
  return proxy;
}

let counter = 0;
/** A fresh folder under the test's work dir. */
async function freshDir(name: string): Promise<string> {
  counter++;
  const dir = join(work, `${name}-${counter}`);
  await mkdir(dir, { recursive: true });
  return dir;
}

interface LocalImage {
  readonly kind: ImageKind;
  readonly id: string;
  readonly dir: string;
  readonly manifest: ImageManifest;
  readonly contents: ReadonlyMap<string, Buffer>;
}

/** A local image folder of random files (`[name, bytes]`), with its manifest. */
async function makeImage(
  kind: ImageKind,
  files: readonly (readonly [string, number])[],
  name = 'test',
): Promise<LocalImage> {
  counter++;
  const unique = createHash('sha256').update(`${counter}-${Date.now()}-${Math.random()}`);
  const id = `${name}-${unique.digest('hex').slice(0, 16)}`;
  const dir = join(await freshDir('local'), kind, id);
  await mkdir(dir, { recursive: true });
  const contents = new Map<string, Buffer>();
  for (const [name, size] of files) {
    const bytes = randomBytes(size);
    contents.set(name, bytes);
    await writeFile(join(dir, name), bytes);
  }
  const manifest: ImageManifest = {
    schema: 1,
    kind,
    id,
    language: kind === 'rootfs' ? 'python' : null,
    toolchainVersion: kind === 'rootfs' ? '3.11' : null,
    kernelVersion: '6.1.0-test',
    agentVersion: kind === 'rootfs' ? '0.1.0' : null,
    debianSuite: 'bookworm',
    packages: [],
    files: files.map(([name]) => {
      const bytes = contents.get(name) ?? Buffer.alloc(0);
      return {
        name,
        sizeBytes: bytes.length,
        sha256: createHash('sha256').update(bytes).digest('hex'),
      };
    }),
    totalSizeBytes: [...contents.values()].reduce((sum, b) => sum + b.length, 0),
    buildSeconds: 1,
    builtAt: new Date().toISOString(),
  };
  await writeFile(join(dir, 'manifest.json'), `${JSON.stringify(manifest, null, 2)}\n`);
  return { kind, id, dir, manifest, contents };
}

function firstFile(image: LocalImage): ManifestFile {
  const file = image.manifest.files[0];
  if (file === undefined) throw new Error('image without files');
  return file;
}

function contentOf(image: LocalImage, name: string): Buffer {
  const bytes = image.contents.get(name);
  if (bytes === undefined) throw new Error(`no file ${name}`);
  return bytes;
}

/** Asserts the pulled folder holds exactly the image: its files byte for byte and its manifest. */
async function expectSameImage(image: LocalImage, dir: string): Promise<void> {
  expect((await readdir(dir)).sort()).toEqual(['manifest.json', ...image.contents.keys()].sort());
  for (const [name, bytes] of image.contents) {
    expect((await readFile(join(dir, name))).equals(bytes), name).toBe(true);
  }
  expect(await readFile(join(dir, 'manifest.json'), 'utf8')).toBe(
    await readFile(join(image.dir, 'manifest.json'), 'utf8'),
  );
}

/** Overwrites an object on the server behind the store's back. */
async function putRaw(key: string, body: Buffer): Promise<void> {
  const client: S3Client = createS3Client(
    remoteStoreConfig({
      bucket: s3.bucket,
      endpoint: s3.endpoint,
      accessKeyId: s3.accessKeyId,
      secretAccessKey: s3.secretAccessKey,
    }),
  );
  try {
    await client.send(new PutObjectCommand({ Bucket: s3.bucket, Key: key, Body: body }));
  } finally {
    client.destroy();
  }
}

/** Settings from these variables alone (no RUNNER_CONFIG file, a throwaway data dir). */
function settingsOf(env: NodeJS.ProcessEnv): Settings {
  return loadSettings({ RUNNER_DATA_DIR: join(work, 'data'), ...env });
}

describe('remoteStoreConfigFromSettings', () => {
  it('is null without a bucket', () => {
    expect(remoteStoreConfigFromSettings(settingsOf({ AWS_REGION: 'eu-west-1' }))).toBeNull();
  });

  it('reads the RUNNER_S3_* rows of the settings table and leaves AWS_* to the SDK', () => {
    const config = remoteStoreConfigFromSettings(
      settingsOf({
        RUNNER_S3_BUCKET: 'b',
        RUNNER_S3_PREFIX: '/a/b/',
        RUNNER_S3_ENDPOINT: 'http://127.0.0.1:9000',
        RUNNER_S3_REGION: 'eu-west-1',
        RUNNER_S3_ACCESS_KEY_ID: 'id',
        RUNNER_S3_SECRET_ACCESS_KEY: 'secret',
        RUNNER_S3_FORCE_PATH_STYLE: 'no',
        RUNNER_S3_PART_SIZE_MIB: '16',
      }),
    );
    expect(config).toMatchObject({
      bucket: 'b',
      prefix: 'a/b',
      endpoint: 'http://127.0.0.1:9000',
      region: 'eu-west-1',
      accessKeyId: 'id',
      secretAccessKey: 'secret',
      forcePathStyle: false,
      partSizeMib: 16,
    });
    expect(Object.isFrozen(config)).toBe(true);
    // The SDK reads these itself when the RUNNER_S3_* ones are unset; nothing is copied over.
    const sdk = remoteStoreConfigFromSettings(
      settingsOf({
        RUNNER_S3_BUCKET: 'b',
        AWS_ENDPOINT_URL: 'http://127.0.0.1:2',
        AWS_REGION: 'eu-west-1',
        AWS_ACCESS_KEY_ID: 'id',
        AWS_SECRET_ACCESS_KEY: 'secret',
      }),
    );
    expect(sdk).toMatchObject({
      prefix: 'images',
      endpoint: undefined,
      region: undefined,
      accessKeyId: undefined,
      secretAccessKey: undefined,
      forcePathStyle: true,
      partSizeMib: 8,
    });
  });

  it('rejects bad values with CONFIG_INVALID, at load or when the config is made', () => {
    for (const env of [
      { RUNNER_S3_BUCKET: 'b', RUNNER_S3_PART_SIZE_MIB: '2' },
      { RUNNER_S3_BUCKET: 'b', RUNNER_S3_ENDPOINT: 'not a url' },
      { RUNNER_S3_BUCKET: 'b', RUNNER_S3_ENDPOINT: 'ftp://127.0.0.1/' },
      { RUNNER_S3_BUCKET: 'b', RUNNER_S3_FORCE_PATH_STYLE: 'maybe' },
      { RUNNER_S3_BUCKET: 'b', RUNNER_S3_ACCESS_KEY_ID: 'only-the-id' },
    ]) {
      let caught: unknown;
      try {
        remoteStoreConfigFromSettings(settingsOf(env));
      } catch (err) {
        caught = err;
      }
      expect(hasCode(caught, 'CONFIG_INVALID'), JSON.stringify(env)).toBe(true);
    }
  });
});

describe('the AWS SDK reads the standard AWS_* variables itself', () => {
  beforeEach(() => {
    // Keep the machine's own AWS configuration out of the test.
    vi.stubEnv('AWS_CONFIG_FILE', join(work, 'no-aws-config'));
    vi.stubEnv('AWS_SHARED_CREDENTIALS_FILE', join(work, 'no-aws-credentials'));
    for (const name of ['AWS_PROFILE', 'AWS_REGION', 'AWS_DEFAULT_REGION', 'AWS_ENDPOINT_URL_S3'])
      vi.stubEnv(name, undefined);
  });
  afterEach(() => {
    vi.unstubAllEnvs();
  });

  it('signs with AWS_REGION, else us-east-1, when RUNNER_S3_REGION is unset', async () => {
    const config = remoteStoreConfigFromSettings(settingsOf({ RUNNER_S3_BUCKET: 'b' }));
    if (config === null) throw new Error('no config');
    const fallback = createS3Client(config);
    owned.push({ close: () => fallback.destroy() });
    expect(await fallback.config.region()).toBe('us-east-1');
    vi.stubEnv('AWS_REGION', 'eu-west-3');
    const fromEnv = createS3Client(config);
    owned.push({ close: () => fromEnv.destroy() });
    expect(await fromEnv.config.region()).toBe('eu-west-3');
  });

  it('reaches the server through AWS_ENDPOINT_URL and the AWS_* credentials', async () => {
    vi.stubEnv('AWS_ENDPOINT_URL', s3.endpoint);
    vi.stubEnv('AWS_ACCESS_KEY_ID', s3.accessKeyId);
    vi.stubEnv('AWS_SECRET_ACCESS_KEY', s3.secretAccessKey);
    const config = remoteStoreConfigFromSettings(settingsOf({ RUNNER_S3_BUCKET: s3.bucket }));
    if (config === null) throw new Error('no config');
    // Fast retries: pointed anywhere else (AWS itself, offline here) the list fails soon.
    const store = new RemoteImageStore(config, { retry: { baseDelayMs: 10, maxDelayMs: 50 } });
    owned.push(store);
    expect(await store.list()).toBeInstanceOf(Array);
  });
});

describe('RemoteImageStore on s3rver', () => {
  it('pushes and pulls an image byte for byte, multipart included', async () => {
    const proxy = await makeProxy();
    const store = makeStore(proxy.endpoint);
    const image = await makeImage('rootfs', [
      ['rootfs.ext4', 12 * MIB + 12345], // three 5 MiB parts
      ['vmlinux', 700_000],
      ['empty.bin', 0],
    ]);
    const pushEvents: TransferProgress[] = [];
    const pushed = await store.push(image.dir, { onProgress: (p) => pushEvents.push(p) });
    expect(pushed).toMatchObject({ kind: 'rootfs', id: image.id, uploaded: true });
    expect([...pushed.uploadedFiles].sort()).toEqual(['empty.bin', 'rootfs.ext4', 'vmlinux']);
    expect(
      pushEvents.some((e) => e.file === 'rootfs.ext4' && e.doneBytes === 12 * MIB + 12345),
    ).toBe(true);
    // The big file went up in parts, the manifest last of all.
    const puts = proxy.requests.filter((r) => r.method === 'PUT');
    expect(puts.filter((r) => r.path.includes('partNumber=')).length).toBe(3);
    expect(pathOf(puts[puts.length - 1] ?? { method: '', path: '', headers: {} })).toMatch(
      new RegExp(`/${image.id}/manifest\\.json$`),
    );

    const dest = await freshDir('dest');
    const pullEvents: TransferProgress[] = [];
    const pulled = await store.pull('rootfs', image.id, dest, {
      onProgress: (p) => pullEvents.push(p),
    });
    expect(pulled).toMatchObject({ kind: 'rootfs', id: image.id, downloaded: true });
    expect(pulled.dir).toBe(join(dest, 'rootfs', image.id));
    expect(pulled.transferredBytes).toBe(12 * MIB + 12345 + 700_000);
    expect(pulled.manifest).toEqual(image.manifest);
    await expectSameImage(image, pulled.dir);
    // Only the image folder is left: no partial files, staging folders or lock.
    expect(await readdir(join(dest, 'rootfs'))).toEqual([image.id]);
    for (const file of image.manifest.files) {
      const last = pullEvents.filter((e) => e.file === file.name).at(-1);
      expect(last, file.name).toMatchObject({ direction: 'pull', doneBytes: file.sizeBytes });
    }

    // A second pull finds it in place; a second push finds it in the store.
    expect(await store.pull('rootfs', image.id, dest)).toMatchObject({ downloaded: false });
    expect(await store.push(image.dir)).toMatchObject({ uploaded: false, uploadedFiles: [] });
    // A forced push skips files already there with the same sha256.
    expect(await store.push(image.dir, { force: true })).toMatchObject({
      uploaded: true,
      uploadedFiles: [],
      skippedFiles: ['rootfs.ext4', 'vmlinux', 'empty.bin'],
    });
  });

  it('round-trips ids and file names with + and #', async () => {
    const store = makeStore();
    const image = await makeImage(
      'rootfs',
      [
        ['rootfs-c++.ext4', 1000],
        ['c#.bin', 10],
      ],
      'c++',
    );
    await store.push(image.dir);
    expect(await store.has('rootfs', image.id)).toBe(true);
    expect(await store.list('rootfs')).toContainEqual({ kind: 'rootfs', id: image.id });
    const dest = await freshDir('dest');
    await expectSameImage(image, (await store.pull('rootfs', image.id, dest)).dir);
  });

  it('lists and finds images, ignoring a half-pushed one', async () => {
    const store = makeStore();
    const kernel = await makeImage('kernel', [['vmlinux', 1000]]);
    const rootfs = await makeImage('rootfs', [['rootfs.ext4', 2000]]);
    await store.push(kernel.dir);
    await store.push(rootfs.dir);
    // Files without a manifest: a push that broke off before its last step.
    const half = await makeImage('rootfs', [['rootfs.ext4', 100]]);
    await putRaw(store.key('rootfs', half.id, 'rootfs.ext4'), Buffer.alloc(100));

    const all = await store.list();
    expect(all).toContainEqual({ kind: 'kernel', id: kernel.id });
    expect(all).toContainEqual({ kind: 'rootfs', id: rootfs.id });
    expect(all.map((r) => r.id)).not.toContain(half.id);
    const kernels = await store.list('kernel');
    expect(kernels).toContainEqual({ kind: 'kernel', id: kernel.id });
    expect(kernels.every((r) => r.kind === 'kernel')).toBe(true);

    expect(await store.has('kernel', kernel.id)).toBe(true);
    expect(await store.has('rootfs', kernel.id)).toBe(false);
    expect(await store.has('rootfs', half.id)).toBe(false);
    expect(await store.has('rootfs', '../etc-000000000000')).toBe(false);
  });

  it('fails with IMAGE_NOT_FOUND for a missing image and leaves nothing behind', async () => {
    const store = makeStore();
    const dest = await freshDir('dest');
    const missing = 'nothing-0123456789abcdef';
    await expect(store.pull('rootfs', missing, dest)).rejects.toMatchObject({
      code: 'IMAGE_NOT_FOUND',
    });
    expect(await readdir(join(dest, 'rootfs'))).toEqual([]);
    await expect(store.pull('rootfs', '../../etc', dest)).rejects.toMatchObject({
      code: 'IMAGE_NOT_FOUND',
    });
  });

  it('fails with IMAGE_CORRUPT when the object does not match, after one refetch, leaving nothing', async () => {
    const proxy = await makeProxy();
    const store = makeStore(proxy.endpoint);
    const image = await makeImage('rootfs', [
      ['a.bin', 300_000],
      ['rootfs.ext4', 2 * MIB],
    ]);
    await store.push(image.dir);
    // Same size, other bytes: only the checksum can tell.
    await putRaw(store.key('rootfs', image.id, 'rootfs.ext4'), randomBytes(2 * MIB));

    const dest = await freshDir('dest');
    await expect(store.pull('rootfs', image.id, dest)).rejects.toMatchObject({
      code: 'IMAGE_CORRUPT',
    });
    expect(proxy.requestsFor(`/${image.id}/rootfs.ext4`)).toHaveLength(2);
    // No image folder, no staging folder, no partial files (not even the good a.bin), no lock.
    expect(await readdir(join(dest, 'rootfs'))).toEqual([]);
  });

  it('fails with IMAGE_CORRUPT when the object has another size', async () => {
    const store = makeStore();
    const image = await makeImage('kernel', [['vmlinux', 100_000]]);
    await store.push(image.dir);
    await putRaw(store.key('kernel', image.id, 'vmlinux'), randomBytes(99_999));
    const dest = await freshDir('dest');
    await expect(store.pull('kernel', image.id, dest)).rejects.toMatchObject({
      code: 'IMAGE_CORRUPT',
    });
    expect(await readdir(join(dest, 'kernel'))).toEqual([]);
  });

  it('resumes a download cut mid-body with a Range request', async () => {
    const proxy = await makeProxy();
    const store = makeStore(proxy.endpoint);
    const size = 6 * MIB + 17;
    const image = await makeImage('rootfs', [['rootfs.ext4', size]]);
    await store.push(image.dir);
    const key = `/${image.id}/rootfs.ext4`;
    const cutAfter = 2 * MIB + 333;
    proxy.cutRules.push({
      match: (r) => pathOf(r).endsWith(key),
      afterBodyBytes: cutAfter,
      times: 1,
    });

    const dest = await freshDir('dest');
    const pulled = await store.pull('rootfs', image.id, dest);
    await expectSameImage(image, pulled.dir);
    expect(proxy.cuts).toHaveLength(1);
    const gets = proxy.requestsFor(key);
    expect(gets).toHaveLength(2);
    expect(gets[0]?.headers.range).toBeUndefined();
    const range = /^bytes=(\d+)-$/.exec(gets[1]?.headers.range ?? '');
    expect(range, 'the retry asks for a range').not.toBeNull();
    const resumedAt = Number(range?.[1]);
    expect(resumedAt).toBeGreaterThan(0);
    expect(resumedAt).toBeLessThanOrEqual(cutAfter);
    // Only the missing part came over the wire the second time.
    expect(pulled.transferredBytes).toBe(size);
  });

  it('gives up with S3_TRANSFER_FAILED when every attempt is cut before any byte, keeping the partial', async () => {
    const proxy = await makeProxy();
    const store = makeStore(proxy.endpoint);
    const image = await makeImage('kernel', [['vmlinux', 1 * MIB]]);
    await store.push(image.dir);
    const key = `/${image.id}/vmlinux`;
    // The first cut lets some bytes through; then four cuts with no progress exhaust the retries.
    proxy.cutRules.push({
      match: (r) => pathOf(r).endsWith(key),
      afterBodyBytes: 100_000,
      times: 1,
    });
    const dest = await freshDir('dest');
    const first = store.pull('kernel', image.id, dest);
    // Switch to zero-byte cuts once the first cut happened.
    proxy.cutRules.push({ match: (r) => pathOf(r).endsWith(key), afterBodyBytes: 0, times: 100 });
    await expect(first).rejects.toMatchObject({ code: 'S3_TRANSFER_FAILED' });
    expect(proxy.requestsFor(key)).toHaveLength(4); // one cut after progress, three without
    const partial = partialFilePath(dest, 'kernel', image.id, firstFile(image));
    const kept = await readFile(partial);
    expect(kept.length).toBeGreaterThan(0);
    expect(kept.equals(contentOf(image, 'vmlinux').subarray(0, kept.length))).toBe(true);

    // The network heals: the next pull resumes from the kept partial file.
    proxy.cutRules.length = 0;
    const before = proxy.requestsFor(key).length;
    const pulled = await store.pull('kernel', image.id, dest);
    await expectSameImage(image, pulled.dir);
    const retry = proxy.requestsFor(key).slice(before);
    expect(retry).toHaveLength(1);
    expect(retry[0]?.headers.range).toBe(`bytes=${kept.length}-`);
    expect(await readdir(join(dest, 'kernel'))).toEqual([image.id]);
  });

  it('resumes a partial file left by an earlier process', async () => {
    const proxy = await makeProxy();
    const store = makeStore(proxy.endpoint);
    const size = 3 * MIB;
    const image = await makeImage('rootfs', [['rootfs.ext4', size]]);
    await store.push(image.dir);
    const dest = await freshDir('dest');
    await mkdir(join(dest, 'rootfs'));
    const have = 1 * MIB + 5;
    const partial = partialFilePath(dest, 'rootfs', image.id, firstFile(image));
    await writeFile(partial, contentOf(image, 'rootfs.ext4').subarray(0, have));
    // And a staging folder a crashed pull left behind.
    await mkdir(join(dest, 'rootfs', `.tmp-${image.id}-pulldeadbeef0000`));

    const pulled = await store.pull('rootfs', image.id, dest);
    await expectSameImage(image, pulled.dir);
    const gets = proxy.requestsFor(`/${image.id}/rootfs.ext4`);
    expect(gets.map((r) => r.headers.range)).toEqual([`bytes=${have}-`]);
    expect(pulled.transferredBytes).toBe(size - have);
    expect(await readdir(join(dest, 'rootfs'))).toEqual([image.id]);
  });

  it('discards a wrong partial file and downloads the file again', async () => {
    const store = makeStore();
    const image = await makeImage('kernel', [['vmlinux', 500_000]]);
    await store.push(image.dir);
    const dest = await freshDir('dest');
    await mkdir(join(dest, 'kernel'));
    const partial = partialFilePath(dest, 'kernel', image.id, firstFile(image));
    await writeFile(partial, randomBytes(200_000));
    const pulled = await store.pull('kernel', image.id, dest);
    await expectSameImage(image, pulled.dir);
  });

  it('downloads once for two concurrent pulls in one process', async () => {
    const proxy = await makeProxy();
    const store = makeStore(proxy.endpoint);
    const image = await makeImage('rootfs', [
      ['rootfs.ext4', 4 * MIB],
      ['vmlinux', 500_000],
    ]);
    await store.push(image.dir);
    const dest = await freshDir('dest');
    const seen: TransferProgress[][] = [[], []];
    const first = store.pull('rootfs', image.id, dest, { onProgress: (p) => seen[0]?.push(p) });
    const second = store.pull('rootfs', image.id, dest, { onProgress: (p) => seen[1]?.push(p) });
    expect(second).toBe(first);
    const [a, b] = await Promise.all([first, second]);
    expect(a).toBe(b);
    expect(a.downloaded).toBe(true);
    await expectSameImage(image, a.dir);
    expect(proxy.requestsFor(`/${image.id}/manifest.json`)).toHaveLength(1);
    expect(proxy.requestsFor(`/${image.id}/rootfs.ext4`)).toHaveLength(1);
    expect(proxy.requestsFor(`/${image.id}/vmlinux`)).toHaveLength(1);
    // Both callers saw the progress of the one download.
    expect(seen[1]?.at(-1)).toEqual(seen[0]?.at(-1));
  });

  it('downloads once for two stores (as two processes) sharing a destination', async () => {
    const proxy = await makeProxy();
    const one = makeStore(proxy.endpoint);
    const two = makeStore(proxy.endpoint);
    const image = await makeImage('rootfs', [['rootfs.ext4', 4 * MIB]]);
    await one.push(image.dir);
    const dest = await freshDir('dest');
    const [a, b] = await Promise.all([
      one.pull('rootfs', image.id, dest),
      two.pull('rootfs', image.id, dest),
    ]);
    expect([a.downloaded, b.downloaded].sort()).toEqual([false, true]);
    expect(a.dir).toBe(b.dir);
    await expectSameImage(image, a.dir);
    expect(proxy.requestsFor(`/${image.id}/rootfs.ext4`)).toHaveLength(1);
  });

  it('takes over a lock whose holder is dead', async () => {
    const store = makeStore();
    const image = await makeImage('kernel', [['vmlinux', 10_000]]);
    await store.push(image.dir);
    const dest = await freshDir('dest');
    await mkdir(join(dest, 'kernel'));
    const deadPid = spawnSync(process.execPath, ['-e', '0']).pid;
    await writeFile(join(dest, 'kernel', `.lock-${image.id}`), `${deadPid}\n${hostname()}\n`);
    const pulled = await store.pull('kernel', image.id, dest);
    await expectSameImage(image, pulled.dir);
    expect(await readdir(join(dest, 'kernel'))).toEqual([image.id]);
  });

  it('fails with IMAGE_LOCKED when a live holder keeps the lock too long', async () => {
    const dir = await freshDir('lock');
    const held = await acquireLock(join(dir, 'x.lock'));
    try {
      await expect(
        acquireLock(join(dir, 'x.lock'), { waitMs: 100, pollMs: 10 }),
      ).rejects.toMatchObject({
        code: 'IMAGE_LOCKED',
      });
    } finally {
      await held.release();
    }
    const again = await acquireLock(join(dir, 'x.lock'), { waitMs: 100 });
    await again.release();
  });

  it('refuses to push an image whose file does not match its manifest', async () => {
    const store = makeStore();
    const image = await makeImage('kernel', [['vmlinux', 50_000]]);
    await writeFile(join(image.dir, 'vmlinux'), randomBytes(50_000));
    await expect(store.push(image.dir)).rejects.toMatchObject({ code: 'IMAGE_CORRUPT' });
    expect(await store.has('kernel', image.id)).toBe(false);
  });
});

describe('renderTransferProgress', () => {
  it('draws a bar per file', () => {
    const stream = new PassThrough();
    let output = '';
    stream.on('data', (chunk: Buffer) => (output += chunk.toString()));
    const renderer = renderTransferProgress({ stream, noTTYOutput: true });
    const base = { direction: 'pull', kind: 'rootfs', id: 'python-0123456789ab' } as const;
    renderer.onProgress({ ...base, file: 'rootfs.ext4', doneBytes: 0, totalBytes: 2 * MIB });
    renderer.onProgress({ ...base, file: 'vmlinux', doneBytes: 0, totalBytes: 0 });
    renderer.onProgress({ ...base, file: 'rootfs.ext4', doneBytes: 2 * MIB, totalBytes: 2 * MIB });
    renderer.stop();
    expect(output).toContain('rootfs/python-0123456789ab/rootfs.ext4');
    expect(output).toContain('2.0/2.0 MiB');
    expect(output).toContain('vmlinux');
  });
});
