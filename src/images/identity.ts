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
export const RECIPE = { base: 1, toolchain: 1, final: 1 } as const;

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

/** What a rootfs image is made of: exactly the things its identity covers. */
export interface RootfsIdentityInputs {
  readonly definition: LanguageDefinition;
  /** The files of the language folder copied into the image. */
  readonly languageFiles: readonly FileDigest[];
  readonly agentSha256: string;
  /** The static exec helper installed beside the agent (absent in identities from before it). */
  readonly execHelperSha256?: string;
  readonly initScript: string;
  readonly agentVersion: string;
  /**
   * Digest of every package installed in the toolchain layer (name, architecture, version), so
   * that a layer rebuilt with newer Debian packages yields a new identity. Unknown (undefined)
   * before the layer is built.
   */
  readonly toolchainPackagesDigest?: string;
  readonly suite?: string;
  readonly basePackages?: readonly string[];
  readonly arch?: string;
}

/** The identity of a rootfs image and of the cached layers it is built on. */
export interface RootfsIdentity {
  /** `<language>-<hash12>`. */
  readonly id: string;
  readonly hash: string;
  readonly baseKey: string;
  readonly toolchainKey: string;
  readonly initSha256: string;
  readonly agentSha256: string;
  readonly definitionSha256: string;
}

/**
 * Computes a rootfs image's identity: a hash of the toolchain layer key (and the package
 * versions that layer holds), the agent bundle, the init script, the language definition and
 * folder, and AGENT_VERSION. Anything else (the mirror, the kernel, the build time, other
 * languages) leaves it unchanged.
 */
export function rootfsIdentity(inputs: RootfsIdentityInputs): RootfsIdentity {
  const baseKey = baseLayerKey(inputs.suite, inputs.basePackages, inputs.arch);
  const toolchainKey = toolchainLayerKey(
    baseKey,
    inputs.definition.packages,
    inputs.definition.npm,
  );
  const initSha256 = sha256Hex(inputs.initScript);
  const definitionSha256 = sha256Hex(canonicalJson(inputs.definition));
  const hash = sha256Hex(
    canonicalJson({
      kind: 'rootfs',
      recipe: RECIPE.final,
      toolchainKey,
      toolchainPackages: inputs.toolchainPackagesDigest ?? null,
      agentSha256: inputs.agentSha256,
      ...(inputs.execHelperSha256 !== undefined && { execHelperSha256: inputs.execHelperSha256 }),
      agentVersion: inputs.agentVersion,
      initSha256,
      definitionSha256,
      languageFiles: [...inputs.languageFiles]
        .sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0))
        .map((f) => [f.name, f.sha256]),
    }),
  );
  return {
    id: `${inputs.definition.name}-${hash.slice(0, 12)}`,
    hash,
    baseKey,
    toolchainKey,
    initSha256,
    agentSha256: inputs.agentSha256,
    definitionSha256,
  };
}
