/**
 * The relay in-process through real loopback sockets: buffers grow for bulk, an idle sweep gives
 * idle directions small buffers back (so idle keep-alive connections do not pin 2 x 256 KiB), and
 * bytes stay intact across every swap. A crowd of stalled readers stays within the thread's queue
 * budget (audit M6).
 */
import { createServer, type Server } from 'node:net';
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import { relayPoolStats, relayQueuedBytes } from '../../src/data-path/relay.js';
import { RELAY_BIG_BUFFER, RELAY_QUEUE_BUDGET } from '../../src/core/constants.js';
import type { TcpForwarder } from '../../src/data-path/tcp-forwarder.js';
import { startTcpForwarder } from '../helpers/data-path.js';
import { randomBytes, sha256, sleep, tcpConnect } from '../helpers/net.js';

let echo: Server;
let forwarder: TcpForwarder;

beforeAll(async () => {
  echo = createServer({ allowHalfOpen: true }, (c) => {
    c.on('error', () => {});
    c.pipe(c);
  });
  await new Promise<void>((r) => echo.listen(0, '127.0.0.1', r));
  // The JS relay is what this file tests, on either project.
  forwarder = await startTcpForwarder({ targetPort: (echo.address() as { port: number }).port, idleSweepMs: 100, engine: 'js' });
});
afterAll(() => {
  echo.close();
});

/** Sends data on an open connection and waits for all of it to come back. */
function roundTrip(s: Awaited<ReturnType<typeof tcpConnect>>, data: Buffer): Promise<Buffer> {
  return new Promise((res) => {
    const chunks: Buffer[] = [];
    let got = 0;
    const on = (d: Buffer): void => {
      chunks.push(d);
      got += d.length;
      if (got >= data.length) {
        s.off('data', on);
        res(Buffer.concat(chunks));
      }
    };
    s.on('data', on);
    s.write(data);
  });
}

describe('relay buffers', () => {
  it('relay shrinks the big buffers of an idle connection and keeps every byte across swaps', async () => {
    const port = forwarder.port;
    const s = await tcpConnect('127.0.0.1', port);
    for (let round = 0; round < 3; round++) {
      const data = randomBytes(4 << 20);
      expect(sha256(await roundTrip(s, data)), `round ${round}`).toBe(sha256(data));
      const before = relayPoolStats().freeBig;
      // A few sweeps (100 ms each): both directions go back to small buffers. Waited for, not
      // slept: a loaded machine (three suites at a time) runs the sweeps late.
      await vi.waitFor(() => expect(relayPoolStats().freeBig - before).toBe(2), { timeout: 5000, interval: 50 });
      const small = Buffer.from(`small ${round}`);
      expect(await roundTrip(s, small)).toEqual(small);
    }
    s.destroy();
  });
});

describe('relay memory budget', () => {
  it('200 stalled readers pin at most the queue budget plus about one buffer each (audit M6)', async () => {
    const big = Buffer.alloc(4_000_000, 1);
    const source = createServer((c) => {
      c.on('error', () => {});
      c.end(big);
    });
    await new Promise<void>((r) => source.listen(0, '127.0.0.1', r));
    const f = await startTcpForwarder({ targetPort: (source.address() as { port: number }).port, engine: 'js' });
    const port = f.port;
    const before = process.memoryUsage().arrayBuffers;
    const readers = [];
    for (let i = 0; i < 200; i++) {
      const s = await tcpConnect('127.0.0.1', port);
      s.pause();
      readers.push(s);
    }
    await sleep(2000);
    const grown = process.memoryUsage().arrayBuffers - before;
    // Without the budget: about 200 x 1.25 MiB (high-water mark plus pinned buffers).
    expect(relayQueuedBytes()).toBeLessThanOrEqual(RELAY_QUEUE_BUDGET + 200 * RELAY_BIG_BUFFER);
    expect(grown).toBeLessThan(RELAY_QUEUE_BUDGET + 200 * (RELAY_BIG_BUFFER + 16 * 1024));
    // Every stalled stream is still whole once read (a direction paused for the budget alone
    // must resume when its write completes: no 'drain' comes for it).
    const whole = await Promise.all(
      readers.map(
        (s) =>
          new Promise<number>((res) => {
            let n = 0;
            s.on('data', (d: Buffer) => {
              n += d.length;
            });
            s.on('end', () => res(n));
            s.resume();
          }),
      ),
    );
    expect(whole.filter((n) => n !== 4_000_000)).toEqual([]);
    for (const s of readers) s.destroy();
    await sleep(200);
    expect(relayQueuedBytes()).toBe(0);
    f.close();
    source.close();
  }, 30_000);
});
