/**
 * The HTTP endpoint of standalone mode:
 *   GET  /metrics   Prometheus text format (counters refreshed from every worker first)
 *   GET  /healthz   200 while the process runs
 *   GET  /readyz    200 when every mapping is bound and serving, else 503 with the ones down
 *   POST /-/reload  same as SIGHUP: re-read the configuration (Prometheus' lifecycle convention);
 *                   only with `Content-Type: application/json` and no `Origin` header, which a
 *                   cross-site form or no-cors fetch cannot produce (and OPTIONS preflights are
 *                   never approved); 403 when turned off (httpReload: false)
 * It binds loopback by default (`--metrics 9464`); anything else is a 404 or 405. The listener is
 * bounded like a data-path port: at most METRICS_MAX_CONNECTIONS connections (counted in the
 * process fd budget), a header timeout and a request timeout, so a slow client cannot hold it.
 */
import { createServer, type Server } from 'node:http';
import type { Registry } from 'prom-client';
import { joinHostPort, type IpAddress } from '../core/address.js';
import {
  METRICS_CHECK_INTERVAL_MS,
  METRICS_HEADERS_TIMEOUT_MS,
  METRICS_KEEPALIVE_TIMEOUT_MS,
  METRICS_MAX_CONNECTIONS,
  METRICS_REQUEST_TIMEOUT_MS,
} from '../core/constants.js';
import { ProxyError } from '../core/errors.js';
import type { MappingState, MetricsSource } from './mapping-state.js';
import { createRegistry } from './metrics.js';

/** Options of startMetricsServer. */
export interface MetricsServerOptions {
  host: IpAddress;
  port: number;
  registry: Registry;
  /** Fresh counters before each scrape, and the mappings that are down (for /readyz). */
  supervisor: MetricsSource;
  /** Re-reads the configuration; null: reload over HTTP is turned off. */
  onReload: (() => Promise<string>) | null;
}

/** Starts the endpoint; rejects with a one-line ProxyError when the address cannot be bound. */
export function startMetricsServer(opts: MetricsServerOptions): Promise<Server> {
  const server = createServer(
    {
      headersTimeout: METRICS_HEADERS_TIMEOUT_MS,
      requestTimeout: METRICS_REQUEST_TIMEOUT_MS,
      keepAliveTimeout: METRICS_KEEPALIVE_TIMEOUT_MS,
      // Node checks the two timeouts above this often (default 30 s).
      connectionsCheckingInterval: METRICS_CHECK_INTERVAL_MS,
    },
    (req, res) => {
      const path = (req.url ?? '/').split('?')[0];
      const reply = (code: number, body: string, type = 'text/plain; charset=utf-8'): void => {
        res.writeHead(code, { 'content-type': type }).end(body);
      };
      if (path === '/-/reload') {
        if (req.method !== 'POST') return reply(405, 'use POST\n');
        const onReload = opts.onReload;
        if (onReload === null) return reply(403, 'reload over HTTP is turned off (httpReload: false); send SIGHUP\n');
        if (req.headers.origin !== undefined) return reply(403, 'cross-origin reload refused\n');
        if (!/^application\/json\b/i.test(req.headers['content-type'] ?? '')) {
          return reply(415, 'reload needs the header Content-Type: application/json\n');
        }
        void onReload().then(
          (msg) => reply(200, `${msg}\n`),
          (err: Error) => reply(500, `${err.message}\n`),
        );
        return;
      }
      if (req.method !== 'GET' && req.method !== 'HEAD') return reply(405, 'method not allowed\n');
      if (path === '/metrics') {
        void opts.supervisor
          .refreshStats()
          .then(() => opts.registry.metrics())
          .then(
            (text) => reply(200, text, opts.registry.contentType),
            (err: Error) => reply(500, `${err.message}\n`),
          );
      } else if (path === '/healthz') {
        reply(200, 'ok\n');
      } else if (path === '/readyz') {
        const down = opts.supervisor.down;
        if (down.length === 0) reply(200, 'ready\n');
        else reply(503, `not ready: ${down.join(', ')}\n`);
      } else {
        reply(404, 'not found: try /metrics, /healthz or /readyz\n');
      }
    },
  );
  server.maxConnections = METRICS_MAX_CONNECTIONS;
  return new Promise((resolve, reject) => {
    server.once('error', (err: NodeJS.ErrnoException) => {
      reject(
        new ProxyError(
          'UPROXY_ERR_LISTEN',
          `metrics: listen tcp${opts.host.family} ${joinHostPort(opts.host.address, opts.port)}: ${err.code === 'EADDRINUSE' ? 'bind: address already in use' : err.message}`,
        ),
      );
    });
    server.listen({ host: opts.host.address, port: opts.port, ipv6Only: opts.host.family === 6 }, () => resolve(server));
  });
}

/**
 * The HTTP endpoint of a process, as both the standalone daemon and the shared engine start it:
 * a registry over `states` (with Node's default metrics) served on host:port.
 */
export function startEndpoint(opts: {
  host: IpAddress;
  port: number;
  states: () => MappingState[];
  source: MetricsSource;
  onReload: MetricsServerOptions['onReload'];
}): Promise<Server> {
  return startMetricsServer({
    host: opts.host,
    port: opts.port,
    registry: createRegistry(opts.states, { defaultMetrics: true }),
    supervisor: opts.source,
    onReload: opts.onReload,
  });
}
