import { scaleTime } from '../../src/config/limits.js';
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

/**
 * A time a test names for a job that should not hit it (a client's documented request, say),
 * times the suite's time-limit scale (RUNNER_TIME_LIMIT_SCALE_PERCENT, vitest.config.ts), so
 * that a slow host's TCG does not decide it. Tests of the limit itself keep their own times.
 */
export function suiteScaledMs(ms: number, env: NodeJS.ProcessEnv = process.env): number {
  const percent = Number(env.RUNNER_TIME_LIMIT_SCALE_PERCENT ?? '100');
  return Number.isFinite(percent) && percent > 100 ? scaleTime(ms, percent) : ms;
}
