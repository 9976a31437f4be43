/**
 * TCP forwarding: one upstream connection per accepted client, bytes relayed both ways with
 * backpressure, half-close propagated, resets propagated.
 *
 * Semantics (docker-proxy's, plus fixes):
 * - TCP_NODELAY on both sides and 15 s keepalive on the client side: Go's defaults.
 * - A client FIN becomes an upstream FIN (shutdown(SHUT_WR)) and vice versa; both sockets close
 *   only when both directions are done (libnetwork#1598).
 * - A failed dial closes the client at once (accept, then FIN), as docker-proxy does.
 * - A reset or error on one side resets the other: a truncated stream must never look like a
 *   complete one (docker-proxy turns an upstream RST into a clean FIN).
 * - Accept errors (EMFILE, ENFILE, ...) never stop the listener. Connections are capped a little
 *   below RLIMIT_NOFILE (fd-limit.ts), so excess clients are refused at once, counted and logged
 *   (rate-limited) before EMFILE can happen; if it happens anyway libuv's reserve-fd trick closes
 *   the pending connections and we keep serving. docker-proxy exits here and the port goes dead.
 * - Memory per connection is bounded: a direction stops reading when its destination holds more
 *   than its high-water mark (16 KiB on Node 20) plus one read (64 KiB).
 */
import { connect, createServer, type Server, type Socket } from 'node:net';
import type { IpAddress } from './address.js';
import { CLIENT_KEEPALIVE_MS } from './constants.js';
import { RateLimitedLog, type Log } from './logger.js';

/** Plain-number counters, read by metrics at scrape time (never prom-client on the hot path). */
export interface TcpStats {
  accepted: number;
  active: number;
  acceptErrors: number;
  connectErrors: number;
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
}

/** Fresh zeroed counters. */
export function newTcpStats(): TcpStats {
  return {
    accepted: 0, active: 0, acceptErrors: 0, connectErrors: 0, bytesIn: 0, bytesOut: 0,
    pausesClient: 0, pausesUpstream: 0, aborted: 0, rejectedLimit: 0,
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
  readonly #conns = new Set<Socket>();

  constructor(server: Server, opts: TcpForwarderOptions) {
    this.#server = server;
    this.#opts = opts;
    this.stats = opts.stats ?? newTcpStats();
    this.#limited = new RateLimitedLog(opts.log);
    server.on('connection', (client: Socket) => this.#onConnection(client));
    if (opts.maxConnections != null) {
      server.maxConnections = opts.maxConnections;
      server.on('drop', () => {
        this.stats.rejectedLimit++;
        this.#limited.warn('limit', { maxConnections: opts.maxConnections }, 'connection limit reached; refusing new connections');
      });
    }
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
    this.#server.close();
    for (const c of this.#conns) c.destroy();
    this.#conns.clear();
  }

  #onConnection(client: Socket): void {
    const stats = this.stats;
    stats.accepted++;
    stats.active++;
    const { log } = this.#opts;
    const conns = this.#conns;
    conns.add(client);
    const upstream = connect({
      host: this.#opts.target.address,
      port: this.#opts.targetPort,
      family: this.#opts.target.family,
      allowHalfOpen: true,
      noDelay: true,
    });
    conns.add(upstream);
    let connected = false;
    let finished = false;

    const finish = (aborted: boolean): void => {
      if (finished) return;
      finished = true;
      stats.active--;
      if (aborted) stats.aborted++;
      conns.delete(client);
      conns.delete(upstream);
    };

    // An error or premature close on one side resets the other; a clean close (both directions
    // ended and flushed) needs nothing: the peer finishes its own directions and closes itself.
    const onClose = (self: Socket, peer: Socket): void => {
      const clean = self.readableEnded && self.writableFinished;
      if (!clean && !peer.destroyed) {
        if (connected) peer.resetAndDestroy();
        else peer.destroy();
      }
      if (self.destroyed && peer.destroyed) finish(!clean);
      else if (!clean) finish(true);
    };
    client.on('error', () => {});
    client.on('close', () => onClose(client, upstream));
    upstream.on('close', () => onClose(upstream, client));

    upstream.on('error', (err: NodeJS.ErrnoException) => {
      if (!connected) {
        stats.connectErrors++;
        this.#limited.warn(
          `connect:${err.code}`,
          { target: `${this.#opts.target.address}:${this.#opts.targetPort}`, err: err.message },
          'cannot connect to target; closing client',
        );
        // Like docker-proxy: the client was accepted, so it sees a close (FIN), not a refusal.
        client.destroy();
      }
    });
    upstream.once('connect', () => {
      connected = true;
      if (log.debugEnabled) {
        log.debug({ client: `${client.remoteAddress}:${client.remotePort}` }, 'connection forwarded');
      }
      relay(client, upstream, stats, true);
      relay(upstream, client, stats, false);
      client.resume();
    });
  }
}

/** Pumps src into dst with backpressure and FIN propagation; counts bytes and pauses. */
function relay(src: Socket, dst: Socket, stats: TcpStats, inbound: boolean): void {
  src.on('data', (chunk: Buffer) => {
    if (inbound) stats.bytesIn += chunk.length;
    else stats.bytesOut += chunk.length;
    if (!dst.write(chunk)) {
      src.pause();
      if (inbound) stats.pausesClient++;
      else stats.pausesUpstream++;
    }
  });
  dst.on('drain', () => src.resume());
  // Half-close: shutdown(SHUT_WR) on dst after its queued bytes are written.
  src.on('end', () => dst.end());
}
