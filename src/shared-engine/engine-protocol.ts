/**
 * The shared engine's side of the shim protocol (native/shim.c states it in full): the engine's
 * name (native/ctl-msg.h turns it into a socket path in a private directory, per network
 * namespace), the registration message, and the addon's control functions (native/control.c).
 *
 *   shim -> engine  R<argc>\0<argv...>\0<USERLAND_PROXY_*=... ...>\0[protocol=<n>\0]  [+ fd 4]  register
 *                   A<same>  [+ the socket the shim holds]                 re-register: adopt it
 *                   S stop   D detach (dockerd died, or moved: drain)   H reopen the log   L list (ls)
 *                   U (from a new engine: userland-proxy upgrade) hand every mapping over
 *   engine -> shim  0protocol=<n> [+ the listening socket]   1<message>   2<message>   B (stopped)
 *                   V<reason>  (to a shim of protocol 2+) cannot serve its protocol: it serves alone
 *                   J<json part> ... E   (the answer to L)
 *                   M  (to a shim) move: re-register with the engine now at the name, then D here
 *                   U<json>  (to the new engine) { pid, version, mappings moving }
 */
import { realpathSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { CTL_PROTOCOL, ENV_PREFIX } from '../core/constants.js';
import { INSTALL_ROOT } from '../paths.js';
import { controlAddon } from '../data-path/native-engine.js';

/** The control functions of the addon. */
export interface Control {
  ctlListen(fdOrName: number | string, onMessage: (conn: number, msg: Buffer, fd: number) => void, onClose: (conn: number) => void): void;
  ctlSend(conn: number, msg: Buffer, fd: number): boolean;
  ctlClose(conn: number): void;
  ctlStopListening(): void;
  ctlRequest(name: string, msg: Buffer, timeoutMs: number): Buffer[];
  /** The socket path of engine `name` in this network namespace (throws without a private directory). */
  ctlPath(name: string): string;
  /** Takes the name from the running engine: [our listening fd, its answer to U (empty: none ran)]. */
  ctlTakeOver(name: string, timeoutMs: number): [number, Buffer[]];
}

/**
 * The shim wire: its protocol version, each message type's letter, the variables both ends read
 * and the default name's prefix. native/ctl-msg.h declares the same for the C ends (the shim,
 * control.c), which exports it as ctlContract: control() compares the two and refuses an addon
 * that differs, as the data path's contract is checked (native-engine.ts contractMismatch).
 */
export const WIRE = {
  protocol: CTL_PROTOCOL,
  messages: {
    register: 'R',
    adopt: 'A',
    stop: 'S',
    detach: 'D',
    reopen: 'H',
    list: 'L',
    upgrade: 'U',
    ready: '0',
    failed: '1',
    usage: '2',
    stopped: 'B',
    otherProtocol: 'V',
    move: 'M',
    listing: 'J',
    listingEnd: 'E',
  },
  socketEnv: `${ENV_PREFIX}ENGINE_SOCKET`,
  sharedEnv: `${ENV_PREFIX}SHARED`,
  namePrefix: 'engine-',
} as const;
/** The message types' letters. */
export const MSG = WIRE.messages;

/** What differs between the addon's ctlContract and WIRE (null: they agree). */
export function wireMismatch(c: unknown): string | null {
  const theirs = (c ?? {}) as Record<string, unknown>;
  for (const [key, mine] of Object.entries(WIRE)) {
    if (JSON.stringify(theirs[key]) !== JSON.stringify(mine)) return `${key} ${JSON.stringify(theirs[key])}, expected ${JSON.stringify(mine)}`;
  }
  return null;
}

/** The control functions, or the reason there are none (the addon is not built, not loadable, or of another wire). */
export function control(): Control | string {
  const addon = controlAddon();
  if (typeof addon === 'string') return addon;
  const mismatch = wireMismatch((addon as { ctlContract?: unknown }).ctlContract);
  return mismatch === null ? (addon as Control) : `the addon's shim protocol does not match this build (${mismatch}); rebuild it with npm ci`;
}

/** FNV-1a, 32 bits, of the UTF-8 bytes (as native/shim.c computes it over the install root). */
export function fnv1a32(text: string): number {
  let h = 2166136261;
  for (const b of Buffer.from(text)) h = Math.imul(h ^ b, 16777619) >>> 0;
  return h;
}

/**
 * The name of this installation's engine (native/shim.c names it the same way): one per install
 * directory; the socket's directory makes it one per user, its path one per network namespace.
 */
export function engineSocketName(env: NodeJS.ProcessEnv = process.env): string {
  const given = env[WIRE.socketEnv];
  if (given) return given;
  const root = realpathSync(fileURLToPath(INSTALL_ROOT));
  return `${WIRE.namePrefix}${fnv1a32(root).toString(16).padStart(8, '0')}`;
}

/** A shim's registration. */
export interface Registration {
  /** A: re-register the socket the shim holds (the previous engine died). */
  adopt: boolean;
  argv: string[];
  /** The shim's USERLAND_PROXY_* variables: the mapping's settings, as a per-port proxy reads them. */
  env: Record<string, string>;
  /** The shim's protocol version (native/ctl-msg.h CTL_PROTOCOL); 1 when it sent none. */
  protocol: number;
}

/** Decodes R/A; null when malformed. */
export function parseRegistration(msg: Buffer): Registration | null {
  const parts = msg.subarray(1).toString('utf8').split('\0');
  const argc = Number(parts[0]);
  if (!Number.isInteger(argc) || argc < 0 || argc + 1 > parts.length) return null;
  const env: Record<string, string> = {};
  let protocol = 1;
  for (const kv of parts.slice(argc + 1)) {
    const eq = kv.indexOf('=');
    if (eq > 0 && kv.startsWith(ENV_PREFIX)) env[kv.slice(0, eq)] = kv.slice(eq + 1);
    else if (/^protocol=[1-9][0-9]{0,5}$/.test(kv)) protocol = Number(kv.slice('protocol='.length));
  }
  return { adopt: msg[0] === MSG.adopt.charCodeAt(0), argv: parts.slice(1, argc + 1), env, protocol };
}

/** What `userland-proxy ls` prints, one per mapping. */
export interface EngineListing {
  mapping: string;
  target: string;
  engine: string;
  listenFd: boolean;
  since: string;
  /** serving; or draining: its dockerd died (or it moved to a new engine), its connections finish. */
  state: 'serving' | 'draining';
  /** The engine that serves it. */
  pid: number;
  version: string;
  /** The protocol version of the mapping's shim (native/ctl-msg.h CTL_PROTOCOL). */
  shimProtocol: number;
  tcp: { accepted: number; active: number; bytesIn: number; bytesOut: number } | null;
  udp: { flowsActive: number; flowsCreated: number; bytesIn: number; bytesOut: number } | null;
}
