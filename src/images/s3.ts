import { S3Client } from '@aws-sdk/client-s3';
import type { Settings } from '../config/index.js';
import { ConfigInvalidError } from '../errors.js';

/** Where and how the remote image store reaches its S3-compatible server. */
export interface RemoteStoreConfig {
  /** The bucket holding the images. */
  readonly bucket: string;
  /** The key prefix above `<kind>/<id>/…`; no leading or trailing slash, may be ''. */
  readonly prefix: string;
  /**
   * The server's URL (MinIO, Ceph, R2, s3rver…); undefined leaves it to the SDK, which reads
   * AWS_ENDPOINT_URL_S3 and AWS_ENDPOINT_URL, else talks to AWS itself.
   */
  readonly endpoint: string | undefined;
  /** The signing region; undefined leaves it to the SDK (AWS_REGION, profile), else us-east-1. */
  readonly region: string | undefined;
  /** Explicit credentials; when absent the SDK's default chain (env, profile, IMDS) is used. */
  readonly accessKeyId: string | undefined;
  readonly secretAccessKey: string | undefined;
  readonly sessionToken: string | undefined;
  /** `bucket` in the path instead of the host name: what S3-compatible servers expect. */
  readonly forcePathStyle: boolean;
  /** The part size of multipart uploads (S3's minimum is 5 MiB). */
  readonly partSizeMib: number;
}

/** The rows of the settings table (src/config/settings.ts) the remote store is made from. */
export type RemoteStoreSettings = Pick<
  Settings,
  | 's3Bucket'
  | 's3Prefix'
  | 's3Endpoint'
  | 's3Region'
  | 's3AccessKeyId'
  | 's3SecretAccessKey'
  | 's3ForcePathStyle'
  | 's3PartSizeMib'
>;

/** Signs requests when neither the settings nor the SDK name a region; any will do for MinIO. */
const FALLBACK_REGION = 'us-east-1';

/** Normalises a prefix: no leading or trailing slashes, no empty segments. */
export function normalisePrefix(prefix: string): string {
  return prefix
    .split('/')
    .filter((part) => part !== '')
    .join('/');
}

/**
 * Builds and validates a frozen configuration from explicit values; throws CONFIG_INVALID on a
 * bad value. `bucket` is required; the rest default as the settings table says.
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
    region: input.region,
    accessKeyId: input.accessKeyId,
    secretAccessKey: input.secretAccessKey,
    sessionToken: input.sessionToken,
    forcePathStyle: input.forcePathStyle ?? true,
    partSizeMib,
  });
}

/**
 * The remote store's configuration from the settings (the `s3*` rows), validated; null when
 * no bucket is set: the remote store is optional. Pure: the settings carry every value.
 */
export function remoteStoreConfigFromSettings(
  settings: RemoteStoreSettings,
): RemoteStoreConfig | null {
  if (settings.s3Bucket === null) return null;
  return remoteStoreConfig({
    bucket: settings.s3Bucket,
    prefix: settings.s3Prefix,
    endpoint: settings.s3Endpoint ?? undefined,
    region: settings.s3Region ?? undefined,
    accessKeyId: settings.s3AccessKeyId ?? undefined,
    secretAccessKey: settings.s3SecretAccessKey ?? undefined,
    forcePathStyle: settings.s3ForcePathStyle,
    partSizeMib: settings.s3PartSizeMib,
  });
}

/**
 * The region the SDK finds by itself (AWS_REGION, the shared config profile), else
 * FALLBACK_REGION. A throwaway client asks, because the SDK fails every request without one
 * where we used to sign with us-east-1. Looked up once per client.
 */
function sdkRegionOrFallback(): () => Promise<string> {
  let found: Promise<string> | undefined;
  return () => {
    found ??= (async () => {
      const probe = new S3Client({});
      try {
        return await probe.config.region();
      } catch {
        return FALLBACK_REGION;
      } finally {
        probe.destroy();
      }
    })();
    return found;
  };
}

/**
 * Makes an S3 client for the configuration. Checksums are only computed and validated when an
 * operation requires them: since SDK 3.729 the default adds CRC trailers with aws-chunked
 * encoding, which many S3-compatible servers (s3rver, older MinIO and Ceph) store verbatim or
 * reject. Image files carry their own sha256, checked after every download.
 */
export function createS3Client(config: RemoteStoreConfig): S3Client {
  return new S3Client({
    region: config.region ?? sdkRegionOrFallback(),
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
/**
 * A transfer that broke in a way worth another try (an empty or short body). Only a signal
 * inside the retry loops: once the retries are spent it leaves as S3_TRANSFER_FAILED.
 */
export class TransientTransferError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'TransientTransferError';
  }
}

export function isRetryable(err: unknown): boolean {
  if (err instanceof TransientTransferError) return true;
  const status = httpStatusOf(err);
  if (status === undefined) return true;
  return status >= 500 || status === 408 || status === 429;
}
