import type { ChildProcess } from 'node:child_process';
import { RunnerError, VmDiedError } from '../errors.js';
import { TailBuffer } from './tail-buffer.js';
import type { VmExit } from './types.js';

/**
 * A VMM process as the host watches it, whatever the VMM: its console (stdout and stderr, the
 * most recent bytes kept), and its exit, seen at once so that every wait on a dead VM fails
 * instead of hanging. Shared by the qemu and firecracker drivers.
 */
export class VmmProcess {
  /** Resolves when the process exits, for any reason. */
  readonly exited: Promise<VmExit>;
  private readonly console: TailBuffer;
  private exitInfo: VmExit | null = null;
  private destroying = false;

  /**
   * @param name How messages call it (`QEMU`, `Firecracker`).
   * @param onExit Runs first when the process exits (close its QMP/API and agent channels).
   */
  constructor(
    readonly child: ChildProcess,
    readonly name: string,
    consoleBytes: number,
    onExit: (exit: VmExit) => void,
  ) {
    this.console = new TailBuffer(consoleBytes);
    child.stdout?.on('data', (d: Buffer) => this.console.push(d));
    child.stderr?.on('data', (d: Buffer) => this.console.push(d));
    this.exited = new Promise<VmExit>((resolve) => {
      child.once('exit', (code, signal) => {
        const exit = { code, signal, expected: this.destroying };
        this.exitInfo = exit;
        onExit(exit);
        resolve(exit);
      });
    });
  }

  /** How it ended, or null while it runs. */
  get exit(): VmExit | null {
    return this.exitInfo;
  }

  get alive(): boolean {
    return this.exitInfo === null;
  }

  /** Kills it (an exit the host asked for) and waits until it is gone. */
  async kill(): Promise<void> {
    this.destroying = true;
    if (this.exitInfo === null) {
      this.child.kill('SIGKILL');
      await this.exited;
    }
  }

  /** Everything kept of the console. */
  consoleText(): string {
    return this.console.text();
  }

  /** `; console: <the last three lines>`, or '' when it printed nothing: for error messages. */
  lastConsoleLine(): string {
    const lines = this.console.text().trim().split('\n');
    const last = lines.slice(-3).join(' | ').trim();
    return last === '' ? '' : `; console: ${last.slice(-300)}`;
  }

  /** `exited (SIGKILL)` or `exited (status 1)`. */
  exitDescription(): string {
    const exit = this.exitInfo;
    return exit === null ? 'exited' : `exited (${exit.signal ?? `status ${exit.code}`})`;
  }

  /** VM_DIED: it exited while the host was `doing` something. */
  died(doing: string): RunnerError {
    return new VmDiedError(
      `${this.name} ${this.exitDescription()} while ${doing}${this.lastConsoleLine()}`,
    );
  }

  /** Races `promise` against the exit, so that a dead VMM is seen at once. */
  async raceExit<T>(promise: Promise<T>, doing: string): Promise<T> {
    const died = this.exited.then(() => {
      throw this.died(doing);
    });
    died.catch(() => undefined);
    return Promise.race([promise, died]);
  }
}
