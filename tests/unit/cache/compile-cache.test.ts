import { randomBytes } from 'node:crypto';
import { mkdtemp, readdir, rm, utimes, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { CompileCache, compileKey } from '../../../src/cache/index.js';
import { hasCode } from '../../../src/errors.js';
import { LanguageRegistry } from '../../../src/languages/index.js';
import {
  checkArtefact,
  sandboxStage,
  type ArtefactEntry,
  type ExecuteMessage,
  type StageResult,
} from '../../../src/protocol/index.js';
import { prepareJob } from '../../../src/pool/index.js';

const registry = LanguageRegistry.fromDir();
const cpp = registry.find('c++');
if (cpp === undefined) throw new Error('no c++ definition');

function message(overrides: Partial<Parameters<typeof prepareJob>[0]> = {}): ExecuteMessage {
  return prepareJob(
    {
      language: 'c++',
      files: [{ name: 'main.cpp', content: 'int main() { return 0; }\n' }],
      ...overrides,
    },
    registry,
  ).message;
}

const ok: StageResult = { ...sandboxStage(''), status: 'ok', exitCode: 0, message: undefined };
delete (ok as { message?: string }).message;
const b64 = (s: string): string => Buffer.from(s).toString('base64');
const entries: ArtefactEntry[] = [
  { path: 'main.cpp', kind: 'file', mode: 0o644, data: b64('int main() {}\n') },
  { path: 'main', kind: 'file', mode: 0o755, data: b64('\x7fELF...') },
  { path: 'obj', kind: 'dir', mode: 0o755 },
  { path: 'obj/a.o', kind: 'file', mode: 0o644, data: b64('object') },
  { path: 'obj/latest', kind: 'link', mode: 0o777, target: 'a.o' },
];

describe('compileKey', () => {
  const base = compileKey(message(), cpp.definition, 'snap-1');

  it('changes with every input of the compile', () => {
    expect(base).toMatch(/^[0-9a-f]{64}$/);
    const others = [
      compileKey(message(), cpp.definition, 'snap-2'),
      compileKey(
        message({ files: [{ name: 'main.cpp', content: 'int main() { return 1; }\n' }] }),
        cpp.definition,
        'snap-1',
      ),
      compileKey(
        message({ files: [{ name: 'other.cpp', content: 'int main() { return 0; }\n' }] }),
        cpp.definition,
        'snap-1',
      ),
      compileKey(message({ compileLimits: { memoryMib: 300 } }), cpp.definition, 'snap-1'),
      compileKey(message(), { ...cpp.definition, compile: ['g++', '-O0', '{sources}'] }, 'snap-1'),
      compileKey(message(), { ...cpp.definition, env: { CXXFLAGS: '-g' } }, 'snap-1'),
    ];
    for (const k of others) expect(k).not.toBe(base);
    expect(new Set(others).size).toBe(others.length);
  });

  it("does not change with what only the run sees: stdin, args, the request's env", () => {
    expect(
      compileKey(
        message({ stdin: Buffer.from('input'), args: ['a'], env: { X: '1' } }),
        cpp.definition,
        'snap-1',
      ),
    ).toBe(base);
  });

  it('does not mix up file boundaries (two files against one with both contents)', () => {
    const split = (a: string, b: string): string | null =>
      compileKey(
        message({
          files: [
            { name: 'a.cpp', content: a },
            { name: 'b.cpp', content: b },
          ],
        }),
        cpp.definition,
        'snap-1',
      );
    expect(split('ab', 'c')).not.toBe(split('a', 'bc'));
  });

  it('is null for a language without a compile stage', () => {
    const python = registry.find('python');
    if (python === undefined) throw new Error('no python');
    const m = prepareJob({ language: 'python', files: [{ name: 'a.py', content: '' }] }, registry);
    expect(compileKey(m.message, python.definition, 'snap-1')).toBeNull();
  });
});

describe('checkArtefact', () => {
  const refused = (list: ArtefactEntry[]): boolean => {
    try {
      checkArtefact(list);
      return false;
    } catch (err) {
      return hasCode(err, 'FILE_NAME_INVALID') || hasCode(err, 'ENCODING_INVALID');
    }
  };

  it('takes a work dir laid out parents first', () => {
    expect(checkArtefact(entries)).toBeGreaterThan(0);
  });

  it('refuses an entry under a link, or under no folder entry, and bad names', () => {
    expect(
      refused([
        { path: 'd', kind: 'link', mode: 0o777, target: '/etc' },
        { path: 'd/passwd', kind: 'file', mode: 0o644, data: b64('x') },
      ]),
    ).toBe(true);
    expect(refused([{ path: 'd/x', kind: 'file', mode: 0o644, data: '' }])).toBe(true);
    expect(refused([{ path: '../x', kind: 'file', mode: 0o644, data: '' }])).toBe(true);
    expect(refused([{ path: '/x', kind: 'file', mode: 0o644, data: '' }])).toBe(true);
    expect(
      refused([
        { path: 'x', kind: 'file', mode: 0o644, data: '' },
        { path: 'x', kind: 'file', mode: 0o644, data: '' },
      ]),
    ).toBe(true);
  });

  it('refuses entries with the wrong fields for their kind, or bad base64', () => {
    expect(refused([{ path: 'x', kind: 'file', mode: 0o644 }])).toBe(true);
    expect(refused([{ path: 'x', kind: 'dir', mode: 0o755, data: '' }])).toBe(true);
    expect(refused([{ path: 'x', kind: 'link', mode: 0o777 }])).toBe(true);
    expect(refused([{ path: 'x', kind: 'file', mode: 0o644, data: 'not base64!' }])).toBe(true);
  });
});

describe('CompileCache', () => {
  let dir: string;
  const key = (n: number): string => n.toString(16).padStart(64, '0');

  beforeEach(async () => {
    dir = await mkdtemp(join(tmpdir(), 'runner-compile-cache-'));
  });
  afterEach(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  it('gives back what it kept, and nothing for another key', async () => {
    const cache = new CompileCache({ dir, maxBytes: 1 << 20, maxAgeMs: 3_600_000 });
    expect(await cache.put(key(1), ok, entries)).toBe(true);
    expect(await cache.get(key(1))).toEqual({ compile: ok, entries });
    expect(await cache.get(key(2))).toBeUndefined();
    // Another process on the same folder finds it too.
    const other = new CompileCache({ dir, maxBytes: 1 << 20, maxAgeMs: 3_600_000 });
    expect((await other.get(key(1)))?.entries).toEqual(entries);
    expect(await other.stats()).toMatchObject({ entries: 1 });
  });

  it('keeps only compiles that ended ok, with entries that pass the rules', async () => {
    const cache = new CompileCache({ dir, maxBytes: 1 << 20, maxAgeMs: 3_600_000 });
    expect(await cache.put(key(1), { ...ok, status: 'compile_error' }, entries)).toBe(false);
    expect(
      await cache.put(key(2), ok, [{ path: '../x', kind: 'file', mode: 0o644, data: '' }]),
    ).toBe(false);
    expect(await cache.put('../../etc', ok, entries)).toBe(false);
    expect(await cache.stats()).toEqual({ entries: 0, bytes: 0 });
  });

  it('evicts the least recently used past its size', async () => {
    // Random bytes: gzip cannot shrink them, so each kept compile takes about 40 kB.
    const big = (): ArtefactEntry[] => [
      { path: 'main', kind: 'file', mode: 0o755, data: randomBytes(40_000).toString('base64') },
    ];
    const cache = new CompileCache({ dir, maxBytes: 100_000, maxAgeMs: 3_600_000 });
    await cache.put(key(1), ok, big());
    await new Promise((r) => setTimeout(r, 20));
    await cache.put(key(2), ok, big());
    await new Promise((r) => setTimeout(r, 20));
    expect(await cache.get(key(1))).toBeDefined(); // 1 is now the most recently used
    await new Promise((r) => setTimeout(r, 20));
    await cache.put(key(3), ok, big());
    expect(await cache.get(key(2))).toBeUndefined();
    expect(await cache.get(key(1))).toBeDefined();
    expect(await cache.get(key(3))).toBeDefined();
    expect((await cache.stats()).bytes).toBeLessThanOrEqual(100_000);
  });

  it('drops what was not used within its age, and what it cannot read', async () => {
    const cache = new CompileCache({ dir, maxBytes: 1 << 20, maxAgeMs: 60_000 });
    await cache.put(key(1), ok, entries);
    await cache.put(key(2), ok, entries);
    const shard = join(dir, key(1).slice(0, 2));
    const old = new Date(Date.now() - 120_000);
    await utimes(join(shard, `${key(1)}.json.gz`), old, old);
    expect(await cache.get(key(1))).toBeUndefined();
    await writeFile(join(shard, `${key(2)}.json.gz`), 'not gzip');
    expect(await cache.get(key(2))).toBeUndefined();
    expect(await readdir(shard)).toEqual([]);
  });
});
