import {
  ZERO_TIMINGS,
  type JobResult,
  type JobTimings,
  type LiveControls,
  type LiveEvent,
  type LiveHandlers,
} from '../pool/index.js';
import { sandboxStage, type StageResult, type Status } from '../protocol/index.js';
import type { ExecuteResponse, PistonStage, StageView } from './schemas.js';

const utf8 = new TextDecoder('utf-8', { fatal: true });

/** Decodes base64 bytes as UTF-8 text, or null when they are not valid UTF-8. */
export function textOrNull(base64: string): string | null {
  try {
    return utf8.decode(Buffer.from(base64, 'base64'));
  } catch {
    return null;
  }
}

/** A stage result as the native API shows it: the bytes, and the text when it is text. */
export function stageView(stage: StageResult): StageView {
  return { ...stage, stdoutText: textOrNull(stage.stdout), stderrText: textOrNull(stage.stderr) };
}

/** The native result of one engine job. */
export function executeResponse(result: JobResult): ExecuteResponse {
  return {
    id: result.id,
    language: result.language,
    version: result.version,
    status: result.status,
    compile: result.compile === null ? null : stageView(result.compile),
    run: result.run === null ? null : stageView(result.run),
    timings: { ...result.timings } satisfies JobTimings,
  };
}

export { sandboxStage };

/** The result of a job the system failed to run (the engine threw, or the server restarted). */
export function sandboxResponse(
  id: string,
  language: string,
  version: string,
  message: string,
): ExecuteResponse {
  return {
    id,
    language,
    version,
    status: 'sandbox_error',
    compile: null,
    run: stageView(sandboxStage(message)),
    timings: { ...ZERO_TIMINGS },
  };
}

/** A stage with its stderr appended to its stdout, and stderr empty (not interleaved). */
export function mergeStderrIntoStdout(stage: StageResult): StageResult {
  const out = Buffer.concat([
    Buffer.from(stage.stdout, 'base64'),
    Buffer.from(stage.stderr, 'base64'),
  ]);
  return {
    ...stage,
    stdout: out.toString('base64'),
    stderr: '',
    stdoutTruncated: stage.stdoutTruncated || stage.stderrTruncated,
    stderrTruncated: false,
  };
}

/**
 * Judge0's cpu_extra_time: a run is killed only at the CPU limit plus the extra, but any run
 * that used more than `limitMs` of CPU is a time limit all the same. Marks such stages
 * `timeout` (saying so) and the job with them.
 */
export function withCpuVerdict<
  T extends { status: Status; run: StageResult | null; cases?: StageResult[] | null },
>(result: T, limitMs: number): T {
  const judge = (stage: StageResult): StageResult =>
    stage.status !== 'timeout' &&
    stage.status !== 'sandbox_error' &&
    stage.cpuTimeMs !== null &&
    stage.cpuTimeMs > limitMs
      ? { ...stage, status: 'timeout', message: `CPU time limit of ${limitMs} ms exceeded` }
      : stage;
  const run = result.run === null ? null : judge(result.run);
  const cases = result.cases == null ? result.cases : result.cases.map(judge);
  const stages = [run, ...(cases ?? [])].filter((s): s is StageResult => s !== null);
  const changed = stages.some((s) => s.status === 'timeout') && result.status === 'ok';
  return {
    ...result,
    run,
    ...(cases != null && { cases }),
    ...(changed && { status: 'timeout' as const }),
  };
}

/** Piston's short status codes. */
function pistonStatus(stage: StageResult): string | null {
  switch (stage.status) {
    case 'ok':
      return null;
    case 'timeout':
      return 'TO';
    case 'output_limit':
      return stage.stderrTruncated && !stage.stdoutTruncated ? 'EL' : 'OL';
    case 'sandbox_error':
      return 'XX';
    default:
      return stage.signal !== null ? 'SG' : 'RE';
  }
}

const PISTON_MESSAGES: Partial<Record<Status, string>> = {
  timeout: 'Time limit exceeded',
  memory_limit: 'Memory limit exceeded',
  output_limit: 'Output limit exceeded',
};

/**
 * A live job's consumer that keeps each stage's output in the order the agent read the
 * program's two pipes (stdin was given up front): Piston's `output`. Bounded by the stage's
 * output caps, as the result is.
 */
export class InterleavedOutput implements LiveHandlers {
  private readonly chunks: Record<'compile' | 'run', Buffer[]> = { compile: [], run: [] };
  private stage: 'compile' | 'run' = 'compile';

  onStart(controls: LiveControls): void {
    controls.stdinEnd();
  }

  onEvent(event: LiveEvent): void {
    if (event.type === 'stage') this.stage = event.stage;
    else this.chunks[this.stage].push(event.data);
  }

  /** The stage's stdout and stderr interleaved, as bytes. */
  of(stage: 'compile' | 'run'): Buffer {
    return Buffer.concat(this.chunks[stage]);
  }
}

/**
 * A stage as Piston shows it: text output, code or signal, and `output`: stdout and stderr in
 * the order they were written when `interleaved` holds exactly the stage's bytes (a live job's
 * stream, see InterleavedOutput), else stdout then stderr.
 */
export function pistonStage(stage: StageResult | null, interleaved?: Buffer): PistonStage {
  if (stage === null) {
    return {
      stdout: '',
      stderr: '',
      output: '',
      code: null,
      signal: null,
      message: null,
      status: null,
      cpu_time: null,
      wall_time: null,
      memory: null,
    };
  }
  const stdout = Buffer.from(stage.stdout, 'base64').toString('utf8');
  const stderr = Buffer.from(stage.stderr, 'base64').toString('utf8');
  const sum = Buffer.byteLength(stage.stdout, 'base64') + Buffer.byteLength(stage.stderr, 'base64');
  return {
    stdout,
    stderr,
    output:
      interleaved !== undefined && interleaved.length === sum
        ? interleaved.toString('utf8')
        : stdout + stderr,
    code: stage.signal !== null ? null : stage.exitCode,
    signal: stage.signal,
    message: stage.message ?? PISTON_MESSAGES[stage.status] ?? null,
    status: pistonStatus(stage),
    cpu_time: stage.cpuTimeMs,
    wall_time: stage.wallTimeMs,
    memory: stage.memoryPeakBytes,
  };
}
