import { execFile } from 'node:child_process';
import { SandboxFailureError } from '../errors.js';

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
  /** Both at once, where that is cheaper (one exec); returns the bytes credited. */
  reseed?(bytes: Buffer, unixTimeMs: number): Promise<number>;
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

/**
 * The real guest actions. With the exec helper (runner-exec --reseed), the ioctls and the clock
 * in one static exec (~10 ms under TCG); without it, perl for the ioctls and coreutils `date`
 * for the clock (~340 ms under TCG).
 */
export class SystemGuestActions implements GuestActions {
  constructor(
    private readonly helper: string | null = null,
    private readonly timeoutMs = 10_000,
  ) {}

  async reseed(bytes: Buffer, unixTimeMs: number): Promise<number> {
    if (this.helper === null) {
      const credited = await this.addEntropy(bytes);
      await this.setClock(unixTimeMs);
      return credited;
    }
    const out = await this.run(this.helper, ['--reseed', String(Math.trunc(unixTimeMs))], bytes);
    const credited = Number(out.trim());
    if (!Number.isInteger(credited)) {
      throw new SandboxFailureError(`reseed: unexpected output ${JSON.stringify(out)}`);
    }
    return credited;
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
        { timeout: this.timeoutMs, env: { PATH: '/usr/sbin:/usr/bin:/sbin:/bin' } },
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
