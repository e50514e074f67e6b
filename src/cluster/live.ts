import Type, { type Static } from 'typebox';
import { Compile } from 'typebox/compile';
import type { Redis } from 'ioredis';
import { ClusterWireError, asRunnerError } from '../errors.js';
import type { LiveControls, LiveEvent, LiveHandlers } from '../pool/index.js';
import { LIVE_SIGNALS, StatusSchema, type LiveSignal } from '../protocol/index.js';
import type { clusterKeys } from './names.js';

/**
 * Streaming across hosts: a live job's events travel from the worker that runs it to the API
 * node that watches it through a Redis Stream per job (XADD / XREAD BLOCK), and the API node's
 * acknowledgements, stdin, signals and cancel travel back through a second stream. A stream,
 * not pub/sub: an entry added before the reader subscribed is still there for it (pub/sub
 * drops what nobody listened to), in order, and a late watcher on another API node replays it
 * from the start. docs/scaling.md says what it costs.
 */

/** Event weight the worker may have published beyond what the API node acknowledged. */
export const LIVE_RELAY_WINDOW_BYTES = 256 * 1024;

/**
 * How long a worker waits for an API node's ack before it takes the consumer for gone (its
 * node died): the job then goes on unthrottled, its output bounded by its caps.
 */
export const LIVE_ACK_TIMEOUT_MS = 10_000;

/** How long a finished job's streams stay in Redis (for a late watcher), like the hub's. */
export const LIVE_KEPT_MS = 5 * 60_000;

/** A safety bound on a stream's length; a job's output is bounded by its caps long before. */
const MAX_ENTRIES = 100_000;

/** How long one blocking read waits before it looks whether it should stop. */
const BLOCK_MS = 2000;

const SIGNALS = LIVE_SIGNALS.map((s) => Type.Literal(s));

const B64 = Type.String({ maxLength: 4 * 1024 * 1024, pattern: '^[A-Za-z0-9+/]*={0,2}$' });

/** One entry of a job's events stream (worker -> API nodes). */
export const LiveEntrySchema = Type.Union([
  Type.Object(
    {
      t: Type.Literal('stage'),
      stage: Type.Union([Type.Literal('compile'), Type.Literal('run')]),
      phase: Type.Union([Type.Literal('start'), Type.Literal('end')]),
      status: Type.Optional(StatusSchema),
    },
    { additionalProperties: false },
  ),
  Type.Object(
    {
      t: Type.Literal('output'),
      stream: Type.Union([Type.Literal('stdout'), Type.Literal('stderr')]),
      data: B64,
    },
    { additionalProperties: false },
  ),
  /** Stdin bytes the worker has handed to its agent (room for more). */
  Type.Object(
    { t: Type.Literal('credit'), bytes: Type.Integer({ minimum: 0 }) },
    { additionalProperties: false },
  ),
  /** The job ended on the worker: no event follows. */
  Type.Object({ t: Type.Literal('end') }, { additionalProperties: false }),
]);
export type LiveEntry = Static<typeof LiveEntrySchema>;

/** One entry of a job's control stream (API node -> worker). */
export const ControlEntrySchema = Type.Union([
  /** Event weight the API node's consumer has taken. */
  Type.Object(
    { t: Type.Literal('ack'), bytes: Type.Integer({ minimum: 0 }) },
    { additionalProperties: false },
  ),
  Type.Object({ t: Type.Literal('stdin'), data: B64 }, { additionalProperties: false }),
  Type.Object({ t: Type.Literal('stdin_end') }, { additionalProperties: false }),
  Type.Object(
    { t: Type.Literal('signal'), signal: Type.Unsafe<LiveSignal>(Type.Union(SIGNALS)) },
    { additionalProperties: false },
  ),
  /** The client went away: the worker aborts the job. */
  Type.Object({ t: Type.Literal('cancel') }, { additionalProperties: false }),
]);
export type ControlEntry = Static<typeof ControlEntrySchema>;

const liveCheck = Compile(LiveEntrySchema);
const controlCheck = Compile(ControlEntrySchema);

function decode<T>(
  check: { Check(v: unknown): v is T },
  text: string | undefined,
  what: string,
): T {
  let value: unknown;
  try {
    value = JSON.parse(text ?? '');
  } catch {
    throw new ClusterWireError(`a ${what} entry is not JSON`);
  }
  if (!check.Check(value)) throw new ClusterWireError(`a ${what} entry does not match its schema`);
  return value;
}

/** How much an event weighs in the window: its bytes, and at least 1 (a stage event). */
function weight(entry: LiveEntry): number {
  return entry.t === 'output' ? Math.max(1, Math.floor((entry.data.length * 3) / 4)) : 1;
}

type Keys = ReturnType<typeof clusterKeys>;

/** Appends one entry to a stream (bounded; the stream's keys expire with the job). */
function append(redis: Redis, key: string, entry: object): Promise<unknown> {
  return redis.xadd(key, 'MAXLEN', '~', MAX_ENTRIES, '*', 'e', JSON.stringify(entry));
}

/**
 * Reads a stream from its start, entry by entry, until `stop()` holds or `each` returns
 * false. `redis` must be a connection of its own (XREAD BLOCK holds it).
 */
/**
 * Tails a job's live event stream to its `end` entry (or `stop`): every other entry decoded and
 * handed to `each`; one that does not decode is skipped.
 */
function tailLiveEvents(
  redis: Redis,
  key: string,
  each: (entry: Exclude<LiveEntry, { t: 'end' }>) => void,
  stop: () => boolean,
): Promise<void> {
  return tail(
    redis,
    key,
    (text) => {
      let entry: LiveEntry;
      try {
        entry = decode(liveCheck, text, 'live event');
      } catch {
        return true;
      }
      if (entry.t === 'end') return false;
      each(entry);
      return true;
    },
    stop,
  );
}

async function tail(
  redis: Redis,
  key: string,
  each: (text: string | undefined) => boolean | Promise<boolean>,
  stop: () => boolean,
): Promise<void> {
  let last = '0-0';
  while (!stop()) {
    const got = await redis.xread('COUNT', 256, 'BLOCK', BLOCK_MS, 'STREAMS', key, last);
    for (const [, entries] of got ?? []) {
      for (const [id, fields] of entries) {
        last = id;
        if (!(await each(fields[1]))) return;
      }
    }
  }
}

/** A job's side on the worker: the live consumer it gives its engine, and the job's controls. */
export interface WorkerLive {
  /** The consumer for the local engine (undefined for a job that is not live). */
  readonly handlers: LiveHandlers | undefined;
  /** Aborted when an API node asked for the job to be cancelled. */
  readonly signal: AbortSignal;
  /** Marks the end of the job's events and stops reading its controls. */
  close(): Promise<void>;
}

/**
 * The worker's side of one job: events go to the job's events stream, at most
 * LIVE_RELAY_WINDOW_BYTES ahead of what an API node acknowledged (the promise of `onEvent`
 * waits past it, so the agent's window holds the program); the job's control stream is read
 * for acks, stdin, signals and cancel. A job that is not live has only the cancel.
 */
export function workerLive(
  redis: Redis,
  keys: Keys,
  id: string,
  live: boolean,
  log?: (line: string) => void,
  ackTimeoutMs = LIVE_ACK_TIMEOUT_MS,
): WorkerLive {
  const reader = redis.duplicate();
  reader.on('error', () => undefined);
  const abort = new AbortController();
  const evKey = keys.liveEvents(id);
  const ctlKey = keys.liveControl(id);
  let published = 0;
  let acked = 0;
  let closed = false;
  /** No ack came within ackTimeoutMs: nobody holds the window any more. */
  let unwatched = false;
  let closing: Promise<void> | null = null;
  const roomWaiters: (() => void)[] = [];
  let controls: LiveControls | null = null;
  let startedResolve: () => void = () => undefined;
  const started = new Promise<void>((r) => (startedResolve = r));
  // Stdin and its end go to the agent in order, apart from acks (a program that does not read
  // its stdin must not stop its output's acks).
  let stdinChain: Promise<void> = started;

  const onControl = (entry: ControlEntry): void => {
    switch (entry.t) {
      case 'ack':
        acked += entry.bytes;
        if (published - acked < LIVE_RELAY_WINDOW_BYTES) for (const w of roomWaiters.splice(0)) w();
        return;
      case 'stdin': {
        const data = Buffer.from(entry.data, 'base64');
        stdinChain = stdinChain
          .then(() => controls?.stdin(data))
          .then(() => append(redis, evKey, { t: 'credit', bytes: data.length }))
          .then(
            () => undefined,
            () => undefined,
          );
        return;
      }
      case 'stdin_end':
        stdinChain = stdinChain.then(() => controls?.stdinEnd());
        return;
      case 'signal':
        void started.then(() => controls?.signal(entry.signal));
        return;
      case 'cancel':
        abort.abort();
        // Until the engine honours the signal itself, the program is killed: the job ends now.
        void started.then(() => controls?.signal('SIGKILL'));
        for (const w of roomWaiters.splice(0)) w();
        return;
    }
  };

  const reading = tail(
    reader,
    ctlKey,
    (text) => {
      try {
        onControl(decode(controlCheck, text, 'control'));
      } catch (err) {
        log?.(`job ${id}: ${asRunnerError(err).message}`);
      }
      return true;
    },
    () => closed,
  ).catch((err: unknown) => {
    if (!closed) log?.(`job ${id}: control stream: ${asRunnerError(err).message}`);
  });

  const publish = async (entry: LiveEntry): Promise<void> => {
    published += weight(entry);
    await append(redis, evKey, entry);
    // Back-pressure across hosts: past the window the worker waits for the API node's acks.
    while (
      published - acked >= LIVE_RELAY_WINDOW_BYTES &&
      !closed &&
      !unwatched &&
      !abort.signal.aborted
    ) {
      const before = acked;
      await new Promise<void>((r) => {
        const timer = setTimeout(r, ackTimeoutMs);
        roomWaiters.push(() => {
          clearTimeout(timer);
          r();
        });
      });
      if (acked === before && !closed && !abort.signal.aborted) {
        unwatched = true;
        log?.(`job ${id}: no ack from its API node for ${ackTimeoutMs} ms; not waiting for it`);
      }
    }
  };

  const handlers: LiveHandlers | undefined = live
    ? {
        onStart: (c) => {
          controls = c;
          startedResolve();
        },
        onEvent: (event) =>
          publish(
            event.type === 'output'
              ? { t: 'output', stream: event.stream, data: event.data.toString('base64') }
              : {
                  t: 'stage',
                  stage: event.stage,
                  phase: event.phase,
                  ...(event.status !== undefined && { status: event.status }),
                },
          ),
      }
    : undefined;

  return {
    handlers,
    signal: abort.signal,
    close: () => {
      closing ??= (async () => {
        closed = true;
        for (const w of roomWaiters.splice(0)) w();
        startedResolve();
        try {
          if (live) await append(redis, evKey, { t: 'end' });
          await redis.multi().pexpire(evKey, LIVE_KEPT_MS).pexpire(ctlKey, LIVE_KEPT_MS).exec();
        } catch (err) {
          log?.(`job ${id}: could not end its live stream: ${asRunnerError(err).message}`);
        }
        reader.disconnect();
        await reading;
      })();
      return closing;
    },
  };
}

/** The API node's side of one live job: the consumer is fed in order; its controls go back. */
export interface ApiLive {
  /** Resolves once the `end` entry was read and every event handed to the consumer. */
  readonly done: Promise<void>;
  /** Stops reading (the job's result is in and its end did not come in time). */
  stop(): void;
}

/**
 * Feeds `live` the job's events from its stream (from the start: none is lost however late
 * the worker or this reader comes), one at a time; each event's weight is acknowledged to the
 * worker once the consumer's promise settles. The consumer's controls write to the job's
 * control stream; stdin waits for the worker's credit past LIVE_RELAY_WINDOW_BYTES.
 */
export function apiLive(redis: Redis, keys: Keys, id: string, live: LiveHandlers): ApiLive {
  const reader = redis.duplicate();
  reader.on('error', () => undefined);
  const ctlKey = keys.liveControl(id);
  let stopped = false;
  let ended = false;
  let stdinInFlight = 0;
  const stdinWaiters: (() => void)[] = [];
  const send = (entry: ControlEntry): Promise<unknown> =>
    ended ? Promise.resolve() : append(redis, ctlKey, entry).catch(() => undefined);
  live.onStart?.({
    stdin: async (data) => {
      if (ended || data.length === 0) return;
      stdinInFlight += data.length;
      await send({ t: 'stdin', data: data.toString('base64') });
      while (stdinInFlight >= LIVE_RELAY_WINDOW_BYTES && !ended)
        await new Promise<void>((r) => stdinWaiters.push(r));
    },
    stdinEnd: () => void send({ t: 'stdin_end' }),
    signal: (signal: LiveSignal) => void send({ t: 'signal', signal }),
    get ended() {
      return ended;
    },
  });
  let delivered: Promise<void> = Promise.resolve();
  const finish = (): void => {
    ended = true;
    for (const w of stdinWaiters.splice(0)) w();
  };
  const reading = tailLiveEvents(
    reader,
    keys.liveEvents(id),
    (entry) => {
      if (entry.t === 'credit') {
        stdinInFlight = Math.max(0, stdinInFlight - entry.bytes);
        if (stdinInFlight < LIVE_RELAY_WINDOW_BYTES) for (const w of stdinWaiters.splice(0)) w();
        return;
      }
      const event = toEvent(entry);
      const bytes = weight(entry);
      // Read on without waiting (credits must not queue behind a slow consumer); what is read
      // ahead is bounded by the worker's window, which waits for these acks.
      delivered = delivered
        .then(() => live.onEvent(event))
        .catch(() => undefined)
        .then(() => void append(redis, ctlKey, { t: 'ack', bytes }).catch(() => undefined));
    },
    () => stopped,
  )
    .catch(() => undefined)
    .then(() => delivered)
    .finally(() => {
      finish();
      reader.disconnect();
      void redis.pexpire(ctlKey, LIVE_KEPT_MS).catch(() => 0);
    });
  return {
    done: reading,
    stop: () => {
      stopped = true;
      finish();
      reader.disconnect();
    },
  };
}

/** The engine's event of a stream entry. */
function toEvent(entry: Extract<LiveEntry, { t: 'stage' | 'output' }>): LiveEvent {
  return entry.t === 'output'
    ? { type: 'output', stream: entry.stream, data: Buffer.from(entry.data, 'base64') }
    : {
        type: 'stage',
        stage: entry.stage,
        phase: entry.phase,
        ...(entry.status !== undefined && { status: entry.status }),
      };
}

/**
 * Watches a job's events from any API node (GET /v1/jobs/:id/events of a job another node
 * accepted): replayed from the start, then as they come, until the job's end; it acknowledges
 * nothing (a watcher never holds the job back). Returns the means to stop watching.
 */
export function watchLive(
  redis: Redis,
  keys: Keys,
  id: string,
  onEvent: (event: LiveEvent) => void,
  onEnd: () => void,
): () => void {
  const reader = redis.duplicate();
  reader.on('error', () => undefined);
  let stopped = false;
  void tailLiveEvents(
    reader,
    keys.liveEvents(id),
    (entry) => {
      if (entry.t !== 'credit') onEvent(toEvent(entry));
    },
    () => stopped,
  )
    .catch(() => undefined)
    .finally(() => {
      reader.disconnect();
      if (!stopped) onEnd();
    });
  return () => {
    stopped = true;
    reader.disconnect();
  };
}

/** Asks the worker of job `id` to abort it (the client went away). */
export function cancelLive(redis: Redis, keys: Keys, id: string): Promise<unknown> {
  const key = keys.liveControl(id);
  return redis
    .multi()
    .xadd(key, 'MAXLEN', '~', MAX_ENTRIES, '*', 'e', JSON.stringify({ t: 'cancel' }))
    .pexpire(key, LIVE_KEPT_MS)
    .exec();
}
