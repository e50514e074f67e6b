// The playground's browser code, bundled by scripts/bundle-playground.mjs. It talks to the
// server's own APIs only: GET /api/v2/runtimes (the languages), the native WebSocket
// /v1/connect (a run, streamed and interactive) and POST /v1/execute (the test cases).
import { basicSetup, EditorView } from 'codemirror';
import { Compartment, type Extension } from '@codemirror/state';
import { cpp } from '@codemirror/lang-cpp';
import { go } from '@codemirror/lang-go';
import { java } from '@codemirror/lang-java';
import { javascript } from '@codemirror/lang-javascript';
import { python } from '@codemirror/lang-python';
import { rust } from '@codemirror/lang-rust';

const KEY_STORAGE = 'runner-playground-api-key';
const KEY_MESSAGE =
  'This server needs an API key: enter yours in the “API key” field above and press “Save key”.';
const BAD_KEY_MESSAGE =
  'The server did not accept the API key: check it in the “API key” field above and press “Save key”.';
/** After Stop, how long the page waits for the job's result before it closes the socket. */
const STOP_GRACE_MS = 5000;
/**
 * After Stop, SIGKILL is sent again this often until the result comes: a signal that comes
 * just as the stage starts (within some 300 ms under TCG) can find no program yet, and is lost.
 */
const STOP_RESEND_MS = 250;

/** Syntax highlighting per language (none for bash, ruby and php: no CodeMirror 6 package). */
const HIGHLIGHT: Record<string, () => Extension> = {
  python: () => python(),
  javascript: () => javascript(),
  typescript: () => javascript({ typescript: true }),
  c: () => cpp(),
  'c++': () => cpp(),
  java: () => java(),
  rust: () => rust(),
  go: () => go(),
};

/** A program per language that runs as is. */
const SAMPLES: Record<string, string> = {
  python: 'print("Hello from Python")\nfor i in range(1, 4):\n    print(i, i * i)\n',
  javascript:
    'console.log("Hello from JavaScript");\nfor (let i = 1; i < 4; i++) console.log(i, i * i);\n',
  typescript:
    'const square = (n: number): number => n * n;\nconsole.log("Hello from TypeScript");\nfor (let i = 1; i < 4; i++) console.log(i, square(i));\n',
  c: '#include <stdio.h>\n\nint main(void) {\n    printf("Hello from C\\n");\n    for (int i = 1; i < 4; i++) printf("%d %d\\n", i, i * i);\n    return 0;\n}\n',
  'c++':
    '#include <iostream>\n\nint main() {\n    std::cout << "Hello from C++\\n";\n    for (int i = 1; i < 4; i++) std::cout << i << " " << i * i << "\\n";\n}\n',
  java: 'public class Main {\n    public static void main(String[] args) {\n        System.out.println("Hello from Java");\n        for (int i = 1; i < 4; i++) System.out.println(i + " " + i * i);\n    }\n}\n',
  rust: 'fn main() {\n    println!("Hello from Rust");\n    for i in 1..4 {\n        println!("{} {}", i, i * i);\n    }\n}\n',
  go: 'package main\n\nimport "fmt"\n\nfunc main() {\n\tfmt.Println("Hello from Go")\n\tfor i := 1; i < 4; i++ {\n\t\tfmt.Println(i, i*i)\n\t}\n}\n',
  bash: 'echo "Hello from Bash"\nfor i in 1 2 3; do echo "$i $((i * i))"; done\n',
  ruby: 'puts "Hello from Ruby"\n(1..3).each { |i| puts "#{i} #{i * i}" }\n',
  php: '<?php\necho "Hello from PHP\\n";\nfor ($i = 1; $i < 4; $i++) echo "$i " . $i * $i . "\\n";\n',
};

interface Runtime {
  language: string;
  version: string;
  aliases: string[];
}

interface Stage {
  status: string;
  exitCode: number | null;
  signal: string | null;
  wallTimeMs: number;
  cpuTimeMs: number | null;
  memoryPeakBytes: number | null;
  stdoutText?: string | null;
  stderrText?: string | null;
  message?: string;
}

interface CaseResult {
  index: number;
  status: string;
  passed: boolean;
  verdict?: string;
  message?: string;
  checkerMessage?: string;
  firstDifference?: { line: number; expected: string | null; actual: string | null };
}

interface ExecuteResult {
  status: string;
  compile: Stage | null;
  run: Stage | null;
  testCases?: CaseResult[];
  summary?: { total: number; passed: number; failed: number };
}

/** A server message of /v1/connect. */
type ServerMessage =
  | { type: 'started'; id: string; language: string; version: string }
  | { type: 'stage'; stage: string; phase: 'start' | 'end'; status?: string }
  | { type: 'output'; stream: 'stdout' | 'stderr'; data: string }
  | { type: 'result'; result: ExecuteResult }
  | { type: 'error'; error: { code: string; message: string } };

/** The page's element `id`, checked to be of the kind the code expects. */
function $<T extends HTMLElement>(id: string, kind: new () => T): T {
  const el = document.getElementById(id);
  if (!(el instanceof kind)) throw new TypeError(`the page has no ${kind.name} #${id}`);
  return el;
}

const ui = {
  key: $('api-key', HTMLInputElement),
  keyForm: $('key-form', HTMLFormElement),
  notice: $('notice', HTMLParagraphElement),
  language: $('language', HTMLSelectElement),
  sample: $('sample', HTMLButtonElement),
  stdin: $('stdin', HTMLTextAreaElement),
  run: $('run', HTMLButtonElement),
  stop: $('stop', HTMLButtonElement),
  status: $('status', HTMLParagraphElement),
  output: $('output', HTMLPreElement),
  inputForm: $('input-form', HTMLFormElement),
  inputLine: $('input-line', HTMLInputElement),
  send: $('send', HTMLButtonElement),
  eof: $('eof', HTMLButtonElement),
  cases: $('cases', HTMLDivElement),
  addCase: $('add-case', HTMLButtonElement),
  runTests: $('run-tests', HTMLButtonElement),
  testsSummary: $('tests-summary', HTMLParagraphElement),
};

const nonce = document.querySelector<HTMLMetaElement>('meta[name="style-nonce"]')?.content ?? '';
const highlight = new Compartment();
const editor = new EditorView({
  doc: '',
  extensions: [basicSetup, highlight.of([]), EditorView.cspNonce.of(nonce)],
  parent: $('editor', HTMLDivElement),
});

let runtimes: Runtime[] = [];

function notify(message: string | null): void {
  ui.notice.hidden = message === null;
  ui.notice.textContent = message ?? '';
}

const apiKey = (): string => localStorage.getItem(KEY_STORAGE) ?? '';

function authHeaders(): Record<string, string> {
  const key = apiKey();
  return key === '' ? {} : { authorization: `Bearer ${key}` };
}

/** A fetch of our API; a 401 shows the key message and throws. */
async function api(path: string, init: RequestInit = {}): Promise<unknown> {
  const res = await fetch(path, {
    ...init,
    headers: { ...authHeaders(), ...(init.headers as Record<string, string> | undefined) },
  });
  if (res.status === 401) {
    notify(apiKey() === '' ? KEY_MESSAGE : BAD_KEY_MESSAGE);
    throw new TypeError('unauthorized');
  }
  const body: unknown = await res.json().catch(() => null);
  if (!res.ok) {
    const message = (body as { message?: string } | null)?.message ?? res.statusText;
    throw new TypeError(`${res.status}: ${message}`);
  }
  return body;
}

function selected(): Runtime | undefined {
  return runtimes.find((r) => r.language === ui.language.value);
}

function setLanguage(language: string, withSample: boolean): void {
  editor.dispatch({ effects: highlight.reconfigure(HIGHLIGHT[language]?.() ?? []) });
  if (withSample)
    editor.dispatch({
      changes: { from: 0, to: editor.state.doc.length, insert: SAMPLES[language] ?? '' },
    });
}

async function loadRuntimes(): Promise<void> {
  try {
    runtimes = ((await api('/api/v2/runtimes')) as Runtime[]).sort((a, b) =>
      a.language.localeCompare(b.language),
    );
  } catch (err) {
    if ((err as Error).message !== 'unauthorized')
      notify(`Could not load the languages: ${(err as Error).message}`);
    return;
  }
  notify(null);
  const previous = ui.language.value;
  ui.language.replaceChildren(
    ...runtimes.map((r) => {
      const o = document.createElement('option');
      o.value = r.language;
      o.textContent = `${r.language} ${r.version}`;
      return o;
    }),
  );
  ui.language.disabled = false;
  const keep = runtimes.some((r) => r.language === previous);
  ui.language.value = keep
    ? previous
    : ((runtimes.find((r) => r.language === 'python') ?? runtimes[0])?.language ?? '');
  if (!keep) setLanguage(ui.language.value, editor.state.doc.length === 0);
}

// ---- a run over /v1/connect ----

/** One run's socket and decoders; null when nothing runs. */
let current: {
  ws: WebSocket;
  decoders: Record<'stdout' | 'stderr', TextDecoder>;
  stdinOpen: boolean;
  gotResult: boolean;
  /** Stop was clicked: each stage that starts is killed too. */
  stopping: boolean;
} | null = null;

function appendOutput(text: string, kind: 'stdout' | 'stderr' | 'meta' | 'stdin'): void {
  if (text === '') return;
  const last = ui.output.lastElementChild;
  // Consecutive chunks of one stream go into one span, so the DOM stays small.
  if (last instanceof HTMLSpanElement && last.className === kind && kind !== 'meta')
    last.textContent = (last.textContent ?? '') + text;
  else {
    const span = document.createElement('span');
    span.className = kind;
    span.textContent = text;
    ui.output.append(span);
  }
  ui.output.scrollTop = ui.output.scrollHeight;
}

function fromBase64(data: string): Uint8Array {
  const bin = atob(data);
  const bytes = new Uint8Array(bin.length);
  for (let i = 0; i < bin.length; i++) bytes[i] = bin.charCodeAt(i);
  return bytes;
}

function setInputEnabled(on: boolean): void {
  ui.inputLine.disabled = !on;
  ui.send.disabled = !on;
  ui.eof.disabled = !on;
}

function setRunning(on: boolean): void {
  ui.run.disabled = on;
  ui.runTests.disabled = on;
  ui.stop.disabled = !on;
  if (!on) setInputEnabled(false);
}

const mib = (bytes: number | null): string =>
  bytes === null ? '–' : `${(bytes / 1024 / 1024).toFixed(1)} MiB`;
const ms = (v: number | null): string => (v === null ? '–' : `${Math.round(v)} ms`);

function describe(result: ExecuteResult): string {
  const parts = [`Status: ${result.status}`];
  const stage = result.run ?? result.compile;
  if (result.compile !== null && result.compile.status !== 'ok')
    parts.push(`compile: ${result.compile.status}`);
  if (stage !== null) {
    if (stage.exitCode !== null) parts.push(`exit code ${stage.exitCode}`);
    if (stage.signal !== null) parts.push(`signal ${stage.signal}`);
    parts.push(
      `wall time ${ms(stage.wallTimeMs)}`,
      `CPU time ${ms(stage.cpuTimeMs)}`,
      `memory ${mib(stage.memoryPeakBytes)}`,
    );
    if (stage.message !== undefined) parts.push(stage.message);
  }
  return parts.join(' · ');
}

function send(message: object): void {
  if (current !== null && current.ws.readyState === WebSocket.OPEN)
    current.ws.send(JSON.stringify(message));
}

function endStdin(): void {
  if (current === null || !current.stdinOpen) return;
  current.stdinOpen = false;
  send({ type: 'stdin_end' });
  setInputEnabled(false);
}

function onMessage(msg: ServerMessage): void {
  if (current === null) return;
  switch (msg.type) {
    case 'started': {
      ui.status.textContent = `Starting (${msg.language} ${msg.version})…`;
      const stdin = ui.stdin.value;
      if (stdin !== '') {
        // Batch input: all of it, then EOF, so a program that reads to the end finishes.
        send({ type: 'stdin', data: stdin });
        endStdin();
      } else setInputEnabled(true);
      break;
    }
    case 'stage':
      if (msg.phase === 'start') {
        ui.status.textContent = msg.stage === 'compile' ? 'Compiling…' : 'Running…';
        // A Stop before the stage started may have found no process to signal: signal this one.
        if (current.stopping) send({ type: 'signal', signal: 'SIGKILL' });
      }
      if (msg.stage === 'compile')
        appendOutput(
          msg.phase === 'start' ? '— compiling —\n' : `— compiled: ${msg.status ?? ''} —\n`,
          'meta',
        );
      break;
    case 'output':
      appendOutput(
        current.decoders[msg.stream].decode(fromBase64(msg.data), { stream: true }),
        msg.stream,
      );
      break;
    case 'result':
      current.gotResult = true;
      ui.status.textContent = describe(msg.result);
      break;
    case 'error':
      if (msg.error.code === 'UNAUTHORIZED')
        notify(apiKey() === '' ? KEY_MESSAGE : BAD_KEY_MESSAGE);
      ui.status.textContent = `Error ${msg.error.code}: ${msg.error.message}`;
      break;
  }
}

function run(): void {
  const runtime = selected();
  if (current !== null) return;
  if (runtime === undefined) {
    ui.status.textContent = 'Pick a language first (the languages need the API key).';
    return;
  }
  ui.output.replaceChildren();
  ui.status.textContent = 'Connecting…';
  notify(null);
  const proto = location.protocol === 'https:' ? 'wss:' : 'ws:';
  const key = apiKey();
  const ws = new WebSocket(
    `${proto}//${location.host}/v1/connect${key === '' ? '' : `?key=${encodeURIComponent(key)}`}`,
  );
  const run = {
    ws,
    decoders: { stdout: new TextDecoder(), stderr: new TextDecoder() },
    stdinOpen: true,
    gotResult: false,
    stopping: false,
  };
  current = run;
  let opened = false;
  setRunning(true);
  ws.addEventListener('open', () => {
    opened = true;
    ws.send(
      JSON.stringify({
        type: 'init',
        language: runtime.language,
        version: runtime.version,
        files: [{ content: editor.state.doc.toString() }],
      }),
    );
  });
  ws.addEventListener('message', (ev: MessageEvent) => {
    if (current !== run || typeof ev.data !== 'string') return;
    onMessage(JSON.parse(ev.data) as ServerMessage);
  });
  ws.addEventListener('close', (ev: CloseEvent) => {
    if (current !== run) return;
    // /v1/connect closes with 4000 + the HTTP status of its error: 4401 is a missing or bad key.
    if (ev.code === 4401) notify(key === '' ? KEY_MESSAGE : BAD_KEY_MESSAGE);
    for (const s of ['stdout', 'stderr'] as const) appendOutput(run.decoders[s].decode(), s);
    if (!opened) {
      // A browser does not tell why an upgrade was refused: ask the API with the same key,
      // whose 401 (the likely cause) shows the key notice.
      ui.status.textContent = 'Could not connect to the server (is the API key right?).';
      api('/api/v2/runtimes').catch(() => undefined);
    } else if (!run.gotResult && !ui.status.textContent?.startsWith('Error'))
      ui.status.textContent = 'Stopped: the connection closed before the result.';
    current = null;
    setRunning(false);
  });
}

function stop(): void {
  const run = current;
  if (run === null) return;
  if (run.stopping) return;
  run.stopping = true;
  ui.status.textContent = 'Stopping…';
  const started = Date.now();
  const kill = (): void => {
    if (current !== run || run.gotResult) return;
    // Closing the socket ends the job too (its VM freed), only without a result to show.
    if (Date.now() - started >= STOP_GRACE_MS) run.ws.close();
    else {
      send({ type: 'signal', signal: 'SIGKILL' });
      setTimeout(kill, STOP_RESEND_MS);
    }
  };
  kill();
}

// ---- test cases over POST /v1/execute ----

function addCase(stdin = '', expected = ''): void {
  const n = ui.cases.children.length + 1;
  const box = document.createElement('fieldset');
  box.className = 'case';
  const legend = document.createElement('legend');
  legend.textContent = `Test case ${n}`;
  const field = (label: string, value: string, cls: string): HTMLLabelElement => {
    const l = document.createElement('label');
    l.textContent = label;
    const t = document.createElement('textarea');
    t.rows = 2;
    t.className = cls;
    t.spellcheck = false;
    t.value = value;
    l.append(t);
    return l;
  };
  const verdict = document.createElement('p');
  verdict.className = 'verdict';
  verdict.setAttribute('aria-live', 'polite');
  const remove = document.createElement('button');
  remove.type = 'button';
  remove.textContent = `Remove test case ${n}`;
  remove.addEventListener('click', () => box.remove());
  box.append(
    legend,
    field('Input', stdin, 'case-stdin'),
    field('Expected output', expected, 'case-expected'),
    verdict,
    remove,
  );
  ui.cases.append(box);
}

function verdictText(c: CaseResult): string {
  if (c.passed) return 'Passed';
  const why = c.verdict ?? c.status;
  const d = c.firstDifference;
  const where =
    d === undefined
      ? ''
      : ` (line ${d.line}: expected ${JSON.stringify(d.expected)}, got ${JSON.stringify(d.actual)})`;
  const extra = c.message ?? c.checkerMessage;
  return `Failed: ${why}${where}${extra !== undefined ? ` — ${extra}` : ''}`;
}

async function runTests(): Promise<void> {
  const runtime = selected();
  const boxes = [...ui.cases.querySelectorAll<HTMLFieldSetElement>('.case')];
  if (runtime === undefined) {
    ui.testsSummary.textContent = 'Pick a language first (the languages need the API key).';
    return;
  }
  if (boxes.length === 0) {
    ui.testsSummary.textContent = 'Add a test case first.';
    return;
  }
  const value = (box: Element, cls: string): string =>
    box.querySelector<HTMLTextAreaElement>(`.${cls}`)?.value ?? '';
  for (const box of boxes) {
    const v = box.querySelector('.verdict');
    if (v !== null) {
      v.textContent = 'Running…';
      v.className = 'verdict';
    }
  }
  ui.testsSummary.textContent = 'Running the tests…';
  setRunning(true);
  ui.stop.disabled = true;
  try {
    const result = (await api('/v1/execute', {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({
        language: runtime.language,
        version: runtime.version,
        files: [{ content: editor.state.doc.toString() }],
        testCases: boxes.map((b) => ({
          stdin: value(b, 'case-stdin'),
          expectedOutput: value(b, 'case-expected'),
        })),
      }),
    })) as ExecuteResult;
    (result.testCases ?? []).forEach((c) => {
      const v = boxes[c.index]?.querySelector('.verdict');
      if (v === null || v === undefined) return;
      v.textContent = verdictText(c);
      v.className = `verdict ${c.passed ? 'pass' : 'fail'}`;
    });
    const s = result.summary;
    ui.testsSummary.textContent =
      s === undefined ? describe(result) : `${s.passed} of ${s.total} passed (${result.status}).`;
  } catch (err) {
    ui.testsSummary.textContent =
      (err as Error).message === 'unauthorized'
        ? 'Not run: an API key is needed.'
        : `Not run: ${(err as Error).message}`;
  } finally {
    setRunning(false);
  }
}

// ---- wiring ----

ui.key.value = apiKey();
ui.keyForm.addEventListener('submit', (ev) => {
  ev.preventDefault();
  localStorage.setItem(KEY_STORAGE, ui.key.value.trim());
  void loadRuntimes();
});
ui.language.addEventListener('change', () => setLanguage(ui.language.value, true));
ui.sample.addEventListener('click', () => setLanguage(ui.language.value, true));
ui.run.addEventListener('click', run);
ui.stop.addEventListener('click', stop);
ui.inputForm.addEventListener('submit', (ev) => {
  ev.preventDefault();
  if (current === null || !current.stdinOpen) return;
  const line = `${ui.inputLine.value}\n`;
  send({ type: 'stdin', data: line });
  appendOutput(line, 'stdin');
  ui.inputLine.value = '';
});
ui.eof.addEventListener('click', endStdin);
ui.addCase.addEventListener('click', () => addCase());
ui.runTests.addEventListener('click', () => void runTests());
void loadRuntimes();
