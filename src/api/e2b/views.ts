import type { FileEntry, SandboxInfo } from '../../sandbox/index.js';

/**
 * The envd version we report. The SDK gates features on it (docs/e2b.md): at or above 0.4.0 it
 * sends no default user, 0.5.7 allows closeStdin and raw uploads; below 0.6.2, it sends no
 * file metadata and uses no watcher options we lack.
 */
export const ENVD_VERSION = '0.5.7';
/** The `clientID` of every sandbox (E2B's team-side id: we have none). */
const CLIENT_ID = 'runner-codes';

/** The fields every control-plane view of a sandbox shares. */
function common(info: SandboxInfo) {
  return {
    sandboxID: info.id,
    templateID: info.template,
    alias: info.language,
    clientID: CLIENT_ID,
    envdVersion: ENVD_VERSION,
  };
}

/** E2B's `Sandbox` (create, connect): what the SDK needs to reach the sandbox. */
export function sandboxView(info: SandboxInfo, envdAccessToken: string) {
  return { ...common(info), envdAccessToken, trafficAccessToken: null, domain: null };
}

/** E2B's `ListedSandbox` (GET /v2/sandboxes). */
export function listedView(info: SandboxInfo) {
  return {
    ...common(info),
    startedAt: info.startedAt,
    endAt: info.expiresAt,
    state: info.state,
    cpuCount: info.vcpus,
    memoryMB: info.memoryMib,
    // We do not size a sandbox's folder: its files share the guest's disk.
    diskSizeMB: 0,
    metadata: info.metadata,
    volumeMounts: [],
  };
}

/** E2B's `SandboxDetail` (GET /sandboxes/{id}). */
export function detailView(info: SandboxInfo, envdAccessToken: string) {
  return {
    ...listedView(info),
    envdAccessToken,
    domain: null,
    allowInternetAccess: false,
    lifecycle: { onTimeout: 'kill', autoResume: false },
  };
}

const FILE_TYPES = {
  file: 'FILE_TYPE_FILE',
  dir: 'FILE_TYPE_DIRECTORY',
  symlink: 'FILE_TYPE_SYMLINK',
  other: 'FILE_TYPE_UNSPECIFIED',
} as const;

/** `ls -l`'s permission string of a mode, as envd reports it. */
function permissions(entry: FileEntry): string {
  const kind = entry.type === 'dir' ? 'd' : entry.type === 'symlink' ? 'l' : '-';
  let s = kind;
  for (const shift of [6, 3, 0]) {
    const bits = (entry.mode >> shift) & 7;
    s += (bits & 4 ? 'r' : '-') + (bits & 2 ? 'w' : '-') + (bits & 1 ? 'x' : '-');
  }
  return s;
}

/**
 * envd's `EntryInfo` (protobuf JSON): the sandbox user owns every file we show (the guest has
 * one user), and the size is an int64, so a string.
 */
export function entryInfo(entry: FileEntry) {
  return {
    name: entry.name,
    type: FILE_TYPES[entry.type],
    path: entry.path,
    size: String(entry.size),
    mode: entry.mode,
    permissions: permissions(entry),
    owner: 'user',
    group: 'user',
    modifiedTime: entry.modifiedAt,
    ...(entry.target !== undefined && { symlinkTarget: entry.target }),
  };
}

/** What `POST /files` answers for each file written (envd's WriteInfo). */
export function writeInfo(entry: FileEntry) {
  return { name: entry.name, type: entry.type === 'dir' ? 'dir' : 'file', path: entry.path };
}
