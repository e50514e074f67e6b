import {
  chmodSync,
  existsSync,
  mkdirSync,
  mkdtempSync,
  readdirSync,
  readFileSync,
  readlinkSync,
  rmSync,
  statSync,
  writeFileSync,
} from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it, onTestFailed } from 'vitest';
import { RunnerError } from '../../../src/errors.js';
import {
  FirecrackerDriver,
  snapshotMemoryPath,
  type FirecrackerDriverOptions,
  type MicroVm,
  type VmLaunchOptions,
} from '../../../src/vmm/index.js';
import { loadFirecrackerSpec, validateRequest } from '../../contract/firecracker-openapi.js';

/*
 * The firecracker driver against a fake Firecracker: a node script that serves the API calls
 * the driver makes on --api-sock (with Firecracker's rules: pre-boot calls only before
 * InstanceStart, snapshots only of a paused VM, loads only on a fresh process), records every
 * request, opens the hybrid vsock socket at InstanceStart or after a load (at the path the
 * snapshot recorded), answers `CONNECT 5000` with `OK <port>` and speaks the guest protocol
 * (hello, ping/pong). A fake jailer builds the jail folder and runs the fake Firecracker in it.
 * What this cannot show is that a real Firecracker and a real guest behave the same: that is
 * the end-to-end test's job (tests/integration/vmm/firecracker-e2e.test.ts).
 */

const spec = loadFirecrackerSpec();

// The fake avoids `${` so that it can live in a template literal.
const FAKE_FIRECRACKER = `
import fs from 'node:fs';
import http from 'node:http';
import net from 'node:net';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const here = path.dirname(fileURLToPath(import.meta.url));
const config = JSON.parse(fs.readFileSync(path.join(here, 'fake-config.json'), 'utf8'));
const jailed = process.env.FAKE_FC_JAILED === '1';
const log = (entry) =>
  fs.appendFileSync(path.join(here, 'calls.jsonl'), JSON.stringify(Object.assign({ pid: process.pid }, entry)) + '\\n');
// The fake cannot chroot: in a jail, absolute paths are read against the jail root (its cwd).
const onHost = (p) => (jailed && p.startsWith('/') ? path.join(process.cwd(), p) : p);

const argv = process.argv.slice(2);
const apiSock = argv[argv.indexOf('--api-sock') + 1];
log({ event: 'start', argv, cwd: process.cwd(), jailed });
console.log('fake firecracker: starting');

let state = 'fresh';
let restored = false;
const vm = { machine: null, boot: null, drives: {}, vsock: null };

function frame(message) {
  const body = Buffer.from(JSON.stringify(message));
  const header = Buffer.alloc(4);
  header.writeUInt32BE(body.length);
  return Buffer.concat([header, body]);
}

function startVsock(udsPath) {
  const startedAt = Date.now();
  let sessions = 0;
  let busy = restored ? config.busyAfterRestore || 0 : 0;
  const server = net.createServer((sock) => {
    sock.on('error', () => {});
    let buf = Buffer.alloc(0);
    let connected = false;
    sock.on('data', (chunk) => {
      buf = Buffer.concat([buf, chunk]);
      if (!connected) {
        const nl = buf.indexOf(10);
        if (nl < 0) return;
        const line = buf.subarray(0, nl).toString();
        buf = buf.subarray(nl + 1);
        const listening = Date.now() - startedAt >= (config.listenDelayMs || 0);
        log({ event: 'connect', line, listening, busy: busy > 0 });
        if (line !== 'CONNECT 5000' || !listening) {
          sock.destroy();
          return;
        }
        connected = true;
        const ok = Buffer.from('OK 1073741824\\n');
        if (busy > 0) {
          busy--;
          sock.end(Buffer.concat([ok, frame({ type: 'error', id: null, code: 'AGENT_BUSY', message: 'the agent already serves a host session' })]));
          return;
        }
        sessions++;
        // OK and hello in one write: the host must keep what follows the OK line.
        sock.write(Buffer.concat([ok, frame({
          type: 'hello',
          protocol: config.protocol || 1,
          agentVersion: 'fake',
          languages: ['python'],
          vmId: (restored ? 'restored-' : 'booted-') + sessions,
        })]));
      }
      while (buf.length >= 4) {
        const n = buf.readUInt32BE(0);
        if (buf.length < 4 + n) break;
        const message = JSON.parse(buf.subarray(4, 4 + n).toString());
        buf = buf.subarray(4 + n);
        if (message.type === 'ping') sock.write(frame({ type: 'pong', id: message.id }));
      }
    });
  });
  return new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(onHost(udsPath), () => {
      log({ event: 'vsock-listen', path: udsPath, cwd: process.cwd() });
      resolve();
    });
  });
}

function exists(p, what) {
  if (!fs.existsSync(onHost(p))) throw new Error(what + ' ' + p + ' does not exist');
}

async function handle(method, url, body) {
  if (config.faultOn === url) throw new Error('fake fault on ' + url);
  if (config.exitOn === url) {
    log({ event: 'exit', status: 3 });
    process.exit(3);
  }
  const preBoot = () => {
    if (state !== 'fresh' && state !== 'configured') {
      throw new Error('The requested operation is not supported after starting the microVM.');
    }
    state = 'configured';
  };
  const key = method + ' ' + url;
  if (key === 'PUT /machine-config') {
    preBoot();
    vm.machine = body;
  } else if (key === 'PUT /boot-source') {
    preBoot();
    exists(body.kernel_image_path, 'kernel');
    exists(body.initrd_path, 'initrd');
    vm.boot = body;
  } else if (method === 'PUT' && url.startsWith('/drives/')) {
    preBoot();
    if (url !== '/drives/' + body.drive_id) throw new Error('drive id mismatch');
    exists(body.path_on_host, 'drive');
    vm.drives[body.drive_id] = body;
  } else if (key === 'PUT /vsock') {
    preBoot();
    vm.vsock = body;
  } else if (key === 'PUT /actions') {
    if (body.action_type !== 'InstanceStart') throw new Error('unsupported action');
    if (state !== 'configured' || !vm.boot) throw new Error('Cannot start microvm without kernel configuration.');
    state = 'running';
    if (vm.vsock) await startVsock(vm.vsock.uds_path);
  } else if (key === 'PATCH /vm') {
    if (state !== 'running' && state !== 'paused') throw new Error('The microVM is not running.');
    state = body.state === 'Paused' ? 'paused' : 'running';
  } else if (key === 'PUT /snapshot/create') {
    if (state !== 'paused') throw new Error('Cannot create a snapshot: the microVM is not paused.');
    fs.writeFileSync(onHost(body.snapshot_path), JSON.stringify(vm));
    fs.writeFileSync(onHost(body.mem_file_path), Buffer.alloc(config.memBytes || 4096, 7));
  } else if (key === 'PUT /snapshot/load') {
    if (state !== 'fresh') throw new Error('Loading a microVM snapshot not allowed after configuring boot-specific resources.');
    exists(body.mem_backend ? body.mem_backend.backend_path : body.mem_file_path, 'memory file');
    const saved = JSON.parse(fs.readFileSync(onHost(body.snapshot_path), 'utf8'));
    for (const drive of Object.values(saved.drives)) exists(drive.path_on_host, 'drive');
    Object.assign(vm, saved);
    restored = true;
    state = body.resume_vm ? 'running' : 'paused';
    if (vm.vsock) await startVsock(vm.vsock.uds_path);
  } else {
    throw new Error('Invalid request method and/or path: ' + method + ' ' + url);
  }
}

http
  .createServer((req, res) => {
    let text = '';
    req.setEncoding('utf8');
    req.on('data', (c) => (text += c));
    req.on('end', () => {
      const body = text === '' ? undefined : JSON.parse(text);
      log({
        event: 'request', method: req.method, path: req.url, body, state,
        contentLength: req.headers['content-length'] || null,
        chunked: req.headers['transfer-encoding'] !== undefined,
      });
      handle(req.method, req.url, body).then(
        () => {
          res.writeHead(204);
          res.end();
        },
        (err) => {
          res.writeHead(400, { 'Content-Type': 'application/json' });
          res.end(JSON.stringify({ fault_message: err.message }));
        },
      );
    });
  })
  .listen(onHost(apiSock));
`;

const FAKE_JAILER = `
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';

const here = path.dirname(fileURLToPath(import.meta.url));
const args = process.argv.slice(2);
fs.appendFileSync(path.join(here, 'calls.jsonl'), JSON.stringify({ pid: process.pid, event: 'jailer', argv: args }) + '\\n');
const sep = args.indexOf('--');
const own = sep < 0 ? args : args.slice(0, sep);
const rest = sep < 0 ? [] : args.slice(sep + 1);
const opt = (name) => {
  const i = own.indexOf(name);
  return i < 0 ? undefined : own[i + 1];
};
const id = opt('--id');
const exec = opt('--exec-file');
const base = opt('--chroot-base-dir') || '/srv/jailer';
if (!id || !/^[A-Za-z0-9-]{1,64}$/.test(id) || !exec || !path.isAbsolute(exec) ||
    !path.basename(exec).includes('firecracker') || !opt('--uid') || !opt('--gid')) {
  console.error('fake jailer: bad arguments');
  process.exit(2);
}
// Like the jailer: <base>/<exec file name>/<id>/root, the binary copied in, then run inside it
// (in this process, as the jailer execs: the pid the driver watches is Firecracker's).
const root = path.join(base, path.basename(exec), id, 'root');
fs.mkdirSync(root, { recursive: true });
fs.copyFileSync(exec, path.join(root, path.basename(exec)));
process.chdir(root);
process.env.FAKE_FC_JAILED = '1';
process.argv = [process.argv[0], '/' + path.basename(exec), '--id=' + id, ...rest];
await import(pathToFileURL(exec).href);
`;

interface FakeConfig {
  listenDelayMs?: number;
  busyAfterRestore?: number;
  faultOn?: string;
  exitOn?: string;
  protocol?: number;
  memBytes?: number;
}

interface Call {
  pid: number;
  event: 'start' | 'request' | 'connect' | 'vsock-listen' | 'exit' | 'jailer';
  argv?: string[];
  cwd?: string;
  method?: string;
  path?: string;
  body?: unknown;
  state?: string;
  contentLength?: string | null;
  chunked?: boolean;
  line?: string;
  listening?: boolean;
  busy?: boolean;
}

/** A temp folder with the fake Firecracker, the fake jailer, and stand-in images. */
class FakeFirecracker {
  readonly dir = mkdtempSync(join(tmpdir(), 'fc-fake-'));
  readonly binary = join(this.dir, 'fake-firecracker.mjs');
  readonly jailerBinary = join(this.dir, 'fake-jailer.mjs');
  readonly kernel = join(this.dir, 'images', 'vmlinux');
  readonly initrd = join(this.dir, 'images', 'initrd.img');
  readonly rootfs = join(this.dir, 'images', 'rootfs-python.ext4');

  constructor() {
    const shebang = `#!${process.execPath}\n`;
    writeFileSync(this.binary, shebang + FAKE_FIRECRACKER);
    writeFileSync(this.jailerBinary, shebang + FAKE_JAILER);
    chmodSync(this.binary, 0o755);
    chmodSync(this.jailerBinary, 0o755);
    mkdirSync(join(this.dir, 'images'));
    writeFileSync(this.kernel, 'ELF kernel');
    writeFileSync(this.initrd, 'initrd');
    writeFileSync(this.rootfs, 'ext4');
    this.configure({});
  }

  configure(config: FakeConfig): void {
    writeFileSync(join(this.dir, 'fake-config.json'), JSON.stringify(config));
  }

  calls(pid?: number): Call[] {
    const path = join(this.dir, 'calls.jsonl');
    if (!existsSync(path)) return [];
    return readFileSync(path, 'utf8')
      .split('\n')
      .filter((l) => l !== '')
      .map((l) => JSON.parse(l) as Call)
      .filter((c) => pid === undefined || c.pid === pid);
  }

  requests(pid?: number): Call[] {
    return this.calls(pid).filter((c) => c.event === 'request');
  }

  launch(vmId: string, overrides: Partial<VmLaunchOptions> = {}): VmLaunchOptions {
    return {
      vmId,
      runDir: join(this.dir, 'run', vmId),
      kernelPath: this.kernel,
      initrdPath: this.initrd,
      rootfsPath: this.rootfs,
      memoryMib: 256,
      vcpus: 1,
      timeoutMs: 5000,
      ...overrides,
    };
  }

  remove(): void {
    rmSync(this.dir, { recursive: true, force: true });
  }
}

function alive(pid: number | undefined): boolean {
  if (pid === undefined) return false;
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

function expectValidAgainstSpec(calls: Call[]): void {
  expect(calls.length).toBeGreaterThan(0);
  for (const call of calls) {
    expect(
      validateRequest(spec, {
        method: call.method ?? '',
        path: call.path ?? '',
        body: call.body,
      }),
      `${call.method} ${call.path}`,
    ).toEqual([]);
    expect(call.contentLength, `${call.method} ${call.path} has a Content-Length`).not.toBeNull();
    expect(call.chunked).toBe(false);
  }
}

async function errorOf(promise: Promise<unknown>): Promise<RunnerError> {
  const err = await promise.then(
    () => new Error('expected a rejection'),
    (e: unknown) => e,
  );
  expect(err).toBeInstanceOf(RunnerError);
  return err as RunnerError;
}

describe('firecracker driver against a fake Firecracker', () => {
  let fake: FakeFirecracker;
  let vms: MicroVm[];

  beforeEach(() => {
    fake = new FakeFirecracker();
    vms = [];
    onTestFailed(() => {
      console.error(
        `fake Firecracker folder: ${fake.dir}; VMs: ${vms.map((v) => v.id).join(', ')}`,
      );
      for (const vm of vms) console.error(`console of ${vm.id}:\n${vm.consoleTail()}`);
    });
  });

  afterEach(async () => {
    for (const vm of vms) await vm.destroy();
    fake.remove();
  });

  function driver(options: Partial<FirecrackerDriverOptions> = {}): FirecrackerDriver {
    return new FirecrackerDriver({ binary: fake.binary, ...options });
  }

  async function boot(d: FirecrackerDriver, vmId: string, overrides?: Partial<VmLaunchOptions>) {
    const vm = await d.boot(fake.launch(vmId, overrides));
    vms.push(vm);
    return vm;
  }

  async function ping(vm: MicroVm, id: string): Promise<void> {
    const channel = vm.agent();
    await channel.send({ type: 'ping', id });
    expect(await channel.next(2000)).toEqual({ type: 'pong', id });
  }

  it('boots: the API calls in order, valid against the spec, then the hello over vsock', async () => {
    const vm = await boot(driver({ kernelArgs: ['runner.debug=1'] }), 'python-boot1');
    expect(vm.driver).toBe('firecracker');
    expect(vm.state).toBe('running');
    expect(vm.hello).toMatchObject({ type: 'hello', protocol: 1, vmId: 'booted-1' });

    const calls = fake.calls(vm.pid);
    const runDir = join(fake.dir, 'run', 'python-boot1');
    expect(calls[0]).toMatchObject({
      event: 'start',
      argv: ['--api-sock', 'api.sock', '--id', 'python-boot1'],
      cwd: runDir,
    });
    const requests = fake.requests(vm.pid);
    expect(requests.map((r) => `${r.method} ${r.path}`)).toEqual([
      'PUT /machine-config',
      'PUT /boot-source',
      'PUT /drives/rootfs',
      'PUT /vsock',
      'PUT /actions',
    ]);
    expectValidAgainstSpec(requests);
    expect(requests[0]?.body).toEqual({ vcpu_count: 1, mem_size_mib: 256, smt: false });
    const bootSource = requests[1]?.body as { boot_args: string; kernel_image_path: string };
    expect(bootSource.kernel_image_path).toBe('vmlinux');
    expect(bootSource.boot_args.split(' ')).toEqual(
      expect.arrayContaining(['runner.transport=vsock', 'runner.debug=1']),
    );
    expect(requests[3]?.body).toEqual({ guest_cid: 3, uds_path: 'vsock.sock' });
    // The files Firecracker opens are links in the VM's own folder.
    expect(readlinkSync(join(runDir, 'vmlinux'))).toBe(fake.kernel);
    expect(readlinkSync(join(runDir, 'rootfs.ext4'))).toBe(fake.rootfs);
    expect(existsSync(join(runDir, 'vsock.sock'))).toBe(true);

    await ping(vm, 'p1');
    expect(vm.consoleTail()).toContain('fake firecracker: starting');

    const pid = vm.pid;
    await vm.destroy();
    await vm.destroy(); // idempotent
    expect(await vm.exited).toEqual({ code: null, signal: 'SIGKILL', expected: true });
    expect(alive(pid)).toBe(false);
    expect(existsSync(runDir)).toBe(false);
    expect(vm.state).toBe('destroyed');
    expect(() => vm.agent()).toThrow(RunnerError);
  });

  it('retries CONNECT while nothing in the guest listens yet', async () => {
    fake.configure({ listenDelayMs: 300 });
    const vm = await boot(driver(), 'python-slow');
    const connects = fake.calls(vm.pid).filter((c) => c.event === 'connect');
    expect(connects.length).toBeGreaterThan(1);
    expect(connects.every((c) => c.line === 'CONNECT 5000')).toBe(true);
    expect(connects.at(-1)?.listening).toBe(true);
    expect(connects.slice(0, -1).every((c) => c.listening === false)).toBe(true);
    await ping(vm, 'p');
  });

  it('snapshots a paused VM into two files beside the target; only destroy is legal after', async () => {
    const vm = await boot(driver(), 'python-snap');
    const before = fake.requests(vm.pid).length;
    mkdirSync(join(fake.dir, 'snap'));
    const path = join(fake.dir, 'snap', 'vm.snap');
    const info = await vm.snapshot(path);

    const requests = fake.requests(vm.pid).slice(before);
    expect(requests.map((r) => `${r.method} ${r.path}`)).toEqual([
      'PATCH /vm',
      'PUT /snapshot/create',
    ]);
    expectValidAgainstSpec(requests);
    expect(requests[0]?.body).toEqual({ state: 'Paused' });
    expect(requests[1]?.state).toBe('paused');
    expect(requests[1]?.body).toMatchObject({ snapshot_type: 'Full' });

    expect(readdirSync(join(fake.dir, 'snap')).sort()).toEqual(['vm.snap', 'vm.snap.mem']);
    expect(info.path).toBe(path);
    expect(info.sizeBytes).toBe(statSync(path).size + statSync(snapshotMemoryPath(path)).size);
    expect(info.ms).toBeGreaterThanOrEqual(0);
    expect(vm.state).toBe('snapshotted');
    expect(() => vm.agent()).toThrow(/cannot talk while snapshotted/);
    expect((await errorOf(vm.snapshot(path))).code).toBe('VM_STATE');
  });

  it('restores in a fresh Firecracker, reconnects past AGENT_BUSY and gets a new hello', async () => {
    const d = driver();
    const first = await boot(d, 'python-origin');
    mkdirSync(join(fake.dir, 'snap'));
    const path = join(fake.dir, 'snap', 'vm.snap');
    await first.snapshot(path);
    await first.destroy();

    fake.configure({ busyAfterRestore: 2 });
    const restored = await d.restore(fake.launch('python-r1'), path);
    vms.push(restored);
    expect(restored.state).toBe('running');
    expect(restored.hello).toMatchObject({ type: 'hello', vmId: 'restored-1' });

    const requests = fake.requests(restored.pid);
    expect(requests.map((r) => `${r.method} ${r.path}`)).toEqual(['PUT /snapshot/load']);
    expectValidAgainstSpec(requests);
    expect(requests[0]?.body).toEqual({
      snapshot_path: path,
      mem_backend: { backend_type: 'File', backend_path: `${path}.mem` },
      resume_vm: true,
    });
    const connects = fake.calls(restored.pid).filter((c) => c.event === 'connect');
    expect(connects.filter((c) => c.busy === true)).toHaveLength(2);
    await ping(restored, 'after-restore');

    // The snapshot recorded relative paths, so a second VM from it gets sockets of its own.
    const second = await d.restore(fake.launch('python-r2'), path);
    vms.push(second);
    expect(existsSync(join(fake.dir, 'run', 'python-r1', 'vsock.sock'))).toBe(true);
    expect(existsSync(join(fake.dir, 'run', 'python-r2', 'vsock.sock'))).toBe(true);
    await ping(second, 'second');
    await ping(restored, 'first-still-there');
  });

  it('refuses a restore from a snapshot that is not there, before starting anything', async () => {
    const err = await errorOf(
      driver().restore(fake.launch('python-nosnap'), join(fake.dir, 'missing.snap')),
    );
    expect(err.code).toBe('SNAPSHOT_FAILED');
    expect(fake.calls()).toEqual([]);
  });

  it("fails a boot with Firecracker's fault message, and leaves nothing behind", async () => {
    fake.configure({ faultOn: '/boot-source' });
    const err = await errorOf(driver().boot(fake.launch('python-fault')));
    expect(err.code).toBe('VM_BOOT_FAILED');
    expect(err.message).toMatch(/PUT \/boot-source: fake fault on \/boot-source \(HTTP 400\)/);
    const start = fake.calls().find((c) => c.event === 'start');
    expect(alive(start?.pid)).toBe(false);
    expect(existsSync(join(fake.dir, 'run', 'python-fault'))).toBe(false);
  });

  it('sees Firecracker die during the boot (VM_DIED)', async () => {
    fake.configure({ exitOn: '/actions' });
    const err = await errorOf(driver().boot(fake.launch('python-dies')));
    expect(err.code).toBe('VM_DIED');
    expect(err.message).toMatch(/status 3/);
    expect(existsSync(join(fake.dir, 'run', 'python-dies'))).toBe(false);
  });

  it('sees Firecracker die while the VM runs: exit, channel and later calls all fail', async () => {
    const vm = await boot(driver(), 'python-crash');
    const pending = errorOf(vm.agent().next());
    process.kill(vm.pid ?? 0, 'SIGKILL');
    expect(await vm.exited).toEqual({ code: null, signal: 'SIGKILL', expected: false });
    expect(await pending).toBeInstanceOf(RunnerError);
    expect(() => vm.agent()).toThrow(expect.objectContaining({ code: 'VM_DIED' }) as Error);
    const err = await errorOf(vm.snapshot(join(fake.dir, 'never.snap')));
    expect(err.code).toBe('VM_DIED');
    await vm.destroy();
    expect(existsSync(join(fake.dir, 'run', 'python-crash'))).toBe(false);
  });

  it('gives up when the agent never answers, within the deadline', async () => {
    fake.configure({ listenDelayMs: 60_000 });
    const started = Date.now();
    const err = await errorOf(driver().boot(fake.launch('python-silent', { timeoutMs: 600 })));
    expect(err.code).toBe('VM_BOOT_FAILED');
    expect(err.message).toMatch(/did not say hello on vsock port 5000/);
    expect(Date.now() - started).toBeLessThan(4000);
    expect(existsSync(join(fake.dir, 'run', 'python-silent'))).toBe(false);
  });

  it('refuses an agent that speaks another protocol version', async () => {
    fake.configure({ protocol: 99 });
    const err = await errorOf(driver().boot(fake.launch('python-old')));
    expect(err.code).toBe('PROTOCOL_VERSION');
    // Like QEMU's, a failed boot says what the guest printed last.
    expect(err.message).toContain('; console: fake firecracker: starting');
  });

  it('refuses VM ids Firecracker would refuse, before starting anything', async () => {
    const err = await errorOf(driver().boot(fake.launch('python_bad')));
    expect(err.code).toBe('VM_BOOT_FAILED');
    expect(fake.calls()).toEqual([]);
  });

  describe('under the jailer', () => {
    function jailed(): FirecrackerDriver {
      return driver({
        jailer: {
          binary: fake.jailerBinary,
          uid: 1234,
          gid: 1234,
          chrootBaseDir: join(fake.dir, 'jail'),
          cgroupVersion: 2,
        },
      });
    }

    it('boots, snapshots and restores in jails, with files linked in and removed after', async () => {
      const d = jailed();
      const vm = await boot(d, 'python-jail1');
      const jailDir = join(fake.dir, 'jail', 'fake-firecracker.mjs', 'python-jail1');
      const root = join(jailDir, 'root');

      const jailer = fake.calls(vm.pid).find((c) => c.event === 'jailer');
      expect(jailer?.argv).toEqual([
        '--id',
        'python-jail1',
        '--exec-file',
        fake.binary,
        '--uid',
        '1234',
        '--gid',
        '1234',
        '--chroot-base-dir',
        join(fake.dir, 'jail'),
        '--cgroup-version',
        '2',
        '--',
        '--api-sock',
        '/api.sock',
      ]);
      expect(fake.calls(vm.pid).find((c) => c.event === 'start')).toMatchObject({
        argv: ['--id=python-jail1', '--api-sock', '/api.sock'],
        cwd: root,
      });
      const requests = fake.requests(vm.pid);
      expectValidAgainstSpec(requests);
      expect(requests.map((r) => r.body)).toEqual(
        expect.arrayContaining([
          expect.objectContaining({
            kernel_image_path: '/vmlinux',
            initrd_path: '/initrd.img',
          }),
          expect.objectContaining({ path_on_host: '/rootfs.ext4' }),
          { guest_cid: 3, uds_path: '/vsock.sock' },
        ]),
      );
      // Hard links, not copies: the jail and the images share a file system here.
      expect(statSync(join(root, 'rootfs.ext4')).ino).toBe(statSync(fake.rootfs).ino);
      expect(statSync(join(root, 'vmlinux')).ino).toBe(statSync(fake.kernel).ino);
      await ping(vm, 'jailed');

      mkdirSync(join(fake.dir, 'snap'));
      const path = join(fake.dir, 'snap', 'vm.snap');
      await vm.snapshot(path);
      expect(
        fake
          .requests(vm.pid)
          .slice(-1)
          .map((r) => r.body),
      ).toEqual([
        { snapshot_type: 'Full', snapshot_path: '/snapshot.state', mem_file_path: '/snapshot.mem' },
      ]);
      expect(readdirSync(join(fake.dir, 'snap')).sort()).toEqual(['vm.snap', 'vm.snap.mem']);
      expect(existsSync(join(root, 'snapshot.mem'))).toBe(false);
      await vm.destroy();
      expect(existsSync(jailDir)).toBe(false);

      const restored = await d.restore(fake.launch('python-jail2'), path);
      vms.push(restored);
      const root2 = join(fake.dir, 'jail', 'fake-firecracker.mjs', 'python-jail2', 'root');
      expect(fake.requests(restored.pid).map((r) => r.body)).toEqual([
        {
          snapshot_path: '/snapshot.state',
          mem_backend: { backend_type: 'File', backend_path: '/snapshot.mem' },
          resume_vm: true,
        },
      ]);
      expect(statSync(join(root2, 'snapshot.mem')).ino).toBe(statSync(`${path}.mem`).ino);
      expect(restored.hello?.vmId).toBe('restored-1');
      await ping(restored, 'jailed-restore');
      await restored.destroy();
      expect(existsSync(join(fake.dir, 'jail', 'fake-firecracker.mjs', 'python-jail2'))).toBe(
        false,
      );
    });

    it('refuses a Firecracker binary the jailer would refuse', async () => {
      const other = join(fake.dir, 'vmm.mjs');
      writeFileSync(other, '');
      chmodSync(other, 0o755);
      const d = new FirecrackerDriver({
        binary: other,
        jailer: { binary: fake.jailerBinary, uid: 1, gid: 1, chrootBaseDir: fake.dir },
      });
      const err = await errorOf(d.boot(fake.launch('python-x')));
      expect(err.code).toBe('CONFIG_INVALID');
    });

    it('refuses bad jailer settings at construction', () => {
      expect(
        () =>
          new FirecrackerDriver({
            jailer: { binary: 'jailer', uid: -1, gid: 0, chrootBaseDir: '/srv/jailer' },
          }),
      ).toThrow(/uid/);
      expect(
        () =>
          new FirecrackerDriver({
            jailer: { binary: 'jailer', uid: 1, gid: 1, chrootBaseDir: 'relative' },
          }),
      ).toThrow(/absolute/);
      expect(() => new FirecrackerDriver({ guestCid: 2 })).toThrow(/CID/);
    });
  });
});
