/**
 * TCP forwarding through the built proxy to a "container" behind a veth (IPv4 and IPv6): echo with
 * checksums, half-close both ways, refused target, 200 concurrent connections, a slow reader
 * with bounded proxy memory and no byte lost, and accept errors under fd exhaustion.
 */
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { IS_ROOT, useBackend } from '../helpers/netns.js';
import { freePort, readToEnd, randomBytes, readToClose, sha256, sleep, tcpConnect, tcpRoundTrip } from '../helpers/net.js';
import { BIN, memoryOf, startProxy, type ProxyProc, dockerArgv } from '../helpers/proxy.js';
import { ownEngineEnv, servingPid } from '../helpers/shared-engines.js';
import { killTracked } from '../helpers/processes.js';

const ECHO = 7000;
const HOLD = 7001;
const GREET = 7002;
const CLOSED = 7009;
const logDir = mkdtempSync(join(tmpdir(), 'upt-log-'));

const backend = useBackend(['--echo', String(ECHO), '--hold', String(HOLD), '--greet', String(GREET)]);
beforeAll(() => {
  if (!backend.inNamespace) console.warn('SKIPPED: not root, so the backend runs on loopback instead of a network namespace');
});
afterAll(() => {
  rmSync(logDir, { recursive: true, force: true });
});
afterEach(async () => {
  await killTracked();
});

async function proxy(
  hostIp: string,
  target: string,
  targetPort: number,
  extra: { bin?: string; prefix?: string[]; env?: Record<string, string> } = {},
): Promise<{ p: ProxyProc; port: number }> {
  const port = await freePort(hostIp);
  const argv = dockerArgv('tcp', hostIp, port, target, targetPort);
  const p = await startProxy([...(extra.prefix ?? []), ...argv], { ...(extra.bin ? { bin: extra.bin } : {}), env: extra.env ?? {} });
  return { p, port };
}

describe('tcp forwarding', () => {
  it('tcp forwarder relays 4 MiB both ways intact, IPv4 and IPv6 fronts to IPv4 and IPv6 containers', async () => {
    for (const [front, target] of [
      ['127.0.0.1', backend.ipv4],
      ['::1', backend.ipv6],
      ['::1', backend.ipv4],
      ['127.0.0.1', backend.ipv6],
    ] as const) {
      const { p, port } = await proxy(front, target, ECHO);
      const data = randomBytes(4 << 20);
      const back = await tcpRoundTrip(front, port, data);
      expect(back.length, `${front} -> ${target}`).toBe(data.length);
      expect(sha256(back)).toBe(sha256(data));
      await p.stop();
    }
  });

  it('tcp forwarder listens IPv6-only on "::", so 0.0.0.0:P and [::]:P proxies coexist', async () => {
    const port = await freePort('::');
    const argv = (ip: string) => dockerArgv('tcp', ip, port, backend.ipv4, ECHO);
    const v4 = await startProxy(argv('0.0.0.0'));
    const v6 = await startProxy(argv('::'));
    expect((await tcpRoundTrip('127.0.0.1', port, Buffer.from('four'))).toString()).toBe('four');
    expect((await tcpRoundTrip('::1', port, Buffer.from('six'))).toString()).toBe('six');
    await v4.stop();
    await v6.stop();
  });

  it('tcp forwarder propagates a client FIN and keeps the other direction open', async () => {
    const { port } = await proxy('127.0.0.1', backend.ipv4, ECHO);
    const s = await tcpConnect('127.0.0.1', port);
    const done = readToClose(s);
    s.write('first ');
    await sleep(50);
    s.end('and last');
    const { data, error } = await done;
    expect(error).toBeNull();
    expect(data.toString()).toBe('first and last');
  });

  it('tcp forwarder propagates a target FIN and still carries client bytes to the target', async () => {
    const { port } = await proxy('127.0.0.1', backend.ipv4, GREET);
    const s = await tcpConnect('127.0.0.1', port);
    const greeting = await readToEnd(s);
    expect(greeting).toBe('hello\n');
    const payload = randomBytes(300_000);
    const closed = new Promise((res) => s.once('close', res));
    s.end(payload);
    await backend.command('', `greet-done ${payload.length} ${sha256(payload)}`);
    await closed;
  });

  it('tcp forwarder closes the client promptly when the target refuses', async () => {
    const { port } = await proxy('127.0.0.1', backend.ipv4, CLOSED);
    const t0 = Date.now();
    const s = await tcpConnect('127.0.0.1', port);
    const { data } = await readToClose(s);
    expect(data.length).toBe(0);
    expect(Date.now() - t0).toBeLessThan(1000);
  });

  it('tcp forwarder carries 200 concurrent connections with every checksum intact', async () => {
    const { p, port } = await proxy('127.0.0.1', backend.ipv4, ECHO);
    const payloads = Array.from({ length: 200 }, (_, i) => randomBytes(16_384 + i * 613));
    const results = await Promise.all(payloads.map((d) => tcpRoundTrip('127.0.0.1', port, d)));
    for (const [i, r] of results.entries()) expect(sha256(r), `connection ${i}`).toBe(sha256(payloads[i] as Buffer));
    expect(p.child.exitCode).toBeNull();
  });

  it('tcp forwarder bounds memory behind a reader that stalls, then delivers every byte', async () => {
    // The serving process is measured: the per-port proxy, or the shared engine (of this test's own).
    const env = ownEngineEnv();
    const { p: shim, port } = await proxy('127.0.0.1', backend.ipv4, HOLD, { env });
    const p = { pid: servingPid(shim.pid, env) };
    const before = memoryOf(p.pid);
    const s = await tcpConnect('127.0.0.1', port);
    const total = 64 << 20;
    const chunk = randomBytes(1 << 20);
    let written = 0;
    const reply = readToClose(s);
    // Write until the socket pushes back for good: the proxy must stop reading at a small bound.
    const deadline = Date.now() + 3000;
    while (written < total && Date.now() < deadline) {
      const more = s.write(chunk);
      written += chunk.length;
      if (!more) {
        const drained = await Promise.race([new Promise<boolean>((r) => s.once('drain', () => r(true))), sleep(300).then(() => false)]);
        if (!drained) break;
      }
    }
    await sleep(500);
    const stalled = memoryOf(p.pid);
    const growthKiB = stalled.rssKiB - before.rssKiB;
    expect(written).toBeLessThan(total); // the sender really was held back
    expect(growthKiB).toBeLessThan(16 * 1024);
    // Let the target read; finish sending; every byte must arrive.
    await backend.command('resume');
    const hash = (await import('node:crypto')).createHash('sha256');
    for (let i = 0; i < written / chunk.length; i++) hash.update(chunk);
    if (s.writableLength > 0) await new Promise((r) => s.once('drain', r));
    while (written < total) {
      const more = s.write(chunk);
      hash.update(chunk);
      written += chunk.length;
      if (!more) await new Promise((r) => s.once('drain', r));
    }
    s.end();
    const { data } = await reply;
    expect(data.toString()).toBe(`${total} ${hash.digest('hex')}`);
  });

  it('tcp forwarder under a low fd limit refuses excess clients (counted, logged), never dies, serves again', async () => {
    const logFile = join(logDir, 'proxy.log');
    const { p, port } = await proxy('127.0.0.1', backend.ipv4, ECHO, {
      // The per-port process under the low limit (a shared engine raises its limit to the hard one).
      env: { USERLAND_PROXY_LOG_FILE: logFile, USERLAND_PROXY_SHARED: 'false' },
      bin: '/bin/sh',
      prefix: ['-c', 'ulimit -n 64 && exec "$0" "$@"', BIN],
    });
    // 60 clients need 120 fds in the proxy, which has 64: some accepts must fail.
    let closedByProxy = 0;
    const socks = await Promise.all(
      Array.from({ length: 60 }, () =>
        tcpConnect('127.0.0.1', port).then(
          (s) => {
            s.on('end', () => {
              closedByProxy++;
            });
            s.on('error', () => {
              closedByProxy++;
            });
            return s;
          },
          () => null,
        ),
      ),
    );
    await sleep(500);
    for (const s of socks) s?.destroy();
    expect(closedByProxy + socks.filter((s) => s === null).length).toBeGreaterThan(0);
    await sleep(300);
    const data = randomBytes(10_000);
    expect(sha256(await tcpRoundTrip('127.0.0.1', port, data))).toBe(sha256(data));
    expect(p.child.exitCode).toBeNull();
    // The process budget: 64 - 32 reserved, less the native pipes' eighth (4); counted as limit refusals, never EMFILE.
    const text = readFileSync(logFile, 'utf8');
    expect(text).toMatch(/"fdBudget":28,"msg":"file descriptor budget of the process spent; refusing new connections"/);
    expect(text).not.toContain('EMFILE');
  });
});

describe('tcp limits (docker mode environment)', () => {
  it('USERLAND_PROXY_MAX_CONNECTIONS refuses clients beyond the cap at once and serves the rest', async () => {
    const { port } = await proxy('127.0.0.1', backend.ipv4, ECHO, {
      env: { USERLAND_PROXY_MAX_CONNECTIONS: '3', USERLAND_PROXY_LOG_FILE: join(logDir, 'cap.log') },
    });
    const socks = await Promise.all(Array.from({ length: 5 }, () => tcpConnect('127.0.0.1', port)));
    const closed = await Promise.all(socks.map((s) => Promise.race([readToClose(s).then(() => true), sleep(500).then(() => false)])));
    expect(closed.filter(Boolean)).toHaveLength(2);
    const open = socks.filter((_, i) => !closed[i]);
    for (const s of open) s.destroy();
    expect(readFileSync(join(logDir, 'cap.log'), 'utf8')).toContain('"maxConnections":3,"msg":"connection limit reached; refusing new connections"');
  });
});

describe('tcp forwarding test host', () => {
  it.skipIf(!IS_ROOT)('backend runs behind a veth in its own network namespace (root only)', () => {
    expect(backend.inNamespace).toBe(true);
  });
});
