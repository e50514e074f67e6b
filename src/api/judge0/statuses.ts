import { constants } from 'node:os';
import type { StageResult, Status } from '../../protocol/index.js';

/** Judge0 CE's statuses, by id, with its own descriptions (GET /statuses). */
export const JUDGE0_STATUSES = [
  { id: 1, description: 'In Queue' },
  { id: 2, description: 'Processing' },
  { id: 3, description: 'Accepted' },
  { id: 4, description: 'Wrong Answer' },
  { id: 5, description: 'Time Limit Exceeded' },
  { id: 6, description: 'Compilation Error' },
  { id: 7, description: 'Runtime Error (SIGSEGV)' },
  { id: 8, description: 'Runtime Error (SIGXFSZ)' },
  { id: 9, description: 'Runtime Error (SIGFPE)' },
  { id: 10, description: 'Runtime Error (SIGABRT)' },
  { id: 11, description: 'Runtime Error (NZEC)' },
  { id: 12, description: 'Runtime Error (Other)' },
  { id: 13, description: 'Internal Error' },
  { id: 14, description: 'Exec Format Error' },
] as const;

/** A Judge0 status id. */
export type Judge0StatusId = (typeof JUDGE0_STATUSES)[number]['id'];

/** Judge0's names for the ids this adapter gives. */
export const J0 = {
  inQueue: 1,
  processing: 2,
  accepted: 3,
  wrongAnswer: 4,
  timeLimit: 5,
  compilationError: 6,
  sigsegv: 7,
  sigxfsz: 8,
  sigfpe: 9,
  sigabrt: 10,
  nzec: 11,
  otherRuntime: 12,
  internalError: 13,
} as const satisfies Record<string, Judge0StatusId>;

/** `{ id, description }` of a status id, as Judge0 shows it. */
export function judge0Status(id: Judge0StatusId): { id: number; description: string } {
  const s = JUDGE0_STATUSES.find((x) => x.id === id);
  return { id, description: s?.description ?? 'Internal Error' };
}

/** A signal's number (SIGSEGV → 11), or null for none or an unknown name. */
export function signalNumber(signal: string | null): number | null {
  if (signal === null) return null;
  const n = (constants.signals as Record<string, number | undefined>)[signal];
  return n ?? null;
}

/**
 * The Judge0 status of a run that did not end well, as Judge0 gives it: a timeout is 5; a
 * signal picks 7–10 (SIGSEGV, SIGXFSZ, SIGFPE, SIGABRT) or 12 (any other); a non-zero exit is 11
 * (NZEC). An output limit is 8: Judge0 writes stdout to a file under max_file_size, so a program
 * printing too much gets SIGXFSZ there. A memory limit is 12: Judge0 has no status of its own for
 * it, and its cgroup memory limit kills the program with SIGKILL, which it reports as
 * "Runtime Error (Other)". A failure of the sandbox is 13.
 */
export function failedRunStatus(status: Status, stage: StageResult | null): Judge0StatusId {
  switch (status) {
    case 'timeout':
      return J0.timeLimit;
    case 'output_limit':
      return J0.sigxfsz;
    case 'memory_limit':
      return J0.otherRuntime;
    case 'compile_error':
      return J0.compilationError;
    case 'sandbox_error':
      return J0.internalError;
    default:
      break;
  }
  switch (stage?.signal ?? null) {
    case null:
      return J0.nzec;
    case 'SIGSEGV':
      return J0.sigsegv;
    case 'SIGXFSZ':
      return J0.sigxfsz;
    case 'SIGFPE':
      return J0.sigfpe;
    case 'SIGABRT':
      return J0.sigabrt;
    default:
      return J0.otherRuntime;
  }
}
