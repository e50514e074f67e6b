import { spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { cpus, tmpdir } from 'node:os';
import { join } from 'node:path';
import { expandCommand, findExecutable } from '../../agent/executor.js';
import { ImageStore } from '../../images/store.js';
import { testProgramFile, type Language } from '../../languages/index.js';
import type { Engine, JobRequest, JobResult } from '../../pool/index.js';
import { quantiles } from './bench.js';

/** One language's row of `runner bench --all`. */
export interface LanguageBenchRow {
  readonly language: string;
  readonly aliases: readonly string[];
  readonly judge0Id: number | null;
  /** The image layer (its family's, or its own), its id and its size. */
  readonly layer: string;
  readonly layerId: string | null;
  readonly layerMib: number | null;
  /** As the image's build read it from the toolchain. */
  readonly version: string;
  readonly compiled: boolean;
  /** The status of the jobs (ok, or the first one that was not). */
  readonly status: string;
  /** A job on a VM restored for it (after the layer's snapshot exists). */
  readonly poolMissMs: number | null;
  /** Median of the jobs that found a ready VM. */
  readonly poolHitMs: number | null;
  readonly hits: number;
  /**
   * Of those hits, how many compiled on the language's compile server (docs/agent.md,
   * "Compile servers"); absent for a language without one.
   */
  readonly served?: number;
  /** Medians over the pool hits of the compile stage's and the run stage's wall time, in ms. */
  readonly hitCompileMs?: number | null;
  readonly hitRunMs?: number | null;
  /**
   * A compiled language: median of the pool hits that ran a kept compile (the compile cache's
   * hit: the compile stage is skipped). The other figures compile every time.
   */
  readonly cachedHitMs: number | null;
  /** The same program run on the host, where the host has the interpreter (never compiled). */
  readonly nativeMs: number | null;
  readonly hitVsNative: number | null;
}

/** What `runner bench --all` measured. */
export interface LanguagesBenchReport {
  readonly machine: { cpus: number; cpuModel: string; accel: string; vmm: string };
  readonly rows: readonly LanguageBenchRow[];
}

const round = (n: number): number => Math.round(n * 10) / 10;

/**
 * The language's own test program as a job (its stdin too); `cached` false makes it compile
 * for real, neither using nor filling the compile cache.
 */
function testJob(language: Language, cached = false): JobRequest {
  const { definition } = language;
  return {
    language: definition.name,
    files: [testProgramFile(language)],
    ...(definition.test.stdin !== undefined && { stdin: Buffer.from(definition.test.stdin) }),
    ...(!cached && { compileCache: false }),
  };
}

/** Median wall time of the test program run on the host, or null when the host cannot. */
async function nativeMs(language: Language, runs: number): Promise<number | null> {
  const { definition } = language;
  if (definition.compile !== null) return null;
  const first = definition.run[0];
  if (first === undefined || (await findExecutable(first, process.env.PATH ?? '')) === null)
    return null;
  const dir = mkdtempSync(join(tmpdir(), 'runner-native-'));
  try {
    const file = testProgramFile(language);
    writeFileSync(join(dir, file.name), file.content);
    const argv = expandCommand(definition.run, [file.name], definition.extension);
    const times: number[] = [];
    for (let i = 0; i < runs; i++) {
      const started = process.hrtime.bigint();
      const r = spawnSync(argv[0] as string, argv.slice(1), {
        cwd: dir,
        input: definition.test.stdin ?? '',
        stdio: ['pipe', 'ignore', 'ignore'],
        env: { ...process.env, ...definition.env },
      });
      if (r.status !== 0) return null;
      times.push(Number(process.hrtime.bigint() - started) / 1e6);
    }
    return quantiles(times).p50;
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

/**
 * Every language's test program, one language after another: one job on a freshly restored VM
 * (a pool miss; the layer's snapshot is made first when missing, and not timed), then `jobs`
 * jobs that each find a ready VM (pool hits), all compiling for real; for a compiled language,
 * then one job that fills the compile cache and `jobs` that hit it; then the pool stops
 * keeping that language ready.
 */
export async function benchLanguages(
  engine: Engine,
  options: {
    languages: readonly Language[];
    jobs: number;
    progress: (line: string) => void;
  },
): Promise<LanguagesBenchReport> {
  const store = new ImageStore(engine.paths.imagesDir);
  const rows: LanguageBenchRow[] = [];
  for (const [i, language] of options.languages.entries()) {
    const { definition } = language;
    const name = definition.name;
    const step = `${i + 1}/${options.languages.length} ${name}`;
    const image = await store.latest('rootfs', name);
    let status = 'ok';
    let miss: number | null = null;
    const hits: number[] = [];
    const hitCompile: number[] = [];
    const hitRun: number[] = [];
    let served = 0;
    const cachedHits: number[] = [];
    try {
      options.progress(`${step}: snapshot`);
      await engine.snapshots.ensure(name);
      options.progress(`${step}: pool miss`);
      const first = await engine.run(engine.prepare(testJob(language)));
      if (first.status !== 'ok') status = first.status;
      else if (!first.timings.poolHit) miss = first.timings.totalMs;
      const onReadyVm = async (cached: boolean): Promise<JobResult> => {
        // Up to 60 s: a VM is ready after its warm-up (a compile server starts in ~10 s under TCG).
        for (let w = 0; w < 3000 && (engine.pool.stats().ready[name] ?? 0) === 0; w++)
          await new Promise((r) => setTimeout(r, 20));
        return engine.run(engine.prepare(testJob(language, cached)));
      };
      if (status === 'ok') {
        await engine.pool.warm(name);
        for (let j = 0; j < options.jobs && status === 'ok'; j++) {
          options.progress(`${step}: pool hit ${j + 1}/${options.jobs}`);
          const r = await onReadyVm(false);
          if (r.status !== 'ok') status = r.status;
          else if (r.timings.poolHit) {
            hits.push(r.timings.totalMs);
            if (r.timings.compileServed === true) served++;
            if (r.compile) hitCompile.push(r.compile.wallTimeMs);
            if (r.run) hitRun.push(r.run.wallTimeMs);
          }
        }
      }
      if (status === 'ok' && definition.compile !== null) {
        // One job fills the compile cache (a kept compile may be there already), then hits.
        options.progress(`${step}: compile cache`);
        const filled = await onReadyVm(true);
        if (filled.status !== 'ok') status = filled.status;
        for (let j = 0; j < options.jobs && status === 'ok'; j++) {
          options.progress(`${step}: compile cache hit ${j + 1}/${options.jobs}`);
          const r = await onReadyVm(true);
          if (r.status !== 'ok') status = r.status;
          else if (r.timings.poolHit && r.timings.compileCached === true)
            cachedHits.push(r.timings.totalMs);
        }
      }
    } catch (err) {
      status = `error: ${err instanceof Error ? err.message : String(err)}`.slice(0, 200);
    } finally {
      await engine.pool.cool(name);
    }
    const hit = hits.length > 0 ? quantiles(hits).p50 : null;
    const native = await nativeMs(language, Math.max(3, options.jobs));
    rows.push({
      language: name,
      aliases: definition.aliases,
      judge0Id: definition.judge0Id ?? null,
      layer: definition.layer ?? name,
      layerId: image?.manifest.id ?? null,
      layerMib: image === undefined ? null : round(image.manifest.totalSizeBytes / 1048576),
      version: image?.manifest.versions?.[name] ?? image?.manifest.toolchainVersion ?? '-',
      compiled: definition.compile !== null,
      status,
      poolMissMs: miss,
      poolHitMs: hit,
      hits: hits.length,
      ...(definition.compileServer !== undefined && { served }),
      hitCompileMs: hitCompile.length > 0 ? quantiles(hitCompile).p50 : null,
      hitRunMs: hitRun.length > 0 ? quantiles(hitRun).p50 : null,
      cachedHitMs: cachedHits.length > 0 ? quantiles(cachedHits).p50 : null,
      nativeMs: native === null ? null : round(native),
      hitVsNative: hit !== null && native !== null && native > 0 ? round(hit / native) : null,
    });
  }
  return {
    machine: {
      cpus: cpus().length,
      cpuModel: cpus()[0]?.model ?? 'unknown',
      accel: engine.accel?.accel ?? engine.settings.accel,
      vmm: engine.driver.name,
    },
    rows,
  };
}

const ms = (v: number | null | undefined): string => (v == null ? '-' : String(Math.round(v)));
// undefined too: a report from before the compile cache has no cachedHitMs.
const withMs = (v: number | null | undefined): string => (v == null ? '-' : `${Math.round(v)} ms`);

/** The report as a plain table, one row per language. */
export function languagesBenchTable(report: LanguagesBenchReport): string {
  const m = report.machine;
  const lines = [
    `runner bench --all: ${report.rows.length} languages, ${m.vmm} (${m.accel}), ${m.cpus} × ${m.cpuModel}`,
    `${'language'.padEnd(14)} ${'layer'.padEnd(10)} ${'version'.padEnd(10)} ${'miss ms'.padStart(8)} ${'hit ms'.padStart(8)} ${'cached'.padStart(7)} ${'native'.padStart(7)} ${'ratio'.padStart(6)}  status`,
  ];
  for (const r of report.rows) {
    lines.push(
      `${r.language.padEnd(14)} ${r.layer.padEnd(10)} ${r.version.padEnd(10)} ${ms(r.poolMissMs).padStart(8)} ${ms(r.poolHitMs).padStart(8)} ${ms(r.cachedHitMs).padStart(7)} ${ms(r.nativeMs).padStart(7)} ${(r.hitVsNative === null ? '-' : `${r.hitVsNative}x`).padStart(6)}  ${r.status}`,
    );
  }
  return `${lines.join('\n')}\n`;
}

/** The report as the Markdown table of docs/languages.md. */
export function languagesBenchMarkdown(report: LanguagesBenchReport): string {
  const m = report.machine;
  const lines = [
    `Measured with \`runner bench --all --markdown\` on ${m.cpus} × ${m.cpuModel}, ${m.vmm} (${m.accel}). The times are of the language's own test program (compile and run), through the engine: a pool miss restores a VM for the job, a pool hit finds one ready (median), both compiling for real; compile cached is a pool hit that runs a kept compile (median).`,
    '',
    '| language | aliases | Judge0 id | version | layer | layer size | pool miss | pool hit | compile cached | status |',
    '|---|---|---|---|---|---|---|---|---|---|',
  ];
  for (const r of report.rows) {
    lines.push(
      `| ${r.language} | ${r.aliases.join(', ') || '-'} | ${r.judge0Id ?? '-'} | ${r.version} | ${r.layer} | ${r.layerMib === null ? '-' : `${Math.round(r.layerMib)} MiB`} | ${withMs(r.poolMissMs)} | ${withMs(r.poolHitMs)} | ${withMs(r.cachedHitMs)} | ${r.status} |`,
    );
  }
  return `${lines.join('\n')}\n`;
}
