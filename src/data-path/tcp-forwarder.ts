/**
 * TCP forwarding: one upstream connection per accepted client, bytes relayed both ways with
 * backpressure, half-close propagated, resets propagated. This file holds the accept pipeline
 * and the accounting of the JavaScript engine; the dial is tcp-dial.ts, the data path
 * tcp-js-path.ts (relay.ts). On the native engine all of it runs in C on the native thread
 * (tcp-native-path.ts, native/accept.c and native/tcp.c), with the same semantics.
 *
 * Semantics (docker-proxy's, plus fixes):
 * - TCP_NODELAY on both sides and 15 s keepalive on the client side: Go's defaults.
 * - A client FIN becomes an upstream FIN (shutdown(SHUT_WR)) and vice versa; both sockets close
 *   only when both directions are done (libnetwork#1598).
 * - A failed dial closes the client at once: FIN (as docker-proxy) for a client that sent nothing,
 *   a reset for one whose bytes were read and now cannot be delivered.
 * - A forced close (idle or linger timeout, drain timeout, stop) of a connection with bytes still
 *   queued towards either side is a reset, never a FIN: a truncated stream must not look
 *   complete. "Idle" means no byte moved either way, reads and writes both.
 * - A reset or error on one side resets the other: a truncated stream must never look like a
 *   complete one (docker-proxy turns an upstream RST into a clean FIN).
 * - Accept errors (EMFILE, ENFILE, ...) never stop the listener. Every connection takes the fds
 *   its engine holds from the process budget (fd-limit.ts) before dialling, so excess clients are
 *   refused at once, counted and logged (rate-limited) before EMFILE can happen; if it happens
 *   anyway libuv's reserve-fd trick closes the pending connections and we keep serving.
 *   docker-proxy exits here and the port goes dead.
 * - Memory per connection is bounded: a direction stops reading when its destination holds more
 *   than its high-water mark (16 KiB on Node 20) plus one read buffer (relay.ts).
 */
import { createServer, type AddressInfo, type Server, type Socket } from 'node:net';
import { CLIENT_KEEPALIVE_MS } from '../core/constants.js';
import { isAllowed } from '../core/access-list.js';
import { observe } from '../core/histogram.js';
import { RateLimitedLog } from '../core/logger.js';
import { TCP_CONNECTION_FDS } from '../core/fd-limit.js';
import { JsPath } from './tcp-js-path.js';
import { NativeListener } from './tcp-native-path.js';
import { isUnixServer, serverFd } from '../core/node-internals.js';
import { newTcpStats, type TcpForwarderOptions, type TcpPath, type TcpPathContext, type TcpStats, type TcpWarning } from './tcp-types.js';

/** Creates the listening server with the socket options every accepted client needs. */
export function createTcpServer(): Server {
  return createServer({
    allowHalfOpen: true,
    pauseOnConnect: true,
    noDelay: true,
    keepAlive: true,
    keepAliveInitialDelay: CLIENT_KEEPALIVE_MS,
  });
}

/**
 * Forwards every connection accepted on a listening server to one target. On the JavaScript
 * engine the server accepts; on the native engine the native thread takes the listening socket
 * the moment it listens (before libuv's poll phase could accept on it) and the server's own
 * handle is closed.
 */
export class TcpForwarder implements TcpPathContext {
  readonly stats: TcpStats;
  readonly targetText: string;
  readonly opts: TcpForwarderOptions;
  readonly #limited: RateLimitedLog;
  readonly #server: Server;
  readonly #path: TcpPath | null = null;
  #native: NativeListener | null = null;
  /** Why the native thread could not take the listener (the mapping then fails to open). */
  startError: Error | null = null;
  /** The port it listens on, once listening (the server's handle is gone on the native engine). */
  port = 0;

  constructor(server: Server, opts: TcpForwarderOptions) {
    this.#server = server;
    this.opts = opts;
    this.stats = opts.stats ?? newTcpStats();
    this.targetText = `${opts.target.address}:${opts.targetPort}`;
    this.#limited = new RateLimitedLog(opts.log);
    if (opts.engine === 'native') {
      server.once('listening', () => {
        if (isUnixServer(server)) return; // listenTcp refuses it
        this.port = (server.address() as AddressInfo).port;
        try {
          this.#native = new NativeListener(this, serverFd(server));
        } catch (err) {
          this.startError = err as Error;
        }
        // The native thread holds its own copy of the socket (or the mapping fails to open).
        server.close();
      });
      return;
    }
    this.#path = new JsPath(this);
    server.on('connection', (client: Socket) => {
      try {
        this.#onConnection(client);
      } catch (err) {
        this.fault(err);
      }
    });
    // Listen errors belong to whoever starts the server; once listening, only accept errors
    // arrive here, and the listener itself stays up.
    server.once('listening', () => {
      this.port = isUnixServer(server) ? 0 : (server.address() as AddressInfo).port; // listenTcp refuses a unix socket
      server.on('error', (err: NodeJS.ErrnoException) => {
        this.stats.acceptErrors++;
        this.warnError('accept', err.code, err.message);
      });
    });
  }

  /** Stops accepting and destroys every open connection (docker-proxy semantics: no drain). */
  close(): void {
    this.stopAccepting();
    this.#path?.close();
    this.#native?.close();
  }

  /** Stops accepting; open connections carry on (graceful drain). */
  stopAccepting(): void {
    if (this.#server.listening) this.#server.close();
    this.#native?.stopAccepting();
  }

  /** The listening socket's fd (the shared engine hands a copy to the shim); -1 if none. */
  listenerFd(): number {
    return this.#native ? this.#native.fd() : serverFd(this.#server);
  }

  end(acceptedAt: number, connected: boolean, aborted: boolean): void {
    const stats = this.stats;
    stats.active--;
    this.opts.budget?.give(TCP_CONNECTION_FDS);
    if (connected) observe(stats.connectionDuration, (performance.now() - acceptedAt) / 1000);
    if (aborted) stats.aborted++;
  }

  fault(err: unknown): void {
    const sink = this.opts.onFault;
    if (!sink) throw err;
    sink(err);
  }

  timedOut(kind: 'idle' | 'linger'): void {
    if (kind === 'idle') this.stats.idleTimeouts++;
    else this.stats.lingerTimeouts++;
    this.warn(kind);
  }

  warn(kind: TcpWarning, client?: string): void {
    this.#limited.warn(...this.#warning(kind, client));
  }

  /** A warning's rate-limit key, fields and message. */
  #warning(kind: TcpWarning, client: string | undefined): [string, object, string] {
    const o = this.opts;
    switch (kind) {
      case 'limit':
        return ['limit', { maxConnections: o.maxConnections }, 'connection limit reached; refusing new connections'];
      case 'blocked':
        return ['blocked', { client }, 'connection refused by the access lists'];
      case 'fdBudget':
        return ['fd-budget', { fdBudget: o.budget?.limit }, 'file descriptor budget of the process spent; refusing new connections'];
      case 'idle':
        return ['idle-timeout', { idleTimeoutMs: o.idleTimeoutMs }, 'closing idle connections (idle timeout)'];
      case 'linger':
        return ['linger-timeout', { lingerTimeoutMs: o.lingerTimeoutMs }, 'closing idle half-closed connections (linger timeout)'];
      case 'connectTimeout':
        return ['connect:timeout', { target: this.targetText, connectTimeoutMs: o.connectTimeoutMs }, 'connect to target timed out; closing client'];
    }
  }

  warnError(op: 'accept' | 'connect' | 'timeWait', code: string | undefined, err: string): void {
    if (op === 'accept') this.#limited.warn(`accept:${code}`, { err }, 'accept failed; still listening');
    else if (op === 'timeWait')
      this.#limited.warn(
        `time-wait:${code}`,
        { target: this.targetText, err },
        'cannot end TIME_WAIT toward the target (needs CAP_NET_ADMIN and CONFIG_INET_DIAG_DESTROY); connections closed by clients first hold a local port for 60 s (docs/forwarding.md)',
      );
    else this.#limited.warn(`connect:${code}`, { target: this.targetText, err }, 'cannot connect to target; closing client');
  }

  /** The accept pipeline: connection cap, access lists, fd budget, then the engine's path. */
  #onConnection(accepted: Socket): void {
    const stats = this.stats;
    const { maxConnections, access, budget } = this.opts;
    if (maxConnections != null && stats.active >= maxConnections) {
      stats.rejectedLimit++;
      this.warn('limit');
      accepted.destroy();
      return;
    }
    if (access && !isAllowed(access, accepted.remoteAddress)) {
      stats.rejectedBlocked++;
      this.warn('blocked', accepted.remoteAddress);
      // A reset, not a clean close: the client must not mistake this for an empty answer.
      accepted.resetAndDestroy();
      return;
    }
    if (budget && !budget.take(TCP_CONNECTION_FDS)) {
      stats.rejectedLimit++;
      this.warn('fdBudget');
      accepted.destroy();
      return;
    }
    stats.accepted++;
    stats.active++;
    this.#path?.forward(accepted, performance.now());
  }
}
