import { Option, type Command } from '@commander-js/extra-typings';
import { readFile } from 'node:fs/promises';
import { basename, extname } from 'node:path';
import { constants as osConstants } from 'node:os';
import { loadSettings } from '../../config/index.js';
import { FileNameInvalidError, LanguageUnknownError, LimitInvalidError } from '../../errors.js';
import type { LanguageRegistry } from '../../languages/index.js';
import {
  createEngine,
  type JobResult,
  type LiveControls,
  type LiveHandlers,
} from '../../pool/index.js';
import type { Limits } from '../../protocol/index.js';
import { startSpinner } from '../progress.js';

/** The exit status `runner run` gives for each job status (the program's own for runtime errors). */
export const RUN_EXIT_CODES = {
  ok: 0,
  compile_error: 1,
  timeout: 124,
  memory_limit: 137,
  output_limit: 141,
  sandbox_error: 70,
} as const;

/** The CLI's exit status for a result: the program's own code, 128+signal, or the table above. */
export function exitCodeFor(result: JobResult): number {
  if (result.status === 'runtime_error') {
    const run = result.run;
    if (run?.exitCode !== null && run?.exitCode !== undefined) return run.exitCode;
    const signo = run?.signal
      ? (osConstants.signals as Record<string, number>)[run.signal]
      : undefined;
    return signo === undefined ? 1 : 128 + signo;
  }
  return RUN_EXIT_CODES[result.status];
}

/** The language of a file from its extension (the definitions' `extension`). */
export function languageForFile(registry: LanguageRegistry, file: string): string {
  const ext = extname(file).slice(1).toLowerCase();
  const aliases: Record<string, string> = {
    cc: 'cpp',
    cxx: 'cpp',
    mjs: 'js',
    cjs: 'js',
    bash: 'sh',
  };
  const wanted = aliases[ext] ?? ext;
  // Where languages share an extension, the usual one (.py is CPython, not PyPy; .c gcc's C).
  const usual: Record<string, string> = {
    py: 'python',
    c: 'c',
    cpp: 'c++',
    sh: 'bash',
    m: 'octave',
  };
  const matches = registry.list().filter((l) => l.definition.extension === wanted);
  const match = matches.find((l) => l.definition.name === usual[wanted]) ?? matches[0];
  if (!match) {
    throw new LanguageUnknownError(
      `cannot tell the language of ${basename(file)} from its extension; pass -l LANGUAGE`,
    );
  }
  return match.definition.name;
}

const intArg =
  (name: string) =>
  (value: string): number => {
    if (!/^\d+$/.test(value))
      throw new LimitInvalidError(
        `${name} must be a positive integer, not ${JSON.stringify(value)}`,
      );
    return Number(value);
  };

async function readStdin(): Promise<Buffer> {
  if (process.stdin.isTTY) return Buffer.alloc(0);
  const chunks: Buffer[] = [];
  for await (const chunk of process.stdin) chunks.push(chunk as Buffer);
  return Buffer.concat(chunks);
}

/** `runner run`: run a file or a snippet in a microVM. */
export function registerRunCommand(program: Command): void {
  program
    .command('run')
    .description(
      "run a program in a throwaway microVM; its stdout, stderr and exit status are the program's",
    )
    .argument('[file]', 'source file to run (the language comes from its extension, or -l)')
    .argument('[args...]', 'arguments for the program (put them after --)')
    .option('-l, --language <name>', 'language name or alias (python, js, c++, ...)')
    .option('-c, --code <code>', 'run this code instead of a file')
    .option('--version-req <version>', 'language version to require (e.g. 3.11)')
    .option(
      '--stdin <text>',
      'give this as stdin (default: the stdin of runner when it is not a terminal)',
    )
    .option('--wall-time-ms <ms>', 'run wall-time limit', intArg('--wall-time-ms'))
    .option('--cpu-time-ms <ms>', 'run CPU-time limit', intArg('--cpu-time-ms'))
    .option('--memory-mib <mib>', 'run memory limit', intArg('--memory-mib'))
    .option('--processes <n>', 'run process limit', intArg('--processes'))
    .option('--output-bytes <n>', 'cap on stdout and on stderr, each', intArg('--output-bytes'))
    .option(
      '--compile-wall-time-ms <ms>',
      'compile wall-time limit',
      intArg('--compile-wall-time-ms'),
    )
    .option('--compile-memory-mib <mib>', 'compile memory limit', intArg('--compile-memory-mib'))
    .option(
      '--json',
      'print the whole result as JSON (output base64-decoded into stdout/stderr text fields too)',
    )
    .addOption(new Option('--quiet', 'no progress on stderr'))
    .addHelpText(
      'after',
      `
Exit status: the program's own; 128+N when it died by signal N; ${RUN_EXIT_CODES.compile_error} on a compile error;
${RUN_EXIT_CODES.timeout} on a timeout; ${RUN_EXIT_CODES.memory_limit} at the memory limit; ${RUN_EXIT_CODES.output_limit} at the output cap;
${RUN_EXIT_CODES.sandbox_error} when the sandbox failed; 2 for a bad command line or a missing image.

Examples:
  runner run hello.py
  runner run -l python -c 'print(sum(range(10)))'
  echo 3 | runner run main.c -- --verbose
  runner run --json -l bash -c 'echo hi; exit 3'`,
    )
    .action(async (file, args, opts) => {
      const settings = loadSettings();
      const spinner = startSpinner(opts.quiet !== true && opts.json !== true);
      const engine = await createEngine(settings, { log: (l) => spinner.text(l) });
      try {
        let language: string;
        let files: { name?: string; content: string; encoding: 'utf8' | 'base64' }[];
        if (opts.code !== undefined) {
          if (!opts.language) throw new LanguageUnknownError('-c needs -l LANGUAGE');
          language = opts.language;
          files = [{ content: opts.code, encoding: 'utf8' }];
          if (file !== undefined) args = [file, ...args];
        } else {
          if (file === undefined)
            throw new FileNameInvalidError(
              'give a FILE to run, or -l LANGUAGE -c CODE (see runner run --help)',
            );
          language = opts.language ?? languageForFile(engine.languages, file);
          const content = await readFile(file).catch((err: unknown) => {
            throw new FileNameInvalidError(
              `cannot read ${file}: ${err instanceof Error ? err.message : String(err)}`,
            );
          });
          const def = engine.languages.get(language).definition;
          // Keep the file's own name when it fits the language (Java needs Main.java to hold Main).
          const name = extname(file).slice(1) === def.extension ? basename(file) : def.sourceFile;
          files = [{ name, content: content.toString('base64'), encoding: 'base64' }];
        }
        const runLimits: Partial<Limits> = {
          ...(opts.wallTimeMs !== undefined && { wallTimeMs: opts.wallTimeMs }),
          ...(opts.cpuTimeMs !== undefined && { cpuTimeMs: opts.cpuTimeMs }),
          ...(opts.memoryMib !== undefined && { memoryMib: opts.memoryMib }),
          ...(opts.processes !== undefined && { processes: opts.processes }),
          ...(opts.outputBytes !== undefined && { outputBytes: opts.outputBytes }),
        };
        const compileLimits: Partial<Limits> = {
          ...(opts.compileWallTimeMs !== undefined && { wallTimeMs: opts.compileWallTimeMs }),
          ...(opts.compileMemoryMib !== undefined && { memoryMib: opts.compileMemoryMib }),
          ...(opts.outputBytes !== undefined && { outputBytes: opts.outputBytes }),
        };
        // Live unless --json: output as the program prints it, this process's stdin passed
        // through as it comes (so an interactive program can be played), Ctrl-C passed on.
        const live = opts.json !== true;
        const stdin =
          opts.stdin !== undefined
            ? Buffer.from(opts.stdin)
            : live
              ? Buffer.alloc(0)
              : await readStdin();
        const job = engine.prepare({
          language,
          ...(opts.versionReq !== undefined && { version: opts.versionReq }),
          files,
          stdin,
          args,
          runLimits,
          compileLimits,
          live,
        });
        spinner.text(`starting a ${job.language} VM for job ${job.id}`);
        const streamed = live ? liveTerminal(opts.stdin !== undefined, () => spinner.stop()) : null;
        let result: JobResult;
        try {
          result = await engine.run(job, streamed === null ? {} : { live: streamed.handlers });
        } finally {
          streamed?.close();
        }
        spinner.stop();
        if (opts.json) {
          process.stdout.write(`${JSON.stringify(withText(result), null, 2)}\n`);
        } else {
          if (result.compile && result.compile.status !== 'ok') {
            process.stderr.write(Buffer.from(result.compile.stdout, 'base64'));
            process.stderr.write(Buffer.from(result.compile.stderr, 'base64'));
          }
          // Live, the run's output was written as it came.
          if (result.run && streamed === null) {
            process.stdout.write(Buffer.from(result.run.stdout, 'base64'));
            process.stderr.write(Buffer.from(result.run.stderr, 'base64'));
          }
          if (result.status !== 'ok' && result.status !== 'runtime_error') {
            const stage = result.run ?? result.compile;
            process.stderr.write(
              `runner: ${result.status}${stage?.message ? `: ${stage.message}` : ''}\n`,
            );
          }
        }
        process.exitCode = exitCodeFor(result);
      } finally {
        spinner.stop();
        await engine.close();
      }
    });
}

/**
 * The terminal's side of a live job: the run stage's output written as it comes (waiting for
 * the terminal to take it: back-pressure to the VM), the compile stage's kept for a failure;
 * stdin passed through chunk by chunk (unless `--stdin` gave it whole); SIGINT passed on to
 * the program instead of ending this process.
 */
function liveTerminal(
  stdinGiven: boolean,
  onFirst: () => void,
): { handlers: LiveHandlers; close(): void } {
  let stage: 'compile' | 'run' = 'run';
  let first = true;
  let controls: LiveControls | undefined;
  const write = (out: NodeJS.WriteStream, data: Buffer): Promise<void> =>
    new Promise((resolve) => {
      if (out.write(data)) resolve();
      else out.once('drain', () => resolve());
    });
  const onData = (chunk: Buffer): void => {
    if (controls === undefined) return;
    process.stdin.pause();
    void controls.stdin(chunk).then(() => process.stdin.resume());
  };
  const onEnd = (): void => controls?.stdinEnd();
  const onSigint = (): void => controls?.signal('SIGINT');
  const handlers: LiveHandlers = {
    onStart: (c) => {
      controls = c;
      process.on('SIGINT', onSigint);
      if (stdinGiven) {
        c.stdinEnd();
        return;
      }
      process.stdin.on('data', onData);
      process.stdin.once('end', onEnd);
      process.stdin.resume();
    },
    onEvent: async (event) => {
      if (first) {
        first = false;
        onFirst();
      }
      if (event.type === 'stage') {
        stage = event.stage;
        return;
      }
      // A compile's output is shown only when it fails (from the result, as without live).
      if (stage === 'compile') return;
      await write(event.stream === 'stdout' ? process.stdout : process.stderr, event.data);
    },
  };
  return {
    handlers,
    close: () => {
      process.off('SIGINT', onSigint);
      process.stdin.off('data', onData);
      process.stdin.off('end', onEnd);
      process.stdin.pause();
      if (!process.stdin.isTTY) process.stdin.destroy();
    },
  };
}

/** The result with each stage's output also decoded as UTF-8 text (for people reading --json). */
function withText(result: JobResult): unknown {
  const stage = (s: JobResult['run']) =>
    s && {
      ...s,
      stdoutText: Buffer.from(s.stdout, 'base64').toString('utf8'),
      stderrText: Buffer.from(s.stderr, 'base64').toString('utf8'),
    };
  return { ...result, compile: stage(result.compile), run: stage(result.run) };
}
