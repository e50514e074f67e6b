import { randomBytes } from 'node:crypto';
import {
  chmodSync,
  chownSync,
  cpSync,
  existsSync,
  lstatSync,
  mkdirSync,
  readdirSync,
  readFileSync,
  readlinkSync,
  renameSync,
  rmSync,
  statSync,
  writeFileSync,
} from 'node:fs';
import { mkdir } from 'node:fs/promises';
import { isAbsolute, join, posix } from 'node:path';
import type { DataPaths } from '../config/paths.js';
import { hasCode, ImageBuildFailedError, RunnerError } from '../errors.js';
import type { Language } from '../languages/index.js';
import { AGENT_VERSION } from '../version.js';
import { BuildLog } from './build-log.js';
import { acquireLock, type HeldLock } from './lockfile.js';
import { chrootCapture, chrootRun, removeTree, unmountUnder, withChrootMounts } from './chroot.js';
import {
  GUEST_AGENT_PATH,
  GUEST_INIT_PATH,
  GUEST_INIT_SCRIPT,
  GUEST_LANGUAGES_DIR,
  GUEST_RUNNER_GID,
  GUEST_RUNNER_UID,
} from './guest-init.js';
import {
  BASE_PACKAGES,
  DEBIAN_SUITE,
  folderDigests,
  rootfsIdentity,
  sha256File,
  sha256Hex,
  type RootfsIdentity,
  type RootfsIdentityInputs,
} from './identity.js';
import type { ImageManifest } from './manifest.js';
import { resolveDebianMirrors, type DebianMirrorSettings, type DebianMirrors } from './mirror.js';
import { silentReporter, type BuildPhase, type BuildReporter } from './progress.js';
import { writeManifest, type ImageStore, type StoredImage } from './store.js';

/** The file name of a language's rootfs image. */
export function rootfsFileName(language: string): string {
  return `rootfs-${language}.ext4`;
}

/** Options of a RootfsBuilder. */
export interface RootfsBuilderOptions {
  /** buildDir holds the layer caches, the shared .deb cache and work folders; logsDir the logs. */
  readonly paths: Pick<DataPaths, 'buildDir' | 'logsDir'>;
  readonly store: ImageStore;
  /** The bundled agent (one ES module for Node 18), copied to /opt/runner/agent.mjs. */
  readonly agentBundlePath: string;
  /** Recorded in the manifest; 'none' when unknown. Not part of the identity. */
  readonly kernelVersion?: string;
  /** The Debian mirror settings; unset ones fall back to the machine's apt configuration. */
  readonly settings: DebianMirrorSettings;
  /** Resolved mirrors, in place of the settings (see mirror.ts). */
  readonly mirrors?: DebianMirrors;
  /** Rebuild an image even when the store holds one with the same identity. */
  readonly force?: boolean;
  /** Ignore the cached base and toolchain layers (rebuild them, e.g. for security updates). */
  readonly rebuildLayers?: boolean;
  readonly signal?: AbortSignal;
  readonly reporter?: BuildReporter;
}

/** A built (or already present) rootfs image. */
export interface RootfsBuildResult {
  readonly language: string;
  readonly id: string;
  readonly image: StoredImage;
  /** True when the store already held the image and nothing was built. */
  readonly reused: boolean;
  readonly seconds: number;
  readonly phaseSeconds: Partial<Record<BuildPhase, number>>;
  /** Whether the base and toolchain layers came from the cache. */
  readonly cachedLayers: { readonly base: boolean; readonly toolchain: boolean };
  readonly logPath: string | null;
  /** Warnings, such as a toolchain version that differs from the definition's. */
  readonly warnings: readonly string[];
}

/** A language whose build failed. */
export interface RootfsBuildFailure {
  readonly language: string;
  readonly phase: BuildPhase;
  readonly error: RunnerError;
  readonly logPath: string | null;
}

/** What a cached layer records next to its `root/` tree. */
interface LayerInfo {
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
 * Builds one ext4 rootfs per language, in three layers:
 *
 * 1. base: debootstrap minbase of bookworm plus BASE_PACKAGES, updated from the security suite.
 *    Cached in `<buildDir>/layers/base-<key>/`, keyed by its inputs.
 * 2. toolchain: a copy of the base plus the language's Debian packages (apt, no recommends,
 *    /proc mounted, the .deb cache shared by every build). Cached in
 *    `<buildDir>/layers/toolchain-<lang>-<key>/`, keyed by the base key and the packages, so a
 *    change of the agent alone reruns neither debootstrap nor apt.
 * 3. final (not cached): the runner user, the agent, the language folder (only this image's
 *    language, at /opt/runner/languages/<name>/), /sbin/runner-init, and the cleanup; then
 *    `mkfs.ext4 -d` without mounting anything.
 *
 * Nothing of the host's /etc goes in: the files debootstrap copies from the host (resolv.conf,
 * hostname) are replaced, and the apt sources are removed. Builds are serialised by a lock in
 * the build folder; they need root (debootstrap, chroot, mount).
 */
export class RootfsBuilder {
  private readonly options: RootfsBuilderOptions;
  private readonly reporter: BuildReporter;
  private mirrorsCache: DebianMirrors | undefined;
  /** Layers this builder made: with rebuildLayers, each is rebuilt once per builder, not per image. */
  private readonly freshLayers = new Set<string>();

  constructor(options: RootfsBuilderOptions) {
    this.options = options;
    this.reporter = options.reporter ?? silentReporter;
    this.mirrorsCache = options.mirrors;
  }

  private get layersDir(): string {
    return join(this.options.paths.buildDir, 'layers');
  }

  private get archivesDir(): string {
    return join(this.options.paths.buildDir, 'archives');
  }

  private get workDir(): string {
    return join(this.options.paths.buildDir, 'work');
  }

  private mirrors(): DebianMirrors {
    this.mirrorsCache ??= resolveDebianMirrors(DEBIAN_SUITE, this.options.settings);
    return this.mirrorsCache;
  }

  /** What the identity of `language`'s image is computed from, but the toolchain layer's packages. */
  private async identityInputs(
    language: Language,
  ): Promise<RootfsIdentityInputs & { readonly agentBundle: Buffer }> {
    const path = this.options.agentBundlePath;
    if (!existsSync(path) || !statSync(path).isFile()) {
      throw new ImageBuildFailedError(`agent bundle ${path} does not exist`);
    }
    // Read once: the bytes hashed are the bytes installed, even if the file changes meanwhile.
    const agentBundle = readFileSync(path);
    return {
      definition: language.definition,
      languageFiles: await folderDigests(language.dir),
      agentSha256: sha256Hex(agentBundle),
      agentBundle,
      initScript: GUEST_INIT_SCRIPT,
      agentVersion: AGENT_VERSION,
    };
  }

  /**
   * The identity `language`'s image has with this builder's agent bundle and the cached
   * toolchain layer; null while that layer is not built (its package versions are part of the
   * identity, and are known only once apt has run).
   */
  async identity(language: Language): Promise<RootfsIdentity | null> {
    const inputs = await this.identityInputs(language);
    const layer = this.cachedToolchain(
      language.definition.name,
      rootfsIdentity(inputs).toolchainKey,
    );
    return layer === undefined
      ? null
      : rootfsIdentity({ ...inputs, toolchainPackagesDigest: layer.info.packagesDigest });
  }

  /**
   * Builds the images of several languages one after the other (they share the apt cache and
   * its lock); a failure does not stop the others.
   */
  async buildMany(
    languages: readonly Language[],
  ): Promise<{ built: RootfsBuildResult[]; failed: RootfsBuildFailure[] }> {
    const built: RootfsBuildResult[] = [];
    const failed: RootfsBuildFailure[] = [];
    const lock = await this.lock();
    try {
      for (const language of languages) {
        this.options.signal?.throwIfAborted();
        try {
          built.push(await this.buildLocked(language));
        } catch (err) {
          if (this.options.signal?.aborted === true) throw err;
          const failure = toFailure(language.definition.name, err);
          failed.push(failure);
        }
      }
    } finally {
      await lock.release();
    }
    return { built, failed };
  }

  /** Builds one language's image (or finds it in the store); throws IMAGE_BUILD_FAILED. */
  async build(language: Language): Promise<RootfsBuildResult> {
    const lock = await this.lock();
    try {
      return await this.buildLocked(language);
    } finally {
      await lock.release();
    }
  }

  private async buildLocked(language: Language): Promise<RootfsBuildResult> {
    const name = language.definition.name;
    const started = Date.now();
    const inputs = await this.identityInputs(language);
    const keys = rootfsIdentity(inputs);
    this.reporter.event({ type: 'start', language: name });
    const reuse = async (
      identity: RootfsIdentity,
      logPath: string | null,
    ): Promise<RootfsBuildResult | undefined> => {
      if (this.options.force === true) return undefined;
      const existing = await this.options.store.find(identity.id, 'rootfs');
      if (existing === undefined) return undefined;
      const seconds = (Date.now() - started) / 1000;
      this.reporter.event({ type: 'done', language: name, id: identity.id, reused: true, seconds });
      return {
        language: name,
        id: identity.id,
        image: existing,
        reused: true,
        seconds,
        phaseSeconds: {},
        cachedLayers: { base: true, toolchain: true },
        logPath,
        warnings: [],
      };
    };
    // With the toolchain layer cached the identity is known at once: nothing to do when the
    // store already holds the image.
    const cached = this.cachedToolchain(name, keys.toolchainKey);
    if (cached !== undefined) {
      const reused = await reuse(
        rootfsIdentity({ ...inputs, toolchainPackagesDigest: cached.info.packagesDigest }),
        null,
      );
      if (reused !== undefined) return reused;
    }
    checkHost();
    mkdirSync(this.options.paths.logsDir, { recursive: true });
    const stamp = new Date().toISOString().replace(/[:.]/g, '-');
    const log = new BuildLog(join(this.options.paths.logsDir, `rootfs-${name}-${stamp}.log`));
    this.reporter.event({ type: 'note', language: name, message: `log: ${log.path}` });
    const phaseSeconds: Partial<Record<BuildPhase, number>> = {};
    let phase: BuildPhase = 'base';
    let phaseStarted = Date.now();
    const enter = (next: BuildPhase): void => {
      phaseSeconds[phase] = (Date.now() - phaseStarted) / 1000;
      phase = next;
      phaseStarted = Date.now();
      log.write(`### phase ${next}`);
      this.reporter.event({ type: 'phase', language: name, phase: next });
    };
    const work = join(this.workDir, `${name}-${randomBytes(4).toString('hex')}`);
    let staging: string | undefined;
    try {
      log.write(`### rootfs ${name}, agent ${AGENT_VERSION} (${keys.agentSha256})`);
      log.write(`### phase base`);
      this.reporter.event({ type: 'phase', language: name, phase: 'base' });
      // A cached toolchain layer holds the base already.
      const base =
        cached !== undefined
          ? { dir: null, cached: true }
          : await this.ensureBase(keys.baseKey, log);

      enter('packages');
      const toolchain =
        cached ?? (await this.ensureToolchain(language, keys.toolchainKey, base.dir, log));
      const identity = rootfsIdentity({
        ...inputs,
        toolchainPackagesDigest: toolchain.info.packagesDigest,
      });
      log.write(`### image identity ${identity.id}`);
      const reused = await reuse(identity, log.path);
      if (reused !== undefined) {
        log.write('### the store already holds this image');
        return { ...reused, cachedLayers: { base: base.cached, toolchain: toolchain.cached } };
      }

      enter('agent');
      const root = join(work, 'root');
      mkdirSync(work, { recursive: true });
      await copyTree(log, join(toolchain.dir, 'root'), root, this.options.signal);
      const { toolchainVersion, warnings } = await this.finalLayer(
        language,
        inputs.agentBundle,
        root,
        log,
      );
      for (const message of warnings)
        this.reporter.event({ type: 'note', language: name, message });

      enter('mkfs');
      staging = await this.options.store.createStaging('rootfs', identity.id);
      const fileName = rootfsFileName(name);
      const image = join(staging, fileName);
      await makeExt4(log, root, image, identity.hash, this.options.signal);
      removeTree(work);

      enter('checksum');
      const sha256 = await sha256File(image);
      const sizeBytes = statSync(image).size;
      const seconds = (Date.now() - started) / 1000;
      const manifest: ImageManifest = {
        schema: 1,
        kind: 'rootfs',
        id: identity.id,
        language: name,
        toolchainVersion,
        kernelVersion: this.options.kernelVersion ?? 'none',
        agentVersion: AGENT_VERSION,
        debianSuite: DEBIAN_SUITE,
        packages: [...BASE_PACKAGES, ...language.definition.packages],
        files: [{ name: fileName, sizeBytes, sha256 }],
        totalSizeBytes: sizeBytes,
        buildSeconds: Math.round(seconds * 10) / 10,
        builtAt: new Date().toISOString(),
        inputs: {
          baseKey: identity.baseKey,
          toolchainKey: identity.toolchainKey,
          agentSha256: identity.agentSha256,
          initSha256: identity.initSha256,
          definitionSha256: identity.definitionSha256,
          toolchainPackagesDigest: toolchain.info.packagesDigest,
        },
      };
      await writeManifest(staging, manifest);
      const stored = await this.options.store.commit(staging, {
        replace: this.options.force === true,
      });
      staging = undefined;
      phaseSeconds.checksum = (Date.now() - phaseStarted) / 1000;
      log.write(`### done: ${stored.dir} (${sizeBytes} bytes, ${seconds.toFixed(1)} s)`);
      log.write(`### phase seconds: ${JSON.stringify(phaseSeconds)}`);
      this.reporter.event({
        type: 'done',
        language: name,
        id: identity.id,
        reused: false,
        seconds,
      });
      return {
        language: name,
        id: identity.id,
        image: stored,
        reused: false,
        seconds,
        phaseSeconds,
        cachedLayers: { base: base.cached, toolchain: toolchain.cached },
        logPath: log.path,
        warnings,
      };
    } catch (err) {
      const message = err instanceof Error ? err.message : String(err);
      log.write(`### FAILED in phase ${phase}: ${message}`);
      this.reporter.event({ type: 'failed', language: name, phase, message, logPath: log.path });
      throw new ImageBuildFailedError(
        `rootfs ${name}: phase ${phase} failed: ${message} (log: ${log.path})`,
        { cause: err, details: { language: name, phase, logPath: log.path, tail: log.tail() } },
      );
    } finally {
      try {
        removeTree(work);
      } finally {
        if (staging !== undefined) rmSync(staging, { recursive: true, force: true });
        log.close();
      }
    }
  }

  /** The cached base layer for `key`, built first when missing. */
  private async ensureBase(key: string, log: BuildLog): Promise<CachedLayer> {
    const dir = join(this.layersDir, `base-${key.slice(0, 16)}`);
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

  /** The cached toolchain layer for `language`, built on the base when missing. */
  private async ensureToolchain(
    language: Language,
    key: string,
    baseDir: string | null,
    log: BuildLog,
  ): Promise<CachedLayer> {
    const name = language.definition.name;
    const prefix = `toolchain-${name}-`;
    const cached =
      this.options.rebuildLayers === true ? undefined : this.cachedToolchain(name, key);
    if (cached !== undefined) {
      log.write(`# toolchain layer cached: ${cached.dir}`);
      return cached;
    }
    if (baseDir === null) throw new Error('no base layer for a toolchain layer to start from');
    const dir = this.toolchainDir(name, key);
    const started = Date.now();
    const tmp = this.layerTemp(`toolchain-${name}`);
    const root = join(tmp, 'root');
    const packages = language.definition.packages;
    try {
      await copyTree(log, join(baseDir, 'root'), root, this.options.signal);
      const installed = await withChrootMounts(
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

  /** The final layer, in a copy of the toolchain layer. Returns the toolchain version read. */
  private async finalLayer(
    language: Language,
    agentBundle: Buffer,
    root: string,
    log: BuildLog,
  ): Promise<{ toolchainVersion: string; warnings: string[] }> {
    const definition = language.definition;
    addRunnerUser(root);
    // The agent, the language folder and the init.
    const agentPath = guestPath(root, GUEST_AGENT_PATH);
    mkdirSync(posix.dirname(agentPath), { recursive: true, mode: 0o755 });
    rmSync(agentPath, { force: true });
    writeFileSync(agentPath, agentBundle, { mode: 0o644, flag: 'wx' });
    chmodSync(agentPath, 0o644);
    const langDir = join(guestPath(root, GUEST_LANGUAGES_DIR), definition.name);
    mkdirSync(langDir, { recursive: true, mode: 0o755 });
    cpSync(language.dir, langDir, { recursive: true, dereference: true });
    normaliseOwnership(langDir);
    writeGuestFile(root, GUEST_INIT_PATH, GUEST_INIT_SCRIPT, 0o755);
    // Our own /etc files in place of the ones debootstrap copied from the host.
    writeGuestFile(root, '/etc/hostname', 'runner\n');
    writeGuestFile(
      root,
      '/etc/hosts',
      '127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n127.0.1.1\trunner\n',
    );
    writeGuestFile(root, '/etc/resolv.conf', '');
    log.write('# final layer: runner user, agent, language, init written');

    let output = '';
    await withChrootMounts(root, log, {}, async () => {
      // The bundle must at least parse under the guest's Node.js.
      await chrootRun(log, root, ['/usr/bin/node', '--check', GUEST_AGENT_PATH], {
        signal: this.options.signal,
      });
      output = await chrootCapture(log, root, definition.versionCommand, {
        signal: this.options.signal,
      });
    });
    const toolchainVersion = parseToolchainVersion(output);
    const warnings: string[] = [];
    if (toolchainVersion !== definition.version) {
      warnings.push(
        `toolchain version ${toolchainVersion} differs from languages/${definition.name}/language.json version ${definition.version}`,
      );
      log.write(`# WARNING ${warnings[warnings.length - 1] ?? ''}`);
    }
    shrink(root);
    return { toolchainVersion, warnings };
  }

  private toolchainDir(language: string, key: string): string {
    return join(this.layersDir, `toolchain-${language}-${key.slice(0, 16)}`);
  }

  /** The toolchain layer for this key when it is cached, whole, and may be used. */
  private cachedToolchain(language: string, key: string): CachedLayer | undefined {
    const dir = this.toolchainDir(language, key);
    if (!this.mayReuse(dir)) return undefined;
    const info = readLayerInfo(dir);
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

  /**
   * Serialises builds on this build folder (waiting for another build to finish), and clears
   * what a crashed build left.
   */
  private async lock(): Promise<HeldLock> {
    await mkdir(this.options.paths.buildDir, { recursive: true });
    const path = join(this.options.paths.buildDir, 'build.lock');
    let held: HeldLock;
    try {
      held = await acquireLock(path, { waitMs: 0 });
    } catch (err) {
      if (!hasCode(err, 'IMAGE_LOCKED')) throw err;
      this.reporter.event({
        type: 'note',
        language: '*',
        message: `waiting for another image build (${path})`,
      });
      held = await acquireLock(path, { waitMs: 3 * 3600_000, pollMs: 1000 });
    }
    this.sweep();
    return held;
  }

  /** Removes work and temporary layer folders of builds that died (we hold the lock). */
  private sweep(): void {
    for (const parent of [this.workDir, this.layersDir]) {
      if (!existsSync(parent)) continue;
      for (const entry of readdirSync(parent)) {
        if (parent === this.workDir || entry.startsWith('.tmp-')) removeTree(join(parent, entry));
      }
    }
  }
}

function toFailure(language: string, err: unknown): RootfsBuildFailure {
  const error =
    err instanceof RunnerError
      ? err
      : new ImageBuildFailedError(err instanceof Error ? err.message : String(err), {
          cause: err,
        });
  const details = error.details as { phase?: BuildPhase; logPath?: string } | undefined;
  return { language, phase: details?.phase ?? 'base', error, logPath: details?.logPath ?? null };
}

/** Fails early, and clearly, where a build cannot work. */
function checkHost(): void {
  if (process.getuid?.() !== 0) {
    throw new ImageBuildFailedError('building a rootfs needs root (debootstrap, chroot and mount)');
  }
  for (const tool of ['debootstrap', 'mkfs.ext4', 'chroot', 'mount', 'e2fsck']) {
    const found = ['/usr/sbin', '/usr/bin', '/sbin', '/bin'].some((d) => existsSync(join(d, tool)));
    if (!found) {
      throw new ImageBuildFailedError(
        `${tool} is not installed (apt-get install debootstrap e2fsprogs)`,
      );
    }
  }
}

/** A layer in the cache: its folder (with `root/` and `layer.json`) and what it records. */
interface CachedLayer {
  readonly dir: string;
  readonly info: LayerInfo;
  /** False when this build made it. */
  readonly cached: boolean;
}

function readLayerInfo(dir: string): LayerInfo | undefined {
  try {
    const info = JSON.parse(readFileSync(join(dir, 'layer.json'), 'utf8')) as Partial<LayerInfo>;
    // Layers from before packagesDigest existed are rebuilt.
    if (typeof info.packagesDigest !== 'string' || typeof info.key !== 'string') return undefined;
    return existsSync(join(dir, 'root')) ? (info as LayerInfo) : undefined;
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

/** Copies a tree with everything preserved (owners, modes, hard links, devices). */
async function copyTree(
  log: BuildLog,
  from: string,
  to: string,
  signal?: AbortSignal,
): Promise<void> {
  mkdirSync(posix.dirname(to), { recursive: true });
  await log.run('cp', ['-a', '--reflink=auto', from, to], { signal });
}

/**
 * Resolves a guest path to a host path inside `root`, following symlinks as the guest would
 * (an absolute link target is taken relative to `root`), so that writing through a link such as
 * /sbin -> usr/sbin can never land outside the tree.
 */
export function guestPath(root: string, path: string): string {
  let hops = 0;
  const pending = path.split('/').filter((p) => p !== '' && p !== '.');
  const resolved: string[] = [];
  while (pending.length > 0) {
    const part = pending.shift() ?? '';
    if (part === '..') {
      resolved.pop();
      continue;
    }
    const candidate = join(root, ...resolved, part);
    let link: string | undefined;
    try {
      if (lstatSync(candidate).isSymbolicLink()) link = readlinkSync(candidate);
    } catch {
      link = undefined;
    }
    // The last component is not followed: callers replace it, never write through it.
    if (link === undefined || pending.length === 0) {
      resolved.push(part);
      continue;
    }
    hops += 1;
    if (hops > 40) throw new ImageBuildFailedError(`too many symlinks in ${path}`);
    if (isAbsolute(link)) resolved.length = 0;
    pending.unshift(...link.split('/').filter((p) => p !== '' && p !== '.'));
  }
  return join(root, ...resolved);
}

/** Writes a file into the tree, replacing (never writing through) whatever is at that path. */
function writeGuestFile(root: string, path: string, content: string, mode = 0o644): void {
  const target = guestPath(root, path);
  mkdirSync(posix.dirname(target), { recursive: true });
  rmSync(target, { force: true });
  writeFileSync(target, content, { mode, flag: 'wx' });
  chmodSync(target, mode);
  chownSync(target, 0, 0);
}

/** Adds the unprivileged user `runner` (uid and gid 1000, home /home/runner) by editing the files. */
function addRunnerUser(root: string): void {
  const uid = GUEST_RUNNER_UID;
  const gid = GUEST_RUNNER_GID;
  const append = (path: string, line: string, mode: number): void => {
    const file = guestPath(root, path);
    const text = existsSync(file) ? readFileSync(file, 'utf8') : '';
    const lines = text.split('\n').filter((l) => l !== '' && !l.startsWith('runner:'));
    const stat = existsSync(file) ? statSync(file) : undefined;
    rmSync(file, { force: true });
    writeFileSync(file, `${[...lines, line].join('\n')}\n`, {
      mode: stat?.mode ?? mode,
      flag: 'wx',
    });
    chmodSync(file, (stat?.mode ?? mode) & 0o7777);
    chownSync(file, 0, stat?.gid ?? 0);
  };
  append('/etc/passwd', `runner:x:${uid}:${gid}:Runner Codes jobs:/home/runner:/bin/sh`, 0o644);
  append('/etc/group', `runner:x:${gid}:`, 0o644);
  append('/etc/shadow', 'runner:*:1:0:99999:7:::', 0o640);
  if (existsSync(guestPath(root, '/etc/gshadow'))) append('/etc/gshadow', 'runner:!::', 0o640);
  const home = guestPath(root, '/home/runner');
  mkdirSync(home, { recursive: true });
  chmodSync(home, 0o755);
  chownSync(home, uid, gid);
}

/** Language folders come from a checkout: make them root-owned and world-readable. */
function normaliseOwnership(dir: string): void {
  chownSync(dir, 0, 0);
  chmodSync(dir, 0o755);
  for (const entry of readdirSync(dir, { withFileTypes: true })) {
    const path = join(dir, entry.name);
    if (entry.isDirectory()) normaliseOwnership(path);
    else {
      chownSync(path, 0, 0);
      chmodSync(path, 0o644);
    }
  }
}

function emptyDebCache(root: string): void {
  const archives = guestPath(root, '/var/cache/apt/archives');
  unmountUnder(archives);
  if (!existsSync(archives)) return;
  for (const entry of readdirSync(archives)) {
    if (entry.endsWith('.deb')) rmSync(join(archives, entry), { force: true });
  }
}

/** Empties a guest folder, keeping the folder itself. */
function emptyDir(root: string, path: string): void {
  const dir = guestPath(root, path);
  unmountUnder(dir);
  if (!existsSync(dir) || !lstatSync(dir).isDirectory()) return;
  for (const entry of readdirSync(dir)) rmSync(join(dir, entry), { recursive: true, force: true });
}

/**
 * Removes what a read-only guest never needs: apt's lists and caches and sources, the build's
 * policy-rc.d, documentation, man pages, translations, logs.
 */
function shrink(root: string): void {
  for (const dir of [
    '/var/lib/apt/lists',
    '/var/cache/apt',
    '/usr/share/doc',
    '/usr/share/man',
    '/usr/share/info',
    '/usr/share/locale',
    '/usr/share/lintian',
    '/usr/share/linda',
    '/var/log',
    '/tmp',
    '/var/tmp',
    '/etc/apt/sources.list.d',
  ]) {
    emptyDir(root, dir);
  }
  for (const file of [
    '/etc/apt/sources.list',
    '/usr/sbin/policy-rc.d',
    '/etc/machine-id',
    '/var/lib/dbus/machine-id',
    '/root/.bash_history',
  ]) {
    rmSync(guestPath(root, file), { force: true });
  }
  for (const dir of ['/var/lib/dpkg', '/var/cache/debconf']) {
    const path = guestPath(root, dir);
    if (!existsSync(path)) continue;
    for (const entry of readdirSync(path)) {
      if (entry.endsWith('-old')) rmSync(join(path, entry), { force: true });
    }
  }
  chmodSync(guestPath(root, '/tmp'), 0o1777);
  chmodSync(guestPath(root, '/var/tmp'), 0o1777);
}

/** The first dotted number in a version command's output (`Python 3.11.2` -> `3.11.2`). */
export function parseToolchainVersion(output: string): string {
  const match = /\d+(?:\.\d+)+/.exec(output);
  if (match !== null) return match[0];
  const first = output.trim().split('\n')[0] ?? '';
  return first === '' ? 'unknown' : first.slice(0, 80);
}

/** What `mkfs.ext4 -d` needs for a tree: data blocks and inodes. */
export interface TreeUsage {
  readonly bytes: number;
  readonly inodes: number;
}

/** Measures a tree as ext4 would store it with 4 KiB blocks (hard links counted once). */
export function measureTree(root: string): TreeUsage {
  const seen = new Set<number>();
  let bytes = 0;
  let inodes = 0;
  const block = (n: number): number => Math.ceil(n / 4096) * 4096;
  const walk = (dir: string): void => {
    for (const entry of readdirSync(dir)) {
      const path = join(dir, entry);
      const info = lstatSync(path);
      if (seen.has(info.ino)) continue;
      seen.add(info.ino);
      inodes += 1;
      if (info.isDirectory()) {
        bytes += Math.max(4096, block(info.size));
        walk(path);
      } else if (info.isFile()) {
        bytes += block(info.size);
      } else if (info.isSymbolicLink() && info.size >= 60) {
        bytes += 4096;
      }
    }
  };
  walk(root);
  return { bytes, inodes: inodes + 1 };
}

/** The image size for a tree: the data plus inode tables, metadata and some headroom, in MiB. */
export function ext4SizeMib(usage: TreeUsage): number {
  const inodes = ext4InodeCount(usage);
  const bytes = usage.bytes * 1.05 + inodes * 256 + 24 * 1024 * 1024;
  return Math.ceil(bytes / (1024 * 1024));
}

export function ext4InodeCount(usage: TreeUsage): number {
  return Math.ceil(usage.inodes * 1.1) + 1024;
}

/**
 * Makes the ext4 image from the tree, without mounting: no journal (the guest mounts it
 * read-only), no reserved blocks, root-owned root, and a UUID and hash seed derived from the
 * image hash so that equal inputs give equal metadata. Retries with more room if it did not fit.
 */
async function makeExt4(
  log: BuildLog,
  root: string,
  image: string,
  hash: string,
  signal?: AbortSignal,
): Promise<void> {
  const usage = measureTree(root);
  const inodes = ext4InodeCount(usage);
  let sizeMib = ext4SizeMib(usage);
  const uuid = `${hash.slice(0, 8)}-${hash.slice(8, 12)}-4${hash.slice(13, 16)}-a${hash.slice(17, 20)}-${hash.slice(20, 32)}`;
  log.write(
    `# tree: ${usage.bytes} bytes in ${usage.inodes} inodes; image ${sizeMib} MiB, ${inodes} inodes`,
  );
  for (let attempt = 1; ; attempt += 1) {
    rmSync(image, { force: true });
    try {
      await log.run(
        'mkfs.ext4',
        [
          '-q',
          '-F',
          '-t',
          'ext4',
          '-b',
          '4096',
          '-I',
          '256',
          '-N',
          String(inodes),
          '-m',
          '0',
          '-L',
          'runner-rootfs',
          '-U',
          uuid,
          '-O',
          '^has_journal,^resize_inode',
          '-E',
          `root_owner=0:0,hash_seed=${uuid}`,
          '-d',
          root,
          image,
          `${sizeMib}M`,
        ],
        { signal },
      );
      break;
    } catch (err) {
      if (attempt >= 3 || signal?.aborted === true) throw err;
      sizeMib = Math.ceil(sizeMib * 1.3);
      log.write(`# mkfs failed; retrying with ${sizeMib} MiB`);
    }
  }
  // A read-only check of the result (e2fsck exits 0 when clean).
  await log.run('e2fsck', ['-fn', image], { signal });
}
