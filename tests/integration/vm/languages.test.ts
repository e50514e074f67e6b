import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { LanguageRegistry, testProgramFile } from '../../../src/languages/index.js';
import type { Engine } from '../../../src/pool/engine.js';
import { ensureImages, testEngine, vmSkipReason } from '../../support/vm.js';

const skip = vmSkipReason();
if (skip) console.warn(`skipping the language tests in real VMs: ${skip}`);

const registry = LanguageRegistry.fromDir();
const languages = registry.list();

/** Every wave-one language's own test program, run in a real microVM restored from a snapshot. */
describe.skipIf(skip !== null)('every language in a real VM', () => {
  let engine: Engine;

  beforeAll(async () => {
    await ensureImages(languages.map((l) => l.definition.name));
    engine = await testEngine();
  });

  afterAll(async () => {
    await engine?.close();
  });

  it('test cases: c compiles once in the VM, then each case runs with its own stdin', async () => {
    const source =
      '#include <stdio.h>\nint main(void){int a,b;if(scanf("%d %d",&a,&b)!=2)return 3;printf("%d\\n",a+b);return 0;}\n';
    const result = await engine.run(
      engine.prepare({
        language: 'c',
        files: [{ name: 'main.c', content: source }],
        cases: [Buffer.from('1 2'), Buffer.from('40 2'), Buffer.from('x')],
      }),
    );
    expect(result.compile?.status).toBe('ok');
    expect(result.run).toBeNull();
    expect(
      result.cases?.map((c) => [c.status, Buffer.from(c.stdout, 'base64').toString()]),
    ).toEqual([
      ['ok', '3\n'],
      ['ok', '42\n'],
      ['runtime_error', ''],
    ]);
  });

  for (const language of languages) {
    const { definition } = language;
    it(`${definition.name}: the test program prints its line`, async () => {
      const result = await engine.run(
        engine.prepare({ language: definition.name, files: [testProgramFile(language)] }),
      );
      const stdout = Buffer.from(result.run?.stdout ?? '', 'base64').toString();
      const stderr = Buffer.from(result.run?.stderr ?? '', 'base64').toString();
      const compileErr = Buffer.from(result.compile?.stderr ?? '', 'base64').toString();
      expect(
        { status: result.status, stdout: stdout.trim(), vm: result.vmId },
        `stderr: ${stderr} compile: ${compileErr} ${result.run?.message ?? ''}`,
      ).toMatchObject({
        status: 'ok',
        stdout: definition.test.expected,
      });
      if (definition.compile) expect(result.compile?.status).toBe('ok');
      else expect(result.compile).toBeNull();
    });
  }
});
