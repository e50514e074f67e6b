// javac's compile server (languages/java/JavacServer.java) against javac itself, both on this
// host's JDK: each case runs `javac ARGS` in a folder holding just its files, then the same
// through a server started in that folder while it was empty (as the guest agent starts it in
// the next job's work dir) and its client (runner-exec --connect); stdout, stderr, the exit
// status and every file left in the folder must be the same. Skipped, saying so, on a host
// without a JDK (scripts/setup.sh does not install one: the guest has its own).
import { spawn, spawnSync } from 'node:child_process';
import {
  existsSync,
  mkdirSync,
  mkdtempSync,
  readdirSync,
  readFileSync,
  rmSync,
  writeFileSync,
} from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { buildExecHelper } from '../../../src/images/exec-helper.js';

const ROOT = resolve(import.meta.dirname, '../../..');
const LANGUAGE_DIR = join(ROOT, 'languages/java');
const JAVAC = '/usr/bin/javac';
const skip = existsSync(JAVAC) ? null : `no JDK on this host (${JAVAC})`;
if (skip) console.warn(`skipping the javac compile server test: ${skip}`);

interface Outcome {
  status: number | null;
  stdout: string;
  stderr: string;
  files: Record<string, string>;
}

let work: string;
let classes: string;
let execHelper: string;
/** The server's command, from language.json (its class folder pointed at this test's). */
let serverCommand: string[];
/** javac's arguments in the language's compile command (after `javac`, without {sources}). */
let flags: string[];

function filesOf(dir: string): Record<string, string> {
  const out: Record<string, string> = {};
  for (const name of readdirSync(dir, { recursive: true, encoding: 'utf8' }).sort()) {
    try {
      out[name] = readFileSync(join(dir, name)).toString('base64');
    } catch {
      out[name] = '<dir>';
    }
  }
  return out;
}

function fill(dir: string, files: Record<string, string>): void {
  for (const [name, text] of Object.entries(files)) {
    mkdirSync(join(dir, name, '..'), { recursive: true });
    writeFileSync(join(dir, name), text);
  }
}

let caseNo = 0;
async function both(
  files: Record<string, string>,
  args: string[],
): Promise<{ cold: Outcome; served: Outcome }> {
  caseNo += 1;
  const coldDir = join(work, `cold${caseNo}`);
  mkdirSync(coldDir);
  fill(coldDir, files);
  const env = { PATH: process.env.PATH ?? '/usr/bin:/bin', LANG: 'C.UTF-8' };
  const c = spawnSync(JAVAC, args, {
    cwd: coldDir,
    encoding: 'utf8',
    env: { ...env, HOME: coldDir, TMPDIR: coldDir },
  });
  const cold = { status: c.status, stdout: c.stdout, stderr: c.stderr, files: filesOf(coldDir) };
  // The same folder name for both: javac's messages name the files as given, never the folder.
  rmSync(coldDir, { recursive: true });
  mkdirSync(coldDir);
  const socket = join(work, `s${caseNo}.sock`);
  const server = spawn(
    serverCommand[0] as string,
    serverCommand.slice(1).map((a) => a.replace('{socket}', socket)),
    {
      cwd: coldDir,
      env: { ...env, HOME: coldDir, TMPDIR: coldDir },
      stdio: ['ignore', 'pipe', 'pipe'],
    },
  );
  await new Promise<void>((ok, fail) => {
    let err = '';
    server.stderr.on('data', (d: Buffer) => (err += d.toString()));
    server.stdout.on('data', (d: Buffer) => d.toString().includes('ready') && ok());
    server.once('exit', (code) => fail(new Error(`the server exited ${code}: ${err}`)));
  });
  expect(readdirSync(coldDir)).toEqual([]);
  fill(coldDir, files);
  const s = spawnSync(
    execHelper,
    ['--connect', socket, '--skip', '1', '--', '/nonexistent-javac', ...args],
    {
      cwd: coldDir,
      encoding: 'utf8',
    },
  );
  const served = { status: s.status, stdout: s.stdout, stderr: s.stderr, files: filesOf(coldDir) };
  return { cold, served };
}

const MAIN =
  'public class Main {\n  public static void main(String[] args) {\n    System.out.println(Helper.twice(21));\n  }\n}\n';
const HELPER = 'class Helper {\n  static int twice(int n) { return 2 * n; }\n}\n';

describe.skipIf(skip !== null)("javac's compile server", () => {
  beforeAll(async () => {
    work = mkdtempSync(join(tmpdir(), 'runner-javac-server-'));
    classes = join(work, 'classes');
    mkdirSync(classes);
    const built = spawnSync(JAVAC, ['-d', classes, join(LANGUAGE_DIR, 'JavacServer.java')], {
      encoding: 'utf8',
    });
    expect(built.status, built.stderr).toBe(0);
    execHelper = await buildExecHelper(join(work, 'runner-exec'));
    const definition = JSON.parse(readFileSync(join(LANGUAGE_DIR, 'language.json'), 'utf8')) as {
      compile: string[];
      compileServer: { command: string[]; replaces: number };
    };
    expect(definition.compileServer.replaces).toBe(1);
    expect(definition.compile[0]).toBe('javac');
    serverCommand = definition.compileServer.command.map((a) =>
      a === '/opt/runner/languages/java' ? classes : a,
    );
    expect(serverCommand).toContain(classes);
    flags = definition.compile.slice(1).filter((a) => a !== '{sources}');
  }, 120_000);

  afterAll(() => {
    if (work) rmSync(work, { recursive: true, force: true });
  });

  const cases: [string, Record<string, string>, (f: string[]) => string[]][] = [
    [
      'a program that compiles',
      { 'Main.java': MAIN, 'Helper.java': HELPER },
      (f) => [...f, 'Helper.java', 'Main.java'],
    ],
    [
      'a class found by itself on the class path (only Main.java named)',
      { 'Main.java': MAIN, 'Helper.java': HELPER },
      (f) => [...f, 'Main.java'],
    ],
    [
      'a type error and a missing symbol',
      {
        'Main.java':
          'public class Main {\n  public static void main(String[] a) {\n    int x = "s";\n    nope();\n  }\n}\n',
      },
      (f) => [...f, 'Main.java'],
    ],
    [
      'a syntax error',
      { 'Main.java': 'public class Main { void f( }\n' },
      (f) => [...f, 'Main.java'],
    ],
    [
      'a public class in the wrong file',
      { 'Main.java': 'public class Other {}\n' },
      (f) => [...f, 'Main.java'],
    ],
    [
      'a package (the class file in its folder) and a deprecation note',
      {
        'Main.java':
          'package a.b;\npublic class Main {\n  @Deprecated static void old() {}\n  public static void main(String[] x) { new Thread().stop(); }\n}\n',
      },
      (f) => [...f, 'Main.java'],
    ],
    [
      'text outside ASCII',
      {
        'Main.java':
          'public class Main { public static void main(String[] a) { String s = "héllo ✓"; System.out.println(s); } }\n',
      },
      (f) => [...f, 'Main.java'],
    ],
    ['a missing file', {}, (f) => [...f, 'Nothing.java']],
    ['an unknown flag', { 'Main.java': MAIN }, (f) => [...f, '--no-such-flag', 'Main.java']],
  ];

  for (const [name, files, args] of cases) {
    it(`gives what javac gives: ${name}`, async () => {
      const { cold, served } = await both(files, args(flags));
      expect(served).toEqual(cold);
    }, 60_000);
  }

  it('answers on its socket itself (the fallback command does not exist), a type error with exit 1', async () => {
    const { served } = await both({ 'Main.java': 'public class Main { int x = "s"; }\n' }, [
      ...flags,
      'Main.java',
    ]);
    expect(served.status).toBe(1);
    expect(served.stderr).toContain('error: incompatible types: String cannot be converted to int');
  }, 60_000);
});
