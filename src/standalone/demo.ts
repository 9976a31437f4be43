/**
 * `userland-proxy demo`: the whole engine on an embedded default. A built-in backend (HTTP and
 * UDP echo on loopback, ephemeral ports) stands in for a container; one port on 127.0.0.1 is
 * forwarded to it over TCP and UDP through the real supervisor and workers, and metrics are
 * served. Prints what to try.
 */
import { createSocket } from 'node:dgram';
import { createServer } from 'node:http';
import type { AddressInfo } from 'node:net';
import { buildConfig, type StandaloneConfig } from './config.js';
import { ProxyError } from '../core/errors.js';

/** Options of startDemo. */
export interface DemoOptions {
  port: number;
  metricsPort: number;
}

/** Starts the demo backend and returns the configuration that forwards to it, plus a banner. */
export async function startDemo(opts: DemoOptions): Promise<{ config: StandaloneConfig; banner: string }> {
  let requests = 0;
  const http = createServer((req, res) => {
    requests++;
    res.writeHead(200, { 'content-type': 'text/plain; charset=utf-8' });
    res.end(`hello from the demo backend: request ${requests}, ${req.method} ${req.url}, seen from ${req.socket.remoteAddress}:${req.socket.remotePort}\n`);
  });
  await new Promise<void>((r) => http.listen({ port: 0, host: '127.0.0.1' }, r));
  http.unref();
  const udp = createSocket('udp4');
  udp.on('message', (m, r) => udp.send(m, r.port, r.address));
  await new Promise<void>((r) => udp.bind(0, '127.0.0.1', r));
  udp.unref();
  const httpPort = (http.address() as AddressInfo).port;
  const udpPort = udp.address().port;
  for (const [name, p] of [
    ['--port', opts.port],
    ['--metrics-port', opts.metricsPort],
  ] as const) {
    if (!Number.isInteger(p) || p < 1 || p > 65535) throw new ProxyError('UPROXY_ERR_BAD_FLAG', `invalid ${name} ${p}: must be 1-65535`);
  }
  // Every other setting at its default (the settings table), whatever the environment holds.
  const config = buildConfig(
    {
      publish: [`127.0.0.1:${opts.port}:127.0.0.1:${httpPort}/tcp`, `127.0.0.1:${opts.port}:127.0.0.1:${udpPort}/udp`],
      metrics: `127.0.0.1:${opts.metricsPort}`,
    },
    {},
  );
  const banner = [
    `demo backend: HTTP on 127.0.0.1:${httpPort}, UDP echo on 127.0.0.1:${udpPort} (a stand-in for a container)`,
    `forwarding 127.0.0.1:${opts.port} (tcp and udp) to it through the real engine; try:`,
    `  curl http://127.0.0.1:${opts.port}/`,
    `  echo hello | socat - UDP:127.0.0.1:${opts.port}     (or: nc -u 127.0.0.1 ${opts.port})`,
    `  curl http://127.0.0.1:${opts.metricsPort}/metrics`,
    `  curl http://127.0.0.1:${opts.metricsPort}/readyz`,
    'Ctrl-C stops (connections drain first).',
  ].join('\n');
  return { config, banner };
}
