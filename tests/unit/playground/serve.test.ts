import { mkdtempSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { PLAYGROUND_FILES, loadPlaygroundAssets } from '../../../src/playground/index.js';
import { makeApp, type TestApp } from '../api/helpers.js';

/** The directives of a Content-Security-Policy header, by name. */
function directives(csp: string): Map<string, string[]> {
  return new Map(
    csp.split(';').map((d) => {
      const [name = '', ...values] = d.trim().split(/\s+/);
      return [name, values];
    }),
  );
}

describe('the playground is served at / (from source: bundled on the first request)', () => {
  let t: TestApp;
  let dataDir: string;

  beforeAll(async () => {
    dataDir = mkdtempSync(join(tmpdir(), 'rc-playground-'));
    t = await makeApp({ settings: { apiKeys: ['k-play'], dataDir } });
  });
  afterAll(async () => {
    await t.close();
    rmSync(dataDir, { recursive: true, force: true });
  });

  it('serves the page without a key, as HTML under a CSP with no inline script', async () => {
    const res = await t.app.inject({ method: 'GET', url: '/' });
    expect(res.statusCode).toBe(200);
    expect(res.headers['content-type']).toBe('text/html; charset=utf-8');
    expect(res.headers['x-content-type-options']).toBe('nosniff');
    const csp = directives(String(res.headers['content-security-policy']));
    expect(csp.get('default-src')).toEqual(["'none'"]);
    expect(csp.get('script-src')).toEqual(["'self'"]);
    expect(csp.get('connect-src')).toEqual(["'self'"]);
    expect(csp.get('frame-ancestors')).toEqual(["'none'"]);
    // The styles CodeMirror injects carry this response's nonce, given to the page in a meta.
    const style = csp.get('style-src') ?? [];
    expect(style[0]).toBe("'self'");
    const nonce = /^'nonce-([A-Za-z0-9+/=]{20,})'$/.exec(style[1] ?? '')?.[1];
    expect(nonce).toBeDefined();
    expect(res.body).toContain(`<meta name="style-nonce" content="${nonce}" />`);
    expect(String(res.headers['content-security-policy'])).not.toContain('unsafe');
    // Every script is a file of ours: no inline code, nothing from another origin.
    const scripts = [...res.body.matchAll(/<script\b([^>]*)>([\s\S]*?)<\/script>/g)];
    expect(scripts.length).toBe(1);
    for (const [, attrs, body] of scripts) {
      expect(attrs).toContain('src="/playground/main.js"');
      expect(body?.trim()).toBe('');
    }
    expect(res.body).not.toMatch(/https?:\/\//);
    // A new nonce per response.
    const again = await t.app.inject({ method: 'GET', url: '/' });
    expect(again.headers['content-security-policy']).not.toBe(
      res.headers['content-security-policy'],
    );
  });

  it('serves the bundle and the style with their content types, without a key', async () => {
    const js = await t.app.inject({ method: 'GET', url: '/playground/main.js' });
    expect(js.statusCode).toBe(200);
    expect(js.headers['content-type']).toBe('text/javascript; charset=utf-8');
    expect(js.headers['x-content-type-options']).toBe('nosniff');
    // The bundle holds CodeMirror (no import left for the browser to resolve).
    expect(js.body.includes('cm-editor')).toBe(true);
    expect(/from\s*["'](?:codemirror|@codemirror\/)/.test(js.body)).toBe(false);
    const css = await t.app.inject({ method: 'GET', url: '/playground/style.css' });
    expect(css.statusCode).toBe(200);
    expect(css.headers['content-type']).toBe('text/css; charset=utf-8');
    // Built once into the data dir's cache, under a key of the sources.
    const cache = join(dataDir, 'build', 'playground');
    const entries = readdirSync(cache);
    expect(entries).toHaveLength(1);
    expect(readdirSync(join(cache, entries[0] ?? '')).sort()).toEqual([...PLAYGROUND_FILES].sort());
  });

  it('leaves the APIs the page calls behind their keys', async () => {
    const res = await t.app.inject({ method: 'GET', url: '/api/v2/runtimes' });
    expect(res.statusCode).toBe(401);
    const ok = await t.app.inject({
      method: 'GET',
      url: '/api/v2/runtimes',
      headers: { authorization: 'Bearer k-play' },
    });
    expect(ok.statusCode).toBe(200);
  });
});

describe('loadPlaygroundAssets', () => {
  it('takes a complete built folder as it is (the compiled tree), with no build', async () => {
    const built = mkdtempSync(join(tmpdir(), 'rc-playground-built-'));
    const cacheDir = join(built, 'cache');
    try {
      for (const f of PLAYGROUND_FILES) writeFileSync(join(built, f), `built ${f}`);
      const assets = await loadPlaygroundAssets({ builtDir: built, cacheDir });
      expect(assets.get('main.js')?.toString()).toBe('built main.js');
      expect(readdirSync(built)).not.toContain('cache');
    } finally {
      rmSync(built, { recursive: true, force: true });
    }
  });
});
