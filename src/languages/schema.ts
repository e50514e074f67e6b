import Type, { type Static } from 'typebox';
import { SeccompFamilySchema, type SeccompFamily } from '../protocol/messages.js';

/** The seccomp family of a language that names none. */
export const DEFAULT_SECCOMP_FAMILY: SeccompFamily = 'default';

/** Per-stage limit overrides a language may carry (for slow compilers such as rustc or javac). */
export const StageLimitOverrides = Type.Object(
  {
    wallTimeMs: Type.Optional(Type.Integer({ minimum: 1 })),
    cpuTimeMs: Type.Optional(Type.Integer({ minimum: 1 })),
    memoryMib: Type.Optional(Type.Integer({ minimum: 1 })),
    processes: Type.Optional(Type.Integer({ minimum: 1 })),
    outputBytes: Type.Optional(Type.Integer({ minimum: 1 })),
    fileSizeBytes: Type.Optional(Type.Integer({ minimum: 1 })),
    openFiles: Type.Optional(Type.Integer({ minimum: 1 })),
    stackBytes: Type.Optional(Type.Integer({ minimum: 65_536 })),
  },
  { additionalProperties: false },
);

/**
 * One language, as stored in `languages/<name>/language.json`. The image builder, the agent and
 * the tests all read this. Command arguments may hold placeholders: `{entry}` (the entry file
 * name), `{entryStem}` (without extension) and `{sources}` (every request file with the
 * language's extension, expanded to several arguments).
 */
export const LanguageDefinitionSchema = Type.Object(
  {
    // `_` for Piston's names (llvm_ir); such a language names a `layer` (image ids have no `_`).
    name: Type.String({ pattern: '^[a-z0-9+#_-]+$' }),
    aliases: Type.Array(Type.String({ minLength: 1 })),
    version: Type.String({ pattern: '^[0-9]+(\\.[0-9]+)*$' }),
    /** The language's id in Judge0 CE (71 is Python 3), served by the Judge0 API; unique. */
    judge0Id: Type.Optional(Type.Integer({ minimum: 1 })),
    packages: Type.Array(Type.String({ pattern: '^[a-z0-9][a-z0-9+.-]*$' }), { minItems: 1 }),
    /**
     * The image layer the language shares with the others of its family (those that share a
     * toolchain: gcc's c, c++, fortran, d, objective-c; the JVM's; mono's). The layer installs
     * the packages of all of them, holds all their folders, and has one snapshot. Absent: a
     * layer of its own, named after it.
     */
    layer: Type.Optional(Type.String({ pattern: '^[a-z0-9+#-]+$' })),
    /**
     * npm packages the toolchain layer adds, each pinned exactly (`name@1.2.3`), installed
     * globally under /usr/local (bin links in /usr/local/bin, first on the job's PATH) from the
     * host's npm, with no install scripts run: where Debian's build is too slow (Node.js without
     * its startup snapshot) or too old.
     */
    npm: Type.Optional(
      Type.Array(
        Type.String({ pattern: '^(@[a-z0-9-]+/)?[a-z0-9][a-z0-9._-]*@[0-9]+\\.[0-9]+\\.[0-9]+$' }),
        { minItems: 1 },
      ),
    ),
    /**
     * Commands run in the toolchain layer when it is built (as root, in the image's chroot,
     * after its packages, npm pins and language folders are in place), each an argv: to
     * prepare what the compile or run commands start from, such as a Node.js startup snapshot
     * of a compiler (typescript). A command whose first argument is `{guest-cpu}` runs the rest
     * under QEMU's user-mode emulator with the VMs' CPU model (what it detects of the CPU is
     * then what the VM will have). A failing command fails the build.
     */
    prepare: Type.Optional(
      Type.Array(Type.Array(Type.String({ minLength: 1 }), { minItems: 1 }), { minItems: 1 }),
    ),
    extension: Type.String({ pattern: '^[a-z0-9]+$' }),
    sourceFile: Type.String({ minLength: 1 }),
    compile: Type.Union([Type.Array(Type.String(), { minItems: 1 }), Type.Null()]),
    run: Type.Array(Type.String(), { minItems: 1 }),
    /**
     * A compile server that stands in for the compile command in a VM waiting in the pool
     * (docs/agent.md, "Compile servers"): `command` is started by the agent when the host primes
     * the VM (`{socket}` is the unix socket it must listen on; it prints `ready` when it does),
     * and the compile stage then runs `runner-exec --connect`, which hands the server the
     * working directory and the compile command's arguments after its first `replaces`.
     */
    compileServer: Type.Optional(
      Type.Object(
        {
          command: Type.Array(Type.String({ minLength: 1 }), { minItems: 1 }),
          replaces: Type.Integer({ minimum: 1, maximum: 8 }),
        },
        { additionalProperties: false },
      ),
    ),
    env: Type.Record(Type.String({ pattern: '^[A-Z_][A-Z0-9_]*$' }), Type.String()),
    versionCommand: Type.Array(Type.String(), { minItems: 1 }),
    /**
     * The seccomp filter family its compile and run stages get (runner-exec --seccomp): `jvm`
     * for the JVM, `node` for V8, `default` (when absent) for the rest.
     */
    seccomp: Type.Optional(SeccompFamilySchema),
    limits: Type.Optional(
      Type.Object(
        { compile: Type.Optional(StageLimitOverrides), run: Type.Optional(StageLimitOverrides) },
        { additionalProperties: false },
      ),
    ),
    test: Type.Object(
      {
        file: Type.String({ minLength: 1 }),
        expected: Type.String({ minLength: 1 }),
        /** What the test program reads on stdin (sed's script needs a line to act on). */
        stdin: Type.Optional(Type.String()),
      },
      { additionalProperties: false },
    ),
  },
  { additionalProperties: false },
);

export type LanguageDefinition = Static<typeof LanguageDefinitionSchema>;
export type StageLimitOverrides = Static<typeof StageLimitOverrides>;
