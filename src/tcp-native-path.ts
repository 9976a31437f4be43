/**
 * The native engine's side of a TCP connection: JavaScript accepts, filters and dials (the one
 * dial path, tcp-dial.ts) and writes any PROXY header, then hands both sockets to the native
 * thread (splice, native/tcp.c) and destroys its Socket objects; the thread reports each close
 * back with its reason, in batches.
 *
 * While the dial is in flight, the client is read here (as on the JavaScript path): its bytes
 * queue on the connecting socket and leave with the connect. At the connect, reading stops and
 * what was read is flushed; the handoff waits for the last write. The upstream is paused before
 * 'connect' (Node would otherwise start reading it), so only the native thread ever reads it.
 */
import type { Socket } from 'node:net';
import { NATIVE_PIPE_MAX, NATIVE_PIPE_MIN, RELAY_HIGH_WATER_MARK } from './constants.js';
import { CLOSE_REASON, nativeTcp, type NativeTcp } from './native-engine.js';
import { socketFd, stopReading } from './node-internals.js';
import { closeUndialled, dial } from './tcp-dial.js';
import type { TcpPath, TcpPathContext } from './tcp-forwarder.js';

/** The native data path of one forwarder. */
export class NativePath implements TcpPath {
  readonly #ctx: TcpPathContext;
  readonly #native: NativeTcp;
  /** Connections handed to the native thread: id -> accept time (ms, performance.now()). */
  readonly #handedOff = new Map<number, number>();
  /** Connections still dialling: [client, upstream]. */
  readonly #dialing = new Set<[Socket, Socket]>();
  #nextId = 1;

  constructor(ctx: TcpPathContext) {
    this.#ctx = ctx;
    const { idleTimeoutMs = 0, lingerTimeoutMs = 0, maxBufferBytes = RELAY_HIGH_WATER_MARK } = ctx.opts;
    const pipeBytes = Math.min(NATIVE_PIPE_MAX, Math.max(NATIVE_PIPE_MIN, maxBufferBytes));
    this.#native = nativeTcp(ctx.stats, idleTimeoutMs, lingerTimeoutMs, pipeBytes, (id, reason) => this.#onClose(id, reason));
  }

  forward(client: Socket, acceptedAt: number): void {
    const ctx = this.#ctx;
    let done = false;
    const fail = (): void => {
      if (done) return;
      done = true;
      this.#dialing.delete(pair);
      upstream.destroy();
      closeUndialled(client);
      ctx.end(acceptedAt, false, true);
    };
    const { upstream, header } = dial(ctx, client, acceptedAt, { onConnect: () => onConnect(), onFail: fail });
    upstream.pause();
    const pair: [Socket, Socket] = [client, upstream];
    this.#dialing.add(pair);
    client.on('error', () => {});
    // A client that resets or vanishes during the dial: aborted, as on the JavaScript path.
    client.on('close', fail);
    const handoff = (): void => {
      if (done) return;
      const clientFd = socketFd(client);
      const upstreamFd = socketFd(upstream);
      try {
        if (clientFd < 0 || upstreamFd < 0) throw new Error('connection already closed');
        const id = this.#nextId;
        this.#nextId = (this.#nextId + 1) >>> 0 || 1;
        this.#native.adopt(id, clientFd, upstreamFd);
        this.#handedOff.set(id, acceptedAt);
      } catch (err) {
        // EMFILE on dup, or a socket that closed meanwhile: reset both, the stream never started.
        ctx.limited.warn('handoff', { err: (err as Error).message }, 'cannot hand connection to the native engine; resetting it');
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
    // Queued on the connecting socket before any client byte: it goes out first.
    if (header) send(header);
    client.on('data', send);
    upstream.on('drain', () => {
      if (!connected) client.resume();
    });
    client.resume();
    const onConnect = (): void => {
      if (done) return;
      connected = true;
      // Stop reading the client: take what Node already buffered, then stop the handle. read()
      // may restart the handle; stopping it afterwards, in the same tick, is what counts (libuv
      // reads only in its poll phase).
      client.removeListener('data', send);
      client.pause();
      for (let chunk = client.read() as Buffer | null; chunk !== null; chunk = client.read() as Buffer | null) send(chunk);
      stopReading(client);
      if (inFlight === 0) handoff();
    };
  }

  /** Closes every handed-off connection (a reset where bytes are pending, else FIN) and every dial. */
  close(): void {
    this.#native.close();
    for (const acceptedAt of this.#handedOff.values()) this.#ctx.end(acceptedAt, true, true);
    this.#handedOff.clear();
    for (const [client, upstream] of this.#dialing) {
      client.destroy();
      upstream.destroy();
    }
  }

  /** A report from the native thread: one handed-off connection is gone. */
  #onClose(id: number, reason: number): void {
    const acceptedAt = this.#handedOff.get(id);
    if (acceptedAt === undefined) return;
    this.#handedOff.delete(id);
    // As on the JavaScript path, anything but a clean double close counts as aborted.
    this.#ctx.end(acceptedAt, true, reason !== CLOSE_REASON.clean);
    if (reason === CLOSE_REASON.idle) this.#ctx.timedOut('idle');
    else if (reason === CLOSE_REASON.linger) this.#ctx.timedOut('linger');
  }
}
