import Type, { type Static } from 'typebox';
import { Compile } from 'typebox/compile';
import { ClusterWireError } from '../errors.js';
import {
  checkExecuteMessage,
  ExecuteMessageSchema,
  StageResultSchema,
  StatusSchema,
} from '../protocol/index.js';
import { JobTimingsSchema, type JobResult, type PreparedJob } from '../pool/index.js';

/**
 * The one wire format between API nodes and workers: a prepared job as a BullMQ job's data.
 * It carries the agent's execute message as built once by the API node (prepareJob), so a
 * worker runs exactly what the API node checked; the worker checks it again against the same
 * schema and rules, so a node of another version cannot slip an unchecked job through.
 */
export const ClusterJobSchema = Type.Object(
  {
    /** The wire's version: a worker refuses a job of a version it does not know. */
    v: Type.Literal(1),
    job: Type.Object(
      {
        id: Type.String({ minLength: 1, maxLength: 128 }),
        message: ExecuteMessageSchema,
        language: Type.String({ minLength: 1, maxLength: 64 }),
        version: Type.String({ maxLength: 128 }),
        compiles: Type.Boolean(),
        deadlineMs: Type.Integer({ minimum: 1 }),
        /** A VM with network (docs/network.md): the worker's settings must allow it too. */
        network: Type.Boolean(),
      },
      { additionalProperties: false },
    ),
    /** The API key (or client) that submitted it, for the per-key share. */
    owner: Type.Union([Type.String({ maxLength: 256 }), Type.Null()]),
    /** When the API node queued it (ms since the epoch). */
    enqueuedAt: Type.Integer({ minimum: 0 }),
  },
  { additionalProperties: false },
);
export type ClusterJob = Static<typeof ClusterJobSchema>;

/** Builds the wire form of a prepared job. */
export function toClusterJob(job: PreparedJob, owner: string | null, now = Date.now()): ClusterJob {
  return {
    v: 1,
    job: {
      id: job.id,
      message: job.message,
      language: job.language,
      version: job.version,
      compiles: job.compiles,
      deadlineMs: job.deadlineMs,
      network: job.network,
    },
    owner,
    enqueuedAt: now,
  };
}

const clusterJobValidator = Compile(ClusterJobSchema);

/** Checks a job read from the queue and gives back the engine's prepared job. */
export function fromClusterJob(data: unknown): { job: PreparedJob; owner: string | null } {
  if (!clusterJobValidator.Check(data)) {
    const first = clusterJobValidator.Errors(data)[0];
    throw new ClusterWireError(
      `a queued job does not match the cluster wire format${first ? `: ${first.instancePath || '/'} ${first.message}` : ''}`,
    );
  }
  if (data.job.message.id !== data.job.id)
    throw new ClusterWireError(
      `queued job ${data.job.id} carries the message of ${data.job.message.id}`,
    );
  checkExecuteMessage(data.job.message);
  return { job: data.job, owner: data.owner };
}

/** A job's result as a worker hands it back through the queue (the engine's JobResult). */
export const ClusterResultSchema = Type.Object(
  {
    id: Type.String({ minLength: 1, maxLength: 128 }),
    language: Type.String(),
    version: Type.String(),
    status: StatusSchema,
    compile: Type.Union([StageResultSchema, Type.Null()]),
    run: Type.Union([StageResultSchema, Type.Null()]),
    cases: Type.Optional(Type.Union([Type.Array(StageResultSchema), Type.Null()])),
    vmId: Type.Union([Type.String(), Type.Null()]),
    timings: JobTimingsSchema,
    /** The worker that ran it (the engine's result has no such field; added on the wire). */
    worker: Type.String(),
  },
  { additionalProperties: false },
);
export type ClusterResult = Static<typeof ClusterResultSchema>;

const clusterResultValidator = Compile(ClusterResultSchema);

/** Checks a result read from the queue; gives back the engine's result and who ran it. */
export function fromClusterResult(data: unknown): { result: JobResult; worker: string } {
  if (!clusterResultValidator.Check(data)) {
    const first = clusterResultValidator.Errors(data)[0];
    throw new ClusterWireError(
      `a job's result does not match the cluster wire format${first ? `: ${first.instancePath || '/'} ${first.message}` : ''}`,
    );
  }
  const { worker, ...result } = data;
  return { result, worker };
}
