import type { FastifyRequest } from 'fastify';
import { RequestInvalidError } from '../../errors.js';
import type { LanguageRegistry } from '../../languages/index.js';
import type { SandboxService } from '../../sandbox/index.js';
import type { AccessTokens } from './tokens.js';

declare module 'fastify' {
  interface FastifyContextConfig {
    /** An E2B route: its errors are E2B's `{ code: <status>, message }` (docs/e2b.md). */
    e2b?: boolean;
    /** An E2B Connect-RPC route (envd): its errors are Connect's `{ code: "not_found", message }`. */
    e2bConnect?: boolean;
  }
}

/** What the E2B routes share. */
export interface E2bDeps {
  /** The engine (the scope answers 503 before any handler runs when there is none). */
  readonly sandboxes: () => SandboxService;
  readonly languages: LanguageRegistry;
  readonly tokens: AccessTokens;
}

/** Route options of the control plane (API key as `X-API-KEY`, checked by the app's hook). */
export const CONTROL = { config: { e2b: true }, schema: { hide: true } } as const;
/** Route options of an in-sandbox REST route: no API key, the sandbox's access token instead. */
export const IN_SANDBOX = { config: { e2b: true, public: true }, schema: { hide: true } } as const;
/** Route options of an envd Connect-RPC route. */
export const RPC = {
  config: { e2b: true, e2bConnect: true, public: true },
  schema: { hide: true },
} as const;

/** The sandbox an in-sandbox call is for, and its owner (named by its valid access token). */
export interface Target {
  readonly id: string;
  readonly owner: string | null;
}

const header = (req: FastifyRequest, name: string): string | undefined => {
  const v = req.headers[name];
  return typeof v === 'string' ? v : undefined;
};

/**
 * The target of an in-sandbox call: `E2b-Sandbox-Id` names the sandbox (E2B_SANDBOX_URL is one
 * origin for all of them), `X-Access-Token` must be its token (UNAUTHORIZED otherwise).
 */
export function targetOf(req: FastifyRequest, tokens: AccessTokens): Target {
  const id = header(req, 'e2b-sandbox-id');
  if (id === undefined || id === '')
    throw new RequestInvalidError('the E2b-Sandbox-Id header is required');
  return { id, owner: tokens.verify(id, header(req, 'x-access-token')) };
}

/** A JSON object's field as a string record (headers, envs, metadata); throws when malformed. */
export function stringRecord(value: unknown, what: string): Record<string, string> | undefined {
  if (value === undefined || value === null) return undefined;
  if (typeof value !== 'object' || Array.isArray(value))
    throw new RequestInvalidError(`${what} must be an object of strings`);
  const out: Record<string, string> = {};
  for (const [k, v] of Object.entries(value as Record<string, unknown>)) {
    if (typeof v !== 'string') throw new RequestInvalidError(`${what}.${k} must be a string`);
    out[k] = v;
  }
  return out;
}

/** A JSON body as an object (an empty body is `{}`); throws when it is anything else. */
export function objectBody(body: unknown): Record<string, unknown> {
  if (body === undefined || body === null) return {};
  if (typeof body !== 'object' || Array.isArray(body))
    throw new RequestInvalidError('the body must be a JSON object');
  return body as Record<string, unknown>;
}

/** An optional string field; throws when it is another type. */
export function optString(o: Record<string, unknown>, key: string): string | undefined {
  const v = o[key];
  if (v === undefined || v === null) return undefined;
  if (typeof v !== 'string') throw new RequestInvalidError(`${key} must be a string`);
  return v;
}

/** An optional non-negative integer field (protobuf int64 may come as a string). */
export function optInt(o: Record<string, unknown>, key: string): number | undefined {
  const v = o[key];
  if (v === undefined || v === null) return undefined;
  const n = typeof v === 'string' && /^\d+$/.test(v) ? Number(v) : v;
  if (typeof n !== 'number' || !Number.isSafeInteger(n) || n < 0)
    throw new RequestInvalidError(`${key} must be a non-negative integer`);
  return n;
}
