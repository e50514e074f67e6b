import { describe, expect, test } from 'vitest';
import { multipartBoundary, readMultipart } from '../../../src/api/e2b/multipart.js';

const B = '----formdata-undici-0123';

function body(parts: { name: string; filename?: string; data: Buffer }[]): Buffer {
  const out: Buffer[] = [];
  for (const p of parts) {
    const fn = p.filename === undefined ? '' : `; filename="${p.filename}"`;
    out.push(
      Buffer.from(
        `--${B}\r\nContent-Disposition: form-data; name="${p.name}"${fn}\r\nContent-Type: application/octet-stream\r\n\r\n`,
      ),
      p.data,
      Buffer.from('\r\n'),
    );
  }
  out.push(Buffer.from(`--${B}--\r\n`));
  return Buffer.concat(out);
}

function chunks(data: Buffer, size: number): AsyncIterable<Buffer> {
  const out: Buffer[] = [];
  for (let i = 0; i < data.length; i += size) out.push(data.subarray(i, i + size));
  return {
    [Symbol.asyncIterator]: () => {
      const it = out.values();
      return { next: () => Promise.resolve(it.next()) };
    },
  };
}

async function parse(data: Buffer, size: number) {
  const got: { name: string; filename: string | null; data: Buffer }[] = [];
  const n = await readMultipart(chunks(data, size), B, async (part, content) => {
    const bufs: Buffer[] = [];
    for await (const c of content) bufs.push(c);
    got.push({ ...part, data: Buffer.concat(bufs) });
  });
  return { n, got };
}

describe('the streaming multipart reader', () => {
  const tricky = Buffer.concat([
    Buffer.from(`\r\n--${B.slice(0, 10)}`),
    Buffer.from(Array.from({ length: 256 }, (_, i) => i)),
    Buffer.from('\r\n--'),
  ]);
  const data = body([
    { name: 'file', filename: '/home/user/a b.txt', data: Buffer.from('hello') },
    { name: 'file', filename: '/home/user/t.bin', data: tricky },
    { name: 'file', filename: '/home/user/empty', data: Buffer.alloc(0) },
  ]);

  test.each([1, 2, 3, 7, 64, 100_000])(
    'reads every part byte-exact in chunks of %i',
    async (size) => {
      const { n, got } = await parse(data, size);
      expect(n).toBe(3);
      expect(got.map((g) => g.filename)).toEqual([
        '/home/user/a b.txt',
        '/home/user/t.bin',
        '/home/user/empty',
      ]);
      expect(got[0]?.data.toString()).toBe('hello');
      expect(got[1]?.data.equals(tricky)).toBe(true);
      expect(got[2]?.data.length).toBe(0);
    },
  );

  test('a part left unread is skipped', async () => {
    const names: (string | null)[] = [];
    await readMultipart(chunks(data, 5), B, (part) => {
      names.push(part.filename);
      return Promise.resolve();
    });
    expect(names).toHaveLength(3);
  });

  test('a truncated body is refused', async () => {
    await expect(parse(data.subarray(0, data.length - 20), 9)).rejects.toThrow(/truncated/);
  });

  test('the boundary comes from the content type', () => {
    expect(multipartBoundary(`multipart/form-data; boundary=${B}`)).toBe(B);
    expect(multipartBoundary('multipart/form-data; boundary="a b"')).toBe('a b');
    expect(() => multipartBoundary('multipart/form-data')).toThrow(/boundary/);
  });
});
