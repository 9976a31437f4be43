/**
 * The one dial path of both engines: connect to the target with Go's socket options, give up
 * after the connect timeout, count and log a failure by reason (rate-limited), time a success, and
 * build the PROXY protocol header the caller sends first. What happens around it (reading the
 * client meanwhile, relaying, handing off) is the engine's: tcp-js-path.ts, tcp-native-path.ts.
 */
import { connect, type Socket } from 'node:net';
import { observe } from '../core/histogram.js';
import { resetOnClose } from './native-engine.js';
import { socketFd } from '../core/node-internals.js';
import { proxyHeader } from '../core/proxy-protocol.js';
import type { TcpPathContext, TcpStats } from './tcp-types.js';

/** What a dial reports back. Exactly one of them runs, once. */
export interface DialHooks {
  /** Extra options for net.connect (the JavaScript engine reads through onread). */
  socketOptions?: object;
  /** The target accepted; the connect time is counted. */
  onConnect(): void;
  /** The dial failed or timed out; counted and logged. The caller closes both sockets. */
  onFail(): void;
}

/** A dial in progress: the upstream socket and the header to send before any client byte. */
export interface Dial {
  upstream: Socket;
  header: Buffer | null;
}

/**
 * Starts a dial to the context's target on behalf of `client`, accepted at `acceptedAt`. Null, and
 * no dial, when a PROXY header is due but the client's addresses are gone (it reset before we
 * could read them): the caller resets it. Read here, at the connection handler, and never later.
 */
export function dial(ctx: TcpPathContext, client: Socket, acceptedAt: number, hooks: DialHooks): Dial | null {
  const { target, targetPort, connectTimeoutMs = 0, proxyProtocol = 'off' } = ctx.opts;
  const header = proxyHeader(proxyProtocol, {
    srcAddress: client.remoteAddress ?? '',
    srcPort: client.remotePort ?? 0,
    dstAddress: client.localAddress ?? '',
    dstPort: client.localPort ?? 0,
  });
  if (header === null && proxyProtocol !== 'off') return null;
  const upstream = connect({ host: target.address, port: targetPort, family: target.family, allowHalfOpen: true, noDelay: true, ...hooks.socketOptions });
  let settled = false;
  // Each callback hands an exception to the mapping's fault sink (TcpPathContext.fault).
  const timer =
    connectTimeoutMs > 0
      ? setTimeout(() => {
          if (settled) return;
          settled = true;
          try {
            ctx.stats.connectErrors.timeout++;
            ctx.warn('connectTimeout');
            hooks.onFail();
          } catch (err) {
            ctx.fault(err);
          }
        }, connectTimeoutMs)
      : null;
  upstream.on('error', (err: NodeJS.ErrnoException) => {
    if (settled) return; // after the connect, the engine's own close handling takes over
    settled = true;
    if (timer) clearTimeout(timer);
    try {
      ctx.stats.connectErrors[connectErrorReason(err.code)]++;
      ctx.warnError('connect', err.code, err.message);
      hooks.onFail();
    } catch (e) {
      ctx.fault(e);
    }
  });
  upstream.once('connect', () => {
    if (settled) return;
    settled = true;
    if (timer) clearTimeout(timer);
    try {
      observe(ctx.stats.connectDuration, (performance.now() - acceptedAt) / 1000);
      if (ctx.opts.log.debugEnabled) ctx.opts.log.debug({ client: `${client.remoteAddress}:${client.remotePort}` }, 'connection forwarded');
      hooks.onConnect();
    } catch (err) {
      ctx.fault(err);
    }
  });
  return { upstream, header };
}

/**
 * Closes a client whose dial failed. Like docker-proxy, a client that sent nothing sees a close
 * (FIN), not a refusal: it was accepted. A client whose bytes were read (or still wait in the
 * kernel, where close() would reset anyway) gets a reset on both engines: its data was lost.
 */
export function closeUndialled(client: Socket): void {
  if (client.bytesRead > 0 || client.readableLength > 0) client.resetAndDestroy();
  else cleanly(client).destroy();
}

/** The metrics reason of a failed dial. */
function connectErrorReason(code: string | undefined): keyof TcpStats['connectErrors'] {
  if (code === 'ECONNREFUSED') return 'refused';
  if (code === 'ETIMEDOUT') return 'timeout';
  if (code === 'EHOSTUNREACH' || code === 'ENETUNREACH') return 'unreachable';
  if (code === 'EADDRNOTAVAIL') return 'noLocalPort'; // every local port toward the target is taken (TIME_WAIT)
  return 'other';
}

/** Disarms a socket's reset on close (resetOnClose): its coming close is a deliberate clean one. */
export function cleanly(s: Socket): Socket {
  resetOnClose(socketFd(s), false);
  return s;
}
