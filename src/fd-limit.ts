/**
 * The open-file limit, and the connection and flow caps derived from it.
 *
 * Past RLIMIT_NOFILE, accept() fails with EMFILE; libuv then silently accepts and closes the
 * pending connections (its reserve-fd trick) without telling JavaScript, so nobody would know.
 * Capping connections a little below the limit turns that into Node's counted 'drop' event,
 * which we log, and keeps fds free for the upstream side and for logging.
 */
import { readFileSync } from 'node:fs';
import { FD_RESERVE } from './constants.js';

/** The soft RLIMIT_NOFILE of this process (Node raises it to the hard limit at start), or null. */
export function openFileLimit(): number | null {
  try {
    const line = /^Max open files\s+(\S+)/m.exec(readFileSync('/proc/self/limits', 'utf8'));
    if (!line || line[1] === 'unlimited') return null;
    return Number(line[1]);
  } catch {
    return null;
  }
}

/** Most TCP connections (two fds each) that fit under the limit, or null when unbounded. */
export function connectionCapFromFdLimit(limit: number | null): number | null {
  return limit === null ? null : Math.max(1, Math.floor((limit - FD_RESERVE) / 2));
}

/** Most UDP flows (one fd each) that fit under the limit, or null when unbounded. */
export function flowCapFromFdLimit(limit: number | null): number | null {
  return limit === null ? null : Math.max(1, limit - FD_RESERVE);
}
