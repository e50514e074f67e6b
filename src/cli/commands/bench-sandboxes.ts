import { randomBytes } from 'node:crypto';
import { statSync } from 'node:fs';
import { join } from 'node:path';
import type { Engine } from '../../pool/index.js';
import { quantiles, type Quantiles } from './bench.js';

/** What `runner bench --sandboxes` measured, each a median and p95 over its samples. */
export interface SandboxBenchReport {
  readonly language: string;
  readonly rounds: number;
  /** Create to a running sandbox (a pool miss when the pool holds no ready VM). */
  readonly createMs: Quantiles;
  /** The first cell of a sandbox: its interpreter starts. */
  readonly firstCellMs: Quantiles;
  /** A later cell (`x + 1`): the interpreter is warm. */
  readonly cellMs: Quantiles;
  /** `true` as a command. */
  readonly commandMs: Quantiles;
  /** Writing then reading back 1 MiB. */
  readonly writeMiBMs: Quantiles;
  readonly readMiBMs: Quantiles;
  readonly pauseMs: Quantiles;
  readonly resumeMs: Quantiles;
  /** The snapshot of a paused sandbox, in MiB. */
  readonly pausedSnapshotMib: Quantiles;
  readonly killMs: Quantiles;
}

/**
 * Times the life of `rounds` sandboxes one after another, each through the engine's own
 * service: create, cells, a command, 1 MiB written and read, pause, resume, kill.
 */
export async function benchSandboxes(
  engine: Engine,
  options: { language: string; rounds: number; progress: (line: string) => void },
): Promise<SandboxBenchReport> {
  const s = engine.sandboxes;
  const samples: Record<Exclude<keyof SandboxBenchReport, 'language' | 'rounds'>, number[]> = {
    createMs: [],
    firstCellMs: [],
    cellMs: [],
    commandMs: [],
    writeMiBMs: [],
    readMiBMs: [],
    pauseMs: [],
    resumeMs: [],
    pausedSnapshotMib: [],
    killMs: [],
  };
  const time = async <T>(into: number[], fn: () => Promise<T>): Promise<T> => {
    const started = performance.now();
    const out = await fn();
    into.push(performance.now() - started);
    return out;
  };
  const data = randomBytes(1024 * 1024);
  for (let round = 1; round <= options.rounds; round++) {
    options.progress(`sandbox ${round}/${options.rounds}: create`);
    const info = await time(samples.createMs, () =>
      s.create({ language: options.language, owner: null }),
    );
    try {
      options.progress(`sandbox ${round}/${options.rounds}: cells`);
      await time(samples.firstCellMs, () => s.runCell(info.id, null, { code: 'x = 1' }));
      for (let i = 0; i < 5; i++)
        await time(samples.cellMs, () => s.runCell(info.id, null, { code: 'x + 1' }));
      for (let i = 0; i < 5; i++)
        await time(
          samples.commandMs,
          async () => (await s.command(info.id, null, { cmd: 'true' })).done,
        );
      options.progress(`sandbox ${round}/${options.rounds}: files`);
      await time(samples.writeMiBMs, () => s.writeFile(info.id, null, 'bench.bin', data));
      await time(samples.readMiBMs, async () => {
        let n = 0;
        for await (const chunk of await s.readFile(info.id, null, 'bench.bin')) n += chunk.length;
        return n;
      });
      options.progress(`sandbox ${round}/${options.rounds}: pause and resume`);
      await time(samples.pauseMs, () => s.pause(info.id, null));
      const dir = engine.settings.sandboxesDir ?? join(engine.paths.dataDir, 'sandboxes');
      samples.pausedSnapshotMib.push(statSync(join(dir, info.id, 'vm.snap')).size / 1048576);
      await time(samples.resumeMs, () => s.resume(info.id, null));
    } finally {
      options.progress(`sandbox ${round}/${options.rounds}: kill`);
      await time(samples.killMs, () => s.kill(info.id, null));
    }
  }
  const q = Object.fromEntries(
    Object.entries(samples).map(([k, v]) => [k, quantiles(v)]),
  ) as Record<keyof typeof samples, Quantiles>;
  return { language: options.language, rounds: options.rounds, ...q };
}

/** The report as the table `runner bench --sandboxes` prints. */
export function sandboxBenchTable(r: SandboxBenchReport): string {
  const row = (name: string, q: Quantiles): string =>
    `${name.padEnd(30)} ${String(q.p50).padStart(9)} ${String(q.p95).padStart(9)} ${String(q.n).padStart(4)}`;
  return [
    `runner bench --sandboxes: ${r.language}, ${r.rounds} sandboxes one after another`,
    `${'measure (ms)'.padEnd(30)} ${'p50'.padStart(9)} ${'p95'.padStart(9)} ${'n'.padStart(4)}`,
    row('create', r.createMs),
    row('first cell (interpreter start)', r.firstCellMs),
    row('cell', r.cellMs),
    row('command (true)', r.commandMs),
    row('write 1 MiB', r.writeMiBMs),
    row('read 1 MiB', r.readMiBMs),
    row('pause', r.pauseMs),
    row('  paused snapshot (MiB)', r.pausedSnapshotMib),
    row('resume', r.resumeMs),
    row('kill', r.killMs),
    '',
  ].join('\n');
}
