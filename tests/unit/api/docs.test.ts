import { readFileSync } from 'node:fs';
import { describe, expect, test } from 'vitest';
import { generateOpenApi } from '../../../src/api/openapi.js';
import { configurationDoc, errorsDoc, formatSettings } from '../../../src/cli/commands/serve.js';
import { ERROR_CATALOGUE } from '../../../src/errors.js';
import { SETTINGS } from '../../../src/config/settings.js';
import { testSettings } from './helpers.js';

const read = (path: string): string =>
  readFileSync(new URL(`../../../${path}`, import.meta.url), 'utf8');

describe('generated documents are current', () => {
  test('docs/openapi.json matches the route schemas (run `npm run openapi` when this fails)', async () => {
    const current = await generateOpenApi();
    const committed = JSON.parse(read('docs/openapi.json')) as unknown;
    expect(committed).toEqual(current);
  });

  test('the OpenAPI document covers the three APIs', async () => {
    const doc = (await generateOpenApi()) as { paths: Record<string, Record<string, unknown>> };
    for (const path of [
      '/v1/execute',
      '/v1/jobs',
      '/v1/jobs/{id}',
      '/v1/runtimes',
      '/v1/limits',
      '/v1/sandboxes',
      '/v1/sandboxes/{id}',
      '/v1/sandboxes/{id}/cells',
      '/v1/sandboxes/{id}/commands',
      '/v1/sandboxes/{id}/files',
      '/api/v2/execute',
      '/api/v2/runtimes',
      '/api/v2/packages',
      '/submissions',
      '/submissions/{token}',
      '/submissions/batch',
      '/languages',
      '/languages/{id}',
      '/statuses',
      '/about',
      '/config_info',
      '/workers',
      '/healthz',
      '/readyz',
      '/metrics',
    ]) {
      expect(doc.paths, path).toHaveProperty([path]);
    }
  });

  test('docs/configuration.md is generated from SETTINGS (run `npm run docs:config` when this fails)', () => {
    const doc = read('docs/configuration.md');
    expect(doc).toBe(configurationDoc());
    for (const spec of SETTINGS) expect(doc).toContain(`\`${spec.env}\``);
  });

  test('docs/errors.md lists every error code (run `npm run docs:errors` when this fails)', () => {
    const doc = read('docs/errors.md');
    expect(doc).toBe(errorsDoc());
    for (const code of Object.keys(ERROR_CATALOGUE)) expect(doc).toContain(`| \`${code}\` |`);
  });

  test('docs/api.md shows a curl example for every endpoint (a WebSocket one: new WebSocket)', async () => {
    const lines = read('docs/api.md').split('\n');
    const curls = lines.filter((line) => line.includes('curl '));
    type Operation = { responses?: Record<string, unknown> };
    const doc = (await generateOpenApi()) as {
      paths: Record<string, Record<string, Operation>>;
    };
    const endpoints = Object.entries(doc.paths).flatMap(([path, methods]) =>
      Object.entries(methods)
        // A WebSocket route (it answers 101) has a browser example instead: curl cannot talk it.
        .filter(([, op]) => op.responses?.['101'] === undefined)
        .map(([m]) => [m.toUpperCase(), path] as const),
    );
    const sockets = Object.entries(doc.paths).filter(
      ([, methods]) => methods.get?.responses?.['101'] !== undefined,
    );
    expect(sockets.map(([path]) => path).sort()).toEqual(['/api/v2/connect', '/v1/connect']);
    for (const [path] of sockets) {
      const found = lines.some((line) => line.includes('new WebSocket(') && line.includes(path));
      expect(found, `WebSocket ${path}`).toBe(true);
    }
    expect(endpoints.length).toBeGreaterThan(10);
    for (const [verb, path] of [...endpoints, ['GET', '/openapi.json'] as const]) {
      // A path parameter is written as an example value (<token>, 0b9d…): match up to it.
      const url = `$R${path.replace(/\{[a-z]+\}.*$/, '')}`;
      // A POST example sends a body (-d); a GET example does not.
      const found = curls.some(
        (line) => line.includes(url) && (verb === 'POST') === line.includes(' -d '),
      );
      expect(found, `${verb} ${path}`).toBe(true);
    }
  });

  test('--print-config hides API keys', () => {
    const text = formatSettings(testSettings({ apiKeys: ['secret-1', 'secret-2'] }));
    expect(text).toContain('RUNNER_API_KEYS=<2 key(s) hidden>');
    expect(text).not.toContain('secret-1');
  });
});
