/**
 * One docker-mode mapping, from docker-proxy's validated flags and the USERLAND_PROXY_* variables
 * to a serving forwarder: the code both the per-port process (docker-mode.ts) and the shared
 * engine (engine.ts) run, so that both give the same answers, messages and exit codes.
 */
import { compileAccess } from '../core/access-list.js';
import { joinHostPort } from '../core/address.js';
import { readDockerEnv, type DockerEnv } from './docker-env.js';
import { toDockerMapping, type DockerMapping } from './docker-flags.js';
import { ProxyError } from '../core/errors.js';
import { mappingShare, TCP_CONNECTION_FDS, type FdBudget } from '../core/fd-limit.js';
import { openMapping, type OpenMapping } from '../data-path/forward.js';
import type { GoFlagResult } from '../core/go-flags.js';
import { createLogger, type Log } from '../core/logger.js';
import { selectEngine } from '../data-path/native-engine.js';
import { parseEngine, type EngineChoice, type EngineName } from '../core/data-path-choice.js';
import type { MappingState } from '../metrics/mapping-state.js';
import type { TextfileWriter } from '../metrics/textfile-metrics.js';

/** A serving docker-mode mapping. */
export interface DockerProxy {
  /** `tcp/127.0.0.1:8080`, as logs and metrics name it. */
  id: string;
  /** `tcp/172.17.0.2:80`. */
  target: string;
  mapping: DockerMapping;
  env: DockerEnv;
  engine: EngineName;
  open: OpenMapping;
  /** The metrics view of the mapping (the textfile's, and the shared engine's /metrics). */
  state: MappingState;
  log: Log;
  /** Closes the listener, every connection and flow, and removes the textfile. */
  close(): void;
  /**
   * Shared engine: the mapping drains beside a successor that serves (or will serve) its port and
   * writes the same textfile: it stops writing the file, and removes it when `removeFile` (its
   * dockerd died: no one serves the port until a successor registers).
   */
  retire(removeFile: boolean): void;
}

/** How to open it. */
export interface DockerOpenOptions {
  /** The USERLAND_PROXY_* variables (the process's own, or those a shim sent). */
  env: NodeJS.ProcessEnv;
  /** The socket to adopt for this mapping (fd 4 or the engine's copy of it), or null to bind. */
  listenFd: (m: DockerMapping) => number | null;
  budget: FdBudget | null;
  /** Receives the mapping's logger as soon as it exists (a later failure is logged there too). */
  onLog: (log: Log) => void;
  /** An exception in the mapping's own code (forward.ts ForwardSpec.onFault); absent: thrown on. */
  onFault?: (err: unknown) => void;
  /**
   * The budget is shared with other mappings (the shared engine): unless its settings say
   * otherwise, the mapping's connections and flows stay within its share (fd-limit.ts mappingShare).
   */
  sharedBudget?: boolean;
}

/** A mapping's settings within its share of a budget other mappings use too (audit N7). */
function shareOf<T extends { maxConnections: number | null; udpMaxFlows: number }>(budget: FdBudget | null, s: T): T {
  if (!budget) return s;
  const fds = mappingShare(budget);
  return { ...s, maxConnections: s.maxConnections ?? Math.floor(fds / TCP_CONNECTION_FDS), udpMaxFlows: Math.min(s.udpMaxFlows, fds) };
}

/** Validates and opens; throws a ProxyError with docker-proxy's wording and our exit code. */
export async function openDockerMapping(flags: GoFlagResult, opts: DockerOpenOptions): Promise<DockerProxy> {
  const m = toDockerMapping(flags);
  const env = readDockerEnv(opts.env);
  const id = `${m.proto}/${joinHostPort(m.host.address, m.hostPort)}`;
  const log = await createLogger({ level: env.logLevel, file: env.logFile, base: { mapping: id } });
  opts.onLog(log);
  // -engine (ours, never from dockerd) wins over USERLAND_PROXY_ENGINE; errors name the source.
  const fromFlag = flags.given.has('engine');
  const engine = selectEngine(
    fromFlag ? parseEngineFlag(flags.values.get('engine') as string) : env.engine,
    (msg) => log.warn({}, msg),
    fromFlag ? 'UPROXY_ERR_BAD_VALUE' : 'UPROXY_ERR_BAD_ENV',
  );
  const listenFd = opts.listenFd(m);
  const open = await openMapping({
    ...m,
    hostPortEnd: m.hostPort,
    listenFd,
    proxyProtocol: m.proto === 'tcp' ? env.proxyProtocol : 'off',
    access: compileAccess({ allow: env.allow, deny: env.deny }),
    settings: shareOf(opts.sharedBudget ? opts.budget : null, { ...env, engine }),
    log,
    budget: opts.budget,
    onFault: opts.onFault,
  }).catch((err: unknown) => {
    // docker-proxy 28's wording for its own bind's failure (20.10-27 said only what follows it).
    if (listenFd === null && err instanceof ProxyError && err.code === 'UPROXY_ERR_LISTEN')
      throw new ProxyError(err.code, `failed to listen on ${joinHostPort(m.host.address, m.hostPort)}: ${err.message}`);
    throw err;
  });
  const state = dockerMappingState(id, m, open);
  let textfile: TextfileWriter | null = null;
  const close = (): void => {
    open.close();
    textfile?.remove();
  };
  const retire = (removeFile: boolean): void => {
    if (removeFile) textfile?.remove();
    else textfile?.stop();
    textfile = null;
  };
  if (env.textfileDir !== undefined) {
    try {
      const { startTextfileWriter } = await import('../metrics/textfile-metrics.js');
      textfile = startTextfileWriter(env.textfileDir, state);
      await textfile.write();
    } catch (err) {
      close();
      throw err;
    }
  }
  const target = `${m.proto}/${joinHostPort(m.target.address, m.targetPort)}`;
  return { id, target, mapping: m, env, engine, open, state, log, close, retire };
}

/** A docker mapping as the metrics see it: one port, always up, labelled with its id. */
function dockerMappingState(id: string, m: DockerMapping, stats: Pick<OpenMapping, 'tcp' | 'udp'>): MappingState {
  return { mapping: { id, proto: m.proto, host: m.host, hostPort: m.hostPort }, up: true, restarts: 0, tcp: stats.tcp, udp: stats.udp };
}

/** The -engine flag's value, or a one-line error in Go's flag wording style. */
function parseEngineFlag(v: string): EngineChoice {
  try {
    return parseEngine(v);
  } catch (err) {
    throw new ProxyError('UPROXY_ERR_BAD_VALUE', `invalid -engine "${v}": ${(err as Error).message}`);
  }
}
