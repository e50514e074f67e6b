import {
  ArgsInvalidError,
  EncodingInvalidError,
  EnvInvalidError,
  FileNameInvalidError,
  LimitInvalidError,
} from '../errors.js';
import { MAX_FRAME_BYTES } from './frame.js';
import type { ArtefactEntry, ExecuteMessage, JobFile } from './messages.js';

/**
 * The rules of a job that the host and the agent both enforce, written once: the host checks
 * every execute message with them before a VM is touched (a bad request is a 400 naming the
 * field), and the agent checks again and trusts nothing. A message the host lets through is
 * one the agent takes.
 */

/** The longest single path component, in bytes (NAME_MAX on Linux). */
export const MAX_NAME_BYTES = 255;
/** The longest whole relative path, in bytes (PATH_MAX on Linux). */
export const MAX_PATH_BYTES = 4096;
/** The deepest nesting of a file: at most this many components, the file included. */
export const MAX_PATH_COMPONENTS = 16;
/** The most files of one job. */
export const MAX_JOB_FILES = 1000;
/** The most test cases of one job. */
export const MAX_JOB_CASES = 1000;
/** The most arguments of one job. */
export const MAX_JOB_ARGS = 1000;
/** Standard base64 with optional padding (checked further by {@link isBase64}). */
export const BASE64_PATTERN = '^[A-Za-z0-9+/]*={0,2}$';
/** What an environment variable name may look like. */
export const ENV_NAME_PATTERN = '^[A-Za-z_][A-Za-z0-9_]*$';
/** Linux's MAX_ARG_STRLEN: one argument, or one `NAME=value`, with its NUL. */
export const MAX_ARG_STRING_BYTES = 131_072;
/**
 * What the arguments and environment of one job may take of execve's budget, counted as the
 * kernel counts them (each string, its NUL and its pointer). Linux allows a quarter of the
 * stack limit (2 MiB with the usual 8 MiB); the sandbox's own arguments, the language's command
 * and the fixed variables need the rest.
 */
export const MAX_EXEC_BYTES = 1_048_576;

/**
 * The persistent folder of a sandbox VM (sandbox jobs run in it; it is the sandbox user's home):
 * the same path as E2B's, so that code written for its sandboxes finds its files.
 */
export const SANDBOX_DIR = '/home/user';
/**
 * The most program output one job returns, over all its stages and test cases together: what
 * fits one result frame as base64 with room for the rest of the message. Output past it is
 * read and dropped, and the stage is marked truncated.
 */
export const MAX_RESULT_OUTPUT_BYTES = Math.floor((MAX_FRAME_BYTES - 1_048_576) / 4) * 3;

/** The most entries of one compile artefact (files, folders and links of the work dir). */
export const MAX_ARTEFACT_ENTRIES = 4096;
/**
 * The most bytes of the files of one compile artefact as they travel (a large file gzipped):
 * as base64, with the job's own files, it must fit one execute frame. A compile that leaves
 * more is not kept.
 */
export const MAX_ARTEFACT_BYTES = 8 * 1024 * 1024;
/** The most bytes of the files of one compile artefact once laid out (gzipped ones unpacked). */
export const MAX_ARTEFACT_RAW_BYTES = 64 * 1024 * 1024;

const base64Re = new RegExp(BASE64_PATTERN);
const envNameRe = new RegExp(ENV_NAME_PATTERN);

/**
 * True when `s` is standard base64 that decodes without loss: only the alphabet, padding only
 * at the end and only to a multiple of four, and never a length of 4n+1 (no byte ends there).
 */
export function isBase64(s: string): boolean {
  if (!base64Re.test(s)) return false;
  if (s.length % 4 === 1) return false;
  return !s.includes('=') || s.length % 4 === 0;
}

/** Decodes base64 that {@link isBase64} accepts; ENCODING_INVALID naming `field` otherwise. */
export function decodeBase64(s: string, field: string): Buffer {
  if (!isBase64(s)) throw new EncodingInvalidError(`${field} is not valid base64`);
  return Buffer.from(s, 'base64');
}

/**
 * Checks one file name and returns its components. A name is relative and canonical: not
 * empty, no leading `/`, no empty, `.` or `..` component, no NUL byte, each component at most
 * 255 bytes, the whole at most 4096 bytes and 16 components. FILE_NAME_INVALID naming `field`.
 */
export function checkFileName(name: string, field = 'file name'): string[] {
  const bad = (why: string): never => {
    throw new FileNameInvalidError(`${field} ${JSON.stringify(name.slice(0, 80))} ${why}`);
  };
  if (name.length === 0) bad('is empty');
  if (name.includes('\0')) bad('contains a NUL byte');
  if (name.startsWith('/')) bad('is absolute');
  if (Buffer.byteLength(name, 'utf8') > MAX_PATH_BYTES) bad(`is over ${MAX_PATH_BYTES} bytes`);
  const parts = name.split('/');
  if (parts.length > MAX_PATH_COMPONENTS) bad(`is nested deeper than ${MAX_PATH_COMPONENTS}`);
  for (const part of parts) {
    if (part === '') bad('has an empty component (`//` or a trailing `/`)');
    if (part === '.' || part === '..') bad(`has a \`${part}\` component`);
    if (Buffer.byteLength(part, 'utf8') > MAX_NAME_BYTES) {
      bad(`has a component over ${MAX_NAME_BYTES} bytes`);
    }
  }
  return parts;
}

/**
 * Checks a job's files: each name (as above), each content's encoding, no name twice, and no
 * name that is also a folder of another (`a` and `a/b`). Throws naming `files[i]`.
 */
export function checkFiles(files: readonly JobFile[], field = 'files'): void {
  if (files.length === 0) throw new FileNameInvalidError(`${field}: a job needs at least one file`);
  if (files.length > MAX_JOB_FILES) {
    throw new FileNameInvalidError(`${field}: a job may have at most ${MAX_JOB_FILES} files`);
  }
  const names = new Map<string, number>();
  const folders = new Map<string, number>();
  files.forEach((f, i) => {
    const parts = checkFileName(f.name, `${field}[${i}].name`);
    if (f.encoding === 'base64' && !isBase64(f.content)) {
      throw new EncodingInvalidError(`${field}[${i}].content is not valid base64`);
    }
    const twice = names.get(f.name);
    if (twice !== undefined) {
      throw new FileNameInvalidError(
        `${field}[${i}].name ${JSON.stringify(f.name.slice(0, 80))} is also ${field}[${twice}].name`,
      );
    }
    names.set(f.name, i);
    for (let k = 1; k < parts.length; k++) {
      const folder = parts.slice(0, k).join('/');
      if (!folders.has(folder)) folders.set(folder, i);
    }
  });
  for (const [folder, i] of folders) {
    const file = names.get(folder);
    if (file !== undefined) {
      throw new FileNameInvalidError(
        `${field}[${file}].name ${JSON.stringify(folder.slice(0, 80))} is also a folder of ${field}[${i}].name`,
      );
    }
  }
}

/** Checks environment variable names and values (no NUL); ENV_INVALID naming the variable. */
export function checkEnv(env: Readonly<Record<string, string>>, field = 'env'): void {
  for (const [name, value] of Object.entries(env)) {
    const where = `${field}.${JSON.stringify(name.slice(0, 64))}`;
    if (!envNameRe.test(name)) {
      throw new EnvInvalidError(`${where}: a name must match ${ENV_NAME_PATTERN}`);
    }
    if (value.includes('\0')) throw new EnvInvalidError(`${where}: the value holds a NUL byte`);
    if (Buffer.byteLength(name) + Buffer.byteLength(value) + 2 > MAX_ARG_STRING_BYTES) {
      throw new EnvInvalidError(`${where}: over the exec limit of ${MAX_ARG_STRING_BYTES} bytes`);
    }
  }
}

/** Checks arguments (no NUL, each under the exec limit); ARGS_INVALID naming `args[i]`. */
export function checkArgs(args: readonly string[], field = 'args'): void {
  if (args.length > MAX_JOB_ARGS) {
    throw new ArgsInvalidError(`${field}: a job may have at most ${MAX_JOB_ARGS} arguments`);
  }
  args.forEach((arg, i) => {
    if (arg.includes('\0')) throw new ArgsInvalidError(`${field}[${i}] holds a NUL byte`);
    if (Buffer.byteLength(arg) + 1 > MAX_ARG_STRING_BYTES) {
      throw new ArgsInvalidError(
        `${field}[${i}] is over the exec limit of ${MAX_ARG_STRING_BYTES} bytes`,
      );
    }
  });
}

/** Bytes execve counts for these strings: each one, its NUL and its pointer. */
export function execBytes(args: readonly string[], env: Readonly<Record<string, string>>): number {
  let total = 0;
  for (const a of args) total += Buffer.byteLength(a) + 1 + 8;
  for (const [k, v] of Object.entries(env))
    total += Buffer.byteLength(k) + Buffer.byteLength(v) + 2 + 8;
  return total;
}

/**
 * Every rule of an execute message beyond its schema: files, encodings, env, args, their exec
 * size together, and the cases. Throws the error of the first rule broken, naming the field.
 */
export function checkJob(
  message: Pick<
    ExecuteMessage,
    'files' | 'stdin' | 'env' | 'args' | 'cases' | 'stream' | 'sandbox'
  >,
): void {
  if (message.sandbox === undefined) checkFiles(message.files);
  else {
    if (message.files.length > 0)
      throw new FileNameInvalidError("files: a sandbox job has none (its files are the sandbox's)");
    checkArgs(message.sandbox.argv, 'sandbox.argv');
    if (message.sandbox.cwd !== undefined) checkFileName(message.sandbox.cwd, 'sandbox.cwd');
    if (message.cases !== undefined)
      throw new LimitInvalidError('a sandbox job has one run: it cannot have test cases');
  }
  if (!isBase64(message.stdin)) throw new EncodingInvalidError('stdin is not valid base64');
  checkEnv(message.env);
  checkArgs(message.args);
  const bytes = execBytes(message.args, message.env);
  if (bytes > MAX_EXEC_BYTES) {
    throw new ArgsInvalidError(
      `args and env take ${bytes} bytes of the exec limit together, over ${MAX_EXEC_BYTES}`,
    );
  }
  if (message.cases !== undefined && message.stream !== undefined)
    throw new LimitInvalidError('a live (streamed) job has one run: it cannot have test cases');
  if (message.cases !== undefined) {
    if (message.cases.length === 0 || message.cases.length > MAX_JOB_CASES) {
      throw new LimitInvalidError(`cases: a job may have 1 to ${MAX_JOB_CASES} test cases`);
    }
    message.cases.forEach((c, i) => {
      if (!isBase64(c)) throw new EncodingInvalidError(`cases[${i}] is not valid base64`);
    });
  }
}

/**
 * Checks a compile artefact's entries, on both sides (the agent that lays it out trusts no
 * host, the host keeps none that breaks these): each path a canonical relative name
 * (`checkFileName`), none twice, each one's folder an earlier `dir` entry (so laying them out in
 * order never goes through a link), a file with its bytes as base64, a link with its target, a
 * folder with neither, `rawBytes` (the size of a file whose `data` is gzipped) only on a file,
 * the files' bytes as they travel together at most MAX_ARTEFACT_BYTES and laid out at most
 * MAX_ARTEFACT_RAW_BYTES. Returns the files' byte count as they travel; FILE_NAME_INVALID or
 * ENCODING_INVALID naming the entry.
 */
export function checkArtefact(entries: readonly ArtefactEntry[], field = 'artefact'): number {
  if (entries.length > MAX_ARTEFACT_ENTRIES) {
    throw new FileNameInvalidError(`${field}: at most ${MAX_ARTEFACT_ENTRIES} entries`);
  }
  const seen = new Map<string, ArtefactEntry['kind']>();
  let bytes = 0;
  let raw = 0;
  entries.forEach((e, i) => {
    const where = `${field}[${i}]`;
    const parts = checkFileName(e.path, `${where}.path`);
    if (seen.has(e.path)) throw new FileNameInvalidError(`${where}.path is given twice`);
    if (parts.length > 1 && seen.get(parts.slice(0, -1).join('/')) !== 'dir') {
      throw new FileNameInvalidError(`${where}.path is not inside an earlier folder entry`);
    }
    const hasData = e.data !== undefined;
    const hasTarget = e.target !== undefined;
    if (
      e.kind === 'file'
        ? !hasData || hasTarget
        : e.kind === 'link'
          ? !hasTarget || hasData
          : hasData || hasTarget
    ) {
      throw new FileNameInvalidError(`${where}: a ${e.kind} entry has the wrong fields`);
    }
    if (hasData) {
      if (!isBase64(e.data as string))
        throw new EncodingInvalidError(`${where}.data is not valid base64`);
      const encoded = Math.floor(((e.data as string).length * 3) / 4);
      bytes += encoded;
      raw += e.rawBytes ?? encoded;
    } else if (e.rawBytes !== undefined) {
      throw new FileNameInvalidError(`${where}: a ${e.kind} entry has the wrong fields`);
    }
    if (hasTarget && (e.target as string).includes('\0')) {
      throw new FileNameInvalidError(`${where}.target contains a NUL byte`);
    }
    seen.set(e.path, e.kind);
  });
  if (bytes > MAX_ARTEFACT_BYTES) {
    throw new FileNameInvalidError(`${field}: its files take over ${MAX_ARTEFACT_BYTES} bytes`);
  }
  if (raw > MAX_ARTEFACT_RAW_BYTES) {
    throw new FileNameInvalidError(
      `${field}: its files take over ${MAX_ARTEFACT_RAW_BYTES} bytes laid out`,
    );
  }
  return bytes;
}
