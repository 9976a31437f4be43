/**
 * Differential suite: the same scenarios against the reference docker-proxy (Debian's Docker
 * 20.10 package, fetched by .ci/setup) and against ours. fd-3 bytes, exit codes and delivered
 * bytes must agree; where we deliberately differ, the test pins both behaviours (README: "Known
 * differences from docker-proxy").
 */
import { createSocket } from 'node:dgram';
import { createServer } from 'node:net';
import { afterEach, describe, expect, it } from 'vitest';
import { useBackend } from '../helpers/netns.js';
import { freePort, readToEnd, randomBytes, readToClose, sha256, sleep, tcpConnect, tcpRoundTrip, udpClient, udpRequest } from '../helpers/net.js';
import { BIN, REF_PROXY, haveReference, spawnProxy, startProxy, dockerArgv } from '../helpers/proxy.js';
import { killTracked } from '../helpers/processes.js';
import { DOCKER_MODES, useDockerMode } from '../helpers/engines.js';

const ECHO = 7000;
const GREET = 7002;
const WHOAMI = 7003;
const CLOSED = 7009;
const HAVE_REF = haveReference();
const contenders = [
  ['docker-proxy', REF_PROXY],
  ['userland-proxy', BIN],
] as const;

if (!HAVE_REF) console.warn(`SKIPPED: no reference docker-proxy at ${REF_PROXY}; run .ci/setup as root`);
const backend = useBackend(['--echo', String(ECHO), '--greet', String(GREET), '--whoami', String(WHOAMI)]);
afterEach(async () => {
  await killTracked();
});

const argv = (proto: string, hostIp: string, port: number, target: string, targetPort: number) => dockerArgv(proto, hostIp, port, target, String(targetPort));

/** Runs a scenario against both proxies and returns [reference, ours]. */
async function both<T>(scenario: (bin: string) => Promise<T>): Promise<[T, T]> {
  const out: T[] = [];
  for (const [, bin] of contenders) {
    out.push(await scenario(bin));
    await killTracked();
  }
  return out as [T, T];
}

describe.each(DOCKER_MODES)('$mode', ({ shared }) => {
  useDockerMode(shared);

  describe.skipIf(!HAVE_REF)('differential: docker-proxy 20.10 vs userland-proxy', () => {
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
      expect(ours).toEqual(ref);
      expect(ref.tcp).toEqual([`1\nlisten tcp4 127.0.0.1:${port}: bind: address already in use`, 1]);
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

    it('documented improvements: flag errors on fd 3, -v, invalid -host-ip, SIGHUP', async () => {
      const [ref, ours] = await both(async (bin) => {
        const flag = spawnProxy(['-bogus'], { bin });
        const v = spawnProxy(['-v'], { bin });
        const badIp = spawnProxy(argv('tcp', '300.1.1.1', await freePort('::'), backend.ipv4, ECHO), { bin });
        const badIpStatus = await badIp.status;
        await badIp.stop();
        const hup = await startProxy(argv('tcp', '127.0.0.1', await freePort(), backend.ipv4, ECHO), { bin });
        hup.child.kill('SIGHUP');
        await sleep(200);
        const hupAlive = hup.child.exitCode === null && hup.child.signalCode === null;
        return { flagFd3: await flag.status, vExit: (await v.exited).code, badIpStatus, hupAlive };
      });
      // docker-proxy: dockerd sees an empty error; 20.10 has no -v; "300.1.1.1" silently listens on
      // [::]; SIGHUP kills it (and the port goes dead).
      expect(ref).toEqual({ flagFd3: '', vExit: 2, badIpStatus: '0\n', hupAlive: false });
      expect(ours).toEqual({
        flagFd3: '1\nflag provided but not defined: -bogus',
        vExit: 0,
        badIpStatus: '1\ninvalid -host-ip "300.1.1.1": not an IPv4 or IPv6 address',
        hupAlive: true,
      });
    });
  });
});
