import { mkdir } from 'node:fs/promises';
import { join } from 'node:path';
import { BuildLog } from '../../images/build-log.js';
import { buildKernelImage, isCurrentKernel } from '../../images/kernel.js';
import {
  RemoteImageStore,
  remoteStoreConfigFromSettings,
  renderTransferProgress,
  type RemoteStoreSettings,
} from '../../images/remote.js';
import type { Command } from '@commander-js/extra-typings';
import { dataPaths, loadSettings, type DataPaths } from '../../config/index.js';
import {
  ConfigInvalidError,
  ImageBuildFailedError,
  ImageNotFoundError,
  LanguageUnknownError,
} from '../../errors.js';
import { LanguageRegistry, type Language } from '../../languages/index.js';
import { bundleAgent } from '../../images/agent-bundle.js';
import { createReporter } from '../../images/progress.js';
import type { DebianMirrorSettings } from '../../images/mirror.js';
import { RootfsBuilder } from '../../images/rootfs.js';
import { ImageStore, isImageId, type StoredImage } from '../../images/store.js';
import { latestBase } from '../../pool/snapshots.js';
import { remoteFetcher } from '../../pool/engine.js';

function out(line = ''): void {
  process.stdout.write(`${line}\n`);
}

function mib(bytes: number): string {
  return `${(bytes / (1024 * 1024)).toFixed(1)} MiB`;
}

/** The local image store the settings name (RUNNER_IMAGES_DIR, else <data dir>/images). */
function localStore(): ImageStore {
  return new ImageStore(dataPaths(loadSettings()).imagesDir);
}

/** An image by id, or the layer in use of a language given by name or alias (store.latest). */
async function resolveRef(store: ImageStore, ref: string): Promise<StoredImage> {
  if (isImageId(ref)) return store.inspect(ref);
  const language = LanguageRegistry.fromDir().find(ref);
  if (language !== undefined) return store.resolve('rootfs', language.definition.name);
  throw new ImageNotFoundError(
    `${JSON.stringify(ref)} is neither an image id (<name>-<hash>) nor a language`,
  );
}

/**
 * Builds the kernel image (vmlinuz, vmlinux, initramfs) when the store has none, or always with
 * `force`; phases are shown on stderr, the full log goes to a file.
 */
async function ensureKernel(
  store: ImageStore,
  paths: DataPaths,
  settings: DebianMirrorSettings,
  force: boolean,
): Promise<StoredImage> {
  const existing = await store.latest('kernel', null);
  // A kernel built by another recipe (modules, initramfs) is rebuilt, not reused.
  if (existing && isCurrentKernel(existing) && !force) return existing;
  await mkdir(paths.logsDir, { recursive: true });
  const log = new BuildLog(
    join(paths.logsDir, `kernel-${new Date().toISOString().replace(/[:.]/g, '-')}.log`),
  );
  const started = Date.now();
  try {
    process.stderr.write(`[kernel] log: ${log.path}\n`);
    return await buildKernelImage({
      store,
      workDir: join(paths.buildDir, 'kernel'),
      log,
      settings,
      force,
      onPhase: (phase) =>
        process.stderr.write(`[kernel ${((Date.now() - started) / 1000).toFixed(1)}s] ${phase}\n`),
    });
  } catch (err) {
    throw new ImageBuildFailedError(
      `kernel image: ${err instanceof Error ? err.message : String(err)} (log: ${log.path})`,
      { cause: err },
    );
  } finally {
    log.close();
  }
}

/** `runner images ...`: build rootfs images and manage the local image store. */
export function registerImagesCommand(program: Command): void {
  const images = program
    .command('images')
    .description('build rootfs images and manage the local image store')
    .addHelpText(
      'after',
      '\nThe store is <data dir>/images (RUNNER_DATA_DIR, RUNNER_IMAGES_DIR); builds need root.',
    );
  registerImagesRemoteCommands(images);

  images
    .command('build')
    .description(
      "build the base image and each named language's layer over it (Debian bookworm, debootstrap + apt; needs root)",
    )
    .argument('[languages...]', 'language names or aliases')
    .option('--all', 'build every language in languages/')
    .option(
      '--agent-bundle <file>',
      'the bundled guest agent to install (default: bundle src/agent with scripts/bundle-agent.mjs)',
    )
    .option('--force', 'rebuild even when the store already holds an image with the same identity')
    .option('--no-kernel', 'do not build the kernel image (by default it is built when missing)')
    .option(
      '--rebuild-layers',
      'ignore the cached base and toolchain layers (picks up new Debian updates)',
    )
    .option(
      '--kernel-version <version>',
      'kernel version to record in the manifests (default: the newest kernel image in the store, else "none")',
    )
    .addHelpText(
      'after',
      '\nThe Debian mirror comes from /etc/apt (RUNNER_DEBIAN_MIRROR and RUNNER_DEBIAN_SECURITY_MIRROR override it).\n' +
        'One base image (Debian, the agent) is shared by every language; each language image is a layer of what its toolchain adds.\n' +
        'A change of the agent alone rebuilds the base only. Build layers and the .deb cache live in <data dir>/build; each build writes a full log to <data dir>/logs.',
    )
    .action(async (names, opts) => {
      const registry = LanguageRegistry.fromDir();
      let languages: Language[];
      if (opts.all === true) {
        if (names.length > 0) {
          throw new LanguageUnknownError('give language names or --all, not both');
        }
        languages = registry.list();
      } else if (names.length === 0) {
        throw new LanguageUnknownError(
          `name the languages to build, or --all; known: ${registry.names().join(', ')}`,
        );
      } else {
        languages = [
          ...new Map(names.map((n) => [registry.get(n).definition.name, registry.get(n)])).values(),
        ];
      }
      const settings = loadSettings();
      const paths = dataPaths(settings);
      const store = new ImageStore(paths.imagesDir);
      const agentBundlePath =
        opts.agentBundle ?? (await bundleAgent(join(paths.buildDir, 'agent', 'agent.mjs')));
      if (opts.kernel) {
        const kernel = await ensureKernel(store, paths, settings, opts.force === true);
        out(
          `kernel       ${kernel.manifest.id.padEnd(26)} ${mib(kernel.manifest.totalSizeBytes).padStart(11)}  ${kernel.manifest.kernelVersion}`,
        );
      }
      const kernelVersion =
        opts.kernelVersion ??
        (await store.latest('kernel', null))?.manifest.kernelVersion ??
        'none';
      const reporter = createReporter(
        process.stderr,
        languages.map((l) => l.definition.name),
      );
      const abort = new AbortController();
      const onSignal = (): void => {
        abort.abort(new ImageBuildFailedError('interrupted'));
      };
      process.once('SIGINT', onSignal);
      process.once('SIGTERM', onSignal);
      let result: Awaited<ReturnType<RootfsBuilder['buildMany']>>;
      try {
        const builder = new RootfsBuilder({
          paths,
          store,
          settings,
          agentBundlePath,
          kernelVersion,
          force: opts.force === true,
          rebuildLayers: opts.rebuildLayers === true,
          signal: abort.signal,
          reporter,
        });
        result = await builder.buildMany(languages);
      } finally {
        reporter.stop();
        process.off('SIGINT', onSignal);
        process.off('SIGTERM', onSignal);
      }
      for (const r of [...(result.base === undefined ? [] : [result.base]), ...result.built]) {
        const m = r.image.manifest;
        const layers = r.reused
          ? 'already in the store'
          : `base ${r.cachedLayers.base ? 'cached' : 'built'}, toolchain ${r.cachedLayers.toolchain ? 'cached' : 'built'}`;
        out(
          `${r.language.padEnd(12)} ${m.id.padEnd(26)} ${mib(m.totalSizeBytes).padStart(11)}  ${(m.toolchainVersion ?? `agent ${m.agentVersion ?? '?'}`).padEnd(10)} ${r.seconds.toFixed(1).padStart(6)} s  (${layers})`,
        );
        for (const w of r.warnings) out(`  warning: ${w}`);
      }
      for (const f of result.failed) {
        process.stderr.write(`FAILED ${f.language}: ${f.error.message}\n`);
      }
      if (result.failed.length > 0) process.exitCode = 1;
    });

  images
    .command('list')
    .description('list the images in the local store')
    .option('--json', 'print the manifests as JSON')
    .action(async (opts) => {
      const store = localStore();
      const { images: found, broken } = await store.scan();
      for (const b of broken) process.stderr.write(`warning: ${b.dir}: ${b.reason}\n`);
      if (opts.json === true) {
        out(
          JSON.stringify(
            found.map((i) => ({ dir: i.dir, ...i.manifest })),
            null,
            2,
          ),
        );
        return;
      }
      if (found.length === 0) {
        out(`no images in ${store.root}`);
        return;
      }
      out(
        `${'KIND'.padEnd(7)} ${'ID'.padEnd(26)} ${'LANGUAGE'.padEnd(11)} ${'VERSION'.padEnd(10)} ${'SIZE'.padStart(11)}  BUILT`,
      );
      for (const { manifest: m } of found) {
        out(
          `${m.kind.padEnd(7)} ${m.id.padEnd(26)} ${(m.language ?? '-').padEnd(11)} ${(m.toolchainVersion ?? (m.kind === 'base' ? `agent ${m.agentVersion ?? '?'}` : (m.kernelVersion.split(' ')[0] ?? '-'))).padEnd(10)} ${mib(m.totalSizeBytes).padStart(11)}  ${m.builtAt}`,
        );
      }
    });

  images
    .command('inspect')
    .description('print the manifest of an image (by id, or the layer in use of a language)')
    .argument('<id>', 'image id, or a language name for its layer in use')
    .action(async (ref) => {
      const store = localStore();
      const image = await resolveRef(store, ref);
      out(JSON.stringify({ dir: image.dir, ...image.manifest }, null, 2));
    });

  images
    .command('rm')
    .description('remove images from the local store')
    .argument('<ids...>', 'image ids')
    .action(async (ids) => {
      const store = localStore();
      for (const id of ids) {
        const image = await store.remove(id);
        out(`removed ${image.manifest.kind}/${image.manifest.id}`);
      }
    });

  images
    .command('verify')
    .description('check every file of the images (default: all) against its manifest sha256')
    .argument('[ids...]', 'image ids (default: every image in the store)')
    .action(async (ids) => {
      const store = localStore();
      const targets = ids.length > 0 ? ids : (await store.list()).map((i) => i.manifest.id);
      let bad = 0;
      for (const id of targets) {
        const report = await store.verify(id);
        if (report.ok) {
          out(`ok      ${report.kind}/${report.id} (${report.checkedFiles} files)`);
          continue;
        }
        bad += 1;
        out(`CORRUPT ${report.kind}/${report.id}`);
        for (const p of report.problems) {
          out(
            `  ${p.file}: ${p.problem}${p.expected === undefined ? '' : ` (expected ${p.expected}, found ${p.actual ?? '?'})`}`,
          );
        }
      }
      if (targets.length === 0) out(`no images in ${store.root}`);
      if (bad > 0) process.exitCode = 1;
    });
}

/** The S3 store from the settings, or a clear error saying which variables to set. */
function remoteStore(settings: RemoteStoreSettings): RemoteImageStore {
  const config = remoteStoreConfigFromSettings(settings);
  if (config === null) {
    throw new ConfigInvalidError(
      'no S3 image store is configured: set RUNNER_S3_BUCKET (and RUNNER_S3_ENDPOINT, AWS credentials; see docs/image-store.md)',
    );
  }
  return new RemoteImageStore(config);
}

/** The base image a language's layer stacks over (none for other images); throws when missing. */
async function baseOf(store: ImageStore, image: StoredImage): Promise<StoredImage[]> {
  const treeKey = image.manifest.inputs?.baseTreeKey;
  if (image.manifest.kind !== 'rootfs' || treeKey === undefined) return [];
  const base = await latestBase(store, treeKey);
  if (base === undefined) {
    throw new ImageNotFoundError(
      `${image.manifest.id} stacks over a base image of the base tree ${treeKey.slice(0, 16)}, and the local store has none (runner images build ${image.manifest.language ?? ''})`,
    );
  }
  return [base];
}

/** `runner images push|pull|remote`: the S3-compatible image store. */
export function registerImagesRemoteCommands(images: Command): void {
  images
    .command('push')
    .description('upload images to the S3 image store (files first, manifest last)')
    .argument(
      '<refs...>',
      'image ids, or language names for their layer in use (pushed with its base), or "kernel"',
    )
    .option('--force', 'upload again even when the remote store already has the image')
    .action(async (refs, opts) => {
      const settings = loadSettings();
      const store = new ImageStore(dataPaths(settings).imagesDir);
      const remote = remoteStore(settings);
      const bars = renderTransferProgress();
      try {
        for (const ref of refs) {
          const image =
            ref === 'kernel' ? await store.resolve('kernel', null) : await resolveRef(store, ref);
          // A language's layer goes with the base it stacks over: pulled alone it could not run.
          const images = [image, ...(await baseOf(store, image))];
          for (const { dir } of images) {
            const r = await remote.push(dir, {
              onProgress: bars.onProgress,
              force: opts.force === true,
            });
            bars.stop();
            out(
              `${r.uploaded ? 'pushed' : 'already there'} ${r.kind}/${r.id} (${mib(r.uploadedBytes)} sent)`,
            );
          }
        }
      } finally {
        bars.stop();
        remote.close();
      }
    });

  images
    .command('pull')
    .description('download images from the S3 image store, verified against their manifests')
    .argument(
      '<ids...>',
      'image ids (kernel-..., base-... or <language>-...; a layer brings its base)',
    )
    .action(async (ids) => {
      const settings = loadSettings();
      const paths = dataPaths(settings);
      const remote = remoteStore(settings);
      const bars = renderTransferProgress();
      try {
        const store = new ImageStore(paths.imagesDir);
        for (const id of ids) {
          const kind = id.startsWith('kernel-')
            ? 'kernel'
            : id.startsWith('base-')
              ? 'base'
              : 'rootfs';
          const r = await remote.pull(kind, id, paths.imagesDir, { onProgress: bars.onProgress });
          bars.stop();
          out(
            `${r.downloaded ? 'pulled' : 'already here'} ${r.kind}/${r.id} (${mib(r.transferredBytes)} received)`,
          );
          // Named on purpose: it is what VMs of its line are made of from now on.
          const pulled = await store.find(id, kind);
          if (pulled !== undefined) await store.select(pulled);
          // A layer needs a base of its base tree: the newest remote one, unless one is here.
          const treeKey = pulled?.manifest.inputs?.baseTreeKey;
          if (kind === 'rootfs' && treeKey !== undefined) {
            const local = await latestBase(store, treeKey);
            const base = local ?? (await remoteFetcher(store, settings)?.('base', null, treeKey));
            if (base === undefined) {
              throw new ImageNotFoundError(
                `${id} stacks over a base image of the base tree ${treeKey.slice(0, 16)}, and the S3 store has none`,
              );
            }
            out(`${local === undefined ? 'pulled' : 'already here'} base/${base.manifest.id}`);
          }
        }
      } finally {
        bars.stop();
        remote.close();
      }
    });

  images
    .command('remote')
    .description('list the images in the S3 image store')
    .action(async () => {
      const remote = remoteStore(loadSettings());
      try {
        for (const ref of await remote.list()) out(`${ref.kind.padEnd(7)} ${ref.id}`);
      } finally {
        remote.close();
      }
    });
}
