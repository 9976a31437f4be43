/**
 * The JavaScript engine's connection lifecycle: the accepted handle is re-wrapped to read
 * through reusable buffers (relay.ts), the client is read while the dial is in flight (Node
 * queues its bytes on the connecting socket and flushes them on connect: one event-loop round
 * less per connection), each direction relays with backpressure and half-close, and a reset or
 * error on one side resets the other. One periodic sweep (no timer per connection) gives idle
 * directions small buffers back and closes connections past the idle or linger timeout.
 * When our FIN reaches the target before its own, the clean close removes the TIME_WAIT that
 * connection leaves (native/time-wait.c, through the addon when it is built).
 */
import type { Socket } from 'node:net';
import { RELAY_HIGH_WATER_MARK, RELAY_IDLE_SWEEP_MS } from '../core/constants.js';
import { errnoName, resetOnClose, timeWaitEnd, timeWaitMark, unreadBytes } from './native-engine.js';
import { adoptAccepted, socketFd } from '../core/node-internals.js';
import { Pump } from './relay.js';
import { cleanly, closeUndialled, dial } from './tcp-dial.js';
import type { TcpPath, TcpPathContext } from './tcp-types.js';

/** timeWaitEnd failed for want of a privilege or kernel support: not tried again on this thread. */
let timeWaitOff = false;
const ENOENT = 2;

/** A live connection as the sweep sees it. */
interface Conn {
  client: Socket;
  upstream: Socket;
  up: Pump;
  down: Pump;
  idleMs: number;
}

/** The JavaScript data path of one forwarder. */
export class JsPath implements TcpPath {
  readonly #ctx: TcpPathContext;
  /** Write high-water mark of both sockets of every connection. */
  readonly #highWaterMark: number;
  /** Every live connection (for the sweep and for close()). */
  readonly #live = new Set<Conn>();
  #timer: NodeJS.Timeout | null = null;
  readonly #sweepMs: number;

  constructor(ctx: TcpPathContext) {
    this.#ctx = ctx;
    const { idleTimeoutMs = 0, lingerTimeoutMs = 0, idleSweepMs, maxBuffer } = ctx.opts;
    this.#highWaterMark = maxBuffer ?? RELAY_HIGH_WATER_MARK;
    const timeouts = [idleTimeoutMs, lingerTimeoutMs].filter((t) => t > 0).map((t) => Math.max(25, Math.floor(t / 4)));
    this.#sweepMs = idleSweepMs ?? Math.min(RELAY_IDLE_SWEEP_MS, ...timeouts);
  }

  forward(accepted: Socket, acceptedAt: number): void {
    const ctx = this.#ctx;
    const fault = (err: unknown): void => ctx.fault(err);
    const up = new Pump(ctx.stats, true, fault);
    const down = new Pump(ctx.stats, false, fault);
    const client = adoptAccepted(accepted, up.onread, this.#highWaterMark);
    if (client === null) {
      ctx.end(acceptedAt, false, true); // gone before we could read it
      return;
    }
    // Reset on close from here on (native-engine.ts resetOnClose): should this process die, the
    // kernel resets the connection; a deliberate clean close disarms it first (cleanly()).
    resetOnClose(socketFd(client), true);
    if (this.#timer === null) {
      this.#timer = setInterval(() => {
        try {
          this.sweep();
        } catch (err) {
          ctx.fault(err);
        }
      }, this.#sweepMs);
      this.#timer.unref();
    }
    let connected = false;
    const dialled = dial(ctx, client, acceptedAt, {
      // Socket options reach the Duplex constructor; @types/node's connect options omit them.
      socketOptions: { onread: down.onread, writableHighWaterMark: this.#highWaterMark },
      onConnect: () => {
        connected = true;
        resetOnClose(socketFd(upstream), true);
        upstream.resume();
      },
      onFail: () => {
        upstream.destroy();
        closeUndialled(client);
      },
    });
    if (dialled === null) {
      client.resetAndDestroy(); // no address for the PROXY header: never dial without it
      ctx.end(acceptedAt, false, true);
      return;
    }
    const { upstream, header } = dialled;
    // Queued on the connecting socket before any client byte can be read: it goes out first.
    if (header) upstream.write(header);
    const conn: Conn = { client, upstream, up, down, idleMs: 0 };
    this.#live.add(conn);
    let finished = false;
    const finish = (aborted: boolean): void => {
      if (finished) return;
      finished = true;
      this.#live.delete(conn);
      ctx.end(acceptedAt, connected, aborted);
    };
    // An error or premature close on one side resets the other; a clean close (both directions
    // ended and flushed) needs nothing: the peer finishes its own directions and closes itself.
    // (Each handler hands an exception to the mapping's fault sink: see TcpPathContext.fault.)
    const onClose = (self: Socket, peer: Socket, pump: Pump, into: Pump): void => {
      try {
        pump.release();
        into.dropQueued();
        const clean = self.readableEnded && self.writableFinished;
        if (!clean && !peer.destroyed) {
          if (connected) peer.resetAndDestroy();
          else cleanly(peer).destroy();
        }
        if (self.destroyed && peer.destroyed) finish(!clean);
        else if (!clean) finish(true);
      } catch (err) {
        fault(err);
      }
    };
    client.on('error', () => {});
    // Both directions of a socket ended: Node closes it right after these events; disarm first.
    const ended = (s: Socket): void => {
      try {
        if (s.readableEnded && s.writableFinished) cleanly(s);
      } catch (err) {
        fault(err);
      }
    };
    client.on('end', () => ended(client));
    client.on('finish', () => ended(client));
    // Our FIN to the target went out before its own: this side will hold the TIME_WAIT.
    let mark: Buffer | null = null;
    const endTimeWait = (): void => {
      if (mark === null || timeWaitOff || !upstream.readableEnded || !upstream.writableFinished) return;
      const err = timeWaitEnd(socketFd(upstream), mark);
      mark = null;
      if (err === 0) ctx.stats.timeWaitEnded++;
      else if (err !== ENOENT) {
        timeWaitOff = true;
        ctx.warnError('timeWait', errnoName(err), `end TIME_WAIT ${errnoName(err)}`);
      }
    };
    upstream.on('end', () => {
      try {
        endTimeWait();
      } catch (err) {
        fault(err);
      }
      ended(upstream);
    });
    upstream.on('finish', () => ended(upstream));
    client.on('close', () => onClose(client, upstream, up, down));
    upstream.on('close', () => onClose(upstream, client, down, up));
    // Marked before our FIN is queued: the cookie must exist before the TIME_WAIT entry does.
    up.connect(client, upstream, () => {
      if (!upstream.readableEnded && !timeWaitOff) mark = timeWaitMark(socketFd(upstream));
    });
    down.connect(upstream, client);
    client.resume();
  }

  /**
   * The periodic sweep: idle directions holding big read buffers get small ones again (see
   * relay.ts), and connections past the idle or the half-close linger timeout are closed.
   * Activity is "a byte was read or written either way" since the last sweep.
   */
  sweep(): void {
    const { idleTimeoutMs = 0, lingerTimeoutMs = 0 } = this.#ctx.opts;
    for (const c of this.#live) {
      const moved = c.up.sweep() + c.down.sweep();
      c.idleMs = moved > 0 ? 0 : c.idleMs + this.#sweepMs;
      if (idleTimeoutMs > 0 && c.idleMs >= idleTimeoutMs) {
        this.#ctx.timedOut('idle');
        this.#expire(c);
      } else if ((c.client.readableEnded || c.upstream.readableEnded) && lingerTimeoutMs > 0 && c.idleMs >= lingerTimeoutMs) {
        this.#ctx.timedOut('linger');
        this.#expire(c);
      }
    }
  }

  /** Destroys every connection (FIN, or a reset where bytes are pending). */
  close(): void {
    if (this.#timer) clearInterval(this.#timer);
    for (const c of this.#live) this.#expire(c);
  }

  /**
   * Forced close: FIN when no byte is stranded either way, else a reset of both sides. Stranded:
   * queued here, or still unread in a receive buffer (the sender thinks it delivered them; a FIN
   * would pass the truncated stream off as complete). Unknown (no addon for FIONREAD) counts as
   * stranded unless that side already ended.
   */
  #expire(c: Conn): void {
    this.#live.delete(c);
    const unread = (s: Socket): boolean => !s.readableEnded && unreadBytes(socketFd(s)) !== 0;
    if (c.up.pending + c.down.pending + c.client.writableLength + c.upstream.writableLength > 0 || unread(c.client) || unread(c.upstream)) {
      c.upstream.resetAndDestroy();
      c.client.resetAndDestroy();
    } else {
      cleanly(c.upstream).destroy();
      cleanly(c.client).destroy();
    }
  }
}
