import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { formatSettings } from '../../../src/cli/commands/serve.js';
import { dataPaths } from '../../../src/config/paths.js';
import { loadSettings, SETTINGS } from '../../../src/config/settings.js';

let work: string;
beforeEach(() => {
  work = mkdtempSync(join(tmpdir(), 'runner-settings-'));
});
afterEach(() => {
  rmSync(work, { recursive: true, force: true });
});

describe('the settings table', () => {
  it('freezes list values too, not just the object holding them', () => {
    const s = loadSettings({ RUNNER_DATA_DIR: work, RUNNER_WARM_LANGUAGES: 'python,c' });
    const list = s.warmLanguages as string[];
    // Test files are ES modules, hence strict: writing to a frozen array throws.
    expect(() => list.push('ruby')).toThrow(TypeError);
    expect(() => {
      list[0] = 'ruby';
    }).toThrow(TypeError);
    expect(s.warmLanguages).toEqual(['python', 'c']);
    // A default list is frozen as well, so no caller can change the next load's default.
    expect(Object.isFrozen(loadSettings({ RUNNER_DATA_DIR: work }).apiKeys)).toBe(true);
  });

  it('lists every row in docs/configuration.md', () => {
    const doc = readFileSync(join(import.meta.dirname, '../../../docs/configuration.md'), 'utf8');
    for (const spec of SETTINGS) expect(doc).toContain(`| \`${spec.env}\` | \`${spec.key}\` |`);
  });

  it('holds the image settings under the variables operators already use', () => {
    const envs = new Set<string>(SETTINGS.map((s) => s.env));
    for (const name of [
      'RUNNER_IMAGES_DIR',
      'RUNNER_DEBIAN_MIRROR',
      'RUNNER_DEBIAN_SECURITY_MIRROR',
      'RUNNER_S3_BUCKET',
      'RUNNER_S3_PREFIX',
      'RUNNER_S3_ENDPOINT',
      'RUNNER_S3_REGION',
      'RUNNER_S3_ACCESS_KEY_ID',
      'RUNNER_S3_SECRET_ACCESS_KEY',
      'RUNNER_S3_FORCE_PATH_STYLE',
      'RUNNER_S3_PART_SIZE_MIB',
    ])
      expect(envs.has(name), name).toBe(true);
  });

  it('puts the image store under the data dir unless RUNNER_IMAGES_DIR or the file says', () => {
    const byDefault = loadSettings({ RUNNER_DATA_DIR: work });
    expect(byDefault.imagesDir).toBe(join(work, 'images'));
    expect(dataPaths(byDefault).imagesDir).toBe(join(work, 'images'));
    expect(dataPaths(byDefault).buildDir).toBe(join(work, 'build'));
    const fromEnv = loadSettings({ RUNNER_DATA_DIR: work, RUNNER_IMAGES_DIR: '/srv/images' });
    expect(dataPaths(fromEnv).imagesDir).toBe('/srv/images');
    const file = join(work, 'config.json');
    writeFileSync(file, JSON.stringify({ imagesDir: '/srv/from-file' }));
    expect(dataPaths(loadSettings({ RUNNER_DATA_DIR: work, RUNNER_CONFIG: file })).imagesDir).toBe(
      '/srv/from-file',
    );
  });

  it('takes true/false, 1/0 and yes/no in any case for booleans', () => {
    const of = (v: string): boolean =>
      loadSettings({ RUNNER_DATA_DIR: work, RUNNER_S3_FORCE_PATH_STYLE: v }).s3ForcePathStyle;
    expect(['true', 'TRUE', '1', 'yes', 'Yes'].map(of)).toEqual([true, true, true, true, true]);
    expect(['false', 'False', '0', 'no', 'NO'].map(of)).toEqual([
      false,
      false,
      false,
      false,
      false,
    ]);
    expect(() => of('maybe')).toThrow(/RUNNER_S3_FORCE_PATH_STYLE/);
  });

  it('checks URL settings at load', () => {
    expect(() => loadSettings({ RUNNER_DATA_DIR: work, RUNNER_S3_ENDPOINT: 'minio:9000' })).toThrow(
      /RUNNER_S3_ENDPOINT .*http, https URL/,
    );
    expect(
      loadSettings({ RUNNER_DATA_DIR: work, RUNNER_DEBIAN_MIRROR: 'file:///srv/debian' })
        .debianMirror,
    ).toBe('file:///srv/debian');
  });
});

describe('--print-config', () => {
  it('masks the rows marked secret and prints the others', () => {
    const text = formatSettings(
      loadSettings({
        RUNNER_DATA_DIR: work,
        RUNNER_S3_BUCKET: 'images-bucket',
        RUNNER_S3_ACCESS_KEY_ID: 'AKIDEXAMPLE',
        RUNNER_S3_SECRET_ACCESS_KEY: 'very-secret-key',
        RUNNER_API_KEYS: 'k1,k2',
      }),
    );
    expect(text).not.toContain('very-secret-key');
    expect(text).toContain('RUNNER_S3_SECRET_ACCESS_KEY=<hidden>\n');
    expect(text).toContain('RUNNER_API_KEYS=<2 key(s) hidden>\n');
    expect(text).toContain('RUNNER_S3_BUCKET=images-bucket\n');
    expect(text).toContain('RUNNER_S3_ACCESS_KEY_ID=AKIDEXAMPLE\n');
    expect(text).toContain('RUNNER_S3_PART_SIZE_MIB=8\n');
    // Unset, a secret shows as empty: whether it is set is not hidden, only its value.
    expect(formatSettings(loadSettings({ RUNNER_DATA_DIR: work }))).toContain(
      'RUNNER_S3_SECRET_ACCESS_KEY=\n',
    );
  });

  it('marks the secret rows in the table', () => {
    const secret = SETTINGS.filter((s) => 'secret' in s && s.secret).map((s) => s.key);
    expect(secret).toEqual(['s3SecretAccessKey', 'apiKeys']);
  });
});
