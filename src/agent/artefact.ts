import { lchown, lstat, readdir, readFile, readlink, symlink } from 'node:fs/promises';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { constants as zlibConstants, gunzip, gzip } from 'node:zlib';
import {
  checkArtefact,
  checkFileName,
  MAX_ARTEFACT_BYTES,
  MAX_ARTEFACT_ENTRIES,
  MAX_ARTEFACT_RAW_BYTES,
  type ArtefactEntry,
} from '../protocol/index.js';
import { errnoOf, makeDirNoFollow, writeFileExclusive, type FileOwner } from './files.js';

const gzipAsync = promisify(gzip);
const gunzipAsync = promisify(gunzip);

/**
 * Files from this size travel gzipped (at the fastest level: a compiler's output, debug info
 * above all, shrinks 3-4x, and the guest's CPU is emulated), unless that does not shrink them.
 */
export const ARTEFACT_GZIP_FROM_BYTES = 64 * 1024;

/**
 * The work dir as the compile stage left it, as artefact entries (parents first), for the
 * host's compile cache; or why it cannot be kept (over MAX_ARTEFACT_ENTRIES, over
 * MAX_ARTEFACT_BYTES as they travel or MAX_ARTEFACT_RAW_BYTES laid out, a fifo or socket, a
 * name the job rules refuse). Read once no process of the job runs (the stage's cgroup is
 * gone), and before the run stage starts.
 */
export async function collectArtefact(
  workDir: string,
): Promise<{ entries: ArtefactEntry[] } | { refused: string }> {
  const entries: ArtefactEntry[] = [];
  let bytes = 0;
  let raw = 0;
  const walk = async (dir: string, prefix: string): Promise<string | null> => {
    const names = (await readdir(dir)).sort();
    for (const name of names) {
      const path = prefix === '' ? name : `${prefix}/${name}`;
      const full = join(dir, name);
      try {
        checkFileName(path, 'a compiled file');
      } catch (err) {
        return err instanceof Error ? err.message : String(err);
      }
      if (entries.length >= MAX_ARTEFACT_ENTRIES) return `over ${MAX_ARTEFACT_ENTRIES} entries`;
      const st = await lstat(full);
      const mode = st.mode & 0o777;
      if (st.isDirectory()) {
        entries.push({ path, kind: 'dir', mode });
        const why = await walk(full, path);
        if (why !== null) return why;
      } else if (st.isFile()) {
        raw += st.size;
        if (raw > MAX_ARTEFACT_RAW_BYTES) return `over ${MAX_ARTEFACT_RAW_BYTES} bytes of files`;
        const content = await readFile(full);
        let entry: ArtefactEntry = { path, kind: 'file', mode, data: content.toString('base64') };
        let size = content.length;
        if (content.length >= ARTEFACT_GZIP_FROM_BYTES) {
          const packed = await gzipAsync(content, { level: zlibConstants.Z_BEST_SPEED });
          if (packed.length < content.length) {
            entry = { ...entry, data: packed.toString('base64'), rawBytes: content.length };
            size = packed.length;
          }
        }
        bytes += size;
        if (bytes > MAX_ARTEFACT_BYTES)
          return `over ${MAX_ARTEFACT_BYTES} bytes of files, large ones gzipped`;
        entries.push(entry);
      } else if (st.isSymbolicLink()) {
        entries.push({ path, kind: 'link', mode: 0o777, target: await readlink(full) });
      } else {
        return `${path} is neither a file, a folder nor a link`;
      }
    }
    return null;
  };
  const why = await walk(workDir, '');
  return why === null ? { entries } : { refused: why };
}

/**
 * Lays a compile artefact out in a fresh, empty work dir, as the job's user: folders and files
 * with their modes (never set-id), links as links. Checked first (`checkArtefact`): every
 * entry's folder is one made here before it, and files are opened O_EXCL|O_NOFOLLOW, so
 * nothing is ever written through a link. No process of the job runs meanwhile.
 */
export async function unpackArtefact(
  workDir: string,
  entries: readonly ArtefactEntry[],
  owner: FileOwner | null,
): Promise<void> {
  checkArtefact(entries);
  for (const e of entries) {
    const path = join(workDir, e.path);
    switch (e.kind) {
      case 'dir':
        await makeDirNoFollow(path, e.path, owner, e.mode);
        break;
      case 'file':
        await writeFileExclusive(path, await fileBytes(e), e.path, owner, e.mode);
        break;
      case 'link':
        try {
          await symlink(e.target ?? '', path);
        } catch (err) {
          throw new Error(`cannot make the link ${e.path}: ${errnoOf(err) ?? String(err)}`);
        }
        if (owner) await lchown(path, owner.uid, owner.gid);
        break;
    }
  }
}

/** A file entry's bytes: its data, gunzipped when it says `rawBytes`, to exactly that size. */
async function fileBytes(e: ArtefactEntry): Promise<Buffer> {
  const data = Buffer.from(e.data ?? '', 'base64');
  if (e.rawBytes === undefined) return data;
  let content: Buffer;
  try {
    // One byte more than it claims, so that a longer stream is seen as one, never unpacked.
    content = await gunzipAsync(data, { maxOutputLength: e.rawBytes + 1 });
  } catch (err) {
    throw new Error(`cannot unpack ${e.path}: ${errnoOf(err) ?? (err as Error).message}`);
  }
  if (content.length !== e.rawBytes) {
    throw new Error(`cannot unpack ${e.path}: it holds more or less than its ${e.rawBytes} bytes`);
  }
  return content;
}
