/**
 * docker-proxy's command line (Docker 20.10 to 29), and its translation into a validated mapping.
 *
 * dockerd runs: `<path> -proto tcp|udp|sctp -host-ip IP -host-port N -container-ip IP
 * -container-port N [-use-listen-fd]`. `-v`/`-version` (23+) print a version; `-h` prints usage.
 * Syntax errors exit 2 (Go's flag package), an address that is not an IP among them (as in 28);
 * values that parse but cannot be served are startup failures, reported on the status pipe and
 * exit 1.
 */
import { isUnspecified, parseIp, type IpAddress, type Proto } from '../core/address.js';
import { ProxyError } from '../core/errors.js';
import { parseGoFlags, type FlagSpec, type GoFlagResult } from '../core/go-flags.js';

/** The flag set, with docker-proxy's names, defaults and usage strings. */
export const DOCKER_FLAGS: readonly FlagSpec[] = [
  { name: 'proto', kind: 'string', usage: 'proxy protocol', default: 'tcp' },
  { name: 'host-ip', kind: 'string', usage: 'host ip', default: '0.0.0.0' },
  { name: 'host-port', kind: 'int', usage: 'host port', default: -1 },
  { name: 'container-ip', kind: 'string', usage: 'container ip', default: '' },
  { name: 'container-port', kind: 'int', usage: 'container port', default: -1 },
  { name: 'use-listen-fd', kind: 'bool', usage: 'use a supplied listen fd', default: false },
  { name: 'engine', kind: 'string', usage: 'data path: auto, native (splice) or js (not a docker-proxy flag)', default: '' },
  { name: 'v', kind: 'bool', usage: 'show version information', default: false },
  { name: 'version', kind: 'bool', usage: 'show version information', default: false },
];

/** A validated docker-mode mapping. */
export interface DockerMapping {
  proto: Proto;
  host: IpAddress;
  hostPort: number;
  target: IpAddress;
  targetPort: number;
  useListenFd: boolean;
}

/** Parses docker-proxy's argv (no program name). Throws UPROXY_ERR_BAD_FLAG on syntax errors. */
export function parseDockerArgs(argv: readonly string[]): GoFlagResult {
  return parseGoFlags(argv, DOCKER_FLAGS);
}

function badValue(message: string): never {
  throw new ProxyError('UPROXY_ERR_BAD_VALUE', message);
}

/**
 * docker-proxy 28 parses -host-ip and -container-ip as flag values (net.ParseIP): an address that
 * does not parse is a flag syntax error, exit 2, in Go's flag wording. (20.10 took them as strings
 * and listened on [::] for any it could not parse.)
 */
function badIp(flag: string, text: string): never {
  throw new ProxyError('UPROXY_ERR_BAD_FLAG', `invalid value "${text}" for flag -${flag}: invalid IP address: ${text}`);
}

function port(flags: GoFlagResult, name: string, allowZero: boolean): number {
  const value = flags.values.get(name) as number;
  if (!flags.given.has(name)) badValue(`missing -${name}: dockerd always passes it`);
  const min = allowZero ? 0 : 1;
  if (!Number.isInteger(value) || value < min || value > 65535) {
    badValue(`invalid -${name} ${value}: must be ${min}-65535`);
  }
  return value;
}

/**
 * Turns parsed flags into a mapping, rejecting what docker-proxy would only discover later (or
 * never): unknown protocols, SCTP, non-IP addresses, ports out of range, a missing target.
 * An empty -host-ip means "::" as in every Docker version (net.ParseIP("") is nil, which Go
 * listens on as IPv6).
 */
export function toDockerMapping(flags: GoFlagResult): DockerMapping {
  const proto = flags.values.get('proto') as string;
  if (proto === 'sctp') {
    throw new ProxyError('UPROXY_ERR_UNSUPPORTED_PROTO', 'SCTP is not supported: Node.js has no SCTP sockets (keep docker-proxy for SCTP ports)');
  }
  if (proto !== 'tcp' && proto !== 'udp') {
    throw new ProxyError('UPROXY_ERR_UNSUPPORTED_PROTO', `unsupported protocol ${proto}`);
  }
  const hostText = flags.values.get('host-ip') as string;
  const host = hostText === '' ? { address: '::', family: 6 as const } : parseIp(hostText);
  if (!host) badIp('host-ip', hostText);
  const hostPort = port(flags, 'host-port', true);
  const targetText = flags.values.get('container-ip') as string;
  if (!flags.given.has('container-ip')) badValue('missing -container-ip: dockerd always passes it');
  const target = parseIp(targetText);
  if (!target) badIp('container-ip', targetText);
  if (isUnspecified(target)) badValue(`invalid -container-ip "${targetText}": cannot forward to a wildcard address`);
  const targetPort = port(flags, 'container-port', false);
  return { proto, host, hostPort, target, targetPort, useListenFd: flags.values.get('use-listen-fd') === true };
}
