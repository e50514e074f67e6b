import cliProgress from 'cli-progress';

/** The phases of a rootfs build, in order. */
export const BUILD_PHASES = ['base', 'packages', 'layer', 'mkfs', 'checksum'] as const;
export type BuildPhase = (typeof BUILD_PHASES)[number];

/** What the builder tells its caller while it works. */
export type BuildEvent =
  | { readonly type: 'start'; readonly language: string }
  | { readonly type: 'phase'; readonly language: string; readonly phase: BuildPhase }
  | { readonly type: 'note'; readonly language: string; readonly message: string }
  | {
      readonly type: 'done';
      readonly language: string;
      readonly id: string;
      /** True when the image was already in the store and nothing was built. */
      readonly reused: boolean;
      readonly seconds: number;
    }
  | {
      readonly type: 'failed';
      readonly language: string;
      readonly phase: BuildPhase;
      readonly message: string;
      readonly logPath: string | null;
    };

/** Shows build events to a person; `stop` restores the terminal. */
export interface BuildReporter {
  event(event: BuildEvent): void;
  stop(): void;
}

/** A reporter that shows nothing (library use, tests). */
export const silentReporter: BuildReporter = { event: () => undefined, stop: () => undefined };

/** One bar per image (cli-progress), with the current phase and the elapsed time. */
export class BarReporter implements BuildReporter {
  private readonly multibar: cliProgress.MultiBar;
  private readonly bars = new Map<string, cliProgress.SingleBar>();
  private readonly width: number;

  constructor(stream: NodeJS.WriteStream, languages: readonly string[]) {
    this.width = Math.max(8, ...languages.map((l) => l.length));
    this.multibar = new cliProgress.MultiBar(
      {
        stream,
        format: ' {language} |{bar}| {phase} {duration_formatted}',
        barsize: 20,
        hideCursor: true,
        clearOnComplete: false,
        stopOnComplete: false,
        autopadding: true,
        forceRedraw: true,
      },
      cliProgress.Presets.shades_classic,
    );
  }

  event(event: BuildEvent): void {
    const language = event.language.padEnd(this.width);
    switch (event.type) {
      case 'start':
        this.bars.set(
          event.language,
          this.multibar.create(BUILD_PHASES.length, 0, { language, phase: 'starting' }),
        );
        return;
      case 'phase':
        this.bars.get(event.language)?.update(BUILD_PHASES.indexOf(event.phase), {
          phase: event.phase,
        });
        return;
      case 'note':
        this.multibar.log(`${event.language}: ${event.message}\n`);
        return;
      case 'done': {
        const bar =
          this.bars.get(event.language) ??
          this.multibar.create(BUILD_PHASES.length, 0, { language, phase: '' });
        bar.update(BUILD_PHASES.length, {
          phase: event.reused ? `${event.id} (already built)` : `${event.id} done`,
        });
        bar.stop();
        return;
      }
      case 'failed': {
        const bar = this.bars.get(event.language);
        bar?.update({ phase: `FAILED in ${event.phase}` });
        bar?.stop();
        this.multibar.log(
          `${event.language}: ${event.phase} failed: ${event.message}${event.logPath === null ? '' : ` (log: ${event.logPath})`}\n`,
        );
        return;
      }
    }
  }

  stop(): void {
    this.multibar.stop();
  }
}

/** Plain log lines, for a non-TTY output (CI logs, pipes). */
export class LineReporter implements BuildReporter {
  private readonly started = new Map<string, number>();
  private readonly stream: NodeJS.WritableStream;

  constructor(stream: NodeJS.WritableStream) {
    this.stream = stream;
  }

  event(event: BuildEvent): void {
    const t0 = this.started.get(event.language) ?? Date.now();
    const elapsed = `${((Date.now() - t0) / 1000).toFixed(1)}s`;
    const say = (text: string): void => {
      this.stream.write(`[${event.language} ${elapsed}] ${text}\n`);
    };
    switch (event.type) {
      case 'start':
        this.started.set(event.language, Date.now());
        this.stream.write(`[${event.language}] start\n`);
        return;
      case 'phase':
        say(event.phase);
        return;
      case 'note':
        say(event.message);
        return;
      case 'done':
        say(
          event.reused
            ? `${event.id} already built`
            : `${event.id} done in ${event.seconds.toFixed(1)} s`,
        );
        return;
      case 'failed':
        say(
          `${event.phase} failed: ${event.message}${event.logPath === null ? '' : ` (log: ${event.logPath})`}`,
        );
        return;
    }
  }

  stop(): void {
    // Nothing to restore.
  }
}

/** Bars on a terminal, plain lines elsewhere. */
export function createReporter(
  stream: NodeJS.WriteStream,
  languages: readonly string[],
): BuildReporter {
  return stream.isTTY ? new BarReporter(stream, languages) : new LineReporter(stream);
}
