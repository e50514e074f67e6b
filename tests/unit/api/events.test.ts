import { afterEach, describe, expect, test } from 'vitest';
import { makeApp, stage, type TestApp } from './helpers.js';

let t: TestApp | undefined;
afterEach(async () => {
  await t?.close();
  t = undefined;
});

/** Reads a Server-Sent Events stream to its end: the events in order, parsed. */
async function readEvents(url: string): Promise<{ event: string; data: unknown }[]> {
  const res = await fetch(url);
  expect(res.status).toBe(200);
  expect(res.headers.get('content-type')).toMatch(/^text\/event-stream/);
  const text = await res.text();
  return text
    .split('\n\n')
    .filter((block) => block.startsWith('event: '))
    .map((block) => {
      const [head, data] = block.split('\n');
      return { event: (head ?? '').slice(7), data: JSON.parse((data ?? '').slice(6)) as unknown };
    });
}

describe('GET /v1/jobs/:id/events (Server-Sent Events)', () => {
  test('a watcher sees the stage and output events, then the result, and a late one gets them all', async () => {
    t = await makeApp();
    let release = (): void => undefined;
    const gate = new Promise<void>((r) => (release = r));
    t.engine.behavior = async () => {
      await gate;
      return { run: stage({ out: 'hello\n' }) };
    };
    const url = await t.app.listen({ host: '127.0.0.1', port: 0 });
    const sub = await fetch(`${url}/v1/jobs`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ language: 'python', files: [{ content: 'print("hello")' }] }),
    });
    const { id } = (await sub.json()) as { id: string };
    const watching = readEvents(`${url}/v1/jobs/${id}/events`);
    await new Promise((r) => setTimeout(r, 100));
    release();
    const events = await watching;
    expect(events.map((e) => e.event)).toEqual(['stage', 'output', 'stage', 'result']);
    const out = events[1]?.data as { stream: string; data: string };
    expect(out.stream).toBe('stdout');
    expect(Buffer.from(out.data, 'base64').toString()).toBe('hello\n');
    expect((events[3]?.data as { state: string; status: string }).state).toBe('done');
    // After the end: the same events, replayed, then the result.
    const late = await readEvents(`${url}/v1/jobs/${id}/events`);
    expect(late.map((e) => e.event)).toEqual(['stage', 'output', 'stage', 'result']);
  });

  test("another key's job, or none, is a 404 before any stream starts", async () => {
    t = await makeApp();
    const res = await t.app.inject({ method: 'GET', url: '/v1/jobs/nope/events' });
    expect(res.statusCode).toBe(404);
  });
});
