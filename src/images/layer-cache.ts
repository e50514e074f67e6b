import { randomBytes } from 'node:crypto';
import {
  existsSync,
  mkdirSync,
  readdirSync,
  readFileSync,
  renameSync,
  writeFileSync,
} from 'node:fs';
import { join, posix } from 'node:path';
import { ImageBuildFailedError, InternalError } from '../errors.js';
import type { BuildLog } from './build-log.js';
import { chrootCapture, chrootRun, removeTree, unmountUnder, withChrootMounts } from './chroot.js';
import { emptyDebCache, writeGuestFile } from './guest-tree.js';
import { BASE_PACKAGES, DEBIAN_SUITE, sha256Hex } from './identity.js';
import { resolveDebianMirrors, type DebianMirrorSettings, type DebianMirrors } from './mirror.js';

/**
 * What a toolchain layer installs: the Debian packages and npm pins of every language of one
 * layer (a family of languages that share a toolchain, such as gcc's, shares one layer).
 */
export interface ToolchainSpec {
  /** The layer's name: `layer` of its languages' definitions, else the one language's name. */
  readonly name: string;
  readonly packages: readonly string[];
  readonly npm: readonly string[];
}

/** Whether a cached layer still has its tree (toolchain trees are dropped, see dropTree). */
export function hasTree(layer: CachedLayer): boolean {
  return existsSync(join(layer.dir, 'root'));
}

/** Options of a LayerCache. */
export interface LayerCacheOptions {
  /** The layers go to `<buildDir>/layers`, the shared .deb cache to `<buildDir>/archives`. */
  readonly buildDir: string;
  /** The Debian mirror settings; unset ones fall back to the machine's apt configuration. */
  readonly settings: DebianMirrorSettings;
  /** Resolved mirrors, in place of the settings. */
  readonly mirrors?: DebianMirrors;
  /** Ignore the cached layers (rebuild each once, e.g. for security updates). */
  readonly rebuildLayers?: boolean;
  readonly signal?: AbortSignal;
}

/** What a cached layer records next to its `root/` tree. */
export interface LayerInfo {
  readonly layer: 'base' | 'toolchain';
  readonly key: string;
  readonly packages: readonly string[];
  /** `name=version` of the packages asked for, as installed. */
  readonly installed: readonly string[];
  /**
   * SHA-256 of every installed `name=version`, sorted: part of the image identity, so that a
   * layer rebuilt with newer Debian packages gives images a new identity.
   */
  readonly packagesDigest: string;
  readonly installedCount: number;
  readonly builtAt: string;
  readonly seconds: number;
}

/** A layer in the cache: its folder (with `root/` and `layer.json`) and what it records. */
export interface CachedLayer {
  readonly dir: string;
  readonly info: LayerInfo;
  /** False when this build made it. */
  readonly cached: boolean;
}

const APT_FLAGS = [
  '-q',
  '-y',
  '-o',
  'Dpkg::Use-Pty=0',
  '-o',
  'Dpkg::Options::=--force-confdef',
  '-o',
  'Dpkg::Options::=--force-confold',
];

/**
 * The cached layers under a rootfs image:
 *
 * 1. base: debootstrap minbase of bookworm plus BASE_PACKAGES, updated from the security suite.
 *    Cached in `<buildDir>/layers/base-<key>/`, keyed by its inputs.
 * 2. toolchain: a copy of the base plus the language's Debian packages (apt, no recommends,
 *    /proc mounted, the .deb cache shared by every build). Cached in
 *    `<buildDir>/layers/toolchain-<lang>-<key>/`, keyed by the base key and the packages.
 *
 * The caller holds the build lock while it builds layers. The Debian mirror is resolved only
 * when a layer must be built, so cached layers build images on a host without one.
 */
export class LayerCache {
  private readonly options: LayerCacheOptions;
  private mirrorsCache: DebianMirrors | undefined;
  /** Layers this cache made: with rebuildLayers, each is rebuilt once per cache, not per image. */
  private readonly freshLayers = new Set<string>();

  constructor(options: LayerCacheOptions) {
    this.options = options;
    this.mirrorsCache = options.mirrors;
  }

  /** Where the layers live. */
  get layersDir(): string {
    return join(this.options.buildDir, 'layers');
  }

  private get archivesDir(): string {
    return join(this.options.buildDir, 'archives');
  }

  /** npm's download cache for the toolchains' npm pins, shared by every build. */
  private get npmCacheDir(): string {
    return join(this.options.buildDir, 'npm-cache');
  }

  private mirrors(): DebianMirrors {
    this.mirrorsCache ??= resolveDebianMirrors(DEBIAN_SUITE, this.options.settings);
    return this.mirrorsCache;
  }

  private baseDir(key: string): string {
    return join(this.layersDir, `base-${key.slice(0, 16)}`);
  }

  /** The base layer for this key when it is cached, whole, and may be used. */
  cachedBase(key: string): CachedLayer | undefined {
    const dir = this.baseDir(key);
    if (!this.mayReuse(dir)) return undefined;
    const info = readLayerInfo(dir);
    return info?.key === key ? { dir, info, cached: true } : undefined;
  }

  /** The cached base layer for `key`, built first when missing. */
  async ensureBase(key: string, log: BuildLog): Promise<CachedLayer> {
    const dir = this.baseDir(key);
    const info = readLayerInfo(dir);
    if (this.mayReuse(dir) && info?.key === key) {
      log.write(`# base layer cached: ${dir}`);
      return { dir, info, cached: true };
    }
    const mirrors = this.mirrors();
    log.write(
      `# Debian mirror ${mirrors.main} (from ${mirrors.origin}), security ${mirrors.security ?? 'none'}`,
    );
    const started = Date.now();
    const tmp = this.layerTemp('base');
    const root = join(tmp, 'root');
    try {
      mkdirSync(this.archivesDir, { recursive: true });
      await log.run(
        'debootstrap',
        [
          '--variant=minbase',
          `--include=${BASE_PACKAGES.join(',')}`,
          '--components=main',
          `--cache-dir=${this.archivesDir}`,
          DEBIAN_SUITE,
          root,
          mirrors.main,
        ],
        { signal: this.options.signal },
      );
      unmountUnder(root);
      writeGuestFile(root, '/etc/apt/sources.list', aptSources(mirrors));
      writeGuestFile(
        root,
        '/etc/apt/apt.conf.d/90runner',
        'APT::Install-Recommends "false";\nAPT::Install-Suggests "false";\nAcquire::Retries "3";\nDpkg::Use-Pty "0";\n',
      );
      // No service may start inside a build chroot.
      writeGuestFile(root, '/usr/sbin/policy-rc.d', '#!/bin/sh\nexit 101\n', 0o755);
      const installed = await withChrootMounts(
        root,
        log,
        { archivesDir: this.archivesDir },
        async () => {
          await chrootRun(log, root, ['apt-get', ...APT_FLAGS, 'update'], {
            signal: this.options.signal,
          });
          await chrootRun(log, root, ['apt-get', ...APT_FLAGS, 'dist-upgrade'], {
            signal: this.options.signal,
          });
          return installedVersions(log, root, BASE_PACKAGES);
        },
      );
      emptyDebCache(root);
      return this.commitLayer(
        tmp,
        dir,
        {
          layer: 'base',
          key,
          packages: BASE_PACKAGES,
          ...installed,
          builtAt: new Date().toISOString(),
          seconds: (Date.now() - started) / 1000,
        },
        'base-',
      );
    } finally {
      removeTree(tmp);
    }
  }

  /** The cached toolchain layer of `toolchain`, built on the base when missing. */
  async ensureToolchain(
    toolchain: ToolchainSpec,
    key: string,
    baseDir: string | null,
    log: BuildLog,
  ): Promise<CachedLayer> {
    const name = toolchain.name;
    const prefix = `toolchain-${name}-`;
    const cached =
      this.options.rebuildLayers === true ? undefined : this.cachedToolchain(name, key);
    if (cached !== undefined && hasTree(cached)) {
      log.write(`# toolchain layer cached: ${cached.dir}`);
      return cached;
    }
    if (cached !== undefined) log.write(`# toolchain layer ${cached.dir} has no tree: built again`);
    if (baseDir === null)
      throw new InternalError('no base layer for a toolchain layer to start from');
    const dir = this.toolchainDir(name, key);
    const started = Date.now();
    const tmp = this.layerTemp(`toolchain-${name}`);
    const root = join(tmp, 'root');
    const packages = toolchain.packages;
    try {
      await copyTree(log, join(baseDir, 'root'), root, this.options.signal);
      let installed = await withChrootMounts(
        root,
        log,
        { archivesDir: this.archivesDir },
        async () => {
          // The base's package lists may be old: refresh them so that no download 404s.
          await chrootRun(log, root, ['apt-get', ...APT_FLAGS, 'update'], {
            signal: this.options.signal,
          });
          await chrootRun(
            log,
            root,
            ['apt-get', ...APT_FLAGS, 'install', '--no-install-recommends', ...packages],
            { signal: this.options.signal },
          );
          return installedVersions(log, root, packages);
        },
      );
      emptyDebCache(root);
      const npm = toolchain.npm;
      if (npm.length > 0) {
        const pinned = await installNpmPackages(
          log,
          root,
          npm,
          this.npmCacheDir,
          this.options.signal,
        );
        installed = {
          installed: [...installed.installed, ...pinned],
          packagesDigest: sha256Hex(`${installed.packagesDigest}\n${pinned.join('\n')}`),
          installedCount: installed.installedCount + pinned.length,
        };
      }
      return this.commitLayer(
        tmp,
        dir,
        {
          layer: 'toolchain',
          key,
          packages,
          ...installed,
          builtAt: new Date().toISOString(),
          seconds: (Date.now() - started) / 1000,
        },
        prefix,
      );
    } finally {
      removeTree(tmp);
    }
  }

  private toolchainDir(language: string, key: string): string {
    return join(this.layersDir, `toolchain-${language}-${key.slice(0, 16)}`);
  }

  /**
   * Drops a toolchain layer's tree once its image layer is stored, keeping its layer.json: the
   * image's identity stays known (and the image found) without the tree; only a rebuild of the
   * image (a change of its languages' definitions) runs apt again. The trees are most of the
   * build cache (a copy of the base each).
   */
  dropTree(layer: CachedLayer): void {
    removeTree(join(layer.dir, 'root'));
  }

  /**
   * The toolchain layer for this key when it is cached and may be used; its tree may have been
   * dropped (hasTree), its layer.json is there.
   */
  cachedToolchain(language: string, key: string): CachedLayer | undefined {
    const dir = this.toolchainDir(language, key);
    if (!this.mayReuse(dir)) return undefined;
    const info = readLayerInfo(dir, false);
    return info?.key === key ? { dir, info, cached: true } : undefined;
  }

  private mayReuse(layerDir: string): boolean {
    return this.options.rebuildLayers !== true || this.freshLayers.has(layerDir);
  }

  private layerTemp(label: string): string {
    mkdirSync(this.layersDir, { recursive: true });
    return join(this.layersDir, `.tmp-${label}-${randomBytes(4).toString('hex')}`);
  }

  /** Moves a finished layer into place and drops older layers of the same family. */
  private commitLayer(
    tmp: string,
    dir: string,
    info: LayerInfo,
    familyPrefix: string,
  ): CachedLayer {
    writeFileSync(join(tmp, 'layer.json'), `${JSON.stringify(info, null, 2)}\n`);
    removeTree(dir);
    renameSync(tmp, dir);
    this.freshLayers.add(dir);
    for (const entry of readdirSync(this.layersDir)) {
      const path = join(this.layersDir, entry);
      if (entry.startsWith(familyPrefix) && path !== dir) {
        // A toolchain-<lang>- prefix must not catch toolchain-<lang>-<more>-... of another language.
        if (
          familyPrefix.startsWith('toolchain-') &&
          !/^[0-9a-f]{16}$/.test(entry.slice(familyPrefix.length))
        )
          continue;
        removeTree(path);
      }
    }
    return { dir, info, cached: false };
  }

  /** Removes the temporary layer folders of builds that died (the caller holds the lock). */
  sweep(): void {
    if (!existsSync(this.layersDir)) return;
    for (const entry of readdirSync(this.layersDir)) {
      if (entry.startsWith('.tmp-')) removeTree(join(this.layersDir, entry));
    }
  }
}

/**
 * A cached layer's layer.json. `needTree`: only when its tree is there too (the base's is always
 * needed; a toolchain's is dropped once its image layer is stored, see dropTree).
 */
function readLayerInfo(dir: string, needTree = true): LayerInfo | undefined {
  try {
    const info = JSON.parse(readFileSync(join(dir, 'layer.json'), 'utf8')) as Partial<LayerInfo>;
    // Layers from before packagesDigest existed are rebuilt.
    if (typeof info.packagesDigest !== 'string' || typeof info.key !== 'string') return undefined;
    return !needTree || existsSync(join(dir, 'root')) ? (info as LayerInfo) : undefined;
  } catch {
    return undefined;
  }
}

/** The apt sources of the build chroots (removed from the final image). */
function aptSources(mirrors: DebianMirrors): string {
  const lines = [
    `deb ${mirrors.main} ${DEBIAN_SUITE} main`,
    `deb ${mirrors.main} ${DEBIAN_SUITE}-updates main`,
  ];
  if (mirrors.security !== null)
    lines.push(`deb ${mirrors.security} ${DEBIAN_SUITE}-security main`);
  return `${lines.join('\n')}\n`;
}

/** The versions of the packages asked for, and a digest of everything installed. */
async function installedVersions(
  log: BuildLog,
  root: string,
  packages: readonly string[],
): Promise<Pick<LayerInfo, 'installed' | 'packagesDigest' | 'installedCount'>> {
  const out = await chrootCapture(log, root, [
    'dpkg-query',
    '-W',
    '-f',
    '${db:Status-Abbrev}${Package}:${Architecture}=${Version}\\n',
  ]);
  const all = out
    .split('\n')
    .filter((l) => l.startsWith('ii '))
    .map((l) => l.slice(3).trim())
    .sort();
  const wanted = new Set(packages);
  return {
    installed: all
      .filter((l) => wanted.has(l.split(':')[0] ?? ''))
      .map((l) => l.replace(/:[^=]*=/, '=')),
    packagesDigest: sha256Hex(all.join('\n')),
    installedCount: all.length,
  };
}

/**
 * Installs exact npm pins into a layer's /usr/local with the host's npm (the guest's layer
 * need not have npm): `npm install --global --prefix <root>/usr/local`, no install scripts,
 * so a package runs nothing at build time. Returns `npm:name=version` of each, read back from
 * the installed package.json, for the layer's record and identity.
 */
export async function installNpmPackages(
  log: BuildLog,
  root: string,
  pins: readonly string[],
  cacheDir: string,
  signal?: AbortSignal,
): Promise<string[]> {
  const prefix = join(root, 'usr', 'local');
  mkdirSync(cacheDir, { recursive: true });
  await log.run(
    'npm',
    [
      'install',
      '--global',
      '--prefix',
      prefix,
      '--cache',
      cacheDir,
      '--ignore-scripts',
      '--no-audit',
      '--no-fund',
      '--no-update-notifier',
      ...pins,
    ],
    { signal, env: { ...process.env, npm_config_loglevel: 'warn' } },
  );
  return pins
    .map((pin) => {
      const name = pin.slice(0, pin.lastIndexOf('@'));
      const manifest = join(prefix, 'lib', 'node_modules', name, 'package.json');
      const { version } = JSON.parse(readFileSync(manifest, 'utf8')) as { version?: string };
      if (typeof version !== 'string')
        throw new ImageBuildFailedError(`npm package ${name}: no version in ${manifest}`);
      return `npm:${name}=${version.replace(/^v/, '')}`;
    })
    .sort();
}

/** Copies a tree with everything preserved (owners, modes, hard links, devices). */
export async function copyTree(
  log: BuildLog,
  from: string,
  to: string,
  signal?: AbortSignal,
): Promise<void> {
  mkdirSync(posix.dirname(to), { recursive: true });
  await log.run('cp', ['-a', '--reflink=auto', from, to], { signal });
}
