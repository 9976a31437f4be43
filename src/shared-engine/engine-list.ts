/**
 * `userland-proxy ls`: the docker mappings the shared engine of this network namespace serves,
 * with their counters, asked over the engine's control socket (an `L` message; engine.ts answers).
 */
import { control, engineSocketName, MSG, type EngineListing } from './engine-protocol.js';
import { ProxyError } from '../core/errors.js';

/** How long `ls` waits for the engine's whole answer. */
const LIST_TIMEOUT_MS = 5_000;

/** Asks the engine; null when none runs in this network namespace. */
export function queryEngine(name = engineSocketName()): EngineListing[] | null {
  const ctl = control();
  if (typeof ctl === 'string') throw new ProxyError('UPROXY_ERR_NATIVE', `cannot ask the shared engine: ${ctl}`);
  let parts: Buffer[];
  try {
    parts = ctl.ctlRequest(name, Buffer.from(MSG.list), LIST_TIMEOUT_MS);
  } catch (err) {
    if (/refused|No such file/.test((err as Error).message)) return null;
    throw new ProxyError('UPROXY_ERR_NATIVE', `cannot ask the shared engine ${name}: ${(err as Error).message}`);
  }
  const last = parts.at(-1);
  if (last?.[0] !== MSG.listingEnd.charCodeAt(0)) {
    const why = last?.[0] === MSG.failed.charCodeAt(0) ? last.subarray(1).toString() : 'incomplete answer';
    throw new ProxyError('UPROXY_ERR_NATIVE', `the shared engine ${name} did not list its mappings: ${why}`);
  }
  return JSON.parse(
    parts
      .slice(0, -1)
      .map((p) => p.subarray(1).toString())
      .join(''),
  ) as EngineListing[];
}

/** The listing as a table (or JSON lines), for a person. */
export function formatListing(rows: EngineListing[], json: boolean): string {
  if (json) return rows.map((r) => `${JSON.stringify(r)}\n`).join('');
  const table = [['MAPPING', 'TARGET', 'ENGINE', 'STATE', 'SINCE', 'ACTIVE', 'TOTAL', 'BYTES IN', 'BYTES OUT']];
  for (const r of rows) {
    const c = r.tcp
      ? [r.tcp.active, r.tcp.accepted, r.tcp.bytesIn, r.tcp.bytesOut]
      : r.udp
        ? [r.udp.flowsActive, r.udp.flowsCreated, r.udp.bytesIn, r.udp.bytesOut]
        : [];
    table.push([r.mapping, r.target, r.engine, r.state ?? 'serving', r.since.replace(/\.\d+Z$/, 'Z'), ...c.map(String)].map(printable));
  }
  const widths = table[0]?.map((_, i) => Math.max(...table.map((row) => (row[i] ?? '').length))) ?? [];
  return table
    .map(
      (row) =>
        `${row
          .map((cell, i) => cell.padEnd(widths[i] ?? 0))
          .join('  ')
          .trimEnd()}\n`,
    )
    .join('');
}

/** A cell as a terminal can show it: control characters escaped, never sent raw (audit N10). */
function printable(cell: string): string {
  // biome-ignore lint/suspicious/noControlCharactersInRegex: they are what is escaped
  return cell.replace(/[\u0000-\u001f\u007f-\u009f]/g, (ch) => `\\x${ch.charCodeAt(0).toString(16).padStart(2, '0')}`);
}
