import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import {
  LanguageRegistry,
  parseLanguageDefinition,
  versionMatches,
} from '../../../src/languages/index.js';

const WAVE_ONE = [
  'bash',
  'c',
  'c++',
  'go',
  'java',
  'javascript',
  'php',
  'python',
  'ruby',
  'rust',
  'typescript',
];

describe('languages as data', () => {
  const registry = LanguageRegistry.fromDir();

  it('defines at least 50 languages, the wave-one ones among them, each with its test program', () => {
    const names = registry.names();
    expect(names.length).toBeGreaterThanOrEqual(50);
    expect(names).toEqual(expect.arrayContaining(WAVE_ONE));
    for (const { definition, dir } of registry.list()) {
      expect(existsSync(join(dir, definition.test.file)), definition.name).toBe(true);
      expect(definition.packages.length).toBeGreaterThan(0);
      expect(definition.test.expected, definition.name).toBe(`runner-test: ${definition.name} ok`);
    }
  });

  it('gives each Judge0 id to one language only', () => {
    const ids = registry
      .list()
      .map((l) => l.definition.judge0Id)
      .filter((id) => id !== undefined);
    expect(ids.length).toBeGreaterThanOrEqual(30);
    expect(new Set(ids).size).toBe(ids.length);
  });

  it('puts the languages of one toolchain in one layer', () => {
    const layerOf = (name: string): string => {
      const d = registry.get(name).definition;
      return d.layer ?? d.name;
    };
    for (const name of ['c', 'c++', 'fortran', 'd', 'objective-c', 'ada'])
      expect(layerOf(name), name).toBe('gcc');
    for (const name of ['java', 'kotlin', 'scala', 'groovy', 'clojure'])
      expect(layerOf(name), name).toBe('jvm');
    for (const name of ['erlang', 'elixir']) expect(layerOf(name), name).toBe('beam');
    expect(layerOf('c-clang')).toBe(layerOf('c++-clang'));
    expect(layerOf('python')).toBe('python');
  });

  it('finds languages by Piston name and alias, with version matching', () => {
    expect(registry.get('py').definition.name).toBe('python');
    expect(registry.get('node-js').definition.name).toBe('javascript');
    expect(registry.get('cpp').definition.name).toBe('c++');
    expect(registry.get('python', '3').definition.name).toBe('python');
    expect(registry.get('python', '*').definition.name).toBe('python');
    expect(() => registry.get('python', '2.7')).toThrow(/not "2.7"/);
    expect(registry.get('llvm-ir').definition.name).toBe('llvm_ir');
    expect(registry.get('rscript').definition.name).toBe('rscript');
    expect(registry.get('r').definition.name).toBe('rscript');
    expect(registry.get('c#').definition.name).toBe('csharp');
    expect(() => registry.get('klingon')).toThrow(
      expect.objectContaining({ code: 'LANGUAGE_UNKNOWN' }),
    );
  });

  it('matches versions Piston-style', () => {
    expect(versionMatches('3.11.2', '3.11')).toBe(true);
    expect(versionMatches('3.11.2', '3.x')).toBe(true);
    expect(versionMatches('3.11.2', '3.12')).toBe(false);
    expect(versionMatches('3.11.2', '3.11.2.1')).toBe(false);
  });

  it('rejects malformed definitions with the reason', () => {
    const good = registry.get('python').definition;
    expect(() => parseLanguageDefinition({ ...good, extra: 1 }, 'x.json')).toThrow(/x.json/);
    expect(() => parseLanguageDefinition({ ...good, run: [] }, 'x.json')).toThrow(
      expect.objectContaining({ code: 'LANGUAGE_INVALID' }),
    );
    expect(() => parseLanguageDefinition({ ...good, packages: ['Bad Name'] }, 'x.json')).toThrow();
    expect(() => parseLanguageDefinition({ ...good, seccomp: 'none' }, 'x.json')).toThrow(
      /seccomp/,
    );
    const bare: Record<string, unknown> = { ...good };
    delete bare.seccomp;
    expect(parseLanguageDefinition(bare, 'x.json').seccomp).toBeUndefined();
  });

  it('gives each language the seccomp family its runtime needs', () => {
    const families = Object.fromEntries(
      registry.list().map((l) => [l.definition.name, l.definition.seccomp]),
    );
    const jvm = ['clojure', 'groovy', 'java', 'kotlin', 'scala'];
    const node = ['coffeescript', 'javascript', 'typescript'];
    expect(families).toEqual(
      Object.fromEntries(
        registry
          .names()
          .map((n) => [n, jvm.includes(n) ? 'jvm' : node.includes(n) ? 'node' : 'default']),
      ),
    );
  });

  it('refuses an alias claimed by two languages', () => {
    const a = registry.get('python');
    const b = registry.get('ruby');
    expect(
      () => new LanguageRegistry([a, { ...b, definition: { ...b.definition, aliases: ['py'] } }]),
    ).toThrow(/alias py/);
  });
});
