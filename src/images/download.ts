import { createHash } from 'node:crypto';
import { createReadStream } from 'node:fs';
import { open, rm, stat } from 'node:fs/promises';
import { Readable } from 'node:stream';
import { setTimeout as sleep } from 'node:timers/promises';
import { inspect } from 'node:util';
import { GetObjectCommand, type S3Client } from '@aws-sdk/client-s3';
import { ImageCorruptError, RunnerError, S3TransferFailedError } from '../errors.js';
import { isRetryable, TransientTransferError } from './s3.js';

/** How often and how patiently a transfer is retried. */
export interface RetryPolicy {
  /** Failures in a row (without progress in between) before giving up. */
  readonly attempts: number;
  /** The first back-off; it doubles after each failure, with jitter. */
  readonly baseDelayMs: number;
  readonly maxDelayMs: number;
}

export const DEFAULT_RETRY: RetryPolicy = Object.freeze({
  attempts: 4,
  baseDelayMs: 500,
  maxDelayMs: 10_000,
});

/** The delay before retry number `failures` (1-based): exponential with full jitter above half. */
export function backoffMs(policy: RetryPolicy, failures: number): number {
  const ceiling = Math.min(policy.maxDelayMs, policy.baseDelayMs * 2 ** Math.max(0, failures - 1));
  return Math.round(ceiling / 2 + (Math.random() * ceiling) / 2);
}

/**
 * Runs `fn` until it succeeds, retrying errors that `isRetryable` accepts with back-off; other
 * errors and the last failure propagate unchanged.
 */
export async function withRetry<T>(policy: RetryPolicy, fn: () => Promise<T>): Promise<T> {
  for (let failures = 1; ; failures++) {
    try {
      return await fn();
    } catch (err) {
      if (!isRetryable(err) || err instanceof RunnerError || failures >= policy.attempts) throw err;
      await sleep(backoffMs(policy, failures));
    }
  }
}

/** The sha256 of a file, hex. */
export async function sha256File(path: string): Promise<string> {
  const hash = createHash('sha256');
  for await (const chunk of createReadStream(path)) hash.update(chunk as Buffer);
  return hash.digest('hex');
}

async function sizeOf(path: string): Promise<number | null> {
  try {
    return (await stat(path)).size;
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return null;
    throw err;
  }
}

/** The remote object does not hold what the manifest promises; the partial file is dropped. */
class MismatchError extends Error {}

/** Writing the local file failed (disk full, permissions): a retry will not help. */
class LocalWriteError extends Error {}

/** One object to download into a partial file and verify. */
export interface VerifiedDownload {
  readonly client: S3Client;
  readonly bucket: string;
  readonly key: string;
  /** The partial file; a file already there is resumed from its current size. */
  readonly partialPath: string;
  readonly sizeBytes: number;
  readonly sha256: string;
  readonly retry: RetryPolicy;
  /** Called with the bytes present in the partial file so far (resumed bytes included). */
  readonly onBytes?: (doneBytes: number) => void;
}

/** What a download cost. */
export interface DownloadStats {
  /** Bytes fetched over the network (a resumed prefix is not counted). */
  readonly transferredBytes: number;
  /** GET requests sent. */
  readonly requests: number;
}

/**
 * Fetches `bytes=offset-` of the object and appends it to the partial file, reporting each
 * appended chunk. A server that ignores Range (answers 200 with everything) restarts the file.
 */
async function fetchFrom(
  job: VerifiedDownload,
  offset: number,
  onAppended: (bytes: number) => void,
): Promise<void> {
  const response = await job.client.send(
    new GetObjectCommand({
      Bucket: job.bucket,
      Key: job.key,
      Range: offset > 0 ? `bytes=${offset}-` : undefined,
    }),
  );
  const body = response.Body;
  if (!(body instanceof Readable)) {
    throw new S3TransferFailedError(`${job.key}: the response body is not a stream`);
  }
  try {
    let start = offset;
    let total: number | undefined;
    if (offset > 0 && response.ContentRange !== undefined) {
      total = Number(/\/(\d+)$/.exec(response.ContentRange)?.[1]);
    } else {
      start = 0; // no range asked, or the server ignored it and sends everything
      total = response.ContentLength;
    }
    if (total !== job.sizeBytes) {
      throw new MismatchError(
        `${job.key} is ${total ?? '?'} bytes, the manifest says ${job.sizeBytes}`,
      );
    }
    const handle = await open(job.partialPath, start === 0 ? 'w' : 'a').catch((err: unknown) => {
      throw new LocalWriteError(`opening ${job.partialPath}`, { cause: err });
    });
    let done = start;
    try {
      // Sequential writes: when the stream breaks, every chunk received so far is on disk, so
      // the file's size is exactly where the next attempt resumes.
      for await (const chunk of body) {
        const bytes = chunk as Buffer;
        if (done + bytes.length > job.sizeBytes) {
          throw new MismatchError(
            `${job.key} is longer than the manifest's ${job.sizeBytes} bytes`,
          );
        }
        await handle.write(bytes).catch((err: unknown) => {
          throw new LocalWriteError(`writing ${job.partialPath}`, { cause: err });
        });
        done += bytes.length;
        onAppended(bytes.length);
        job.onBytes?.(done);
      }
      if (done === job.sizeBytes) await handle.sync();
    } finally {
      await handle.close();
    }
    if (done < job.sizeBytes) {
      // The body ended cleanly but short: treat like a cut connection and resume.
      throw new TransientTransferError(`${job.key}: body ended at ${done} of ${job.sizeBytes} bytes`);
    }
  } finally {
    if (!body.destroyed) body.destroy();
  }
}

/**
 * Downloads one object into `partialPath`, resuming whatever is already there with a Range
 * request, and verifies size and sha256. Network errors and cut streams are retried with
 * back-off; a failure after progress starts a fresh count, so a flaky link that keeps moving
 * finishes. A file that is whole but wrong is deleted and fetched once more from scratch, then
 * fails with IMAGE_CORRUPT (and no partial file is left). Other failures throw
 * S3_TRANSFER_FAILED and keep the partial file for the next attempt to resume.
 */
export async function downloadVerified(job: VerifiedDownload): Promise<DownloadStats> {
  let transferredBytes = 0;
  let requests = 0;
  let failures = 0;
  let refetched = false;
  for (;;) {
    if (job.sizeBytes === 0) await (await open(job.partialPath, 'a')).close(); // nothing to fetch
    let offset = (await sizeOf(job.partialPath)) ?? 0;
    if (offset > job.sizeBytes) {
      await rm(job.partialPath, { force: true });
      offset = 0;
    }
    let mismatch: string | null = null;
    if (offset < job.sizeBytes) {
      job.onBytes?.(offset);
      requests++;
      let appended = 0;
      let failure: unknown = null;
      try {
        await fetchFrom(job, offset, (bytes) => {
          appended += bytes;
        });
      } catch (err) {
        failure = err;
      }
      transferredBytes += appended;
      if (failure instanceof MismatchError) {
        mismatch = failure.message;
      } else if (failure instanceof LocalWriteError) {
        throw new S3TransferFailedError(`${job.key}: ${failure.message}`, {
          cause: failure.cause,
        });
      } else if (failure instanceof RunnerError) {
        throw failure;
      } else if (failure !== null) {
        failures = appended > 0 ? 1 : failures + 1;
        if (!isRetryable(failure) || failures >= job.retry.attempts) {
          const why = failure instanceof Error ? failure.message : inspect(failure);
          throw new S3TransferFailedError(
            `${job.key}: download failed after ${requests} request(s): ${why}`,
            { cause: failure },
          );
        }
        await sleep(backoffMs(job.retry, failures));
        continue;
      }
    }
    if (mismatch === null) {
      // Hash the whole file once it is complete: simpler than carrying a hash across resumed
      // attempts, and the file is usually still in the page cache.
      const actual = await sha256File(job.partialPath);
      if (actual === job.sha256) {
        job.onBytes?.(job.sizeBytes); // the last word, also for a file resumed whole or empty
        return { transferredBytes, requests };
      }
      mismatch = `${job.key}: sha256 ${actual} does not match the manifest's ${job.sha256}`;
    }
    await rm(job.partialPath, { force: true });
    if (refetched) throw new ImageCorruptError(mismatch);
    refetched = true;
    failures = 0;
  }
}
