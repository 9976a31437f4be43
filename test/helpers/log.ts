/** A log that keeps its warnings, to read what a forwarder or logger said. */
import { type Log, silentLog } from '../../src/core/logger.js';

/** One warning as the forwarder gave it to the log. */
export interface Warning {
  obj: object;
  msg: string;
}

/** A log whose warnings land in `lines` (everything else is dropped). */
export function recorder(): { log: Log; lines: Warning[] } {
  const lines: Warning[] = [];
  return { log: { ...silentLog, warn: (obj, msg) => lines.push({ obj, msg }) }, lines };
}

/** Waits (at most 2 s) for a warning with this message: the native engine reports once per epoll round. */
export async function warned(lines: readonly Warning[], msg: string): Promise<void> {
  for (let i = 0; i < 100 && !lines.some((w) => w.msg === msg); i++) await new Promise((r) => setTimeout(r, 20));
}
