import {
  chmodSync,
  chownSync,
  cpSync,
  existsSync,
  lstatSync,
  mkdirSync,
  readdirSync,
  readFileSync,
  readlinkSync,
  rmSync,
  statSync,
  writeFileSync,
} from 'node:fs';
import { isAbsolute, join, posix } from 'node:path';
import { ImageBuildFailedError } from '../errors.js';
import type { Language } from '../languages/index.js';
import { unmountUnder } from './chroot.js';
import {
  GUEST_AGENT_PATH,
  GUEST_EXEC_HELPER_PATH,
  GUEST_INIT_PATH,
  GUEST_INIT_SCRIPT,
  GUEST_LANGUAGES_DIR,
  GUEST_RUNNER_GID,
  GUEST_RUNNER_UID,
} from './guest-init.js';

/*
 * Edits of a guest tree on the host, before it becomes an image: every path is resolved as the
 * guest would resolve it (guestPath), so that a symlink in the tree never leads a write outside.
 */

/**
 * Resolves a guest path to a host path inside `root`, following symlinks as the guest would
 * (an absolute link target is taken relative to `root`), so that writing through a link such as
 * /sbin -> usr/sbin can never land outside the tree.
 */
export function guestPath(root: string, path: string): string {
  let hops = 0;
  const pending = path.split('/').filter((p) => p !== '' && p !== '.');
  const resolved: string[] = [];
  while (pending.length > 0) {
    const part = pending.shift() ?? '';
    if (part === '..') {
      resolved.pop();
      continue;
    }
    const candidate = join(root, ...resolved, part);
    let link: string | undefined;
    try {
      if (lstatSync(candidate).isSymbolicLink()) link = readlinkSync(candidate);
    } catch {
      link = undefined;
    }
    // The last component is not followed: callers replace it, never write through it.
    if (link === undefined || pending.length === 0) {
      resolved.push(part);
      continue;
    }
    hops += 1;
    if (hops > 40) throw new ImageBuildFailedError(`too many symlinks in ${path}`);
    if (isAbsolute(link)) resolved.length = 0;
    pending.unshift(...link.split('/').filter((p) => p !== '' && p !== '.'));
  }
  return join(root, ...resolved);
}

/** Writes a file into the tree, replacing (never writing through) whatever is at that path. */
export function writeGuestFile(root: string, path: string, content: string, mode = 0o644): void {
  const target = guestPath(root, path);
  mkdirSync(posix.dirname(target), { recursive: true });
  rmSync(target, { force: true });
  writeFileSync(target, content, { mode, flag: 'wx' });
  chmodSync(target, mode);
  chownSync(target, 0, 0);
}

/** Adds the unprivileged user `runner` (uid and gid 1000, home /home/runner) by editing the files. */
function addRunnerUser(root: string): void {
  const uid = GUEST_RUNNER_UID;
  const gid = GUEST_RUNNER_GID;
  const append = (path: string, line: string, mode: number): void => {
    const file = guestPath(root, path);
    const text = existsSync(file) ? readFileSync(file, 'utf8') : '';
    const lines = text.split('\n').filter((l) => l !== '' && !l.startsWith('runner:'));
    const stat = existsSync(file) ? statSync(file) : undefined;
    rmSync(file, { force: true });
    writeFileSync(file, `${[...lines, line].join('\n')}\n`, {
      mode: stat?.mode ?? mode,
      flag: 'wx',
    });
    chmodSync(file, (stat?.mode ?? mode) & 0o7777);
    chownSync(file, 0, stat?.gid ?? 0);
  };
  append('/etc/passwd', `runner:x:${uid}:${gid}:Runner Codes jobs:/home/runner:/bin/sh`, 0o644);
  append('/etc/group', `runner:x:${gid}:`, 0o644);
  append('/etc/shadow', 'runner:*:1:0:99999:7:::', 0o640);
  if (existsSync(guestPath(root, '/etc/gshadow'))) append('/etc/gshadow', 'runner:!::', 0o640);
  const home = guestPath(root, '/home/runner');
  mkdirSync(home, { recursive: true });
  chmodSync(home, 0o755);
  chownSync(home, uid, gid);
}

/** Language folders come from a checkout: make them root-owned and world-readable. */
function normaliseOwnership(dir: string): void {
  chownSync(dir, 0, 0);
  chmodSync(dir, 0o755);
  for (const entry of readdirSync(dir, { withFileTypes: true })) {
    const path = join(dir, entry.name);
    if (entry.isDirectory()) normaliseOwnership(path);
    else {
      chownSync(path, 0, 0);
      chmodSync(path, 0o644);
    }
  }
}

/** Removes the downloaded .deb files of a tree (the shared cache keeps them, not the layers). */
export function emptyDebCache(root: string): void {
  const archives = guestPath(root, '/var/cache/apt/archives');
  unmountUnder(archives);
  if (!existsSync(archives)) return;
  for (const entry of readdirSync(archives)) {
    if (entry.endsWith('.deb')) rmSync(join(archives, entry), { force: true });
  }
}

/** Empties a guest folder, keeping the folder itself. */
function emptyDir(root: string, path: string): void {
  const dir = guestPath(root, path);
  unmountUnder(dir);
  if (!existsSync(dir) || !lstatSync(dir).isDirectory()) return;
  for (const entry of readdirSync(dir)) rmSync(join(dir, entry), { recursive: true, force: true });
}

/**
 * Removes what a read-only guest never needs: apt's lists and caches and sources, the build's
 * policy-rc.d, documentation, man pages, translations, logs.
 */
export function shrink(root: string): void {
  for (const dir of [
    '/var/lib/apt/lists',
    '/var/cache/apt',
    '/usr/share/doc',
    '/usr/share/man',
    '/usr/share/info',
    '/usr/share/locale',
    '/usr/share/lintian',
    '/usr/share/linda',
    '/var/log',
    '/tmp',
    '/var/tmp',
    '/etc/apt/sources.list.d',
  ]) {
    emptyDir(root, dir);
  }
  for (const file of [
    '/etc/apt/sources.list',
    '/usr/sbin/policy-rc.d',
    '/etc/machine-id',
    '/var/lib/dbus/machine-id',
    '/root/.bash_history',
  ]) {
    rmSync(guestPath(root, file), { force: true });
  }
  for (const dir of ['/var/lib/dpkg', '/var/cache/debconf']) {
    const path = guestPath(root, dir);
    if (!existsSync(path)) continue;
    for (const entry of readdirSync(path)) {
      if (entry.endsWith('-old')) rmSync(join(path, entry), { force: true });
    }
  }
  chmodSync(guestPath(root, '/tmp'), 0o1777);
  chmodSync(guestPath(root, '/var/tmp'), 0o1777);
}

/**
 * The guest edits every image tree gets, the base's and each toolchain's alike (so that a
 * language layer, their difference, holds none of them): the runner user, our own /etc files in
 * place of the ones debootstrap copied from the host, and the (empty) languages folder.
 */
export function installCommonGuestFiles(root: string): void {
  addRunnerUser(root);
  writeGuestFile(root, '/etc/hostname', 'runner\n');
  writeGuestFile(
    root,
    '/etc/hosts',
    '127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n127.0.1.1\trunner\n',
  );
  writeGuestFile(root, '/etc/resolv.conf', '');
  mkdirSync(guestPath(root, GUEST_LANGUAGES_DIR), { recursive: true, mode: 0o755 });
}

/** What only the base image holds: the agent bundle, the exec helper and /sbin/runner-init. */
export function installAgentFiles(root: string, agentBundle: Buffer, execHelper: Buffer): void {
  const agentPath = guestPath(root, GUEST_AGENT_PATH);
  mkdirSync(posix.dirname(agentPath), { recursive: true, mode: 0o755 });
  rmSync(agentPath, { force: true });
  writeFileSync(agentPath, agentBundle, { mode: 0o644, flag: 'wx' });
  chmodSync(agentPath, 0o644);
  // The static exec helper: root's, run by the agent only (0755: nothing in it is secret).
  const helperPath = guestPath(root, GUEST_EXEC_HELPER_PATH);
  rmSync(helperPath, { force: true });
  writeFileSync(helperPath, execHelper, { mode: 0o755, flag: 'wx' });
  chmodSync(helperPath, 0o755);
  writeGuestFile(root, GUEST_INIT_PATH, GUEST_INIT_SCRIPT, 0o755);
}

/** What a language layer adds of its own: the language's folder (only this one language). */
export function installLanguageFolder(root: string, language: Language): void {
  const langDir = join(guestPath(root, GUEST_LANGUAGES_DIR), language.definition.name);
  mkdirSync(langDir, { recursive: true, mode: 0o755 });
  cpSync(language.dir, langDir, { recursive: true, dereference: true });
  normaliseOwnership(langDir);
}

/** Where a `{guest-cpu}` prepare command finds QEMU's user-mode emulator in a layer tree. */
export const GUEST_CPU_DIR = '/.runner-guest-cpu';

/** The host's static user-mode QEMU (Debian's qemu-user-static). */
export const HOST_QEMU_USER = '/usr/bin/qemu-x86_64-static';

/**
 * Expands a layer's prepare command: one that starts with `{guest-cpu}` runs under QEMU's
 * user-mode emulator with the CPU model the VMs get under TCG (`-cpu max`), copied into the tree
 * for the command (the caller removes GUEST_CPU_DIR after it). What a program detects of the CPU
 * (V8 puts the CPU's features in the tag of a startup snapshot, which a start then checks) is
 * then what it will detect in the VM. Any other command is returned as it is.
 */
export function guestCpuArgv(root: string, argv: readonly string[]): string[] {
  if (argv[0] !== '{guest-cpu}') return [...argv];
  if (!existsSync(HOST_QEMU_USER)) {
    throw new ImageBuildFailedError(
      `a {guest-cpu} prepare command needs ${HOST_QEMU_USER} (apt-get install qemu-user-static; scripts/setup.sh installs it)`,
    );
  }
  const dir = guestPath(root, GUEST_CPU_DIR);
  mkdirSync(dir, { recursive: true, mode: 0o755 });
  cpSync(HOST_QEMU_USER, join(dir, 'qemu-x86_64-static'));
  chmodSync(join(dir, 'qemu-x86_64-static'), 0o755);
  return [`${GUEST_CPU_DIR}/qemu-x86_64-static`, '-cpu', 'max', ...argv.slice(1)];
}
