/**
 * PROXY protocol headers (HAProxy's spec, v1 text and v2 binary), sent to the target as the first
 * bytes of a forwarded TCP connection so that it sees the real client address and port instead of
 * the proxy's (moby/moby#15086, #39465). Opt-in per mapping: the target must expect it.
 */
import { isIP } from 'node:net';
import { ipv6ToBytes, parseIp } from './address.js';

/** Which header to send, if any. */
export type ProxyProtocol = 'off' | 'v1' | 'v2';

/** The v2 signature: \r\n\r\n\0\r\nQUIT\n. */
const V2_SIGNATURE = Buffer.from([0x0d, 0x0a, 0x0d, 0x0a, 0x00, 0x0d, 0x0a, 0x51, 0x55, 0x49, 0x54, 0x0a]);

/** Endpoints of the client's connection: its address and the address it connected to. */
export interface ConnectionEnds {
  srcAddress: string;
  srcPort: number;
  dstAddress: string;
  dstPort: number;
}

/**
 * The header for a connection, or null when there is none to send: off, or an end without an
 * address (a client reset before we read its address, audit N2), or ends of two families. We never
 * send v1's "PROXY UNKNOWN" or v2's LOCAL command: either tells the target to take the bytes that
 * follow as the proxy's own, so a client that resets at the right moment would pass for the proxy.
 * The caller resets such a client instead of dialling.
 */
export function proxyHeader(mode: ProxyProtocol, given: ConnectionEnds): Buffer | null {
  if (mode === 'off') return null;
  const ends = { ...given, srcAddress: headerAddress(given.srcAddress), dstAddress: headerAddress(given.dstAddress) };
  const fam = isIP(ends.srcAddress);
  if (fam === 0 || fam !== isIP(ends.dstAddress)) return null;
  if (mode === 'v1') {
    return Buffer.from(`PROXY TCP${fam} ${ends.srcAddress} ${ends.dstAddress} ${ends.srcPort} ${ends.dstPort}\r\n`, 'latin1');
  }
  const addrLen = fam === 4 ? 12 : 36;
  const head = Buffer.alloc(16 + addrLen);
  V2_SIGNATURE.copy(head, 0);
  head[12] = 0x21; // version 2, command PROXY
  head[13] = fam === 4 ? 0x11 : 0x21; // AF_INET or AF_INET6, STREAM
  head.writeUInt16BE(addrLen, 14);
  if (fam === 4) {
    Buffer.from(ends.srcAddress.split('.').map(Number)).copy(head, 16);
    Buffer.from(ends.dstAddress.split('.').map(Number)).copy(head, 20);
    head.writeUInt16BE(ends.srcPort, 24);
    head.writeUInt16BE(ends.dstPort, 26);
  } else {
    ipv6ToBytes(ends.srcAddress).copy(head, 16);
    ipv6ToBytes(ends.dstAddress).copy(head, 32);
    head.writeUInt16BE(ends.srcPort, 48);
    head.writeUInt16BE(ends.dstPort, 50);
  }
  return head;
}

/**
 * An address as the header carries it: no zone (the spec's address field has none, and strict
 * parsers such as nginx reject the whole header), and an IPv4-mapped client of a dual-stack
 * socket as the IPv4 address it is, so that the target's IPv4 trust lists match it.
 */
function headerAddress(address: string): string {
  const bare = address.split('%')[0] as string;
  return parseIp(bare)?.address ?? bare;
}

/** Parses a setting value; throws an Error naming it. */
export function parseProxyProtocol(text: unknown): ProxyProtocol {
  if (text === 'off' || text === 'v1' || text === 'v2') return text;
  if (text === '' || text === undefined || text === false) return 'off';
  throw new Error('use off, v1 or v2');
}
