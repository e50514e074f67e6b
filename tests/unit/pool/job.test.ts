import { describe, expect, it } from 'vitest';
import { hasCode } from '../../../src/errors.js';
import { LanguageRegistry } from '../../../src/languages/index.js';
import { DEADLINE_BUDGET, jobDeadlineMs, prepareJob } from '../../../src/pool/index.js';

const registry = LanguageRegistry.fromDir();

function codeOf(fn: () => unknown): string | null {
  try {
    fn();
    return null;
  } catch (err) {
    return (err as { code?: string }).code ?? 'not a RunnerError';
  }
}

describe('prepareJob: one message, built once, checked as the agent checks it', () => {
  it('names an unnamed entry file after the language, fills limits, and keeps the given id', () => {
    const job = prepareJob(
      { language: 'py', files: [{ content: 'print(1)' }, { content: 'x' }] },
      registry,
      { id: 'job-1' },
    );
    expect(job.id).toBe('job-1');
    expect(job.message.id).toBe('job-1');
    expect(job.language).toBe('python');
    expect(job.compiles).toBe(false);
    expect(job.message.files.map((f) => f.name)).toEqual(['main.py', 'file1']);
    expect(job.message.runLimits.wallTimeMs).toBeGreaterThan(0);
    expect(job.message.stdin).toBe('');
  });

  it('carries the language’s seccomp family to the agent (default when it names none)', () => {
    const family = (language: string): string | undefined =>
      prepareJob({ language, files: [{ content: '' }] }, registry).message.seccomp;
    expect(family('java')).toBe('jvm');
    expect(family('javascript')).toBe('node');
    expect(family('typescript')).toBe('node');
    expect(family('python')).toBe('default');
    const python = { ...registry.get('python').definition };
    delete python.seccomp;
    const bare = new LanguageRegistry([{ definition: python, dir: '/nowhere' }]);
    expect(prepareJob({ language: 'python', files: [{ content: '' }] }, bare).message.seccomp).toBe(
      'default',
    );
  });

  it('gives a new id when none is given', () => {
    const a = prepareJob({ language: 'python', files: [{ content: '' }] }, registry);
    const b = prepareJob({ language: 'python', files: [{ content: '' }] }, registry);
    expect(a.id).not.toBe(b.id);
  });

  it.each([
    ['no files', { files: [] }, 'FILE_NAME_INVALID'],
    ['a .. name', { files: [{ name: '../x', content: '' }] }, 'FILE_NAME_INVALID'],
    [
      '17 components',
      { files: [{ name: `${'d/'.repeat(16)}x`, content: '' }] },
      'FILE_NAME_INVALID',
    ],
    [
      'a 256-byte component',
      { files: [{ name: 'x'.repeat(256), content: '' }] },
      'FILE_NAME_INVALID',
    ],
    [
      'a and a/b',
      {
        files: [
          { name: 'a', content: '' },
          { name: 'a/b', content: '' },
        ],
      },
      'FILE_NAME_INVALID',
    ],
    [
      'a name twice',
      {
        files: [
          { name: 'a', content: '' },
          { name: 'a', content: '' },
        ],
      },
      'FILE_NAME_INVALID',
    ],
    [
      'bad base64',
      { files: [{ content: '%%%', encoding: 'base64' as const }] },
      'ENCODING_INVALID',
    ],
    [
      'base64 of 4n+1',
      { files: [{ content: 'QUJDR', encoding: 'base64' as const }] },
      'ENCODING_INVALID',
    ],
    ['a bad env name', { env: { 'BAD-NAME': 'x' } }, 'ENV_INVALID'],
    ['a NUL in env', { env: { A: 'a\0' } }, 'ENV_INVALID'],
    ['a NUL in args', { args: ['\0'] }, 'ARGS_INVALID'],
    [
      'args over the exec limit',
      { args: Array.from({ length: 12 }, () => 'a'.repeat(100_000)) },
      'ARGS_INVALID',
    ],
    ['a limit over the maximum', { runLimits: { wallTimeMs: 10_000_000 } }, 'LIMIT_INVALID'],
    ['an unknown language', { language: 'klingon' }, 'LANGUAGE_UNKNOWN'],
  ])('refuses %s with its own code', (_name, over, code) => {
    const request = { language: 'python', files: [{ content: '' }], ...over };
    expect(codeOf(() => prepareJob(request, registry))).toBe(code);
  });

  it('takes what the agent takes at the edges: 16 components, 255-byte parts, a -dash name', () => {
    const names = [
      `${'d/'.repeat(15)}x`,
      'x'.repeat(255),
      '-toolexec=sh z.go',
      `${'p'.repeat(150)}/${'q'.repeat(150)}`,
    ];
    const job = prepareJob(
      {
        language: 'python',
        files: [{ content: '' }, ...names.map((name) => ({ name, content: '' }))],
      },
      registry,
    );
    expect(job.message.files).toHaveLength(5);
  });

  it('says which field is wrong', () => {
    try {
      prepareJob(
        { language: 'python', files: [{ content: '' }, { name: 'a//b', content: '' }] },
        registry,
      );
      expect.unreachable();
    } catch (err) {
      expect(hasCode(err, 'FILE_NAME_INVALID')).toBe(true);
      expect((err as Error).message).toMatch(/^files\[1\]\.name "a\/\/b" has an empty component/);
    }
  });
});

describe('jobDeadlineMs: budgeted from what the job is', () => {
  const py = (extra: object) =>
    prepareJob({ language: 'python', files: [{ content: '' }], ...extra }, registry);

  it('grows with the number of test cases (64 cases of a 10 s limit are not cut at 25 s)', () => {
    const one = py({ runLimits: { wallTimeMs: 10_000 } });
    const many = py({
      runLimits: { wallTimeMs: 10_000 },
      cases: Array.from({ length: 64 }, () => Buffer.alloc(0)),
    });
    expect(one.deadlineMs).toBeLessThan(30_000);
    expect(many.deadlineMs).toBeGreaterThanOrEqual(64 * (10_000 + DEADLINE_BUDGET.perStageMs));
  });

  it('leaves time to move the largest result the job can return', () => {
    const small = py({ runLimits: { outputBytes: 1024 } });
    const big = py({ runLimits: { outputBytes: 16 * 1024 * 1024 } });
    // 2 × 16 MiB of output is capped by the frame: 16 MiB at 1 s a MiB.
    expect(big.deadlineMs - small.deadlineMs).toBeGreaterThanOrEqual(
      15 * DEADLINE_BUDGET.perResultMibMs,
    );
  });

  it('counts the compile stage only for compiled languages', () => {
    const c = prepareJob({ language: 'c', files: [{ content: '' }] }, registry);
    expect(c.compiles).toBe(true);
    expect(jobDeadlineMs(c.message, true) - jobDeadlineMs(c.message, false)).toBeGreaterThanOrEqual(
      c.message.compileLimits.wallTimeMs,
    );
  });
});
