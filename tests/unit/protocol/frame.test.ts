import { describe, expect, it } from 'vitest';
import { ProtocolError } from '../../../src/errors.js';
import { encodeFrame, FrameDecoder, MAX_FRAME_BYTES } from '../../../src/protocol/index.js';

const header = (n: number): Buffer => {
  const b = Buffer.alloc(4);
  b.writeUInt32BE(n >>> 0, 0);
  return b;
};

function codeOf(fn: () => unknown): string {
  try {
    fn();
  } catch (err) {
    expect(err).toBeInstanceOf(ProtocolError);
    return (err as ProtocolError).code;
  }
  return 'no error';
}

describe('encodeFrame / FrameDecoder', () => {
  it('round-trips a message', () => {
    const d = new FrameDecoder();
    expect(d.push(encodeFrame({ type: 'ping', id: 'a' }))).toEqual([{ type: 'ping', id: 'a' }]);
  });

  it('writes a 4-byte big-endian length before the UTF-8 JSON', () => {
    const frame = encodeFrame({ s: 'é' });
    const body = Buffer.from(JSON.stringify({ s: 'é' }), 'utf8');
    expect(frame.readUInt32BE(0)).toBe(body.length);
    expect(frame.subarray(4)).toEqual(body);
  });

  it('copes with a frame split over many reads, byte by byte', () => {
    const d = new FrameDecoder();
    const frame = encodeFrame({ type: 'pong', id: 'x'.repeat(1000) });
    const out: unknown[] = [];
    for (const byte of frame) out.push(...d.push(Buffer.from([byte])));
    expect(out).toEqual([{ type: 'pong', id: 'x'.repeat(1000) }]);
    expect(d.midFrame).toBe(false);
  });

  it('copes with many frames in one read, and a frame cut across reads', () => {
    const d = new FrameDecoder();
    const all = Buffer.concat([
      encodeFrame({ n: 1 }),
      encodeFrame({ n: 2 }),
      encodeFrame({ n: 3 }),
    ]);
    expect(d.push(all.subarray(0, all.length - 3))).toEqual([{ n: 1 }, { n: 2 }]);
    expect(d.midFrame).toBe(true);
    expect(d.push(all.subarray(all.length - 3))).toEqual([{ n: 3 }]);
  });

  it('does not keep a reference to the caller’s buffer', () => {
    const d = new FrameDecoder();
    const frame = encodeFrame({ v: 'abc' });
    const part = Buffer.from(frame.subarray(0, 6));
    d.push(part);
    part.fill(0);
    expect(d.push(frame.subarray(6))).toEqual([{ v: 'abc' }]);
  });

  // The malformed-frame rows of HOSTILE.md.
  it('rejects a zero length', () => {
    expect(codeOf(() => new FrameDecoder().push(header(0)))).toBe('FRAME_EMPTY');
  });

  it('rejects a length over the cap before allocating anything', () => {
    const d = new FrameDecoder();
    expect(codeOf(() => d.push(header(MAX_FRAME_BYTES + 1)))).toBe('FRAME_TOO_LARGE');
    expect(d.bufferedBytes).toBe(0);
  });

  it('rejects 0xFFFFFFFF', () => {
    expect(codeOf(() => new FrameDecoder().push(header(0xffffffff)))).toBe('FRAME_TOO_LARGE');
  });

  it('honours a smaller cap', () => {
    const d = new FrameDecoder(64);
    expect(codeOf(() => d.push(encodeFrame({ x: 'y'.repeat(100) })))).toBe('FRAME_TOO_LARGE');
  });

  it('rejects a lying length (stream ends before the announced bytes): truncated', () => {
    const d = new FrameDecoder();
    d.push(Buffer.concat([header(100), Buffer.from('{"a":1}')]));
    expect(d.bufferedBytes).toBe(7);
    expect(codeOf(() => d.end())).toBe('FRAME_TRUNCATED');
  });

  it('rejects a stream that ends inside the header', () => {
    const d = new FrameDecoder();
    d.push(Buffer.from([0, 0]));
    expect(codeOf(() => d.end())).toBe('FRAME_TRUNCATED');
  });

  it('accepts a clean end between frames', () => {
    const d = new FrameDecoder();
    d.push(encodeFrame({ ok: true }));
    expect(() => d.end()).not.toThrow();
  });

  it('rejects a body that is not JSON', () => {
    const body = Buffer.from('not json');
    expect(codeOf(() => new FrameDecoder().push(Buffer.concat([header(body.length), body])))).toBe(
      'FRAME_BAD_JSON',
    );
  });

  it('rejects a body that is not UTF-8', () => {
    const body = Buffer.from([0x22, 0xff, 0xfe, 0x22]);
    expect(codeOf(() => new FrameDecoder().push(Buffer.concat([header(body.length), body])))).toBe(
      'FRAME_BAD_JSON',
    );
  });

  it('stays failed after an error (the connection must close)', () => {
    const d = new FrameDecoder();
    expect(codeOf(() => d.push(header(0)))).toBe('FRAME_EMPTY');
    expect(codeOf(() => d.push(encodeFrame({ fine: true })))).toBe('FRAME_EMPTY');
  });

  it('refuses to encode a frame over the cap', () => {
    expect(codeOf(() => encodeFrame({ x: 'y'.repeat(100) }, 50))).toBe('FRAME_TOO_LARGE');
  });
});
