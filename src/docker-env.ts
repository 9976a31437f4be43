/**
 * Settings docker mode takes from the environment: dockerd passes its own environment but no
 * extra flags, so this is the only way to tune a proxy it spawns.
 */
import { accessSync, constants, statSync } from 'node:fs';
import {
  ENV_PREFIX, RELAY_HIGH_WATER_MARK, TCP_CONNECT_TIMEOUT_MS, TCP_IDLE_TIMEOUT_MS, TCP_LINGER_TIMEOUT_MS, UDP_IDLE_TIMEOUT_MS, UDP_MAX_FLOWS,
} from './constants.js';
import { parseCidrs, type AccessSpec } from './access-list.js';
import { parseDuration } from './duration.js';
import { parseProxyProtocol, type ProxyProtocol } from './proxy-protocol.js';
import { ProxyError } from './errors.js';
import { parseLogLevel, type LogLevel } from './logger.js';

/** Docker-mode settings from the environment. */
export interface DockerEnv {
  logFile: string | undefined;
  logLevel: LogLevel;
  udpIdleTimeoutMs: number;
  udpMaxFlows: number;
  textfileDir: string | undefined;
  connectTimeoutMs: number;
  idleTimeoutMs: number;
  lingerTimeoutMs: number;
  access: AccessSpec;
  proxyProtocol: ProxyProtocol;
  maxConnections: number | null;
  maxBufferBytes: number;
}

/** The variables read, their meaning and default (the README table mirrors this). */
export const DOCKER_ENV_VARS = {
  LOG_FILE: 'append JSON log lines to this file (default: stderr, which dockerd discards)',
  LOG_LEVEL: 'trace|debug|info|warn|error|fatal|silent (default info)',
  UDP_IDLE_TIMEOUT: `UDP flow idle timeout, e.g. 90s, 500ms (default ${UDP_IDLE_TIMEOUT_MS / 1000}s)`,
  UDP_MAX_FLOWS: `maximum concurrent UDP flows (default ${UDP_MAX_FLOWS})`,
  CONNECT_TIMEOUT: `TCP: give up a dial to the target after this long, 0 = wait for the kernel (default ${TCP_CONNECT_TIMEOUT_MS / 1000}s)`,
  IDLE_TIMEOUT: 'TCP: close connections with no byte either way for this long (default 0 = never, as docker-proxy)',
  LINGER_TIMEOUT: `TCP: close half-closed connections idle for this long, 0 = never (default ${TCP_LINGER_TIMEOUT_MS / 60_000}m)`,
  ALLOW: 'only clients in these CIDR ranges (comma or space separated; default everyone)',
  DENY: 'refuse clients in these CIDR ranges (comma or space separated; checked first)',
  MAX_CONNECTIONS: 'TCP: most open connections; excess refused at once (default (RLIMIT_NOFILE - 32) / 2)',
  MAX_BUFFER: `TCP: unsent bytes per direction before reading pauses (default ${RELAY_HIGH_WATER_MARK})`,
  PROXY_PROTOCOL: 'off|v1|v2: send a PROXY protocol header to the container (TCP only; default off)',
  TEXTFILE_DIR: 'keep <proto>_<host-ip>_<port>.prom there for node_exporter\'s textfile collector (default off)',
} as const;

function bad(name: string, value: string, why: string): never {
  throw new ProxyError('UPROXY_ERR_BAD_ENV', `invalid ${ENV_PREFIX}${name} "${value}": ${why}`);
}

/** Reads and validates the docker-mode variables; throws a one-line ProxyError naming the value. */
export function readDockerEnv(env: NodeJS.ProcessEnv): DockerEnv {
  const get = (name: keyof typeof DOCKER_ENV_VARS): string | undefined => {
    const v = env[`${ENV_PREFIX}${name}`];
    return v === undefined || v === '' ? undefined : v;
  };
  const level = get('LOG_LEVEL');
  const idle = get('UDP_IDLE_TIMEOUT');
  const flows = get('UDP_MAX_FLOWS');
  let udpIdleTimeoutMs = UDP_IDLE_TIMEOUT_MS;
  if (idle !== undefined) {
    try {
      udpIdleTimeoutMs = parseDuration(idle);
    } catch (err) {
      bad('UDP_IDLE_TIMEOUT', idle, (err as Error).message);
    }
    if (udpIdleTimeoutMs < 10) bad('UDP_IDLE_TIMEOUT', idle, 'must be at least 10ms');
  }
  let udpMaxFlows = UDP_MAX_FLOWS;
  if (flows !== undefined) {
    if (!/^\d+$/.test(flows) || Number(flows) < 1 || Number(flows) > 1_000_000) bad('UDP_MAX_FLOWS', flows, 'must be an integer 1-1000000');
    udpMaxFlows = Number(flows);
  }
  const durationOf = (name: 'CONNECT_TIMEOUT' | 'IDLE_TIMEOUT' | 'LINGER_TIMEOUT', fallback: number): number => {
    const v = get(name);
    if (v === undefined) return fallback;
    try {
      return parseDuration(v);
    } catch (err) {
      bad(name, v, (err as Error).message);
    }
  };
  const connectTimeoutMs = durationOf('CONNECT_TIMEOUT', TCP_CONNECT_TIMEOUT_MS);
  const idleTimeoutMs = durationOf('IDLE_TIMEOUT', TCP_IDLE_TIMEOUT_MS);
  const lingerTimeoutMs = durationOf('LINGER_TIMEOUT', TCP_LINGER_TIMEOUT_MS);
  const textfileDir = get('TEXTFILE_DIR');
  if (textfileDir !== undefined) {
    try {
      accessSync(textfileDir, constants.W_OK);
      if (!statSync(textfileDir).isDirectory()) throw new Error('not a directory');
    } catch (err) {
      bad('TEXTFILE_DIR', textfileDir, `not a writable directory (${(err as NodeJS.ErrnoException).code ?? (err as Error).message})`);
    }
  }
  const cidrs = (name: 'ALLOW' | 'DENY'): string[] => {
    const v = get(name);
    return v === undefined ? [] : parseCidrs(v, `${ENV_PREFIX}${name}`, 'UPROXY_ERR_BAD_ENV');
  };
  const pp = get('PROXY_PROTOCOL');
  let proxyProtocol: ProxyProtocol = 'off';
  if (pp !== undefined) {
    try {
      proxyProtocol = parseProxyProtocol(pp);
    } catch (err) {
      bad('PROXY_PROTOCOL', pp, (err as Error).message);
    }
  }
  const intOf = (name: 'MAX_CONNECTIONS' | 'MAX_BUFFER', min: number, max: number): number | null => {
    const v = get(name);
    if (v === undefined) return null;
    if (!/^\d+$/.test(v) || Number(v) < min || Number(v) > max) bad(name, v, `must be an integer ${min}-${max}`);
    return Number(v);
  };
  const maxConnections = intOf('MAX_CONNECTIONS', 1, 10_000_000);
  const maxBufferBytes = intOf('MAX_BUFFER', 16_384, 256 * 1024 * 1024) ?? RELAY_HIGH_WATER_MARK;
  return {
    maxConnections,
    maxBufferBytes,
    proxyProtocol,
    access: { allow: cidrs('ALLOW'), deny: cidrs('DENY') },
    connectTimeoutMs,
    idleTimeoutMs,
    lingerTimeoutMs,
    textfileDir,
    logFile: get('LOG_FILE'),
    logLevel: level === undefined ? 'info' : parseLogLevel(level, `${ENV_PREFIX}LOG_LEVEL`),
    udpIdleTimeoutMs,
    udpMaxFlows,
  };
}
