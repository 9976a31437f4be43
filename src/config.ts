/**
 * Standalone configuration: merged from the command line, USERLAND_PROXY_* environment variables
 * and a JSON config file (in that order of precedence; publish specs from all three are combined),
 * then validated strictly. Unknown keys and variables, bad values, overlapping or duplicate
 * bindings all fail with one line that names the offending value; nothing is started.
 *
 * Config file (JSON):
 *   { "publish": ["127.0.0.1:8080:10.0.0.2:80", "5353:10.0.0.2:53/udp"],
 *     "metrics": "127.0.0.1:9464", "drainTimeout": "10s",
 *     "udpIdleTimeout": "90s", "udpMaxFlows": 16384, "connectTimeout": "30s", "idleTimeout": 0,
 *     "lingerTimeout": "10m", "maxConnections": 10000, "logLevel": "info", "logFile": "/var/log/up.log" }
 */
import { readFileSync } from 'node:fs';
import { parseIp, type IpAddress } from './address.js';
import {
  DRAIN_TIMEOUT_MS, ENV_PREFIX, RELAY_HIGH_WATER_MARK, TCP_CONNECT_TIMEOUT_MS, TCP_IDLE_TIMEOUT_MS, TCP_LINGER_TIMEOUT_MS, UDP_IDLE_TIMEOUT_MS, UDP_MAX_FLOWS,
} from './constants.js';
import { checkDuration, parseDuration } from './duration.js';
import { ProxyError } from './errors.js';
import { parseCidrs } from './access-list.js';
import { parseProxyProtocol, type ProxyProtocol } from './proxy-protocol.js';
import { LOG_LEVELS, type LogLevel } from './logger.js';
import { parseEngine, type EngineChoice } from './native-engine.js';
import { checkOverlaps, parsePublishSpec, type Mapping } from './publish-spec.js';

/** A validated standalone configuration. */
export interface StandaloneConfig {
  mappings: Mapping[];
  metrics: { host: IpAddress; port: number } | null;
  drainTimeoutMs: number;
  udpIdleTimeoutMs: number;
  udpMaxFlows: number;
  connectTimeoutMs: number;
  idleTimeoutMs: number;
  lingerTimeoutMs: number;
  /** Most TCP connections per mapping; null: derived from RLIMIT_NOFILE. */
  maxConnections: number | null;
  /** Unsent bytes per TCP direction before reading pauses. */
  maxBufferBytes: number;
  logLevel: LogLevel;
  logFile: string | undefined;
  /** Data path: auto (native when built), native or js. */
  engine: EngineChoice;
  /** POST /-/reload on the metrics listener is served (else 403; SIGHUP still reloads). */
  httpReload: boolean;
}

/** Values as given on the command line (strings, as typed). */
export interface CliValues {
  publish?: string[] | undefined;
  config?: string | undefined;
  metrics?: string | undefined;
  drainTimeout?: string | undefined;
  udpIdleTimeout?: string | undefined;
  udpMaxFlows?: string | undefined;
  connectTimeout?: string | undefined;
  idleTimeout?: string | undefined;
  lingerTimeout?: string | undefined;
  maxConnections?: string | undefined;
  allow?: string[] | undefined;
  deny?: string[] | undefined;
  proxyProtocol?: string | undefined;
  maxBuffer?: string | undefined;
  logLevel?: string | undefined;
  logFile?: string | undefined;
  engine?: string | undefined;
  httpReload?: string | undefined;
}

/** Config file keys and the environment variable for each (the README mirrors this table). */
export const SETTINGS = {
  publish: 'PUBLISH',
  metrics: 'METRICS',
  drainTimeout: 'DRAIN_TIMEOUT',
  udpIdleTimeout: 'UDP_IDLE_TIMEOUT',
  udpMaxFlows: 'UDP_MAX_FLOWS',
  connectTimeout: 'CONNECT_TIMEOUT',
  idleTimeout: 'IDLE_TIMEOUT',
  lingerTimeout: 'LINGER_TIMEOUT',
  maxConnections: 'MAX_CONNECTIONS',
  allow: 'ALLOW',
  deny: 'DENY',
  proxyProtocol: 'PROXY_PROTOCOL',
  maxBuffer: 'MAX_BUFFER',
  logLevel: 'LOG_LEVEL',
  logFile: 'LOG_FILE',
  engine: 'ENGINE',
  httpReload: 'HTTP_RELOAD',
} as const;
type Key = keyof typeof SETTINGS;
/** Variables read elsewhere (the launcher), naming the config file, or a test hook. */
const OTHER_ENV = ['CONFIG', 'NODE', 'NODE_OPTIONS', 'TEST_CRASH', 'TEXTFILE_DIR'];

function fail(message: string): never {
  throw new ProxyError('UPROXY_ERR_CONFIG', message);
}

/** Reads and parses a JSON config file; throws a one-line error naming the file. */
export function readConfigFile(path: string): Record<string, unknown> {
  let text: string;
  try {
    text = readFileSync(path, 'utf8');
  } catch (err) {
    fail(`cannot read config file ${path}: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`);
  }
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch (err) {
    fail(`config file ${path} is not valid JSON: ${(err as Error).message}`);
  }
  if (value === null || typeof value !== 'object' || Array.isArray(value)) fail(`config file ${path} must hold a JSON object`);
  return value as Record<string, unknown>;
}

function engineOf(v: unknown, where: string): EngineChoice {
  try {
    return parseEngine(v);
  } catch (err) {
    fail(`invalid ${where} ${describe(v)}: ${(err as Error).message}`);
  }
}

function describe(v: unknown): string {
  return typeof v === 'string' ? `"${v}"` : JSON.stringify(v) ?? String(v);
}

function duration(where: string, v: unknown): number {
  if (typeof v === 'number' && !(Number.isFinite(v) && v >= 0)) fail(`invalid ${where} ${describe(v)}: use a duration such as 10s or 500ms`);
  if (typeof v !== 'string' && typeof v !== 'number') fail(`invalid ${where} ${describe(v)}: use a duration such as 10s or 500ms`);
  try {
    // A JSON number is seconds, bounded like the text form.
    return typeof v === 'number' ? checkDuration(v * 1000, `${v}`) : parseDuration(v);
  } catch (err) {
    fail(`invalid ${where}: ${(err as Error).message}`);
  }
}

function integer(where: string, v: unknown, min: number, max: number): number {
  const n = typeof v === 'string' && /^\d+$/.test(v) ? Number(v) : v;
  if (typeof n !== 'number' || !Number.isInteger(n) || n < min || n > max) fail(`invalid ${where} ${describe(v)}: must be an integer ${min}-${max}`);
  return n;
}

function boolean(where: string, v: unknown): boolean {
  if (v === true || v === 'true' || v === 'on' || v === '1') return true;
  if (v === false || v === 'false' || v === 'off' || v === '0') return false;
  fail(`invalid ${where} ${describe(v)}: use true or false`);
}

/** `HOST:PORT`, `[V6]:PORT` or `PORT` (loopback) for the metrics listener. */
export function parseListenAddress(where: string, v: unknown): { host: IpAddress; port: number } {
  if (typeof v !== 'string') fail(`invalid ${where} ${describe(v)}: use HOST:PORT`);
  const m = /^(?:(\[[^\]]+\]|[^:[\]]+):)?(\d{1,5})$/.exec(v);
  if (!m) fail(`invalid ${where} "${v}": use HOST:PORT, [IPV6]:PORT or PORT`);
  const hostText = (m[1] ?? '127.0.0.1').replace(/^\[(.*)\]$/, '$1');
  const host = parseIp(hostText);
  if (!host) fail(`invalid ${where} "${v}": "${hostText}" is not an IP address`);
  const port = Number(m[2]);
  if (port > 65535) fail(`invalid ${where} "${v}": port ${port} is out of range 0-65535`);
  return { host, port };
}

/** Splits a list of publish specs given in one environment variable (commas or white space). */
function splitSpecs(text: string): string[] {
  return text.split(/[\s,]+/).filter((s) => s !== '');
}

/**
 * Merges and validates the three sources. `file` is the parsed config file (or undefined).
 * Throws ProxyError UPROXY_ERR_CONFIG (exit 2) with one line naming the offending value.
 */
export function buildConfig(cli: CliValues, env: NodeJS.ProcessEnv, file?: Record<string, unknown>): StandaloneConfig {
  for (const name of Object.keys(env)) {
    if (!name.startsWith(ENV_PREFIX)) continue;
    const key = name.slice(ENV_PREFIX.length);
    if (!(Object.values(SETTINGS) as string[]).includes(key) && !OTHER_ENV.includes(key)) {
      fail(`unknown environment variable ${name} (known: ${[...Object.values(SETTINGS), ...OTHER_ENV].map((k) => ENV_PREFIX + k).join(', ')})`);
    }
  }
  if (file) {
    for (const key of Object.keys(file)) {
      // Own keys only: "constructor", "toString" or "__proto__" are no settings.
      if (!Object.hasOwn(SETTINGS, key)) fail(`unknown key "${key}" in config file (known: ${Object.keys(SETTINGS).join(', ')})`);
    }
  }
  const envValue = (k: Key): string | undefined => {
    const v = env[ENV_PREFIX + SETTINGS[k]];
    return v === undefined || v === '' ? undefined : v;
  };
  /** The winning value of a scalar setting and where it came from, for messages. */
  const pick = (k: Exclude<Key, 'publish' | 'allow' | 'deny'>): [unknown, string] | undefined => {
    const cliValue = cli[k];
    // The flag is the key in kebab case (yargs hands the value back under the camelCase key).
    if (cliValue !== undefined) return [cliValue, `--${k.replace(/[A-Z]/g, (c) => `-${c.toLowerCase()}`)}`];
    const e = envValue(k);
    if (e !== undefined) return [e, ENV_PREFIX + SETTINGS[k]];
    if (file && file[k] !== undefined) return [file[k], `config key "${k}"`];
    return undefined;
  };

  const list = (k: 'allow' | 'deny', cliValue: string[] | undefined): string[] => {
    const out: string[] = [];
    for (const v of cliValue ?? []) out.push(...parseCidrs(v, `--${k}`, 'UPROXY_ERR_CONFIG'));
    const e = envValue(k);
    if (e !== undefined) out.push(...parseCidrs(e, ENV_PREFIX + SETTINGS[k], 'UPROXY_ERR_CONFIG'));
    if (file && file[k] !== undefined) out.push(...parseCidrs(file[k], `config key "${k}"`, 'UPROXY_ERR_CONFIG'));
    return out;
  };
  const allow = list('allow', cli.allow);
  const deny = list('deny', cli.deny);
  const ppV = pick('proxyProtocol');
  const protocolOf = (v: unknown, where: string): ProxyProtocol => {
    try {
      return parseProxyProtocol(v);
    } catch (err) {
      fail(`invalid ${where}: ${(err as Error).message}`);
    }
  };
  const globalPp = ppV ? protocolOf(ppV[0], ppV[1]) : 'off';
  /** The global setting applies to TCP mappings; UDP has no PROXY protocol here. */
  const withPp = (m: Mapping): Mapping => ({ ...m, proxyProtocol: m.proto === 'tcp' ? globalPp : 'off' });
  /** A publish entry: a spec, or (config file) { "spec", "allow", "deny" } with its own lists. */
  const entry = (item: unknown, where: string): Mapping => {
    if (typeof item === 'string') return withPp({ ...parsePublishSpec(item), access: { allow, deny } });
    if (item === null || typeof item !== 'object' || Array.isArray(item)) fail(`${where} must be a publish spec string or an object with "spec"`);
    const o = item as Record<string, unknown>;
    for (const k of Object.keys(o)) if (!['spec', 'allow', 'deny', 'proxyProtocol'].includes(k)) fail(`unknown key "${k}" in ${where} (known: spec, allow, deny, proxyProtocol)`);
    if (typeof o.spec !== 'string') fail(`${where} needs "spec": a publish spec string`);
    const m = parsePublishSpec(o.spec);
    const own = (k: 'allow' | 'deny'): string[] | undefined => (o[k] === undefined ? undefined : parseCidrs(o[k], `${where} "${k}"`, 'UPROXY_ERR_CONFIG'));
    // A mapping's own allow list replaces the global one; deny lists add up.
    const mapped = withPp({ ...m, access: { allow: own('allow') ?? allow, deny: [...deny, ...(own('deny') ?? [])] } });
    if (o.proxyProtocol === undefined) return mapped;
    const pp = protocolOf(o.proxyProtocol, `${where} "proxyProtocol"`);
    if (pp !== 'off' && m.proto !== 'tcp') fail(`invalid ${where}: the PROXY protocol is supported on TCP mappings only`);
    return { ...mapped, proxyProtocol: pp };
  };

  const mappings: Mapping[] = (cli.publish ?? []).map((p) => entry(p, '--publish'));
  const envPublish = envValue('publish');
  if (envPublish !== undefined) mappings.push(...splitSpecs(envPublish).map((p) => entry(p, ENV_PREFIX + SETTINGS.publish)));
  if (file && file.publish !== undefined) {
    if (!Array.isArray(file.publish)) fail('config key "publish" must be an array of publish specs (strings or { "spec", "allow", "deny" } objects)');
    mappings.push(...file.publish.map((p, i) => entry(p, `config "publish"[${i}]`)));
  }
  if (mappings.length === 0) fail('no mappings: give at least one --publish SPEC, USERLAND_PROXY_PUBLISH or "publish" in the config file');
  checkOverlaps(mappings);

  const metricsV = pick('metrics');
  const drainV = pick('drainTimeout');
  const idleV = pick('udpIdleTimeout');
  const flowsV = pick('udpMaxFlows');
  const connectV = pick('connectTimeout');
  const tcpIdleV = pick('idleTimeout');
  const lingerV = pick('lingerTimeout');
  const maxConnV = pick('maxConnections');
  const maxBufV = pick('maxBuffer');
  const levelV = pick('logLevel');
  const fileV = pick('logFile');
  const engineV = pick('engine');
  const httpReloadV = pick('httpReload');

  const udpIdleTimeoutMs = idleV ? duration(idleV[1], idleV[0]) : UDP_IDLE_TIMEOUT_MS;
  if (udpIdleTimeoutMs < 10) fail(`invalid ${idleV?.[1]}: must be at least 10ms`);
  if (levelV && !(LOG_LEVELS as readonly unknown[]).includes(levelV[0])) fail(`invalid ${levelV[1]} ${describe(levelV[0])}: use one of ${LOG_LEVELS.join(', ')}`);
  if (fileV && (typeof fileV[0] !== 'string' || fileV[0] === '')) fail(`invalid ${fileV[1]} ${describe(fileV[0])}: must be a file path`);
  return {
    mappings,
    metrics: metricsV ? parseListenAddress(metricsV[1], metricsV[0]) : null,
    drainTimeoutMs: drainV ? duration(drainV[1], drainV[0]) : DRAIN_TIMEOUT_MS,
    udpIdleTimeoutMs,
    udpMaxFlows: flowsV ? integer(flowsV[1], flowsV[0], 1, 1_000_000) : UDP_MAX_FLOWS,
    connectTimeoutMs: connectV ? duration(connectV[1], connectV[0]) : TCP_CONNECT_TIMEOUT_MS,
    idleTimeoutMs: tcpIdleV ? duration(tcpIdleV[1], tcpIdleV[0]) : TCP_IDLE_TIMEOUT_MS,
    lingerTimeoutMs: lingerV ? duration(lingerV[1], lingerV[0]) : TCP_LINGER_TIMEOUT_MS,
    maxConnections: maxConnV ? integer(maxConnV[1], maxConnV[0], 1, 10_000_000) : null,
    maxBufferBytes: maxBufV ? integer(maxBufV[1], maxBufV[0], 16_384, 256 * 1024 * 1024) : RELAY_HIGH_WATER_MARK,
    logLevel: (levelV?.[0] as LogLevel | undefined) ?? 'info',
    logFile: fileV?.[0] as string | undefined,
    engine: engineV ? engineOf(engineV[0], engineV[1]) : 'auto',
    httpReload: httpReloadV ? boolean(httpReloadV[1], httpReloadV[0]) : true,
  };
}
