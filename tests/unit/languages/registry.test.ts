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

  it('defines every wave-one language, each with its test program', () => {
    expect(registry.names().sort()).toEqual(WAVE_ONE);
    for (const { definition, dir } of registry.list()) {
      expect(existsSync(join(dir, definition.test.file)), definition.name).toBe(true);
      expect(definition.packages.length).toBeGreaterThan(0);
    }
  });

  it('finds languages by Piston name and alias, with version matching', () => {
    expect(registry.get('py').definition.name).toBe('python');
    expect(registry.get('node-js').definition.name).toBe('javascript');
    expect(registry.get('cpp').definition.name).toBe('c++');
    expect(registry.get('python', '3').definition.name).toBe('python');
    expect(registry.get('python', '*').definition.name).toBe('python');
    expect(() => registry.get('python', '2.7')).toThrow(/not "2.7"/);
    expect(() => registry.get('cobol')).toThrow(
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
    expect(families).toEqual({
      bash: 'default',
      c: 'default',
      'c++': 'default',
      go: 'default',
      java: 'jvm',
      javascript: 'node',
      php: 'default',
      python: 'default',
      ruby: 'default',
      rust: 'default',
      typescript: 'node',
    });
  });

  it('refuses an alias claimed by two languages', () => {
    const a = registry.get('python');
    const b = registry.get('ruby');
    expect(
      () => new LanguageRegistry([a, { ...b, definition: { ...b.definition, aliases: ['py'] } }]),
    ).toThrow(/alias py/);
  });
});
