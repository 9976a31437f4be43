/**
 * Every use of a private Node.js API, in one place, each with why and with its fallback. Node 20
 * offers no public way to do these; test/unit/node-internals.test.ts runs each against real
 * sockets, and node-versions runs that suite on Node 20, 22, 24 and 26.
 *
 * | what                  | private API                          | used for                          | if it is gone                  |
 * |-----------------------|--------------------------------------|-----------------------------------|--------------------------------|
 * | adoptAccepted()       | net.Socket `_handle`, `{ handle }`   | `onread` on accepted sockets      | error: the relay cannot work   |
 * | socketFd()            | `_handle.fd`                         | FIONREAD before a forced close    | -1: a forced close resets      |
 * | serverFd()            | net.Server `_handle.fd`              | handing TCP listeners to C        | -1: the mapping fails to open  |
 * | isUnixServer()        | net.Server `_handle` class name      | refusing a unix socket as fd 4    | false: a null address refuses  |
 * | swapReadBuffer()      | `_handle.useUserBuffer()`            | idle connections' small buffers   | false: the big buffer stays    |
 * | udpHandle()           | dgram's `state symbol` -> handle     | handing UDP listeners to C        | error at start: native UDP off |
 */
import type { Socket as UdpSocket } from 'node:dgram';
import { type Server, Socket } from 'node:net';

interface StreamHandle {
  fd?: unknown;
  useUserBuffer?: (b: Uint8Array) => void;
}

function handleOf(socket: Socket): StreamHandle | null {
  return (socket as unknown as { _handle?: StreamHandle | null })._handle ?? null;
}

/**
 * Re-wraps an accepted connection so that it reads through `onread`: Node 20 ignores `onread` for
 * sockets a server creates, so the accepted handle (still paused: pauseOnConnect) moves into a
 * new Socket that has it. The old Socket object, left without a handle, closes nothing when
 * destroyed. Returns null if the connection is already gone.
 */
export function adoptAccepted(
  accepted: Socket,
  onread: { buffer: () => Buffer; callback: (n: number, buf: Buffer) => boolean },
  highWaterMark: number,
): Socket | null {
  const internal = accepted as unknown as { _handle: unknown };
  const handle = internal._handle;
  if (!handle) {
    accepted.destroy();
    return null;
  }
  internal._handle = null;
  accepted.destroy();
  return new Socket({
    handle,
    allowHalfOpen: true,
    readable: true,
    writable: true,
    manualStart: true,
    onread,
    writableHighWaterMark: highWaterMark,
  } as ConstructorParameters<typeof Socket>[0]);
}

/** The file descriptor of a connected socket, or -1. */
export function socketFd(socket: Socket): number {
  const fd = handleOf(socket)?.fd;
  return typeof fd === 'number' ? fd : -1;
}

/** The file descriptor of a listening server, or -1 (the shared engine sends a copy to the shim). */
export function serverFd(server: Server): number {
  const fd = (server as unknown as { _handle?: { fd?: number } | null })._handle?.fd;
  return typeof fd === 'number' ? fd : -1;
}

/**
 * True when the server listens on a unix socket (Node adopts one given as `{ fd }` as a Pipe,
 * whose address() is null, as a TCP server's is once closed): not a port to forward (audit N3).
 */
export function isUnixServer(server: Server): boolean {
  return (server as unknown as { _handle?: object | null })._handle?.constructor.name === 'Pipe';
}

/**
 * Makes the socket's next reads land in `buf` (an `onread` socket, between reads: libuv only
 * writes into the buffer during a read callback on this thread). False if it cannot.
 */
export function swapReadBuffer(socket: Socket | null, buf: Uint8Array): boolean {
  const handle = socket === null ? null : handleOf(socket);
  if (typeof handle?.useUserBuffer !== 'function') return false;
  handle.useUserBuffer(buf);
  return true;
}

/** A bound dgram socket's fd and a way to stop its reads (dgram keeps its handle behind a symbol). */
export function udpHandle(socket: UdpSocket): { fd: number; recvStop: () => void } {
  const sym = Object.getOwnPropertySymbols(socket).find((s) => s.description === 'state symbol');
  const handle = sym === undefined ? undefined : (socket as unknown as Record<symbol, { handle?: { fd?: number; recvStop?: () => number } }>)[sym]?.handle;
  if (typeof handle?.fd !== 'number' || typeof handle.recvStop !== 'function') {
    throw new Error(`dgram internals changed on Node ${process.version}: no socket handle (use the JavaScript engine)`);
  }
  const h = handle as { fd: number; recvStop: () => number };
  return { fd: h.fd, recvStop: () => void h.recvStop() };
}
