import { RequestInvalidError } from '../../errors.js';

/** Most bytes of one part's headers. */
const MAX_HEADER_BYTES = 16 * 1024;

/** Reads a stream to its end, keeping nothing. */
async function drain(stream: AsyncIterable<Buffer>): Promise<void> {
  const it = stream[Symbol.asyncIterator]();
  while ((await it.next()).done !== true);
}

/** One part of a multipart/form-data body, as its headers name it. */
export interface Part {
  /** The form field (`name=`). */
  readonly name: string;
  /** `filename=` (E2B's SDK puts the file's full path there), or null. */
  readonly filename: string | null;
}

/** The boundary of a `multipart/form-data; boundary=...` content type; throws when absent. */
export function multipartBoundary(contentType: string): string {
  const m = /;\s*boundary=(?:"([^"]+)"|([^;\s]+))/i.exec(contentType);
  const boundary = m?.[1] ?? m?.[2];
  if (boundary === undefined || boundary.length > 200)
    throw new RequestInvalidError('the multipart body has no boundary');
  return boundary;
}

function dispositionParam(disposition: string, key: string): string | null {
  const re = new RegExp(`;\\s*${key}="((?:[^"\\\\]|\\\\.)*)"|;\\s*${key}=([^;\\s]+)`, 'i');
  const m = re.exec(disposition);
  const raw = m?.[1] ?? m?.[2];
  return raw === undefined ? null : raw.replace(/\\(.)/g, '$1');
}

/**
 * Reads a multipart/form-data body as it arrives, one part at a time, holding at most a chunk
 * and a boundary's length of it: each part's content goes to `onPart` as a stream, which
 * `onPart` consumes before the next part is read (what it leaves is skipped).
 */
export async function readMultipart(
  source: AsyncIterable<Buffer>,
  boundary: string,
  onPart: (part: Part, content: AsyncIterable<Buffer>) => Promise<void>,
): Promise<number> {
  const it = source[Symbol.asyncIterator]();
  // The first boundary has no CRLF before it: pretend it had one, so every delimiter is alike.
  let buf: Buffer = Buffer.from('\r\n');
  let eof = false;
  const pull = async (): Promise<boolean> => {
    if (eof) return false;
    const r = await it.next();
    if (r.done === true) {
      eof = true;
      return false;
    }
    buf = buf.length === 0 ? r.value : Buffer.concat([buf, r.value]);
    return true;
  };
  const delimiter = Buffer.from(`\r\n--${boundary}`);

  // The preamble, up to the first delimiter.
  for (;;) {
    const at = buf.indexOf(delimiter);
    if (at >= 0) {
      buf = buf.subarray(at + delimiter.length);
      break;
    }
    buf = buf.subarray(Math.max(0, buf.length - delimiter.length));
    if (!(await pull())) throw new RequestInvalidError('the multipart body has no boundary line');
  }

  let parts = 0;
  for (;;) {
    // After a delimiter: `--` ends the body, else the rest of the line (CRLF) opens a part.
    while (buf.length < 2 && (await pull()));
    if (buf.subarray(0, 2).toString('latin1') === '--') return parts;
    let eol: number;
    while ((eol = buf.indexOf('\r\n')) < 0) {
      if (buf.length > 256 || !(await pull()))
        throw new RequestInvalidError('the multipart body is truncated');
    }
    buf = buf.subarray(eol + 2);
    let end: number;
    while ((end = buf.indexOf('\r\n\r\n')) < 0) {
      if (buf.length > MAX_HEADER_BYTES)
        throw new RequestInvalidError('the headers of a multipart part are too long');
      if (!(await pull())) throw new RequestInvalidError('the multipart body is truncated');
    }
    const headers = buf.subarray(0, end).toString('utf8').split('\r\n');
    buf = buf.subarray(end + 4);
    const disposition =
      headers.find((h) => /^content-disposition\s*:/i.test(h))?.replace(/^[^:]*:/, '') ?? '';
    const part: Part = {
      name: dispositionParam(disposition, 'name') ?? '',
      filename: dispositionParam(disposition, 'filename'),
    };

    let finished = false;
    async function* content(): AsyncGenerator<Buffer> {
      while (!finished) {
        const at = buf.indexOf(delimiter);
        if (at >= 0) {
          const chunk = buf.subarray(0, at);
          buf = buf.subarray(at + delimiter.length);
          finished = true;
          if (chunk.length > 0) yield chunk;
          return;
        }
        // Keep what could be the start of a delimiter split across chunks.
        const keep = delimiter.length - 1;
        if (buf.length > keep) {
          const chunk = buf.subarray(0, buf.length - keep);
          buf = buf.subarray(buf.length - keep);
          yield chunk;
        }
        if (!(await pull())) throw new RequestInvalidError('the multipart body is truncated');
      }
    }
    const body = content();
    await onPart(part, body);
    // Whatever the consumer left of the part is skipped.
    await drain(body);
    if (!finished) await drain(content());
    parts++;
  }
}
