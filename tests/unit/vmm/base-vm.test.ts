import type { ChildProcess } from 'node:child_process';
import { EventEmitter } from 'node:events';
import { PassThrough } from 'node:stream';
import { describe, expect, it } from 'vitest';
import {
  ProtocolVersionError,
  VmBootFailedError,
  VmTimeoutError,
  type RunnerError,
} from '../../../src/errors.js';
import { BaseVm, bringUp } from '../../../src/vmm/base-vm.js';
import type { SnapshotInfo } from '../../../src/vmm/index.js';

/** A VMM process that prints what it is told and dies when killed. */
class FakeChild extends EventEmitter {
  readonly stdout = new PassThrough();
  readonly stderr = new PassThrough();
  readonly pid = 4242;
  killed = false;
  kill(signal: NodeJS.Signals): boolean {
    this.killed = true;
    setImmediate(() => this.emit('exit', null, signal));
    return true;
  }
  print(text: string): Promise<void> {
    this.stdout.write(text);
    return new Promise((r) => setImmediate(r));
  }
}

/** The smallest driver VM: it counts its hooks. */
class TestVm extends BaseVm {
  readonly driver = 'test';
  controlClosed = 0;
  filesRemoved = 0;
  constructor(readonly child: FakeChild) {
    super(
      {
        vmId: 'vm-1',
        runDir: '/nonexistent',
        timeoutMs: 100,
        kernelPath: '',
        initrdPath: '',
        rootfsPath: '',
        memoryMib: 128,
        vcpus: 1,
      },
      child as unknown as ChildProcess,
      'TestVMM',
      undefined,
    );
  }
  async snapshot(): Promise<SnapshotInfo> {
    this.begin('snapshot');
    return Promise.resolve({ path: '', sizeBytes: 0, ms: 0 });
  }
  died(doing: string): RunnerError {
    return this.process.died(doing);
  }
  protected closeControl(): void {
    this.controlClosed++;
  }
  protected removeFiles(): Promise<void> {
    this.filesRemoved++;
    return Promise.resolve();
  }
}

describe('BaseVm (shared by the qemu and firecracker VMs)', () => {
  it('adds the console tail to a boot failure that is already a RunnerError, keeping its code', async () => {
    const vm = new TestVm(new FakeChild());
    await vm.child.print('booting\nkernel panic: oops\n');
    const err = vm.bootError(new ProtocolVersionError('the agent speaks protocol 9'));
    expect(err.code).toBe('PROTOCOL_VERSION');
    expect(err.message).toBe('the agent speaks protocol 9; console: booting | kernel panic: oops');
    await vm.destroy();
  });

  it('makes a timeout or a foreign error VM_BOOT_FAILED, with the tail once', async () => {
    const vm = new TestVm(new FakeChild());
    await vm.child.print('last words\n');
    const timeout = vm.bootError(new VmTimeoutError('no hello within 100 ms'));
    expect(timeout.code).toBe('VM_BOOT_FAILED');
    expect(timeout.message).toBe(
      'VM vm-1 failed to start: no hello within 100 ms; console: last words',
    );
    const already = vm.bootError(new VmTimeoutError(`no hello; console: last words`));
    expect(already.message).toBe('VM vm-1 failed to start: no hello; console: last words');
    expect(vm.bootError('boom').message).toBe('VM vm-1 failed to start: boom; console: last words');
    await vm.destroy();
  });

  it('does not repeat the tail of a VM_DIED made from the console', async () => {
    const child = new FakeChild();
    const vm = new TestVm(child);
    await child.print('dying\n');
    child.emit('exit', 3, null);
    await vm.exited;
    const died = vm.died('booting');
    expect(vm.bootError(died)).toBe(died);
    expect(died.message).toBe('TestVMM exited (status 3) while booting; console: dying');
  });

  it('checks commands against the lifecycle table, and destroys once for all', async () => {
    const child = new FakeChild();
    const vm = new TestVm(child);
    expect(() => vm.agent()).toThrow(/VM vm-1: cannot talk while starting/);
    await expect(vm.snapshot()).rejects.toThrow(
      expect.objectContaining({ code: 'VM_STATE' }) as Error,
    );
    await vm.destroy();
    await vm.destroy();
    expect(vm.state).toBe('destroyed');
    expect(child.killed).toBe(true);
    expect(await vm.exited).toEqual({ code: null, signal: 'SIGKILL', expected: true });
    expect(vm.filesRemoved).toBe(2);
    // Once on exit, once per destroy.
    expect(vm.controlClosed).toBe(3);
    expect(vm.pid).toBe(4242);
  });

  it('bringUp destroys the VM and wraps the error when a step fails', async () => {
    const vm = new TestVm(new FakeChild());
    await vm.child.print('almost\n');
    const failed = bringUp(
      vm,
      1000,
      () => Promise.reject(new VmBootFailedError('the agent said goodbye')),
      (e) => vm.bootError(e),
    );
    await expect(failed).rejects.toThrow('the agent said goodbye; console: almost');
    expect(vm.state).toBe('destroyed');
  });
});
