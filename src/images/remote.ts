import { createHash, randomBytes } from 'node:crypto';
import { createReadStream } from 'node:fs';
import { mkdir, open, readFile, readdir, rename, rm, stat } from 'node:fs/promises';
import { join, resolve } from 'node:path';
import { Readable } from 'node:stream';
import {
  DeleteObjectCommand,
  GetObjectCommand,
  HeadObjectCommand,
  paginateListObjectsV2,
  PutObjectCommand,
  type S3Client,
} from '@aws-sdk/client-s3';
import { Upload } from '@aws-sdk/lib-storage';
import {
  ImageCorruptError,
  ImageNotFoundError,
  RunnerError,
  S3TransferFailedError,
} from '../errors.js';
import { DEFAULT_RETRY, downloadVerified, withRetry, type RetryPolicy } from './download.js';
import { acquireLock, type LockOptions } from './lockfile.js';
import { parseManifest, type ImageManifest, type ManifestFile } from './manifest.js';
import { IMAGE_KINDS } from './store.js';
import {
  createS3Client,
  isNotFound,
  TransientTransferError,
  type RemoteStoreConfig,
} from './s3.js';
import type { ProgressListener } from './transfer-progress.js';

export { renderTransferProgress } from './transfer-progress.js';
export type {
  ProgressListener,
  TransferProgress,
  TransferProgressRenderer,
} from './transfer-progress.js';
export {
  remoteStoreConfig,
  remoteStoreConfigFromSettings,
  type RemoteStoreConfig,
  type RemoteStoreSettings,
} from './s3.js';

/** The kinds of image; the same union as the manifest's `kind`. */
export type ImageKind = ImageManifest['kind'];
const KINDS: readonly ImageKind[] = IMAGE_KINDS;
/** The manifest's id pattern; checked before an id becomes part of a path or key. */
const ID_PATTERN = /^[a-z0-9+#-]+-[0-9a-f]{12,64}$/;
/** A manifest is a few KiB; refuse to buffer anything absurd. */
const MAX_MANIFEST_BYTES = 1024 * 1024;

/** One image held by the remote store. */
export interface RemoteImageRef {
  readonly kind: ImageKind;
  readonly id: string;
}

export interface TransferOptions {
  readonly onProgress?: ProgressListener;
}

export interface PushOptions extends TransferOptions {
  /** Upload even when the remote manifest already exists (ids are content-derived, so rarely). */
  readonly force?: boolean;
}

export interface PushResult extends RemoteImageRef {
  /** False when the image was already present remotely and nothing was sent. */
  readonly uploaded: boolean;
  /** Files sent; files already present remotely with the same sha256 are skipped. */
  readonly uploadedFiles: readonly string[];
  readonly skippedFiles: readonly string[];
  readonly uploadedBytes: number;
}

export interface PullResult extends RemoteImageRef {
  /** The image folder, `<destImagesDir>/<kind>/<id>`. */
  readonly dir: string;
  readonly manifest: ImageManifest;
  /** False when the image was already in the destination and nothing was fetched. */
  readonly downloaded: boolean;
  /** Bytes fetched over the network (resumed prefixes are not counted). */
  readonly transferredBytes: number;
}

export interface RemoteImageStoreOptions {
  /** A ready client (tests, custom middleware); by default one is made from the config. */
  readonly client?: S3Client;
  readonly retry?: Partial<RetryPolicy>;
  readonly lock?: LockOptions;
}

/** True for a kind this store knows. */
export function isImageKind(value: string): value is ImageKind {
  return (KINDS as readonly string[]).includes(value);
}

/** The error for a kind or id that cannot name an image (nor safely a path), or null. */
function refError(kind: string, id: string): RunnerError | null {
  return isImageKind(kind) && ID_PATTERN.test(id)
    ? null
    : new ImageNotFoundError(`${kind}/${id} is not a valid image reference`);
}

function checkRef(kind: string, id: string): void {
  const err = refError(kind, id);
  if (err !== null) throw err;
}

/**
 * The manifest schema allows names like `..` or `manifest.json`; they would escape or clobber
 * the image folder, so a manifest naming one is corrupt.
 */
function checkFileNames(manifest: ImageManifest, origin: string): void {
  const seen = new Set<string>();
  for (const file of manifest.files) {
    if (file.name.startsWith('.') || file.name === 'manifest.json' || seen.has(file.name)) {
      throw new ImageCorruptError(`${origin}: bad or repeated file name ${file.name}`);
    }
    seen.add(file.name);
  }
}

/**
 * The partial file a pull downloads `file` into: in the destination, named by id, file and
 * checksum so that a later pull (another process, after a crash) finds and resumes it, and a
 * changed file never resumes from stale bytes.
 */
export function partialFilePath(
  destImagesDir: string,
  kind: ImageKind,
  id: string,
  file: ManifestFile,
): string {
  return join(destImagesDir, kind, `.part-${id}-${file.name}-${file.sha256.slice(0, 16)}`);
}

async function exists(path: string): Promise<boolean> {
  try {
    await stat(path);
    return true;
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return false;
    throw err;
  }
}

/** fsync a directory so a rename in it survives a crash. */
async function syncDir(path: string): Promise<void> {
  const handle = await open(path, 'r');
  try {
    await handle.sync();
  } finally {
    await handle.close();
  }
}

/** A pull in progress, shared by every caller asking for the same image meanwhile. */
interface InFlight {
  readonly promise: Promise<PullResult>;
  readonly listeners: Set<ProgressListener>;
}

/**
 * Images on an S3-compatible server, laid out as `<prefix>/<kind>/<id>/manifest.json` beside
 * `<prefix>/<kind>/<id>/<file>`. The manifest is written last and read first, so an image whose
 * push broke off is never seen. Pulls are verified, resumable and atomic (docs/image-store.md).
 */
export class RemoteImageStore {
  readonly config: RemoteStoreConfig;
  private readonly client: S3Client;
  private readonly ownsClient: boolean;
  private readonly retry: RetryPolicy;
  private readonly lockOptions: LockOptions;
  private readonly inFlight = new Map<string, InFlight>();

  constructor(config: RemoteStoreConfig, options: RemoteImageStoreOptions = {}) {
    this.config = config;
    this.client = options.client ?? createS3Client(config);
    this.ownsClient = options.client === undefined;
    this.retry = Object.freeze({ ...DEFAULT_RETRY, ...options.retry });
    this.lockOptions = options.lock ?? {};
  }

  /** The object key of an image's manifest (`file` undefined) or one of its files. */
  key(kind: ImageKind, id: string, file = 'manifest.json'): string {
    return [this.config.prefix, kind, id, file].filter((part) => part !== '').join('/');
  }

  private kindPrefix(kind?: ImageKind): string {
    const parts = [this.config.prefix, kind ?? ''].filter((part) => part !== '');
    return parts.length === 0 ? '' : `${parts.join('/')}/`;
  }

  /** Releases the client's sockets (only a client this store made). */
  close(): void {
    if (this.ownsClient) this.client.destroy();
  }

  /** Images with a manifest in the store, sorted by kind then id. */
  async list(kind?: ImageKind): Promise<RemoteImageRef[]> {
    if (kind !== undefined && !isImageKind(kind)) return [];
    const base = this.kindPrefix();
    const found: RemoteImageRef[] = [];
    const pages = paginateListObjectsV2(
      { client: this.client },
      { Bucket: this.config.bucket, Prefix: this.kindPrefix(kind) },
    );
    for await (const page of pages) {
      for (const object of page.Contents ?? []) {
        const parts = (object.Key ?? '').slice(base.length).split('/');
        const [k, id, file] = parts;
        if (parts.length !== 3 || file !== 'manifest.json' || k === undefined || id === undefined)
          continue;
        if (isImageKind(k) && ID_PATTERN.test(id)) found.push({ kind: k, id });
      }
    }
    return found.sort((a, b) => a.kind.localeCompare(b.kind) || a.id.localeCompare(b.id));
  }

  /** True when the image's manifest is in the store (so all its files are). */
  async has(kind: ImageKind, id: string): Promise<boolean> {
    if (!isImageKind(kind) || !ID_PATTERN.test(id)) return false;
    try {
      await withRetry(this.retry, () =>
        this.client.send(
          new HeadObjectCommand({ Bucket: this.config.bucket, Key: this.key(kind, id) }),
        ),
      );
      return true;
    } catch (err) {
      if (isNotFound(err)) return false;
      throw new S3TransferFailedError(`HEAD ${this.key(kind, id)} failed`, {
        cause: err,
      });
    }
  }

  /** Fetches and validates an image's manifest; IMAGE_NOT_FOUND when there is none. */
  async manifest(kind: ImageKind, id: string): Promise<ImageManifest> {
    return (await this.fetchManifest(kind, id)).manifest;
  }

  private async fetchManifest(
    kind: ImageKind,
    id: string,
  ): Promise<{ manifest: ImageManifest; raw: Uint8Array }> {
    checkRef(kind, id);
    const key = this.key(kind, id);
    let raw: Uint8Array;
    try {
      raw = await withRetry(this.retry, async () => {
        const response = await this.client.send(
          new GetObjectCommand({ Bucket: this.config.bucket, Key: key }),
        );
        if ((response.ContentLength ?? 0) > MAX_MANIFEST_BYTES) {
          (response.Body as Readable | undefined)?.destroy();
          throw new ImageCorruptError(`${key} is over ${MAX_MANIFEST_BYTES} bytes`);
        }
        if (response.Body === undefined) throw new TransientTransferError(`${key}: empty response`);
        return response.Body.transformToByteArray();
      });
    } catch (err) {
      if (err instanceof RunnerError) throw err;
      if (isNotFound(err)) {
        throw new ImageNotFoundError(`no image ${kind}/${id} in s3://${this.config.bucket}/${key}`);
      }
      throw new S3TransferFailedError(`GET ${key} failed`, { cause: err });
    }
    let value: unknown;
    try {
      value = JSON.parse(Buffer.from(raw).toString('utf8'));
    } catch (cause) {
      throw new ImageCorruptError(`${key} is not JSON`, { cause });
    }
    const manifest = parseManifest(value, key);
    if (manifest.kind !== kind || manifest.id !== id) {
      throw new ImageCorruptError(`${key} describes ${manifest.kind}/${manifest.id}`);
    }
    checkFileNames(manifest, key);
    return { manifest, raw };
  }

  /**
   * Uploads a local image folder (`manifest.json` and the files it lists): the files first,
   * multipart for big ones, each hashed on the way and checked against the manifest, then the
   * manifest, so the image becomes visible only once whole. A file already in the store with
   * the same size and sha256 is not sent again, so an interrupted push resumes per file.
   */
  async push(localImageDir: string, options: PushOptions = {}): Promise<PushResult> {
    const manifestPath = join(localImageDir, 'manifest.json');
    const raw = await readFile(manifestPath).catch((err: unknown) => {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') {
        throw new ImageNotFoundError(`${manifestPath} does not exist`, { cause: err });
      }
      throw err;
    });
    let value: unknown;
    try {
      value = JSON.parse(raw.toString('utf8'));
    } catch (cause) {
      throw new ImageCorruptError(`${manifestPath} is not JSON`, { cause });
    }
    const manifest = parseManifest(value, manifestPath);
    checkFileNames(manifest, manifestPath);
    const { kind, id } = manifest;
    const result = {
      kind,
      id,
      uploadedFiles: [] as string[],
      skippedFiles: [] as string[],
      uploadedBytes: 0,
    };
    if (options.force !== true && (await this.has(kind, id))) return { ...result, uploaded: false };

    for (const file of manifest.files) {
      const path = join(localImageDir, file.name);
      const size = (await stat(path)).size;
      if (size !== file.sizeBytes) {
        throw new ImageCorruptError(
          `${path} is ${size} bytes, the manifest says ${file.sizeBytes}`,
        );
      }
      const report = (doneBytes: number): void =>
        options.onProgress?.({
          direction: 'push',
          kind,
          id,
          file: file.name,
          doneBytes,
          totalBytes: size,
        });
      if (await this.remoteFileMatches(kind, id, file)) {
        result.skippedFiles.push(file.name);
        report(size);
        continue;
      }
      await this.uploadFile(kind, id, file, path, report);
      result.uploadedFiles.push(file.name);
      result.uploadedBytes += size;
    }

    try {
      await withRetry(this.retry, () =>
        this.client.send(
          new PutObjectCommand({
            Bucket: this.config.bucket,
            Key: this.key(kind, id),
            Body: raw,
            ContentType: 'application/json',
          }),
        ),
      );
    } catch (err) {
      throw new S3TransferFailedError(`PUT ${this.key(kind, id)} failed`, {
        cause: err,
      });
    }
    return { ...result, uploaded: true };
  }

  /** True when the store already holds this file with the manifest's size and sha256. */
  private async remoteFileMatches(
    kind: ImageKind,
    id: string,
    file: ManifestFile,
  ): Promise<boolean> {
    try {
      const head = await withRetry(this.retry, () =>
        this.client.send(
          new HeadObjectCommand({ Bucket: this.config.bucket, Key: this.key(kind, id, file.name) }),
        ),
      );
      return head.ContentLength === file.sizeBytes && head.Metadata?.sha256 === file.sha256;
    } catch (err) {
      if (isNotFound(err)) return false;
      throw new S3TransferFailedError(`HEAD ${this.key(kind, id, file.name)} failed`, {
        cause: err,
      });
    }
  }

  private async uploadFile(
    kind: ImageKind,
    id: string,
    file: ManifestFile,
    path: string,
    report: (doneBytes: number) => void,
  ): Promise<void> {
    const key = this.key(kind, id, file.name);
    const hash = createHash('sha256');
    // Hash the bytes as they are sent: what lands in the store is what was checked.
    async function* hashed(): AsyncGenerator<Buffer> {
      for await (const chunk of createReadStream(path, { highWaterMark: 1024 * 1024 })) {
        const bytes = chunk as Buffer;
        hash.update(bytes);
        yield bytes;
      }
    }
    const upload = new Upload({
      client: this.client,
      params: {
        Bucket: this.config.bucket,
        Key: key,
        Body: Readable.from(hashed(), { objectMode: false }),
        ContentType: 'application/octet-stream',
        // Lets a later push skip this file, and lets anyone check it without the manifest.
        Metadata: { sha256: file.sha256 },
      },
      partSize: this.config.partSizeMib * 1024 * 1024,
      queueSize: 4,
      leavePartsOnError: false,
    });
    upload.on('httpUploadProgress', (progress) => {
      if (progress.loaded !== undefined) report(Math.min(progress.loaded, file.sizeBytes));
    });
    report(0);
    try {
      await upload.done();
    } catch (err) {
      throw new S3TransferFailedError(`upload of ${key} failed`, { cause: err });
    }
    const actual = hash.digest('hex');
    if (actual !== file.sha256) {
      // The local file is not what its manifest says: take the object back out.
      await this.client
        .send(new DeleteObjectCommand({ Bucket: this.config.bucket, Key: key }))
        .catch(() => undefined);
      throw new ImageCorruptError(
        `${path}: sha256 ${actual} does not match the manifest's ${file.sha256}`,
      );
    }
    report(file.sizeBytes);
  }

  /**
   * Downloads an image into `<destImagesDir>/<kind>/<id>/`, which appears by one rename once
   * every file is whole and verified. Callers asking for the same image while it downloads
   * share the one download (and its progress); another process waits on the lock file.
   * Resolves at once, with `downloaded: false`, when the image is already there.
   */
  pull(
    kind: ImageKind,
    id: string,
    destImagesDir: string,
    options: TransferOptions = {},
  ): Promise<PullResult> {
    // Not async: a second caller must get the very promise of the first.
    const invalid = refError(kind, id);
    if (invalid !== null) return Promise.reject(invalid);
    const flightKey = `${resolve(destImagesDir)}\0${kind}\0${id}`;
    const running = this.inFlight.get(flightKey);
    if (running !== undefined) {
      if (options.onProgress !== undefined) running.listeners.add(options.onProgress);
      return running.promise;
    }
    const listeners = new Set<ProgressListener>();
    if (options.onProgress !== undefined) listeners.add(options.onProgress);
    const promise = this.pullOnce(kind, id, destImagesDir, listeners).finally(() => {
      this.inFlight.delete(flightKey);
    });
    this.inFlight.set(flightKey, { promise, listeners });
    return promise;
  }

  private async pullOnce(
    kind: ImageKind,
    id: string,
    destImagesDir: string,
    listeners: ReadonlySet<ProgressListener>,
  ): Promise<PullResult> {
    const kindDir = join(destImagesDir, kind);
    const dir = join(kindDir, id);
    const present = await this.localImage(kind, id, dir);
    if (present !== null) return present;

    await mkdir(kindDir, { recursive: true });
    const lock = await acquireLock(join(kindDir, `.lock-${id}`), this.lockOptions);
    try {
      // Another process may have finished it while this one waited for the lock.
      const done = await this.localImage(kind, id, dir);
      if (done !== null) return done;
      const { manifest, raw } = await this.fetchManifest(kind, id);
      const partials = manifest.files.map((file) => partialFilePath(destImagesDir, kind, id, file));
      await sweepLeftovers(kindDir, id, partials);

      let transferredBytes = 0;
      try {
        for (const [index, file] of manifest.files.entries()) {
          const stats = await downloadVerified({
            client: this.client,
            bucket: this.config.bucket,
            key: this.key(kind, id, file.name),
            partialPath: partials[index] ?? '',
            sizeBytes: file.sizeBytes,
            sha256: file.sha256,
            retry: this.retry,
            onBytes: (doneBytes) => {
              const event = {
                direction: 'pull' as const,
                kind,
                id,
                file: file.name,
                doneBytes,
                totalBytes: file.sizeBytes,
              };
              for (const listener of listeners) listener(event);
            },
          });
          transferredBytes += stats.transferredBytes;
        }
      } catch (err) {
        // A corrupt image is worthless: leave nothing behind. A transfer failure keeps the
        // partial files so the next pull resumes them.
        if (err instanceof RunnerError && err.code === 'IMAGE_CORRUPT') {
          await Promise.all(partials.map((path) => rm(path, { force: true })));
        }
        throw err;
      }

      // `.tmp-<id>-` like the local store's staging (its sweep knows the prefix); `pull` marks
      // ours, so sweeping our leftovers never touches a build of the same id in progress.
      const staging = join(kindDir, `.tmp-${id}-pull${randomBytes(6).toString('hex')}`);
      await mkdir(staging);
      try {
        for (const [index, file] of manifest.files.entries()) {
          await rename(partials[index] ?? '', join(staging, file.name));
        }
        const handle = await open(join(staging, 'manifest.json'), 'wx');
        try {
          await handle.writeFile(raw);
          await handle.sync();
        } finally {
          await handle.close();
        }
        await syncDir(staging);
        await rename(staging, dir);
        await syncDir(kindDir);
      } catch (err) {
        await rm(staging, { recursive: true, force: true });
        const code = (err as NodeJS.ErrnoException).code;
        if (code === 'ENOTEMPTY' || code === 'EEXIST') {
          // Someone outside the lock (a local build) put the image in place: theirs stands.
          const theirs = await this.localImage(kind, id, dir);
          if (theirs !== null) return theirs;
        }
        throw err;
      }
      return { kind, id, dir, manifest, downloaded: true, transferredBytes };
    } finally {
      await lock.release();
    }
  }

  /** The image already in the destination, or null. Its presence means it is whole. */
  private async localImage(kind: ImageKind, id: string, dir: string): Promise<PullResult | null> {
    const path = join(dir, 'manifest.json');
    if (!(await exists(path))) return null;
    let value: unknown;
    try {
      value = JSON.parse(await readFile(path, 'utf8'));
    } catch (cause) {
      throw new ImageCorruptError(`${path} is not JSON`, { cause });
    }
    const manifest = parseManifest(value, path);
    return { kind, id, dir, manifest, downloaded: false, transferredBytes: 0 };
  }
}

/**
 * Removes what crashed pulls of `id` left: their staging folders, and partial files of another
 * version of the manifest. Partials of the current manifest stay, to be resumed.
 * Called under the lock, so no live pull owns any of these.
 */
async function sweepLeftovers(kindDir: string, id: string, keep: readonly string[]): Promise<void> {
  const kept = new Set(keep);
  for (const name of await readdir(kindDir)) {
    const path = join(kindDir, name);
    if (
      name.startsWith(`.tmp-${id}-pull`) ||
      (name.startsWith(`.part-${id}-`) && !kept.has(path))
    ) {
      await rm(path, { recursive: true, force: true });
    }
  }
}
