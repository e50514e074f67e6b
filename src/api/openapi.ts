import { loadSettings } from '../config/index.js';
import { LanguageRegistry } from '../languages/index.js';
import { InternalError } from '../errors.js';
import { prepareJob } from '../pool/index.js';
import { JobStore } from '../queue/index.js';
import { buildApp } from './app.js';
import type { ApiEngine } from './service.js';

/**
 * The OpenAPI document, generated from the route schemas. Builds the app on an engine that
 * runs nothing (the document does not depend on the engine or the settings), so it needs no
 * images and no VM. docs/openapi.json is this, written by `npm run openapi`.
 */
export async function generateOpenApi(): Promise<Record<string, unknown>> {
  const languages = LanguageRegistry.fromDir();
  const idle: ApiEngine = {
    languages,
    prepare: (request, id) => prepareJob(request, languages, id === undefined ? {} : { id }),
    pool: {
      stats: () => ({
        live: 0,
        ready: {},
        busy: 0,
        starting: 0,
        capacity: 1,
        hits: 0,
        misses: 0,
        failures: 0,
        warmUps: 0,
      }),
    },
    run: () => Promise.reject(new InternalError('this engine runs nothing')),
    runtimes: () => Promise.resolve(new Map()),
  };
  const jobStore = new JobStore(':memory:');
  const { app } = buildApp({ engine: idle, settings: loadSettings({}), jobStore });
  try {
    await app.ready();
    return app.swagger() as unknown as Record<string, unknown>;
  } finally {
    await app.close();
    jobStore.close();
  }
}
