import { MAX_LIMITS } from '../../config/index.js';
import { InternalError, RequestInvalidError, RunnerError } from '../../errors.js';
import { decodeBase64 } from '../../protocol/index.js';
import type { JobRecord } from '../../queue/index.js';
import { checkCallbackUrl } from '../callbacks.js';
import type { EgressPolicy } from '../../net/index.js';
import type { ApiJob, JobService } from '../service.js';
import type { ExecuteRequest, ExecuteResponse, StageView, TestCaseResult } from '../schemas.js';
import type { Judge0Language, Judge0Languages } from './languages.js';
import type { Judge0Submission, SubmissionField } from './schemas.js';
import { SUBMISSION_OUTPUT } from './schemas.js';
import {
  failedRunStatus,
  J0,
  judge0Status,
  signalNumber,
  type Judge0StatusId,
} from './statuses.js';
import { unpackAdditionalFiles, type ZipFile } from './zip.js';

/** Per-field messages of a 422, Rails style: `{ "language_id": ["can't be blank"] }`. */
export type FieldErrors = Record<string, string[]>;

/** Judge0's per-submission limits: its defaults and its maxima (Judge0 CE's own numbers). */
export const JUDGE0_LIMITS = {
  cpu_time_limit: { default: 5, max: 15, integer: false, min: 0 },
  cpu_extra_time: { default: 1, max: 5, integer: false, min: -1 },
  wall_time_limit: { default: 10, max: 20, integer: false, min: 0 },
  memory_limit: { default: 128_000, max: 512_000, integer: false, min: 0 },
  stack_limit: { default: 64_000, max: 128_000, integer: true, min: 0 },
  max_processes_and_or_threads: { default: 60, max: 120, integer: true, min: 0 },
  max_file_size: { default: 1024, max: 4096, integer: true, min: 0 },
  number_of_runs: { default: 1, max: 20, integer: true, min: 0 },
} as const;
type LimitField = keyof typeof JUDGE0_LIMITS;
type LimitRule = { default: number; max: number; integer: boolean; min: number };

/**
 * Judge0's limits on a host with the timeLimitScalePercent setting: the default and maximum of
 * cpu_time_limit, cpu_extra_time and wall_time_limit scaled (to the millisecond), no maximum
 * above the server's run maxima; 100 gives JUDGE0_LIMITS as they are.
 */
export function judge0Limits(percent: number): Record<LimitField, LimitRule> {
  const out = { ...JUDGE0_LIMITS } as Record<LimitField, LimitRule>;
  if (percent === 100) return out;
  const scale = (v: number, cap: number): number =>
    Math.min(cap, Math.ceil(((v * percent) / 100) * 1000) / 1000);
  const cpuCap = MAX_LIMITS.run.cpuTimeMs / 1000;
  const wallCap = MAX_LIMITS.run.wallTimeMs / 1000;
  for (const [field, cap] of [
    ['cpu_time_limit', cpuCap],
    ['cpu_extra_time', cpuCap],
    ['wall_time_limit', wallCap],
  ] as const) {
    const rule = JUDGE0_LIMITS[field];
    out[field] = { ...rule, default: scale(rule.default, cap), max: scale(rule.max, cap) };
  }
  return out;
}

/** Most submissions in one batch (Judge0's max_submission_batch_size). */
export const MAX_BATCH_SIZE = 20;

/** The attributes shown without `fields` (Judge0's defaults). */
export const DEFAULT_FIELDS: readonly SubmissionField[] = [
  'token',
  'time',
  'memory',
  'stdout',
  'stderr',
  'compile_output',
  'message',
  'status',
];

/** A submission checked and converted: Judge0's units still, ready to become a job. */
export interface Judge0Params {
  readonly language: Judge0Language;
  readonly source: { content: string; encoding: 'utf8' | 'base64' };
  readonly args: string[];
  readonly stdin: Buffer;
  readonly expected: string | null;
  readonly limits: Record<LimitField, number>;
  readonly redirectStderr: boolean;
  readonly additionalFiles: readonly ZipFile[];
  readonly callbackUrl: string | null;
  /** enable_network, where the operator allows network (networkEnabled). */
  readonly network: boolean;
}

/** A 422 of per-field messages. */
export class FieldErrorsError extends RequestInvalidError {
  constructor(readonly fields: FieldErrors) {
    super(
      Object.entries(fields)
        .map(([k, v]) => `${k} ${v.join(', ')}`)
        .join('; '),
      { details: { fields } },
    );
  }
}

/**
 * The per-field messages of a refused submission: our own 422s, and the engine's 4xx checks
 * (a file name, an encoding, a limit) under the field they came from, or Rails' `base`.
 */
export function fieldErrorsOf(err: unknown): FieldErrors | null {
  if (err instanceof FieldErrorsError) return err.fields;
  if (!(err instanceof RunnerError) || err.status !== 400) return null;
  const field = (err.details as { field?: unknown } | undefined)?.field;
  return { [typeof field === 'string' ? field : 'base']: [err.message] };
}

/** Splits command_line_arguments like a shell would: white space, quotes, backslashes; no
 * expansion of any kind. */
export function splitArguments(s: string): string[] | null {
  const out: string[] = [];
  // null: between words; '' is a word already begun (an empty quoted word counts).
  let cur: string | null = null;
  let quote: '"' | "'" | null = null;
  for (let i = 0; i < s.length; i++) {
    const ch = s[i] ?? '';
    const next = s[i + 1] ?? '';
    if (quote === "'") {
      if (ch === "'") quote = null;
      else cur = (cur ?? '') + ch;
    } else if (quote === '"') {
      if (ch === '"') quote = null;
      else if (ch === '\\' && '"\\$`'.includes(next) && next !== '') {
        cur = (cur ?? '') + next;
        i++;
      } else cur = (cur ?? '') + ch;
    } else if (/\s/.test(ch)) {
      if (cur !== null) out.push(cur);
      cur = null;
    } else if (ch === "'" || ch === '"') {
      quote = ch;
      cur ??= '';
    } else if (ch === '\\' && next !== '') {
      cur = (cur ?? '') + next;
      i++;
    } else cur = (cur ?? '') + ch;
  }
  if (quote !== null) return null;
  if (cur !== null) out.push(cur);
  return out;
}

const present = (v: unknown): boolean => v !== undefined && v !== null;

/**
 * Checks a submission as Judge0 would (Rails validations: numbers may be strings, null is the
 * default, unknown fields are ignored) and collects every field's messages; throws a
 * FieldErrorsError (422) when there is any. `allowedHosts` is the callback allow list, `egress`
 * the policy a literal callback address is checked against.
 */
export function parseSubmission(
  raw: unknown,
  base64: boolean,
  languages: Judge0Languages,
  allowedHosts: readonly string[],
  egress: EgressPolicy,
  networkAllowed = false,
  rules: Record<LimitField, LimitRule> = JUDGE0_LIMITS,
): Judge0Params {
  const errors: FieldErrors = {};
  const add = (field: string, message: string): void => {
    (errors[field] ??= []).push(message);
  };
  if (typeof raw !== 'object' || raw === null || Array.isArray(raw)) {
    throw new FieldErrorsError({ base: ['the body must be a JSON object'] });
  }
  const body = raw as Record<string, unknown>;
  const str = (field: string): string | null => {
    const v = body[field];
    if (!present(v)) return null;
    if (typeof v !== 'string') {
      add(field, 'must be a string');
      return null;
    }
    return v;
  };
  const bytes = (field: string): Buffer | null => {
    const v = str(field);
    if (v === null) return null;
    if (!base64) return Buffer.from(v, 'utf8');
    try {
      return decodeBase64(v.replace(/\s+/g, ''), field);
    } catch {
      add(field, 'is not valid base64');
      return null;
    }
  };
  const flag = (field: string): boolean => {
    const v = body[field];
    if (!present(v)) return false;
    if (v === true || v === 'true') return true;
    if (v === false || v === 'false') return false;
    add(field, 'must be true or false');
    return false;
  };

  const source = str('source_code');
  if (source === null || source === '') add('source_code', "can't be blank");
  if (base64 && source !== null && source !== '') bytes('source_code');

  let language: Judge0Language | undefined;
  const rawId = body.language_id;
  if (!present(rawId) || rawId === '') add('language_id', "can't be blank");
  else {
    const id = typeof rawId === 'string' && /^\s*\d+\s*$/.test(rawId) ? Number(rawId) : rawId;
    if (typeof id !== 'number' || !Number.isInteger(id)) add('language_id', 'is not a number');
    else {
      language = languages.get(id);
      if (language === undefined) add('language_id', `language with id ${id} doesn't exist`);
    }
  }

  const limits = {} as Record<LimitField, number>;
  for (const [field, rule] of Object.entries(rules) as [LimitField, LimitRule][]) {
    const v = body[field];
    limits[field] = rule.default;
    if (!present(v) || v === '') continue;
    const n = typeof v === 'string' && v.trim() !== '' ? Number(v) : v;
    if (typeof n !== 'number' || !Number.isFinite(n)) add(field, 'is not a number');
    else if (rule.integer && !Number.isInteger(n)) add(field, 'must be an integer');
    else if (n <= rule.min)
      add(field, rule.min < 0 ? 'must be greater than or equal to 0' : 'must be greater than 0');
    else if (n > rule.max) add(field, `must be less than or equal to ${rule.max}`);
    else limits[field] = n;
  }

  const compilerOptions = str('compiler_options');
  if (compilerOptions !== null && compilerOptions.trim() !== '')
    add(
      'compiler_options',
      'setting compiler options is not allowed: our language definitions take no extra flags',
    );
  let args: string[] = [];
  const cla = str('command_line_arguments');
  if (cla !== null) {
    if (cla.length > 512) add('command_line_arguments', 'is too long (maximum is 512 characters)');
    const split = splitArguments(cla);
    if (split === null) add('command_line_arguments', 'has an unterminated quote');
    else args = split;
  }
  for (const field of [
    'enable_per_process_and_thread_time_limit',
    'enable_per_process_and_thread_memory_limit',
  ])
    if (flag(field)) add(field, 'this option cannot be enabled');
  const network = flag('enable_network');
  if (network && !networkAllowed)
    add(
      'enable_network',
      'network access is not allowed on this server (NETWORK_DISABLED: networkEnabled is off)',
    );
  const redirectStderr = flag('redirect_stderr_to_stdout');

  const stdin = bytes('stdin') ?? Buffer.alloc(0);
  const expectedBytes = bytes('expected_output');

  let additionalFiles: ZipFile[] = [];
  const zipText = str('additional_files');
  if (zipText !== null && zipText !== '') {
    try {
      additionalFiles = unpackAdditionalFiles(
        decodeBase64(zipText.replace(/\s+/g, ''), 'additional_files'),
      );
    } catch (err) {
      add(
        'additional_files',
        err instanceof RunnerError ? err.message.replace(/^additional_files /, '') : 'is not valid',
      );
    }
  }

  let callbackUrl: string | null = null;
  const cb = str('callback_url');
  if (cb !== null && cb !== '') {
    try {
      callbackUrl = checkCallbackUrl(cb, allowedHosts, egress);
    } catch (err) {
      add('callback_url', (err as Error).message.replace(/^callbackUrl /, ''));
    }
  }

  if (Object.keys(errors).length > 0 || language === undefined || source === null)
    throw new FieldErrorsError(errors);
  return {
    language,
    source: { content: source, encoding: base64 ? 'base64' : 'utf8' },
    args,
    stdin,
    expected: expectedBytes === null ? null : expectedBytes.toString('utf8'),
    limits,
    redirectStderr,
    additionalFiles,
    callbackUrl,
    network,
  };
}

/**
 * A checked submission as a native request: the source as the entry, the zip's files beside
 * it, Judge0's units as ours (seconds → ms, KB → MiB or bytes), and one test case per run
 * (number_of_runs), judged with Judge0's trim rule against expected_output.
 */
export function toExecuteRequest(
  p: Judge0Params,
  stdins: readonly Buffer[] = [p.stdin],
): ExecuteRequest {
  const l = p.limits;
  const runs = stdins.length === 1 ? l.number_of_runs : 1;
  const cases = stdins.flatMap((stdin) =>
    Array.from({ length: runs }, () => ({
      stdin: stdin.toString('base64'),
      stdinEncoding: 'base64' as const,
      expectedOutput: p.expected ?? '',
      compare: 'trim' as const,
    })),
  );
  return {
    language: p.language.definition.name,
    files: [
      p.source,
      ...p.additionalFiles.map((f) => ({
        name: f.name,
        content: f.content.toString('base64'),
        encoding: 'base64' as const,
      })),
    ],
    args: p.args,
    runLimits: {
      // Killed at the limit plus cpu_extra_time; judged at the limit (verdictCpuMs).
      cpuTimeMs: Math.min(
        MAX_LIMITS.run.cpuTimeMs,
        Math.ceil((l.cpu_time_limit + Math.max(0, l.cpu_extra_time)) * 1000),
      ),
      wallTimeMs: Math.min(MAX_LIMITS.run.wallTimeMs, Math.ceil(l.wall_time_limit * 1000)),
      memoryMib: Math.min(MAX_LIMITS.run.memoryMib, Math.ceil(l.memory_limit / 1024)),
      processes: l.max_processes_and_or_threads,
      fileSizeBytes: l.max_file_size * 1024,
      stackBytes: Math.min(MAX_LIMITS.run.stackBytes, Math.max(65_536, l.stack_limit * 1024)),
    },
    testCases: cases,
    ...(p.network && { network: true }),
  };
}

/** Builds the job of a submission through the service (its caps and the engine's checks). */
export function buildJob(service: JobService, p: Judge0Params): ApiJob {
  const job = service.prepare(toExecuteRequest(p));
  return {
    ...job,
    cases:
      p.expected === null ? (job.cases?.map((c) => ({ ...c, expected: null })) ?? null) : job.cases,
    mergeStderr: p.redirectStderr,
    verdictCpuMs: Math.ceil(p.limits.cpu_time_limit * 1000),
  };
}

/**
 * What submissions of a batch must share to run as one job, compiled once (issue 14):
 * everything but stdin, expected_output and callback_url. null: this one runs alone (with
 * number_of_runs above 1 its runs are already test cases of its own job).
 */
export function groupKey(p: Judge0Params): string | null {
  if (p.limits.number_of_runs !== 1) return null;
  return JSON.stringify([
    p.language.id,
    p.source,
    p.args,
    p.limits,
    p.redirectStderr,
    p.network,
    p.additionalFiles.map((f) => [f.name, f.content.toString('base64')]),
  ]);
}

/**
 * The one job of submissions with the same groupKey (each already built by buildJob): one
 * test case per submission, with its stdin and its own expected_output.
 */
export function buildGroupJob(
  service: JobService,
  members: readonly { params: Judge0Params; job: ApiJob }[],
): ApiJob {
  const first = members[0];
  if (first === undefined) throw new InternalError('a group of submissions cannot be empty');
  const stdins = members.map((m) => m.params.stdin);
  const job = service.prepare(toExecuteRequest(first.params, stdins));
  return {
    ...job,
    cases: members.flatMap((m) => m.job.cases ?? []),
    mergeStderr: first.params.redirectStderr,
    verdictCpuMs: Math.ceil(first.params.limits.cpu_time_limit * 1000),
  };
}

/** Parses `fields`: Judge0's defaults, `*` for all, or a comma list (unknown ones: 400). */
export function parseFields(raw: string | undefined): readonly SubmissionField[] {
  if (raw === undefined || raw.trim() === '') return DEFAULT_FIELDS;
  if (raw.trim() === '*') return Object.keys(SUBMISSION_OUTPUT) as SubmissionField[];
  const asked = raw
    .split(',')
    .map((f) => f.trim())
    .filter((f) => f !== '');
  const invalid = asked.filter((f) => !(f in SUBMISSION_OUTPUT));
  if (invalid.length > 0) throw new RequestInvalidError(`invalid fields: [${invalid.join(', ')}]`);
  return asked as SubmissionField[];
}

/** Judge0's text when an output is not UTF-8 and base64 was not asked for. */
export const NOT_UTF8 =
  'some attributes for this submission cannot be converted to UTF-8, use base64_encoded=true query parameter';

const seconds = (ms: number | null): string | null => (ms === null ? null : (ms / 1000).toFixed(3));

function mean(values: readonly (number | null)[]): number | null {
  const xs = values.filter((v): v is number => v !== null);
  return xs.length === 0 ? null : xs.reduce((a, b) => a + b, 0) / xs.length;
}

/** What Judge0 would say of a finished job: the verdict, outputs (as bytes) and measurements. */
interface Outcome {
  status: Judge0StatusId;
  stdout: Buffer | null;
  stderr: Buffer | null;
  compileOutput: Buffer | null;
  message: string | null;
  exitCode: number | null;
  exitSignal: number | null;
  timeMs: number | null;
  wallMs: number | null;
  memoryKb: number | null;
}

const bytesOf = (s: string): Buffer | null => (s === '' ? null : Buffer.from(s, 'base64'));

function messageOf(status: Judge0StatusId, stage: StageView | null, ours: string): string | null {
  if (status === J0.timeLimit) return 'Time limit exceeded';
  if (status === J0.nzec) return `Exited with error status ${stage?.exitCode ?? 1}`;
  if (ours === 'memory_limit') return 'Memory limit exceeded';
  if (ours === 'output_limit') return 'Output limit exceeded';
  if (status === J0.internalError) return stage?.message ?? 'internal error';
  const sig = signalNumber(stage?.signal ?? null);
  if (sig !== null) return `Caught fatal signal ${sig}`;
  return null;
}

/**
 * The Judge0 verdict of a finished job. The runs are its test cases (number_of_runs of them, or
 * one per grouped submission); the one that decides is the first that was not accepted (Judge0
 * stops at it), else the last; time and memory are averages over the runs that ran.
 */
export function outcomeOf(res: ExecuteResponse, runsOf?: readonly number[]): Outcome {
  const all = res.testCases ?? [];
  const cases: TestCaseResult[] = runsOf === undefined ? all : runsOf.flatMap((i) => all[i] ?? []);
  const compile = res.compile;
  const compileText =
    compile === null
      ? null
      : Buffer.concat([
          Buffer.from(compile.stdout, 'base64'),
          Buffer.from(compile.stderr, 'base64'),
        ]);
  const compileOutput = compileText === null || compileText.length === 0 ? null : compileText;
  const none = {
    stdout: null,
    stderr: null,
    exitCode: null,
    exitSignal: null,
    timeMs: null,
    wallMs: null,
    memoryKb: null,
  };
  if (res.status === 'compile_error' || (compile !== null && compile.status !== 'ok')) {
    return { ...none, status: J0.compilationError, compileOutput, message: null };
  }
  const decide = cases.find((c) => !c.passed) ?? cases[cases.length - 1];
  const ran = cases.map((c) => c.run).filter((r): r is StageView => r !== null);
  const measured = {
    timeMs: mean(ran.map((r) => r.cpuTimeMs)),
    wallMs: mean(ran.map((r) => r.wallTimeMs)),
    memoryKb: ((m) => (m === null ? null : Math.round(m / 1024)))(
      mean(ran.map((r) => r.memoryPeakBytes)),
    ),
  };
  const run = decide?.run ?? res.run;
  if (decide === undefined || run === null) {
    const why = decide?.message ?? res.run?.message ?? 'the job did not run';
    return { ...none, ...measured, status: J0.internalError, compileOutput, message: why };
  }
  let status: Judge0StatusId;
  if (run.status === 'ok') {
    status =
      decide.verdict === 'wrong_answer'
        ? J0.wrongAnswer
        : decide.verdict === 'checker_error'
          ? J0.internalError
          : J0.accepted;
  } else status = failedRunStatus(run.status, run);
  return {
    ...measured,
    status,
    stdout: bytesOf(run.stdout),
    stderr: bytesOf(run.stderr),
    compileOutput,
    message:
      decide.verdict === 'checker_error'
        ? (decide.checkerMessage ?? null)
        : messageOf(status, run, run.status),
    exitCode: run.exitCode,
    exitSignal: signalNumber(run.signal),
  };
}

const utf8 = new TextDecoder('utf-8', { fatal: true });

/**
 * A job record as a Judge0 submission, only the fields asked for. Outputs are base64 with
 * `base64`, else text; text that is not UTF-8 throws (Judge0's 400, or its 201 with an error
 * on a waited create). `token` and `runsOf` pick one submission of a grouped batch job.
 */
export function submissionView(
  record: Pick<JobRecord, 'id' | 'language' | 'state' | 'result' | 'createdAt' | 'finishedAt'>,
  languages: Judge0Languages,
  fields: readonly SubmissionField[],
  base64: boolean,
  token: string = record.id,
  runsOf?: readonly number[],
): Judge0Submission {
  const encode = (b: Buffer | null): string | null => {
    if (b === null) return null;
    if (base64) return b.toString('base64');
    try {
      return utf8.decode(b);
    } catch {
      throw new RequestInvalidError(NOT_UTF8, { details: { token } });
    }
  };
  const lang = languages.ofName(record.language);
  const iso = (t: number | null): string | null => (t === null ? null : new Date(t).toISOString());
  const result = record.state === 'done' ? (record.result as ExecuteResponse | null) : null;
  const o: Outcome | null = result === null ? null : outcomeOf(result, runsOf);
  const statusId: Judge0StatusId =
    o?.status ?? (record.state === 'running' ? J0.processing : J0.inQueue);
  const wanted = new Set(fields);
  const all: Judge0Submission = {};
  const put = <K extends SubmissionField>(k: K, v: () => Judge0Submission[K]): void => {
    if (wanted.has(k)) all[k] = v();
  };
  put('token', () => token);
  put('stdout', () => encode(o?.stdout ?? null));
  put('stderr', () => encode(o?.stderr ?? null));
  put('compile_output', () => encode(o?.compileOutput ?? null));
  put('message', () =>
    o?.message === null || o?.message === undefined
      ? null
      : base64
        ? Buffer.from(o.message).toString('base64')
        : o.message,
  );
  put('exit_code', () => o?.exitCode ?? null);
  put('exit_signal', () => o?.exitSignal ?? null);
  put('status', () => judge0Status(statusId));
  put('status_id', () => statusId);
  put('created_at', () => iso(record.createdAt) ?? '');
  put('finished_at', () => iso(record.finishedAt));
  put('time', () => seconds(o?.timeMs ?? null));
  put('wall_time', () => seconds(o?.wallMs ?? null));
  put('memory', () => o?.memoryKb ?? null);
  put('language_id', () => lang?.id ?? null);
  put('language', () => (lang === undefined ? null : { id: lang.id, name: lang.name }));
  // Not kept by our job store: shown as null (docs/judge0.md).
  for (const k of ['source_code', 'stdin', 'expected_output', 'callback_url'] as const)
    put(k, () => null);
  for (const k of ['number_of_runs', 'memory_limit'] as const) put(k, () => null);
  for (const k of ['cpu_time_limit', 'wall_time_limit'] as const) put(k, () => null);
  put('redirect_stderr_to_stdout', () => null);
  return all;
}
