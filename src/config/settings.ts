import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { ConfigInvalidError } from '../errors.js';
import { defaultDataDir } from './paths.js';

type Kind = 'string' | 'integer' | 'boolean' | 'enum' | 'list';

/** One row of the configuration table. */
export interface SettingSpec {
  readonly key: string;
  readonly env: string;
  readonly kind: Kind;
  readonly default: string | number | boolean | readonly string[] | null;
  readonly unit?: string;
  readonly values?: readonly string[];
  readonly min?: number;
  readonly max?: number;
  /** A string that must be a URL of one of these schemes (checked at start, not at first use). */
  readonly schemes?: readonly string[];
  /** Printed masked by `runner serve --print-config` (keys, passwords). */
  readonly secret?: boolean;
  readonly description: string;
}

/**
 * Every setting of the service in one declarative table: name, environment variable, default,
 * unit, description. Values come from the environment, then an optional JSON file
 * (`RUNNER_CONFIG`), then the defaults; they are validated at start and frozen. The table is
 * printed by `runner serve --print-config` and documented in docs/configuration.md.
 */
export const SETTINGS = [
  { key: 'dataDir', env: 'RUNNER_DATA_DIR', kind: 'string', default: null, description: 'Root of images, snapshots and VM run dirs (default /var/lib/runner-codes as root, else ~/.local/share/runner-codes).' },
  { key: 'vmm', env: 'RUNNER_VMM', kind: 'enum', values: ['qemu', 'firecracker'], default: 'qemu', description: 'The VMM driver.' },
  { key: 'accel', env: 'RUNNER_ACCEL', kind: 'enum', values: ['auto', 'kvm', 'tcg'], default: 'auto', description: 'QEMU acceleration; auto boots a probe guest under KVM and falls back to TCG.' },
  { key: 'qemuBinary', env: 'RUNNER_QEMU_BINARY', kind: 'string', default: 'qemu-system-x86_64', description: 'The QEMU binary.' },
  { key: 'qemuRamTemplate', env: 'RUNNER_QEMU_RAM_TEMPLATE', kind: 'boolean', default: false, description: 'Keep each snapshot\'s guest RAM in a template file that every restore maps read-only and copy-on-write, instead of copying it into each VM: restores read only the device state, and VMs share the pages they do not write (docs/qemu.md "The RAM template"). Needs QEMU 8.2 or later (RUNNER_QEMU_BINARY); its snapshots are taken anew.' },
  { key: 'qemuUser', env: 'RUNNER_QEMU_USER', kind: 'string', default: 'runner-vmm', description: 'Unprivileged user QEMU runs as when the service runs as root (empty: same user as the service).' },
  { key: 'qemuJail', env: 'RUNNER_QEMU_JAIL', kind: 'boolean', default: true, description: 'Run each QEMU in a jail of its own: new mount, PID, IPC, UTS and network namespaces, a root of only its files, no capabilities, a cgroup with limits (docs/qemu.md). Needs root and RUNNER_QEMU_USER; a jail that cannot be set up stops the VM (VM_JAIL_FAILED).' },
  { key: 'qemuJailMemoryOverheadMib', env: 'RUNNER_QEMU_JAIL_MEMORY_OVERHEAD_MIB', kind: 'integer', default: 512, unit: 'MiB', min: 64, max: 65536, description: 'Memory limit of a jailed QEMU beyond its guest memory (QEMU itself, TCG code buffer, page cache of the snapshot).' },
  { key: 'qemuJailPidsMax', env: 'RUNNER_QEMU_JAIL_PIDS_MAX', kind: 'integer', default: 128, min: 8, max: 65536, description: 'Most threads and processes of a jailed QEMU (its cgroup pids.max).' },
  { key: 'qemuJailCpuPercent', env: 'RUNNER_QEMU_JAIL_CPU_PERCENT', kind: 'integer', default: 0, unit: '%', min: 0, max: 409600, description: 'CPU limit of a jailed QEMU in percent of one CPU; 0: (vCPUs + 1) x 100.' },
  { key: 'qemuJailCgroupRoot', env: 'RUNNER_QEMU_JAIL_CGROUP_ROOT', kind: 'string', default: '/sys/fs/cgroup', description: 'The cgroup file system of the jails (v1: a folder per controller; v2: cgroup.controllers at its root).' },
  { key: 'firecrackerBinary', env: 'RUNNER_FIRECRACKER_BINARY', kind: 'string', default: 'firecracker', description: 'The Firecracker binary.' },
  { key: 'jailerBinary', env: 'RUNNER_JAILER_BINARY', kind: 'string', default: '', description: 'The jailer binary; empty runs Firecracker without it.' },
  { key: 'vmMemoryMib', env: 'RUNNER_VM_MEMORY_MIB', kind: 'integer', default: 1024, unit: 'MiB', min: 128, max: 65536, description: 'Guest memory of each VM.' },
  { key: 'vmVcpus', env: 'RUNNER_VM_VCPUS', kind: 'integer', default: 1, min: 1, max: 32, description: 'vCPUs of each VM.' },
  { key: 'poolTarget', env: 'RUNNER_POOL_TARGET', kind: 'integer', default: 1, min: 0, max: 256, description: 'Ready VMs kept per warmed language.' },
  { key: 'poolWarmUp', env: 'RUNNER_POOL_WARM_UP', kind: 'boolean', default: true, description: 'Warm each VM the pool restores before it is marked ready: an interpreted language runs its own test program once, so that QEMU\'s translation cache (empty after every restore) is warm for the job; a language with a compile server (typescript, java) starts it, and the next job\'s compile goes to it. It waits while as many jobs run as half the host\'s cores, and is skipped while jobs wait for capacity.' },
  { key: 'snapshotWarmUp', env: 'RUNNER_SNAPSHOT_WARM_UP', kind: 'boolean', default: true, description: 'Before a snapshot is taken, run the language\'s own test program once in the VM (and refuse to snapshot a VM that fails it), then seed its agent once: every clone starts with the toolchain in the guest page cache and the agent\'s job and seed paths compiled.' },
  { key: 'maxRunningJobs', env: 'RUNNER_MAX_RUNNING_JOBS', kind: 'integer', default: 0, min: 0, max: 4096, description: 'Jobs that run at once on this host (others wait for a slot, then a VM); 0: one per vmVcpus of the host\'s cores, so that a program\'s CPU time and verdict do not change with its neighbours\' load (docs/agent.md).' },
  { key: 'timeLimitScalePercent', env: 'RUNNER_TIME_LIMIT_SCALE_PERCENT', kind: 'integer', default: 100, unit: '%', min: 100, max: 1000, description: 'Scales the time limits the server chooses (CPU and wall, compile and run: the defaults, each language\'s own, the server maxima, Judge0\'s time defaults and maxima, Piston\'s -1) for hosts slower than the ones they were sized for (TCG on a slow or shared CPU); a limit a request names is kept as asked (docs/languages.md, "A slower host").' },
  { key: 'poolMaxVms', env: 'RUNNER_POOL_MAX_VMS', kind: 'integer', default: 4, min: 1, max: 4096, description: 'Most VMs alive at once on this host.' },
  { key: 'poolMaxMemoryMib', env: 'RUNNER_POOL_MAX_MEMORY_MIB', kind: 'integer', default: 8192, unit: 'MiB', min: 128, description: 'Most guest memory for all VMs of this host.' },
  { key: 'warmLanguages', env: 'RUNNER_WARM_LANGUAGES', kind: 'list', default: [], description: 'Languages whose pools are filled at start (comma-separated).' },
  { key: 'bootTimeoutMs', env: 'RUNNER_BOOT_TIMEOUT_MS', kind: 'integer', default: 120000, unit: 'ms', min: 1000, description: 'Cold boot deadline (kernel to agent hello); TCG is slow.' },
  { key: 'restoreTimeoutMs', env: 'RUNNER_RESTORE_TIMEOUT_MS', kind: 'integer', default: 30000, unit: 'ms', min: 500, description: 'Snapshot restore deadline (to the agent answering).' },
  { key: 'compileCacheMaxMib', env: 'RUNNER_COMPILE_CACHE_MAX_MIB', kind: 'integer', default: 2048, unit: 'MiB', min: 0, description: 'Most disk the compile cache may take (<data dir>/compile-cache): the same sources compiled the same way on the same images compile once, later jobs run the kept work dir (docs/agent.md). Least recently used go first; 0 turns the cache off.' },
  { key: 'compileCacheMaxAgeHours', env: 'RUNNER_COMPILE_CACHE_MAX_AGE_HOURS', kind: 'integer', default: 168, unit: 'h', min: 1, description: 'A kept compile not used for this long is deleted.' },
  // ---- images: the local store, the S3 store, the Debian mirror ----
  { key: 'imagesDir', env: 'RUNNER_IMAGES_DIR', kind: 'string', default: null, description: 'The local image store (default <data dir>/images).' },
  { key: 'debianMirror', env: 'RUNNER_DEBIAN_MIRROR', kind: 'string', default: null, schemes: ['http', 'https', 'file'], description: 'Debian mirror of image builds (http, https or file URL); unset: the first apt source of the machine serving bookworm main.' },
  { key: 'debianSecurityMirror', env: 'RUNNER_DEBIAN_SECURITY_MIRROR', kind: 'string', default: null, schemes: ['http', 'https', 'file'], description: 'Debian security mirror of image builds; unset: the machine\'s apt source serving bookworm-security, else no security updates.' },
  { key: 's3Bucket', env: 'RUNNER_S3_BUCKET', kind: 'string', default: null, description: 'Bucket of the S3 image store; unset turns the S3 store off (docs/image-store.md).' },
  { key: 's3Prefix', env: 'RUNNER_S3_PREFIX', kind: 'string', default: 'images', description: 'Key prefix of the images in the bucket; slashes at the ends are dropped; an empty one (in the config file) puts them at the bucket root.' },
  { key: 's3Endpoint', env: 'RUNNER_S3_ENDPOINT', kind: 'string', default: null, schemes: ['http', 'https'], description: 'URL of an S3-compatible server (MinIO, Ceph, R2...); unset: the AWS SDK reads AWS_ENDPOINT_URL_S3, then AWS_ENDPOINT_URL, else AWS itself.' },
  { key: 's3Region', env: 'RUNNER_S3_REGION', kind: 'string', default: null, description: 'Region used to sign S3 requests; unset: the AWS SDK reads AWS_REGION (or the shared config profile), else us-east-1.' },
  { key: 's3AccessKeyId', env: 'RUNNER_S3_ACCESS_KEY_ID', kind: 'string', default: null, description: 'Access key of the S3 store, set with the secret key; unset: the AWS SDK default chain (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN, profile, instance role).' },
  { key: 's3SecretAccessKey', env: 'RUNNER_S3_SECRET_ACCESS_KEY', kind: 'string', default: null, secret: true, description: 'Secret key of the S3 store, set with the access key.' },
  { key: 's3ForcePathStyle', env: 'RUNNER_S3_FORCE_PATH_STYLE', kind: 'boolean', default: true, description: 'Bucket in the path rather than the host name, as S3-compatible servers expect.' },
  { key: 's3PartSizeMib', env: 'RUNNER_S3_PART_SIZE_MIB', kind: 'integer', default: 8, unit: 'MiB', min: 5, max: 5120, description: 'Part size of multipart uploads to the S3 store.' },
  // ---- the HTTP service (runner serve) ----
  { key: 'host', env: 'RUNNER_HOST', kind: 'string', default: '127.0.0.1', description: 'Address the HTTP service listens on (0.0.0.0 for every interface).' },
  { key: 'port', env: 'RUNNER_PORT', kind: 'integer', default: 2000, min: 0, max: 65535, description: 'TCP port of the HTTP service (2000, like Piston).' },
  { key: 'apiKeys', env: 'RUNNER_API_KEYS', kind: 'list', default: [], secret: true, description: 'API keys (comma-separated); when set, every request but health, readiness and the docs needs one (Authorization: Bearer KEY or X-API-Key: KEY).' },
  { key: 'rateLimitPerMinute', env: 'RUNNER_RATE_LIMIT_PER_MINUTE', kind: 'integer', default: 600, min: 0, description: 'Job-creating requests per minute per API key (per client address without keys), as a token bucket of that size; 0 turns it off.' },
  { key: 'bodyLimitBytes', env: 'RUNNER_BODY_LIMIT_BYTES', kind: 'integer', default: 8388608, unit: 'bytes', min: 1024, max: 1073741824, description: 'Largest request body; a larger one gets 413 before it is buffered.' },
  { key: 'maxFiles', env: 'RUNNER_MAX_FILES', kind: 'integer', default: 100, min: 1, max: 1000, description: 'Most files in one job (413 beyond).' },
  { key: 'maxStdinBytes', env: 'RUNNER_MAX_STDIN_BYTES', kind: 'integer', default: 1048576, unit: 'bytes', min: 0, description: 'Largest stdin of one job or test case, decoded (413 beyond).' },
  { key: 'maxTestCases', env: 'RUNNER_MAX_TEST_CASES', kind: 'integer', default: 64, min: 1, max: 10000, description: 'Most test cases in one request (413 beyond).' },
  { key: 'queueMax', env: 'RUNNER_QUEUE_MAX', kind: 'integer', default: 64, min: 0, max: 1000000, description: 'Jobs that may wait for a VM (on an API node of a cluster: in the whole cluster); beyond it requests get 503 with Retry-After.' },
  { key: 'requestTimeoutMs', env: 'RUNNER_REQUEST_TIMEOUT_MS', kind: 'integer', default: 30000, unit: 'ms', min: 1000, description: 'Deadline for receiving a whole request (headers and body) from a client.' },
  { key: 'headersTimeoutMs', env: 'RUNNER_HEADERS_TIMEOUT_MS', kind: 'integer', default: 10000, unit: 'ms', min: 1000, description: 'Deadline for receiving the request headers (slowloris); at most requestTimeoutMs.' },
  { key: 'keepAliveTimeoutMs', env: 'RUNNER_KEEP_ALIVE_TIMEOUT_MS', kind: 'integer', default: 5000, unit: 'ms', min: 100, description: 'How long an idle keep-alive connection stays open.' },
  { key: 'drainTimeoutMs', env: 'RUNNER_DRAIN_TIMEOUT_MS', kind: 'integer', default: 300000, unit: 'ms', min: 1000, description: 'On SIGTERM, how long to wait for running and queued jobs before exiting anyway.' },
  { key: 'jobStoreFile', env: 'RUNNER_JOB_STORE_FILE', kind: 'string', default: null, description: 'SQLite file of submitted jobs and their results (default <data dir>/jobs.sqlite; :memory: keeps none across restarts).' },
  { key: 'jobRetentionHours', env: 'RUNNER_JOB_RETENTION_HOURS', kind: 'integer', default: 24, unit: 'h', min: 1, description: 'How long finished job records are kept.' },
  { key: 'callbackAllowedHosts', env: 'RUNNER_CALLBACK_ALLOWED_HOSTS', kind: 'list', default: [], description: 'Host names a callbackUrl may point to (comma-separated); empty allows any host the egress policy allows (RUNNER_EGRESS_ALLOW). It only narrows: naming a host here does not open a refused address. Only http and https URLs are taken.' },
  { key: 'egressAllow', env: 'RUNNER_EGRESS_ALLOW', kind: 'list', default: [], description: 'What requests made on a user\'s behalf (callbacks) may reach besides public addresses (comma-separated host names, IP addresses and CIDRs). By default loopback, private, CGNAT, link-local, multicast, reserved and cloud metadata addresses are refused, checked on the resolved address at connect time (docs/security.md).' },
  { key: 'callbackAttempts', env: 'RUNNER_CALLBACK_ATTEMPTS', kind: 'integer', default: 5, min: 1, max: 100, description: 'Tries to deliver a result to its callbackUrl, with doubling backoff between them.' },
  { key: 'callbackBackoffMs', env: 'RUNNER_CALLBACK_BACKOFF_MS', kind: 'integer', default: 1000, unit: 'ms', min: 1, description: 'Wait before the second callback try; doubled for each later one (capped at a minute).' },
  { key: 'callbackTimeoutMs', env: 'RUNNER_CALLBACK_TIMEOUT_MS', kind: 'integer', default: 10000, unit: 'ms', min: 100, description: 'Deadline of one callback try.' },
  { key: 'responseWriteTimeoutMs', env: 'RUNNER_RESPONSE_WRITE_TIMEOUT_MS', kind: 'integer', default: 30000, unit: 'ms', min: 100, description: 'How long a response may wait for the client to read more of it; a client that reads nothing for that long is disconnected and its response dropped. The kernel reports progress about every MiB the client reads, so the client must read at least about a MiB per this time.' },
  { key: 'maxResponseBufferBytes', env: 'RUNNER_MAX_RESPONSE_BUFFER_BYTES', kind: 'integer', default: 134217728, unit: 'bytes', min: 65536, description: 'Most response bytes one connection may have unsent (pipelined responses included); past it the connection is dropped. Above the largest result (about 90 MiB when a job fills its 16 MiB result frame with text JSON must escape).' },
  { key: 'jobStoreMaxResultBytes', env: 'RUNNER_JOB_STORE_MAX_RESULT_BYTES', kind: 'integer', default: 4194304, unit: 'bytes', min: 4096, description: 'Most bytes of the stored result of one submitted job (GET /v1/jobs/{id} and its callback); longer output is cut and marked truncated. Synchronous jobs keep no output.' },
  { key: 'jobStoreMaxBytes', env: 'RUNNER_JOB_STORE_MAX_BYTES', kind: 'integer', default: 268435456, unit: 'bytes', min: 1048576, description: 'Most bytes of stored results in the job store; past it the oldest finished records are deleted before their retention ends.' },
  { key: 'logLevel', env: 'RUNNER_LOG_LEVEL', kind: 'enum', values: ['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent'], default: 'info', description: 'Level of the service log (JSON lines on stdout).' },
  { key: 'judge0Prefix', env: 'RUNNER_JUDGE0_PREFIX', kind: 'string', default: '', description: 'Path prefix of the Judge0-compatible API (e.g. /judge0); empty serves it at the root paths Judge0 uses (/submissions, /languages, ...). docs/judge0.md.' },
  { key: 'e2bPrefix', env: 'RUNNER_E2B_PREFIX', kind: 'string', default: '/e2b', description: 'Path prefix of the E2B-compatible sandbox API: point E2B_API_URL and E2B_SANDBOX_URL at http://HOST:PORT plus it. Must not be under /v1 or /api. docs/e2b.md.' },
  // ---- network on request (docs/network.md) ----
  { key: 'networkEnabled', env: 'RUNNER_NETWORK_ENABLED', kind: 'boolean', default: false, description: 'Let a job ask for network (`network: true`, Judge0 enable_network); off: such a job is refused with NETWORK_DISABLED and no VM has a NIC.' },
  { key: 'networkAllow', env: 'RUNNER_NETWORK_ALLOW', kind: 'list', default: [], description: 'IPv4 CIDRs and domain names a networked job may reach (comma-separated); nothing else is reachable. Private ranges only when a CIDR names them; domains are resolved through networkDns when each VM is set up.' },
  { key: 'networkDns', env: 'RUNNER_NETWORK_DNS', kind: 'string', default: null, description: 'IPv4 address of the one DNS resolver networked jobs use (the guest asks its gateway, which forwards to it); unset: no DNS at all.' },
  { key: 'networkBandwidthKbit', env: 'RUNNER_NETWORK_BANDWIDTH_KBIT', kind: 'integer', default: 10000, unit: 'kbit/s', min: 8, description: 'Bandwidth cap of each networked VM, each way (tc tbf on its tap and veth).' },
  { key: 'networkMaxConnections', env: 'RUNNER_NETWORK_MAX_CONNECTIONS', kind: 'integer', default: 32, min: 1, max: 65535, description: 'Most connections (conntrack entries) a networked VM may have open at once (nft ct count).' },
  { key: 'networkLinkCidr', env: 'RUNNER_NETWORK_LINK_CIDR', kind: 'string', default: '10.255.0.0/16', description: 'IPv4 range of the per-VM veth links between the host and each VM namespace, one /30 per VM; must not overlap the host networks.' },
  // ---- sandboxes kept across calls (docs/sandboxes.md) ----
  { key: 'sandboxesDir', env: 'RUNNER_SANDBOXES_DIR', kind: 'string', default: null, description: 'Folder of the sandboxes kept across calls (their records, and the snapshots of paused ones); default <data dir>/sandboxes.' },
  { key: 'sandboxTimeoutMs', env: 'RUNNER_SANDBOX_TIMEOUT_MS', kind: 'integer', default: 300000, unit: 'ms', min: 1000, description: 'Time-to-live of a sandbox when its creator gives none: each call on it extends its life to this from now; at the end it is killed.' },
  { key: 'sandboxMaxTimeoutMs', env: 'RUNNER_SANDBOX_MAX_TIMEOUT_MS', kind: 'integer', default: 86400000, unit: 'ms', min: 1000, description: 'Longest time-to-live a client may ask for (longer ones are refused with LIMIT_INVALID).' },
  { key: 'sandboxMaxPerKey', env: 'RUNNER_SANDBOX_MAX_PER_KEY', kind: 'integer', default: 10, min: 0, max: 100000, description: 'Sandboxes one API key (one client without keys) may have at once, running or paused; beyond it create gets 429 SANDBOX_LIMIT.' },
  { key: 'sandboxMaxRunning', env: 'RUNNER_SANDBOX_MAX_RUNNING', kind: 'integer', default: 0, min: 0, max: 100000, description: 'Sandboxes running at once on this host (each holds a VM); beyond it create and resume get 429 SANDBOX_LIMIT. 0: half the VMs the pool may hold (at least one).' },
  { key: 'sandboxPausedTtlMs', env: 'RUNNER_SANDBOX_PAUSED_TTL_MS', kind: 'integer', default: 604800000, unit: 'ms', min: 1000, description: 'How long a paused sandbox is kept on disk; past it, it is deleted.' },
  { key: 'sandboxCommandTimeoutMs', env: 'RUNNER_SANDBOX_COMMAND_TIMEOUT_MS', kind: 'integer', default: 60000, unit: 'ms', min: 100, max: 3600000, description: 'Wall-clock limit of a command or code cell when the call gives none (at most an hour).' },
  // ---- many hosts on one Redis (docs/scaling.md) ----
  { key: 'redisUrl', env: 'RUNNER_REDIS_URL', kind: 'string', default: '', description: 'redis:// URL of the shared queue. Empty: a single box (in-process queue, SQLite). Set: `runner serve` is an API node and `runner worker` a VM host of that cluster (docs/scaling.md).' },
  { key: 'clusterPrefix', env: 'RUNNER_CLUSTER_PREFIX', kind: 'string', default: 'rc', description: 'Prefix of every Redis key of the cluster, so that two clusters can share one Redis.' },
  { key: 'clusterMaxInFlight', env: 'RUNNER_CLUSTER_MAX_IN_FLIGHT', kind: 'integer', default: 1024, min: 1, max: 1000000, description: 'Jobs one API node may have in the cluster at once (waiting or running).' },
  { key: 'clusterQueueWaitMs', env: 'RUNNER_CLUSTER_QUEUE_WAIT_MS', kind: 'integer', default: 600000, unit: 'ms', min: 1000, description: 'How long a job may wait for a worker, beyond its own deadline, before it ends as sandbox_error.' },
  { key: 'clusterLockMs', env: 'RUNNER_CLUSTER_LOCK_MS', kind: 'integer', default: 30000, unit: 'ms', min: 1000, description: 'How long a worker holds a job without renewing its lock (renewed every third of it): a worker that died is found stalled after at most about this long, and its job run again or ended.' },
  { key: 'workerId', env: 'RUNNER_WORKER_ID', kind: 'string', default: '', description: 'This worker\'s name in the cluster; empty: host name and pid.' },
] as const satisfies readonly SettingSpec[];

type Spec = (typeof SETTINGS)[number];
type ValueOf<S extends Spec> = S['kind'] extends 'integer'
  ? number
  : S['kind'] extends 'boolean'
    ? boolean
    : S['kind'] extends 'list'
      ? readonly string[]
      : S['default'] extends null
        ? string | null
        : string;

/** The validated, frozen configuration. */
export type Settings = { readonly [S in Spec as S['key']]: ValueOf<S> };

function parseValue(spec: SettingSpec, raw: unknown, origin: string): unknown {
  const bad = (why: string): never => {
    throw new ConfigInvalidError(`${spec.env} (${origin}): ${why}`);
  };
  switch (spec.kind) {
    case 'integer': {
      const n = typeof raw === 'number' ? raw : typeof raw === 'string' && /^-?\d+$/.test(raw.trim()) ? Number(raw) : NaN;
      if (!Number.isSafeInteger(n)) bad(`must be an integer, not ${JSON.stringify(raw)}`);
      if (spec.min !== undefined && n < spec.min) bad(`must be at least ${spec.min}`);
      if (spec.max !== undefined && n > spec.max) bad(`must be at most ${spec.max}`);
      return n;
    }
    case 'boolean':
      // yes/no and any case too: RUNNER_S3_FORCE_PATH_STYLE took them before it joined this table.
      if (typeof raw === 'boolean') return raw;
      if (typeof raw === 'string' && /^(true|1|yes)$/i.test(raw.trim())) return true;
      if (typeof raw === 'string' && /^(false|0|no)$/i.test(raw.trim())) return false;
      return bad(`must be true or false, not ${JSON.stringify(raw)}`);
    case 'enum':
      if (typeof raw !== 'string' || !spec.values?.includes(raw)) bad(`must be one of ${spec.values?.join(', ')}`);
      return raw;
    case 'list':
      if (Array.isArray(raw)) return raw.map(String);
      if (typeof raw === 'string') return raw.split(',').map((s) => s.trim()).filter((s) => s !== '');
      return bad('must be a comma-separated list');
    default:
      if (typeof raw !== 'string') return bad('must be a string');
      if (spec.schemes !== undefined) checkUrl(raw, spec.schemes, bad);
      return raw;
  }
}

function checkUrl(raw: string, schemes: readonly string[], bad: (why: string) => never): void {
  let url: URL | undefined;
  try {
    url = new URL(raw);
  } catch {
    url = undefined;
  }
  if (url === undefined || !schemes.includes(url.protocol.replace(/:$/, ''))) {
    bad(`must be a ${schemes.join(', ')} URL, not ${JSON.stringify(raw)}`);
  }
}

/** Freezes a value and everything in it: a frozen object whose lists stay mutable is not frozen. */
function deepFreeze<T>(value: T): T {
  if (typeof value === 'object' && value !== null) {
    Object.freeze(value);
    for (const inner of Object.values(value)) deepFreeze(inner);
  }
  return value;
}

/** Reads, validates and freezes the settings. Unknown keys in the file are an error. */
export function loadSettings(env: NodeJS.ProcessEnv = process.env, overrides: Partial<Record<string, unknown>> = {}): Settings {
  let file: Record<string, unknown> = {};
  if (env.RUNNER_CONFIG) {
    try {
      file = JSON.parse(readFileSync(env.RUNNER_CONFIG, 'utf8')) as Record<string, unknown>;
    } catch (err) {
      throw new ConfigInvalidError(`RUNNER_CONFIG ${env.RUNNER_CONFIG}: ${err instanceof Error ? err.message : String(err)}`);
    }
    const known = new Set<string>(SETTINGS.map((s) => s.key));
    for (const k of Object.keys(file)) {
      if (!known.has(k)) throw new ConfigInvalidError(`RUNNER_CONFIG ${env.RUNNER_CONFIG}: unknown setting ${k}`);
    }
  }
  const out: Record<string, unknown> = {};
  for (const spec of SETTINGS as readonly SettingSpec[]) {
    if (overrides[spec.key] !== undefined) out[spec.key] = parseValue(spec, overrides[spec.key], 'option');
    else if (env[spec.env] !== undefined && env[spec.env] !== '') out[spec.key] = parseValue(spec, env[spec.env], 'environment');
    else if (file[spec.key] !== undefined) out[spec.key] = parseValue(spec, file[spec.key], 'config file');
    else out[spec.key] = spec.default;
  }
  if (out.dataDir === null) out.dataDir = defaultDataDir();
  if (out.imagesDir === null) out.imagesDir = join(String(out.dataDir), 'images');
  return deepFreeze(out) as Settings;
}
