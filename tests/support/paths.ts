import { dataPaths, type DataPaths } from '../../src/config/paths.js';

/**
 * The data folder the tests share (built images, layer caches, the .deb cache, snapshots), so
 * that an expensive build made by one test file, or by an earlier run, is reused by the others.
 * RUNNER_DATA_DIR wins when set.
 */
export const DEFAULT_TEST_DATA_DIR = '/var/cache/runner-codes';

export function testDataDir(env: NodeJS.ProcessEnv = process.env): string {
  return env.RUNNER_DATA_DIR !== undefined && env.RUNNER_DATA_DIR !== ''
    ? env.RUNNER_DATA_DIR
    : DEFAULT_TEST_DATA_DIR;
}

/** dataPaths() rooted at the shared test data folder (RUNNER_IMAGES_DIR still wins for images). */
export function testDataPaths(env: NodeJS.ProcessEnv = process.env): DataPaths {
  const imagesDir = env.RUNNER_IMAGES_DIR;
  return dataPaths({
    dataDir: testDataDir(env),
    imagesDir: imagesDir !== undefined && imagesDir !== '' ? imagesDir : null,
  });
}
