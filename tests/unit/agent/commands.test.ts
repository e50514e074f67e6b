import { describe, expect, it } from 'vitest';
import { buildStageArgv, Executor, expandCommand } from '../../../src/agent/index.js';
import type { StageSandbox } from '../../../src/agent/index.js';
import { LIMITS } from './helpers.js';

describe('expandCommand', () => {
  it('expands {sources} to the sorted files with the extension', () => {
    expect(
      expandCommand(
        ['gcc', '-o', 'main', '{sources}', '-lm'],
        ['main.c', 'z.c', 'a.h', 'lib/b.c'],
        'c',
      ),
    ).toEqual(['gcc', '-o', 'main', 'lib/b.c', 'main.c', 'z.c', '-lm']);
  });

  it('uses the first file as the entry, inside larger arguments too', () => {
    expect(expandCommand(['node', '{entryStem}.js'], ['app.ts', 'util.ts'], 'ts')).toEqual([
      'node',
      'app.js',
    ]);
    expect(expandCommand(['java', '-cp', '.', '{entryStem}'], ['Main.java'], 'java')).toEqual([
      'java',
      '-cp',
      '.',
      'Main',
    ]);
    expect(expandCommand(['python3', '{entry}'], ['pkg/run.py'], 'py')).toEqual([
      'python3',
      'pkg/run.py',
    ]);
  });

  it('passes file names that look like options as paths (./-name), never as options', () => {
    const evil = "-toolexec=sh -c 'touch /tmp/pwned' z.go";
    expect(
      expandCommand(['go', 'build', '-o', 'main', '{sources}'], [evil, 'main.go'], 'go'),
    ).toEqual(['go', 'build', '-o', 'main', `./${evil}`, 'main.go']);
    expect(expandCommand(['python3', '{entry}'], ['--help'], 'py')).toEqual([
      'python3',
      './--help',
    ]);
    expect(expandCommand(['java', '-cp', '.', '{entryStem}'], ['-XX:+X.java'], 'java')).toEqual([
      'java',
      '-cp',
      '.',
      './-XX:+X',
    ]);
    // A template's own option stays as it is; the user's name inside it cannot start it.
    expect(expandCommand(['cc', '-o{entryStem}'], ['-x.c'], 'c')).toEqual(['cc', '-o-x']);
  });

  it('keeps the whole name as the stem when there is no extension', () => {
    expect(expandCommand(['x', '{entryStem}'], ['dir.d/Makefile'], 'c')).toEqual([
      'x',
      'dir.d/Makefile',
    ]);
    expect(expandCommand(['x', '{entryStem}'], ['.profile'], 'c')).toEqual(['x', '.profile']);
  });

  it('falls back to the entry when no file has the extension', () => {
    expect(expandCommand(['gcc', '{sources}'], ['prog'], 'c')).toEqual(['gcc', 'prog']);
  });
});

describe('stage command line', () => {
  const tools = {
    sh: '/bin/sh',
    prlimit: '/usr/bin/prlimit',
    setpriv: '/usr/bin/setpriv',
    env: '/usr/bin/env',
  };
  const spec = {
    argv: ['python3', 'main.py', 'arg'],
    cwd: '/w',
    env: { PATH: '/usr/bin', LD_PRELOAD: '/w/evil.so' },
    stdin: Buffer.alloc(0),
    limits: {
      ...LIMITS,
      cpuTimeMs: 1500,
      memoryMib: 64,
      processes: 7,
      fileSizeBytes: 100,
      openFiles: 9,
    },
  };

  it('drops privileges before the request environment applies, in the fallback', () => {
    const sandbox: StageSandbox = { tools, runAs: { uid: 1000, gid: 1000 }, cgroup: null };
    expect(buildStageArgv(sandbox, spec)).toEqual([
      '/usr/bin/prlimit',
      '--cpu=3:4',
      '--core=0:0',
      '--fsize=100:100',
      '--nofile=9:9',
      `--stack=${8 * 1024 * 1024}:${8 * 1024 * 1024}`,
      '--nproc=7:7',
      `--data=${64 * 1024 * 1024}:${64 * 1024 * 1024}`,
      '--',
      '/usr/bin/setpriv',
      '--reuid=1000',
      '--regid=1000',
      '--clear-groups',
      '--inh-caps=-all',
      '--bounding-set=-all',
      '--no-new-privs',
      '--',
      '/usr/bin/env',
      '-i',
      '--',
      'PATH=/usr/bin',
      'LD_PRELOAD=/w/evil.so',
      'python3',
      'main.py',
      'arg',
    ]);
  });

  it('waits at the cgroup gate and leaves memory to the controller when there is one', () => {
    const sandbox: StageSandbox = {
      tools,
      runAs: { uid: 1000, gid: 1000 },
      cgroup: { root: '/sys/fs/cgroup', kill: true, memory: true, pids: true },
    };
    const argv = buildStageArgv(sandbox, spec);
    expect(argv.slice(0, 4)).toEqual([
      '/bin/sh',
      '-c',
      expect.stringContaining('<&3') as string,
      'sh',
    ]);
    expect(argv.some((a) => a.startsWith('--data'))).toBe(false);
  });

  it('is one exec of the helper, which joins the cgroup itself, when there is a helper', () => {
    const sandbox: StageSandbox = {
      tools,
      runAs: { uid: 1000, gid: 1000 },
      cgroup: { root: '/sys/fs/cgroup', kill: true, memory: true, pids: true },
      helper: '/opt/runner/runner-exec',
    };
    expect(buildStageArgv(sandbox, spec, '/sys/fs/cgroup/runner-1')).toEqual([
      '/opt/runner/runner-exec',
      '--status-fd',
      '3',
      '--cgroup',
      '/sys/fs/cgroup/runner-1',
      '--rlimit',
      'cpu=3:4',
      '--rlimit',
      'core=0:0',
      '--rlimit',
      'fsize=100:100',
      '--rlimit',
      'nofile=9:9',
      '--rlimit',
      `stack=${8 * 1024 * 1024}:${8 * 1024 * 1024}`,
      '--rlimit',
      'nproc=7:7',
      '--uid',
      '1000',
      '--gid',
      '1000',
      '--env',
      'PATH=/usr/bin',
      '--env',
      'LD_PRELOAD=/w/evil.so',
      '--',
      'python3',
      'main.py',
      'arg',
    ]);
  });

  it('asks the helper for the stage’s seccomp family, last before the program', () => {
    const sandbox: StageSandbox = { tools, runAs: null, cgroup: null, helper: '/h' };
    const argv = buildStageArgv(sandbox, { ...spec, seccomp: 'jvm' });
    expect(argv.slice(-6)).toEqual(['--seccomp', 'jvm', '--', 'python3', 'main.py', 'arg']);
    expect(buildStageArgv(sandbox, spec)).not.toContain('--seccomp');
    // The tool chain has no filter to install: nothing is passed to prlimit or setpriv.
    const chain = buildStageArgv({ tools, runAs: null, cgroup: null }, { ...spec, seccomp: 'jvm' });
    expect(chain.join(' ')).not.toMatch(/seccomp/);
  });

  it('does not count the agent user’s processes when it keeps its own user', () => {
    const argv = buildStageArgv({ tools, runAs: null, cgroup: null }, spec);
    expect(argv.some((a) => a.startsWith('--nproc') || a.startsWith('--reuid'))).toBe(false);
    expect(argv).toContain('--no-new-privs');
  });

  it('fixes PATH, HOME and TMPDIR and lets the rest be set', () => {
    expect(
      Executor.stageEnv('/w/job', { PATH: '/x', HOME: '/x', TMPDIR: '/x', LANG: 'C', A: '1' }),
    ).toEqual({
      PATH: '/usr/local/bin:/usr/bin:/bin',
      HOME: '/w/job',
      TMPDIR: '/w/job',
      LANG: 'C',
      A: '1',
    });
  });
});
