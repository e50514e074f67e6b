import { S3Client } from '@aws-sdk/client-s3';
import { ConfigInvalidError } from '../errors.js';

/** Where and how the remote image store reaches its S3-compatible server. */
export interface RemoteStoreConfig {
  /** The bucket holding the images. */
  readonly bucket: string;
  /** The key prefix above `<kind>/<id>/…`; no leading or trailing slash, may be ''. */
  readonly prefix: string;
  /** The server's URL (MinIO, Ceph, R2, s3rver…); undefined means AWS itself. */
  readonly endpoint: string | undefined;
  readonly region: string;
  /** Explicit credentials; when absent the SDK's default chain (env, profile, IMDS) is used. */
  readonly accessKeyId: string | undefined;
  readonly secretAccessKey: string | undefined;
  readonly sessionToken: string | undefined;
  /** `bucket` in the path instead of the host name: what S3-compatible servers expect. */
  readonly forcePathStyle: boolean;
  /** The part size of multipart uploads (S3's minimum is 5 MiB). */
  readonly partSizeMib: number;
}

/** One row of the configuration table: the documentation (docs/image-store.md) lists these. */
interface EnvSetting {
  readonly key: keyof RemoteStoreConfig;
  /** Environment variables, first set one wins. */
  readonly env: readonly string[];
  readonly default: string | undefined;
  readonly description: string;
}

/** The remote store's configuration table: name, environment variables, default, meaning. */
export const REMOTE_STORE_SETTINGS: readonly EnvSetting[] = Object.freeze([
  {
    key: 'bucket',
    env: ['RUNNER_S3_BUCKET'],
    default: undefined,
    description: 'Bucket; unset disables the remote store.',
  },
  {
    key: 'prefix',
    env: ['RUNNER_S3_PREFIX'],
    default: 'images',
    description: 'Key prefix of the images.',
  },
  {
    key: 'endpoint',
    env: ['RUNNER_S3_ENDPOINT', 'AWS_ENDPOINT_URL_S3', 'AWS_ENDPOINT_URL'],
    default: undefined,
    description: 'URL of an S3-compatible server; unset means AWS.',
  },
  {
    key: 'region',
    env: ['RUNNER_S3_REGION', 'AWS_REGION', 'AWS_DEFAULT_REGION'],
    default: 'us-east-1',
    description: 'Region used for signing.',
  },
  {
    key: 'accessKeyId',
    env: ['RUNNER_S3_ACCESS_KEY_ID', 'AWS_ACCESS_KEY_ID'],
    default: undefined,
    description: 'Access key; unset means the SDK default chain.',
  },
  {
    key: 'secretAccessKey',
    env: ['RUNNER_S3_SECRET_ACCESS_KEY', 'AWS_SECRET_ACCESS_KEY'],
    default: undefined,
    description: 'Secret key.',
  },
  {
    key: 'sessionToken',
    env: ['AWS_SESSION_TOKEN'],
    default: undefined,
    description: 'Session token of temporary credentials.',
  },
  {
    key: 'forcePathStyle',
    env: ['RUNNER_S3_FORCE_PATH_STYLE'],
    default: 'true',
    description: 'Path-style addressing (`true`/`false`).',
  },
  {
    key: 'partSizeMib',
    env: ['RUNNER_S3_PART_SIZE_MIB'],
    default: '8',
    description: 'Multipart upload part size, MiB (>= 5).',
  },
]);

/** Normalises a prefix: no leading or trailing slashes, no empty segments. */
export function normalisePrefix(prefix: string): string {
  return prefix
    .split('/')
    .filter((part) => part !== '')
    .join('/');
}

/**
 * Builds and validates a frozen configuration from explicit values; throws CONFIG_INVALID on a
 * bad value. `bucket` and `region` are required, the rest have the table's defaults.
 */
export function remoteStoreConfig(
  input: Partial<RemoteStoreConfig> & { bucket: string },
): RemoteStoreConfig {
  const prefix = normalisePrefix(input.prefix ?? 'images');
  const partSizeMib = input.partSizeMib ?? 8;
  if (input.bucket.trim() === '') throw new ConfigInvalidError('S3 bucket is empty');
  if (!Number.isInteger(partSizeMib) || partSizeMib < 5 || partSizeMib > 5120) {
    throw new ConfigInvalidError(`S3 part size ${partSizeMib} MiB is not an integer in 5..5120`);
  }
  if (input.endpoint !== undefined) {
    let url: URL;
    try {
      url = new URL(input.endpoint);
    } catch (cause) {
      throw new ConfigInvalidError(`S3 endpoint ${input.endpoint} is not a URL`, {
        cause,
      });
    }
    if (url.protocol !== 'http:' && url.protocol !== 'https:') {
      throw new ConfigInvalidError(`S3 endpoint ${input.endpoint} is not http(s)`);
    }
  }
  if ((input.accessKeyId === undefined) !== (input.secretAccessKey === undefined)) {
    throw new ConfigInvalidError('S3 access key id and secret key must be set together');
  }
  return Object.freeze({
    bucket: input.bucket,
    prefix,
    endpoint: input.endpoint,
    region: input.region ?? 'us-east-1',
    accessKeyId: input.accessKeyId,
    secretAccessKey: input.secretAccessKey,
    sessionToken: input.sessionToken,
    forcePathStyle: input.forcePathStyle ?? true,
    partSizeMib,
  });
}

function fromEnv(env: NodeJS.ProcessEnv, key: keyof RemoteStoreConfig): string | undefined {
  const setting = REMOTE_STORE_SETTINGS.find((s) => s.key === key);
  if (setting === undefined) return undefined;
  for (const name of setting.env) {
    const value = env[name];
    if (value !== undefined && value !== '') return value;
  }
  return setting.default;
}

function parseBoolean(name: string, value: string): boolean {
  if (/^(true|1|yes)$/i.test(value)) return true;
  if (/^(false|0|no)$/i.test(value)) return false;
  throw new ConfigInvalidError(`${name}=${value} is not a boolean`);
}

/**
 * Reads the remote store's configuration from the environment (see REMOTE_STORE_SETTINGS).
 * Returns null when RUNNER_S3_BUCKET is unset: the remote store is optional.
 */
export function remoteStoreConfigFromEnv(
  env: NodeJS.ProcessEnv = process.env,
): RemoteStoreConfig | null {
  const bucket = fromEnv(env, 'bucket');
  if (bucket === undefined) return null;
  const partSize = fromEnv(env, 'partSizeMib') ?? '8';
  if (!/^\d+$/.test(partSize)) {
    throw new ConfigInvalidError(`RUNNER_S3_PART_SIZE_MIB=${partSize} is not an integer`);
  }
  return remoteStoreConfig({
    bucket,
    prefix: fromEnv(env, 'prefix'),
    endpoint: fromEnv(env, 'endpoint'),
    region: fromEnv(env, 'region'),
    accessKeyId: fromEnv(env, 'accessKeyId'),
    secretAccessKey: fromEnv(env, 'secretAccessKey'),
    sessionToken: fromEnv(env, 'sessionToken'),
    forcePathStyle: parseBoolean(
      'RUNNER_S3_FORCE_PATH_STYLE',
      fromEnv(env, 'forcePathStyle') ?? 'true',
    ),
    partSizeMib: Number(partSize),
  });
}

/**
 * Makes an S3 client for the configuration. Checksums are only computed and validated when an
 * operation requires them: since SDK 3.729 the default adds CRC trailers with aws-chunked
 * encoding, which many S3-compatible servers (s3rver, older MinIO and Ceph) store verbatim or
 * reject. Image files carry their own sha256, checked after every download.
 */
export function createS3Client(config: RemoteStoreConfig): S3Client {
  return new S3Client({
    region: config.region,
    endpoint: config.endpoint,
    forcePathStyle: config.forcePathStyle,
    credentials:
      config.accessKeyId !== undefined && config.secretAccessKey !== undefined
        ? {
            accessKeyId: config.accessKeyId,
            secretAccessKey: config.secretAccessKey,
            sessionToken: config.sessionToken,
          }
        : undefined,
    requestChecksumCalculation: 'WHEN_REQUIRED',
    responseChecksumValidation: 'WHEN_REQUIRED',
    // A dead server must not hang a pull forever; an idle socket is cut and the pull resumes.
    requestHandler: { connectionTimeout: 10_000, socketTimeout: 60_000 },
  });
}

/** The HTTP status of an SDK error, when it carries one. */
export function httpStatusOf(err: unknown): number | undefined {
  if (typeof err !== 'object' || err === null || !('$metadata' in err)) return undefined;
  const meta = (err as { $metadata?: { httpStatusCode?: number } }).$metadata;
  return meta?.httpStatusCode;
}

/** True when an SDK error says the object (or bucket) does not exist. */
export function isNotFound(err: unknown): boolean {
  if (typeof err !== 'object' || err === null) return false;
  const name = (err as { name?: unknown }).name;
  if (name === 'NoSuchBucket') return false;
  return name === 'NoSuchKey' || name === 'NotFound' || httpStatusOf(err) === 404;
}

/**
 * True when retrying may help: network errors, cut streams, timeouts, throttling and 5xx.
 * Other 4xx answers (denied, bad request, missing bucket) will not change on a retry.
 */
export function isRetryable(err: unknown): boolean {
  const status = httpStatusOf(err);
  if (status === undefined) return true;
  return status >= 500 || status === 408 || status === 429;
}
