import { execFileSync } from 'node:child_process';
import { existsSync, mkdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { loadSettings } from '../../../src/config/settings.js';
import { bundleAgent, projectRoot } from '../../../src/images/agent-bundle.js';
import { GUEST_INIT_SCRIPT } from '../../../src/images/guest-init.js';
import { sha256File } from '../../../src/images/identity.js';
import {
  BASE_FILE_NAME,
  RootfsBuilder,
  rootfsFileName,
  type RootfsBuildResult,
} from '../../../src/images/rootfs.js';
import { latestBase } from '../../../src/pool/snapshots.js';
import { ImageStore } from '../../../src/images/store.js';
import { LanguageRegistry } from '../../../src/languages/index.js';
import { testDataPaths } from '../../support/paths.js';

const hasTools = ['/usr/sbin/debootstrap', '/usr/sbin/mkfs.ext4', '/usr/sbin/debugfs'].every((p) =>
  existsSync(p),
);
const isRoot = process.getuid?.() === 0;
const skipReason = !isRoot
  ? 'building a rootfs needs root'
  : !hasTools
    ? 'debootstrap and e2fsprogs are not installed'
    : null;
if (skipReason !== null) console.warn(`skipping the rootfs build test: ${skipReason}`);

/** Runs one debugfs request against the image, read-only (nothing is mounted). */
function debugfs(image: string, request: string): string {
  return execFileSync('debugfs', ['-R', request, image], {
    encoding: 'utf8',
    stdio: ['ignore', 'pipe', 'ignore'],
  });
}

describe.skipIf(skipReason !== null)(
  'the base image and the python layer (cached in the shared test data dir)',
  () => {
    const paths = testDataPaths();
    const store = new ImageStore(paths.imagesDir);
    let result: RootfsBuildResult;
    let image: string;
    let baseImage: string;
    let agentBundle: string;

    beforeAll(async () => {
      // The real agent when its sources exist, else a placeholder that only has to parse.
      if (existsSync(join(projectRoot(), 'src/agent/main.ts'))) {
        // Its own file per process: another test process may be bundling at the same moment.
        agentBundle = await bundleAgent(
          join(paths.buildDir, 'agent', `agent-test-${process.pid}.mjs`),
        );
      } else {
        agentBundle = join(paths.buildDir, 'agent', 'placeholder-agent.mjs');
        mkdirSync(join(paths.buildDir, 'agent'), { recursive: true });
        writeFileSync(agentBundle, '// placeholder agent for the image build test\n');
      }
      const python = LanguageRegistry.fromDir().get('python');
      result = await new RootfsBuilder({
        paths,
        store,
        agentBundlePath: agentBundle,
        settings: loadSettings(),
      }).build(python);
      image = join(result.image.dir, rootfsFileName('python'));
      const treeKey = result.image.manifest.inputs?.baseTreeKey ?? '';
      const base = await latestBase(store, treeKey);
      if (base === undefined) throw new Error(`no base image of the tree ${treeKey}`);
      baseImage = join(base.dir, BASE_FILE_NAME);
      console.info(
        `rootfs ${result.id}: ${result.reused ? 'reused' : `built in ${result.seconds.toFixed(1)} s`}, log ${result.logPath ?? '-'}`,
      );
    }, 3_600_000);

    afterAll(() => {
      if (agentBundle.includes(`agent-test-${process.pid}`)) rmSync(agentBundle, { force: true });
    });

    it('stores the layer with a manifest that verifies, tied to a base tree', async () => {
      const m = result.image.manifest;
      expect(m.kind).toBe('rootfs');
      expect(m.language).toBe('python');
      expect(m.id).toMatch(/^python-[0-9a-f]{12}$/);
      expect(m.toolchainVersion).toMatch(/^3\.11\./);
      expect(m.files.map((f) => f.name)).toEqual(['rootfs-python.ext4']);
      expect(m.inputs?.baseTreeKey).toMatch(/^[0-9a-f]{64}$/);
      expect(m.inputs?.agentSha256).toBeUndefined();
      expect((await store.verify(m.id)).ok).toBe(true);
      expect((await store.latest('rootfs', 'python'))?.manifest.builtAt).toBeDefined();
    });

    it('stores the base with the agent it was given', async () => {
      const base = await latestBase(store, result.image.manifest.inputs?.baseTreeKey ?? '');
      const m = base?.manifest;
      expect(m?.kind).toBe('base');
      expect(m?.id).toMatch(/^base-[0-9a-f]{12}$/);
      expect(m?.files.map((f) => f.name)).toEqual([BASE_FILE_NAME]);
      expect(m?.inputs?.agentSha256).toBe(await sha256File(agentBundle));
      expect((await store.verify(m?.id ?? '', 'base')).ok).toBe(true);
    });

    it('the base holds the agent and the init; the layer the language folder and no agent', () => {
      const listing = debugfs(baseImage, 'ls -l /opt/runner');
      expect(listing).toMatch(/agent\.mjs/);
      expect(listing).toMatch(/languages/);
      expect(debugfs(baseImage, 'cat /opt/runner/agent.mjs')).toBe(
        readFileSync(agentBundle, 'utf8'),
      );
      expect(debugfs(baseImage, 'cat /sbin/runner-init')).toBe(GUEST_INIT_SCRIPT);
      // Mode 0755, owned by root: debugfs prints the octal mode and uid/gid.
      expect(debugfs(baseImage, 'stat /usr/sbin/runner-init')).toMatch(/Mode:\s+0755/);
      expect(debugfs(image, 'ls -l /opt/runner/languages/python')).toMatch(/language\.json/);
      expect(debugfs(image, 'ls -l /opt/runner')).not.toMatch(/agent\.mjs/);
    });

    it('the base has the runner user, node, socat and prlimit, and none of the host /etc', () => {
      expect(debugfs(baseImage, 'cat /etc/passwd')).toMatch(
        /^runner:x:1000:1000:[^:]*:\/home\/runner:\/bin\/sh$/m,
      );
      expect(debugfs(baseImage, 'cat /etc/group')).toMatch(/^runner:x:1000:$/m);
      expect(debugfs(baseImage, 'ls -l /home')).toMatch(/1000\s+1000\s+\d+.*runner/);
      const bin = debugfs(baseImage, 'ls /usr/bin');
      expect(bin).toMatch(/\bnode(js)?\b/);
      expect(bin).toMatch(/\bsocat\b/);
      expect(bin).toMatch(/\bprlimit\b/);
      expect(bin).not.toMatch(/\bpython3\b/);
      expect(debugfs(baseImage, 'cat /etc/hostname')).toBe('runner\n');
      expect(debugfs(baseImage, 'cat /etc/resolv.conf')).toBe('');
      expect(debugfs(baseImage, 'ls /etc/apt')).not.toMatch(/sources\.list(?!\.d)/);
    });

    it('the layer has python3 and only what python adds: no copy of the base', () => {
      expect(debugfs(image, 'ls /usr/bin')).toMatch(/\bpython3\b/);
      // Files of the base that python does not touch are not in the layer.
      expect(debugfs(image, 'ls /usr/bin')).not.toMatch(/\bsocat\b/);
      expect(debugfs(image, 'ls /usr/bin')).not.toMatch(/\bprlimit\b/);
      expect(debugfs(image, 'ls /etc/apt')).not.toMatch(/sources\.list(?!\.d)/);
    });
  },
);
