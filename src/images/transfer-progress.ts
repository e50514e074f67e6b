import cliProgress from 'cli-progress';
import type { ImageManifest } from './manifest.js';

/** Progress of one file of an image transfer. */
export interface TransferProgress {
  readonly direction: 'push' | 'pull';
  readonly kind: ImageManifest['kind'];
  readonly id: string;
  /** The file's name inside the image folder. */
  readonly file: string;
  /** Bytes present at the destination so far (a resumed prefix counts). */
  readonly doneBytes: number;
  readonly totalBytes: number;
}

/** A progress callback; it must not throw (an exception would abort the transfer). */
export type ProgressListener = (progress: TransferProgress) => void;

/** A live set of bars: pass `onProgress` to push/pull, call `stop()` in `finally`. */
export interface TransferProgressRenderer {
  readonly onProgress: ProgressListener;
  stop(): void;
}

export interface RenderOptions {
  /** Where the bars are drawn; stderr by default, so stdout stays clean for scripts. */
  readonly stream?: NodeJS.WritableStream;
  /** Draw even when the stream is not a terminal (plain lines, for logs and tests). */
  readonly noTTYOutput?: boolean;
}

const MIB = 1024 * 1024;

function mib(bytes: number): string {
  return (bytes / MIB).toFixed(1);
}

/**
 * A cli-progress renderer with one bar per transferred file, for `runner images push|pull`.
 * Bars are created on a file's first event and left in place when it completes.
 */
export function renderTransferProgress(options: RenderOptions = {}): TransferProgressRenderer {
  const multibar = new cliProgress.MultiBar(
    {
      format:
        '{direction} {name} [{bar}] {percentage}% | {doneMib}/{totalMib} MiB | {eta_formatted}',
      stream: options.stream ?? process.stderr,
      noTTYOutput: options.noTTYOutput ?? false,
      hideCursor: true,
      clearOnComplete: false,
      autopadding: true,
    },
    cliProgress.Presets.shades_classic,
  );
  const bars = new Map<string, cliProgress.SingleBar>();
  return {
    onProgress: (p) => {
      const name = `${p.kind}/${p.id}/${p.file}`;
      const payload = {
        direction: p.direction,
        name,
        doneMib: mib(p.doneBytes),
        totalMib: mib(p.totalBytes),
      };
      const key = `${p.direction} ${name}`;
      const bar = bars.get(key);
      // cli-progress divides by the total: give an empty file a total of 1, shown as done.
      const total = Math.max(1, p.totalBytes);
      const value = p.totalBytes === 0 ? 1 : p.doneBytes;
      if (bar === undefined) bars.set(key, multibar.create(total, value, payload));
      else bar.update(value, payload);
    },
    stop: () => {
      multibar.stop();
    },
  };
}
