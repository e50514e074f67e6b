import ora, { type Ora } from 'ora';

/** A spinner on stderr for long steps (boots, snapshots); plain lines when stderr is not a TTY. */
export interface Spinner {
  text(line: string): void;
  stop(): void;
}

/** Starts a spinner when `enabled`; otherwise lines go to stderr only when it is not a TTY and enabled. */
export function startSpinner(enabled: boolean): Spinner {
  if (!enabled) return { text: () => undefined, stop: () => undefined };
  if (!process.stderr.isTTY) {
    return { text: (line) => process.stderr.write(`runner: ${line}\n`), stop: () => undefined };
  }
  let spinner: Ora | null = null;
  const started = Date.now();
  return {
    text(line) {
      const elapsed = ((Date.now() - started) / 1000).toFixed(1);
      if (spinner === null) spinner = ora({ stream: process.stderr, text: line }).start();
      else spinner.text = `${line} (${elapsed} s)`;
    },
    stop() {
      spinner?.stop();
      spinner = null;
    },
  };
}
