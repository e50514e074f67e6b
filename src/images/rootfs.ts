import { randomBytes } from 'node:crypto';
import { existsSync, mkdirSync, readdirSync, readFileSync, rmSync, statSync } from 'node:fs';
import { mkdir } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import type { DataPaths } from '../config/index.js';
import { hasCode, ImageBuildFailedError, RunnerError } from '../errors.js';
import { LanguageRegistry, type Language, type LanguageDefinition } from '../languages/index.js';
import { AGENT_VERSION } from '../version.js';
import { BuildLog } from './build-log.js';
import { chrootCapture, chrootRun, removeTree, withChrootMounts } from './chroot.js';
import { makeExt4 } from './ext4.js';
import { GUEST_AGENT_PATH, GUEST_DISK_LABELS, GUEST_INIT_SCRIPT } from './guest-init.js';
import { buildExecHelper } from './exec-helper.js';
import {
  GUEST_CPU_DIR,
  guestCpuArgv,
  guestPath,
  installAgentFiles,
  installCommonGuestFiles,
  installLanguageFolder,
  shrink,
} from './guest-tree.js';
import {
  BASE_PACKAGES,
  baseImageIdentity,
  baseLayerKey,
  baseTreeKey,
  DEBIAN_SUITE,
  folderDigests,
  layerPackages,
  rootfsIdentity,
  sha256File,
  sha256Hex,
  type BaseImageIdentity,
  type RootfsIdentityInputs,
} from './identity.js';
import { makeLayerTree } from './layer-diff.js';
import { copyTree, hasTree, LayerCache, type CachedLayer } from './layer-cache.js';
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

/** The file name of a language's layer image. */
export function rootfsFileName(language: string): string {
  return `rootfs-${language}.ext4`;
}

/** The file name of the base image. */
export const BASE_FILE_NAME = 'base.ext4';

/** The name the base image's build goes by in progress events, logs and failures. */
export const BASE_BUILD_NAME = 'base';

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

/** A built (or already present) image: a language's layer, or the base. */
export interface RootfsBuildResult {
  /** The language, or BASE_BUILD_NAME for the base image. */
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

/** A language (or the base) whose build failed. */
export interface RootfsBuildFailure {
  readonly language: string;
  readonly phase: BuildPhase;
  readonly error: RunnerError;
  readonly logPath: string | null;
}

/** The base image of this build, and the base layer and tree it was made from. */
interface BaseState {
  readonly result: RootfsBuildResult;
  readonly baseLayer: CachedLayer;
  readonly treeKey: string;
}

/** The state of one image's build: its log, its phases, its timings. */
class BuildRun {
  readonly started = Date.now();
  readonly phaseSeconds: Partial<Record<BuildPhase, number>> = {};
  phase: BuildPhase = 'base';
  private phaseStarted = Date.now();

  constructor(
    readonly name: string,
    readonly log: BuildLog,
    private readonly reporter: BuildReporter,
  ) {
    log.write(`### phase base`);
    reporter.event({ type: 'phase', language: name, phase: 'base' });
  }

  enter(next: BuildPhase): void {
    this.phaseSeconds[this.phase] = (Date.now() - this.phaseStarted) / 1000;
    this.phase = next;
    this.phaseStarted = Date.now();
    this.log.write(`### phase ${next}`);
    this.reporter.event({ type: 'phase', language: this.name, phase: next });
  }

  finish(): number {
    this.phaseSeconds[this.phase] = (Date.now() - this.phaseStarted) / 1000;
    return (Date.now() - this.started) / 1000;
  }
}

/**
 * Builds the images VMs are made of: one base image shared by every language, and one layer per
 * language that the guest stacks over it (overlayfs: layer over base, under a tmpfs).
 *
 * From three build layers, cached on the host:
 * 1. base: debootstrap minbase of bookworm plus BASE_PACKAGES, updated from the security suite
 *    (`<buildDir>/layers/base-<key>/`).
 * 2. toolchain: a copy of the base plus one language's Debian packages and npm pins
 *    (`<buildDir>/layers/toolchain-<lang>-<key>/`), keyed by the base key and the packages.
 * 3. the images, never cached:
 *    - the **base tree**: the base layer with the guest edits every image gets (the runner user,
 *      our own /etc, the shrinking); the **base image** is it plus the agent, the exec helper
 *      and /sbin/runner-init;
 *    - a **language layer**: the toolchain layer with the same edits and the language's
 *      folder, less everything the base tree holds identically (layer-diff.ts), with whiteouts
 *      for what the toolchain removed. It holds no agent: a change of the agent rebuilds the
 *      base image only.
 *    Each goes through `mkfs.ext4 -d` without mounting anything.
 *
 * Nothing of the host's /etc goes in: the files debootstrap copies from the host (resolv.conf,
 * hostname) are replaced, and the apt sources are removed. Builds are serialised by a lock in
 * the build folder; they need root (debootstrap, chroot, mount, mknod).
 */
export class RootfsBuilder {
  private readonly options: RootfsBuilderOptions;
  private readonly reporter: BuildReporter;
  /** The base and toolchain layers; it lives as long as the builder (see rebuildLayers). */
  private readonly layers: LayerCache;
  private helperBuild: Promise<string> | undefined;
  /** The base tree of this build (under the work folder), made when a layer needs it. */
  private referenceTree: Promise<string> | undefined;

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
    if (this.options.execHelperPath !== undefined)
      return Promise.resolve(this.options.execHelperPath);
    this.helperBuild ??= buildExecHelper(join(this.options.paths.buildDir, 'agent', 'runner-exec'));
    return this.helperBuild;
  }

  private get workDir(): string {
    return join(this.options.paths.buildDir, 'work');
  }

  /** The agent bundle and exec helper, read once: the bytes hashed are the bytes installed. */
  private async agentFiles(): Promise<{ agentBundle: Buffer; execHelper: Buffer }> {
    const path = this.options.agentBundlePath;
    if (!existsSync(path) || !statSync(path).isFile()) {
      throw new ImageBuildFailedError(`agent bundle ${path} does not exist`);
    }
    return { agentBundle: readFileSync(path), execHelper: readFileSync(await this.execHelper()) };
  }

  /**
   * Builds the base image and the layers of several languages one after the other (they share
   * the apt cache and its lock); a language's failure does not stop the others, the base's
   * fails them all. `base` is absent when the base failed.
   */
  async buildMany(languages: readonly Language[]): Promise<{
    base?: RootfsBuildResult;
    built: RootfsBuildResult[];
    failed: RootfsBuildFailure[];
  }> {
    const built: RootfsBuildResult[] = [];
    const failed: RootfsBuildFailure[] = [];
    const lock = await this.lock();
    try {
      let base: BaseState;
      try {
        base = await this.buildBase();
      } catch (err) {
        if (this.options.signal?.aborted === true) throw err;
        const failure = toFailure(BASE_BUILD_NAME, err);
        failed.push(failure);
        for (const language of languages)
          failed.push({ ...failure, language: language.definition.name });
        return { built, failed };
      }
      for (const members of layerGroups(languages)) {
        this.options.signal?.throwIfAborted();
        const name = layerName(members[0]?.definition);
        try {
          built.push(await this.buildLayer(name, members, base));
        } catch (err) {
          if (this.options.signal?.aborted === true) throw err;
          failed.push(toFailure(name, err));
        }
      }
      return { base: base.result, built, failed };
    } finally {
      this.dropReferenceTree();
      await lock.release();
    }
  }

  /**
   * Builds the base image and the layer of one language (with every language of its family),
   * or finds them; throws IMAGE_BUILD_FAILED.
   */
  async build(language: Language): Promise<RootfsBuildResult> {
    const lock = await this.lock();
    try {
      const members = layerGroups([language])[0] ?? [language];
      return await this.buildLayer(layerName(language.definition), members, await this.buildBase());
    } finally {
      this.dropReferenceTree();
      await lock.release();
    }
  }

  /** Opens a build's log and reports its start. */
  private openRun(name: string): BuildRun {
    mkdirSync(this.options.paths.logsDir, { recursive: true });
    const stamp = new Date().toISOString().replace(/[:.]/g, '-');
    const log = new BuildLog(join(this.options.paths.logsDir, `rootfs-${name}-${stamp}.log`));
    this.reporter.event({ type: 'note', language: name, message: `log: ${log.path}` });
    return new BuildRun(name, log, this.reporter);
  }

  /** The result for an image the store holds already. */
  private reused(
    name: string,
    image: StoredImage,
    started: number,
    logPath: string | null,
  ): RootfsBuildResult {
    const seconds = (Date.now() - started) / 1000;
    this.reporter.event({
      type: 'done',
      language: name,
      id: image.manifest.id,
      reused: true,
      seconds,
    });
    return {
      language: name,
      id: image.manifest.id,
      image,
      reused: true,
      seconds,
      phaseSeconds: {},
      cachedLayers: { base: true, toolchain: true },
      logPath,
      warnings: [],
    };
  }

  /** Runs one image's build: phases, the failure's message and log, the work folder's removal. */
  private async runBuild<T>(run: BuildRun, work: string, fn: () => Promise<T>): Promise<T> {
    try {
      return await fn();
    } catch (err) {
      const message = err instanceof Error ? err.message : String(err);
      run.log.write(`### FAILED in phase ${run.phase}: ${message}`);
      this.reporter.event({
        type: 'failed',
        language: run.name,
        phase: run.phase,
        message,
        logPath: run.log.path,
      });
      throw new ImageBuildFailedError(
        `${run.name === BASE_BUILD_NAME ? 'the base image' : `rootfs ${run.name}`}: phase ${run.phase} failed: ${message} (log: ${run.log.path})`,
        {
          cause: err,
          details: {
            language: run.name,
            phase: run.phase,
            logPath: run.log.path,
            tail: run.log.tail(),
          },
        },
      );
    } finally {
      try {
        removeTree(work);
      } finally {
        run.log.close();
      }
    }
  }

  /** Makes an ext4 of `tree`, stores it with its manifest, and reports it done. */
  private async store(
    run: BuildRun,
    tree: string,
    fileName: string,
    label: string,
    manifest: Omit<
      ImageManifest,
      'files' | 'totalSizeBytes' | 'buildSeconds' | 'builtAt' | 'schema'
    >,
    hash: string,
  ): Promise<StoredImage> {
    run.enter('mkfs');
    const staging = await this.options.store.createStaging(manifest.kind, manifest.id);
    try {
      const image = join(staging, fileName);
      await makeExt4(run.log, tree, image, hash, label, this.options.signal);
      removeTree(tree);
      run.enter('checksum');
      const sha256 = await sha256File(image);
      const sizeBytes = statSync(image).size;
      const seconds = run.finish();
      await writeManifest(staging, {
        schema: 1,
        ...manifest,
        files: [{ name: fileName, sizeBytes, sha256 }],
        totalSizeBytes: sizeBytes,
        buildSeconds: Math.round(seconds * 10) / 10,
        builtAt: new Date().toISOString(),
      });
      const stored = await this.options.store.commit(staging, {
        replace: this.options.force === true,
      });
      run.log.write(`### done: ${stored.dir} (${sizeBytes} bytes, ${seconds.toFixed(1)} s)`);
      run.log.write(`### phase seconds: ${JSON.stringify(run.phaseSeconds)}`);
      this.reporter.event({
        type: 'done',
        language: run.name,
        id: manifest.id,
        reused: false,
        seconds,
      });
      return stored;
    } finally {
      rmSync(staging, { recursive: true, force: true });
    }
  }

  /**
   * The base image: the base tree plus the agent, the exec helper and the init. Found in the
   * store when one of the same identity is there.
   */
  private async buildBase(): Promise<BaseState> {
    const state = await this.makeBase();
    await this.options.store.select(state.result.image);
    return state;
  }

  private async makeBase(): Promise<BaseState> {
    const name = BASE_BUILD_NAME;
    const started = Date.now();
    const agent = await this.agentFiles();
    const baseKey = baseLayerKey();
    this.reporter.event({ type: 'start', language: name });
    // With the base layer cached the identity is known at once.
    const cachedLayer = this.layers.cachedBase(baseKey);
    const identityOf = (layer: CachedLayer): BaseImageIdentity =>
      baseImageIdentity({
        baseTreeKey: baseTreeKey(baseKey, layer.info.packagesDigest),
        agentSha256: sha256Hex(agent.agentBundle),
        execHelperSha256: sha256Hex(agent.execHelper),
        initScript: GUEST_INIT_SCRIPT,
        agentVersion: AGENT_VERSION,
      });
    if (cachedLayer !== undefined && this.options.force !== true) {
      const identity = identityOf(cachedLayer);
      const existing = await this.options.store.find(identity.id, 'base');
      if (existing !== undefined)
        return {
          result: this.reused(name, existing, started, null),
          baseLayer: cachedLayer,
          treeKey: identity.baseTreeKey,
        };
    }
    checkHost();
    const run = this.openRun(name);
    const work = join(this.workDir, `base-${randomBytes(4).toString('hex')}`);
    return this.runBuild(run, work, async () => {
      run.log.write(`### base image, agent ${AGENT_VERSION} (${sha256Hex(agent.agentBundle)})`);
      const baseLayer = await this.layers.ensureBase(baseKey, run.log);
      const identity = identityOf(baseLayer);
      run.log.write(`### image identity ${identity.id}`);
      const existing =
        this.options.force === true
          ? undefined
          : await this.options.store.find(identity.id, 'base');
      if (existing !== undefined) {
        return {
          result: {
            ...this.reused(name, existing, started, run.log.path),
            cachedLayers: { base: baseLayer.cached, toolchain: true },
          },
          baseLayer,
          treeKey: identity.baseTreeKey,
        };
      }
      run.enter('layer');
      const reference = await this.reference(baseLayer, run.log);
      const root = join(work, 'root');
      mkdirSync(work, { recursive: true });
      await copyTree(run.log, reference, root, this.options.signal);
      installAgentFiles(root, agent.agentBundle, agent.execHelper);
      run.log.write('# base image: agent, exec helper and init written');
      await withChrootMounts(root, run.log, {}, async () => {
        // The bundle must at least parse under the guest's Node.js.
        await chrootRun(run.log, root, ['/usr/bin/node', '--check', GUEST_AGENT_PATH], {
          signal: this.options.signal,
        });
      });
      const image = await this.store(
        run,
        root,
        BASE_FILE_NAME,
        GUEST_DISK_LABELS.base,
        {
          kind: 'base',
          id: identity.id,
          language: null,
          toolchainVersion: null,
          kernelVersion: this.options.kernelVersion ?? 'none',
          agentVersion: AGENT_VERSION,
          debianSuite: DEBIAN_SUITE,
          packages: [...BASE_PACKAGES],
          inputs: {
            baseKey,
            baseTreeKey: identity.baseTreeKey,
            basePackagesDigest: baseLayer.info.packagesDigest,
            agentSha256: identity.agentSha256,
            execHelperSha256: sha256Hex(agent.execHelper),
            initSha256: identity.initSha256,
          },
        },
        identity.hash,
      );
      const seconds = (Date.now() - started) / 1000;
      return {
        result: {
          language: name,
          id: identity.id,
          image,
          reused: false,
          seconds,
          phaseSeconds: run.phaseSeconds,
          cachedLayers: { base: baseLayer.cached, toolchain: true },
          logPath: run.log.path,
          warnings: [],
        },
        baseLayer,
        treeKey: identity.baseTreeKey,
      };
    });
  }

  /**
   * The base tree, made once per build (a copy of the base layer with the common guest edits):
   * the base image is it plus the agent, and every layer is a difference against it.
   */
  private reference(baseLayer: CachedLayer, log: BuildLog): Promise<string> {
    this.referenceTree ??= (async () => {
      const root = join(this.workDir, `reference-${randomBytes(4).toString('hex')}`, 'root');
      mkdirSync(join(root, '..'), { recursive: true });
      await copyTree(log, join(baseLayer.dir, 'root'), root, this.options.signal);
      installCommonGuestFiles(root);
      shrink(root);
      log.write(`# base tree: ${root}`);
      return root;
    })();
    const pending = this.referenceTree;
    // A failed tree is made again by the next build, not handed out.
    pending.catch(() => {
      if (this.referenceTree === pending) this.referenceTree = undefined;
    });
    return pending;
  }

  private dropReferenceTree(): void {
    const pending = this.referenceTree;
    this.referenceTree = undefined;
    void pending?.then(
      (root) => removeTree(join(root, '..')),
      () => undefined,
    );
  }

  /**
   * A layer (built or found), marked in the store as the one its language's VMs use, as the base
   * is (ImageStore.select): what these sources make wins over a newer build of other sources.
   */
  private async buildLayer(
    name: string,
    members: readonly Language[],
    base: BaseState,
  ): Promise<RootfsBuildResult> {
    const result = await this.makeLayer(name, members, base);
    await this.options.store.select(result.image);
    return result;
  }

  /** One layer (the languages of one family) over the base tree, or the one in the store. */
  private async makeLayer(
    name: string,
    members: readonly Language[],
    base: BaseState,
  ): Promise<RootfsBuildResult> {
    const started = Date.now();
    const inputs: RootfsIdentityInputs = {
      layer: name,
      members: await Promise.all(
        members.map(async (m) => ({
          definition: m.definition,
          languageFiles: await folderDigests(m.dir),
        })),
      ),
      baseTreeKey: base.treeKey,
    };
    const keys = rootfsIdentity(inputs);
    const toolchainSpec = { name, ...layerPackages(members.map((m) => m.definition)) };
    this.reporter.event({ type: 'start', language: name });
    const find = async (packagesDigest: string): Promise<StoredImage | undefined> => {
      if (this.options.force === true) return undefined;
      const identity = rootfsIdentity({ ...inputs, toolchainPackagesDigest: packagesDigest });
      return this.options.store.find(identity.id, 'rootfs');
    };
    // With the toolchain layer cached the identity is known at once: nothing to do when the
    // store already holds the layer.
    const cached = this.layers.cachedToolchain(name, keys.toolchainKey);
    if (cached !== undefined) {
      const existing = await find(cached.info.packagesDigest);
      if (existing !== undefined) return this.reused(name, existing, started, null);
    }
    checkHost();
    const run = this.openRun(name);
    const work = join(this.workDir, `${name}-${randomBytes(4).toString('hex')}`);
    return this.runBuild(run, work, async () => {
      run.log.write(
        `### layer ${name} (${members.map((m) => m.definition.name).join(', ')}) over the base tree ${base.treeKey.slice(0, 16)}`,
      );
      run.enter('packages');
      const toolchain =
        cached !== undefined && hasTree(cached)
          ? cached
          : await this.layers.ensureToolchain(
              toolchainSpec,
              keys.toolchainKey,
              base.baseLayer.dir,
              run.log,
            );
      const identity = rootfsIdentity({
        ...inputs,
        toolchainPackagesDigest: toolchain.info.packagesDigest,
      });
      run.log.write(`### image identity ${identity.id}`);
      const existing = await find(toolchain.info.packagesDigest);
      if (existing !== undefined) {
        run.log.write('### the store already holds this image');
        this.layers.dropTree(toolchain);
        return {
          ...this.reused(name, existing, started, run.log.path),
          cachedLayers: { base: true, toolchain: toolchain.cached },
        };
      }

      run.enter('layer');
      const root = join(work, 'root');
      mkdirSync(work, { recursive: true });
      await copyTree(run.log, join(toolchain.dir, 'root'), root, this.options.signal);
      const { versions, warnings } = await this.finishTree(members, root, run.log);
      for (const message of warnings)
        this.reporter.event({ type: 'note', language: name, message });
      const layer = join(work, 'layer');
      const reference = await this.reference(base.baseLayer, run.log);
      await makeLayerTree(run.log, root, reference, layer, this.options.signal);
      removeTree(root);

      const languages = Object.keys(versions).sort();
      const image = await this.store(
        run,
        layer,
        rootfsFileName(name),
        GUEST_DISK_LABELS.layer,
        {
          kind: 'rootfs',
          id: identity.id,
          language: name,
          ...(languages.length > 1 || languages[0] !== name ? { languages, versions } : {}),
          toolchainVersion: versions[name] ?? versions[languages[0] ?? ''] ?? 'unknown',
          kernelVersion: this.options.kernelVersion ?? 'none',
          agentVersion: null,
          debianSuite: DEBIAN_SUITE,
          packages: toolchainSpec.packages,
          inputs: {
            baseKey: identity.baseKey,
            baseTreeKey: base.treeKey,
            toolchainKey: identity.toolchainKey,
            definitionSha256: identity.definitionSha256,
            toolchainPackagesDigest: toolchain.info.packagesDigest,
          },
        },
        identity.hash,
      );
      // The tree is a copy of the base plus the toolchain: the stored layer holds what counts.
      this.layers.dropTree(toolchain);
      return {
        language: name,
        id: identity.id,
        image,
        reused: false,
        seconds: (Date.now() - started) / 1000,
        phaseSeconds: run.phaseSeconds,
        cachedLayers: { base: true, toolchain: toolchain.cached },
        logPath: run.log.path,
        warnings,
      };
    });
  }

  /**
   * The guest edits of a toolchain tree before its difference is taken: the same as the base
   * tree's, plus the folder of each language of the layer; then each language's `prepare`
   * commands, run in the tree; and each one's version, read from it by its versionCommand.
   */
  private async finishTree(
    members: readonly Language[],
    root: string,
    log: BuildLog,
  ): Promise<{ versions: Record<string, string>; warnings: string[] }> {
    installCommonGuestFiles(root);
    for (const member of members) installLanguageFolder(root, member);
    log.write('# layer: runner user, /etc and the language folders written');
    const versions: Record<string, string> = {};
    const warnings: string[] = [];
    await withChrootMounts(root, log, {}, async () => {
      for (const { definition } of members) {
        for (const template of definition.prepare ?? []) {
          const argv = guestCpuArgv(root, template);
          log.write(`# ${definition.name}: prepare: ${argv.join(' ')}`);
          try {
            await chrootRun(log, root, argv, { signal: this.options.signal });
          } finally {
            rmSync(guestPath(root, GUEST_CPU_DIR), { recursive: true, force: true });
          }
        }
      }
      for (const { definition } of members) {
        const output = await chrootCapture(log, root, definition.versionCommand, {
          signal: this.options.signal,
        });
        const version = parseToolchainVersion(output);
        versions[definition.name] = version;
        if (version !== definition.version) {
          warnings.push(
            `${definition.name}: toolchain version ${version} differs from languages/${definition.name}/language.json version ${definition.version}`,
          );
          log.write(`# WARNING ${warnings[warnings.length - 1] ?? ''}`);
        }
      }
    });
    shrink(root);
    return { versions, warnings };
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

/** The layer a language's image is: its family's (`layer`), else its own. */
export function layerName(definition: LanguageDefinition | undefined): string {
  return definition?.layer ?? definition?.name ?? '';
}

/**
 * The layers to build for these languages: each with every language of its family found beside
 * them (in the same languages folder), so that building c builds the gcc layer with c++ too.
 */
export function layerGroups(languages: readonly Language[]): Language[][] {
  const groups = new Map<string, Map<string, Language>>();
  const registries = new Map<string, LanguageRegistry>();
  for (const language of languages) {
    const name = layerName(language.definition);
    const folder = dirname(language.dir);
    let registry = registries.get(folder);
    if (registry === undefined) {
      registry = LanguageRegistry.fromDir(folder);
      registries.set(folder, registry);
    }
    const group = groups.get(name) ?? new Map<string, Language>();
    group.set(language.definition.name, language);
    for (const other of registry.list()) {
      if (layerName(other.definition) === name && !group.has(other.definition.name))
        group.set(other.definition.name, other);
    }
    groups.set(name, group);
  }
  return [...groups.values()].map((g) =>
    [...g.values()].sort((a, b) => a.definition.name.localeCompare(b.definition.name)),
  );
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
