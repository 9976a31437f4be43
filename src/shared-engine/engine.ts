/**
 * The shared engine (docker mode, issue 13): one process per network namespace serving every
 * docker-proxy mapping whose per-port shim (native/shim.c) registered with it. The first shim
 * starts it; it exits after USERLAND_PROXY_SHARED_IDLE_TIMEOUT without a mapping.
 *
 *   argv   userland-proxy engine [--control-fd=N | --take-over]  N: the bound, listening control
 *          socket the starting shim hands over; --take-over: replace the running engine (its
 *          mappings move here, its connections drain there: userland-proxy upgrade); neither:
 *          the engine binds the name itself and exits 1 if an engine already serves this namespace
 *   env    its own USERLAND_PROXY_LOG_FILE / _LOG_LEVEL (engine events), USERLAND_PROXY_METRICS
 *          (one /metrics for every mapping) and _SHARED_IDLE_TIMEOUT; each mapping follows the
 *          variables its shim sent, exactly as a per-port proxy would read its own
 *   fds    stdio /dev/null; RLIMIT_NOFILE at the hard limit (the shim raised it); one fd budget
 *   SIGINT, SIGTERM  close every mapping and exit 0 (each shim then registers with a new engine)
 *
 * Per mapping, one control connection: registration (the docker-mode code of docker-mapping.ts:
 * the same validation, messages and exit codes), the listening socket sent back to the shim (so
 * the port outlives us), S to stop, EOF when the shim died: the mapping closes with its connection.
 * D when the shim's dockerd died: the listener closes at once, established TCP connections drain
 * (at most USERLAND_PROXY_SHARED_DRAIN_TIMEOUT) beside whatever mapping a restarted dockerd makes.
 */
import { closeSync } from 'node:fs';
import {
  CTL_PROTOCOL,
  ENGINE_LIST_CHUNK,
  MAPPING_FAULT_LIMIT,
  MAPPING_FAULT_WINDOW_MS,
  METRICS_MAX_CONNECTIONS,
  SHARED_DRAIN_CHECK_MS,
  SUCCESSOR_WAIT_MS,
  TAKE_OVER_TIMEOUT_MS,
} from '../core/constants.js';
import { readDockerEnv, type DockerEnv } from '../docker/docker-env.js';
import { openDockerMapping, type DockerProxy } from '../docker/docker-mapping.js';
import { parseDockerArgs } from '../docker/docker-flags.js';
import { releaseSignals } from '../core/early-signals.js';
import { exitOnInternalError, exitWith } from '../core/lifecycle.js';
import { control, engineSocketName, MSG, parseRegistration, type Control, type EngineListing } from './engine-protocol.js';
import { spawnTakeOver } from './engine-upgrade.js';
import { ProxyError, toProxyError } from '../core/errors.js';
import { FdBudget } from '../core/fd-limit.js';
import { nativeLoadable } from '../data-path/native-engine.js';
import { createLogger, silentLog, type Log } from '../core/logger.js';
import type { MappingState } from '../metrics/mapping-state.js';
import { installedVersion, packageVersion } from '../core/version.js';

/** One shim's mapping: null proxy while its registration is being opened. */
interface Entry {
  proxy: DockerProxy | null;
  closed: boolean;
  since: number;
  /** When its dockerd died (D): the listener is closed, the connections drain. */
  drainingSince?: number;
  /** Tells draining mappings of one port apart in /metrics. */
  drainSeq?: number;
  /** Its own code threw: it is being closed (once). */
  faulted?: boolean;
  /** Its shim's protocol version (1: an install older than versions). */
  protocol: number;
}

/** Ends the engine at start-up: its log and stderr say why, exit 1. */
function die(message: string, log: Log): never {
  exitWith(new ProxyError('UPROXY_ERR_INTERNAL', message), { log, prefix: ENGINE_PREFIX });
}
const ENGINE_PREFIX = 'userland-proxy engine';

/**
 * The engine's state and handlers: every shim's mapping of one network namespace. onMessage
 * dispatches the wire's messages to register (R, A), drop (S; and when a shim's connection
 * closes: shimGone), detach (D), list (L) and the hand-over (U); exit ends the process. The
 * handlers are arrow properties: the addon calls them as plain functions.
 */
export class SharedEngine {
  readonly log: Log;
  readonly env: DockerEnv;
  readonly ctl: Control;
  readonly budget: FdBudget;
  /** The version this process runs (read once at start: see runEngine). */
  readonly version: string;

  constructor(log: Log, env: DockerEnv, ctl: Control, budget: FdBudget, version: string) {
    this.log = log;
    this.env = env;
    this.ctl = ctl;
    this.budget = budget;
    this.version = version;
  }

  readonly entries = new Map<number, Entry>();
  /** Mappings whose dockerd died: no shim, no listener, connections finishing. */
  readonly draining = new Set<Entry>();
  drainTimer: NodeJS.Timeout | null = null;
  drains = 0;
  idleTimer: NodeJS.Timeout | null = null;
  exiting = false;
  /** A new engine took our name (U): we exit once our last mapping moved or drained. */
  handedOver = false;
  metricsServer: { close(): void } | null = null;

  readonly exit = (why: string): void => {
    if (this.exiting) return;
    this.exiting = true;
    this.ctl.ctlStopListening();
    for (const e of [...this.entries.values(), ...this.draining]) e.proxy?.close();
    this.log.info({ mappings: this.entries.size }, `engine stopping: ${why}`);
    this.log.flush();
    process.exit(0);
  };
  readonly idleCheck = (): void => {
    if (this.handedOver && this.entries.size + this.draining.size === 0) {
      this.exit('handed over to a new engine');
      return;
    }
    if (this.entries.size + this.draining.size > 0 || this.exiting) {
      if (this.idleTimer) clearTimeout(this.idleTimer);
      this.idleTimer = null;
      return;
    }
    this.idleTimer ??= setTimeout(() => this.exit('no mapping left'), this.env.sharedIdleTimeoutMs);
  };
  /** Per mapping id: its faults (the metric) and when the recent ones happened. */
  readonly faults = new Map<string, { total: number; recent: number[] }>();
  /**
   * Blast radius: an exception thrown by one mapping's code (a handler of its sockets or timers,
   * forward.ts onFault) ends that mapping alone, never the engine. It is logged and counted
   * (userland_proxy_worker_restarts_total), closed whole (its connections with it), and its shim,
   * seeing its control connection close, registers it again on the socket it holds: the port is
   * never unbound. A mapping that keeps faulting is refused (register), and served alone.
   */
  readonly fault = (conn: number, entry: Entry, err: unknown): void => {
    if (entry.faulted) return;
    entry.faulted = true;
    const id = entry.proxy?.id ?? 'registering';
    const f = this.faults.get(id) ?? { total: 0, recent: [] };
    f.total++;
    f.recent.push(Date.now());
    this.faults.set(id, f);
    const e = toProxyError(err);
    this.log.error(
      { mapping: id, code: e.code, stack: (err as Error | null)?.stack },
      `mapping fault, mapping closed (its shim registers it again): ${e.message}`,
    );
    // Out of the failing callback's stack.
    setImmediate(() => {
      if (this.draining.delete(entry)) {
        entry.proxy?.close();
        this.idleCheck();
      } else if (this.entries.get(conn) === entry) {
        this.drop(conn, 'fault');
        this.ctl.ctlClose(conn);
      }
    });
  };
  /** How many times a mapping faulted within the window (older ones forgotten). */
  readonly recentFaults = (id: string): number => {
    const f = this.faults.get(id);
    if (!f) return 0;
    const since = Date.now() - MAPPING_FAULT_WINDOW_MS;
    f.recent = f.recent.filter((t) => t >= since);
    return f.recent.length;
  };

  readonly drop = (conn: number, why: string): void => {
    const e = this.entries.get(conn);
    if (!e) return;
    this.entries.delete(conn);
    e.closed = true;
    e.proxy?.close();
    this.budget.give(1);
    if (e.proxy) this.log.info({ mapping: e.proxy.id, why }, 'mapping closed');
    this.idleCheck();
  };

  // A draining mapping ends with its last connection, or at its drain limit (resets where bytes
  // are pending, as any forced close).
  readonly drainCheck = (): void => {
    const now = Date.now();
    for (const e of this.draining) {
      const p = e.proxy as DockerProxy;
      const left = (p.open.tcp?.active ?? 0) + (p.open.udp?.flowsActive ?? 0);
      const over = now - (e.drainingSince ?? now) >= p.env.sharedDrainTimeoutMs;
      if (left > 0 && !over) continue;
      this.draining.delete(e);
      p.close();
      this.log.info({ mapping: p.id, connections: left }, over ? 'drain limit reached: closing what is left' : 'drained');
    }
    if (this.draining.size === 0 && this.drainTimer) {
      clearInterval(this.drainTimer);
      this.drainTimer = null;
    }
    this.idleCheck();
  };
  /**
   * D: the shim's dockerd died (its parent is gone: Pdeathsig). The port must be free at once for
   * a restarted dockerd, but established connections need not die with dockerd (docker-proxy's
   * do): the listener closes, TCP connections drain; a later registration of the same port is a
   * new mapping beside it. UDP flows live on too (each keeps its socket toward the container) and
   * the same mapping registered again adopts them: replies then leave from its socket.
   * After U (moving to a new engine that reads the same sockets), both drain here.
   */
  readonly detach = (conn: number): void => {
    const e = this.entries.get(conn);
    const p = e?.proxy;
    const left = (p?.open.tcp?.active ?? 0) + (p?.open.udp?.flowsActive ?? 0);
    // Its textfile is its successor's: the new engine's mapping, or the restarted dockerd's.
    p?.retire(!this.handedOver);
    if (!e || !p || left === 0) {
      this.drop(conn, this.handedOver ? 'moved to the new engine' : 'dockerd gone');
      return;
    }
    this.entries.delete(conn);
    this.budget.give(1);
    if (this.handedOver) p.open.handOver();
    else p.open.release();
    e.drainingSince = Date.now();
    e.drainSeq = ++this.drains;
    this.draining.add(e);
    this.log.info(
      { mapping: p.id, left, drainTimeoutMs: p.env.sharedDrainTimeoutMs },
      this.handedOver ? 'moved: connections and flows drain here' : 'dockerd gone: port freed, connections draining',
    );
    this.drainTimer ??= setInterval(this.drainCheck, SHARED_DRAIN_CHECK_MS);
  };

  /**
   * Audit N9: install.sh replaces the tree in place and then runs `upgrade`. Should that not
   * happen (it failed, or the tree was replaced by other means), the first registration that
   * finds another version installed makes this engine start its successor, as `upgrade` would,
   * and every registration waits (parked, unanswered) until it takes over: on U each is closed
   * unanswered, and its shim, as after any engine's exit, registers with the name's new holder.
   * A successor that fails to take over in time leaves us serving them, once (no retry loop).
   */
  readonly parked = new Map<number, { msg: Buffer; fd: number }>();
  successor: 'none' | 'starting' | 'failed' = 'none';
  readonly staleInstall = (): boolean => {
    if (this.successor !== 'none' || this.handedOver) return this.successor === 'starting' && !this.handedOver;
    const installed = installedVersion();
    if (installed === this.version || installed === 'unknown') return false;
    this.successor = 'starting';
    this.log.warn({ running: this.version, installed }, 'another version is installed: its engine takes over from this one');
    const giveUp = (why: string): void => {
      clearTimeout(timer);
      if (this.successor !== 'starting' || this.handedOver) return;
      this.successor = 'failed';
      this.log.error({ installed, parked: this.parked.size }, `the installed version's engine did not take over (${why}): serving on`);
      for (const [c, p] of this.parked) {
        this.parked.delete(c);
        this.onMessage(c, p.msg, p.fd);
      }
    };
    const timer = setTimeout(() => giveUp(`not within ${SUCCESSOR_WAIT_MS} ms`), SUCCESSOR_WAIT_MS);
    try {
      const child = spawnTakeOver(process.env);
      child.once('error', (err) => giveUp(err.message));
      child.once('exit', (code, signal) => giveUp(`it exited with ${signal ?? code}`));
    } catch (err) {
      setImmediate(() => giveUp((err as Error).message));
    }
    return true;
  };

  readonly register = async (conn: number, msg: Buffer, fd: number): Promise<void> => {
    if (this.staleInstall()) {
      this.parked.set(conn, { msg, fd });
      return;
    }
    const reg = parseRegistration(msg);
    let fdUsed = false;
    const reply = (text: string): void => {
      this.ctl.ctlSend(conn, Buffer.from(text), -1);
    };
    if (this.entries.has(conn) || reg === null) {
      if (fd >= 0) closeSync(fd);
      // ctlClose reports no close: a mapping this connection already holds goes with it here.
      this.drop(conn, 'malformed registration');
      reply(`${MSG.failed}malformed registration`);
      this.ctl.ctlClose(conn);
      return;
    }
    // The control connection is an fd of this process too.
    if (!this.budget.take(1)) {
      if (fd >= 0) closeSync(fd);
      reply(`${MSG.failed}file descriptor budget spent: ${this.budget.used} of ${this.budget.limit} taken (raise RLIMIT_NOFILE)`);
      this.ctl.ctlClose(conn);
      return;
    }
    const entry: Entry = { proxy: null, closed: false, since: Date.now(), protocol: reg.protocol };
    this.entries.set(conn, entry);
    this.idleCheck();
    let mlog: Log = silentLog;
    try {
      const flags = parseDockerArgs(reg.argv);
      const proxy = await openDockerMapping(flags, {
        env: reg.env,
        // A: the socket the shim held through an engine restart. R: fd 4 when the flag says so
        // (-1 when the shim had no fd 4, which reads "fd 4 is not open"), else bind.
        listenFd: (m) => {
          if (!reg.adopt && !m.useListenFd) return null;
          fdUsed = true;
          return fd;
        },
        budget: this.budget,
        onLog: (l) => {
          mlog = l;
        },
        onFault: (err) => this.fault(conn, entry, err),
        sharedBudget: true,
      });
      if (fd >= 0 && !fdUsed) closeSync(fd);
      if (entry.closed) {
        proxy.close();
        return;
      }
      const faulted = this.recentFaults(proxy.id);
      if (reg.adopt && faulted >= MAPPING_FAULT_LIMIT) {
        proxy.close();
        throw new ProxyError('UPROXY_ERR_INTERNAL', `mapping faulted ${faulted} times within ${MAPPING_FAULT_WINDOW_MS / 1000} s: serve it alone`);
      }
      proxy.state.restarts = this.faults.get(proxy.id)?.total ?? 0;
      entry.proxy = proxy;
      // The same mapping again after its dockerd restarted: it takes over the UDP flows the
      // released one kept, so the container's peers carry on with the same source ports. Before
      // the verdict: a client that hears of the port from dockerd must find its flow there.
      if (!this.handedOver && proxy.open.udp)
        for (const d of this.draining)
          if (d.proxy?.id === proxy.id && d.proxy.target === proxy.target && d.proxy.engine === proxy.engine) {
            const flows = d.proxy.open.udp?.flowsActive ?? 0;
            proxy.open.adopt(d.proxy.open);
            if (flows > 0) this.log.info({ mapping: proxy.id, flows }, 'UDP flows taken over from the released mapping');
            this.drainCheck(); // the released mapping has nothing left: it goes now
          }
      const lfd = proxy.open.listenerFd();
      if (lfd < 0 || !this.ctl.ctlSend(conn, Buffer.from(`${MSG.ready}protocol=${CTL_PROTOCOL}`), lfd)) {
        this.drop(conn, 'shim gone before ready');
        this.ctl.ctlClose(conn);
        return;
      }
      // Registered while a new engine took over: move there too (after the verdict, which the
      // shim waits for before it reads anything else).
      if (this.handedOver) this.ctl.ctlSend(conn, Buffer.from(MSG.move), -1);
      mlog.info({ target: proxy.target, listenFd: proxy.mapping.useListenFd || reg.adopt, engine: proxy.engine, shared: true }, 'proxy ready');
      this.log.info({ mapping: proxy.id, target: proxy.target, readopted: reg.adopt, shimProtocol: reg.protocol }, 'mapping ready');
    } catch (err) {
      if (fd >= 0 && !fdUsed) closeSync(fd);
      const e = toProxyError(err);
      if (mlog.toFile) mlog.error({ code: e.code }, e.message);
      // The shim may have gone meanwhile, and its connection number may now be another shim's
      // (audit N11): answer and close only a connection that is still this registration's.
      if (entry.closed || this.entries.get(conn) !== entry) return;
      this.drop(conn, 'registration failed');
      reply(`${e.exitCode === 2 ? MSG.usage : MSG.failed}${e.message}`);
      this.ctl.ctlClose(conn);
    }
  };

  readonly list = (): EngineListing[] =>
    [...this.entries.values(), ...this.draining].flatMap((e) => {
      const p = e.proxy;
      if (!p) return [];
      const t = p.open.tcp;
      const u = p.open.udp;
      return [
        {
          mapping: p.id,
          target: p.target,
          engine: p.engine,
          listenFd: p.mapping.useListenFd,
          since: new Date(e.since).toISOString(),
          state: e.drainingSince === undefined ? 'serving' : 'draining',
          pid: process.pid,
          version: this.version,
          shimProtocol: e.protocol,
          tcp: t && { accepted: t.accepted, active: t.active, bytesIn: t.bytesIn, bytesOut: t.bytesOut },
          udp: u && { flowsActive: u.flowsActive, flowsCreated: u.flowsCreated, bytesIn: u.bytesIn, bytesOut: u.bytesOut },
        },
      ];
    });

  readonly onMessage = (conn: number, msg: Buffer, fd: number): void => {
    switch (String.fromCharCode(msg[0] ?? 0)) {
      case MSG.register:
      case MSG.adopt:
        // Whatever a registration throws ends that registration, never the engine (audit N3).
        this.register(conn, msg, fd).catch((err: unknown) => {
          this.log.error({ err: toProxyError(err).message }, 'registration failed');
          this.drop(conn, 'registration failed');
          this.ctl.ctlClose(conn);
        });
        return;
      case MSG.stop: // the shim exits once it has B (or after its bound wait)
        this.drop(conn, 'stopped');
        this.ctl.ctlSend(conn, Buffer.from(MSG.stopped), -1);
        this.ctl.ctlClose(conn);
        break;
      case MSG.upgrade: {
        // A new engine took our name (userland-proxy upgrade). Each shim re-registers there
        // and then detaches from us (D): our listeners close only after the new engine accepts
        // on the same sockets, and established connections drain here. Shims too old to move
        // stay with us, served as before.
        this.handedOver = true;
        this.ctl.ctlStopListening();
        this.metricsServer?.close();
        let moving = 0;
        for (const [c, e] of this.entries) if (e.proxy && this.ctl.ctlSend(c, Buffer.from(MSG.move), -1)) moving++;
        // Parked for this very engine (staleInstall): unanswered, each shim registers anew there.
        for (const [c, p] of this.parked) {
          this.parked.delete(c);
          if (p.fd >= 0) closeSync(p.fd);
          this.ctl.ctlClose(c);
        }
        this.log.info({ mappings: moving }, 'a new engine takes over: mappings move');
        this.ctl.ctlSend(conn, Buffer.from(`${MSG.upgrade}${JSON.stringify({ pid: process.pid, version: this.version, mappings: moving })}`), -1);
        this.ctl.ctlClose(conn);
        this.idleCheck();
        break;
      }
      case MSG.detach: // the shim's dockerd died, or it moved to a new engine; then as S
        this.detach(conn);
        this.ctl.ctlSend(conn, Buffer.from(MSG.stopped), -1);
        this.ctl.ctlClose(conn);
        break;
      case MSG.reopen: {
        // logrotate moved the mapping's log file. A reopen that fails (its directory gone)
        // leaves the mapping logging to the old file and serving (audit N3).
        const p = this.entries.get(conn)?.proxy;
        try {
          p?.log.reopen();
        } catch (err) {
          this.log.warn({ mapping: p?.id }, toProxyError(err).message);
        }
        break;
      }
      case MSG.list: {
        // The listing, in parts that fit one message
        const text = JSON.stringify(this.list());
        for (let i = 0; i < text.length; i += ENGINE_LIST_CHUNK)
          this.ctl.ctlSend(conn, Buffer.from(`${MSG.listing}${text.slice(i, i + ENGINE_LIST_CHUNK)}`), -1);
        this.ctl.ctlSend(conn, Buffer.from(MSG.listingEnd), -1);
        this.ctl.ctlClose(conn);
        break;
      }
      default:
        // A message this engine does not know: a shim of another build. Said, and that
        // connection ends (its mapping with it); never ignored.
        this.log.error({ type: msg.subarray(0, 1).toString('latin1') }, 'unknown shim message: connection closed');
        this.drop(conn, 'unknown message');
        this.ctl.ctlClose(conn);
    }
    if (fd >= 0) closeSync(fd);
  };

  /**
   * Every mapping as /metrics sees it. A draining mapping keeps its series under a label of its
   * own: the mapping a restarted dockerd registered for the same port may be serving beside it.
   */
  readonly states = (): MappingState[] => [
    ...[...this.entries.values()].flatMap((e) => (e.proxy ? [e.proxy.state] : [])),
    ...[...this.draining].map((e) => {
      const st = (e.proxy as DockerProxy).state;
      return { ...st, mapping: { ...st.mapping, id: `${st.mapping.id} draining#${e.drainSeq}` }, drainingSince: e.drainingSince };
    }),
  ];

  /** A shim's connection closed (the shim died, or stopped without S): its mapping goes. */
  readonly shimGone = (conn: number): void => {
    const p = this.parked.get(conn);
    if (p && this.parked.delete(conn) && p.fd >= 0) closeSync(p.fd);
    this.drop(conn, 'shim gone');
  };
}

/** Runs the engine until idle or a signal. */
export async function runEngine(argv: readonly string[]): Promise<void> {
  let log: Log = silentLog;
  // Read once: an upgrade replaces package.json under a running engine, which must not then
  // report the new version as its own.
  const version = packageVersion();
  const fdArg = argv.find((a) => a.startsWith('--control-fd='));
  const env = (() => {
    try {
      return readDockerEnv(process.env);
    } catch (err) {
      return die(toProxyError(err).message, log);
    }
  })();
  try {
    log = await createLogger({ level: env.logLevel, file: env.logFile, base: { engine: 'shared' } });
  } catch (err) {
    die(toProxyError(err).message, log);
  }
  const ctl = control();
  if (typeof ctl === 'string') die(ctl, log);
  const budget = FdBudget.forProcess(env.metrics ? METRICS_MAX_CONNECTIONS + 1 : 0, nativeLoadable());
  const engine = new SharedEngine(log, env, ctl, budget, version);
  const stop = (signal: NodeJS.Signals): void => engine.exit(signal);
  process.on('SIGINT', stop);
  process.on('SIGTERM', stop);
  releaseSignals('SIGINT', 'SIGTERM');
  exitOnInternalError(() => ({ log, prefix: ENGINE_PREFIX }));

  // --take-over (userland-proxy upgrade): our listening socket replaces the running engine's name
  // first; shims queue in its backlog while the old engine frees the metrics port.
  let source: number | string = fdArg ? Number(fdArg.slice('--control-fd='.length)) : engineSocketName();
  if (argv.includes('--take-over')) {
    try {
      const [fd, answer] = ctl.ctlTakeOver(engineSocketName(), TAKE_OVER_TIMEOUT_MS);
      source = fd;
      const from = answer[0]?.[0] === MSG.upgrade.charCodeAt(0) ? answer[0].subarray(1).toString() : null;
      log.info({ from: from && JSON.parse(from) }, from ? 'took over from the running engine' : 'no engine handed over');
    } catch (err) {
      die(`cannot take over: ${(err as Error).message}`, log);
    }
  }
  // /metrics is up before the first registration is read: a mapping reported ready to its shim
  // (and to dockerd) is already on the endpoint. Shims meanwhile wait in the control backlog.
  if (env.metrics) {
    try {
      const { startEndpoint } = await import('../metrics/metrics-server.js');
      engine.metricsServer = await startEndpoint({ ...env.metrics, states: engine.states, source: { refreshStats: async () => {}, down: [] }, onReload: null });
    } catch (err) {
      // The data path matters more than its metrics: serve on, and say why there are none.
      log.error({ metrics: env.metrics }, `no metrics endpoint: ${toProxyError(err).message}`);
    }
  }
  try {
    ctl.ctlListen(source, engine.onMessage, engine.shimGone);
  } catch (err) {
    const m = (err as Error).message;
    die(/Address already in use/.test(m) ? `an engine already serves ${ctl.ctlPath(String(source))} in this network namespace` : m, log);
  }
  engine.idleCheck();
  log.info({ version, control: typeof source === 'number' ? `fd ${source}` : ctl.ctlPath(source), fdLimit: budget.limit }, 'engine ready');
}
