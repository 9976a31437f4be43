import { readFileSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import { newHistogram, observe } from '../../src/core/histogram.js';
import { createRegistry, FAMILIES, PREFIX } from '../../src/metrics/metrics.js';
import { parsePublishSpec } from '../../src/standalone/publish-spec.js';
import { newTcpStats } from '../../src/data-path/tcp-types.js';
import { newUdpStats } from '../../src/data-path/udp-forwarder.js';

describe('metrics', () => {
  it('every exported metric family is documented in docs/reference.md', () => {
    const readme = readFileSync(new URL('../../docs/reference.md', import.meta.url), 'utf8');
    for (const f of FAMILIES) expect(readme, f.name).toContain(`| \`${PREFIX}${f.name}\` | ${f.type} |`);
  });

  it('observe() fills non-cumulative buckets; the exposition makes them cumulative', async () => {
    const tcp = newTcpStats();
    for (const v of [0.0001, 0.003, 0.003, 7]) observe(tcp.connectDuration, v);
    tcp.bytesIn = 12345;
    const udp = newUdpStats();
    udp.datagramsIn = 3;
    const states = [
      { mapping: parsePublishSpec('127.0.0.1:80:10.0.0.2:80'), up: true, restarts: 2, tcp, udp: null },
      { mapping: parsePublishSpec('127.0.0.1:53:10.0.0.2:53/udp'), up: false, restarts: 0, tcp: null, udp },
    ];
    const text = await createRegistry(() => states, { defaultMetrics: false }).metrics();
    const m = 'mapping="tcp/127.0.0.1:80"';
    expect(text).toContain(`userland_proxy_upstream_connect_duration_seconds_bucket{${m},le="0.0005"} 1`);
    expect(text).toContain(`userland_proxy_upstream_connect_duration_seconds_bucket{${m},le="0.005"} 3`);
    expect(text).toContain(`userland_proxy_upstream_connect_duration_seconds_bucket{${m},le="5"} 3`);
    expect(text).toContain(`userland_proxy_upstream_connect_duration_seconds_bucket{${m},le="+Inf"} 4`);
    expect(text).toContain(`userland_proxy_upstream_connect_duration_seconds_count{${m}} 4`);
    expect(text).toContain(`userland_proxy_bytes_total{${m},proto="tcp",direction="in"} 12345`);
    expect(text).toContain('userland_proxy_udp_datagrams_total{mapping="udp/127.0.0.1:53",direction="in"} 3');
    expect(text).toContain('userland_proxy_mapping_up{mapping="udp/127.0.0.1:53",proto="udp"} 0');
    expect(text).toContain(`userland_proxy_worker_restarts_total{${m}} 2`);
    expect(newHistogram([1, 2]).counts).toEqual([0, 0, 0]);
  });
});
