import { PassThrough, Duplex } from 'node:stream';
import { describe, expect, it } from 'vitest';
import { RunnerError } from '../../../src/errors.js';
import {
  encodeFrame,
  MessageChannel,
  parseAgentMessage,
  type AgentMessage,
  type HostMessage,
} from '../../../src/protocol/index.js';

/** A duplex whose writes we can read and whose reads we feed. */
function pair(): { stream: Duplex; feed: PassThrough; written: Buffer[] } {
  const feed = new PassThrough();
  const written: Buffer[] = [];
  const stream = new Duplex({
    read() {},
    write(chunk: Buffer, _enc, cb) {
      written.push(chunk);
      cb();
    },
  });
  feed.on('data', (d: Buffer) => stream.push(d));
  feed.on('end', () => stream.push(null));
  return { stream, feed, written };
}

const channel = (stream: Duplex, frameTimeoutMs?: number) =>
  new MessageChannel<AgentMessage, HostMessage>(stream, {
    parse: parseAgentMessage,
    frameTimeoutMs,
    maxFrameBytes: 1024,
  });

describe('MessageChannel', () => {
  it('delivers typed messages in order and sends frames', async () => {
    const { stream, feed, written } = pair();
    const ch = channel(stream);
    feed.write(
      Buffer.concat([
        encodeFrame({ type: 'pong', id: 'a' }),
        encodeFrame({ type: 'pong', id: 'b' }),
      ]),
    );
    expect(await ch.next(1000)).toEqual({ type: 'pong', id: 'a' });
    expect(await ch.next(1000)).toEqual({ type: 'pong', id: 'b' });
    await ch.send({ type: 'ping', id: 'p' });
    expect(Buffer.concat(written)).toEqual(encodeFrame({ type: 'ping', id: 'p' }));
  });

  it('times a read out', async () => {
    const { stream } = pair();
    await expect(channel(stream).next(30)).rejects.toMatchObject({ code: 'VM_TIMEOUT' });
  });

  it('closes on a frame over its cap, and every later read fails the same way', async () => {
    const { stream, feed } = pair();
    const ch = channel(stream);
    const pending = ch.next(1000);
    const header = Buffer.alloc(4);
    header.writeUInt32BE(2048, 0);
    feed.write(header);
    await expect(pending).rejects.toMatchObject({ code: 'FRAME_TOO_LARGE' });
    await expect(ch.next(10)).rejects.toMatchObject({ code: 'FRAME_TOO_LARGE' });
    expect(stream.destroyed).toBe(true);
  });

  it('closes on a message of the wrong shape', async () => {
    const { stream, feed } = pair();
    const ch = channel(stream);
    feed.write(encodeFrame({ type: 'pong', id: 'a', extra: true }));
    await expect(ch.next(1000)).rejects.toMatchObject({ code: 'MESSAGE_INVALID' });
  });

  it('closes when the peer ends mid-frame (truncated)', async () => {
    const { stream, feed } = pair();
    const ch = channel(stream);
    feed.end(encodeFrame({ type: 'pong', id: 'a' }).subarray(0, 7));
    await expect(ch.next(1000)).rejects.toMatchObject({ code: 'FRAME_TRUNCATED' });
  });

  it('closes on a peer that trickles a frame too slowly', async () => {
    const { stream, feed } = pair();
    const ch = channel(stream, 100);
    const frame = encodeFrame({ type: 'pong', id: 'slow' });
    feed.write(frame.subarray(0, 5));
    const timer = setInterval(() => feed.write(Buffer.alloc(0)), 20);
    await expect(ch.next(2000)).rejects.toMatchObject({ code: 'FRAME_TRUNCATED' });
    clearInterval(timer);
  });

  it('reports a clean close by the peer as a sandbox failure', async () => {
    const { stream, feed } = pair();
    const ch = channel(stream);
    const closed = new Promise<Error>((resolve) => ch.onClose(resolve));
    feed.end();
    const err = await closed;
    expect(err).toBeInstanceOf(RunnerError);
    await expect(ch.next(10)).rejects.toBeInstanceOf(RunnerError);
  });
});
