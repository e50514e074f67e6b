import { randomBytes } from 'node:crypto';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Engine } from '../../../src/pool/engine.js';
import type { JobRequest, JobResult, LiveEvent } from '../../../src/pool/index.js';
import { ensureImages, testEngine, vmSkipReason } from '../../support/vm.js';

const skip = vmSkipReason();
if (skip) console.warn(`skipping the compile cache tests in real VMs: ${skip}`);

const text = (b64: string | undefined): string => Buffer.from(b64 ?? '', 'base64').toString();

/**
 * A C program unique to this run (so its first compile is a miss, whatever the shared test data
 * holds) that tries to poison what a later job would run: it replaces its own binary, changes
 * its source and leaves a file, all in the work dir the compile left. C, not C++: gcc compiles
 * it in a few seconds under TCG, g++ with iostream in about fifteen.
 */
function poisoner(nonce: string): JobRequest {
  const source = String.raw`#include <stdio.h>
#warning "a compile warning to keep"
int main(void) {
  char line[256] = "";
  if (fgets(line, sizeof line, stdin) == NULL) line[0] = 0;
  for (char *p = line; *p; p++) if (*p == '\n') *p = 0;
  printf("kept %s input=%s\n", "${nonce}", line);
  FILE *seen = fopen("ran-before", "r");
  if (seen) { puts("a run was here before me"); fclose(seen); }
  FILE *f = fopen("ran-before", "w"); fputs("x", f); fclose(f);
  remove("main");
  f = fopen("main", "w"); fputs("#!/bin/sh\necho poisoned\n", f); fclose(f);
  f = fopen("main.c", "a"); fputs("// changed by a run\n", f); fclose(f);
  return 0;
}
`;
  return { language: 'c', files: [{ name: 'main.c', content: source }] };
}

describe.skipIf(skip !== null)('the compile cache, in real VMs', () => {
  let engine: Engine;
  const nonce = randomBytes(8).toString('hex');
  const run = (request: JobRequest): Promise<JobResult> => engine.run(engine.prepare(request));

  beforeAll(async () => {
    await ensureImages(['c']);
    engine = await testEngine({ poolTarget: 0 });
  });

  afterAll(async () => {
    await engine?.close();
  });

  it('compiles once; later jobs run the compile as it left the work dir, not as a run left it', async () => {
    const first = await run({ ...poisoner(nonce), stdin: Buffer.from('one\n') });
    expect(first.status, text(first.compile?.stderr)).toBe('ok');
    expect(first.timings.compileCached).toBe(false);
    expect(text(first.run?.stdout)).toBe(`kept ${nonce} input=one\n`);

    const second = await run({ ...poisoner(nonce), stdin: Buffer.from('two\n') });
    expect(second.status).toBe('ok');
    expect(second.timings.compileCached).toBe(true);
    // The first job's compile stage, and the binary it made: not the first run's leftovers.
    expect(second.compile).toEqual(first.compile);
    expect(text(second.run?.stdout)).toBe(`kept ${nonce} input=two\n`);
    expect(second.timings.guestMs).toBeLessThan(first.timings.guestMs);

    // Test cases run the kept compile too, each in its own copy of it.
    const cases = await run({
      ...poisoner(nonce),
      cases: [Buffer.from('a\n'), Buffer.from('b\n')],
    });
    expect(cases.timings.compileCached).toBe(true);
    expect(cases.cases?.map((c) => text(c.stdout))).toEqual([
      `kept ${nonce} input=a\n`,
      `kept ${nonce} input=b\n`,
    ]);
  });

  it('serves a live job from the kept compile, its warnings streamed in the compile stage', async () => {
    const events: LiveEvent[] = [];
    const result = await engine.run(engine.prepare({ ...poisoner(nonce), live: true }), {
      live: {
        onStart: (controls) => controls.stdinEnd(),
        onEvent: (event) => {
          events.push(event);
        },
      },
    });
    expect(result.status).toBe('ok');
    expect(result.timings.compileCached).toBe(true);
    expect(text(result.compile?.stderr)).toContain('a compile warning to keep');
    let stage: 'compile' | 'run' = 'compile';
    const streamed = { compile: '', run: '' };
    for (const e of events) {
      if (e.type === 'stage') stage = e.stage;
      else streamed[stage] += e.data.toString();
    }
    expect(events.filter((e) => e.type === 'stage').map((e) => `${e.stage} ${e.phase}`)).toEqual([
      'compile start',
      'compile end',
      'run start',
      'run end',
    ]);
    expect(streamed.compile).toContain('a compile warning to keep');
    expect(streamed.run).toBe(`kept ${nonce} input=\n`);
  });

  it('misses for anything that could change the compile: a byte of a source, the compile limits', async () => {
    const changed = poisoner(nonce);
    const file = changed.files[0];
    if (file === undefined) throw new Error('no file');
    const edited = await run({
      ...changed,
      files: [{ ...file, content: `${file.content}// one more line\n` }],
    });
    expect(edited.status).toBe('ok');
    expect(edited.timings.compileCached).toBe(false);

    const limited = await run({ ...poisoner(nonce), compileLimits: { wallTimeMs: 61_000 } });
    expect(limited.status).toBe('ok');
    expect(limited.timings.compileCached).toBe(false);
  });

  it('keeps a compile whose binary is larger than an artefact may carry unpacked (gzipped on the way)', async () => {
    // 12 MiB of initialised data in the binary, like rustc's debug info: over the 8 MiB an
    // artefact carries, a few KiB gzipped.
    const big: JobRequest = {
      language: 'c',
      files: [
        {
          name: 'main.c',
          content: `#include <stdio.h>\nstatic char big[12 << 20] = {1};\nint main(void) { big[(12 << 20) - 1] = 2; printf("big ${nonce} %d\\n", big[0] + big[(12 << 20) - 1]); return 0; }\n`,
        },
      ],
    };
    const first = await run(big);
    expect(first.status, text(first.compile?.stderr)).toBe('ok');
    expect(first.timings.compileCached).toBe(false);
    expect(text(first.run?.stdout)).toBe(`big ${nonce} 3\n`);
    const second = await run(big);
    expect(second.status).toBe('ok');
    expect(second.timings.compileCached).toBe(true);
    expect(text(second.run?.stdout)).toBe(`big ${nonce} 3\n`);
  });

  it('keeps no compile that failed', async () => {
    const broken: JobRequest = {
      language: 'c',
      files: [{ name: 'main.c', content: `int main(void) { return ${nonce}_undefined; }\n` }],
    };
    const a = await run(broken);
    const b = await run(broken);
    expect([a.status, b.status]).toEqual(['compile_error', 'compile_error']);
    expect([a.timings.compileCached, b.timings.compileCached]).toEqual([false, false]);
  });
});
