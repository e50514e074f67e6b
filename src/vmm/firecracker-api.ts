import { Agent, request as httpRequest } from 'node:http';
import { connect } from 'node:net';
import { setTimeout as sleep } from 'node:timers/promises';
import { type ErrorCode, errorOf, RunnerError, VmDiedError, VmTimeoutError } from '../errors.js';

/*
 * Firecracker's REST API, as far as the driver uses it. Every body the driver sends is built by
 * one of the typed builders below, and every request is one variant of `FirecrackerRequest`, so
 * that the contract test (tests/unit/vmm/firecracker-api.test.ts) can check each of them against
 * the operation's schema in Firecracker's own API description (swagger 2.0, v1.17).
 *
 * Field names are Firecracker's (snake_case, units in the names: `mem_size_mib`). The spec
 * does not say `additionalProperties: false`, but Firecracker's server parses bodies with serde's
 * `deny_unknown_fields`, so an unknown field is a 400: the types are closed.
 */

/** `MachineConfiguration` (PUT /machine-config). */
export interface MachineConfigurationBody {
  readonly vcpu_count: number;
  readonly mem_size_mib: number;
  readonly smt: boolean;
}

/** `BootSource` (PUT /boot-source). The kernel must be the uncompressed ELF vmlinux on x86. */
export interface BootSourceBody {
  readonly kernel_image_path: string;
  readonly initrd_path: string;
  readonly boot_args: string;
}

/** `Drive` (PUT /drives/{drive_id}), a virtio-block drive backed by a file. */
export interface DriveBody {
  readonly drive_id: string;
  readonly path_on_host: string;
  readonly is_root_device: boolean;
  readonly is_read_only: boolean;
}

/** `Vsock` (PUT /vsock): the guest's CID and the host-side unix socket of hybrid vsock. */
export interface VsockBody {
  readonly guest_cid: number;
  readonly uds_path: string;
}

/** `InstanceActionInfo` (PUT /actions). */
export interface InstanceActionBody {
  readonly action_type: 'InstanceStart' | 'FlushMetrics' | 'SendCtrlAltDel';
}

/** `Vm` (PATCH /vm). */
export interface VmStateBody {
  readonly state: 'Paused' | 'Resumed';
}

/** `SnapshotCreateParams` (PUT /snapshot/create). */
export interface SnapshotCreateBody {
  readonly snapshot_type: 'Full' | 'Diff';
  readonly snapshot_path: string;
  readonly mem_file_path: string;
}

/** `MemoryBackend`, part of `SnapshotLoadParams`. */
export interface MemoryBackendBody {
  readonly backend_type: 'File' | 'Uffd';
  readonly backend_path: string;
}

/**
 * `SnapshotLoadParams` (PUT /snapshot/load). Exactly one of `mem_backend` and the deprecated
 * `mem_file_path` may be present; we send `mem_backend`.
 */
export interface SnapshotLoadBody {
  readonly snapshot_path: string;
  readonly mem_backend: MemoryBackendBody;
  readonly resume_vm: boolean;
}

/**
 * Every call the driver makes, one variant per operation, named by the spec's `operationId`.
 * `path` is the concrete path (`/drives/rootfs`); the spec's template is in FIRECRACKER_PATHS.
 */
export type FirecrackerRequest =
  | {
      readonly operationId: 'putMachineConfiguration';
      readonly method: 'PUT';
      readonly path: '/machine-config';
      readonly body: MachineConfigurationBody;
    }
  | {
      readonly operationId: 'putGuestBootSource';
      readonly method: 'PUT';
      readonly path: '/boot-source';
      readonly body: BootSourceBody;
    }
  | {
      readonly operationId: 'putGuestDriveByID';
      readonly method: 'PUT';
      readonly path: `/drives/${string}`;
      readonly body: DriveBody;
    }
  | {
      readonly operationId: 'putGuestVsock';
      readonly method: 'PUT';
      readonly path: '/vsock';
      readonly body: VsockBody;
    }
  | {
      readonly operationId: 'createSyncAction';
      readonly method: 'PUT';
      readonly path: '/actions';
      readonly body: InstanceActionBody;
    }
  | {
      readonly operationId: 'patchVm';
      readonly method: 'PATCH';
      readonly path: '/vm';
      readonly body: VmStateBody;
    }
  | {
      readonly operationId: 'createSnapshot';
      readonly method: 'PUT';
      readonly path: '/snapshot/create';
      readonly body: SnapshotCreateBody;
    }
  | {
      readonly operationId: 'loadSnapshot';
      readonly method: 'PUT';
      readonly path: '/snapshot/load';
      readonly body: SnapshotLoadBody;
    };

/** The spec's `operationId` of each operation the driver uses. */
export type FirecrackerOperationId = FirecrackerRequest['operationId'];

/** The spec's path template of each operation the driver uses. */
export const FIRECRACKER_PATHS: Readonly<Record<FirecrackerOperationId, string>> = {
  putMachineConfiguration: '/machine-config',
  putGuestBootSource: '/boot-source',
  putGuestDriveByID: '/drives/{drive_id}',
  putGuestVsock: '/vsock',
  createSyncAction: '/actions',
  patchVm: '/vm',
  createSnapshot: '/snapshot/create',
  loadSnapshot: '/snapshot/load',
};

// ---- body builders -----------------------------------------------------------------------

/** The machine: SMT off (a guest must not share a core's siblings with another tenant). */
export function machineConfigBody(resources: {
  vcpus: number;
  memoryMib: number;
}): MachineConfigurationBody {
  return { vcpu_count: resources.vcpus, mem_size_mib: resources.memoryMib, smt: false };
}

/** The kernel (ELF vmlinux), the initramfs and the kernel command line. */
export function bootSourceBody(source: {
  kernelPath: string;
  initrdPath: string;
  bootArgs: string;
}): BootSourceBody {
  return {
    kernel_image_path: source.kernelPath,
    initrd_path: source.initrdPath,
    boot_args: source.bootArgs,
  };
}

/**
 * A read-only virtio-block drive: the language's (`rootfs`) or the base image under it
 * (`base`). Not the root device: the initramfs mounts the drives itself (under an overlay), so
 * Firecracker must not add `root=` to the command line.
 */
export function rootfsDriveBody(
  pathOnHost: string,
  driveId: 'rootfs' | 'base' = 'rootfs',
): DriveBody {
  return {
    drive_id: driveId,
    path_on_host: pathOnHost,
    is_root_device: false,
    is_read_only: true,
  };
}

/** The hybrid vsock device: host-initiated connections go through `uds_path`. */
export function vsockBody(guestCid: number, udsPath: string): VsockBody {
  return { guest_cid: guestCid, uds_path: udsPath };
}

/** Starts the configured VM (after which the pre-boot calls are refused). */
export function instanceStartBody(): InstanceActionBody {
  return { action_type: 'InstanceStart' };
}

/** Pauses or resumes the vCPUs (a snapshot needs a paused VM). */
export function vmStateBody(state: VmStateBody['state']): VmStateBody {
  return { state };
}

/** A full snapshot: device state to `snapshotPath`, all of guest memory to `memFilePath`. */
export function snapshotCreateBody(paths: {
  snapshotPath: string;
  memFilePath: string;
}): SnapshotCreateBody {
  return {
    snapshot_type: 'Full',
    snapshot_path: paths.snapshotPath,
    mem_file_path: paths.memFilePath,
  };
}

/** Loads a full snapshot from files and resumes it at once (`resume_vm`). */
export function snapshotLoadBody(paths: {
  snapshotPath: string;
  memFilePath: string;
}): SnapshotLoadBody {
  return {
    snapshot_path: paths.snapshotPath,
    mem_backend: { backend_type: 'File', backend_path: paths.memFilePath },
    resume_vm: true,
  };
}

// ---- requests ----------------------------------------------------------------------------

/** One constructor per operation: the method and path go with the body's type. */
export const firecrackerRequests = {
  putMachineConfig: (body: MachineConfigurationBody): FirecrackerRequest => ({
    operationId: 'putMachineConfiguration',
    method: 'PUT',
    path: '/machine-config',
    body,
  }),
  putBootSource: (body: BootSourceBody): FirecrackerRequest => ({
    operationId: 'putGuestBootSource',
    method: 'PUT',
    path: '/boot-source',
    body,
  }),
  putDrive: (body: DriveBody): FirecrackerRequest => ({
    operationId: 'putGuestDriveByID',
    method: 'PUT',
    path: `/drives/${encodeURIComponent(body.drive_id)}`,
    body,
  }),
  putVsock: (body: VsockBody): FirecrackerRequest => ({
    operationId: 'putGuestVsock',
    method: 'PUT',
    path: '/vsock',
    body,
  }),
  action: (body: InstanceActionBody): FirecrackerRequest => ({
    operationId: 'createSyncAction',
    method: 'PUT',
    path: '/actions',
    body,
  }),
  patchVm: (body: VmStateBody): FirecrackerRequest => ({
    operationId: 'patchVm',
    method: 'PATCH',
    path: '/vm',
    body,
  }),
  createSnapshot: (body: SnapshotCreateBody): FirecrackerRequest => ({
    operationId: 'createSnapshot',
    method: 'PUT',
    path: '/snapshot/create',
    body,
  }),
  loadSnapshot: (body: SnapshotLoadBody): FirecrackerRequest => ({
    operationId: 'loadSnapshot',
    method: 'PUT',
    path: '/snapshot/load',
    body,
  }),
} as const;

/** What a cold boot needs, with every path as Firecracker will see it. */
export interface FirecrackerBootPlan {
  readonly vcpus: number;
  readonly memoryMib: number;
  readonly kernelPath: string;
  readonly initrdPath: string;
  readonly rootfsPath: string;
  /** The base image under a layered language's drive. */
  readonly basePath?: string;
  readonly bootArgs: string;
  readonly guestCid: number;
  readonly vsockPath: string;
}

/** The calls of a cold boot, in order: machine, kernel, rootfs, vsock, then start. */
export function bootRequests(plan: FirecrackerBootPlan): FirecrackerRequest[] {
  return [
    firecrackerRequests.putMachineConfig(machineConfigBody(plan)),
    firecrackerRequests.putBootSource(
      bootSourceBody({
        kernelPath: plan.kernelPath,
        initrdPath: plan.initrdPath,
        bootArgs: plan.bootArgs,
      }),
    ),
    ...(plan.basePath === undefined
      ? []
      : [firecrackerRequests.putDrive(rootfsDriveBody(plan.basePath, 'base'))]),
    firecrackerRequests.putDrive(rootfsDriveBody(plan.rootfsPath)),
    firecrackerRequests.putVsock(vsockBody(plan.guestCid, plan.vsockPath)),
    firecrackerRequests.action(instanceStartBody()),
  ];
}

/** The calls of a snapshot, in order: pause, then a full snapshot. */
export function snapshotRequests(paths: {
  snapshotPath: string;
  memFilePath: string;
}): [pause: FirecrackerRequest, create: FirecrackerRequest] {
  return [
    firecrackerRequests.patchVm(vmStateBody('Paused')),
    firecrackerRequests.createSnapshot(snapshotCreateBody(paths)),
  ];
}

/** The one call of a restore (on a fresh Firecracker): load and resume. */
export function restoreRequests(paths: {
  snapshotPath: string;
  memFilePath: string;
}): [load: FirecrackerRequest] {
  return [firecrackerRequests.loadSnapshot(snapshotLoadBody(paths))];
}

// ---- the client --------------------------------------------------------------------------

/** The longest unix socket path (sun_path is 108 bytes with its NUL). */
export const MAX_UNIX_PATH_BYTES = 107;

/** Throws `code` when a unix socket path is too long to connect to or bind. */
export function checkUnixPath(path: string, code: ErrorCode): void {
  if (Buffer.byteLength(path) > MAX_UNIX_PATH_BYTES) {
    throw errorOf(
      code,
      `unix socket path ${path} is ${Buffer.byteLength(path)} bytes, over the limit of ${MAX_UNIX_PATH_BYTES}: use a shorter run or chroot folder`,
    );
  }
}

/** An answer body larger than this is not Firecracker's. */
const MAX_RESPONSE_BYTES = 64 * 1024;

/** Details of a failed API call, on the RunnerError it is thrown as. */
export interface FirecrackerFault {
  readonly method: string;
  readonly path: string;
  /** The HTTP status, or null when the request never got an answer. */
  readonly status: number | null;
  /** Firecracker's `fault_message`, when it sent one. */
  readonly faultMessage: string | null;
}

/**
 * Firecracker's API over its unix socket. One keep-alive connection, one request at a time
 * (Firecracker's API server handles requests one by one anyway). Bodies are sent with a
 * Content-Length: Firecracker's HTTP server does not take chunked bodies.
 */
export class FirecrackerApiClient {
  private readonly agent = new Agent({ keepAlive: true, maxSockets: 1 });

  constructor(
    readonly socketPath: string,
    private readonly defaultTimeoutMs = 10_000,
  ) {}

  /**
   * Waits until the API socket accepts connections (Firecracker creates it a few ms after it
   * starts). `alive` is polled so that a dead VMM is not waited for.
   */
  static async waitForSocket(
    path: string,
    options: { deadline: number; alive: () => boolean },
  ): Promise<void> {
    checkUnixPath(path, 'VM_BOOT_FAILED');
    for (;;) {
      if (!options.alive()) {
        throw new VmDiedError('Firecracker exited before its API socket opened');
      }
      const ok = await new Promise<boolean>((resolve) => {
        const socket = connect(path);
        socket.once('connect', () => {
          socket.destroy();
          resolve(true);
        });
        socket.once('error', () => resolve(false));
      });
      if (ok) return;
      if (Date.now() > options.deadline) {
        throw new VmTimeoutError(`Firecracker's API socket ${path} did not open`);
      }
      await sleep(5);
    }
  }

  /**
   * Sends one request; resolves on a 2xx answer. Any other answer, a broken connection or a
   * timeout throws a RunnerError with `code` and a FirecrackerFault as details.
   */
  send(req: FirecrackerRequest, code: ErrorCode, timeoutMs = this.defaultTimeoutMs): Promise<void> {
    const payload = Buffer.from(JSON.stringify(req.body), 'utf8');
    const fail = (
      status: number | null,
      faultMessage: string | null,
      why: string,
      cause?: unknown,
    ): RunnerError =>
      errorOf(code, `Firecracker ${req.method} ${req.path}: ${why}`, {
        cause,
        details: {
          method: req.method,
          path: req.path,
          status,
          faultMessage,
        } satisfies FirecrackerFault,
      });
    return new Promise<void>((resolve, reject) => {
      const r = httpRequest(
        {
          socketPath: this.socketPath,
          agent: this.agent,
          method: req.method,
          path: req.path,
          headers: {
            'Content-Type': 'application/json',
            Accept: 'application/json',
            'Content-Length': payload.length,
          },
        },
        (res) => {
          const chunks: Buffer[] = [];
          let size = 0;
          res.on('data', (chunk: Buffer) => {
            size += chunk.length;
            if (size <= MAX_RESPONSE_BYTES) chunks.push(chunk);
          });
          res.on('error', (err) => reject(fail(null, null, err.message, err)));
          res.on('end', () => {
            const status = res.statusCode ?? 0;
            if (status >= 200 && status < 300) {
              resolve();
              return;
            }
            const text = Buffer.concat(chunks).toString('utf8');
            const fault = faultMessageOf(text);
            reject(
              fail(
                status,
                fault,
                fault === null
                  ? `HTTP ${status}${text.trim() === '' ? '' : ` ${text.trim().slice(0, 200)}`}`
                  : `${fault} (HTTP ${status})`,
              ),
            );
          });
        },
      );
      r.setTimeout(timeoutMs, () => {
        r.destroy(new VmTimeoutError(`no answer within ${timeoutMs} ms`));
      });
      r.on('error', (err) => reject(fail(null, null, err.message, err)));
      r.end(payload);
    });
  }

  /** Closes the connection. */
  close(): void {
    this.agent.destroy();
  }
}

/** The `fault_message` of an error body (`{"fault_message": "..."}`), or null. */
export function faultMessageOf(text: string): string | null {
  try {
    const value: unknown = JSON.parse(text);
    if (typeof value === 'object' && value !== null && 'fault_message' in value) {
      const message = value.fault_message;
      if (typeof message === 'string') return message;
    }
  } catch {
    // not JSON: the caller reports the raw text
  }
  return null;
}
