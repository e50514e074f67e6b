import { constants as fsc } from 'node:fs';
import { chmod, chown, lstat, mkdir, mkdtemp, open, rm } from 'node:fs/promises';
import { join } from 'node:path';
import {
  FileNameInvalidError,
  FileWriteFailedError,
  MessageInvalidError,
  RunnerError,
  SandboxFailureError,
} from '../errors.js';
import type { JobFile } from '../protocol/index.js';

/** The longest single path component, in bytes (NAME_MAX on Linux). */
export const MAX_NAME_BYTES = 255;
/** The longest whole relative path, in bytes (PATH_MAX on Linux). */
export const MAX_PATH_BYTES = 4096;
/** The deepest nesting of a file: at most this many components, the file included. */
export const MAX_PATH_COMPONENTS = 16;

/** Who owns what the agent writes for a job: the unprivileged user that runs it. */
export interface FileOwner {
  readonly uid: number;
  readonly gid: number;
}

/**
 * Checks one request file name and returns its components. A name is relative and canonical:
 * not empty, no leading `/`, no empty, `.` or `..` components, no NUL byte, each component at
 * most 255 bytes, the whole at most 4096 bytes and 16 components. Throws FILE_NAME_INVALID.
 */
export function checkFileName(name: string): string[] {
  const bad = (why: string): never => {
    throw new FileNameInvalidError(
      `file name ${JSON.stringify(name.slice(0, 80))} is invalid: ${why}`,
    );
  };
  if (name.length === 0) bad('it is empty');
  if (name.includes('\0')) bad('it contains a NUL byte');
  if (name.startsWith('/')) bad('it is absolute');
  if (Buffer.byteLength(name, 'utf8') > MAX_PATH_BYTES) bad(`it is over ${MAX_PATH_BYTES} bytes`);
  const parts = name.split('/');
  if (parts.length > MAX_PATH_COMPONENTS) bad(`it is nested deeper than ${MAX_PATH_COMPONENTS}`);
  for (const part of parts) {
    if (part === '') bad('it has an empty component (`//` or a trailing `/`)');
    if (part === '.' || part === '..') bad(`it has a \`${part}\` component`);
    if (Buffer.byteLength(part, 'utf8') > MAX_NAME_BYTES) {
      bad(`a component is over ${MAX_NAME_BYTES} bytes`);
    }
  }
  return parts;
}

/** Decodes a file's content to bytes. Base64 is checked strictly: MESSAGE_INVALID when bad. */
export function fileBytes(file: JobFile): Buffer {
  if (file.encoding === 'utf8') return Buffer.from(file.content, 'utf8');
  if (!/^[A-Za-z0-9+/]*={0,2}$/.test(file.content) || file.content.length % 4 === 1) {
    throw new MessageInvalidError(`file ${file.name}: content is not valid base64`);
  }
  return Buffer.from(file.content, 'base64');
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
 * Writes a job's files into `workDir`, never following a link: every name is checked first
 * (nothing is written when one is bad); folders are made one component at a time and each is
 * checked with lstat to be a real directory; files are opened with O_CREAT|O_EXCL|O_NOFOLLOW,
 * so a planted symlink or hardlink at the target fails instead of being written through, and
 * two files with one name fail. Written files are handed to `owner` (mode 0644, folders 0755).
 *
 * The no-follow checks are complete as long as no process of the job runs while this writes
 * (the executor writes before the first stage starts): Node has no openat() to pin each folder.
 * Throws FILE_NAME_INVALID for a bad or clashing name, MESSAGE_INVALID for bad base64,
 * FILE_WRITE_FAILED for anything else.
 */
export async function writeJobFiles(
  workDir: string,
  files: readonly JobFile[],
  owner: FileOwner | null,
): Promise<void> {
  const checked = files.map((f) => ({ parts: checkFileName(f.name), bytes: fileBytes(f), f }));
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

async function makeDirNoFollow(dir: string, name: string, owner: FileOwner | null): Promise<void> {
  try {
    await mkdir(dir, { mode: 0o755 });
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

async function writeFileExclusive(
  path: string,
  bytes: Buffer,
  name: string,
  owner: FileOwner | null,
): Promise<void> {
  const flags = fsc.O_WRONLY | fsc.O_CREAT | fsc.O_EXCL | fsc.O_NOFOLLOW;
  let handle;
  try {
    handle = await open(path, flags, 0o644);
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
