/**
 * The data path under test, and forwarders of it in this process (no CLI, no process model): the
 * suites that test one forwarder's behaviour on real sockets open it here. vitest.config.ts runs
 * the suites once per data path and sets USERLAND_PROXY_ENGINE for each project; spawned proxies
 * read the same variable.
 */
import { afterAll } from 'vitest';
import type { IpAddress } from '../../src/core/address.js';
import { silentLog } from '../../src/core/logger.js';
import { bindUdp, listenTcp } from '../../src/data-path/listen.js';
import { createTcpServer, TcpForwarder } from '../../src/data-path/tcp-forwarder.js';
import type { TcpForwarderOptions } from '../../src/data-path/tcp-types.js';
import { createUdpSocket, UdpForwarder, type UdpForwarderOptions } from '../../src/data-path/udp-forwarder.js';

/** The data path under test ('js' unless the project says native). */
export function testEngine(): 'js' | 'native' {
  return process.env.USERLAND_PROXY_ENGINE === 'native' ? 'native' : 'js';
}

/** `host` as an address (family from its spelling). */
const ipOf = (host: string): IpAddress => ({ address: host, family: host.includes(':') ? 6 : 4 });

const open = new Set<TcpForwarder | UdpForwarder>();
// Whatever a test left open is closed with its file, also after a failure.
afterAll(() => closeForwarders());

/** Closes every forwarder opened here so far. */
export function closeForwarders(): void {
  for (const f of open) f.close();
  open.clear();
}

/** What a test gives: the target port, and any option to change (target 127.0.0.1 by default). */
type Given<T> = Partial<Omit<T, 'target' | 'targetPort'>> & { targetPort: number; target?: IpAddress | string };

/**
 * A TCP forwarder on `host` (an ephemeral port: `.port`) to 127.0.0.1 or `opts.target`, on the
 * data path under test, silent unless `opts.log` is given; closed with the test file.
 */
export async function startTcpForwarder(opts: Given<TcpForwarderOptions>, host = '127.0.0.1'): Promise<TcpForwarder> {
  const server = createTcpServer();
  const { target = '127.0.0.1', ...rest } = opts;
  const f = new TcpForwarder(server, { log: silentLog, engine: testEngine(), ...rest, target: typeof target === 'string' ? ipOf(target) : target });
  open.add(f);
  await listenTcp(server, { host: ipOf(host), port: 0, listenFd: null });
  return f;
}

/**
 * A UDP forwarder on `host` (an ephemeral port: `.port`) to 127.0.0.1 or `opts.target`, on the data
 * path under test, with 90 s flows and at most 10 of them unless given; closed with the test file.
 */
export async function startUdpForwarder(opts: Given<UdpForwarderOptions>, host = '127.0.0.1'): Promise<{ f: UdpForwarder; port: number }> {
  const listener = createUdpSocket(ipOf(host).family);
  const { target = '127.0.0.1', ...rest } = opts;
  const f = new UdpForwarder(listener, {
    log: silentLog,
    engine: testEngine(),
    udpIdleTimeoutMs: 90_000,
    udpMaxFlows: 10,
    ...rest,
    target: typeof target === 'string' ? ipOf(target) : target,
  });
  open.add(f);
  await bindUdp(listener, { host: ipOf(host), port: 0, listenFd: null });
  return { f, port: listener.address().port };
}
