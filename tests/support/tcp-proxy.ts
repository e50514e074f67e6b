import { createServer, connect, type AddressInfo, type Server, type Socket } from 'node:net';

/** A request seen by the proxy (method, path with query, lower-cased headers). */
export interface ProxiedRequest {
  readonly method: string;
  readonly path: string;
  readonly headers: Readonly<Record<string, string>>;
}

/** Cut the connection after `afterBodyBytes` bytes of the body of the next matching response. */
export interface CutRule {
  readonly match: (request: ProxiedRequest) => boolean;
  readonly afterBodyBytes: number;
  /** How many responses to cut; decremented on each cut. */
  times: number;
}

/** The request's path without its query (the SDK adds `?x-id=GetObject`). */
export function pathOf(request: ProxiedRequest): string {
  return request.path.split('?')[0] ?? '';
}

const HEAD_END = Buffer.from('\r\n\r\n');

function parseHead(head: string): { line: string; headers: Record<string, string> } {
  const [line = '', ...rest] = head.split('\r\n');
  const headers: Record<string, string> = {};
  for (const row of rest) {
    const colon = row.indexOf(':');
    if (colon > 0) headers[row.slice(0, colon).trim().toLowerCase()] = row.slice(colon + 1).trim();
  }
  return { line, headers };
}

/**
 * A TCP proxy on 127.0.0.1 in front of an HTTP/1.1 server. It parses the request and response
 * framing (Content-Length bodies, keep-alive) only to log requests and, on a rule, to end the
 * connection in the middle of a response body, as a flaky network would.
 */
export class TcpProxy {
  readonly requests: ProxiedRequest[] = [];
  readonly cutRules: CutRule[] = [];
  /** Responses that were cut, with the body bytes that got through. */
  readonly cuts: { request: ProxiedRequest; bodyBytes: number }[] = [];
  private readonly server: Server;
  private readonly sockets = new Set<Socket>();

  private constructor(
    server: Server,
    readonly port: number,
  ) {
    this.server = server;
  }

  /** Starts a proxy to `127.0.0.1:targetPort` on a free port. */
  static async start(targetPort: number): Promise<TcpProxy> {
    const server = createServer();
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(0, '127.0.0.1', resolve);
    });
    const proxy = new TcpProxy(server, (server.address() as AddressInfo).port);
    server.on('connection', (client) => proxy.handle(client, targetPort));
    return proxy;
  }

  get endpoint(): string {
    return `http://127.0.0.1:${this.port}`;
  }

  /** Requests whose path (without query) ends with `suffix`. */
  requestsFor(suffix: string, method = 'GET'): ProxiedRequest[] {
    return this.requests.filter((r) => r.method === method && pathOf(r).endsWith(suffix));
  }

  async close(): Promise<void> {
    for (const socket of this.sockets) socket.destroy();
    await new Promise<void>((resolve) => this.server.close(() => resolve()));
  }

  private handle(client: Socket, targetPort: number): void {
    const upstream = connect(targetPort, '127.0.0.1');
    this.sockets.add(client).add(upstream);
    const pending: ProxiedRequest[] = [];
    const drop = (): void => {
      client.destroy();
      upstream.destroy();
      this.sockets.delete(client);
      this.sockets.delete(upstream);
    };
    client.on('error', drop).on('close', drop);
    upstream.on('error', drop).on('close', drop);

    // Client to server: log each request head, skip its body.
    let reqBuf = Buffer.alloc(0);
    let reqBody = 0;
    let reqOpaque = false;
    client.on('data', (chunk: Buffer) => {
      upstream.write(chunk);
      if (reqOpaque) return;
      reqBuf = Buffer.concat([reqBuf, chunk]);
      for (;;) {
        if (reqBody > 0) {
          const n = Math.min(reqBody, reqBuf.length);
          reqBody -= n;
          reqBuf = reqBuf.subarray(n);
          if (reqBody > 0) return;
        }
        const end = reqBuf.indexOf(HEAD_END);
        if (end < 0) return;
        const { line, headers } = parseHead(reqBuf.subarray(0, end).toString('latin1'));
        reqBuf = reqBuf.subarray(end + HEAD_END.length);
        const [method = '', path = ''] = line.split(' ');
        const request = { method, path, headers };
        this.requests.push(request);
        pending.push(request);
        if (headers['transfer-encoding'] !== undefined) reqOpaque = true;
        reqBody = Number(headers['content-length'] ?? 0);
      }
    });

    // Server to client: find each response's body and cut it when a rule says so.
    let resBuf = Buffer.alloc(0);
    let resBody = 0;
    let resOpaque = false;
    let cutAt: number | null = null;
    let sentBody = 0;
    let current: ProxiedRequest | undefined;
    upstream.on('data', (chunk: Buffer) => {
      if (resOpaque) {
        client.write(chunk);
        return;
      }
      resBuf = Buffer.concat([resBuf, chunk]);
      for (;;) {
        if (resBody > 0) {
          let n = Math.min(resBody, resBuf.length);
          if (cutAt !== null && sentBody + n > cutAt) {
            n = cutAt - sentBody;
            if (current !== undefined) this.cuts.push({ request: current, bodyBytes: cutAt });
            client.end(resBuf.subarray(0, n));
            upstream.destroy();
            return;
          }
          client.write(resBuf.subarray(0, n));
          resBuf = resBuf.subarray(n);
          resBody -= n;
          sentBody += n;
          if (resBody > 0 || resBuf.length === 0) return;
        }
        const end = resBuf.indexOf(HEAD_END);
        if (end < 0) return;
        const head = resBuf.subarray(0, end + HEAD_END.length);
        const { line, headers } = parseHead(head.toString('latin1'));
        client.write(head);
        resBuf = resBuf.subarray(head.length);
        current = pending.shift();
        const status = Number(line.split(' ')[1]);
        if (headers['transfer-encoding'] !== undefined) {
          resOpaque = true;
          client.write(resBuf);
          return;
        }
        const noBody = current?.method === 'HEAD' || status === 204 || status === 304;
        resBody = noBody ? 0 : Number(headers['content-length'] ?? 0);
        sentBody = 0;
        cutAt = null;
        const rule =
          current === undefined
            ? undefined
            : this.cutRules.find((r) => r.times > 0 && r.match(current as ProxiedRequest));
        if (rule !== undefined && resBody > rule.afterBodyBytes) {
          rule.times--;
          cutAt = rule.afterBodyBytes;
        }
        if (resBuf.length === 0) return;
      }
    });
  }
}
