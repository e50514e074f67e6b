import { createHash, randomBytes } from 'node:crypto';
import { mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { ImageManifest } from '../../../src/images/manifest.js';
import { loadSettings, type Settings } from '../../../src/config/settings.js';
import { RemoteImageStore, remoteStoreConfigFromSettings } from '../../../src/images/remote.js';
import { ImageStore } from '../../../src/images/store.js';
import { remoteFetcher } from '../../../src/pool/engine.js';
import { startS3, type S3Fixture } from '../../support/s3.js';

/** Pull on demand: a VM needs an image that is not local; the engine fetches it from S3. */
describe('pull on demand from a real S3-compatible server', () => {
  let s3: S3Fixture;
  let work: string;
  let settings: Settings;

  beforeAll(async () => {
    s3 = await startS3();
    work = await mkdtemp(join(tmpdir(), 'runner-pull-'));
    settings = loadSettings({
      RUNNER_DATA_DIR: work,
      RUNNER_S3_BUCKET: s3.bucket,
      RUNNER_S3_ENDPOINT: s3.endpoint,
      RUNNER_S3_ACCESS_KEY_ID: s3.accessKeyId,
      RUNNER_S3_SECRET_ACCESS_KEY: s3.secretAccessKey,
      RUNNER_S3_REGION: 'us-east-1',
    });
  });

  afterAll(async () => {
    await s3?.close();
    await rm(work, { recursive: true, force: true });
  });

  async function pushImage(
    language: string,
    builtAt: string,
    base?: { baseTreeKey: string },
  ): Promise<{ id: string; bytes: Buffer }> {
    const bytes = randomBytes(200_000);
    const name = base === undefined ? language : 'base';
    const id = `${name}-${createHash('sha256').update(bytes).digest('hex').slice(0, 12)}`;
    const dir = join(work, 'src', id);
    await mkdir(dir, { recursive: true });
    const file = base === undefined ? `rootfs-${language}.ext4` : 'base.ext4';
    await writeFile(join(dir, file), bytes);
    const manifest: ImageManifest = {
      schema: 1,
      kind: base === undefined ? 'rootfs' : 'base',
      id,
      language: base === undefined ? language : null,
      ...(base !== undefined && { inputs: { baseTreeKey: base.baseTreeKey } }),
      toolchainVersion: '1',
      kernelVersion: 'test',
      agentVersion: '0.1.0',
      debianSuite: 'bookworm',
      packages: [],
      files: [
        {
          name: file,
          sizeBytes: bytes.length,
          sha256: createHash('sha256').update(bytes).digest('hex'),
        },
      ],
      totalSizeBytes: bytes.length,
      buildSeconds: 1,
      builtAt,
    };
    await writeFile(join(dir, 'manifest.json'), JSON.stringify(manifest));
    const remote = new RemoteImageStore(
      remoteStoreConfigFromSettings(settings) ?? (undefined as never),
    );
    try {
      await remote.push(dir);
    } finally {
      remote.close();
    }
    return { id, bytes };
  }

  it('fetches the newest image of the language, verified, into the local store', async () => {
    await pushImage('python', '2026-01-01T00:00:00.000Z');
    const newest = await pushImage('python', '2026-06-01T00:00:00.000Z');
    await pushImage('ruby', '2026-12-01T00:00:00.000Z');
    const store = new ImageStore(join(work, 'local'));
    expect(await store.latest('rootfs', 'python')).toBeUndefined();
    const fetch = remoteFetcher(store, settings);
    expect(fetch).toBeDefined();
    const got = await fetch?.('rootfs', 'python');
    expect(got?.manifest.id).toBe(newest.id);
    expect(await readFile(join(got?.dir ?? '', 'rootfs-python.ext4'))).toEqual(newest.bytes);
    expect((await store.verify(newest.id)).ok).toBe(true);
    expect(await fetch?.('rootfs', 'go')).toBeUndefined();
  });

  it('fetches the newest base of the base tree asked for, not the newest base', async () => {
    const wanted = await pushImage('', '2026-02-01T00:00:00.000Z', { baseTreeKey: 'a'.repeat(64) });
    await pushImage('', '2026-03-01T00:00:00.000Z', { baseTreeKey: 'b'.repeat(64) });
    const store = new ImageStore(join(work, 'local-base'));
    const fetch = remoteFetcher(store, settings);
    const got = await fetch?.('base', null, 'a'.repeat(64));
    expect(got?.manifest.id).toBe(wanted.id);
    expect(got?.manifest.kind).toBe('base');
    expect(await readFile(join(got?.dir ?? '', 'base.ext4'))).toEqual(wanted.bytes);
    expect(await fetch?.('base', null, 'c'.repeat(64))).toBeUndefined();
  });

  it('is off when no bucket is configured', () => {
    expect(
      remoteFetcher(new ImageStore(join(work, 'none')), loadSettings({ RUNNER_DATA_DIR: work })),
    ).toBeUndefined();
  });
});
