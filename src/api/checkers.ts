import vm from 'node:vm';
import { RequestInvalidError } from '../errors.js';
import type { JobRequest, JobResult, PreparedJob } from '../pool/index.js';
import { textOrNull } from './results.js';

/**
 * Output checkers: how a test case's stdout is judged against the expected output. One function
 * per kind; every API that compares output (the native test cases, Judge0's expected_output)
 * goes through `checkOutput` or, for a checker program, `runCustomChecker`.
 */

/** A checker program: any of our languages, run as its own job in its own VM. */
export interface CustomCheckerSpec {
  readonly kind: 'custom';
  readonly language: string;
  readonly version?: string;
  readonly source: string;
  readonly sourceEncoding?: 'utf8' | 'base64';
}

/** How one test case is compared (the schema's `compare`, with string shorthands expanded). */
export type CompareSpec =
  | { readonly kind: 'exact' | 'trim-trailing' | 'trim' | 'tokens' | 'case-insensitive' }
  | { readonly kind: 'float'; readonly absTolerance?: number; readonly relTolerance?: number }
  | { readonly kind: 'regex'; readonly pattern: string; readonly flags?: string }
  | CustomCheckerSpec;

/** The verdict of one checked case. */
export type CheckVerdict = 'accepted' | 'wrong_answer' | 'checker_error';

/** The first line where the output and the expected output part (1-based). */
export interface Difference {
  readonly line: number;
  readonly expected: string | null;
  readonly actual: string | null;
}

/** What a checker says about one case. */
export interface CheckOutcome {
  readonly verdict: CheckVerdict;
  /** The checker's own words: a custom checker's message, or why a checker failed. */
  readonly message?: string;
  /** On a wrong answer, where the outputs first part (absent when the checker cannot say). */
  readonly difference?: Difference;
}

/** The longest regex pattern taken: a cap on what a client can make us compile. */
export const MAX_REGEX_PATTERN_CHARS = 1000;
/** Flags a regex checker may carry: no g/y (stateful) and no m (the whole output must match). */
export const REGEX_FLAGS_PATTERN = '^[isu]*$';
/**
 * Time all regex checks of one request may take together (ms). A regex is run in a vm context
 * with this timeout, which V8 enforces inside backtracking too, so a catastrophic pattern costs
 * at most this much of the event loop per request, and the case gets checker_error.
 */
export const REGEX_BUDGET_MS = 200;
/** Tolerance of a float checker when the request gives neither. */
export const DEFAULT_FLOAT_TOLERANCE = 1e-6;
/** Longest line shown in a Difference, and longest checker message kept. */
const MAX_SHOWN_CHARS = 1000;

const clip = (s: string | null): string | null =>
  s === null || s.length <= MAX_SHOWN_CHARS ? s : `${s.slice(0, MAX_SHOWN_CHARS)}…`;

/** Lines of a text, CRLF read as LF. */
const linesOf = (s: string): string[] => s.replace(/\r\n/g, '\n').split('\n');

/** The first line where two lists of (already normalised) lines part, shown as given. */
function firstDifferentLine(
  actual: readonly string[],
  expected: readonly string[],
  same: (a: string, e: string) => boolean,
): Difference | undefined {
  const n = Math.max(actual.length, expected.length);
  for (let i = 0; i < n; i++) {
    const a = actual[i];
    const e = expected[i];
    if (a === undefined || e === undefined || !same(a, e))
      return { line: i + 1, expected: clip(e ?? null), actual: clip(a ?? null) };
  }
  return undefined;
}

const outcome = (difference: Difference | undefined): CheckOutcome =>
  difference === undefined ? { verdict: 'accepted' } : { verdict: 'wrong_answer', difference };

/** exact: byte for byte (as text); the difference is the first line that is not the same. */
export function exactChecker(actual: string, expected: string): CheckOutcome {
  if (actual === expected) return { verdict: 'accepted' };
  const d = firstDifferentLine(actual.split('\n'), expected.split('\n'), (a, e) => a === e);
  // Same lines but different bytes (a CR): still a wrong answer, at the last line.
  return { verdict: 'wrong_answer', difference: d ?? { line: 1, expected, actual } };
}

const trimLineEnd = (line: string): string => line.replace(/[ \t\r\f\v]+$/, '');

function dropTrailingBlank(lines: string[]): string[] {
  let end = lines.length;
  while (end > 0 && lines[end - 1] === '') end--;
  return lines.slice(0, end);
}

/**
 * trim-trailing (the default): white space at the end of each line is ignored, and blank lines
 * at the end of the output.
 */
export function trimTrailingChecker(actual: string, expected: string): CheckOutcome {
  const norm = (s: string): string[] => dropTrailingBlank(linesOf(s).map(trimLineEnd));
  return outcome(firstDifferentLine(norm(actual), norm(expected), (a, e) => a === e));
}

/**
 * trim: Judge0's rule: white space at the end of each line is ignored, then white space at both
 * ends of the whole output (so leading blank lines too).
 */
export function trimChecker(actual: string, expected: string): CheckOutcome {
  const norm = (s: string): string[] => {
    const text = linesOf(s).map(trimLineEnd).join('\n').trim();
    return text === '' ? [] : text.split('\n');
  };
  return outcome(firstDifferentLine(norm(actual), norm(expected), (a, e) => a === e));
}

/** case-insensitive: like trim-trailing, ignoring letter case. */
export function caseInsensitiveChecker(actual: string, expected: string): CheckOutcome {
  const norm = (s: string): string[] => dropTrailingBlank(linesOf(s).map(trimLineEnd));
  return outcome(
    firstDifferentLine(norm(actual), norm(expected), (a, e) => a.toLowerCase() === e.toLowerCase()),
  );
}

interface Token {
  readonly text: string;
  readonly line: number;
}

function tokensOf(s: string): Token[] {
  const out: Token[] = [];
  linesOf(s).forEach((line, i) => {
    for (const text of line.split(/\s+/)) if (text !== '') out.push({ text, line: i + 1 });
  });
  return out;
}

/** Compares two outputs token by token; the difference names the lines of the first mismatch. */
function compareTokens(
  actual: string,
  expected: string,
  same: (a: string, e: string) => boolean,
): CheckOutcome {
  const a = tokensOf(actual);
  const e = tokensOf(expected);
  const aLines = linesOf(actual);
  const eLines = linesOf(expected);
  for (let i = 0; i < Math.max(a.length, e.length); i++) {
    const at = a[i];
    const et = e[i];
    if (at !== undefined && et !== undefined && same(at.text, et.text)) continue;
    return {
      verdict: 'wrong_answer',
      difference: {
        line: et?.line ?? at?.line ?? 1,
        expected: clip(et === undefined ? null : (eLines[et.line - 1] ?? null)),
        actual: clip(at === undefined ? null : (aLines[at.line - 1] ?? null)),
      },
    };
  }
  return { verdict: 'accepted' };
}

/** tokens: any run of white space (spaces, tabs, line breaks) is one separator. */
export function tokensChecker(actual: string, expected: string): CheckOutcome {
  return compareTokens(actual, expected, (a, e) => a === e);
}

const NUMBER = /^[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?$/;

/**
 * float: tokens, where two numbers are equal when they are within `absTolerance` of each other
 * or within `relTolerance` of the expected value's magnitude; other tokens must be the same.
 * With neither tolerance given both are 1e-6; with one given the other is 0.
 */
export function floatChecker(
  actual: string,
  expected: string,
  absTolerance?: number,
  relTolerance?: number,
): CheckOutcome {
  const none = absTolerance === undefined && relTolerance === undefined;
  const abs = none ? DEFAULT_FLOAT_TOLERANCE : (absTolerance ?? 0);
  const rel = none ? DEFAULT_FLOAT_TOLERANCE : (relTolerance ?? 0);
  return compareTokens(actual, expected, (a, e) => {
    if (a === e) return true;
    if (!NUMBER.test(a) || !NUMBER.test(e)) return false;
    const x = Number(a);
    const y = Number(e);
    const diff = Math.abs(x - y);
    return diff <= abs || diff <= rel * Math.abs(y);
  });
}

/** Compiles a regex checker's pattern at request time: a bad one is a 400 naming the field. */
export function compileRegex(pattern: string, flags: string | undefined, field: string): RegExp {
  if (pattern.length > MAX_REGEX_PATTERN_CHARS)
    throw new RequestInvalidError(`${field} is over ${MAX_REGEX_PATTERN_CHARS} characters`);
  if (flags !== undefined && !new RegExp(REGEX_FLAGS_PATTERN).test(flags))
    throw new RequestInvalidError(`${field} flags may only be i, s and u, not ${flags}`);
  try {
    // Anchored: the whole output must match, not a part of it.
    return new RegExp(`^(?:${pattern})$`, flags ?? '');
  } catch (err) {
    throw new RequestInvalidError(
      `${field} is not a valid regular expression: ${(err as Error).message}`,
    );
  }
}

/** What is left of a request's regex time (ms); shared by all its cases. */
export interface RegexBudget {
  remainingMs: number;
}

/**
 * regex: the whole output, without its final line breaks, must match. The match runs under the
 * request's time budget; a pattern that backtracks past it is a checker_error, not a hang.
 */
export function regexChecker(actual: string, re: RegExp, budget: RegexBudget): CheckOutcome {
  if (budget.remainingMs <= 0)
    return { verdict: 'checker_error', message: 'the regex time budget of this request is spent' };
  const text = actual.replace(/(?:\r?\n)+$/, '');
  const started = Date.now();
  let matched: boolean;
  try {
    const ctx = vm.createContext({ re, text });
    matched = vm.runInContext('re.test(text)', ctx, {
      timeout: Math.max(1, Math.ceil(budget.remainingMs)),
    }) as boolean;
  } catch {
    budget.remainingMs = 0;
    return {
      verdict: 'checker_error',
      message: `the regex did not finish within ${REGEX_BUDGET_MS} ms`,
    };
  } finally {
    budget.remainingMs -= Date.now() - started;
  }
  if (matched) return { verdict: 'accepted' };
  return {
    verdict: 'wrong_answer',
    difference: { line: 1, expected: clip(re.source), actual: clip(linesOf(text)[0] ?? '') },
  };
}

/** A check with no program: every kind but custom. */
export type SyncCompareSpec = Exclude<CompareSpec, CustomCheckerSpec>;

/**
 * Judges one output with a checker that needs no program. `re` is the regex compiled at request
 * time (regex checkers only).
 */
export function checkOutput(
  spec: SyncCompareSpec,
  actual: string,
  expected: string,
  budget: RegexBudget,
  re?: RegExp,
): CheckOutcome {
  switch (spec.kind) {
    case 'exact':
      return exactChecker(actual, expected);
    case 'trim-trailing':
      return trimTrailingChecker(actual, expected);
    case 'trim':
      return trimChecker(actual, expected);
    case 'tokens':
      return tokensChecker(actual, expected);
    case 'case-insensitive':
      return caseInsensitiveChecker(actual, expected);
    case 'float':
      return floatChecker(actual, expected, spec.absTolerance, spec.relTolerance);
    case 'regex':
      return regexChecker(actual, re ?? compileRegex(spec.pattern, spec.flags, 'regex'), budget);
  }
}

/** The files a custom checker gets in its work dir, and its arguments (their paths, in order). */
export const CHECKER_FILES = ['input.txt', 'expected.txt', 'actual.txt'] as const;

/** The part of the engine a custom checker runs on. */
export interface CheckerEngine {
  prepare(request: JobRequest, id?: string): PreparedJob;
  run(job: PreparedJob): Promise<JobResult>;
}

/** The engine request of a custom checker for one case (the checker's source is the entry). */
export function checkerRequest(
  spec: CustomCheckerSpec,
  files: { input: Buffer; expected: Buffer; actual: Buffer },
): JobRequest {
  const [input, expected, actual] = CHECKER_FILES;
  return {
    language: spec.language,
    ...(spec.version !== undefined && { version: spec.version }),
    files: [
      { content: spec.source, encoding: spec.sourceEncoding ?? 'utf8' },
      { name: input, content: files.input.toString('base64'), encoding: 'base64' },
      { name: expected, content: files.expected.toString('base64'), encoding: 'base64' },
      { name: actual, content: files.actual.toString('base64'), encoding: 'base64' },
    ],
    args: [...CHECKER_FILES],
  };
}

/**
 * custom: runs the checker program as its own job, in its own VM, through the same engine path
 * (prepare, then run). It gets input.txt, expected.txt and actual.txt in its work dir and their
 * paths as arguments, and prints its verdict: a first line `AC` or `WA`, then an optional
 * message. Anything else (no verdict, a crash, a timeout, a compile error) is checker_error.
 */
export async function customChecker(
  engine: CheckerEngine,
  spec: CustomCheckerSpec,
  files: { input: Buffer; expected: Buffer; actual: Buffer },
): Promise<CheckOutcome> {
  let result: JobResult;
  try {
    result = await engine.run(engine.prepare(checkerRequest(spec, files)));
  } catch (err) {
    return {
      verdict: 'checker_error',
      message: `the checker could not run: ${(err as Error).message}`,
    };
  }
  if (result.status !== 'ok' || result.run === null) {
    const stage = result.status === 'compile_error' ? result.compile : result.run;
    const said = stage === null ? '' : (textOrNull(stage.stderr) ?? '').trim();
    return {
      verdict: 'checker_error',
      message: clip(`the checker ended ${result.status}${said === '' ? '' : `: ${said}`}`) ?? '',
    };
  }
  const out = textOrNull(result.run.stdout) ?? '';
  const [first = '', ...rest] = linesOf(out);
  const message = clip(rest.join('\n').trim());
  const said = message === null || message === '' ? {} : { message };
  switch (first.trim().toUpperCase()) {
    case 'AC':
      return { verdict: 'accepted', ...said };
    case 'WA':
      return { verdict: 'wrong_answer', ...said };
    default:
      return {
        verdict: 'checker_error',
        message: `the checker printed no verdict (a first line AC or WA), but ${JSON.stringify(clip(first))}`,
      };
  }
}
