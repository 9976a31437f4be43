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
import { ENV_PREFIX } from '../core/constants.js';
import { ProxyError } from '../core/errors.js';
import { parseCidrs } from '../core/access-list.js';
import type { ProxyProtocol } from '../core/proxy-protocol.js';
import { flagOf, OTHER_ENV, parseSetting, readSettings, type SettingsOf, setting, SETTINGS, settingsOf } from '../core/settings.js';
import { checkOverlaps, parsePublishSpec, type Mapping } from './publish-spec.js';

/**
 * A validated standalone configuration: the table's standalone settings (settings.ts), with the
 * publish specs and the global allow/deny lists resolved into mappings.
 */
export type StandaloneConfig = Omit<SettingsOf<'standalone'>, 'publish' | 'allow' | 'deny'> & { mappings: Mapping[] };

/** Values as given on the command line (strings as typed; lists for publish, allow, deny), by setting key. */
export type CliValues = Partial<Record<string, string | string[] | undefined>> & { config?: string | undefined };

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

/** Splits a list of publish specs given in one environment variable (commas or white space). */
function splitSpecs(text: string): string[] {
  return text.split(/[\s,]+/).filter((s) => s !== '');
}

/**
 * Merges and validates the three sources. `file` is the parsed config file (or undefined).
 * Throws ProxyError UPROXY_ERR_CONFIG (exit 2) with one line naming the offending value.
 */
export function buildConfig(cli: CliValues, env: NodeJS.ProcessEnv, file?: Record<string, unknown>): StandaloneConfig {
  const knownEnv: string[] = [...SETTINGS.map((x) => x.env), ...OTHER_ENV];
  for (const name of Object.keys(env)) {
    if (!name.startsWith(ENV_PREFIX)) continue;
    if (!knownEnv.includes(name.slice(ENV_PREFIX.length))) {
      fail(`unknown environment variable ${name} (known: ${knownEnv.map((k) => ENV_PREFIX + k).join(', ')})`);
    }
  }
  const keys = settingsOf('standalone').map((x) => x.key);
  if (file) {
    // Own keys only: "constructor", "toString" or "__proto__" are no settings.
    for (const key of Object.keys(file)) if (!keys.includes(key)) fail(`unknown key "${key}" in config file (known: ${keys.join(', ')})`);
  }
  const envValue = (k: string): string | undefined => {
    const v = env[ENV_PREFIX + setting(k).env];
    return v === undefined || v === '' ? undefined : v;
  };
  /** The winning value of a scalar setting and where it came from, for messages. */
  const pick = (k: string): [unknown, string] | undefined => {
    // yargs hands each flag's value back under the camelCase key.
    if (cli[k] !== undefined) return [cli[k], flagOf(setting(k))];
    const e = envValue(k);
    if (e !== undefined) return [e, ENV_PREFIX + setting(k).env];
    if (file && file[k] !== undefined) return [file[k], `config key "${k}"`];
    return undefined;
  };
  /** A scalar setting's value parsed from its winning source; undefined: none gave it. */
  const value = (k: string): unknown => {
    const p = pick(k);
    return p === undefined ? undefined : parseSetting(setting(k), p[0], 'UPROXY_ERR_CONFIG', p[1]);
  };

  const list = (k: 'allow' | 'deny', cliValue: string[] | undefined): string[] => {
    const out: string[] = [];
    for (const v of cliValue ?? []) out.push(...parseCidrs(v, `--${k}`, 'UPROXY_ERR_CONFIG'));
    const e = envValue(k);
    if (e !== undefined) out.push(...parseCidrs(e, ENV_PREFIX + setting(k).env, 'UPROXY_ERR_CONFIG'));
    if (file && file[k] !== undefined) out.push(...parseCidrs(file[k], `config key "${k}"`, 'UPROXY_ERR_CONFIG'));
    return out;
  };
  const allow = list('allow', cli.allow as string[] | undefined);
  const deny = list('deny', cli.deny as string[] | undefined);
  const globalPp = (value('proxyProtocol') ?? setting('proxyProtocol').default) as ProxyProtocol;
  /** The global setting applies to TCP mappings; UDP has no PROXY protocol here. */
  const withPp = (m: Mapping): Mapping => ({ ...m, proxyProtocol: m.proto === 'tcp' ? globalPp : 'off' });
  /** A publish entry: a spec, or (config file) { "spec", "allow", "deny" } with its own lists. */
  const entry = (item: unknown, where: string): Mapping => {
    if (typeof item === 'string') return withPp({ ...parsePublishSpec(item), access: { allow, deny } });
    if (item === null || typeof item !== 'object' || Array.isArray(item)) fail(`${where} must be a publish spec string or an object with "spec"`);
    const o = item as Record<string, unknown>;
    for (const k of Object.keys(o))
      if (!['spec', 'allow', 'deny', 'proxyProtocol'].includes(k)) fail(`unknown key "${k}" in ${where} (known: spec, allow, deny, proxyProtocol)`);
    if (typeof o.spec !== 'string') fail(`${where} needs "spec": a publish spec string`);
    const m = parsePublishSpec(o.spec);
    const own = (k: 'allow' | 'deny'): string[] | undefined => (o[k] === undefined ? undefined : parseCidrs(o[k], `${where} "${k}"`, 'UPROXY_ERR_CONFIG'));
    // A mapping's own allow list replaces the global one; deny lists add up.
    const mapped = withPp({ ...m, access: { allow: own('allow') ?? allow, deny: [...deny, ...(own('deny') ?? [])] } });
    if (o.proxyProtocol === undefined) return mapped;
    const pp = parseSetting(setting('proxyProtocol'), o.proxyProtocol, 'UPROXY_ERR_CONFIG', `${where} "proxyProtocol"`) as ProxyProtocol;
    if (pp !== 'off' && m.proto !== 'tcp') fail(`invalid ${where}: the PROXY protocol is supported on TCP mappings only`);
    return { ...mapped, proxyProtocol: pp };
  };

  const mappings: Mapping[] = ((cli.publish ?? []) as string[]).map((p) => entry(p, '--publish'));
  const envPublish = envValue('publish');
  if (envPublish !== undefined) mappings.push(...splitSpecs(envPublish).map((p) => entry(p, ENV_PREFIX + setting('publish').env)));
  if (file && file.publish !== undefined) {
    if (!Array.isArray(file.publish)) fail('config key "publish" must be an array of publish specs (strings or { "spec", "allow", "deny" } objects)');
    mappings.push(...file.publish.map((p, i) => entry(p, `config "publish"[${i}]`)));
  }
  if (mappings.length === 0) fail('no mappings: give at least one --publish SPEC, USERLAND_PROXY_PUBLISH or "publish" in the config file');
  checkOverlaps(mappings);

  // Lists (publish, allow, deny) were merged above; every other setting is its winning source's value.
  const {
    publish: _p,
    allow: _a,
    deny: _d,
    ...rest
  } = readSettings('standalone', (s) => (s.kind === 'publish' || s.kind === 'cidrs' ? undefined : value(s.key)));
  return { ...rest, mappings };
}
