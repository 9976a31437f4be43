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
  return v4 === null ? { address: text, family: 6 } : { address: v4, family: 4 };
}

/** The IPv4 address inside an IPv4-mapped IPv6 literal (`::ffff:a.b.c.d`, `::ffff:7f00:1`), else null. */
function mappedIpv4(text: string): string | null {
  if (text.includes('%')) return null;
  let tail: number[] = [];
  let body = text.toLowerCase();
  const dotted = /^(.*:)(\d+\.\d+\.\d+\.\d+)$/.exec(body);
  if (dotted) {
    tail = (dotted[2] as string).split('.').map(Number);
    body = `${dotted[1]}0:0`;
  }
  const [head = '', rest] = body.split('::');
  const left = head === '' ? [] : head.split(':');
  const right = rest === undefined || rest === '' ? [] : rest.split(':');
  const groups = rest === undefined ? left : [...left, ...Array(8 - left.length - right.length).fill('0'), ...right];
  const words = groups.map((g) => parseInt(g, 16));
  if (words.length !== 8 || words.slice(0, 5).some((w) => w !== 0) || words[5] !== 0xffff) return null;
  if (!dotted) tail = [(words[6] as number) >> 8, (words[6] as number) & 255, (words[7] as number) >> 8, (words[7] as number) & 255];
  return tail.join('.');
}

/** `1.2.3.4:80` or `[::1]:80`, as Go's net.JoinHostPort. */
export function joinHostPort(address: string, port: number | string): string {
  return address.includes(':') ? `[${address}]:${port}` : `${address}:${port}`;
}

/** True for the wildcard addresses 0.0.0.0 and ::. */
export function isUnspecified(ip: IpAddress): boolean {
  return ip.family === 4 ? ip.address === '0.0.0.0' : /^[0:]+$/.test(ip.address);
}
