import { existsSync, mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { LanguageRegistry } from '../../../src/languages/index.js';
import { SandboxManager, type SandboxManagerOptions } from '../../../src/sandbox/index.js';

/**
 * The sandbox engine's life on disk, without VMs: what it loads at start-up, and the sweep of
 * paused sandboxes past their time. (Everything with a VM: tests/integration/vm/sandboxes.test.ts.)
 */
describe('the sandbox engine on disk', () => {
  let dir = '';
  let manager: SandboxManager | undefined;

  afterEach(async () => {
    await manager?.close();
    manager = undefined;
    if (dir !== '') rmSync(dir, { recursive: true, force: true });
  });

  const noPool: SandboxManagerOptions['pool'] = {
    capacity: 4,
    acquire: () => Promise.reject(new Error('no VMs in this test')),
    acquireFrom: () => Promise.reject(new Error('no VMs in this test')),
    release: () => Promise.resolve(),
  };

  function open(): Promise<SandboxManager> {
    return SandboxManager.open({
      pool: noPool,
      languages: LanguageRegistry.fromDir(),
      dir,
      timeoutMs: 300_000,
      maxTimeoutMs: 86_400_000,
      maxPerKey: 10,
      maxRunning: 0,
      pausedTtlMs: 1000,
      commandTimeoutMs: 60_000,
      vmMemoryMib: 512,
      vcpus: 1,
      resources: () => Promise.reject(new Error('no VMs in this test')),
      sweepMs: 50,
    });
  }

  function record(id: string, fields: Record<string, unknown>): void {
    mkdirSync(join(dir, id), { recursive: true });
    const now = new Date().toISOString();
    writeFileSync(
      join(dir, id, 'sandbox.json'),
      JSON.stringify({
        id,
        language: 'python',
        template: 'python',
        owner: 'k1',
        state: 'paused',
        createdAt: now,
        startedAt: now,
        expiresAt: new Date(Date.now() + 60_000).toISOString(),
        pausedAt: now,
        timeoutMs: 300_000,
        metadata: { a: 'b' },
        envs: {},
        forkedFrom: null,
        snapshot: { resources: {}, sha256: 'x', sizeBytes: 1 },
        ...fields,
      }),
    );
    writeFileSync(join(dir, id, 'vm.snap'), 'not a real snapshot');
  }

  it('loads paused sandboxes, drops running ones whose process is gone, keeps those of a live one', async () => {
    dir = mkdtempSync(join(tmpdir(), 'runner-sandboxes-'));
    record('paused00000000000001', {});
    // pid 2**22+1 is above the kernel's pid_max default: no such process.
    record('running0000000000001', { state: 'running', snapshot: null, heldBy: 4_194_305 });
    record('running0000000000002', { state: 'running', snapshot: null, heldBy: 1 });
    manager = await open();
    expect(manager.get('paused00000000000001', 'k1')).toMatchObject({
      state: 'paused',
      metadata: { a: 'b' },
      vmId: null,
    });
    expect(() => manager?.get('paused00000000000001', 'k2')).toThrow(
      expect.objectContaining({ code: 'SANDBOX_NOT_FOUND' }),
    );
    expect(manager.list('k1').map((s) => s.id)).toEqual(['paused00000000000001']);
    expect(existsSync(join(dir, 'running0000000000001'))).toBe(false);
    // Held by another live process (pid 1): not this engine's, and left alone.
    expect(existsSync(join(dir, 'running0000000000002'))).toBe(true);
  });

  it('deletes a paused sandbox past its time, snapshot and all', async () => {
    dir = mkdtempSync(join(tmpdir(), 'runner-sandboxes-'));
    record('paused00000000000002', { expiresAt: new Date(Date.now() + 300).toISOString() });
    manager = await open();
    expect(manager.get('paused00000000000002', 'k1').state).toBe('paused');
    await new Promise((r) => setTimeout(r, 600));
    expect(() => manager?.get('paused00000000000002', 'k1')).toThrow(
      expect.objectContaining({ code: 'SANDBOX_NOT_FOUND' }),
    );
    expect(existsSync(join(dir, 'paused00000000000002'))).toBe(false);
  });

  it('refuses calls on a paused sandbox with SANDBOX_STATE, and bad timeouts with LIMIT_INVALID', async () => {
    dir = mkdtempSync(join(tmpdir(), 'runner-sandboxes-'));
    record('paused00000000000003', {});
    manager = await open();
    await expect(
      manager.runCell('paused00000000000003', 'k1', { code: '1' }),
    ).rejects.toMatchObject({
      code: 'SANDBOX_STATE',
    });
    await expect(
      manager.listFiles('paused00000000000003', 'k1', '/home/user'),
    ).rejects.toMatchObject({
      code: 'SANDBOX_STATE',
    });
    expect(() => manager?.setTimeout('paused00000000000003', 'k1', 10)).toThrow(
      expect.objectContaining({ code: 'LIMIT_INVALID' }),
    );
    await expect(manager.create({ language: 'no-such', owner: 'k1' })).rejects.toMatchObject({
      code: 'LANGUAGE_UNKNOWN',
    });
    // The snapshot does not match its recorded sha256: not resumed.
    await expect(manager.resume('paused00000000000003', 'k1')).rejects.toMatchObject({
      code: 'SNAPSHOT_FAILED',
    });
  });
});
