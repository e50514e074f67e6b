import type { Command } from '@commander-js/extra-typings';
import { spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { cpus, tmpdir, totalmem } from 'node:os';
import { join } from 'node:path';
import { loadSettings } from '../../config/index.js';
import { LanguageUnknownError, LimitInvalidError, SandboxFailureError } from '../../errors.js';
import { createEngine, type Engine, type JobRequest } from '../../pool/index.js';
import { startSpinner } from '../progress.js';
import { benchLanguages, languagesBenchMarkdown, languagesBenchTable } from './bench-languages.js';
import { benchSandboxes, sandboxBenchTable } from './bench-sandboxes.js';
import type { MicroVm } from '../../vmm/index.js';

/** Median and 95th percentile of a sample, in ms. */
export interface Quantiles {
  p50: number;
  p95: number;
  n: number;
}

/** Nearest-rank quantiles (no interpolation: every reported figure was really measured). */
export function quantiles(samples: readonly number[]): Quantiles {
  if (samples.length === 0) return { p50: NaN, p95: NaN, n: 0 };
  const sorted = [...samples].sort((a, b) => a - b);
  const at = (q: number): number =>
    sorted[Math.min(sorted.length - 1, Math.max(0, Math.ceil(q * sorted.length) - 1))] as number;
  return { p50: round(at(0.5)), p95: round(at(0.95)), n: sorted.length };
}

const round = (x: number): number => Math.round(x * 10) / 10;

/** One row of a bench table: the measure's name, then its p50, p95 and sample count. */
export function benchRow(name: string, q: Quantiles, width: number): string {
  return `${name.padEnd(width)} ${String(q.p50).padStart(9)} ${String(q.p95).padStart(9)} ${String(q.n).padStart(4)}`;
}

/** What `runner bench --json` prints. */
export interface BenchReport {
  machine: { cpus: number; cpuModel: string; memoryGib: number; accel: string; vmm: string };
  language: string;
  coldBootMs: Quantiles;
  snapshotMs: Quantiles;
  restoreMs: Quantiles;
  /** How the restored VMs' agents reseeded, counted (`server`: no process started). */
  reseededVia: Record<string, number>;
  poolHitMs: Quantiles;
  poolMissMs: Quantiles;
  hostOverheadMs: Quantiles;
  transitMs: Quantiles;
  guestMs: Quantiles;
  nativeMs: Quantiles;
  jobsPerSecond: number;
  idleVmRssMib: number;
  /** PSS of each idle VM while all the restored ones run at once (pages they share split). */
  idleVmPssMib: number;
  ratios: { restoreVsColdBoot: number; poolHitVsNative: number };
}

/** A hello-world per language, and the native command that runs the same program on the host. */
const HELLO: Record<
  string,
  { file: string; code: string; native: (dir: string) => string[] | null }
> = {
  python: {
    file: 'main.py',
    code: 'print("hello")\n',
    native: (d) => ['python3', join(d, 'main.py')],
  },
  javascript: {
    file: 'main.js',
    code: 'console.log("hello")\n',
    native: (d) => ['node', join(d, 'main.js')],
  },
  bash: { file: 'main.sh', code: 'echo hello\n', native: (d) => ['bash', join(d, 'main.sh')] },
  ruby: { file: 'main.rb', code: 'puts "hello"\n', native: (d) => ['ruby', join(d, 'main.rb')] },
  php: {
    file: 'main.php',
    code: '<?php echo "hello\\n";\n',
    native: (d) => ['php', join(d, 'main.php')],
  },
  c: {
    file: 'main.c',
    code: '#include <stdio.h>\nint main(void){puts("hello");return 0;}\n',
    native: () => null,
  },
};

/** A `<field>: <n> kB` line of one of a process's /proc files, in MiB; null if unreadable. */
function procMib(pid: number | undefined, file: string, field: string): number | null {
  if (pid === undefined) return null;
  try {
    const m = new RegExp(`^${field}:\\s+(\\d+) kB`, 'm').exec(
      readFileSync(`/proc/${pid}/${file}`, 'utf8'),
    );
    return m?.[1] ? Number(m[1]) / 1024 : null;
  } catch {
    return null;
  }
}

/** Runs the benchmark; every figure is measured in this one run, on this machine. */
export async function runBench(
  engine: Engine,
  options: {
    language: string;
    boots: number;
    restores: number;
    jobs: number;
    concurrency: number;
    progress: (line: string) => void;
  },
): Promise<BenchReport> {
  const { language } = options;
  const hello = HELLO[language];
  if (!hello)
    throw new LanguageUnknownError(`bench has a hello-world for ${Object.keys(HELLO).join(', ')}`);
  const request: JobRequest = { language, files: [{ name: hello.file, content: hello.code }] };

  // 1. Cold boots (and one snapshot each), the way the snapshot manager boots a language.
  const coldBoot: number[] = [];
  const snapshotMs: number[] = [];
  const scratch = mkdtempSync(join(tmpdir(), 'runner-bench-'));
  try {
    for (let i = 0; i < options.boots; i++) {
      options.progress(`cold boot ${i + 1}/${options.boots}`);
      const { vm, bootMs } = await engine.snapshots.bootFresh(language);
      coldBoot.push(bootMs);
      try {
        snapshotMs.push((await vm.snapshot(join(scratch, `boot-${i}.snap`))).ms);
      } finally {
        await vm.destroy();
        rmSync(join(scratch, `boot-${i}.snap`), { force: true });
      }
    }
  } finally {
    rmSync(scratch, { recursive: true, force: true });
  }

  // 2. Restores of the language's snapshot through the pool's own restore path, up to the agent
  // answering its reseed; RSS when idle. The pool is idle yet, so these take no room from it.
  // They stay up until the last is restored, so that PSS shows what they share (a RAM template).
  const restore: number[] = [];
  const rss: number[] = [];
  const pss: number[] = [];
  const restored: MicroVm[] = [];
  const reseededVia: Record<string, number> = {};
  try {
    for (let i = 0; i < options.restores; i++) {
      options.progress(`restore ${i + 1}/${options.restores}`);
      const r = await engine.pool.restoreFresh(language);
      restored.push(r.vm);
      restore.push(r.restoreMs);
      const via = r.reseededVia ?? 'unknown';
      reseededVia[via] = (reseededVia[via] ?? 0) + 1;
    }
    await new Promise((r) => setTimeout(r, 200));
    for (const vm of restored) {
      const r = procMib(vm.pid, 'status', 'VmRSS');
      if (r !== null) rss.push(r);
      // PSS: each shared page divided among the processes that map it.
      const p = procMib(vm.pid, 'smaps_rollup', 'Pss');
      if (p !== null) pss.push(p);
    }
  } finally {
    await Promise.all(restored.map((vm) => vm.destroy()));
  }

  // 3. Pool misses (nothing warm) then pool hits (a ready VM waiting for each job).
  const miss: number[] = [];
  for (let i = 0; i < Math.min(5, options.jobs); i++) {
    options.progress(`pool miss ${i + 1}`);
    const r = await engine.run(engine.prepare(request));
    if (r.status !== 'ok')
      throw new SandboxFailureError(`bench job failed: ${r.status} ${r.run?.message ?? ''}`);
    if (!r.timings.poolHit) miss.push(r.timings.totalMs);
  }
  await engine.pool.warm(language);
  const hit: number[] = [];
  const overhead: number[] = [];
  const guest: number[] = [];
  const transit: number[] = [];
  for (let i = 0; i < options.jobs; i++) {
    options.progress(`pool hit ${i + 1}/${options.jobs}`);
    // Let the pool refill so that the job finds a ready VM.
    for (let w = 0; w < 500 && (engine.pool.stats().ready[language] ?? 0) === 0; w++)
      await new Promise((r) => setTimeout(r, 20));
    const r = await engine.run(engine.prepare(request));
    if (r.status !== 'ok')
      throw new SandboxFailureError(`bench job failed: ${r.status} ${r.run?.message ?? ''}`);
    if (!r.timings.poolHit) continue;
    hit.push(r.timings.totalMs);
    overhead.push(r.timings.hostOverheadMs);
    guest.push(r.timings.guestMs);
    transit.push(Math.max(0, r.timings.executeMs - r.timings.guestMs));
  }

  // 4. Saturation: as many jobs at once as the pool has slots, for `jobs` jobs in all.
  options.progress(`saturation: ${options.jobs} jobs, ${options.concurrency} at a time`);
  const satStarted = Date.now();
  let next = 0;
  await Promise.all(
    Array.from({ length: options.concurrency }, async () => {
      while (next < options.jobs) {
        next++;
        const r = await engine.run(engine.prepare(request));
        if (r.status !== 'ok')
          throw new SandboxFailureError(`bench job failed under load: ${r.status}`);
      }
    }),
  );
  const jobsPerSecond = round(options.jobs / ((Date.now() - satStarted) / 1000));

  // 5. The floor: the same program run natively on the host.
  const native: number[] = [];
  const nativeDir = mkdtempSync(join(tmpdir(), 'runner-native-'));
  try {
    writeFileSync(join(nativeDir, hello.file), hello.code);
    const argv = hello.native(nativeDir);
    for (let i = 0; argv && i < options.jobs; i++) {
      const started = process.hrtime.bigint();
      const r = spawnSync(argv[0] as string, argv.slice(1), { stdio: 'ignore' });
      if (r.status === 0) native.push(Number(process.hrtime.bigint() - started) / 1e6);
    }
  } finally {
    rmSync(nativeDir, { recursive: true, force: true });
  }

  const q = {
    coldBootMs: quantiles(coldBoot),
    snapshotMs: quantiles(snapshotMs),
    restoreMs: quantiles(restore),
    reseededVia,
    poolHitMs: quantiles(hit),
    poolMissMs: quantiles(miss),
    hostOverheadMs: quantiles(overhead),
    transitMs: quantiles(transit),
    guestMs: quantiles(guest),
    nativeMs: quantiles(native),
  };
  return {
    machine: {
      cpus: cpus().length,
      cpuModel: cpus()[0]?.model ?? 'unknown',
      memoryGib: Math.round(totalmem() / 2 ** 30),
      accel: engine.accel?.accel ?? engine.settings.accel,
      vmm: engine.driver.name,
    },
    language,
    ...q,
    jobsPerSecond,
    idleVmRssMib: round(quantiles(rss).p50),
    idleVmPssMib: round(quantiles(pss).p50),
    ratios: {
      restoreVsColdBoot: round(q.coldBootMs.p50 / q.restoreMs.p50),
      poolHitVsNative: round(q.poolHitMs.p50 / q.nativeMs.p50),
    },
  };
}

/** `runner bench`: the numbers that matter, medians and p95, in one run. */
/** What `runner bench --url` measured of a running service. */
export interface HttpBenchReport {
  readonly url: string;
  readonly language: string;
  readonly jobs: number;
  readonly concurrency: number;
  readonly wallMs: number;
  readonly jobsPerSecond: number;
  readonly latencyMs: Quantiles;
  /** Jobs whose status was not ok (sandbox_error, timeouts...), by status. */
  readonly failed: Record<string, number>;
}

/**
 * Throughput of a running service (a single box or a cluster's API node): `jobs` hello-worlds
 * through POST /v1/execute, `concurrency` at a time, after one untimed job (the snapshot).
 */
export async function benchHttp(options: {
  url: string;
  key?: string;
  language: string;
  jobs: number;
  concurrency: number;
  progress?: (line: string) => void;
}): Promise<HttpBenchReport> {
  const hello = HELLO[options.language];
  if (!hello)
    throw new LanguageUnknownError(`bench has a hello-world for ${Object.keys(HELLO).join(', ')}`);
  const body = JSON.stringify({
    language: options.language,
    files: [{ name: hello.file, content: hello.code }],
  });
  const headers: Record<string, string> = { 'content-type': 'application/json' };
  if (options.key !== undefined) headers['x-api-key'] = options.key;
  const one = async (): Promise<{ ms: number; status: string }> => {
    const started = performance.now();
    const res = await fetch(new URL('/v1/execute', options.url), { method: 'POST', headers, body });
    const json = (await res.json()) as { status?: string; code?: string };
    return {
      ms: performance.now() - started,
      status: json.status ?? json.code ?? String(res.status),
    };
  };
  options.progress?.('one untimed job first (snapshots)');
  await one();
  const latencies: number[] = [];
  const failed: Record<string, number> = {};
  let next = 0;
  const started = performance.now();
  await Promise.all(
    Array.from({ length: options.concurrency }, async () => {
      while (next < options.jobs) {
        next++;
        const r = await one();
        latencies.push(r.ms);
        if (r.status !== 'ok') failed[r.status] = (failed[r.status] ?? 0) + 1;
        options.progress?.(`${latencies.length}/${options.jobs} jobs`);
      }
    }),
  );
  const wallMs = performance.now() - started;
  return {
    url: options.url,
    language: options.language,
    jobs: options.jobs,
    concurrency: options.concurrency,
    wallMs: Math.round(wallMs),
    jobsPerSecond: Math.round((options.jobs / (wallMs / 1000)) * 100) / 100,
    latencyMs: quantiles(latencies),
    failed,
  };
}

export function registerBenchCommand(program: Command): void {
  program
    .command('bench')
    .description(
      'measure cold boot, snapshot restore, pool hit and miss, host overhead, throughput and idle VM memory',
    )
    .option('-l, --language <name>', 'language of the hello-world', 'python')
    .option('--boots <n>', 'cold boots to time', '3')
    .option('--restores <n>', 'restores to time', '10')
    .option(
      '--jobs <n>',
      'jobs for the pool-hit, saturation and native samples (with --all: pool hits per language, default 3)',
      '20',
    )
    .option('--json', 'print the report as JSON')
    .option(
      '--url <url>',
      'measure a running service instead (a single box or a cluster API node): --jobs hello-worlds through POST /v1/execute',
    )
    .option('--key <key>', 'API key for --url (X-API-Key)')
    .option('--concurrency <n>', 'requests at once with --url', '4')
    .option(
      '--sandboxes',
      'measure sandboxes kept across calls instead: create, cells, a command, 1 MiB of files, pause, resume, kill',
    )
    .option('--rounds <n>', 'sandboxes to time one after another with --sandboxes', '3')
    .option(
      '--all',
      "every language instead: its own test program, one pool miss then --jobs pool hits, beside the host's run where the host has the interpreter",
    )
    .option('--markdown', "with --all: print docs/languages.md's table")
    .option(
      '--languages <names>',
      'with --all: only these languages (comma-separated names or aliases)',
    )
    .action(async (opts) => {
      if (opts.url !== undefined) {
        const n = (v: string, name: string): number => {
          if (!/^\d+$/.test(v) || Number(v) < 1)
            throw new LimitInvalidError(`${name} must be a positive integer`);
          return Number(v);
        };
        const spinner = startSpinner(opts.json !== true || !process.stderr.isTTY);
        const report = await benchHttp({
          url: opts.url,
          ...(opts.key !== undefined && { key: opts.key }),
          language: opts.language,
          jobs: n(opts.jobs, '--jobs'),
          concurrency: n(opts.concurrency, '--concurrency'),
          progress: (l) => spinner.text(l),
        });
        spinner.stop();
        process.stdout.write(
          opts.json === true
            ? `${JSON.stringify(report, null, 2)}\n`
            : `runner bench --url ${report.url}: ${report.jobs} ${report.language} jobs, ${report.concurrency} at once: ${report.jobsPerSecond} jobs/s; latency p50 ${report.latencyMs.p50} ms, p95 ${report.latencyMs.p95} ms; not ok: ${JSON.stringify(report.failed)}\n`,
        );
        return;
      }
      const settings = loadSettings(process.env, {
        poolTarget: Math.max(1, Number(process.env.RUNNER_POOL_TARGET ?? 1)),
      });
      const spinner = startSpinner(opts.json !== true || !process.stderr.isTTY);
      const engine = await createEngine(settings, { log: (l) => spinner.text(l) });
      try {
        const language = engine.languages.get(opts.language).definition.name;
        const n = (v: string, name: string): number => {
          if (!/^\d+$/.test(v) || Number(v) < 1)
            throw new LimitInvalidError(`${name} must be a positive integer`);
          return Number(v);
        };
        if (opts.all === true) {
          const only =
            typeof opts.languages === 'string'
              ? opts.languages
                  .split(',')
                  .map((l: string) => l.trim())
                  .filter((l: string) => l !== '')
                  .map((l: string) => engine.languages.get(l))
              : null;
          const report = await benchLanguages(engine, {
            languages: only ?? engine.languages.list(),
            jobs: opts.jobs === '20' ? 3 : n(opts.jobs, '--jobs'),
            progress: (l) => spinner.text(l),
          });
          spinner.stop();
          process.stdout.write(
            opts.json === true
              ? `${JSON.stringify(report, null, 2)}\n`
              : opts.markdown === true
                ? languagesBenchMarkdown(report)
                : languagesBenchTable(report),
          );
          return;
        }
        if (opts.sandboxes === true) {
          const report = await benchSandboxes(engine, {
            language,
            rounds: n(opts.rounds, '--rounds'),
            progress: (l) => spinner.text(l),
          });
          spinner.stop();
          process.stdout.write(
            opts.json === true ? `${JSON.stringify(report, null, 2)}\n` : sandboxBenchTable(report),
          );
          return;
        }
        const report = await runBench(engine, {
          language,
          boots: n(opts.boots, '--boots'),
          restores: n(opts.restores, '--restores'),
          jobs: n(opts.jobs, '--jobs'),
          concurrency: engine.pool.capacity,
          progress: (l) => spinner.text(l),
        });
        spinner.stop();
        if (opts.json) {
          process.stdout.write(`${JSON.stringify(report, null, 2)}\n`);
          return;
        }
        const row = (name: string, q: Quantiles): string => benchRow(name, q, 26);
        const m = report.machine;
        process.stdout.write(
          [
            `runner bench: ${language}, ${m.vmm} (${m.accel}), ${m.cpus} × ${m.cpuModel}, ${m.memoryGib} GiB`,
            `${'measure (ms)'.padEnd(26)} ${'p50'.padStart(9)} ${'p95'.padStart(9)} ${'n'.padStart(4)}`,
            row('cold boot to agent hello', report.coldBootMs),
            row('snapshot', report.snapshotMs),
            row('restore to agent reseeded', report.restoreMs),
            row('job, pool miss', report.poolMissMs),
            row('job, pool hit', report.poolHitMs),
            row('  host overhead per job', report.hostOverheadMs),
            row('  VMM + guest kernel transit', report.transitMs),
            row('  time in the guest agent', report.guestMs),
            row('native run (the floor)', report.nativeMs),
            `jobs per second at saturation: ${report.jobsPerSecond} (${engine.pool.capacity} VMs)`,
            `host RSS per idle VM: ${report.idleVmRssMib} MiB, PSS ${report.idleVmPssMib} MiB (${report.restoreMs.n} restored VMs at once)`,
            `restore is ${report.ratios.restoreVsColdBoot}x faster than a cold boot; a pool hit is ${report.ratios.poolHitVsNative}x the native run`,
            `reseeded by: ${
              Object.entries(report.reseededVia)
                .map(([via, n]) => `${via} ${n}`)
                .join(', ') || '-'
            } (server: no process started after the restore)`,
            '',
          ].join('\n'),
        );
      } finally {
        spinner.stop();
        await engine.close();
      }
    });
}
