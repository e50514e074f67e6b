import { describe, expect, it } from 'vitest';
import {
  ERROR_CATALOGUE,
  ERROR_CLASSES,
  errorOf,
  InternalError,
  RunnerError,
  asRunnerError,
} from '../../../src/errors.js';
import {
  checkEnv,
  checkFiles,
  execBytes,
  isBase64,
  MAX_RESULT_OUTPUT_BYTES,
  MAX_FRAME_BYTES,
} from '../../../src/protocol/index.js';

describe('isBase64: what decodes without loss', () => {
  it.each(['', 'QQ==', 'QUI=', 'QUJD', 'QUJDRA', 'QUJDREU'])('takes %j', (s) => {
    expect(isBase64(s)).toBe(true);
  });
  it.each(['Q', 'QUJDR', 'QQ=', 'Q===', 'QU=D', '%%%', 'QUJD\n'])('refuses %j', (s) => {
    expect(isBase64(s)).toBe(false);
  });
});

describe('checkFiles', () => {
  const f = (name: string) => ({ name, content: '', encoding: 'utf8' as const });
  it('refuses a file that is also a folder of another, in either order', () => {
    expect(() => checkFiles([f('a/b/c'), f('a/b')])).toThrow(
      /files\[1\]\.name "a\/b" is also a folder of files\[0\]\.name/,
    );
    expect(() => checkFiles([f('a'), f('a/b')])).toThrow(/files\[0\]\.name "a" is also a folder/);
    expect(() => checkFiles([f('a/x'), f('a/y'), f('ab')])).not.toThrow();
  });
});

describe('checkEnv and the exec size', () => {
  it('counts strings as execve does', () => {
    expect(execBytes(['ab'], { K: 'v' })).toBe(2 + 1 + 8 + (1 + 1 + 2 + 8));
  });
  it('names the variable', () => {
    expect(() => checkEnv({ 'A B': '' })).toThrow(/env\."A B": a name must match/);
  });
});

describe('the result budget fits one frame as base64', () => {
  it('leaves at least a MiB for the rest of the message', () => {
    expect(Math.ceil(MAX_RESULT_OUTPUT_BYTES / 3) * 4).toBeLessThanOrEqual(
      MAX_FRAME_BYTES - 1_048_576,
    );
  });
});

describe('the error catalogue', () => {
  it('has one class per code, each making errors of its own code and status', () => {
    for (const code of Object.keys(ERROR_CATALOGUE) as (keyof typeof ERROR_CATALOGUE)[]) {
      const err = new ERROR_CLASSES[code]('m');
      expect(err).toBeInstanceOf(RunnerError);
      expect(err.code).toBe(code);
      expect(err.status).toBe(ERROR_CATALOGUE[code].status);
      expect(err.name).toMatch(/Error$/);
      expect(errorOf(code, 'm')).toBeInstanceOf(ERROR_CLASSES[code]);
    }
  });
  it('turns anything else thrown into INTERNAL, keeping ours as they are', () => {
    const bug = asRunnerError(new TypeError('x is undefined'));
    expect(bug).toBeInstanceOf(InternalError);
    expect(bug.code).toBe('INTERNAL');
    const ours = new ERROR_CLASSES.VM_DIED('gone');
    expect(asRunnerError(ours)).toBe(ours);
  });
});
