import { spawn } from 'node:child_process';
import { existsSync, mkdirSync, statSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { ImageBuildFailedError } from '../errors.js';

/** The root of this source tree (src/images/ and dist/images/ both sit two levels below it). */
export function projectRoot(): string {
  return resolve(fileURLToPath(new URL('../..', import.meta.url)));
}

/**
 * Bundles the guest agent with `scripts/bundle-agent.mjs` into `outFile` and returns its path.
 * Fails with IMAGE_BUILD_FAILED, saying how to pass a ready bundle instead, when the agent's
 * sources are not there.
 */
export async function bundleAgent(outFile: string, root: string = projectRoot()): Promise<string> {
  const script = join(root, 'scripts', 'bundle-agent.mjs');
  const entry = join(root, 'src', 'agent', 'main.ts');
  if (!existsSync(script) || !existsSync(entry)) {
    throw new ImageBuildFailedError(
      `cannot bundle the agent: ${existsSync(script) ? entry : script} does not exist (pass --agent-bundle FILE)`,
    );
  }
  mkdirSync(dirname(outFile), { recursive: true });
  const output = await new Promise<string>((resolvePromise, reject) => {
    const child = spawn(process.execPath, [script, outFile], {
      cwd: root,
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    const chunks: Buffer[] = [];
    child.stdout.on('data', (c: Buffer) => chunks.push(c));
    child.stderr.on('data', (c: Buffer) => chunks.push(c));
    child.on('error', reject);
    child.on('close', (code) => {
      const text = Buffer.concat(chunks).toString('utf8');
      if (code === 0) resolvePromise(text);
      else
        reject(
          new ImageBuildFailedError(
            `bundling the agent failed (exit ${code ?? 'signal'}):\n${text.trim()}`,
          ),
        );
    });
  });
  if (!existsSync(outFile) || statSync(outFile).size === 0) {
    throw new ImageBuildFailedError(`the agent bundler wrote no ${outFile}: ${output.trim()}`);
  }
  return outFile;
}
