/**
 * Each private Node.js API we lean on (src/core/node-internals.ts), against real sockets. node-versions
 * runs this file on Node 22, 24 and 26 as well: a Node that changes one fails here, by name.
 */
import { createSocket } from 'node:dgram';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { connect, createServer, type Server, type Socket } from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { adoptAccepted, isUnixServer, serverFd, socketFd, swapReadBuffer, udpHandle } from '../../src/core/node-internals.js';
import { sleep } from '../helpers/net.js';

let server: Server;
const accepted: Socket[] = [];
beforeAll(async () => {
  server = createServer({ pauseOnConnect: true }, (s) => accepted.push(s));
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
});
afterAll(() => server.close());

async function pair(): Promise<{ client: Socket; raw: Socket }> {
  const client = connect((server.address() as { port: number }).port, '127.0.0.1');
  await new Promise<void>((r) => client.once('connect', () => r()));
  for (let i = 0; i < 100 && accepted.length === 0; i++) await sleep(5);
  return { client, raw: accepted.shift() as Socket };
}

describe('node-internals', () => {
  it('adoptAccepted() moves an accepted handle into an onread socket; swapReadBuffer() changes where reads land', async () => {
    const { client, raw } = await pair();
    const first = Buffer.alloc(64);
    const second = Buffer.alloc(64);
    let current = first;
    const got: string[] = [];
    const s = adoptAccepted(
      raw,
      {
        buffer: () => current,
        callback: (n) => {
          got.push(current.subarray(0, n).toString());
          return true;
        },
      },
      1 << 20,
    );
    expect(s).not.toBeNull();
    s?.resume();
    client.write('one');
    for (let i = 0; i < 100 && got.length < 1; i++) await sleep(5);
    expect(got).toEqual(['one']);
    expect(swapReadBuffer(s as Socket, second)).toBe(true);
    current = second;
    client.write('two');
    for (let i = 0; i < 100 && got.length < 2; i++) await sleep(5);
    expect(got).toEqual(['one', 'two']);
    expect(second.subarray(0, 3).toString()).toBe('two');
    expect(socketFd(s as Socket)).toBeGreaterThan(2);
    s?.destroy();
    client.destroy();
  });

  it('socketFd() is -1 once closed; serverFd() is a listening socket, -1 once closed', async () => {
    const { client, raw } = await pair();
    raw.destroy();
    client.destroy();
    expect(socketFd(raw)).toBe(-1);
    const s = createServer();
    await new Promise<void>((r) => s.listen(0, '127.0.0.1', r));
    expect(serverFd(s)).toBeGreaterThan(2);
    expect(isUnixServer(s)).toBe(false);
    s.close();
    expect(serverFd(s)).toBe(-1);
    // A unix socket (as a unix fd 4 would be adopted) is a Pipe to Node.
    const dir = mkdtempSync(join(tmpdir(), 'upt-ni-'));
    const u = createServer();
    await new Promise<void>((r) => u.listen(join(dir, 's'), r));
    expect(isUnixServer(u)).toBe(true);
    u.close();
    rmSync(dir, { recursive: true, force: true });
  });

  it("udpHandle() finds a bound dgram socket's fd and stops its reads", async () => {
    const u = createSocket('udp4');
    await new Promise<void>((r) => u.bind(0, '127.0.0.1', r));
    const h = udpHandle(u);
    expect(h.fd).toBeGreaterThan(2);
    let got = 0;
    u.on('message', () => {
      got++;
    });
    h.recvStop();
    const c = createSocket('udp4');
    c.send('x', u.address().port, '127.0.0.1');
    await sleep(100);
    expect(got).toBe(0);
    c.close();
    u.close();
  });
});
