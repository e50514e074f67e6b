import { isUtf8 } from 'node:buffer';
import { StringDecoder } from 'node:string_decoder';

/** What the JSON answer of a command keeps of each stream; the rest is read and dropped. */
export const COMMAND_OUTPUT_BYTES = 1024 * 1024;

/** One chunk of a command's output in an event: text when it is UTF-8, else its bytes. */
export type OutputChunk = { readonly text: string } | { readonly dataBase64: string };

/**
 * Cuts a byte stream into event chunks that are text whenever the bytes are UTF-8: a character
 * split across two reads is held back and sent with the next, so that only bytes that are not
 * UTF-8 at all go as base64. Either way the chunks' bytes, joined, are the stream's, exactly.
 */
export class Utf8Chunker {
  private held: Buffer = Buffer.alloc(0);

  /** The chunk to send for `data` (null when all of it is held back). */
  push(data: Buffer): OutputChunk | null {
    const bytes = this.held.length === 0 ? data : Buffer.concat([this.held, data]);
    const cut = bytes.length - incompleteTail(bytes);
    this.held = Buffer.from(bytes.subarray(cut));
    return chunkOf(bytes.subarray(0, cut));
  }

  /** What is still held at the end (bytes of a character that never completed). */
  flush(): OutputChunk | null {
    const rest = this.held;
    this.held = Buffer.alloc(0);
    return chunkOf(rest);
  }
}

function chunkOf(bytes: Buffer): OutputChunk | null {
  if (bytes.length === 0) return null;
  return isUtf8(bytes)
    ? { text: bytes.toString('utf8') }
    : { dataBase64: bytes.toString('base64') };
}

/** How many bytes at the end of `b` begin a UTF-8 character that is not complete yet. */
function incompleteTail(b: Buffer): number {
  for (let back = 1; back <= Math.min(3, b.length); back++) {
    const byte = b[b.length - back] ?? 0;
    if ((byte & 0xc0) === 0x80) continue; // a continuation byte: look further back
    // Only C2..F4 begin a character of more than one byte; anything else is complete or invalid.
    const need = byte > 0xf4 ? 1 : byte >= 0xf0 ? 4 : byte >= 0xe0 ? 3 : byte >= 0xc2 ? 2 : 1;
    return need > back ? back : 0;
  }
  return 0;
}

/** One stream of a command kept for its JSON answer, up to COMMAND_OUTPUT_BYTES. */
export class CappedText {
  private readonly decoder = new StringDecoder('utf8');
  private text = '';
  private kept = 0;
  truncated = false;

  push(data: Buffer): void {
    const room = COMMAND_OUTPUT_BYTES - this.kept;
    if (data.length > room) this.truncated = true;
    const part = data.length > room ? data.subarray(0, room) : data;
    this.kept += part.length;
    if (part.length > 0) this.text += this.decoder.write(part);
  }

  /** The text (a character cut at the cap becomes U+FFFD). */
  end(): string {
    return this.text + this.decoder.end();
  }
}
