import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import { buildProgram } from '../../../src/cli/main.js';
import { hasCode } from '../../../src/errors.js';
import { sha256Hex } from '../../../src/images/identity.js';
import { writeManifest } from '../../../src/images/store.js';

let root: string;
let output: string;
const saved = { images: process.env.RUNNER_IMAGES_DIR, exitCode: process.exitCode };

beforeEach(() => {
  root = mkdtempSync(join(tmpdir(), 'runner-cli-images-'));
  process.env.RUNNER_IMAGES_DIR = root;
  output = '';
  vi.spyOn(process.stdout, 'write').mockImplementation((chunk: string | Uint8Array) => {
    output += chunk.toString();
    return true;
  });
  vi.spyOn(process.stderr, 'write').mockImplementation(() => true);
});
afterEach(() => {
  vi.restoreAllMocks();
  if (saved.images === undefined) delete process.env.RUNNER_IMAGES_DIR;
  else process.env.RUNNER_IMAGES_DIR = saved.images;
  process.exitCode = saved.exitCode;
  rmSync(root, { recursive: true, force: true });
});

async function runner(...args: string[]): Promise<void> {
  await buildProgram()
    .exitOverride()
    .parseAsync(['node', 'runner', ...args]);
}

async function fakeRootfs(id: string, language: string, content: string): Promise<string> {
  const dir = join(root, 'rootfs', id);
  mkdirSync(dir, { recursive: true });
  const name = `rootfs-${language}.ext4`;
  writeFileSync(join(dir, name), content);
  await writeManifest(dir, {
    schema: 1,
    kind: 'rootfs',
    id,
    language,
    toolchainVersion: '3.11.2',
    kernelVersion: 'none',
    agentVersion: '0.1.0',
    debianSuite: 'bookworm',
    packages: ['python3-minimal'],
    files: [{ name, sizeBytes: content.length, sha256: sha256Hex(content) }],
    totalSizeBytes: content.length,
    buildSeconds: 1,
    builtAt: '2026-01-01T00:00:00.000Z',
  });
  return dir;
}

describe('runner images', () => {
  it('lists, inspects (by id or language), verifies and removes', async () => {
    const dir = await fakeRootfs('python-aaaaaaaaaaaa', 'python', 'image');
    await runner('images', 'list', '--json');
    expect((JSON.parse(output) as { id: string }[]).map((i) => i.id)).toEqual([
      'python-aaaaaaaaaaaa',
    ]);

    output = '';
    await runner('images', 'list');
    expect(output).toMatch(/rootfs\s+python-aaaaaaaaaaaa\s+python\s+3\.11\.2/);

    output = '';
    await runner('images', 'inspect', 'py');
    expect(JSON.parse(output)).toMatchObject({ id: 'python-aaaaaaaaaaaa', dir });

    output = '';
    await runner('images', 'verify');
    expect(output).toMatch(/^ok\s+rootfs\/python-aaaaaaaaaaaa \(1 files\)/);
    expect(process.exitCode ?? 0).toBe(0);

    writeFileSync(join(dir, 'rootfs-python.ext4'), 'imagE');
    output = '';
    await runner('images', 'verify', 'python-aaaaaaaaaaaa');
    expect(output).toMatch(/CORRUPT rootfs\/python-aaaaaaaaaaaa\n\s+rootfs-python\.ext4: sha256/);
    expect(process.exitCode).toBe(1);

    output = '';
    await runner('images', 'rm', 'python-aaaaaaaaaaaa');
    expect(output).toBe('removed rootfs/python-aaaaaaaaaaaa\n');
    output = '';
    await runner('images', 'list');
    expect(output).toMatch(/^no images in /);
  });

  it('says IMAGE_NOT_FOUND for an unknown image', async () => {
    await expect(runner('images', 'inspect', 'python-000000000000')).rejects.toSatisfy((e) =>
      hasCode(e, 'IMAGE_NOT_FOUND'),
    );
    await expect(runner('images', 'inspect', 'ruby')).rejects.toThrow(/runner images build ruby/);
  });

  it('refuses unknown languages and an empty build before doing anything', async () => {
    await expect(runner('images', 'build', 'klingon')).rejects.toSatisfy(
      (e) => hasCode(e, 'LANGUAGE_UNKNOWN') && /known: .*python/.test((e as Error).message),
    );
    await expect(runner('images', 'build')).rejects.toThrow(/--all/);
    await expect(runner('images', 'build', 'python', '--all')).rejects.toThrow(/not both/);
  });
});
