/**
 * What only the native engine has: no fd leak across a load run (TCP and UDP), replies from the
 * address the UDP client targeted (IP_PKTINFO), the flow surviving ICMP refusals (counted), and
 * engine choice: forced, automatic with a missing addon, invalid values, and a build without a
 * compiler. Every other suite runs on both engines (vitest.config.ts).
 */
import { execFileSync, spawnSync } from 'node:child_process';
import { cpSync, existsSync, mkdtempSync, readdirSync, readFileSync, readlinkSync, rmSync, symlinkSync } from 'node:fs';
import { connect, createServer, type Server, type Socket } from 'node:net';
import { createSocket } from 'node:dgram';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, afterEach, beforeAll, describe, expect, it, vi } from 'vitest';
import { freePort, randomBytes, readToClose, sha256, sleep, tcpConnect, tcpRoundTrip, udpClient, udpRequest } from '../helpers/net.js';
import { BIN, ROOT, spawnProxy, startProxy, dockerArgv } from '../helpers/proxy.js';
import { startTcpForwarder, startUdpForwarder } from '../helpers/data-path.js';
import { nativeGroupsOpen } from '../../src/data-path/native-engine.js';
import { killTracked } from '../helpers/processes.js';
import { ownEngineEnv, servingPid } from '../helpers/shared-engines.js';
import { IS_ROOT, useBackend } from '../helpers/netns.js';

const HAVE_ADDON = existsSync(join(ROOT, 'build/Release/engine.node'));
let echo: Server;
let echoPort = 0;
const tmp = mkdtempSync(join(tmpdir(), 'upt-native-'));

beforeAll(async () => {
  echo = createServer({ allowHalfOpen: true }, (c: Socket) => {
    c.on('error', () => {});
    c.pipe(c);
  });
  await new Promise<void>((r) => echo.listen(0, '127.0.0.1', r));
  echoPort = (echo.address() as { port: number }).port;
});
afterAll(() => {
  echo.close();
  rmSync(tmp, { recursive: true, force: true });
});
afterEach(async () => {
  await killTracked();
});

/** Open fds of a process by kind: sockets, pipes, other (eventfd, epoll, files). */
function fds(pid: number): { socket: number; pipe: number; other: number } {
  const out = { socket: 0, pipe: 0, other: 0 };
  for (const fd of readdirSync(`/proc/${pid}/fd`)) {
    let link = '';
    try {
      link = readlinkSync(`/proc/${pid}/fd/${fd}`);
    } catch {
      continue;
    }
    if (link.startsWith('socket:')) out.socket++;
    else if (link.startsWith('pipe:')) out.pipe++;
    else out.other++;
  }
  return out;
}

function tcpArgs(port: number, targetPort: number): string[] {
  return dockerArgv('tcp', '127.0.0.1', port, '127.0.0.1', targetPort);
}

describe.skipIf(!HAVE_ADDON)('native engine', () => {
  it('leaks no fd: 2200 TCP connections (sequential, concurrent, reset at once) and 300 UDP flows', async () => {
    const port = await freePort();
    // The serving process (the shared engine, of this test's own, or the per-port proxy) is measured.
    const log = join(tmp, 'leaks.log');
    const env = { USERLAND_PROXY_ENGINE: 'native', USERLAND_PROXY_LOG_FILE: log, ...ownEngineEnv() };
    const p = { pid: servingPid((await startProxy(tcpArgs(port, echoPort), { env })).pid, env) };
    // Warm up: the native thread, its epoll and eventfd and the pipe pool exist from here on.
    await tcpRoundTrip('127.0.0.1', port, randomBytes(300_000));
    await sleep(100);
    const before = fds(p.pid);
    for (let i = 0; i < 1000; i++) await tcpRoundTrip('127.0.0.1', port, Buffer.from(`seq ${i}`));
    for (let b = 0; b < 20; b++) {
      await Promise.all(Array.from({ length: 50 }, (_, i) => tcpRoundTrip('127.0.0.1', port, randomBytes(1000 + i * 100))));
    }
    for (let i = 0; i < 200; i++) {
      const s = await tcpConnect('127.0.0.1', port);
      s.resetAndDestroy();
    }
    await vi.waitFor(() => expect(fds(p.pid).socket).toBe(before.socket), { timeout: 5000, interval: 100 });
    const after = fds(p.pid);
    expect(after.other).toBe(before.other);
    // Idle pipes sit in a pool of at most 32 (2 fds each); none belong to a connection.
    expect(after.pipe).toBeLessThanOrEqual(before.pipe + 64);
    expect(readFileSync(log, 'utf8')).not.toMatch(/"level":"(warn|error|fatal)"/); // no warning, error or crash

    const uport = await freePort();
    const udpEcho = createSocket('udp4');
    udpEcho.on('message', (m, r) => udpEcho.send(m, r.port, r.address));
    await new Promise<void>((r) => udpEcho.bind(0, '127.0.0.1', r));
    const uenv = { USERLAND_PROXY_ENGINE: 'native', USERLAND_PROXY_UDP_IDLE_TIMEOUT: '300ms', ...ownEngineEnv() };
    const u = { pid: servingPid((await startProxy(dockerArgv('udp', '127.0.0.1', uport, '127.0.0.1', udpEcho.address().port), { env: uenv })).pid, uenv) };
    const c0 = udpClient(4);
    await udpRequest(c0, '127.0.0.1', uport, 'warm');
    c0.close();
    await sleep(800);
    const ubefore = fds(u.pid);
    for (let b = 0; b < 6; b++) {
      const clients = Array.from({ length: 50 }, () => udpClient(4));
      await Promise.all(clients.map((c, i) => udpRequest(c, '127.0.0.1', uport, `flow ${b} ${i}`)));
      for (const c of clients) c.close();
    }
    expect(fds(u.pid).socket).toBeGreaterThanOrEqual(ubefore.socket + 50);
    await vi.waitFor(() => expect(fds(u.pid)).toEqual(ubefore), { timeout: 5000, interval: 100 });
    udpEcho.close();
  });

  it('carries 64 MiB both ways intact through a throttled reader (the pipe stays full)', async () => {
    const port = await freePort();
    await startProxy(tcpArgs(port, echoPort), { env: { USERLAND_PROXY_ENGINE: 'native' } });
    const data = randomBytes(64 * 1024 * 1024);
    const s = await tcpConnect('127.0.0.1', port);
    const got: Buffer[] = [];
    let n = 0;
    s.on('data', (d: Buffer) => {
      got.push(d);
      n += d.length;
      if (got.length % 16 === 0) {
        s.pause();
        setTimeout(() => s.resume(), 2);
      }
    });
    const done = new Promise<void>((r) => s.on('end', r));
    s.end(data);
    await done;
    expect(n).toBe(data.length);
    expect(sha256(Buffer.concat(got))).toBe(sha256(data));
  });

  it('replies to a UDP client from the address it targeted (IP_PKTINFO), on a wildcard listener', async () => {
    const udpEcho = createSocket('udp4');
    udpEcho.on('message', (m, r) => udpEcho.send(m, r.port, r.address));
    await new Promise<void>((r) => udpEcho.bind(0, '127.0.0.1', r));
    const port = await freePort('0.0.0.0');
    await startProxy(dockerArgv('udp', '0.0.0.0', port, '127.0.0.1', udpEcho.address().port), { env: { USERLAND_PROXY_ENGINE: 'native' } });
    // A client bound to 127.0.0.1 and connected to 127.0.0.2 accepts only replies from
    // 127.0.0.2:port. Without IP_PKTINFO the kernel would answer from 127.0.0.1 (the route's
    // source), and the connected client would never see it.
    const c = createSocket('udp4');
    await new Promise<void>((r) => c.bind(0, '127.0.0.1', r));
    await new Promise<void>((r) => c.connect(port, '127.0.0.2', r));
    const reply = new Promise<string>((res, rej) => {
      const t = setTimeout(() => rej(new Error('no reply from 127.0.0.2')), 2000);
      c.once('message', (m, r) => {
        clearTimeout(t);
        res(`${m} from ${r.address}:${r.port}`);
      });
    });
    c.send('who');
    expect(await reply).toBe(`who from 127.0.0.2:${port}`);
    c.close();
    udpEcho.close();
  });

  it('a closed mapping leaves the native thread: 300 TCP and UDP mappings come and go, the thread walks none of them (audit N6)', async () => {
    const before = nativeGroupsOpen();
    for (let i = 0; i < 150; i++) {
      const t = await startTcpForwarder({ targetPort: echoPort, engine: 'native' });
      const { f: u } = await startUdpForwarder({ targetPort: echoPort, udpIdleTimeoutMs: 1000, engine: 'native' });
      if (i === 0) expect(nativeGroupsOpen()).toBe(before + 2);
      t.close();
      u.close();
    }
    expect(nativeGroupsOpen()).toBe(before);
  });

  it('keeps one UDP flow through ICMP port unreachable, counting the refusals', async () => {
    const target = createSocket('udp4');
    await new Promise<void>((r) => target.bind(0, '127.0.0.1', r));
    const targetPort = target.address().port;
    target.close(); // nothing listens: the kernel answers with ICMP port unreachable
    const { f, port } = await startUdpForwarder({ targetPort, engine: 'native' });
    const c = udpClient(4);
    for (let i = 0; i < 3; i++) {
      await expect(udpRequest(c, '127.0.0.1', port, `x${i}`, 150)).rejects.toThrow('no UDP reply');
    }
    const back = createSocket('udp4');
    back.on('message', (m, r) => back.send(m, r.port, r.address));
    await new Promise<void>((r) => back.bind(targetPort, '127.0.0.1', r));
    expect((await udpRequest(c, '127.0.0.1', port, 'now open')).toString()).toBe('now open');
    expect(f.stats.flowsCreated).toBe(1);
    expect(f.stats.refused).toBeGreaterThanOrEqual(1);
    expect(f.stats.datagramsIn).toBe(4);
    c.close();
    back.close();
    f.close();
  });

  it('engine choice: -engine and USERLAND_PROXY_ENGINE force either engine; bad values fail with one line', async () => {
    for (const [engine, how] of [
      ['js', 'flag'],
      ['native', 'flag'],
      ['js', 'env'],
      ['native', 'env'],
    ] as const) {
      const port = await freePort();
      const p = await startProxy(how === 'flag' ? ['-engine', engine, ...tcpArgs(port, echoPort)] : tcpArgs(port, echoPort), {
        env: {
          USERLAND_PROXY_ENGINE: how === 'env' ? engine : 'auto',
          USERLAND_PROXY_LOG_LEVEL: 'info',
          USERLAND_PROXY_LOG_FILE: join(tmp, `${engine}-${how}.log`),
        },
      });
      const data = randomBytes(100_000);
      expect(sha256(await tcpRoundTrip('127.0.0.1', port, data))).toBe(sha256(data));
      await p.stop();
      expect(execFileSync('cat', [join(tmp, `${engine}-${how}.log`)]).toString()).toContain(`"engine":"${engine}"`);
    }
    const bad = spawnProxy(['-engine', 'turbo', ...tcpArgs(await freePort(), echoPort)]);
    expect(await bad.status).toBe('1\ninvalid -engine "turbo": use one of auto, native, js');
    expect((await bad.exited).code).toBe(1);
    const badEnv = spawnProxy(tcpArgs(await freePort(), echoPort), { env: { USERLAND_PROXY_ENGINE: 'fast' } });
    expect(await badEnv.status).toBe('1\ninvalid USERLAND_PROXY_ENGINE "fast": use one of auto, native, js');
    const run = spawnSync(BIN, ['run', '--engine', 'nope', '--publish', '127.0.0.1:1:127.0.0.1:2'], { encoding: 'utf8' });
    expect(run.status).toBe(2);
    expect(run.stderr.trim()).toBe('userland-proxy: invalid --engine "nope": use one of auto, native, js');
  });

  it('without the addon: auto falls back to JavaScript with one warning, native fails at start', async () => {
    // A copy of the install without build/: what a host without a compiler gets.
    const copy = join(tmp, 'no-addon');
    for (const d of ['bin', 'dist']) cpSync(join(ROOT, d), join(copy, d), { recursive: true });
    cpSync(join(ROOT, 'package.json'), join(copy, 'package.json'));
    symlinkSync(join(ROOT, 'node_modules'), join(copy, 'node_modules'));
    const bin = join(copy, 'bin/userland-proxy');
    const port = await freePort();
    const log = join(tmp, 'fallback.log');
    const p = await startProxy(tcpArgs(port, echoPort), { bin, env: { USERLAND_PROXY_ENGINE: 'auto', USERLAND_PROXY_LOG_FILE: log } });
    expect((await tcpRoundTrip('127.0.0.1', port, Buffer.from('still works'))).toString()).toBe('still works');
    await p.stop();
    const lines = execFileSync('cat', [log]).toString().trim().split('\n');
    expect(lines.filter((l) => l.includes('native engine unavailable'))).toHaveLength(1);
    expect(lines.some((l) => l.includes('"engine":"js"'))).toBe(true);
    const forced = spawnProxy(tcpArgs(await freePort(), echoPort), { bin, env: { USERLAND_PROXY_ENGINE: 'native' } });
    expect(await forced.status).toMatch(/^1\nnative engine unavailable: Cannot find module/);
    expect((await forced.exited).code).toBe(1);
  });

  it('the install script never fails: without a compiler it warns and leaves no addon', () => {
    const copy = join(tmp, 'no-cc');
    for (const f of ['native', 'binding.gyp', 'package.json']) cpSync(join(ROOT, f), join(copy, f), { recursive: true });
    const r = spawnSync(process.execPath, [join(copy, 'native/build.mjs')], { encoding: 'utf8', env: { ...process.env, CC: '/bin/false', CXX: '/bin/false' } });
    expect(r.status).toBe(0);
    expect(r.stderr).toContain('native engine not built');
    expect(existsSync(join(copy, 'build/Release/engine.node'))).toBe(false);
  });

  it('a half-closed client still receives the whole answer, then a clean FIN', async () => {
    const port = await freePort();
    await startProxy(tcpArgs(port, echoPort), { env: { USERLAND_PROXY_ENGINE: 'native' } });
    const s = await tcpConnect('127.0.0.1', port);
    const all = readToClose(s);
    s.end(Buffer.alloc(1 << 20, 7));
    const { data, error } = await all;
    expect(error).toBeNull();
    expect(data.length).toBe(1 << 20);
  });
});

describe.skipIf(!HAVE_ADDON)('native engine: batched UDP', () => {
  it('keeps every datagram boundary through recvmmsg, GSO sendmsg and back (bursts of mixed sizes)', async () => {
    const udpEcho = createSocket({ type: 'udp4', recvBufferSize: 4 << 20, sendBufferSize: 4 << 20 });
    udpEcho.on('message', (m, r) => udpEcho.send(m, r.port, r.address));
    await new Promise<void>((r) => udpEcho.bind(0, '127.0.0.1', r));
    const port = await freePort();
    await startProxy(dockerArgv('udp', '127.0.0.1', port, '127.0.0.1', udpEcho.address().port), { env: { USERLAND_PROXY_ENGINE: 'native' } });
    // Room for the whole burst in the client's own receive buffer (the test must not drop).
    const c = createSocket({ type: 'udp4', recvBufferSize: 4 << 20 });
    await new Promise<void>((r) => c.bind(0, '127.0.0.1', r));
    // Runs of equal sizes with a shorter one between them: exactly what GSO packs together;
    // 2000 and 9000 bytes are above the GSO segment bound and go plainly.
    const sizes = [1, 1400, 1400, 1400, 300, 1400, 64, 64, 64, 64, 2000, 9000, 0, 1400];
    const sent = new Map<string, number>();
    const got: Buffer[] = [];
    c.on('message', (m: Buffer) => got.push(m));
    for (let burst = 0; burst < 20; burst++) {
      for (let i = 0; i < sizes.length; i++) {
        const size = sizes[i] as number;
        const b = Buffer.alloc(size, (burst * 31 + i) & 0xff);
        if (size >= 4) b.writeUInt16BE(burst * 100 + i, 0);
        sent.set(sha256(b), (sent.get(sha256(b)) ?? 0) + 1);
        c.send(b, port, '127.0.0.1');
      }
    }
    const total = 20 * sizes.length;
    await vi.waitFor(() => expect(got.length).toBe(total), { timeout: 5000 });
    for (const m of got) {
      const k = sha256(m);
      expect(sent.get(k), `unexpected datagram of ${m.length} bytes`).toBeGreaterThan(0);
      sent.set(k, (sent.get(k) as number) - 1);
    }
    c.close();
    udpEcho.close();
  });
});

describe.skipIf(!HAVE_ADDON || !IS_ROOT)('native engine: the accept path', () => {
  const backend = useBackend(['--echo', '7000']);
  beforeAll(() => {
    // A "container" that drops SYNs on 7999: every dial there ends by the connect timeout.
    execFileSync('ip', ['netns', 'exec', backend.namespace as string, 'iptables', '-A', 'INPUT', '-p', 'tcp', '--dport', '7999', '-j', 'DROP']);
  });

  /** Connects from `local`; resolves how the connection ended: its bytes and error code. */
  const attempt = (port: number, local = '127.0.0.1'): Promise<{ data: Buffer; error: string | null }> =>
    readToClose(connect({ host: '127.0.0.1', port, localAddress: local, allowHalfOpen: true }));

  it('leaks no fd over 10 000 short connections: clean, reset, refused by ACL, refused by cap, dial timeout', async () => {
    const env = { USERLAND_PROXY_ENGINE: 'native', ...ownEngineEnv() };
    const [clean, capped, dead] = [await freePort(), await freePort(), await freePort()];
    const p = servingPid((await startProxy(tcpArgs(clean, echoPort), { env: { ...env, USERLAND_PROXY_DENY: '127.0.0.2/32' } })).pid, env);
    await startProxy(tcpArgs(capped, echoPort), { env: { ...env, USERLAND_PROXY_MAX_CONNECTIONS: '10' } });
    await startProxy(dockerArgv('tcp', '127.0.0.1', dead, backend.ipv4, 7999), { env: { ...env, USERLAND_PROXY_CONNECT_TIMEOUT: '100ms' } });
    await tcpRoundTrip('127.0.0.1', clean, randomBytes(300_000)); // warm up: thread, epoll, pipe pool
    await sleep(100);
    const before = fds(p);
    let n = 0;
    // 6000 clean: 2000 in sequence, 4000 in batches of 50.
    for (let i = 0; i < 2000; i++, n++) expect((await tcpRoundTrip('127.0.0.1', clean, Buffer.from(`seq ${i}`))).toString()).toBe(`seq ${i}`);
    for (let b = 0; b < 80; b++, n += 50) await Promise.all(Array.from({ length: 50 }, (_, i) => tcpRoundTrip('127.0.0.1', clean, randomBytes(100 + i * 50))));
    // 1500 reset by the client at once.
    for (let i = 0; i < 1500; i++, n++) (await tcpConnect('127.0.0.1', clean)).resetAndDestroy();
    // 1000 refused by the access lists: a reset before any dial.
    for (let b = 0; b < 20; b++, n += 50) {
      for (const r of await Promise.all(Array.from({ length: 50 }, () => attempt(clean, '127.0.0.2')))) expect(r.error).toBe('ECONNRESET');
    }
    // 1000 refused by the cap while 10 connections hold it: closed at once, no byte.
    const held = await Promise.all(Array.from({ length: 10 }, () => tcpConnect('127.0.0.1', capped)));
    await sleep(100);
    for (let b = 0; b < 20; b++, n += 50) {
      for (const r of await Promise.all(Array.from({ length: 50 }, () => attempt(capped)))) expect(r.data.length).toBe(0);
    }
    for (const s of held) s.destroy();
    // 500 dials that time out (100 ms each, 100 at a time).
    for (let b = 0; b < 5; b++, n += 100) {
      for (const r of await Promise.all(Array.from({ length: 100 }, () => attempt(dead)))) expect(r.data.length).toBe(0);
    }
    expect(n).toBe(10_000);
    await vi.waitFor(() => expect(fds(p).socket).toBe(before.socket), { timeout: 10_000, interval: 100 });
    const after = fds(p);
    expect(after.other).toBe(before.other);
    // Idle pipes sit in the thread's pool (at most 8 pipes, 16 fds); none belongs to a connection.
    expect(after.pipe).toBeLessThanOrEqual(before.pipe + 16);
  }, 120_000);
});
