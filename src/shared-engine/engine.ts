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
import { readDockerEnv } from '../docker/docker-env.js';
import { openDockerMapping, type DockerProxy } from '../docker/docker-mapping.js';
import { parseDockerArgs } from '../docker/docker-flags.js';
import { releaseSignals } from '../core/early-signals.js';
import { exitOnInternalError, exitWith } from '../core/lifecycle.js';
import { control, engineSocketName, MSG, parseRegistration, type EngineListing } from './engine-protocol.js';
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
  const entries = new Map<number, Entry>();
  /** Mappings whose dockerd died: no shim, no listener, connections finishing. */
  const draining = new Set<Entry>();
  let drainTimer: NodeJS.Timeout | null = null;
  let drains = 0;
  let idleTimer: NodeJS.Timeout | null = null;
  let exiting = false;
  /** A new engine took our name (U): we exit once our last mapping moved or drained. */
  let handedOver = false;
  let metricsServer: { close(): void } | null = null;

  const exit = (why: string): void => {
    if (exiting) return;
    exiting = true;
    ctl.ctlStopListening();
    for (const e of [...entries.values(), ...draining]) e.proxy?.close();
    log.info({ mappings: entries.size }, `engine stopping: ${why}`);
    log.flush();
    process.exit(0);
  };
  const idleCheck = (): void => {
    if (handedOver && entries.size + draining.size === 0) {
      exit('handed over to a new engine');
      return;
    }
    if (entries.size + draining.size > 0 || exiting) {
      if (idleTimer) clearTimeout(idleTimer);
      idleTimer = null;
      return;
    }
    idleTimer ??= setTimeout(() => exit('no mapping left'), env.sharedIdleTimeoutMs);
  };
  /** Per mapping id: its faults (the metric) and when the recent ones happened. */
  const faults = new Map<string, { total: number; recent: number[] }>();
  /**
   * Blast radius: an exception thrown by one mapping's code (a handler of its sockets or timers,
   * forward.ts onFault) ends that mapping alone, never the engine. It is logged and counted
   * (userland_proxy_worker_restarts_total), closed whole (its connections with it), and its shim,
   * seeing its control connection close, registers it again on the socket it holds: the port is
   * never unbound. A mapping that keeps faulting is refused (register), and served alone.
   */
  const fault = (conn: number, entry: Entry, err: unknown): void => {
    if (entry.faulted) return;
    entry.faulted = true;
    const id = entry.proxy?.id ?? 'registering';
    const f = faults.get(id) ?? { total: 0, recent: [] };
    f.total++;
    f.recent.push(Date.now());
    faults.set(id, f);
    const e = toProxyError(err);
    log.error({ mapping: id, code: e.code, stack: (err as Error | null)?.stack }, `mapping fault, mapping closed (its shim registers it again): ${e.message}`);
    // Out of the failing callback's stack.
    setImmediate(() => {
      if (draining.delete(entry)) {
        entry.proxy?.close();
        idleCheck();
      } else if (entries.get(conn) === entry) {
        drop(conn, 'fault');
        ctl.ctlClose(conn);
      }
    });
  };
  /** How many times a mapping faulted within the window (older ones forgotten). */
  const recentFaults = (id: string): number => {
    const f = faults.get(id);
    if (!f) return 0;
    const since = Date.now() - MAPPING_FAULT_WINDOW_MS;
    f.recent = f.recent.filter((t) => t >= since);
    return f.recent.length;
  };

  const drop = (conn: number, why: string): void => {
    const e = entries.get(conn);
    if (!e) return;
    entries.delete(conn);
    e.closed = true;
    e.proxy?.close();
    budget.give(1);
    if (e.proxy) log.info({ mapping: e.proxy.id, why }, 'mapping closed');
    idleCheck();
  };

  // A draining mapping ends with its last connection, or at its drain limit (resets where bytes
  // are pending, as any forced close).
  const drainCheck = (): void => {
    const now = Date.now();
    for (const e of draining) {
      const p = e.proxy as DockerProxy;
      const left = (p.open.tcp?.active ?? 0) + (p.open.udp?.flowsActive ?? 0);
      const over = now - (e.drainingSince ?? now) >= p.env.sharedDrainTimeoutMs;
      if (left > 0 && !over) continue;
      draining.delete(e);
      p.close();
      log.info({ mapping: p.id, connections: left }, over ? 'drain limit reached: closing what is left' : 'drained');
    }
    if (draining.size === 0 && drainTimer) {
      clearInterval(drainTimer);
      drainTimer = null;
    }
    idleCheck();
  };
  /**
   * D: the shim's dockerd died (its parent is gone: Pdeathsig). The port must be free at once for
   * a restarted dockerd, but established connections need not die with dockerd (docker-proxy's
   * do): the listener closes, TCP connections drain; a later registration of the same port is a
   * new mapping beside it. UDP flows live on too (each keeps its socket toward the container) and
   * the same mapping registered again adopts them: replies then leave from its socket.
   * After U (moving to a new engine that reads the same sockets), both drain here.
   */
  const detach = (conn: number): void => {
    const e = entries.get(conn);
    const p = e?.proxy;
    const left = (p?.open.tcp?.active ?? 0) + (p?.open.udp?.flowsActive ?? 0);
    // Its textfile is its successor's: the new engine's mapping, or the restarted dockerd's.
    p?.retire(!handedOver);
    if (!e || !p || left === 0) {
      drop(conn, handedOver ? 'moved to the new engine' : 'dockerd gone');
      return;
    }
    entries.delete(conn);
    budget.give(1);
    if (handedOver) p.open.handOver();
    else p.open.release();
    e.drainingSince = Date.now();
    e.drainSeq = ++drains;
    draining.add(e);
    log.info(
      { mapping: p.id, left, drainTimeoutMs: p.env.sharedDrainTimeoutMs },
      handedOver ? 'moved: connections and flows drain here' : 'dockerd gone: port freed, connections draining',
    );
    drainTimer ??= setInterval(drainCheck, SHARED_DRAIN_CHECK_MS);
  };

  /**
   * Audit N9: install.sh replaces the tree in place and then runs `upgrade`. Should that not
   * happen (it failed, or the tree was replaced by other means), the first registration that
   * finds another version installed makes this engine start its successor, as `upgrade` would,
   * and every registration waits (parked, unanswered) until it takes over: on U each is closed
   * unanswered, and its shim, as after any engine's exit, registers with the name's new holder.
   * A successor that fails to take over in time leaves us serving them, once (no retry loop).
   */
  const parked = new Map<number, { msg: Buffer; fd: number }>();
  let successor: 'none' | 'starting' | 'failed' = 'none';
  const staleInstall = (): boolean => {
    if (successor !== 'none' || handedOver) return successor === 'starting' && !handedOver;
    const installed = installedVersion();
    if (installed === version || installed === 'unknown') return false;
    successor = 'starting';
    log.warn({ running: version, installed }, 'another version is installed: its engine takes over from this one');
    const giveUp = (why: string): void => {
      clearTimeout(timer);
      if (successor !== 'starting' || handedOver) return;
      successor = 'failed';
      log.error({ installed, parked: parked.size }, `the installed version's engine did not take over (${why}): serving on`);
      for (const [c, p] of parked) {
        parked.delete(c);
        onMessage(c, p.msg, p.fd);
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

  const register = async (conn: number, msg: Buffer, fd: number): Promise<void> => {
    if (staleInstall()) {
      parked.set(conn, { msg, fd });
      return;
    }
    const reg = parseRegistration(msg);
    let fdUsed = false;
    const reply = (text: string): void => {
      ctl.ctlSend(conn, Buffer.from(text), -1);
    };
    if (entries.has(conn) || reg === null) {
      if (fd >= 0) closeSync(fd);
      // ctlClose reports no close: a mapping this connection already holds goes with it here.
      drop(conn, 'malformed registration');
      reply(`${MSG.failed}malformed registration`);
      ctl.ctlClose(conn);
      return;
    }
    // The control connection is an fd of this process too.
    if (!budget.take(1)) {
      if (fd >= 0) closeSync(fd);
      reply(`${MSG.failed}file descriptor budget spent: ${budget.used} of ${budget.limit} taken (raise RLIMIT_NOFILE)`);
      ctl.ctlClose(conn);
      return;
    }
    const entry: Entry = { proxy: null, closed: false, since: Date.now(), protocol: reg.protocol };
    entries.set(conn, entry);
    idleCheck();
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
        budget,
        onLog: (l) => {
          mlog = l;
        },
        onFault: (err) => fault(conn, entry, err),
        sharedBudget: true,
      });
      if (fd >= 0 && !fdUsed) closeSync(fd);
      if (entry.closed) {
        proxy.close();
        return;
      }
      const faulted = recentFaults(proxy.id);
      if (reg.adopt && faulted >= MAPPING_FAULT_LIMIT) {
        proxy.close();
        throw new ProxyError('UPROXY_ERR_INTERNAL', `mapping faulted ${faulted} times within ${MAPPING_FAULT_WINDOW_MS / 1000} s: serve it alone`);
      }
      proxy.state.restarts = faults.get(proxy.id)?.total ?? 0;
      entry.proxy = proxy;
      // The same mapping again after its dockerd restarted: it takes over the UDP flows the
      // released one kept, so the container's peers carry on with the same source ports. Before
      // the verdict: a client that hears of the port from dockerd must find its flow there.
      if (!handedOver && proxy.open.udp)
        for (const d of draining)
          if (d.proxy?.id === proxy.id && d.proxy.target === proxy.target && d.proxy.engine === proxy.engine) {
            const flows = d.proxy.open.udp?.flowsActive ?? 0;
            proxy.open.adopt(d.proxy.open);
            if (flows > 0) log.info({ mapping: proxy.id, flows }, 'UDP flows taken over from the released mapping');
            drainCheck(); // the released mapping has nothing left: it goes now
          }
      const lfd = proxy.open.listenerFd();
      if (lfd < 0 || !ctl.ctlSend(conn, Buffer.from(`${MSG.ready}protocol=${CTL_PROTOCOL}`), lfd)) {
        drop(conn, 'shim gone before ready');
        ctl.ctlClose(conn);
        return;
      }
      // Registered while a new engine took over: move there too (after the verdict, which the
      // shim waits for before it reads anything else).
      if (handedOver) ctl.ctlSend(conn, Buffer.from(MSG.move), -1);
      mlog.info({ target: proxy.target, listenFd: proxy.mapping.useListenFd || reg.adopt, engine: proxy.engine, shared: true }, 'proxy ready');
      log.info({ mapping: proxy.id, target: proxy.target, readopted: reg.adopt, shimProtocol: reg.protocol }, 'mapping ready');
    } catch (err) {
      if (fd >= 0 && !fdUsed) closeSync(fd);
      const e = toProxyError(err);
      if (mlog.toFile) mlog.error({ code: e.code }, e.message);
      // The shim may have gone meanwhile, and its connection number may now be another shim's
      // (audit N11): answer and close only a connection that is still this registration's.
      if (entry.closed || entries.get(conn) !== entry) return;
      drop(conn, 'registration failed');
      reply(`${e.exitCode === 2 ? MSG.usage : MSG.failed}${e.message}`);
      ctl.ctlClose(conn);
    }
  };

  const listing = (): EngineListing[] =>
    [...entries.values(), ...draining].flatMap((e) => {
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
          version,
          shimProtocol: e.protocol,
          tcp: t && { accepted: t.accepted, active: t.active, bytesIn: t.bytesIn, bytesOut: t.bytesOut },
          udp: u && { flowsActive: u.flowsActive, flowsCreated: u.flowsCreated, bytesIn: u.bytesIn, bytesOut: u.bytesOut },
        },
      ];
    });

  const onMessage = (conn: number, msg: Buffer, fd: number): void => {
    switch (String.fromCharCode(msg[0] ?? 0)) {
      case MSG.register:
      case MSG.adopt:
        // Whatever a registration throws ends that registration, never the engine (audit N3).
        register(conn, msg, fd).catch((err: unknown) => {
          log.error({ err: toProxyError(err).message }, 'registration failed');
          drop(conn, 'registration failed');
          ctl.ctlClose(conn);
        });
        return;
      case MSG.stop: // the shim exits once it has B (or after its bound wait)
        drop(conn, 'stopped');
        ctl.ctlSend(conn, Buffer.from(MSG.stopped), -1);
        ctl.ctlClose(conn);
        break;
      case MSG.upgrade: {
        // A new engine took our name (userland-proxy upgrade). Each shim re-registers there
        // and then detaches from us (D): our listeners close only after the new engine accepts
        // on the same sockets, and established connections drain here. Shims too old to move
        // stay with us, served as before.
        handedOver = true;
        ctl.ctlStopListening();
        metricsServer?.close();
        let moving = 0;
        for (const [c, e] of entries) if (e.proxy && ctl.ctlSend(c, Buffer.from(MSG.move), -1)) moving++;
        // Parked for this very engine (staleInstall): unanswered, each shim registers anew there.
        for (const [c, p] of parked) {
          parked.delete(c);
          if (p.fd >= 0) closeSync(p.fd);
          ctl.ctlClose(c);
        }
        log.info({ mappings: moving }, 'a new engine takes over: mappings move');
        ctl.ctlSend(conn, Buffer.from(`${MSG.upgrade}${JSON.stringify({ pid: process.pid, version, mappings: moving })}`), -1);
        ctl.ctlClose(conn);
        idleCheck();
        break;
      }
      case MSG.detach: // the shim's dockerd died, or it moved to a new engine; then as S
        detach(conn);
        ctl.ctlSend(conn, Buffer.from(MSG.stopped), -1);
        ctl.ctlClose(conn);
        break;
      case MSG.reopen: {
        // logrotate moved the mapping's log file. A reopen that fails (its directory gone)
        // leaves the mapping logging to the old file and serving (audit N3).
        const p = entries.get(conn)?.proxy;
        try {
          p?.log.reopen();
        } catch (err) {
          log.warn({ mapping: p?.id }, toProxyError(err).message);
        }
        break;
      }
      case MSG.list: {
        // The listing, in parts that fit one message
        const text = JSON.stringify(listing());
        for (let i = 0; i < text.length; i += ENGINE_LIST_CHUNK) ctl.ctlSend(conn, Buffer.from(`${MSG.listing}${text.slice(i, i + ENGINE_LIST_CHUNK)}`), -1);
        ctl.ctlSend(conn, Buffer.from(MSG.listingEnd), -1);
        ctl.ctlClose(conn);
        break;
      }
      default:
        // A message this engine does not know: a shim of another build. Said, and that
        // connection ends (its mapping with it); never ignored.
        log.error({ type: msg.subarray(0, 1).toString('latin1') }, 'unknown shim message: connection closed');
        drop(conn, 'unknown message');
        ctl.ctlClose(conn);
    }
    if (fd >= 0) closeSync(fd);
  };

  const stop = (signal: NodeJS.Signals): void => exit(signal);
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
    // A draining mapping keeps its series under a label of its own: the mapping a restarted dockerd
    // registered for the same port may be serving beside it.
    const states = (): MappingState[] => [
      ...[...entries.values()].flatMap((e) => (e.proxy ? [e.proxy.state] : [])),
      ...[...draining].map((e) => {
        const st = (e.proxy as DockerProxy).state;
        return { ...st, mapping: { ...st.mapping, id: `${st.mapping.id} draining#${e.drainSeq}` }, drainingSince: e.drainingSince };
      }),
    ];
    try {
      const { startEndpoint } = await import('../metrics/metrics-server.js');
      metricsServer = await startEndpoint({ ...env.metrics, states, source: { refreshStats: async () => {}, down: [] }, onReload: null });
    } catch (err) {
      // The data path matters more than its metrics: serve on, and say why there are none.
      log.error({ metrics: env.metrics }, `no metrics endpoint: ${toProxyError(err).message}`);
    }
  }
  try {
    ctl.ctlListen(source, onMessage, (conn) => {
      const p = parked.get(conn);
      if (p && parked.delete(conn) && p.fd >= 0) closeSync(p.fd);
      drop(conn, 'shim gone');
    });
  } catch (err) {
    const m = (err as Error).message;
    die(/Address already in use/.test(m) ? `an engine already serves ${ctl.ctlPath(String(source))} in this network namespace` : m, log);
  }
  idleCheck();
  log.info({ version, control: typeof source === 'number' ? `fd ${source}` : ctl.ctlPath(source), fdLimit: budget.limit }, 'engine ready');
}
