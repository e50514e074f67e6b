import { lookup as dnsLookup, type LookupAddress, type LookupOptions } from 'node:dns';
import {
  Agent as HttpAgent,
  request as httpRequest,
  type AgentOptions as HttpAgentOptions,
  type ClientRequestArgs,
} from 'node:http';
import {
  Agent as HttpsAgent,
  request as httpsRequest,
  type AgentOptions as HttpsAgentOptions,
} from 'node:https';
import { isIP } from 'node:net';
import type { Duplex } from 'node:stream';
import { ConfigInvalidError, EgressDeniedError } from '../errors.js';

/** An IP address as bytes: 4 for IPv4, 16 for IPv6. */
interface IpBytes {
  readonly family: 4 | 6;
  readonly bytes: readonly number[];
}

/** A range of addresses: an address and how many leading bits must match. */
interface Cidr extends IpBytes {
  readonly prefix: number;
}

/** The bytes of an address that `net.isIP` accepts (an IPv6 zone id is dropped), else null. */
function parseIp(text: string): IpBytes | null {
  const family = isIP(text);
  if (family === 4) return { family: 4, bytes: text.split('.').map(Number) };
  if (family !== 6) return null;
  let s = text.replace(/%.*$/, '');
  const tail: number[] = [];
  const dotted = /^(.*:)(\d+\.\d+\.\d+\.\d+)$/.exec(s);
  if (dotted) {
    // A dotted tail (::ffff:127.0.0.1) is the last two groups.
    const [, groups6 = '', quad = ''] = dotted;
    tail.push(...quad.split('.').map(Number));
    s = groups6.endsWith('::') ? groups6 : groups6.slice(0, -1);
  }
  const groups = (part: string): number[] =>
    part === '' ? [] : part.split(':').map((g) => parseInt(g, 16));
  const [head, rest] = s.includes('::') ? s.split('::') : [s, undefined];
  const left = groups(head ?? '');
  const right = rest === undefined ? [] : groups(rest);
  const missing = 8 - tail.length / 2 - left.length - right.length;
  const all = [...left, ...new Array<number>(rest === undefined ? 0 : missing).fill(0), ...right];
  const bytes = all.flatMap((g) => [g >> 8, g & 0xff]).concat(tail);
  return bytes.length === 16 ? { family: 6, bytes } : null;
}

/** `a.b.c.d/n` or `x::/n`, strictly (no odd IPv4 spellings); null when it is not one. */
function parseCidr(text: string): Cidr | null {
  const slash = text.lastIndexOf('/');
  const ip = parseIp(slash < 0 ? text : text.slice(0, slash));
  if (ip === null) return null;
  const max = ip.family === 4 ? 32 : 128;
  if (slash < 0) return { ...ip, prefix: max };
  const bits = text.slice(slash + 1);
  if (!/^\d{1,3}$/.test(bits) || Number(bits) > max) return null;
  return { ...ip, prefix: Number(bits) };
}

function contains(range: Cidr, ip: IpBytes): boolean {
  if (range.family !== ip.family) return false;
  for (let bit = 0; bit < range.prefix; bit += 8) {
    const left = Math.min(8, range.prefix - bit);
    const mask = (0xff << (8 - left)) & 0xff;
    if ((((range.bytes[bit / 8] ?? 0) ^ (ip.bytes[bit / 8] ?? 0)) & mask) !== 0) return false;
  }
  return true;
}

const cidr = (text: string): Cidr => {
  const c = parseCidr(text);
  // A typo in the table below is a bug of ours, caught by every test that loads this module.
  if (c === null) throw new ConfigInvalidError(`egress table: ${text} is not a CIDR`);
  return c;
};

/**
 * The ranges refused by default, most specific first (the first match names the reason).
 * Metadata addresses lead so that a refusal names them rather than the range around them.
 */
const REFUSED: readonly { readonly range: Cidr; readonly why: string }[] = (
  [
    ['169.254.169.254/32', 'the cloud metadata address (AWS, GCP, Azure, OpenStack, Oracle)'],
    ['fd00:ec2::254/128', 'the AWS IPv6 metadata address'],
    ['100.100.100.200/32', 'the Alibaba Cloud metadata address'],
    ['168.63.129.16/32', 'the Azure host (WireServer) address'],
    ['0.0.0.0/8', 'unspecified ("this network"; Linux connects 0.0.0.0 to the host itself)'],
    ['127.0.0.0/8', 'loopback'],
    ['10.0.0.0/8', 'private (RFC 1918)'],
    ['172.16.0.0/12', 'private (RFC 1918)'],
    ['192.168.0.0/16', 'private (RFC 1918)'],
    ['100.64.0.0/10', 'shared address space (CGNAT, RFC 6598)'],
    ['169.254.0.0/16', 'link-local'],
    ['192.0.0.0/24', 'reserved (IETF protocol assignments)'],
    ['192.0.2.0/24', 'reserved (documentation)'],
    ['198.51.100.0/24', 'reserved (documentation)'],
    ['203.0.113.0/24', 'reserved (documentation)'],
    ['192.88.99.0/24', 'reserved (6to4 relay anycast)'],
    ['198.18.0.0/15', 'reserved (benchmarking)'],
    ['224.0.0.0/4', 'multicast'],
    ['255.255.255.255/32', 'broadcast'],
    ['240.0.0.0/4', 'reserved (240/4)'],
    ['::/128', 'unspecified'],
    ['::1/128', 'loopback'],
    ['fc00::/7', 'private (unique local, fc00::/7)'],
    ['fe80::/10', 'link-local'],
    ['fec0::/10', 'site-local (deprecated)'],
    ['ff00::/8', 'multicast'],
    ['100::/64', 'reserved (discard-only)'],
    ['2001:db8::/32', 'reserved (documentation)'],
  ] as const
).map(([range, why]) => ({ range: cidr(range), why }));

/**
 * IPv6 forms that carry an IPv4 address: the IPv4 address is where the packet really goes (the
 * kernel, a NAT64 gateway or a 6to4 relay takes it there), so it is checked too.
 */
const EMBEDDING: readonly {
  readonly range: Cidr;
  readonly name: string;
  readonly v4: (b: readonly number[]) => number[];
}[] = [
  { range: cidr('::ffff:0:0/96'), name: 'IPv4-mapped', v4: (b) => b.slice(12, 16) },
  { range: cidr('::ffff:0:0:0/96'), name: 'IPv4-translated', v4: (b) => b.slice(12, 16) },
  { range: cidr('::/96'), name: 'IPv4-compatible', v4: (b) => b.slice(12, 16) },
  { range: cidr('64:ff9b::/96'), name: 'NAT64', v4: (b) => b.slice(12, 16) },
  { range: cidr('64:ff9b:1::/48'), name: 'local NAT64', v4: (b) => b.slice(12, 16) },
  { range: cidr('2002::/16'), name: '6to4', v4: (b) => b.slice(2, 6) },
  // Teredo: the client's address is stored inverted in the last 32 bits.
  { range: cidr('2001::/32'), name: 'Teredo', v4: (b) => b.slice(12, 16).map((x) => x ^ 0xff) },
];

/** The IPv4 address an IPv6 address carries, with the form's name; null for none. */
function embeddedV4(ip: IpBytes): { ip: IpBytes; name: string } | null {
  if (ip.family !== 6) return null;
  for (const e of EMBEDDING) {
    if (contains(e.range, ip)) return { ip: { family: 4, bytes: e.v4(ip.bytes) }, name: e.name };
  }
  return null;
}

function refusedRange(ip: IpBytes): string | null {
  for (const row of REFUSED) if (contains(row.range, ip)) return row.why;
  return null;
}

/**
 * Why the default policy refuses an address (a string naming the range), or null when it is a
 * public address. IPv6 forms that carry an IPv4 address are judged by that address too. This
 * only reads the address: it sends nothing anywhere.
 */
export function refusalOf(address: string): string | null {
  const ip = parseIp(address.replace(/^\[|\]$/g, ''));
  if (ip === null) return 'not an IP address';
  // First the address itself: :: and ::1 sit inside ::/96 but carry no IPv4 address.
  const own = refusedRange(ip);
  if (own !== null) return own;
  const inner = embeddedV4(ip);
  if (inner === null) return null;
  const why = refusedRange(inner.ip);
  return why === null ? null : `${why}, as ${inner.name} ${inner.ip.bytes.join('.')}`;
}

/** A resolver the policy asks for a host's addresses (dns.lookup by default; tests inject one). */
export type EgressResolver = (
  hostname: string,
  options: { family?: number },
) => Promise<readonly LookupAddress[]>;

const systemResolver: EgressResolver = (hostname, options) =>
  new Promise((resolve, reject) => {
    dnsLookup(hostname, { all: true, family: options.family ?? 0 }, (err, addresses) =>
      err ? reject(err) : resolve(addresses),
    );
  });

/** How an egress policy is made. */
export interface EgressPolicyOptions {
  /**
   * What the operator opens (RUNNER_EGRESS_ALLOW): host names (exact; every address they resolve
   * to is then allowed), IP addresses and CIDRs. Checked here: a bad entry is CONFIG_INVALID.
   */
  readonly allow?: readonly string[];
  /** The resolver used at connect time (default: the system's, as `dns.lookup`). */
  readonly resolve?: EgressResolver;
}

/** What one request on a user's behalf sends. */
export interface EgressRequest {
  readonly method: string;
  readonly headers?: Readonly<Record<string, string>>;
  readonly body?: string | Buffer;
  readonly signal?: AbortSignal;
}

/** The callback that `net.connect`'s `lookup` option calls. */
type LookupCallback = (
  err: NodeJS.ErrnoException | null,
  address: string | LookupAddress[],
  family?: number,
) => void;

/** A host name as URL keeps it, compared as written: lower case, no brackets, no final dot. */
function normalHost(host: string): string {
  return host
    .replace(/^\[|\]$/g, '')
    .replace(/\.$/, '')
    .toLowerCase();
}

/**
 * The rule for every request the service makes on a user's behalf (callbacks): loopback,
 * private, link-local, multicast, reserved and cloud metadata addresses are refused unless the
 * operator's allow-list opens them. It holds at connect time, on the resolved addresses, through
 * the Agents it makes: their `lookup` checks every address the resolver returns (one refused
 * address refuses the request, so a rebinding answer cannot mix one in), and their
 * `createConnection` checks IP-literal hosts (Node skips `lookup` for those). Redirects are never
 * followed (`send` is a plain http.request). The check at submission (`checkUrl`) only gives an
 * early 400; the connect-time check is the one that holds.
 */
export class EgressPolicy {
  private readonly allowedRanges: readonly Cidr[];
  private readonly allowedNames: ReadonlySet<string>;
  private readonly resolve: EgressResolver;
  /** Agents for http and https URLs: no keep-alive, so each request resolves and checks anew. */
  readonly httpAgent: HttpAgent;
  readonly httpsAgent: HttpAgent;

  constructor(options: EgressPolicyOptions = {}) {
    const ranges: Cidr[] = [];
    const names = new Set<string>();
    for (const entry of options.allow ?? []) {
      const parsed = parseAllowEntry(entry);
      if (typeof parsed === 'string') names.add(parsed);
      else ranges.push(parsed);
    }
    this.allowedRanges = ranges;
    this.allowedNames = names;
    this.resolve = options.resolve ?? systemResolver;
    const lookup = this.lookup.bind(this);
    // Agent options win over a request's own, so a caller cannot pass another lookup.
    this.httpAgent = new CheckedHttpAgent(this, { keepAlive: false, lookup });
    this.httpsAgent = new CheckedHttpsAgent(this, { keepAlive: false, lookup });
  }

  /**
   * Why this policy refuses `address` reached as `host` (the name asked for), or null when it
   * allows it: an allow-listed host name or range opens it, else the default table decides.
   */
  refusal(address: string, host?: string): string | null {
    if (host !== undefined && this.allowedNames.has(normalHost(host))) return null;
    const ip = parseIp(normalHost(address));
    if (ip === null) return 'not an IP address';
    const inner = embeddedV4(ip);
    for (const range of this.allowedRanges) {
      if (contains(range, ip) || (inner !== null && contains(range, inner.ip))) return null;
    }
    return refusalOf(address);
  }

  /** Throws EGRESS_DENIED, naming the address and why, when `address` is refused. */
  assertAllowed(address: string, host: string = address): void {
    const why = this.refusal(address, host);
    if (why === null) return;
    const shown = normalHost(host) === normalHost(address) ? address : `${address} (${host})`;
    throw new EgressDeniedError(
      `egress to ${shown} refused: ${why}; RUNNER_EGRESS_ALLOW can open it`,
      { details: { host, address, reason: why } },
    );
  }

  /**
   * The check at submission, without DNS: an IP-literal host that is refused, or a `localhost`
   * name (taken as 127.0.0.1), throws EGRESS_DENIED with a message that starts with `field`.
   */
  checkUrl(url: URL, field: string): void {
    const host = normalHost(url.hostname);
    const literal = isIP(host) !== 0;
    if (!literal && host !== 'localhost' && !host.endsWith('.localhost')) return;
    const why = this.refusal(literal ? host : '127.0.0.1', host);
    if (why === null) return;
    throw new EgressDeniedError(
      `${field} host ${host} is refused by the egress policy: ${why}; RUNNER_EGRESS_ALLOW can open it`,
      { details: { host, reason: why } },
    );
  }

  /**
   * A `lookup` for net.connect: resolves every address of the host, refuses all of them when
   * any is refused (EGRESS_DENIED), else answers as dns.lookup would (one address, or all).
   */
  lookup(hostname: string, options: LookupOptions, callback: LookupCallback): void {
    const family = typeof options.family === 'number' ? options.family : 0;
    this.resolve(hostname, { family }).then(
      (addresses) => {
        const [first] = addresses;
        if (first === undefined) {
          const err: NodeJS.ErrnoException = new EgressDeniedError(
            `egress to ${hostname} refused: it resolved to no address`,
            { details: { host: hostname, reason: 'no address' } },
          );
          callback(err, '');
          return;
        }
        for (const a of addresses) {
          try {
            this.assertAllowed(a.address, hostname);
          } catch (err) {
            callback(err as EgressDeniedError, '');
            return;
          }
        }
        if (options.all === true) callback(null, [...addresses]);
        else callback(null, first.address, first.family);
      },
      (err: unknown) => callback(err as NodeJS.ErrnoException, ''),
    );
  }

  /**
   * Sends one request through this policy's agents and resolves to the answer's status (the
   * body is discarded). Rejects with EGRESS_DENIED for a refused address, before anything is
   * sent to it; a redirect is an answer like any other (never followed).
   */
  async send(rawUrl: string, req: EgressRequest): Promise<number> {
    const url = new URL(rawUrl);
    const host = normalHost(url.hostname);
    if (isIP(host) !== 0) this.assertAllowed(host);
    const https = url.protocol === 'https:';
    const args: ClientRequestArgs = {
      method: req.method,
      headers: req.headers,
      agent: https ? this.httpsAgent : this.httpAgent,
      signal: req.signal,
    };
    return new Promise((resolve, reject) => {
      const r = (https ? httpsRequest : httpRequest)(url, args, (res) => {
        res.resume();
        resolve(res.statusCode ?? 0);
      });
      r.on('error', reject);
      r.end(req.body);
    });
  }
}

/** An allow-list entry as a range, or as a host name (lower case); CONFIG_INVALID otherwise. */
function parseAllowEntry(entry: string): Cidr | string {
  const text = entry.trim();
  const bad = (): never => {
    throw new ConfigInvalidError(
      `RUNNER_EGRESS_ALLOW: ${JSON.stringify(entry)} is not a host name, IP address or CIDR`,
    );
  };
  if (text.includes('/')) return parseCidr(text.replace(/^\[|\](?=\/)/g, '')) ?? bad();
  let hostname: string;
  try {
    // As a URL would read it: 127.1 and 2130706433 are 127.0.0.1, names are lower-cased.
    hostname = new URL(
      `http://${text.includes(':') && !text.startsWith('[') ? `[${text}]` : text}/`,
    ).hostname;
  } catch {
    return bad();
  }
  const host = normalHost(hostname);
  if (isIP(host) !== 0) return parseCidr(host) ?? bad();
  if (!/^[a-z0-9_]([a-z0-9_-]*[a-z0-9_])?(\.[a-z0-9_]([a-z0-9_-]*[a-z0-9_])?)*$/.test(host))
    return bad();
  return host;
}

/** Options net.connect / tls.connect get from an Agent: the host and a unix socket path. */
type ConnectArgs = ClientRequestArgs & { socketPath?: string };

/**
 * Checks the host of a connection an agent is about to open: an IP literal (which Node connects
 * to without calling `lookup`) must be allowed, and unix sockets are never opened.
 */
function connectRefusal(policy: EgressPolicy, options: ConnectArgs): Error | null {
  if (options.socketPath !== undefined)
    return new EgressDeniedError("egress refused: requests on a user's behalf use no unix socket");
  const host = normalHost(options.host ?? '');
  if (isIP(host) === 0) return null; // a name: the agent's lookup checks what it resolves to
  try {
    policy.assertAllowed(host);
    return null;
  } catch (err) {
    return err as Error;
  }
}

type ConnectCallback = (err: Error | null, stream: Duplex) => void;

/**
 * Refuses through the callback. Node's Agent takes a socket either returned or passed to the
 * callback (its documented contract); here none is returned, so the request fails with `err`.
 */
function refuse(err: Error, callback: ConnectCallback | undefined): Duplex {
  process.nextTick(() => callback?.(err, undefined as unknown as Duplex));
  return undefined as unknown as Duplex;
}

/**
 * The agent class `Base` with every connection checked against a policy (see EgressPolicy)
 * before it is opened: one override for http and https alike.
 */
function checkedAgent<O>(Base: new (options: O) => HttpAgent) {
  return class CheckedAgent extends Base {
    constructor(
      private readonly policy: EgressPolicy,
      options: O,
    ) {
      super(options);
    }

    override createConnection(options: ConnectArgs, callback?: ConnectCallback): Duplex {
      const err = connectRefusal(this.policy, options);
      return err === null ? super.createConnection(options, callback) : refuse(err, callback);
    }
  };
}

const CheckedHttpAgent = checkedAgent<HttpAgentOptions>(HttpAgent);
const CheckedHttpsAgent = checkedAgent<HttpsAgentOptions>(HttpsAgent);
