// Renders bench results: a Markdown table (median, min-max, ratio to docker-proxy) and an SVG
// chart of the throughput ratios.
import { median } from './lib.mjs';

/** [scenario, field, label, higher is better, format digits]. */
export const METRICS = [
  ['bulk1', 'gbps', 'bulk TCP, 1 stream, Gbit/s', true, 2],
  ['bulk1', 'cpuPerGiB', 'bulk TCP, 1 stream, proxy CPU s/GiB', false, 3],
  ['bulk4', 'gbps', 'bulk TCP, 4 streams, Gbit/s', true, 2],
  ['bulk4', 'cpuPerGiB', 'bulk TCP, 4 streams, proxy CPU s/GiB', false, 3],
  ['http', 'rps', 'HTTP keep-alive, req/s (16 conns)', true, 0],
  ['http', 'p50ms', 'HTTP keep-alive, p50 ms', false, 2],
  ['http', 'p99ms', 'HTTP keep-alive, p99 ms', false, 2],
  ['short', 'connPerSec', 'short connections, conn/s', true, 0],
  ['short', 'p99ms', 'short connections, p99 ms', false, 2],
  ['short', 'cpuUsPerConn', 'short connections, proxy CPU µs per connection', false, 0],
  ['short20', 'connPerSec', 'short connections, 20 concurrent clients, conn/s', true, 0],
  ['short20', 'p99ms', 'short connections, 20 concurrent clients, p99 ms', false, 2],
  ['short20', 'cpuUsPerConn', 'short connections, 20 concurrent clients, proxy CPU µs per connection', false, 0],
  ['udp64', 'deliveredPps', 'UDP 64 B at 100k/s offered, delivered/s', true, 0],
  ['udp64', 'lossPct', 'UDP 64 B, loss %', false, 2],
  ['udp64', 'capacityPps', 'UDP 64 B, most datagrams/s delivered at <= 1 % loss', true, 0],
  ['udp1400', 'deliveredPps', 'UDP 1400 B at 100k/s offered, delivered/s', true, 0],
  ['udp1400', 'lossPct', 'UDP 1400 B, loss %', false, 2],
  ['udp1400', 'capacityPps', 'UDP 1400 B, most datagrams/s delivered at <= 1 % loss', true, 0],
  ['memory-idle', 'processes', 'processes serving the 4 ports', false, 0],
  ['memory-idle', 'privateDirtyPerProcessMiB', 'idle Private_Dirty MiB per process', false, 1],
  ['memory-idle', 'privateDirtyMiB', 'idle Private_Dirty MiB (all processes)', false, 1],
  ['memory-idle', 'rssMiB', 'idle RSS MiB (all processes)', false, 1],
  ['memory-after-load', 'privateDirtyPerProcessMiB', 'after load Private_Dirty MiB per process', false, 1],
  ['memory-after-load', 'privateDirtyMiB', 'after load Private_Dirty MiB', false, 1],
  ['memory-after-load', 'rssMiB', 'after load RSS MiB', false, 1],
  ['memory-idle-conns', 'rssMiB', 'holding the idle connections, RSS MiB of the process holding them', false, 1],
  ['memory-idle-conns', 'privateDirtyMiB', 'holding the idle connections, Private_Dirty MiB of that process', false, 1],
  ['startup', 'ms', 'startup, spawn to "0\\n", ms', false, 1],
];

/** { median, min, max } of one metric of one contender, or null. */
export function stat(report, scenario, field, name) {
  const xs = (report.results[scenario]?.[name] ?? []).map((v) => v?.[field]).filter((x) => typeof x === 'number' && Number.isFinite(x));
  if (!xs.length) return null;
  return { median: median(xs), min: Math.min(...xs), max: Math.max(...xs) };
}

export function renderMarkdown(report) {
  const names = report.contenders;
  const lines = [
    `Measured ${report.date.slice(0, 10)} on ${report.machine}; ${report.reps} repetition(s), ${report.seconds} s per throughput run${report.quick ? ' (--quick)' : ''}; ` +
      `${report.shortConns} short connections; ${report.idleConns} idle connections. Cells: median (min-max) and ×ratio to docker-proxy.`,
    '',
    `| metric | ${names.join(' | ')} |`,
    `|---|${names.map(() => '---').join('|')}|`,
  ];
  for (const [scenario, field, label, higher, digits] of METRICS) {
    if (!report.results[scenario]) continue;
    const ref = stat(report, scenario, field, 'docker-proxy');
    const cells = names.map((n) => {
      const s = stat(report, scenario, field, n);
      const failed = (report.results[scenario]?.[n] ?? []).filter((v) => v?.error).length;
      if (!s) return failed ? `failed (${failed})` : 'n/a';
      const range = report.reps > 1 && s.min !== s.max ? ` (${s.min.toFixed(digits)}-${s.max.toFixed(digits)})` : '';
      const ratio = ref && ref.median > 0 && n !== 'docker-proxy' ? ` ×${(s.median / ref.median).toFixed(2)}` : '';
      return `${s.median.toFixed(digits)}${range}${ratio}${failed ? `, ${failed} failed` : ''}`;
    });
    lines.push(`| ${label} (${higher ? 'higher' : 'lower'} is better) | ${cells.join(' | ')} |`);
  }
  const errors = Object.entries(report.results).flatMap(([sc, byName]) =>
    Object.entries(byName).flatMap(([n, vs]) => vs.filter((v) => v?.error).map((v) => `- ${sc}, ${n}: ${v.error}`)),
  );
  if (errors.length) lines.push('', 'Failed runs:', '', ...errors);
  return `${lines.join('\n')}\n`;
}

const escapeXml = (t) => t.replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;');

export function renderSvg(report) {
  const rows = METRICS.filter(([s, , , higher]) => higher && report.results[s]);
  const names = report.contenders.filter((n) => n !== 'docker-proxy');
  const colors = ['#4e79a7', '#f28e2b', '#59a14f', '#e15759', '#76b7b2', '#edc948', '#b07aa1'];
  const rowH = 18 * names.length + 14;
  const left = 250;
  const width = 760;
  const scaleMax = 2.5;
  const x = (r) => left + (Math.min(r, scaleMax) / scaleMax) * (width - left - 120);
  const out = [];
  const height = rows.length * rowH + 60 + names.length * 16;
  out.push(`<svg xmlns="http://www.w3.org/2000/svg" width="${width}" height="${height}" font-family="sans-serif" font-size="11">`);
  out.push(
    `<text x="10" y="16" font-size="13" font-weight="bold">Throughput relative to docker-proxy (1.0 = docker-proxy; ${report.date.slice(0, 10)}, ${escapeXml(report.machine)})</text>`,
  );
  rows.forEach(([scenario, field, label], i) => {
    const y0 = 30 + i * rowH;
    out.push(`<text x="10" y="${y0 + rowH / 2}">${escapeXml(label)}</text>`);
    const ref = stat(report, scenario, field, 'docker-proxy');
    names.forEach((n, j) => {
      const s = stat(report, scenario, field, n);
      if (!s || !ref?.median) return;
      const r = s.median / ref.median;
      const y = y0 + 4 + j * 18;
      out.push(`<rect x="${left}" y="${y}" width="${(x(r) - left).toFixed(1)}" height="14" fill="${colors[j % colors.length]}"/>`);
      out.push(`<text x="${(x(r) + 4).toFixed(1)}" y="${y + 11}">${r.toFixed(2)}${r > scaleMax ? ' (off scale)' : ''}</text>`);
    });
  });
  const yEnd = 30 + rows.length * rowH;
  out.push(`<line x1="${x(1)}" y1="26" x2="${x(1)}" y2="${yEnd}" stroke="#000" stroke-dasharray="4 3"/>`);
  names.forEach((n, j) => {
    const y = yEnd + 14 + j * 16;
    out.push(`<rect x="10" y="${y - 10}" width="12" height="12" fill="${colors[j % colors.length]}"/><text x="28" y="${y}">${escapeXml(n)}</text>`);
  });
  out.push('</svg>');
  return `${out.join('\n')}\n`;
}
