/**
 * Opening the host side: bind and listen ourselves, or adopt the socket dockerd 28+ passes on fd 4.
 *
 * Own sockets behave like Go's: the family follows the host IP, IPv6 sockets are IPv6-only (so a
 * `0.0.0.0:P` and a `[::]:P` proxy coexist), TCP gets SO_REUSEADDR (libuv's default) and a backlog
 * capped by somaxconn. Failures read like docker-proxy's (`listen tcp4 127.0.0.1:80: bind:
 * address already in use`) so that dockerd shows users a familiar message.
 */
import type { Socket as UdpSocket } from 'node:dgram';
import { closeSync, fstatSync } from 'node:fs';
import type { Server } from 'node:net';
import { joinHostPort, type IpAddress } from '../core/address.js';
import { LISTEN_BACKLOG, LISTEN_FD } from '../core/constants.js';
import { ProxyError } from '../core/errors.js';
import { isUnixServer } from '../core/node-internals.js';

/** Go's (lower-case strerror) wording for the errno codes a bind or listen can fail with. */
const STRERROR: Record<string, string> = {
  EADDRINUSE: 'address already in use',
  EACCES: 'permission denied',
  EPERM: 'operation not permitted',
  EADDRNOTAVAIL: 'cannot assign requested address',
  EINVAL: 'invalid argument',
  EAFNOSUPPORT: 'address family not supported by protocol',
  EMFILE: 'too many open files',
  ENFILE: 'too many open files in system',
  ENOBUFS: 'no buffer space available',
  ENOMEM: 'cannot allocate memory',
  ENOTSOCK: 'socket operation on non-socket',
};

/** Options of the listen functions. */
export interface ListenOptions {
  host: IpAddress;
  port: number;
  /**
   * Adopt this descriptor instead of binding: fd 4 (-use-listen-fd), or the shared engine's copy
   * of a shim's fd 4 (-1 when the shim had none). Messages name fd 4: that is what the caller gave.
   */
  listenFd: number | null;
}

function bindError(proto: 'tcp' | 'udp', opts: ListenOptions, err: NodeJS.ErrnoException): ProxyError {
  const net = `${proto}${opts.host.family}`;
  const reason = STRERROR[err.code ?? ''] ?? err.message;
  let msg = `listen ${net} ${joinHostPort(opts.host.address, opts.port)}: bind: ${reason}`;
  if (err.code === 'EACCES' && opts.port < 1024) {
    msg += ' (ports below 1024 need root or CAP_NET_BIND_SERVICE)';
  }
  return new ProxyError('UPROXY_ERR_LISTEN', msg);
}

/**
 * A copy of fd 4 that the shared engine received, when adopting it fails: Node closes it only if
 * it had wrapped it (a socket of the wrong type is refused before), so it is closed here unless
 * the same socket (inode) is gone already. Our own fd 4 is never closed.
 */
function dropFailedCopy(fd: number | null): (err: ProxyError) => ProxyError {
  if (fd === null || fd === LISTEN_FD) return (err) => err;
  const ino = fstatSync(fd).ino;
  return (err) => {
    try {
      if (fstatSync(fd).ino === ino) closeSync(fd);
    } catch {
      // closed by Node already
    }
    return err;
  };
}

/** Checks that the descriptor exists and is a socket before handing it to libuv. */
function checkListenFd(fd: number, kind: string): void {
  let isSocket = false;
  try {
    isSocket = fstatSync(fd).isSocket();
  } catch {
    throw new ProxyError('UPROXY_ERR_LISTEN_FD', `-use-listen-fd given but fd ${LISTEN_FD} is not open`);
  }
  if (!isSocket) {
    // Nobody adopts it. A copy the shared engine received is closed here (it would keep every
    // such fd); our own fd 4 never is: without the flag's socket it may be one of libuv's.
    if (fd !== LISTEN_FD) closeSync(fd);
    throw new ProxyError('UPROXY_ERR_LISTEN_FD', `-use-listen-fd given but fd ${LISTEN_FD} is not a ${kind} socket`);
  }
}

/**
 * Runs start() and settles on the first 'listening' (after check(), if given) or 'error' event.
 * Listen errors belong to this call only: the handlers are removed once it settles.
 */
function whenListening(
  target: Server | UdpSocket,
  start: () => void,
  mapError: (err: NodeJS.ErrnoException) => ProxyError,
  check: () => ProxyError | null = () => null,
): Promise<void> {
  return new Promise((resolve, reject) => {
    const onError = (err: NodeJS.ErrnoException): void => {
      target.off('listening', onListening);
      reject(mapError(err));
    };
    const onListening = (): void => {
      target.off('error', onError);
      const problem = check();
      if (problem) reject(problem);
      else resolve();
    };
    target.once('error', onError);
    target.once('listening', onListening);
    try {
      start();
    } catch (err) {
      onError(err as NodeJS.ErrnoException);
    }
  });
}

function fdError(kind: string, err: NodeJS.ErrnoException): ProxyError {
  const reason = STRERROR[err.code ?? ''] ?? err.message;
  return new ProxyError('UPROXY_ERR_LISTEN_FD', `-use-listen-fd: fd ${LISTEN_FD} is not a usable ${kind} socket: ${reason}`);
}

/** Starts a TCP server listening on the host address, or on the listening socket in fd 4. */
export function listenTcp(server: Server, opts: ListenOptions): Promise<void> {
  if (opts.listenFd !== null) checkListenFd(opts.listenFd, 'listening TCP');
  const drop = dropFailedCopy(opts.listenFd);
  return whenListening(
    server,
    () => {
      if (opts.listenFd !== null) {
        // libuv calls listen() again on the adopted socket; ask for the largest backlog so the
        // daemon's somaxconn backlog is not lowered to Node's default 511. Positionally: Node
        // ignores options.backlog when options.fd is given (audit N13; read back in a test).
        server.listen({ fd: opts.listenFd }, LISTEN_BACKLOG);
      } else {
        server.listen({ host: opts.host.address, port: opts.port, ipv6Only: opts.host.family === 6, backlog: LISTEN_BACKLOG });
      }
    },
    (err) => (opts.listenFd !== null ? drop(fdError('listening TCP', err)) : bindError('tcp', opts, err)),
    () => {
      // Node listens on a unix socket too: not a port to forward.
      if (opts.listenFd === null || !isUnixServer(server)) return null;
      server.close();
      return fdError('listening TCP', Object.assign(new Error('not a TCP socket'), { code: 'EPROTOTYPE' }));
    },
  );
}

/** Binds a UDP socket on the host address, or adopts the bound socket in fd 4. */
export function bindUdp(socket: UdpSocket, opts: ListenOptions): Promise<void> {
  if (opts.listenFd !== null) checkListenFd(opts.listenFd, 'bound UDP');
  const drop = dropFailedCopy(opts.listenFd);
  return whenListening(
    socket,
    () => {
      if (opts.listenFd !== null) socket.bind({ fd: opts.listenFd });
      else socket.bind({ address: opts.host.address, port: opts.port, exclusive: true });
    },
    (err) => {
      if (opts.listenFd === null) return bindError('udp', opts, err);
      // dgram throws ERR_INVALID_FD_TYPE for a non-UDP descriptor.
      return drop(fdError('bound UDP', err.code === 'ERR_INVALID_FD_TYPE' ? Object.assign(new Error('not a UDP socket'), { code: 'ENOTSOCK' }) : err));
    },
    () => {
      if (opts.listenFd === null) return null;
      // Replies are sent with the socket's address family; refuse a mismatch up front.
      const family = socket.address().family === 'IPv6' ? 6 : 4;
      if (family === opts.host.family) return null;
      return new ProxyError(
        'UPROXY_ERR_LISTEN_FD',
        `-use-listen-fd: fd ${LISTEN_FD} is an IPv${family} socket but -host-ip ${opts.host.address} is IPv${opts.host.family}`,
      );
    },
  );
}
