import { spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { ConfigInvalidError } from '../../../src/errors.js';
import {
  cidrWithin,
  hostRuleset,
  linkAddresses,
  linkCount,
  parseAllowList,
  parseCidr,
  vmRuleset,
} from '../../../src/net/vmnet.js';

const policy = {
  allow: [parseCidr('198.18.1.10/32'), parseCidr('8.8.8.0/24')],
  dns: '198.18.1.53',
  hostAddresses: ['192.0.2.2'],
  linkCidr: '10.255.0.0/16',
  maxConnections: 4,
};

describe('the address plan', () => {
  it('gives VM link N the N-th /30 of networkLinkCidr, host first', () => {
    expect(linkAddresses('10.255.0.0/16', 0)).toEqual({
      index: 0,
      hostIp: '10.255.0.1',
      nsIp: '10.255.0.2',
      prefix: 30,
    });
    expect(linkAddresses('10.255.0.0/16', 65)).toMatchObject({
      hostIp: '10.255.1.5',
      nsIp: '10.255.1.6',
    });
    expect(linkCount('10.255.0.0/16')).toBe(16384);
    expect(() => linkAddresses('10.255.0.0/16', 16384)).toThrow(ConfigInvalidError);
    expect(() => linkAddresses('10.255.0.0/31', 0)).toThrow(ConfigInvalidError);
  });

  it('parses CIDRs and splits the allow-list into CIDRs and domains', () => {
    expect(parseCidr('10.1.2.3/8')).toEqual({ base: 0x0a000000, prefix: 8 });
    expect(cidrWithin(parseCidr('198.18.1.10'), parseCidr('198.18.0.0/15'))).toBe(true);
    expect(cidrWithin(parseCidr('0.0.0.0/0'), parseCidr('10.0.0.0/8'))).toBe(false);
    const allow = parseAllowList(['1.2.3.0/24', 'Example.ORG.', 'pypi.internal']);
    expect(allow.cidrs).toEqual([parseCidr('1.2.3.0/24')]);
    expect(allow.domains).toEqual(['example.org', 'pypi.internal']);
    for (const bad of ['1.2.3.4/33', '300.1.1.1', 'http://x.org', '1.2.3.4/8/1', 'a b'])
      expect(() => parseAllowList([bad]), bad).toThrow(ConfigInvalidError);
  });
});

describe('the VM ruleset', () => {
  const text = vmRuleset(policy);

  it('never opens the host, loopback, link-local (metadata) or the VM links, before anything else', () => {
    const never = /set never \{[^}]*elements = \{ ([^}]*) \}/.exec(text)?.[1] ?? '';
    for (const c of [
      '127.0.0.0/8',
      '169.254.0.0/16',
      '192.0.2.2/32',
      '10.255.0.0/16',
      '10.254.0.0/30',
    ])
      expect(never).toContain(c);
    const lines = text.split('\n').map((l) => l.trim());
    const at = (prefix: string): number => lines.findIndex((l) => l.startsWith(prefix));
    expect(at('ip daddr @never')).toBeGreaterThan(-1);
    expect(at('ip daddr @never')).toBeLessThan(at('ip daddr @allow accept'));
    expect(at('ip daddr @never')).toBeLessThan(at('ip daddr 198.18.1.53'));
  });

  it('opens a private range only where an allow CIDR inside it names it', () => {
    expect(text).toMatch(/set allow_private \{[^}]*elements = \{ 198\.18\.1\.10\/32 \}/);
    const lines = text.split('\n').map((l) => l.trim());
    const i = (p: string): number => lines.findIndex((l) => l.startsWith(p));
    expect(i('ip daddr @allow_private accept')).toBeLessThan(i('ip daddr @private'));
    expect(i('ip daddr @private')).toBeLessThan(i('ip daddr @allow accept'));
  });

  it('sends DNS only to the resolver, caps connections, and refuses the rest', () => {
    expect(text).toContain(
      'ip daddr 10.254.0.1 meta l4proto { tcp, udp } th dport 53 dnat ip to 198.18.1.53',
    );
    expect(text).toContain('ct state new ct count over 4 counter reject');
    expect(text).toContain('meta l4proto { tcp, udp } th dport 53 counter reject');
    expect(text).toMatch(
      /policy drop;\n    iifname "veth0" oifname "tap0" ct state established,related accept/,
    );
    expect(vmRuleset({ ...policy, dns: null })).not.toContain('dnat');
  });

  it('is accepted by nft (checked, not loaded, when nft is here and we are root)', () => {
    const nft = spawnSync('nft', ['--version']);
    if (nft.status !== 0 || process.getuid?.() !== 0) {
      console.warn('skipping the nft -c check: nft is missing or this is not root');
      return;
    }
    const dir = mkdtempSync(join(tmpdir(), 'vmnet-nft-'));
    try {
      for (const [name, body] of [
        ['vm.nft', text],
        ['host.nft', hostRuleset('10.255.0.0/16')],
      ] as const) {
        writeFileSync(join(dir, name), body);
        const r = spawnSync('nft', ['-c', '-f', join(dir, name)], { encoding: 'utf8' });
        expect(r.stderr, name).toBe('');
        expect(r.status, name).toBe(0);
      }
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});

describe('the host ruleset', () => {
  it('drops everything from the VM links to the host and new flows into them; masquerades the links', () => {
    const text = hostRuleset('10.255.0.0/16');
    expect(text).toContain('iifname "rvh*" counter drop');
    expect(text).toContain('oifname "rvh*" ct state established,related accept');
    expect(text).toContain('ip saddr 10.255.0.0/16 oifname != "rvh*" masquerade');
  });
});
