/**
 * A mapping's worker thread: opens every host port of the mapping (a range is one mapping),
 * forwards with the same forwarders as docker mode, answers stats requests, and drains on request.
 * Signals never reach workers; the supervisor tells us what to do.
 */
import { parentPort, workerData } from 'node:worker_threads';
import { compileAccess } from './access-list.js';
import { bindUdp, listenTcp } from './listen.js';
import { createLogger } from './logger.js';
import type { FromWorker, ToWorker, WorkerInit } from './messages.js';
import { FdBudget } from './fd-limit.js';
import { WORKER_FDS } from './constants.js';
import { createTcpServer, newTcpStats, TcpForwarder } from './tcp-forwarder.js';
import { createUdpSocket, newUdpStats, UdpForwarder } from './udp-forwarder.js';

const init = workerData as WorkerInit;
const port = parentPort;
if (!port) throw new Error('worker.ts must run as a worker thread');
const send = (m: FromWorker): void => port.postMessage(m);

const { mapping } = init;
const log = await createLogger({ level: init.logLevel, file: init.logFile, base: { mapping: mapping.id } });
const tcpStats = mapping.proto === 'tcp' ? newTcpStats() : null;
const udpStats = mapping.proto === 'udp' ? newUdpStats() : null;
const forwarders: (TcpForwarder | UdpForwarder)[] = [];
// Caps apply to the whole mapping (its listeners share one stats object and one per-source
// table); fds come out of the budget of the whole process, shared with every other worker. What
// this worker takes is also counted in its own cell: the supervisor gives it back when we exit.
const budget = new FdBudget(init.budget);
const sources = new Map<string, number>();
const access = compileAccess(mapping.access);

port.on('message', (m: ToWorker) => {
  if (m.type === 'stats') send({ type: 'stats', id: m.id, tcp: tcpStats, udp: udpStats });
  else if (m.type === 'drain') void drain(m.timeoutMs);
});

/**
 * Stops accepting (the ports are free once 'released' is sent), waits for open TCP connections
 * (at most timeoutMs), then closes everything.
 */
async function drain(timeoutMs: number): Promise<void> {
  for (const f of forwarders) f.stopAccepting();
  // UDP has nothing in flight to finish (a flow is only an address pair): it closes now, which
  // frees its ports for a mapping that takes them over.
  if (udpStats) for (const f of forwarders) f.close();
  send({ type: 'released' });
  const deadline = Date.now() + timeoutMs;
  const busy = (): boolean => (tcpStats?.active ?? 0) > 0;
  while (busy() && Date.now() < deadline) await new Promise((r) => setTimeout(r, 50));
  if (busy()) log.warn({ active: tcpStats?.active }, 'drain timeout: closing the connections left');
  for (const f of forwarders) f.close();
  log.info({}, 'mapping stopped');
  log.flush();
  port?.close();
  process.exit(0);
}

try {
  const count = mapping.hostPortEnd - mapping.hostPort + 1;
  if (!budget.take(WORKER_FDS + count)) {
    throw new Error(`file descriptor budget spent: ${budget.used} of ${budget.limit} taken, this mapping needs ${WORKER_FDS + count} (raise RLIMIT_NOFILE)`);
  }
  const opened: Promise<void>[] = [];
  for (let i = 0; i < count; i++) {
    const listen = { host: mapping.host, port: mapping.hostPort + i, useListenFd: false };
    const target = { target: mapping.target, targetPort: mapping.targetPort + i, log, access };
    if (mapping.proto === 'tcp') {
      const server = createTcpServer();
      forwarders.push(new TcpForwarder(server, {
        ...target, stats: tcpStats as NonNullable<typeof tcpStats>,
        maxConnections: init.maxConnections, budget,
        proxyProtocol: mapping.proxyProtocol,
        maxBufferBytes: init.maxBufferBytes,
        connectTimeoutMs: init.connectTimeoutMs, idleTimeoutMs: init.idleTimeoutMs, lingerTimeoutMs: init.lingerTimeoutMs,
        engine: init.engine,
      }));
      opened.push(listenTcp(server, listen));
    } else {
      const socket = createUdpSocket(mapping.host.family);
      forwarders.push(new UdpForwarder(socket, {
        ...target, stats: udpStats as NonNullable<typeof udpStats>, idleTimeoutMs: init.udpIdleTimeoutMs,
        maxFlows: init.udpMaxFlows, engine: init.engine, budget, sources,
      }));
      opened.push(bindUdp(socket, listen));
    }
  }
  const results = await Promise.allSettled(opened);
  const failure = results.find((r) => r.status === 'rejected');
  if (failure) throw (failure as PromiseRejectedResult).reason;
  send({ type: 'ready' });
  log.info({ ports: count, target: `${mapping.target.address}:${mapping.targetPort}`, engine: init.engine }, 'mapping ready');
  if (init.crashAfterMs !== undefined) setTimeout(() => { throw new Error('injected crash (test hook)'); }, init.crashAfterMs);
} catch (err) {
  for (const f of forwarders) f.close();
  send({ type: 'failed', message: (err as Error).message });
  port.close();
}
