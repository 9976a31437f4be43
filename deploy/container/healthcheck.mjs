// The image's HEALTHCHECK: GET /healthz on the metrics listener named by USERLAND_PROXY_METRICS
// (HOST:PORT, [IPV6]:PORT or PORT, as the daemon reads it); exit 0 when it answers 200.
const spec = process.env.USERLAND_PROXY_METRICS ?? '127.0.0.1:9464';
const m = /^(?:(\[[^\]]+\]|[^:[\]]+):)?(\d{1,5})$/.exec(spec);
if (!m) {
  console.error(`healthcheck: cannot read USERLAND_PROXY_METRICS "${spec}"`);
  process.exit(1);
}
const host = m[1] ?? '127.0.0.1';
const url = `http://${host === '0.0.0.0' ? '127.0.0.1' : host === '[::]' ? '[::1]' : host}:${m[2]}/healthz`;
try {
  const res = await fetch(url, { signal: AbortSignal.timeout(2500) });
  process.exit(res.status === 200 ? 0 : 1);
} catch (err) {
  console.error(`healthcheck: ${url}: ${err.cause?.code ?? err.message}`);
  process.exit(1);
}
