/**
 * Access control through real sockets: refused TCP clients get a reset and the target never sees
 * a connection; refused UDP clients never open a flow; both counted. Docker mode reads the lists
 * from USERLAND_PROXY_ALLOW / USERLAND_PROXY_DENY and rejects bad ones at start.
 */
import { createSocket } from 'node:dgram';
import { createServer, type Server } from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { type AccessRules, compileAccess } from '../../src/core/access-list.js';
import type { Log } from '../../src/core/logger.js';
import { recorder, warned } from '../helpers/log.js';
import type { UdpForwarder } from '../../src/data-path/udp-forwarder.js';
import { freePort, readToClose, sleep, tcpConnect, tcpRoundTrip, udpClient, udpRequest } from '../helpers/net.js';
import { spawnProxy, startProxy, dockerArgv } from '../helpers/proxy.js';
import { startTcpForwarder, startUdpForwarder } from '../helpers/data-path.js';
import { killTracked } from '../helpers/processes.js';

let echo: Server;
let dialled = 0;
const udpEcho = createSocket('udp4');

beforeAll(async () => {
  echo = createServer({ allowHalfOpen: true }, (c) => {
    dialled++;
    c.on('error', () => {});
    c.pipe(c);
  });
  await new Promise<void>((r) => echo.listen(0, '127.0.0.1', r));
  udpEcho.on('message', (m, r) => udpEcho.send(m, r.port, r.address));
  await new Promise<void>((r) => udpEcho.bind(0, '127.0.0.1', r));
});
afterAll(async () => {
  echo.close();
  udpEcho.close();
  await killTracked();
});

const echoPort = (): number => (echo.address() as { port: number }).port;

/** A UDP forwarder on host to the UDP echo under `access`, sent one datagram that gets no reply. */
async function refusedUdp(host: string, log: Log, access: AccessRules | null): Promise<UdpForwarder> {
  const { f, port } = await startUdpForwarder({ targetPort: udpEcho.address().port, log, access }, host);
  const c = udpClient(host.includes(':') ? 6 : 4);
  await expect(udpRequest(c, host, port, 'x', 300)).rejects.toThrow('no UDP reply');
  c.close();
  return f;
}

describe('access lists', () => {
  it('a denied TCP client is reset before any dial, counted; an allowed one is served', async () => {
    for (const [spec, allowed] of [
      [{ allow: [], deny: ['127.0.0.0/8'] }, false],
      [{ allow: ['127.0.0.1/32'], deny: [] }, true],
      [{ allow: ['10.0.0.0/8'], deny: [] }, false],
    ] as const) {
      const { log, lines: seen } = recorder();
      const f = await startTcpForwarder({ targetPort: echoPort(), log, access: compileAccess({ allow: [...spec.allow], deny: [...spec.deny] }) });
      const port = f.port;
      const before = dialled;
      // The reset can beat the client's own 'connect' event: then connect() itself fails.
      const { data, error } = await tcpConnect('127.0.0.1', port).then(
        (s) => {
          const done = readToClose(s);
          s.end('hi');
          return done;
        },
        (err: NodeJS.ErrnoException) => ({ data: Buffer.alloc(0), error: err.code ?? null }),
      );
      if (allowed) {
        expect(error).toBeNull();
        expect(f.stats.rejectedBlocked).toBe(0);
      } else {
        expect(data.length).toBe(0);
        expect(error).toBe('ECONNRESET');
        expect(f.stats.rejectedBlocked).toBe(1);
        expect(dialled).toBe(before); // never dialled
        await warned(seen, 'connection refused by the access lists');
        expect(seen).toContainEqual({ obj: { client: '127.0.0.1' }, msg: 'connection refused by the access lists' });
      }
    }
  });

  it('a denied UDP client opens no flow and its datagrams are counted as dropped', async () => {
    const { log, lines: seen } = recorder();
    const f = await refusedUdp('127.0.0.1', log, compileAccess({ allow: [], deny: ['127.0.0.1'] }));
    expect(f.stats.droppedBlocked).toBe(1);
    expect(f.stats.flowsCreated).toBe(0);
    await warned(seen, 'datagrams refused by the access lists');
    expect(seen).toContainEqual({ obj: { client: '127.0.0.1' }, msg: 'datagrams refused by the access lists' });
  });

  it('a refused client is named in the log over IPv6 too, on both protocols', async () => {
    const { log, lines: seen } = recorder();
    const access = compileAccess({ allow: ['10.0.0.0/8'], deny: [] });
    const tcp = await startTcpForwarder({ targetPort: echoPort(), log, access }, '::1');
    await tcpConnect('::1', tcp.port).then(readToClose, () => null);
    await refusedUdp('::1', log, access);
    await warned(seen, 'connection refused by the access lists');
    expect(seen).toContainEqual({ obj: { client: '::1' }, msg: 'connection refused by the access lists' });
    expect(seen).toContainEqual({ obj: { client: '::1' }, msg: 'datagrams refused by the access lists' });
  });

  it('docker mode takes USERLAND_PROXY_DENY / _ALLOW and rejects bad lists at start', async () => {
    const port = await freePort();
    const argv = dockerArgv('tcp', '127.0.0.1', port, '127.0.0.1', echoPort());
    const denied = await startProxy(argv, { env: { USERLAND_PROXY_DENY: '127.0.0.0/8' } });
    const { error } = await tcpConnect('127.0.0.1', port).then(readToClose, (err: NodeJS.ErrnoException) => ({ error: err.code }));
    expect(error).toBe('ECONNRESET');
    await denied.stop();
    await sleep(50);
    const allowed = await startProxy(argv, { env: { USERLAND_PROXY_ALLOW: '127.0.0.1, ::1' } });
    expect((await tcpRoundTrip('127.0.0.1', port, Buffer.from('ok'))).toString()).toBe('ok');
    await allowed.stop();
    const bad = spawnProxy(argv, { env: { USERLAND_PROXY_ALLOW: '127.0.0.1/40' } });
    expect(await bad.status).toBe('1\ninvalid USERLAND_PROXY_ALLOW entry "127.0.0.1/40": not a CIDR range (e.g. 10.0.0.0/8, fd00::/8, 192.0.2.7)');
    expect((await bad.exited).code).toBe(1);
  });
});
