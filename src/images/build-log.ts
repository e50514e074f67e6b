import { spawn } from 'node:child_process';
import { closeSync, openSync, readFileSync, writeSync } from 'node:fs';
import { ImageBuildFailedError, InternalError } from '../errors.js';

/** Options of one command run by the builder. */
export interface RunOptions {
  readonly env?: NodeJS.ProcessEnv;
  readonly cwd?: string;
  readonly signal?: AbortSignal;
}

/**
 * The full log of one image build (debootstrap and apt output included). Every command the
 * builder runs writes its output here, never to the terminal, so that the terminal shows only
 * the progress and a failure can point at this file.
 */
export class BuildLog {
  readonly path: string;
  private fd: number | null;

  constructor(path: string) {
    this.path = path;
    this.fd = openSync(path, 'a', 0o644);
  }

  /** Appends a line (a newline is added). */
  write(line: string): void {
    if (this.fd !== null) writeSync(this.fd, `${line}\n`);
  }

  /** Runs a command with its stdout and stderr going to the log; rejects IMAGE_BUILD_FAILED. */
  run(command: string, args: readonly string[], options: RunOptions = {}): Promise<void> {
    return this.spawnCommand(command, args, options, false).then(() => undefined);
  }

  /** Runs a command and returns its stdout and stderr, also copied to the log. */
  capture(command: string, args: readonly string[], options: RunOptions = {}): Promise<string> {
    return this.spawnCommand(command, args, options, true);
  }

  /** The last `lines` lines of the log, for error messages. */
  tail(lines = 20): string {
    try {
      const text = readFileSync(this.path, 'utf8');
      return text.trimEnd().split('\n').slice(-lines).join('\n');
    } catch {
      return '';
    }
  }

  close(): void {
    if (this.fd !== null) {
      closeSync(this.fd);
      this.fd = null;
    }
  }

  private spawnCommand(
    command: string,
    args: readonly string[],
    options: RunOptions,
    captureOutput: boolean,
  ): Promise<string> {
    const fd = this.fd;
    if (fd === null) return Promise.reject(new InternalError(`build log ${this.path} is closed`));
    this.write(`$ ${[command, ...args].map(shellQuote).join(' ')}`);
    const started = Date.now();
    return new Promise<string>((resolvePromise, reject) => {
      const child = spawn(command, args, {
        cwd: options.cwd,
        env: options.env ?? process.env,
        stdio: ['ignore', captureOutput ? 'pipe' : fd, captureOutput ? 'pipe' : fd],
        signal: options.signal,
        killSignal: 'SIGTERM',
      });
      const chunks: Buffer[] = [];
      const collect = (chunk: Buffer): void => {
        chunks.push(chunk);
        writeSync(fd, chunk);
      };
      child.stdout?.on('data', collect);
      child.stderr?.on('data', collect);
      child.on('error', (err) => {
        this.write(`# failed to run ${command}: ${err.message}`);
        reject(
          new ImageBuildFailedError(`${command}: ${err.message}`, {
            cause: err,
          }),
        );
      });
      child.on('close', (code, signal) => {
        const seconds = ((Date.now() - started) / 1000).toFixed(1);
        this.write(`# exit ${code ?? signal ?? '?'} after ${seconds} s`);
        if (code === 0) {
          resolvePromise(Buffer.concat(chunks).toString('utf8'));
          return;
        }
        reject(
          new ImageBuildFailedError(
            `${command} ${args.slice(0, 3).join(' ')}${args.length > 3 ? ' ...' : ''} ${
              code === null ? `was killed by ${signal ?? 'a signal'}` : `exited with status ${code}`
            }`,
          ),
        );
      });
    });
  }
}

/** Quotes one argument for the log, so that a logged command can be pasted into a shell. */
export function shellQuote(arg: string): string {
  return /^[A-Za-z0-9_./:=@%+,-]+$/.test(arg) ? arg : `'${arg.replace(/'/g, `'\\''`)}'`;
}
