import { spawn } from 'node:child_process';
import { existsSync, mkdirSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { ImageBuildFailedError } from '../errors.js';
import { projectRoot } from './agent-bundle.js';

/** Where the helper's source lives in this tree. */
export function execHelperSource(root: string = projectRoot()): string {
  return join(root, 'src', 'agent', 'native', 'runner-exec.c');
}

/**
 * Compiles the guest's exec helper (src/agent/native/runner-exec.c: the one static exec
 * between the agent and a job's program, and the reseed after a restore) with the host's gcc,
 * statically linked so it needs nothing from the image, into `outFile`. About a second; the
 * output depends only on the source and the compiler, and the rootfs identity covers its bytes.
 * IMAGE_BUILD_FAILED, saying what to install, when gcc or the static C library is missing.
 */
export async function buildExecHelper(
  outFile: string,
  root: string = projectRoot(),
): Promise<string> {
  const source = execHelperSource(root);
  if (!existsSync(source)) {
    throw new ImageBuildFailedError(`cannot build the exec helper: ${source} does not exist`);
  }
  mkdirSync(dirname(outFile), { recursive: true });
  const args = ['-static', '-Os', '-s', '-Wall', '-Wextra', '-Werror', '-o', outFile, source];
  const output = await new Promise<string>((resolve, reject) => {
    const child = spawn('gcc', args, { stdio: ['ignore', 'pipe', 'pipe'] });
    const chunks: Buffer[] = [];
    child.stdout.on('data', (c: Buffer) => chunks.push(c));
    child.stderr.on('data', (c: Buffer) => chunks.push(c));
    child.on('error', (err) =>
      reject(
        new ImageBuildFailedError(
          `cannot run gcc to build the exec helper (${err.message}): install gcc and libc6-dev (bash scripts/setup.sh does)`,
          { cause: err },
        ),
      ),
    );
    child.on('close', (code) => {
      const text = Buffer.concat(chunks).toString('utf8');
      if (code === 0) resolve(text);
      else
        reject(
          new ImageBuildFailedError(
            `building the exec helper failed (gcc exit ${code ?? 'signal'}; the static C library comes with libc6-dev):\n${text.trim()}`,
          ),
        );
    });
  });
  if (!existsSync(outFile)) {
    throw new ImageBuildFailedError(`gcc wrote no ${outFile}: ${output.trim()}`);
  }
  return outFile;
}
