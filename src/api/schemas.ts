import Type, { type Static } from 'typebox';
import { JobTimingsSchema } from '../pool/index.js';
import { MAX_REGEX_PATTERN_CHARS, REGEX_FLAGS_PATTERN } from './checkers.js';
import {
  ENV_NAME_PATTERN,
  LimitsSchema,
  MAX_ARG_STRING_BYTES,
  MAX_PATH_BYTES,
  StageResultSchema,
  StatusSchema,
} from '../protocol/index.js';

/**
 * The HTTP bodies of both APIs. They are plain JSON Schema objects: Fastify validates requests
 * and serializes responses with them, and @fastify/swagger turns them into the OpenAPI document.
 * Request bodies reject unknown fields.
 */
const closed = { additionalProperties: false } as const;

const Encoding = Type.Enum(['utf8', 'base64'], {
  description: 'How `content` (or stdin) is encoded; utf8 by default.',
});

/** Per-stage limits a request may ask for; each is checked against the server maximum. */
export const LimitsRequest = Type.Object(
  Object.fromEntries(
    Object.entries(LimitsSchema.properties).map(([k, v]) => [k, Type.Optional(v)]),
  ) as {
    [K in keyof typeof LimitsSchema.properties]: Type.TOptional<
      (typeof LimitsSchema.properties)[K]
    >;
  },
  {
    ...closed,
    description:
      'Limits of one stage; omitted ones take the default (see GET /v1/limits in docs/api.md).',
  },
);

export const FileRequest = Type.Object(
  {
    name: Type.Optional(
      Type.String({
        maxLength: MAX_PATH_BYTES,
        description:
          'Relative path; the first file is the entry and gets the language’s source file name when it has none.',
      }),
    ),
    content: Type.String(),
    encoding: Type.Optional(Encoding),
  },
  closed,
);

/** The checkers that need nothing but their name (a string `compare` is short for `{ kind }`). */
export const SIMPLE_CHECKERS = [
  'exact',
  'trim-trailing',
  'trim',
  'tokens',
  'case-insensitive',
  'float',
] as const;

const SimpleCompareName = Type.Enum([...SIMPLE_CHECKERS], {
  description:
    'exact: byte for byte; trim-trailing (default): ignoring white space at the end of each line and blank lines at the end; trim: Judge0’s rule, white space at the end of each line, then at both ends of the output; tokens: any run of white space is one separator; case-insensitive: trim-trailing ignoring letter case; float: tokens, numbers within 1e-6 (absolute or relative).',
});

/** A checker given as an object: its kind and, for some kinds, its parameters. */
export const CompareRequest = Type.Union(
  [
    SimpleCompareName,
    Type.Object(
      { kind: Type.Enum(['exact', 'trim-trailing', 'trim', 'tokens', 'case-insensitive']) },
      closed,
    ),
    Type.Object(
      {
        kind: Type.Literal('float'),
        absTolerance: Type.Optional(Type.Number({ minimum: 0 })),
        relTolerance: Type.Optional(Type.Number({ minimum: 0 })),
      },
      {
        ...closed,
        description:
          'Tokens; two numbers are equal within absTolerance, or within relTolerance × |expected|. Neither given: both 1e-6; one given: the other 0.',
      },
    ),
    Type.Object(
      {
        kind: Type.Literal('regex'),
        pattern: Type.String({ minLength: 1, maxLength: MAX_REGEX_PATTERN_CHARS }),
        flags: Type.Optional(Type.String({ pattern: REGEX_FLAGS_PATTERN, maxLength: 3 })),
      },
      {
        ...closed,
        description:
          'The whole output (without its final line breaks) must match the pattern (JavaScript syntax; flags i, s, u). All regex checks of a request share a time budget of 200 ms; a pattern that backtracks past it gets checker_error.',
      },
    ),
    Type.Object(
      {
        kind: Type.Literal('custom'),
        language: Type.String({ minLength: 1, maxLength: 64 }),
        version: Type.Optional(Type.String({ maxLength: 64 })),
        source: Type.String({ minLength: 1 }),
        sourceEncoding: Type.Optional(Encoding),
      },
      {
        ...closed,
        description:
          'A checker program in any of our languages, run as its own job in its own VM. It gets input.txt, expected.txt and actual.txt in its work dir (their paths as arguments) and prints AC or WA on its first line, then an optional message.',
      },
    ),
  ],
  { description: 'How the output is judged; trim-trailing by default.' },
);
export type CompareRequest = Static<typeof CompareRequest>;

export const TestCaseRequest = Type.Object(
  {
    stdin: Type.Optional(Type.String()),
    stdinEncoding: Type.Optional(Encoding),
    expectedOutput: Type.String({ description: 'Expected stdout (UTF-8).' }),
    compare: Type.Optional(CompareRequest),
  },
  closed,
);

const jobFields = {
  language: Type.String({
    minLength: 1,
    maxLength: 64,
    description: 'Language name or alias (python, py, js, c++, ...).',
  }),
  version: Type.Optional(
    Type.String({
      maxLength: 64,
      description: 'Version selector: 3, 3.11, 3.x or * (default: the installed one).',
    }),
  ),
  files: Type.Array(FileRequest, { minItems: 1 }),
  stdin: Type.Optional(Type.String()),
  stdinEncoding: Type.Optional(Encoding),
  args: Type.Optional(
    Type.Array(Type.String({ maxLength: MAX_ARG_STRING_BYTES }), { maxItems: 1000 }),
  ),
  env: Type.Optional(
    Type.Record(
      Type.String({ pattern: ENV_NAME_PATTERN, maxLength: 256 }),
      Type.String({ maxLength: MAX_ARG_STRING_BYTES }),
      closed,
    ),
  ),
  compileLimits: Type.Optional(LimitsRequest),
  runLimits: Type.Optional(LimitsRequest),
  testCases: Type.Optional(
    Type.Array(TestCaseRequest, {
      minItems: 1,
      description: 'Run the program once per case, each with its own stdin, and judge its stdout.',
    }),
  ),
  network: Type.Optional(
    Type.Boolean({
      description:
        "Run with network behind the operator's egress policy (a cold-booted VM with a NIC); 403 NETWORK_DISABLED where the operator does not allow it. Default false: no interface but lo.",
    }),
  ),
};

/** POST /v1/execute. */
export const ExecuteRequest = Type.Object(jobFields, closed);
export type ExecuteRequest = Static<typeof ExecuteRequest>;

/** POST /v1/jobs: a job plus where to send its result. */
export const SubmitRequest = Type.Object(
  {
    ...jobFields,
    callbackUrl: Type.Optional(
      Type.String({
        maxLength: 2048,
        description: 'http(s) URL the final job record is POSTed to (retried with backoff).',
      }),
    ),
  },
  closed,
);
export type SubmitRequest = Static<typeof SubmitRequest>;

/** One stage's result: the guest's stage result (the same schema) plus the output as text. */
export const StageView = Type.Object({
  ...StageResultSchema.properties,
  stdoutText: Type.Union([Type.String(), Type.Null()], {
    description: 'stdout as text; null when it is not valid UTF-8',
  }),
  stderrText: Type.Union([Type.String(), Type.Null()], {
    description: 'stderr as text; null when it is not valid UTF-8',
  }),
});
export type StageView = Static<typeof StageView>;

/** Where the time went: the engine's own timings schema (src/pool/job.ts). */
export const Timings = JobTimingsSchema;

/** Where the output first parts from the expected output. */
export const FirstDifference = Type.Object({
  line: Type.Integer({ description: '1-based line (of the expected output, for token checkers)' }),
  expected: Type.Union([Type.String(), Type.Null()], { description: 'null: past its end' }),
  actual: Type.Union([Type.String(), Type.Null()], { description: 'null: past its end' }),
});

export const TestCaseResult = Type.Object({
  index: Type.Integer(),
  status: StatusSchema,
  passed: Type.Boolean(),
  run: Type.Union([StageView, Type.Null()]),
  timings: Type.Union([Timings, Type.Null()]),
  message: Type.Optional(
    Type.String({ description: 'Why the case did not run (the compile failed, the job ended).' }),
  ),
  verdict: Type.Optional(
    Type.Enum(['accepted', 'wrong_answer', 'checker_error'], {
      description:
        'The checker’s verdict, when the case ran to its end (status ok); checker_error: the checker itself failed (see checkerMessage).',
    }),
  ),
  checkerMessage: Type.Optional(
    Type.String({ description: 'What a custom checker said, or why a checker failed.' }),
  ),
  firstDifference: Type.Optional(FirstDifference),
});
export type TestCaseResult = Static<typeof TestCaseResult>;

/** The result of a job. A program that fails is a result (200), never an HTTP error. */
export const ExecuteResponse = Type.Object({
  id: Type.String(),
  language: Type.String(),
  version: Type.String(),
  status: StatusSchema,
  compile: Type.Union([StageView, Type.Null()]),
  run: Type.Union([StageView, Type.Null()]),
  timings: Timings,
  testCases: Type.Optional(Type.Array(TestCaseResult)),
  summary: Type.Optional(
    Type.Object({ total: Type.Integer(), passed: Type.Integer(), failed: Type.Integer() }),
  ),
  storedOutput: Type.Optional(
    Type.Enum(['none', 'trimmed'], {
      description:
        'Only in a stored job record, when it does not hold the whole output: none — a synchronous job keeps no output (stdout and stderr are empty, their texts null); trimmed — each stream was cut to fit RUNNER_JOB_STORE_MAX_RESULT_BYTES and the cut ones say *Truncated: true.',
    }),
  ),
});
export type ExecuteResponse = Static<typeof ExecuteResponse>;

export const JobView = Type.Object({
  id: Type.String(),
  state: Type.Enum(['queued', 'running', 'done']),
  language: Type.String(),
  status: Type.Union([StatusSchema, Type.Null()]),
  createdAt: Type.String({ description: 'ISO 8601' }),
  startedAt: Type.Union([Type.String(), Type.Null()]),
  finishedAt: Type.Union([Type.String(), Type.Null()]),
  result: Type.Union([ExecuteResponse, Type.Null()]),
});
export type JobView = Static<typeof JobView>;

export const JobAccepted = Type.Object({
  id: Type.String(),
  state: Type.Literal('queued'),
  url: Type.String(),
});

export const JobParams = Type.Object({ id: Type.String({ maxLength: 128 }) }, closed);

export const RuntimeView = Type.Object({
  language: Type.String(),
  version: Type.String(),
  aliases: Type.Array(Type.String()),
  compiled: Type.Boolean(),
  imageReady: Type.Boolean({
    description: 'A rootfs image (and the kernel) is in the local store.',
  }),
  snapshotReady: Type.Boolean({
    description: 'A snapshot of the current images exists, so a job needs no cold boot.',
  }),
});
export const RuntimesResponse = Type.Array(RuntimeView);

/** The native error body (Fastify's own shape). */
export const ErrorResponse = Type.Object({
  statusCode: Type.Integer(),
  code: Type.String(),
  error: Type.String(),
  message: Type.String(),
});

export const HealthResponse = Type.Object({ status: Type.String() });
export const ReadyResponse = Type.Object({
  status: Type.String(),
  queue: Type.Object({
    queued: Type.Integer(),
    running: Type.Integer(),
    concurrency: Type.Integer(),
    maxQueued: Type.Integer(),
  }),
});

/** GET /v1/cluster: the hosts that run jobs and the queues, for an autoscaler. */
export const ClusterResponse = Type.Object({
  mode: Type.Union([Type.Literal('single'), Type.Literal('cluster')]),
  workers: Type.Array(
    Type.Object({
      id: Type.String(),
      capacity: Type.Integer({ description: 'Jobs it may run at once.' }),
      running: Type.Integer(),
      draining: Type.Boolean(),
      languages: Type.Array(Type.String()),
      lastSeenMs: Type.Integer({ description: 'Since its last heartbeat.' }),
    }),
  ),
  capacity: Type.Integer({ description: 'Slots of the workers that are not draining.' }),
  running: Type.Integer(),
  free: Type.Integer({ description: 'Free slots: capacity - running.' }),
  waiting: Type.Integer({ description: 'Jobs waiting in every queue.' }),
  queues: Type.Record(
    Type.String(),
    Type.Object({
      waiting: Type.Integer(),
      active: Type.Integer(),
      oldestMs: Type.Integer({ description: 'Age of the oldest waiting job (0: none waits).' }),
    }),
    { description: 'Per language with jobs waiting or running.' },
  ),
});
export type ClusterResponse = Static<typeof ClusterResponse>;

// ---- Piston (/api/v2) ----

/** Piston's error body. */
export const PistonError = Type.Object({ message: Type.String() });

export const PistonRuntime = Type.Object({
  language: Type.String(),
  version: Type.String(),
  aliases: Type.Array(Type.String()),
  runtime: Type.Optional(Type.String()),
});
export const PistonRuntimes = Type.Array(PistonRuntime);

export const PistonPackage = Type.Object({
  language: Type.String(),
  language_version: Type.String(),
  installed: Type.Boolean(),
});
export const PistonPackages = Type.Array(PistonPackage);

const PistonLimit = Type.Number({ minimum: -1, description: '-1 means the server maximum' });

export const PistonExecuteRequest = Type.Object(
  {
    language: Type.String({ minLength: 1, maxLength: 64 }),
    version: Type.String({ maxLength: 64, description: 'Version selector (3.10.0, 3.x, *).' }),
    files: Type.Array(
      Type.Object(
        {
          name: Type.Optional(Type.String({ maxLength: MAX_PATH_BYTES })),
          content: Type.String(),
          encoding: Type.Optional(Type.Enum(['utf8', 'base64', 'hex'])),
        },
        closed,
      ),
      { minItems: 1 },
    ),
    stdin: Type.Optional(Type.String()),
    args: Type.Optional(
      Type.Array(Type.String({ maxLength: MAX_ARG_STRING_BYTES }), { maxItems: 1000 }),
    ),
    compile_timeout: Type.Optional(PistonLimit),
    run_timeout: Type.Optional(PistonLimit),
    compile_cpu_time: Type.Optional(PistonLimit),
    run_cpu_time: Type.Optional(PistonLimit),
    compile_memory_limit: Type.Optional(PistonLimit),
    run_memory_limit: Type.Optional(PistonLimit),
  },
  closed,
);
export type PistonExecuteRequest = Static<typeof PistonExecuteRequest>;

export const PistonStage = Type.Object({
  stdout: Type.String(),
  stderr: Type.String(),
  output: Type.String({
    description:
      'stdout and stderr in the order the program wrote them (as the agent read its two pipes)',
  }),
  code: Type.Union([Type.Integer(), Type.Null()]),
  signal: Type.Union([Type.String(), Type.Null()]),
  message: Type.Union([Type.String(), Type.Null()]),
  status: Type.Union([Type.String(), Type.Null()], {
    description: 'RE, SG, TO, OL, EL or XX as Piston reports them; null when it ended well',
  }),
  cpu_time: Type.Union([Type.Number(), Type.Null()]),
  wall_time: Type.Union([Type.Number(), Type.Null()]),
  memory: Type.Union([Type.Integer(), Type.Null()]),
});
export type PistonStage = Static<typeof PistonStage>;

export const PistonExecuteResponse = Type.Object({
  language: Type.String(),
  version: Type.String(),
  run: PistonStage,
  compile: Type.Optional(PistonStage),
});
export type PistonExecuteResponse = Static<typeof PistonExecuteResponse>;
