/**
 * Faults and hostile traffic: a target that resets mid-stream, a client that aborts mid-transfer
 * (in-process forwarder, real sockets); a UDP flood from many source ports against the flow bound,
 * and 100 rapid start/stop cycles the way a runtime does them (spawned processes).
 */
import { readdirSync } from 'node:fs';
import { createServer, type Server, type Socket } from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { TcpForwarder } from '../../src/data-path/tcp-forwarder.js';
import { freePort, randomBytes, readToClose, sleep, tcpConnect, tcpRoundTrip, udpClient, udpRequest } from '../helpers/net.js';
import { spawnProxy, startProxy, dockerArgv } from '../helpers/proxy.js';
import { createSocket, type Socket as UdpSocket } from 'node:dgram';
import { startTcpForwarder } from '../helpers/data-path.js';
import { killTracked } from '../helpers/processes.js';
import { proxiesOf } from '../helpers/testbed.mjs';

const servers: Server[] = [];
afterAll(async () => {
  for (const s of servers) s.close();
  await killTracked();
});

async function target(onConn: (c: Socket) => void): Promise<number> {
  const s = createServer({ allowHalfOpen: true }, onConn);
  servers.push(s);
  await new Promise<void>((r) => s.listen(0, '127.0.0.1', r));
  return (s.address() as { port: number }).port;
}
async function forwardTo(port: number): Promise<{ port: number; f: TcpForwarder }> {
  const f = await startTcpForwarder({ targetPort: port });
  return { port: f.port, f };
}

describe('faults', () => {
  it('a target reset mid-stream reaches the client as a reset after the bytes sent before it', async () => {
    const sent = randomBytes(100_000);
    const t = await target((c) => {
      c.on('error', () => {});
      c.write(sent, () => setTimeout(() => c.resetAndDestroy(), 50));
    });
    const { port, f } = await forwardTo(t);
    const { data, error } = await readToClose(await tcpConnect('127.0.0.1', port));
    expect(error).toBe('ECONNRESET'); // docker-proxy would end cleanly: a truncated stream looking complete
    expect(sent.subarray(0, data.length).equals(data)).toBe(true);
    await sleep(50);
    expect(f.stats.active).toBe(0);
    expect(f.stats.aborted).toBe(1);
  });

  it('a target reset right after its data reaches the client as a reset, every time (audit H3: libuv POLLHUP EOF)', async () => {
    const t = await target((c) => {
      c.on('error', () => {});
      c.once('data', (d) => c.write(Buffer.alloc(Number(d.toString()), 114), () => c.resetAndDestroy()));
    });
    const { port } = await forwardTo(t);
    const seen: string[] = [];
    for (const size of [10, 5000, 100_000, 1_000_000]) {
      for (let i = 0; i < 15; i++) {
        const s = await tcpConnect('127.0.0.1', port);
        const done = readToClose(s);
        s.write(String(size));
        const { error } = await done;
        seen.push(`${size}:${error ?? 'FIN'}`);
      }
    }
    expect(seen.filter((x) => !x.endsWith(':ECONNRESET'))).toEqual([]);
  });

  it('a failed dial closes a silent client with FIN and resets a client whose bytes were lost (audit L6)', async () => {
    const closed = await freePort();
    const { port } = await forwardTo(closed);
    for (let i = 0; i < 5; i++) {
      const silent = await readToClose(await tcpConnect('127.0.0.1', port));
      expect(silent.error).toBeNull();
      const s = await tcpConnect('127.0.0.1', port);
      const talker = readToClose(s);
      s.write('x');
      // A reset either way: the proxy's own (its bytes were read, then the dial failed), or the
      // kernel's answer to a write after the proxy closed (the native engine's dial can fail
      // before the byte arrives): EPIPE then. Never a clean end.
      expect(['ECONNRESET', 'EPIPE']).toContain((await talker).error);
    }
  });

  it('counts exactly: accepted, active, aborted, refused dials, both histograms, bytes', async () => {
    const t = await target((c) => {
      c.on('error', () => {});
      c.pipe(c);
    });
    const { port, f } = await forwardTo(t);
    for (let i = 0; i < 40; i++) await tcpRoundTrip('127.0.0.1', port, Buffer.alloc(1000, i));
    await Promise.all(Array.from({ length: 10 }, () => tcpRoundTrip('127.0.0.1', port, Buffer.alloc(500))));
    const refused = await forwardTo(await freePort());
    for (let i = 0; i < 5; i++) await readToClose(await tcpConnect('127.0.0.1', refused.port));
    await sleep(100);
    const s = f.stats;
    expect([s.accepted, s.active, s.aborted, s.bytesIn, s.bytesOut]).toEqual([50, 0, 0, 45_000, 45_000]);
    expect([s.connectDuration.count, s.connectionDuration.count]).toEqual([50, 50]);
    expect(s.connectDuration.counts.reduce((a, b) => a + b, 0)).toBe(50);
    expect(s.connectionDuration.sum).toBeGreaterThan(0);
    const r = refused.f.stats;
    expect([r.accepted, r.active, r.aborted, r.connectErrors.refused, r.connectDuration.count, r.connectionDuration.count]).toEqual([5, 0, 5, 5, 0, 0]);
  });

  it('a client abort mid-transfer resets the target and frees the connection', async () => {
    let seen: Promise<string> = Promise.resolve('none');
    const t = await target((c) => {
      seen = new Promise((res) => {
        c.on('error', (e: NodeJS.ErrnoException) => res(e.code ?? 'error'));
        c.on('end', () => res('end'));
      });
      c.resume();
    });
    const { port, f } = await forwardTo(t);
    const s = await tcpConnect('127.0.0.1', port);
    s.write(randomBytes(1 << 20));
    await sleep(100);
    s.resetAndDestroy();
    expect(await seen).toBe('ECONNRESET');
    await sleep(50);
    expect(f.stats.active).toBe(0);
  });
});

describe('hostile traffic and lifecycle (spawned, like a runtime)', () => {
  let echo: UdpSocket;
  beforeAll(async () => {
    echo = createSocket('udp4');
    echo.on('message', (m, r) => echo.send(m, r.port, r.address));
    await new Promise<void>((r) => echo.bind(0, '127.0.0.1', r));
  });
  afterAll(() => echo.close());

  it('a UDP flood from 300 source ports stays within the flow bound; established flows keep working', async () => {
    const port = await freePort();
    await startProxy(dockerArgv('udp', '127.0.0.1', port, '127.0.0.1', echo.address().port), { env: { USERLAND_PROXY_UDP_MAX_FLOWS: '50' } });
    const first = udpClient(4);
    expect((await udpRequest(first, '127.0.0.1', port, 'first')).toString()).toBe('first');
    const flood = Array.from({ length: 300 }, () => udpClient(4));
    let replies = 0;
    for (const c of flood)
      c.on('message', () => {
        replies++;
      });
    for (const c of flood) c.send('flood', port, '127.0.0.1');
    await sleep(500);
    expect(replies).toBeLessThanOrEqual(49); // 50 flows, one of them is `first`
    expect(replies).toBeGreaterThan(0);
    expect((await udpRequest(first, '127.0.0.1', port, 'still here')).toString()).toBe('still here');
    for (const c of [first, ...flood]) c.close();
  });

  it('100 rapid start/stop cycles leave no process, port or fd behind', async () => {
    const t = await target((c) => {
      c.on('error', () => {});
      c.pipe(c);
    });
    const port = await freePort();
    const fdsBefore = readdirSync('/proc/self/fd').length;
    for (let i = 0; i < 100; i++) {
      const p = await startProxy(dockerArgv('tcp', '127.0.0.1', port, '127.0.0.1', t));
      if (i % 10 === 0) expect((await tcpRoundTrip('127.0.0.1', port, Buffer.from(`cycle ${i}`))).toString()).toBe(`cycle ${i}`);
      expect(await p.stop('SIGINT')).toEqual({ code: 0, signal: null });
    }
    expect(readdirSync('/proc/self/fd').length).toBeLessThanOrEqual(fdsBefore + 2);
    expect(proxiesOf(process.pid, port)).toEqual([]);
    const again = spawnProxy(dockerArgv('tcp', '127.0.0.1', port, '127.0.0.1', t));
    expect(await again.status).toBe('0\n'); // the port is free
    await again.stop();
  }, 60_000);
});
