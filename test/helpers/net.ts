/** Small socket helpers for tests: free ports, echo round trips, UDP request/reply. */
import { createHash, randomBytes } from 'node:crypto';
import { createSocket, type Socket as UdpSocket } from 'node:dgram';
import { connect, createServer, type Socket } from 'node:net';

/** A port that was free a moment ago on host (TCP and UDP both checked). */
export async function freePort(host = '127.0.0.1'): Promise<number> {
  for (;;) {
    const port = await new Promise<number>((res, rej) => {
      const s = createServer();
      s.once('error', rej).listen({ port: 0, host }, () => {
        const { port } = s.address() as { port: number };
        s.close(() => res(port));
      });
    });
    const udpFree = await new Promise<boolean>((res) => {
      const u = createSocket(host.includes(':') ? 'udp6' : 'udp4');
      u.once('error', () => res(false));
      u.bind(port, host, () => u.close(() => res(true)));
    });
    if (udpFree) return port;
  }
}

export function tcpConnect(host: string, port: number): Promise<Socket> {
  return new Promise((res, rej) => {
    const s = connect({ host, port, allowHalfOpen: true });
    s.once('connect', () => {
      s.off('error', rej);
      res(s);
    });
    s.once('error', rej);
  });
}

/** Sends data, half-closes, and collects everything until the peer's FIN. */
export async function tcpRoundTrip(host: string, port: number, data: Buffer): Promise<Buffer> {
  const s = await tcpConnect(host, port);
  return new Promise((res, rej) => {
    const chunks: Buffer[] = [];
    s.on('data', (d) => chunks.push(d));
    s.on('end', () => {
      s.end();
      res(Buffer.concat(chunks));
    });
    s.on('error', rej);
    s.end(data);
  });
}

/**
 * Resolves what arrives before the peer closes or resets, and how it ended. At EOF it writes zero
 * bytes before ending: Node 20 and 22 report a reset that follows data closely as EOF (libuv
 * POLLHUP, audit H3), and that write is what surfaces the pending ECONNRESET.
 */
export function readToClose(s: Socket): Promise<{ data: Buffer; error: string | null }> {
  return new Promise((res) => {
    const chunks: Buffer[] = [];
    let error: string | null = null;
    s.on('data', (d) => chunks.push(d));
    s.on('error', (e: NodeJS.ErrnoException) => {
      error = e.code ?? e.message;
    });
    s.on('close', () => res({ data: Buffer.concat(chunks), error }));
    s.on('end', () => {
      if (s.writable)
        s.write(Buffer.alloc(0), (err) => {
          if (!err) s.end();
        });
      else s.end();
    });
  });
}

/** Everything a socket receives until the peer's FIN, as text (the socket stays open). */
export function readToEnd(s: Socket): Promise<string> {
  return new Promise((res) => {
    let got = '';
    s.on('data', (d) => {
      got += d;
    });
    s.once('end', () => res(got));
  });
}

export function sha256(b: Buffer): string {
  return createHash('sha256').update(b).digest('hex');
}

export { randomBytes };

/** A UDP client socket bound to an ephemeral port. */
export function udpClient(family: 4 | 6): UdpSocket {
  return createSocket(family === 6 ? 'udp6' : 'udp4');
}

/** Sends one datagram and waits for one reply (or rejects after ms). */
export function udpRequest(sock: UdpSocket, host: string, port: number, msg: Buffer | string, ms = 2000): Promise<Buffer> {
  return new Promise((res, rej) => {
    const t = setTimeout(() => {
      sock.off('message', on);
      rej(new Error(`no UDP reply from ${host}:${port} in ${ms} ms`));
    }, ms);
    const on = (m: Buffer): void => {
      clearTimeout(t);
      sock.off('message', on);
      res(m);
    };
    sock.on('message', on);
    sock.send(msg, port, host);
  });
}

export const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));
