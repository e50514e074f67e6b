import { spawn, spawnSync } from 'node:child_process';
import { access, mkdtemp, rm } from 'node:fs/promises';
import { connect } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { randomBytes } from 'node:crypto';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { parseAgentArgs, SystemGuestActions } from '../../../src/agent/index.js';
import { hasCode } from '../../../src/errors.js';
import {
  MessageChannel,
  parseAgentMessage,
  type AgentMessage,
  type HostMessage,
} from '../../../src/protocol/index.js';
import { AGENT_VERSION } from '../../../src/version.js';
import { isRoot, languagesDir } from './helpers.js';

const root = join(import.meta.dirname, '../../..');

describe('parseAgentArgs', () => {
  it('parses a full command line', () => {
    expect(
      parseAgentArgs([
        '--unix',
        '/run/runner/agent.sock',
        '--languages',
        '/opt/languages',
        '--uid',
        '1000',
        '--gid',
        '1000',
        '--cgroup-root',
        '/sys/fs/cgroup',
        '--work-root',
        '/run/jobs',
        '--scratch',
        '/tmp,/dev/shm',
        '--exec-helper',
        '/opt/runner/runner-exec',
        '--vm-id',
        'vm-1',
      ]),
    ).toEqual({
      unix: '/run/runner/agent.sock',
      serial: null,
      languagesDir: '/opt/languages',
      runAs: { uid: 1000, gid: 1000 },
      cgroupRoot: '/sys/fs/cgroup',
      workRoot: '/run/jobs',
      scratchDirs: ['/tmp', '/dev/shm'],
      execHelper: '/opt/runner/runner-exec',
      vmId: 'vm-1',
    });
    expect(
      parseAgentArgs(['--serial', '/dev/virtio-ports/runner', '--languages', 'l', '--no-cgroup']),
    ).toMatchObject({
      serial: '/dev/virtio-ports/runner',
      unix: null,
      cgroupRoot: null,
      runAs: null,
    });
    expect(parseAgentArgs(['--help'])).toBe('help');
    expect(parseAgentArgs(['--version'])).toBe('version');
  });

  it.each([
    ['no transport', ['--languages', 'l']],
    ['two transports', ['--unix', 'a', '--serial', 'b', '--languages', 'l']],
    ['no languages', ['--unix', 'a']],
    ['uid without gid', ['--unix', 'a', '--languages', 'l', '--uid', '5']],
    ['uid 0', ['--unix', 'a', '--languages', 'l', '--uid', '0', '--gid', '0']],
    ['a non-numeric uid', ['--unix', 'a', '--languages', 'l', '--uid', 'x', '--gid', '1']],
    ['an unknown option', ['--unix', 'a', '--languages', 'l', '--fast']],
    ['a stray argument', ['--unix', 'a', '--languages', 'l', 'extra']],
    [
      'cgroup root and no cgroup',
      ['--unix', 'a', '--languages', 'l', '--no-cgroup', '--cgroup-root', 'x'],
    ],
  ])('rejects %s', (_why, argv) => {
    let err: unknown;
    try {
      parseAgentArgs(argv);
    } catch (e) {
      err = e;
    }
    expect(hasCode(err, 'CONFIG_INVALID')).toBe(true);
  });
});

describe('the bundled agent', () => {
  let dir: string;
  let bundle: string;

  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), 'runner-bundle-'));
    bundle = join(dir, 'agent.mjs');
    const built = spawnSync(process.execPath, [join(root, 'scripts/bundle-agent.mjs'), bundle], {
      encoding: 'utf8',
    });
    expect(built.status, built.stderr).toBe(0);
  });

  afterAll(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  it('prints its usage, its version, and usage errors', () => {
    const help = spawnSync(process.execPath, [bundle, '--help'], { encoding: 'utf8' });
    expect([help.status, help.stdout]).toEqual([
      0,
      expect.stringContaining('--unix PATH') as string,
    ]);
    const version = spawnSync(process.execPath, [bundle, '--version'], { encoding: 'utf8' });
    expect([version.status, version.stdout]).toEqual([0, `${AGENT_VERSION}\n`]);
    const bad = spawnSync(process.execPath, [bundle, '--unix', 'x'], { encoding: 'utf8' });
    expect(bad.status).toBe(2);
    expect(bad.stderr).toContain('--languages DIR is required');
    expect(bad.stderr).toContain('usage:');
  });

  it('starts, greets a host over its unix socket, and stops on SIGTERM', async () => {
    const socketPath = join(dir, 'agent.sock');
    const agent = spawn(
      process.execPath,
      [
        bundle,
        '--unix',
        socketPath,
        '--languages',
        languagesDir,
        '--no-cgroup',
        '--work-root',
        join(dir, 'work'),
        '--vm-id',
        'vm-bundle',
      ],
      { stdio: ['ignore', 'ignore', 'pipe'] },
    );
    let stderr = '';
    agent.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    const exited = new Promise<number | null>((r) => agent.once('exit', (code) => r(code)));
    try {
      await expect
        .poll(
          () =>
            access(socketPath).then(
              () => true,
              () => false,
            ),
          { timeout: 10_000 },
        )
        .toBe(true);
      const ch = new MessageChannel<AgentMessage, HostMessage>(connect(socketPath), {
        parse: parseAgentMessage,
      });
      expect(await ch.next(5000)).toMatchObject({ type: 'hello', vmId: 'vm-bundle' });
      await ch.send({ type: 'ping', id: 'b' });
      expect(await ch.next(5000)).toEqual({ type: 'pong', id: 'b' });
      ch.close();
      agent.kill('SIGTERM');
      expect(await exited, stderr).toBe(0);
      expect(stderr).toContain('serving unix:');
    } finally {
      if (agent.exitCode === null) agent.kill('SIGKILL');
    }
  });
});

describe('SystemGuestActions', () => {
  // Crediting entropy is harmless, so it runs for real where the test is root. Setting the
  // clock is not, and is never done here.
  it.skipIf(!isRoot)(
    'credits entropy and reseeds the kernel CRNG through perl ioctls',
    async () => {
      expect(await new SystemGuestActions().addEntropy(randomBytes(32))).toBe(32);
    },
  );
});
