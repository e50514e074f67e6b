import { execFileSync } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import {
  GUEST_AGENT_PATH,
  GUEST_CGROUP_ROOT,
  GUEST_INIT_SCRIPT,
  GUEST_LANGUAGES_DIR,
} from '../../../src/images/guest-init.js';

describe('guest init script', () => {
  it('is valid POSIX sh (dash -n)', () => {
    const dir = mkdtempSync(join(tmpdir(), 'runner-init-'));
    try {
      const file = join(dir, 'runner-init');
      writeFileSync(file, GUEST_INIT_SCRIPT);
      execFileSync('sh', ['-n', file]);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it('starts the agent with the agreed arguments for both transports', () => {
    expect(GUEST_INIT_SCRIPT.startsWith('#!/bin/sh\n')).toBe(true);
    expect(GUEST_INIT_SCRIPT).toContain(
      `--languages ${GUEST_LANGUAGES_DIR} --uid 1000 --gid 1000 --cgroup-root ${GUEST_CGROUP_ROOT}`,
    );
    expect(GUEST_INIT_SCRIPT).toContain(
      `/usr/bin/node ${GUEST_AGENT_PATH} --serial "/dev/virtio-ports/$port"`,
    );
    expect(GUEST_INIT_SCRIPT).toContain(
      `/usr/bin/node ${GUEST_AGENT_PATH} --unix /run/runner/agent.sock`,
    );
    expect(GUEST_INIT_SCRIPT).toContain(
      'socat VSOCK-LISTEN:5000,fork,reuseaddr UNIX-CONNECT:/run/runner/agent.sock',
    );
  });

  it('reads its settings from the kernel command line', () => {
    for (const key of ['runner.transport=', 'runner.port=', 'runner.seed=', 'runner.debug=1']) {
      expect(GUEST_INIT_SCRIPT).toContain(key);
    }
    expect(GUEST_INIT_SCRIPT).toContain('/proc/cmdline');
  });

  it('moves itself into a leaf cgroup before enabling controllers, and powers off at the end', () => {
    const moveAt = GUEST_INIT_SCRIPT.indexOf('echo $$ > "$cg/agent/cgroup.procs"');
    const enableAt = GUEST_INIT_SCRIPT.indexOf('> "$cg/cgroup.subtree_control"');
    expect(moveAt).toBeGreaterThan(0);
    expect(enableAt).toBeGreaterThan(moveAt);
    expect(GUEST_INIT_SCRIPT).toContain('echo o > /proc/sysrq-trigger');
    expect(
      GUEST_INIT_SCRIPT.trimEnd().endsWith('poweroff_now "the agent exited with status $status"'),
    ).toBe(true);
  });

  it('finds the port through sysfs when udev made no /dev/virtio-ports link', () => {
    const dir = mkdtempSync(join(tmpdir(), 'runner-init-'));
    try {
      // Run the script's find_port function alone against a fake sysfs.
      const start = GUEST_INIT_SCRIPT.indexOf('find_port() {');
      const end = GUEST_INIT_SCRIPT.indexOf('\n}\n', start) + 3;
      const fn = GUEST_INIT_SCRIPT.slice(start, end).replaceAll(
        '/sys/class/virtio-ports',
        `${dir}/sys`,
      );
      execFileSync('mkdir', [
        '-p',
        `${dir}/sys/vport0p0`,
        `${dir}/sys/vport0p1`,
        `${dir}/sys/vport1p2`,
      ]);
      writeFileSync(`${dir}/sys/vport0p0/name`, '\n');
      writeFileSync(`${dir}/sys/vport0p1/name`, 'other\n');
      writeFileSync(`${dir}/sys/vport1p2/name`, 'runner\n');
      const out = execFileSync('sh', [
        '-c',
        `${fn}find_port runner; find_port nothing || echo none`,
      ]);
      expect(out.toString()).toBe('/dev/vport1p2\nnone\n');
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
