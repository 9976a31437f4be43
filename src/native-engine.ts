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
import type { FdBudget } from './fd-limit.js';
import { UDP_FLOW_BUFFER } from './constants.js';
import { ipToBytes, type IpAddress } from './address.js';
import { ruleOf, type AccessSpec } from './access-list.js';
import { ProxyError } from './errors.js';

/** What a user may ask for. */
export type EngineChoice = 'auto' | 'native' | 'js';
/** What runs. */
export type EngineName = 'native' | 'js';
/** The values the setting accepts. */
export const ENGINE_CHOICES: readonly EngineChoice[] = ['auto', 'native', 'js'];

/** Parses an engine choice (auto, native, js); the message says what is accepted. */
export function parseEngine(v: unknown): EngineChoice {
  if (typeof v === 'string' && (ENGINE_CHOICES as readonly string[]).includes(v)) return v as EngineChoice;
  throw new Error(`use one of ${ENGINE_CHOICES.join(', ')}`);
}

/** Why a TCP connection ended, as the native thread reports it. */
export const CLOSE_REASON = { clean: 0, aborted: 1, idle: 2, linger: 3, closed: 4 } as const;

/** What the addon says of its side of the contract (native/binding.c, make_contract). */
export interface NativeContract {
  closeReasons: Record<string, number>;
  tcpCounters: string[];
  udpCounters: string[];
  aclRecordBytes: number;
  udpFlowBuffer: number;
}

interface Addon {
  contract: NativeContract;
  init(onClose: (batch: number[]) => void): void;
  tcpGroup(id: number, counters: Float64Array, idleMs: number, lingerMs: number, pipeBytes: number): object;
  tcpAdopt(group: object, connId: number, clientFd: number, targetFd: number): void;
  udpGroup(
    id: number,
    counters: Float64Array,
    listenerFd: number,
    target: Buffer,
    targetPort: number,
    idleMs: number,
    maxFlows: number,
    allow: Buffer | null,
    deny: Buffer | null,
    wildcard: boolean,
    perSource: number,
    budget: Int32Array | null,
    budgetLimit: number,
    budgetOwn: number,
    scopeId: number,
  ): object;
  groupStop(group: object): void;
  groupClose(group: object): void;
  shutdown(): void;
}

let addon: Addon | null | undefined;
let loadError = '';
const onClose = new Map<number, (connId: number, reason: number) => void>();
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
    closeReasons: CLOSE_REASON,
    tcpCounters: [...TCP_NATIVE_KEYS],
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
    const a = createRequire(import.meta.url)('../build/Release/engine.node') as Addon;
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
      for (let i = 0; i < batch.length; i += 3) onClose.get(batch[i] as number)?.(batch[i + 1] as number, batch[i + 2] as number);
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
 * Makes stats[key] read `base + counters[i]` for each key (and writes adjust the base), so a
 * stats object shared by several forwarders (a port range) reads native and JS counts alike.
 */
function bindCounters(stats: object, keys: readonly string[], counters: Float64Array): void {
  const target = stats as Record<string, number>;
  keys.forEach((key, i) => {
    let base = target[key] ?? 0;
    Object.defineProperty(target, key, {
      enumerable: true,
      configurable: true,
      get: () => base + (counters[i] as number),
      set: (v: number) => {
        base = v - (counters[i] as number);
      },
    });
  });
}

/** The counters object of a stats object, made and bound on first use. */
const countersOf = new WeakMap<object, Float64Array>();
function sharedCounters(stats: object, keys: readonly string[]): Float64Array {
  let c = countersOf.get(stats);
  if (c === undefined) {
    // An ArrayBuffer's backing store never moves: the native thread writes into it.
    c = new Float64Array(new ArrayBuffer(8 * keys.length));
    bindCounters(stats, keys, c);
    countersOf.set(stats, c);
  }
  return c;
}

/** TCP counters the native thread keeps, in the order of native/engine.h (checked at load). */
const TCP_NATIVE_KEYS = ['bytesIn', 'bytesOut', 'pausesClient', 'pausesUpstream'] as const;
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

/** A TCP forwarder's native side. */
export interface NativeTcp {
  /** Hands both connected sockets to the native thread; the caller then destroys its own. */
  adopt(connId: number, clientFd: number, targetFd: number): void;
  close(): void;
}

/** Creates the native side of a TCP forwarder; its counters feed `stats`. */
export function nativeTcp(stats: object, idleMs: number, lingerMs: number, pipeBytes: number, closed: (connId: number, reason: number) => void): NativeTcp {
  const a = engine();
  const id = nextGroupId++;
  onClose.set(id, closed);
  const group = a.tcpGroup(id, sharedCounters(stats, TCP_NATIVE_KEYS), idleMs, lingerMs, pipeBytes);
  return {
    adopt: (connId, clientFd, targetFd) => a.tcpAdopt(group, connId, clientFd, targetFd),
    close: () => {
      a.groupClose(group);
      onClose.delete(id);
    },
  };
}

/** A UDP forwarder's native side. */
export interface NativeUdp {
  stop(): void;
  close(): void;
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

/** Serves a bound UDP listener natively (flows, expiry, limits, ACL); its counters feed `stats`. */
export function nativeUdp(
  stats: object,
  listenerFd: number,
  target: IpAddress,
  targetPort: number,
  idleMs: number,
  maxFlows: number,
  access: AccessSpec | null,
  wildcard: boolean,
  perSource: number,
  budget: FdBudget | null,
): NativeUdp {
  const a = engine();
  const group = a.udpGroup(
    nextGroupId++,
    sharedCounters(stats, UDP_NATIVE_KEYS),
    listenerFd,
    ipToBytes(target.address),
    targetPort,
    idleMs,
    maxFlows,
    packCidrs(access?.allow ?? []),
    packCidrs(access?.deny ?? []),
    wildcard,
    perSource,
    budget?.cells ?? null,
    budget?.limit ?? 0,
    budget?.own ?? 0,
    scopeIdOf(target.address),
  );
  let closed = false;
  return {
    stop: () => a.groupStop(group),
    close: () => {
      if (closed) return;
      closed = true;
      a.groupClose(group);
    },
  };
}
