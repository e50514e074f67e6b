import { readFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parse } from 'yaml';

/*
 * Firecracker's API description (swagger 2.0), pinned beside this file as
 * firecracker-openapi.yaml (a copy of the project's reference/firecracker-openapi.yaml), and a
 * validator for the part of JSON Schema it uses. The validator refuses schema keywords it does
 * not know, so a spec update that adds (say) `oneOf` fails loudly instead of passing silently.
 */

/** One schema of the spec (the keywords the validator understands). */
export interface SpecSchema {
  readonly $ref?: string;
  readonly type?: 'object' | 'string' | 'integer' | 'number' | 'boolean' | 'array';
  readonly required?: readonly string[];
  readonly properties?: Readonly<Record<string, SpecSchema>>;
  readonly additionalProperties?: boolean | SpecSchema;
  readonly items?: SpecSchema;
  readonly enum?: readonly unknown[];
  readonly minimum?: number;
  readonly maximum?: number;
}

interface SpecParameter {
  readonly name: string;
  readonly in: 'body' | 'path' | 'query' | 'header';
  readonly required?: boolean;
  readonly schema?: SpecSchema;
  readonly type?: string;
}

export interface SpecOperation {
  readonly operationId: string;
  readonly parameters?: readonly SpecParameter[];
  readonly responses: Readonly<Record<string, unknown>>;
}

export interface FirecrackerSpec {
  readonly swagger: string;
  readonly info: { readonly version: string };
  readonly paths: Readonly<Record<string, Readonly<Record<string, SpecOperation>>>>;
  readonly definitions: Readonly<Record<string, SpecSchema>>;
}

/** Where the pinned copy is. */
export const FIRECRACKER_SPEC_PATH = join(
  dirname(fileURLToPath(import.meta.url)),
  'firecracker-openapi.yaml',
);

/** Reads and parses the spec. */
export function loadFirecrackerSpec(path = FIRECRACKER_SPEC_PATH): FirecrackerSpec {
  return parse(readFileSync(path, 'utf8')) as FirecrackerSpec;
}

/** Keywords that carry no constraint the driver's bodies could break. */
const ANNOTATIONS = new Set(['description', 'default', 'example', 'readOnly', 'format']);
const CONSTRAINTS = new Set([
  '$ref',
  'type',
  'required',
  'properties',
  'additionalProperties',
  'items',
  'enum',
  'minimum',
  'maximum',
]);

export interface ValidateOptions {
  /**
   * Treat objects with `properties` as closed, as Firecracker does: the spec leaves
   * `additionalProperties` out, but Firecracker's server deserializes with serde's
   * `deny_unknown_fields`, so an unknown field is a 400 there.
   */
  readonly closedObjects: boolean;
}

/** The errors of `value` against `schema` (empty when valid), each with its JSON path. */
export function validateSchema(
  spec: FirecrackerSpec,
  schema: SpecSchema,
  value: unknown,
  options: ValidateOptions = { closedObjects: true },
  at = '$',
): string[] {
  for (const key of Object.keys(schema)) {
    if (!CONSTRAINTS.has(key) && !ANNOTATIONS.has(key)) {
      throw new Error(`${at}: the validator does not know the schema keyword ${key}`);
    }
  }
  if (schema.$ref !== undefined) {
    // swagger 2.0: keywords beside a $ref are ignored.
    return validateSchema(spec, resolveRef(spec, schema.$ref), value, options, at);
  }
  const errors: string[] = [];
  if (schema.type !== undefined && !hasType(value, schema.type)) {
    return [`${at}: expected ${schema.type}, got ${describe(value)}`];
  }
  if (schema.enum !== undefined && !schema.enum.includes(value)) {
    errors.push(`${at}: ${JSON.stringify(value)} is not one of ${JSON.stringify(schema.enum)}`);
  }
  if (typeof value === 'number') {
    if (schema.minimum !== undefined && value < schema.minimum) {
      errors.push(`${at}: ${value} is below the minimum ${schema.minimum}`);
    }
    if (schema.maximum !== undefined && value > schema.maximum) {
      errors.push(`${at}: ${value} is above the maximum ${schema.maximum}`);
    }
  }
  if (Array.isArray(value) && schema.items !== undefined) {
    const items = schema.items;
    value.forEach((item, i) => {
      errors.push(...validateSchema(spec, items, item, options, `${at}[${i}]`));
    });
  }
  if (isObject(value)) {
    for (const key of schema.required ?? []) {
      if (value[key] === undefined) errors.push(`${at}: missing required property ${key}`);
    }
    const properties = schema.properties ?? {};
    for (const [key, item] of Object.entries(value)) {
      const propertySchema = properties[key];
      if (propertySchema !== undefined) {
        errors.push(...validateSchema(spec, propertySchema, item, options, `${at}.${key}`));
      } else if (typeof schema.additionalProperties === 'object') {
        errors.push(
          ...validateSchema(spec, schema.additionalProperties, item, options, `${at}.${key}`),
        );
      } else if (
        schema.additionalProperties === false ||
        (schema.additionalProperties === undefined &&
          options.closedObjects &&
          schema.properties !== undefined)
      ) {
        errors.push(`${at}: unknown property ${key}`);
      }
    }
  }
  return errors;
}

/** The schema a `#/definitions/Name` reference points at. */
export function resolveRef(spec: FirecrackerSpec, ref: string): SpecSchema {
  const match = /^#\/definitions\/([^/]+)$/.exec(ref);
  const name = match?.[1];
  const target = name === undefined ? undefined : spec.definitions[name];
  if (target === undefined) throw new Error(`unresolvable $ref ${ref}`);
  return target;
}

/** The operation serving `method` on a concrete path (templates like `/drives/{drive_id}`). */
export function findOperation(
  spec: FirecrackerSpec,
  method: string,
  path: string,
): { template: string; operation: SpecOperation; params: Record<string, string> } | undefined {
  for (const [template, methods] of Object.entries(spec.paths)) {
    const names: string[] = [];
    const pattern = template
      .split('/')
      .map((part) => {
        const param = /^\{(.+)\}$/.exec(part);
        if (param?.[1] !== undefined) {
          names.push(param[1]);
          return '([^/]+)';
        }
        return part.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
      })
      .join('/');
    const match = new RegExp(`^${pattern}$`).exec(path);
    const operation = methods[method.toLowerCase()];
    if (match === null || operation === undefined) continue;
    const params: Record<string, string> = {};
    names.forEach((name, i) => {
      params[name] = decodeURIComponent(match[i + 1] ?? '');
    });
    return { template, operation, params };
  }
  return undefined;
}

/** A request as the driver makes it. */
export interface SpecRequest {
  readonly method: string;
  readonly path: string;
  readonly body: unknown;
  readonly operationId?: string;
}

/**
 * Everything wrong with a request against the spec: unknown method and path, another
 * operationId than claimed, a body that breaks the operation's body schema, and the rules the
 * spec states only in prose (`/drives/{drive_id}` must name the body's drive; a snapshot load
 * takes exactly one of `mem_backend` and `mem_file_path`).
 */
export function validateRequest(spec: FirecrackerSpec, req: SpecRequest): string[] {
  const found = findOperation(spec, req.method, req.path);
  if (found === undefined) return [`${req.method} ${req.path} is not in the spec`];
  const errors: string[] = [];
  const { operation, params } = found;
  if (req.operationId !== undefined && req.operationId !== operation.operationId) {
    errors.push(
      `${req.method} ${req.path} is ${operation.operationId} in the spec, not ${req.operationId}`,
    );
  }
  const bodyParam = (operation.parameters ?? []).find((p) => p.in === 'body');
  if (bodyParam?.schema === undefined) {
    if (req.body !== undefined) errors.push(`${operation.operationId} takes no body`);
  } else if (req.body === undefined) {
    if (bodyParam.required === true) errors.push(`${operation.operationId} needs a body`);
  } else {
    errors.push(...validateSchema(spec, bodyParam.schema, req.body));
  }
  const body = isObject(req.body) ? req.body : {};
  if (operation.operationId === 'putGuestDriveByID' && params.drive_id !== body.drive_id) {
    errors.push(`the path names drive ${params.drive_id}, the body ${String(body.drive_id)}`);
  }
  if (operation.operationId === 'loadSnapshot') {
    const count = ['mem_backend', 'mem_file_path'].filter((k) => body[k] !== undefined).length;
    if (count !== 1) errors.push('exactly one of mem_backend and mem_file_path must be present');
  }
  return errors;
}

function hasType(value: unknown, type: NonNullable<SpecSchema['type']>): boolean {
  switch (type) {
    case 'object':
      return isObject(value);
    case 'array':
      return Array.isArray(value);
    case 'string':
      return typeof value === 'string';
    case 'boolean':
      return typeof value === 'boolean';
    case 'integer':
      return typeof value === 'number' && Number.isInteger(value);
    case 'number':
      return typeof value === 'number' && Number.isFinite(value);
  }
}

function isObject(value: unknown): value is Record<string, unknown> {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}

function describe(value: unknown): string {
  if (value === null) return 'null';
  if (Array.isArray(value)) return 'array';
  return `${typeof value} ${JSON.stringify(value)?.slice(0, 40) ?? ''}`;
}
