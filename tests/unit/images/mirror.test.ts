import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { loadSettings } from '../../../src/config/settings.js';
import { hasCode } from '../../../src/errors.js';
import {
  parseDeb822Sources,
  parseOneLineSources,
  resolveDebianMirrors,
} from '../../../src/images/mirror.js';

// Made-up hosts: no real mirror is named anywhere in this project.
const DEB822 = `Types: deb
# a comment
URIs: http://mirror.example.test/debian
Suites: bookworm bookworm-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb deb-src
URIs: http://security.example.test/debian-security
Suites: bookworm-security
Components: main contrib
Signed-By:
 -----BEGIN PGP PUBLIC KEY BLOCK-----
 .
 -----END PGP PUBLIC KEY BLOCK-----

Types: deb
Enabled: no
URIs: http://disabled.example.test/debian
Suites: bookworm
Components: main
`;

const ONE_LINE = `# deb http://commented.example.test/debian bookworm main
deb-src http://src.example.test/debian bookworm main
deb [arch=amd64 signed-by=/usr/share/keyrings/k.gpg] http://one.example.test/debian/ bookworm main non-free-firmware
deb http://one.example.test/debian-security bookworm-security main # trailing comment
`;

const dirs: string[] = [];
function aptDir(files: Record<string, string>): string {
  const dir = mkdtempSync(join(tmpdir(), 'runner-apt-'));
  dirs.push(dir);
  mkdirSync(join(dir, 'sources.list.d'));
  for (const [name, text] of Object.entries(files)) writeFileSync(join(dir, name), text);
  return dir;
}
afterEach(() => {
  for (const d of dirs.splice(0)) rmSync(d, { recursive: true, force: true });
});

describe('apt source parsing', () => {
  it('reads deb822 stanzas, skipping disabled ones and keeping multi-line fields apart', () => {
    const entries = parseDeb822Sources(DEB822);
    expect(entries).toEqual([
      {
        uris: ['http://mirror.example.test/debian'],
        suites: ['bookworm', 'bookworm-updates'],
        components: ['main'],
      },
      {
        uris: ['http://security.example.test/debian-security'],
        suites: ['bookworm-security'],
        components: ['main', 'contrib'],
      },
    ]);
  });

  it('reads one-line entries with options and comments, skipping deb-src', () => {
    expect(parseOneLineSources(ONE_LINE)).toEqual([
      {
        uris: ['http://one.example.test/debian/'],
        suites: ['bookworm'],
        components: ['main', 'non-free-firmware'],
      },
      {
        uris: ['http://one.example.test/debian-security'],
        suites: ['bookworm-security'],
        components: ['main'],
      },
    ]);
  });
});

/** The mirror settings unset: the apt configuration decides. */
const NO_OVERRIDE = { debianMirror: null, debianSecurityMirror: null };

describe('resolveDebianMirrors', () => {
  it('takes the mirror serving the suite from sources.list.d/*.sources', () => {
    const dir = aptDir({ 'sources.list.d/debian.sources': DEB822 });
    expect(resolveDebianMirrors('bookworm', NO_OVERRIDE, dir)).toEqual({
      main: 'http://mirror.example.test/debian',
      security: 'http://security.example.test/debian-security',
      origin: join(dir, 'sources.list.d/debian.sources'),
    });
  });

  it('takes the one-line sources.list, trailing slash dropped', () => {
    const dir = aptDir({ 'sources.list': ONE_LINE });
    const mirrors = resolveDebianMirrors('bookworm', NO_OVERRIDE, dir);
    expect(mirrors.main).toBe('http://one.example.test/debian');
    expect(mirrors.security).toBe('http://one.example.test/debian-security');
  });

  it('ignores sources for other suites', () => {
    const dir = aptDir({ 'sources.list': 'deb http://old.example.test/debian bullseye main\n' });
    expect(() => resolveDebianMirrors('bookworm', NO_OVERRIDE, dir)).toThrow(
      /RUNNER_DEBIAN_MIRROR/,
    );
  });

  it('lets the debianMirror setting override the apt configuration', () => {
    const dir = aptDir({ 'sources.list.d/debian.sources': DEB822 });
    const mirrors = resolveDebianMirrors(
      'bookworm',
      { ...NO_OVERRIDE, debianMirror: 'http://override.example.test/debian/' },
      dir,
    );
    expect(mirrors.main).toBe('http://override.example.test/debian');
    expect(mirrors.origin).toBe('setting debianMirror (RUNNER_DEBIAN_MIRROR)');
    expect(mirrors.security).toBe('http://security.example.test/debian-security');
    const both = resolveDebianMirrors(
      'bookworm',
      { debianMirror: 'file:///srv/debian', debianSecurityMirror: 'http://sec.example.test/ds' },
      aptDir({}),
    );
    expect(both).toMatchObject({
      main: 'file:///srv/debian',
      security: 'http://sec.example.test/ds',
    });
  });

  it('fails with CONFIG_INVALID when nothing serves the suite, or the override is not a URL', () => {
    const empty = aptDir({});
    let caught: unknown;
    try {
      resolveDebianMirrors('bookworm', NO_OVERRIDE, empty);
    } catch (err) {
      caught = err;
    }
    expect(hasCode(caught, 'CONFIG_INVALID')).toBe(true);
    expect(() =>
      resolveDebianMirrors(
        'bookworm',
        { ...NO_OVERRIDE, debianMirror: 'mirror.example.test' },
        empty,
      ),
    ).toThrow(/http/);
  });

  it('has no security mirror when none is configured', () => {
    const dir = aptDir({ 'sources.list': 'deb http://m.example.test/debian bookworm main\n' });
    expect(resolveDebianMirrors('bookworm', NO_OVERRIDE, dir).security).toBeNull();
  });

  it('takes the variables through the settings table, checked at start', () => {
    const dir = aptDir({ 'sources.list.d/debian.sources': DEB822 });
    const settings = loadSettings({
      RUNNER_DATA_DIR: '/tmp/x',
      RUNNER_DEBIAN_MIRROR: 'http://env.example.test/debian',
      RUNNER_DEBIAN_SECURITY_MIRROR: 'http://env.example.test/security/',
    });
    expect(resolveDebianMirrors('bookworm', settings, dir)).toMatchObject({
      main: 'http://env.example.test/debian',
      security: 'http://env.example.test/security',
    });
    expect(() => loadSettings({ RUNNER_DEBIAN_MIRROR: 'mirror.example.test' })).toThrow(
      /RUNNER_DEBIAN_MIRROR.*http, https, file URL/,
    );
  });
});
