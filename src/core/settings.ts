/**
 * Every setting in one table: its config key (standalone), command-line flag (the key in kebab
 * case), environment variable (USERLAND_PROXY_ + env), kind, bounds, default, help text, and the
 * modes that read it. Config parsing (config.ts), docker mode's environment (docker-env.ts), the
 * standalone command line and its help (standalone-cli.ts) all derive from it, and a test checks
 * the README's tables against it in both directions.
 */
import { accessSync, constants, statSync } from 'node:fs';
import { parseCidrs } from './access-list.js';
import { parseIp, type IpAddress } from './address.js';
import {
  DRAIN_TIMEOUT_MS,
  SHARED_DRAIN_TIMEOUT_MS,
  SHARED_IDLE_TIMEOUT_MS,
  RELAY_HIGH_WATER_MARK,
  TCP_CONNECT_TIMEOUT_MS,
  TCP_IDLE_TIMEOUT_MS,
  TCP_LINGER_TIMEOUT_MS,
  UDP_IDLE_TIMEOUT_MS,
  UDP_MAX_FLOWS,
} from './constants.js';
import { checkDuration, MAX_DURATION_MS, parseDuration } from './duration.js';
import { ProxyError, type ErrorCode } from './errors.js';
import { LOG_LEVELS, type LogLevel } from './logger.js';
import { type EngineChoice, parseEngine } from './data-path-choice.js';
import { parseProxyProtocol, type ProxyProtocol } from './proxy-protocol.js';

/** How a value is written and checked. */
export type SettingKind = 'publish' | 'listen' | 'duration' | 'integer' | 'boolean' | 'cidrs' | 'proxyProtocol' | 'logLevel' | 'path' | 'engine' | 'dir';

/** The mode that reads a setting. */
export type Mode = 'docker' | 'standalone';

/** A metrics listener's address. */
export interface ListenAddress {
  host: IpAddress;
  port: number;
}

/** The parsed value of each kind (what parseValue returns for it). */
interface KindValue {
  publish: string[];
  listen: ListenAddress | null;
  duration: number;
  integer: number;
  boolean: boolean;
  cidrs: string[];
  proxyProtocol: ProxyProtocol;
  logLevel: LogLevel;
  path: string | undefined;
  engine: EngineChoice;
  dir: string | undefined;
}

/** One setting. */
export interface Setting {
  /** Config file key; the flag is its kebab-case form. */
  key: string;
  /** The environment variable without the USERLAND_PROXY_ prefix. */
  env: string;
  kind: SettingKind;
  /** The modes that read it. */
  modes: readonly Mode[];
  /** The parsed default (durations in ms). */
  default: unknown;
  /** The default as the help and the README show it. */
  shown: string;
  min?: number;
  max?: number;
  /** One line of help. */
  description: string;
}

const BOTH = ['docker', 'standalone'] as const;
const STANDALONE = ['standalone'] as const;

/** The table. Order: as the help and the README list them. */
export const SETTINGS = [
  {
    key: 'publish',
    env: 'PUBLISH',
    kind: 'publish',
    modes: STANDALONE,
    default: [],
    shown: 'none: at least one is required',
    description: 'mappings: [HOST_IP:]HOST_PORT[-END]:TARGET_IP:TARGET_PORT[-END][/tcp|/udp] (repeatable)',
  },
  {
    key: 'metrics',
    env: 'METRICS',
    kind: 'listen',
    modes: BOTH,
    default: null,
    shown: 'off',
    description:
      'serve /metrics, /healthz, /readyz (and POST /-/reload) on HOST:PORT; a bare port means 127.0.0.1 (docker mode: the shared engine, for every mapping)',
  },
  {
    key: 'drainTimeout',
    env: 'DRAIN_TIMEOUT',
    kind: 'duration',
    modes: STANDALONE,
    default: DRAIN_TIMEOUT_MS,
    shown: '10s',
    description: 'how long open TCP connections may finish on stop or removal',
  },
  {
    key: 'udpIdleTimeout',
    env: 'UDP_IDLE_TIMEOUT',
    kind: 'duration',
    modes: BOTH,
    default: UDP_IDLE_TIMEOUT_MS,
    shown: '90s',
    min: 10,
    description: 'UDP flow idle timeout',
  },
  {
    key: 'udpMaxFlows',
    env: 'UDP_MAX_FLOWS',
    kind: 'integer',
    modes: BOTH,
    default: UDP_MAX_FLOWS,
    shown: '16384',
    min: 1,
    max: 1_000_000,
    description: 'most UDP flows per mapping (a port range shares them); one client address holds at most three quarters',
  },
  {
    key: 'connectTimeout',
    env: 'CONNECT_TIMEOUT',
    kind: 'duration',
    modes: BOTH,
    default: TCP_CONNECT_TIMEOUT_MS,
    shown: '30s',
    description: 'TCP: give up a dial to the target after this long; 0 waits for the kernel (about 2 min), as docker-proxy does',
  },
  {
    key: 'idleTimeout',
    env: 'IDLE_TIMEOUT',
    kind: 'duration',
    modes: BOTH,
    default: TCP_IDLE_TIMEOUT_MS,
    shown: '0',
    description: 'TCP: close connections with no byte read or written either way for this long; 0 = never, as docker-proxy',
  },
  {
    key: 'lingerTimeout',
    env: 'LINGER_TIMEOUT',
    kind: 'duration',
    modes: BOTH,
    default: TCP_LINGER_TIMEOUT_MS,
    shown: '10m',
    description: 'TCP: close half-closed connections idle this long; 0 = never (docker-proxy keeps them forever)',
  },
  {
    key: 'maxConnections',
    env: 'MAX_CONNECTIONS',
    kind: 'integer',
    modes: BOTH,
    default: null,
    shown: 'none: the process fd budget',
    min: 1,
    max: 10_000_000,
    description: 'TCP: most open connections per mapping (a port range shares them); excess clients are refused at once',
  },
  {
    key: 'allow',
    env: 'ALLOW',
    kind: 'cidrs',
    modes: BOTH,
    default: [],
    shown: 'everyone',
    description: 'only clients in these CIDR ranges (repeatable, comma or space separated)',
  },
  {
    key: 'deny',
    env: 'DENY',
    kind: 'cidrs',
    modes: BOTH,
    default: [],
    shown: 'nobody',
    description: 'refuse clients in these CIDR ranges (checked first; repeatable, comma or space separated)',
  },
  {
    key: 'maxBuffer',
    env: 'MAX_BUFFER',
    kind: 'integer',
    modes: BOTH,
    default: RELAY_HIGH_WATER_MARK,
    shown: '1048576',
    min: 16_384,
    max: 256 * 1024 * 1024,
    description: 'TCP: unsent bytes per direction before reading pauses',
  },
  {
    key: 'proxyProtocol',
    env: 'PROXY_PROTOCOL',
    kind: 'proxyProtocol',
    modes: BOTH,
    default: 'off',
    shown: 'off',
    description: 'off|v1|v2: send a PROXY protocol header to TCP targets (the target must expect it)',
  },
  { key: 'logLevel', env: 'LOG_LEVEL', kind: 'logLevel', modes: BOTH, default: 'info', shown: 'info', description: `${LOG_LEVELS.join('|')}` },
  {
    key: 'logFile',
    env: 'LOG_FILE',
    kind: 'path',
    modes: BOTH,
    default: undefined,
    shown: 'stderr',
    description: 'append JSON log lines to this file; SIGHUP reopens it (docker mode)',
  },
  {
    key: 'engine',
    env: 'ENGINE',
    kind: 'engine',
    modes: BOTH,
    default: 'auto',
    shown: 'auto',
    description: 'auto|native|js: the data path; auto uses the native (splice) engine when it is built',
  },
  {
    key: 'httpReload',
    env: 'HTTP_RELOAD',
    kind: 'boolean',
    modes: STANDALONE,
    default: true,
    shown: 'true',
    description: 'true|false: serve POST /-/reload on the metrics listener (SIGHUP always reloads)',
  },
  {
    key: 'shared',
    env: 'SHARED',
    kind: 'boolean',
    modes: ['docker'],
    default: true,
    shown: 'true',
    description: 'true|false: one shared engine per network namespace behind a tiny per-port shim (when built); false: a Node process per port',
  },
  {
    key: 'sharedIdleTimeout',
    env: 'SHARED_IDLE_TIMEOUT',
    kind: 'duration',
    modes: ['docker'],
    default: SHARED_IDLE_TIMEOUT_MS,
    shown: '30s',
    min: 0,
    description: 'the shared engine exits after this long without a mapping',
  },
  {
    key: 'sharedDrainTimeout',
    env: 'SHARED_DRAIN_TIMEOUT',
    kind: 'duration',
    modes: ['docker'],
    default: SHARED_DRAIN_TIMEOUT_MS,
    shown: '10m',
    min: 0,
    description: 'shared engine: how long a mapping whose dockerd died keeps relaying its established TCP connections (its port is freed at once)',
  },
  {
    key: 'textfileDir',
    env: 'TEXTFILE_DIR',
    kind: 'dir',
    modes: ['docker'],
    default: undefined,
    shown: 'off',
    description: "keep <proto>_<host-ip>_<port>.prom there for node_exporter's textfile collector",
  },
] as const satisfies readonly Setting[];

type Row = (typeof SETTINGS)[number];
/** A setting's property in a settings object: its key, with `Ms` after a duration's (the unit). */
type PropOf<R extends Row> = R extends { kind: 'duration' } ? `${R['key']}Ms` : R['key'];
/** A row's value: its kind's, or null where null is its default ("none"). */
type ValueOf<R extends Row> = KindValue[R['kind']] | (R['default'] extends null ? null : never);

/** The parsed settings of a mode, one property per row of the table (the only place they are typed). */
export type SettingsOf<M extends Mode> = { [R in Row as M extends R['modes'][number] ? PropOf<R> : never]: ValueOf<R> };

/** Every setting's value, whichever mode reads it (the types the data path's options pick from). */
export type SettingValues = SettingsOf<'docker'> & SettingsOf<'standalone'>;

/** A setting's property in a settings object (see PropOf). */
export function propOf(s: Setting): string {
  return s.kind === 'duration' ? `${s.key}Ms` : s.key;
}

/**
 * The settings of a mode: each row's value from `read` (already parsed), or its default where
 * `read` gives undefined.
 */
export function readSettings<M extends Mode>(mode: M, read: (s: Setting) => unknown): SettingsOf<M> {
  const out: Record<string, unknown> = {};
  for (const s of settingsOf(mode)) {
    const v = read(s) ?? s.default;
    out[propOf(s)] = Array.isArray(v) ? [...v] : v; // a list default is the table's own array
  }
  // The one cast: the loop above builds exactly the mapped type's properties.
  return out as SettingsOf<M>;
}

/** Variables read elsewhere (the launcher), naming the config file, or a test hook. */
export const OTHER_ENV = ['CONFIG', 'NODE', 'NODE_OPTIONS', 'TEST_CRASH', 'ENGINE_SOCKET'] as const;

/** The settings a mode reads. */
export function settingsOf(mode: Mode): Setting[] {
  return (SETTINGS as readonly Setting[]).filter((s) => s.modes.includes(mode));
}

/** A setting by its key. */
export function setting(key: string): Setting {
  const s = (SETTINGS as readonly Setting[]).find((x) => x.key === key);
  if (s === undefined) throw new Error(`no setting ${key}`);
  return s;
}

/** The command-line flag of a setting: its key in kebab case. */
export function flagOf(s: Setting): string {
  return `--${s.key.replace(/[A-Z]/g, (c) => `-${c.toLowerCase()}`)}`;
}

/** A value as a message shows it: strings quoted, anything else as JSON. */
export function describeValue(v: unknown): string {
  return typeof v === 'string' ? `"${v}"` : (JSON.stringify(v) ?? String(v));
}

/**
 * Parses one value of a setting from `source` (a flag, a variable or a config key); a bad value
 * throws a one-line ProxyError with `code`: `invalid <source> <value>: <what is accepted>`.
 */
export function parseSetting(s: Setting, v: unknown, code: ErrorCode, source: string): unknown {
  try {
    return parseValue(s, v, code, source);
  } catch (err) {
    if (err instanceof ProxyError) throw err;
    throw new ProxyError(code, `invalid ${source} ${describeValue(v)}: ${(err as Error).message}`);
  }
}

/**
 * Parses one value of a scalar setting (strings from flags and the environment, JSON values from
 * the config file); throws an Error saying what is accepted (the caller names source and value).
 * Kinds with their own messages: publish and cidrs (lists, merged by callers).
 */
export function parseValue(s: Setting, v: unknown, code: ErrorCode, source: string): unknown {
  switch (s.kind) {
    case 'duration': {
      let ms: number;
      try {
        if (typeof v === 'number' && Number.isFinite(v) && v >= 0)
          ms = checkDuration(v * 1000, String(v)); // a JSON number is seconds
        else if (typeof v === 'string') ms = parseDuration(v);
        else throw new Error('not a duration');
      } catch (err) {
        if (/too large/.test((err as Error).message)) throw new Error(`too large (at most ${MAX_DURATION_MS / 1000}s)`);
        throw new Error('use a duration such as 500ms, 90s or 5m (a bare number is seconds)');
      }
      if (s.min !== undefined && ms < s.min) throw new Error(`must be at least ${s.min}ms`);
      return ms;
    }
    case 'integer': {
      const n = typeof v === 'string' && /^\d+$/.test(v) ? Number(v) : v;
      if (typeof n !== 'number' || !Number.isInteger(n) || n < (s.min ?? 0) || n > (s.max ?? Number.MAX_SAFE_INTEGER)) {
        throw new Error(`must be an integer ${s.min}-${s.max}`);
      }
      return n;
    }
    case 'boolean':
      if (v === true || v === 'true' || v === 'on' || v === '1') return true;
      if (v === false || v === 'false' || v === 'off' || v === '0') return false;
      throw new Error('use true or false');
    case 'logLevel':
      if ((LOG_LEVELS as readonly unknown[]).includes(v)) return v;
      throw new Error(`use one of ${LOG_LEVELS.join(', ')}`);
    case 'path':
      if (typeof v !== 'string' || v === '') throw new Error('must be a file path');
      return v;
    case 'proxyProtocol':
      return parseProxyProtocol(v);
    case 'engine':
      return parseEngine(v);
    case 'cidrs':
      return parseCidrs(v, source, code);
    case 'listen': {
      if (typeof v !== 'string') throw new Error('use HOST:PORT');
      const m = /^(?:(\[[^\]]+\]|[^:[\]]+):)?(\d{1,5})$/.exec(v);
      if (!m) throw new Error('use HOST:PORT, [IPV6]:PORT or PORT');
      const hostText = (m[1] ?? '127.0.0.1').replace(/^\[(.*)\]$/, '$1');
      const host = parseIp(hostText);
      if (!host) throw new Error(`"${hostText}" is not an IP address`);
      const port = Number(m[2]);
      if (port > 65535) throw new Error(`port ${port} is out of range 0-65535`);
      return { host, port };
    }
    case 'dir':
      try {
        accessSync(String(v), constants.W_OK);
        if (!statSync(String(v)).isDirectory()) throw new Error('not a directory');
      } catch (err) {
        throw new Error(`not a writable directory (${(err as NodeJS.ErrnoException).code ?? (err as Error).message})`);
      }
      return v;
    default:
      throw new Error(`${s.key} is not a scalar setting`);
  }
}
