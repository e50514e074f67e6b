import { NotFoundError, RequestInvalidError, RunnerError } from '../../errors.js';
import { SANDBOX_DIR } from '../../protocol/index.js';
import { CELL_LANGUAGES, type CellEvent, type CellLanguage } from '../../sandbox/index.js';
import type { ApiInstance } from '../context.js';
import { writeWithRoom } from '../events.js';
import {
  IN_SANDBOX,
  objectBody,
  optString,
  stringRecord,
  targetOf,
  type E2bDeps,
} from './shared.js';

/** The names E2B clients give a language, as our cell languages. */
const CELL_NAMES: Readonly<Record<string, CellLanguage>> = {
  python: 'python',
  python3: 'python',
  py: 'python',
  javascript: 'javascript',
  js: 'javascript',
  node: 'javascript',
  nodejs: 'javascript',
};

function cellLanguage(name: string): CellLanguage {
  const lang = CELL_NAMES[name.toLowerCase()];
  if (lang !== undefined) return lang;
  if (/^(ts|typescript|deno)$/i.test(name))
    throw new RequestInvalidError('TypeScript cells are not supported: use javascript');
  throw new RequestInvalidError(`cells run in python or javascript, not ${JSON.stringify(name)}`);
}

/**
 * A context is a cell language here: every context of one language shares the sandbox's one
 * interpreter of it, so its id is the language's name (`python`, `javascript`).
 */
function contextLanguage(id: string): CellLanguage {
  const lang = CELL_LANGUAGES.find((l) => l === id);
  if (lang === undefined) throw new NotFoundError(`context ${JSON.stringify(id)} not found`);
  return lang;
}

const contextView = (language: CellLanguage, cwd: string = SANDBOX_DIR) => ({
  id: language,
  language,
  cwd,
});

/** One line of the `/execute` answer for a cell event (the SDK parses every line as JSON). */
function eventLine(event: CellEvent): unknown {
  switch (event.type) {
    case 'stdout':
    case 'stderr':
      return { type: event.type, text: event.text, timestamp: new Date().toISOString() };
    case 'result': {
      const { isMainResult, ...formats } = event.result;
      return { type: 'result', is_main_result: isMainResult, ...formats };
    }
    case 'error':
      return { type: 'error', ...event.error };
  }
}

/**
 * E2B's code interpreter (port 49999): `/execute` runs a cell in the engine's interpreter and
 * streams its events as NDJSON; the context routes name the cell languages (docs/e2b.md).
 */
export function registerInterpreterRoutes(app: ApiInstance, deps: E2bDeps): void {
  app.post('/execute', IN_SANDBOX, async (req, reply) => {
    const t = targetOf(req, deps.tokens);
    const body = objectBody(req.body);
    const code = optString(body, 'code');
    if (code === undefined) throw new RequestInvalidError('code is required');
    const contextId = optString(body, 'context_id');
    const languageName = optString(body, 'language');
    const language =
      contextId !== undefined
        ? contextLanguage(contextId)
        : languageName !== undefined
          ? cellLanguage(languageName)
          : undefined;
    const envs = stringRecord(body.env_vars, 'env_vars');
    const svc = deps.sandboxes();
    svc.get(t.id, t.owner); // a missing sandbox is a 404 before the 200 goes out

    // The 200 goes out now: the SDK's request timeout runs until the headers arrive.
    reply.hijack();
    const res = reply.raw;
    res.writeHead(200, { 'content-type': 'application/x-ndjson' });
    let closed = false;
    res.once('close', () => (closed = true));
    const write = async (line: unknown): Promise<void> => {
      if (closed) return;
      await writeWithRoom(res, `${JSON.stringify(line)}\n`);
    };
    let chain = Promise.resolve();
    const onEvent = (event: CellEvent): Promise<void> => {
      chain = chain.then(() => write(eventLine(event)));
      return chain;
    };
    try {
      const outcome = await svc.runCell(
        t.id,
        t.owner,
        {
          code,
          ...(language !== undefined && { language }),
          ...(envs !== undefined && { envs }),
        },
        onEvent,
      );
      await chain;
      await write({ type: 'number_of_executions', execution_count: outcome.executionCount });
      await write({ type: 'end_of_execution' });
    } catch (err) {
      // After the 200 a failure of ours can only be told as an error of the cell.
      await chain;
      if (!(err instanceof RunnerError)) req.log.error({ err }, 'E2B cell failed');
      await write({
        type: 'error',
        name: err instanceof RunnerError ? err.code : 'InternalError',
        value: err instanceof RunnerError ? err.message : 'internal error',
        traceback: '',
      });
      await write({ type: 'unexpected_end_of_execution' });
    }
    res.end();
  });

  // The SDK sends no access token to the context routes; they touch no sandbox (a context is
  // a language), so they need none. A token that is sent must be right.
  const checkToken = (headers: Record<string, unknown>): void => {
    const id = headers['e2b-sandbox-id'];
    const token = headers['x-access-token'];
    if (typeof token === 'string' && typeof id === 'string') deps.tokens.verify(id, token);
  };

  app.post('/contexts', IN_SANDBOX, (req) => {
    checkToken(req.headers);
    const body = objectBody(req.body);
    // `cwd` is echoed, not applied: a cell runs in the sandbox folder.
    const cwd = optString(body, 'cwd');
    return contextView(cellLanguage(optString(body, 'language') ?? 'python'), cwd);
  });

  app.get('/contexts', IN_SANDBOX, (req) => {
    checkToken(req.headers);
    return CELL_LANGUAGES.map((l) => contextView(l));
  });

  app.delete<{ Params: { id: string } }>('/contexts/:id', IN_SANDBOX, async (req, reply) => {
    checkToken(req.headers);
    contextLanguage(req.params.id);
    return reply.code(204).send();
  });

  // A restart ends the sandbox's interpreter of that language when the call names its sandbox
  // with a valid token; the SDK sends none here, so from it a restart keeps the interpreter
  // (docs/e2b.md).
  app.post<{ Params: { id: string } }>('/contexts/:id/restart', IN_SANDBOX, async (req, reply) => {
    const language = contextLanguage(req.params.id);
    const id = req.headers['e2b-sandbox-id'];
    const token = req.headers['x-access-token'];
    if (typeof id === 'string' && typeof token === 'string') {
      const owner = deps.tokens.verify(id, token);
      await deps.sandboxes().restartInterpreter(id, owner, language);
    }
    return reply.code(204).send();
  });
}
