import { spawn } from 'node:child_process';
import { join, resolve } from 'node:path';
import { describe, expect, it, beforeAll } from 'vitest';
import { testDataPaths } from '../../support/paths.js';
import { ensureImages, vmSkipReason } from '../../support/vm.js';

/**
 * `runner run` streams, in a real VM: output appears as the program prints it, and this
 * process's stdin reaches the program as it is written, so an interactive program can be
 * answered line by line. The CLI is a real child process (bin/runner.js from the sources).
 */
const reason = vmSkipReason();
if (reason !== null) console.warn(`tests/integration/cli skipped: ${reason}`);

const RUNNER = join(resolve(import.meta.dirname, '../../..'), 'bin', 'runner.js');

/** Starts `runner run -l python -c CODE --quiet`; stdout chunks are timestamped as they come. */
function runLive(code: string) {
  const paths = testDataPaths();
  const child = spawn(process.execPath, [RUNNER, 'run', '--quiet', '-l', 'python', '-c', code], {
    env: {
      ...process.env,
      RUNNER_FROM_SOURCE: '1',
      RUNNER_DATA_DIR: paths.dataDir,
      RUNNER_IMAGES_DIR: paths.imagesDir,
      RUNNER_QEMU_USER: process.env.RUNNER_QEMU_USER ?? 'runner-vmm',
    },
    stdio: ['pipe', 'pipe', 'pipe'],
  });
  const chunks: { at: number; text: string }[] = [];
  let stderr = '';
  child.stdout.on('data', (d: Buffer) =>
    chunks.push({ at: performance.now(), text: d.toString() }),
  );
  child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
  const exited = new Promise<number | null>((done) => child.once('exit', (code) => done(code)));
  const seen = (text: string, ms = 120_000): Promise<void> =>
    new Promise((done, fail) => {
      const deadline = setTimeout(
        () =>
          fail(
            new Error(`no ${JSON.stringify(text)} in ${JSON.stringify(chunks)}; stderr ${stderr}`),
          ),
        ms,
      );
      const look = (): void => {
        if (
          chunks
            .map((c) => c.text)
            .join('')
            .includes(text)
        ) {
          clearTimeout(deadline);
          done();
        } else setTimeout(look, 20);
      };
      look();
    });
  return { child, chunks, exited, seen, stderr: () => stderr };
}

describe.skipIf(reason !== null)('runner run streams, with live stdin', () => {
  beforeAll(async () => {
    await ensureImages(['python']);
  }, 900_000);

  it('shows output as the program prints it: two chunks with the pause between', async () => {
    const r = runLive(
      'import time\nprint("one", flush=True)\ntime.sleep(1.5)\nprint("two", flush=True)',
    );
    r.child.stdin.end();
    expect(await r.exited).toBe(0);
    const one = r.chunks.find((c) => c.text.includes('one'));
    const two = r.chunks.find((c) => c.text.includes('two'));
    expect(one).toBeDefined();
    expect(two).toBeDefined();
    expect((two?.at ?? 0) - (one?.at ?? 0)).toBeGreaterThan(1000);
  }, 300_000);

  it('an interactive program is answered line by line through the terminal', async () => {
    const r = runLive(
      'while True:\n    try:\n        line = input()\n    except EOFError:\n        break\n    print(line[::-1], flush=True)\nprint("bye", flush=True)',
    );
    r.child.stdin.write('abc\n');
    await r.seen('cba');
    r.child.stdin.write('hello\n');
    await r.seen('olleh');
    r.child.stdin.end();
    expect(await r.exited).toBe(0);
    expect(r.chunks.map((c) => c.text).join('')).toBe('cba\nolleh\nbye\n');
  }, 300_000);
});
