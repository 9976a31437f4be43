/**
 * A mapping as metrics, health checks and `ls` see it, whichever process serves it: a standalone
 * worker (supervisor.ts), a per-port proxy or the shared engine (docker-mapping.ts). Its counters
 * are the data path's own plain numbers, read at scrape time.
 */
import type { IpAddress, Proto } from '../core/address.js';
import type { TcpStats } from '../data-path/tcp-types.js';
import type { UdpStats } from '../data-path/udp-forwarder.js';

/** What identifies a mapping in metrics: its id (the label) and where it listens. */
export interface MappingView {
  /** `tcp/127.0.0.1:8080-8090`. */
  id: string;
  proto: Proto;
  host: IpAddress;
  hostPort: number;
}

/** Live state of one mapping. */
export interface MappingState {
  mapping: MappingView;
  up: boolean;
  restarts: number;
  tcp: TcpStats | null;
  udp: UdpStats | null;
  /** Shared engine: when the mapping began draining (its dockerd died, or it moved to a new engine). */
  drainingSince?: number;
}

/** What the HTTP endpoint asks of the process it reports on. */
export interface MetricsSource {
  /** Fresh counters before a scrape (standalone: from each worker). */
  refreshStats(): Promise<void>;
  /** Ids of configured mappings that are not serving (/readyz). */
  readonly down: string[];
}
