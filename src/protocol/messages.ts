import Type, { type Static, type TSchema } from 'typebox';
import { Compile } from 'typebox/compile';
import {
  ERROR_CATALOGUE,
  MessageInvalidError,
  RequestInvalidError,
  type ErrorCode,
} from '../errors.js';
import {
  BASE64_PATTERN,
  checkJob,
  ENV_NAME_PATTERN,
  MAX_ARTEFACT_ENTRIES,
  MAX_ARTEFACT_RAW_BYTES,
  MAX_ARG_STRING_BYTES,
  MAX_JOB_ARGS,
  MAX_JOB_CASES,
  MAX_JOB_FILES,
  MAX_PATH_BYTES,
} from './rules.js';

/** Bumped on any incompatible change to a message; sent in the agent's hello. */
export const PROTOCOL_VERSION = 1;

const closed = { additionalProperties: false } as const;
const Id = Type.String({ minLength: 1, maxLength: 128 });
/** Bytes, as standard base64. */
const Base64 = Type.String({ pattern: BASE64_PATTERN });

/** The statuses of a stage and of a whole job. */
export const STATUSES = [
  'ok',
  'compile_error',
  'runtime_error',
  'timeout',
  'memory_limit',
  'output_limit',
  'sandbox_error',
] as const;
export type Status = (typeof STATUSES)[number];
// Spelled out (not STATUSES.map): a mapped array loses the tuple type, and Static of the union
// then collapsed to `never`. The runtime schema is the same.
export const StatusSchema = Type.Union([
  Type.Literal('ok'),
  Type.Literal('compile_error'),
  Type.Literal('runtime_error'),
  Type.Literal('timeout'),
  Type.Literal('memory_limit'),
  Type.Literal('output_limit'),
  Type.Literal('sandbox_error'),
]);
type SameStatuses =
  Static<typeof StatusSchema> extends Status
    ? Status extends Static<typeof StatusSchema>
      ? true
      : never
    : never;
/** Fails to compile when STATUSES and StatusSchema drift apart. */
export const STATUS_SCHEMA_MATCHES: SameStatuses = true;

/** The limits of one stage. Units are in the names. */
export const LimitsSchema = Type.Object(
  {
    wallTimeMs: Type.Integer({ minimum: 1, maximum: 3_600_000 }),
    cpuTimeMs: Type.Integer({ minimum: 1, maximum: 3_600_000 }),
    memoryMib: Type.Integer({ minimum: 1, maximum: 65_536 }),
    processes: Type.Integer({ minimum: 1, maximum: 65_536 }),
    outputBytes: Type.Integer({ minimum: 1, maximum: 64 * 1024 * 1024 }),
    fileSizeBytes: Type.Integer({ minimum: 1, maximum: 4 * 1024 * 1024 * 1024 }),
    openFiles: Type.Integer({ minimum: 3, maximum: 65_536 }),
    /** RLIMIT_STACK, soft and hard: the main thread's stack (and glibc's default for others). */
    stackBytes: Type.Integer({ minimum: 65_536, maximum: 1024 * 1024 * 1024 }),
  },
  closed,
);
export type Limits = Static<typeof LimitsSchema>;

/**
 * The seccomp filter families of runner-exec (src/agent/native/runner-exec.c): `default` for
 * native code and most interpreters, `jvm` for the JVM, `node` for V8. docs/security.md lists
 * what each allows.
 */
export const SECCOMP_FAMILIES = ['default', 'jvm', 'node'] as const;
export type SeccompFamily = (typeof SECCOMP_FAMILIES)[number];
/** A seccomp family, as a schema (spelled out for the same reason as StatusSchema). */
export const SeccompFamilySchema = Type.Union([
  Type.Literal('default'),
  Type.Literal('jvm'),
  Type.Literal('node'),
]);

/**
 * One file of a job. Names are relative paths in the work dir; their byte limits, the encoding
 * and the rest are checked by `checkJob` (rules.ts) on both sides.
 */
export const JobFileSchema = Type.Object(
  {
    name: Type.String({ minLength: 1, maxLength: MAX_PATH_BYTES }),
    content: Type.String(),
    encoding: Type.Union([Type.Literal('utf8'), Type.Literal('base64')]),
  },
  closed,
);
export type JobFile = Static<typeof JobFileSchema>;

/** The result of one stage (compile or run). Output is base64 bytes, never assumed UTF-8. */
export const StageResultSchema = Type.Object(
  {
    status: StatusSchema,
    exitCode: Type.Union([Type.Integer(), Type.Null()]),
    signal: Type.Union([Type.String(), Type.Null()]),
    wallTimeMs: Type.Number({ minimum: 0 }),
    cpuTimeMs: Type.Union([Type.Number({ minimum: 0 }), Type.Null()]),
    memoryPeakBytes: Type.Union([Type.Integer({ minimum: 0 }), Type.Null()]),
    stdout: Base64,
    stderr: Base64,
    stdoutTruncated: Type.Boolean(),
    stderrTruncated: Type.Boolean(),
    message: Type.Optional(Type.String({ maxLength: 4096 })),
  },
  closed,
);
export type StageResult = Static<typeof StageResultSchema>;

/** A stage that stands for a failure of the system, not of the program (status sandbox_error). */
export function sandboxStage(message: string, wallTimeMs = 0): StageResult {
  return {
    status: 'sandbox_error',
    exitCode: null,
    signal: null,
    wallTimeMs,
    cpuTimeMs: null,
    memoryPeakBytes: null,
    stdout: '',
    stderr: '',
    stdoutTruncated: false,
    stderrTruncated: false,
    message: message.slice(0, 4096),
  };
}

/**
 * One entry of a compile artefact: the work dir as the compile stage left it, entry by entry,
 * parents before their children (docs/agent.md, "The compile cache"). `data` is a file's bytes,
 * `target` a link's. `checkArtefact` (rules.ts) holds the rest of the rules, on both sides.
 */
export const ArtefactEntrySchema = Type.Object(
  {
    path: Type.String({ minLength: 1, maxLength: MAX_PATH_BYTES }),
    kind: Type.Union([Type.Literal('file'), Type.Literal('dir'), Type.Literal('link')]),
    mode: Type.Integer({ minimum: 0, maximum: 0o777 }),
    data: Type.Optional(Base64),
    /** Present when `data` is the gzip of the file: the file's size, checked as it unpacks. */
    rawBytes: Type.Optional(Type.Integer({ minimum: 0, maximum: MAX_ARTEFACT_RAW_BYTES })),
    target: Type.Optional(Type.String({ minLength: 1, maxLength: MAX_PATH_BYTES })),
  },
  closed,
);
export type ArtefactEntry = Static<typeof ArtefactEntrySchema>;

/** A compile the host kept: the stage's result and the work dir it left. */
export const ArtefactSchema = Type.Object(
  {
    compile: StageResultSchema,
    entries: Type.Array(ArtefactEntrySchema, { maxItems: MAX_ARTEFACT_ENTRIES }),
  },
  closed,
);
export type Artefact = Static<typeof ArtefactSchema>;

// ---- host → agent ----

export const ExecuteMessageSchema = Type.Object(
  {
    type: Type.Literal('execute'),
    id: Id,
    language: Type.String({ minLength: 1, maxLength: 64 }),
    /** At least one, except in a sandbox job (which has none: its files are the sandbox's). */
    files: Type.Array(JobFileSchema, { maxItems: MAX_JOB_FILES }),
    stdin: Base64,
    args: Type.Array(Type.String({ maxLength: MAX_ARG_STRING_BYTES }), { maxItems: MAX_JOB_ARGS }),
    env: Type.Record(
      Type.String({ pattern: ENV_NAME_PATTERN, maxLength: 256 }),
      Type.String({ maxLength: MAX_ARG_STRING_BYTES }),
    ),
    compileLimits: LimitsSchema,
    runLimits: LimitsSchema,
    /**
     * The seccomp family every process of the job runs under (the language's `seccomp`). An
     * older host sends none: the agent then takes its own language definition's.
     */
    seccomp: Type.Optional(SeccompFamilySchema),
    /**
     * Test cases: when present, the program is compiled once and then run once per entry, each
     * with that stdin (base64) instead of `stdin`; the result carries `cases` and no `run`.
     */
    cases: Type.Optional(Type.Array(Base64, { minItems: 1, maxItems: MAX_JOB_CASES })),
    /**
     * A live job (docs/agent.md, "Streaming"): the agent sends `stage` and `output` messages as
     * they happen, keeps the run stage's stdin open for `stdin` messages until `stdin_end`,
     * and takes `signal`s. At most `windowBytes` of output are in flight: past it the agent
     * stops reading the program's pipes (so the program blocks on write) until the host's
     * `credit`s give room. The final `result` is still sent, the sum of the stream. Not with
     * `cases`.
     */
    stream: Type.Optional(
      Type.Object(
        { windowBytes: Type.Integer({ minimum: 4096, maximum: 16 * 1024 * 1024 }) },
        closed,
      ),
    ),
    /**
     * A sandbox job (docs/agent.md, "Sandboxes"): `argv` runs in the VM's persistent sandbox
     * folder (SANDBOX_DIR, or `cwd` under it) instead of a fresh work dir, with no files of its
     * own, no compile stage, and nothing removed after it. Sandbox jobs run side by side (each
     * stage in its own cgroup), and a host session that ends does not stop them. With
     * `detach`, the result is sent as soon as the program is started, and it runs on in the
     * background to its own end or its limits (an interpreter kept across calls).
     */
    sandbox: Type.Optional(
      Type.Object(
        {
          argv: Type.Array(Type.String({ maxLength: MAX_ARG_STRING_BYTES }), {
            minItems: 1,
            maxItems: MAX_JOB_ARGS,
          }),
          cwd: Type.Optional(Type.String({ minLength: 1, maxLength: MAX_PATH_BYTES })),
          detach: Type.Optional(Type.Boolean()),
        },
        closed,
      ),
    ),
    /**
     * The compile cache, a miss: after a compile stage that ends `ok`, and before the run, the
     * agent sends the work dir as an `artefact` message (unless it is over the artefact's caps).
     */
    keepArtefact: Type.Optional(Type.Boolean()),
    /**
     * The compile cache, a hit: the agent lays these entries out as the work dir instead of
     * writing `files` and compiling, and gives `artefact.compile` as the compile stage.
     */
    artefact: Type.Optional(ArtefactSchema),
  },
  closed,
);
export type ExecuteMessage = Static<typeof ExecuteMessageSchema>;

/** Signals a host may send to a live job's program (to its process group). */
export const LIVE_SIGNALS = [
  'SIGINT',
  'SIGTERM',
  'SIGKILL',
  'SIGQUIT',
  'SIGHUP',
  'SIGUSR1',
  'SIGUSR2',
] as const;
export type LiveSignal = (typeof LIVE_SIGNALS)[number];

/** Bytes for a live job's stdin (the run stage's; before it starts they wait for it). */
export const StdinMessageSchema = Type.Object(
  { type: Type.Literal('stdin'), id: Id, data: Base64 },
  closed,
);
export type StdinMessage = Static<typeof StdinMessageSchema>;

/** Closes a live job's stdin (the program reads end of file). */
export const StdinEndMessageSchema = Type.Object(
  { type: Type.Literal('stdin_end'), id: Id },
  closed,
);
export type StdinEndMessage = Static<typeof StdinEndMessageSchema>;

/** A signal for the running stage of a live job. */
export const SignalMessageSchema = Type.Object(
  {
    type: Type.Literal('signal'),
    id: Id,
    // Spelled out, as StatusSchema is (a mapped array loses the tuple type).
    signal: Type.Union([
      Type.Literal('SIGINT'),
      Type.Literal('SIGTERM'),
      Type.Literal('SIGKILL'),
      Type.Literal('SIGQUIT'),
      Type.Literal('SIGHUP'),
      Type.Literal('SIGUSR1'),
      Type.Literal('SIGUSR2'),
    ]),
  },
  closed,
);
export type SignalMessage = Static<typeof SignalMessageSchema>;

/** Room for `bytes` more of a live job's output (the host has passed that much on). */
export const CreditMessageSchema = Type.Object(
  { type: Type.Literal('credit'), id: Id, bytes: Type.Integer({ minimum: 1 }) },
  closed,
);
export type CreditMessage = Static<typeof CreditMessageSchema>;

export const PingMessageSchema = Type.Object({ type: Type.Literal('ping'), id: Id }, closed);
export type PingMessage = Static<typeof PingMessageSchema>;

/**
 * Sent after a snapshot restore, before any job: fresh entropy for the guest's random pool, the
 * host's clock, and the VM's new identity. Two VMs restored from one snapshot must not share
 * random state.
 */
export const SeedMessageSchema = Type.Object(
  {
    type: Type.Literal('seed'),
    id: Id,
    entropy: Type.String({ pattern: BASE64_PATTERN, minLength: 44, maxLength: 4096 }),
    unixTimeMs: Type.Integer({ minimum: 0 }),
    vmId: Id,
  },
  closed,
);
export type SeedMessage = Static<typeof SeedMessageSchema>;

/**
 * Sent to a restored VM waiting in the pool, for a language with a compile server (its
 * definition's `compileServer`): the agent starts that server under `limits` (the compile limits
 * a job of the language gets by default) and `seccomp`, and answers `primed` once it listens. The
 * next job's compile goes to it when its compile limits allow (docs/agent.md, "Compile
 * servers"); any other job first ends it.
 */
export const PrimeMessageSchema = Type.Object(
  {
    type: Type.Literal('prime'),
    id: Id,
    language: Type.String({ minLength: 1, maxLength: 64 }),
    limits: LimitsSchema,
    seccomp: SeccompFamilySchema,
  },
  closed,
);
export type PrimeMessage = Static<typeof PrimeMessageSchema>;

export const HostMessageSchema = Type.Union([
  ExecuteMessageSchema,
  PingMessageSchema,
  SeedMessageSchema,
  PrimeMessageSchema,
  StdinMessageSchema,
  StdinEndMessageSchema,
  SignalMessageSchema,
  CreditMessageSchema,
]);
export type HostMessage = Static<typeof HostMessageSchema>;

// ---- agent → host ----

/** The agent's first message on every session. */
export const HelloMessageSchema = Type.Object(
  {
    type: Type.Literal('hello'),
    protocol: Type.Integer({ minimum: 1 }),
    agentVersion: Type.String({ minLength: 1, maxLength: 64 }),
    languages: Type.Array(Type.String({ minLength: 1, maxLength: 64 }), { maxItems: 256 }),
    vmId: Type.Union([Type.String({ maxLength: 128 }), Type.Null()]),
  },
  closed,
);
export type HelloMessage = Static<typeof HelloMessageSchema>;

export const ResultMessageSchema = Type.Object(
  {
    type: Type.Literal('result'),
    id: Id,
    status: StatusSchema,
    compile: Type.Union([StageResultSchema, Type.Null()]),
    run: Type.Union([StageResultSchema, Type.Null()]),
    /** Time the agent spent on the job, from the execute message to this result (the host's
     * overhead is everything else). */
    agentMs: Type.Optional(Type.Number({ minimum: 0 })),
    /** One run stage per test case, in order (only when the execute message had `cases`). */
    cases: Type.Optional(Type.Array(StageResultSchema, { maxItems: MAX_JOB_CASES })),
    /** True when the compile stage went to the language's compile server (see `prime`). */
    compileServed: Type.Optional(Type.Boolean()),
  },
  closed,
);
export type ResultMessage = Static<typeof ResultMessageSchema>;

/** A stage of a live job starts or ends. */
export const StageMessageSchema = Type.Object(
  {
    type: Type.Literal('stage'),
    id: Id,
    stage: Type.Union([Type.Literal('compile'), Type.Literal('run')]),
    phase: Type.Union([Type.Literal('start'), Type.Literal('end')]),
    /** With `end`: how the stage ended. */
    status: Type.Optional(StatusSchema),
  },
  closed,
);
export type StageMessage = Static<typeof StageMessageSchema>;

/** Output of a live job's running stage, in the order the agent read it. */
export const OutputMessageSchema = Type.Object(
  {
    type: Type.Literal('output'),
    id: Id,
    stream: Type.Union([Type.Literal('stdout'), Type.Literal('stderr')]),
    data: Base64,
  },
  closed,
);
export type OutputMessage = Static<typeof OutputMessageSchema>;

export const PongMessageSchema = Type.Object({ type: Type.Literal('pong'), id: Id }, closed);
export type PongMessage = Static<typeof PongMessageSchema>;

/** The agent's answer to `seed`: the new identity it took, and the entropy bytes credited. */
/**
 * How the agent reseeded: `server` through the exec helper's reseed server, a process kept from
 * before the snapshot (no process started); `exec` with one exec of the helper; `tools` with
 * perl and date (an agent without the helper).
 */
export const ReseedViaSchema = Type.Union([
  Type.Literal('server'),
  Type.Literal('exec'),
  Type.Literal('tools'),
]);
export type ReseedVia = Static<typeof ReseedViaSchema>;

export const SeededMessageSchema = Type.Object(
  {
    type: Type.Literal('seeded'),
    id: Id,
    vmId: Id,
    entropyBytes: Type.Integer({ minimum: 0 }),
    via: Type.Optional(ReseedViaSchema),
  },
  closed,
);
export type SeededMessage = Static<typeof SeededMessageSchema>;

/**
 * The work dir a compile stage left (the execute message asked with `keepArtefact`), sent
 * before the run stage starts: nothing of the job but its compile has run when it leaves.
 */
export const ArtefactMessageSchema = Type.Object(
  {
    type: Type.Literal('artefact'),
    id: Id,
    entries: Type.Array(ArtefactEntrySchema, { maxItems: MAX_ARTEFACT_ENTRIES }),
  },
  closed,
);
export type ArtefactMessage = Static<typeof ArtefactMessageSchema>;

/** The catalogue's codes: an agent's error names one of them, nothing else. */
export const ERROR_CODES = Object.keys(ERROR_CATALOGUE) as [ErrorCode, ...ErrorCode[]];

export const ErrorMessageSchema = Type.Object(
  {
    type: Type.Literal('error'),
    id: Type.Union([Id, Type.Null()]),
    code: Type.Enum(ERROR_CODES),
    message: Type.String({ maxLength: 4096 }),
  },
  closed,
);
export type ErrorMessage = Static<typeof ErrorMessageSchema>;

/** The compile server of a `prime` listens; `ms`: from the prime to that, in the agent. */
export const PrimedMessageSchema = Type.Object(
  { type: Type.Literal('primed'), id: Id, ms: Type.Number({ minimum: 0 }) },
  closed,
);
export type PrimedMessage = Static<typeof PrimedMessageSchema>;

export const AgentMessageSchema = Type.Union([
  HelloMessageSchema,
  ResultMessageSchema,
  PongMessageSchema,
  SeededMessageSchema,
  PrimedMessageSchema,
  ErrorMessageSchema,
  StageMessageSchema,
  OutputMessageSchema,
  // From the agent: that many bytes of a live job's stdin are in the program's pipe.
  CreditMessageSchema,
  ArtefactMessageSchema,
]);
export type AgentMessage = Static<typeof AgentMessageSchema>;

/** A checker for one message union: returns the typed message or throws MESSAGE_INVALID. */
export type MessageParser<T> = (value: unknown) => T;

function parser<S extends TSchema>(schema: S, side: string): MessageParser<Static<S>> {
  const validator = Compile(schema);
  return (value: unknown) => {
    if (validator.Check(value)) return value;
    const first = validator.Errors(value)[0];
    const where = first ? `${first.instancePath || '/'}: ${first.message}` : 'invalid';
    const type =
      typeof value === 'object' && value !== null && 'type' in value ? String(value.type) : '?';
    throw new MessageInvalidError(
      `${side} message of type ${JSON.stringify(type).slice(0, 40)} is malformed (${where})`,
    );
  };
}

/** Checks a message the host sent (used by the agent). */
export const parseHostMessage = parser(HostMessageSchema, 'host');
/** Checks a message the agent sent (used by the host). */
export const parseAgentMessage = parser(AgentMessageSchema, 'agent');
/** Checks a stage result alone (used in tests and by the API layer). */
export const parseStageResult = parser(StageResultSchema, 'stage result');

const executeValidator = Compile(ExecuteMessageSchema);

/**
 * The host's check of an execute message it built, before any VM is touched: the same schema
 * the agent parses with, then the same rules (`checkJob`). A message that passes is one the
 * agent takes. Throws REQUEST_INVALID for a schema breach (naming the path), or the rule's own
 * error (FILE_NAME_INVALID, ENCODING_INVALID, ENV_INVALID, ARGS_INVALID, LIMIT_INVALID).
 */
export function checkExecuteMessage(message: ExecuteMessage): ExecuteMessage {
  if (!executeValidator.Check(message)) {
    const first = executeValidator.Errors(message)[0];
    const where = first
      ? `${first.instancePath.slice(1).replace(/\//g, '.') || 'job'} ${first.message}`
      : 'invalid';
    throw new RequestInvalidError(`the job is not one the agent takes: ${where}`);
  }
  checkJob(message);
  return message;
}
