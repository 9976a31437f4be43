/**
 * The docker-proxy process contract, through the built launcher with a harness that plays dockerd:
 * a real pipe on fd 3, pre-bound sockets on fd 4, SIGINT to stop, 16 s readiness limit.
 */
import { spawnSync } from 'node:child_process';
import { createSocket } from 'node:dgram';
import { readFileSync, readlinkSync } from 'node:fs';
import { LISTEN_BACKLOG } from '../../src/core/constants.js';
import { createServer, type Server } from 'node:net';
import { afterEach, describe, expect, it } from 'vitest';
import { IS_ROOT, useBackend } from '../helpers/netns.js';
import { freePort, randomBytes, sha256, sleep, tcpRoundTrip, udpClient, udpRequest } from '../helpers/net.js';
import { BIN, ROOT, spawnProxy, startProxy, dockerArgv } from '../helpers/proxy.js';
import { join } from 'node:path';
import { killTracked } from '../helpers/processes.js';
import { DOCKER_MODES, RUN_ENGINE_SOCKET, useDockerMode } from '../helpers/shared-engines.js';

const ECHO = 7000;
const backend = useBackend(['--echo', String(ECHO)]);
afterEach(async () => {
  await killTracked();
});

const args = (proto: string, hostIp: string, hostPort: number, target = backend.ipv4) => dockerArgv(proto, hostIp, hostPort, target, String(ECHO));

function listenOn(port: number, host: string): Promise<Server> {
  return new Promise((res, rej) => {
    const s = createServer();
    s.once('error', rej).listen({ port, host, ipv6Only: host.includes(':') }, () => res(s));
  });
}

/** The fd behind a Node handle (test-only use of a private field). */
const fdOf = (h: unknown): number => (h as { _handle: { fd: number } })._handle.fd;
function udpFd(sock: object): number {
  const sym = Object.getOwnPropertySymbols(sock).find((s) => s.description === 'state symbol');
  return (sock as Record<symbol, { handle: { fd: number } }>)[sym as symbol].handle.fd;
}

describe.each(DOCKER_MODES)('$mode', ({ shared }) => {
  useDockerMode(shared);

  describe('status pipe (fd 3)', () => {
    it('writes exactly "0\\n" once listening and serves; SIGINT exits 0 within 1 s and frees the port', async () => {
      const port = await freePort();
      const p = await startProxy(args('tcp', '127.0.0.1', port));
      const data = randomBytes(100_000);
      expect(sha256(await tcpRoundTrip('127.0.0.1', port, data))).toBe(sha256(data));
      const t0 = Date.now();
      expect(await p.stop('SIGINT')).toEqual({ code: 0, signal: null });
      expect(Date.now() - t0).toBeLessThan(1000);
      (await listenOn(port, '127.0.0.1')).close();
    });

    it('handles a signal sent the instant "0\\n" arrives (handlers are installed first)', async () => {
      for (const sig of ['SIGINT', 'SIGTERM'] as const) {
        const p = await startProxy(args('udp', '127.0.0.1', await freePort()));
        expect(await p.stop(sig)).toEqual({ code: 0, signal: null });
      }
    });

    it('reports a port in use as "1\\n<go-style error>" without trailing newline, exit 1', async () => {
      const port = await freePort();
      const blocker = await listenOn(port, '127.0.0.1');
      try {
        const p = spawnProxy(args('tcp', '127.0.0.1', port));
        expect(await p.status).toBe(`1\nfailed to listen on 127.0.0.1:${port}: listen tcp4 127.0.0.1:${port}: bind: address already in use`);
        expect((await p.exited).code).toBe(1);
        expect(p.stderr().trim().split('\n')).toHaveLength(1);
      } finally {
        blocker.close();
      }
      const u = createSocket('udp6');
      await new Promise<void>((res) => u.bind(port, '::1', () => res()));
      try {
        const p = spawnProxy(args('udp', '::1', port));
        expect(await p.status).toBe(`1\nfailed to listen on [::1]:${port}: listen udp6 [::1]:${port}: bind: address already in use`);
        expect((await p.exited).code).toBe(1);
      } finally {
        u.close();
      }
    });

    it('reports flag syntax errors on stderr (one line) and fd 3, exit 2', async () => {
      for (const [extra, msg] of [
        [['-bogus'], 'flag provided but not defined: -bogus'],
        [['-host-port', '0x'], 'invalid value "0x" for flag -host-port: parse error'],
        [['-host-port'], 'flag needs an argument: -host-port'],
        // (docker-proxy 28 parses addresses as flag values: a bad one is a syntax error.)
        [['-host-ip', '300.1.1.1'], 'invalid value "300.1.1.1" for flag -host-ip: invalid IP address: 300.1.1.1'],
      ] as const) {
        const p = spawnProxy([...args('tcp', '127.0.0.1', 1).slice(0, 4), ...extra]);
        expect(await p.status).toBe(`1\n${msg}`);
        expect((await p.exited).code).toBe(2);
        expect(p.stderr()).toBe(`userland-proxy: ${msg} (run with -h for usage)\n`);
      }
    });

    it('reports bad values, SCTP and bad environment as startup failures, exit 1', async () => {
      const cases: [string[], Record<string, string>, string][] = [
        [args('tcp', '127.0.0.1', 70000), {}, 'invalid -host-port 70000: must be 0-65535'],
        [args('sctp', '127.0.0.1', 1), {}, 'SCTP is not supported: Node.js has no SCTP sockets (keep docker-proxy for SCTP ports)'],
        [args('icmp', '127.0.0.1', 1), {}, 'unsupported protocol icmp'],
        [
          args('udp', '127.0.0.1', 1),
          { USERLAND_PROXY_UDP_IDLE_TIMEOUT: 'x' },
          'invalid USERLAND_PROXY_UDP_IDLE_TIMEOUT "x": use a duration such as 500ms, 90s or 5m (a bare number is seconds)',
        ],
        [args('tcp', '127.0.0.1', 1), { USERLAND_PROXY_LOG_FILE: '/nonexistent/dir/x.log' }, 'cannot open log file /nonexistent/dir/x.log'],
      ];
      for (const [argv, env, msg] of cases) {
        const p = spawnProxy(argv, { env });
        expect(await p.status).toContain(`1\n${msg}`);
        expect((await p.exited).code).toBe(1);
        expect(p.stderr().trim().split('\n')).toHaveLength(1);
      }
    });

    it('prints usage for -h and the version for -v/-version, exit 0, nothing on fd 3', async () => {
      const h = spawnProxy(['-h']);
      expect(await h.status).toBe('');
      expect((await h.exited).code).toBe(0);
      expect(h.stderr()).toContain('Usage of userland-proxy:');
      for (const v of ['-v', '-version', '--version']) {
        const p = spawnProxy([v]);
        expect(await p.status).toBe('');
        expect((await p.exited).code).toBe(0);
        expect(p.stdout()).toMatch(/^userland-proxy version \d+\.\d+\.\d+/);
      }
    });

    it('ignores trailing positional arguments', async () => {
      const port = await freePort();
      const p = await startProxy([...args('tcp', '127.0.0.1', port), 'extra', '-bogus']);
      const data = randomBytes(1000);
      expect(await tcpRoundTrip('127.0.0.1', port, data)).toEqual(data);
      await p.stop();
    });

    it("works standalone with fd 3 closed (never mistakes Node's own fd 3 for the pipe)", async () => {
      const port = await freePort();
      const p = spawnProxy(args('tcp', '127.0.0.1', port), { statusFd: 'none' });
      let ok = false;
      for (let i = 0; i < 50 && !ok; i++) {
        await sleep(50);
        ok = await tcpRoundTrip('127.0.0.1', port, Buffer.from('ping')).then(
          (b) => b.toString() === 'ping',
          () => false,
        );
      }
      expect(ok).toBe(true);
      expect(await p.stop()).toEqual({ code: 0, signal: null });
    });
  });

  describe('launcher (bin/userland-proxy)', () => {
    it("finds Node with an empty environment (dockerd's minimal PATH) and from another directory", async () => {
      const port = await freePort();
      // Nothing but the mode under test and this run's engine name (so that the run ends it).
      const own = { USERLAND_PROXY_SHARED: shared, USERLAND_PROXY_ENGINE_SOCKET: RUN_ENGINE_SOCKET };
      const p = await startProxy(args('tcp', '127.0.0.1', port), { cleanEnv: true, env: own });
      expect(await tcpRoundTrip('127.0.0.1', port, Buffer.from('no PATH'))).toEqual(Buffer.from('no PATH'));
      expect((await p.stop()).code).toBe(0);
    });

    it('reports an unusable USERLAND_PROXY_NODE on fd 3 and stderr, exit 1', async () => {
      // Per-port mode: in shared mode this run's engine may already be up, so node is not needed.
      const p = spawnProxy(args('tcp', '127.0.0.1', 1), { env: { USERLAND_PROXY_NODE: '/nonexistent/node', USERLAND_PROXY_SHARED: 'false' } });
      expect(await p.status).toBe('1\nUSERLAND_PROXY_NODE=/nonexistent/node is not an executable node binary');
      expect((await p.exited).code).toBe(1);
      expect(p.stderr()).toBe('userland-proxy: USERLAND_PROXY_NODE=/nonexistent/node is not an executable node binary\n');
    });
  });

  describe('signals', () => {
    it('SIGHUP does not stop the proxy; SIGTERM then exits 0', async () => {
      const port = await freePort();
      const p = await startProxy(args('tcp', '127.0.0.1', port));
      p.child.kill('SIGHUP');
      await sleep(200);
      expect(await tcpRoundTrip('127.0.0.1', port, Buffer.from('still here'))).toEqual(Buffer.from('still here'));
      expect(await p.stop('SIGTERM')).toEqual({ code: 0, signal: null });
    });

    it('SIGINT with open TCP connections and UDP flows still exits 0 within 1 s', async () => {
      const port = await freePort();
      const p = await startProxy(args('tcp', '127.0.0.1', port));
      const conns = await Promise.all(Array.from({ length: 20 }, () => tcpRoundTrip('127.0.0.1', port, Buffer.alloc(0)).catch(() => null)));
      expect(conns).toHaveLength(20);
      const u = await startProxy(args('udp', '127.0.0.1', port));
      const c = udpClient(4);
      expect((await udpRequest(c, '127.0.0.1', port, 'x')).toString()).toBe('x');
      const t0 = Date.now();
      const [a, b] = await Promise.all([p.stop(), u.stop()]);
      expect(Date.now() - t0).toBeLessThan(1000);
      expect([a.code, b.code]).toEqual([0, 0]);
      c.close();
    });
  });

  describe('-use-listen-fd (Docker 28+)', () => {
    it('adopts a listening TCP socket on fd 4', async () => {
      const server = await listenOn(0, '127.0.0.1');
      const { port } = server.address() as { port: number };
      const p = await startProxy([...args('tcp', '127.0.0.1', port), '-use-listen-fd'], { listenFd: fdOf(server) });
      server.close(); // dockerd closes its copy after "0\n"
      // The backlog is ours (the kernel's cap, as docker-proxy 28's 4096), not the 511 Node gives an
      // adopted fd when the backlog is passed as an option (audit N13). ss: Send-Q of a listener.
      const somaxconn = Number(readFileSync('/proc/sys/net/core/somaxconn', 'utf8'));
      const ss = spawnSync('ss', ['-Hltn', `sport = :${port}`], { encoding: 'utf8' })
        .stdout.trim()
        .split(/\s+/);
      expect(Number(ss[2])).toBe(Math.min(somaxconn, LISTEN_BACKLOG));
      const data = randomBytes(50_000);
      expect(sha256(await tcpRoundTrip('127.0.0.1', port, data))).toBe(sha256(data));
      expect((await p.stop()).code).toBe(0);
    });

    it('adopts a bound UDP socket on fd 4 (IPv6)', async () => {
      const sock = createSocket({ type: 'udp6', ipv6Only: true });
      await new Promise<void>((res) => sock.bind(0, '::1', () => res()));
      const { port } = sock.address();
      const p = await startProxy([...args('udp', '::1', port), '-use-listen-fd'], { listenFd: udpFd(sock) });
      sock.close();
      const c = udpClient(6);
      expect((await udpRequest(c, '::1', port, 'via fd 4')).toString()).toBe('via fd 4');
      c.close();
      expect((await p.stop()).code).toBe(0);
    });

    it('fails clearly when fd 4 is missing or of the wrong kind', async () => {
      const missing = spawnProxy([...args('tcp', '127.0.0.1', 1), '-use-listen-fd']);
      expect(await missing.status).toMatch(/^1\n-use-listen-fd given but fd 4 is not (open|a listening TCP socket)$/);
      expect(await missing.exited).toEqual({ code: 1, signal: null });
      const server = await listenOn(0, '127.0.0.1');
      const wrong = spawnProxy([...args('udp', '127.0.0.1', 1), '-use-listen-fd'], { listenFd: fdOf(server) });
      expect(await wrong.status).toMatch(/^1\n-use-listen-fd: fd 4 is not a usable bound UDP socket/);
      expect((await wrong.exited).code).toBe(1);
      server.close();
      const v4 = createSocket('udp4');
      await new Promise<void>((res) => v4.bind(0, '127.0.0.1', () => res()));
      const family = spawnProxy([...args('udp', '::1', v4.address().port), '-use-listen-fd'], { listenFd: udpFd(v4) });
      expect(await family.status).toBe('1\n-use-listen-fd: fd 4 is an IPv4 socket but -host-ip ::1 is IPv6');
      expect((await family.exited).code).toBe(1);
      v4.close();
    });

    it('never touches fd 4 without the flag', async () => {
      const server = await listenOn(0, '127.0.0.1');
      const before = readlinkSync(`/proc/self/fd/${fdOf(server)}`);
      const port = await freePort();
      const p = await startProxy(args('tcp', '127.0.0.1', port), { listenFd: fdOf(server) });
      expect(readlinkSync(`/proc/${p.pid}/fd/4`)).toBe(before);
      expect(await tcpRoundTrip('127.0.0.1', port, Buffer.from('own socket'))).toEqual(Buffer.from('own socket'));
      await p.stop();
      server.close();
    });
  });

  describe('privileged ports', () => {
    it.skipIf(!IS_ROOT)('reports a port below 1024 without CAP_NET_BIND_SERVICE clearly, exit 1', async () => {
      // The proxy runs as nobody: say at once when nobody cannot even reach it (a clone under a
      // directory others cannot enter, such as one made by mktemp -d), instead of timing out.
      const cli = join(ROOT, 'dist/cli.js');
      const reach = spawnSync('/bin/sh', ['-c', 'test -x "$0" && test -r "$1"', BIN, cli], { uid: 65534, gid: 65534 });
      if (reach.status !== 0)
        throw new Error(`nobody (uid 65534) cannot reach ${BIN} or ${cli}: a parent directory is not searchable by others; clone under one that is`);
      const p = spawnProxy(args('tcp', '127.0.0.1', 1000), { uid: 65534, gid: 65534 });
      expect(await p.status).toBe(
        '1\nfailed to listen on 127.0.0.1:1000: listen tcp4 127.0.0.1:1000: bind: permission denied (ports below 1024 need root or CAP_NET_BIND_SERVICE)',
      );
      expect((await p.exited).code).toBe(1);
    });
  });
});
