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
import { parseEngine, type EngineChoice } from './native-engine.js';

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
  engine: EngineChoice;
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
  ENGINE: 'auto|native|js: data path; auto uses the native (splice) engine when it is built (default auto)',
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
  /** The parsed value of a variable, its fallback when unset; errors name variable and value. */
  const parsed = <T>(name: keyof typeof DOCKER_ENV_VARS, parse: (v: string) => T, fallback: T): T => {
    const v = get(name);
    if (v === undefined) return fallback;
    try {
      return parse(v);
    } catch (err) {
      if (err instanceof ProxyError) throw err;
      bad(name, v, (err as Error).message);
    }
  };
  const integer = (min: number, max: number) => (v: string): number => {
    if (!/^\d+$/.test(v) || Number(v) < min || Number(v) > max) throw new Error(`must be an integer ${min}-${max}`);
    return Number(v);
  };
  const udpIdleTimeoutMs = parsed('UDP_IDLE_TIMEOUT', (v) => {
    const ms = parseDuration(v);
    if (ms < 10) throw new Error('must be at least 10ms');
    return ms;
  }, UDP_IDLE_TIMEOUT_MS);
  const udpMaxFlows = parsed('UDP_MAX_FLOWS', integer(1, 1_000_000), UDP_MAX_FLOWS);
  const connectTimeoutMs = parsed('CONNECT_TIMEOUT', parseDuration, TCP_CONNECT_TIMEOUT_MS);
  const idleTimeoutMs = parsed('IDLE_TIMEOUT', parseDuration, TCP_IDLE_TIMEOUT_MS);
  const lingerTimeoutMs = parsed('LINGER_TIMEOUT', parseDuration, TCP_LINGER_TIMEOUT_MS);
  const textfileDir = parsed('TEXTFILE_DIR', (v) => {
    try {
      accessSync(v, constants.W_OK);
      if (!statSync(v).isDirectory()) throw new Error('not a directory');
    } catch (err) {
      throw new Error(`not a writable directory (${(err as NodeJS.ErrnoException).code ?? (err as Error).message})`);
    }
    return v;
  }, undefined);
  const cidrs = (name: 'ALLOW' | 'DENY'): string[] => parsed(name, (v) => parseCidrs(v, `${ENV_PREFIX}${name}`, 'UPROXY_ERR_BAD_ENV'), []);
  const proxyProtocol = parsed('PROXY_PROTOCOL', parseProxyProtocol, 'off' as ProxyProtocol);
  const maxConnections = parsed('MAX_CONNECTIONS', integer(1, 10_000_000), null);
  const maxBufferBytes = parsed('MAX_BUFFER', integer(16_384, 256 * 1024 * 1024), RELAY_HIGH_WATER_MARK);
  const engine = parsed('ENGINE', parseEngine, 'auto' as EngineChoice);
  const level = get('LOG_LEVEL');
  return {
    engine,
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
