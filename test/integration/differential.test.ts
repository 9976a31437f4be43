/**
 * Differential suite: the same scenarios against each reference docker-proxy (Docker 28.5 from
 * Debian unstable, the primary one, and Debian 12's 20.10; .ci/setup fetches both) and against
 * ours. fd-3 bytes, exit codes and delivered bytes must agree with 28.5; where 20.10 differs we
 * follow 28.5, and where we deliberately differ from both, the test pins each behaviour
 * (docs/reference.md, "Differences from docker-proxy", lists every one).
 */
import { createSocket } from 'node:dgram';
import { createServer, type Server } from 'node:net';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { useBackend } from '../helpers/netns.js';
import { freePort, readToEnd, randomBytes, readToClose, sha256, sleep, tcpConnect, tcpRoundTrip, udpClient, udpRequest } from '../helpers/net.js';
import { serverFd, udpHandle } from '../../src/core/node-internals.js';
import { testEngine } from '../helpers/data-path.js';
import { MAJOR_RERUN } from '../helpers/proxy.js';
import { BIN, REF_PROXIES, haveReference, spawnProxy, startProxy, dockerArgv, type ProxyProc } from '../helpers/proxy.js';
import { killTracked } from '../helpers/processes.js';
import { DOCKER_MODES, useDockerMode } from '../helpers/shared-engines.js';

const ECHO = 7000;
const GREET = 7002;
const WHOAMI = 7003;
const CLOSED = 7009;
const REFS = (['28.5', '20.10'] as const).map((version) => ({ version, ref: REF_PROXIES[version], have: haveReference(version) }));
for (const r of REFS) if (!r.have) console.warn(`SKIPPED: differential vs docker-proxy ${r.version}: no binary at ${r.ref}; run .ci/setup as root`);
const backend = useBackend(['--echo', String(ECHO), '--greet', String(GREET), '--whoami', String(WHOAMI)]);
afterEach(async () => {
  await killTracked();
});

const argv = (proto: string, hostIp: string, port: number, target: string, targetPort: number) => dockerArgv(proto, hostIp, port, target, String(targetPort));

/** Runs a scenario against the reference, then ours, and returns [reference, ours]. */
async function versus<T>(ref: string, scenario: (bin: string) => Promise<T>): Promise<[T, T]> {
  const out: T[] = [];
  for (const bin of [ref, BIN]) {
    out.push(await scenario(bin));
    await killTracked();
  }
  return out as [T, T];
}

/** python3 -c PKTINFO_PARENT PORT BIN ARGS...: dockerd 28's part for a UDP port (IP_PKTINFO on fd 4). */
const PKTINFO_PARENT = `import os, socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.IPPROTO_IP, 8, 1)  # IP_PKTINFO
s.bind(("0.0.0.0", int(sys.argv[1])))
if s.fileno() != 4: os.dup2(s.fileno(), 4)
os.set_inheritable(4, True)  # (the socket may be fd 4 already: python opens it close-on-exec)
os.execv(sys.argv[2], sys.argv[2:])`;

const listening = (port: number, host: string): Promise<Server> =>
  new Promise((res, rej) => {
    const s = createServer();
    s.once('error', rej).listen({ port, host }, () => res(s));
  });
const boundUdp = (family: 4 | 6, host: string, port = 0): Promise<ReturnType<typeof createSocket>> =>
  new Promise((res, rej) => {
    const u = createSocket({ type: family === 4 ? 'udp4' : 'udp6', ipv6Only: family === 6 });
    u.once('error', rej).bind(port, host, () => res(u));
  });
/** The next datagram on `sock` within `ms`, or null. */
const nextDatagram = (sock: ReturnType<typeof createSocket>, ms: number): Promise<{ data: string; from: string } | null> =>
  new Promise((res) => {
    const t = setTimeout(() => {
      sock.off('message', on);
      res(null);
    }, ms);
    const on = (m: Buffer, r: { address: string }): void => {
      clearTimeout(t);
      res({ data: m.toString(), from: r.address });
    };
    sock.once('message', on);
  });

describe.each(DOCKER_MODES)('$mode', ({ shared }) => {
  useDockerMode(shared);

  describe.each(REFS.filter((r) => r.have))('differential: docker-proxy $version vs userland-proxy', ({ version, ref: refBin }) => {
    const both = <T>(scenario: (bin: string) => Promise<T>): Promise<[T, T]> => versus(refBin, scenario);
    const V28 = version !== '20.10';

    it('agrees on readiness bytes, TCP bytes (IPv4 and IPv6 fronts), half-close and SIGINT exit', async () => {
      const [ref, ours] = await both(async (bin) => {
        const obs: Record<string, unknown> = {};
        for (const [front, target] of [
          ['127.0.0.1', backend.ipv4],
          ['::1', backend.ipv4],
          ['::1', backend.ipv6],
        ] as const) {
          const port = await freePort(front);
          const p = spawnProxy(argv('tcp', front, port, target, ECHO), { bin });
          obs[`status ${front}`] = await p.status;
          const data = randomBytes(256 << 10);
          obs[`echo ${front}->${target}`] = sha256(await tcpRoundTrip(front, port, data)) === sha256(data);
          const s = await tcpConnect(front, port);
          const done = readToClose(s);
          s.write('half ');
          await sleep(20);
          s.end('closed');
          obs[`half-close ${front}`] = (await done).data.toString();
          obs[`exit ${front}`] = await p.stop('SIGINT');
        }
        return obs;
      });
      expect(ours).toEqual(ref);
      expect(ref['status 127.0.0.1']).toBe('0\n');
      expect(ref['half-close ::1']).toBe('half closed');
    });

    it('agrees when the target closes first (its FIN reaches the client, client bytes still reach it)', async () => {
      const [ref, ours] = await both(async (bin) => {
        const port = await freePort();
        await startProxy(argv('tcp', '127.0.0.1', port, backend.ipv4, GREET), { bin });
        const s = await tcpConnect('127.0.0.1', port);
        const greeting = await readToEnd(s);
        const payload = randomBytes(100_000);
        s.end(payload);
        await backend.command('', `greet-done ${payload.length} ${sha256(payload)}`);
        return greeting;
      });
      expect(ours).toBe(ref);
    });

    it('agrees on a refused target: accepted, then closed with no bytes', async () => {
      const [ref, ours] = await both(async (bin) => {
        const port = await freePort();
        await startProxy(argv('tcp', '127.0.0.1', port, backend.ipv4, CLOSED), { bin });
        const { data, error } = await readToClose(await tcpConnect('127.0.0.1', port));
        return { bytes: data.length, error };
      });
      expect(ours).toEqual(ref);
    });

    it('agrees on "port in use" bytes on fd 3 and exit 1 (TCP over IPv4, UDP over IPv6)', async () => {
      const port = await freePort('::1');
      const blocker = createServer().listen({ port, host: '127.0.0.1' });
      const u = createSocket({ type: 'udp6', ipv6Only: true });
      await new Promise<void>((res) => u.bind(port, '::1', () => res()));
      const [ref, ours] = await both(async (bin) => {
        const t = spawnProxy(argv('tcp', '127.0.0.1', port, backend.ipv4, ECHO), { bin });
        const d = spawnProxy(argv('udp', '::1', port, backend.ipv4, ECHO), { bin });
        return { tcp: [await t.status, (await t.exited).code], udp: [await d.status, (await d.exited).code] };
      });
      blocker.close();
      u.close();
      // 28 names the address it failed on first (20.10: only Go's error, which follows it).
      const bind = `listen tcp4 127.0.0.1:${port}: bind: address already in use`;
      expect(ref.tcp).toEqual([V28 ? `1\nfailed to listen on 127.0.0.1:${port}: ${bind}` : `1\n${bind}`, 1]);
      if (V28) expect(ours).toEqual(ref);
      else
        expect(ours).toEqual({
          tcp: [`1\nfailed to listen on 127.0.0.1:${port}: ${bind}`, 1],
          udp: [String(ref.udp[0]).replace('1\n', `1\nfailed to listen on [::1]:${port}: `), 1],
        });
    });

    it('agrees on UDP: echo, a flow per client, replies from the host port, SIGTERM exit 0', async () => {
      const [ref, ours] = await both(async (bin) => {
        const port = await freePort();
        const p = await startProxy(argv('udp', '127.0.0.1', port, backend.ipv4, WHOAMI), { bin });
        const echoPort = await freePort();
        await startProxy(argv('udp', '127.0.0.1', echoPort, backend.ipv4, ECHO), { bin });
        const a = udpClient(4);
        const b = udpClient(4);
        const from = new Promise<number>((res) => a.once('message', (_m, r) => res(r.port)));
        const fa = (await udpRequest(a, '127.0.0.1', port, 'who')).toString();
        const fb = (await udpRequest(b, '127.0.0.1', port, 'who')).toString();
        const fa2 = (await udpRequest(a, '127.0.0.1', port, 'who')).toString();
        const big = randomBytes(60_000);
        const obs = { replyFromHostPort: (await from) === port, separateFlows: fa !== fb, stableFlow: fa === fa2, bigOk: false, exit: {} };
        a.close();
        b.close();
        const c = udpClient(4);
        obs.bigOk = sha256(await udpRequest(c, '127.0.0.1', echoPort, big)) === sha256(big);
        c.close();
        obs.exit = await p.stop('SIGTERM');
        return obs;
      });
      expect(ours).toEqual(ref);
      expect(ref).toMatchObject({ replyFromHostPort: true, separateFlows: true, stableFlow: true, bigOk: true, exit: { code: 0, signal: null } });
    });

    it('agrees on exit codes for flag errors and SCTP', async () => {
      const [ref, ours] = await both(async (bin) => {
        const codes: Record<string, number | null> = {};
        for (const [name, args] of [
          ['unknown flag', ['-bogus']],
          ['octal-looking port', ['-host-port', '080']],
          ['missing value', ['-host-port']],
          ['sctp', argv('sctp', '127.0.0.1', 9, '127.0.0.1', 9)],
        ] as const) {
          codes[name] = (await spawnProxy(args, { bin }).exited).code;
        }
        return codes;
      });
      expect(ours).toEqual(ref);
      expect(ref).toEqual({ 'unknown flag': 2, 'octal-looking port': 2, 'missing value': 2, sctp: 1 });
    });

    it('-v and -version, an address that is not one, and SIGHUP (28 changed the first two; documented improvements beside)', async () => {
      const [ref, ours] = await both(async (bin) => {
        const flag = spawnProxy(['-bogus'], { bin });
        const v = spawnProxy(['-v'], { bin });
        const version = spawnProxy(['-version'], { bin });
        const badIp = spawnProxy(argv('tcp', '300.1.1.1', await freePort('::'), backend.ipv4, ECHO), { bin });
        const badIpStatus = await badIp.status;
        // (20.10 serves on: it is stopped, and its exit is not the point.)
        const badIpExit = badIpStatus === '0\n' ? await badIp.stop().then(() => 'serving') : (await badIp.exited).code;
        const hup = await startProxy(argv('tcp', '127.0.0.1', await freePort(), backend.ipv4, ECHO), { bin });
        hup.child.kill('SIGHUP');
        await sleep(200);
        const hupAlive = hup.child.exitCode === null && hup.child.signalCode === null;
        const [vExit, versionExit] = [(await v.exited).code, (await version.exited).code];
        return {
          flagFd3: await flag.status,
          vExit,
          versionExit,
          versionPrinted: / version \d/.test(version.stdout()),
          badIpStatus,
          badIpExit,
          hupAlive,
        };
      });
      // docker-proxy: dockerd sees an empty error for a flag error; SIGHUP kills it (and the port
      // goes dead). 20.10 has no -v and listens on [::] for an address it cannot parse; 28 prints
      // its version and refuses such an address as a flag error (exit 2, nothing on fd 3).
      expect(ref).toEqual(
        V28
          ? { flagFd3: '', vExit: 0, versionExit: 0, versionPrinted: true, badIpStatus: '', badIpExit: 2, hupAlive: false }
          : { flagFd3: '', vExit: 2, versionExit: 2, versionPrinted: false, badIpStatus: '0\n', badIpExit: 'serving', hupAlive: false },
      );
      expect(ours).toEqual({
        flagFd3: '1\nflag provided but not defined: -bogus',
        vExit: 0,
        versionExit: 0,
        versionPrinted: true,
        badIpStatus: '1\ninvalid value "300.1.1.1" for flag -host-ip: invalid IP address: 300.1.1.1',
        badIpExit: 2,
        hupAlive: true,
      });
    });

    it.each([
      ['its own socket', false],
      ['fd 4 bound with IP_PKTINFO on, as dockerd 28 passes it', true],
    ] as const)('UDP on 0.0.0.0 (%s): our native engine replies from the address the client sent to', async (_what, fd4) => {
      if (fd4 && !V28) return; // 20.10 has no -use-listen-fd
      const [ref, ours] = await both(async (bin) => {
        const port = await freePort();
        const args = argv('udp', '0.0.0.0', port, backend.ipv4, ECHO);
        await startProxy(
          // dockerd's part, played by python: bind, IP_PKTINFO on, the socket on fd 4, exec the proxy.
          fd4 ? ['-c', PKTINFO_PARENT, String(port), bin, ...args, '-use-listen-fd'] : args,
          fd4 ? { bin: 'python3' } : { bin },
        );
        const c = await boundUdp(4, '127.0.0.1');
        const out: Record<string, string | null> = {};
        for (const to of ['127.0.0.1', '127.0.0.2']) {
          const reply = nextDatagram(c, 2000);
          c.send(`to ${to}`, port, to);
          const r = await reply;
          out[to] = r && `${r.data} from ${r.from}`;
        }
        c.close();
        return out;
      });
      // The kernel picks 127.0.0.1 for a reply to 127.0.0.2 unless the proxy sets the source. 28's
      // changelog says it does (from IP_PKTINFO), but 28.5.2 measured here does not, on its own
      // socket nor on fd 4 with IP_PKTINFO on: a client on a connected socket drops such a reply.
      // Our native engine replies from the address the client sent to, on either; the JavaScript
      // engine cannot (Node's dgram has no IP_PKTINFO: a documented limit).
      const picked = (fromDst: boolean): Record<string, string> => ({
        '127.0.0.1': 'to 127.0.0.1 from 127.0.0.1',
        '127.0.0.2': `to 127.0.0.2 from ${fromDst ? '127.0.0.2' : '127.0.0.1'}`,
      });
      expect(ref).toEqual(picked(false));
      expect(ours).toEqual(picked(testEngine() === 'native'));
    });

    it('UDP after the container refused a datagram (ICMP port unreachable): the next ones are delivered (20.10 lost them)', async () => {
      const [ref, ours] = await both(async (bin) => {
        const port = await freePort();
        const target = await freePort();
        await startProxy(argv('udp', '127.0.0.1', port, '127.0.0.1', target), { bin });
        const c = await boundUdp(4, '127.0.0.1');
        c.send('refused', port, '127.0.0.1'); // nothing listens yet: the flow's socket gets ECONNREFUSED
        await sleep(300);
        const server = await boundUdp(4, '127.0.0.1', target);
        server.on('message', (m, r) => server.send(m, r.port, r.address));
        const got: (string | null)[] = [];
        for (const d of ['second', 'third']) {
          const reply = nextDatagram(c, 1000);
          c.send(d, port, '127.0.0.1');
          got.push((await reply)?.data ?? null);
        }
        c.close();
        server.close();
        return got;
      });
      // 28 reads on past the refusal. 20.10's reply loop stops on it: whether the next datagrams
      // are lost with the flow depends on timing (seen both ways here), so it is not compared.
      if (V28) expect(ref).toEqual(['second', 'third']);
      expect(ours).toEqual(['second', 'third']);
    });

    // (20.10 has no -use-listen-fd: the case is not made for it.)
    (V28 ? it : () => {})('-use-listen-fd: fd 4 of each kind, and missing', async () => {
      const [ref, ours] = await both(async (bin) => {
        const out: Record<string, unknown> = {};
        // A listening TCP socket: adopted, serves.
        const server = await listening(0, '127.0.0.1');
        const tport = (server.address() as { port: number }).port;
        const t = spawnProxy([...argv('tcp', '127.0.0.1', tport, backend.ipv4, ECHO), '-use-listen-fd'], { bin, listenFd: serverFd(server) });
        out.tcp = await t.status;
        server.close();
        out.tcpServes = (await tcpRoundTrip('127.0.0.1', tport, Buffer.from('fd4'))).toString();
        // A bound UDP socket (IPv6): adopted, serves.
        const u = await boundUdp(6, '::1');
        const uport = u.address().port;
        const d = spawnProxy([...argv('udp', '::1', uport, backend.ipv4, ECHO), '-use-listen-fd'], { bin, listenFd: udpHandle(u).fd });
        out.udp = await d.status;
        u.close();
        const c = udpClient(6);
        out.udpServes = (await udpRequest(c, '::1', uport, 'fd4 udp')).toString();
        c.close();
        // Missing, and of the wrong kind: a startup failure, exit 1, whatever the words.
        const missing = spawnProxy([...argv('tcp', '127.0.0.1', 1, backend.ipv4, ECHO), '-use-listen-fd'], { bin });
        out.missing = [(await missing.status).slice(0, 2), (await missing.exited).code];
        const other = await listening(0, '127.0.0.1');
        const wrong = spawnProxy([...argv('udp', '127.0.0.1', 1, backend.ipv4, ECHO), '-use-listen-fd'], { bin, listenFd: serverFd(other) });
        out.tcpForUdp = [(await wrong.status).slice(0, 2), (await wrong.exited).code];
        other.close();
        return out;
      });
      expect(ours).toEqual(ref);
      expect(ref).toMatchObject({ tcp: '0\n', tcpServes: 'fd4', udp: '0\n', udpServes: 'fd4 udp', missing: ['1\n', 1], tcpForUdp: ['1\n', 1] });
    });
  });
});

/**
 * docker-proxy 28.0.2+ keeps a UDP flow the container never answers alive while the client sends
 * (≤28.0.1 and 20.10 dropped it 90 s after creation, and the container saw a new source port).
 * Its timeout is 90 s and fixed: the reference runs once (js project), about 100 s, started with
 * this file so that the cases above run meanwhile; ours runs with a 2 s idle timeout, the same
 * schedule scaled, in both process models.
 */
/** The source ports a container that never answers saw, over 1.1 timeouts of client datagrams. */
async function oneSided(bin: string, timeoutMs: number, opts: { env?: Record<string, string>; keep?: boolean } = {}): Promise<number> {
  const port = await freePort();
  const sink = await boundUdp(4, '127.0.0.1');
  const ports = new Set<number>();
  sink.on('message', (_m, r) => ports.add(r.port));
  const c = await boundUdp(4, '127.0.0.1');
  let proxy: ProxyProc | null = null;
  try {
    proxy = await startProxy(argv('udp', '127.0.0.1', port, '127.0.0.1', sink.address().port), { bin, ...opts });
    let prev = 0;
    for (const at of [0, 0.4, 0.8, 1.1]) {
      await sleep(timeoutMs * (at - prev));
      prev = at;
      c.send('no answer expected', port, '127.0.0.1');
    }
    await sleep(200);
  } finally {
    await proxy?.stop('SIGKILL');
    c.close();
    sink.close();
  }
  return ports.size;
}
const ref28 = REFS.find((r) => r.version === '28.5');
// (Once per CI run: the reference does not depend on the engine or the Node line.)
const REF_ONE_SIDED = ref28?.have && testEngine() === 'js' && !MAJOR_RERUN;
let refOneSided: Promise<number> = Promise.resolve(0);
beforeAll(() => {
  // Not awaited: the 100 s run goes on beside the cases above; a failure is the case's.
  if (REF_ONE_SIDED) refOneSided = oneSided(ref28?.ref as string, 90_000, { keep: true });
  refOneSided.catch(() => {});
});
afterAll(async () => {
  await refOneSided.catch(() => 0);
}, 150_000);

describe('UDP one-sided flows (docker-proxy 28.0.2+)', () => {
  (REF_ONE_SIDED ? it : () => {})(
    'docker-proxy 28.5: the container sees one source port across its 90 s timeout',
    async () => {
      expect(await refOneSided).toBe(1);
    },
    150_000,
  );
  it.each(DOCKER_MODES)(
    'userland-proxy ($mode): one source port across its idle timeout too',
    async ({ shared }) => {
      expect(await oneSided(BIN, 2000, { env: { USERLAND_PROXY_SHARED: shared, USERLAND_PROXY_UDP_IDLE_TIMEOUT: '2s' } })).toBe(1);
    },
    20_000,
  );
});
