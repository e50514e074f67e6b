import type { LookupAddress } from 'node:dns';
import { createServer, request, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { afterEach, describe, expect, test } from 'vitest';
import { ConfigInvalidError, EgressDeniedError } from '../../../src/errors.js';
import { EgressPolicy, refusalOf, type EgressResolver } from '../../../src/net/index.js';

/**
 * The egress policy of the service's own requests. Refused addresses are only judged here, never
 * sent anything; the only traffic is to loopback listeners of these tests, and a listener the
 * policy must not reach counts its connections (which must stay 0). No real DNS: host names are
 * resolved by injected resolvers.
 */

/** How a URL host is read (WHATWG): odd IPv4 spellings become dotted quads, IPv6 keeps brackets. */
const hostOf = (host: string): string => new URL(`http://${host}/`).hostname;

describe('the default policy, row by row (judged without sending anything)', () => {
  test.each([
    ['127.0.0.1', /^loopback$/],
    ['127.255.0.9', /^loopback$/],
    ['[::1]', /^loopback$/],
    ['0.0.0.0', /^unspecified/],
    ['[::]', /^unspecified$/],
    ['10.1.2.3', /^private/],
    ['172.16.0.1', /^private/],
    ['172.31.255.255', /^private/],
    ['192.168.1.1', /^private/],
    ['[fc00::1]', /^private/],
    ['[fd12:3456::1]', /^private/],
    ['100.64.0.1', /CGNAT/],
    ['100.127.255.255', /CGNAT/],
    ['169.254.1.1', /^link-local$/],
    ['[fe80::1]', /^link-local$/],
    ['224.0.0.1', /^multicast$/],
    ['239.255.255.250', /^multicast$/],
    ['[ff02::1]', /^multicast$/],
    ['240.0.0.1', /^reserved/],
    ['255.255.255.255', /^broadcast$/],
    ['169.254.169.254', /cloud metadata/],
    ['[fd00:ec2::254]', /AWS IPv6 metadata/],
    ['100.100.100.200', /Alibaba/],
    // IPv4-mapped, -compatible, -translated, NAT64, 6to4 and Teredo forms of refused addresses.
    ['[::ffff:127.0.0.1]', /^loopback, as IPv4-mapped 127\.0\.0\.1$/],
    ['[::ffff:7f00:1]', /^loopback, as IPv4-mapped 127\.0\.0\.1$/],
    ['[::ffff:169.254.169.254]', /metadata.*IPv4-mapped 169\.254\.169\.254/],
    ['[::127.0.0.1]', /^loopback, as IPv4-compatible/],
    ['[::ffff:0:7f00:1]', /^loopback, as IPv4-translated/],
    ['[64:ff9b::7f00:1]', /^loopback, as NAT64 127\.0\.0\.1$/],
    ['[64:ff9b::a9fe:a9fe]', /metadata.*NAT64/],
    ['[2002:7f00:1::]', /^loopback, as 6to4 127\.0\.0\.1$/],
    ['[2002:a00:1::1]', /^private.*6to4 10\.0\.0\.1/],
    ['[2001:0:4136:e378:8000:63bf:80ff:fffe]', /^loopback, as Teredo 127\.0\.0\.1$/],
    // The odd IPv4 spellings, as a URL reads them.
    ['2130706433', /^loopback$/],
    ['0x7f.1', /^loopback$/],
    ['0x7f000001', /^loopback$/],
    ['017700000001', /^loopback$/],
    ['127.1', /^loopback$/],
    ['0', /^unspecified/],
    ['2852039166', /cloud metadata/], // 169.254.169.254
  ])('%s is refused', (host, why) => {
    expect(refusalOf(hostOf(host))).toMatch(why);
  });

  test.each([
    '93.184.216.34',
    '[2606:4700::1]',
    '8.8.8.8',
    '172.32.0.1', // just past 172.16/12
    '100.128.0.1', // just past 100.64/10
    '[::ffff:93.184.216.34]', // a mapped public address is that public address
    '[64:ff9b::5db8:d822]',
    '[2001:4860:4860::8888]',
  ])('%s (public) is allowed', (host) => {
    expect(refusalOf(hostOf(host))).toBeNull();
  });

  test('what is not an IP address is refused, not guessed at', () => {
    expect(refusalOf('example.com')).toBe('not an IP address');
    expect(new EgressPolicy().refusal('example.com')).toBe('not an IP address');
  });
});

describe('the allow-list', () => {
  test('addresses and CIDRs open exactly what they name, in every spelling of it', () => {
    const p = new EgressPolicy({ allow: ['127.0.0.1', '10.0.0.0/8', '[fd00::]/16', '::1'] });
    expect(p.refusal('127.0.0.1')).toBeNull();
    expect(p.refusal('::ffff:127.0.0.1')).toBeNull();
    expect(p.refusal('127.0.0.2')).toBe('loopback');
    expect(p.refusal('10.200.0.1')).toBeNull();
    expect(p.refusal('::ffff:10.200.0.1')).toBeNull();
    expect(p.refusal('11.0.0.1')).toBeNull(); // public anyway
    expect(p.refusal('192.168.0.1')).toMatch(/private/);
    expect(p.refusal('fd00::5')).toBeNull();
    expect(p.refusal('fd01::5')).toMatch(/private/);
    expect(p.refusal('::1')).toBeNull();
    expect(p.refusal('169.254.169.254')).toMatch(/metadata/);
  });

  test('entries are read as a URL reads hosts: 127.1 is 127.0.0.1, names are lower-cased', () => {
    const p = new EgressPolicy({ allow: ['127.1', 'Hook.Example'] });
    expect(p.refusal('127.0.0.1')).toBeNull();
    expect(p.refusal('10.0.0.1', 'hook.example.')).toBeNull();
    expect(p.refusal('10.0.0.1', 'other.example')).toMatch(/private/);
  });

  test.each(['', 'a b', '10.0.0.0/33', '10.0.0/8', 'http://x', '1.2.3.4/x', '::1/129'])(
    'a bad entry %j is CONFIG_INVALID at start',
    (entry) => {
      expect(() => new EgressPolicy({ allow: [entry] })).toThrow(ConfigInvalidError);
    },
  );

  test('callbackAllowedHosts does not open anything: the egress setting is its own', () => {
    // The settings table has both; an empty egressAllow refuses loopback whatever else says.
    expect(new EgressPolicy({ allow: [] }).refusal('127.0.0.1')).toBe('loopback');
  });
});

describe('the check at submission (literals only, no DNS)', () => {
  const p = new EgressPolicy();
  test.each([
    'http://127.0.0.1:9/',
    'http://[::ffff:127.0.0.1]/',
    'http://2130706433/',
    'http://0x7f.1/',
    'http://017700000001/',
    'http://127.1/',
    'https://169.254.169.254/latest/meta-data',
    'http://localhost:8080/',
    'http://a.localhost/',
  ])('%s is EGRESS_DENIED, naming the field', (url) => {
    expect(() => p.checkUrl(new URL(url), 'callbackUrl')).toThrow(EgressDeniedError);
    expect(() => p.checkUrl(new URL(url), 'callbackUrl')).toThrow(
      /^callbackUrl host \S+ is refused/,
    );
  });

  test('a host name passes (its addresses are checked when it connects)', () => {
    expect(() => p.checkUrl(new URL('http://hook.example/x'), 'callbackUrl')).not.toThrow();
    expect(() => p.checkUrl(new URL('http://93.184.216.34/x'), 'callbackUrl')).not.toThrow();
  });
});

/** A resolver that answers each call with the next of `answers` (the last one repeats). */
function scripted(...answers: (readonly LookupAddress[])[]): EgressResolver & { calls: string[] } {
  const calls: string[] = [];
  const resolve = (host: string): Promise<readonly LookupAddress[]> => {
    calls.push(host);
    return Promise.resolve(answers[Math.min(calls.length, answers.length) - 1] ?? []);
  };
  return Object.assign(resolve, { calls });
}

const v4 = (address: string): LookupAddress => ({ address, family: 4 });

/** Calls the policy's lookup as net.connect would and returns what it answered. */
function lookupOnce(
  p: EgressPolicy,
  host: string,
  all: boolean,
): Promise<{ err: NodeJS.ErrnoException | null; address: unknown }> {
  return new Promise((resolve) => {
    p.lookup(host, { all }, (err, address) => resolve({ err, address }));
  });
}

/** A loopback listener that counts connections and keeps what it was sent. */
interface Listener {
  readonly server: Server;
  port: number;
  connections: number;
  readonly bodies: string[];
}

const listeners: Listener[] = [];
afterEach(async () => {
  for (const l of listeners.splice(0)) await new Promise((r) => l.server.close(r));
});

async function listen(
  answer: (res: ServerResponse) => void = (res) => res.end('ok'),
  host = '127.0.0.1',
): Promise<Listener> {
  const bodies: string[] = [];
  const server = createServer((req, res) => {
    let data = '';
    req.on('data', (c: Buffer) => (data += c.toString()));
    req.on('end', () => {
      bodies.push(data);
      answer(res);
    });
  });
  const l: Listener = { server, port: 0, connections: 0, bodies };
  server.on('connection', () => l.connections++);
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(0, host, resolve);
  });
  l.port = (server.address() as AddressInfo).port;
  listeners.push(l);
  return l;
}

describe('the lookup hook: every resolved address is checked', () => {
  test('one refused address among public ones refuses the host', async () => {
    const p = new EgressPolicy({ resolve: scripted([v4('93.184.216.34'), v4('127.0.0.1')]) });
    for (const all of [true, false]) {
      const { err } = await lookupOnce(p, 'mixed.test', all);
      expect(err).toBeInstanceOf(EgressDeniedError);
      expect(err?.message).toMatch(/egress to 127\.0\.0\.1 \(mixed\.test\) refused: loopback/);
    }
  });

  test('allowed answers come back as dns.lookup gives them (one, or all)', async () => {
    const answer = [v4('93.184.216.34'), { address: '2606:4700::1', family: 6 }];
    const p = new EgressPolicy({ resolve: scripted(answer) });
    expect(await lookupOnce(p, 'ok.test', true)).toEqual({ err: null, address: answer });
    expect(await lookupOnce(p, 'ok.test', false)).toEqual({ err: null, address: '93.184.216.34' });
  });

  test('an allow-listed host name may resolve to anything', async () => {
    const p = new EgressPolicy({ allow: ['hook.test'], resolve: scripted([v4('10.0.0.7')]) });
    expect((await lookupOnce(p, 'hook.test', false)).err).toBeNull();
    expect((await lookupOnce(p, 'other.test', false)).err).toBeInstanceOf(EgressDeniedError);
  });
});

describe('connect-time enforcement (real loopback listeners)', () => {
  test('DNS rebinding: public at the first answer, 127.0.0.1 at the next: refused at connect', async () => {
    const target = await listen();
    const resolve = scripted([v4('93.184.216.34')], [v4('127.0.0.1')]);
    const p = new EgressPolicy({ resolve });
    // The first resolution (what a check done ahead of time would have seen) is public...
    expect((await lookupOnce(p, 'rebind.test', false)).err).toBeNull();
    // ...and the connection resolves again, sees loopback, and never opens.
    const sent = p.send(`http://rebind.test:${target.port}/hook`, { method: 'POST', body: 'x' });
    await expect(sent).rejects.toThrow(EgressDeniedError);
    await expect(sent).rejects.toThrow(/127\.0\.0\.1 \(rebind\.test\) refused: loopback/);
    expect(resolve.calls).toEqual(['rebind.test', 'rebind.test']);
    expect(target.connections).toBe(0);
  });

  test('a mixed answer (public first, then loopback) is refused before anything is sent', async () => {
    const target = await listen();
    const p = new EgressPolicy({ resolve: scripted([v4('93.184.216.34'), v4('127.0.0.1')]) });
    await expect(
      p.send(`http://mixed.test:${target.port}/`, { method: 'POST', body: 'x' }),
    ).rejects.toThrow(EgressDeniedError);
    expect(target.connections).toBe(0);
  });

  test('IP-literal hosts (which Node connects to without lookup) are checked by the agent itself', async () => {
    const target = await listen();
    const p = new EgressPolicy();
    // Through http.request with the agent only (not send(), which checks first): the agent holds.
    for (const host of ['127.0.0.1', '[::ffff:127.0.0.1]']) {
      const err = await new Promise<Error>((resolve) => {
        const r = request(`http://${host}:${target.port}/`, { agent: p.httpAgent }, () =>
          resolve(new Error('it connected')),
        );
        r.on('error', resolve);
        r.end();
      });
      expect(err).toBeInstanceOf(EgressDeniedError);
      expect(err.message).toMatch(/loopback/);
    }
    await expect(p.send(`https://127.0.0.1:${target.port}/`, { method: 'GET' })).rejects.toThrow(
      EgressDeniedError,
    );
    expect(target.connections).toBe(0);
  });

  test('a request option cannot swap in its own lookup, and unix sockets are refused', async () => {
    const target = await listen();
    const p = new EgressPolicy({ resolve: scripted([v4('127.0.0.1')]) });
    const err = await new Promise<Error>((resolve) => {
      const r = request(
        `http://sneaky.test:${target.port}/`,
        {
          agent: p.httpAgent,
          lookup: (_h, _o, cb) => cb(null, '127.0.0.1', 4),
        },
        () => resolve(new Error('it connected')),
      );
      r.on('error', resolve);
      r.end();
    });
    expect(err).toBeInstanceOf(EgressDeniedError);
    const unix = await new Promise<Error>((resolve) => {
      const r = request({ socketPath: '/tmp/x.sock', path: '/', agent: p.httpAgent }, () =>
        resolve(new Error('it connected')),
      );
      r.on('error', resolve);
      r.end();
    });
    expect(unix).toBeInstanceOf(EgressDeniedError);
    expect(target.connections).toBe(0);
  });

  test('an allow-listed loopback listener really receives the request', async () => {
    const target = await listen();
    const p = new EgressPolicy({ allow: ['127.0.0.1'] });
    const status = await p.send(`http://127.0.0.1:${target.port}/hook`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: '{"ok":true}',
    });
    expect(status).toBe(200);
    expect(target.bodies).toEqual(['{"ok":true}']);
  });

  test('an allow-listed name resolving to loopback reaches it too', async () => {
    const target = await listen();
    const p = new EgressPolicy({ allow: ['hook.test'], resolve: scripted([v4('127.0.0.1')]) });
    expect(await p.send(`http://hook.test:${target.port}/`, { method: 'PUT', body: 'y' })).toBe(
      200,
    );
    expect(target.bodies).toEqual(['y']);
  });

  test('redirects are not followed: the 302 is the answer, its target gets nothing', async () => {
    const elsewhere = await listen();
    const first = await listen((res) =>
      res.writeHead(302, { location: `http://127.0.0.1:${elsewhere.port}/` }).end(),
    );
    const p = new EgressPolicy({ allow: ['127.0.0.0/8'] });
    expect(await p.send(`http://127.0.0.1:${first.port}/`, { method: 'POST', body: 'z' })).toBe(
      302,
    );
    expect(first.connections).toBe(1);
    expect(elsewhere.connections).toBe(0);
  });

  test('::1 without the allow-list: refused, its listener receives nothing', async (ctx) => {
    let target: Listener;
    try {
      target = await listen(undefined, '::1');
    } catch (err) {
      console.warn(`::1 test skipped: no IPv6 loopback here (${(err as Error).message})`);
      ctx.skip();
      return;
    }
    const p = new EgressPolicy();
    await expect(p.send(`http://[::1]:${target.port}/`, { method: 'GET' })).rejects.toThrow(
      /egress to ::1 refused: loopback/,
    );
    expect(target.connections).toBe(0);
  });
});
