import type { Command } from '@commander-js/extra-typings';
import closeWithGrace from 'close-with-grace';
import { generateOpenApi } from '../../api/openapi.js';
import { startServer } from '../../api/server.js';
import { loadSettings, SETTINGS, type SettingSpec, type Settings } from '../../config/settings.js';

/** How a `secret: true` row is printed: whether it is set (and how many keys), never the value. */
function masked(value: unknown): unknown {
  if (Array.isArray(value)) return value.length === 0 ? '' : `<${value.length} key(s) hidden>`;
  return value === null || value === '' ? '' : '<hidden>';
}

/**
 * The settings as `KEY=value` lines with their descriptions; rows marked `secret` are masked
 * (lists shown only as a count).
 */
export function formatSettings(settings: Settings): string {
  const values = settings as unknown as Record<string, unknown>;
  const lines: string[] = [];
  for (const spec of SETTINGS as readonly SettingSpec[]) {
    let value = values[spec.key];
    if (spec.secret === true) value = masked(value);
    const shown = Array.isArray(value)
      ? value.join(',')
      : typeof value === 'string' || typeof value === 'number' || typeof value === 'boolean'
        ? String(value)
        : '';
    lines.push(`# ${spec.description}${spec.unit !== undefined ? ` (${spec.unit})` : ''}`);
    lines.push(`${spec.env}=${shown}`);
  }
  return `${lines.join('\n')}\n`;
}

const cell = (s: string): string => s.replace(/\|/g, '\\|');

/** docs/configuration.md, generated from the SETTINGS table (`npm run docs:config`). */
export function configurationDoc(): string {
  const rows = SETTINGS.map((spec) => {
    const d = spec.default;
    const shown = Array.isArray(d)
      ? d.length === 0
        ? '(empty)'
        : d.join(',')
      : d === null
        ? '(see description)'
        : d === ''
          ? '(empty)'
          : String(d);
    const kind = spec.kind === 'enum' && 'values' in spec ? spec.values.join(' | ') : spec.kind;
    const unit = 'unit' in spec ? spec.unit : '';
    return `| \`${spec.env}\` | \`${spec.key}\` | ${cell(kind)} | ${cell(unit)} | \`${cell(shown)}\` | ${cell(spec.description)} |`;
  });
  return [
    '# Configuration',
    '',
    '<!-- Generated from SETTINGS in src/config/settings.ts by `npm run docs:config`; a test fails when it is stale. -->',
    '',
    'Every setting has an environment variable. Values come from the environment first, then from',
    'the JSON file named by `RUNNER_CONFIG` (keys are the names in the second column; an unknown',
    'key is an error), then the defaults. They are validated at start (a bad value stops the',
    'service with `CONFIG_INVALID`) and frozen. `runner serve --print-config` prints the values in',
    'effect (secrets such as API keys and the S3 secret key masked); `runner serve --host H --port P`',
    'overrides those two.',
    '',
    '| variable | file key | type | unit | default | description |',
    '|---|---|---|---|---|---|',
    ...rows,
    '',
    'Lists are comma-separated in the environment and JSON arrays in the file.',
    '',
  ].join('\n');
}

/** `runner serve`: the HTTP service (native /v1 and Piston-compatible /api/v2). */
export function registerServeCommand(program: Command): void {
  program
    .command('serve')
    .description(
      'start the HTTP service: the native API (/v1) and the Piston-compatible API (/api/v2)',
    )
    .option('--host <host>', 'address to listen on (RUNNER_HOST)')
    .option('--port <port>', 'TCP port (RUNNER_PORT)')
    .option('--print-config', 'print the validated configuration and exit')
    .option('--print-openapi', 'print the OpenAPI document and exit')
    .option('--print-config-doc', 'print docs/configuration.md (the settings table) and exit')
    .addHelpText(
      'after',
      '\nEvery setting is an environment variable (or a key of the JSON file named by RUNNER_CONFIG); see docs/configuration.md.\nSIGTERM or SIGINT drains: running and queued jobs finish (up to RUNNER_DRAIN_TIMEOUT_MS), then it exits.',
    )
    .action(async (opts) => {
      const settings = loadSettings(process.env, { host: opts.host, port: opts.port });
      if (opts.printOpenapi) {
        process.stdout.write(`${JSON.stringify(await generateOpenApi(), null, 2)}\n`);
        return;
      }
      if (opts.printConfigDoc) {
        process.stdout.write(configurationDoc());
        return;
      }
      if (opts.printConfig) {
        process.stdout.write(formatSettings(settings));
        return;
      }
      const server = await startServer(settings);
      closeWithGrace({ delay: settings.drainTimeoutMs }, async ({ signal, err }) => {
        if (err !== undefined) server.app.log.error({ err }, 'fatal error; draining');
        else server.app.log.info(`${signal ?? 'close'}: draining`);
        await server.close();
      });
    });
}
