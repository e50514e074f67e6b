import { describe, expect, it } from 'vitest';
import { defaultRunSlots, RunSlots } from '../../../src/pool/slots.js';

describe('RunSlots: the jobs that run at once', () => {
  it('holds jobs past its size until a slot is given back, in order', async () => {
    const slots = new RunSlots(2);
    const a = await slots.take();
    const b = await slots.take();
    const order: string[] = [];
    const c = slots.take().then((r) => (order.push('c'), r));
    const d = slots.take().then((r) => (order.push('d'), r));
    await new Promise((r) => setTimeout(r, 20));
    expect(order).toEqual([]);
    expect({ running: slots.running, queued: slots.queued }).toEqual({ running: 2, queued: 2 });
    a?.();
    a?.(); // a second release gives nothing back
    await new Promise((r) => setTimeout(r, 0));
    expect(order).toEqual(['c']);
    expect(slots.running).toBe(2);
    b?.();
    (await c)?.();
    (await d)?.();
    expect({ running: slots.running, queued: slots.queued }).toEqual({ running: 0, queued: 0 });
  });

  it('lets a waiting job go when its client goes away, holding no slot', async () => {
    const slots = new RunSlots(1);
    const held = await slots.take();
    const abort = new AbortController();
    const waiting = slots.take(abort.signal);
    abort.abort();
    expect(await waiting).toBeNull();
    expect(slots.queued).toBe(0);
    held?.();
    expect(slots.running).toBe(0);
    expect(await slots.take(abort.signal)).toBeNull();
  });

  it('defaults to one slot per vCPUs of the host cores, at least one', () => {
    expect(defaultRunSlots(0, 2, 1)).toBe(2);
    expect(defaultRunSlots(0, 8, 2)).toBe(4);
    expect(defaultRunSlots(0, 1, 2)).toBe(1);
    expect(defaultRunSlots(6, 2, 1)).toBe(6);
  });
});
