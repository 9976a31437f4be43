/**
 * Prometheus metrics. The data path only bumps plain numbers (TcpStats, UdpStats); at scrape
 * time these families turn the latest per-mapping snapshots into samples, and prom-client's
 * Registry formats them (plus default process metrics on the main thread). Counters are exact:
 * they are the forwarders' own totals, not samples.
 *
 * Naming follows Prometheus practice: prefix userland_proxy_, base units, _total on counters,
 * labels bounded by the configuration (mapping = `tcp/127.0.0.1:8080-8090`, never client
 * addresses). Direction "in" is client to target, "out" is target to client.
 */
import { Registry, collectDefaultMetrics } from 'prom-client';
import type { PlainHistogram } from '../core/histogram.js';
import type { MappingState } from './mapping-state.js';
import { packageVersion } from '../core/version.js';

/** Metric name prefix. */
export const PREFIX = 'userland_proxy_';

type Labels = Record<string, string>;
interface Sample {
  labels: Labels;
  value: number;
  metricName?: string;
}
interface Family {
  name: string;
  help: string;
  type: 'counter' | 'gauge' | 'histogram';
  samples(states: readonly MappingState[]): Sample[];
}

function histogramSamples(name: string, labels: Labels, h: PlainHistogram): Sample[] {
  const out: Sample[] = [];
  let cumulative = 0;
  h.buckets.forEach((le, i) => {
    cumulative += h.counts[i] as number;
    out.push({ metricName: `${name}_bucket`, labels: { ...labels, le: String(le) }, value: cumulative });
  });
  out.push({ metricName: `${name}_bucket`, labels: { ...labels, le: '+Inf' }, value: h.count });
  out.push({ metricName: `${name}_sum`, labels, value: h.sum });
  out.push({ metricName: `${name}_count`, labels, value: h.count });
  return out;
}

const tcp = (f: (s: NonNullable<MappingState['tcp']>, m: Labels) => Sample[]) => (states: readonly MappingState[]) =>
  states.flatMap((st) => (st.tcp ? f(st.tcp, { mapping: st.mapping.id }) : []));
const udp = (f: (s: NonNullable<MappingState['udp']>, m: Labels) => Sample[]) => (states: readonly MappingState[]) =>
  states.flatMap((st) => (st.udp ? f(st.udp, { mapping: st.mapping.id }) : []));

/** Every family we export, with its meaning (the README's metrics table mirrors this list). */
export const FAMILIES: readonly Family[] = [
  {
    name: 'connections_accepted_total',
    type: 'counter',
    help: 'TCP connections accepted from clients.',
    samples: tcp((s, m) => [{ labels: m, value: s.accepted }]),
  },
  { name: 'connections_active', type: 'gauge', help: 'TCP connections currently open.', samples: tcp((s, m) => [{ labels: m, value: s.active }]) },
  {
    name: 'connections_rejected_total',
    type: 'counter',
    help: 'TCP connections refused at once, by reason (limit: the connection cap; blocked: the access lists).',
    samples: tcp((s, m) => [
      { labels: { ...m, reason: 'limit' }, value: s.rejectedLimit },
      { labels: { ...m, reason: 'blocked' }, value: s.rejectedBlocked },
    ]),
  },
  {
    name: 'accept_errors_total',
    type: 'counter',
    help: 'accept() failures on a listener (it keeps serving).',
    samples: tcp((s, m) => [{ labels: m, value: s.acceptErrors }]),
  },
  {
    name: 'upstream_connect_errors_total',
    type: 'counter',
    help: 'Failed connections to the target, by reason.',
    samples: tcp((s, m) => [
      ...(['refused', 'timeout', 'unreachable', 'other'] as const).map((reason) => ({ labels: { ...m, reason }, value: s.connectErrors[reason] })),
      // EADDRNOTAVAIL: every local port toward the target is held (TIME_WAIT; docs/forwarding.md).
      { labels: { ...m, reason: 'no_local_port' }, value: s.connectErrors.noLocalPort },
    ]),
  },
  {
    name: 'upstream_time_wait_ended_total',
    type: 'counter',
    help: 'Clean closes whose TIME_WAIT toward the target the proxy removed (it sent its FIN first; docs/forwarding.md).',
    samples: tcp((s, m) => [{ labels: m, value: s.timeWaitEnded }]),
  },
  {
    name: 'upstream_connect_duration_seconds',
    type: 'histogram',
    help: 'Time to connect to the target.',
    samples: tcp((s, m) => histogramSamples(`${PREFIX}upstream_connect_duration_seconds`, m, s.connectDuration)),
  },
  {
    name: 'connection_duration_seconds',
    type: 'histogram',
    help: 'Lifetime of forwarded TCP connections.',
    samples: tcp((s, m) => histogramSamples(`${PREFIX}connection_duration_seconds`, m, s.connectionDuration)),
  },
  {
    name: 'connections_aborted_total',
    type: 'counter',
    help: 'TCP connections ended by a reset or error instead of a clean close.',
    samples: tcp((s, m) => [{ labels: m, value: s.aborted }]),
  },
  {
    name: 'bytes_total',
    type: 'counter',
    help: 'Payload bytes forwarded; direction "in" is client to target, "out" target to client.',
    samples: (states) =>
      states.flatMap((st) => {
        const s = st.tcp ?? st.udp;
        if (!s) return [];
        const l = { mapping: st.mapping.id, proto: st.mapping.proto };
        return [
          { labels: { ...l, direction: 'in' }, value: s.bytesIn },
          { labels: { ...l, direction: 'out' }, value: s.bytesOut },
        ];
      }),
  },
  {
    name: 'backpressure_pauses_total',
    type: 'counter',
    help: 'Times reading from one side paused because the other side was slow (side = the side paused).',
    samples: tcp((s, m) => [
      { labels: { ...m, side: 'client' }, value: s.pausesClient },
      { labels: { ...m, side: 'upstream' }, value: s.pausesUpstream },
    ]),
  },
  {
    name: 'idle_timeouts_total',
    type: 'counter',
    help: 'Connections or UDP flows closed for being idle.',
    samples: (states) =>
      states.flatMap((st) => [{ labels: { mapping: st.mapping.id, proto: st.mapping.proto }, value: st.udp?.flowsExpired ?? st.tcp?.idleTimeouts ?? 0 }]),
  },
  {
    name: 'half_close_timeouts_total',
    type: 'counter',
    help: 'Half-closed TCP connections closed after the linger timeout with no byte either way.',
    samples: tcp((s, m) => [{ labels: m, value: s.lingerTimeouts }]),
  },
  {
    name: 'udp_flows_created_total',
    type: 'counter',
    help: 'UDP flows (client address:port) opened.',
    samples: udp((s, m) => [{ labels: m, value: s.flowsCreated }]),
  },
  { name: 'udp_flows_active', type: 'gauge', help: 'UDP flows currently open.', samples: udp((s, m) => [{ labels: m, value: s.flowsActive }]) },
  {
    name: 'udp_datagrams_total',
    type: 'counter',
    help: 'UDP datagrams forwarded; direction "in" is client to target.',
    samples: udp((s, m) => [
      { labels: { ...m, direction: 'in' }, value: s.datagramsIn },
      { labels: { ...m, direction: 'out' }, value: s.datagramsOut },
    ]),
  },
  {
    name: 'udp_datagrams_dropped_total',
    type: 'counter',
    help: 'UDP datagrams dropped, by reason.',
    samples: udp((s, m) => [
      { labels: { ...m, reason: 'flow_limit' }, value: s.droppedFlowLimit },
      { labels: { ...m, reason: 'queue_full' }, value: s.droppedQueueFull },
      { labels: { ...m, reason: 'send_error' }, value: s.droppedSendError },
      { labels: { ...m, reason: 'blocked' }, value: s.droppedBlocked },
    ]),
  },
  {
    name: 'udp_upstream_refused_total',
    type: 'counter',
    help: 'ICMP port-unreachable reports from the target (the flow is kept).',
    samples: udp((s, m) => [{ labels: m, value: s.refused }]),
  },
  {
    name: 'mapping_up',
    type: 'gauge',
    help: '1 when every port of the mapping is bound and serving.',
    samples: (states) =>
      states
        .filter((st) => st.drainingSince === undefined)
        .map((st) => ({ labels: { mapping: st.mapping.id, proto: st.mapping.proto }, value: st.up ? 1 : 0 })),
  },
  {
    name: 'mapping_draining_seconds',
    type: 'gauge',
    help: 'Shared engine: seconds since the mapping stopped accepting (its dockerd died, or it moved to a new engine) while its connections finish.',
    samples: (states) =>
      states.flatMap((st) =>
        st.drainingSince === undefined ? [] : [{ labels: { mapping: st.mapping.id, proto: st.mapping.proto }, value: (Date.now() - st.drainingSince) / 1000 }],
      ),
  },
  {
    name: 'worker_restarts_total',
    type: 'counter',
    help: 'Times the mapping was restarted after a crash: its worker thread (standalone), or after a fault in its code (shared engine).',
    samples: (states) => states.map((st) => ({ labels: { mapping: st.mapping.id }, value: st.restarts })),
  },
  {
    name: 'build_info',
    type: 'gauge',
    help: 'Build information; always 1.',
    samples: () => [{ labels: { version: packageVersion(), node_version: process.version }, value: 1 }],
  },
];

/**
 * A prom-client Registry with every family reading from `states()` at scrape time, and the
 * default process metrics when `defaultMetrics` (main thread of standalone mode only).
 */
export function createRegistry(states: () => readonly MappingState[], opts: { defaultMetrics: boolean }): Registry {
  const registry = new Registry();
  if (opts.defaultMetrics) {
    collectDefaultMetrics({ register: registry });
    // prom-client names three gauges *_total, which promtool rejects; the same values are
    // exported without the suffix (nodejs_active_handles, ..._requests, ..._resources).
    for (const n of ['nodejs_active_handles_total', 'nodejs_active_requests_total', 'nodejs_active_resources_total']) {
      registry.removeSingleMetric(n);
    }
  }
  for (const f of FAMILIES) {
    const name = PREFIX + f.name;
    // prom-client formats any object with name/help/type/get(); values come from the snapshots.
    registry.registerMetric({
      name,
      help: f.help,
      type: f.type,
      aggregator: 'sum',
      get: async () => ({ name, help: f.help, type: f.type, aggregator: 'sum', values: f.samples(states()) }),
    } as never);
  }
  return registry;
}
