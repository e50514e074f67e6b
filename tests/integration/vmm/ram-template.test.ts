import { createHash } from 'node:crypto';
import {
  createReadStream,
  existsSync,
  mkdtempSync,
  readFileSync,
  readdirSync,
  readlinkSync,
  rmSync,
  statSync,
} from 'node:fs';
import { tmpdir } from 'node:os';
import { basename, dirname, join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Engine } from '../../../src/pool/engine.js';
import { executeOnVm, type Lease } from '../../../src/pool/index.js';
import type { SnapshotRef } from '../../../src/pool/snapshots.js';
import type { StageResult } from '../../../src/protocol/index.js';
import { BACKPORTS_QEMU } from '../../../src/vmm/index.js';
import { testDataDir, testDataPaths } from '../../support/paths.js';
import { ensureImages, testEngine, vmSkipReason } from '../../support/vm.js';

/** QEMU 10 where scripts/qemu-backports.sh (run by scripts/setup.sh as root) unpacks it. */
const QEMU = process.env.RUNNER_TEST_RAM_TEMPLATE_QEMU ?? BACKPORTS_QEMU;

const skip =
  vmSkipReason() ??
  (existsSync(QEMU)
    ? null
    : `no QEMU 8.2 or later at ${QEMU} (scripts/setup.sh unpacks one there as root, with scripts/qemu-backports.sh; RUNNER_TEST_RAM_TEMPLATE_QEMU names another)`);
if (skip) console.warn(`skipping the RAM template tests in real VMs: ${skip}`);

const text = (s: StageResult | null | undefined): string =>
  Buffer.from(s?.stdout ?? '', 'base64').toString();

function sha256File(path: string): Promise<string> {
  return new Promise((resolve, reject) => {
    const hash = createHash('sha256');
    createReadStream(path)
      .on('data', (chunk) => hash.update(chunk))
      .on('error', reject)
      .on('end', () => resolve(hash.digest('hex')));
  });
}

/**
 * A path as a jailed QEMU's /proc entries may show it: the jail binds the file at its own path
 * in another mount namespace, so only its tail is compared.
 */
const sameFile = (shown: string, file: string): boolean =>
  shown.endsWith(`/${basename(dirname(file))}/${basename(file)}`);

/** A process's mapping of `file` in /proc/<pid>/smaps: its permissions and sizes in kB. */
function mappingOf(pid: number, file: string): { perms: string; kb: Map<string, number> } | null {
  const lines = readFileSync(`/proc/${pid}/smaps`, 'utf8').split('\n');
  for (let i = 0; i < lines.length; i++) {
    const head = lines[i]?.split(/\s+/) ?? [];
    if (head.length < 6 || !/^[0-9a-f]+-[0-9a-f]+$/.test(head[0] ?? '')) continue;
    if (!sameFile(head.slice(5).join(' '), file)) continue;
    const kb = new Map<string, number>();
    for (let j = i + 1; j < lines.length; j++) {
      const m = /^(\w+):\s+(\d+) kB$/.exec(lines[j] ?? '');
      if (m === null) break;
      kb.set(m[1] ?? '', Number(m[2]));
    }
    return { perms: head[1] ?? '', kb };
  }
  return null;
}

/** The open flags of `pid`'s descriptors of `file` (octal, from /proc/<pid>/fdinfo). */
function openFlags(pid: number, file: string): number[] {
  const out: number[] = [];
  for (const fd of readdirSync(`/proc/${pid}/fd`)) {
    let target = '';
    try {
      target = readlinkSync(`/proc/${pid}/fd/${fd}`);
    } catch {
      continue;
    }
    if (!sameFile(target, file)) continue;
    const flags = /^flags:\s+([0-7]+)$/m.exec(readFileSync(`/proc/${pid}/fdinfo/${fd}`, 'utf8'));
    if (flags) out.push(parseInt(flags[1] ?? '0', 8));
  }
  return out;
}

/**
 * Snapshots whose guest RAM is a template file (RUNNER_QEMU_RAM_TEMPLATE, docs/qemu.md "The RAM
 * template"), with QEMU 10 from bookworm-backports, jailed, in real VMs (TCG here): the file is
 * the host's and read-only, clones map it copy-on-write and share its pages, a clone cannot
 * change it, each clone is reseeded, and a clone's full snapshot (a paused sandbox) restores
 * without the template. Its own data dir over the shared images: a snapshot of another kind
 * would replace the shared suite's python snapshot (one per layer is kept).
 */
describe.skipIf(skip !== null)('the RAM template, in real VMs', () => {
  let engine: Engine | undefined;
  let ref: SnapshotRef | undefined;
  let templateHash = '';
  const dataDir = join(testDataDir(), 'ram-template');

  /** Runs a python program as a job in `vm`. */
  function runPython(vm: Lease['vm'], code: string): ReturnType<typeof executeOnVm> {
    const { engine } = need();
    return executeOnVm(
      vm,
      engine.prepare({ language: 'python', files: [{ name: 'main.py', content: code }] }),
    );
  }

  function need(): { engine: Engine; ref: SnapshotRef; ramPath: string } {
    if (!engine || !ref || ref.ramPath === undefined) throw new Error('the engine did not start');
    return { engine, ref, ramPath: ref.ramPath };
  }

  beforeAll(async () => {
    await ensureImages(['python']);
    engine = await testEngine({
      dataDir,
      imagesDir: testDataPaths().imagesDir,
      qemuBinary: QEMU,
      qemuRamTemplate: true,
      qemuJail: true,
      accel: 'tcg',
      poolTarget: 0,
    });
    ref = await engine.snapshots.ensure('python');
    if (ref.ramPath !== undefined) templateHash = await sha256File(ref.ramPath);
  }, 900_000);

  afterAll(async () => {
    await engine?.close();
  });

  it("is the host's file, read-only, beside a snapshot of the device state alone", () => {
    const { ref, ramPath } = need();
    expect(dirname(ramPath)).toBe(dirname(ref.path));
    const ram = statSync(ramPath);
    expect(ram.uid).toBe(0);
    expect(ram.mode & 0o777).toBe(0o444);
    expect(ram.size).toBe(ref.resources.memoryMib * 1024 * 1024);
    // No RAM in the snapshot: kilobytes of device state (a plain snapshot holds the whole RAM).
    expect(statSync(ref.path).size).toBeLessThan(4 * 1024 * 1024);
  });

  it('two clones run jobs, each reseeded, and share the pages of the template they did not write', async () => {
    const { engine, ramPath } = need();
    const leases: Lease[] = [];
    try {
      leases.push(await engine.pool.acquire('python'));
      leases.push(await engine.pool.acquire('python'));
      const code = 'import os, random\nprint(os.urandom(16).hex(), random.getrandbits(64))';
      const outs: string[] = [];
      for (const lease of leases) {
        const result = await runPython(lease.vm, code);
        expect(result.status, result.run?.message).toBe('ok');
        outs.push(text(result.run).trim());
      }
      expect(outs[0]).toMatch(/^[0-9a-f]{32} \d+$/);
      expect(outs[1]).not.toBe(outs[0]);
      for (const lease of leases) {
        const pid = lease.vm.pid ?? 0;
        // Opened read-only, mapped private: the clone's writes stay in its own pages.
        const flags = openFlags(pid, ramPath);
        expect(flags.length, `QEMU ${pid} holds ${ramPath} open`).toBeGreaterThan(0);
        for (const f of flags) expect(f & 0o3, 'O_RDONLY').toBe(0);
        const map = mappingOf(pid, ramPath);
        expect(map, `QEMU ${pid} maps ${ramPath}`).not.toBeNull();
        expect(map?.perms).toBe('rw-p');
        const shared = (map?.kb.get('Shared_Clean') ?? 0) + (map?.kb.get('Shared_Dirty') ?? 0);
        const rss = map?.kb.get('Rss') ?? 0;
        const pss = map?.kb.get('Pss') ?? 0;
        console.info(
          `ram template: QEMU ${pid} maps the template with ${Math.round(rss / 1024)} MiB resident, ${Math.round(shared / 1024)} MiB shared, PSS ${Math.round(pss / 1024)} MiB`,
        );
        expect(shared).toBeGreaterThan(16 * 1024);
        expect(pss).toBeLessThan(rss);
      }
    } finally {
      for (const lease of leases) await engine.pool.release(lease);
    }
    // Nothing any clone did reached the file.
    expect(await sha256File(ramPath)).toBe(templateHash);
  }, 600_000);

  it("a clone's full snapshot (a paused sandbox) holds its RAM and restores without the template", async () => {
    const { engine, ref } = need();
    const dir = mkdtempSync(join(tmpdir(), 'runner-ram-template-'));
    try {
      const lease = await engine.pool.acquire('python');
      let sizeBytes = 0;
      try {
        const first = await runPython(lease.vm, 'print("before")');
        expect(first.status, first.run?.message).toBe('ok');
        sizeBytes = (await lease.vm.snapshot(join(dir, 'vm.snap'))).sizeBytes;
      } finally {
        await engine.pool.release(lease);
      }
      // The clone's RAM is its own (x-ignore-shared is only set for a template VM's snapshot).
      expect(sizeBytes).toBeGreaterThan(32 * 1024 * 1024);
      const resumed = await engine.pool.acquireFrom('python', {
        path: join(dir, 'vm.snap'),
        resources: ref.resources,
      });
      try {
        const after = await runPython(resumed.vm, 'print(6 * 7)');
        expect(after.status, after.run?.message).toBe('ok');
        expect(text(after.run)).toBe('42\n');
      } finally {
        await engine.pool.release(resumed);
      }
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  }, 600_000);

  it("refuses Debian 12's own QEMU 7.2 for a template, as a bad configuration", async () => {
    await expect(
      testEngine({
        dataDir,
        imagesDir: testDataPaths().imagesDir,
        qemuBinary: '/usr/bin/qemu-system-x86_64',
        qemuRamTemplate: true,
        accel: 'tcg',
        poolTarget: 0,
      }),
    ).rejects.toMatchObject({
      code: 'CONFIG_INVALID',
      message: expect.stringMatching(/8\.2/) as unknown,
    });
  });
});
