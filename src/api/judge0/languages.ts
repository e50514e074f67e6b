import { ConfigInvalidError } from '../../errors.js';
import type { LanguageDefinition, LanguageRegistry } from '../../languages/index.js';

/** How Judge0 names our languages: its display name; the version is added in parentheses. */
const DISPLAY: Readonly<Record<string, (version: string) => string>> = {
  python: (v) => `Python (${v})`,
  'c++': (v) => `C++ (GCC ${v})`,
  c: (v) => `C (GCC ${v})`,
  java: (v) => `Java (OpenJDK ${v})`,
  javascript: (v) => `JavaScript (Node.js ${v})`,
  typescript: (v) => `TypeScript (${v})`,
  go: (v) => `Go (${v})`,
  rust: (v) => `Rust (${v})`,
  ruby: (v) => `Ruby (${v})`,
  php: (v) => `PHP (${v})`,
  bash: (v) => `Bash (${v})`,
  'c-clang': (v) => `C (Clang ${v})`,
  'c++-clang': (v) => `C++ (Clang ${v})`,
  'objective-c': (v) => `Objective-C (GCC ${v})`,
  nasm: (v) => `Assembly (NASM ${v})`,
  fortran: (v) => `Fortran (GFortran ${v})`,
  d: (v) => `D (GDC ${v})`,
  csharp: (v) => `C# (Mono ${v})`,
  kotlin: (v) => `Kotlin (${v})`,
  scala: (v) => `Scala (${v})`,
  groovy: (v) => `Groovy (${v})`,
  clojure: (v) => `Clojure (${v})`,
  haskell: (v) => `Haskell (GHC ${v})`,
  ocaml: (v) => `OCaml (${v})`,
  erlang: (v) => `Erlang (OTP ${v})`,
  elixir: (v) => `Elixir (${v})`,
  lisp: (v) => `Common Lisp (SBCL ${v})`,
  prolog: (v) => `Prolog (SWI-Prolog ${v})`,
  pascal: (v) => `Pascal (FPC ${v})`,
  cobol: (v) => `COBOL (GnuCOBOL ${v})`,
  perl: (v) => `Perl (${v})`,
  lua: (v) => `Lua (${v})`,
  rscript: (v) => `R (${v})`,
  octave: (v) => `Octave (${v})`,
  sqlite3: (v) => `SQL (SQLite ${v})`,
};

/** One of our languages under its Judge0 id. */
export interface Judge0Language {
  readonly id: number;
  readonly name: string;
  readonly definition: LanguageDefinition;
}

/**
 * Judge0's language ids mapped onto our languages, from each definition's `judge0Id`
 * (languages/<name>/language.json): 71 is Python 3, 54 C++, 50 C and so on. A language without
 * one is not offered through Judge0. Two languages with one id are a configuration error.
 */
export class Judge0Languages {
  private readonly byId = new Map<number, Judge0Language>();
  private readonly byName = new Map<string, Judge0Language>();

  constructor(registry: LanguageRegistry) {
    for (const { definition: d } of registry.list()) {
      if (d.judge0Id === undefined) continue;
      const other = this.byId.get(d.judge0Id);
      if (other !== undefined)
        throw new ConfigInvalidError(
          `languages ${other.definition.name} and ${d.name} have the same judge0Id ${d.judge0Id}`,
        );
      const name = (DISPLAY[d.name] ?? ((v: string) => `${d.name} (${v})`))(d.version);
      const lang = { id: d.judge0Id, name, definition: d };
      this.byId.set(d.judge0Id, lang);
      this.byName.set(d.name, lang);
    }
  }

  /** Every language with a Judge0 id, by id. */
  list(): Judge0Language[] {
    return [...this.byId.values()].sort((a, b) => a.id - b.id);
  }

  get(id: number): Judge0Language | undefined {
    return this.byId.get(id);
  }

  /** The Judge0 language of one of ours (by our name), if it has an id. */
  ofName(name: string): Judge0Language | undefined {
    return this.byName.get(name);
  }
}
