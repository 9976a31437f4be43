/**
 * Connection churn (issue 21): the leg toward a target leaves no TIME_WAIT after a clean close we
 * began (native/time-wait.c), and that close loses no byte: checksummed payloads of 1 byte to
 * 1 MiB, both close orders, each with a half-close answered by the other side, on both engines;
 * then 300 connections through a docker-mode proxy leave no TIME_WAIT toward the target. The
 * target sits in a network namespace (a container
 * address: loopback's TIME_WAIT reuse does not apply there). Last, a dial that finds no free local
 * port (EADDRNOTAVAIL) is counted as such: a proxy inside the namespace, whose ephemeral range
 * (the namespace's own sysctl, not the host's) is cut to two ports.
 */
import { createHash } from 'node:crypto';
import { execFileSync } from 'node:child_process';
import type { Socket } from 'node:net';
import { afterAll, describe, expect, it } from 'vitest';
import { startTcpForwarder } from '../helpers/data-path.js';
import { IS_ROOT, useBackend } from '../helpers/netns.js';
import { freePort, randomBytes, readToClose, sha256, tcpConnect } from '../helpers/net.js';
import { BIN, dockerArgv, startProxy } from '../helpers/proxy.js';
import { useOwnEngines } from '../helpers/shared-engines.js';
import { get, sample } from '../helpers/standalone.js';
import { killTracked } from '../helpers/processes.js';
import { pattern, timeWaitToward } from '../helpers/testbed.mjs';

const DIGEST_ECHO = 7411;
const SERVE = 7412;
const backend = useBackend(['--digest-echo', String(DIGEST_ECHO), '--serve', String(SERVE)]);
afterAll(killTracked);
const ownEngine = useOwnEngines('tw');

const SIZES = [1, 1000, 65_537, 1 << 20];

/** Everything a socket reads until the peer's FIN (rejects on a reset). */
function readAll(s: Socket): Promise<Buffer> {
  return new Promise((res, rej) => {
    const parts: Buffer[] = [];
    s.on('data', (d: Buffer) => parts.push(d));
    s.once('end', () => res(Buffer.concat(parts)));
    s.once('error', rej);
  });
}

describe.skipIf(!IS_ROOT)('TIME_WAIT toward the target', () => {
  it('client closes first, the target answers after our FIN: every byte both ways, and no TIME_WAIT left', async () => {
    const f = await startTcpForwarder({ target: backend.ipv4, targetPort: DIGEST_ECHO });
    for (const size of SIZES) {
      const sent = randomBytes(size);
      const c = await tcpConnect('127.0.0.1', f.port);
      const back = readAll(c);
      c.end(sent); // our FIN reaches the target before its own: this side would hold the TIME_WAIT
      const got = await back;
      const nl = got.indexOf(10);
      expect(got.subarray(0, nl).toString(), `size ${size}`).toBe(`${size} ${sha256(sent)}`);
      expect(sha256(got.subarray(nl + 1)), `size ${size}`).toBe(sha256(sent));
    }
    await expect.poll(() => f.stats.timeWaitEnded, { timeout: 3000 }).toBe(SIZES.length);
    expect(f.stats.aborted).toBe(0);
    expect(timeWaitToward(backend.ipv4, DIGEST_ECHO)).toBe(0);
  });

  it('the target closes first, the client sends after its FIN: every byte both ways, nothing to end', async () => {
    const f = await startTcpForwarder({ target: backend.ipv4, targetPort: SERVE });
    for (const size of SIZES) {
      const c = await tcpConnect('127.0.0.1', f.port);
      const back = readAll(c);
      c.write(`${size}\n`);
      const got = await back; // the target's FIN came first
      expect(sha256(got), `size ${size}`).toBe(sha256(pattern(size)));
      const reply = randomBytes(size);
      await new Promise<void>((res) => {
        c.once('close', () => res());
        c.end(reply);
      });
      expect(await backend.output('serve-done '), `size ${size}`).toBe(`serve-done ${size} ${createHash('sha256').update(reply).digest('hex')}`);
    }
    expect(f.stats.aborted).toBe(0);
    expect(f.stats.timeWaitEnded).toBe(0); // the target holds the TIME_WAIT: nothing of ours to end
  });

  it('300 connections through a docker-mode proxy, the client closing first, leave no TIME_WAIT toward the target', async () => {
    const port = await freePort();
    const p = await startProxy(dockerArgv('tcp', '127.0.0.1', port, backend.ipv4, DIGEST_ECHO));
    const before = timeWaitToward(backend.ipv4, DIGEST_ECHO);
    for (let i = 0; i < 300; i++) {
      const c = await tcpConnect('127.0.0.1', port);
      const back = readAll(c);
      c.end('ping');
      expect((await back).toString()).toBe(`4 ${sha256(Buffer.from('ping'))}\nping`);
    }
    await new Promise((r) => setTimeout(r, 300));
    expect(timeWaitToward(backend.ipv4, DIGEST_ECHO) - before).toBe(0);
    p.child.kill('SIGINT');
  });

  it('a dial that finds no free local port is refused at once and counted as no_local_port', async () => {
    const ns = backend.namespace as string;
    const inNs = (...a: string[]): string => execFileSync('ip', ['netns', 'exec', ns, ...a], { encoding: 'utf8' }).trim();
    const sysctl = (...a: string[]): string => inNs('sysctl', ...a);
    const range = sysctl('-n', 'net.ipv4.ip_local_port_range').replace(/\s+/, ' ');
    sysctl('-w', 'net.ipv4.ip_local_port_range=40000 40001'); // two local ports toward any one target
    try {
      // The proxy and its shared engine run inside the namespace and forward to the backend there.
      const { env } = ownEngine({ USERLAND_PROXY_METRICS: `${backend.ipv4}:7499` });
      await startProxy(['netns', 'exec', ns, BIN, ...dockerArgv('tcp', backend.ipv4, 7500, '127.0.0.1', DIGEST_ECHO)], { bin: 'ip', env });
      const held = [await tcpConnect(backend.ipv4, 7500), await tcpConnect(backend.ipv4, 7500)];
      for (const c of held) c.write('x'); // the first half of what each sends the target
      // Both dials done: each holds one of the two ports toward the target (waited for, not slept:
      // a loaded machine dials late, and a third client first would take a port of the held).
      const towardTarget = () => inNs('ss', '-Htn', 'dst', `127.0.0.1:${DIGEST_ECHO}`).split('\n').filter(Boolean).length;
      await expect.poll(towardTarget, { timeout: 3000 }).toBe(2);
      const third = await tcpConnect(backend.ipv4, 7500);
      const r = await readToClose(third);
      expect(r.data.length).toBe(0);
      const labels = { mapping: `tcp/${backend.ipv4}:7500`, reason: 'no_local_port' };
      await expect
        .poll(async () => sample((await get(`http://${backend.ipv4}:7499/metrics`)).body, 'userland_proxy_upstream_connect_errors_total', labels), {
          timeout: 3000,
        })
        .toBe(1);
      // The held connections were not disturbed: each still reaches the target.
      for (const c of held) {
        const back = readToClose(c);
        c.end('y');
        expect((await back).data.toString()).toBe(`2 ${sha256(Buffer.from('xy'))}\nxy`);
      }
    } finally {
      sysctl('-w', `net.ipv4.ip_local_port_range=${range}`);
    }
  });
});
