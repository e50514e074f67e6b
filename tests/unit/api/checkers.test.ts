import { afterEach, describe, expect, test } from 'vitest';
import {
  caseInsensitiveChecker,
  checkOutput,
  compileRegex,
  exactChecker,
  floatChecker,
  regexChecker,
  tokensChecker,
  trimChecker,
  trimTrailingChecker,
} from '../../../src/api/checkers.js';
import type { ExecuteResponse } from '../../../src/api/schemas.js';
import { makeApp, pyJob, stage, type ErrorBody, type TestApp } from './helpers.js';

let t: TestApp | undefined;
afterEach(async () => {
  await t?.close();
  t = undefined;
});

const budget = () => ({ remainingMs: 200 });

describe('the checkers, one by one', () => {
  test('exact: byte for byte; the first differing line is named', () => {
    expect(exactChecker('a\nb\n', 'a\nb\n')).toEqual({ verdict: 'accepted' });
    expect(exactChecker('a\nb \n', 'a\nb\n')).toEqual({
      verdict: 'wrong_answer',
      difference: { line: 2, expected: 'b', actual: 'b ' },
    });
  });

  test('trim-trailing: white space at line ends and blank lines at the end are ignored', () => {
    expect(trimTrailingChecker('a  \r\nb\n\n\n', 'a\nb').verdict).toBe('accepted');
    expect(trimTrailingChecker('\na\n', 'a\n')).toMatchObject({
      verdict: 'wrong_answer',
      difference: { line: 1, expected: 'a', actual: '' },
    });
    expect(trimTrailingChecker('a\n', 'a\nb\n').difference).toEqual({
      line: 2,
      expected: 'b',
      actual: null,
    });
  });

  test("trim (Judge0's rule): leading blank lines are ignored too", () => {
    expect(trimChecker('\n\n a \n', 'a').verdict).toBe('accepted');
    expect(trimChecker('a\n\nb', 'a\nb').verdict).toBe('wrong_answer');
  });

  test('tokens: any run of white space is one separator', () => {
    expect(tokensChecker('1   2\t3\n\n4\n', '1 2 3 4').verdict).toBe('accepted');
    expect(tokensChecker('1 2\n3 5\n', '1 2\n3 4\n')).toEqual({
      verdict: 'wrong_answer',
      difference: { line: 2, expected: '3 4', actual: '3 5' },
    });
    expect(tokensChecker('1 2', '1 2 3').difference).toMatchObject({ actual: null });
  });

  test('case-insensitive', () => {
    expect(caseInsensitiveChecker('YES\n', 'yes').verdict).toBe('accepted');
    expect(caseInsensitiveChecker('YES\n', 'no').verdict).toBe('wrong_answer');
  });

  test('float: absolute or relative tolerance; words must still match', () => {
    expect(floatChecker('3.1415927 x', '3.14159265 x').verdict).toBe('accepted'); // 1e-6 default
    expect(floatChecker('3.14 x', '3.14159 x').verdict).toBe('wrong_answer');
    expect(floatChecker('3.14', '3.14159', 0.01).verdict).toBe('accepted');
    expect(floatChecker('1000100', '1000000', undefined, 1e-5).verdict).toBe('wrong_answer');
    expect(floatChecker('1000900', '1000000', undefined, 1e-3).verdict).toBe('accepted');
    // Only one given: the other is 0, not the default.
    expect(floatChecker('1.0000001', '1', 0).verdict).toBe('wrong_answer');
    expect(floatChecker('1e3 y', '1000 x').verdict).toBe('wrong_answer');
    expect(floatChecker('1e3', '1000.0').verdict).toBe('accepted');
  });

  test('regex: the whole output must match; a bad pattern is refused at request time', () => {
    const re = compileRegex('\\d+ (apples|pears)', undefined, 'compare');
    expect(regexChecker('12 pears\n', re, budget()).verdict).toBe('accepted');
    expect(regexChecker('x 12 pears\n', re, budget()).verdict).toBe('wrong_answer');
    expect(regexChecker('12 PEARS', compileRegex('\\d+ pears', 'i', 'c'), budget()).verdict).toBe(
      'accepted',
    );
    expect(() => compileRegex('(', undefined, 'testCases[0].compare')).toThrow(
      /testCases\[0\]\.compare is not a valid regular expression/,
    );
    expect(() => compileRegex('a', 'g', 'c')).toThrow(/flags/);
    expect(() => compileRegex('a'.repeat(1001), undefined, 'c')).toThrow(/over 1000/);
  });

  test('regex: a catastrophic pattern spends the time budget, not the server', () => {
    const re = compileRegex('(a+)+', undefined, 'c');
    const b = budget();
    const started = Date.now();
    expect(regexChecker(`${'a'.repeat(40)}b`, re, b)).toMatchObject({ verdict: 'checker_error' });
    expect(Date.now() - started).toBeLessThan(2000);
    // The budget is shared: the next check of the request does not run at all.
    expect(regexChecker('aaa', re, b)).toMatchObject({
      verdict: 'checker_error',
      message: expect.stringMatching(/budget/) as unknown,
    });
  });

  test('checkOutput dispatches on the kind', () => {
    expect(checkOutput({ kind: 'tokens' }, 'a  b', 'a b', budget()).verdict).toBe('accepted');
    expect(checkOutput({ kind: 'exact' }, 'a  b', 'a b', budget()).verdict).toBe('wrong_answer');
  });
});

describe('checkers on the native API', () => {
  const post = async (payload: Record<string, unknown>) => {
    t ??= await makeApp();
    return t.app.inject({ method: 'POST', url: '/v1/execute', payload });
  };

  test('each case says its verdict and, on a mismatch, the first differing line', async () => {
    const res = await post(
      pyJob({
        testCases: [
          { stdin: '1  2\n', expectedOutput: '1 2', compare: 'tokens' },
          { stdin: 'Yes', expectedOutput: 'YES', compare: { kind: 'case-insensitive' } },
          {
            stdin: '0.3333',
            expectedOutput: '0.33',
            compare: { kind: 'float', absTolerance: 0.01 },
          },
          { stdin: 'x = 42', expectedOutput: '', compare: { kind: 'regex', pattern: 'x = \\d+' } },
          { stdin: 'a\nb\n', expectedOutput: 'a\nc\n' },
        ],
      }),
    );
    expect(res.statusCode).toBe(200);
    const body = res.json<ExecuteResponse>();
    expect(body.testCases?.map((c) => c.verdict)).toEqual([
      'accepted',
      'accepted',
      'accepted',
      'accepted',
      'wrong_answer',
    ]);
    expect(body.testCases?.[4]?.firstDifference).toEqual({ line: 2, expected: 'c', actual: 'b' });
    expect(body.testCases?.[0]?.firstDifference).toBeUndefined();
    expect(body.summary).toEqual({ total: 5, passed: 4, failed: 1 });
  });

  test.each([
    [{ kind: 'regex', pattern: '(' }, /testCases\[0\]\.compare is not a valid regular expression/],
    [{ kind: 'float', absTolerance: -1 }, /compare/],
    [{ kind: 'custom', language: 'klingon', source: 'x' }, /klingon/],
    ['fuzzy', /compare/],
  ])('a bad checker %j is a 400 before anything runs', async (compare, message) => {
    const res = await post(pyJob({ testCases: [{ stdin: 'a', expectedOutput: 'a', compare }] }));
    expect(res.statusCode).toBe(400);
    expect(res.json<ErrorBody>().message).toMatch(message);
    expect(t?.engine.calls).toHaveLength(0);
  });

  test('a custom checker runs as its own job, with input, expected and actual output as files', async () => {
    t = await makeApp();
    t.engine.behavior = (r) => {
      const actual = r.files.find((f) => f.name === 'actual.txt');
      if (actual === undefined) return { run: stage({ out: `${r.stdin?.toString() ?? ''}\n` }) };
      // The checker: AC when the actual output, as a number, is the expected one doubled.
      const read = (name: string) =>
        Buffer.from(r.files.find((f) => f.name === name)?.content ?? '', 'base64').toString();
      const ok = Number(read('actual.txt')) === 2 * Number(read('expected.txt'));
      return { run: stage({ out: ok ? 'AC\n' : `WA\nwanted twice ${read('expected.txt')}\n` }) };
    };
    const checker = { kind: 'custom', language: 'python', source: 'import sys\nprint("AC")' };
    const res = await post({
      language: 'c',
      files: [{ content: 'int main(){}' }],
      testCases: [
        { stdin: '4', expectedOutput: '2', compare: checker },
        { stdin: '5', expectedOutput: '2', compare: checker },
      ],
    });
    const body = res.json<ExecuteResponse>();
    expect(body.testCases?.map((c) => c.verdict)).toEqual(['accepted', 'wrong_answer']);
    expect(body.testCases?.[1]?.checkerMessage).toBe('wanted twice 2');
    // The program's job, then one checker job per case, each through prepare and run.
    expect(t.engine.calls).toHaveLength(3);
    const [program, first] = t.engine.jobs;
    expect(program?.language).toBe('c');
    expect(first?.language).toBe('python');
    expect(first?.id).not.toBe(program?.id);
    const files = t.engine.calls[1]?.files ?? [];
    expect(files.map((f) => f.name)).toEqual([
      undefined,
      'input.txt',
      'expected.txt',
      'actual.txt',
    ]);
    const content = (i: number) => Buffer.from(files[i]?.content ?? '', 'base64').toString();
    expect([content(1), content(2), content(3)]).toEqual(['4', '2', '4\n']);
    expect(t.engine.calls[1]?.args).toEqual(['input.txt', 'expected.txt', 'actual.txt']);
    expect(first?.message.files[0]?.name).toBe('main.py');
  });

  test('a checker that prints no verdict, or fails, is a checker_error', async () => {
    t = await makeApp();
    t.engine.behavior = (r) =>
      r.files.some((f) => f.name === 'actual.txt')
        ? r.files[0]?.content === 'crash'
          ? { run: stage({ status: 'runtime_error', exitCode: 1, err: 'Traceback' }) }
          : { run: stage({ out: 'maybe\n' }) }
        : { run: stage({ out: 'x' }) };
    const res = await post(
      pyJob({
        testCases: [
          { expectedOutput: 'x', compare: { kind: 'custom', language: 'python', source: 'p' } },
          { expectedOutput: 'x', compare: { kind: 'custom', language: 'python', source: 'crash' } },
        ],
      }),
    );
    const cases = res.json<ExecuteResponse>().testCases ?? [];
    expect(cases.map((c) => [c.verdict, c.passed])).toEqual([
      ['checker_error', false],
      ['checker_error', false],
    ]);
    expect(cases[0]?.checkerMessage).toMatch(/no verdict/);
    expect(cases[1]?.checkerMessage).toMatch(/runtime_error: Traceback/);
  });
});
