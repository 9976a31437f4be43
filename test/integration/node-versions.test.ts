/**
 * The relay re-wraps accepted handles and reads through `onread`, which leans on Node internals
 * that may change between majors. This smoke suite runs the built proxy on every supported major
 * (20 here, 22, 24 and 26 fetched by .ci/setup into .cache/nodes) through the launcher's
 * USERLAND_PROXY_NODE override: TCP echo with checksum and half-close, a stalled reader, UDP echo,
 * and -use-listen-fd. In the native project (vitest.config.ts) the same runs force the native
 * engine: the N-API 8 addon built once with Node 20's headers loads on 22, 24 and 26. A target
 * reset right after its data must reach the client as a reset on every major: Node 20 and 22 ship
 * a libuv that reports such a reset as EOF (audit H3), newer ones read the error.
 */
import { execFile } from 'node:child_process';
import { existsSync } from 'node:fs';
import { promisify } from 'node:util';
import { createServer } from 'node:net';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { useBackend } from '../helpers/netns.js';
import { freePort, randomBytes, readToClose, sha256, sleep, tcpConnect, tcpRoundTrip, udpClient, udpRequest } from '../helpers/net.js';
import { ROOT, startProxy, dockerArgv } from '../helpers/proxy.js';
import { killTracked } from '../helpers/processes.js';
import { testEngine } from '../helpers/data-path.js';

const run = promisify(execFile);
const ECHO = 7000;
const RST = 7001;
const nodes = [
  ['20', process.execPath],
  ['22', join(ROOT, '.cache/nodes/22/bin/node')],
  ['24', join(ROOT, '.cache/nodes/24/bin/node')],
  ['26', join(ROOT, '.cache/nodes/26/bin/node')],
] as const;

const backend = useBackend(['--echo', String(ECHO), '--rst', String(RST)]);
afterEach(async () => {
  await killTracked();
});

for (const [major, node] of nodes) {
  describe.skipIf(!existsSync(node))(`on Node.js ${major}`, () => {
    const env = { USERLAND_PROXY_NODE: node };
    const argv = (proto: string, port: number) => dockerArgv(proto, '127.0.0.1', port, backend.ipv4, ECHO);

    it(`tcp relay keeps every byte and half-closes on Node ${major}`, async () => {
      const port = await freePort();
      await startProxy(argv('tcp', port), { env });
      for (const size of [1, 4096, 4097, 300_000, 3 << 20]) {
        const data = randomBytes(size);
        expect(sha256(await tcpRoundTrip('127.0.0.1', port, data)), `size ${size}`).toBe(sha256(data));
      }
      const s = await tcpConnect('127.0.0.1', port);
      const done = readToClose(s);
      s.write('a');
      await sleep(20);
      s.end('b');
      expect((await done).data.toString()).toBe('ab');
    });

    // Not made for Node 20 (they run in this very process as part of the main suite), nor in the
    // native project: they test the JavaScript relay, whatever engine the proxies use.
    (major !== '20' && testEngine() === 'js' ? it : () => {})(
      `the in-process relay and private-API suites (src/core/node-internals.ts) pass on Node ${major}`,
      async () => {
        const { stdout } = await run(
          node,
          [
            join(ROOT, 'node_modules/vitest/vitest.mjs'),
            'run',
            '--project',
            'unit',
            '--project',
            'js',
            'test/integration/relay.test.ts',
            'test/unit/node-internals.test.ts',
          ],
          { cwd: ROOT, env: { ...process.env, NO_COLOR: '1', UPT_PORT_NEST: process.env.VITEST_POOL_ID ?? '1' }, timeout: 60_000 },
        );
        expect(stdout).toMatch(/Test Files\s+2 passed/);
        expect(stdout).not.toMatch(/failed/);
      },
      70_000,
    );

    it(`a target reset right after its data reaches the client as a reset on Node ${major}`, async () => {
      const port = await freePort();
      await startProxy([...argv('tcp', port).slice(0, -1), String(RST)], { env });
      const seen: string[] = [];
      for (const size of [10, 5000, 1_000_000]) {
        for (let i = 0; i < 10; i++) {
          const s = await tcpConnect('127.0.0.1', port);
          const done = readToClose(s);
          s.write(`${size}\n`);
          seen.push(`${size}:${(await done).error ?? 'FIN'}`);
        }
      }
      expect(seen.filter((x) => !x.endsWith(':ECONNRESET'))).toEqual([]);
    });

    it(`udp and -use-listen-fd work on Node ${major}`, async () => {
      const port = await freePort();
      await startProxy(argv('udp', port), { env });
      const c = udpClient(4);
      expect((await udpRequest(c, '127.0.0.1', port, 'udp')).toString()).toBe('udp');
      c.close();
      const server = await new Promise<ReturnType<typeof createServer>>((res) => {
        const s = createServer().listen(0, '127.0.0.1', () => res(s));
      });
      const fdPort = (server.address() as { port: number }).port;
      await startProxy([...argv('tcp', fdPort), '-use-listen-fd'], { env, listenFd: (server as unknown as { _handle: { fd: number } })._handle.fd });
      server.close();
      expect((await tcpRoundTrip('127.0.0.1', fdPort, Buffer.from('fd4'))).toString()).toBe('fd4');
    });
  });
}
