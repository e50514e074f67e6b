import { existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { createServer as createHttpServer, type IncomingMessage } from 'node:http';
import { createServer, type Server } from 'node:net';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { RunnerError } from '../../../src/errors.js';
import {
  bootRequests,
  checkUnixPath,
  faultMessageOf,
  FIRECRACKER_FILES,
  FIRECRACKER_PATHS,
  FirecrackerApiClient,
  firecrackerBootArgs,
  firecrackerCommand,
  firecrackerLayout,
  firecrackerPath,
  firecrackerRequests,
  isFirecrackerVmId,
  jailerCgroupDirs,
  restoreRequests,
  snapshotMemoryPath,
  snapshotRequests,
  vsockConnect,
  type FirecrackerFault,
  type FirecrackerJailerOptions,
  type FirecrackerRequest,
} from '../../../src/vmm/index.js';
import {
  FIRECRACKER_SPEC_PATH,
  findOperation,
  loadFirecrackerSpec,
  resolveRef,
  validateRequest,
  validateSchema,
} from '../../contract/firecracker-openapi.js';

const spec = loadFirecrackerSpec();

/** The project's reference copy, beside the repository (absent in some clones). */
const SHARED_SPEC = resolve(
  import.meta.dirname,
  '../../../../shared/reference/firecracker-openapi.yaml',
);

/** Every request the driver can make, jailed and not. */
function allDriverRequests(): FirecrackerRequest[] {
  const out: FirecrackerRequest[] = [];
  for (const jailed of [false, true]) {
    out.push(
      ...bootRequests({
        vcpus: 2,
        memoryMib: 512,
        kernelPath: firecrackerPath('kernel', jailed),
        initrdPath: firecrackerPath('initrd', jailed),
        rootfsPath: firecrackerPath('rootfs', jailed),
        basePath: firecrackerPath('base', jailed),
        bootArgs: firecrackerBootArgs(['runner.debug=1']),
        guestCid: 3,
        vsockPath: firecrackerPath('vsockSocket', jailed),
      }),
      ...snapshotRequests({
        snapshotPath: jailed ? '/snapshot.state' : '/var/lib/runner/snap/vm.snap.partial-1',
        memFilePath: jailed ? '/snapshot.mem' : '/var/lib/runner/snap/vm.snap.mem.partial-1',
      }),
      ...restoreRequests({
        snapshotPath: jailed ? '/snapshot.state' : '/var/lib/runner/snap/vm.snap',
        memFilePath: jailed ? '/snapshot.mem' : '/var/lib/runner/snap/vm.snap.mem',
      }),
    );
  }
  return out;
}

describe('the Firecracker API description', () => {
  it('is the swagger 2.0 description of a Firecracker release line we target', () => {
    expect(spec.swagger).toBe('2.0');
    expect(spec.info.version).toMatch(/^1\.\d+\./);
  });

  // The reference copy lives beside the project in the workspace, not in a clone of it.
  if (!existsSync(SHARED_SPEC))
    console.info(`skipping the comparison with the shared reference copy: no ${SHARED_SPEC}`);
  it.skipIf(!existsSync(SHARED_SPEC))('is the same as the shared reference copy', () => {
    expect(readFileSync(FIRECRACKER_SPEC_PATH, 'utf8')).toBe(readFileSync(SHARED_SPEC, 'utf8'));
  });

  it('has every operation the driver uses, at the path and with the method it uses', () => {
    const byId = new Map<string, { method: string; template: string }>();
    for (const [template, methods] of Object.entries(spec.paths)) {
      for (const [method, op] of Object.entries(methods)) {
        byId.set(op.operationId, { method: method.toUpperCase(), template });
      }
    }
    for (const req of allDriverRequests()) {
      const inSpec = byId.get(req.operationId);
      expect(inSpec, req.operationId).toBeDefined();
      expect(inSpec?.method).toBe(req.method);
      expect(inSpec?.template).toBe(FIRECRACKER_PATHS[req.operationId]);
      const found = findOperation(spec, req.method, req.path);
      expect(found?.operation.operationId, `${req.method} ${req.path}`).toBe(req.operationId);
    }
  });

  it('does not serve methods the spec does not list', () => {
    expect(findOperation(spec, 'GET', '/actions')).toBeUndefined();
    expect(findOperation(spec, 'PUT', '/vm')).toBeUndefined();
    expect(findOperation(spec, 'PUT', '/snapshots/create')).toBeUndefined();
    expect(findOperation(spec, 'PUT', '/drives/rootfs')?.params).toEqual({ drive_id: 'rootfs' });
  });
});

describe('every request body the driver builds', () => {
  const requests = allDriverRequests();

  it.each(requests.map((r, i) => [`${i}: ${r.method} ${r.path}`, r] as const))(
    'matches its operation in the spec: %s',
    (_name, req) => {
      expect(validateRequest(spec, req)).toEqual([]);
    },
  );

  it('covers every operation of the request union', () => {
    const used = new Set(requests.map((r) => r.operationId));
    expect([...used].sort()).toEqual(Object.keys(FIRECRACKER_PATHS).sort());
  });

  it('boots in the documented order, with both drives read-only and neither the root device', () => {
    const boot = requests.slice(0, 6);
    expect(boot.map((r) => `${r.method} ${r.path}`)).toEqual([
      'PUT /machine-config',
      'PUT /boot-source',
      'PUT /drives/base',
      'PUT /drives/rootfs',
      'PUT /vsock',
      'PUT /actions',
    ]);
    expect(boot[0]?.body).toEqual({ vcpu_count: 2, mem_size_mib: 512, smt: false });
    expect(boot[2]?.body).toEqual({
      drive_id: 'base',
      path_on_host: 'base.ext4',
      is_root_device: false,
      is_read_only: true,
    });
    expect(boot[3]?.body).toEqual({
      drive_id: 'rootfs',
      path_on_host: 'rootfs.ext4',
      is_root_device: false,
      is_read_only: true,
    });
    expect(boot[4]?.body).toEqual({ guest_cid: 3, uds_path: 'vsock.sock' });
    expect(boot[5]?.body).toEqual({ action_type: 'InstanceStart' });
  });

  it('loads snapshots with mem_backend (the spec deprecates mem_file_path) and resumes them', () => {
    const [load] = restoreRequests({ snapshotPath: 's', memFilePath: 'm' });
    expect(load.body).toEqual({
      snapshot_path: 's',
      mem_backend: { backend_type: 'File', backend_path: 'm' },
      resume_vm: true,
    });
    const [pause, create] = snapshotRequests({ snapshotPath: 's', memFilePath: 'm' });
    expect(pause.body).toEqual({ state: 'Paused' });
    expect(create.body).toEqual({ snapshot_type: 'Full', snapshot_path: 's', mem_file_path: 'm' });
  });
});

describe('the spec validator', () => {
  const machine = { $ref: '#/definitions/MachineConfiguration' };

  it('accepts a good body', () => {
    expect(validateSchema(spec, machine, { vcpu_count: 1, mem_size_mib: 128 })).toEqual([]);
  });

  it.each([
    ['a missing required field', { vcpu_count: 1 }, /missing required property mem_size_mib/],
    ['a wrong type', { vcpu_count: '1', mem_size_mib: 128 }, /vcpu_count: expected integer/],
    ['a fraction for an integer', { vcpu_count: 1.5, mem_size_mib: 128 }, /expected integer/],
    ['a value under the minimum', { vcpu_count: 0, mem_size_mib: 128 }, /below the minimum 1/],
    ['a value over the maximum', { vcpu_count: 33, mem_size_mib: 128 }, /above the maximum 32/],
    ['an unknown field', { vcpu_count: 1, mem_size_mib: 128, cpus: 2 }, /unknown property cpus/],
    ['a bad enum value', { vcpu_count: 1, mem_size_mib: 128, huge_pages: '1G' }, /not one of/],
    ['not an object', [1, 2], /expected object, got array/],
  ])('rejects %s', (_name, body, message) => {
    const errors = validateSchema(spec, machine, body);
    expect(errors.join('\n')).toMatch(message);
  });

  it('follows $refs into nested definitions', () => {
    const errors = validateRequest(spec, {
      method: 'PUT',
      path: '/snapshot/load',
      body: { snapshot_path: 's', mem_backend: { backend_type: 'Disk', backend_path: 'm' } },
    });
    expect(errors.join('\n')).toMatch(/mem_backend\.backend_type: "Disk" is not one of/);
  });

  it('rejects requests the spec does not describe, and the rules it states in prose', () => {
    expect(validateRequest(spec, { method: 'POST', path: '/actions', body: {} })).toEqual([
      'POST /actions is not in the spec',
    ]);
    expect(
      validateRequest(spec, {
        method: 'PUT',
        path: '/actions',
        body: { action_type: 'Start' },
      }).join(),
    ).toMatch(/not one of/);
    expect(
      validateRequest(spec, {
        method: 'PUT',
        path: '/drives/other',
        body: { drive_id: 'rootfs', is_root_device: false },
      }).join(),
    ).toMatch(/path names drive other/);
    expect(
      validateRequest(spec, {
        method: 'PUT',
        path: '/snapshot/load',
        body: {
          snapshot_path: 's',
          mem_file_path: 'm',
          mem_backend: { backend_type: 'File', backend_path: 'm' },
        },
      }).join(),
    ).toMatch(/exactly one of mem_backend and mem_file_path/);
    expect(
      validateRequest(spec, {
        method: 'PUT',
        path: '/vsock',
        body: { guest_cid: 2, uds_path: 'v.sock' },
        operationId: 'putGuestVsock',
      }).join(),
    ).toMatch(/below the minimum 3/);
    expect(
      validateRequest(spec, {
        method: 'PATCH',
        path: '/vm',
        body: { state: 'Paused' },
        operationId: 'putVm',
      }).join(),
    ).toMatch(/is patchVm in the spec/);
  });

  it('refuses schema keywords it does not understand instead of ignoring them', () => {
    expect(() => validateSchema(spec, { oneOf: [] } as never, {})).toThrow(/oneOf/);
    expect(() => resolveRef(spec, '#/definitions/Nope')).toThrow(/unresolvable/);
  });

  it('knows every keyword the spec uses in the definitions the driver sends', () => {
    for (const name of [
      'MachineConfiguration',
      'BootSource',
      'Drive',
      'Vsock',
      'InstanceActionInfo',
      'Vm',
      'SnapshotCreateParams',
      'SnapshotLoadParams',
    ]) {
      expect(() =>
        validateSchema(spec, resolveRef(spec, `#/definitions/${name}`), {}),
      ).not.toThrow();
    }
  });
});

describe('driver command lines and layout', () => {
  const vm = { vmId: 'python-0123abcd', runDir: '/run/runner/vms/python-0123abcd' };
  const jailer: FirecrackerJailerOptions = {
    binary: '/usr/bin/jailer',
    uid: 123,
    gid: 100,
    chrootBaseDir: '/srv/jailer',
    cgroupVersion: 2,
    cgroups: ['cpu.max=100000 100000'],
    resourceLimits: ['no-file=1024'],
  };

  it('runs Firecracker directly in the run dir, with relative paths', () => {
    const cmd = firecrackerCommand(vm, { binary: '/opt/fc/firecracker' }, '/opt/fc/firecracker');
    expect(cmd).toEqual({
      file: '/opt/fc/firecracker',
      args: ['--api-sock', 'api.sock', '--id', 'python-0123abcd'],
      cwd: vm.runDir,
    });
    expect(firecrackerLayout(vm, null, 'firecracker')).toEqual({
      root: vm.runDir,
      jailDir: null,
      apiSocket: join(vm.runDir, 'api.sock'),
      vsockSocket: join(vm.runDir, 'vsock.sock'),
    });
  });

  it('runs the jailer in the foreground, with Firecracker arguments after --', () => {
    const cmd = firecrackerCommand(vm, { jailer }, '/opt/fc/firecracker-v1.12.0-x86_64');
    expect(cmd.file).toBe('/usr/bin/jailer');
    expect(cmd.args).toEqual([
      '--id',
      'python-0123abcd',
      '--exec-file',
      '/opt/fc/firecracker-v1.12.0-x86_64',
      '--uid',
      '123',
      '--gid',
      '100',
      '--chroot-base-dir',
      '/srv/jailer',
      '--cgroup-version',
      '2',
      '--cgroup',
      'cpu.max=100000 100000',
      '--resource-limit',
      'no-file=1024',
      '--',
      '--api-sock',
      '/api.sock',
    ]);
    expect(cmd.args).not.toContain('--daemonize');
    expect(cmd.args).not.toContain('--new-pid-ns');
    const root = '/srv/jailer/firecracker-v1.12.0-x86_64/python-0123abcd/root';
    expect(cmd.cwd).toBe(root);
    expect(firecrackerLayout(vm, jailer, 'firecracker-v1.12.0-x86_64')).toEqual({
      root,
      jailDir: '/srv/jailer/firecracker-v1.12.0-x86_64/python-0123abcd',
      apiSocket: `${root}/api.sock`,
      vsockSocket: `${root}/vsock.sock`,
    });
    expect(jailerCgroupDirs(jailer, 'firecracker', vm.vmId)).toEqual([
      '/sys/fs/cgroup/firecracker/python-0123abcd',
    ]);
    expect(
      jailerCgroupDirs(
        { ...jailer, cgroupVersion: 1, cgroups: ['cpuset.cpus=0', 'cpuset.mems=0'] },
        'firecracker',
        vm.vmId,
      ),
    ).toEqual(['/sys/fs/cgroup/cpuset/firecracker/python-0123abcd']);
  });

  it('names files relative to the VM root, or absolute inside a jail', () => {
    expect(firecrackerPath('vsockSocket', false)).toBe('vsock.sock');
    expect(firecrackerPath('rootfs', true)).toBe('/rootfs.ext4');
    expect(Object.values(FIRECRACKER_FILES).every((f) => !f.includes('/'))).toBe(true);
    expect(snapshotMemoryPath('/s/vm.snap')).toBe('/s/vm.snap.mem');
  });

  it('boots the guest with the common kernel arguments and the agent on vsock', () => {
    const args = firecrackerBootArgs(['pci=off']).split(' ');
    expect(args).toContain('runner.transport=vsock');
    expect(args).not.toContain('runner.transport=serial');
    expect(args).toContain('console=ttyS0');
    expect(args.at(-1)).toBe('pci=off');
  });

  it('accepts only ids Firecracker and its jailer take, and socket paths that fit', () => {
    expect(isFirecrackerVmId('snap-python-0a1b2c3d')).toBe(true);
    expect(isFirecrackerVmId('a'.repeat(65))).toBe(false);
    expect(isFirecrackerVmId('../etc')).toBe(false);
    expect(isFirecrackerVmId('vm_1')).toBe(false);
    expect(() => checkUnixPath(`/${'x'.repeat(120)}`, 'VM_BOOT_FAILED')).toThrow(/over the limit/);
    expect(() => checkUnixPath('/run/x/vsock.sock', 'VM_BOOT_FAILED')).not.toThrow();
  });
});

describe('the API client', () => {
  let dir: string;
  let seen: { method?: string; url?: string; headers: IncomingMessage['headers']; body: string }[];
  let close: () => Promise<void>;

  beforeEach(async () => {
    dir = mkdtempSync(join(tmpdir(), 'fc-api-'));
    seen = [];
    const server = createHttpServer((req, res) => {
      let body = '';
      req.setEncoding('utf8');
      req.on('data', (c: string) => (body += c));
      req.on('end', () => {
        seen.push({ method: req.method, url: req.url, headers: req.headers, body });
        if (req.url === '/boot-source') {
          res.writeHead(400, { 'Content-Type': 'application/json' });
          res.end(JSON.stringify({ fault_message: 'Invalid kernel path' }));
        } else if (req.url === '/vsock') {
          res.writeHead(500);
          res.end('oops');
        } else {
          res.writeHead(204);
          res.end();
        }
      });
    });
    await new Promise<void>((resolve) => server.listen(join(dir, 'api.sock'), resolve));
    close = () => new Promise<void>((resolve) => server.close(() => resolve()));
  });

  afterEach(async () => {
    await close();
    rmSync(dir, { recursive: true, force: true });
  });

  it('sends JSON with a Content-Length (Firecracker takes no chunked bodies)', async () => {
    const client = new FirecrackerApiClient(join(dir, 'api.sock'));
    try {
      await client.send(
        firecrackerRequests.putMachineConfig({ vcpu_count: 1, mem_size_mib: 256, smt: false }),
        'VM_BOOT_FAILED',
      );
      await client.send(firecrackerRequests.patchVm({ state: 'Paused' }), 'SNAPSHOT_FAILED');
    } finally {
      client.close();
    }
    expect(seen.map((s) => `${s.method} ${s.url}`)).toEqual(['PUT /machine-config', 'PATCH /vm']);
    const first = seen[0];
    expect(first?.headers['content-type']).toBe('application/json');
    expect(first?.headers['content-length']).toBe(String(first?.body.length));
    expect(first?.headers['transfer-encoding']).toBeUndefined();
    expect(JSON.parse(first?.body ?? '')).toEqual({ vcpu_count: 1, mem_size_mib: 256, smt: false });
  });

  it('turns a fault into a RunnerError with the fault message and the call', async () => {
    const client = new FirecrackerApiClient(join(dir, 'api.sock'));
    try {
      const err = await client
        .send(
          firecrackerRequests.putBootSource({
            kernel_image_path: 'vmlinux',
            initrd_path: 'initrd.img',
            boot_args: '',
          }),
          'VM_BOOT_FAILED',
        )
        .catch((e: unknown) => e);
      expect(err).toBeInstanceOf(RunnerError);
      expect((err as RunnerError).code).toBe('VM_BOOT_FAILED');
      expect((err as RunnerError).message).toMatch(/PUT \/boot-source: Invalid kernel path/);
      expect((err as RunnerError).details).toEqual({
        method: 'PUT',
        path: '/boot-source',
        status: 400,
        faultMessage: 'Invalid kernel path',
      } satisfies FirecrackerFault);
      const raw = await client
        .send(firecrackerRequests.putVsock({ guest_cid: 3, uds_path: 'v' }), 'VM_BOOT_FAILED')
        .catch((e: unknown) => e);
      expect((raw as RunnerError).message).toMatch(/HTTP 500 oops/);
    } finally {
      client.close();
    }
  });

  it('reports a socket nobody serves as a failed call without a status', async () => {
    const client = new FirecrackerApiClient(join(dir, 'nobody.sock'));
    const err = (await client
      .send(firecrackerRequests.action({ action_type: 'InstanceStart' }), 'VM_BOOT_FAILED')
      .catch((e: unknown) => e)) as RunnerError;
    client.close();
    expect(err.code).toBe('VM_BOOT_FAILED');
    expect((err.details as FirecrackerFault).status).toBeNull();
  });

  it('reads fault messages only from Firecracker-shaped bodies', () => {
    expect(faultMessageOf('{"fault_message":"x"}')).toBe('x');
    expect(faultMessageOf('{"fault_message":1}')).toBeNull();
    expect(faultMessageOf('not json')).toBeNull();
  });
});

describe('the hybrid vsock handshake', () => {
  let dir: string;
  let server: Server;

  beforeEach(() => {
    dir = mkdtempSync(join(tmpdir(), 'fc-vsock-'));
  });

  afterEach(async () => {
    await new Promise<void>((resolve) => server.close(() => resolve()));
    rmSync(dir, { recursive: true, force: true });
  });

  async function serve(
    answer: (line: string, write: (b: Buffer) => void, end: () => void) => void,
  ) {
    server = createServer((socket) => {
      let buffered = '';
      socket.on('data', (chunk: Buffer) => {
        buffered += chunk.toString('latin1');
        const nl = buffered.indexOf('\n');
        if (nl >= 0) {
          answer(
            buffered.slice(0, nl),
            (b) => socket.write(b),
            () => socket.destroy(),
          );
        }
      });
      socket.on('error', () => undefined);
    });
    await new Promise<void>((resolve) => server.listen(join(dir, 'v.sock'), resolve));
  }

  it('sends CONNECT <port>, reads OK <host port> and keeps the bytes after it', async () => {
    let line = '';
    await serve((l, write) => {
      line = l;
      write(Buffer.from('OK 1073741824\nfirst bytes of the guest stream'));
    });
    const socket = await vsockConnect(join(dir, 'v.sock'), 5000, 1000);
    const data = await new Promise<string>((resolve) => {
      socket.once('data', (c: Buffer) => resolve(c.toString()));
      socket.resume();
    });
    socket.destroy();
    expect(line).toBe('CONNECT 5000');
    expect(data).toBe('first bytes of the guest stream');
  });

  it('fails when Firecracker closes the connection (nothing listens on the port)', async () => {
    await serve((_l, _w, end) => end());
    await expect(vsockConnect(join(dir, 'v.sock'), 5000, 1000)).rejects.toThrow(/before OK/);
  });

  it('fails on any other answer', async () => {
    await serve((_l, write) => write(Buffer.from('NOPE\n')));
    await expect(vsockConnect(join(dir, 'v.sock'), 5000, 1000)).rejects.toThrow(/answered "NOPE"/);
  });

  it('fails when no answer comes in time', async () => {
    await serve(() => undefined);
    await expect(vsockConnect(join(dir, 'v.sock'), 5000, 100)).rejects.toThrow(/no answer/);
  });
});
