import { ZERO_TIMINGS, type JobResult, type PreparedJob } from '../../src/pool/index.js';
import type { StageResult } from '../../src/protocol/index.js';

/** A stage that exited 0 having printed `stdout` (what a stand-in engine returns). */
export function okStage(stdout = ''): StageResult {
  return {
    status: 'ok',
    exitCode: 0,
    signal: null,
    wallTimeMs: 1,
    cpuTimeMs: 1,
    memoryPeakBytes: 1,
    stdout: Buffer.from(stdout).toString('base64'),
    stderr: '',
    stdoutTruncated: false,
    stderrTruncated: false,
  };
}

/** An `ok` result of `job` from a stand-in engine (no VM): its run printed `stdout`. */
export function okResult(job: PreparedJob, stdout = '', over: Partial<JobResult> = {}): JobResult {
  return {
    id: job.id,
    language: job.language,
    version: job.version,
    status: 'ok',
    compile: null,
    run: okStage(stdout),
    vmId: null,
    timings: { ...ZERO_TIMINGS, totalMs: 1, executeMs: 1, guestMs: 1, poolHit: true },
    ...over,
  };
}
