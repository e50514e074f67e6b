import { existsSync, readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import type { Settings } from '../config/index.js';
import { ConfigInvalidError } from '../errors.js';

/**
 * Where the image builder fetches Debian packages from. No mirror is written into this code:
 * it comes from the machine's own apt configuration, or from the settings.
 */
export interface DebianMirrors {
  /** Serves `<suite>` and `<suite>-updates` (debootstrap's MIRROR argument). */
  readonly main: string;
  /** Serves `<suite>-security`; null when the machine has none configured (then no security updates). */
  readonly security: string | null;
  /** Where `main` came from, for the build log (the setting, or an apt source file's path). */
  readonly origin: string;
}

/** One `deb` source entry, from either apt format. */
export interface AptSourceEntry {
  readonly uris: readonly string[];
  readonly suites: readonly string[];
  readonly components: readonly string[];
}

const USABLE_URI = /^(https?|file):\/\//;

/**
 * Parses deb822 `.sources` text into its enabled `deb` entries (deb-src and `Enabled: no`
 * stanzas are skipped). Stanzas are separated by blank lines; continuation lines start with
 * white space; `#` lines are comments.
 */
export function parseDeb822Sources(text: string): AptSourceEntry[] {
  const entries: AptSourceEntry[] = [];
  for (const stanza of text.split(/\n[ \t]*\n/)) {
    const fields = new Map<string, string>();
    let current: string | undefined;
    for (const line of stanza.split('\n')) {
      if (line.startsWith('#') || line.trim() === '') continue;
      if (/^[ \t]/.test(line)) {
        if (current !== undefined)
          fields.set(current, `${fields.get(current) ?? ''} ${line.trim()}`);
        continue;
      }
      const colon = line.indexOf(':');
      if (colon <= 0) continue;
      current = line.slice(0, colon).trim().toLowerCase();
      fields.set(current, line.slice(colon + 1).trim());
    }
    const words = (key: string): string[] => (fields.get(key) ?? '').split(/\s+/).filter(Boolean);
    if (!words('types').includes('deb')) continue;
    if (/^(no|false|0)$/i.test(fields.get('enabled') ?? 'yes')) continue;
    entries.push({ uris: words('uris'), suites: words('suites'), components: words('components') });
  }
  return entries;
}

/**
 * Parses one-line `sources.list` text: `deb [options] URI SUITE COMPONENT...`. Options in
 * brackets are dropped; `deb-src` and comment lines are skipped.
 */
export function parseOneLineSources(text: string): AptSourceEntry[] {
  const entries: AptSourceEntry[] = [];
  for (const raw of text.split('\n')) {
    const line = raw.replace(/#.*$/, '').trim();
    if (!line.startsWith('deb ') && !line.startsWith('deb\t')) continue;
    const rest = line
      .slice(3)
      .trim()
      .replace(/^\[[^\]]*\]/, '')
      .trim();
    const [uri, suite, ...components] = rest.split(/\s+/);
    if (uri === undefined || suite === undefined) continue;
    entries.push({ uris: [uri], suites: [suite], components });
  }
  return entries;
}

/** Reads every source entry of an apt configuration folder, in apt's order. */
export function readAptSources(aptDir = '/etc/apt'): { entry: AptSourceEntry; file: string }[] {
  const found: { entry: AptSourceEntry; file: string }[] = [];
  const list = join(aptDir, 'sources.list');
  if (existsSync(list)) {
    for (const entry of parseOneLineSources(readFileSync(list, 'utf8')))
      found.push({ entry, file: list });
  }
  const dir = join(aptDir, 'sources.list.d');
  if (existsSync(dir)) {
    for (const name of readdirSync(dir).sort()) {
      const file = join(dir, name);
      if (name.endsWith('.sources')) {
        for (const entry of parseDeb822Sources(readFileSync(file, 'utf8')))
          found.push({ entry, file });
      } else if (name.endsWith('.list')) {
        for (const entry of parseOneLineSources(readFileSync(file, 'utf8')))
          found.push({ entry, file });
      }
    }
  }
  return found;
}

function firstUriFor(
  sources: readonly { entry: AptSourceEntry; file: string }[],
  suite: string,
): { uri: string; file: string } | undefined {
  for (const { entry, file } of sources) {
    if (!entry.suites.includes(suite) || !entry.components.includes('main')) continue;
    const uri = entry.uris.find((u) => USABLE_URI.test(u));
    if (uri !== undefined) return { uri: uri.replace(/\/+$/, ''), file };
  }
  return undefined;
}

/** The rows of the settings table (src/config/settings.ts) that name the Debian mirrors. */
export type DebianMirrorSettings = Pick<Settings, 'debianMirror' | 'debianSecurityMirror'>;

/**
 * Finds the Debian mirrors for `suite`: the `debianMirror` setting (RUNNER_DEBIAN_MIRROR) and
 * `debianSecurityMirror` (RUNNER_DEBIAN_SECURITY_MIRROR) when set, else the first apt source
 * that serves the suite's `main` component. Throws CONFIG_INVALID when there is none (for
 * example on a non-Debian host).
 */
export function resolveDebianMirrors(
  suite: string,
  settings: DebianMirrorSettings,
  aptDir = '/etc/apt',
): DebianMirrors {
  const sources = readAptSources(aptDir);
  const security =
    settings.debianSecurityMirror !== null && settings.debianSecurityMirror !== ''
      ? settings.debianSecurityMirror.replace(/\/+$/, '')
      : (firstUriFor(sources, `${suite}-security`)?.uri ?? null);
  const override = settings.debianMirror;
  if (override !== null && override !== '') {
    if (!USABLE_URI.test(override)) {
      throw new ConfigInvalidError(
        `RUNNER_DEBIAN_MIRROR must be an http(s):// or file:// URL, not ${JSON.stringify(override)}`,
      );
    }
    return {
      main: override.replace(/\/+$/, ''),
      security,
      origin: 'setting debianMirror (RUNNER_DEBIAN_MIRROR)',
    };
  }
  const main = firstUriFor(sources, suite);
  if (main === undefined) {
    throw new ConfigInvalidError(
      `no apt source in ${aptDir} serves Debian ${suite} main; set RUNNER_DEBIAN_MIRROR to a Debian mirror URL`,
    );
  }
  return { main: main.uri, security, origin: main.file };
}
