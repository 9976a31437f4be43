/**
 * IP address parsing and the `host:port` text forms Go uses in its messages.
 */
import { isIP } from 'node:net';

/** A validated IP literal. */
export interface IpAddress {
  /** Canonical text Node accepts for bind/connect (no brackets). */
  address: string;
  family: 4 | 6;
}

/**
 * Parses an IP literal the way Go's net.ParseIP + To4() classify it: IPv4-mapped IPv6
 * (`::ffff:a.b.c.d`) counts as IPv4, because Go then listens/dials with tcp4/udp4.
 * Returns null for anything that is not an IP literal (host names are not accepted).
 */
export function parseIp(text: string): IpAddress | null {
  const family = isIP(text);
  if (family === 4) return { address: text, family: 4 };
  if (family !== 6) return null;
  const v4 = mappedIpv4(text);
  return v4 === null ? { address: canonicalIpv6(text), family: 6 } : { address: v4, family: 4 };
}

/**
 * The RFC 5952 text of a valid IPv6 literal (lower case, longest zero run compressed), zone kept:
 * `[0:0::1]` and `[::1]` are one address, and must compare, label and print as one (Go's
 * net.IP.String() prints the same form).
 */
export function canonicalIpv6(text: string): string {
  const zone = text.includes('%') ? text.slice(text.indexOf('%')) : '';
  return ipv6Text(ipv6ToBytes(text)) + zone;
}

/** The text of an address from its bytes: dotted for family 4 (the first 4 bytes), else RFC 5952. */
export function ipFromBytes(b: Buffer, family: 4 | 6): string {
  return family === 4 ? [...b.subarray(0, 4)].join('.') : ipv6Text(b);
}

/** The RFC 5952 text of 16 IPv6 address bytes. */
function ipv6Text(b: Buffer): string {
  const groups = Array.from({ length: 8 }, (_, i) => b.readUInt16BE(i * 2));
  let best = -1;
  let bestLen = 1;
  for (let i = 0; i < 8; ) {
    if (groups[i] !== 0) {
      i++;
      continue;
    }
    let j = i;
    while (j < 8 && groups[j] === 0) j++;
    if (j - i > bestLen) {
      best = i;
      bestLen = j - i;
    }
    i = j;
  }
  const hex = groups.map((g) => g.toString(16));
  if (best < 0) return hex.join(':');
  return `${hex.slice(0, best).join(':')}::${hex.slice(best + bestLen).join(':')}`;
}

/** The IPv4 address inside an IPv4-mapped IPv6 literal (`::ffff:a.b.c.d`, `::ffff:7f00:1`), else null. */
function mappedIpv4(text: string): string | null {
  return text.includes('%') ? null : mappedIpv4Of(ipv6ToBytes(text));
}

/** The dotted IPv4 address in 16 IPv4-mapped IPv6 bytes (`::ffff:0:0/96`), else null. */
export function mappedIpv4Of(b: Buffer): string | null {
  if (b.subarray(0, 10).some((x) => x !== 0) || b[10] !== 0xff || b[11] !== 0xff) return null;
  return [...b.subarray(12)].join('.');
}

/** The 16 bytes of a valid IPv6 literal (zone dropped; a dotted IPv4 tail allowed). */
export function ipv6ToBytes(address: string): Buffer {
  let body = (address.split('%')[0] as string).toLowerCase();
  let tail: number[] | null = null;
  const dotted = /^(.*:)(\d+\.\d+\.\d+\.\d+)$/.exec(body);
  if (dotted) {
    tail = (dotted[2] as string).split('.').map(Number);
    body = `${dotted[1]}0:0`;
  }
  const [head = '', rest] = body.split('::');
  const left = head === '' ? [] : head.split(':');
  const right = rest === undefined || rest === '' ? [] : rest.split(':');
  const groups = rest === undefined ? left : [...left, ...Array<string>(8 - left.length - right.length).fill('0'), ...right];
  const out = Buffer.alloc(16);
  groups.forEach((g, i) => {
    out.writeUInt16BE(parseInt(g, 16), i * 2);
  });
  if (tail) Buffer.from(tail).copy(out, 12);
  return out;
}

/** The 4 or 16 bytes of a valid IP literal. */
export function ipToBytes(address: string): Buffer {
  return address.includes(':') ? ipv6ToBytes(address) : Buffer.from(address.split('.').map(Number));
}

/** `1.2.3.4:80` or `[::1]:80`, as Go's net.JoinHostPort. */
export function joinHostPort(address: string, port: number | string): string {
  return address.includes(':') ? `[${address}]:${port}` : `${address}:${port}`;
}

/** True for the wildcard addresses 0.0.0.0 and ::. */
export function isUnspecified(ip: IpAddress): boolean {
  return ip.family === 4 ? ip.address === '0.0.0.0' : /^[0:]+$/.test(ip.address);
}

/** Transport protocols we forward. */
export type Proto = 'tcp' | 'udp';
