// The guest agent's entry point, bundled by scripts/bundle-agent.mjs into dist/agent/agent.mjs.
// It runs on the guest's Debian Node.js 18: no Node 20-only APIs here or below.
import { realpathSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { ConfigInvalidError } from '../errors.js';
import { LanguageRegistry } from '../languages/index.js';
import { AGENT_VERSION } from '../version.js';
import { Executor } from './executor.js';
import { SystemGuestActions } from './guest.js';
import { AgentServer } from './server.js';
import { messageOf } from './stage.js';
import { SerialTransport, UnixTransport, type Transport } from './transport.js';

export const USAGE = `usage: agent.mjs (--unix PATH | --serial DEVICE) --languages DIR
                 [--uid N --gid N] [--cgroup-root DIR | --no-cgroup] [--work-root DIR]
                 [--scratch DIR,DIR...] [--exec-helper PATH] [--vm-id ID]

  --unix PATH         listen on a unix socket (vsock reaches it through a socat bridge)
  --serial DEVICE     serve a virtio-serial port, e.g. /dev/virtio-ports/runner
  --languages DIR     the languages/ folder (one <name>/language.json each)
  --uid N, --gid N    run user code as this unprivileged user and group (needs root)
  --cgroup-root DIR   cgroup v2 hierarchy for per-stage cgroups (default /sys/fs/cgroup);
                      when it is not a usable cgroup v2, rlimits and a uid sweep are used
  --no-cgroup         never use cgroups
  --work-root DIR     where per-job work dirs are made (default $TMPDIR/runner-work)
  --scratch DIRS      shared scratch folders (comma-separated, e.g. /tmp,/var/tmp,/dev/shm)
                      emptied of the job user's files after every stage (default: none)
  --exec-helper PATH  the static runner-exec: each stage is one exec of it (cgroup, rlimits,
                      uid, no_new_privs, environment), and the reseed goes to its reseed
                      server, started now (default: the chain sh, prlimit, setpriv, env;
                      perl and date for the reseed)
  --vm-id ID          the VM id to announce until a seed message sets one
  --help, --version`;

/** The parsed command line. */
export interface AgentCliOptions {
  readonly unix: string | null;
  readonly serial: string | null;
  readonly languagesDir: string;
  readonly runAs: { uid: number; gid: number } | null;
  readonly cgroupRoot: string | null;
  readonly workRoot: string;
  readonly scratchDirs: readonly string[];
  readonly execHelper: string | null;
  readonly vmId: string | null;
}

/** Parses the agent's arguments; throws CONFIG_INVALID with a message fit for a usage error. */
export function parseAgentArgs(argv: readonly string[]): AgentCliOptions | 'help' | 'version' {
  let values;
  try {
    ({ values } = parseArgs({
      args: [...argv],
      strict: true,
      allowPositionals: false,
      options: {
        unix: { type: 'string' },
        serial: { type: 'string' },
        languages: { type: 'string' },
        uid: { type: 'string' },
        gid: { type: 'string' },
        'cgroup-root': { type: 'string' },
        'no-cgroup': { type: 'boolean' },
        'work-root': { type: 'string' },
        scratch: { type: 'string' },
        'exec-helper': { type: 'string' },
        'vm-id': { type: 'string' },
        help: { type: 'boolean', short: 'h' },
        version: { type: 'boolean' },
      },
    }));
  } catch (err) {
    throw new ConfigInvalidError(messageOf(err));
  }
  if (values.help) return 'help';
  if (values.version) return 'version';
  const bad = (m: string): never => {
    throw new ConfigInvalidError(m);
  };
  if ((values.unix === undefined) === (values.serial === undefined)) {
    bad('give exactly one of --unix PATH and --serial DEVICE');
  }
  if (values.languages === undefined) bad('--languages DIR is required');
  if ((values.uid === undefined) !== (values.gid === undefined))
    bad('give --uid and --gid together');
  const id = (name: string, v: string | undefined): number | null => {
    if (v === undefined) return null;
    if (!/^\d+$/.test(v) || Number(v) < 1 || Number(v) > 2 ** 31 - 1) {
      bad(`--${name} must be a positive integer (not 0: user code never runs as root)`);
    }
    return Number(v);
  };
  const uid = id('uid', values.uid);
  const gid = id('gid', values.gid);
  if (values['no-cgroup'] && values['cgroup-root'] !== undefined) {
    bad('--cgroup-root and --no-cgroup exclude each other');
  }
  return {
    unix: values.unix ?? null,
    serial: values.serial ?? null,
    languagesDir: values.languages as string,
    runAs: uid !== null && gid !== null ? { uid, gid } : null,
    cgroupRoot: values['no-cgroup'] ? null : (values['cgroup-root'] ?? '/sys/fs/cgroup'),
    workRoot: values['work-root'] ?? join(tmpdir(), 'runner-work'),
    scratchDirs: scratchDirs(values.scratch, bad),
    execHelper: values['exec-helper'] ?? null,
    vmId: values['vm-id'] ?? null,
  };
}

/** The --scratch folders: absolute paths, none of them `/`. */
function scratchDirs(value: string | undefined, bad: (m: string) => never): string[] {
  if (value === undefined || value === '') return [];
  const dirs = value.split(',').filter((d) => d !== '');
  for (const d of dirs) {
    if (!d.startsWith('/') || d.replace(/\/+$/, '') === '')
      bad(`--scratch: ${d} must be an absolute folder other than /`);
  }
  return dirs;
}

/** Starts the agent; resolves with the running transport. */
export async function startAgent(
  options: AgentCliOptions,
  log: (line: string) => void,
): Promise<Transport> {
  const languages = LanguageRegistry.fromDir(options.languagesDir);
  const executor = await Executor.create({
    languages,
    workRoot: options.workRoot,
    runAs: options.runAs,
    cgroupRoot: options.cgroupRoot,
    scratchDirs: options.scratchDirs,
    execHelper: options.execHelper,
    log,
  });
  log(`languages: ${executor.languages().join(', ') || '(none)'}`);
  const server = new AgentServer({
    executor,
    guest: new SystemGuestActions(options.execHelper, 10_000, log),
    vmId: options.vmId,
    log,
  });
  const transport: Transport = options.unix
    ? new UnixTransport(server, options.unix, log)
    : new SerialTransport(server, options.serial as string, {}, log);
  await transport.start();
  log(
    `agent ${AGENT_VERSION} serving ${options.unix ? `unix:${options.unix}` : `serial:${options.serial}`}`,
  );
  return transport;
}

async function main(argv: readonly string[]): Promise<number> {
  const log = (line: string): void => {
    process.stderr.write(`runner-agent: ${line}\n`);
  };
  let parsed;
  try {
    parsed = parseAgentArgs(argv);
  } catch (err) {
    process.stderr.write(`runner-agent: ${messageOf(err)}\n${USAGE}\n`);
    return 2;
  }
  if (parsed === 'help') {
    process.stdout.write(`${USAGE}\n`);
    return 0;
  }
  if (parsed === 'version') {
    process.stdout.write(`${AGENT_VERSION}\n`);
    return 0;
  }
  // The agent must outlive any one bad job or session: log stray rejections, keep serving.
  process.on('unhandledRejection', (reason) => log(`unhandled rejection: ${messageOf(reason)}`));
  let transport: Transport;
  try {
    transport = await startAgent(parsed, log);
  } catch (err) {
    log(`cannot start: ${messageOf(err)}`);
    return 1;
  }
  await new Promise<void>((resolve) => {
    const stop = (signal: string): void => {
      log(`${signal}: stopping`);
      resolve();
    };
    process.once('SIGTERM', stop);
    process.once('SIGINT', stop);
  });
  // A serial read may block until the host writes; do not wait for it forever.
  await Promise.race([transport.close(), new Promise((r) => setTimeout(r, 1000).unref())]);
  return 0;
}

/** True when this module is the process's entry point (the bundle, or `tsx src/agent/main.ts`). */
function isEntryPoint(): boolean {
  const script = process.argv[1];
  if (script === undefined) return false;
  try {
    return realpathSync(script) === realpathSync(fileURLToPath(import.meta.url));
  } catch {
    return false;
  }
}

if (isEntryPoint()) {
  main(process.argv.slice(2)).then(
    (code) => process.exit(code),
    (err: unknown) => {
      process.stderr.write(`runner-agent: ${messageOf(err)}\n`);
      process.exit(1);
    },
  );
}
