/**
 * Connection churn (issue 21): the leg toward a target leaves no TIME_WAIT after a clean close we
 * began (native/time-wait.c), and that close loses no byte: checksummed payloads of 1 byte to
 * 1 MiB, both close orders, each with a half-close answered by the other side, on both engines;
 * then 300 connections through a docker-mode proxy leave no TIME_WAIT toward the target. The
 * target sits in a network namespace (a container
 * address: loopback's TIME_WAIT reuse does not apply there).
 */
import { createHash } from 'node:crypto';
import { execFileSync } from 'node:child_process';
import type { Socket } from 'node:net';
import { afterAll, describe, expect, it } from 'vitest';
import { startTcpForwarder } from '../helpers/data-path.js';
import { IS_ROOT, useBackend } from '../helpers/netns.js';
import { freePort, randomBytes, sha256, tcpConnect } from '../helpers/net.js';
import { startProxy, dockerArgv } from '../helpers/proxy.js';
import { killTracked } from '../helpers/processes.js';
import { pattern } from '../helpers/testbed.mjs';

const DIGEST_ECHO = 7411;
const SERVE = 7412;
const backend = useBackend(['--digest-echo', String(DIGEST_ECHO), '--serve', String(SERVE)]);
afterAll(killTracked);

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

/** TIME_WAIT entries on this host toward the target's port. */
function timeWaitToward(port: number): number {
  return execFileSync('ss', ['-Htan', 'state', 'time-wait', 'dst', `${backend.ipv4}:${port}`], { encoding: 'utf8' })
    .split('\n')
    .filter(Boolean).length;
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
    expect(timeWaitToward(DIGEST_ECHO)).toBe(0);
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
    const before = timeWaitToward(DIGEST_ECHO);
    for (let i = 0; i < 300; i++) {
      const c = await tcpConnect('127.0.0.1', port);
      const back = readAll(c);
      c.end('ping');
      expect((await back).toString()).toBe(`4 ${sha256(Buffer.from('ping'))}\nping`);
    }
    await new Promise((r) => setTimeout(r, 300));
    expect(timeWaitToward(DIGEST_ECHO) - before).toBe(0);
    p.child.kill('SIGINT');
  });
});
