/** Small socket helpers for tests: free ports, echo round trips, UDP request/reply. */
import { createHash, randomBytes } from 'node:crypto';
import { createSocket, type Socket as UdpSocket } from 'node:dgram';
import { readFileSync } from 'node:fs';
import { connect, createServer, type Socket } from 'node:net';

/**
 * Ports handed to tests, outside the kernel's ephemeral range (ip_local_port_range): a port picked
 * with listen(0) comes from that range, and any outgoing connection of a parallel suite (the
 * 10 000-connection test takes a third of it) may take it as its local port before the proxy
 * binds it (CI saw `bind: address already in use` that way). Each vitest worker walks a slice of
 * its own (VITEST_POOL_ID; UPT_PORT_NEST for a vitest started by a test), so two workers never
 * hand out the same port, and a worker hands a port out again only after its whole slice. Ports
 * 20000-32767 are the benchmark harness's (bench/lib.mjs, bench/run.mjs), which CI runs too.
 * 16 slices: pool ids 0-3 at the top, nest * 4 + 0-3 below it (nest = the parent's pool id, 1-3).
 */
const PORT_SLICES = 16;
const portPool: number[] = (() => {
  const [lo, hi] = readFileSync('/proc/sys/net/ipv4/ip_local_port_range', 'utf8').trim().split(/\s+/).map(Number);
  const all: number[] = [];
  for (let p = 10_000; p <= 65_535; p++) if ((p < lo || p > hi) && (p < 20_000 || p > 32_767)) all.push(p);
  const slice = (Number(process.env.UPT_PORT_NEST ?? 0) * 4 + Number(process.env.VITEST_POOL_ID ?? 0)) % PORT_SLICES;
  const size = Math.floor(all.length / PORT_SLICES);
  return all.slice(slice * size, (slice + 1) * size);
})();
let nextPort = Math.floor(Math.random() * portPool.length);

function tcpFree(port: number, host: string): Promise<boolean> {
  return new Promise((res) => {
    const s = createServer();
    s.once('error', () => res(false)).listen({ port, host }, () => s.close(() => res(true)));
  });
}

function udpFree(port: number, host: string): Promise<boolean> {
  return new Promise((res) => {
    const u = createSocket(host.includes(':') ? 'udp6' : 'udp4');
    u.once('error', () => res(false));
    u.bind(port, host, () => u.close(() => res(true)));
  });
}

/**
 * The first of n consecutive ports that were free a moment ago on host (TCP and UDP both checked),
 * outside the ephemeral range when it leaves room; the pool walk skips them all.
 */
export async function freePort(host = '127.0.0.1', n = 1): Promise<number> {
  if (portPool.length < 200) return ephemeralFreePort(host, n);
  for (let tries = 0; tries < portPool.length; tries++) {
    const i = nextPort++ % portPool.length;
    const first = portPool[i];
    if (portPool[i + n - 1] !== first + n - 1) continue; // the run would cross a gap or the end
    let ok = true;
    for (let p = first; ok && p < first + n; p++) ok = (await tcpFree(p, host)) && (await udpFree(p, host));
    if (ok) {
      nextPort += n - 1;
      return first;
    }
  }
  throw new Error(`no ${n} free consecutive ports in this worker's slice`);
}

/** The fallback when ip_local_port_range covers nearly everything: listen(0), then check the rest. */
async function ephemeralFreePort(host: string, n: number): Promise<number> {
  for (;;) {
    const first = await new Promise<number>((res, rej) => {
      const s = createServer();
      s.once('error', rej).listen({ port: 0, host }, () => {
        const { port } = s.address() as { port: number };
        s.close(() => res(port));
      });
    });
    let ok = first + n - 1 <= 65_535;
    for (let p = first; ok && p < first + n; p++) ok = (p === first || (await tcpFree(p, host))) && (await udpFree(p, host));
    if (ok) return first;
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
