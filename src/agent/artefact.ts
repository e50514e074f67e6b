import { lchown, lstat, readdir, readFile, readlink, symlink } from 'node:fs/promises';
import { join } from 'node:path';
import {
  checkArtefact,
  checkFileName,
  MAX_ARTEFACT_BYTES,
  MAX_ARTEFACT_ENTRIES,
  type ArtefactEntry,
} from '../protocol/index.js';
import { errnoOf, makeDirNoFollow, writeFileExclusive, type FileOwner } from './files.js';

/**
 * The work dir as the compile stage left it, as artefact entries (parents first), for the
 * host's compile cache; or why it cannot be kept (over MAX_ARTEFACT_ENTRIES or
 * MAX_ARTEFACT_BYTES, a fifo or socket, a name the job rules refuse). Read once no process of
 * the job runs (the stage's cgroup is gone), and before the run stage starts.
 */
export async function collectArtefact(
  workDir: string,
): Promise<{ entries: ArtefactEntry[] } | { refused: string }> {
  const entries: ArtefactEntry[] = [];
  let bytes = 0;
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
        bytes += st.size;
        if (bytes > MAX_ARTEFACT_BYTES) return `over ${MAX_ARTEFACT_BYTES} bytes of files`;
        entries.push({ path, kind: 'file', mode, data: (await readFile(full)).toString('base64') });
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
        await writeFileExclusive(path, Buffer.from(e.data ?? '', 'base64'), e.path, owner, e.mode);
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
