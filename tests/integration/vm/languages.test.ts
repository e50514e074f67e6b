import { mkdtempSync, rmSync } from 'node:fs';
import { request } from 'node:http';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startServer, type RunningServer } from '../../../src/api/server.js';
import { ImageStore } from '../../../src/images/store.js';
import { LanguageRegistry, testProgramFile } from '../../../src/languages/index.js';
import type { Engine } from '../../../src/pool/engine.js';
import { testDataPaths } from '../../support/paths.js';
import { ensureImages, testEngine, testSettings, vmSkipReason } from '../../support/vm.js';

const skip = vmSkipReason();
if (skip) console.warn(`skipping the language tests in real VMs: ${skip}`);

const registry = LanguageRegistry.fromDir();
const languages = registry.list();

describe.skipIf(skip !== null)('test cases in a real VM', () => {
  let engine: Engine;

  beforeAll(async () => {
    await ensureImages(languages.map((l) => l.definition.name));
    engine = await testEngine();
  });

  afterAll(async () => {
    await engine?.close();
  });

  it('c compiles once in the VM, then each case runs with its own stdin', async () => {
    const source =
      '#include <stdio.h>\nint main(void){int a,b;if(scanf("%d %d",&a,&b)!=2)return 3;printf("%d\\n",a+b);return 0;}\n';
    const result = await engine.run(
      engine.prepare({
        language: 'c',
        files: [{ name: 'main.c', content: source }],
        cases: [Buffer.from('1 2'), Buffer.from('40 2'), Buffer.from('x')],
      }),
    );
    expect(result.compile?.status).toBe('ok');
    expect(result.run).toBeNull();
    expect(
      result.cases?.map((c) => [c.status, Buffer.from(c.stdout, 'base64').toString()]),
    ).toEqual([
      ['ok', '3\n'],
      ['ok', '42\n'],
      ['runtime_error', ''],
    ]);
  });
});

/**
 * Every language's own test program, in a real microVM restored from its layer's snapshot,
 * through the real service (`runner serve` over HTTP): a language with a Judge0 id through
 * Judge0's POST /submissions by that id, every other one through Piston's POST
 * /api/v2/execute by its Piston name. Each built image must also carry the version its
 * definition states (read from the toolchain at build time).
 */
// Two languages at a time: each VM runs on one core under TCG, and the machine has two.
describe.skipIf(skip !== null)(
  'every language in a real VM, through the real service',
  { concurrent: true },
  () => {
    let server: RunningServer;
    let dir: string;
    const store = new ImageStore(testDataPaths().imagesDir);

    beforeAll(async () => {
      await ensureImages(languages.map((l) => l.definition.name));
      dir = mkdtempSync(join(tmpdir(), 'runner-languages-'));
      server = await startServer(
        testSettings({
          host: '127.0.0.1',
          port: 0,
          jobStoreFile: join(dir, 'jobs.sqlite'),
          logLevel: 'warn',
          poolMaxVms: 2,
        }),
      );
    });

    afterAll(async () => {
      await server?.close();
      if (dir) rmSync(dir, { recursive: true, force: true });
    });

    /** A POST with node:http: no client-side deadline (a crystal compile takes minutes here). */
    const post = (path: string, body: unknown): Promise<{ status: number; body: unknown }> =>
      new Promise((resolvePost, reject) => {
        const req = request(
          `${server.url}${path}`,
          { method: 'POST', headers: { 'content-type': 'application/json' } },
          (res) => {
            const chunks: Buffer[] = [];
            res.on('data', (c: Buffer) => chunks.push(c));
            res.on('end', () => {
              try {
                resolvePost({
                  status: res.statusCode ?? 0,
                  body: JSON.parse(Buffer.concat(chunks).toString('utf8')) as unknown,
                });
              } catch (err) {
                reject(err instanceof Error ? err : new Error(String(err)));
              }
            });
          },
        );
        req.on('error', reject);
        req.end(JSON.stringify(body));
      });

    for (const language of languages) {
      const { definition } = language;
      const file = testProgramFile(language);
      const stdin = definition.test.stdin ?? '';
      // Judge0 applies its own run limits (5 s of CPU by default, 15 s at most): a language
      // that needs more here, under TCG, goes through Piston, which keeps the language's own.
      const viaJudge0 = definition.judge0Id !== undefined && definition.limits?.run === undefined;
      const via = viaJudge0 ? `Judge0 id ${definition.judge0Id}` : 'Piston';
      it(`${definition.name}: the test program prints its line (${via})`, async () => {
        if (viaJudge0) {
          const { status, body } = await post('/submissions?wait=true', {
            source_code: file.content,
            language_id: definition.judge0Id,
            stdin,
          });
          const sub = body as {
            status?: { id: number; description: string };
            stdout?: string | null;
            stderr?: string | null;
            compile_output?: string | null;
            message?: string | null;
          };
          expect(status, JSON.stringify(body)).toBe(201);
          expect(
            { status: sub.status?.description, stdout: (sub.stdout ?? '').trim() },
            `stderr: ${sub.stderr ?? ''} compile: ${sub.compile_output ?? ''} ${sub.message ?? ''}`,
          ).toEqual({ status: 'Accepted', stdout: definition.test.expected });
        } else {
          const { status, body } = await post('/api/v2/execute', {
            language: definition.name,
            version: '*',
            files: [file],
            stdin,
          });
          const res = body as {
            run?: { stdout: string; stderr: string; code: number | null; message?: string | null };
            compile?: { code: number | null; stderr: string };
          };
          expect(status, JSON.stringify(body)).toBe(200);
          expect(
            { code: res.run?.code, stdout: res.run?.stdout.trim() },
            `stderr: ${res.run?.stderr ?? ''} compile: ${res.compile?.stderr ?? ''} ${res.run?.message ?? ''}`,
          ).toEqual({ code: 0, stdout: definition.test.expected });
          if (definition.compile) expect(res.compile?.code).toBe(0);
          else expect(res.compile).toBeUndefined();
        }
        const image = await store.latest('rootfs', definition.name);
        const built =
          image?.manifest.versions?.[definition.name] ?? image?.manifest.toolchainVersion;
        expect(built, `the version ${definition.name}'s image has`).toBe(definition.version);
      });
    }
  },
);
