/**
 * Engine choice and the JavaScript face of the native engine (native/): splice(2) for
 * TCP, recvmmsg/sendmmsg with IP_PKTINFO for UDP, on one native thread per environment.
 *
 * `auto` (the default) uses the native engine when the addon built and loads, otherwise the
 * JavaScript engine with one warning; `native` fails at start when it cannot load; `js` never
 * loads it. Set by USERLAND_PROXY_ENGINE or the -engine / --engine flag.
 *
 * Counters live in Float64Arrays that only the native thread writes; bindCounters() makes the
 * forwarders' plain stats objects read them, so metrics code sees one set of numbers whatever the
 * engine.
 */
import { readFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { fileURLToPath } from 'node:url';
import { ADDON } from '../paths.js';
import { constants } from 'node:os';
import type { FdBudget } from '../core/fd-limit.js';
import { UDP_FLOW_BUFFER } from '../core/constants.js';
import { ipFromBytes, ipToBytes, type IpAddress } from '../core/address.js';
import { ruleOf, type AccessSpec } from '../core/access-list.js';
import { ProxyError } from '../core/errors.js';
import { CONNECT_BUCKETS, LIFETIME_BUCKETS, type PlainHistogram } from '../core/histogram.js';
import type { SettingValues } from '../core/settings.js';
import type { TcpStats } from './tcp-types.js';
import type { EngineChoice, EngineName } from '../core/data-path-choice.js';

/** What a native listener reports for JavaScript to log, in the addon's order (engine.h EVENTS). */
export const NATIVE_EVENTS = [
  'limit',
  'blocked',
  'fdBudget',
  'acceptError',
  'connectError',
  'connectTimeout',
  'idle',
  'linger',
  'flowLimit',
  'flowError',
  'timeWait',
] as const;
/** One of NATIVE_EVENTS. */
export type NativeEvent = (typeof NATIVE_EVENTS)[number];
/**
 * Doubles per event in a batch: [groupId, event, detail, 16 address bytes]. detail is an errno
 * (acceptError, connectError, flowError) or, for blocked, the family of the last client refused.
 */
const EVENT_SLOTS = 5;
/** errno value -> its name (ECONNREFUSED), for log keys like the JavaScript engine's. */
const ERRNO_NAMES = new Map(Object.entries(constants.errno).map(([name, value]) => [value, name]));

/** The name of an errno value an event carries (`errno 1234` if unknown). */
export function errnoName(errno: number): string {
  return ERRNO_NAMES.get(errno) ?? `errno ${errno}`;
}

/** A group's event handler: client is the refused client's address (blocked only). */
export type NativeEventHandler = (event: NativeEvent, detail: number, client: string | undefined) => void;

/** What the addon says of its side of the contract (native/binding.c, make_contract). */
export interface NativeContract {
  events: string[];
  eventSlots: number;
  tcpCounters: string[];
  connectBuckets: number[];
  lifetimeBuckets: number[];
  udpCounters: string[];
  aclRecordBytes: number;
  udpFlowBuffer: number;
}

/** The arguments both group kinds start with (binding.c COMMON). */
type CommonArgs = [
  id: number,
  counters: Float64Array,
  listenerFd: number,
  target: Buffer,
  targetPort: number,
  scopeId: number,
  allow: Buffer | null,
  deny: Buffer | null,
  budget: Int32Array | null,
  budgetLimit: number,
  budgetOwn: number,
];

interface Addon {
  contract: NativeContract;
  init(onEvents: (batch: Float64Array) => void): void;
  tcpGroup(
    ...args: [...CommonArgs, connectMs: number, idleMs: number, lingerMs: number, pipeBytes: number, maxConns: number, proxy: number, connFds: number]
  ): object;
  udpGroup(...args: [...CommonArgs, idleMs: number, maxFlows: number, wildcard: boolean, perSource: number]): object;
  groupFd(group: object): number;
  groupStop(group: object, how: StopHow): void;
  groupAdopt(group: object, from: object): void;
  groupClose(group: object): void;
  groupsOpen(): number;
  shutdown(): void;
}

let addon: Addon | null | undefined;
let loadError = '';
const onEvent = new Map<number, NativeEventHandler>();
let nextGroupId = 1;
let warned = false;

/** ACL record: [family, prefix, 16 address bytes] (packCidrs). */
const ACL_RECORD_BYTES = 18;

/**
 * Compares the addon's contract with this side's tables; returns what differs (null: all agree).
 * An addon built from other sources (an old build/ left behind) must never swap counters or
 * misread close reasons silently.
 */
export function contractMismatch(c: Partial<NativeContract> | undefined): string | null {
  const same = (a: unknown, b: unknown): boolean => JSON.stringify(a) === JSON.stringify(b);
  const mine: NativeContract = {
    events: [...NATIVE_EVENTS],
    eventSlots: EVENT_SLOTS,
    tcpCounters: [...TCP_NATIVE_KEYS],
    connectBuckets: CONNECT_BUCKETS,
    lifetimeBuckets: LIFETIME_BUCKETS,
    udpCounters: [...UDP_NATIVE_KEYS],
    aclRecordBytes: ACL_RECORD_BYTES,
    udpFlowBuffer: UDP_FLOW_BUFFER,
  };
  for (const key of Object.keys(mine) as (keyof NativeContract)[]) {
    if (!same(c?.[key], mine[key])) return `${key} ${JSON.stringify(c?.[key])}, expected ${JSON.stringify(mine[key])}`;
  }
  return null;
}

/** Loads the addon once per environment (process or worker); null if it cannot. */
function load(): Addon | null {
  if (addon !== undefined) return addon;
  try {
    const a = createRequire(ADDON)(fileURLToPath(ADDON)) as Addon;
    const mismatch = contractMismatch(a.contract);
    if (mismatch !== null) throw new Error(`the addon does not match this build (${mismatch}); rebuild it with npm ci`);
    addon = a;
  } catch (err) {
    loadError = (err as Error).message.split('\n')[0] ?? 'unknown error';
    addon = null;
  }
  return addon;
}

/**
 * Bytes waiting unread in a socket's receive buffer (FIONREAD, through the addon without starting
 * its thread); -1 when unknown (no addon).
 */
export function unreadBytes(fd: number): number {
  const a = load() as (Addon & { unread?: (fd: number) => number }) | null;
  return fd >= 0 && typeof a?.unread === 'function' ? a.unread(fd) : -1;
}

/** Groups (mappings' listeners) the native thread walks: a closed one leaves at once (audit N6). */
export function nativeGroupsOpen(): number {
  return load()?.groupsOpen() ?? 0;
}

/**
 * Arms (true) or disarms SO_LINGER {1, 0} on a socket: while armed, its close sends a reset. The
 * JavaScript engine arms every relayed socket so that a death of the process (SIGKILL, OOM, a
 * crash) resets its connections instead of ending a truncated transfer with a FIN (audit N4), and
 * disarms it before each deliberate clean close. Without the addon, a no-op (the README says so).
 */
export function resetOnClose(fd: number, on: boolean): void {
  const a = load() as (Addon & { resetOnClose?: (fd: number, on: boolean) => void }) | null;
  if (fd >= 0 && a?.resetOnClose) a.resetOnClose(fd, on);
}

/** The addon's TIME_WAIT functions (native/time-wait.c), for the JavaScript engine's sockets. */
interface TimeWaitAddon {
  timeWaitMark(fd: number): Buffer | number;
  timeWaitEnd(fd: number, mark: Buffer): number;
}

/**
 * Names a target socket's connection when our FIN goes out first, so that timeWaitEnd can remove
 * its TIME_WAIT after the clean close (native/time-wait.c says why that is safe). null without
 * the addon, or when the kernel could not say (the connection then keeps its TIME_WAIT).
 */
export function timeWaitMark(fd: number): Buffer | null {
  const a = load() as (Addon & Partial<TimeWaitAddon>) | null;
  if (fd < 0 || !a?.timeWaitMark) return null;
  const m = a.timeWaitMark(fd);
  return typeof m === 'number' ? null : m;
}

/** Removes the TIME_WAIT of a marked socket after its clean close, before it is closed: 0, or the errno (ENOENT: none to remove). */
export function timeWaitEnd(fd: number, mark: Buffer): number {
  const a = load() as (Addon & Partial<TimeWaitAddon>) | null;
  return a?.timeWaitEnd ? a.timeWaitEnd(fd, mark) : constants.errno.ENOSYS;
}

/** Whether the native engine can run in this process (its pipes then get an fd allowance). */
export function nativeLoadable(): boolean {
  return process.platform === 'linux' && load() !== null;
}

/** The addon for the shared engine's control socket (engine-protocol.ts), or why it cannot load. */
export function controlAddon(): object | string {
  return load() ?? `native addon unavailable: ${loadError}`;
}

let started = false;
/** The loaded addon with its thread started (on first use, so a supervisor never starts one). */
function engine(): Addon {
  const a = load();
  if (a === null) throw new Error(`native engine unavailable: ${loadError}`);
  if (!started) {
    a.init((batch) => {
      for (let i = 0; i < batch.length; i += EVENT_SLOTS) {
        const event = NATIVE_EVENTS[batch[i + 1] as number] as NativeEvent;
        const detail = batch[i + 2] as number;
        // The address is raw bytes in two slots: read as bytes, never as numbers.
        const client = event === 'blocked' ? ipFromBytes(Buffer.from(batch.buffer, batch.byteOffset + (i + 3) * 8, 16), detail === 4 ? 4 : 6) : undefined;
        onEvent.get(batch[i] as number)?.(event, detail, client);
      }
    });
    // exit() must not run while the native thread still calls into the runtime.
    process.on('exit', () => a.shutdown());
    started = true;
  }
  return a;
}

/**
 * Resolves the engine to run. `warn` is called once when auto falls back to JavaScript.
 * Throws a ProxyError (code given by the caller's mode) when `native` is forced but unavailable.
 */
export function selectEngine(choice: EngineChoice, warn: (msg: string) => void, code: ProxyError['code']): EngineName {
  if (choice === 'js') return 'js';
  if (process.platform !== 'linux') loadError = 'splice(2) needs Linux';
  else if (load() !== null) return 'native';
  if (choice === 'native') throw new ProxyError(code, `native engine unavailable: ${loadError}`);
  if (!warned) warn(`native engine unavailable (${loadError}); using the JavaScript engine`);
  warned = true;
  return 'js';
}

/**
 * Makes obj[key] read `base + counters[i]` for each key (and writes adjust the base), so a stats
 * object shared by several forwarders (a port range) reads native and JS counts alike. A dotted
 * key names a key of a nested object (`connectErrors.refused`).
 */
function bindCounters(obj: object, keys: readonly string[], counters: Float64Array, from = 0): void {
  keys.forEach((path, i) => {
    const parts = path.split('.');
    const key = parts.pop() as string;
    const target = parts.reduce((o, k) => o[k] as Record<string, unknown>, obj as Record<string, unknown>) as Record<string, number>;
    let base = target[key] ?? 0;
    Object.defineProperty(target, key, {
      enumerable: true,
      configurable: true,
      get: () => base + (counters[from + i] as number),
      set: (v: number) => {
        base = v - (counters[from + i] as number);
      },
    });
  });
}

/** A histogram's slots as the native thread lays them out: counts (the last +Inf), sum, count. */
function bindHistogram(h: PlainHistogram, counters: Float64Array, from: number): void {
  bindCounters(
    h.counts,
    h.counts.map((_, i) => String(i)),
    counters,
    from,
  );
  bindCounters(h, ['sum', 'count'], counters, from + h.counts.length);
}

/** The counters object of a stats object, made and bound on first use. */
const countersOf = new WeakMap<object, Float64Array>();
function sharedCounters(stats: object, keys: readonly string[], histograms: readonly PlainHistogram[] = []): Float64Array {
  let c = countersOf.get(stats);
  if (c === undefined) {
    const slots = keys.length + histograms.reduce((n, h) => n + h.counts.length + 2, 0);
    // An ArrayBuffer's backing store never moves: the native thread writes into it.
    c = new Float64Array(new ArrayBuffer(8 * slots));
    bindCounters(stats, keys, c);
    let from = keys.length;
    for (const h of histograms) {
      bindHistogram(h, c, from);
      from += h.counts.length + 2;
    }
    countersOf.set(stats, c);
  }
  return c;
}

/** TCP counters the native thread keeps, in the order of native/engine.h (checked at load). */
const TCP_NATIVE_KEYS = [
  'bytesIn',
  'bytesOut',
  'pausesClient',
  'pausesUpstream',
  'accepted',
  'active',
  'acceptErrors',
  'rejectedLimit',
  'rejectedBlocked',
  'aborted',
  'idleTimeouts',
  'lingerTimeouts',
  'connectErrors.refused',
  'connectErrors.timeout',
  'connectErrors.unreachable',
  'connectErrors.other',
  'connectErrors.noLocalPort',
  'timeWaitEnded',
] as const;
/** UDP counters the native thread keeps, in the order of native/engine.h (checked at load). */
const UDP_NATIVE_KEYS = [
  'flowsCreated',
  'flowsActive',
  'flowsExpired',
  'datagramsIn',
  'bytesIn',
  'datagramsOut',
  'bytesOut',
  'droppedFlowLimit',
  'droppedQueueFull',
  'droppedSendError',
  'droppedBlocked',
  'refused',
] as const;

/** What the native thread needs of a mapping's listener, whichever the protocol. */
export interface NativeListen {
  listenerFd: number;
  target: IpAddress;
  targetPort: number;
  access: AccessSpec | null;
  budget: FdBudget | null;
}

/** binding.c's COMMON arguments of a new group. */
function commonArgs(id: number, counters: Float64Array, l: NativeListen): CommonArgs {
  return [
    id,
    counters,
    l.listenerFd,
    ipToBytes(l.target.address),
    l.targetPort,
    scopeIdOf(l.target.address),
    packCidrs(l.access?.allow ?? []),
    packCidrs(l.access?.deny ?? []),
    l.budget?.cells ?? null,
    l.budget?.limit ?? 0,
    l.budget?.own ?? 0,
  ];
}

/** groupStop's how (binding contract): drain, hand-over, release. */
const STOP = { drain: 0, handOver: 1, release: 2 } as const;
type StopHow = (typeof STOP)[keyof typeof STOP];

/** A listener the native thread serves. */
export interface NativeGroup {
  /** The native thread's copy of the listening socket (-1 once closed). */
  fd(): number;
  /** TCP: closes the listener, open connections carry on; UDP: opens no new flow. */
  stop(): void;
  /** UDP hand-over: reads no more datagrams (another engine does); flows relay replies until idle. */
  unwatch(): void;
  /** UDP: closes the listener (the port is free); flows live on, the target's replies dropped. */
  release(): void;
  /** UDP: takes the flows of another group of this mapping (after release()). */
  adopt(from: NativeGroup): void;
  /** Closes everything; the port is free when it returns. */
  close(): void;
}

/** The addon's group object behind each handle (for groupAdopt). */
const groupObjects = new WeakMap<NativeGroup, object>();

/** Wraps a group for JavaScript: close() once, its event handler forgotten. */
function groupHandle(a: Addon, id: number, group: object): NativeGroup {
  let closed = false;
  const handle: NativeGroup = {
    fd: () => (closed ? -1 : a.groupFd(group)),
    stop: () => {
      if (!closed) a.groupStop(group, STOP.drain);
    },
    unwatch: () => {
      if (!closed) a.groupStop(group, STOP.handOver);
    },
    release: () => {
      if (!closed) a.groupStop(group, STOP.release);
    },
    adopt: (from) => {
      const other = groupObjects.get(from);
      if (!closed && other) a.groupAdopt(group, other);
    },
    close: () => {
      if (closed) return;
      closed = true;
      a.groupClose(group);
      onEvent.delete(id);
    },
  };
  groupObjects.set(handle, group);
  return handle;
}

/** Options of a native TCP listener beyond NativeListen. */
export interface NativeTcpOptions extends Pick<SettingValues, 'connectTimeoutMs' | 'idleTimeoutMs' | 'lingerTimeoutMs' | 'maxConnections' | 'proxyProtocol'> {
  pipeBytes: number;
  /** fds one connection takes from the budget. */
  connectionFds: number;
}

/**
 * Serves a listening TCP socket natively: accept, cap, access lists, budget, dial, PROXY header
 * and relay. Its counters and histograms feed `stats`; `events` gets what is to be logged. The
 * caller closes its own fd of the socket at once (the native thread holds a copy).
 */
export function nativeTcp(stats: TcpStats, l: NativeListen, o: NativeTcpOptions, events: NativeEventHandler): NativeGroup {
  const a = engine();
  const id = nextGroupId++;
  const counters = sharedCounters(stats, TCP_NATIVE_KEYS, [stats.connectDuration, stats.connectionDuration]);
  const group = a.tcpGroup(
    ...commonArgs(id, counters, l),
    o.connectTimeoutMs,
    o.idleTimeoutMs,
    o.lingerTimeoutMs,
    o.pipeBytes,
    o.maxConnections ?? -1,
    { off: 0, v1: 1, v2: 2 }[o.proxyProtocol],
    o.connectionFds,
  );
  onEvent.set(id, events);
  return groupHandle(a, id, group);
}

/**
 * Packs CIDRs as 18-byte entries [family, prefix, 16 address bytes] for the native ACL, in the
 * family each rule applies to (access-list.ts: mapped IPv6 rules are IPv4 rules).
 */
function packCidrs(cidrs: readonly string[]): Buffer | null {
  if (cidrs.length === 0) return null;
  const out = Buffer.alloc(ACL_RECORD_BYTES * cidrs.length);
  cidrs.map(ruleOf).forEach((rule, i) => {
    out[ACL_RECORD_BYTES * i] = rule.family;
    out[ACL_RECORD_BYTES * i + 1] = rule.prefix;
    ipToBytes(rule.address).copy(out, ACL_RECORD_BYTES * i + 2);
  });
  return out;
}

/**
 * The interface index of a scoped IPv6 address's zone (`fe80::1%eth0`, `fe80::1%3`), 0 without
 * one: the native engine connects its flow sockets with it as sin6_scope_id.
 */
export function scopeIdOf(address: string): number {
  const zone = address.split('%')[1];
  if (zone === undefined) return 0;
  if (/^\d+$/.test(zone)) return Number(zone);
  try {
    return Number(readFileSync(`/sys/class/net/${zone.replace(/[/.]/g, '')}/ifindex`, 'utf8').trim());
  } catch {
    throw new Error(`unknown network interface "${zone}" in ${address}`);
  }
}

/**
 * Serves a bound UDP listener natively (flows, expiry, limits, ACL); its counters feed `stats`,
 * `events` gets what is to be logged (blocked, flowLimit, flowError).
 */
export function nativeUdp(
  stats: object,
  l: NativeListen,
  idleMs: number,
  maxFlows: number,
  wildcard: boolean,
  perSource: number,
  events: NativeEventHandler,
): NativeGroup {
  const a = engine();
  const id = nextGroupId++;
  const group = a.udpGroup(...commonArgs(id, sharedCounters(stats, UDP_NATIVE_KEYS), l), idleMs, maxFlows, wildcard, perSource);
  onEvent.set(id, events);
  return groupHandle(a, id, group);
}
