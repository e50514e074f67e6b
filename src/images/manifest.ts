import Type, { type Static } from 'typebox';
import { Compile } from 'typebox/compile';
import { ImageCorruptError } from '../errors.js';

/** One file of an image, with its size and checksum. */
export const ManifestFileSchema = Type.Object(
  {
    // `+` and `#` because language names have them (rootfs-c++.ext4).
    name: Type.String({ pattern: '^[A-Za-z0-9._+#-]+$' }),
    sizeBytes: Type.Integer({ minimum: 0 }),
    sha256: Type.String({ pattern: '^[0-9a-f]{64}$' }),
  },
  { additionalProperties: false },
);

/**
 * The manifest of one image, stored as `manifest.json` beside its files in
 * `<store>/<kind>/<id>/`. `id` is derived from the inputs (packages, agent, kernel), so a change
 * of any of them yields a new identity.
 */
export const ImageManifestSchema = Type.Object(
  {
    schema: Type.Literal(1),
    kind: Type.Union([Type.Literal('kernel'), Type.Literal('base'), Type.Literal('rootfs')]),
    id: Type.String({ pattern: '^[a-z0-9+#-]+-[0-9a-f]{12,64}$' }),
    /** A layer's name: its one language's, or its family's (`layer` of its languages). */
    language: Type.Union([Type.String(), Type.Null()]),
    /** The languages of a family layer (absent when the layer is one language of that name). */
    languages: Type.Optional(Type.Array(Type.String({ pattern: '^[a-z0-9+#_-]+$' }))),
    /** Each language's version as its versionCommand printed it at build time. */
    versions: Type.Optional(Type.Record(Type.String(), Type.String())),
    toolchainVersion: Type.Union([Type.String(), Type.Null()]),
    kernelVersion: Type.String(),
    agentVersion: Type.Union([Type.String(), Type.Null()]),
    debianSuite: Type.String(),
    packages: Type.Array(Type.String()),
    files: Type.Array(ManifestFileSchema, { minItems: 1 }),
    totalSizeBytes: Type.Integer({ minimum: 0 }),
    buildSeconds: Type.Number({ minimum: 0 }),
    builtAt: Type.String(),
    /**
     * The hashes the identity was computed from (for a rootfs: baseKey, toolchainKey,
     * agentSha256, initSha256, definitionSha256), so that a snapshot or a rebuild can tell
     * which input changed.
     */
    inputs: Type.Optional(Type.Record(Type.String(), Type.String())),
  },
  { additionalProperties: false },
);
export type ImageManifest = Static<typeof ImageManifestSchema>;
export type ManifestFile = Static<typeof ManifestFileSchema>;

const validator = Compile(ImageManifestSchema);

/** Checks a parsed manifest; throws IMAGE_CORRUPT naming the first problem. */
export function parseManifest(value: unknown, origin: string): ImageManifest {
  if (validator.Check(value)) return value;
  const first = validator.Errors(value)[0];
  throw new ImageCorruptError(
    `${origin}: bad manifest (${first ? `${first.instancePath || '/'} ${first.message}` : 'invalid'})`,
  );
}
