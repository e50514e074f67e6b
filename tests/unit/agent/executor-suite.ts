import { mkdtemp, readdir, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Executor, listProcessesOfUid, type ExecutorOutcome } from '../../../src/agent/index.js';
import { hasCode } from '../../../src/errors.js';
import { buildExecHelper } from '../../../src/images/exec-helper.js';
import {
  checkArtefact,
  MAX_RESULT_OUTPUT_BYTES,
  parseStageResult,
  type ArtefactEntry,
  type StageResult,
} from '../../../src/protocol/index.js';
import {
  bash,
  bytes,
  findCgroupRoot,
  freeOwner,
  isRoot,
  job,
  LIMITS,
  makeExecutor,
  registry,
  text,
  type ExecutorFixture,
} from './helpers.js';

/** Checks a stage result against the wire schema, and returns it non-null. */
function stage(result: StageResult | null): StageResult {
  expect(result).not.toBeNull();
  return parseStageResult(result);
}

/**
 * The executor's behaviour, run once per isolation mode: `cgroup` (a cgroup v2 per stage,
 * skipped where none is usable) and `fallback` (rlimits, /proc, a uid sweep). Privilege-
 * dropping cases need root and are skipped otherwise, saying so.
 */
export function defineExecutorSuite(mode: 'cgroup' | 'fallback' | 'helper', uidBase: number): void {
  let fx: ExecutorFixture;
  let skipReason: string | null = null;
  let helperDir: string | null = null;

  beforeAll(async () => {
    const cgroupRoot = mode === 'fallback' ? null : await findCgroupRoot();
    if (mode !== 'fallback' && cgroupRoot === null) {
      skipReason = 'no usable cgroup v2 hierarchy on this machine';
    }
    // The helper mode is how the guest runs stages: runner-exec (built here with gcc) in a
    // cgroup per stage.
    let execHelper: string | null = null;
    if (mode === 'helper') {
      helperDir = await mkdtemp(join(tmpdir(), 'runner-exec-'));
      try {
        execHelper = await buildExecHelper(join(helperDir, 'runner-exec'));
      } catch (err) {
        skipReason = `the exec helper cannot be built here: ${(err as Error).message}`;
      }
    }
    if (!isRoot) {
      console.warn(
        `executor (${mode}): not root, so user code runs as this user: privilege-dropping ` +
          'and uid-sweep cases are skipped',
      );
    }
    const owner = isRoot ? await freeOwner(uidBase, 100) : null;
    fx = await makeExecutor({ owner, cgroupRoot, execHelper });
  });

  afterAll(async () => {
    await fx.close();
    if (helperDir !== null) await rm(helperDir, { recursive: true, force: true });
  });

  /** Runs a job and checks the invariants every job must keep. */
  async function run(request: Parameters<ExecutorFixture['executor']['execute']>[0]) {
    const result: ExecutorOutcome = await fx.executor.execute(request);
    if (result.compile) parseStageResult(result.compile);
    if (result.run) parseStageResult(result.run);
    expect(await fx.leftovers(), 'work dirs left behind').toEqual([]);
    if (fx.owner) {
      expect(await listProcessesOfUid(fx.owner.uid), 'processes left behind').toEqual([]);
    }
    return result;
  }

  const it_ = (name: string, fn: () => Promise<void> | void, timeoutMs?: number) =>
    it(
      name,
      async (ctx) => {
        if (skipReason) {
          ctx.skip(skipReason);
          return;
        }
        await fn();
      },
      timeoutMs,
    );
  const itRoot = (name: string, fn: () => Promise<void>) =>
    it(name, async (ctx) => {
      if (skipReason || !isRoot) {
        ctx.skip(skipReason ?? 'needs root to drop privileges');
        return;
      }
      await fn();
    });

  describe(`executor (${mode})`, () => {
    it_('uses the isolation it was asked for', () => {
      expect(fx.executor.sandbox.cgroup !== null).toBe(mode !== 'fallback');
      expect(Boolean(fx.executor.sandbox.helper)).toBe(mode === 'helper');
      expect(fx.executor.languages()).toEqual(
        expect.arrayContaining(['bash', 'c', 'javascript', 'python']),
      );
    });

    for (const name of ['python', 'javascript', 'bash', 'c']) {
      it_(`runs the ${name} test program`, async () => {
        const lang = registry.get(name);
        const { test, sourceFile } = lang.definition;
        const source = await readFile(join(lang.dir, test.file), 'utf8');
        const r = await run(job(name, sourceFile, source));
        expect(r.status).toBe('ok');
        const out = stage(r.run);
        expect(text(out.stdout).trim()).toBe(test.expected);
        expect(out.exitCode).toBe(0);
        expect(out.cpuTimeMs).not.toBeNull();
        if (lang.definition.compile) expect(stage(r.compile).status).toBe('ok');
        else expect(r.compile).toBeNull();
      });
    }

    it_('reports a compile error with the compiler output and no run stage', async () => {
      const r = await run(job('c', 'main.c', 'int main(void) { return undefined_name; }\n'));
      expect(r.status).toBe('compile_error');
      expect(r.run).toBeNull();
      const c = stage(r.compile);
      expect(c.status).toBe('compile_error');
      expect(c.exitCode).not.toBe(0);
      expect(text(c.stderr)).toContain('undefined_name');
    });

    it_('compiles several sources together and passes stdin and args', async () => {
      const r = await run({
        ...job(
          'c',
          'main.c',
          '#include <stdio.h>\nint twice(int);\nint main(int c, char **v) {\n  char b[64]; fgets(b, sizeof b, stdin);\n  printf("%d %s %s", twice(21), v[1], b);\n  return 0;\n}\n',
        ),
        files: [
          {
            name: 'main.c',
            encoding: 'utf8',
            content:
              '#include <stdio.h>\nint twice(int);\nint main(int c, char **v) {\n  char b[64]; if (!fgets(b, sizeof b, stdin)) return 9;\n  printf("%d %s %s", twice(21), v[1], b);\n  return 0;\n}\n',
          },
          { name: 'lib.c', encoding: 'utf8', content: 'int twice(int x) { return 2 * x; }\n' },
        ],
        stdin: Buffer.from('from stdin\n').toString('base64'),
        args: ['first arg'],
      });
      expect(r.status).toBe('ok');
      expect(text(stage(r.run).stdout)).toBe('42 first arg from stdin\n');
    });

    it_('compiles once and runs each test case with its own stdin', async () => {
      const src =
        '#include <stdio.h>\nint main(void){int a,b;if(scanf("%d %d",&a,&b)!=2)return 3;printf("%d\\n",a+b);return 0;}\n';
      const b64 = (t: string) => Buffer.from(t).toString('base64');
      const result = await run(
        job('c', 'main.c', src, { cases: [b64('1 2'), b64('40 2'), b64('oops')] }),
      );
      expect(stage(result.compile).status).toBe('ok');
      expect(result.run).toBeNull();
      expect(result.cases?.map((c) => [c.status, text(c.stdout), c.exitCode])).toEqual([
        ['ok', '3\n', 0],
        ['ok', '42\n', 0],
        ['runtime_error', '', 3],
      ]);
      expect(result.status).toBe('runtime_error');
    });

    it_(
      'keeps a compile before the run when asked, and runs a kept one without compiling',
      async () => {
        // The run leaves a file and rewrites the binary and the source: the kept work dir must be
        // the one the compile left, read before the run started.
        const src = [
          '#include <stdio.h>',
          'int main(void){',
          '  FILE *f = fopen("ran", "w"); fputs("x", f); fclose(f);',
          '  remove("main"); f = fopen("main", "w"); fputs("poisoned", f); fclose(f);',
          '  f = fopen("main.c", "a"); fputs("// changed", f); fclose(f);',
          '  puts("compiled once"); return 0; }',
          '',
        ].join('\n');
        const kept: ArtefactEntry[][] = [];
        const first = await fx.executor.execute(
          job('c', 'main.c', src, { keepArtefact: true }),
          undefined,
          undefined,
          (entries) => {
            kept.push(entries);
            return Promise.resolve();
          },
        );
        expect(first.status).toBe('ok');
        expect(text(stage(first.run).stdout)).toBe('compiled once\n');
        expect(kept).toHaveLength(1);
        const entries = kept[0] ?? [];
        expect(() => checkArtefact(entries)).not.toThrow();
        const byPath = new Map(entries.map((e) => [e.path, e]));
        expect(byPath.has('ran')).toBe(false);
        expect(text(byPath.get('main.c')?.data ?? '')).toBe(src);
        const binary = byPath.get('main');
        expect(binary?.kind).toBe('file');
        expect((binary?.mode ?? 0) & 0o100).toBe(0o100);
        expect(
          bytes(binary?.data ?? '')
            .subarray(0, 4)
            .toString('latin1'),
        ).toBe('\x7fELF');
        // Without keepArtefact nothing is handed over.
        const none: ArtefactEntry[][] = [];
        await fx.executor.execute(job('c', 'main.c', src), undefined, undefined, (e) => {
          none.push(e);
          return Promise.resolve();
        });
        expect(none).toHaveLength(0);
        // A hit: the job's files are empty (a compile would fail), the kept work dir runs.
        const compile = stage(first.compile);
        const hit = await run(job('c', 'main.c', '', { artefact: { compile, entries } }));
        expect(hit.status).toBe('ok');
        expect(hit.compile).toEqual(compile);
        expect(text(stage(hit.run).stdout)).toBe('compiled once\n');
        expect(await fx.leftovers()).toEqual([]);
      },
    );

    it_('runs each test case in a fresh copy of the compiled work dir', async () => {
      const b64 = (t: string) => Buffer.from(t).toString('base64');
      // Each case leaves a file in its work dir and appends to a source file; the next case
      // must see neither.
      const script = 'ls; [ -e mark ] && echo SEEN; touch mark; echo x >> main.sh';
      const result = await run(bash(script, {}, { cases: [b64(''), b64(''), b64('')] }));
      expect(result.cases?.map((c) => text(c.stdout))).toEqual([
        'main.sh\n',
        'main.sh\n',
        'main.sh\n',
      ]);
      expect(await fx.leftovers()).toEqual([]);
    });

    it_('bounds the output of a whole job, not only of each stage', async () => {
      const b64 = (t: string) => Buffer.from(t).toString('base64');
      // 16 cases at a 1 MiB cap per stream would return 32 MiB: more than one result frame.
      const cases = Array.from({ length: 16 }, () => b64(''));
      const result = await run(
        bash(
          'head -c 1048576 /dev/zero | tr "\\0" a; head -c 1048576 /dev/zero | tr "\\0" b >&2',
          { outputBytes: 1_048_576 },
          { cases },
        ),
      );
      const all = result.cases ?? [];
      expect(all).toHaveLength(16);
      const total = all.reduce((n, c) => n + bytes(c.stdout).length + bytes(c.stderr).length, 0);
      expect(total).toBeLessThanOrEqual(MAX_RESULT_OUTPUT_BYTES);
      expect(total).toBeGreaterThan(MAX_RESULT_OUTPUT_BYTES - 2 * 65_536);
      // The program kept its limits: every case is ok; the late ones say they were trimmed.
      expect(all.every((c) => c.status === 'ok')).toBe(true);
      const last = all.at(-1);
      expect(last?.stdoutTruncated).toBe(true);
      expect(last?.message).toMatch(/output trimmed/);
    });

    it_('gives a file named like an option to the interpreter as a file', async () => {
      const r = await run(job('bash', '-c', 'echo from the file'));
      expect(r.status).toBe('ok');
      expect(text(stage(r.run).stdout)).toBe('from the file\n');
    });

    it_('closes stdin after the given input', async () => {
      const r = await run(
        bash('cat; echo "<eof>"', {}, { stdin: Buffer.from('abc').toString('base64') }),
      );
      expect(text(stage(r.run).stdout)).toBe('abc<eof>\n');
      const empty = await run(bash('cat; echo done'));
      expect(text(stage(empty.run).stdout)).toBe('done\n');
    });

    it_('passes args verbatim', async () => {
      const r = await run(
        bash('printf "[%s]" "$@"', {}, { args: ['a b', '', '$HOME', '*', '-n'] }),
      );
      expect(text(stage(r.run).stdout)).toBe('[a b][][$HOME][*][-n]');
    });

    it_('gives exactly the documented environment', async () => {
      const r = await run(
        job(
          'python',
          'main.py',
          'import os, json\nprint(json.dumps(dict(os.environ), sort_keys=True))\nprint(os.getcwd())\n',
          {
            env: { FOO: 'bar baz', PATH: '/evil', HOME: '/evil', TMPDIR: '/evil' },
          },
        ),
      );
      expect(r.status).toBe('ok');
      const [envLine, cwd] = text(stage(r.run).stdout).trim().split('\n');
      const env = JSON.parse(envLine as string) as Record<string, string>;
      expect(env).toEqual({
        PATH: '/usr/local/bin:/usr/bin:/bin',
        HOME: cwd,
        TMPDIR: cwd,
        LANG: 'C.UTF-8',
        FOO: 'bar baz',
        PYTHONDONTWRITEBYTECODE: '1',
        PYTHONUNBUFFERED: '1',
      });
      expect(cwd?.startsWith(fx.workRoot)).toBe(true);
    });

    it_('reports exit codes as runtime errors', async () => {
      const r = await run(bash('echo out; echo err >&2; exit 3'));
      expect(r.status).toBe('runtime_error');
      const s = stage(r.run);
      expect([s.exitCode, s.signal, text(s.stdout), text(s.stderr)]).toEqual([
        3,
        null,
        'out\n',
        'err\n',
      ]);
    });

    it_('reports death by SIGSEGV and SIGABRT', async () => {
      const segv = stage((await run(bash('kill -SEGV $$'))).run);
      expect([segv.status, segv.exitCode, segv.signal]).toEqual(['runtime_error', null, 'SIGSEGV']);
      const abrt = await run(
        job('c', 'main.c', '#include <stdlib.h>\nint main(void) { abort(); }\n'),
      );
      expect(abrt.status).toBe('runtime_error');
      expect(stage(abrt.run).signal).toBe('SIGABRT');
    });

    it_('sends SIGTERM at the wall limit before SIGKILL', async () => {
      const r = await run(
        bash('trap "echo got-term; exit 0" TERM; sleep 30 & wait', { wallTimeMs: 500 }),
      );
      const s = stage(r.run);
      expect(s.status).toBe('timeout');
      expect(text(s.stdout)).toBe('got-term\n');
      expect(s.message).toMatch(/wall time/);
    });

    it_('escalates to SIGKILL when SIGTERM is trapped', async () => {
      const r = await run(bash('trap "" TERM; while :; do sleep 0.05; done', { wallTimeMs: 500 }));
      const s = stage(r.run);
      expect([s.status, s.signal]).toEqual(['timeout', 'SIGKILL']);
      // The wall limit plus the 200 ms grace, and not much more.
      expect(s.wallTimeMs).toBeGreaterThanOrEqual(690);
      expect(s.wallTimeMs).toBeLessThan(3000);
    });

    it_('kills a CPU loop at the CPU limit', async () => {
      const r = await run(bash('while :; do :; done', { cpuTimeMs: 400 }));
      const s = stage(r.run);
      expect(s.status).toBe('timeout');
      expect(s.message).toMatch(/CPU time/);
      expect(s.cpuTimeMs).toBeGreaterThanOrEqual(400);
      expect(s.wallTimeMs).toBeLessThan(5000);
    });

    it_('kills a sleeper at the wall limit, with little CPU used', async () => {
      const r = await run(bash('sleep 30', { wallTimeMs: 300 }));
      const s = stage(r.run);
      expect(s.status).toBe('timeout');
      expect(s.wallTimeMs).toBeGreaterThanOrEqual(300);
      expect(s.wallTimeMs).toBeLessThan(3000);
      expect(s.cpuTimeMs).toBeLessThan(200);
    });

    it_('stops endless output at the cap', async () => {
      const r = await run(bash('yes', { outputBytes: 10_000 }));
      const s = stage(r.run);
      expect(s.status).toBe('output_limit');
      expect(s.stdoutTruncated).toBe(true);
      expect(s.stderrTruncated).toBe(false);
      expect(bytes(s.stdout)).toEqual(Buffer.from('y\n'.repeat(5000)));
      const err = stage((await run(bash('yes >&2', { outputBytes: 1000 }))).run);
      expect([err.status, err.stderrTruncated, bytes(err.stderr).length]).toEqual([
        'output_limit',
        true,
        1000,
      ]);
    });

    it_('keeps output exactly at the cap without truncating', async () => {
      const s = stage((await run(bash('head -c 1000 /dev/zero', { outputBytes: 1000 }))).run);
      expect([s.status, s.stdoutTruncated, bytes(s.stdout).length]).toEqual(['ok', false, 1000]);
    });

    it_('returns binary output and NUL bytes byte-exact', async () => {
      const r = await run(
        job(
          'python',
          'main.py',
          'import sys\nsys.stdout.buffer.write(bytes(range(256)) * 3 + b"\\xff\\xfe\\x00")\nsys.stderr.buffer.write(b"\\x00\\xc3(")\n',
        ),
      );
      const s = stage(r.run);
      expect(bytes(s.stdout)).toEqual(
        Buffer.concat([
          Buffer.from([...Array(256).keys()]),
          Buffer.from([...Array(256).keys()]),
          Buffer.from([...Array(256).keys()]),
          Buffer.from([0xff, 0xfe, 0]),
        ]),
      );
      expect(bytes(s.stderr)).toEqual(Buffer.from([0, 0xc3, 0x28]));
    });

    itRoot('kills daemons started with setsid and nohup when the stage ends', async () => {
      const r = await run(
        bash(
          'setsid sleep 1000 & nohup sleep 1001 >/dev/null 2>&1 & (setsid sleep 1002 <&- >&- 2>&- &); echo started',
        ),
      );
      expect(r.status).toBe('ok');
      expect(text(stage(r.run).stdout)).toBe('started\n');
      // run() checked that no process of the job's uid is left.
    });

    it_('ends when the main process exits even if a grandchild holds the pipe', async () => {
      const r = await run(bash('(sleep 30 &); echo main-done'));
      const s = stage(r.run);
      expect([s.status, text(s.stdout)]).toEqual(['ok', 'main-done\n']);
      expect(s.wallTimeMs).toBeLessThan(2000);
    });

    it_('lets a program close its stdout and keep running', async () => {
      const r = await run(bash('echo before; exec >&-; sleep 0.3; echo after >&2'));
      const s = stage(r.run);
      expect([s.status, text(s.stdout), text(s.stderr)]).toEqual(['ok', 'before\n', 'after\n']);
      const hung = stage((await run(bash('exec >&- 2>&-; sleep 30', { wallTimeMs: 400 }))).run);
      expect(hung.status).toBe('timeout');
    });

    itRoot('runs as the unprivileged user with no new privileges and no groups', async () => {
      const r = await run(
        bash('id -u; id -g; id -G; grep -E "^(NoNewPrivs|CapEff|CapBnd)" /proc/self/status'),
      );
      const owner = fx.owner as { uid: number; gid: number };
      expect(
        text(stage(r.run).stdout)
          .split('\n')
          .map((l) => l.replace(/\s+/g, ' ')),
      ).toEqual([
        String(owner.uid),
        String(owner.gid),
        String(owner.gid),
        'CapEff: 0000000000000000',
        'CapBnd: 0000000000000000',
        'NoNewPrivs: 1',
        '',
      ]);
    });

    itRoot('fails process creation at the process limit', async () => {
      // A fresh uid: zombies of earlier tests, not yet reaped by init, count toward NPROC.
      const owner = await freeOwner(uidBase + 100, 100);
      const own = await makeExecutor({
        owner,
        cgroupRoot: fx.executor.sandbox.cgroup?.root ?? null,
      });
      try {
        const script = [
          'import os, time',
          'ok = fail = 0',
          'for i in range(20):',
          '    try:',
          '        pid = os.fork()',
          '    except OSError:',
          '        fail += 1',
          '        continue',
          '    if pid == 0:',
          '        time.sleep(30)',
          '        os._exit(0)',
          '    ok += 1',
          'print(ok, fail)',
        ].join('\n');
        const r = await own.executor.execute(
          job('python', 'main.py', script, { runLimits: { ...LIMITS, processes: 5 } }),
        );
        const s = stage(r.run);
        expect(s.status).toBe('ok');
        const [ok, fail] = text(s.stdout).trim().split(' ').map(Number);
        expect(ok).toBeLessThanOrEqual(4);
        expect(fail).toBeGreaterThanOrEqual(16);
        expect(await listProcessesOfUid(owner.uid)).toEqual([]);
      } finally {
        await own.close();
      }
    });

    it_('enforces the file size limit', async () => {
      const r = await run(bash('exec head -c 20000 /dev/zero > big', { fileSizeBytes: 10_000 }));
      const s = stage(r.run);
      expect([s.status, s.signal]).toEqual(['runtime_error', 'SIGXFSZ']);
      expect(s.message).toMatch(/file size/);
    });

    it_('enforces the open files limit', async () => {
      const r = await run(
        job(
          'python',
          'main.py',
          'import os\nfds = []\ntry:\n    while True: fds.append(os.open("/dev/null", os.O_RDONLY))\nexcept OSError as e:\n    print(len(fds), e.errno)\n',
          {
            runLimits: { ...LIMITS, openFiles: 20 },
          },
        ),
      );
      const [n, errno] = text(stage(r.run).stdout).trim().split(' ').map(Number);
      expect(errno).toBe(24); // EMFILE
      expect(n).toBeLessThan(20);
    });

    it_('stops a memory hog at the memory limit', async () => {
      const r = await run(
        job('python', 'main.py', 'x = bytearray(400 * 1024 * 1024)\nprint("survived")\n', {
          runLimits: { ...LIMITS, memoryMib: 64 },
        }),
      );
      const s = stage(r.run);
      expect(text(s.stdout)).not.toContain('survived');
      // With the memory controller the OOM killer acts (memory_limit); without it,
      // RLIMIT_DATA makes the allocation fail inside the program (a runtime error).
      expect(s.status).toBe(fx.executor.sandbox.cgroup?.memory ? 'memory_limit' : 'runtime_error');
    });

    it_('aborts a running job as a sandbox error, killing it', async () => {
      const controller = new AbortController();
      setTimeout(() => controller.abort(), 200);
      const started = Date.now();
      const r = await fx.executor.execute(bash('sleep 30'), controller.signal);
      expect(r.status).toBe('sandbox_error');
      expect(stage(r.run).message).toMatch(/aborted/);
      expect(Date.now() - started).toBeLessThan(3000);
      expect(await fx.leftovers()).toEqual([]);
      if (fx.owner) expect(await listProcessesOfUid(fx.owner.uid)).toEqual([]);
    });

    it_('rejects bad requests before running anything', async () => {
      const cases: [() => Promise<unknown>, string][] = [
        [() => fx.executor.execute(job('klingon', 'main.cob', '')), 'LANGUAGE_UNKNOWN'],
        [() => fx.executor.execute(job('bash', '../main.sh', 'echo')), 'FILE_NAME_INVALID'],
        [() => fx.executor.execute(bash('echo', { wallTimeMs: 0 })), 'LIMIT_INVALID'],
        [() => fx.executor.execute(bash('echo', { memoryMib: 1.5 })), 'LIMIT_INVALID'],
        [() => fx.executor.execute(bash('echo', {}, { env: { 'A=B': 'x' } })), 'ENV_INVALID'],
        [() => fx.executor.execute(bash('echo', {}, { env: { A: 'x\0y' } })), 'ENV_INVALID'],
        [() => fx.executor.execute(bash('echo', {}, { args: ['x\0y'] })), 'ARGS_INVALID'],
        [
          () =>
            fx.executor.execute({
              ...bash('echo'),
              files: [{ name: 'main.sh', content: '!!', encoding: 'base64' }],
            }),
          'ENCODING_INVALID',
        ],
        [
          () =>
            fx.executor.execute({
              ...bash('echo'),
              files: [
                { name: 'main.sh', content: '', encoding: 'utf8' },
                { name: 'a', content: '', encoding: 'utf8' },
                { name: 'a/b', content: '', encoding: 'utf8' },
              ],
            }),
          'FILE_NAME_INVALID',
        ],
      ];
      for (const [start, code] of cases) {
        const err = await start().then(
          () => null,
          (e: unknown) => e,
        );
        expect(hasCode(err, code as 'LANGUAGE_UNKNOWN'), `${code}: ${String(err)}`).toBe(true);
      }
      expect(await fx.leftovers()).toEqual([]);
    });

    itRoot('refuses to start when the run user cannot reach the work root', async () => {
      const base = await mkdtemp(join(tmpdir(), 'runner-closed-'));
      try {
        const err = await Executor.create({
          languages: registry,
          workRoot: join(base, 'jobs'),
          runAs: fx.owner,
          cgroupRoot: fx.executor.sandbox.cgroup?.root ?? null,
        }).then(
          () => null,
          (e: unknown) => e,
        );
        expect(hasCode(err, 'SANDBOX_FAILURE'), String(err)).toBe(true);
      } finally {
        await rm(base, { recursive: true, force: true });
      }
    });

    it_('leaves no cgroup behind', async () => {
      const root = fx.executor.sandbox.cgroup?.root;
      if (!root) return;
      await run(bash('echo'));
      const mine = (await readdir(root)).filter((n) => n.startsWith('runner-'));
      // Other test files may run at the same time; none of ours survives its stage, so any
      // left here must disappear promptly.
      for (const name of mine) {
        await expect
          .poll(async () => (await readdir(root)).includes(name), { timeout: 5000 })
          .toBe(false);
      }
    });
  });
}
