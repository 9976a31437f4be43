/**
 * The native engine's TCP path: the native thread takes the listening socket and does the rest
 * (native/accept.c, native/tcp.c): accept, cap, access lists, fd budget, dial with its timeout,
 * PROXY header, splice relay, timeouts, and every counter and histogram of the mapping. No
 * JavaScript runs per connection; what is to be logged arrives as events, a batch per epoll round,
 * and goes to the forwarder's warn(), the JavaScript path's own lines (rate-limited).
 */
import { NATIVE_PIPE_MAX, NATIVE_PIPE_MIN, RELAY_HIGH_WATER_MARK } from '../core/constants.js';
import { TCP_CONNECTION_FDS } from '../core/fd-limit.js';
import { errnoName, nativeTcp, type NativeEvent, type NativeGroup } from './native-engine.js';
import type { TcpPathContext } from './tcp-types.js';

/** A listening socket served by the native thread. */
export class NativeListener {
  readonly #ctx: TcpPathContext;
  readonly #group: NativeGroup;

  /** Hands `listenerFd` (a copy: the caller closes its own) to the native thread; throws if it cannot. */
  constructor(ctx: TcpPathContext, listenerFd: number) {
    this.#ctx = ctx;
    const o = ctx.opts;
    this.#group = nativeTcp(
      ctx.stats,
      { listenerFd, target: o.target, targetPort: o.targetPort, access: o.access?.spec ?? null, budget: o.budget ?? null },
      {
        connectTimeoutMs: o.connectTimeoutMs ?? 0,
        idleTimeoutMs: o.idleTimeoutMs ?? 0,
        lingerTimeoutMs: o.lingerTimeoutMs ?? 0,
        pipeBytes: Math.min(NATIVE_PIPE_MAX, Math.max(NATIVE_PIPE_MIN, o.maxBuffer ?? RELAY_HIGH_WATER_MARK)),
        maxConnections: o.maxConnections ?? null,
        proxyProtocol: o.proxyProtocol ?? 'off',
        connectionFds: TCP_CONNECTION_FDS,
      },
      (event, detail, client) => {
        try {
          this.#log(event, detail, client);
        } catch (err) {
          ctx.fault(err);
        }
      },
    );
  }

  /** The native thread's listening socket (-1 once closed). */
  fd(): number {
    return this.#group.fd();
  }

  /** Closes the listener; open connections carry on (graceful drain). */
  stopAccepting(): void {
    this.#group.stop();
  }

  /** Closes the listener and every connection (a reset where bytes are pending, else FIN). */
  close(): void {
    this.#group.close();
  }

  #log(event: NativeEvent, detail: number, client: string | undefined): void {
    const ctx = this.#ctx;
    const code = errnoName(detail);
    // Node's messages for the same failures: `accept EMFILE`, `connect ECONNREFUSED 10.0.0.2:80`.
    if (event === 'acceptError') ctx.warnError('accept', code, `accept ${code}`);
    else if (event === 'connectError') ctx.warnError('connect', code, `connect ${code} ${ctx.targetText}`);
    else if (event === 'timeWait') ctx.warnError('timeWait', code, `end TIME_WAIT ${code}`);
    else if (event !== 'flowLimit' && event !== 'flowError') ctx.warn(event, client);
  }
}
