import { execFile, spawn, type ChildProcess } from 'node:child_process';
import { SandboxFailureError } from '../errors.js';
import type { ReseedVia } from '../protocol/index.js';

/**
 * What the agent changes in its guest after a snapshot restore: the kernel's random state and
 * the clock. An interface so that tests on a development host use a fake and never touch the
 * host's clock.
 */
export interface GuestActions {
  /**
   * Mixes `bytes` into the kernel's entropy pool, credits them, and forces the kernel's CRNG to
   * reseed, so that two VMs restored from one snapshot draw different random numbers from now
   * on. Returns how many bytes were credited.
   */
  addEntropy(bytes: Buffer): Promise<number>;
  /** Sets the system clock (CLOCK_REALTIME) to `unixTimeMs`. */
  setClock(unixTimeMs: number): Promise<void>;
  /** Both at once, where that is cheaper; the bytes credited and how it was done. */
  reseed?(bytes: Buffer, unixTimeMs: number): Promise<{ credited: number; via: ReseedVia }>;
}

/**
 * RNDADDENTROPY (_IOW('R', 0x03, int[2]) = 0x40085203) takes struct rand_pool_info
 * { int entropy_count (bits); int buf_size (bytes); u8 buf[] }; RNDRESEEDCRNG (_IO('R', 0x07))
 * forces a reseed. Writing to /dev/urandom would only mix, without credit or reseed. Node has no
 * ioctl, and perl-base is Essential in Debian, so perl does it; the bytes come on stdin and
 * never appear on a command line.
 */
const ENTROPY_SCRIPT = `
binmode STDIN; local $/; my $d = <STDIN>; my $n = length $d;
open(my $f, '>', '/dev/urandom') or die "open /dev/urandom: $!\\n";
ioctl($f, 0x40085203, pack('i i', $n * 8, $n) . $d) or die "RNDADDENTROPY: $!\\n";
ioctl($f, 0x5207, 0) or die "RNDRESEEDCRNG: $!\\n";
print $n;
`;

const HELPER_ENV = { PATH: '/usr/sbin:/usr/bin:/sbin:/bin' };

/**
 * `runner-exec --reseed-server`, started when the agent starts (before the snapshot is taken)
 * and kept waiting on its stdin, so that the reseed after a restore costs no fork and no exec.
 * Under TCG the first process started after a restore pays for translating the fork and exec
 * path afresh (250-500 ms); a process already waiting costs a pipe write and its answer.
 * One request at a time: 8 bytes of UNIX_TIME_MS and 4 of the byte count (both little-endian),
 * then the bytes; one line back, the bytes credited or "error: ...".
 */
export class ReseedServer {
  private child: ChildProcess | null = null;
  private buffered = '';
  private waiting: ((line: string | Error) => void) | null = null;
  private queue: Promise<unknown> = Promise.resolve();

  constructor(
    private readonly helper: string,
    private readonly timeoutMs = 10_000,
  ) {}

  /** Starts the server process if it is not running; its pid. */
  start(): number | undefined {
    if (this.child !== null) return this.child.pid;
    const child = spawn(this.helper, ['--reseed-server'], {
      stdio: ['pipe', 'pipe', 'ignore'],
      env: HELPER_ENV,
    });
    this.child = child;
    this.buffered = '';
    child.stdout?.setEncoding('utf8');
    child.stdout?.on('data', (chunk: string) => {
      this.buffered += chunk;
      const nl = this.buffered.indexOf('\n');
      if (nl < 0) return;
      const line = this.buffered.slice(0, nl);
      this.buffered = this.buffered.slice(nl + 1);
      this.settle(line);
    });
    child.stdin?.on('error', () => undefined);
    const gone = (why: string): void => {
      if (this.child === child) this.child = null;
      this.settle(new Error(why));
    };
    child.on('error', (err) => gone(`cannot run ${this.helper} --reseed-server: ${err.message}`));
    child.on('exit', (code, signal) =>
      gone(`${this.helper} --reseed-server ended (${signal ?? `exit ${code}`})`),
    );
    return child.pid;
  }

  /** True while the server process is up. */
  get running(): boolean {
    return this.child !== null && this.child.exitCode === null;
  }

  /**
   * Reseeds through the server: the bytes credited. An Error when the server is not running or
   * stopped answering (the caller falls back to a one-shot exec); a SandboxFailureError when
   * the server answered that the kernel refused.
   */
  reseed(bytes: Buffer, unixTimeMs: number): Promise<number> {
    const next = this.queue.then(() => this.request(bytes, unixTimeMs));
    this.queue = next.catch(() => undefined);
    return next;
  }

  /** Ends the server (its stdin closed; it exits at end of file). */
  stop(): void {
    const child = this.child;
    this.child = null;
    child?.stdin?.end();
  }

  private request(bytes: Buffer, unixTimeMs: number): Promise<number> {
    const child = this.child;
    if (child === null || !this.running || child.stdin === null) {
      return Promise.reject(new Error('the reseed server is not running'));
    }
    const head = Buffer.alloc(12);
    head.writeBigUInt64LE(BigInt(Math.trunc(unixTimeMs)), 0);
    head.writeUInt32LE(bytes.length, 8);
    return new Promise<number>((resolve, reject) => {
      const timer = setTimeout(() => {
        this.settle(new Error(`the reseed server did not answer in ${this.timeoutMs} ms`));
        child.kill('SIGKILL');
      }, this.timeoutMs);
      this.waiting = (line) => {
        clearTimeout(timer);
        if (line instanceof Error) return reject(line);
        const credited = Number(line);
        if (line !== '' && Number.isInteger(credited)) return resolve(credited);
        reject(new SandboxFailureError(`reseed: ${line.replace(/^error: /, '')}`));
      };
      child.stdin?.write(Buffer.concat([head, bytes]));
    });
  }

  private settle(line: string | Error): void {
    const waiting = this.waiting;
    this.waiting = null;
    waiting?.(line);
  }
}

/**
 * The real guest actions. With the exec helper, the ioctls and the clock through its reseed
 * server (no process after a restore), or failing that one static exec of it (~10 ms natively,
 * 250-500 ms as the first process after a restore under TCG); without the helper, perl for the
 * ioctls and coreutils `date` for the clock (~340 ms under TCG).
 */
export class SystemGuestActions implements GuestActions {
  private readonly server: ReseedServer | null;

  constructor(
    private readonly helper: string | null = null,
    private readonly timeoutMs = 10_000,
    private readonly log: (line: string) => void = () => undefined,
  ) {
    this.server = helper === null ? null : new ReseedServer(helper, timeoutMs);
    this.server?.start();
  }

  async reseed(bytes: Buffer, unixTimeMs: number): Promise<{ credited: number; via: ReseedVia }> {
    if (this.helper === null) {
      const credited = await this.addEntropy(bytes);
      await this.setClock(unixTimeMs);
      return { credited, via: 'tools' };
    }
    if (this.server !== null) {
      try {
        return { credited: await this.server.reseed(bytes, unixTimeMs), via: 'server' };
      } catch (err) {
        if (err instanceof SandboxFailureError) throw err;
        this.log(`${(err as Error).message}: reseeding with one exec, and starting it again`);
      }
    }
    let out: string;
    try {
      out = await this.run(this.helper, ['--reseed', String(Math.trunc(unixTimeMs))], bytes);
    } finally {
      // Started again for the next restore of this VM's own snapshot (a paused sandbox).
      if (this.server !== null && !this.server.running) this.server.start();
    }
    const credited = Number(out.trim());
    if (!Number.isInteger(credited)) {
      throw new SandboxFailureError(`reseed: unexpected output ${JSON.stringify(out)}`);
    }
    return { credited, via: 'exec' };
  }

  /** Ends the reseed server, if one runs. */
  close(): void {
    this.server?.stop();
  }

  async addEntropy(bytes: Buffer): Promise<number> {
    const out = await this.run('perl', ['-e', ENTROPY_SCRIPT], bytes);
    const credited = Number(out.trim());
    if (!Number.isInteger(credited)) {
      throw new SandboxFailureError(`entropy: unexpected output ${JSON.stringify(out)}`);
    }
    return credited;
  }

  async setClock(unixTimeMs: number): Promise<void> {
    const seconds = Math.floor(unixTimeMs / 1000);
    const millis = String(unixTimeMs % 1000).padStart(3, '0');
    await this.run('date', ['-u', '-s', `@${seconds}.${millis}`], null);
  }

  private run(command: string, args: string[], stdin: Buffer | null): Promise<string> {
    return new Promise((resolve, reject) => {
      const child = execFile(
        command,
        args,
        { timeout: this.timeoutMs, env: HELPER_ENV },
        (err, stdout, stderr) => {
          if (err) {
            reject(
              new SandboxFailureError(`${command} failed: ${stderr.trim() || err.message}`, {
                cause: err,
              }),
            );
          } else {
            resolve(stdout);
          }
        },
      );
      child.stdin?.on('error', () => undefined);
      child.stdin?.end(stdin ?? undefined);
    });
  }
}
