import { Inflate } from 'fflate';
import { RequestInvalidError } from '../../errors.js';
import { checkFileName } from '../../protocol/index.js';

/** Most entries an additional_files zip may hold (folders included). */
export const MAX_ZIP_ENTRIES = 100;
/**
 * Most bytes an additional_files zip may unpack to, all files together (Judge0's own
 * max_extract_size is 10240 KB; ours is a little less so the job still fits one agent frame).
 */
export const MAX_EXTRACT_BYTES = 8 * 1024 * 1024;
/** Compressed bytes fed to the inflater at once: deflate's ratio is at most ~1032:1, so one
 * step can never produce more than ~16 MiB before the cap is checked again. */
const INFLATE_STEP_BYTES = 16 * 1024;

/** One unpacked file. */
export interface ZipFile {
  readonly name: string;
  readonly content: Buffer;
}

const bad = (why: string): never => {
  throw new RequestInvalidError(`additional_files ${why}`, {
    details: { field: 'additional_files' },
  });
};

interface Entry {
  readonly name: string;
  readonly method: number;
  readonly compressedSize: number;
  readonly declaredSize: number;
  readonly localOffset: number;
}

/**
 * Reads the central directory, where a zip says what it holds, before anything is inflated:
 * the count, every name, every declared size, symlinks (a Unix mode in the external attributes)
 * and encryption are all checked here, so a bad or oversized zip costs no decompression.
 */
function centralDirectory(zip: Buffer): Entry[] {
  // The end record is in the last 22 + 65535 (comment) bytes.
  let eocd = -1;
  for (let i = zip.length - 22; i >= Math.max(0, zip.length - 22 - 65_535); i--) {
    if (zip.readUInt32LE(i) === 0x06054b50) {
      eocd = i;
      break;
    }
  }
  if (eocd < 0) bad('is not a zip archive (no end of central directory)');
  const count = zip.readUInt16LE(eocd + 10);
  const cdOffset = zip.readUInt32LE(eocd + 16);
  if (count === 0xffff || cdOffset === 0xffffffff) bad('is a zip64 archive, which is not taken');
  if (count > MAX_ZIP_ENTRIES) bad(`has ${count} entries, over the cap of ${MAX_ZIP_ENTRIES}`);
  const entries: Entry[] = [];
  let at = cdOffset;
  let declaredTotal = 0;
  for (let i = 0; i < count; i++) {
    if (at + 46 > zip.length || zip.readUInt32LE(at) !== 0x02014b50)
      bad('has a broken central directory');
    const madeBy = zip.readUInt16LE(at + 4) >> 8;
    const flags = zip.readUInt16LE(at + 8);
    const method = zip.readUInt16LE(at + 10);
    const compressedSize = zip.readUInt32LE(at + 20);
    const declaredSize = zip.readUInt32LE(at + 24);
    const nameLen = zip.readUInt16LE(at + 28);
    const extraLen = zip.readUInt16LE(at + 30);
    const commentLen = zip.readUInt16LE(at + 32);
    const mode = zip.readUInt32LE(at + 38) >>> 16;
    const localOffset = zip.readUInt32LE(at + 42);
    const name = zip.subarray(at + 46, at + 46 + nameLen).toString('utf8');
    at += 46 + nameLen + extraLen + commentLen;
    const shown = JSON.stringify(name.slice(0, 80));
    if ((flags & 1) !== 0) bad(`entry ${shown} is encrypted`);
    // 3 = made on Unix, where the high half of the external attributes is the file mode.
    if (madeBy === 3 && (mode & 0o170000) === 0o120000) bad(`entry ${shown} is a symlink`);
    if (name.includes('\\')) bad(`entry ${shown} has a backslash in its name`);
    if (name.endsWith('/')) continue; // a folder: made by the files in it
    try {
      checkFileName(name, 'entry');
    } catch (err) {
      bad((err as Error).message);
    }
    if (method !== 0 && method !== 8) bad(`entry ${shown} uses compression method ${method}`);
    declaredTotal += declaredSize;
    if (declaredTotal > MAX_EXTRACT_BYTES)
      bad(`unpacks to more than the cap of ${MAX_EXTRACT_BYTES} bytes`);
    entries.push({ name, method, compressedSize, declaredSize, localOffset });
  }
  return entries;
}

/** One entry's bytes, inflated step by step so a lying declared size cannot run away. */
function unpackEntry(zip: Buffer, e: Entry, budget: { left: number }): Buffer {
  const at = e.localOffset;
  if (at + 30 > zip.length || zip.readUInt32LE(at) !== 0x04034b50)
    bad(`entry ${JSON.stringify(e.name)} has a broken local header`);
  const start = at + 30 + zip.readUInt16LE(at + 26) + zip.readUInt16LE(at + 28);
  const data = zip.subarray(start, start + e.compressedSize);
  if (data.length !== e.compressedSize) bad(`entry ${JSON.stringify(e.name)} is truncated`);
  if (e.method === 0) {
    budget.left -= data.length;
    if (budget.left < 0) bad(`unpacks to more than the cap of ${MAX_EXTRACT_BYTES} bytes`);
    return Buffer.from(data);
  }
  const chunks: Uint8Array[] = [];
  const inflate = new Inflate((chunk) => {
    budget.left -= chunk.length;
    chunks.push(chunk);
  });
  try {
    for (let i = 0; i < data.length; i += INFLATE_STEP_BYTES) {
      inflate.push(data.subarray(i, i + INFLATE_STEP_BYTES), i + INFLATE_STEP_BYTES >= data.length);
      if (budget.left < 0) bad(`unpacks to more than the cap of ${MAX_EXTRACT_BYTES} bytes`);
    }
    if (data.length === 0) inflate.push(new Uint8Array(0), true);
  } catch (err) {
    if (err instanceof RequestInvalidError) throw err;
    bad(`entry ${JSON.stringify(e.name)} does not inflate: ${(err as Error).message}`);
  }
  return Buffer.concat(chunks);
}

/**
 * Unpacks Judge0's `additional_files` (a zip, already base64-decoded) under our file-name
 * rules: no `..`, no absolute names, no symlinks, at most MAX_ZIP_ENTRIES entries and
 * MAX_EXTRACT_BYTES in all, checked before anything is inflated and again while inflating.
 * Nothing is written anywhere: the files become part of the job. Throws REQUEST_INVALID
 * (with `details.field`), which the Judge0 routes answer as a 422 on additional_files.
 */
export function unpackAdditionalFiles(zip: Buffer): ZipFile[] {
  const entries = centralDirectory(zip);
  const budget = { left: MAX_EXTRACT_BYTES };
  return entries.map((e) => ({ name: e.name, content: unpackEntry(zip, e, budget) }));
}
