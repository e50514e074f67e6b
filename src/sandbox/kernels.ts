import type { CellLanguage } from './types.js';

/**
 * The interpreters kept alive in a sandbox for code cells (docs/sandboxes.md, "Code cells").
 * Each is one program, passed on its command line (nothing is installed in the image for it),
 * that listens on a Unix socket in the guest and runs one cell per connection in one
 * long-lived namespace. A cell's client sends one JSON line, `{code, env, timeoutMs, reseed}`,
 * then ends its side; the interpreter answers with JSON lines as the cell runs:
 * `{type:'stdout'|'stderr', text}`, `{type:'result', result}`, `{type:'error', error}`, and
 * last `{type:'end', executionCount}`. A request `{exit: true}` ends the interpreter (a
 * restart: the next cell starts a fresh one). A cell past its `timeoutMs` is interrupted
 * (KeyboardInterrupt in python, the script's timeout in JavaScript).
 */

/** How long a cell waits for its interpreter to listen (at most; the loop sleeps 50 ms). */
export const CELL_CONNECT_WAIT_MS = 60_000;

/** Where the interpreter of a language listens in the guest. */
export function kernelSocket(language: CellLanguage): string {
  return `/tmp/.runner-kernels/${language}.sock`;
}

const PYTHON_KERNEL = String.raw`
import ast, base64, io, json, os, socket, sys, threading, traceback, warnings, _thread
os.environ.setdefault('MPLBACKEND', 'Agg')
warnings.filterwarnings('ignore', message='.*non-GUI backend.*')
warnings.filterwarnings('ignore', message='.*non-interactive.*')
path = sys.argv[1]
os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
try:
    os.unlink(path)
except FileNotFoundError:
    pass
server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
server.bind(path)
server.listen(16)
ns = {'__name__': '__main__', '__builtins__': __builtins__}
count = 0

class Stream(io.TextIOBase):
    def __init__(self, emit, name):
        self.emit, self.name = emit, name
    def writable(self):
        return True
    def write(self, text):
        if text:
            self.emit({'type': self.name, 'text': text})
        return len(text)

def rich(value, main):
    out = {'isMainResult': main}
    for attr, key in (('_repr_html_', 'html'), ('_repr_markdown_', 'markdown'), ('_repr_svg_', 'svg'),
                      ('_repr_png_', 'png'), ('_repr_jpeg_', 'jpeg'), ('_repr_latex_', 'latex'),
                      ('_repr_json_', 'json'), ('_repr_javascript_', 'javascript')):
        fn = getattr(value, attr, None)
        if callable(fn):
            try:
                got = fn()
            except Exception:
                got = None
            if isinstance(got, tuple):
                got = got[0]
            if got is not None:
                if isinstance(got, bytes):
                    got = base64.b64encode(got).decode()
                out[key] = got
    try:
        out['text'] = repr(value)
    except Exception as e:
        out['text'] = '<unprintable %s: %s>' % (type(value).__name__, e)
    return out

def figures(emit):
    plt = sys.modules.get('matplotlib.pyplot')
    if plt is None:
        return
    for num in plt.get_fignums():
        fig = plt.figure(num)
        buf = io.BytesIO()
        fig.savefig(buf, format='png', bbox_inches='tight')
        emit({'type': 'result', 'result': {'isMainResult': False, 'text': repr(fig),
              'png': base64.b64encode(buf.getvalue()).decode()}})
    plt.close('all')

def run(conn, request):
    global count
    lock = threading.Lock()
    def emit(event):
        data = (json.dumps(event) + '\n').encode()
        with lock:
            try:
                conn.sendall(data)
            except OSError:
                pass
    if request.get('reseed'):
        import random
        random.seed()
        np = sys.modules.get('numpy')
        if np is not None:
            np.random.seed()
    saved_env = dict(os.environ)
    os.environ.update(request.get('env') or {})
    saved = sys.stdout, sys.stderr
    sys.stdout, sys.stderr = Stream(emit, 'stdout'), Stream(emit, 'stderr')
    count += 1
    timer = None
    timeout = request.get('timeoutMs')
    state = {'timedOut': False}
    if timeout:
        def interrupt():
            state['timedOut'] = True
            _thread.interrupt_main()
        timer = threading.Timer(timeout / 1000.0, interrupt)
        timer.daemon = True
        timer.start()
    try:
        tree = ast.parse(request.get('code', ''), '<cell>', 'exec')
        last = None
        if tree.body and isinstance(tree.body[-1], ast.Expr):
            last = ast.Expression(tree.body.pop().value)
        exec(compile(tree, '<cell>', 'exec'), ns)
        value = eval(compile(last, '<cell>', 'eval'), ns) if last is not None else None
        if timer is not None:
            timer.cancel()
        sys.stdout.flush()
        figures(emit)
        if value is not None:
            ns['_'] = value
            emit({'type': 'result', 'result': rich(value, True)})
    except BaseException as e:
        if timer is not None:
            timer.cancel()
        name = type(e).__name__
        value = str(e)
        if state['timedOut'] and isinstance(e, KeyboardInterrupt):
            name, value = 'TimeoutError', 'the cell ran past its time limit of %d ms' % timeout
        tb = e.__traceback__
        while tb is not None and tb.tb_frame.f_code.co_filename != '<cell>':
            tb = tb.tb_next
        lines = traceback.format_exception(type(e), e, tb) if tb is not None else traceback.format_exception_only(type(e), e)
        try:
            figures(emit)
        except Exception:
            pass
        emit({'type': 'error', 'error': {'name': name, 'value': value, 'traceback': ''.join(lines)}})
    finally:
        sys.stdout, sys.stderr = saved
        os.environ.clear()
        os.environ.update(saved_env)
    emit({'type': 'end', 'executionCount': count})

while True:
    conn, _ = server.accept()
    try:
        chunks = []
        while True:
            chunk = conn.recv(65536)
            if not chunk:
                break
            chunks.append(chunk)
        request = json.loads(b''.join(chunks) or b'{}')
        if request.get('exit'):
            conn.close()
            os.unlink(path)
            os._exit(0)
        run(conn, request)
    except Exception as e:
        try:
            conn.sendall((json.dumps({'type': 'error', 'error': {'name': type(e).__name__, 'value': str(e), 'traceback': ''}}) + '\n').encode())
        except OSError:
            pass
    finally:
        conn.close()
`;

const JAVASCRIPT_KERNEL = String.raw`
const fs = require('fs'), net = require('net'), path = require('path'), util = require('util'), vm = require('vm');
const file = process.argv[1];
fs.mkdirSync(path.dirname(file), { recursive: true, mode: 0o700 });
try { fs.unlinkSync(file); } catch {}
let count = 0;
let emit = () => {};
const log = (name) => (...args) => emit({ type: name, text: util.format(...args) + '\n' });
const cellConsole = { log: log('stdout'), info: log('stdout'), debug: log('stdout'), warn: log('stderr'), error: log('stderr'),
  dir: (v) => emit({ type: 'stdout', text: util.inspect(v) + '\n' }), table: log('stdout') };
globalThis.console = Object.assign(Object.create(console), cellConsole);
globalThis.require = require;
globalThis.module = module;
function cellStack(stack) {
  const lines = String(stack || '').split('\n');
  const cut = lines.findIndex((l) => l.includes('runInThisContext'));
  return (cut < 0 ? lines : lines.slice(0, cut)).join('\n');
}
function errorOf(e, timeout) {
  if (e && e.code === 'ERR_SCRIPT_EXECUTION_TIMEOUT')
    return { name: 'TimeoutError', value: 'the cell ran past its time limit of ' + timeout + ' ms', traceback: '' };
  if (e instanceof Error || (e && typeof e === 'object' && 'stack' in e))
    return { name: e.name || 'Error', value: e.message || String(e), traceback: cellStack(e.stack) };
  return { name: 'Error', value: util.inspect(e), traceback: '' };
}
async function run(socket, request) {
  emit = (event) => { if (!socket.destroyed) socket.write(JSON.stringify(event) + '\n'); };
  const savedEnv = { ...process.env };
  Object.assign(process.env, request.env || {});
  count++;
  try {
    let value = vm.runInThisContext(request.code || '', { filename: '<cell>', timeout: request.timeoutMs || undefined });
    if (value && typeof value.then === 'function') value = await value;
    if (value !== undefined) emit({ type: 'result', result: { isMainResult: true, text: util.inspect(value) } });
  } catch (e) {
    emit({ type: 'error', error: errorOf(e, request.timeoutMs) });
  } finally {
    for (const k of Object.keys(process.env)) if (!(k in savedEnv)) delete process.env[k];
    Object.assign(process.env, savedEnv);
  }
  emit({ type: 'end', executionCount: count });
  socket.end();
}
let busy = Promise.resolve();
net.createServer({ allowHalfOpen: true }, (socket) => {
  const chunks = [];
  socket.on('data', (c) => chunks.push(c));
  socket.on('error', () => {});
  socket.on('end', () => {
    busy = busy.then(() => {
      let request;
      try { request = JSON.parse(Buffer.concat(chunks).toString() || '{}'); }
      catch (e) { emit = (ev) => socket.write(JSON.stringify(ev) + '\n'); emit({ type: 'error', error: errorOf(e) }); socket.end(); return; }
      if (request.exit) { try { fs.unlinkSync(file); } catch {} process.exit(0); }
      return run(socket, request);
    });
  });
}).listen(file);
`;

/** The argv that starts a language's interpreter, and its seccomp family. */
export function kernelCommand(language: CellLanguage): {
  argv: string[];
  seccomp: 'default' | 'node';
} {
  if (language === 'python')
    return {
      argv: ['python3', '-u', '-c', PYTHON_KERNEL, kernelSocket(language)],
      seccomp: 'default',
    };
  return { argv: ['node', '-e', JAVASCRIPT_KERNEL, kernelSocket(language)], seccomp: 'node' };
}

/**
 * The argv of one cell's client: waits (up to CELL_CONNECT_WAIT_MS) for the interpreter's
 * socket, then connects its stdin and stdout to it. Exit 97: the socket never came. (Node.js
 * takes 5-10 s to start under TCG in an image whose page cache has never read it.)
 */
export function cellClientCommand(
  language: CellLanguage,
  waitMs: number = CELL_CONNECT_WAIT_MS,
): string[] {
  const script =
    `i=0; while [ ! -S "$1" ]; do i=$((i+1)); [ "$i" -gt ${Math.ceil(waitMs / 50)} ] && exit 97; sleep 0.05; done; ` +
    'exec socat -t 86400 - "UNIX-CONNECT:$1"';
  return ['/bin/sh', '-c', script, 'sh', kernelSocket(language)];
}

/** The command that tells whether a language's interpreter is installed (exit 0). */
export function kernelProbe(language: CellLanguage): string {
  return language === 'python' ? 'command -v python3' : 'command -v node';
}
