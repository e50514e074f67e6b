'use strict';
// A tsc whose compiler and default libraries are already loaded, parsed and bound: the entry
// of a Node.js startup snapshot (`node --snapshot-blob tsc.blob --build-snapshot tsc-warm.js`,
// run when the image is built, under the VMs' CPU model), started per compile by tsc-fast as
// `node --snapshot-blob tsc.blob tsc ARGS...` (the `tsc` only fills argv[1]).
//
// At build time it loads TypeScript and compiles a small program with the language's own
// compile flags (read from language.json), and keeps the declaration files that compile read
// (lib.*.d.ts, @types/node). A compile from the snapshot hands TypeScript those same parsed,
// bound SourceFile objects again, but only for a file whose text on disk is still identical
// and only when the command line parses to the very options they were made under; the job's
// own files are always read and parsed afresh. Every other command line (another flag,
// --build, --watch, -p, a terminal) goes to the command-line entry of a TypeScript loaded
// afresh, as `tsc` would run it. tests/unit/languages/tsc-warm.test.ts compares the two on many programs.
const fs = require('node:fs');
const path = require('node:path');
const v8 = require('node:v8');
const vm = require('node:vm');

const TYPESCRIPT =
  process.env.TSC_WARM_TYPESCRIPT || '/usr/local/lib/node_modules/typescript/lib/typescript.js';
const DEFINITION = process.env.TSC_WARM_DEFINITION || path.join(__dirname, 'language.json');

/** TypeScript's own bundle, evaluated as CommonJS (a snapshot entry may require only built-ins). */
function loadTypeScript(file) {
  const module = { exports: {} };
  const params = ['exports', 'require', 'module', '__filename', '__dirname'];
  const fn = vm.compileFunction(fs.readFileSync(file, 'utf8'), params, { filename: file });
  fn(module.exports, require, module, file, path.dirname(file));
  return module.exports;
}

const ts = loadTypeScript(TYPESCRIPT);
// TypeScript's node system keeps the first working directory it is asked for; the warm-up runs
// in another folder than every later compile, so this instance asks the process each time.
ts.sys.getCurrentDirectory = () => process.cwd();

/** The compile flags of the language: its compile command's options, without {sources}. */
function languageFlags(file) {
  const { compile } = JSON.parse(fs.readFileSync(file, 'utf8'));
  // The command is `sh tsc-fast FLAGS {sources}`: the flags start at the first option.
  const first = compile.findIndex((arg) => arg.startsWith('-'));
  return compile.slice(first).filter((arg) => arg !== '{sources}');
}

/** The options a command line compiles under, with the emit-only output folder left out. */
function optionsKey(options) {
  const copy = { ...options };
  delete copy.outDir;
  return JSON.stringify(copy, Object.keys(copy).sort());
}

/** Warm SourceFiles by path: { file, mode } (mode: parseMode of what made the file). */
const warm = new Map();
let warmKey = null;

/** The parse options that make a SourceFile, as createProgram passes them to getSourceFile. */
function parseMode(languageVersionOrOptions) {
  const o =
    typeof languageVersionOrOptions === 'object'
      ? languageVersionOrOptions
      : { languageVersion: languageVersionOrOptions };
  return `${o.languageVersion}/${o.impliedNodeFormat}/${o.jsDocParsingMode}`;
}

/**
 * What `tsc` does for a plain compile of files named on the command line (TypeScript's own
 * performCompilation, through its exported parts), with the warm files offered to the host.
 * Returns the exit status.
 */
function compile(commandLine, remember) {
  const sys = ts.sys;
  const currentDirectory = sys.getCurrentDirectory();
  const options = absoluteOptions(commandLine, currentDirectory);
  const host = ts.createCompilerHostWorker(options, undefined, sys);
  host.jsDocParsingMode = 2; // ParseForTypeErrors, as tsc sets it
  const canonical = ts.createGetCanonicalFileName(host.useCaseSensitiveFileNames());
  const toPath = (f) => ts.toPath(f, currentDirectory, canonical);
  const parse = host.getSourceFile;
  const useWarm = !remember && optionsKey(options) === warmKey;
  host.getSourceFile = (fileName, languageVersionOrOptions, onError, shouldCreate) => {
    const entry = useWarm ? warm.get(toPath(fileName)) : undefined;
    if (entry !== undefined && entry.mode === parseMode(languageVersionOrOptions)) {
      // The host's readFile gives undefined for a file it cannot read.
      if (host.readFile(fileName) === entry.file.text) return entry.file;
    }
    return parse.call(host, fileName, languageVersionOrOptions, onError, shouldCreate);
  };
  ts.changeCompilerHostLikeToUseCache(host, toPath);
  const program = ts.createProgram({
    rootNames: commandLine.fileNames,
    options,
    projectReferences: commandLine.projectReferences,
    host,
    configFileParsingDiagnostics: ts.getConfigFileParsingDiagnostics(commandLine),
  });
  const status = ts.emitFilesAndReportErrorsAndGetExitStatus(
    program,
    ts.createDiagnosticReporter(sys),
    (s) => sys.write(s + sys.newLine),
    undefined,
  );
  if (remember) {
    for (const file of program.getSourceFiles()) {
      if (remember(file.fileName))
        warm.set(file.path, { file, mode: parseMode({ ...file, jsDocParsingMode: 2 }) });
    }
    warmKey = optionsKey(options);
  }
  return status;
}

/** A command line's options with its paths made absolute against `cwd`, as tsc does. */
function absoluteOptions(commandLine, cwd) {
  return ts.convertToOptionsWithAbsolutePaths(commandLine.options, (f) =>
    ts.getNormalizedAbsolutePath(f, cwd),
  );
}

/** Whether a command line is one the warm path answers exactly as tsc: a plain compile. */
function plainCompile(args) {
  if (args.length > 0 && /^--?b(uild)?$/i.test(args[0])) return null;
  const commandLine = ts.parseCommandLine(args, (f) => ts.sys.readFile(f));
  if (commandLine.errors.length > 0 || commandLine.fileNames.length === 0) return null;
  // Colours and the error summary follow a terminal; the warm files were made for none.
  if (ts.sys.writeOutputIsTTY && ts.sys.writeOutputIsTTY()) return null;
  const options = absoluteOptions(commandLine, ts.sys.getCurrentDirectory());
  return optionsKey(options) === warmKey ? commandLine : null;
}

/** The build-time compile: the language's flags on a small program in a throwaway folder. */
function warmUp() {
  const dir = fs.mkdtempSync(path.join(require('node:os').tmpdir(), 'tsc-warm-'));
  const previous = process.cwd();
  try {
    fs.writeFileSync(
      path.join(dir, 'main.ts'),
      "import { readFileSync } from 'node:fs';\nconst s: string = String(readFileSync.length);\nconsole.log(s);\n",
    );
    process.chdir(dir);
    const flags = languageFlags(DEFINITION);
    const commandLine = ts.parseCommandLine([...flags, 'main.ts']);
    if (commandLine.errors.length > 0) throw new Error('the language flags do not parse');
    const inside = dir + path.sep;
    const status = compile(commandLine, (fileName) => !path.resolve(fileName).startsWith(inside));
    if (status !== 0) throw new Error(`the warm-up compile failed with status ${status}`);
  } finally {
    process.chdir(previous);
    fs.rmSync(dir, { recursive: true, force: true });
  }
  if (warm.size === 0) throw new Error('the warm-up compile read no declaration files');
}

/** A frame of the compile server's answer: a kind byte, a 4-byte big-endian length, the bytes. */
function frame(kind, bytes) {
  const head = Buffer.alloc(5);
  head[0] = kind;
  head.writeUInt32BE(bytes.length, 1);
  return Buffer.concat([head, bytes]);
}

const FRAME = { stdout: 1, status: 3, decline: 4 };

/** The compile of one job's command line in this process; null when it is not the warm compile. */
function compileCaptured(args) {
  const commandLine = plainCompile(args);
  if (commandLine === null) return null;
  const write = ts.sys.write;
  const out = [];
  ts.sys.write = (s) => out.push(s);
  try {
    const status = compile(commandLine, null);
    return { status, stdout: out.join('') };
  } finally {
    ts.sys.write = write;
  }
}

/**
 * What the compile server compiles before it listens, with the status each must end with: a
 * startup snapshot holds no compiled code, so every part of the compiler a job's compile uses
 * for the first time is compiled then, and under TCG translated too (a served compile of the
 * test program took 3.9 s in a VM after one rehearsal of a two-line program). So: programs that
 * use what jobs use (imports of Node.js modules, require, classes, generics, async), a type
 * error (the diagnostics' reporting), and the first program again (V8 optimises what runs often).
 */
const REHEARSAL_PROGRAM = [
  "import { readFileSync, existsSync } from 'node:fs';",
  "import * as path from 'node:path';",
  "const os = require('os');",
  'interface Point { x: number; y: number; label?: string }',
  'enum Colour { Red, Green }',
  'class Grid<T> {',
  '  private readonly cells = new Map<string, T>();',
  '  set(p: Point, v: T): this { this.cells.set(`${p.x},${p.y}`, v); return this; }',
  '  get size(): number { return this.cells.size; }',
  '}',
  'async function main(args: readonly string[]): Promise<number> {',
  '  const g = new Grid<Colour>().set({ x: 1, y: 2 }, Colour.Green);',
  "  const text = existsSync('/') ? readFileSync(path.join('/', 'etc', 'hostname'), 'utf8') : '';",
  '  const lines: string[] = text.split(String.fromCharCode(10)).filter((l) => l.length > 0);',
  '  const sum = [1, 2, 3].reduce((a, b) => a + b, 0) + lines.length + g.size;',
  '  process.stdout.write(Buffer.from(`${sum} ${typeof os.cpus} ${args.length}` + lines[0]));',
  '  return sum;',
  '}',
  'void main(process.argv.slice(2)).catch((e: unknown) => { console.error(e); process.exit(1); });',
  '',
].join('\n');
const REHEARSALS = [
  [REHEARSAL_PROGRAM, 0],
  ['const n: number = "one";\nfunction f(a: string): number { return a; }\nf(n);\n', 2],
  [REHEARSAL_PROGRAM, 0],
];

/**
 * The compile server (`--runner-serve SOCKET`, started by the guest agent in a restored VM that
 * waits in the pool; docs/agent.md, "Compile servers"). It compiles one small program the way a
 * job's would be compiled, so that V8 has optimised, and QEMU translated, the compiler's code;
 * listens on SOCKET and prints `ready`; then answers one connection (runner-exec --connect:
 * the working directory and tsc's arguments, NUL-ended) and exits. What tsc would write goes
 * back as one stdout frame, then the exit status; a command line that is not the warm compile,
 * a working directory it cannot enter, or any failure of the compiler itself is declined
 * before anything is written back, and the client then runs tsc-fast itself.
 */
function serve(socketPath) {
  const net = require('node:net');
  const dir = fs.mkdtempSync(path.join(require('node:os').tmpdir(), 'tsc-serve-'));
  try {
    process.chdir(dir);
    for (const [source, status] of REHEARSALS) {
      fs.writeFileSync(path.join(dir, 'main.ts'), source);
      const rehearsal = compileCaptured([...languageFlags(DEFINITION), 'main.ts']);
      if (rehearsal === null || rehearsal.status !== status)
        throw new Error(`a rehearsal compile ended ${rehearsal && rehearsal.status}, not ${status}`);
    }
  } finally {
    process.chdir('/');
    fs.rmSync(dir, { recursive: true, force: true });
  }
  const server = net.createServer({ allowHalfOpen: true }, (socket) => {
    server.close();
    const chunks = [];
    socket.on('data', (chunk) => chunks.push(chunk));
    socket.on('error', () => process.exit(1));
    socket.on('end', () => {
      const fields = Buffer.concat(chunks).toString('utf8').split('\0');
      fields.pop(); // the last NUL ends the last field
      const [cwd, ...args] = fields;
      let answer = null;
      try {
        process.chdir(cwd);
        answer = compileCaptured(args);
      } catch {
        answer = null;
      }
      const reply =
        answer === null
          ? frame(FRAME.decline, Buffer.alloc(0))
          : Buffer.concat([
              frame(FRAME.stdout, Buffer.from(answer.stdout, 'utf8')),
              frame(FRAME.status, Buffer.from([answer.status & 0xff])),
            ]);
      socket.end(reply, () => process.exit(0));
    });
  });
  server.listen(socketPath, () => process.stdout.write('ready\n'));
}

/**
 * V8's interpreter alone, set when a compile starts (not on the command line: Node.js refuses a
 * startup snapshot made under other V8 flags). Under TCG every optimised function is compiled
 * by emulated code and its code then translated by QEMU, and the translations of freed JIT code
 * are dropped again when the guest reuses those pages: in a VM, a served compile of the test
 * program took 2.8–3.0 s with V8's JIT tiers and 1.3–1.6 s without, and `node main.js` right
 * after the server ended 0.8–2.4 s against 0.36–0.40 s. Tiers change speed, never results.
 */
function interpreterOnly() {
  v8.setFlagsFromString('--no-opt');
  v8.setFlagsFromString('--no-sparkplug');
}

function main() {
  interpreterOnly();
  const args = process.argv.slice(2);
  if (args[0] === '--runner-serve' && args.length === 2) {
    serve(args[1]);
    return;
  }
  const commandLine = plainCompile(args);
  if (commandLine === null) {
    // Not the warm compile: a TypeScript loaded now, untouched by the build, runs it as tsc.
    const fresh = loadTypeScript(TYPESCRIPT);
    fresh.executeCommandLine(fresh.sys, () => {}, args);
    return;
  }
  ts.sys.exit(compile(commandLine, null));
}

if (v8.startupSnapshot && v8.startupSnapshot.isBuildingSnapshot()) {
  warmUp();
  v8.startupSnapshot.setDeserializeMainFunction(main);
} else {
  // Run directly (`node tsc-warm.js ARGS`): the same compile, warmed in this process first.
  warmUp();
  main();
}
