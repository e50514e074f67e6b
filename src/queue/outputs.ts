/**
 * What the job store keeps of a job's output. A result carries every stream twice (base64 and
 * text), so a job at its output limits weighs tens of MiB; the store keeps none of it for a
 * synchronous job (the client got it in the response) and at most a cap for a polled one.
 */

/** The output fields of one stage, as the API shows them (StageView in src/api/schemas.ts). */
export interface StoredStage {
  readonly stdout: string;
  readonly stderr: string;
  readonly stdoutText: string | null;
  readonly stderrText: string | null;
  readonly stdoutTruncated: boolean;
  readonly stderrTruncated: boolean;
}

/**
 * How much output a stored result kept: `none` (a synchronous job's record), `trimmed` (cut to
 * the per-job cap; the trimmed streams say `*Truncated: true`). Absent: all of it.
 */
export type StoredOutput = 'none' | 'trimmed';

/** The parts of a result (ExecuteResponse in src/api/schemas.ts) that hold output. */
export interface ResultWithOutput {
  readonly compile: StoredStage | null;
  readonly run: StoredStage | null;
  readonly testCases?: readonly { readonly run: StoredStage | null }[];
  readonly storedOutput?: StoredOutput;
}

const utf8 = new TextDecoder('utf-8', { fatal: true });

function textOrNull(bytes: Buffer): string | null {
  try {
    return utf8.decode(bytes);
  } catch {
    return null;
  }
}

/** Applies `f` to every stage of `result`; the rest of the result is kept as it is. */
function mapStages<T extends ResultWithOutput>(
  result: T,
  f: (stage: StoredStage) => StoredStage,
  storedOutput: StoredOutput,
): T {
  const g = <S extends StoredStage | null>(s: S): S => (s === null ? s : (f(s) as S));
  return {
    ...result,
    compile: g(result.compile),
    run: g(result.run),
    ...(result.testCases && { testCases: result.testCases.map((c) => ({ ...c, run: g(c.run) })) }),
    storedOutput,
  };
}

/** `result` without its output, flagged `storedOutput: 'none'` (the shape stays valid). */
export function withoutOutput<T extends ResultWithOutput>(result: T): T {
  return mapStages(
    result,
    (s) => ({ ...s, stdout: '', stderr: '', stdoutText: null, stderrText: null }),
    'none',
  );
}

/** The first `n` bytes of `bytes`, backed off so that no UTF-8 character is cut in two. */
function cutUtf8(bytes: Buffer, n: number): Buffer {
  if (n >= bytes.length) return bytes;
  let end = n;
  // A continuation byte (10xxxxxx) at the cut belongs to a character that starts before it.
  while (end > 0 && end > n - 3 && ((bytes[end] ?? 0) & 0xc0) === 0x80) end--;
  return bytes.subarray(0, end);
}

/**
 * The largest per-stream size L (bytes) so that the streams, each cut to L, fit in `budget`:
 * short streams keep all they have and leave the rest to the long ones.
 */
function fairShare(sizes: readonly number[], budget: number): number {
  const sorted = [...sizes].sort((a, b) => a - b);
  let left = budget;
  for (let i = 0; i < sorted.length; i++) {
    const size = sorted[i] ?? 0;
    const share = Math.floor(left / (sorted.length - i));
    if (size > share) return share;
    left -= size;
  }
  return Number.POSITIVE_INFINITY;
}

function stagesOf(result: ResultWithOutput): StoredStage[] {
  const all = [result.compile, result.run, ...(result.testCases ?? []).map((c) => c.run)];
  return all.filter((s): s is StoredStage => s !== null);
}

const jsonBytes = (value: unknown): number => Buffer.byteLength(JSON.stringify(value));

/**
 * `result` with its output cut so that its JSON is at most `maxBytes`: every stream gets a fair
 * share (a short one keeps all), is cut on a UTF-8 character boundary (so the text stays text
 * and the base64 stays valid), and says `*Truncated: true`; the result says `storedOutput:
 * 'trimmed'`. A result that fits is returned as it is. Only what is not output (test case
 * verdicts, timings) can keep it over the cap.
 */
export function fitOutput<T extends ResultWithOutput>(result: T, maxBytes: number): T {
  const stages = stagesOf(result);
  // The base64 alone is over: skip serializing the whole result just to learn so.
  const base64Chars = stages.reduce((n, s) => n + s.stdout.length + s.stderr.length, 0);
  if (base64Chars <= maxBytes && jsonBytes(result) <= maxBytes) return result;
  const empty = withoutOutput(result);
  const sizes = stages.flatMap((s) => [
    Buffer.byteLength(s.stdout, 'base64'),
    Buffer.byteLength(s.stderr, 'base64'),
  ]);
  // Each kept byte costs about 4/3 (base64) + 1 (text), more where JSON escapes the text;
  // the measure below halves the budget until it fits.
  let budget = Math.max(0, Math.floor(((maxBytes - jsonBytes(empty)) * 3) / 7));
  for (;;) {
    const share = fairShare(sizes, budget);
    const trimmed = mapStages(
      result,
      (s) => {
        const out: { -readonly [K in keyof StoredStage]: StoredStage[K] } = { ...s };
        for (const key of ['stdout', 'stderr'] as const) {
          const bytes = Buffer.from(s[key], 'base64');
          if (bytes.length <= share) continue;
          const kept = cutUtf8(bytes, share);
          out[key] = kept.toString('base64');
          out[key === 'stdout' ? 'stdoutText' : 'stderrText'] = textOrNull(kept);
          out[key === 'stdout' ? 'stdoutTruncated' : 'stderrTruncated'] = true;
        }
        return out;
      },
      'trimmed',
    );
    if (budget === 0 || jsonBytes(trimmed) <= maxBytes) return trimmed;
    budget = Math.floor(budget / 2);
  }
}
