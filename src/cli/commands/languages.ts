import type { Command } from '@commander-js/extra-typings';
import { LanguageRegistry } from '../../languages/index.js';

/** `runner languages`: the languages this tree defines. */
export function registerLanguagesCommand(program: Command): void {
  program
    .command('languages')
    .description('list the languages defined in languages/ (name, version, aliases)')
    .option('--json', 'print JSON')
    .action((opts) => {
      const registry = LanguageRegistry.fromDir();
      const rows = registry.list().map(({ definition: d }) => ({
        name: d.name,
        version: d.version,
        aliases: d.aliases,
        compiled: d.compile !== null,
        packages: d.packages,
      }));
      if (opts.json) {
        process.stdout.write(`${JSON.stringify(rows, null, 2)}\n`);
        return;
      }
      for (const r of rows) {
        process.stdout.write(
          `${r.name.padEnd(12)} ${r.version.padEnd(10)} ${r.compiled ? 'compiled ' : 'interpreted'} ${r.aliases.join(', ')}\n`,
        );
      }
    });
}
