import { randomBytes } from 'node:crypto';
import { chmod, mkdir, mkdtemp, readdir, readFile, rename, rm, stat, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { ImageCorruptError, ImageNotFoundError } from '../errors.js';
import { sha256File } from './identity.js';
import { parseManifest, type ImageManifest } from './manifest.js';

/** The kinds of image the store holds: the manifest's `kind`. */
export type ImageKind = ImageManifest['kind'];
export const IMAGE_KINDS: readonly ImageKind[] = ['kernel', 'base', 'rootfs'];

/** The manifest's id pattern; checked before an id becomes part of a path. */
const ID_PATTERN = /^[a-z0-9+#-]+-[0-9a-f]{12,64}$/;

/** True when `id` has the form of an image identity (`<name>-<hex>`). */
export function isImageId(id: string): boolean {
  return ID_PATTERN.test(id);
}

/** An image in the local store. */
export interface StoredImage {
  readonly manifest: ImageManifest;
  /** `<imagesDir>/<kind>/<id>`. */
  readonly dir: string;
}

/** A folder of the store that is not a valid image (kept out of every listing). */
export interface BrokenEntry {
  readonly dir: string;
  readonly reason: string;
}

/** One mismatch found by verify. */
export interface VerifyProblem {
  readonly file: string;
  readonly problem: 'missing' | 'size' | 'sha256' | 'unlisted';
  readonly expected?: string;
  readonly actual?: string;
}

/** The result of checking every file of an image against its manifest. */
export interface VerifyReport {
  readonly kind: ImageKind;
  readonly id: string;
  readonly ok: boolean;
  readonly checkedFiles: number;
  readonly problems: readonly VerifyProblem[];
}

function isEnoent(err: unknown): boolean {
  return (err as NodeJS.ErrnoException | undefined)?.code === 'ENOENT';
}

/**
 * The local image store: `<imagesDir>/<kind>/<id>/manifest.json` beside the image's files. An
 * image appears by one rename of a complete folder (see `createStaging` and `commit`), so a
 * reader never sees half an image. Entries whose name starts with `.` are work in progress
 * (staging folders, partial downloads, removals) and never listed.
 */
export class ImageStore {
  readonly root: string;

  constructor(imagesDir: string) {
    this.root = imagesDir;
  }

  kindDir(kind: ImageKind): string {
    return join(this.root, kind);
  }

  imageDir(kind: ImageKind, id: string): string {
    if (!isImageId(id)) throw new ImageNotFoundError(`${id} is not an image id`);
    return join(this.kindDir(kind), id);
  }

  /** Valid images and broken entries, sorted by kind then id. */
  async scan(kind?: ImageKind): Promise<{ images: StoredImage[]; broken: BrokenEntry[] }> {
    const images: StoredImage[] = [];
    const broken: BrokenEntry[] = [];
    for (const k of kind === undefined ? IMAGE_KINDS : [kind]) {
      let names: string[];
      try {
        names = await readdir(this.kindDir(k));
      } catch (err) {
        if (isEnoent(err)) continue;
        throw err;
      }
      for (const name of names.sort()) {
        if (name.startsWith('.')) continue;
        const dir = join(this.kindDir(k), name);
        try {
          const manifest = await this.readManifest(dir);
          if (manifest.kind !== k || manifest.id !== name) {
            throw new ImageCorruptError(`${dir}: manifest describes ${manifest.kind}/${manifest.id}`,
            );
          }
          images.push({ manifest, dir });
        } catch (err) {
          broken.push({ dir, reason: err instanceof Error ? err.message : String(err) });
        }
      }
    }
    return { images, broken };
  }

  /** Valid images of one kind (or all), sorted by kind then id. */
  async list(kind?: ImageKind): Promise<StoredImage[]> {
    return (await this.scan(kind)).images;
  }

  /** The image with this id (of any kind, or of `kind`), or undefined. */
  async find(id: string, kind?: ImageKind): Promise<StoredImage | undefined> {
    if (!isImageId(id)) return undefined;
    for (const k of kind === undefined ? IMAGE_KINDS : [kind]) {
      const dir = join(this.kindDir(k), id);
      let manifest: ImageManifest;
      try {
        manifest = await this.readManifest(dir);
      } catch (err) {
        if (isEnoent(err)) continue;
        throw err;
      }
      if (manifest.kind !== k || manifest.id !== id) {
        throw new ImageCorruptError(`${dir}: manifest describes ${manifest.kind}/${manifest.id}`,
        );
      }
      return { manifest, dir };
    }
    return undefined;
  }

  /** True when an image of this kind and id is in the store. */
  async has(kind: ImageKind, id: string): Promise<boolean> {
    return (await this.find(id, kind)) !== undefined;
  }

  /** The image with this id; throws IMAGE_NOT_FOUND. */
  async inspect(id: string, kind?: ImageKind): Promise<StoredImage> {
    const image = await this.find(id, kind);
    if (image === undefined) {
      throw new ImageNotFoundError(`no image ${id} in ${this.root}`);
    }
    return image;
  }

  /** The path of one of an image's files. */
  filePath(image: StoredImage, name: string): string {
    if (!image.manifest.files.some((f) => f.name === name)) {
      throw new ImageNotFoundError(`image ${image.manifest.id} has no file ${name}`);
    }
    return join(image.dir, name);
  }

  /**
   * The newest image (by build time, then id) of a kind for a language (null for images that
   * belong to no language, such as kernels); undefined when there is none.
   */
  async latest(kind: ImageKind, language: string | null): Promise<StoredImage | undefined> {
    // A family layer serves each of its languages too.
    const candidates = (await this.list(kind)).filter(
      (i) =>
        i.manifest.language === language ||
        (language !== null && (i.manifest.languages ?? []).includes(language)),
    );
    return this.preferred(candidates);
  }

  /**
   * Marks `image` as the one to use of its line (the layers of one language, the bases of one
   * base tree), over a newer build of the same line: the builder marks what it built or found
   * for the sources it was given, so that after a build from older sources (another checkout,
   * an agent change undone) those are what VMs are made of, not the newest build in the store.
   */
  async select(image: StoredImage): Promise<void> {
    const file = this.selectionFile(image.manifest);
    if (file === null) return;
    const partial = `${file}.partial-${process.pid}`;
    await writeFile(partial, `${image.manifest.id}\n`);
    await rename(partial, file);
  }

  /**
   * Of these images of one line, the one {@link select} marked, else the newest build (by its
   * manifest's builtAt, then id).
   */
  async preferred(candidates: readonly StoredImage[]): Promise<StoredImage | undefined> {
    const sorted = [...candidates].sort(
      (a, b) =>
        Date.parse(b.manifest.builtAt) - Date.parse(a.manifest.builtAt) ||
        b.manifest.id.localeCompare(a.manifest.id),
    );
    const newest = sorted[0];
    if (newest === undefined) return undefined;
    const file = this.selectionFile(newest.manifest);
    if (file === null) return newest;
    const id = await readFile(file, 'utf8').then(
      (t) => t.trim(),
      () => '',
    );
    return sorted.find((i) => i.manifest.id === id && this.selectionFile(i.manifest) === file) ?? newest;
  }

  /** Where the selection of an image's line is kept, or null for a kind without lines. */
  private selectionFile(manifest: ImageManifest): string | null {
    const line = selectionLine(manifest);
    return line === null ? null : join(this.kindDir(manifest.kind), `.selected-${line}`);
  }

  /** Like latest, throwing IMAGE_NOT_FOUND with the command that would make one. */
  async resolve(kind: ImageKind, language: string | null): Promise<StoredImage> {
    const image = await this.latest(kind, language);
    if (image === undefined) {
      const what = language === null ? kind : `${kind} for ${language}`;
      throw new ImageNotFoundError(`no ${what} image in ${this.root}${kind === 'rootfs' && language !== null ? ` (build one: runner images build ${language})` : ''}`,
      );
    }
    return image;
  }

  /**
   * Removes an image. The folder is first renamed out of sight, so the image disappears at once
   * even if deleting its files takes a while.
   */
  async remove(id: string, kind?: ImageKind): Promise<StoredImage> {
    const image = await this.inspect(id, kind);
    const trash = join(
      this.kindDir(image.manifest.kind),
      `.trash-${id}-${randomBytes(4).toString('hex')}`,
    );
    await rename(image.dir, trash);
    await rm(trash, { recursive: true, force: true });
    return image;
  }

  /** Checks the size and sha256 of every file against the manifest; lists unlisted files too. */
  async verify(id: string, kind?: ImageKind): Promise<VerifyReport> {
    const image = await this.inspect(id, kind);
    const problems: VerifyProblem[] = [];
    for (const file of image.manifest.files) {
      const path = join(image.dir, file.name);
      let sizeBytes: number;
      try {
        sizeBytes = (await stat(path)).size;
      } catch (err) {
        if (!isEnoent(err)) throw err;
        problems.push({ file: file.name, problem: 'missing' });
        continue;
      }
      if (sizeBytes !== file.sizeBytes) {
        problems.push({
          file: file.name,
          problem: 'size',
          expected: String(file.sizeBytes),
          actual: String(sizeBytes),
        });
        continue;
      }
      const sha256 = await sha256File(path);
      if (sha256 !== file.sha256) {
        problems.push({
          file: file.name,
          problem: 'sha256',
          expected: file.sha256,
          actual: sha256,
        });
      }
    }
    const listed = new Set(image.manifest.files.map((f) => f.name));
    for (const name of await readdir(image.dir)) {
      if (name !== 'manifest.json' && !listed.has(name))
        problems.push({ file: name, problem: 'unlisted' });
    }
    return {
      kind: image.manifest.kind,
      id: image.manifest.id,
      ok: problems.length === 0,
      checkedFiles: image.manifest.files.length,
      problems,
    };
  }

  /**
   * A fresh staging folder in the store (same file system, so `commit` is one rename). Write
   * the image's files and then its manifest into it.
   */
  async createStaging(kind: ImageKind, id: string): Promise<string> {
    if (!isImageId(id)) throw new ImageNotFoundError(`${id} is not an image id`);
    await mkdir(this.kindDir(kind), { recursive: true });
    return mkdtemp(join(this.kindDir(kind), `.tmp-${id}-`));
  }

  /**
   * Moves a complete staging folder into place under its manifest's id. When the image is
   * already there it is kept (ids are content-derived) and the staging folder is removed,
   * unless `replace`, which swaps the new folder in.
   */
  async commit(stagingDir: string, options: { replace?: boolean } = {}): Promise<StoredImage> {
    const manifest = await this.readManifest(stagingDir);
    for (const file of manifest.files) {
      const size = (await stat(join(stagingDir, file.name))).size;
      if (size !== file.sizeBytes) {
        throw new ImageCorruptError(`${stagingDir}/${file.name} has ${size} bytes, manifest says ${file.sizeBytes}`,
        );
      }
    }
    const target = this.imageDir(manifest.kind, manifest.id);
    const existing = await this.find(manifest.id, manifest.kind).catch(() => undefined);
    if (existing !== undefined && options.replace !== true) {
      await rm(stagingDir, { recursive: true, force: true });
      return existing;
    }
    let old: string | undefined;
    try {
      await stat(target);
      old = join(
        this.kindDir(manifest.kind),
        `.trash-${manifest.id}-${randomBytes(4).toString('hex')}`,
      );
      await rename(target, old);
    } catch (err) {
      if (!isEnoent(err)) throw err;
    }
    // mkdtemp made it 0700; the VMM runs as its own unprivileged user and must read the files.
    await chmod(stagingDir, 0o755);
    await rename(stagingDir, target);
    if (old !== undefined) await rm(old, { recursive: true, force: true });
    return { manifest, dir: target };
  }

  /** Removes staging and trash folders older than `maxAgeMs` (left by crashed builds). */
  async sweep(maxAgeMs = 24 * 3600 * 1000): Promise<string[]> {
    const removed: string[] = [];
    for (const kind of IMAGE_KINDS) {
      let names: string[];
      try {
        names = await readdir(this.kindDir(kind));
      } catch (err) {
        if (isEnoent(err)) continue;
        throw err;
      }
      for (const name of names) {
        if (!name.startsWith('.tmp-') && !name.startsWith('.trash-')) continue;
        const path = join(this.kindDir(kind), name);
        const info = await stat(path).catch(() => undefined);
        if (info !== undefined && Date.now() - info.mtimeMs > maxAgeMs) {
          await rm(path, { recursive: true, force: true });
          removed.push(path);
        }
      }
    }
    return removed;
  }

  private async readManifest(dir: string): Promise<ImageManifest> {
    const path = join(dir, 'manifest.json');
    const text = await readFile(path, 'utf8');
    let value: unknown;
    try {
      value = JSON.parse(text);
    } catch (cause) {
      throw new ImageCorruptError(`${path}: not valid JSON`, { cause });
    }
    const manifest = parseManifest(value, path);
    // The schema allows `..` or `manifest.json` as file names; they would escape or clobber the
    // image folder.
    const seen = new Set<string>();
    for (const file of manifest.files) {
      if (file.name.startsWith('.') || file.name === 'manifest.json' || seen.has(file.name)) {
        throw new ImageCorruptError(`${path}: bad or repeated file name ${file.name}`);
      }
      seen.add(file.name);
    }
    return manifest;
  }
}

/** Writes a manifest (checked against the schema first) into an image or staging folder. */
export async function writeManifest(dir: string, manifest: ImageManifest): Promise<void> {
  parseManifest(manifest, join(dir, 'manifest.json'));
  await writeFile(join(dir, 'manifest.json'), `${JSON.stringify(manifest, null, 2)}\n`);
}

/**
 * The line an image belongs to for {@link ImageStore.select}: a layer's language (its family
 * layer's name), a base's tree (the first 16 hex digits of its key); null for the kernel.
 */
function selectionLine(manifest: ImageManifest): string | null {
  if (manifest.kind === 'rootfs' && manifest.language !== null && /^[a-z0-9+_-]+$/.test(manifest.language))
    return `layer-${manifest.language}`;
  const tree = manifest.inputs?.baseTreeKey;
  if (manifest.kind === 'base' && tree !== undefined && /^[0-9a-f]{16,}$/.test(tree))
    return `tree-${tree.slice(0, 16)}`;
  return null;
}
