// The warm tsc (languages/typescript/tsc-fast and tsc-warm.js) against the real tsc, both on this
// host with the guest's TypeScript version (the `typescript-guest` dev dependency): every case
// runs both ways in one folder, filled afresh each time, and stdout, stderr, the exit status and
// every file left in the folder must be the same. tsc-fast runs here as the layer has it, but for
// its three paths (this host's node, the test's snapshot and TypeScript).
import { spawn, spawnSync } from 'node:child_process';
import {
  cpSync,
  mkdirSync,
  mkdtempSync,
  readdirSync,
  readFileSync,
  appendFileSync,
  rmSync,
  writeFileSync,
} from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { buildExecHelper } from '../../../src/images/exec-helper.js';

const ROOT = resolve(import.meta.dirname, '../../..');
const LANGUAGE_DIR = join(ROOT, 'languages/typescript');
const GUEST_TS = join(ROOT, 'node_modules/typescript-guest');
const TYPES = join(ROOT, 'node_modules/@types');

interface Outcome {
  status: number | null;
  stdout: string;
  stderr: string;
  files: Record<string, string>;
}

let work: string;
let blob: string;
/** tsc-fast with this test's paths; and one whose snapshot Node.js refuses (another V8 tag). */
let fast: string;
let fastRefused: string;
let typescript: string;
/** The language's compile flags, with its type roots pointed at this host's @types. */
let flags: string[];

function filesOf(dir: string): Record<string, string> {
  const out: Record<string, string> = {};
  for (const name of readdirSync(dir, { recursive: true, encoding: 'utf8' }).sort()) {
    const full = join(dir, name);
    try {
      out[name] = readFileSync(full, 'utf8');
    } catch {
      out[name] = '<dir>';
    }
  }
  return out;
}

function runFile(file: string, argv: string[], cwd: string): Outcome {
  const r = spawnSync(file, argv, { cwd, encoding: 'utf8', timeout: 60_000 });
  return { status: r.status, stdout: r.stdout, stderr: r.stderr, files: filesOf(cwd) };
}

function run(argv: string[], cwd: string): Outcome {
  return runFile(process.execPath, argv, cwd);
}

/** A copy of tsc-fast that starts `node`, `blob` and `tsc` from the given paths. */
function wrapperWith(name: string, paths: { node: string; blob: string; tsc: string }): string {
  const text = readFileSync(join(LANGUAGE_DIR, 'tsc-fast'), 'utf8')
    .replace(/^node=.*$/m, `node=${paths.node}`)
    .replace(/^blob=.*$/m, `blob=${paths.blob}`)
    .replace(/^tsc=.*$/m, `tsc=${paths.tsc}`);
  const file = join(work, name);
  writeFileSync(file, text);
  return file;
}

/** The guest's runner-exec, built here: its --connect mode is the compile server's client. */
let execHelper: string;

/**
 * Starts the compile server from the snapshot as the agent does (`--runner-serve SOCKET`) and
 * resolves once it prints `ready`.
 */
function startServer(socket: string): Promise<void> {
  const child = spawn(
    process.execPath,
    ['--snapshot-blob', blob, 'tsc', '--runner-serve', socket],
    {
      cwd: work,
      stdio: ['ignore', 'pipe', 'pipe'],
    },
  );
  return new Promise((resolve, reject) => {
    let err = '';
    child.stderr.on('data', (c: Buffer) => (err += c.toString()));
    child.stdout.on('data', (c: Buffer) => {
      if (c.toString().includes('ready')) resolve();
    });
    child.once('exit', (code) => reject(new Error(`the server exited ${code}: ${err}`)));
  });
}

let caseNo = 0;
/**
 * A new case folder holding just `files`: runs the real tsc there, then fills it afresh for the
 * other way (the same path, as some messages name it).
 */
function coldThenRefill(
  files: Record<string, string>,
  args: string[],
): { dir: string; cold: Outcome } {
  caseNo += 1;
  const dir = join(work, `case${caseNo}`);
  const fill = (): void => {
    rmSync(dir, { recursive: true, force: true });
    mkdirSync(dir, { recursive: true });
    for (const [name, text] of Object.entries(files)) {
      mkdirSync(join(dir, name, '..'), { recursive: true });
      writeFileSync(join(dir, name), text);
    }
  };
  fill();
  const cold = run([join(typescript, 'bin/tsc'), ...args], dir);
  fill();
  return { dir, cold };
}
/**
 * Runs `args` through tsc and then through the warm snapshot, each time in the same folder
 * holding just `files` (the same path, as some messages name it).
 */
function both(
  files: Record<string, string>,
  args: string[],
  wrapper = fast,
): { cold: Outcome; warm: Outcome } {
  const { dir, cold } = coldThenRefill(files, args);
  const warm =
    wrapper === process.execPath ? run(args, dir) : runFile('sh', [wrapper, ...args], dir);
  return { cold, warm };
}

/** Runs `args` through tsc, then through a compile server and its client, as the guest does. */
async function served(
  files: Record<string, string>,
  args: string[],
): Promise<{ cold: Outcome; served: Outcome }> {
  const { dir, cold } = coldThenRefill(files, args);
  const socket = join(work, `server${caseNo}.sock`);
  await startServer(socket);
  const out = runFile(
    execHelper,
    ['--connect', socket, '--skip', '2', '--', 'sh', fast, ...args],
    dir,
  );
  return { cold, served: out };
}

const GOOD =
  "const os = require('os');\nimport { existsSync } from 'node:fs';\nconst s: string = 'ok';\nif (existsSync('/')) console.log(s, typeof os.cpus);\n";

describe('the warm tsc of the typescript layer', () => {
  beforeAll(async () => {
    work = mkdtempSync(join(tmpdir(), 'runner-tsc-warm-'));
    // A copy of the guest's TypeScript, so that one case can change a default library after the
    // snapshot was made.
    typescript = join(work, 'typescript');
    cpSync(GUEST_TS, typescript, { recursive: true, dereference: true });
    const definition = JSON.parse(readFileSync(join(LANGUAGE_DIR, 'language.json'), 'utf8')) as {
      compile: string[];
    };
    definition.compile = definition.compile.map((a) =>
      a === '/usr/local/lib/node_modules/@types' ? TYPES : a,
    );
    const first = definition.compile.findIndex((a) => a.startsWith('-'));
    flags = definition.compile.slice(first).filter((a) => a !== '{sources}');
    expect(definition.compile.slice(0, first)).toEqual([
      'sh',
      '/opt/runner/languages/typescript/tsc-fast',
    ]);
    writeFileSync(join(work, 'language.json'), JSON.stringify(definition));
    blob = join(work, 'tsc.blob');
    const env = {
      ...process.env,
      TSC_WARM_TYPESCRIPT: join(typescript, 'lib/typescript.js'),
      TSC_WARM_DEFINITION: join(work, 'language.json'),
    };
    const built = spawnSync(
      process.execPath,
      ['--snapshot-blob', blob, '--build-snapshot', join(LANGUAGE_DIR, 'tsc-warm.js')],
      {
        cwd: work,
        encoding: 'utf8',
        env,
        timeout: 120_000,
      },
    );
    expect(built.status, built.stderr).toBe(0);
    // The same snapshot made under another V8 flag: its tag differs, as one made for another
    // CPU model does, and Node.js refuses to start from it.
    const refusedBlob = join(work, 'refused.blob');
    const refused = spawnSync(
      process.execPath,
      [
        '--no-enable-sse3',
        '--snapshot-blob',
        refusedBlob,
        '--build-snapshot',
        join(LANGUAGE_DIR, 'tsc-warm.js'),
      ],
      { cwd: work, encoding: 'utf8', env, timeout: 120_000 },
    );
    expect(refused.status, refused.stderr).toBe(0);
    const tsc = join(typescript, 'bin/tsc');
    fast = wrapperWith('tsc-fast', { node: process.execPath, blob, tsc });
    execHelper = await buildExecHelper(join(work, 'runner-exec'));
    fastRefused = wrapperWith('tsc-fast-refused', {
      node: process.execPath,
      blob: refusedBlob,
      tsc,
    });
  }, 180_000);

  afterAll(() => {
    if (work) rmSync(work, { recursive: true, force: true });
  });

  it('uses the guest version of TypeScript, and the flags the language compiles with', () => {
    const version = JSON.parse(readFileSync(join(GUEST_TS, 'package.json'), 'utf8')) as {
      version: string;
    };
    const language = JSON.parse(readFileSync(join(LANGUAGE_DIR, 'language.json'), 'utf8')) as {
      version: string;
      compile: string[];
    };
    expect(version.version).toBe(language.version);
    expect(flags).toContain('--strict');
  });

  const cases: [string, Record<string, string>, (f: string[]) => string[]][] = [
    ['a program that compiles', { 'main.ts': GOOD }, (f) => [...f, 'main.ts']],
    [
      'a type error (exit 2, the output still written)',
      { 'main.ts': 'const x: number = "a";\nconsole.log(x);\n' },
      (f) => [...f, 'main.ts'],
    ],
    ['a syntax error', { 'main.ts': 'let y = ;\nfunction (\n' }, (f) => [...f, 'main.ts']],
    [
      'several files importing each other, one of them in a folder',
      {
        'a.ts': "import { b } from './lib/b';\nconsole.log(b(2));\n",
        'lib/b.ts': 'export function b(n: number): number { return n * 2; }\n',
      },
      (f) => [...f, 'a.ts', 'lib/b.ts'],
    ],
    [
      "an error in a default library's terms (a DOM name under --lib es2020)",
      { 'main.ts': 'document.title = "x";\nconst p: Promise<number> = Promise.resolve("s");\n' },
      (f) => [...f, 'main.ts'],
    ],
    [
      'a program that redeclares a global of @types/node',
      { 'main.ts': 'declare var process: number;\nexport {};\n' },
      (f) => [...f, 'main.ts'],
    ],
    ['a missing file', {}, (f) => [...f, 'nothing.ts']],
    [
      'another flag (not the warm options: TypeScript afresh)',
      { 'main.ts': 'function f(x) { return x; }\nf(1);\n' },
      (f) => [...f, '--noImplicitAny', 'false', 'main.ts'],
    ],
    ['an unknown flag', { 'main.ts': GOOD }, (f) => [...f, '--nosuchflag', 'main.ts']],
    ['--version', {}, () => ['--version']],
    ['no files (the help, exit 1)', {}, () => []],
    [
      'a tsconfig.json beside the files (ignored when files are named)',
      {
        'main.ts': GOOD,
        'tsconfig.json': '{ "compilerOptions": { "noEmit": true, "target": "es5" } }',
      },
      (f) => [...f, 'main.ts'],
    ],
  ];

  for (const [name, files, args] of cases) {
    it(`gives what tsc gives: ${name}`, () => {
      const { cold, warm } = both(files, args(flags));
      expect(warm).toEqual(cold);
    }, 60_000);
  }

  for (const [name, files, args] of cases) {
    it(`the compile server gives what tsc gives: ${name}`, async () => {
      const { cold, served: out } = await served(files, args(flags));
      expect(out).toEqual(cold);
    }, 60_000);
  }

  it('the compile server answers on its socket (not by the fallback), then exits', async () => {
    const socket = join(work, 'direct.sock');
    await startServer(socket);
    // Straight to the socket: the fallback command cannot run, so only the server can answer.
    const dir = join(work, 'direct');
    mkdirSync(dir);
    writeFileSync(join(dir, 'main.ts'), 'const x: number = "a";\n');
    const out = runFile(
      execHelper,
      ['--connect', socket, '--skip', '1', '--', '/nonexistent', ...flags, 'main.ts'],
      dir,
    );
    expect(out.status).toBe(2);
    expect(out.stdout).toContain("main.ts(1,7): error TS2322: Type 'string' is not assignable");
    expect(out.files['main.js']).toContain('const x = "a";');
    // One compile per server: the socket is closed once it has answered.
    const again = runFile(
      execHelper,
      ['--connect', socket, '--skip', '1', '--', '/nonexistent', ...flags, 'main.ts'],
      dir,
    );
    expect(again.status).toBe(127);
    expect(again.stderr).toContain('cannot execute /nonexistent');
  }, 60_000);

  it('a compile that succeeds leaves the JavaScript, and a type error gives exit 2', () => {
    // Node.js starts from this snapshot (so the cases above ran the warm path, not the fallback).
    const direct = both(
      { 'main.ts': GOOD },
      ['--snapshot-blob', blob, 'tsc', ...flags, 'main.ts'],
      process.execPath,
    ).warm;
    expect(direct.status, direct.stderr).toBe(0);
    expect(direct.files['main.js']).toContain('console.log(s, typeof os.cpus)');
    const ok = both({ 'main.ts': GOOD }, [...flags, 'main.ts']).warm;
    expect(ok.status).toBe(0);
    expect(ok.files['main.js']).toContain('console.log(s, typeof os.cpus)');
    const bad = both({ 'main.ts': 'const x: number = "a";\n' }, [...flags, 'main.ts']).warm;
    expect(bad.status).toBe(2);
    expect(bad.stdout).toContain('error TS2322');
  }, 60_000);

  it("falls back to TypeScript's own tsc, with the same output, when Node.js refuses the snapshot", () => {
    const direct = spawnSync(
      process.execPath,
      ['--snapshot-blob', join(work, 'refused.blob'), 'tsc', '--version'],
      {
        encoding: 'utf8',
      },
    );
    expect(direct.status).toBe(14);
    expect(direct.stderr).toContain('Failed to load the startup snapshot');
    for (const [files, args] of [
      [{ 'main.ts': GOOD }, [...flags, 'main.ts']],
      [{ 'main.ts': 'const x: number = "a";\n' }, [...flags, 'main.ts']],
      [{}, []],
    ] as [Record<string, string>, string[]][]) {
      const { cold, warm } = both(files, args, fastRefused);
      expect(warm).toEqual(cold);
    }
  }, 60_000);

  it('reads a default library again when its text changed after the snapshot', () => {
    const lib = join(typescript, 'lib/lib.es5.d.ts');
    const before = readFileSync(lib, 'utf8');
    appendFileSync(lib, '\ndeclare var runnerChangedLib: number;\n');
    try {
      const { cold, warm } = both(
        { 'main.ts': 'const n: number = runnerChangedLib;\nconsole.log(n);\n' },
        [...flags, 'main.ts'],
      );
      expect(cold.status).toBe(0);
      expect(warm).toEqual(cold);
    } finally {
      writeFileSync(lib, before);
    }
  }, 60_000);
});
