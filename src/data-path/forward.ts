/**
 * The one forward path: opens every host port of a mapping (a range is one mapping) with the
 * forwarder of its protocol, sharing one stats object, one per-source UDP table and the process
 * fd budget. Docker mode (one port, maybe on fd 4) and standalone workers (a port range each) both
 * open their mappings here; so will any later caller.
 */
import type { AccessRules } from '../core/access-list.js';
import type { FdBudget } from '../core/fd-limit.js';
import type { Socket as UdpSocket } from 'node:dgram';
import type { Server } from 'node:net';
import { bindUdp, listenTcp } from './listen.js';
import type { Log } from '../core/logger.js';
import type { EngineName } from '../core/data-path-choice.js';
import { udpHandle } from '../core/node-internals.js';
import type { IpAddress, Proto } from '../core/address.js';
import type { ProxyProtocol } from '../core/proxy-protocol.js';
import type { SettingValues } from '../core/settings.js';
import { createTcpServer, TcpForwarder } from './tcp-forwarder.js';
import { newTcpStats, type TcpStats } from './tcp-types.js';
import { createUdpSocket, newUdpStats, UdpForwarder, type UdpStats } from './udp-forwarder.js';

/** The settings a mapping's forwarders take (docker mode: the environment; standalone: the config), and its engine. */
export type ForwardSettings = Pick<
  SettingValues,
  'connectTimeoutMs' | 'idleTimeoutMs' | 'lingerTimeoutMs' | 'maxConnections' | 'maxBuffer' | 'udpIdleTimeoutMs' | 'udpMaxFlows'
> & { engine: EngineName };

/** Where a mapping listens and where it forwards: a host port range onto a target port range. */
export interface Binding {
  proto: Proto;
  host: IpAddress;
  hostPort: number;
  /** Last host port of the range (== hostPort for a single port). */
  hostPortEnd: number;
  target: IpAddress;
  targetPort: number;
  /** PROXY protocol header towards the target (TCP only). */
  proxyProtocol: ProxyProtocol;
}

/** What to open: the mapping's addresses and ports (a range when hostPortEnd > hostPort), and how. */
export interface ForwardSpec extends Binding {
  /** Adopt this listening socket instead of binding (docker mode's fd 4; one port only). */
  listenFd: number | null;
  access: AccessRules | null;
  settings: ForwardSettings;
  log: Log;
  budget: FdBudget | null;
  /**
   * An exception thrown by the mapping's own code (a handler of its sockets or timers): the
   * shared engine ends that mapping alone. Absent, it is thrown on (a per-port process or a
   * worker thread dies of it, and its supervisor or runtime sees that).
   */
  onFault?: (err: unknown) => void;
}

/** An open mapping: its counters, and its listeners to stop or close. */
export interface OpenMapping {
  tcp: TcpStats | null;
  udp: UdpStats | null;
  /** Closes the listeners; TCP connections carry on (drain). UDP closes at once. */
  stopAccepting(): void;
  /**
   * Hand-over to a new engine sharing the sockets: TCP stops accepting, UDP stops reading; TCP
   * connections and UDP flows carry on until they end or idle out.
   */
  handOver(): void;
  /**
   * Its dockerd died: the listeners close (the ports are free for a restarted one); TCP
   * connections and UDP flows carry on (the target's UDP replies are dropped until adopt()).
   */
  release(): void;
  /** Takes the UDP flows of a released mapping of the same ports (its dockerd restarted). */
  adopt(from: OpenMapping): void;
  /** Closes listeners, connections and flows. */
  close(): void;
  /** The first port's listening socket (the shared engine hands a copy to the shim); -1 if unknown. */
  listenerFd(): number;
}

/** Each open mapping's forwarders, port by port (for adopt). */
const forwardersOf = new WeakMap<OpenMapping, (TcpForwarder | UdpForwarder)[]>();

/** Opens every port of a mapping; all or nothing (a failure closes what opened and throws). */
export async function openMapping(spec: ForwardSpec): Promise<OpenMapping> {
  const { settings: s, log, budget, access } = spec;
  const ports = spec.hostPortEnd - spec.hostPort + 1;
  // Each listening socket is an fd of the process budget too.
  if (budget && !budget.take(ports)) {
    throw new Error(`file descriptor budget spent: ${budget.used} of ${budget.limit} taken, ${ports} listener(s) needed (raise RLIMIT_NOFILE)`);
  }
  const tcp = spec.proto === 'tcp' ? newTcpStats() : null;
  const udp = spec.proto === 'udp' ? newUdpStats() : null;
  const sources = new Map<string, number>();
  const forwarders: (TcpForwarder | UdpForwarder)[] = [];
  const opened: Promise<void>[] = [];
  const listeners: (Server | UdpSocket)[] = [];
  for (let i = 0; i < ports; i++) {
    const listen = { host: spec.host, port: spec.hostPort + i, listenFd: spec.listenFd };
    const target = { target: spec.target, targetPort: spec.targetPort + i, log, access, budget, engine: s.engine, onFault: spec.onFault };
    if (tcp) {
      const server = createTcpServer();
      listeners.push(server);
      forwarders.push(
        new TcpForwarder(server, {
          ...target,
          stats: tcp,
          maxConnections: s.maxConnections,
          proxyProtocol: spec.proxyProtocol,
          maxBuffer: s.maxBuffer,
          connectTimeoutMs: s.connectTimeoutMs,
          idleTimeoutMs: s.idleTimeoutMs,
          lingerTimeoutMs: s.lingerTimeoutMs,
        }),
      );
      opened.push(listenTcp(server, listen));
    } else {
      const socket = createUdpSocket(spec.host.family);
      listeners.push(socket);
      forwarders.push(
        new UdpForwarder(socket, {
          ...target,
          stats: udp as UdpStats,
          udpIdleTimeoutMs: s.udpIdleTimeoutMs,
          udpMaxFlows: s.udpMaxFlows,
          sources,
        }),
      );
      opened.push(bindUdp(socket, listen));
    }
  }
  const rejected = (await Promise.allSettled(opened)).find((r) => r.status === 'rejected') as PromiseRejectedResult | undefined;
  const startError = forwarders.map((f) => (f instanceof TcpForwarder ? f.startError : null)).find((e) => e !== null);
  const failure = rejected?.reason ?? startError;
  let closed = false;
  const close = (): void => {
    for (const f of forwarders) f.close();
    if (!closed) budget?.give(ports);
    closed = true;
  };
  if (failure) {
    close();
    throw failure;
  }
  /** TCP listeners stop accepting (their connections go on); each UDP port does `udp`. */
  const stopListening = (udp: (f: UdpForwarder) => void): void => {
    for (const f of forwarders) {
      if (f instanceof TcpForwarder) f.stopAccepting();
      else udp(f);
    }
  };
  const open: OpenMapping = {
    tcp,
    udp,
    stopAccepting: () => {
      for (const f of forwarders) f.stopAccepting();
      // UDP has nothing in flight to finish (a flow is only an address pair): it closes now,
      // which frees its ports for a mapping that takes them over.
      if (udp) close();
    },
    handOver: () => stopListening((f) => f.handOver()),
    release: () => stopListening((f) => f.release()),
    adopt: (from) => {
      const theirs = forwardersOf.get(from) ?? [];
      forwarders.forEach((f, i) => {
        const other = theirs[i];
        if (f instanceof UdpForwarder && other instanceof UdpForwarder) f.adopt(other);
      });
    },
    close,
    listenerFd: () => {
      const f = forwarders[0];
      if (f instanceof TcpForwarder) return f.listenerFd();
      try {
        return udpHandle(listeners[0] as UdpSocket).fd;
      } catch {
        return -1;
      }
    },
  };
  forwardersOf.set(open, forwarders);
  return open;
}
