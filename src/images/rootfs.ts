import { randomBytes } from 'node:crypto';
import { existsSync, mkdirSync, readdirSync, readFileSync, rmSync, statSync } from 'node:fs';
import { mkdir } from 'node:fs/promises';
import { join } from 'node:path';
import type { DataPaths } from '../config/index.js';
import { hasCode, ImageBuildFailedError, RunnerError } from '../errors.js';
import type { Language } from '../languages/index.js';
import { AGENT_VERSION } from '../version.js';
import { BuildLog } from './build-log.js';
import { chrootCapture, chrootRun, removeTree, withChrootMounts } from './chroot.js';
import { makeExt4 } from './ext4.js';
import { GUEST_AGENT_PATH, GUEST_INIT_SCRIPT } from './guest-init.js';
import { buildExecHelper } from './exec-helper.js';
import { installGuestFiles, shrink } from './guest-tree.js';
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
import { copyTree, LayerCache } from './layer-cache.js';
import { acquireLock, type HeldLock } from './lockfile.js';
import type { ImageManifest } from './manifest.js';
import type { DebianMirrorSettings, DebianMirrors } from './mirror.js';
import { silentReporter, type BuildPhase, type BuildReporter } from './progress.js';
import { writeManifest, type ImageStore, type StoredImage } from './store.js';

/*
 * The rootfs builder: the orchestration of one image build (identity, lock, phases, manifest).
 * The layers it starts from are in layer-cache.ts, the edits of the guest tree in
 * guest-tree.ts, the ext4 image in ext4.ts.
 */

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
  /**
   * The static exec helper (runner-exec), copied to /opt/runner/runner-exec; built from
   * src/agent/native/runner-exec.c into the build dir when not given.
   */
  readonly execHelperPath?: string;
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
  /** The base and toolchain layers; it lives as long as the builder (see rebuildLayers). */
  private readonly layers: LayerCache;
  private helperBuild: Promise<string> | undefined;

  constructor(options: RootfsBuilderOptions) {
    this.options = options;
    this.reporter = options.reporter ?? silentReporter;
    this.layers = new LayerCache({
      buildDir: options.paths.buildDir,
      settings: options.settings,
      mirrors: options.mirrors,
      rebuildLayers: options.rebuildLayers,
      signal: options.signal,
    });
  }

  /** The exec helper's path: the given one, or built once per builder into the build dir. */
  private execHelper(): Promise<string> {
    if (this.options.execHelperPath !== undefined) return Promise.resolve(this.options.execHelperPath);
    this.helperBuild ??= buildExecHelper(join(this.options.paths.buildDir, 'agent', 'runner-exec'));
    return this.helperBuild;
  }

  private get workDir(): string {
    return join(this.options.paths.buildDir, 'work');
  }

  /** What the identity of `language`'s image is computed from, but the toolchain layer's packages. */
  private async identityInputs(
    language: Language,
  ): Promise<RootfsIdentityInputs & { readonly agentBundle: Buffer; readonly execHelper: Buffer }> {
    const path = this.options.agentBundlePath;
    if (!existsSync(path) || !statSync(path).isFile()) {
      throw new ImageBuildFailedError(`agent bundle ${path} does not exist`);
    }
    // Read once: the bytes hashed are the bytes installed, even if the file changes meanwhile.
    const agentBundle = readFileSync(path);
    const execHelper = readFileSync(await this.execHelper());
    return {
      definition: language.definition,
      languageFiles: await folderDigests(language.dir),
      agentSha256: sha256Hex(agentBundle),
      execHelperSha256: sha256Hex(execHelper),
      agentBundle,
      execHelper,
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
    const layer = this.layers.cachedToolchain(
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
    const cached = this.layers.cachedToolchain(name, keys.toolchainKey);
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
          : await this.layers.ensureBase(keys.baseKey, log);

      enter('packages');
      const toolchain =
        cached ?? (await this.layers.ensureToolchain(language, keys.toolchainKey, base.dir, log));
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
        { agentBundle: inputs.agentBundle, execHelper: inputs.execHelper },
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

  /** The final layer, in a copy of the toolchain layer. Returns the toolchain version read. */
  private async finalLayer(
    language: Language,
    agent: { agentBundle: Buffer; execHelper: Buffer },
    root: string,
    log: BuildLog,
  ): Promise<{ toolchainVersion: string; warnings: string[] }> {
    const definition = language.definition;
    installGuestFiles(root, language, agent.agentBundle, agent.execHelper);
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
    if (existsSync(this.workDir)) {
      for (const entry of readdirSync(this.workDir)) removeTree(join(this.workDir, entry));
    }
    this.layers.sweep();
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

/** The first dotted number in a version command's output (`Python 3.11.2` -> `3.11.2`). */
export function parseToolchainVersion(output: string): string {
  const match = /\d+(?:\.\d+)+/.exec(output);
  if (match !== null) return match[0];
  const first = output.trim().split('\n')[0] ?? '';
  return first === '' ? 'unknown' : first.slice(0, 80);
}
