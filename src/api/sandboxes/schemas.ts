import Type, { type Static } from 'typebox';
import {
  ENV_NAME_PATTERN,
  MAX_ARG_STRING_BYTES,
  MAX_PATH_BYTES,
  StatusSchema,
} from '../../protocol/index.js';
import { CELL_LANGUAGES } from '../../sandbox/index.js';

/**
 * The wire format of the native sandbox routes (/v1/sandboxes), the one source of their bodies:
 * Fastify validates and serializes with these, and the OpenAPI document comes from them. Field
 * names are camelCase with units in them, as in the rest of /v1. Request bodies reject unknown
 * fields.
 */
const closed = { additionalProperties: false } as const;

const Envs = Type.Record(
  Type.String({ pattern: ENV_NAME_PATTERN, maxLength: 256 }),
  Type.String({ maxLength: MAX_ARG_STRING_BYTES }),
  { ...closed, description: 'Environment variables (NAME: value).' },
);

const TimeoutMs = (description: string) => Type.Integer({ minimum: 1, description });

const Path = (description: string) =>
  Type.String({ minLength: 1, maxLength: MAX_PATH_BYTES, description });

export const SandboxParams = Type.Object({ id: Type.String({ maxLength: 128 }) }, closed);

/** POST /v1/sandboxes. */
export const CreateSandboxBody = Type.Object(
  {
    language: Type.String({
      minLength: 1,
      maxLength: 64,
      description: 'Language name or alias (python, js, bash, ...): the VM image it runs.',
    }),
    timeoutMs: Type.Optional(
      TimeoutMs(
        'Time-to-live: the sandbox is killed this long after the last call on it (default RUNNER_SANDBOX_TIMEOUT_MS, at most RUNNER_SANDBOX_MAX_TIMEOUT_MS).',
      ),
    ),
    metadata: Type.Optional(
      Type.Record(Type.String({ maxLength: 256 }), Type.String({ maxLength: 4096 }), {
        ...closed,
        maxProperties: 64,
        description: 'Labels of your own, given back as they are.',
      }),
    ),
    envs: Type.Optional(Envs),
  },
  closed,
);
export type CreateSandboxBody = Static<typeof CreateSandboxBody>;

/** A sandbox as the API shows it (neither its owner nor its envs are shown). */
export const SandboxView = Type.Object({
  id: Type.String({ description: '20 lower-case letters and digits.' }),
  language: Type.String(),
  template: Type.String({ description: 'What the creator asked for (here: the language).' }),
  state: Type.Enum(['running', 'paused']),
  createdAt: Type.String({ description: 'ISO 8601' }),
  startedAt: Type.String({ description: 'When it last started or resumed.' }),
  expiresAt: Type.String({
    description: 'A running sandbox is killed then, a paused one deleted; each call extends it.',
  }),
  pausedAt: Type.Union([Type.String(), Type.Null()]),
  timeoutMs: Type.Integer({ description: 'Its time-to-live: what each call extends it by.' }),
  metadata: Type.Record(Type.String(), Type.String()),
  vmId: Type.Union([Type.String(), Type.Null()], { description: 'null while paused' }),
  memoryMib: Type.Integer(),
  vcpus: Type.Integer(),
  forkedFrom: Type.Union([Type.String(), Type.Null()]),
});
export type SandboxView = Static<typeof SandboxView>;

export const SandboxList = Type.Object({ sandboxes: Type.Array(SandboxView) });
export type SandboxList = Static<typeof SandboxList>;

/** POST /v1/sandboxes/:id/timeout. */
export const SetTimeoutBody = Type.Object(
  { timeoutMs: TimeoutMs('The time left from now, and the time-to-live later calls extend by.') },
  closed,
);

/** POST /v1/sandboxes/:id/pause (no fields; the body may be left out). */
export const PauseBody = Type.Object({}, closed);

/** POST /v1/sandboxes/:id/resume (the body may be left out). */
export const ResumeBody = Type.Object(
  { timeoutMs: Type.Optional(TimeoutMs('A new time-to-live (default: the one it had).')) },
  closed,
);

/** POST /v1/sandboxes/:id/fork (the body may be left out). */
export const ForkBody = Type.Object(
  {
    count: Type.Optional(
      Type.Integer({ minimum: 1, maximum: 16, description: 'Copies to make (default 1).' }),
    ),
  },
  closed,
);

// ---- code cells ----

/** POST /v1/sandboxes/:id/cells. */
export const CellBody = Type.Object(
  {
    code: Type.String({ maxLength: 16 * 1024 * 1024 }),
    language: Type.Optional(
      Type.Enum([...CELL_LANGUAGES], {
        description:
          'The interpreter (one of each is kept alive per sandbox); default: the sandbox’s language when it is one of these, else python.',
      }),
    ),
    envs: Type.Optional(Envs),
    timeoutMs: Type.Optional(
      TimeoutMs('Wall-clock limit of the cell (default RUNNER_SANDBOX_COMMAND_TIMEOUT_MS).'),
    ),
  },
  closed,
);
export type CellBody = Static<typeof CellBody>;

const OptionalText = Type.Optional(Type.String());

export const CellResultView = Type.Object(
  {
    isMainResult: Type.Boolean({
      description: 'The value of the cell’s last expression (else a figure shown during it).',
    }),
    text: OptionalText,
    html: OptionalText,
    markdown: OptionalText,
    svg: OptionalText,
    png: Type.Optional(Type.String({ description: 'base64' })),
    jpeg: Type.Optional(Type.String({ description: 'base64' })),
    latex: OptionalText,
    json: Type.Optional(Type.Unknown()),
    javascript: OptionalText,
  },
  { description: 'A rich result, as a notebook shows it: every format is optional.' },
);

export const CellErrorView = Type.Object({
  name: Type.String({ description: 'The exception’s class, e.g. NameError.' }),
  value: Type.String(),
  traceback: Type.String(),
});

export const CellOutcomeView = Type.Object({
  executionCount: Type.Integer({
    description: 'Cells this interpreter ran so far, this one included.',
  }),
  results: Type.Array(CellResultView),
  stdout: Type.Array(Type.String(), { description: 'The printed text, in the chunks it came.' }),
  stderr: Type.Array(Type.String()),
  error: Type.Union([CellErrorView, Type.Null()], {
    description: 'The exception that ended the cell; the call itself still succeeded.',
  }),
});
export type CellOutcomeView = Static<typeof CellOutcomeView>;

/** POST /v1/sandboxes/:id/cells/restart. */
export const RestartBody = Type.Object(
  {
    language: Type.Optional(
      Type.Enum([...CELL_LANGUAGES], {
        description: 'The interpreter to restart (default: as for a cell).',
      }),
    ),
  },
  closed,
);
export const RestartResult = Type.Object({
  restarted: Type.Boolean({ description: 'false: none was running (the next cell starts one).' }),
});

// ---- commands ----

/** POST /v1/sandboxes/:id/commands. */
export const CommandBody = Type.Object(
  {
    cmd: Type.String({
      minLength: 1,
      maxLength: MAX_ARG_STRING_BYTES,
      description: 'A shell command, run by /bin/sh -c as the sandbox user.',
    }),
    cwd: Type.Optional(
      Path('A folder under the sandbox folder (/home/user), absolute or relative to it.'),
    ),
    envs: Type.Optional(Envs),
    timeoutMs: Type.Optional(
      Type.Integer({
        minimum: 0,
        description:
          'Wall-clock limit (default RUNNER_SANDBOX_COMMAND_TIMEOUT_MS; 0: the most, an hour).',
      }),
    ),
  },
  closed,
);
export type CommandBody = Static<typeof CommandBody>;

const ended = {
  exitCode: Type.Union([Type.Integer(), Type.Null()], {
    description: 'null when a signal ended it, or it never ran (status sandbox_error).',
  }),
  signal: Type.Union([Type.String(), Type.Null()]),
  status: StatusSchema,
  message: Type.Union([Type.String(), Type.Null()], {
    description: 'Why it ended, when it did not end by itself.',
  }),
  wallTimeMs: Type.Integer(),
};

/** The JSON answer of a command: how it ended and its output as text. */
export const CommandResultView = Type.Object({
  ...ended,
  stdout: Type.String({
    description:
      'Decoded as UTF-8 (bytes that are not become U+FFFD); at most 1 MiB, the rest dropped (stdoutTruncated). The event stream gives the exact bytes.',
  }),
  stderr: Type.String(),
  stdoutTruncated: Type.Boolean(),
  stderrTruncated: Type.Boolean(),
});
export type CommandResultView = Static<typeof CommandResultView>;

/** The `exit` event of a command's event stream. */
export const CommandExitEvent = Type.Object({ type: Type.Literal('exit'), ...ended });

// ---- files ----

export const FilePathQuery = Type.Object(
  { path: Path('Absolute under /home/user, or relative to it.') },
  closed,
);

export const FileListQuery = Type.Object(
  {
    path: Type.Optional(Path('The folder (default /home/user).')),
    depth: Type.Optional(
      Type.String({
        pattern: '^([1-9]|1[0-6])$',
        description: 'Levels to list, 1 to 16 (default 1).',
      }),
    ),
  },
  closed,
);

export const FileEntryView = Type.Object({
  name: Type.String(),
  path: Type.String({ description: 'Absolute in the sandbox.' }),
  type: Type.Enum(['file', 'dir', 'symlink', 'other']),
  size: Type.Integer({ description: 'bytes' }),
  mode: Type.Integer({ description: 'Permission bits (420 is 0o644).' }),
  modifiedAt: Type.String({ description: 'ISO 8601' }),
  target: Type.Optional(Type.String({ description: 'Where a symlink points.' })),
});
export type FileEntryView = Static<typeof FileEntryView>;

export const FileList = Type.Object({ entries: Type.Array(FileEntryView) });

export const MakeDirBody = Type.Object(
  { path: Path('The folder; its parents are made too.') },
  closed,
);
export const MakeDirResult = Type.Object({
  created: Type.Boolean({ description: 'false: it was there already.' }),
});

export const MoveBody = Type.Object(
  { from: Path('What to move.'), to: Path('Its new path.') },
  closed,
);
