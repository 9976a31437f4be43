/**
 * Messages between the supervisor (main thread) and a mapping's worker thread.
 */
import type { Mapping } from './publish-spec.js';
import type { StandaloneConfig } from './config.js';
import type { TcpStats } from '../data-path/tcp-types.js';
import type { UdpStats } from '../data-path/udp-forwarder.js';
import type { EngineName } from '../core/data-path-choice.js';
import type { SharedBudget } from '../core/fd-limit.js';

/** What a worker is started with (workerData): its mapping and the settings that apply to it. */
export type WorkerInit = Pick<
  StandaloneConfig,
  'udpIdleTimeoutMs' | 'udpMaxFlows' | 'connectTimeoutMs' | 'idleTimeoutMs' | 'lingerTimeoutMs' | 'maxConnections' | 'maxBuffer' | 'logLevel' | 'logFile'
> & {
  mapping: Mapping;
  /** The engine the supervisor resolved (never 'auto'). */
  engine: EngineName;
  /** The process fd budget, in shared memory (fd-limit.ts). */
  budget: SharedBudget;
  /** Test hook: a worker that crashes after this many ms (USERLAND_PROXY_TEST_CRASH). */
  crashAfterMs?: number | undefined;
};

/** Supervisor to worker. */
export type ToWorker = { type: 'stats'; id: number } | { type: 'drain'; timeoutMs: number };

/** Worker to supervisor. */
export type FromWorker =
  | { type: 'ready' }
  /** After a drain request: every listener is closed, the ports are free. */
  | { type: 'released' }
  | { type: 'failed'; message: string }
  | { type: 'stats'; id: number; tcp: TcpStats | null; udp: UdpStats | null };
