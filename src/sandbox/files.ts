import { FileNameInvalidError } from '../errors.js';
import { checkFileName, SANDBOX_DIR } from '../protocol/index.js';
import type { FileEntry, FileType } from './types.js';

/**
 * A sandbox path as the client gave it (absolute under SANDBOX_DIR, or relative to it) made
 * absolute, after the file-name rules of jobs: no `..`, no `.`, no NUL, no empty component,
 * at most 4096 bytes. The sandbox folder itself is allowed where `root` is. Anything outside
 * the folder is FILE_NAME_INVALID.
 */
export function sandboxPath(path: string, options: { root?: boolean } = {}): string {
  let rel = path;
  if (rel.startsWith('/')) {
    if (rel === SANDBOX_DIR || rel === `${SANDBOX_DIR}/`) rel = '';
    else if (rel.startsWith(`${SANDBOX_DIR}/`)) rel = rel.slice(SANDBOX_DIR.length + 1);
    else
      throw new FileNameInvalidError(
        `path ${JSON.stringify(path.slice(0, 200))} is outside the sandbox folder ${SANDBOX_DIR}`,
      );
  }
  if (rel.endsWith('/')) rel = rel.replace(/\/+$/, '');
  if (rel === '' || rel === '.') {
    if (options.root === true) return SANDBOX_DIR;
    throw new FileNameInvalidError(`path ${JSON.stringify(path)} names the sandbox folder itself`);
  }
  checkFileName(rel, 'path');
  return `${SANDBOX_DIR}/${rel}`;
}

/**
 * What `find -printf` prints of an entry (FIND_FORMAT): type, size, mode (octal), modification
 * time (seconds), path and link target, separated by tabs, each entry ended by a NUL.
 */
export const FIND_FORMAT = '%y\\t%s\\t%m\\t%T@\\t%p\\t%l\\0';

const TYPES: Record<string, FileType> = { f: 'file', d: 'dir', l: 'symlink' };

/** Parses find's output (FIND_FORMAT) into entries. */
export function parseFind(out: Buffer): FileEntry[] {
  const entries: FileEntry[] = [];
  for (const record of out.toString('utf8').split('\0')) {
    if (record === '') continue;
    const [type = '', size = '0', mode = '0', mtime = '0', path = '', ...rest] = record.split('\t');
    const target = rest.join('\t');
    const slash = path.lastIndexOf('/');
    entries.push({
      name: path.slice(slash + 1),
      path,
      type: TYPES[type] ?? 'other',
      size: Number(size),
      mode: parseInt(mode, 8),
      modifiedAt: new Date(Math.round(Number(mtime) * 1000)).toISOString(),
      ...(type === 'l' && { target }),
    });
  }
  return entries;
}

/** Exit codes of the file commands below. */
export const MISSING_EXIT = 44;
export const EXISTS_EXIT = 45;

/** Shell scripts of the file calls; their operands come as $1, $2 (never in the script). */
export const FILE_SCRIPTS = {
  write: 'mkdir -p -- "$(dirname -- "$1")" && cat > "$1"',
  stat: `[ -e "$1" ] || [ -L "$1" ] || exit ${MISSING_EXIT}; find "$1" -maxdepth 0 -printf '${FIND_FORMAT}'`,
  list: `[ -d "$1" ] || exit ${MISSING_EXIT}; find "$1" -mindepth 1 -maxdepth "$2" -printf '${FIND_FORMAT}'`,
  remove: `[ -e "$1" ] || [ -L "$1" ] || exit ${MISSING_EXIT}; rm -rf -- "$1"`,
  mkdir: `[ -d "$1" ] && exit ${EXISTS_EXIT}; mkdir -p -- "$1"`,
  move: `[ -e "$1" ] || [ -L "$1" ] || exit ${MISSING_EXIT}; mkdir -p -- "$(dirname -- "$2")" && mv -T -- "$1" "$2"`,
  /** Bytes $2.. ($3 of them) of a file. */
  read: '[ -f "$1" ] || exit 44; dd if="$1" iflag=skip_bytes,count_bytes skip="$2" count="$3" bs=1M status=none',
} as const;
