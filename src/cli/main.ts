import { Command } from '@commander-js/extra-typings';
import { RunnerError } from '../errors.js';
import { registerLanguagesCommand } from './commands/languages.js';
import { registerImagesCommand } from './commands/images.js';
import { registerRunCommand } from './commands/run.js';
import { registerSandboxCommand } from './commands/sandbox.js';
import { ServerUnreachableError } from './client.js';
import { registerBenchCommand } from './commands/bench.js';
import { registerDoctorCommand } from './commands/doctor.js';
import { registerServeCommand } from './commands/serve.js';
import { registerWorkerCommand } from './commands/worker.js';
import { AGENT_VERSION } from '../version.js';

/** Builds the `runner` command tree. Each subcommand lives in ./commands/. */
export function buildProgram(): Command {
  const program = new Command('runner')
    .description(
      'Runner Codes: run untrusted code in many languages, each job in its own throwaway microVM',
    )
    .version(AGENT_VERSION)
    .showHelpAfterError('(run with --help for usage)');
  registerRunCommand(program);
  registerSandboxCommand(program);
  registerDoctorCommand(program);
  registerBenchCommand(program);
  registerLanguagesCommand(program);
  registerImagesCommand(program);
  registerServeCommand(program);
  registerWorkerCommand(program);
  return program;
}

/**
 * Entry point of the `runner` bin: turns RunnerErrors (a client command's included: the
 * server's refusal) and an unreachable server into one clear line and exit status 2.
 */
export async function main(argv: string[] = process.argv): Promise<void> {
  try {
    await buildProgram().parseAsync(argv);
  } catch (err) {
    if (err instanceof RunnerError) {
      process.stderr.write(`runner: ${err.message} [${err.code}]\n`);
      process.exitCode = 2;
      return;
    }
    if (err instanceof ServerUnreachableError) {
      process.stderr.write(`runner: ${err.message}\n`);
      process.exitCode = 2;
      return;
    }
    throw err;
  }
}
