import { spawn } from 'node:child_process';
import { Resolver } from 'node:dns/promises';
import { chmod, chown, readdir, stat } from 'node:fs/promises';
import { isIPv4 } from 'node:net';
import { ConfigInvalidError, NetworkSetupFailedError } from '../errors.js';
import { processAlive } from '../pids.js';
import { GUEST_NET } from '../images/guest-init.js';

/**
 * Network on request (docs/network.md). A VM that asks for network gets a network namespace of
 * its own on the host, holding the tap its QEMU opens and one end of a veth pair whose other
 * end is on the host. The egress policy is an nftables table inside that namespace, which the
 * guest cannot reach; the host adds one table of its own (no input from the VMs' links,
 * forwarding and masquerade for them). Deleting the namespace removes the tap, the veth pair,
 * the policy and its conntrack entries at once.
 *
 *   guest eth0 10.254.0.2/30 ── tap0 10.254.0.1 [netns rcvm-PID-N: nft policy, tbf] veth0 B+2
 *     ── rvhN B+1 [host: forward, masquerade] ── the host's routes
 */

/** The tap's name inside every VM namespace (each namespace has its own, so one name fits all). */
export const VM_TAP = 'tap0';
/** The namespace's end of the veth pair. */
export const VM_VETH = 'veth0';
/** Prefix of the host's ends of the veth pairs (`rvh<N>`); the host's table matches on it. */
export const HOST_VETH_PREFIX = 'rvh';
/** Prefix of the namespaces' names (`rcvm-<owner pid>-<N>`), which the start-up sweep reads. */
export const NETNS_PREFIX = 'rcvm-';
/** The host's own nftables table. */
export const HOST_TABLE = 'runner_vmnet';
/** Where `ip netns` keeps its namespace files. */
export const NETNS_DIR = '/run/netns';

/**
 * Destinations no VM reaches, whatever the allow-list says: "this network", loopback,
 * link-local (with the cloud metadata address 169.254.169.254 and ECS's 169.254.170.2),
 * Alibaba's metadata 100.100.100.200, multicast and the reserved block.
 */
export const NEVER_CIDRS = [
  '0.0.0.0/8',
  '127.0.0.0/8',
  '169.254.0.0/16',
  '100.100.100.200/32',
  '224.0.0.0/4',
  '240.0.0.0/4',
] as const;

/** Private and special-use ranges: reachable only where a networkAllow CIDR inside them names them. */
export const PRIVATE_CIDRS = [
  '10.0.0.0/8',
  '100.64.0.0/10',
  '172.16.0.0/12',
  '192.0.0.0/24',
  '192.0.2.0/24',
  '192.168.0.0/16',
  '198.18.0.0/15',
  '198.51.100.0/24',
  '203.0.113.0/24',
] as const;

/** An IPv4 CIDR, parsed. */
export interface Cidr {
  readonly base: number;
  readonly prefix: number;
}

/** Parses `a.b.c.d/n` (or a bare address, a /32); CONFIG_INVALID when it is not one. */
export function parseCidr(text: string): Cidr {
  const [addr, bits, extra] = text.trim().split('/');
  const prefix = bits === undefined ? 32 : Number(bits);
  if (
    extra !== undefined ||
    addr === undefined ||
    !isIPv4(addr) ||
    !Number.isInteger(prefix) ||
    prefix < 0 ||
    prefix > 32 ||
    (bits !== undefined && !/^\d+$/.test(bits))
  ) {
    throw new ConfigInvalidError(`${JSON.stringify(text)} is not an IPv4 address or CIDR`);
  }
  const mask = prefix === 0 ? 0 : (0xffffffff << (32 - prefix)) >>> 0;
  return { base: (ipToInt(addr) & mask) >>> 0, prefix };
}

/** `a.b.c.d` as an unsigned 32-bit number. */
export function ipToInt(ip: string): number {
  return ip.split('.').reduce((n, part) => ((n << 8) | Number(part)) >>> 0, 0);
}

/** An unsigned 32-bit number as `a.b.c.d`. */
export function intToIp(n: number): string {
  return [24, 16, 8, 0].map((s) => (n >>> s) & 255).join('.');
}

/** `a.b.c.d/n` of a parsed CIDR. */
export function formatCidr(c: Cidr): string {
  return `${intToIp(c.base)}/${c.prefix}`;
}

/** Whether `inner` lies wholly inside `outer`. */
export function cidrWithin(inner: Cidr, outer: Cidr): boolean {
  if (inner.prefix < outer.prefix) return false;
  const mask = outer.prefix === 0 ? 0 : (0xffffffff << (32 - outer.prefix)) >>> 0;
  return (inner.base & mask) >>> 0 === outer.base;
}

/** Whether two CIDRs share any address. */
export function cidrOverlap(a: Cidr, b: Cidr): boolean {
  return cidrWithin(a, b) || cidrWithin(b, a);
}

/** The operator's allow-list split into CIDRs and domain names (networkAllow). */
export interface AllowList {
  readonly cidrs: readonly Cidr[];
  readonly domains: readonly string[];
}

/** Splits networkAllow; CONFIG_INVALID for an entry that is neither a CIDR nor a domain name. */
export function parseAllowList(entries: readonly string[]): AllowList {
  const cidrs: Cidr[] = [];
  const domains: string[] = [];
  for (const raw of entries) {
    const entry = raw.trim().toLowerCase();
    if (/^[0-9./]+$/.test(entry)) cidrs.push(parseCidr(entry));
    else if (/^(?=.{1,253}$)([a-z0-9_]([a-z0-9_-]{0,61}[a-z0-9])?\.)*[a-z]{2,63}\.?$/.test(entry))
      domains.push(entry.replace(/\.$/, ''));
    else
      throw new ConfigInvalidError(
        `networkAllow: ${JSON.stringify(raw)} is neither an IPv4 CIDR nor a domain name`,
      );
  }
  return { cidrs, domains };
}

/** The addresses of one VM's veth link: the host's end and the namespace's end of a /30. */
export interface LinkAddresses {
  readonly index: number;
  readonly hostIp: string;
  readonly nsIp: string;
  readonly prefix: 30;
}

/**
 * The address plan: VM link `index` (0-based) is the index-th /30 of networkLinkCidr, the host
 * at its first usable address and the namespace at the second. CONFIG_INVALID past the range.
 */
export function linkAddresses(linkCidr: string, index: number): LinkAddresses {
  const range = parseCidr(linkCidr);
  if (range.prefix > 30)
    throw new ConfigInvalidError(`networkLinkCidr ${linkCidr} is smaller than one /30`);
  const slots = 2 ** (30 - range.prefix);
  if (!Number.isInteger(index) || index < 0 || index >= slots) {
    throw new ConfigInvalidError(
      `VM link ${index} is outside networkLinkCidr ${linkCidr} (${slots} links)`,
    );
  }
  const base = range.base + index * 4;
  return { index, hostIp: intToIp(base + 1), nsIp: intToIp(base + 2), prefix: 30 };
}

/** How many VM links networkLinkCidr holds. */
export function linkCount(linkCidr: string): number {
  return 2 ** (30 - Math.min(30, parseCidr(linkCidr).prefix));
}

/** What one VM's namespace ruleset is made of. */
export interface VmPolicy {
  /** Destinations opened, CIDRs and resolved domains (public ones, or CIDRs the operator named). */
  readonly allow: readonly Cidr[];
  /** The resolver the gateway's port 53 goes to; null: no DNS. */
  readonly dns: string | null;
  /** Every address of the host (never reachable). */
  readonly hostAddresses: readonly string[];
  /** networkLinkCidr: the other VMs' links are never reachable either. */
  readonly linkCidr: string;
  readonly maxConnections: number;
}

function elements(items: readonly string[]): string {
  return items.length === 0 ? '' : `elements = { ${items.join(', ')} }`;
}

/**
 * The nftables ruleset of one VM's namespace (loaded with `nft -f` inside it). Order matters:
 * nothing but IPv4 leaves the tap; the never-set wins over everything; then the connection cap;
 * DNS only to the resolver (the gateway's port 53 is DNATed to it); private ranges only where
 * an allow CIDR inside them names them; then the allow-list; the rest is refused with a reset
 * or an ICMP error, so a denied connect fails at once rather than timing out.
 */
export function vmRuleset(policy: VmPolicy): string {
  const never = [
    ...NEVER_CIDRS,
    GUEST_LINK_CIDR,
    formatCidr(parseCidr(policy.linkCidr)),
    ...policy.hostAddresses.map((a) => `${a}/32`),
  ];
  const privates = PRIVATE_CIDRS.map(parseCidr);
  const allowPrivate = policy.allow.filter((a) => privates.some((p) => cidrWithin(a, p)));
  const dns = policy.dns;
  const lines = [
    `table inet ${VM_TABLE} {`,
    `  set never { type ipv4_addr; flags interval; auto-merge; ${elements(never)} }`,
    `  set private { type ipv4_addr; flags interval; auto-merge; ${elements(PRIVATE_CIDRS.slice())} }`,
    `  set allow_private { type ipv4_addr; flags interval; auto-merge; ${elements(allowPrivate.map(formatCidr))} }`,
    `  set allow { type ipv4_addr; flags interval; auto-merge; ${elements(policy.allow.map(formatCidr))} }`,
    `  chain prerouting {`,
    `    type nat hook prerouting priority dstnat; policy accept;`,
    ...(dns === null
      ? []
      : [
          `    iifname "${VM_TAP}" ip daddr ${GUEST_NET.gateway} meta l4proto { tcp, udp } th dport 53 dnat ip to ${dns}`,
        ]),
    `  }`,
    `  chain postrouting {`,
    `    type nat hook postrouting priority srcnat; policy accept;`,
    `    oifname "${VM_VETH}" masquerade`,
    `  }`,
    `  chain input {`,
    `    type filter hook input priority filter; policy drop;`,
    `    iifname "lo" accept`,
    `  }`,
    `  chain forward {`,
    `    type filter hook forward priority filter; policy drop;`,
    `    iifname "${VM_VETH}" oifname "${VM_TAP}" ct state established,related accept`,
    `    iifname != "${VM_TAP}" drop`,
    `    oifname != "${VM_VETH}" drop`,
    `    meta nfproto != ipv4 drop`,
    `    ip daddr @never counter reject with icmpx type admin-prohibited`,
    `    ct state established,related accept`,
    `    ct state new ct count over ${policy.maxConnections} counter reject with icmpx type admin-prohibited`,
    ...(dns === null ? [] : [`    ip daddr ${dns} meta l4proto { tcp, udp } th dport 53 accept`]),
    `    meta l4proto { tcp, udp } th dport 53 counter reject with icmpx type admin-prohibited`,
    `    ip daddr @allow_private accept`,
    `    ip daddr @private counter reject with icmpx type admin-prohibited`,
    `    ip daddr @allow accept`,
    `    meta l4proto tcp counter reject with tcp reset`,
    `    counter reject with icmpx type admin-prohibited`,
    `  }`,
    `}`,
  ];
  return `${lines.join('\n')}\n`;
}

/** The table inside each VM's namespace. */
export const VM_TABLE = 'runner_vm';
/** The guest link as a CIDR (the same in every namespace). */
export const GUEST_LINK_CIDR = `${intToIp(ipToInt(GUEST_NET.gateway) & 0xfffffffc)}/${GUEST_NET.prefix}`;

/**
 * The host's table: nothing from a VM link reaches the host itself (whatever its addresses
 * are, now or later), VM links are forwarded out, nothing new is forwarded into them, and
 * their traffic is masqueraded behind the host's own address. Its chains run beside any other
 * table's: a host whose own forward chain drops must also let the links through.
 */
export function hostRuleset(linkCidr: string): string {
  const range = formatCidr(parseCidr(linkCidr));
  return `${[
    `table inet ${HOST_TABLE} {`,
    `  chain input {`,
    `    type filter hook input priority filter - 10; policy accept;`,
    `    iifname "${HOST_VETH_PREFIX}*" counter drop`,
    `  }`,
    `  chain forward {`,
    `    type filter hook forward priority filter - 10; policy accept;`,
    `    iifname "${HOST_VETH_PREFIX}*" oifname "${HOST_VETH_PREFIX}*" counter drop`,
    `    iifname "${HOST_VETH_PREFIX}*" accept`,
    `    oifname "${HOST_VETH_PREFIX}*" ct state established,related accept`,
    `    oifname "${HOST_VETH_PREFIX}*" counter drop`,
    `  }`,
    `  chain postrouting {`,
    `    type nat hook postrouting priority srcnat; policy accept;`,
    `    ip saddr ${range} oifname != "${HOST_VETH_PREFIX}*" masquerade`,
    `  }`,
    `}`,
  ].join('\n')}\n`;
}

/** Runs a command to its end; NETWORK_SETUP_FAILED with its stderr when it fails. */
export async function run(cmd: string, args: readonly string[], input?: string): Promise<string> {
  return new Promise((resolve, reject) => {
    const child = spawn(cmd, args, {
      stdio: [input === undefined ? 'ignore' : 'pipe', 'pipe', 'pipe'],
    });
    let out = '';
    let err = '';
    child.stdout?.on('data', (d: Buffer) => (out += d.toString()));
    child.stderr?.on('data', (d: Buffer) => (err += d.toString()));
    child.once('error', (e) =>
      reject(new NetworkSetupFailedError(`cannot run ${cmd}: ${e.message}`, { cause: e })),
    );
    child.once('close', (code) => {
      if (code === 0) resolve(out);
      else
        reject(
          new NetworkSetupFailedError(
            `${cmd} ${args.join(' ')} exited with ${code}: ${err.trim() || out.trim()}`,
          ),
        );
    });
    if (input !== undefined && child.stdin) {
      child.stdin.on('error', () => undefined); // a tool that exits early fails by its status
      child.stdin.end(input);
    }
  });
}

/** Settings of the VM network manager (the network* settings, and the VMM user). */
export interface VmNetOptions {
  readonly allow: readonly string[];
  readonly dns: string | null;
  readonly bandwidthKbit: number;
  readonly maxConnections: number;
  readonly linkCidr: string;
  /** The user QEMU runs as: the tap is theirs, and /dev/net/tun is opened to their group. */
  readonly vmmUser: { uid: number; gid: number } | null;
  readonly log?: (line: string) => void;
}

/** One VM's network, alive until `destroy`. */
export interface VmNet {
  /** The namespace's name (`ip netns` name). */
  readonly name: string;
  /** The namespace's file, for `nsenter --net=` or the jail's `--netns`. */
  readonly netnsPath: string;
  readonly tap: string;
  readonly link: LinkAddresses;
  /** The namespace's ruleset, as loaded. */
  readonly ruleset: string;
  /** Deletes the namespace (tap, veth pair, policy). Idempotent. */
  destroy(): Promise<void>;
}

/**
 * Makes and removes the VMs' networks. `start` once (checks the tools, sweeps what dead
 * processes left, loads the host's table, turns on forwarding), then `create` per VM.
 */
export class VmNetManager {
  private readonly allow: AllowList;
  private readonly used = new Set<number>();
  private started = false;

  constructor(private readonly options: VmNetOptions) {
    this.allow = parseAllowList(options.allow);
    if (options.dns !== null && !isIPv4(options.dns))
      throw new ConfigInvalidError(`networkDns ${options.dns} is not an IPv4 address`);
    linkAddresses(options.linkCidr, 0);
  }

  /** Prepares the host; NETWORK_SETUP_FAILED when a tool or a permission is missing. */
  async start(): Promise<void> {
    if (this.started) return;
    if (process.getuid?.() !== 0)
      throw new NetworkSetupFailedError('network on request needs the service to run as root');
    await run('nft', ['--version']).catch((err: unknown) => {
      throw new NetworkSetupFailedError(
        `nft is missing (apt-get install nftables; scripts/setup.sh does): ${String(err)}`,
      );
    });
    const swept = await sweepVmNets();
    if (swept.length > 0) this.options.log?.(`network: swept ${swept.join(', ')}`);
    await run('nft', ['-f', '-'], `table inet ${HOST_TABLE}\ndelete table inet ${HOST_TABLE}\n`);
    await run('nft', ['-f', '-'], hostRuleset(this.options.linkCidr));
    // Forwarding is per namespace: this is the host's, which the VM links need.
    await run('sysctl', ['-q', '-w', 'net.ipv4.ip_forward=1']);
    const user = this.options.vmmUser;
    if (user) {
      // QEMU runs unprivileged: it may open /dev/net/tun (and then only attach to a tap it
      // owns). Debian's udev makes the node 0666; some hosts have 0600, so give it the group.
      const tun = await stat('/dev/net/tun').catch(() => null);
      if (!tun) throw new NetworkSetupFailedError('/dev/net/tun is missing (modprobe tun)');
      if ((tun.mode & 0o006) !== 0o006) {
        await chown('/dev/net/tun', 0, user.gid);
        await chmod('/dev/net/tun', 0o660);
      }
    }
    this.started = true;
  }

  /** The policy of a new VM: the allow CIDRs plus the domains resolved now (public ones). */
  async policy(): Promise<VmPolicy> {
    const allow: Cidr[] = [...this.allow.cidrs];
    if (this.allow.domains.length > 0) {
      if (this.options.dns === null) {
        this.options.log?.('network: networkAllow names domains but networkDns is unset');
      } else {
        const resolver = new Resolver({ timeout: 2000, tries: 2 });
        resolver.setServers([this.options.dns]);
        const privates = [...PRIVATE_CIDRS, ...NEVER_CIDRS].map(parseCidr);
        for (const domain of this.allow.domains) {
          const addrs = await resolver.resolve4(domain).catch((err: unknown) => {
            this.options.log?.(`network: cannot resolve ${domain}: ${String(err)}`);
            return [] as string[];
          });
          for (const a of addrs) {
            const c = parseCidr(a);
            // A name does not open a private address: only a CIDR the operator wrote does.
            if (privates.some((p) => cidrWithin(c, p)))
              this.options.log?.(`network: ${domain} resolves to private ${a}; not opened`);
            else allow.push(c);
          }
        }
      }
    }
    return {
      allow,
      dns: this.options.dns,
      hostAddresses: await hostAddresses(),
      linkCidr: this.options.linkCidr,
      maxConnections: this.options.maxConnections,
    };
  }

  /** A network for one VM. NETWORK_SETUP_FAILED (and nothing left behind) when a step fails. */
  async create(): Promise<VmNet> {
    await this.start();
    const policy = await this.policy();
    const index = await this.claim();
    const link = linkAddresses(this.options.linkCidr, index);
    const name = `${NETNS_PREFIX}${process.pid}-${index}`;
    const hostVeth = `${HOST_VETH_PREFIX}${index}`;
    const ruleset = vmRuleset(policy);
    const net: VmNet = {
      name,
      netnsPath: `${NETNS_DIR}/${name}`,
      tap: VM_TAP,
      link,
      ruleset,
      destroy: async () => {
        await deleteNetns(name);
        this.used.delete(index);
      },
    };
    try {
      const ns = ['-n', name];
      await run('ip', ['netns', 'add', name]);
      await run('ip', [...ns, 'link', 'set', 'lo', 'up']);
      const rate = `${this.options.bandwidthKbit}kbit`;
      // The ruleset first: nothing is forwarded before the policy is in place.
      await run('ip', ['netns', 'exec', name, 'nft', '-f', '-'], ruleset);
      await run('ip', [
        'netns',
        'exec',
        name,
        'sysctl',
        '-q',
        '-w',
        'net.ipv6.conf.all.disable_ipv6=1',
      ]);
      await run('ip', ['netns', 'exec', name, 'sysctl', '-q', '-w', 'net.ipv4.ip_forward=1']);
      const user = this.options.vmmUser;
      await run('ip', [
        ...ns,
        'tuntap',
        'add',
        'dev',
        VM_TAP,
        'mode',
        'tap',
        ...(user ? ['user', String(user.uid), 'group', String(user.gid)] : []),
      ]);
      await run('ip', [
        ...ns,
        'addr',
        'add',
        `${GUEST_NET.gateway}/${GUEST_NET.prefix}`,
        'dev',
        VM_TAP,
      ]);
      await run('ip', [...ns, 'link', 'set', VM_TAP, 'up']);
      await run('ip', [
        'link',
        'add',
        hostVeth,
        'type',
        'veth',
        'peer',
        'name',
        VM_VETH,
        'netns',
        name,
      ]);
      await run('ip', ['addr', 'add', `${link.hostIp}/${link.prefix}`, 'dev', hostVeth]);
      await run('ip', ['link', 'set', hostVeth, 'up']);
      await run('ip', [...ns, 'addr', 'add', `${link.nsIp}/${link.prefix}`, 'dev', VM_VETH]);
      await run('ip', [...ns, 'link', 'set', VM_VETH, 'up']);
      await run('ip', [...ns, 'route', 'add', 'default', 'via', link.hostIp]);
      // The cap each way: to the guest on the tap, from the guest on the veth.
      for (const dev of [VM_TAP, VM_VETH]) {
        await run('tc', [
          ...ns,
          'qdisc',
          'add',
          'dev',
          dev,
          'root',
          'tbf',
          'rate',
          rate,
          'burst',
          '32kb',
          'latency',
          '200ms',
        ]);
      }
    } catch (err) {
      await net.destroy().catch(() => undefined);
      throw err instanceof NetworkSetupFailedError
        ? err
        : new NetworkSetupFailedError(`network setup of ${name} failed: ${String(err)}`, {
            cause: err,
          });
    }
    return net;
  }

  /** The lowest link index free here and on the host (another process may hold some). */
  private async claim(): Promise<number> {
    const taken = new Set(this.used);
    for (const n of await readdir('/sys/class/net').catch(() => [] as string[])) {
      const m = new RegExp(`^${HOST_VETH_PREFIX}(\\d+)$`).exec(n);
      if (m) taken.add(Number(m[1]));
    }
    const count = linkCount(this.options.linkCidr);
    for (let i = 0; i < count; i++) {
      if (!taken.has(i)) {
        this.used.add(i);
        return i;
      }
    }
    throw new NetworkSetupFailedError(`every VM link of ${this.options.linkCidr} is in use`);
  }
}

/** Every IPv4 address of the host's own namespace. */
export async function hostAddresses(): Promise<string[]> {
  const out = await run('ip', ['-j', '-4', 'addr', 'show']);
  const links = JSON.parse(out) as { addr_info?: { local?: string }[] }[];
  return [
    ...new Set(links.flatMap((l) => (l.addr_info ?? []).map((a) => a.local ?? '')).filter(isIPv4)),
  ];
}

async function deleteNetns(name: string): Promise<void> {
  const exists = await stat(`${NETNS_DIR}/${name}`).catch(() => null);
  if (exists) await run('ip', ['netns', 'delete', name]);
}

/**
 * Deletes the namespaces whose owner process is gone (a crashed service), with their veth
 * pairs; run at start-up. Returns their names.
 */
export async function sweepVmNets(): Promise<string[]> {
  const names = await readdir(NETNS_DIR).catch(() => [] as string[]);
  const swept: string[] = [];
  for (const name of names) {
    const m = new RegExp(`^${NETNS_PREFIX}(\\d+)-(\\d+)$`).exec(name);
    if (!m) continue;
    const owner = Number(m[1]);
    if (owner !== process.pid && processAlive(owner)) continue;
    await deleteNetns(name);
    swept.push(name);
  }
  return swept;
}
