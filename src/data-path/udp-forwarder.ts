/**
 * UDP forwarding: a flow per client address:port, each with its own connected upstream socket.
 *
 * Semantics (docker-proxy 28.0.2+ / 29.5, plus a bound):
 * - Client datagrams arrive on the listening socket; the flow's connected socket sends them on.
 *   Connecting filters replies from anyone but the target.
 * - Replies go back to the client from the listening socket, so their source port is the host
 *   port. Node cannot choose the source *address* (no IP_PKTINFO/sendmsg cmsg in dgram): on a
 *   multi-homed host listening on a wildcard the kernel picks it. A documented difference.
 * - A flow expires after the idle timeout with no datagram in either direction, so a flow that
 *   only one side keeps sending on stays alive (28.0.2 semantics).
 * - ICMP port unreachable from the target surfaces as ECONNREFUSED on the flow socket; it never
 *   kills the flow (29.5 semantics): the next datagram is sent again normally.
 * - Datagrams up to 65507 bytes pass intact (the receive buffer is 64 KiB).
 * - At most maxFlows flows per mapping (every port of a range counts), and one client address
 *   holds at most maxFlows less a quarter (flowsPerSource): a host that floods new source ports
 *   cannot lock other clients out. Each flow also takes one fd from the process
 *   budget (fd-limit.ts). When a bound is hit, datagrams from new flows are dropped (counted as
 *   flow_limit, logged once per burst) and established flows keep working.
 * - Nothing queues without bound: while a flow is connecting it buffers a few datagrams; when a
 *   socket's send queue is full, datagrams are dropped and counted (UDP's own semantics).
 */
import { createSocket, type RemoteInfo, type Socket } from 'node:dgram';
import type { IpAddress } from '../core/address.js';
import {
  UDP_FLOW_BUFFER,
  UDP_LISTENER_BUFFER,
  UDP_PENDING_PER_FLOW,
  UDP_SEND_QUEUE_MAX,
  UDP_OTHERS_SHARE_DIVISOR,
  UDP_SWEEP_MAX_MS,
  UDP_SWEEP_MIN_MS,
} from '../core/constants.js';
import { isAllowed, type AccessRules } from '../core/access-list.js';
import { RateLimitedLog, type Log } from '../core/logger.js';
import { parseIp, isUnspecified } from '../core/address.js';
import { errnoName, nativeUdp, type NativeEvent, type NativeGroup } from './native-engine.js';
import type { EngineName } from '../core/data-path-choice.js';
import type { FdBudget } from '../core/fd-limit.js';
import type { SettingValues } from '../core/settings.js';
import { udpHandle } from '../core/node-internals.js';

/** Plain-number counters, read by metrics at scrape time. */
export interface UdpStats {
  flowsCreated: number;
  flowsActive: number;
  flowsExpired: number;
  /** Client to upstream. */
  datagramsIn: number;
  bytesIn: number;
  /** Upstream to client. */
  datagramsOut: number;
  bytesOut: number;
  droppedFlowLimit: number;
  droppedQueueFull: number;
  droppedSendError: number;
  /** Datagrams from clients the allow/deny lists refuse. */
  droppedBlocked: number;
  refused: number;
}

/** Fresh zeroed counters. */
export function newUdpStats(): UdpStats {
  return {
    flowsCreated: 0,
    flowsActive: 0,
    flowsExpired: 0,
    datagramsIn: 0,
    bytesIn: 0,
    datagramsOut: 0,
    bytesOut: 0,
    droppedFlowLimit: 0,
    droppedQueueFull: 0,
    droppedSendError: 0,
    droppedBlocked: 0,
    refused: 0,
  };
}

/** Options of UdpForwarder. */
export interface UdpForwarderOptions extends Pick<SettingValues, 'udpIdleTimeoutMs' | 'udpMaxFlows'> {
  target: IpAddress;
  targetPort: number;
  log: Log;
  stats?: UdpStats;
  /** Allow/deny lists checked before a flow opens; null: everyone. */
  access?: AccessRules | null;
  /** 'js' (this file) or 'native' (recvmmsg/sendmmsg with IP_PKTINFO, native/). */
  engine?: EngineName;
  /** The process fd budget each flow takes one fd from; null: unbounded. */
  budget?: FdBudget | null;
  /** Flows per client address, shared by every port of the mapping (JS engine). */
  sources?: Map<string, number>;
  /** An exception in this mapping's handlers (forward.ts ForwardSpec.onFault); absent: thrown on. */
  onFault?: (err: unknown) => void;
}

/** How many flows of a mapping one client address may hold: all but the share kept for others. */
export function flowsPerSource(maxFlows: number): number {
  return Math.max(1, maxFlows - Math.ceil(maxFlows / UDP_OTHERS_SHARE_DIVISOR));
}

interface Flow {
  address: string;
  port: number;
  socket: Socket;
  /** The forwarder serving it: replies leave from its listener (a new one after adopt()). */
  owner: UdpForwarder;
  lastActive: number;
  /** Datagrams waiting for connect(); null once connected. */
  pending: Buffer[] | null;
}

/**
 * dgram resolves every destination through a lookup function, by default dns.lookup with a
 * nextTick per send. Every address we send to is already an IP literal, so answer at once.
 */
function literalLookup(family: 4 | 6) {
  return (address: string, _opts: unknown, cb: (err: null, address: string, family: number) => void): void => {
    cb(null, address, family);
  };
}

/**
 * Creates a UDP socket of a family with the literal-address lookup and large kernel buffers
 * (applied once bound); v6 sockets are v6-only.
 */
export function createUdpSocket(family: 4 | 6, bufferBytes = UDP_LISTENER_BUFFER): Socket {
  return createSocket({
    type: family === 6 ? 'udp6' : 'udp4',
    ipv6Only: family === 6,
    lookup: literalLookup(family) as never,
    recvBufferSize: bufferBytes,
    sendBufferSize: bufferBytes,
  });
}

/** Forwards datagrams between clients of a bound listening socket and one target. */
export class UdpForwarder {
  readonly stats: UdpStats;
  readonly #listener: Socket;
  readonly #opts: UdpForwarderOptions;
  readonly #flows = new Map<string, Flow>();
  readonly #limited: RateLimitedLog;
  readonly #sweepMs: number;
  #timer: NodeJS.Timeout | null = null;
  /** Coarse clock, refreshed by the sweep timer: no Date.now() per datagram. */
  #now = Date.now();
  #draining = false;
  /** release(): the listener is closed, replies have nowhere to leave from. */
  #released = false;
  #native: NativeGroup | null = null;
  readonly #sources: Map<string, number>;
  readonly #perSource: number;

  constructor(listener: Socket, opts: UdpForwarderOptions) {
    this.#listener = listener;
    this.#opts = opts;
    this.#sources = opts.sources ?? new Map();
    this.#perSource = flowsPerSource(opts.udpMaxFlows);
    this.stats = opts.stats ?? newUdpStats();
    this.#limited = new RateLimitedLog(opts.log);
    this.#sweepMs = Math.min(UDP_SWEEP_MAX_MS, Math.max(UDP_SWEEP_MIN_MS, Math.floor(opts.udpIdleTimeoutMs / 10)));
    if (opts.engine === 'native') listener.once('listening', () => this.#handoff());
    else
      listener.on('message', (msg: Buffer, rinfo: RemoteInfo) => {
        try {
          this.#onClientDatagram(msg, rinfo);
        } catch (err) {
          this.#fault(err);
        }
      });
    listener.once('listening', () => {
      listener.on('error', (err: NodeJS.ErrnoException) => {
        this.#limited.warn(`listener:${err.code}`, { err: err.message }, 'UDP listener error; still serving');
      });
    });
  }

  /**
   * Native engine: the bound listener goes to the native thread, which then serves every flow.
   * The JavaScript socket stays open (it owns the port for close()) but never reads again.
   */
  #handoff(): void {
    const handle = udpHandle(this.#listener);
    handle.recvStop();
    const { target, targetPort, udpIdleTimeoutMs, udpMaxFlows, access } = this.#opts;
    const local = parseIp(this.#listener.address().address);
    this.#native = nativeUdp(
      this.stats,
      { listenerFd: handle.fd, target, targetPort, access: access?.spec ?? null, budget: this.#opts.budget ?? null },
      udpIdleTimeoutMs,
      udpMaxFlows,
      local !== null && isUnspecified(local),
      this.#perSource,
      (event, detail, client) => {
        try {
          this.#nativeEvent(event, detail, client);
        } catch (err) {
          this.#fault(err);
        }
      },
    );
  }

  /** An exception in a handler of this mapping: to its fault sink, or thrown on without one. */
  #fault(err: unknown): void {
    const sink = this.#opts.onFault;
    if (!sink) throw err;
    sink(err);
  }

  #blockedWarning(client: string | undefined): void {
    this.#limited.warn('blocked', { client }, 'datagrams refused by the access lists');
  }

  #limitWarning(): void {
    this.#limited.warn(
      'flow-limit',
      { maxFlows: this.#opts.udpMaxFlows, perSource: this.#perSource },
      'UDP flow limit reached; dropping datagrams from new clients',
    );
  }

  /** Logs what the native thread reports (a batch per epoll round) as the JavaScript engine does. */
  #nativeEvent(event: NativeEvent, detail: number, client: string | undefined): void {
    if (event === 'blocked') this.#blockedWarning(client);
    else if (event === 'flowLimit') this.#limitWarning();
    else if (event === 'flowError') {
      const code = errnoName(detail);
      this.#limited.warn(`flow:${code}`, { err: code }, 'cannot open UDP flow to target, or send failed');
    }
  }

  /** Stops opening new flows; established flows carry on until idle (graceful drain). */
  stopAccepting(): void {
    this.#draining = true;
    this.#native?.stop();
  }

  /**
   * Hand-over to a new engine that reads the same socket: read no more datagrams, and let the
   * established flows relay the target's replies (sent from the listener) until they idle out.
   */
  handOver(): void {
    this.#draining = true;
    if (this.#native) this.#native.unwatch();
    else udpHandle(this.#listener).recvStop();
  }

  /**
   * Its dockerd died: the listener closes (a restarted dockerd binds the port again) while the
   * flows live on, the target's replies dropped, until the same mapping registered again adopts
   * them or they idle out. (A client's next datagram then finds its flow: the target sees the
   * same source port, as if nothing happened.)
   */
  release(): void {
    this.#draining = true;
    if (this.#native) this.#native.release();
    this.#released = true;
    try {
      this.#listener.close();
    } catch {
      // already closed
    }
  }

  /** Takes the flows of a released forwarder of the same mapping (same engine kind). */
  adopt(from: UdpForwarder): void {
    if ((this.#native === null) !== (from.#native === null)) return; // flows live in one engine
    if (this.#native && from.#native) this.#native.adopt(from.#native);
    for (const [key, flow] of from.#flows) {
      from.#flows.delete(key);
      from.stats.flowsActive--;
      from.#countSource(flow.address, -1);
      if (this.#flows.has(key)) {
        // The client opened a new flow here first: that one serves it.
        this.#opts.budget?.give(1);
        this.#dropFlow(flow);
        continue;
      }
      flow.owner = this;
      this.#flows.set(key, flow);
      this.stats.flowsActive++;
      this.#countSource(flow.address, 1);
      this.#startSweep();
    }
  }

  /** Closes the listener and every flow socket. */
  close(): void {
    if (this.#timer) clearInterval(this.#timer);
    this.#timer = null;
    this.#native?.close();
    try {
      this.#listener.close();
    } catch {
      // already closed
    }
    for (const flow of this.#flows.values()) this.#closeFlow(flow);
    this.#flows.clear();
  }

  #onClientDatagram(msg: Buffer, rinfo: RemoteInfo): void {
    const stats = this.stats;
    const key = `${rinfo.address} ${rinfo.port}`;
    let flow = this.#flows.get(key);
    if (flow === undefined) {
      if (this.#draining) return;
      const { access } = this.#opts;
      if (access && !isAllowed(access, rinfo.address)) {
        stats.droppedBlocked++;
        this.#blockedWarning(rinfo.address);
        return;
      }
      const own = this.#sources.get(rinfo.address) ?? 0;
      if (stats.flowsActive >= this.#opts.udpMaxFlows || own >= this.#perSource || !(this.#opts.budget?.take(1) ?? true)) {
        stats.droppedFlowLimit++;
        this.#limitWarning();
        return;
      }
      this.#sources.set(rinfo.address, own + 1);
      flow = this.#openFlow(key, rinfo);
    }
    stats.datagramsIn++;
    stats.bytesIn += msg.length;
    flow.lastActive = this.#now;
    if (flow.pending !== null) {
      if (flow.pending.length < UDP_PENDING_PER_FLOW) flow.pending.push(msg);
      else stats.droppedQueueFull++;
      return;
    }
    if (flow.socket.getSendQueueCount() >= UDP_SEND_QUEUE_MAX) {
      stats.droppedQueueFull++;
      return;
    }
    flow.socket.send(msg);
  }

  #openFlow(key: string, rinfo: RemoteInfo): Flow {
    const { target, targetPort, log } = this.#opts;
    const socket = createUdpSocket(target.family, UDP_FLOW_BUFFER);
    const flow: Flow = { address: rinfo.address, port: rinfo.port, socket, owner: this, lastActive: this.#now, pending: [] };
    this.#flows.set(key, flow);
    this.stats.flowsCreated++;
    this.stats.flowsActive++;
    this.#startSweep();
    flow.lastActive = this.#now;
    socket.on('message', (reply: Buffer) => {
      try {
        flow.owner.#onReply(flow, reply);
      } catch (err) {
        flow.owner.#fault(err);
      }
    });
    socket.on('error', (err: NodeJS.ErrnoException) => {
      try {
        flow.owner.#onFlowError(flow, key, err);
      } catch (e) {
        flow.owner.#fault(e);
      }
    });
    socket.connect(targetPort, target.address, () => {
      const pending = flow.pending ?? [];
      flow.pending = null;
      for (const m of pending) socket.send(m);
    });
    if (log.debugEnabled) log.debug({ client: `${rinfo.address}:${rinfo.port}` }, 'UDP flow opened');
    return flow;
  }

  /** A target's reply: back to the client from the listener (dropped while released). */
  #onReply(flow: Flow, reply: Buffer): void {
    const stats = this.stats;
    stats.datagramsOut++;
    stats.bytesOut += reply.length;
    flow.lastActive = this.#now;
    if (this.#released) {
      stats.droppedSendError++;
      return;
    }
    if (this.#listener.getSendQueueCount() >= UDP_SEND_QUEUE_MAX) {
      stats.droppedQueueFull++;
      return;
    }
    this.#listener.send(reply, flow.port, flow.address);
  }

  #onFlowError(flow: Flow, key: string, err: NodeJS.ErrnoException): void {
    if (err.code === 'ECONNREFUSED') {
      // ICMP port unreachable from the target: reported on the next read; the flow lives on.
      this.stats.refused++;
      return;
    }
    if (flow.pending !== null) {
      // bind/connect failed (EMFILE, ENETUNREACH, ...): the flow cannot work; let it go.
      this.stats.droppedSendError += flow.pending.length;
      this.#limited.warn(`flow:${err.code}`, { err: err.message }, 'cannot open UDP flow to target');
      this.#flows.delete(key);
      this.#closeFlow(flow);
      return;
    }
    this.stats.droppedSendError++;
    this.#limited.warn(`flow:${err.code}`, { err: err.message }, 'UDP flow error');
  }

  /** The idle sweep runs while there are flows. */
  #startSweep(): void {
    if (this.#timer !== null) return;
    this.#now = Date.now();
    this.#timer = setInterval(() => {
      try {
        this.#sweep();
      } catch (err) {
        this.#fault(err);
      }
    }, this.#sweepMs);
    this.#timer.unref();
  }

  #closeFlow(flow: Flow): void {
    this.stats.flowsActive--;
    this.#opts.budget?.give(1);
    this.#countSource(flow.address, -1);
    this.#dropFlow(flow);
  }

  /** One flow more or fewer for a client address (a count of zero is forgotten). */
  #countSource(address: string, delta: 1 | -1): void {
    const n = (this.#sources.get(address) ?? 0) + delta;
    if (n > 0) this.#sources.set(address, n);
    else this.#sources.delete(address);
  }

  /** Closes a flow's socket (its counts are the caller's). */
  #dropFlow(flow: Flow): void {
    flow.pending = null;
    try {
      flow.socket.close();
    } catch {
      // already closed
    }
  }

  #sweep(): void {
    const now = Date.now();
    this.#now = now;
    const idle = this.#opts.udpIdleTimeoutMs;
    const log = this.#opts.log;
    for (const [key, flow] of this.#flows) {
      if (now - flow.lastActive >= idle) {
        this.#flows.delete(key);
        this.#closeFlow(flow);
        this.stats.flowsExpired++;
        if (log.debugEnabled) log.debug({ client: `${flow.address}:${flow.port}` }, 'UDP flow expired');
      }
    }
    if (this.#flows.size === 0 && this.#timer !== null) {
      clearInterval(this.#timer);
      this.#timer = null;
    }
  }
}
