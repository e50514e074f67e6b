import { describe, expect, it } from 'vitest';
import {
  languagesBenchMarkdown,
  languagesBenchTable,
  type LanguageBenchRow,
  type LanguagesBenchReport,
} from '../../../src/cli/commands/bench-languages.js';

const row = (over: Partial<LanguageBenchRow>): LanguageBenchRow => ({
  language: 'python',
  aliases: ['py', 'py3'],
  judge0Id: 71,
  layer: 'python',
  layerId: 'python-0123456789ab',
  layerMib: 1142.4,
  version: '3.11.2',
  compiled: false,
  status: 'ok',
  poolMissMs: 1234.4,
  poolHitMs: 456.6,
  hits: 3,
  cachedHitMs: null,
  nativeMs: 98.2,
  hitVsNative: 4.6,
  ...over,
});

const report: LanguagesBenchReport = {
  machine: { cpus: 2, cpuModel: 'AMD EPYC', accel: 'tcg', vmm: 'qemu' },
  rows: [
    row({}),
    row({
      language: 'c++',
      layer: 'gcc',
      compiled: true,
      cachedHitMs: 510.2,
      nativeMs: null,
      hitVsNative: null,
    }),
    row({
      language: 'fortran',
      aliases: [],
      judge0Id: null,
      layer: 'gcc',
      compiled: true,
      nativeMs: null,
      hitVsNative: null,
      status: 'compile_error',
      poolHitMs: null,
      hits: 0,
    }),
  ],
};

describe('runner bench --all output', () => {
  it('prints one row per language with its layer, times and ratio', () => {
    const lines = languagesBenchTable(report).trimEnd().split('\n');
    expect(lines[0]).toBe('runner bench --all: 3 languages, qemu (tcg), 2 × AMD EPYC');
    expect(lines[2]).toMatch(/^python\s+python\s+3\.11\.2\s+1234\s+457\s+-\s+98\s+4\.6x\s+ok$/);
    expect(lines[3]).toMatch(/^c\+\+\s+gcc\s+3\.11\.2\s+1234\s+457\s+510\s+-\s+-\s+ok$/);
    expect(lines[4]).toMatch(/^fortran\s+gcc\s+3\.11\.2\s+1234\s+-\s+-\s+-\s+-\s+compile_error$/);
    expect(lines).toHaveLength(5);
  });

  it("prints docs/languages.md's table: aliases, Judge0 id, version, layer, size, times", () => {
    const md = languagesBenchMarkdown(report).trimEnd().split('\n');
    expect(md[2]).toBe(
      '| language | aliases | Judge0 id | version | layer | layer size | pool miss | pool hit | compile cached | status |',
    );
    expect(md[4]).toBe(
      '| python | py, py3 | 71 | 3.11.2 | python | 1142 MiB | 1234 ms | 457 ms | - | ok |',
    );
    expect(md[5]).toBe(
      '| c++ | py, py3 | 71 | 3.11.2 | gcc | 1142 MiB | 1234 ms | 457 ms | 510 ms | ok |',
    );
    expect(md[6]).toBe(
      '| fortran | - | - | 3.11.2 | gcc | 1142 MiB | 1234 ms | - | - | compile_error |',
    );
  });
});
