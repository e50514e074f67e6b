import { EventEmitter } from 'node:events';
import { availableParallelism } from 'node:os';
import { readFileSync } from 'node:fs';
import { readdir, readFile, rm } from 'node:fs/promises';
import { dirname, isAbsolute, join } from 'node:path';
import {
  dataPaths,
  scaledMaxima,
  type DataPaths,
  type Settings,
  type StageLimits,
} from '../config/index.js';
import { ConfigInvalidError, messageOf, SnapshotFailedError } from '../errors.js';
import {
  RemoteImageStore,
  remoteStoreConfigFromSettings,
  type RemoteStoreSettings,
} from '../images/remote.js';
import { ImageStore, type StoredImage } from '../images/store.js';
import {
  DEFAULT_SECCOMP_FAMILY,
  LanguageRegistry,
  testProgramFile,
  type Language,
} from '../languages/index.js';
import {
  checkRamTemplateQemu,
  FirecrackerDriver,
  formatQemuVersion,
  probeKvm,
  QemuDriver,
  parseVmmPidFile,
  QemuJail,
  sweepJails,
  type KvmProbeResult,
  type MicroVm,
  type QemuJailOptions,
  type VmmDriver,
} from '../vmm/index.js';
import { sweepVmNets, VmNetManager } from '../net/vmnet.js';
import { processAlive } from '../pids.js';
import { prime, reseed, VmPool } from './pool.js';
import { prepareJob, type JobRequest, type JobResult, type PreparedJob } from './job.js';
import { SandboxManager } from '../sandbox/manager.js';
import { executeOnVm, JobRunner, type RunOptions } from './runner.js';
import { CompileCache } from '../cache/index.js';
import { defaultRunSlots, RunSlots } from './slots.js';
import { SnapshotManager, type RuntimeStatus } from './snapshots.js';

/** Everything a host needs to run jobs: images, snapshots, a pool, a runner. */
export interface Engine {
  readonly settings: Settings;
  readonly paths: DataPaths;
  readonly languages: LanguageRegistry;
  readonly store: ImageStore;
  readonly driver: VmmDriver;
  readonly accel: KvmProbeResult | null;
  readonly snapshots: SnapshotManager;
  readonly pool: VmPool;
  readonly runner: JobRunner;
  /** Jobs that run at once (RunSlots): one per host core of vCPUs unless maxRunningJobs. */
  readonly runSlots: number;
  /** Cold boots and restores as they happen: `vm` events of {@link VmTiming}. */
  readonly events: EventEmitter;
  /** Checks a request and builds its one execute message, under `id` (default: a new one). */
  prepare(request: JobRequest, id?: string): PreparedJob;
  /** Runs a prepared job to its result (sandbox failures are results, not throws). */
  run(job: PreparedJob, options?: RunOptions): Promise<JobResult>;
  /** Every language's readiness: images built, snapshot taken (read from the pool's own state). */
  runtimes(): Promise<Map<string, RuntimeStatus>>;
  /** Sandboxes kept across calls, on this host's pool (src/sandbox). */
  readonly sandboxes: SandboxManager;
  close(): Promise<void>;
}

/** One VM lifecycle timing, emitted as the engine's `vm` event. */
export interface VmTiming {
  readonly kind: 'boot' | 'restore';
  readonly language: string;
  readonly ms: number;
}

/**
 * The firmware folder of a QEMU outside /usr (one unpacked by scripts/qemu-backports.sh): the
 * `share/qemu` beside its `bin`. Nothing for the system's QEMU, which finds its own.
 */
export function qemuFirmware(binary: string): { firmwareDir?: string } {
  if (!isAbsolute(binary)) return {};
  const prefix = dirname(dirname(binary));
  return prefix === '/usr' ? {} : { firmwareDir: join(prefix, 'share', 'qemu') };
}

/** Looks a user up in /etc/passwd (no NSS: the service runs on plain Debian). */
export function lookupUser(
  name: string,
  passwd = '/etc/passwd',
): { uid: number; gid: number } | null {
  let text: string;
  try {
    text = readFileSync(passwd, 'utf8');
  } catch {
    return null;
  }
  for (const line of text.split('\n')) {
    const [user, , uid, gid] = line.split(':');
    if (user === name && uid !== undefined && gid !== undefined)
      return { uid: Number(uid), gid: Number(gid) };
  }
  return null;
}

/**
 * The uid/gid the VMM runs as (QEMU, or Firecracker under its jailer), or null for the
 * service's own user. Fails closed: a configured user that does not exist would otherwise
 * leave the VMM running as root, so a root service refuses to start. Not as root, the user
 * does not matter (the VMM runs as the caller whatever is configured).
 */
export function resolveVmmUser(
  settings: Pick<Settings, 'qemuUser'>,
  passwd = '/etc/passwd',
  serviceUid: number | undefined = process.getuid?.(),
): { uid: number; gid: number } | null {
  if (settings.qemuUser === '') return null;
  const user = lookupUser(settings.qemuUser, passwd);
  if (user === null && serviceUid === 0) {
    throw new ConfigInvalidError(
      `the VMM user ${settings.qemuUser} (RUNNER_QEMU_USER) does not exist in ${passwd}, and the service runs as root: ` +
        `run \`bash scripts/setup.sh\` (it creates runner-vmm) or \`useradd --system ${settings.qemuUser}\`, ` +
        "or set RUNNER_QEMU_USER= (empty) to run the VMM as the service's own user knowingly",
    );
  }
  return user;
}

/**
 * Kills what an earlier crashed run left: VMM processes whose command line names a run dir of
 * ours, then the run dirs themselves. A pid is killed only when its /proc cmdline still names
 * that dir, so a reused pid is never hit; a VM whose owner (the process that booted it) is alive
 * is left alone, since another service or test on this data folder is using it.
 */
export async function sweepRunDir(runDir: string, log?: (line: string) => void): Promise<number> {
  let names: string[];
  try {
    names = await readdir(runDir);
  } catch {
    return 0;
  }
  let swept = 0;
  for (const name of names) {
    const dir = join(runDir, name);
    const { vmmPid, ownerPid } = await readVmmPidFile(dir);
    if (ownedByAnother(ownerPid)) continue;
    if (vmmPid !== null) {
      const cmdline = await readFile(`/proc/${vmmPid}/cmdline`, 'utf8').catch(() => '');
      if (cmdline.includes(dir)) {
        try {
          process.kill(vmmPid, 'SIGKILL');
          log?.(`sweep: killed leftover VMM ${vmmPid} of ${name}`);
        } catch {
          // already gone
        }
      }
    }
    await rm(dir, { recursive: true, force: true });
    swept++;
  }
  return swept;
}

/** The pids in a VM's run dir (none when it has no pid file). */
async function readVmmPidFile(dir: string): Promise<ReturnType<typeof parseVmmPidFile>> {
  return parseVmmPidFile(await readFile(join(dir, 'pid'), 'utf8').catch(() => ''));
}

/** Whether a VM's owner (from its pid file) is another live process, not this one. */
function ownedByAnother(ownerPid: number | null): boolean {
  return ownerPid !== null && ownerPid !== process.pid && processAlive(ownerPid);
}

/** Whether another live process booted the VM of this run dir. */
async function heldByAnotherProcess(dir: string): Promise<boolean> {
  return ownedByAnother((await readVmmPidFile(dir)).ownerPid);
}

/**
 * Pull on demand: when a VM needs an image that is not local and an S3 image store is
 * configured (the s3Bucket setting, RUNNER_S3_BUCKET), the newest matching image there is
 * downloaded (verified, and once even when many jobs ask at the same time).
 */
export function remoteFetcher(
  store: ImageStore,
  settings: RemoteStoreSettings,
  log?: (line: string) => void,
):
  | ((
      kind: 'kernel' | 'base' | 'rootfs',
      language: string | null,
      baseTreeKey?: string,
    ) => Promise<StoredImage | undefined>)
  | undefined {
  const config = remoteStoreConfigFromSettings(settings);
  if (config === null) return undefined;
  const remote = new RemoteImageStore(config);
  return async (kind, language, baseTreeKey) => {
    const refs = (await remote.list(kind)).filter((r) =>
      language === null ? true : r.id.startsWith(`${language}-`),
    );
    let best: { id: string; builtAt: number } | null = null;
    for (const ref of refs) {
      const manifest = await remote.manifest(kind, ref.id);
      if (manifest.language !== language) continue;
      // A base must be of the tree the language's layer was made against.
      if (baseTreeKey !== undefined && manifest.inputs?.baseTreeKey !== baseTreeKey) continue;
      const builtAt = Date.parse(manifest.builtAt);
      if (best === null || builtAt > best.builtAt) best = { id: ref.id, builtAt };
    }
    if (best === null) return undefined;
    log?.(`pulling ${kind} ${best.id} from the S3 image store`);
    await remote.pull(kind, best.id, store.root);
    return store.find(best.id, kind);
  };
}

/** The QEMU jail's options from the settings (docs/qemu.md, "QEMU's jail"). */
export function qemuJailOptions(
  settings: Pick<
    Settings,
    'qemuJailMemoryOverheadMib' | 'qemuJailPidsMax' | 'qemuJailCpuPercent' | 'qemuJailCgroupRoot'
  >,
  paths: Pick<DataPaths, 'dataDir' | 'buildDir'>,
  user: { uid: number; gid: number } | null,
): QemuJailOptions {
  return {
    user,
    buildDir: paths.buildDir,
    rootBaseDir: join(paths.dataDir, 'qemu-jail'),
    cgroupRoot: settings.qemuJailCgroupRoot,
    memoryOverheadMib: settings.qemuJailMemoryOverheadMib,
    pidsMax: settings.qemuJailPidsMax,
    cpuPercent: settings.qemuJailCpuPercent,
  };
}

/** Builds the engine from settings: picks the driver (probing KVM), sweeps leftovers. */
export async function createEngine(
  settings: Settings,
  options: {
    log?: (line: string) => void;
    /** Where sandbox failures are reported (default: `log`). */
    warn?: (line: string) => void;
    languagesDir?: string;
  } = {},
): Promise<Engine> {
  // First: a missing VMM user must stop the start before anything runs (the sweep, the probe).
  const user = resolveVmmUser(settings);
  const log = options.log;
  const paths = dataPaths(settings);
  const languages = LanguageRegistry.fromDir(options.languagesDir);
  const store = new ImageStore(paths.imagesDir);
  await sweepRunDir(paths.runDir, log);

  let accel: KvmProbeResult | null = null;
  let mode: 'kvm' | 'tcg' = settings.accel === 'kvm' ? 'kvm' : 'tcg';
  if (settings.accel === 'auto' && settings.vmm === 'qemu') {
    const kernel = await store.latest('kernel', null);
    if (kernel) {
      accel = await probeKvm({
        kernelPath: join(kernel.dir, 'vmlinuz'),
        initrdPath: join(kernel.dir, 'initrd.img'),
        guestKernel: kernel.manifest.id,
        cacheFile: join(paths.dataDir, 'kvm-probe.json'),
        qemuBinary: settings.qemuBinary,
      });
      mode = accel.accel;
      log?.(`accel: ${mode} (${accel.reason})`);
    }
  }
  let driver: VmmDriver;
  let driverTag: string;
  if (settings.vmm === 'firecracker') {
    if (settings.qemuRamTemplate) {
      throw new ConfigInvalidError(
        'RUNNER_QEMU_RAM_TEMPLATE is for the qemu driver (RUNNER_VMM=qemu)',
      );
    }
    // Firecracker always runs on KVM; the jailer, where configured, confines it (docs/firecracker.md).
    // uid 0 only when RUNNER_QEMU_USER is empty on purpose: a missing user failed above.
    const jailUser = user ?? { uid: 0, gid: 0 };
    driver = new FirecrackerDriver({
      binary: settings.firecrackerBinary,
      jailer:
        settings.jailerBinary === ''
          ? null
          : {
              binary: settings.jailerBinary,
              uid: jailUser.uid,
              gid: jailUser.gid,
              chrootBaseDir: join(paths.dataDir, 'jail'),
            },
    });
    driverTag = settings.jailerBinary === '' ? 'firecracker' : 'firecracker-jailer';
  } else {
    const jail = settings.qemuJail ? new QemuJail(qemuJailOptions(settings, paths, user)) : null;
    if (jail)
      await sweepJails(jail.options, (vmId) => heldByAnotherProcess(join(paths.runDir, vmId)));
    driver = new QemuDriver({
      binary: settings.qemuBinary,
      accel: mode,
      user,
      jail,
      ...qemuFirmware(settings.qemuBinary),
    });
    driverTag = `qemu-${mode}`;
    if (settings.qemuRamTemplate) {
      // A template's state stream is this QEMU's own: its version is in the snapshot key.
      const version = await checkRamTemplateQemu(settings.qemuBinary);
      driverTag += `-ram-template-${formatQemuVersion(version)}`;
    }
  }
  const events = new EventEmitter();
  const emit =
    (kind: VmTiming['kind']) =>
    (language: string, ms: number): void => {
      events.emit('vm', { kind, language, ms } satisfies VmTiming);
    };
  // The server maxima at this host's timeLimitScalePercent, for jobs and warm-ups.
  const maxLimits = scaledMaxima(settings.timeLimitScalePercent);
  const snapshots = new SnapshotManager({
    onBoot: emit('boot'),
    driver,
    driverTag,
    store,
    snapshotsDir: paths.snapshotsDir,
    runDir: paths.runDir,
    memoryMib: settings.vmMemoryMib,
    vcpus: settings.vmVcpus,
    bootTimeoutMs: settings.bootTimeoutMs,
    kernelFile: settings.vmm === 'firecracker' ? 'vmlinux' : 'vmlinuz',
    fetchMissing: remoteFetcher(store, settings, log),
    log,
    ...(settings.qemuRamTemplate && { ramTemplate: { owner: user } }),
    ...(settings.snapshotWarmUp && {
      warmUp: async (vm: MicroVm, language: string) => {
        await warmUp(vm, languages.get(language), languages, maxLimits);
        // The agent's seed path run once too, so that each clone's reseed finds it compiled.
        await reseed(vm, settings.restoreTimeoutMs);
      },
    }),
  });
  // Network on request: set up (and checked) at start, so a host that cannot do it fails here.
  let network: VmNetManager | null = null;
  if (settings.networkEnabled) {
    if (settings.vmm !== 'qemu') {
      throw new ConfigInvalidError(
        'networkEnabled needs the qemu driver (Firecracker has no NIC wiring yet)',
      );
    }
    network = new VmNetManager({
      allow: settings.networkAllow,
      dns: settings.networkDns,
      bandwidthKbit: settings.networkBandwidthKbit,
      maxConnections: settings.networkMaxConnections,
      linkCidr: settings.networkLinkCidr,
      vmmUser: settings.vmm === 'qemu' ? user : null,
      ...(log && { log }),
    });
    await network.start();
  } else if (process.getuid?.() === 0) {
    // Leftovers of a crashed service that had network on.
    const swept = await sweepVmNets().catch(() => []);
    if (swept.length > 0) log?.(`network: swept ${swept.join(', ')}`);
  }
  const pool = new VmPool({
    network,
    onRestore: emit('restore'),
    driver,
    snapshots,
    runDir: paths.runDir,
    targetPerLanguage: settings.poolTarget,
    maxVms: settings.poolMaxVms,
    maxMemoryMib: settings.poolMaxMemoryMib,
    vmMemoryMib: settings.vmMemoryMib,
    restoreTimeoutMs: settings.restoreTimeoutMs,
    log,
    // Interpreted languages run their test program; a compiled one with a compile server
    // starts it (the next compile goes to it); other compiled ones are not warmed: their
    // warm-up would compile in every VM, a cost far beyond the translations it saves.
    ...(settings.poolWarmUp && {
      warmUp: async (vm: MicroVm, language: string) => {
        const lang = languages.get(language);
        if (lang.definition.compileServer !== undefined) {
          // A server that cannot start (its snapshot refused on another CPU model, say) leaves
          // the VM as good as an unprimed one: its compiles run the compile command itself.
          try {
            await primeCompileServer(
              vm,
              lang,
              languages,
              PRIME_TIMEOUT_MS,
              settings.timeLimitScalePercent,
            );
            return true;
          } catch (err) {
            log?.(`pool: the compile server of a ${language} VM did not start: ${messageOf(err)}`);
            return false;
          }
        }
        if (lang.definition.compile !== null) return false;
        await warmUp(vm, lang, languages, maxLimits);
        return true;
      },
    }),
  });
  const runSlots = Math.min(
    pool.capacity,
    defaultRunSlots(settings.maxRunningJobs, availableParallelism(), settings.vmVcpus),
  );
  const runner = new JobRunner(
    languages,
    pool,
    maxLimits,
    {
      info: (line) => log?.(line),
      warn: (line) => (options.warn ?? log)?.(line),
    },
    new RunSlots(runSlots),
    settings.compileCacheMaxMib === 0
      ? null
      : new CompileCache({
          dir: paths.compileCacheDir,
          maxBytes: settings.compileCacheMaxMib * 1024 * 1024,
          maxAgeMs: settings.compileCacheMaxAgeHours * 3_600_000,
          log: (line) => log?.(line),
        }),
    settings.timeLimitScalePercent,
  );
  const sandboxes = await SandboxManager.open({
    pool,
    languages,
    dir: settings.sandboxesDir ?? join(paths.dataDir, 'sandboxes'),
    timeoutMs: settings.sandboxTimeoutMs,
    maxTimeoutMs: settings.sandboxMaxTimeoutMs,
    maxPerKey: settings.sandboxMaxPerKey,
    maxRunning: settings.sandboxMaxRunning,
    pausedTtlMs: settings.sandboxPausedTtlMs,
    commandTimeoutMs: settings.sandboxCommandTimeoutMs,
    vmMemoryMib: settings.vmMemoryMib,
    vcpus: settings.vmVcpus,
    resources: async (language) => (await snapshots.ensure(language)).resources,
    ...(log && { log }),
  });
  return {
    settings,
    paths,
    languages,
    store,
    sandboxes,
    driver,
    accel,
    snapshots,
    pool,
    runner,
    runSlots,
    events,
    prepare: (request, id) => runner.prepare(request, id),
    run: (job, options) => runner.run(job, options),
    runtimes: async () => {
      const out = new Map<string, RuntimeStatus>();
      for (const { definition } of languages.list()) {
        out.set(definition.name, await snapshots.status(definition.name));
      }
      return out;
    },
    close: async () => {
      await sandboxes.close();
      await pool.close();
    },
  };
}

/** How long a compile server may take to listen (tsc's: about 10 s under TCG). */
const PRIME_TIMEOUT_MS = 180_000;

/**
 * Starts a language's compile server in a VM waiting in the pool, under the compile limits and
 * seccomp family its jobs get by default (those of its test program's job, at the host's
 * timeLimitScalePercent, so that a default job is served).
 */
async function primeCompileServer(
  vm: MicroVm,
  language: Language,
  languages: LanguageRegistry,
  timeoutMs: number,
  timeScalePercent: number,
): Promise<void> {
  const { message } = prepareJob(
    { language: language.definition.name, files: [testProgramFile(language)] },
    languages,
    { timeScalePercent },
  );
  const seccomp = message.seccomp ?? DEFAULT_SECCOMP_FAMILY;
  await prime(vm, message.language, message.compileLimits, seccomp, timeoutMs);
}

/**
 * Runs a language's own test program in a VM about to be snapshotted and checks its line
 * (SnapshotManagerOptions.warmUp); throws SNAPSHOT_FAILED when it does not print it. A warm-up
 * is not a verdict: its CPU and wall time may go to the server maxima (a slow host's first
 * compile of a JVM language can pass the default it would get as a job).
 */
async function warmUp(
  vm: MicroVm,
  language: Language,
  languages: LanguageRegistry,
  maxLimits: StageLimits,
): Promise<void> {
  const { definition } = language;
  const clocks = (stage: 'compile' | 'run') => ({
    cpuTimeMs: maxLimits[stage].cpuTimeMs,
    wallTimeMs: maxLimits[stage].wallTimeMs,
  });
  const job = prepareJob(
    {
      language: definition.name,
      files: [testProgramFile(language)],
      ...(definition.test.stdin !== undefined && { stdin: Buffer.from(definition.test.stdin) }),
      compileLimits: clocks('compile'),
      runLimits: clocks('run'),
    },
    languages,
    { maxLimits },
  );
  const result = await executeOnVm(vm, job);
  const stdout = Buffer.from(result.run?.stdout ?? '', 'base64')
    .toString()
    .trim();
  if (result.status !== 'ok' || stdout !== definition.test.expected) {
    const why = result.run?.message ?? result.compile?.message ?? '';
    throw new SnapshotFailedError(
      `the warm-up of ${definition.name} (its test program) ended ${result.status}${why ? `: ${why}` : ''}, printing ${JSON.stringify(stdout.slice(0, 200))}`,
    );
  }
}
