import { randomBytes } from 'node:crypto';
import { mkdir, mkdtemp, readFile, rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { gzipSync } from 'node:zlib';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import {
  ARTEFACT_GZIP_FROM_BYTES,
  collectArtefact,
  unpackArtefact,
} from '../../../src/agent/artefact.js';
import {
  checkArtefact,
  MAX_ARTEFACT_BYTES,
  MAX_ARTEFACT_RAW_BYTES,
  type ArtefactEntry,
} from '../../../src/protocol/index.js';

/** A compile's work dir as the agent hands it to the host's compile cache, and back. */
describe('compile artefacts', () => {
  let dir: string;
  beforeEach(async () => {
    dir = await mkdtemp(join(tmpdir(), 'runner-artefact-'));
  });
  afterEach(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  const collect = async (files: Record<string, Buffer>): Promise<ArtefactEntry[]> => {
    const work = join(dir, 'compiled');
    await rm(work, { recursive: true, force: true });
    await mkdir(work, { recursive: true });
    for (const [name, content] of Object.entries(files))
      await writeFile(join(work, name), content, { mode: 0o755 });
    const out = await collectArtefact(work);
    if ('refused' in out) throw new Error(`refused: ${out.refused}`);
    return out.entries;
  };

  it('gzips a large file that shrinks, past the size that could travel unpacked, and lays it out as it was', async () => {
    // A binary like rustc's: more than the 8 MiB an artefact may carry, mostly debug info.
    const big = Buffer.concat([randomBytes(256 * 1024), Buffer.alloc(12 * 1024 * 1024, 7)]);
    const small = Buffer.from('fn main() {}\n');
    const noise = randomBytes(ARTEFACT_GZIP_FROM_BYTES * 2);
    const entries = await collect({ main: big, 'main.rs': small, noise });
    const byPath = new Map(entries.map((e) => [e.path, e]));
    expect(byPath.get('main')?.rawBytes).toBe(big.length);
    expect(Buffer.from(byPath.get('main')?.data ?? '', 'base64').length).toBeLessThan(1024 * 1024);
    // Small files, and files gzip does not shrink, travel as they are.
    expect(byPath.get('main.rs')?.rawBytes).toBeUndefined();
    expect(byPath.get('noise')?.rawBytes).toBeUndefined();
    expect(checkArtefact(entries)).toBeLessThan(MAX_ARTEFACT_BYTES);

    const laid = join(dir, 'laid');
    await mkdir(laid);
    await unpackArtefact(laid, entries, null);
    expect((await readFile(join(laid, 'main'))).equals(big)).toBe(true);
    expect((await readFile(join(laid, 'main.rs'))).equals(small)).toBe(true);
    expect((await readFile(join(laid, 'noise'))).equals(noise)).toBe(true);
    expect((await stat(join(laid, 'main'))).mode & 0o777).toBe(0o755);
  });

  it('refuses a work dir whose files do not fit, gzipped or not', async () => {
    const work = join(dir, 'w');
    await mkdir(work, { recursive: true });
    await writeFile(join(work, 'noise'), randomBytes(MAX_ARTEFACT_BYTES + 1));
    expect(await collectArtefact(work)).toEqual({
      refused: `over ${MAX_ARTEFACT_BYTES} bytes of files, large ones gzipped`,
    });
  });

  it('unpacks a gzipped file to exactly the size it claims, and never inflates a bomb', async () => {
    const laid = async (entry: ArtefactEntry): Promise<unknown> => {
      const target = await mkdtemp(join(dir, 'l-'));
      return unpackArtefact(target, [entry], null).catch((e: unknown) => e);
    };
    const content = Buffer.alloc(100_000, 1);
    const data = gzipSync(content).toString('base64');
    const short = await laid({ path: 'f', kind: 'file', mode: 0o644, data, rawBytes: 99_999 });
    expect((short as Error).message).toMatch(/cannot unpack f/);
    const long = await laid({ path: 'f', kind: 'file', mode: 0o644, data, rawBytes: 100_001 });
    expect((long as Error).message).toBe(
      'cannot unpack f: it holds more or less than its 100001 bytes',
    );
    // 256 MiB of zeros in a quarter of a megabyte, claiming 10 bytes: stopped after 11.
    const bomb = gzipSync(Buffer.alloc(256 * 1024 * 1024)).toString('base64');
    const started = Date.now();
    const e = await laid({ path: 'f', kind: 'file', mode: 0o644, data: bomb, rawBytes: 10 });
    expect((e as Error).message).toMatch(/cannot unpack f/);
    expect(Date.now() - started).toBeLessThan(1000);
    const garbage = await laid({ path: 'f', kind: 'file', mode: 0o644, data: 'AAAA', rawBytes: 3 });
    expect((garbage as Error).message).toMatch(/cannot unpack f/);
  });

  it('checks rawBytes: on files only, and the files laid out at most MAX_ARTEFACT_RAW_BYTES', () => {
    expect(() => checkArtefact([{ path: 'd', kind: 'dir', mode: 0o755, rawBytes: 1 }])).toThrow(
      /wrong fields/,
    );
    const huge = (i: number): ArtefactEntry => ({
      path: `f${i}`,
      kind: 'file',
      mode: 0o644,
      data: 'AAAA',
      rawBytes: MAX_ARTEFACT_RAW_BYTES / 2,
    });
    expect(() => checkArtefact([huge(1)])).not.toThrow();
    expect(() => checkArtefact([huge(1), huge(2), { ...huge(3), rawBytes: 1 }])).toThrow(
      /laid out/,
    );
  });
});
