import { describe, expect, it } from 'vitest';
import { NetworkDisabledError } from '../../../src/errors.js';
import { LanguageRegistry } from '../../../src/languages/index.js';
import { VmNetManager } from '../../../src/net/vmnet.js';
import { VmPool } from '../../../src/pool/pool.js';
import { JobRunner } from '../../../src/pool/runner.js';
import type { SnapshotManager } from '../../../src/pool/snapshots.js';
import type { VmmDriver } from '../../../src/vmm/index.js';

// Nothing here boots a VM or touches the host's network: the checks run before either.
const driver = { name: 'qemu' } as unknown as VmmDriver;
const snapshots = {} as unknown as SnapshotManager;
const registry = LanguageRegistry.fromDir();

function runner(network: VmNetManager | null): JobRunner {
  const pool = new VmPool({
    driver,
    snapshots,
    runDir: '/tmp/none',
    targetPerLanguage: 0,
    maxVms: 1,
    maxMemoryMib: 1024,
    vmMemoryMib: 512,
    restoreTimeoutMs: 1000,
    network,
  });
  return new JobRunner(registry, pool);
}

const request = { language: 'python', files: [{ content: 'print(1)' }], network: true };

describe('network on request, before any VM', () => {
  it('refuses a job asking for network with NETWORK_DISABLED (403) when the operator does not allow it', () => {
    let err: unknown;
    try {
      runner(null).prepare(request);
    } catch (e) {
      err = e;
    }
    expect(err).toBeInstanceOf(NetworkDisabledError);
    expect((err as NetworkDisabledError).code).toBe('NETWORK_DISABLED');
    expect((err as NetworkDisabledError).status).toBe(403);
  });

  it('carries the wish into the prepared job where network is allowed, and not otherwise', () => {
    const net = new VmNetManager({
      allow: ['198.18.1.0/24'],
      dns: null,
      bandwidthKbit: 1000,
      maxConnections: 4,
      linkCidr: '10.255.0.0/16',
      vmmUser: null,
    });
    expect(runner(net).prepare(request).network).toBe(true);
    expect(runner(net).prepare({ ...request, network: false }).network).toBe(false);
    expect(runner(null).prepare({ language: 'python', files: [{ content: '' }] }).network).toBe(
      false,
    );
  });
});
