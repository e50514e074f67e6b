import { request } from 'node:http';
import { connect, type AddressInfo, type Socket } from 'node:net';
import { afterEach, describe, expect, test } from 'vitest';
import type { ExecuteResponse } from '../../../src/api/schemas.js';
import { MAX_FRAME_BYTES } from '../../../src/protocol/index.js';
import { makeApp, pyJob, stage, testSettings, type FakeBehavior, type TestApp } from './helpers.js';

let running: TestApp | undefined;
afterEach(async () => {
  await running?.close();
  running = undefined;
});

/** An app listening on 127.0.0.1, with the server side of every connection it accepts. */
async function listening(settings: Record<string, unknown>, behavior: FakeBehavior) {
  const app = await makeApp({ settings });
  running = app;
  app.engine.behavior = behavior;
  const sockets: Socket[] = [];
  app.app.server.on('connection', (s: Socket) => sockets.push(s));
  await app.app.listen({ host: '127.0.0.1', port: 0 });
  const { port } = app.app.server.address() as AddressInfo;
  return { app, port, sockets };
}

const httpRequest = (path: string, body: unknown): string => {
  const payload = JSON.stringify(body);
  return `POST ${path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: ${Buffer.byteLength(payload)}\r\n\r\n${payload}`;
};

/** POSTs with a client that reads the whole answer. */
function post(
  port: number,
  body: unknown,
): Promise<{ status: number; length: number; text: string }> {
  const payload = JSON.stringify(body);
  return new Promise((resolve, reject) => {
    const req = request(
      {
        host: '127.0.0.1',
        port,
        path: '/v1/execute',
        method: 'POST',
        headers: {
          'content-type': 'application/json',
          'content-length': Buffer.byteLength(payload),
        },
      },
      (res) => {
        const chunks: Buffer[] = [];
        res.on('data', (c: Buffer) => chunks.push(c));
        res.on('error', reject);
        res.on('end', () =>
          resolve({
            status: res.statusCode ?? 0,
            length: Number(res.headers['content-length']),
            text: Buffer.concat(chunks).toString('utf8'),
          }),
        );
      },
    );
    req.on('error', reject);
    req.end(payload);
  });
}

describe('responses a client does not read', () => {
  test('the connection is dropped within the write timeout; the server never buffers the body', async () => {
    let finishedAt = 0;
    // About 19 MB of JSON: base64 and text of 8 MiB.
    const { app, port, sockets } = await listening({ responseWriteTimeoutMs: 500 }, () => {
      finishedAt = Date.now();
      return { run: stage({ out: 'x'.repeat(8 * 1024 * 1024) }) };
    });
    const client = connect({ host: '127.0.0.1', port });
    client.pause(); // reads at most its own small buffer, then leaves the rest in the kernel
    client.write(httpRequest('/v1/execute', pyJob()));
    const clientClosed = new Promise<void>((resolve) => client.on('close', () => resolve()));
    client.on('error', () => undefined);

    let maxUnsent = 0;
    const deadline = Date.now() + 5000;
    while (Date.now() < deadline && !(sockets[0]?.destroyed ?? false)) {
      maxUnsent = Math.max(maxUnsent, sockets[0]?.writableLength ?? 0);
      await new Promise((r) => setTimeout(r, 10));
    }
    const server = sockets[0];
    expect(server?.destroyed).toBe(true);
    const closedAfterMs = Date.now() - finishedAt;
    expect(closedAfterMs).toBeGreaterThanOrEqual(400);
    expect(closedAfterMs).toBeLessThan(4000); // serializing 19 MB takes a while on a busy host
    // Chunks go to the socket as it drains: never more than a few of them wait there.
    expect(maxUnsent).toBeLessThan(1024 * 1024);
    // A paused client notices only when it reads: it gets part of the body, then the end.
    const received: Buffer[] = [];
    client.on('data', (c: Buffer) => received.push(c));
    client.resume();
    await clientClosed;
    const answer = Buffer.concat(received);
    const head = answer.subarray(0, answer.indexOf('\r\n\r\n') + 4);
    const length = Number(/content-length: (\d+)/i.exec(head.toString('latin1'))?.[1]);
    expect(length).toBeGreaterThan(19_000_000);
    expect(answer.length - head.length).toBeLessThan(length);

    // The job had ended: its slot is free and the next job runs.
    expect(app.queue.stats()).toMatchObject({ running: 0, queued: 0 });
    app.engine.behavior = () => ({ run: stage({ out: 'next' }) });
    const next = await app.app.inject({ method: 'POST', url: '/v1/execute', payload: pyJob() });
    expect(next.json<ExecuteResponse>().run?.stdoutText).toBe('next');
  });

  test('a slow client that keeps reading is not dropped, however long the whole takes', async () => {
    // About 19 MB of JSON read 256 KiB every 50 ms: the server waits on the client (its socket
    // has unsent bytes) for longer than the write timeout, yet progress keeps it open. The
    // kernel wakes a writer only once about a third of its send buffer is free (some 0.35 s
    // apart at this rate, more on a loaded host), so the timeout cannot be much shorter.
    const { port, sockets } = await listening({ responseWriteTimeoutMs: 1500 }, () => ({
      run: stage({ out: 'z'.repeat(8 * 1024 * 1024) }),
    }));
    const client = connect({ host: '127.0.0.1', port });
    client.pause();
    client.write(httpRequest('/v1/execute', pyJob()));
    const received: Buffer[] = [];
    let waitedFrom = 0;
    let waitedUntil = 0;
    const began = Date.now();
    while (Date.now() - began < 3000) {
      await new Promise((r) => setTimeout(r, 50));
      const chunk = client.read(256 * 1024) as Buffer | null;
      if (chunk !== null) received.push(chunk);
      if ((sockets[0]?.writableLength ?? 0) > 0) {
        if (waitedFrom === 0) waitedFrom = Date.now();
        waitedUntil = Date.now();
      }
    }
    expect(sockets[0]?.destroyed).toBe(false);
    expect(waitedUntil - waitedFrom).toBeGreaterThan(1500);
    // Now read the rest at full speed.
    const ended = new Promise<void>((resolve) => client.on('end', () => resolve()));
    client.on('data', (c: Buffer) => {
      received.push(c);
      const answer = Buffer.concat(received);
      const head = answer.indexOf('\r\n\r\n') + 4;
      const length = Number(
        /content-length: (\d+)/i.exec(answer.subarray(0, head).toString('latin1'))?.[1],
      );
      if (answer.length - head === length) client.end();
    });
    client.resume();
    await ended;
    const answer = Buffer.concat(received);
    const body = answer.subarray(answer.indexOf('\r\n\r\n') + 4).toString('utf8');
    expect(JSON.parse(body)).toMatchObject({ run: { stdoutText: 'z'.repeat(8 * 1024 * 1024) } });
  });

  test('a response over the per-connection buffer cap drops the connection at once', async () => {
    const { app, port } = await listening({ maxResponseBufferBytes: 1024 * 1024 }, () => ({
      run: stage({ out: 'y'.repeat(1024 * 1024) }),
    }));
    await expect(post(port, pyJob())).rejects.toThrow(/socket hang up|ECONNRESET/);
    expect(app.queue.stats().running).toBe(0);
  });

  test('a reading client gets a large streamed body whole, characters across chunks intact', async () => {
    // Two outputs whose texts start at offsets of opposite parity in the JSON: in one of them
    // the 64 Ki-unit chunk boundaries fall inside surrogate pairs.
    for (const prefix of ['', 'x']) {
      const text = `${prefix}${'😀'.repeat(100_000)}é`;
      const { port } = await listening({}, () => ({ run: stage({ out: text }) }));
      const res = await post(port, pyJob());
      expect(res.status).toBe(200);
      expect(Buffer.byteLength(res.text)).toBe(res.length);
      expect(JSON.parse(res.text)).toMatchObject({ run: { stdoutText: text } });
      await running?.close();
      running = undefined;
    }
  });
});

test('the default buffer cap is above the largest result a job can produce', async () => {
  // The agent fits a result into one frame (16 MiB of JSON, the output base64): at most about
  // 12 MiB of output. As text JSON must escape (\u0001: 6 bytes each) that is the largest
  // native result.
  const raw = Math.floor(((MAX_FRAME_BYTES - 64 * 1024) * 3) / 4);
  const app = await makeApp();
  running = app;
  app.engine.behavior = () => ({ run: stage({ out: '\u0001'.repeat(raw) }) });
  const res = await app.app.inject({ method: 'POST', url: '/v1/execute', payload: pyJob() });
  const bytes = res.rawPayload.length;
  expect(bytes).toBeGreaterThan(80 * 1024 * 1024);
  expect(bytes).toBeLessThan(testSettings().maxResponseBufferBytes);
});
