import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import S3rver from 's3rver';

/** A running s3rver on 127.0.0.1 with one bucket; `close()` stops it and removes its files. */
export interface S3Fixture {
  readonly endpoint: string;
  readonly port: number;
  readonly bucket: string;
  /** s3rver's data folder. */
  readonly directory: string;
  /** s3rver's built-in credentials. */
  readonly accessKeyId: string;
  readonly secretAccessKey: string;
  close(): Promise<void>;
}

/** Starts s3rver on a free port of 127.0.0.1 with an empty `bucket`. */
export async function startS3(bucket = 'runner-images'): Promise<S3Fixture> {
  const directory = await mkdtemp(join(tmpdir(), 'runner-s3rver-'));
  const server = new S3rver({
    address: '127.0.0.1',
    port: 0,
    silent: true,
    directory,
    configureBuckets: [{ name: bucket }],
  });
  let address;
  try {
    address = await server.run();
  } catch (err) {
    await rm(directory, { recursive: true, force: true });
    throw err;
  }
  return {
    endpoint: `http://127.0.0.1:${address.port}`,
    port: address.port,
    bucket,
    directory,
    accessKeyId: 'S3RVER',
    secretAccessKey: 'S3RVER',
    close: async () => {
      try {
        await server.close();
      } finally {
        await rm(directory, { recursive: true, force: true });
      }
    },
  };
}
