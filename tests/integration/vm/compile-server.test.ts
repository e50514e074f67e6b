import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Engine } from '../../../src/pool/engine.js';
import type { JobRequest, JobResult } from '../../../src/pool/index.js';
import { ensureImages, testEngine, vmSkipReason } from '../../support/vm.js';

const skip = vmSkipReason();
if (skip) console.warn(`skipping the compile server tests in real VMs: ${skip}`);

const text = (b64: string | undefined): string => Buffer.from(b64 ?? '', 'base64').toString();

// Each language: a program that compiles and runs, and one with a type error, whose compile
// stage must be the same on a VM the pool primed (its compile goes to the compile server) and
// on one restored for the job (a pool miss: nothing primed, the compile command itself).
const LANGUAGES: Record<
  string,
  { good: JobRequest; goodOut: string; bad: JobRequest; badText: string }
> = {
  typescript: {
    good: {
      language: 'typescript',
      files: [
        {
          name: 'main.ts',
          content:
            "import { twice } from './lib';\nconst n: number = twice(21);\nconsole.log(`ts ${n}`);\n",
        },
        {
          name: 'lib.ts',
          content: 'export function twice(n: number): number {\n  return 2 * n;\n}\n',
        },
      ],
    },
    goodOut: 'ts 42\n',
    bad: {
      language: 'typescript',
      files: [{ name: 'main.ts', content: 'const x: number = "a";\nconsole.log(x);\n' }],
    },
    badText: "error TS2322: Type 'string' is not assignable to type 'number'.",
  },
  java: {
    good: {
      language: 'java',
      files: [
        {
          name: 'Main.java',
          content:
            'public class Main {\n  public static void main(String[] a) {\n    System.out.println("java " + Helper.twice(21));\n  }\n}\n',
        },
        {
          name: 'Helper.java',
          content: 'class Helper {\n  static int twice(int n) { return 2 * n; }\n}\n',
        },
      ],
    },
    goodOut: 'java 42\n',
    bad: {
      language: 'java',
      files: [{ name: 'Main.java', content: 'public class Main {\n  int x = "a";\n}\n' }],
    },
    badText: 'error: incompatible types: String cannot be converted to int',
  },
};

describe.skipIf(skip !== null)('compile servers, in real VMs', () => {
  let engine: Engine;
  const run = (request: JobRequest): Promise<JobResult> =>
    engine.run(engine.prepare({ ...request, compileCache: false }));

  /** Keeps the language ready and waits for a primed VM (a prime takes 10–30 s under TCG). */
  async function onPrimedVm(language: string, request: JobRequest): Promise<JobResult> {
    await engine.pool.warm(language);
    for (let i = 0; i < 1800 && (engine.pool.stats().ready[language] ?? 0) === 0; i++)
      await new Promise((r) => setTimeout(r, 100));
    return run(request);
  }

  beforeAll(async () => {
    await ensureImages(Object.keys(LANGUAGES));
    engine = await testEngine({ poolTarget: 1, poolWarmUp: true });
  }, 3_600_000);

  afterAll(async () => {
    await engine?.close();
  });

  for (const [language, t] of Object.entries(LANGUAGES)) {
    it(`${language}: a primed VM compiles on its compile server, as the compile command does`, async () => {
      const good = await onPrimedVm(language, t.good);
      expect(good.status, text(good.compile?.stderr) + text(good.compile?.stdout)).toBe('ok');
      expect(good.timings.poolHit).toBe(true);
      expect(good.timings.compileServed).toBe(true);
      expect(text(good.run?.stdout)).toBe(t.goodOut);

      const served = await onPrimedVm(language, t.bad);
      expect(served.timings.compileServed).toBe(true);
      await engine.pool.cool(language);
      const cold = await run(t.bad);
      expect(cold.timings.poolHit).toBe(false);
      expect(cold.timings.compileServed).toBe(false);
      expect(cold.status).toBe('compile_error');
      expect(text(cold.compile?.stdout) + text(cold.compile?.stderr)).toContain(t.badText);
      for (const key of ['status', 'exitCode', 'signal', 'stdout', 'stderr'] as const)
        expect(served.compile?.[key], key).toEqual(cold.compile?.[key]);
      expect(served.status).toBe('compile_error');
    }, 900_000);
  }
});
