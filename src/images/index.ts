/**
 * Images: the builder (one base image, one layer per language over it), the guest init it
 * installs, and the local image store they land in. The S3 store is in ./remote.ts.
 */
export {
  ImageManifestSchema,
  parseManifest,
  type ImageManifest,
  type ManifestFile,
} from './manifest.js';
export {
  ImageStore,
  IMAGE_KINDS,
  isImageId,
  writeManifest,
  type BrokenEntry,
  type ImageKind,
  type StoredImage,
  type VerifyProblem,
  type VerifyReport,
} from './store.js';
export {
  BASE_FILE_NAME,
  RootfsBuilder,
  rootfsFileName,
  type RootfsBuilderOptions,
  type RootfsBuildFailure,
  type RootfsBuildResult,
} from './rootfs.js';
export {
  BASE_PACKAGES,
  baseImageIdentity,
  baseTreeKey,
  DEBIAN_SUITE,
  rootfsIdentity,
  sha256File,
  type RootfsIdentity,
  type RootfsIdentityInputs,
} from './identity.js';
export { diffTrees, makeLayerTree, type LayerDiff } from './layer-diff.js';
export { resolveDebianMirrors, type DebianMirrorSettings, type DebianMirrors } from './mirror.js';
export * from './guest-init.js';
export { bundleAgent } from './agent-bundle.js';
export {
  BUILD_PHASES,
  createReporter,
  silentReporter,
  type BuildEvent,
  type BuildPhase,
  type BuildReporter,
} from './progress.js';
