import type { Duplex } from 'node:stream';
import { setTimeout as sleep } from 'node:timers/promises';
import { AGENT_VERSION } from '../version.js';
import { ProtocolError, RunnerError, SandboxFailureError } from '../errors.js';
import {
  encodeFrame,
  MAX_FRAME_BYTES,
  MessageChannel,
  parseHostMessage,
  PROTOCOL_VERSION,
  type AgentMessage,
  type ErrorMessage,
  type ExecuteMessage,
  type HostMessage,
  type ResultMessage,
  type ReseedVia,
  type SeedMessage,
  type PrimeMessage,
  type Limits,
  type SeccompFamily,
  type StageResult,
  type CreditMessage,
  type SignalMessage,
  type StdinEndMessage,
  type StdinMessage,
} from '../protocol/index.js';
import {
  REQUEST_CODES,
  type ExecutorJob,
  type ExecutorOutcome,
  type KeepArtefact,
} from './executor.js';
import type { GuestActions } from './guest.js';
import { LiveJob } from './live.js';
import { messageOf, sandboxErrorResult } from './stage.js';

/** What the server needs of an executor (the real one, or a fake in tests). */
export interface JobExecutor {
  languages(): string[];
  /** Runs a job; `live` (a streamed job) gets its output as it comes, and gives it stdin. */
  execute(
    job: ExecutorJob,
    signal?: AbortSignal,
    live?: LiveJob,
    keep?: KeepArtefact,
  ): Promise<ExecutorOutcome>;
  /** Starts a language's compile server (a `prime`); the ms it took. Absent: primes fail. */
  prime?(language: string, limits: Limits, seccomp: SeccompFamily): Promise<number>;
}

export interface AgentServerOptions {
  readonly executor: JobExecutor;
  readonly guest: GuestActions;
  /** The VM's identity until a seed message gives it a new one. */
  readonly vmId?: string | null;
  /** A frame that has begun must be complete within this many ms (default 60 s). */
  readonly frameTimeoutMs?: number;
  readonly maxFrameBytes?: number;
  readonly log?: (line: string) => void;
}

/**
 * The agent's side of the guest protocol. Serves one host session at a time over any byte
 * stream (the transports hand it streams): hello first, then execute, ping and seed messages.
 * Jobs and seeds run one after another in arrival order; pings are answered at once, even while
 * a job runs, and so are a live job's stdin, stdin_end, signal and credit messages (routed to
 * that job, or dropped once it has ended). A protocol error from the host ends that session, and only that session; when a
 * session ends, its running job is killed.
 */
export class AgentServer {
  private active = false;
  private currentVmId: string | null;

  constructor(private readonly options: AgentServerOptions) {
    this.currentVmId = options.vmId ?? null;
  }

  /** True while a host session is being served. */
  get busy(): boolean {
    return this.active;
  }

  /** The VM id from the last seed (or the start-up option). */
  get vmId(): string | null {
    return this.currentVmId;
  }

  /**
   * Serves one session on `stream` until it closes; never rejects. With `helloDelayMs`, the
   * hello waits that long and is skipped if the stream ended meanwhile (a virtio-serial port
   * reads end-of-file while no host is connected).
   */
  async serve(stream: Duplex, opts: { helloDelayMs?: number } = {}): Promise<void> {
    if (this.active) {
      this.refuse(stream);
      return;
    }
    this.active = true;
    const log = this.options.log ?? (() => undefined);
    const channel = new MessageChannel<HostMessage, AgentMessage>(stream, {
      parse: parseHostMessage,
      frameTimeoutMs: this.options.frameTimeoutMs ?? 60_000,
      maxFrameBytes: this.options.maxFrameBytes ?? MAX_FRAME_BYTES,
    });
    const abort = new AbortController();
    channel.onClose(() => abort.abort());
    try {
      if (opts.helloDelayMs) await sleep(opts.helloDelayMs);
      if (channel.closeReason) return;
      await this.send(channel, {
        type: 'hello',
        protocol: PROTOCOL_VERSION,
        agentVersion: AGENT_VERSION,
        languages: this.options.executor.languages(),
        vmId: this.currentVmId,
      });
      let queue: Promise<void> = Promise.resolve();
      // Live jobs by id, from their execute message on (their stdin may come before they start).
      const lives = new Map<string, LiveJob>();
      for (;;) {
        let message: HostMessage;
        try {
          message = await channel.next();
        } catch (err) {
          if (err instanceof ProtocolError) log(`session closed: ${err.code}: ${err.message}`);
          break;
        }
        if (message.type === 'ping') {
          await this.send(channel, { type: 'pong', id: message.id });
          continue;
        }
        if (
          message.type === 'stdin' ||
          message.type === 'stdin_end' ||
          message.type === 'signal' ||
          message.type === 'credit'
        ) {
          // For a job that ended (or never streamed) they are late, not wrong: dropped.
          const live = lives.get(message.id);
          if (live !== undefined) routeLive(live, message);
          continue;
        }
        const m = message;
        let live: LiveJob | undefined;
        if (m.type === 'execute' && m.stream !== undefined && !lives.has(m.id)) {
          live = new LiveJob(m.id, m.stream.windowBytes, (out) => void this.send(channel, out));
          lives.set(m.id, live);
        }
        if (m.type === 'execute' && m.sandbox !== undefined) {
          // Side by side, and not tied to this session: an interpreter kept across calls must
          // outlive the session of the call that started it (a pause and resume is a new one).
          void this.execute(channel, m, undefined, live).finally(() => {
            if (live !== undefined) lives.delete(m.id);
          });
          continue;
        }
        queue = queue.then(async () => {
          if (m.type === 'prime') return this.prime(channel, m);
          if (m.type !== 'execute') return this.seed(channel, m);
          try {
            await this.execute(channel, m, abort.signal, live);
          } finally {
            if (live !== undefined) lives.delete(m.id);
          }
        });
      }
      await queue;
    } catch (err) {
      log(`session failed: ${messageOf(err)}`);
    } finally {
      channel.close();
      this.active = false;
    }
  }

  /** Turns away a second host: one AGENT_BUSY error frame, then the stream is closed. */
  refuse(stream: Duplex): void {
    const frame = encodeFrame({
      type: 'error',
      id: null,
      code: 'AGENT_BUSY',
      message: 'the agent already serves a host session',
    } satisfies ErrorMessage);
    stream.on('error', () => undefined);
    stream.end(frame);
    setTimeout(() => stream.destroy(), 1000).unref();
  }

  private async execute(
    channel: MessageChannel<HostMessage, AgentMessage>,
    message: ExecuteMessage,
    signal: AbortSignal | undefined,
    live?: LiveJob,
  ): Promise<void> {
    const { id, language, files, stdin, args, env, compileLimits, runLimits, cases, sandbox } =
      message;
    const job: ExecutorJob = {
      language,
      files,
      stdin,
      args,
      env,
      compileLimits,
      runLimits,
      ...(cases && { cases }),
      ...(sandbox && { sandbox }),
      ...(message.seccomp && { seccomp: message.seccomp }),
      ...(message.keepArtefact === true && { keepArtefact: true }),
      ...(message.artefact && { artefact: message.artefact }),
    };
    const received = performance.now();
    const log = this.options.log ?? (() => undefined);
    log(
      `job ${id}: ${language}, ${files.length} file(s)${cases ? `, ${cases.length} case(s)` : ''}`,
    );
    let result: ExecutorOutcome;
    try {
      const keep: KeepArtefact = async (entries) => {
        log(`job ${id}: the compile is kept (${entries.length} entries)`);
        await this.send(channel, { type: 'artefact', id, entries });
      };
      result = await this.options.executor.execute(job, signal, live, keep);
    } catch (err) {
      if (err instanceof RunnerError && REQUEST_CODES.has(err.code)) {
        log(`job ${id}: refused: ${err.code}: ${err.message}`);
        await this.send(channel, { type: 'error', id, code: err.code, message: err.message });
        return;
      }
      const run = sandboxErrorResult(`the executor failed: ${messageOf(err)}`);
      result = { status: 'sandbox_error', compile: null, run, ...(cases && { cases: [run] }) };
    }
    const agentMs = Math.round((performance.now() - received) * 10) / 10;
    log(`job ${id}: ${result.status} in ${agentMs} ms`);
    let reply: ResultMessage;
    try {
      reply = fitResult(
        { type: 'result', id, ...result, agentMs },
        this.options.maxFrameBytes ?? MAX_FRAME_BYTES,
      );
    } catch (err) {
      // Never leave the host waiting to its deadline: a result that cannot be built is a result.
      log(`job ${id}: cannot build the result: ${messageOf(err)}`);
      const run = sandboxErrorResult(`the agent could not build the result: ${messageOf(err)}`);
      reply = { type: 'result', id, status: 'sandbox_error', compile: null, run, agentMs };
    }
    await this.send(channel, reply);
  }

  private async seed(
    channel: MessageChannel<HostMessage, AgentMessage>,
    message: SeedMessage,
  ): Promise<void> {
    try {
      const entropy = Buffer.from(message.entropy, 'base64');
      const guest = this.options.guest;
      let credited: number;
      let via: ReseedVia = 'tools';
      if (guest.reseed) {
        ({ credited, via } = await guest.reseed(entropy, message.unixTimeMs));
      } else {
        credited = await guest.addEntropy(entropy);
        await guest.setClock(message.unixTimeMs);
      }
      this.currentVmId = message.vmId;
      await this.send(channel, {
        type: 'seeded',
        id: message.id,
        vmId: message.vmId,
        entropyBytes: credited,
        via,
      });
    } catch (err) {
      await this.send(channel, {
        type: 'error',
        id: message.id,
        code: 'SANDBOX_FAILURE',
        message: `seed failed: ${messageOf(err)}`.slice(0, 4096),
      });
    }
  }

  private async prime(
    channel: MessageChannel<HostMessage, AgentMessage>,
    message: PrimeMessage,
  ): Promise<void> {
    const log = this.options.log ?? (() => undefined);
    try {
      const executor = this.options.executor;
      if (executor.prime === undefined)
        throw new SandboxFailureError('this agent starts no compile servers');
      const ms = await executor.prime(message.language, message.limits, message.seccomp);
      await this.send(channel, { type: 'primed', id: message.id, ms });
    } catch (err) {
      const code = err instanceof RunnerError ? err.code : 'SANDBOX_FAILURE';
      log(`prime ${message.id}: ${code}: ${messageOf(err)}`);
      await this.send(channel, {
        type: 'error',
        id: message.id,
        code,
        message: `prime failed: ${messageOf(err)}`.slice(0, 4096),
      });
    }
  }

  /** Sends unless the session is gone (a closed session has nobody to tell). */
  private async send(
    channel: MessageChannel<HostMessage, AgentMessage>,
    message: AgentMessage,
  ): Promise<void> {
    if (channel.closeReason) return;
    try {
      await channel.send(message);
    } catch (err) {
      this.options.log?.(`send failed: ${messageOf(err)}`);
      channel.close(err instanceof Error ? err : undefined);
    }
  }
}

/** Hands a host's live message to its job. */
function routeLive(
  live: LiveJob,
  message: StdinMessage | StdinEndMessage | SignalMessage | CreditMessage,
): void {
  switch (message.type) {
    case 'stdin':
      live.stdin(Buffer.from(message.data, 'base64'));
      return;
    case 'stdin_end':
      live.stdinEnd();
      return;
    case 'signal':
      live.signal(message.signal);
      return;
    case 'credit':
      live.credit(message.bytes);
      return;
  }
}

/**
 * Output limits are per stream and per stage, so four captures at their cap can outgrow one
 * frame. Trims every stream to an equal share of what fits, marks it truncated and says so.
 */
export function fitResult(reply: ResultMessage, maxFrameBytes: number): ResultMessage {
  const size = Buffer.byteLength(JSON.stringify(reply));
  if (size <= maxFrameBytes) return reply;
  const stages = [reply.compile, reply.run, ...(reply.cases ?? [])];
  let streamChars = 0;
  let streams = 0;
  for (const s of stages) {
    if (!s) continue;
    streamChars += s.stdout.length + s.stderr.length;
    streams += 2;
  }
  const spare = maxFrameBytes - (size - streamChars) - 2048;
  const perStreamBytes = Math.max(0, Math.floor(spare / streams / 4) * 3);
  const trim = (s: StageResult | null): StageResult | null => {
    if (!s) return s;
    const out = { ...s };
    for (const key of ['stdout', 'stderr'] as const) {
      const bytes = Buffer.from(s[key], 'base64');
      if (bytes.length <= perStreamBytes) continue;
      out[key] = bytes.subarray(0, perStreamBytes).toString('base64');
      out[key === 'stdout' ? 'stdoutTruncated' : 'stderrTruncated'] = true;
      out.message = `${s.message ? `${s.message}; ` : ''}output trimmed to fit one protocol frame`;
    }
    return out;
  };
  return {
    ...reply,
    compile: trim(reply.compile),
    run: trim(reply.run),
    ...(reply.cases && { cases: reply.cases.map((c) => trim(c) ?? c) }),
  };
}
