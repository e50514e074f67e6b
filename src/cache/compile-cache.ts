import { createHash, randomBytes } from 'node:crypto';
import { mkdir, readdir, readFile, rename, rm, stat, utimes, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { gunzipSync, gzipSync } from 'node:zlib';
import { Compile } from 'typebox/compile';
import type { LanguageDefinition } from '../languages/index.js';
import {
  ArtefactSchema,
  checkArtefact,
  type Artefact,
  type ArtefactEntry,
  type ExecuteMessage,
  type StageResult,
} from '../protocol/index.js';

/** Settings of the compile cache. */
export interface CompileCacheOptions {
  /** Its folder (one file per kept compile, in folders by the key's first two hex digits). */
  readonly dir: string;
  /** Most bytes of kept compiles on disk; past it the least recently used go first. */
  readonly maxBytes: number;
  /** A kept compile not used for this long is deleted. */
  readonly maxAgeMs: number;
  readonly log?: (line: string) => void;
}

/** What one kept compile file holds. */
interface CacheRecord {
  readonly format: 1;
  readonly key: string;
  readonly artefact: Artefact;
}

const validArtefact = Compile(ArtefactSchema);
const KEY_RE = /^[0-9a-f]{64}$/;

/**
 * The key of a compile: a hash of everything the compile stage's outcome can depend on, and of
 * nothing the job's run may set. The images the VM runs (`images`: the snapshot's key, which
 * names its kernel, base and layer and the VM's shape), the language's compile command and its
 * environment, the seccomp family, the compile limits, and each file's name and bytes in order.
 * The request's env, args and stdin are the run stage's only and are not in it. Null when the
 * job has no compile stage.
 */
export function compileKey(
  message: ExecuteMessage,
  definition: Pick<LanguageDefinition, 'name' | 'compile' | 'env' | 'extension'>,
  images: string,
): string | null {
  if (definition.compile === null || message.sandbox !== undefined) return null;
  const hash = createHash('sha256');
  const part = (value: unknown): void => {
    const text = JSON.stringify(value);
    hash.update(`${Buffer.byteLength(text)}:${text}`);
  };
  part({
    format: 1,
    images,
    language: definition.name,
    compile: definition.compile,
    extension: definition.extension,
    env: Object.entries(definition.env).sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0)),
    seccomp: message.seccomp ?? null,
    limits: message.compileLimits,
    files: message.files.length,
  });
  for (const file of message.files) {
    const bytes = Buffer.from(file.content, file.encoding === 'utf8' ? 'utf8' : 'base64');
    part({ name: file.name, bytes: bytes.length });
    hash.update(bytes);
  }
  return hash.digest('hex');
}

/**
 * Compiles kept on the host (docs/agent.md, "The compile cache"): the work dir a compile stage
 * left and that stage's result, under the compile's key, so that the same sources compiled the
 * same way on the same images compile once. Files are written whole under a temporary name and
 * renamed, so several processes can share the folder; a hit refreshes the file's time, and
 * `put` evicts by age and then by size, least recently used first.
 */
export class CompileCache {
  private sizes: Map<string, { bytes: number; usedMs: number }> | null = null;
  private total = 0;

  constructor(private readonly options: CompileCacheOptions) {}

  private pathOf(key: string): string {
    return join(this.options.dir, key.slice(0, 2), `${key}.json.gz`);
  }

  /** The kept compile of `key`, or undefined (none, expired, or unreadable: then removed). */
  async get(key: string): Promise<Artefact | undefined> {
    if (!KEY_RE.test(key)) return undefined;
    const path = this.pathOf(key);
    const st = await stat(path).catch(() => null);
    if (st === null) return undefined;
    // Past its age: removed unread.
    if (Date.now() - st.mtimeMs > this.options.maxAgeMs) {
      await this.remove(key);
      return undefined;
    }
    let raw: Buffer;
    try {
      raw = await readFile(path);
    } catch {
      return undefined;
    }
    try {
      const record = JSON.parse(gunzipSync(raw).toString('utf8')) as CacheRecord;
      if (record.format !== 1 || record.key !== key || !validArtefact.Check(record.artefact))
        throw new Error('not a kept compile of this key');
      checkArtefact(record.artefact.entries);
      const now = new Date();
      await utimes(path, now, now).catch(() => undefined);
      this.sizes?.set(key, { bytes: raw.length, usedMs: now.getTime() });
      return record.artefact;
    } catch (err) {
      this.options.log?.(
        `compile cache: ${key.slice(0, 16)} is unreadable, removed (${err instanceof Error ? err.message : String(err)})`,
      );
      await this.remove(key);
      return undefined;
    }
  }

  /**
   * Keeps a compile: only one that ended `ok`, whose entries pass `checkArtefact`. Returns
   * whether it was kept.
   */
  async put(
    key: string,
    compile: StageResult,
    entries: readonly ArtefactEntry[],
  ): Promise<boolean> {
    if (!KEY_RE.test(key) || compile.status !== 'ok') return false;
    const artefact: Artefact = { compile, entries: [...entries] };
    if (!validArtefact.Check(artefact)) return false;
    try {
      checkArtefact(entries);
    } catch (err) {
      this.options.log?.(
        `compile cache: refused an artefact: ${err instanceof Error ? err.message : String(err)}`,
      );
      return false;
    }
    const body = gzipSync(JSON.stringify({ format: 1, key, artefact } satisfies CacheRecord), {
      level: 1,
    });
    if (body.length > this.options.maxBytes) return false;
    await this.index();
    const path = this.pathOf(key);
    await mkdir(join(this.options.dir, key.slice(0, 2)), { recursive: true });
    const tmp = `${path}.${randomBytes(6).toString('hex')}.tmp`;
    await writeFile(tmp, body);
    await rename(tmp, path);
    const old = this.sizes?.get(key);
    this.total += body.length - (old?.bytes ?? 0);
    this.sizes?.set(key, { bytes: body.length, usedMs: Date.now() });
    await this.evict();
    return true;
  }

  /** Bytes and entries kept, as this process knows them (read from disk on first use). */
  async stats(): Promise<{ entries: number; bytes: number }> {
    const sizes = await this.index();
    return { entries: sizes.size, bytes: this.total };
  }

  private async remove(key: string): Promise<void> {
    await rm(this.pathOf(key), { force: true });
    const old = this.sizes?.get(key);
    if (old !== undefined) {
      this.total -= old.bytes;
      this.sizes?.delete(key);
    }
  }

  /** What is on disk, read once; later changes are tracked in memory. */
  private async index(): Promise<Map<string, { bytes: number; usedMs: number }>> {
    if (this.sizes !== null) return this.sizes;
    const sizes = new Map<string, { bytes: number; usedMs: number }>();
    let total = 0;
    const shards = await readdir(this.options.dir).catch(() => [] as string[]);
    for (const shard of shards) {
      const names = await readdir(join(this.options.dir, shard)).catch(() => [] as string[]);
      for (const name of names) {
        const path = join(this.options.dir, shard, name);
        if (name.endsWith('.tmp')) {
          // A write that never got renamed (its process died): gone after an hour.
          const st = await stat(path).catch(() => null);
          if (st !== null && Date.now() - st.mtimeMs > 3_600_000) await rm(path, { force: true });
          continue;
        }
        const key = name.replace(/\.json\.gz$/, '');
        if (!KEY_RE.test(key)) continue;
        const st = await stat(path).catch(() => null);
        if (st === null) continue;
        sizes.set(key, { bytes: st.size, usedMs: st.mtimeMs });
        total += st.size;
      }
    }
    this.sizes = sizes;
    this.total = total;
    return sizes;
  }

  /** Drops what is past its age, then the least recently used until under the size cap. */
  private async evict(): Promise<void> {
    const sizes = await this.index();
    const now = Date.now();
    const byUse = [...sizes.entries()].sort((a, b) => a[1].usedMs - b[1].usedMs);
    for (const [key, { usedMs }] of byUse) {
      const expired = now - usedMs > this.options.maxAgeMs;
      if (!expired && this.total <= this.options.maxBytes) break;
      await this.remove(key);
      this.options.log?.(
        `compile cache: evicted ${key.slice(0, 16)} (${expired ? 'age' : 'size'})`,
      );
    }
  }
}
