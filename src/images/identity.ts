import { createHash } from 'node:crypto';
import { createReadStream } from 'node:fs';
import { readdir } from 'node:fs/promises';
import { join, relative } from 'node:path';
import type { LanguageDefinition } from '../languages/index.js';

/** The Debian release every rootfs is built from. */
export const DEBIAN_SUITE = 'bookworm';

/**
 * Packages of the common base, on top of debootstrap's minbase (which brings perl-base):
 * Node.js for the agent (Debian's 18), util-linux for prlimit and setpriv, socat for the vsock
 * bridge.
 */
export const BASE_PACKAGES: readonly string[] = ['nodejs', 'util-linux', 'socat'];

/**
 * Recipe versions: bump one when the builder's steps for that layer change in a way that changes
 * its output, so that caches and image identities follow.
 */
export const RECIPE = { base: 1, toolchain: 1, final: 2, layer: 1 } as const;

/** SHA-256 of a string or buffer, hex. */
export function sha256Hex(data: string | Buffer): string {
  return createHash('sha256').update(data).digest('hex');
}

/** SHA-256 of a file, hex, streamed. */
export function sha256File(path: string): Promise<string> {
  return new Promise((resolvePromise, reject) => {
    const hash = createHash('sha256');
    createReadStream(path)
      .on('error', reject)
      .on('data', (chunk) => hash.update(chunk))
      .on('end', () => resolvePromise(hash.digest('hex')));
  });
}

/** JSON with object keys sorted at every level, so that equal values hash equally. */
export function canonicalJson(value: unknown): string {
  if (Array.isArray(value)) return `[${value.map(canonicalJson).join(',')}]`;
  if (value !== null && typeof value === 'object') {
    const entries = Object.entries(value as Record<string, unknown>)
      .filter(([, v]) => v !== undefined)
      .sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0));
    return `{${entries.map(([k, v]) => `${JSON.stringify(k)}:${canonicalJson(v)}`).join(',')}}`;
  }
  return JSON.stringify(value);
}

/** Debian's name for the host architecture (the only one images are built for). */
export function debianArch(arch: string = process.arch): string {
  return arch === 'x64' ? 'amd64' : arch === 'arm64' ? 'arm64' : arch;
}

/** Key of the base layer: what debootstrap and the base packages are given. */
export function baseLayerKey(
  suite: string = DEBIAN_SUITE,
  packages: readonly string[] = BASE_PACKAGES,
  arch: string = debianArch(),
): string {
  return sha256Hex(
    canonicalJson({
      layer: 'base',
      recipe: RECIPE.base,
      suite,
      arch,
      variant: 'minbase',
      packages: [...packages].sort(),
    }),
  );
}

/**
 * Key of a toolchain layer: the base plus one language's Debian packages and npm pins (order
 * does not matter). A layer without npm pins keeps the key it had before they existed.
 */
export function toolchainLayerKey(
  baseKey: string,
  packages: readonly string[],
  npm: readonly string[] = [],
): string {
  return sha256Hex(
    canonicalJson({
      layer: 'toolchain',
      recipe: RECIPE.toolchain,
      base: baseKey,
      packages: [...new Set(packages)].sort(),
      ...(npm.length > 0 && { npm: [...new Set(npm)].sort() }),
    }),
  );
}

/** One file of a language folder, as copied into the image. */
export interface FileDigest {
  readonly name: string;
  readonly sha256: string;
}

/** Digests of every file of a language folder (recursive, sorted by path). */
export async function folderDigests(dir: string): Promise<FileDigest[]> {
  const entries = await readdir(dir, { recursive: true, withFileTypes: true });
  const files = entries
    .filter((e) => e.isFile())
    .map((e) => join(e.parentPath, e.name))
    .sort();
  return Promise.all(
    files.map(async (path) => ({ name: relative(dir, path), sha256: await sha256File(path) })),
  );
}

/**
 * The tree every language layer is a difference against, and that the base image is made of
 * (with the agent added): the base layer as installed, with the guest edits common to every
 * image (the runner user, our /etc files, the shrinking). Its key covers the base layer's key,
 * the versions installed in it, and the recipe of those edits; a language layer fits exactly the
 * base images of the same key.
 */
export function baseTreeKey(baseKey: string, basePackagesDigest: string): string {
  return sha256Hex(
    canonicalJson({
      tree: 'base',
      recipe: RECIPE.final,
      baseKey,
      basePackages: basePackagesDigest,
    }),
  );
}

/** What the base image is made of: exactly the things its identity covers. */
export interface BaseImageIdentityInputs {
  readonly baseTreeKey: string;
  readonly agentSha256: string;
  readonly execHelperSha256: string;
  readonly initScript: string;
  readonly agentVersion: string;
}

/** The identity of the base image: `base-<hash12>`. */
export interface BaseImageIdentity {
  readonly id: string;
  readonly hash: string;
  readonly baseTreeKey: string;
  readonly agentSha256: string;
  readonly initSha256: string;
}

/**
 * The base image's identity: the base tree, the agent bundle, the exec helper, the init script
 * and AGENT_VERSION. A change of the agent changes this identity only; no language layer.
 */
export function baseImageIdentity(inputs: BaseImageIdentityInputs): BaseImageIdentity {
  const initSha256 = sha256Hex(inputs.initScript);
  const hash = sha256Hex(
    canonicalJson({
      kind: 'base',
      recipe: RECIPE.final,
      baseTreeKey: inputs.baseTreeKey,
      agentSha256: inputs.agentSha256,
      execHelperSha256: inputs.execHelperSha256,
      agentVersion: inputs.agentVersion,
      initSha256,
    }),
  );
  return {
    id: `base-${hash.slice(0, 12)}`,
    hash,
    baseTreeKey: inputs.baseTreeKey,
    agentSha256: inputs.agentSha256,
    initSha256,
  };
}

/** One language of a layer: its definition and the files of its folder. */
export interface LayerMember {
  readonly definition: LanguageDefinition;
  /** The files of the language folder copied into the layer. */
  readonly languageFiles: readonly FileDigest[];
}

/** What a language layer is made of: exactly the things its identity covers. */
export interface RootfsIdentityInputs {
  /** The layer's name (its languages' `layer`, or the one language's name). */
  readonly layer: string;
  /** Its languages, in any order. */
  readonly members: readonly LayerMember[];
  /**
   * Digest of every package installed in the toolchain layer (name, architecture, version), so
   * that a layer rebuilt with newer Debian packages yields a new identity. Unknown (undefined)
   * before the layer is built.
   */
  readonly toolchainPackagesDigest?: string;
  /** The base tree the layer is a difference against (unknown before the base layer is built). */
  readonly baseTreeKey?: string;
  readonly suite?: string;
  readonly basePackages?: readonly string[];
  readonly arch?: string;
}

/** The identity of a language layer and of the cached build layers it is made from. */
export interface RootfsIdentity {
  /** `<layer>-<hash12>`. */
  readonly id: string;
  readonly hash: string;
  readonly baseKey: string;
  readonly toolchainKey: string;
  /** Of the sorted definitions of its languages. */
  readonly definitionSha256: string;
}

/** The Debian packages and npm pins of a layer: those of all its languages, once each. */
export function layerPackages(definitions: readonly LanguageDefinition[]): {
  packages: string[];
  npm: string[];
} {
  return {
    packages: [...new Set(definitions.flatMap((d) => d.packages))].sort(),
    npm: [...new Set(definitions.flatMap((d) => d.npm ?? []))].sort(),
  };
}

/**
 * Computes a language layer's identity: a hash of the toolchain layer key (and the package
 * versions that layer holds), the base tree it is a difference against, and the definitions and
 * folders of its languages. The agent, the exec helper and the init are in the base image, not
 * here: a change of them leaves every layer as it is. Anything else (the mirror, the kernel,
 * the build time, other layers' languages) leaves it unchanged too.
 */
export function rootfsIdentity(inputs: RootfsIdentityInputs): RootfsIdentity {
  const baseKey = baseLayerKey(inputs.suite, inputs.basePackages, inputs.arch);
  const members = [...inputs.members].sort((a, b) =>
    a.definition.name < b.definition.name ? -1 : a.definition.name > b.definition.name ? 1 : 0,
  );
  const { packages, npm } = layerPackages(members.map((m) => m.definition));
  const toolchainKey = toolchainLayerKey(baseKey, packages, npm);
  const definitionSha256 = sha256Hex(canonicalJson(members.map((m) => m.definition)));
  const hash = sha256Hex(
    canonicalJson({
      kind: 'layer',
      recipe: RECIPE.layer,
      layer: inputs.layer,
      toolchainKey,
      toolchainPackages: inputs.toolchainPackagesDigest ?? null,
      baseTreeKey: inputs.baseTreeKey ?? null,
      definitionSha256,
      languageFiles: members.map((m) => [
        m.definition.name,
        [...m.languageFiles]
          .sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0))
          .map((f) => [f.name, f.sha256]),
      ]),
    }),
  );
  return {
    id: `${inputs.layer}-${hash.slice(0, 12)}`,
    hash,
    baseKey,
    toolchainKey,
    definitionSha256,
  };
}
