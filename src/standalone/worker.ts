/**
 * A mapping's worker thread: opens every host port of the mapping through the one forward path
 * (forward.ts, as docker mode does), answers stats requests, and drains on request. Signals never
 * reach workers; the supervisor tells us what to do.
 */
import { parentPort, workerData } from 'node:worker_threads';
import { compileAccess } from '../core/access-list.js';
import { WORKER_FDS } from '../core/constants.js';
import { FdBudget } from '../core/fd-limit.js';
import { openMapping, type OpenMapping } from '../data-path/forward.js';
import { createLogger } from '../core/logger.js';
import type { FromWorker, ToWorker, WorkerInit } from './messages.js';

const init = workerData as WorkerInit;
const port = parentPort;
if (!port) throw new Error('worker.ts must run as a worker thread');
const send = (m: FromWorker): void => port.postMessage(m);

const { mapping } = init;
const log = await createLogger({ level: init.logLevel, file: init.logFile, base: { mapping: mapping.id }, humanOnTty: true });
// fds come out of the budget of the whole process, shared with every other worker. What this
// worker takes is also counted in its own cell: the supervisor gives it back when we exit.
const budget = new FdBudget(init.budget);
let open: OpenMapping | null = null;

port.on('message', (m: ToWorker) => {
  if (m.type === 'stats') send({ type: 'stats', id: m.id, tcp: open?.tcp ?? null, udp: open?.udp ?? null });
  else if (m.type === 'drain') void drain(m.timeoutMs);
});

/**
 * Stops accepting (the ports are free once 'released' is sent), waits for open TCP connections
 * (at most timeoutMs), then closes everything.
 */
async function drain(timeoutMs: number): Promise<void> {
  open?.stopAccepting();
  send({ type: 'released' });
  const deadline = Date.now() + timeoutMs;
  const busy = (): boolean => (open?.tcp?.active ?? 0) > 0;
  while (busy() && Date.now() < deadline) await new Promise((r) => setTimeout(r, 50));
  if (busy()) log.warn({ active: open?.tcp?.active }, 'drain timeout: closing the connections left');
  open?.close();
  log.info({}, 'mapping stopped');
  log.flush();
  port?.close();
  process.exit(0);
}

try {
  const count = mapping.hostPortEnd - mapping.hostPort + 1;
  // The worker's own fds (its event loop, its native engine); openMapping takes its listeners'.
  if (!budget.take(WORKER_FDS)) {
    throw new Error(`file descriptor budget spent: ${budget.used} of ${budget.limit} taken, a worker needs ${WORKER_FDS} (raise RLIMIT_NOFILE)`);
  }
  open = await openMapping({
    ...mapping,
    listenFd: null,
    access: compileAccess(mapping.access),
    settings: init,
    log,
    budget,
  });
  // Logged before ready is reported: whoever sees the supervisor's "ready:" has this line too.
  log.info({ ports: count, target: `${mapping.target.address}:${mapping.targetPort}`, engine: init.engine }, 'mapping ready');
  send({ type: 'ready' });
  if (init.crashAfterMs !== undefined)
    setTimeout(() => {
      throw new Error('injected crash (test hook)');
    }, init.crashAfterMs);
} catch (err) {
  send({ type: 'failed', message: (err as Error).message });
  port.close();
}
