import {
  FrameBadJsonError,
  FrameEmptyError,
  FrameTooLargeError,
  FrameTruncatedError,
  ProtocolError,
} from '../errors.js';

/** The largest frame either side accepts: checked before any allocation. */
export const MAX_FRAME_BYTES = 16 * 1024 * 1024;

const HEADER_BYTES = 4;
const utf8 = new TextDecoder('utf-8', { fatal: true });

/** Encodes one message: a 4-byte big-endian length, then that many bytes of UTF-8 JSON. */
export function encodeFrame(message: unknown, maxFrameBytes = MAX_FRAME_BYTES): Buffer {
  const body = Buffer.from(JSON.stringify(message), 'utf8');
  if (body.length === 0 || body.length > maxFrameBytes) {
    throw new FrameTooLargeError(
      `outgoing frame of ${body.length} bytes is over the cap of ${maxFrameBytes}`,
    );
  }
  const header = Buffer.allocUnsafe(HEADER_BYTES);
  header.writeUInt32BE(body.length, 0);
  return Buffer.concat([header, body]);
}

/**
 * A streaming frame decoder. Feed it chunks as they arrive, in any split: a frame over many
 * reads, many frames in one read. The announced length is checked against the cap before a
 * byte of the body is kept, so a lying prefix costs nothing. Any error is final: the caller
 * must close the connection.
 */
export class FrameDecoder {
  private readonly chunks: Buffer[] = [];
  private buffered = 0;
  private expected: number | null = null;
  private failed: ProtocolError | null = null;

  constructor(private readonly maxFrameBytes = MAX_FRAME_BYTES) {}

  /** Bytes held while waiting for the rest of a frame (never more than header + cap). */
  get bufferedBytes(): number {
    return this.buffered;
  }

  /** True while a frame has begun and is not complete. */
  get midFrame(): boolean {
    return this.buffered > 0 || this.expected !== null;
  }

  /** Adds a chunk; returns the parsed JSON values of every frame it completed. */
  push(chunk: Uint8Array): unknown[] {
    if (this.failed) throw this.failed;
    const out: unknown[] = [];
    let data = Buffer.from(chunk.buffer, chunk.byteOffset, chunk.byteLength);
    while (data.length > 0) {
      if (this.expected === null) {
        const need = HEADER_BYTES - this.buffered;
        const take = data.subarray(0, need);
        this.keep(take);
        data = data.subarray(take.length);
        if (this.buffered < HEADER_BYTES) break;
        const length = this.drain().readUInt32BE(0);
        if (length === 0) return this.fail(new FrameEmptyError('frame of length zero'));
        if (length > this.maxFrameBytes) {
          return this.fail(
            new FrameTooLargeError(
              `frame of ${length} bytes is over the cap of ${this.maxFrameBytes}`,
            ),
          );
        }
        this.expected = length;
      }
      const need = this.expected - this.buffered;
      const take = data.subarray(0, need);
      this.keep(take);
      data = data.subarray(take.length);
      if (this.buffered < this.expected) break;
      const body = this.drain();
      this.expected = null;
      out.push(this.parse(body));
    }
    return out;
  }

  /** Call at end of stream: a partial frame is an error. */
  end(): void {
    if (this.failed) throw this.failed;
    if (this.midFrame) {
      this.fail(new FrameTruncatedError(`stream ended ${this.buffered} bytes into a frame`));
    }
  }

  private parse(body: Buffer): unknown {
    let text: string;
    try {
      text = utf8.decode(body);
    } catch (cause) {
      return this.fail(new FrameBadJsonError('frame body is not valid UTF-8', { cause }));
    }
    try {
      return JSON.parse(text) as unknown;
    } catch (cause) {
      return this.fail(new FrameBadJsonError('frame body is not valid JSON', { cause }));
    }
  }

  private keep(part: Buffer): void {
    if (part.length === 0) return;
    // Copy: the caller may reuse its buffer.
    this.chunks.push(Buffer.from(part));
    this.buffered += part.length;
  }

  private drain(): Buffer {
    const whole =
      this.chunks.length === 1
        ? (this.chunks[0] as Buffer)
        : Buffer.concat(this.chunks, this.buffered);
    this.chunks.length = 0;
    this.buffered = 0;
    return whole;
  }

  private fail(err: ProtocolError): never {
    this.failed = err;
    this.chunks.length = 0;
    this.buffered = 0;
    throw err;
  }
}
