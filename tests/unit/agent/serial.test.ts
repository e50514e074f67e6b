import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { access, mkdtemp, rm } from 'node:fs/promises';
import { connect } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { AgentServer, SerialTransport, type JobExecutor } from '../../../src/agent/index.js';
import {
  MessageChannel,
  parseAgentMessage,
  type AgentMessage,
  type HostMessage,
} from '../../../src/protocol/index.js';

const hasSocat = spawnSync('socat', ['-V'], { stdio: 'ignore' }).status === 0;

/** A job runner that is never asked to run anything here. */
const idleRunner: JobExecutor = {
  languages: () => ['bash'],
  execute: () => Promise.reject(new Error('not in this test')),
};

/**
 * Stands in for QEMU's virtserialport: socat waits for the host on a unix socket, then makes a
 * pty (raw, so bytes pass unchanged) and links its slave at `device`; when the host hangs up,
 * socat exits and the agent's reads fail (EIO on a pty, EOF on a virtio port), as they do when
 * QEMU's chardev loses its client.
 */
class PortBridge {
  private child: ChildProcess | null = null;

  constructor(
    readonly hostSocket: string,
    readonly device: string,
  ) {}

  async start(): Promise<void> {
    this.child = spawn(
      'socat',
      ['-t', '0.05', `UNIX-LISTEN:${this.hostSocket}`, `PTY,link=${this.device},raw,echo=0`],
      { stdio: 'ignore' },
    );
    await expect
      .poll(
        () =>
          access(this.hostSocket).then(
            () => true,
            () => false,
          ),
        { timeout: 20_000 },
      )
      .toBe(true);
  }

  /**
   * Waits until socat has gone (it exits when the host hangs up); kills it after 5 s, so that a
   * session that failed reports its own error rather than the test's timeout.
   */
  async stopped(): Promise<void> {
    const child = this.child;
    if (!child || child.exitCode !== null || child.signalCode !== null) return;
    const gone = new Promise((r) => child.once('exit', r));
    const timer = setTimeout(() => child.kill('SIGKILL'), 5000);
    await gone;
    clearTimeout(timer);
  }

  kill(): void {
    if (this.child && this.child.exitCode === null) this.child.kill('SIGKILL');
  }
}

describe.skipIf(!hasSocat)('serial transport (a pty standing in for virtio-serial)', () => {
  let dir: string;
  let bridge: PortBridge;
  let transport: SerialTransport;

  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), 'runner-serial-'));
    bridge = new PortBridge(join(dir, 'host.sock'), join(dir, 'port'));
    const server = new AgentServer({
      executor: idleRunner,
      guest: {
        addEntropy: (b) => Promise.resolve(b.length),
        setClock: () => Promise.resolve(),
      },
      vmId: 'vm-serial',
    });
    transport = new SerialTransport(server, bridge.device, { reopenDelayMs: 50, helloDelayMs: 50 });
    await transport.start();
  });

  afterAll(async () => {
    bridge.kill();
    await transport.close();
    await rm(dir, { recursive: true, force: true });
  });

  async function hostSession(pingId: string): Promise<void> {
    await bridge.start();
    const socket = connect(bridge.hostSocket);
    const ch = new MessageChannel<AgentMessage, HostMessage>(socket, { parse: parseAgentMessage });
    try {
      // Generous for a host loaded by image builds beside this test (a CI run's first group).
      expect(await ch.next(20_000)).toMatchObject({ type: 'hello', vmId: 'vm-serial' });
      await ch.send({ type: 'ping', id: pingId });
      expect(await ch.next(20_000)).toEqual({ type: 'pong', id: pingId });
    } finally {
      ch.close();
      await bridge.stopped();
    }
  }

  it('says hello when a host connects, and again for the next host', async () => {
    await hostSession('first');
    // The port read failed when the host left; the agent reopened it and greets anew.
    await hostSession('second');
  }, 90_000);
});
