import { constants as fsc } from 'node:fs';
import {
  chmod,
  chown,
  copyFile,
  lchown,
  lstat,
  mkdir,
  mkdtemp,
  open,
  readdir,
  readlink,
  rm,
  symlink,
} from 'node:fs/promises';
import { join } from 'node:path';
import {
  FileNameInvalidError,
  FileWriteFailedError,
  RunnerError,
  SandboxFailureError,
} from '../errors.js';
import { checkFiles, decodeBase64, type JobFile } from '../protocol/index.js';

/** Who owns what the agent writes for a job: the unprivileged user that runs it. */
export interface FileOwner {
  readonly uid: number;
  readonly gid: number;
}

/** A file's content as bytes (the encoding was checked by `checkFiles`). */
export function fileBytes(file: JobFile): Buffer {
  return file.encoding === 'utf8'
    ? Buffer.from(file.content, 'utf8')
    : decodeBase64(file.content, `file ${file.name}`);
}

/**
 * Creates a fresh, private work dir under `root` (mode 0700, then handed to `owner`). The
 * root is created when missing (mode 0711: others may pass through it, not list it) and must
 * be a real directory, not a symlink.
 */
export async function createWorkDir(root: string, owner: FileOwner | null): Promise<string> {
  await mkdir(root, { recursive: true, mode: 0o711 });
  const st = await lstat(root);
  if (!st.isDirectory()) {
    throw new SandboxFailureError(`work root ${root} is not a directory`);
  }
  const dir = await mkdtemp(join(root, 'job-'));
  await chmod(dir, 0o700);
  if (owner) await chown(dir, owner.uid, owner.gid);
  return dir;
}

/**
 * Removes a work dir. `rm` never follows symlinks inside it (it unlinks them); the caller makes
 * sure no process of the job is left that could swap a component while this runs.
 */
export async function removeWorkDir(dir: string): Promise<void> {
  await rm(dir, { recursive: true, force: true, maxRetries: 2 });
}

/**
 * Copies a work dir whole into a new folder `to` (made here, private), every entry handed to
 * `owner` with its mode kept: each test case runs in a fresh copy of the compiled work dir, so
 * nothing one case writes is seen by the next. Links are copied as links, never followed;
 * anything but files, folders and links (fifos, sockets a case left) is not copied. The caller
 * makes sure no process of the job runs meanwhile.
 */
export async function copyWorkDir(
  from: string,
  to: string,
  owner: FileOwner | null,
): Promise<void> {
  await mkdir(to, { mode: 0o700 });
  if (owner) await chown(to, owner.uid, owner.gid);
  const copyInto = async (src: string, dst: string): Promise<void> => {
    for (const entry of await readdir(src, { withFileTypes: true })) {
      const a = join(src, entry.name);
      const b = join(dst, entry.name);
      const st = await lstat(a);
      if (entry.isDirectory()) {
        await mkdir(b);
        await copyInto(a, b);
      } else if (entry.isFile()) {
        await copyFile(a, b, fsc.COPYFILE_EXCL);
      } else if (entry.isSymbolicLink()) {
        await symlink(await readlink(a), b);
      } else {
        continue;
      }
      if (!entry.isSymbolicLink()) await chmod(b, st.mode & 0o7777);
      if (owner) await lchown(b, owner.uid, owner.gid);
    }
  };
  await copyInto(from, to);
}

/**
 * Empties the shared scratch folders (/tmp, /var/tmp, /dev/shm in the guest) of what the job's
 * user left there, after each stage: a tmpfs keeps its files, and their memory, after the
 * stage's cgroup is gone, so a case that filled one would leave the next case (and the VM) short.
 * Only entries the job's own uid owns are removed (a sticky dir lets it make nothing else at
 * the top), never following a link. Returns how many were removed.
 */
export async function wipeScratch(
  dirs: readonly string[],
  owner: FileOwner | null,
): Promise<number> {
  if (owner === null) return 0;
  let removed = 0;
  for (const dir of dirs) {
    const names = await readdir(dir).catch(() => [] as string[]);
    for (const name of names) {
      const path = join(dir, name);
      const st = await lstat(path).catch(() => null);
      if (st === null || st.uid !== owner.uid) continue;
      await rm(path, { recursive: true, force: true, maxRetries: 2 });
      removed++;
    }
  }
  return removed;
}

/**
 * Writes a job's files into `workDir`, never following a link: every name is checked first
 * (nothing is written when one is bad); folders are made one component at a time and each is
 * checked with lstat to be a real directory; files are opened with O_CREAT|O_EXCL|O_NOFOLLOW,
 * so a planted symlink or hardlink at the target fails instead of being written through, and
 * two files with one name fail. Written files are handed to `owner` (mode 0644, folders 0755).
 *
 * The no-follow checks are complete as long as no process of the job runs while this writes
 * (the executor writes before the first stage starts): Node has no openat() to pin each folder.
 * Throws FILE_NAME_INVALID for a bad or clashing name, ENCODING_INVALID for bad base64,
 * FILE_WRITE_FAILED for anything else.
 */
export async function writeJobFiles(
  workDir: string,
  files: readonly JobFile[],
  owner: FileOwner | null,
): Promise<void> {
  // The host checked these with the same rules; the agent trusts nothing and checks again.
  checkFiles(files);
  const checked = files.map((f) => ({ parts: f.name.split('/'), bytes: fileBytes(f), f }));
  const madeDirs = new Set<string>();
  for (const { parts, bytes, f } of checked) {
    let dir = workDir;
    for (const part of parts.slice(0, -1)) {
      dir = join(dir, part);
      if (madeDirs.has(dir)) continue;
      await makeDirNoFollow(dir, f.name, owner);
      madeDirs.add(dir);
    }
    await writeFileExclusive(join(dir, parts[parts.length - 1] as string), bytes, f.name, owner);
  }
}

/**
 * Makes the folder `dir` (of the job's file `name`), or finds it a real folder already (never a
 * link to one). A new folder gets `mode` (the umask does not narrow it) and `owner`.
 */
export async function makeDirNoFollow(
  dir: string,
  name: string,
  owner: FileOwner | null,
  mode = 0o755,
): Promise<void> {
  try {
    await mkdir(dir, { mode });
    if (mode !== 0o755) await chmod(dir, mode);
    if (owner) await chown(dir, owner.uid, owner.gid);
    return;
  } catch (err) {
    if (errnoOf(err) !== 'EEXIST') throw writeFailed(name, err);
  }
  // It exists: fine only when it is a real directory (never a symlink to one).
  const st = await lstat(dir).catch((err: unknown) => {
    throw writeFailed(name, err);
  });
  if (st.isSymbolicLink()) {
    throw new FileWriteFailedError(`file ${name}: a folder on its path is a symlink`);
  }
  if (!st.isDirectory()) {
    throw new FileNameInvalidError(`file ${name}: a folder on its path is also given as a file`);
  }
}

/**
 * Writes a new file (O_CREAT|O_EXCL|O_NOFOLLOW: never over or through anything already there)
 * with `mode` (the umask does not narrow it) and `owner`.
 */
export async function writeFileExclusive(
  path: string,
  bytes: Buffer,
  name: string,
  owner: FileOwner | null,
  mode = 0o644,
): Promise<void> {
  const flags = fsc.O_WRONLY | fsc.O_CREAT | fsc.O_EXCL | fsc.O_NOFOLLOW;
  let handle;
  try {
    handle = await open(path, flags, mode);
    if (mode !== 0o644) await handle.chmod(mode);
  } catch (err) {
    if (errnoOf(err) === 'EEXIST') {
      throw new FileNameInvalidError(
        `file ${name}: the name is given twice, or something already exists there`,
      );
    }
    throw writeFailed(name, err);
  }
  try {
    if (owner) await handle.chown(owner.uid, owner.gid);
    await handle.writeFile(bytes);
  } catch (err) {
    throw writeFailed(name, err);
  } finally {
    await handle.close();
  }
}

function writeFailed(name: string, err: unknown): RunnerError {
  if (err instanceof RunnerError) return err;
  const why = err instanceof Error ? err.message : String(err);
  return new FileWriteFailedError(`file ${name}: ${why}`, { cause: err });
}

/** The errno code of a Node system error, or undefined. */
export function errnoOf(err: unknown): string | undefined {
  if (typeof err === 'object' && err !== null && 'code' in err && typeof err.code === 'string') {
    return err.code;
  }
  return undefined;
}
