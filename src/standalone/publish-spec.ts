/**
 * Publish specs, Docker's `-p` syntax with the target address added:
 *
 *   [HOST_IP:]HOST_PORT[-END]:TARGET_IP:TARGET_PORT[-END][/tcp|/udp]
 *
 * IPv6 addresses go in brackets (`[::1]:8080:[fd00::2]:80/udp`); the host IP defaults to 0.0.0.0
 * and the protocol to tcp; a range maps port by port onto a target range of the same length.
 * A port range is one mapping (one worker in standalone mode).
 */
import { isUnspecified, joinHostPort, parseIp, type IpAddress, type Proto } from '../core/address.js';
import type { AccessSpec } from '../core/access-list.js';
import { ProxyError } from '../core/errors.js';
import type { Binding } from '../data-path/forward.js';

/** One validated mapping of a host port range onto a target port range. */
export interface Mapping extends Binding {
  /** Stable identity and metrics label: `tcp/127.0.0.1:8080-8090`. */
  id: string;
  /** The spec as written, for messages. */
  spec: string;
  /** Client allow/deny lists (CIDR strings); empty lists allow everyone. */
  access: AccessSpec;
}

function bad(spec: string, why: string): never {
  throw new ProxyError('UPROXY_ERR_CONFIG', `invalid publish spec "${spec}": ${why}`);
}

/** Splits on ':' outside brackets. */
function splitColons(text: string): string[] {
  const parts: string[] = [];
  let cur = '';
  let depth = 0;
  for (const ch of text) {
    if (ch === '[') depth++;
    if (ch === ']') depth--;
    if (ch === ':' && depth === 0) {
      parts.push(cur);
      cur = '';
    } else {
      cur += ch;
    }
  }
  parts.push(cur);
  return parts;
}

function parseAddress(spec: string, text: string, what: string): IpAddress {
  let inner = text;
  if (text.startsWith('[') && text.endsWith(']')) inner = text.slice(1, -1);
  else if (text.includes('[') || text.includes(']')) bad(spec, `${what} "${text}" has unbalanced brackets`);
  const ip = parseIp(inner);
  if (!ip) bad(spec, `${what} "${text}" is not an IPv4 address or a bracketed IPv6 address`);
  if (ip.family === 6 && inner === text) bad(spec, `IPv6 ${what} "${text}" must be in brackets`);
  return ip;
}

function parsePorts(spec: string, text: string, what: string): [number, number] {
  const m = /^(\d{1,5})(?:-(\d{1,5}))?$/.exec(text);
  if (!m) bad(spec, `${what} "${text}" is not a port or a port range (e.g. 8080 or 8000-8010)`);
  const a = Number(m[1]);
  const b = m[2] === undefined ? a : Number(m[2]);
  for (const p of [a, b]) if (p < 1 || p > 65535) bad(spec, `${what} ${p} is out of range 1-65535`);
  if (b < a) bad(spec, `${what} range ${text} ends before it starts`);
  return [a, b];
}

/** Parses one publish spec; throws a one-line UPROXY_ERR_CONFIG error naming the spec and the problem. */
export function parsePublishSpec(spec: string): Mapping {
  if (typeof spec !== 'string' || spec.trim() === '') bad(String(spec), 'empty');
  let body = spec.trim();
  let proto: Proto = 'tcp';
  const slash = body.lastIndexOf('/');
  if (slash >= 0) {
    const p = body.slice(slash + 1);
    if (p !== 'tcp' && p !== 'udp') bad(spec, `protocol "${p}" is not tcp or udp`);
    proto = p;
    body = body.slice(0, slash);
  }
  const parts = splitColons(body);
  if (parts.length !== 3 && parts.length !== 4) {
    bad(spec, 'expected [HOST_IP:]HOST_PORT[-END]:TARGET_IP:TARGET_PORT[-END][/tcp|/udp]');
  }
  const [hostText, hostPorts, targetText, targetPorts] = parts.length === 4 ? parts : ['0.0.0.0', ...parts];
  const host = parseAddress(spec, hostText as string, 'host address');
  const target = parseAddress(spec, targetText as string, 'target address');
  if (isUnspecified(target)) bad(spec, 'the target cannot be a wildcard address');
  const [hp, hpEnd] = parsePorts(spec, hostPorts as string, 'host port');
  const [tp, tpEnd] = parsePorts(spec, targetPorts as string, 'target port');
  if (hpEnd - hp !== tpEnd - tp) {
    bad(spec, `host ports ${hostPorts} (${hpEnd - hp + 1}) and target ports ${targetPorts} (${tpEnd - tp + 1}) differ in length`);
  }
  const range = hp === hpEnd ? `${hp}` : `${hp}-${hpEnd}`;
  return {
    id: `${proto}/${joinHostPort(host.address, range)}`,
    proto,
    host,
    hostPort: hp,
    hostPortEnd: hpEnd,
    target,
    targetPort: tp,
    spec,
    access: { allow: [], deny: [] },
    proxyProtocol: 'off',
  };
}

/**
 * Throws when two mappings would bind the same socket: same protocol and family, intersecting
 * port ranges, and the same address or a wildcard on either side. (IPv6 listeners are v6-only,
 * so 0.0.0.0 and :: never clash.) The message names both specs.
 */
export function checkOverlaps(mappings: readonly Mapping[]): void {
  for (let i = 0; i < mappings.length; i++) {
    for (let j = i + 1; j < mappings.length; j++) {
      const a = mappings[i] as Mapping;
      const b = mappings[j] as Mapping;
      if (a.proto !== b.proto || a.host.family !== b.host.family) continue;
      if (a.hostPortEnd < b.hostPort || b.hostPortEnd < a.hostPort) continue;
      if (a.host.address !== b.host.address && !isUnspecified(a.host) && !isUnspecified(b.host)) continue;
      const what = a.id === b.id && a.hostPort === b.hostPort && a.hostPortEnd === b.hostPortEnd ? 'duplicate binding' : 'overlapping bindings';
      throw new ProxyError(
        'UPROXY_ERR_CONFIG',
        `${what}: "${a.spec}" and "${b.spec}" both bind ${a.proto} ${joinHostPort(b.host.address, Math.max(a.hostPort, b.hostPort))}`,
      );
    }
  }
}
