/**
 * Settings docker mode takes from the environment: dockerd passes its own environment but no
 * extra flags, so this is the only way to tune a proxy it spawns. Which variables, their bounds
 * and defaults: the settings table (settings.ts), rows for mode 'docker'.
 */
import type { AccessSpec } from '../core/access-list.js';
import type { IpAddress } from '../core/address.js';
import { ENV_PREFIX } from '../core/constants.js';
import type { LogLevel } from '../core/logger.js';
import type { EngineChoice } from '../core/data-path-choice.js';
import type { ProxyProtocol } from '../core/proxy-protocol.js';
import { parseSetting, settingsOf } from '../core/settings.js';

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
  /** Shared engine only: one metrics endpoint for every mapping. */
  metrics: { host: IpAddress; port: number } | null;
  shared: boolean;
  sharedIdleTimeoutMs: number;
  /** Shared engine only: how long a mapping whose dockerd died drains its connections. */
  sharedDrainTimeoutMs: number;
}

/** Reads and validates the docker-mode variables; throws a one-line ProxyError naming the value. */
export function readDockerEnv(env: NodeJS.ProcessEnv): DockerEnv {
  const v: Record<string, unknown> = {};
  for (const s of settingsOf('docker')) {
    const name = `${ENV_PREFIX}${s.env}`;
    const raw = env[name];
    if (raw === undefined || raw === '') {
      v[s.key] = s.default;
      continue;
    }
    v[s.key] = parseSetting(s, raw, 'UPROXY_ERR_BAD_ENV', name);
  }
  return {
    engine: v.engine as EngineChoice,
    metrics: v.metrics as DockerEnv['metrics'],
    shared: v.shared as boolean,
    sharedIdleTimeoutMs: v.sharedIdleTimeout as number,
    sharedDrainTimeoutMs: v.sharedDrainTimeout as number,
    maxConnections: v.maxConnections as number | null,
    maxBufferBytes: v.maxBuffer as number,
    proxyProtocol: v.proxyProtocol as ProxyProtocol,
    access: { allow: v.allow as string[], deny: v.deny as string[] },
    connectTimeoutMs: v.connectTimeout as number,
    idleTimeoutMs: v.idleTimeout as number,
    lingerTimeoutMs: v.lingerTimeout as number,
    textfileDir: v.textfileDir as string | undefined,
    logFile: v.logFile as string | undefined,
    logLevel: v.logLevel as LogLevel,
    udpIdleTimeoutMs: v.udpIdleTimeout as number,
    udpMaxFlows: v.udpMaxFlows as number,
  };
}
