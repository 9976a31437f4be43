/**
 * TCP forwarding: one upstream connection per accepted client, bytes relayed both ways with
 * backpressure, half-close propagated, resets propagated.
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
import { connect, createServer, type Server, type Socket } from 'node:net';
import type { IpAddress } from './address.js';
import { CLIENT_KEEPALIVE_MS, NATIVE_PIPE_MAX, NATIVE_PIPE_MIN, RELAY_HIGH_WATER_MARK, RELAY_IDLE_SWEEP_MS } from './constants.js';
import { isAllowed, type AccessRules } from './access-list.js';
import { proxyHeader, type ProxyProtocol } from './proxy-protocol.js';
import { CONNECT_BUCKETS, LIFETIME_BUCKETS, newHistogram, observe, type PlainHistogram } from './histogram.js';
import { RateLimitedLog, type Log } from './logger.js';
import { Pump } from './relay.js';
import { CLOSE_REASON, nativeTcp, type EngineName, type NativeTcp } from './native-engine.js';
import { TCP_CONNECTION_FDS, type FdBudget } from './fd-limit.js';
import { adoptAccepted, socketFd, stopReading } from './node-internals.js';

/** Plain-number counters, read by metrics at scrape time (never prom-client on the hot path). */
export interface TcpStats {
  accepted: number;
  active: number;
  acceptErrors: number;
  /** Failed dials to the target, by reason. */
  connectErrors: { refused: number; timeout: number; unreachable: number; other: number };
  /** Dial time of successful upstream connections, seconds. */
  connectDuration: PlainHistogram;
  /** Lifetime of forwarded connections, accept to close, seconds. */
  connectionDuration: PlainHistogram;
  /** Client to upstream. */
  bytesIn: number;
  /** Upstream to client. */
  bytesOut: number;
  /** Times reading from the client paused because the upstream was slow, and the reverse. */
  pausesClient: number;
  pausesUpstream: number;
  /** Connections torn down by a reset or error rather than a clean double close. */
  aborted: number;
  /** Connections refused at once because the connection cap was reached. */
  rejectedLimit: number;
  /** Connections refused at once by the allow/deny lists. */
  rejectedBlocked: number;
  /** Connections closed after the idle timeout with no byte either way. */
  idleTimeouts: number;
  /** Half-closed connections closed after the linger timeout with no byte either way. */
  lingerTimeouts: number;
}

/** Fresh zeroed counters. */
export function newTcpStats(): TcpStats {
  return {
    accepted: 0, active: 0, acceptErrors: 0, connectErrors: { refused: 0, timeout: 0, unreachable: 0, other: 0 },
    connectDuration: newHistogram(CONNECT_BUCKETS), connectionDuration: newHistogram(LIFETIME_BUCKETS), bytesIn: 0, bytesOut: 0,
    pausesClient: 0, pausesUpstream: 0, aborted: 0, rejectedLimit: 0, rejectedBlocked: 0, idleTimeouts: 0, lingerTimeouts: 0,
  };
}

/** Options of TcpForwarder. */
export interface TcpForwarderOptions {
  target: IpAddress;
  targetPort: number;
  log: Log;
  stats?: TcpStats;
  /** Refuse (accept and close at once) connections beyond this many; null: no cap. */
  maxConnections?: number | null;
  /** The process fd budget every connection takes its fds from; null: unbounded. */
  budget?: FdBudget | null;
  /** Unsent bytes one socket may hold before its source stops reading (default 1 MiB). */
  maxBufferBytes?: number;
  /** PROXY protocol header sent to the target first (default off). */
  proxyProtocol?: ProxyProtocol;
  /** Allow/deny lists checked before dialling; null: everyone. */
  access?: AccessRules | null;
  /** Give up a dial after this long (0: wait for the kernel, as docker-proxy does). */
  connectTimeoutMs?: number;
  /** Close a connection with no byte either way for this long (0: never, docker-proxy's way). */
  idleTimeoutMs?: number;
  /** Close a half-closed connection with no byte either way for this long (0: never). */
  lingerTimeoutMs?: number;
  /** Period of the sweep (idle buffers and timeouts); derived from the timeouts when absent. */
  idleSweepMs?: number;
  /** Data path after the dial: 'js' (relay.ts) or 'native' (splice, native/). */
  engine?: EngineName;
}

/** A live connection as the sweep sees it. */
interface Conn {
  client: Socket;
  upstream: Socket;
  up: Pump;
  down: Pump;
  idleMs: number;
}

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

/** Forwards every connection accepted on a listening server to one target. */
export class TcpForwarder {
  readonly stats: TcpStats;
  readonly #server: Server;
  readonly #opts: TcpForwarderOptions;
  readonly #limited: RateLimitedLog;
  /** Write high-water mark of both sockets of every connection. */
  readonly #highWaterMark: number;
  /** Every live connection (for the sweep and for close()). */
  readonly #live = new Set<Conn>();
  #sweep: NodeJS.Timeout | null = null;
  readonly #sweepMs: number;
  /** The native data path, when the engine is native. */
  readonly #native: NativeTcp | null = null;
  /** Connections handed to the native thread: id -> accept time (ms, performance.now()). */
  readonly #handedOff = new Map<number, number>();
  /** Native-path connections still dialling: [client, upstream]. */
  readonly #dialing = new Set<[Socket, Socket]>();
  #nextId = 1;
  /** fds one connection takes from the budget (what its engine holds at most). */
  readonly #fds: number;

  constructor(server: Server, opts: TcpForwarderOptions) {
    this.#server = server;
    this.#opts = opts;
    this.stats = opts.stats ?? newTcpStats();
    this.#limited = new RateLimitedLog(opts.log);
    this.#highWaterMark = opts.maxBufferBytes ?? RELAY_HIGH_WATER_MARK;
    const timeouts = [opts.idleTimeoutMs ?? 0, opts.lingerTimeoutMs ?? 0].filter((t) => t > 0).map((t) => Math.max(25, Math.floor(t / 4)));
    this.#sweepMs = opts.idleSweepMs ?? Math.min(RELAY_IDLE_SWEEP_MS, ...timeouts);
    if (opts.engine === 'native') {
      const pipeBytes = Math.min(NATIVE_PIPE_MAX, Math.max(NATIVE_PIPE_MIN, this.#highWaterMark));
      this.#native = nativeTcp(this.stats, opts.idleTimeoutMs ?? 0, opts.lingerTimeoutMs ?? 0, pipeBytes, (id, reason) => this.#onNativeClose(id, reason));
    }
    this.#fds = TCP_CONNECTION_FDS[this.#native ? 'native' : 'js'];
    server.on('connection', (client: Socket) => this.#onConnection(client));
    // Listen errors belong to whoever starts the server; once listening, only accept errors
    // arrive here, and the listener itself stays up.
    server.once('listening', () => {
      server.on('error', (err: NodeJS.ErrnoException) => {
        this.stats.acceptErrors++;
        this.#limited.warn(`accept:${err.code}`, { err: err.message }, 'accept failed; still listening');
      });
    });
  }

  /** Stops accepting and destroys every open connection (docker-proxy semantics: no drain). */
  close(): void {
    if (this.#sweep) clearInterval(this.#sweep);
    this.stopAccepting();
    if (this.#native) {
      this.#native.close();
      for (const acceptedAt of this.#handedOff.values()) this.#finishNative(acceptedAt, CLOSE_REASON.closed);
      this.#handedOff.clear();
      for (const [client, upstream] of this.#dialing) {
        client.destroy();
        upstream.destroy();
      }
    }
    for (const c of this.#live) this.#expire(c);
  }

  /**
   * The periodic sweep: idle directions holding big read buffers get small ones again (see
   * relay.ts), and connections past the idle or the half-close linger timeout are closed.
   * Activity is "a byte was read either way", counted per sweep: no timer per connection.
   */
  sweep(): void {
    const { idleTimeoutMs = 0, lingerTimeoutMs = 0 } = this.#opts;
    for (const c of this.#live) {
      const reads = c.up.sweep() + c.down.sweep();
      c.idleMs = reads > 0 ? 0 : c.idleMs + this.#sweepMs;
      if (idleTimeoutMs > 0 && c.idleMs >= idleTimeoutMs) {
        this.#timedOut('idle');
        this.#expire(c);
      } else if ((c.client.readableEnded || c.upstream.readableEnded) && lingerTimeoutMs > 0 && c.idleMs >= lingerTimeoutMs) {
        this.#timedOut('linger');
        this.#expire(c);
      }
    }
  }

  /** Counts and logs (once per burst) a connection closed by the idle or linger timeout. */
  #timedOut(kind: 'idle' | 'linger'): void {
    if (kind === 'idle') {
      this.stats.idleTimeouts++;
      this.#limited.warn('idle-timeout', { idleTimeoutMs: this.#opts.idleTimeoutMs }, 'closing idle connections (idle timeout)');
    } else {
      this.stats.lingerTimeouts++;
      this.#limited.warn('linger-timeout', { lingerTimeoutMs: this.#opts.lingerTimeoutMs }, 'closing idle half-closed connections (linger timeout)');
    }
  }

  /** Forced close: FIN when nothing is queued either way, else a reset of both sides. */
  #expire(c: Conn): void {
    this.#live.delete(c);
    if (c.up.pending + c.down.pending + c.client.writableLength + c.upstream.writableLength > 0) {
      c.upstream.resetAndDestroy();
      c.client.resetAndDestroy();
    } else {
      c.upstream.destroy();
      c.client.destroy();
    }
  }

  /** Stops accepting; open connections carry on (graceful drain). */
  stopAccepting(): void {
    if (this.#server.listening) this.#server.close();
  }

  #onConnection(accepted: Socket): void {
    const stats = this.stats;
    const { maxConnections } = this.#opts;
    if (maxConnections != null && stats.active >= maxConnections) {
      stats.rejectedLimit++;
      this.#limited.warn('limit', { maxConnections }, 'connection limit reached; refusing new connections');
      accepted.destroy();
      return;
    }
    const { access } = this.#opts;
    if (access && !isAllowed(access, accepted.remoteAddress)) {
      stats.rejectedBlocked++;
      this.#limited.warn('blocked', { client: accepted.remoteAddress }, 'connection refused by the access lists');
      // A reset, not a clean close: the client must not mistake this for an empty answer.
      accepted.resetAndDestroy();
      return;
    }
    const { budget } = this.#opts;
    if (budget && !budget.take(this.#fds)) {
      stats.rejectedLimit++;
      this.#limited.warn('fd-budget', { fdBudget: budget.limit }, 'file descriptor budget of the process spent; refusing new connections');
      accepted.destroy();
      return;
    }
    if (this.#native) this.#forwardNative(accepted);
    else this.#forwardJs(accepted);
  }

  /**
   * The native data path: JavaScript accepts, filters, dials and writes any PROXY header, then
   * hands both sockets to the native thread (splice) and destroys its Socket objects. While the
   * dial is in flight, the client is read here (as in the JavaScript path): its bytes queue on
   * the connecting socket and leave with the connect. At the connect, reading stops and what was
   * read is flushed; the handoff waits for the last write. The upstream is paused before
   * 'connect' (Node would otherwise start reading it), so only the native thread ever reads it.
   */
  #forwardNative(client: Socket): void {
    const stats = this.stats;
    const { target, targetPort, connectTimeoutMs = 0, log } = this.#opts;
    stats.accepted++;
    stats.active++;
    const acceptedAt = performance.now();
    const upstream = connect({ host: target.address, port: targetPort, family: target.family, allowHalfOpen: true, noDelay: true });
    upstream.pause();
    const pair: [Socket, Socket] = [client, upstream];
    this.#dialing.add(pair);
    let done = false;
    const fail = (): void => {
      if (done) return;
      done = true;
      this.#dialing.delete(pair);
      if (dialTimer) clearTimeout(dialTimer);
      stats.active--;
      this.#opts.budget?.give(this.#fds);
      upstream.destroy();
      closeUndialled(client);
    };
    const dialTimer = connectTimeoutMs > 0 ? setTimeout(() => {
      stats.connectErrors.timeout++;
      this.#limited.warn('connect:timeout', { target: `${target.address}:${targetPort}`, connectTimeoutMs }, 'connect to target timed out; closing client');
      fail();
    }, connectTimeoutMs) : null;
    client.on('error', () => {});
    // A client that resets or vanishes during the dial: as in the JavaScript path, aborted.
    client.on('close', () => {
      if (done) return;
      stats.aborted++;
      fail();
    });
    upstream.on('error', (err: NodeJS.ErrnoException) => {
      if (done) return;
      stats.connectErrors[connectErrorReason(err.code)]++;
      this.#limited.warn(`connect:${err.code}`, { target: `${target.address}:${targetPort}`, err: err.message }, 'cannot connect to target; closing client');
      fail();
    });
    const handoff = (): void => {
      if (done) return;
      const clientFd = socketFd(client);
      const upstreamFd = socketFd(upstream);
      try {
        if (clientFd < 0 || upstreamFd < 0) throw new Error('connection already closed');
        const id = this.#nextId;
        this.#nextId = (this.#nextId + 1) >>> 0 || 1;
        (this.#native as NativeTcp).adopt(id, clientFd, upstreamFd);
        this.#handedOff.set(id, acceptedAt);
      } catch (err) {
        // EMFILE on dup, or a socket that closed meanwhile: reset both, the stream never started.
        this.#limited.warn('handoff', { err: (err as Error).message }, 'cannot hand connection to the native engine; resetting it');
        stats.aborted++;
        client.resetAndDestroy();
        upstream.resetAndDestroy();
        fail();
        return;
      }
      done = true;
      this.#dialing.delete(pair);
      // Only these fd numbers close: the sockets live on in the native thread's dups, and libuv
      // removes them from its epoll before closing.
      client.destroy();
      upstream.destroy();
    };
    // Everything written here must be in the kernel before the native thread writes: the handoff
    // waits until no write is in flight.
    let connected = false;
    let inFlight = 0;
    const written = (err?: Error | null): void => {
      inFlight--;
      if (err) fail();
      else if (connected && inFlight === 0) handoff();
    };
    const send = (chunk: Buffer | string): void => {
      inFlight++;
      if (!upstream.write(chunk, written)) client.pause();
    };
    const header = proxyHeader(this.#opts.proxyProtocol ?? 'off', {
      srcAddress: client.remoteAddress ?? '', srcPort: client.remotePort ?? 0,
      dstAddress: client.localAddress ?? '', dstPort: client.localPort ?? 0,
    });
    // Queued on the connecting socket before any client byte: it goes out first.
    if (header) send(header);
    client.on('data', send);
    upstream.on('drain', () => {
      if (!connected) client.resume();
    });
    client.resume();
    upstream.once('connect', () => {
      if (dialTimer) clearTimeout(dialTimer);
      if (done) return;
      connected = true;
      observe(stats.connectDuration, (performance.now() - acceptedAt) / 1000);
      if (log.debugEnabled) log.debug({ client: `${client.remoteAddress}:${client.remotePort}` }, 'connection forwarded');
      // Stop reading the client: take what Node already buffered, then stop the handle. read()
      // may restart the handle; stopping it afterwards, in the same tick, is what counts (libuv
      // reads only in its poll phase).
      client.removeListener('data', send);
      client.pause();
      for (let chunk = client.read() as Buffer | null; chunk !== null; chunk = client.read() as Buffer | null) send(chunk);
      stopReading(client);
      if (inFlight === 0) handoff();
    });
  }

  /** A report from the native thread: one handed-off connection is gone. */
  #onNativeClose(id: number, reason: number): void {
    const acceptedAt = this.#handedOff.get(id);
    if (acceptedAt === undefined) return;
    this.#handedOff.delete(id);
    this.#finishNative(acceptedAt, reason);
  }

  /** The same accounting and logs as the JavaScript path's close handling and sweep. */
  #finishNative(acceptedAt: number, reason: number): void {
    const stats = this.stats;
    stats.active--;
    this.#opts.budget?.give(this.#fds);
    observe(stats.connectionDuration, (performance.now() - acceptedAt) / 1000);
    // As in the JavaScript path, anything but a clean double close counts as aborted.
    if (reason !== CLOSE_REASON.clean) stats.aborted++;
    if (reason === CLOSE_REASON.idle) this.#timedOut('idle');
    else if (reason === CLOSE_REASON.linger) this.#timedOut('linger');
  }

  #forwardJs(accepted: Socket): void {
    const stats = this.stats;
    const { log } = this.#opts;
    const up = new Pump(stats, true);
    const down = new Pump(stats, false);
    const client = adoptAccepted(accepted, up.onread, this.#highWaterMark);
    if (client === null) {
      this.#opts.budget?.give(this.#fds);
      return;
    }
    if (this.#sweep === null) {
      this.#sweep = setInterval(() => this.sweep(), this.#sweepMs);
      this.#sweep.unref();
    }
    stats.accepted++;
    stats.active++;
    const acceptedAt = performance.now();
    const upstream = connect({
      host: this.#opts.target.address,
      port: this.#opts.targetPort,
      family: this.#opts.target.family,
      allowHalfOpen: true,
      noDelay: true,
      onread: down.onread,
      // Socket options reach the Duplex constructor; @types/node's connect options omit it.
      ...({ writableHighWaterMark: this.#highWaterMark } as object),
    });
    const header = proxyHeader(this.#opts.proxyProtocol ?? 'off', {
      srcAddress: client.remoteAddress ?? '', srcPort: client.remotePort ?? 0,
      dstAddress: client.localAddress ?? '', dstPort: client.localPort ?? 0,
    });
    // Queued on the connecting socket before any client byte can be read: it goes out first.
    if (header) upstream.write(header);
    const conn: Conn = { client, upstream, up, down, idleMs: 0 };
    this.#live.add(conn);
    let connected = false;
    let finished = false;
    const { connectTimeoutMs = 0 } = this.#opts;
    const dialTimer = connectTimeoutMs > 0 ? setTimeout(() => {
      if (connected || finished) return;
      stats.connectErrors.timeout++;
      this.#limited.warn('connect:timeout', { target: `${this.#opts.target.address}:${this.#opts.targetPort}`, connectTimeoutMs }, 'connect to target timed out; closing client');
      upstream.destroy();
      closeUndialled(client);
    }, connectTimeoutMs) : null;

    const finish = (aborted: boolean): void => {
      if (finished) return;
      finished = true;
      stats.active--;
      this.#opts.budget?.give(this.#fds);
      this.#live.delete(conn);
      if (dialTimer) clearTimeout(dialTimer);
      if (connected) observe(stats.connectionDuration, (performance.now() - acceptedAt) / 1000);
      if (aborted) stats.aborted++;
    };

    // An error or premature close on one side resets the other; a clean close (both directions
    // ended and flushed) needs nothing: the peer finishes its own directions and closes itself.
    const onClose = (self: Socket, peer: Socket, pump: Pump, into: Pump): void => {
      pump.release();
      into.dropQueued();
      const clean = self.readableEnded && self.writableFinished;
      if (!clean && !peer.destroyed) {
        if (connected) peer.resetAndDestroy();
        else peer.destroy();
      }
      if (self.destroyed && peer.destroyed) finish(!clean);
      else if (!clean) finish(true);
    };
    client.on('error', () => {});
    client.on('close', () => onClose(client, upstream, up, down));
    upstream.on('close', () => onClose(upstream, client, down, up));

    upstream.on('error', (err: NodeJS.ErrnoException) => {
      if (!connected) {
        stats.connectErrors[connectErrorReason(err.code)]++;
        this.#limited.warn(
          `connect:${err.code}`,
          { target: `${this.#opts.target.address}:${this.#opts.targetPort}`, err: err.message },
          'cannot connect to target; closing client',
        );
        closeUndialled(client);
      }
    });
    // Read the client while the dial is in flight: Node queues writes on a connecting socket
    // (bounded by its high-water mark, which pauses us) and flushes them on connect, which saves
    // an event-loop round per connection. If the dial fails, the client is closed anyway.
    up.connect(client, upstream);
    down.connect(upstream, client);
    client.resume();
    upstream.once('connect', () => {
      connected = true;
      if (dialTimer) clearTimeout(dialTimer);
      observe(stats.connectDuration, (performance.now() - acceptedAt) / 1000);
      if (log.debugEnabled) {
        log.debug({ client: `${client.remoteAddress}:${client.remotePort}` }, 'connection forwarded');
      }
      upstream.resume();
    });
  }
}

/**
 * Closes a client whose dial failed. Like docker-proxy, a client that sent nothing sees a close
 * (FIN), not a refusal: it was accepted. A client whose bytes were read (or still wait in the
 * kernel, where close() would reset anyway) gets a reset on both engines: its data was lost.
 */
function closeUndialled(client: Socket): void {
  if (client.bytesRead > 0 || client.readableLength > 0) client.resetAndDestroy();
  else client.destroy();
}

/** The metrics reason of a failed dial. */
function connectErrorReason(code: string | undefined): keyof TcpStats['connectErrors'] {
  if (code === 'ECONNREFUSED') return 'refused';
  if (code === 'ETIMEDOUT') return 'timeout';
  if (code === 'EHOSTUNREACH' || code === 'ENETUNREACH') return 'unreachable';
  return 'other';
}
