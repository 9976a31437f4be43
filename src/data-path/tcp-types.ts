/**
 * The TCP data path's shared vocabulary: the counters metrics read, the forwarder's options, and
 * what each path (tcp-js-path.ts, tcp-dial.ts, tcp-native-path.ts, native-engine.ts) gets from
 * its forwarder. Types only, below every TCP module, so that none of them imports another's.
 */
import type { Socket } from 'node:net';
import type { IpAddress } from '../core/address.js';
import type { FdBudget } from '../core/fd-limit.js';
import { CONNECT_BUCKETS, LIFETIME_BUCKETS, newHistogram, type PlainHistogram } from '../core/histogram.js';
import type { AccessRules } from '../core/access-list.js';
import type { Log } from '../core/logger.js';
import type { EngineName } from '../core/data-path-choice.js';
import type { SettingValues } from '../core/settings.js';

/** Plain-number counters, read by metrics at scrape time (never prom-client on the hot path). */
export interface TcpStats {
  accepted: number;
  active: number;
  acceptErrors: number;
  /** Failed dials to the target, by reason. */
  connectErrors: { refused: number; timeout: number; unreachable: number; other: number; noLocalPort: number };
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
  /** Clean closes whose TIME_WAIT toward the target the proxy removed (native/time-wait.c). */
  timeWaitEnded: number;
}

/** Fresh zeroed counters. */
export function newTcpStats(): TcpStats {
  return {
    accepted: 0,
    active: 0,
    acceptErrors: 0,
    connectErrors: { refused: 0, timeout: 0, unreachable: 0, other: 0, noLocalPort: 0 },
    connectDuration: newHistogram(CONNECT_BUCKETS),
    connectionDuration: newHistogram(LIFETIME_BUCKETS),
    bytesIn: 0,
    bytesOut: 0,
    pausesClient: 0,
    pausesUpstream: 0,
    aborted: 0,
    rejectedLimit: 0,
    rejectedBlocked: 0,
    idleTimeouts: 0,
    lingerTimeouts: 0,
    timeWaitEnded: 0,
  };
}

/** Options of TcpForwarder: the TCP settings of the table (settings.ts; absent: off or the default), and its context. */
export interface TcpForwarderOptions
  extends Partial<Pick<SettingValues, 'maxConnections' | 'maxBuffer' | 'proxyProtocol' | 'connectTimeoutMs' | 'idleTimeoutMs' | 'lingerTimeoutMs'>> {
  target: IpAddress;
  targetPort: number;
  log: Log;
  stats?: TcpStats;
  /** The process fd budget every connection takes its fds from; null: unbounded. */
  budget?: FdBudget | null;
  /** Allow/deny lists checked before dialling; null: everyone. */
  access?: AccessRules | null;
  /** Period of the sweep (idle buffers and timeouts); derived from the timeouts when absent. */
  idleSweepMs?: number;
  /** Data path after the dial: 'js' (relay.ts) or 'native' (splice, native/). */
  engine?: EngineName;
  /** An exception in this mapping's handlers (forward.ts ForwardSpec.onFault); absent: thrown on. */
  onFault?: (err: unknown) => void;
}

/** What a TCP mapping warns of, on either engine (the native thread reports them as events). */
export type TcpWarning = 'limit' | 'blocked' | 'fdBudget' | 'idle' | 'linger' | 'connectTimeout';

/** What a data path (tcp-js-path.ts, tcp-dial.ts, tcp-native-path.ts) gets from its forwarder. */
export interface TcpPathContext {
  readonly opts: TcpForwarderOptions;
  readonly stats: TcpStats;
  /** The target as Node's connect errors print it (`10.0.0.2:80`, `fd00::2:80`: no brackets). */
  readonly targetText: string;
  /** A connection counted at accept is gone: lifetime (if it connected), aborted, budget. */
  end(acceptedAt: number, connected: boolean, aborted: boolean): void;
  /** Counts and logs (once per burst) a connection closed by the idle or linger timeout. */
  timedOut(kind: 'idle' | 'linger'): void;
  /** Logs (rate-limited) a warning with the same key, fields and message on either engine. */
  warn(kind: TcpWarning, client?: string): void;
  /** Logs (rate-limited) a failed accept or dial: `code` the errno name, `err` Node's message. */
  warnError(op: 'accept' | 'connect' | 'timeWait', code: string | undefined, err: string): void;
  /** An exception caught in a handler of this mapping: to its fault sink (or thrown on). */
  fault(err: unknown): void;
}

/** The JavaScript engine's data path: takes accepted connections from the dial on. */
export interface TcpPath {
  forward(client: Socket, acceptedAt: number): void;
  /** Destroys every connection (docker-proxy semantics: no drain). */
  close(): void;
}
