import Type, { type Static } from 'typebox';

/**
 * Judge0 CE's HTTP bodies, with Judge0's own field names and units (seconds, kilobytes). Like
 * Judge0 (a Rails app), a request may carry fields it does not know (they are ignored), numbers
 * and booleans may come as strings ("4", "true"), and null means "the default".
 */

const nullable = <T extends Type.TSchema>(t: T) => Type.Optional(Type.Union([t, Type.Null()]));
const num = (description: string) =>
  nullable(
    Type.Union([Type.Number(), Type.String({ pattern: '^\\s*-?[0-9]+(\\.[0-9]+)?\\s*$' })], {
      description,
    }),
  );
const int = (description: string) =>
  nullable(
    Type.Union([Type.Integer(), Type.String({ pattern: '^\\s*-?[0-9]+\\s*$' })], { description }),
  );
const bool = (description: string) =>
  nullable(Type.Union([Type.Boolean(), Type.Enum(['true', 'false'])], { description }));

/** The fields a submission is created with. */
export const SUBMISSION_INPUT = {
  source_code: Type.String({ description: 'The program (base64 with ?base64_encoded=true).' }),
  language_id: Type.Union([Type.Integer(), Type.String({ pattern: '^\\s*[0-9]+\\s*$' })], {
    description: 'A Judge0 language id (GET /languages).',
  }),
  compiler_options: nullable(
    Type.String({
      maxLength: 512,
      description: 'Refused unless empty: our languages take no extra flags.',
    }),
  ),
  command_line_arguments: nullable(
    Type.String({
      maxLength: 512,
      description: 'Split into arguments like a shell would (quotes, no expansion).',
    }),
  ),
  stdin: nullable(Type.String()),
  expected_output: nullable(
    Type.String({
      description:
        'With it, Accepted or Wrong Answer (lines right-trimmed, then the whole trimmed).',
    }),
  ),
  cpu_time_limit: num('Seconds (default 5, at most 15).'),
  cpu_extra_time: num(
    'Seconds (default 1, at most 5): the program is killed at cpu_time_limit plus this, and a run over cpu_time_limit is a time limit all the same.',
  ),
  wall_time_limit: num('Seconds (default 10, at most 20).'),
  memory_limit: num('Kilobytes (default 128000, at most 512000); rounded up to MiB.'),
  stack_limit: int('Kilobytes (default 64000, at most 128000): the stack rlimit of the run.'),
  max_processes_and_or_threads: int('Default 60, at most 120.'),
  enable_per_process_and_thread_time_limit: bool('Only false is taken.'),
  enable_per_process_and_thread_memory_limit: bool('Only false is taken.'),
  max_file_size: int('Kilobytes (default 1024, at most 4096).'),
  redirect_stderr_to_stdout: bool('stderr is appended to stdout (not interleaved).'),
  enable_network: bool('Refused: this server gives programs no network.'),
  number_of_runs: int(
    'Default 1, at most 20: compiled once, run this many times; time and memory are averages.',
  ),
  additional_files: nullable(
    Type.String({
      description: 'A base64 zip unpacked beside the program (no .., absolute names or symlinks).',
    }),
  ),
  callback_url: nullable(
    Type.String({ maxLength: 2048, description: 'The result is PUT here when done (retried).' }),
  ),
};

/** POST /submissions. */
export const Judge0SubmissionRequest = Type.Object(SUBMISSION_INPUT, {
  additionalProperties: true,
});
export type Judge0SubmissionRequest = Static<typeof Judge0SubmissionRequest>;

/** POST /submissions/batch. */
export const Judge0BatchRequest = Type.Object(
  {
    submissions: Type.Array(Type.Unknown(), {
      description: 'Submissions, as for POST /submissions.',
    }),
  },
  { additionalProperties: true },
);

const flag = Type.Optional(Type.String({ description: '"true" or "false" (default false)' }));

/** The query of the submission routes. */
export const Judge0Query = Type.Object(
  {
    base64_encoded: flag,
    wait: flag,
    fields: Type.Optional(
      Type.String({ description: 'Comma-separated attributes to return, or * for all.' }),
    ),
  },
  { additionalProperties: true },
);

export const Judge0BatchQuery = Type.Object(
  {
    tokens: Type.Optional(Type.String({ description: 'Comma-separated tokens (at most 20).' })),
    base64_encoded: flag,
    fields: Type.Optional(Type.String()),
  },
  { additionalProperties: true },
);

export const Judge0TokenParams = Type.Object({ token: Type.String({ maxLength: 128 }) });
export const Judge0LanguageParams = Type.Object({ id: Type.String({ maxLength: 16 }) });

const text = Type.Union([Type.String(), Type.Null()]);
const StatusView = Type.Object({ id: Type.Integer(), description: Type.String() });

/** The attributes a submission is shown with; `fields` picks some (default: a few of them). */
export const SUBMISSION_OUTPUT = {
  token: Type.String(),
  stdout: text,
  stderr: text,
  compile_output: text,
  message: text,
  exit_code: Type.Union([Type.Integer(), Type.Null()]),
  exit_signal: Type.Union([Type.Integer(), Type.Null()]),
  status: StatusView,
  status_id: Type.Integer(),
  created_at: Type.String(),
  finished_at: text,
  time: Type.Union([Type.String({ description: 'CPU seconds, e.g. "0.012"' }), Type.Null()]),
  wall_time: Type.Union([Type.String({ description: 'Seconds' }), Type.Null()]),
  memory: Type.Union([Type.Integer({ description: 'Kilobytes' }), Type.Null()]),
  language_id: Type.Union([Type.Integer(), Type.Null()]),
  language: Type.Union([Type.Object({ id: Type.Integer(), name: Type.String() }), Type.Null()]),
  source_code: text,
  stdin: text,
  expected_output: text,
  number_of_runs: Type.Union([Type.Integer(), Type.Null()]),
  cpu_time_limit: Type.Union([Type.String(), Type.Null()]),
  wall_time_limit: Type.Union([Type.String(), Type.Null()]),
  memory_limit: Type.Union([Type.Integer(), Type.Null()]),
  redirect_stderr_to_stdout: Type.Union([Type.Boolean(), Type.Null()]),
  callback_url: text,
};
export type SubmissionField = keyof typeof SUBMISSION_OUTPUT;

/** A submission as Judge0 shows it (the fields asked for). */
export const Judge0Submission = Type.Partial(
  Type.Object({
    ...SUBMISSION_OUTPUT,
    error: Type.String({ description: 'Only on a waited create whose output is not UTF-8.' }),
  }),
);
export type Judge0Submission = Static<typeof Judge0Submission>;

export const Judge0Token = Type.Object({ token: Type.String() });
export const Judge0BatchView = Type.Object({
  submissions: Type.Array(Type.Union([Judge0Submission, Type.Null()])),
});

/** Judge0's errors: `{ error }`, or for bad input (422) a list of messages per field. */
export const Judge0Error = Type.Object({ error: Type.String() });
export const Judge0FieldErrors = Type.Record(Type.String(), Type.Array(Type.String()));

export const Judge0LanguageView = Type.Object({ id: Type.Integer(), name: Type.String() });
export const Judge0LanguageDetail = Type.Object({
  id: Type.Integer(),
  name: Type.String(),
  is_archived: Type.Boolean(),
  source_file: Type.String(),
  compile_cmd: Type.Union([Type.String(), Type.Null()]),
  run_cmd: Type.String(),
});
export const Judge0StatusView = StatusView;

export const Judge0About = Type.Object({
  version: Type.String(),
  homepage: Type.String(),
  source_code: Type.String(),
  maintainer: Type.String(),
});

export const Judge0Worker = Type.Object({
  queue: Type.String(),
  size: Type.Integer(),
  available: Type.Integer(),
  idle: Type.Integer(),
  working: Type.Integer(),
  paused: Type.Integer(),
  failed: Type.Integer(),
});

export const Judge0ConfigInfo = Type.Record(
  Type.String(),
  Type.Union([
    Type.Number(),
    Type.Boolean(),
    Type.String(),
    Type.Array(Type.String()),
    Type.Null(),
  ]),
);
