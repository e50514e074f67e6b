import { describe, expect, it } from 'vitest';
import { ProtocolError } from '../../../src/errors.js';
import {
  checkJob,
  parseAgentMessage,
  parseHostMessage,
  PROTOCOL_VERSION,
  SECCOMP_FAMILIES,
  STATUSES,
} from '../../../src/protocol/index.js';

const limits = {
  wallTimeMs: 1000,
  cpuTimeMs: 1000,
  memoryMib: 64,
  processes: 8,
  outputBytes: 1024,
  fileSizeBytes: 1024,
  openFiles: 16,
  stackBytes: 8 * 1024 * 1024,
};
const execute = {
  type: 'execute',
  id: 'j1',
  language: 'python',
  files: [{ name: 'main.py', content: 'print(1)', encoding: 'utf8' as const }],
  stdin: '',
  args: [],
  env: {},
  compileLimits: limits,
  runLimits: limits,
};
const stage = {
  status: 'ok',
  exitCode: 0,
  signal: null,
  wallTimeMs: 1,
  cpuTimeMs: 1,
  memoryPeakBytes: 1,
  stdout: Buffer.from([0, 255, 10]).toString('base64'),
  stderr: '',
  stdoutTruncated: false,
  stderrTruncated: false,
};

/** The code of a rule's error (a request error, not a protocol one). */
const ruleCode = (fn: () => unknown): string => {
  try {
    fn();
  } catch (err) {
    return (err as { code: string }).code;
  }
  return 'accepted';
};

const code = (fn: () => unknown): string => {
  try {
    fn();
    return 'accepted';
  } catch (err) {
    expect(err).toBeInstanceOf(ProtocolError);
    return (err as ProtocolError).code;
  }
};

describe('message schemas', () => {
  it('accepts each host message', () => {
    expect(parseHostMessage(execute)).toEqual(execute);
    expect(parseHostMessage({ type: 'ping', id: 'p' }).type).toBe('ping');
    const seed = {
      type: 'seed',
      id: 's',
      entropy: Buffer.alloc(32, 7).toString('base64'),
      unixTimeMs: Date.now(),
      vmId: 'vm-1',
    };
    expect(parseHostMessage(seed)).toEqual(seed);
  });

  it('takes a seccomp family in execute, only a known one, and none from an older host', () => {
    for (const family of SECCOMP_FAMILIES) {
      expect(parseHostMessage({ ...execute, seccomp: family })).toMatchObject({ seccomp: family });
    }
    expect(SECCOMP_FAMILIES).toEqual(['default', 'jvm', 'node']);
    expect(code(() => parseHostMessage({ ...execute, seccomp: 'none' }))).toBe('MESSAGE_INVALID');
    expect(code(() => parseHostMessage({ ...execute, seccomp: '' }))).toBe('MESSAGE_INVALID');
    expect(parseHostMessage(execute)).not.toHaveProperty('seccomp');
  });

  it('accepts each agent message', () => {
    const hello = {
      type: 'hello',
      protocol: PROTOCOL_VERSION,
      agentVersion: '0.1.0',
      languages: ['python'],
      vmId: null,
    };
    expect(parseAgentMessage(hello)).toEqual(hello);
    const result = {
      type: 'result',
      id: 'j1',
      status: 'ok',
      compile: null,
      run: stage,
      agentMs: 12.5,
    };
    expect(parseAgentMessage(result)).toEqual(result);
    expect(parseAgentMessage({ type: 'pong', id: 'p' }).type).toBe('pong');
    expect(parseAgentMessage({ type: 'seeded', id: 's', vmId: 'v', entropyBytes: 32 }).type).toBe(
      'seeded',
    );
    const viaServer = { type: 'seeded', id: 's', vmId: 'v', entropyBytes: 32, via: 'server' };
    expect(parseAgentMessage(viaServer)).toEqual(viaServer);
    expect(() => parseAgentMessage({ ...viaServer, via: 'magic' })).toThrow();
    expect(
      parseAgentMessage({ type: 'error', id: null, code: 'AGENT_BUSY', message: 'm' }).type,
    ).toBe('error');
  });

  it('takes only catalogue codes in an agent error', () => {
    expect(
      code(() => parseAgentMessage({ type: 'error', id: null, code: 'X', message: 'm' })),
    ).toBe('MESSAGE_INVALID');
  });

  it('rejects unknown fields at every level', () => {
    expect(code(() => parseHostMessage({ ...execute, extra: 1 }))).toBe('MESSAGE_INVALID');
    expect(code(() => parseHostMessage({ ...execute, runLimits: { ...limits, gpu: 1 } }))).toBe(
      'MESSAGE_INVALID',
    );
    expect(
      code(() =>
        parseHostMessage({
          ...execute,
          files: [{ name: 'a', content: '', encoding: 'utf8', mode: 7 }],
        }),
      ),
    ).toBe('MESSAGE_INVALID');
    expect(
      code(() =>
        parseAgentMessage({
          type: 'result',
          id: 'j',
          status: 'ok',
          compile: null,
          run: { ...stage, secret: 1 },
        }),
      ),
    ).toBe('MESSAGE_INVALID');
  });

  it('rejects wrong shapes: unknown type, wrong types, missing fields, bad status, non-base64 output', () => {
    expect(code(() => parseHostMessage({ type: 'shutdown', id: 'x' }))).toBe('MESSAGE_INVALID');
    expect(code(() => parseHostMessage({ ...execute, stdin: 5 }))).toBe('MESSAGE_INVALID');
    // No files is the schema's (a sandbox job has none); checkJob refuses it for any other job.
    expect(ruleCode(() => checkJob({ ...execute, files: [] }))).toBe('FILE_NAME_INVALID');
    expect(code(() => parseHostMessage({ ...execute, sandbox: { argv: [] } }))).toBe(
      'MESSAGE_INVALID',
    );
    expect(ruleCode(() => checkJob({ ...execute, sandbox: { argv: ['sh'] } }))).toBe(
      'FILE_NAME_INVALID',
    );
    expect(
      ruleCode(() => checkJob({ ...execute, files: [], sandbox: { argv: ['sh'], cwd: '../x' } })),
    ).toBe('FILE_NAME_INVALID');
    expect(() =>
      checkJob({ ...execute, files: [], sandbox: { argv: ['sh'], cwd: 'a/b' } }),
    ).not.toThrow();
    expect(
      code(() => parseHostMessage({ ...execute, runLimits: { ...limits, wallTimeMs: -1 } })),
    ).toBe('MESSAGE_INVALID');
    expect(
      code(() => parseHostMessage({ ...execute, runLimits: { ...limits, memoryMib: 1.5 } })),
    ).toBe('MESSAGE_INVALID');
    const noId: Record<string, unknown> = { ...execute };
    delete noId.id;
    expect(code(() => parseHostMessage(noId))).toBe('MESSAGE_INVALID');
    expect(
      code(() =>
        parseAgentMessage({ type: 'result', id: 'j', status: 'fine', compile: null, run: null }),
      ),
    ).toBe('MESSAGE_INVALID');
    expect(
      code(() =>
        parseAgentMessage({
          type: 'result',
          id: 'j',
          status: 'ok',
          compile: null,
          run: { ...stage, stdout: 'not base64!' },
        }),
      ),
    ).toBe('MESSAGE_INVALID');
    expect(code(() => parseAgentMessage(null))).toBe('MESSAGE_INVALID');
    expect(code(() => parseAgentMessage([1, 2]))).toBe('MESSAGE_INVALID');
    expect(code(() => parseAgentMessage('hello'))).toBe('MESSAGE_INVALID');
  });

  it('a host message is not an agent message and the other way round', () => {
    expect(code(() => parseAgentMessage(execute))).toBe('MESSAGE_INVALID');
    expect(code(() => parseHostMessage({ type: 'pong', id: 'p' }))).toBe('MESSAGE_INVALID');
  });

  it('knows the fixed set of statuses', () => {
    expect(STATUSES).toEqual([
      'ok',
      'compile_error',
      'runtime_error',
      'timeout',
      'memory_limit',
      'output_limit',
      'sandbox_error',
    ]);
    for (const status of STATUSES) {
      expect(
        code(() =>
          parseAgentMessage({
            type: 'result',
            id: 'j',
            status,
            compile: null,
            run: { ...stage, status },
          }),
        ),
      ).toBe('accepted');
    }
  });
});
