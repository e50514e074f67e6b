import { readdirSync, readFileSync, existsSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { Compile } from 'typebox/compile';
import { LanguageInvalidError, LanguageUnknownError } from '../errors.js';
import { LanguageDefinitionSchema, type LanguageDefinition } from './schema.js';

export {
  DEFAULT_SECCOMP_FAMILY,
  LanguageDefinitionSchema,
  type LanguageDefinition,
  type StageLimitOverrides,
} from './schema.js';

const validator = Compile(LanguageDefinitionSchema);

/** The `languages/` folder of this source tree (or of an installed package). */
export function defaultLanguagesDir(): string {
  // src/languages/index.ts and dist/languages/index.js both sit two levels below the root.
  return resolve(fileURLToPath(new URL('../../languages', import.meta.url)));
}

/** A loaded language: its definition and the folder it came from (for the test program). */
export interface Language {
  readonly definition: LanguageDefinition;
  readonly dir: string;
}

/**
 * A language's own test program as one request file: under its own name when that has the
 * language's extension, else under the language's source file name (Main.java).
 */
export function testProgramFile(language: Language): { name: string; content: string } {
  const { definition, dir } = language;
  const name = definition.test.file.endsWith(`.${definition.extension}`)
    ? definition.test.file
    : definition.sourceFile;
  return { name, content: readFileSync(join(dir, definition.test.file), 'utf8') };
}

/** Parses and checks one definition; throws LANGUAGE_INVALID with the schema errors. */
export function parseLanguageDefinition(value: unknown, origin: string): LanguageDefinition {
  if (!validator.Check(value)) {
    const errors = validator
      .Errors(value)
      .slice(0, 5)
      .map((e) => `${e.instancePath || '/'} ${e.message}`)
      .join('; ');
    throw new LanguageInvalidError(`${origin}: ${errors}`);
  }
  return value;
}

/**
 * The set of languages, looked up by name or alias. Built once from a folder; immutable after.
 */
export class LanguageRegistry {
  private readonly byName = new Map<string, Language>();
  private readonly byAlias = new Map<string, Language>();

  constructor(languages: readonly Language[]) {
    for (const language of languages) {
      const { name, aliases } = language.definition;
      if (this.byName.has(name) || this.byAlias.has(name)) {
        throw new LanguageInvalidError(`language ${name} is defined twice`);
      }
      this.byName.set(name, language);
      for (const alias of aliases) {
        const holder = this.byAlias.get(alias) ?? this.byName.get(alias);
        if (holder !== undefined && holder !== language) {
          throw new LanguageInvalidError(
            `alias ${alias} is claimed by ${holder.definition.name} and ${name}`,
          );
        }
        this.byAlias.set(alias, language);
      }
    }
  }

  /** Loads every `<dir>/<name>/language.json`. */
  static fromDir(dir: string = defaultLanguagesDir()): LanguageRegistry {
    if (!existsSync(dir)) throw new LanguageInvalidError(`languages folder ${dir} does not exist`);
    const languages: Language[] = [];
    for (const entry of readdirSync(dir, { withFileTypes: true }).sort((a, b) =>
      a.name.localeCompare(b.name),
    )) {
      if (!entry.isDirectory()) continue;
      const langDir = join(dir, entry.name);
      const file = join(langDir, 'language.json');
      if (!existsSync(file)) continue;
      let raw: unknown;
      try {
        raw = JSON.parse(readFileSync(file, 'utf8'));
      } catch (cause) {
        throw new LanguageInvalidError(`${file}: not valid JSON`, { cause });
      }
      const definition = parseLanguageDefinition(raw, file);
      if (definition.name.includes('_') && definition.layer === undefined) {
        throw new LanguageInvalidError(
          `${file}: a name with _ (${definition.name}) needs a layer: image ids have no _`,
        );
      }
      if (definition.name !== entry.name) {
        throw new LanguageInvalidError(
          `${file}: name ${definition.name} differs from its folder ${entry.name}`,
        );
      }
      languages.push({ definition, dir: langDir });
    }
    return new LanguageRegistry(languages);
  }

  /** All languages, sorted by name. */
  list(): Language[] {
    return [...this.byName.values()];
  }

  names(): string[] {
    return [...this.byName.keys()];
  }

  /** By name or alias; undefined when unknown. */
  find(nameOrAlias: string): Language | undefined {
    return this.byName.get(nameOrAlias) ?? this.byAlias.get(nameOrAlias);
  }

  /** By name or alias (and version, when given); throws LANGUAGE_UNKNOWN. */
  get(nameOrAlias: string, version?: string): Language {
    const language = this.find(nameOrAlias);
    if (language === undefined) {
      throw new LanguageUnknownError(
        `unknown language ${JSON.stringify(nameOrAlias)}; known: ${this.names().join(', ')}`,
      );
    }
    if (version !== undefined && !versionMatches(language.definition.version, version)) {
      throw new LanguageUnknownError(
        `${language.definition.name} has version ${language.definition.version}, not ${JSON.stringify(version)}`,
      );
    }
    return language;
  }
}

/**
 * Piston-style version matching: `*` or empty matches anything; otherwise a prefix of dotted
 * components (`3`, `3.11`, `3.11.2`) or an `x` wildcard component (`3.x`).
 */
export function versionMatches(actual: string, wanted: string): boolean {
  if (wanted === '' || wanted === '*') return true;
  const a = actual.split('.');
  const w = wanted.split('.');
  if (w.length > a.length) return false;
  return w.every((part, i) => part === 'x' || part === '*' || part === a[i]);
}
