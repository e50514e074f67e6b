import { defineConfig } from 'vitest/config';

/**
 * The integration files (real VMs) run in three groups, one after the other:
 *   0. the unit tests beside the languages test, which builds every image a run needs (half an
 *      hour from nothing; the other files then only find them);
 *   1. the other integration files, two at a time (most of them keep one VM busy at a time, and
 *      the machines have two cores);
 *   2. the files that measure time or CPU against a quiet host, one at a time, alone.
 * Files of one group that boot VMs share the data folder safely: one checks or builds images at a
 * time (tests/support/vm.ts), a snapshot is written whole or not at all, and the start-up sweep
 * leaves alone the VMs of another live process.
 */
const BUILDS_EVERY_IMAGE = ['tests/integration/vm/languages.test.ts'];
const MEASURES_ALONE = ['tests/integration/vm/fairness.test.ts'];
const WORKERS = 2;

/**
 * The integration files run at a time-limit scale (timeLimitScalePercent, docs/testing.md): the
 * default time limits were sized on a faster host than some CI hosts, where TCG ran a cold boot
 * 4.4 times and a clojure compile more than 3 times slower, and a default compile limit was
 * then a verdict of the host, not of the program. A test that means a limit names it; the
 * servers and CLIs the tests start inherit the variable.
 */
const INTEGRATION_ENV = {
  RUNNER_TIME_LIMIT_SCALE_PERCENT: process.env.RUNNER_TIME_LIMIT_SCALE_PERCENT ?? '400',
};

export default defineConfig({
  test: {
    projects: [
      {
        extends: true,
        test: {
          name: 'unit',
          include: ['tests/unit/**/*.test.ts'],
          testTimeout: 30_000,
          maxWorkers: WORKERS,
          sequence: { groupOrder: 0 },
        },
      },
      {
        extends: true,
        test: {
          name: 'integration-images',
          env: INTEGRATION_ENV,
          include: BUILDS_EVERY_IMAGE,
          testTimeout: 600_000,
          hookTimeout: 3_600_000,
          maxWorkers: WORKERS,
          // describe.concurrent in a VM test file: two at once, one per core.
          maxConcurrency: 2,
          sequence: { groupOrder: 0 },
        },
      },
      {
        extends: true,
        test: {
          name: 'integration',
          env: INTEGRATION_ENV,
          include: ['tests/integration/**/*.test.ts'],
          exclude: [...BUILDS_EVERY_IMAGE, ...MEASURES_ALONE],
          testTimeout: 600_000,
          hookTimeout: 3_600_000,
          maxWorkers: WORKERS,
          maxConcurrency: 2,
          sequence: { groupOrder: 1 },
        },
      },
      {
        extends: true,
        test: {
          name: 'integration-alone',
          env: INTEGRATION_ENV,
          include: MEASURES_ALONE,
          testTimeout: 600_000,
          hookTimeout: 3_600_000,
          maxWorkers: 1,
          sequence: { groupOrder: 2 },
        },
      },
    ],
  },
});
