/**
 * The playground: a page served at `/` that edits code (CodeMirror 6), runs it over the native
 * WebSocket (`/v1/connect`) with the output streamed, and runs test cases (`POST /v1/execute`).
 * The page and its assets are public; the APIs it calls keep their API keys. See
 * docs/playground.md.
 */
import { spawn } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { existsSync, mkdirSync, readdirSync, readFileSync, renameSync, rmSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import type { FastifyInstance, FastifyReply } from 'fastify';
import { InternalError } from '../errors.js';

/** The files of a built playground, as `scripts/bundle-playground.mjs` writes them. */
export const PLAYGROUND_FILES = ['index.html', 'main.js', 'style.css'] as const;

/** Where the page's script and style are served (the page itself is at `/`). */
export const PLAYGROUND_ASSET_PREFIX = '/playground/';

/** What the nonce placeholder in index.html is replaced with on each response. */
const NONCE_PLACEHOLDER = '__STYLE_NONCE__';

/**
 * The page's Content-Security-Policy. No inline script anywhere (`script-src 'self'`); styles
 * from our own file, plus the `<style>` elements CodeMirror injects, which carry the response's
 * nonce (CodeMirror's `EditorView.cspNonce`). `connect-src 'self'` covers fetch and the
 * same-origin WebSocket (ws:/wss: of the same host, per CSP Level 3).
 */
export function playgroundCsp(nonce: string): string {
  return [
    "default-src 'none'",
    "script-src 'self'",
    `style-src 'self' 'nonce-${nonce}'`,
    "connect-src 'self'",
    "img-src 'self' data:",
    "base-uri 'none'",
    "form-action 'none'",
    "frame-ancestors 'none'",
  ].join('; ');
}

const CONTENT_TYPES: Record<string, string> = {
  'main.js': 'text/javascript; charset=utf-8',
  'style.css': 'text/css; charset=utf-8',
};

/** The built files, by name. */
type Assets = ReadonlyMap<string, Buffer>;

/** Where the playground's files come from. */
export interface PlaygroundOptions {
  /** A folder holding PLAYGROUND_FILES, already built (dist/playground/web after `npm run build`). */
  readonly builtDir?: string;
  /** Where a bundle built from source is cached (`<data dir>/build/playground`). */
  readonly cacheDir: string;
}

/** The root of this source tree (src/playground/ and dist/playground/ sit two levels below it). */
const projectRoot = (): string => resolve(fileURLToPath(new URL('../..', import.meta.url)));

/**
 * What the cached bundle is keyed by: the page's sources and the locked dependency versions,
 * so an edit or a CodeMirror upgrade makes a new bundle and an unchanged tree reuses the old one.
 */
function sourceKey(root: string): string {
  const h = createHash('sha256');
  const web = join(root, 'src', 'playground', 'web');
  for (const name of readdirSync(web).sort()) {
    h.update(name)
      .update('\0')
      .update(readFileSync(join(web, name)))
      .update('\0');
  }
  const lock = join(root, 'package-lock.json');
  if (existsSync(lock)) h.update(readFileSync(lock));
  h.update(readFileSync(join(root, 'scripts', 'bundle-playground.mjs')));
  return h.digest('hex').slice(0, 16);
}

/** Runs scripts/bundle-playground.mjs into `outDir` (the same build as `npm run build`). */
async function runBundler(root: string, outDir: string): Promise<void> {
  const script = join(root, 'scripts', 'bundle-playground.mjs');
  await new Promise<void>((done, fail) => {
    const child = spawn(process.execPath, [script, outDir], {
      cwd: root,
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    const out: Buffer[] = [];
    child.stdout.on('data', (c: Buffer) => out.push(c));
    child.stderr.on('data', (c: Buffer) => out.push(c));
    child.on('error', fail);
    child.on('close', (code) => {
      if (code === 0) done();
      else
        fail(
          new InternalError(
            `bundling the playground failed (exit ${code ?? 'signal'}): ${Buffer.concat(out).toString('utf8').trim()}`,
          ),
        );
    });
  });
}

const readAssets = (dir: string): Assets =>
  new Map(PLAYGROUND_FILES.map((f) => [f, readFileSync(join(dir, f))]));

const complete = (dir: string): boolean => PLAYGROUND_FILES.every((f) => existsSync(join(dir, f)));

/**
 * The playground's files: the built ones when there are (running the compiled tree), else a
 * bundle of the sources cached under `cacheDir/<key>/`, built the first time it is asked for
 * (running from source after scripts/setup.sh, with no build step). The build goes to a
 * private folder renamed into place, so two servers building at once do not see half a bundle.
 */
export async function loadPlaygroundAssets(options: PlaygroundOptions): Promise<Assets> {
  if (options.builtDir !== undefined && complete(options.builtDir))
    return readAssets(options.builtDir);
  const root = projectRoot();
  if (!existsSync(join(root, 'src', 'playground', 'web', 'main.ts')))
    throw new InternalError(
      'the playground is not built and its sources are not here (run npm run build)',
    );
  const dir = join(options.cacheDir, sourceKey(root));
  if (!complete(dir)) {
    mkdirSync(options.cacheDir, { recursive: true });
    const tmp = `${dir}.tmp-${process.pid}-${randomBytes(4).toString('hex')}`;
    try {
      await runBundler(root, tmp);
      try {
        renameSync(tmp, dir);
      } catch (err) {
        // Another server put the same bundle in place first: keep that one.
        if (!complete(dir)) throw err;
      }
    } finally {
      rmSync(tmp, { recursive: true, force: true });
    }
  }
  return readAssets(dir);
}

/** The built files next to this module when it runs from dist/ (dist/playground/web). */
export const defaultBuiltDir = (): string => join(dirname(fileURLToPath(import.meta.url)), 'web');

function secure(reply: FastifyReply): FastifyReply {
  return reply
    .header('x-content-type-options', 'nosniff')
    .header('referrer-policy', 'no-referrer')
    .header('cross-origin-opener-policy', 'same-origin');
}

/**
 * Registers `GET /` (the page) and `GET /playground/main.js|style.css`, all public. The files
 * are loaded (and, from source, bundled) on the first request, once per app.
 */
export function registerPlayground(app: FastifyInstance, options: PlaygroundOptions): void {
  let assets: Promise<Assets> | null = null;
  const load = (): Promise<Assets> => {
    // A failed build is not cached: the next request tries again.
    assets ??= loadPlaygroundAssets(options).catch((err: unknown) => {
      assets = null;
      throw err;
    });
    return assets;
  };
  const hide = { hide: true };

  app.get('/', { config: { public: true }, schema: hide }, async (_req, reply) => {
    const html = (await load()).get('index.html')?.toString('utf8') ?? '';
    const nonce = randomBytes(16).toString('base64');
    return secure(reply)
      .header('content-security-policy', playgroundCsp(nonce))
      .header('cache-control', 'no-store')
      .type('text/html; charset=utf-8')
      .send(html.replaceAll(NONCE_PLACEHOLDER, nonce));
  });

  for (const name of ['main.js', 'style.css'] as const) {
    app.get(
      `${PLAYGROUND_ASSET_PREFIX}${name}`,
      { config: { public: true }, schema: hide },
      async (_req, reply) => {
        const body = (await load()).get(name);
        return secure(reply)
          .header('content-security-policy', "default-src 'none'")
          .header('cache-control', 'no-cache')
          .type(CONTENT_TYPES[name] ?? 'application/octet-stream')
          .send(body);
      },
    );
  }
}
